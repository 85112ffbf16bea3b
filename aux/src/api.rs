//! The aux node's HTTP routes (see `shardcache_common::wire` for the contract).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use shardcache_common::cluster_token::{self, ClusterToken};
use shardcache_common::frame::{self, ShardFrame};
use shardcache_common::geometry::Geometry;
use shardcache_common::multi_put::{self, PutAnswer};
use shardcache_common::version::{HybridClock, Version};
use shardcache_common::wire::{
    AuxHealth, InventoryCursor, InventoryPage, LeaseRequest, MembershipDoc,
};
use shardcache_common::{http_limits, http_metrics, multi_get, unix_millis, wire};

use crate::lease::Leases;
use crate::membership::MembershipStore;
use crate::metrics::AuxMetrics;
use crate::snapshotter::SnapshotStatus;
use crate::store::{DeleteResult, PutResult, ShardStore};

/// Largest inventory page served, whatever the caller asks for.
const MAX_INVENTORY_PAGE: usize = 10_000;

/// Longest a request may take, reading its body included: every aux request is a
/// small, quick one, so this only ever stops a client that sends slowly or not at all.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// Shared state of the aux routes.
#[derive(Clone)]
pub(crate) struct AuxState {
    pub(crate) store: Arc<ShardStore>,
    pub(crate) max_frame_bytes: usize,
    /// `--max-clock-skew` in milliseconds: the furthest ahead of this node's clock
    /// a stored version may be stamped.
    pub(crate) max_clock_skew_ms: u64,
    /// Required on every internal route (see `cluster_token`).
    pub(crate) cluster_token: ClusterToken,
    /// `--data-shards`, `--parity-shards`: the only (k, m) stored, when given.
    pub(crate) geometry: Option<Geometry>,
    pub(crate) node_id: Arc<str>,
    /// Random per process start (see [`AuxHealth::instance`]).
    pub(crate) instance: u64,
    pub(crate) leases: Arc<Leases>,
    pub(crate) membership: Arc<MembershipStore>,
    pub(crate) snapshots: Arc<SnapshotStatus>,
    pub(crate) metrics: Arc<AuxMetrics>,
    /// Serve `/metrics` on the API listener (false with `--metrics-listen`).
    pub(crate) metrics_on_api_listener: bool,
}

/// The aux node's router.
pub(crate) fn app(state: AuxState) -> Router {
    let mut router = Router::new();
    if state.metrics_on_api_listener {
        router = router.route("/metrics", get(metrics));
    }
    let internal = Router::new()
        .route(wire::SHARDS_PATH, put(put_shard))
        .route(
            &format!("{}/{{key}}", wire::SHARDS_PATH),
            get(get_shard).delete(delete_shard),
        )
        .route(wire::MULTI_GET_PATH, post(multi_get_shards))
        .route(wire::MULTI_PUT_PATH, post(multi_put_shards))
        .route(wire::INVENTORY_PATH, get(inventory))
        .route(wire::LEASE_PATH, post(lease))
        .route(
            wire::MEMBERSHIP_PATH,
            get(get_membership).put(put_membership),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.cluster_token.clone(),
            cluster_token::require,
        ));
    let router = router
        .merge(internal)
        .route("/health", get(health))
        .fallback(no_route);
    http_limits::apply(router, state.max_frame_bytes, REQUEST_DEADLINE)
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.http.clone(),
            http_metrics::track,
        ))
        .with_state(state)
}

/// The router of the separate `--metrics-listen` address: `/metrics` only.
pub(crate) fn metrics_app(state: AuxState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .with_state(state)
}

async fn no_route() -> Response {
    error(StatusCode::NOT_FOUND, "no such route".into())
}

