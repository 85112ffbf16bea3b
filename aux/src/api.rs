//! The aux node's HTTP routes (see `shardcache_common::wire` for the contract).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use shardcache_common::frame::ShardFrame;
use shardcache_common::{unix_millis, wire};

use crate::store::{PutResult, ShardStore};

/// Shared state of the aux routes.
#[derive(Clone)]
pub struct AuxState {
    pub store: Arc<ShardStore>,
    pub max_frame_bytes: usize,
}

/// The aux node's router.
pub fn app(state: AuxState) -> Router {
    Router::new()
        .route(wire::SHARDS_PATH, put(put_shard))
        .route(&format!("{}/{{key}}", wire::SHARDS_PATH), get(get_shard))
        .route("/health", get(health))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route".into()) })
        .layer(DefaultBodyLimit::max(state.max_frame_bytes))
        .with_state(state)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn put_shard(State(state): State<AuxState>, body: Bytes) -> Response {
    let frame = match ShardFrame::decode(body.clone()) {
        Ok(frame) => frame,
        Err(problem) => return error(StatusCode::BAD_REQUEST, problem.to_string()),
    };
    match state.store.put(&frame, body, unix_millis()) {
        PutResult::Stored | PutResult::AlreadyHeld => StatusCode::NO_CONTENT.into_response(),
        PutResult::Superseded(held) => {
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
        PutResult::TooLarge => error(
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

async fn health(State(state): State<AuxState>) -> Response {
    let stats = state.store.stats();
    Json(serde_json::json!({ "status": "ok", "store": stats })).into_response()
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
        app(AuxState {
            store: Arc::new(ShardStore::new(1 << 20)),
            max_frame_bytes: 1 << 20,
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
            expires_at_ms: 0,
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
