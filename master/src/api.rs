//! The master's client API — `POST /data`, `GET`/`HEAD`/`PUT`/`DELETE /data/{key}`,
//! `GET /health`, `GET /ready`, `GET /metrics` — and its admin API: `GET /cluster`,
//! `POST /cluster/nodes`, `DELETE /cluster/nodes/{id}`.
//!
//! `PUT` stores its body as it is; `GET` answers JSON, or the bytes when the client
//! asks for `application/octet-stream`, with an `ETag` per representation, `304` for
//! a matching `If-None-Match`, and the time left in `shardcache-ttl`
//! ([`crate::negotiation`]). `HEAD` is axum's: the `GET` handler, body dropped.
//!
//! Handlers validate input and translate between JSON and the [`DataPath`] or the
//! [`crate::cluster::Cluster`]; they hold no state of their own.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header::{
    ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_MATCH, IF_NONE_MATCH, VARY,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use shardcache_common::geometry::Geometry;
use shardcache_common::version::Version;
use shardcache_common::{http_limits, http_metrics};

use crate::cluster::{Cluster, ClusterReport};
use crate::config::{MasterConfig, MAX_TTL_SECONDS};
use crate::data_path::{DataPath, Miss};
use crate::error::ApiError;
use crate::extract::{JsonBody, KeyPath};
use crate::metrics::{ClockFigures, MasterMetrics};
use crate::negotiation::{self, Representation};
use crate::repair::{RepairStatus, Repairer};
use shardcache_common::cluster_token::{self, ClusterToken};

/// Longest a request may take, reading its body included: far beyond any read or
/// write (each shard call is bounded by `--shard-timeout`), so it only ever stops a
/// client that sends its body slowly or not at all.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// Response header carrying the version of the value returned by `GET /data/{key}`.
pub const VERSION_HEADER: HeaderName = HeaderName::from_static("shardcache-version");

/// Time a value has left to live, in whole seconds rounded up: on answers for values
/// written with a TTL; as a request header of `PUT /data/{key}`, the TTL to set.
pub const TTL_HEADER: HeaderName = HeaderName::from_static("shardcache-ttl");

/// Response header of a 404 for a key: `absent`, or `partial` when the read met only
/// partial versions (writers racing on the key) and answered a miss after its
/// retries ([`Miss`]).
pub const MISS_HEADER: HeaderName = HeaderName::from_static("shardcache-miss");

/// Shared state of the master's routes.
#[derive(Clone)]
pub struct AppState {
    pub(crate) data: Arc<DataPath>,
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) metrics: Arc<MasterMetrics>,
    pub(crate) repairer: Arc<Repairer>,
    pub(crate) limits: Limits,
    pub(crate) geometry: GeometryReport,
    /// Serve `/metrics` on the client listener (false with `--metrics-listen`).
    pub(crate) metrics_on_client_listener: bool,
    /// Required on the admin API, `/cluster…` (see `cluster_token`).
    pub(crate) cluster_token: ClusterToken,
}

/// The erasure-coding geometry and the write quorum beside it, as `/health` and
/// `/cluster` show them.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct GeometryReport {
    #[serde(flatten)]
    pub geometry: Geometry,
    pub write_quorum: u8,
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
    let mut router = Router::new();
    if state.metrics_on_client_listener {
        router = router.route("/metrics", get(metrics));
    }
    let admin = Router::new()
        .route("/cluster", get(cluster))
        .route("/cluster/nodes", post(add_node))
        .route("/cluster/nodes/{id}", axum::routing::delete(remove_node))
        .route_layer(middleware::from_fn_with_state(
            state.cluster_token.clone(),
            cluster_token::require,
        ));
    let router = router
        .route("/data", post(set_value))
        .route("/data/", get(empty_key).put(empty_key).delete(empty_key))
        .route(
            "/data/{*key}",
            get(get_value).put(put_value).delete(delete_value),
        )
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(admin)
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed);
    http_limits::apply(router, state.limits.max_body_bytes, REQUEST_DEADLINE)
        .layer(middleware::from_fn_with_state(
            state.metrics.http.clone(),
            http_metrics::track,
        ))
        .with_state(state)
}

/// The router of the separate `--metrics-listen` address: `/metrics` only.
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .with_state(state)
}

