//! Cluster tests: real `shardcache` master and aux processes on loopback ports picked
//! at run time, started through the same harness as `shardcache up`, killed with
//! SIGKILL, paused with SIGSTOP and restarted. Every value is checked byte for byte.
//!
//! One test binary (one link) with a module per theme; [`support`] has the shared
//! client helpers and `wait_until`.

mod bad_input;
mod batching;
mod bench_smoke;
mod cache_bench_smoke;
mod clocks;
mod concurrency;
mod config_errors;
mod data_path;
mod eviction;
mod failures;
mod history;
mod internal_ports;
mod memory;
mod metrics;
mod ordering;
mod raw_api;
mod recovery;
mod repair_bench_smoke;
mod repair_speed;
mod support;
