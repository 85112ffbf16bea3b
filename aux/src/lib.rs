//! shardcache aux node: keeps shards in a byte-bounded LRU with TTL and serves them
//! to masters over a small binary-over-HTTP API.
//!
//! # Layout
//!
//! - [`config`]: flags and environment variables.
//! - [`store`]: the LRU + TTL + tombstone shard store and its invariants.
//! - [`api`]: the HTTP routes ([`app`]).
//! - [`run`] / [`serve`]: the server and its background sweeper, for tests and `main`.

pub mod api;
pub mod config;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shardcache_common::runtime::{self, Shutdown};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use api::{app, AuxState};
pub use config::AuxConfig;
use store::ShardStore;

/// Most expired entries removed per sweep tick, so one tick never holds the store's
/// lock for long; the rest go on the next tick.
const SWEEP_BATCH: usize = 10_000;

/// How long in-flight requests get to finish after shutdown is signalled.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the aux API on `listener` until `shutdown` resolves.
pub async fn run(
    config: AuxConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create data directory {}", config.data_dir.display()))?;
    let store = Arc::new(ShardStore::new(config.capacity.bytes()));
    let shutdown = Shutdown::new(shutdown, DRAIN_TIMEOUT);
    let sweeper = tokio::spawn(sweep_expired(
        store.clone(),
        config.sweep_interval.0,
        shutdown.token(),
    ));
    let state = AuxState {
        store,
        max_frame_bytes: config.max_frame_bytes(),
    };
    tracing::info!(
        listen = %listener.local_addr()?,
        capacity = %config.capacity,
        data_dir = %config.data_dir.display(),
        "aux node serving"
    );
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(shutdown.requested());
    tokio::select! {
        result = server => result.context("serve aux API")?,
        () = shutdown.drain_deadline() => tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}, exiting"),
    }
    shutdown.token().cancel();
    let _ = sweeper.await;
    Ok(())
}

/// Validates the configuration, binds `config.listen`, prints `listening on ADDR`
/// and serves until Ctrl-C/SIGTERM.
pub async fn serve(config: AuxConfig) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let listener = runtime::bind_and_announce(config.listen)
        .await
        .map_err(anyhow::Error::msg)?;
    let signal = runtime::shutdown_signal(config.stop_with_parent);
    run(config, listener, signal).await
}

/// Background worker: reclaims the memory of expired shards every `interval`.
async fn sweep_expired(store: Arc<ShardStore>, interval: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let removed = store.sweep_expired(shardcache_common::unix_millis(), SWEEP_BATCH);
                if removed > 0 {
                    tracing::debug!(removed, "swept expired shards");
                }
            }
            () = stop.cancelled() => return,
        }
    }
}