/// Prometheus text format; see [`crate::metrics`].
async fn metrics(State(state): State<AppState>) -> Response {
    let view = state.cluster.view();
    let nodes = view
        .node_states()
        .map(|(node, state)| (node, state.as_str()));
    let repair = state.repairer.status().sample();
    let report = state.cluster.report();
    let clocks = ClockFigures {
        lead_seconds: report.clock.lead_ms.map(|ms| ms as f64 / 1e3),
        beyond_bound: report.clock.beyond_bound,
        node_offsets_seconds: report
            .nodes
            .iter()
            .filter_map(|node| Some((node.id.as_deref()?, node.clock_offset_ms? as f64 / 1e3)))
            .collect(),
    };
    state
        .data
        .metrics()
        .render(nodes, view.epoch, &clocks, &repair)
}

/// Body of `POST /data`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRequest {
    pub key: String,
    pub value: String,
    /// Seconds until the value expires; absent or null for never.
    #[serde(default)]
    pub ttl: Option<u64>,
}

impl SetRequest {
    /// Checks key, value size and TTL against `limits`; returns the TTL.
    pub fn validate(&self, limits: &Limits) -> Result<Option<Duration>, ApiError> {
        validate_key(&self.key, limits)?;
        if self.value.len() > limits.max_value_bytes {
            return Err(value_too_large(self.value.len(), limits.max_value_bytes));
        }
        match self.ttl {
            None => Ok(None),
            Some(seconds @ 1..=MAX_TTL_SECONDS) => Ok(Some(Duration::from_secs(seconds))),
            Some(_) => Err(ApiError::BadRequest(format!(
                "ttl must be a whole number of seconds from 1 to {MAX_TTL_SECONDS}"
            ))),
        }
    }
}

// The data API's answers are serialized straight from borrowed fields: a `json!`
// value would copy the value into a map (an `IndexMap`, hashed) before writing it.

/// The answer to a stored `POST /data`.
pub fn stored(key: &str, version: Version) -> Response {
    #[derive(Serialize)]
    struct Stored<'a> {
        key: &'a str,
        version: String,
    }
    let version = version.to_string();
    Json(Stored { key, version }).into_response()
}

/// The answer to a `GET /data/{key}` that found `value`, its version in a header.
pub fn found(key: &str, value: &str, version: Version) -> Response {
    #[derive(Serialize)]
    struct Found<'a> {
        key: &'a str,
        value: &'a str,
    }
    let mut response = Json(Found { key, value }).into_response();
    if let Ok(version) = HeaderValue::from_str(&version.to_string()) {
        response.headers_mut().insert(VERSION_HEADER, version);
    }
    response
}

/// The answer to a `DELETE /data/{key}` that deleted a value.
pub fn deleted(key: &str) -> Response {
    #[derive(Serialize)]
    struct Deleted<'a> {
        key: &'a str,
        deleted: bool,
    }
    Json(Deleted { key, deleted: true }).into_response()
}

async fn set_value(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<SetRequest>,
) -> Result<Response, ApiError> {
    refuse_conditions(&headers)?;
    let ttl = request.validate(&state.limits)?;
    let version = state
        .data
        .write(&request.key, request.value.as_bytes(), ttl)
        .await?;
    Ok(stored(&request.key, version))
}

async fn get_value(
    State(state): State<AppState>,
    KeyPath(key): KeyPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    validate_key(&key, &state.limits)?;
    let found = match state.data.read(&key).await? {
        Ok(found) => found,
        Err(miss) => return Ok(not_found(&key, miss)),
    };
    let representation = negotiation::representation(header_str(&headers, ACCEPT));
    let etag = negotiation::entity_tag(found.version, representation);
    let revalidated = header_str(&headers, IF_NONE_MATCH)
        .is_some_and(|condition| negotiation::if_none_match(condition, &etag));
    let mut response = if revalidated {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        match representation {
            Representation::Octets => (
                [(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                )],
                found.value,
            )
                .into_response(),
            Representation::Json => {
                let value = String::from_utf8(found.value).map_err(|_| {
                    ApiError::NotAcceptable(
                        "the stored value is not UTF-8 and cannot be returned as a JSON string: ask for it with Accept: application/octet-stream".into(),
                    )
                })?;
                self::found(&key, &value, found.version)
            }
        }
    };
    let headers = response.headers_mut();
    headers.insert(VARY, HeaderValue::from_static("accept"));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(ETAG, etag);
    }
    if let Ok(version) = HeaderValue::from_str(&found.version.to_string()) {
        headers.insert(VERSION_HEADER, version);
    }
    if let Some(time_left_ms) = found.expires_in_ms {
        headers.insert(TTL_HEADER, HeaderValue::from(time_left_ms.div_ceil(1000)));
    }
    Ok(response)
}

