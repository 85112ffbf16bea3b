//! Shard I/O: everything between "these owners, this key" and frames on aux nodes.
//!
//! - [`client`]: [`ShardClient`], the one way shard calls leave a master, each
//!   counted and timed; [`ShardClient::gather`] asks several nodes for a key and
//!   [`ShardClient::put_all`] stores a write's frames, hiding whether the calls
//!   are batched.
//! - [`batcher`]: shard reads and writes queued per aux node and sent together in
//!   multi-gets and multi-puts.
//! - [`frames`]: building, decoding and rebuilding shard frames (the codec side),
//!   tombstones included, in one place for the data path and repair.

pub(crate) mod batcher;
pub(crate) mod client;
pub(crate) mod frames;

pub(crate) use batcher::BatchSettings;
pub(crate) use client::ShardClient;
