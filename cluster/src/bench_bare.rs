//! `shardcache bench-bare` (hidden): the throughput benchmark's baseline, a bare
//! server that speaks the master's client data API from one in-memory `HashMap`
//! behind a mutex.
//!
//! It answers `POST /data`, `GET /data/{key}` and `DELETE /data/{key}` with the
//! master's JSON shapes, status codes and `shardcache-version` header, parses
//! requests with the master's own extractors and error type, and runs on the same
//! stack: axum on a multi-threaded Tokio runtime, mimalloc, the same request
//! deadline and body limits, `listening on ADDR` on stdout, `--stop-with-parent`.
//! What it leaves out is what makes shardcache shardcache — no erasure coding, no
//! aux nodes, no metrics, no expiry (a `ttl` is accepted and ignored) — so the
//! ratio of shardcache's throughput to this one is what that costs on this machine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderValue;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use shardcache_common::http_limits;
use shardcache_common::runtime::{self, Shutdown};
use shardcache_common::version::{HybridClock, Version};
use shardcache_master::api::VERSION_HEADER;
use shardcache_master::extract::{JsonBody, KeyPath};
use shardcache_master::ApiError;

/// The master's request deadline (`master/src/api.rs`).
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// The master's body limit with its default flags: 2 × 8 MiB + 6 × 1 KiB + 4 KiB.
const MAX_BODY_BYTES: usize = 2 * (8 << 20) + 6 * 1024 + 4096;

/// The master's default `--max-key-size`.
const MAX_KEY_BYTES: usize = 1024;

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
}

/// Binds, prints `listening on ADDR` and serves until Ctrl-C, SIGTERM or, with
/// `--stop-with-parent`, the end of standard input.
pub fn bench_bare(args: BenchBareArgs) -> anyhow::Result<()> {
    runtime::block_on(serve(args))
}

async fn serve(args: BenchBareArgs) -> anyhow::Result<()> {
    let listener = runtime::bind_and_announce(args.listen)
        .await
        .map_err(anyhow::Error::msg)?;
    let shutdown = Shutdown::new(
        runtime::shutdown_signal(args.stop_with_parent),
        DRAIN_TIMEOUT,
    );
    let server = axum::serve(listener, app()).with_graceful_shutdown(shutdown.requested());
    tokio::select! {
        result = server => result.context("serve"),
        () = shutdown.drain_deadline() => Ok(()),
    }
}

/// Values by key, each with its version.
struct Store {
    values: Mutex<HashMap<String, (String, Version)>>,
    clock: HybridClock,
}

type Shared = Arc<Store>;

/// The bare server's router: the master's data routes and layers, minus metrics.
pub fn app() -> Router {
    let store = Arc::new(Store {
        values: Mutex::new(HashMap::new()),
        clock: HybridClock::with_random_writer(std::time::Duration::from_secs(1)),
    });
    Router::new()
        .route("/data", post(set_value))
        .route("/data/", get(empty_key).delete(empty_key))
        .route("/data/{*key}", get(get_value).delete(delete_value))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            REQUEST_DEADLINE,
            http_limits::deadline,
        ))
        .layer(middleware::from_fn_with_state(
            MAX_BODY_BYTES,
            http_limits::refuse_declared_oversize,
        ))
        .with_state(store)
}

/// Body of `POST /data`, as the master takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetRequest {
    key: String,
    value: String,
    #[serde(default)]
    #[allow(dead_code)]
    ttl: Option<u64>,
}

fn validate_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::BadRequest("key must not be empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::BadRequest(format!(
            "key is {} bytes, the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

fn not_found(key: &str) -> ApiError {
    ApiError::NotFound(format!("key {key:?} not found"))
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
    validate_key(&request.key)?;
    let version = store.clock.next();
    lock(&store).insert(request.key.clone(), (request.value, version));
    Ok(Json(json!({ "key": request.key, "version": version.to_string() })).into_response())
}

async fn get_value(
    State(store): State<Shared>,
    KeyPath(key): KeyPath,
) -> Result<Response, ApiError> {
    validate_key(&key)?;
    let found = lock(&store).get(&key).cloned();
    let Some((value, version)) = found else {
        return Err(not_found(&key));
    };
    let mut response = Json(json!({ "key": key, "value": value })).into_response();
    if let Ok(version) = HeaderValue::from_str(&version.to_string()) {
        response.headers_mut().insert(VERSION_HEADER, version);
    }
    Ok(response)
}

async fn delete_value(
    State(store): State<Shared>,
    KeyPath(key): KeyPath,
) -> Result<Response, ApiError> {
    validate_key(&key)?;
    match lock(&store).remove(&key) {
        Some(_) => Ok(Json(json!({ "key": key, "deleted": true })).into_response()),
        None => Err(not_found(&key)),
    }
}

async fn empty_key() -> ApiError {
    ApiError::BadRequest("key must not be empty".into())
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