/// `?ttl=SECONDS` of `PUT /data/{key}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutQuery {
    ttl: Option<String>,
}

/// `PUT /data/{key}`: stores the body as it is, whatever its `Content-Type`.
async fn put_value(
    State(state): State<AppState>,
    KeyPath(key): KeyPath,
    query: Result<Query<PutQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    refuse_conditions(&headers)?;
    validate_key(&key, &state.limits)?;
    let Query(query) = query.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let ttl = put_ttl(header_str(&headers, TTL_HEADER), query.ttl.as_deref())?;
    let limit = state.limits.max_value_bytes;
    let declared = header_str(&headers, CONTENT_LENGTH).and_then(|len| len.parse::<usize>().ok());
    if let Some(len) = declared.filter(|&len| len > limit) {
        return Err(value_too_large(len, limit));
    }
    let value = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::PayloadTooLarge(format!("the value is over the limit of {limit} bytes"))
    })?;
    let version = state.data.write(&key, &value, ttl).await?;
    let mut response = stored(&key, version);
    if let Ok(etag) = HeaderValue::from_str(&negotiation::entity_tag(version, Representation::Json))
    {
        response.headers_mut().insert(ETAG, etag);
    }
    Ok(response)
}

/// The TTL of a `PUT`, from the `shardcache-ttl` header or the `ttl` query
/// parameter (both only if equal): whole seconds, 1 to [`MAX_TTL_SECONDS`].
fn put_ttl(header: Option<&str>, query: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let seconds = match (header.map(str::trim), query.map(str::trim)) {
        (None, None) => return Ok(None),
        (Some(header), Some(query)) if header != query => {
            return Err(ApiError::BadRequest(format!(
                "the shardcache-ttl header ({header}) and ?ttl= ({query}) differ: give one"
            )))
        }
        (Some(seconds), _) | (None, Some(seconds)) => seconds,
    };
    match seconds.parse::<u64>() {
        Ok(seconds @ 1..=MAX_TTL_SECONDS) => Ok(Some(Duration::from_secs(seconds))),
        _ => Err(ApiError::BadRequest(format!(
            "ttl must be a whole number of seconds from 1 to {MAX_TTL_SECONDS}, not {seconds:?}"
        ))),
    }
}

/// Conditional writes are not built yet: a write that carries a condition is
/// refused rather than done unconditionally.
fn refuse_conditions(headers: &HeaderMap) -> Result<(), ApiError> {
    match [IF_MATCH, IF_NONE_MATCH]
        .into_iter()
        .find(|name| headers.contains_key(name))
    {
        Some(name) => Err(ApiError::NotImplemented(format!(
            "conditional writes ({name}) are not supported yet; the write was not done"
        ))),
        None => Ok(()),
    }
}

fn header_str(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn value_too_large(len: usize, limit: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!("value is {len} bytes, the limit is {limit}"))
}

async fn delete_value(
    State(state): State<AppState>,
    KeyPath(key): KeyPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    refuse_conditions(&headers)?;
    validate_key(&key, &state.limits)?;
    match state.data.delete(&key).await? {
        Ok(()) => Ok(deleted(&key)),
        Err(miss) => Ok(not_found(&key, miss)),
    }
}

/// `ok` when every aux node on the ring is up and the clocks agree, `degraded`
/// while some nodes are not up but writes can still reach their quorum, or while a
/// clock is off by more than `--max-clock-skew` (this master's: writes refused;
/// an aux node's: its TTLs run early or late), `unavailable` below the quorum.
fn cluster_health(state: &AppState) -> (&'static str, usize, usize) {
    let cluster = &state.cluster;
    let view = cluster.view();
    let (up, total) = (view.up_nodes().len(), view.all_nodes().len());
    let clocks_agree = !cluster.clock_report().beyond_bound && !cluster.any_clock_off();
    let status = if up < usize::from(state.geometry.write_quorum) {
        "unavailable"
    } else if up < total || !clocks_agree {
        "degraded"
    } else {
        "ok"
    };
    (status, up, total)
}

