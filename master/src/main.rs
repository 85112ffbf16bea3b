//! `shardcache-master`: runs one master node (see `shardcache_master::MasterConfig`).

use clap::Parser;

fn main() {
    let config = shardcache_master::MasterConfig::parse();
    shardcache_common::runtime::init_logging();
    shardcache_common::runtime::exit_on_error(shardcache_common::runtime::block_on(
        shardcache_master::serve(config),
    ));
}
