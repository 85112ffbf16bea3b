//! `shardcache`: `up` starts a local cluster; `master` and `aux` run one node each
//! (the same flags as `shardcache-master` and `shardcache-aux`); `bench`,
//! `bench-repair` and `bench-memory` measure a local cluster; the hidden
//! `bench-bare` is `bench`'s baseline server.

use clap::Parser;
use shardcache_common::runtime;

/// glibc's allocator spent a sixth of a loaded master's CPU in malloc and free.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, clap::Parser)]
#[command(
    name = "shardcache",
    version,
    about = "An erasure-coded distributed in-memory cache"
)]
enum Command {
    /// Start a local cluster of real processes and run it until Ctrl-C.
    Up(shardcache::up::UpArgs),
    /// Run one master node.
    Master(shardcache_master::MasterConfig),
    /// Run one aux node.
    Aux(shardcache_aux::AuxConfig),
    /// Measure throughput, latency and CPU per request: shardcache vs a bare server
    /// with the same API, behind nginx, with one slow aux node, and Redis and memcached.
    Bench(shardcache::bench::throughput::BenchArgs),
    /// Serve the data API from an in-memory map: `bench`'s baseline.
    #[command(hide = true)]
    BenchBare(shardcache::bench::bare::BenchBareArgs),
    /// Measure how fast a lost aux node's shards are rebuilt.
    BenchRepair(shardcache::bench::repair::RepairBenchArgs),
    /// Measure aux memory per user byte: erasure coding vs replication vs Redis and memcached.
    BenchMemory(shardcache::bench::memory::BenchMemoryArgs),
}

fn main() {
    let command = Command::parse();
    shardcache_common::runtime::init_logging();
    let result = match command {
        Command::Up(args) => shardcache::up::up(args),
        Command::Bench(args) => shardcache::bench::throughput::bench(args),
        Command::BenchBare(args) => shardcache::bench::bare::bench_bare(args),
        Command::BenchRepair(args) => shardcache::bench::repair::bench_repair(args),
        Command::BenchMemory(args) => shardcache::bench::memory::bench_memory(args),
        Command::Master(config) => config.node.runtime.block_on(runtime::serve(config)),
        Command::Aux(config) => config.node.runtime.block_on(runtime::serve(config)),
    };
    shardcache_common::runtime::exit_on_error(result);
}