/// Liveness: always 200 while the process serves, with the cluster's condition.
async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let (status, up, total) = cluster_health(&state);
    Json(json!({
        "status": status,
        "aux_nodes_up": up,
        "aux_nodes": total,
        "data_shards": state.geometry.geometry.data_shards,
        "parity_shards": state.geometry.geometry.parity_shards,
        "write_quorum": state.geometry.write_quorum,
        "clock": state.cluster.clock_report(),
    }))
}

/// Readiness: 503 while too few aux nodes are up for a write to reach its quorum.
async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    match cluster_health(&state) {
        ("unavailable", up, total) => Err(ApiError::Unavailable(format!(
            "only {up} of {total} aux nodes are up; writes need {}",
            state.geometry.write_quorum
        ))),
        (status, up, total) => Ok(Json(
            json!({ "status": status, "aux_nodes_up": up, "aux_nodes": total }),
        )),
    }
}

/// Body of `GET /cluster`: the cluster's own report, then what this master adds
/// (its keys follow the report's in the JSON object).
#[derive(Serialize)]
struct ClusterResponse {
    #[serde(flatten)]
    cluster: ClusterReport,
    geometry: GeometryReport,
    read_repaired_shards: u64,
    repair: RepairStatus,
}

/// The cluster as this master sees it: nodes, states, ring and repair progress.
async fn cluster(State(state): State<AppState>) -> Json<ClusterResponse> {
    Json(ClusterResponse {
        cluster: state.cluster.report(),
        geometry: state.geometry,
        read_repaired_shards: state.metrics.read_repaired_shards(),
        repair: state.repairer.status(),
    })
}

/// Body of `POST /cluster/nodes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddNodeRequest {
    address: String,
}

async fn add_node(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<AddNodeRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let doc = state.cluster.add_node(&request.address).await?;
    Ok(Json(
        json!({ "added": request.address.trim(), "membership": doc }),
    ))
}

async fn remove_node(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let doc = state.cluster.remove_node(&id).await?;
    Ok(Json(json!({ "removed": id, "membership": doc })))
}

/// `GET` or `DELETE /data/`: a key must not be empty.
pub async fn empty_key() -> ApiError {
    ApiError::BadRequest("key must not be empty".into())
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}

/// The answer to a `GET` or `DELETE` of a key that holds no value: 404 with the
/// JSON error and the [`MISS_HEADER`].
pub fn not_found(key: &str, miss: Miss) -> Response {
    let mut response = ApiError::NotFound(format!("key {key:?} not found")).into_response();
    response
        .headers_mut()
        .insert(MISS_HEADER, HeaderValue::from_static(miss.as_str()));
    response
}

/// Checks a key against `limits`: not empty, not too long.
pub fn validate_key(key: &str, limits: &Limits) -> Result<(), ApiError> {
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
    async fn health_describes_the_geometry_and_readiness_needs_a_quorum() {
        let app = master_without_aux_nodes();
        let (status, body) = call(&app, "GET", "/health", "").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "liveness does not depend on aux nodes"
        );
        assert_eq!(body["status"], "unavailable");
        assert_eq!(
            (body["data_shards"].as_u64(), body["parity_shards"].as_u64()),
            (Some(3), Some(2))
        );
        assert_eq!(body["write_quorum"], 4);
        let (status, body) = call(&app, "GET", "/ready", "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }

    #[tokio::test]
    async fn admin_input_is_validated() {
        let app = master_without_aux_nodes();
        let (status, body) = call(&app, "POST", "/cluster/nodes", r#"{"address":"no-port"}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, _) = call(&app, "POST", "/cluster/nodes", r#"{"addr":"x:1"}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, body) = call(&app, "DELETE", "/cluster/nodes/nobody", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        let (status, body) = call(&app, "GET", "/cluster", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["nodes"].as_array().unwrap().len(), 6);
        assert_eq!(body["repair"]["complete"], false);
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
