//! The `shardcache` launcher and the test harness.
//!
//! # Layout
//!
//! - [`harness`]: spawns and controls real master and aux processes
//!   ([`harness::LocalCluster`]); shared by `shardcache up` and the cluster tests.
//! - [`up`]: the `shardcache up` command.
//! - [`bench`]: the `shardcache bench` command (erasure coding vs replication).
//! - [`repair_bench`]: the `shardcache bench-repair` command (how fast a lost aux
//!   node's shards are rebuilt).
//!
//! The `shardcache` binary links the master and aux libraries and runs them as its
//! `master` and `aux` subcommands, so `cargo run --bin shardcache -- up` builds one
//! executable and spawns copies of itself.

pub mod bench;
pub mod harness;
pub mod repair_bench;
pub mod up;