/// Prometheus text format; see [`crate::metrics`].
async fn metrics(State(state): State<AuxState>) -> Response {
    state
        .metrics
        .render(&state.store.stats(), &state.snapshots.report())
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// A 409 naming the newer version held, in the header masters read.
fn conflict(held: Version) -> Response {
    let mut response = error(
        StatusCode::CONFLICT,
        format!("a newer version {held} is held"),
    );
    if let Ok(value) = HeaderValue::from_str(&held.to_string()) {
        response
            .headers_mut()
            .insert(wire::CURRENT_VERSION_HEADER, value);
    }
    response
}

/// Stores a copy of the frame: the body is a view of the connection's receive
/// buffer, which must not outlive the request (it would pin kilobytes per shard).
async fn put_shard(State(state): State<AuxState>, body: Bytes) -> Response {
    match store_frame(&state, body, unix_millis()) {
        PutAnswer::Stored => StatusCode::NO_CONTENT.into_response(),
        PutAnswer::Superseded(held) => conflict(held),
        PutAnswer::Refused { status, reason } => error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            reason,
        ),
    }
}

/// Many frames, each stored (or refused) as `put_shard` would, with an answer each
/// (see `shardcache_common::multi_put`).
async fn multi_put_shards(State(state): State<AuxState>, body: Bytes) -> Response {
    let frames = match multi_put::decode_request(&body) {
        Ok(frames) => frames,
        Err(problem) => return error(StatusCode::BAD_REQUEST, problem),
    };
    let now_ms = unix_millis();
    let answers: Vec<PutAnswer> = frames
        .into_iter()
        .map(|frame| store_frame(&state, frame, now_ms))
        .collect();
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        multi_put::encode_response(&answers),
    )
        .into_response()
}

/// Decodes and stores one received frame: refused when it is corrupt, of another
/// geometry than `--data-shards`/`--parity-shards` (when given), stamped beyond
/// `--max-clock-skew` in this node's future, or larger than the store.
fn store_frame(state: &AuxState, body: Bytes, now_ms: u64) -> PutAnswer {
    let refused = |status: StatusCode, reason: String| PutAnswer::Refused {
        status: status.as_u16(),
        reason,
    };
    let mut frame = match ShardFrame::decode(body) {
        Ok(frame) => frame,
        Err(problem) => return refused(StatusCode::BAD_REQUEST, problem.to_string()),
    };
    if let Some(own) = state.geometry {
        if frame.geometry() != own {
            let (k, m) = (own.data_shards, own.parity_shards);
            return refused(
                StatusCode::BAD_REQUEST,
                format!(
                    "this aux node stores {k}+{m} shards (--data-shards {k} --parity-shards {m}); the shard is {}+{}: give its writer the same --data-shards and --parity-shards",
                    frame.data_shards, frame.parity_shards
                ),
            );
        }
    }
    let lead_ms = HybridClock::lead_of(frame.version, now_ms);
    if lead_ms > state.max_clock_skew_ms {
        return refused(
            StatusCode::BAD_REQUEST,
            format!(
                "version {} is stamped {lead_ms} ms ahead of this node's clock, beyond --max-clock-skew ({} ms): the writer's clock is off",
                frame.version, state.max_clock_skew_ms
            ),
        );
    }
    // Expiry is decided on this node's clock: the frame says how long it has left.
    frame.expiry_ms = frame::deadline_from_time_left(frame.expiry_ms, now_ms);
    match state.store.put(&frame, now_ms) {
        PutResult::Stored | PutResult::AlreadyHeld => PutAnswer::Stored,
        PutResult::Superseded(held) => PutAnswer::Superseded(held),
        PutResult::TooLarge => refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            "shard is larger than this node's capacity".into(),
        ),
    }
}

async fn get_shard(State(state): State<AuxState>, Path(key): Path<String>) -> Response {
    match state.store.get(&key, unix_millis()) {
        Some(frame) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], frame).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The shards of many keys in one answer (see `shardcache_common::multi_get`).
