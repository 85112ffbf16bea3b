//! The master's typed client for the aux node API ([`crate::wire`]).
//!
//! Built on hyper-util's pooled HTTP/1 client: connections to each aux node are kept
//! alive and reused. Every call is bounded by the client's timeout, covering connect,
//! request and the whole response body (invariant 6): a hung aux node costs one
//! timeout, never a stuck task. The client is generic over its connector so that a
//! simulated network can be plugged in later without touching callers.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::frame::{FrameError, ShardFrame};
use crate::multi_get;
use crate::multi_put::{self, PutAnswer};
use crate::version::Version;
use crate::wire::{
    self, AuxHealth, InventoryCursor, InventoryPage, LeaseAnswer, LeaseRequest, MembershipDoc,
};

/// What an aux node did with a shard it was asked to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The shard is stored (or was already held at exactly this version).
    Stored,
    /// The node holds a newer version of the key and kept it (conditional put).
    Superseded(Version),
}

/// Why a call to an aux node failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuxError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("transport error: {0}")]
    Transport(String),
    #[error("unexpected status {0}")]
    Status(StatusCode),
    /// The node refused what was sent, and said why (a shard put's `{"error": …}`).
    #[error("refused ({status}): {reason}")]
    Refused { status: StatusCode, reason: String },
    #[error("malformed shard frame: {0}")]
    BadFrame(#[from] FrameError),
    #[error("malformed JSON answer: {0}")]
    BadJson(String),
}

/// The error of a refused call: [`AuxError::Refused`] with the node's reason when
/// its body is the JSON error shape, else [`AuxError::Status`].
fn refusal(status: StatusCode, body: &[u8]) -> AuxError {
    let reason = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|body| body["error"].as_str().map(str::to_owned));
    match reason {
        Some(reason) => AuxError::Refused { status, reason },
        None => AuxError::Status(status),
    }
}

/// A pooled, timeout-bounded client for aux nodes addressed as `host:port`.
#[derive(Clone, Debug)]
pub struct AuxClient<C = HttpConnector> {
    http: Client<C, Full<Bytes>>,
    timeout: Duration,
    max_response_bytes: usize,
    /// `Authorization` sent with every call (see `cluster_token`).
    authorization: Option<http::HeaderValue>,
}

impl AuxClient<HttpConnector> {
    /// A client over plain TCP whose every call gives up after `timeout`, reading
    /// response bodies of at most `max_response_bytes`.
    pub fn new(timeout: Duration, max_response_bytes: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        Self::with_connector(connector, timeout, max_response_bytes)
    }
}

