//! shardcache master: the stateless HTTP/JSON API node. It places each key on a
//! consistent-hash ring of aux nodes, Reed-Solomon-encodes values into `k + m`
//! shards, and reads them back from any `k`.
//!
//! # Layout
//!
//! From the bottom up; each module uses only those above it (ARCHITECTURE.md,
//! Layers):
//!
//! - [`config`]: flags and environment variables, validated at start-up;
//!   [`error`]: [`ApiError`] and its HTTP statuses; [`extract`]: JSON-body and key
//!   extractors that answer with the API's errors.
//! - [`metrics`]: the Prometheus metrics (knows nothing else of the crate).
//! - [`cluster`]: the placement [`cluster::View`], health probes, membership.
//! - [`shards`]: shard I/O — the measured client, batched reads, frames.
//! - [`data_path`]: write (quorum), read (gather, decode, read-repair), delete, and
//!   the pure read [`data_path::verdict`].
//! - [`repair`]: repair and rebalancing — scan, a pure plan per key, apply — under
//!   a lease.
//! - [`negotiation`]: `Accept`, entity tags and `If-None-Match` for `GET /data/{key}`.
//! - [`api`]: the client and admin routes ([`app`]), input validation and limits.
//! - [`run`] / [`serve`]: the server and its background workers, for tests and `main`.

pub mod api;
mod cluster;
pub mod config;
mod data_path;
pub mod error;
pub mod extract;
mod metrics;
mod negotiation;
mod repair;
mod shards;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shardcache_common::aux_client::AuxClient;
use shardcache_common::codec::Codec;
use shardcache_common::http_metrics;
use shardcache_common::runtime::{self, Shutdown};
use shardcache_common::server;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use api::{app, AppState};
use cluster::{Cluster, ClusterSettings};
pub use config::MasterConfig;
use data_path::DataPath;
pub use data_path::Miss;
pub use error::ApiError;
use metrics::MasterMetrics;
use repair::{RepairSettings, Repairer};
use shards::{BatchSettings, ShardClient};

/// Most shard reads (or writes) waiting for one aux node; a full queue makes
/// callers wait.
const QUEUE_PER_NODE: usize = 4096;

