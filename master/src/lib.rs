//! shardcache master: the stateless HTTP/JSON API node. It places each key on a
//! consistent-hash ring of aux nodes, Reed-Solomon-encodes values into `k + m`
//! shards, and reads them back from any `k`.
//!
//! # Layout
//!
//! - [`config`]: flags and environment variables, validated at start-up.
//! - [`api`]: the client routes ([`app`]), input validation and limits.
//! - [`data_path`]: write (quorum), read (version grouping, decode, verify), delete.
//! - [`extract`]: JSON-body and key extractors that answer with the API's errors.
//! - [`error`]: [`ApiError`] and its HTTP statuses.
//! - [`run`] / [`serve`]: the server, for tests and `main`.

pub mod api;
pub mod config;
pub mod data_path;
pub mod error;
pub mod extract;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shardcache_common::aux_client::AuxClient;
use shardcache_common::codec::Codec;
use shardcache_common::ring::{Ring, DEFAULT_VNODES};
use shardcache_common::runtime::{self, Shutdown};
use tokio::net::TcpListener;

pub use api::{app, AppState};
pub use config::MasterConfig;
use data_path::DataPath;
pub use error::ApiError;

/// How long in-flight requests get to finish after shutdown is signalled.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the routes' state from a validated configuration.
pub fn state_from_config(config: &MasterConfig) -> anyhow::Result<AppState> {
    config.validate().map_err(anyhow::Error::msg)?;
    let codec = Codec::new(config.data_shards, config.parity_shards).context("build the codec")?;
    let ring = Ring::new(
        config.aux.iter().map(|node| node.trim().to_owned()),
        DEFAULT_VNODES,
    );
    // A shard response is one frame: at most a shard of the largest value plus header.
    let max_shard_bytes =
        config.max_value_size.bytes() as usize / usize::from(config.data_shards) + (1 << 20);
    let client = AuxClient::new(config.shard_timeout.0, max_shard_bytes);
    let summary = serde_json::json!({
        "status": "ok",
        "aux_nodes": ring.nodes(),
        "data_shards": config.data_shards,
        "parity_shards": config.parity_shards,
        "write_quorum": config.write_quorum(),
    });
    let data = DataPath::new(
        ring,
        codec,
        client,
        usize::from(config.write_quorum()),
        config.tombstone_ttl.0,
    );
    Ok(AppState {
        data: Arc::new(data),
        limits: api::Limits::from_config(config),
        summary: Arc::new(summary),
    })
}

/// Serves the client API on `listener` until `shutdown` resolves.
pub async fn run(
    config: MasterConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = state_from_config(&config)?;
    tracing::info!(
        listen = %listener.local_addr()?,
        aux_nodes = config.aux.len(),
        data_shards = config.data_shards,
        parity_shards = config.parity_shards,
        write_quorum = config.write_quorum(),
        "master serving"
    );
    let shutdown = Shutdown::new(shutdown, DRAIN_TIMEOUT);
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(shutdown.requested());
    tokio::select! {
        result = server => result.context("serve client API")?,
        () = shutdown.drain_deadline() => tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}, exiting"),
    }
    Ok(())
}

/// Validates the configuration, binds `config.listen`, prints `listening on ADDR`
/// and serves until Ctrl-C/SIGTERM.
pub async fn serve(config: MasterConfig) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let listener = runtime::bind_and_announce(config.listen)
        .await
        .map_err(anyhow::Error::msg)?;
    let signal = runtime::shutdown_signal(config.stop_with_parent);
    run(config, listener, signal).await
}
