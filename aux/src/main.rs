//! `shardcache-aux`: runs one aux node (see `shardcache_aux::AuxConfig` for flags).

use clap::Parser;

fn main() {
    let config = shardcache_aux::AuxConfig::parse();
    shardcache_common::runtime::init_logging();
    shardcache_common::runtime::exit_on_error(shardcache_common::runtime::block_on(
        shardcache_aux::serve(config),
    ));
}
