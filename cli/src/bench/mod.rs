//! The benchmarks: each measures a local cluster of real processes side by side
//! with what users would pick instead, in one run, and writes its report.
//!
//! | module | what |
//! |---|---|
//! | [`throughput`] | `shardcache bench`: throughput, latency and CPU per request next to a bare server of the same API, behind nginx, with one slow aux node, and next to Redis and memcached |
//! | [`bare`] | the hidden `shardcache bench-bare`: the master's data API from an in-memory map (the throughput baseline) |
//! | [`cache`] | `shardcache bench-cache`: hit ratio at equal RAM (cache-aside, Zipf, one-hit wonders, a scan) and dead shards, next to memcached ×3 and redis ×3 |
//! | [`memory`] | `shardcache bench-memory`: aux RSS per user byte for erasure coding and replication, next to Redis and memcached |
//! | [`repair`] | `shardcache bench-repair`: how fast a lost aux node's shards are rebuilt |
//! | [`load_generators`] | wrk (with `cli/src/bench/wrk-data-api.lua`), redis-benchmark and memaslap as processes of their own: commands, CPU time, **pure** output parsers |
//! | [`delay_proxy`] | a TCP relay that holds every chunk for a set time, to make one aux node slow |
//! | [`plot`] | grouped bar charts as SVG and PNG |
//! | [`support`], [`proc_stat`] | what the benchmarks share (keys and values, third-party servers as children, package installs, report files) and what they read from `/proc` (CPU time, memory, children) |

pub mod bare;
pub mod cache;
pub mod delay_proxy;
pub mod load_generators;
pub mod memory;
pub mod plot;
pub mod proc_stat;
pub mod repair;
pub mod support;
pub mod throughput;