async fn multi_get_shards(State(state): State<AuxState>, body: Bytes) -> Response {
    let keys = match multi_get::decode_request(&body) {
        Ok(keys) => keys,
        Err(problem) => return error(StatusCode::BAD_REQUEST, problem),
    };
    let now_ms = unix_millis();
    let mut answers = multi_get::ResponseBuilder::new(keys.len(), 0);
    for key in &keys {
        answers.answer(|out| state.store.get_into(key, now_ms, out));
    }
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        answers.finish(),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct DeleteQuery {
    version: Version,
}

/// Removes a shard if it is no newer than `?version=`: the rebalancer's clean-up of a
/// node that no longer owns the key.
async fn delete_shard(
    State(state): State<AuxState>,
    Path(key): Path<String>,
    query: Result<Query<DeleteQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    match state.store.delete_up_to(&key, query.version) {
        DeleteResult::Removed => StatusCode::NO_CONTENT.into_response(),
        DeleteResult::Newer(held) => conflict(held),
    }
}

#[derive(serde::Deserialize)]
struct InventoryQuery {
    after_point: Option<u64>,
    after_key: Option<String>,
    limit: Option<usize>,
}

async fn inventory(
    State(state): State<AuxState>,
    query: Result<Query<InventoryQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    let after = match (query.after_point, query.after_key.as_deref()) {
        (Some(point), Some(key)) => Some((point, key)),
        (None, None) => None,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "after_point and after_key go together".into(),
            )
        }
    };
    let limit = query.limit.unwrap_or(1_000).clamp(1, MAX_INVENTORY_PAGE);
    let entries = state.store.inventory(after, limit, unix_millis());
    let next = (entries.len() == limit).then(|| {
        let last = &entries[entries.len() - 1];
        InventoryCursor {
            point: last.point,
            key: last.key.clone(),
        }
    });
    Json(InventoryPage { entries, next }).into_response()
}

/// Parses a JSON body whatever its content type (masters send every body as
/// `application/octet-stream`).
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|problem| format!("malformed JSON: {problem}"))
}

async fn lease(State(state): State<AuxState>, body: Bytes) -> Response {
    match parse_json::<LeaseRequest>(&body) {
        Ok(request) => Json(state.leases.request(&request, Instant::now())).into_response(),
        Err(problem) => error(StatusCode::BAD_REQUEST, problem),
    }
}

async fn get_membership(State(state): State<AuxState>) -> Response {
    match state.membership.get() {
        Some(doc) => Json(doc).into_response(),
        None => error(StatusCode::NOT_FOUND, "no membership changes known".into()),
    }
}