impl<C> AuxClient<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    /// A client over any hyper connector (a simulated network in tests, say).
    pub fn with_connector(connector: C, timeout: Duration, max_response_bytes: usize) -> Self {
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        AuxClient {
            http,
            authorization: None,
            timeout,
            max_response_bytes,
        }
    }

    /// The same client presenting `token` on every call.
    pub fn with_token(mut self, token: &crate::cluster_token::ClusterToken) -> Self {
        self.authorization = token.header_value();
        self
    }

    /// How long any one call may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Stores an encoded frame on `node`, unless it holds a newer version of the key.
    pub async fn put_shard(&self, node: &str, frame: Bytes) -> Result<PutOutcome, AuxError> {
        let (status, headers, body) = self
            .call(Method::PUT, node, wire::SHARDS_PATH, frame)
            .await?;
        match status {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(PutOutcome::Stored),
            StatusCode::CONFLICT => Ok(PutOutcome::Superseded(current_version(&headers))),
            other => Err(refusal(other, &body)),
        }
    }

    /// Reads the shard (or tombstone) `node` holds for `key`; `None` if it has none.
    pub async fn get_shard(&self, node: &str, key: &str) -> Result<Option<ShardFrame>, AuxError> {
        let path = wire::shard_path(key);
        let (status, _, body) = self.call(Method::GET, node, &path, Bytes::new()).await?;
        match status {
            StatusCode::OK => Ok(Some(ShardFrame::decode(body)?)),
            StatusCode::NOT_FOUND => Ok(None),
            other => Err(AuxError::Status(other)),
        }
    }

    /// Reads the shards `node` holds for each of `keys` in one request: one answer
    /// per key, in order — the frame, `None` if it holds none, or the error of a frame
    /// that fails to decode. The response may be up to one frame per key.
    pub async fn multi_get_shards<K: AsRef<str>>(
        &self,
        node: &str,
        keys: &[K],
    ) -> Result<Vec<Result<Option<ShardFrame>, FrameError>>, AuxError> {
        let body = multi_get::encode_request(keys);
        let limit = self.max_response_bytes.saturating_mul(keys.len().max(1));
        let (status, _, body) = self
            .call_limited(Method::POST, node, wire::MULTI_GET_PATH, body, limit)
            .await?;
        if status != StatusCode::OK {
            return Err(AuxError::Status(status));
        }
        let answers = multi_get::decode_response(&body, keys.len()).map_err(|problem| {
            AuxError::Transport(format!("malformed multi-get answer: {problem}"))
        })?;
        Ok(answers
            .into_iter()
            .map(|answer| answer.map(ShardFrame::decode).transpose())
            .collect())
    }

    /// Stores many encoded frames on `node` in one request: each answered as
    /// [`put_shard`](Self::put_shard) would answer it alone.
    pub async fn multi_put_shards(
        &self,
        node: &str,
        frames: &[Bytes],
    ) -> Result<Vec<Result<PutOutcome, AuxError>>, AuxError> {
        let body = multi_put::encode_request(frames);
        let (status, _, body) = self
            .call(Method::POST, node, wire::MULTI_PUT_PATH, body)
            .await?;
        if status != StatusCode::OK {
            return Err(AuxError::Status(status));
        }
        let answers = multi_put::decode_response(&body, frames.len()).map_err(|problem| {
            AuxError::Transport(format!("malformed multi-put answer: {problem}"))
        })?;
        Ok(answers
            .into_iter()
            .map(|answer| match answer {
                PutAnswer::Stored => Ok(PutOutcome::Stored),
                PutAnswer::Superseded(held) => Ok(PutOutcome::Superseded(held)),
                PutAnswer::Refused { status, reason } => Err(AuxError::Refused {
                    status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                    reason,
                }),
            })
            .collect())
    }

    /// Removes `node`'s shard of `key` if it is `version` or older.
    pub async fn delete_shard(
        &self,
        node: &str,
        key: &str,
        version: Version,
    ) -> Result<PutOutcome, AuxError> {
        let path = format!("{}?version={version}", wire::shard_path(key));
        let (status, headers, _) = self.call(Method::DELETE, node, &path, Bytes::new()).await?;
        match status {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(PutOutcome::Stored),
            StatusCode::CONFLICT => Ok(PutOutcome::Superseded(current_version(&headers))),
            other => Err(AuxError::Status(other)),
        }
    }

    /// The node's identity and store figures.
    pub async fn health(&self, node: &str) -> Result<AuxHealth, AuxError> {
        self.get_json(node, "/health").await
    }

    /// One page of `node`'s inventory, after `cursor` (from the start if `None`).
    pub async fn inventory(
        &self,
        node: &str,
        cursor: Option<&InventoryCursor>,
        limit: usize,
    ) -> Result<InventoryPage, AuxError> {
        let mut path = format!("{}?limit={limit}", wire::INVENTORY_PATH);
        if let Some(cursor) = cursor {
            path.push_str(&format!(
                "&after_point={}&after_key={}",
                cursor.point,
                wire::encode_key(&cursor.key)
            ));
        }
        self.get_json(node, &path).await
    }

    /// Asks `node` to grant (or extend) a lease.
    pub async fn lease(&self, node: &str, request: &LeaseRequest) -> Result<LeaseAnswer, AuxError> {
        let body =
            serde_json::to_vec(request).map_err(|error| AuxError::Transport(error.to_string()))?;
        let (status, _, body) = self
            .call(Method::POST, node, wire::LEASE_PATH, Bytes::from(body))
            .await?;
        match status {
            StatusCode::OK => parse_json(&body),
            other => Err(AuxError::Status(other)),
        }
    }

    /// The membership document `node` holds, if any.
    pub async fn membership(&self, node: &str) -> Result<Option<MembershipDoc>, AuxError> {
        match self.get_json(node, wire::MEMBERSHIP_PATH).await {
            Ok(doc) => Ok(Some(doc)),
            Err(AuxError::Status(StatusCode::NOT_FOUND)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Offers `doc` to `node`; it keeps it unless it holds a newer one.
    pub async fn offer_membership(
        &self,
        node: &str,
        doc: &MembershipDoc,
    ) -> Result<PutOutcome, AuxError> {
        let body =
            serde_json::to_vec(doc).map_err(|error| AuxError::Transport(error.to_string()))?;
        let (status, headers, _) = self
            .call(Method::PUT, node, wire::MEMBERSHIP_PATH, Bytes::from(body))
            .await?;
        match status {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(PutOutcome::Stored),
            StatusCode::CONFLICT => Ok(PutOutcome::Superseded(current_version(&headers))),
            other => Err(AuxError::Status(other)),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        node: &str,
        path: &str,
    ) -> Result<T, AuxError> {
        let (status, _, body) = self.call(Method::GET, node, path, Bytes::new()).await?;
        match status {
            StatusCode::OK => parse_json(&body),
            other => Err(AuxError::Status(other)),
        }
    }

    async fn call(
        &self,
        method: Method,
        node: &str,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), AuxError> {
        self.call_limited(method, node, path, body, self.max_response_bytes)
            .await
    }

    /// [`Self::call`] reading a response body of at most `max_response_bytes`.
    async fn call_limited(
        &self,
        method: Method,
        node: &str,
        path: &str,
        body: Bytes,
        max_response_bytes: usize,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), AuxError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{node}{path}"))
            .header(header::CONTENT_TYPE, "application/octet-stream");
        if let Some(authorization) = &self.authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|error| AuxError::Transport(format!("build request: {error}")))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|error| AuxError::Transport(error_chain(&error)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, max_response_bytes)
                .collect()
                .await
                .map_err(|error| AuxError::Transport(format!("read body: {error}")))?
                .to_bytes();
            Ok((parts.status, parts.headers, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| AuxError::Timeout(self.timeout))?
    }
}

/// The version a 409 answer names as held instead.
fn current_version(headers: &http::HeaderMap) -> Version {
    headers
        .get(wire::CURRENT_VERSION_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse().ok())
        .unwrap_or_default()
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AuxError> {
    serde_json::from_slice(body).map_err(|error| AuxError::BadJson(error.to_string()))
}

/// The error and its sources on one line ("client error (Connect): connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_carries_the_nodes_reason_when_it_gave_one() {
        let refused = refusal(
            StatusCode::BAD_REQUEST,
            br#"{"error":"this aux node stores 3+2 shards"}"#,
        );
        assert!(
            matches!(&refused, AuxError::Refused { status, reason }
                if *status == StatusCode::BAD_REQUEST && reason == "this aux node stores 3+2 shards"),
            "{refused:?}"
        );
        assert_eq!(
            refused.to_string(),
            "refused (400 Bad Request): this aux node stores 3+2 shards"
        );
        for body in [&b""[..], b"not json", br#"{"other":1}"#] {
            assert!(matches!(
                refusal(StatusCode::BAD_GATEWAY, body),
                AuxError::Status(StatusCode::BAD_GATEWAY)
            ));
        }
    }
}
