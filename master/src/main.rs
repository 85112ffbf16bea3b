//! `shardcache-master`: runs one master node (see `shardcache_master::MasterConfig`).

use clap::Parser;

/// The same allocator as the `shardcache` binary (glibc's cost a loaded master a
/// sixth of its CPU).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let config = shardcache_master::MasterConfig::parse();
    shardcache_common::runtime::init_logging();
    shardcache_common::runtime::exit_on_error(
        config
            .node
            .runtime
            .block_on(shardcache_common::runtime::serve(config)),
    );
}
