//! The `shardcache` launcher and the test harness.
//!
//! # Layout
//!
//! - [`harness`]: spawns and controls real master and aux processes
//!   ([`harness::LocalCluster`]); shared by `shardcache up` and the cluster tests.
//! - [`up`]: the `shardcache up` command.
//! - [`bench`]: the benchmarks (`bench`, `bench-bare`, `bench-memory`,
//!   `bench-repair`) and what they share; its module doc has the table.
//!
//! The `shardcache` binary links the master and aux libraries and runs them as its
//! `master` and `aux` subcommands, so `cargo run --bin shardcache -- up` builds one
//! executable and spawns copies of itself.

pub mod bench;
pub mod harness;
pub mod up;