async fn put_membership(State(state): State<AuxState>, body: Bytes) -> Response {
    let doc: MembershipDoc = match parse_json(&body) {
        Ok(doc) => doc,
        Err(problem) => return error(StatusCode::BAD_REQUEST, problem),
    };
    match state.membership.offer(doc) {
        Ok(()) => {
            let membership = state.membership.clone();
            // Best effort and off the async threads; the copy in memory is what counts.
            let _ = tokio::task::spawn_blocking(move || membership.persist()).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(held) => conflict(held.version),
    }
}

async fn health(State(state): State<AuxState>) -> Response {
    let stats = state.store.stats();
    let summary = AuxHealth {
        status: "ok".into(),
        node_id: state.node_id.to_string(),
        instance: state.instance,
        store: wire::AuxStoreSummary {
            items: stats.items,
            tombstones: stats.tombstones,
            bytes: stats.bytes,
            capacity_bytes: stats.capacity_bytes,
        },
        membership_version: state.membership.get().map(|doc| doc.version),
        unix_ms: Some(unix_millis()),
        geometry: state.geometry,
    };
    // The typed part masters read, plus the full figures for operators.
    let mut body = serde_json::to_value(summary).unwrap_or_default();
    body["store"] = serde_json::to_value(stats).unwrap_or_default();
    body["snapshot"] = serde_json::to_value(state.snapshots.report()).unwrap_or_default();
    Json(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use shardcache_common::version::Version;
    use tower::ServiceExt;

    fn test_app() -> Router {
        test_app_storing(None)
    }

    /// A test node that stores only shards of `geometry`, when given.
    fn test_app_storing(geometry: Option<Geometry>) -> Router {
        let dir = std::env::temp_dir();
        app(AuxState {
            store: Arc::new(ShardStore::new(1 << 20)),
            max_frame_bytes: 1 << 20,
            max_clock_skew_ms: 1_000,
            cluster_token: ClusterToken::default(),
            geometry,
            node_id: "aux-test".into(),
            instance: 1,
            leases: Arc::default(),
            membership: Arc::new(MembershipStore::load(&dir.join("no-such-dir"))),
            snapshots: Arc::default(),
            metrics: Arc::new(AuxMetrics::new("aux-test")),
            metrics_on_api_listener: true,
        })
    }

    fn frame(key: &str, timestamp: u64) -> ShardFrame {
        ShardFrame {
            key: key.into(),
            version: Version {
                timestamp,
                writer: 3,
            },
            tombstone: false,
            shard_index: 1,
            data_shards: 2,
            parity_shards: 1,
            expiry_ms: 0,
            value_len: 4,
            value_checksum: 0,
            payload: Bytes::from_static(b"ab"),
        }
    }

    async fn send(app: &Router, method: &str, uri: &str, body: Bytes) -> Response {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body))
            .unwrap();
        app.clone().oneshot(request).await.unwrap()
    }

    /// Sends `frames` in one multi-put, which must answer 200, and decodes the answers.
    async fn send_multi_put(app: &Router, frames: &[Bytes]) -> Vec<PutAnswer> {
        let response = send(
            app,
            "POST",
            wire::MULTI_PUT_PATH,
            multi_put::encode_request(frames),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        multi_put::decode_response(&body, frames.len()).unwrap()
    }

    #[tokio::test]
    async fn put_then_get_returns_the_same_frame_for_awkward_keys() {
        let app = test_app();
        let key = "a/b?c#d%e 🍒";
        let encoded = frame(key, 7).encode();
        let stored = send(&app, "PUT", wire::SHARDS_PATH, encoded.clone()).await;
        assert_eq!(stored.status(), StatusCode::NO_CONTENT);
        let fetched = send(&app, "GET", &wire::shard_path(key), Bytes::new()).await;
        assert_eq!(fetched.status(), StatusCode::OK);
        let body = fetched.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, encoded);
        let missing = send(&app, "GET", &wire::shard_path("other"), Bytes::new()).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_multi_get_answers_every_key_in_order_and_refuses_bad_bodies() {
        let app = test_app();
        let held = ["one", "t/w o", "🍒"];
        let mut encoded = Vec::new();
        for key in held {
            let frame = frame(key, 5).encode();
            send(&app, "PUT", wire::SHARDS_PATH, frame.clone()).await;
            encoded.push(frame);
        }
        let asked = ["🍒", "missing", "one", "t/w o", "one"];
        let answer = send(
            &app,
            "POST",
            wire::MULTI_GET_PATH,
            multi_get::encode_request(&asked),
        )
        .await;
        assert_eq!(answer.status(), StatusCode::OK);
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        let answers = multi_get::decode_response(&body, asked.len()).unwrap();
        let expected = [
            Some(encoded[2].clone()),
            None,
            Some(encoded[0].clone()),
            Some(encoded[1].clone()),
            Some(encoded[0].clone()),
        ];
        assert_eq!(answers, expected);

        let too_many: Vec<String> = (0..=multi_get::MAX_KEYS).map(|n| n.to_string()).collect();
        for bad in [
            Bytes::from_static(b"\x00\x00"),
            Bytes::from_static(b"\x00\x00\x00\x01\x00\x00\x00\x09ab"),
            multi_get::encode_request(&too_many),
        ] {
            let refused = send(&app, "POST", wire::MULTI_GET_PATH, bad).await;
            assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
            let body = refused.into_body().collect().await.unwrap().to_bytes();
            let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(error["error"].is_string(), "{error}");
        }
    }

    #[tokio::test]
    async fn a_version_stamped_beyond_the_clock_bound_is_refused() {
        let app = test_app();
        let now_ms = unix_millis();
        let far_ahead = frame("k", (now_ms + 30_000) << 16).encode();
        let refused = send(&app, "PUT", wire::SHARDS_PATH, far_ahead).await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        let body = refused.into_body().collect().await.unwrap().to_bytes();
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(
            error["error"].as_str().unwrap().contains("clock"),
            "{error}"
        );
        let got = send(&app, "GET", &wire::shard_path("k"), Bytes::new()).await;
        assert_eq!(got.status(), StatusCode::NOT_FOUND, "nothing was stored");
        // Within the bound (and from the past) is fine.
        let near = frame("k", (now_ms + 500) << 16).encode();
        let stored = send(&app, "PUT", wire::SHARDS_PATH, near).await;
        assert_eq!(stored.status(), StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn expiry_arrives_and_leaves_as_time_left_on_this_nodes_clock() {
        let app = test_app();
        let mut expiring = frame("k", 9);
        expiring.expiry_ms = 60_000; // one minute left, whatever the writer's clock says
        let stored = send(&app, "PUT", wire::SHARDS_PATH, expiring.encode()).await;
        assert_eq!(stored.status(), StatusCode::NO_CONTENT);
        let got = send(&app, "GET", &wire::shard_path("k"), Bytes::new()).await;
        assert_eq!(got.status(), StatusCode::OK);
        let body = got.into_body().collect().await.unwrap().to_bytes();
        let served = ShardFrame::decode(body).unwrap();
        assert!(
            (59_000..=60_000).contains(&served.expiry_ms),
            "served with {} ms left",
            served.expiry_ms
        );
        let mut short = frame("gone", 9);
        short.expiry_ms = 1;
        let stored = send(&app, "PUT", wire::SHARDS_PATH, short.encode()).await;
        assert_eq!(
            stored.status(),
            StatusCode::NO_CONTENT,
            "else the 404 proves nothing"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let got = send(&app, "GET", &wire::shard_path("gone"), Bytes::new()).await;
            if got.status() == StatusCode::NOT_FOUND {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a 1 ms TTL never expired"
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn with_a_geometry_configured_shards_of_another_are_refused_single_and_batched() {
        // `frame` writes 2+1 shards.
        let app = test_app_storing(Geometry::new(3, 2).ok());
        let refused = send(&app, "PUT", wire::SHARDS_PATH, frame("k", 9).encode()).await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        let body = refused.into_body().collect().await.unwrap().to_bytes();
        let message = String::from_utf8_lossy(&body);
        assert!(
            message.contains("stores 3+2 shards") && message.contains("the shard is 2+1"),
            "{message}"
        );
        let mut ours = frame("ours", 9);
        (ours.data_shards, ours.parity_shards) = (3, 2);
        let frames = [ours.encode(), frame("theirs", 9).encode()];
        let answers = send_multi_put(&app, &frames).await;
        assert_eq!(answers[0], PutAnswer::Stored);
        assert!(
            matches!(&answers[1], PutAnswer::Refused { status: 400, reason } if reason.contains("--data-shards")),
            "{:?}",
            answers[1]
        );
        for (key, status) in [
            ("ours", StatusCode::OK),
            ("theirs", StatusCode::NOT_FOUND),
            ("k", StatusCode::NOT_FOUND),
        ] {
            let got = send(&app, "GET", &wire::shard_path(key), Bytes::new()).await;
            assert_eq!(got.status(), status, "{key}");
        }
        // Unconfigured, the same shard is taken.
        let open = test_app();
        let stored = send(&open, "PUT", wire::SHARDS_PATH, frame("k", 9).encode()).await;
        assert_eq!(stored.status(), StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn a_multi_put_answers_every_frame_as_a_single_put_would() {
        let app = test_app();
        send(&app, "PUT", wire::SHARDS_PATH, frame("held", 9).encode()).await;
        let mut corrupt = frame("bad", 5).encode().to_vec();
        corrupt[60] ^= 1;
        let frames = [
            frame("new", 5).encode(),
            frame("held", 8).encode(),
            Bytes::from(corrupt),
            frame("future", (unix_millis() + 30_000) << 16).encode(),
        ];
        let answers = send_multi_put(&app, &frames).await;
        assert_eq!(answers[0], PutAnswer::Stored);
        assert_eq!(
            answers[1],
            PutAnswer::Superseded(Version {
                timestamp: 9,
                writer: 3
            })
        );
        assert!(
            matches!(&answers[2], PutAnswer::Refused { status: 400, reason } if reason.contains("checksum")),
            "{:?}",
            answers[2]
        );
        assert!(
            matches!(&answers[3], PutAnswer::Refused { status: 400, reason } if reason.contains("clock")),
            "{:?}",
            answers[3]
        );
        let stored = send(&app, "GET", &wire::shard_path("new"), Bytes::new()).await;
        assert_eq!(stored.status(), StatusCode::OK);
        let refused = send(
            &app,
            "POST",
            wire::MULTI_PUT_PATH,
            Bytes::from_static(b"\x00"),
        )
        .await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn older_versions_get_409_naming_the_held_version() {
        let app = test_app();
        send(&app, "PUT", wire::SHARDS_PATH, frame("k", 9).encode()).await;
        let stale = send(&app, "PUT", wire::SHARDS_PATH, frame("k", 8).encode()).await;
        assert_eq!(stale.status(), StatusCode::CONFLICT);
        let held = stale.headers()[wire::CURRENT_VERSION_HEADER]
            .to_str()
            .unwrap();
        assert_eq!(held.parse::<Version>().unwrap().timestamp, 9);
    }

    #[tokio::test]
    async fn leases_and_membership_accept_json_sent_as_octet_stream() {
        let app = test_app();
        let request = r#"{"name":"repair","holder":"m1","ttl_ms":1000}"#;
        let granted = send(&app, "POST", wire::LEASE_PATH, Bytes::from(request)).await;
        assert_eq!(granted.status(), StatusCode::OK);
        let body = granted.into_body().collect().await.unwrap().to_bytes();
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["granted"], true);
        let other = r#"{"name":"repair","holder":"m2","ttl_ms":1000}"#;
        let refused = send(&app, "POST", wire::LEASE_PATH, Bytes::from(other)).await;
        let body = refused.into_body().collect().await.unwrap().to_bytes();
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (answer["granted"].as_bool(), answer["holder"].as_str()),
            (Some(false), Some("m1"))
        );

        let doc = MembershipDoc {
            version: Version {
                timestamp: 5,
                writer: 1,
            },
            ..MembershipDoc::default()
        };
        let body = Bytes::from(serde_json::to_vec(&doc).unwrap());
        let stored = send(&app, "PUT", wire::MEMBERSHIP_PATH, body.clone()).await;
        assert_eq!(stored.status(), StatusCode::NO_CONTENT);
        let again = send(&app, "PUT", wire::MEMBERSHIP_PATH, body).await;
        assert_eq!(
            again.status(),
            StatusCode::CONFLICT,
            "not newer than the held one"
        );
        let bad = send(&app, "POST", wire::LEASE_PATH, Bytes::from_static(b"{")).await;
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn a_body_declared_larger_than_the_limit_is_refused_before_it_is_read() {
        let app = test_app();
        let never = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let request = Request::builder()
            .method("PUT")
            .uri(wire::SHARDS_PATH)
            .header(header::CONTENT_LENGTH, "99999999999")
            .body(never)
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(
            json["error"].as_str().unwrap().contains("over the"),
            "{json}"
        );
    }

    #[tokio::test]
    async fn corrupt_frames_are_rejected_with_400() {
        let app = test_app();
        let mut corrupt = frame("k", 1).encode().to_vec();
        corrupt[60] ^= 1;
        let response = send(&app, "PUT", wire::SHARDS_PATH, Bytes::from(corrupt)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(json["error"].as_str().unwrap().contains("checksum"));
    }
}
