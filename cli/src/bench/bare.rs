//! `shardcache bench-bare` (hidden): the throughput benchmark's baseline, a bare
//! server that speaks the master's client data API from one in-memory `HashMap`
//! behind a mutex.
//!
//! It answers `POST /data`, `GET /data/{key}` and `DELETE /data/{key}` with the
//! master's own request checks, response shapes and error type (`master::api`),
//! parses requests with the master's extractors, and runs on the same stack: axum on
//! the nodes' default single-threaded Tokio runtime (`--worker-threads 1`), the
//! master's serve loop (`common::server`), mimalloc, the master's request deadline
//! and its default limits, `listening on ADDR` on stdout, `--stop-with-parent`.
//! What it leaves out is what makes shardcache shardcache — no erasure coding, no
//! aux nodes, no metrics, no expiry (a `ttl` is accepted and ignored) — so the
//! ratio of shardcache's throughput to this one is what that costs on this machine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use clap::Parser;
use shardcache_common::http_limits;
use shardcache_common::runtime::{self, RuntimeArgs, Shutdown};
use shardcache_common::server;
use shardcache_common::version::{HybridClock, Version};
use shardcache_master::api::{self, Limits, SetRequest, REQUEST_DEADLINE};
use shardcache_master::config::MasterConfig;
use shardcache_master::extract::{JsonBody, KeyPath};
use shardcache_master::ApiError;
use shardcache_master::Miss;

/// How long in-flight requests get to finish after shutdown is signalled.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serve the client data API from memory, as the throughput baseline.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchBareArgs {
    /// Address to serve on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Exit when standard input closes (set by the benchmark).
    #[arg(long, hide = true)]
    pub stop_with_parent: bool,
    /// The same runtime as the nodes'.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Binds, prints `listening on ADDR` and serves until Ctrl-C, SIGTERM or, with
/// `--stop-with-parent`, the end of standard input.
pub fn bench_bare(args: BenchBareArgs) -> anyhow::Result<()> {
    args.runtime.block_on(serve(args))
}

async fn serve(args: BenchBareArgs) -> anyhow::Result<()> {
    let listener = runtime::bind_and_announce(args.listen)
        .await
        .map_err(anyhow::Error::msg)?;
    let shutdown = Shutdown::new(
        runtime::shutdown_signal(args.stop_with_parent),
        DRAIN_TIMEOUT,
    );
    // The master's serve loop and its default connection limits.
    let defaults = master_defaults();
    let limits = defaults.server_limits();
    tokio::select! {
        () = server::serve(listener, app_with(&defaults), limits, shutdown.requested()) => {}
        () = shutdown.drain_deadline() => {}
    }
    Ok(())
}

/// The master's defaults, from its own flag definitions (it needs some aux node).
fn master_defaults() -> MasterConfig {
    MasterConfig::try_parse_from(["shardcache-master", "--aux", "unused:1"])
        .expect("the master's defaults parse")
}

/// Values by key, each with its version, and the master's default input limits.
struct Store {
    values: Mutex<HashMap<String, (String, Version)>>,
    clock: HybridClock,
    limits: Limits,
}

type Shared = Arc<Store>;

/// The bare server's router: the master's data routes and layers, minus metrics.
pub fn app() -> Router {
    app_with(&master_defaults())
}

/// [`app`] with the input limits and clock bound of `defaults`.
fn app_with(defaults: &MasterConfig) -> Router {
    let limits = Limits::from_config(defaults);
    let store = Arc::new(Store {
        values: Mutex::new(HashMap::new()),
        clock: HybridClock::with_random_writer(defaults.node.max_clock_skew.0),
        limits,
    });
    let router = Router::new()
        .route("/data", post(set_value))
        .route("/data/", get(api::empty_key).delete(api::empty_key))
        .route("/data/{*key}", get(get_value).delete(delete_value))
        .fallback(|| async { ApiError::NotFound("no such route".into()) });
    http_limits::apply(router, limits.max_body_bytes, REQUEST_DEADLINE).with_state(store)
}

fn lock(store: &Store) -> std::sync::MutexGuard<'_, HashMap<String, (String, Version)>> {
    store
        .values
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn set_value(
    State(store): State<Shared>,
    JsonBody(request): JsonBody<SetRequest>,
) -> Result<Response, ApiError> {
    request.validate(&store.limits)?; // a TTL is accepted and ignored
    let version = store.clock.next();
    lock(&store).insert(request.key.clone(), (request.value, version));
    Ok(api::stored(&request.key, version))
}

async fn get_value(
    State(store): State<Shared>,
    KeyPath(key): KeyPath,
) -> Result<Response, ApiError> {
    api::validate_key(&key, &store.limits)?;
    match lock(&store).get(&key) {
        Some((value, version)) => Ok(api::found(&key, value, *version)),
        None => Ok(api::not_found(&key, Miss::Absent)),
    }
}

async fn delete_value(
    State(store): State<Shared>,
    KeyPath(key): KeyPath,
) -> Result<Response, ApiError> {
    api::validate_key(&key, &store.limits)?;
    match lock(&store).remove(&key) {
        Some(_) => Ok(api::deleted(&key)),
        None => Ok(api::not_found(&key, Miss::Absent)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn call(app: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn speaks_the_masters_data_api() {
        let app = app();
        let (status, body) = call(&app, "POST", "/data", r#"{"key":"a b","value":"v"}"#).await;
        assert_eq!(status, StatusCode::OK);
        let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(reply["key"], "a b");
        assert!(reply["version"]
            .as_str()
            .unwrap()
            .parse::<Version>()
            .is_ok());
        let (status, body) = call(&app, "GET", "/data/a%20b", "").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, r#"{"key":"a b","value":"v"}"#)
        );
        let (status, body) = call(&app, "DELETE", "/data/a%20b", "").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, r#"{"key":"a b","deleted":true}"#)
        );
        let (status, body) = call(&app, "GET", "/data/a%20b", "").await;
        assert_eq!(
            (status, body.as_str()),
            (
                StatusCode::NOT_FOUND,
                r#"{"error":"key \"a b\" not found"}"#
            )
        );
        let (status, _) = call(&app, "POST", "/data", r#"{"key":"k","value":5}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = call(&app, "POST", "/data", r#"{"key":"k","value":"v","tll":1}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}
