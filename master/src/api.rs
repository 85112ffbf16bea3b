//! The master's client API: `POST /data`, `GET`/`DELETE /data/{key}`, `GET /health`.
//!
//! Handlers validate input and translate between JSON and the [`DataPath`]; they
//! hold no state of their own.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::config::{MasterConfig, MAX_TTL_SECONDS};
use crate::data_path::DataPath;
use crate::error::ApiError;
use crate::extract::{JsonBody, KeyPath};

/// Response header carrying the version of the value returned by `GET /data/{key}`.
pub const VERSION_HEADER: &str = "shardcache-version";

/// Shared state of the master's routes.
#[derive(Clone)]
pub struct AppState {
    pub data: Arc<DataPath>,
    pub limits: Limits,
    pub summary: Arc<serde_json::Value>,
}

/// Input limits enforced by the handlers.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_body_bytes: usize,
}

impl Limits {
    pub fn from_config(config: &MasterConfig) -> Self {
        Limits {
            max_key_bytes: config.max_key_size.bytes() as usize,
            max_value_bytes: config.max_value_size.bytes() as usize,
            max_body_bytes: config.max_body_bytes(),
        }
    }
}

/// The master's router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/data", post(set_value))
        .route("/data/", get(empty_key).delete(empty_key))
        .route("/data/{*key}", get(get_value).delete(delete_value))
        .route("/health", get(health))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.limits.max_body_bytes,
            reject_declared_oversize,
        ))
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .with_state(state)
}

/// Body of `POST /data`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetRequest {
    key: String,
    value: String,
    /// Seconds until the value expires; absent or null for never.
    #[serde(default)]
    ttl: Option<u64>,
}

async fn set_value(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<SetRequest>,
) -> Result<Response, ApiError> {
    validate_key(&request.key, &state.limits)?;
    if request.value.len() > state.limits.max_value_bytes {
        return Err(ApiError::PayloadTooLarge(format!(
            "value is {} bytes, the limit is {}",
            request.value.len(),
            state.limits.max_value_bytes
        )));
    }
    let ttl = match request.ttl {
        None => None,
        Some(seconds @ 1..=MAX_TTL_SECONDS) => Some(Duration::from_secs(seconds)),
        Some(_) => {
            return Err(ApiError::BadRequest(format!(
                "ttl must be a whole number of seconds from 1 to {MAX_TTL_SECONDS}"
            )))
        }
    };
    let version = state
        .data
        .write(&request.key, request.value.as_bytes(), ttl)
        .await?;
    Ok(Json(json!({ "key": request.key, "version": version.to_string() })).into_response())
}

async fn get_value(
    State(state): State<AppState>,
    KeyPath(key): KeyPath,
) -> Result<Response, ApiError> {
    validate_key(&key, &state.limits)?;
    let found = state
        .data
        .read(&key)
        .await?
        .ok_or_else(|| not_found(&key))?;
    let value = String::from_utf8(found.value).map_err(|_| {
        ApiError::NotAcceptable(
            "the stored value is not UTF-8 and cannot be returned as a JSON string".into(),
        )
    })?;
    let mut response = Json(json!({ "key": key, "value": value })).into_response();
    if let Ok(version) = HeaderValue::from_str(&found.version.to_string()) {
        response.headers_mut().insert(VERSION_HEADER, version);
    }
    Ok(response)
}

async fn delete_value(
    State(state): State<AppState>,
    KeyPath(key): KeyPath,
) -> Result<Response, ApiError> {
    validate_key(&key, &state.limits)?;
    match state.data.delete(&key).await? {
        true => Ok(Json(json!({ "key": key, "deleted": true })).into_response()),
        false => Err(not_found(&key)),
    }
}

async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json((*state.summary).clone())
}

/// Answers 413 from the `Content-Length` header alone, before any of the body is read
/// (a client sending `Expect: 100-continue`, as curl does for large uploads, then
/// never sends it). Bodies without a length are cut off by `DefaultBodyLimit`.
async fn reject_declared_oversize(
    State(limit): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit as u64 => ApiError::PayloadTooLarge(format!(
            "request body of {length} bytes is over the {limit}-byte limit"
        ))
        .into_response(),
        _ => next.run(request).await,
    }
}

async fn empty_key() -> ApiError {
    ApiError::BadRequest("key must not be empty".into())
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}

fn not_found(key: &str) -> ApiError {
    ApiError::NotFound(format!("key {key:?} not found"))
}

fn validate_key(key: &str, limits: &Limits) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::BadRequest("key must not be empty".into()));
    }
    if key.len() > limits.max_key_bytes {
        return Err(ApiError::BadRequest(format!(
            "key is {} bytes, the limit is {}",
            key.len(),
            limits.max_key_bytes
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use clap::Parser;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// A master whose aux nodes all refuse connections (nothing listens on port 1–6).
    fn master_without_aux_nodes() -> Router {
        let config = MasterConfig::parse_from([
            "shardcache-master",
            "--aux",
            "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4,127.0.0.1:5,127.0.0.1:6",
            "--shard-timeout",
            "200ms",
        ]);
        app(crate::state_from_config(&config).unwrap())
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn unreachable_aux_nodes_are_a_503_with_a_json_error_never_a_500() {
        let app = master_without_aux_nodes();
        let (status, body) = call(&app, "GET", "/data/fruit", "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body["error"]
            .as_str()
            .unwrap()
            .contains("too few aux nodes answered"));
        let (status, body) =
            call(&app, "POST", "/data", r#"{"key":"fruit","value":"cherry"}"#).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body["error"]
            .as_str()
            .unwrap()
            .contains("write quorum not reached"));
        let (status, _) = call(&app, "DELETE", "/data/fruit", "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn health_describes_the_geometry() {
        let (status, body) = call(&master_without_aux_nodes(), "GET", "/health", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ok");
        assert_eq!(
            (body["data_shards"].as_u64(), body["parity_shards"].as_u64()),
            (Some(3), Some(2))
        );
        assert_eq!(body["write_quorum"], 4);
        assert_eq!(body["aux_nodes"].as_array().unwrap().len(), 6);
    }

    #[tokio::test]
    async fn input_is_validated_before_any_aux_node_is_asked() {
        let app = master_without_aux_nodes();
        let (status, _) = call(&app, "POST", "/data", r#"{"key":"","value":"v"}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = call(&app, "POST", "/data", r#"{"key":"k","value":"v","ttl":0}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let long_key = "k".repeat(1025);
        let (status, _) = call(&app, "GET", &format!("/data/{long_key}"), "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}
