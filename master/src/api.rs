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
