//! shardcache aux node: keeps shards in a byte-bounded store with TTL and serves them
//! to masters over a small binary-over-HTTP API.
//!
//! # Layout
//!
//! - [`config`]: flags and environment variables.
//! - [`identity`]: the node's ring identity, kept across restarts.
//! - [`store`]: the segment-based shard store (compact records, a sorted index,
//!   TTL, tombstones, approximate LRU) and its invariants.
//! - [`snapshot`]: the snapshot file format; [`snapshotter`]: when snapshots are
//!   written and how one is restored at start.
//! - [`lease`] and [`membership`]: what masters coordinate through aux nodes.
//! - [`api`]: the HTTP routes ([`app`]); [`metrics`]: the Prometheus metrics.
//! - [`run`] / [`serve`]: the server and its background workers, for tests and `main`.

mod api;
pub mod config;
mod identity;
mod lease;
mod membership;
mod metrics;
mod snapshot;
mod snapshotter;
mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shardcache_common::http_metrics;
use shardcache_common::runtime::{self, Shutdown};
use shardcache_common::server;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use api::{app, AuxState};
pub use config::AuxConfig;
use membership::MembershipStore;
use metrics::AuxMetrics;
use snapshotter::SnapshotStatus;
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
    let node_id = identity::load_or_create(config.node_id.as_deref(), &config.data_dir)?;
    let store = Arc::new(ShardStore::new(config.capacity.bytes()));
    let metrics = Arc::new(AuxMetrics::new(&node_id));
    let snapshots = Arc::new(SnapshotStatus::with_duration_histogram(
        metrics.snapshot_duration.clone(),
    ));
    snapshotter::restore(&store, &config.data_dir, &snapshots).await?;
    let shutdown = Shutdown::new(shutdown, DRAIN_TIMEOUT);
    let sweeper = tokio::spawn(sweep_expired(
        store.clone(),
        config.sweep_interval.0,
        shutdown.token(),
    ));
    let snapshot_worker = tokio::spawn(snapshotter::run(
        store.clone(),
        config.data_dir.clone(),
        config.snapshot_interval.0,
        snapshots.clone(),
        shutdown.token(),
    ));
    let state = AuxState {
        store: store.clone(),
        max_frame_bytes: config.max_frame_bytes(),
        max_clock_skew_ms: config.node.max_clock_skew.0.as_millis() as u64,
        cluster_token: config
            .node
            .cluster_token
            .load()
            .map_err(anyhow::Error::msg)?,
        geometry: config.geometry(),
        node_id: node_id.as_str().into(),
        instance: rand::random(),
        leases: Arc::default(),
        membership: Arc::new(MembershipStore::load(&config.data_dir)),
        snapshots: snapshots.clone(),
        metrics,
        metrics_on_api_listener: config.node.metrics_listen.is_none(),
    };
    http_metrics::serve_metrics_listener(
        config.node.metrics_listen,
        api::metrics_app(state.clone()),
        shutdown.requested(),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    tracing::info!(
        listen = %listener.local_addr()?,
        node_id,
        capacity = %config.capacity,
        data_dir = %config.data_dir.display(),
        "aux node serving"
    );
    let limits = config.server_limits();
    let serving = server::serve(listener, app(state), limits, shutdown.requested());
    tokio::select! {
        () = serving => {}
        () = shutdown.drain_deadline() => tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}, exiting"),
    }
    shutdown.token().cancel();
    let _ = sweeper.await;
    let _ = snapshot_worker.await;
    // The final snapshot: a clean stop loses nothing.
    snapshotter::save_if_changed(&store, &config.data_dir, &snapshots).await;
    tracing::info!("aux node stopped");
    Ok(())
}

/// How [`runtime::serve`] starts this node: `shardcache aux` and the
/// `shardcache-aux` binary run `runtime::serve(config)`.
impl runtime::NodeConfig for AuxConfig {
    fn listen(&self) -> std::net::SocketAddr {
        self.listen
    }

    fn node(&self) -> &runtime::NodeArgs {
        &self.node
    }

    fn validate(&self) -> Result<(), String> {
        AuxConfig::validate(self)
    }

    async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        run(self, listener, shutdown).await
    }
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