/// How long in-flight requests get to finish after shutdown is signalled.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the routes' state from a validated configuration. Nothing runs yet: the
/// caller probes the cluster and starts the workers (see [`run`]).
pub fn state_from_config(config: &MasterConfig) -> anyhow::Result<AppState> {
    config.validate().map_err(anyhow::Error::msg)?;
    let owners = usize::from(config.data_shards) + usize::from(config.parity_shards);
    if usize::from(config.write_quorum()) * 2 <= owners {
        tracing::warn!(
            write_quorum = config.write_quorum(),
            owners,
            "the write quorum is not a majority of a key's owners: writes through different \
             masters are not ordered in real time (see data_path/write.rs)"
        );
    }
    let codec =
        Arc::new(Codec::new(config.data_shards, config.parity_shards).context("build the codec")?);
    // A shard response is one frame: at most a shard of the largest value plus header.
    let max_shard_bytes =
        config.max_value_size.bytes() as usize / usize::from(config.data_shards) + (1 << 20);
    let token = config
        .node
        .cluster_token
        .load()
        .map_err(anyhow::Error::msg)?;
    let client = AuxClient::new(config.shard_timeout.0, max_shard_bytes).with_token(&token);
    let total_shards = usize::from(config.data_shards) + usize::from(config.parity_shards);
    let settings = ClusterSettings {
        seeds: config
            .aux
            .iter()
            .map(|node| node.trim().to_owned())
            .collect(),
        dns: config.aux_dns.clone(),
        dns_refresh: config.dns_refresh.0,
        probe_interval: config.probe_interval.0,
        probe_timeout: config.probe_timeout.0,
        suspect_after: config.suspect_after,
        down_after: config.down_after,
        min_members: total_shards,
        max_clock_skew: config.node.max_clock_skew.0,
    };
    let probe_client = AuxClient::new(config.probe_timeout.0, 1 << 20).with_token(&token);
    let cluster = Arc::new(Cluster::new(settings, probe_client));
    let metrics = Arc::new(MasterMetrics::new());
    let shards = ShardClient::new(
        client,
        metrics.clone(),
        BatchSettings {
            max_items: config.read_batch_max,
            max_bytes: usize::MAX, // keys: bounded by max_items × --max-key-size
            in_flight: config.read_batch_in_flight,
            queue: QUEUE_PER_NODE,
        },
        BatchSettings {
            max_items: config.write_batch_max,
            max_bytes: config.write_batch_bytes.bytes() as usize,
            in_flight: config.write_batch_in_flight,
            queue: QUEUE_PER_NODE,
        },
    );
    let data = Arc::new(DataPath::new(
        cluster.clone(),
        codec.clone(),
        shards.clone(),
        metrics.clone(),
        usize::from(config.write_quorum()),
        config.tombstone_ttl.0,
        config.node.max_clock_skew.0,
    ));
    let repair_settings = RepairSettings {
        interval: config.repair_interval.0,
        grace: config.repair_grace.0,
        concurrency: config.repair_concurrency,
        lease_ttl: (config.probe_interval.0 * 10).max(Duration::from_secs(10)),
        retry: config.probe_interval.0,
        ignore_lease: config.repair_ignore_lease,
        abandon_after: config.repair_abandon_after.0,
    };
    let repairer = Arc::new(Repairer::new(
        cluster.clone(),
        shards,
        codec,
        repair_settings,
    ));
    Ok(AppState {
        data,
        cluster,
        metrics,
        repairer,
        limits: api::Limits::from_config(config),
        geometry: api::GeometryReport {
            geometry: config.geometry(),
            write_quorum: config.write_quorum(),
        },
        metrics_on_client_listener: config.node.metrics_listen.is_none(),
        cluster_token: token,
    })
}

/// Serves the client API on `listener` until `shutdown` resolves. Probes every aux
/// node once before the first request is served, so placement is known from the
/// start.
pub async fn run(
    config: MasterConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = state_from_config(&config)?;
    let shutdown = Shutdown::new(shutdown, DRAIN_TIMEOUT);
    http_metrics::serve_metrics_listener(
        config.node.metrics_listen,
        api::metrics_app(state.clone()),
        shutdown.requested(),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let cluster = state.cluster.clone();
    cluster.probe_round().await;
    // Aux nodes configured for another k and m would refuse every shard.
    cluster
        .check_geometry(config.geometry())
        .map_err(anyhow::Error::msg)?;
    tracing::info!(
        listen = %listener.local_addr()?,
        aux_nodes_up = cluster.view().up_nodes().len(),
        geometry = %config.geometry(),
        write_quorum = config.write_quorum(),
        "master serving"
    );
    let workers = CancellationToken::new();
    let prober = tokio::spawn(cluster.clone().run(workers.clone()));
    let repairer = tokio::spawn(state.repairer.clone().run(workers.clone()));
    let limits = config.server_limits();
    let server = server::serve(listener, app(state), limits, shutdown.requested());
    let served = tokio::select! {
        () = server => Ok(()),
        () = shutdown.drain_deadline() => {
            tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}, exiting");
            Ok(())
        }
    };
    workers.cancel();
    let _ = tokio::join!(prober, repairer);
    served
}

/// How [`runtime::serve`] starts this node: `shardcache master` and the
/// `shardcache-master` binary run `runtime::serve(config)`.
impl runtime::NodeConfig for MasterConfig {
    fn listen(&self) -> std::net::SocketAddr {
        self.listen
    }

    fn node(&self) -> &runtime::NodeArgs {
        &self.node
    }

    fn validate(&self) -> Result<(), String> {
        MasterConfig::validate(self)
    }

    async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        run(self, listener, shutdown).await
    }
}
