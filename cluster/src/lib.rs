//! The `shardcache` launcher and the test harness.
//!
//! # Layout
//!
//! - [`harness`]: spawns and controls real master and aux processes
//!   ([`harness::LocalCluster`]); shared by `shardcache up` and the cluster tests.
//! - [`up`]: the `shardcache up` command.
//! - [`bench`]: the `shardcache bench` command (throughput, latency and CPU per
//!   request of shardcache next to a bare server of the same API, behind nginx,
//!   with one slow aux node, and next to Redis and memcached).
//! - [`bench_bare`]: the hidden `shardcache bench-bare`, a bare server of the
//!   master's data API from an in-memory map (the throughput baseline).
//! - [`load_generators`]: wrk (with `cluster/bench/wrk-data-api.lua`),
//!   redis-benchmark and memaslap as processes of their own: commands, CPU time,
//!   output parsers.
//! - [`repair_bench`]: the `shardcache bench-repair` command (how fast a lost aux
//!   node's shards are rebuilt).
//! - [`bench_memory`]: the `shardcache bench-memory` command (aux RSS per user byte
//!   for erasure coding and replication, next to Redis and memcached).
//! - [`delay_proxy`]: a TCP relay that holds every chunk for a set time, to make
//!   one aux node slow in a benchmark.
//! - [`plot`]: grouped bar charts as SVG and PNG, for the benchmarks.
//! - [`bench_support`] and [`proc_stat`]: what the benchmarks share (keys and
//!   values, third-party servers as children, package installs, report files) and
//!   what they read from `/proc` (CPU time, memory, children).
//!
//! The `shardcache` binary links the master and aux libraries and runs them as its
//! `master` and `aux` subcommands, so `cargo run --bin shardcache -- up` builds one
//! executable and spawns copies of itself.

pub mod bench;
pub mod bench_bare;
pub mod bench_memory;
pub mod bench_support;
pub mod delay_proxy;
pub mod harness;
pub mod load_generators;
pub mod plot;
pub mod proc_stat;
pub mod repair_bench;
pub mod up;
