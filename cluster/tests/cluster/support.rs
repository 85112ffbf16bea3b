//! Shared test helpers: a cluster with its own temp dir, an HTTP client, random
//! values, and `wait_until` (tests wait on conditions, never on sleeps).

use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::StatusCode;
use serde_json::{json, Value};
use shardcache::harness::{ClusterSpec, LocalCluster};
use shardcache_common::ring::{Ring, DEFAULT_VNODES};
use shardcache_common::wire::encode_key;

/// A running cluster that owns its data directory.
pub struct TestCluster {
    pub cluster: LocalCluster,
    pub http: reqwest::Client,
    // Dropped after `cluster` (fields drop in order), so logs stay readable on panic.
    _data_dir: tempfile::TempDir,
}

impl TestCluster {
    /// One master, six aux nodes, 3+2, default flags.
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Like [`TestCluster::start`], after `adjust` edits the spec.
    pub fn start_with(adjust: impl FnOnce(&mut ClusterSpec)) -> Self {
        let data_dir = tempfile::tempdir().expect("create temp dir");
        let mut spec = ClusterSpec::new(data_dir.path());
        spec.aux_args = vec!["--capacity".into(), "512MiB".into()];
        adjust(&mut spec);
        let cluster =
            LocalCluster::start(env!("CARGO_BIN_EXE_shardcache"), spec).expect("start cluster");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("build http client");
        TestCluster {
            cluster,
            http,
            _data_dir: data_dir,
        }
    }

    pub fn master(&self) -> String {
        self.cluster.master_url(0)
    }

    /// The owners of `key` in rank order, computed the way every master does.
    pub fn owners(&self, key: &str) -> Vec<usize> {
        let addrs: Vec<String> = self
            .cluster
            .aux
            .iter()
            .map(|node| node.addr.to_string())
            .collect();
        let ring = Ring::new(addrs.clone(), DEFAULT_VNODES);
        let total = usize::from(self.cluster.spec.data_shards + self.cluster.spec.parity_shards);
        ring.owners(key, total)
            .into_iter()
            .map(|owner| addrs.iter().position(|addr| addr == owner).unwrap())
            .collect()
    }

    pub async fn set(&self, key: &str, value: &str) -> (StatusCode, Value) {
        self.post_json(&json!({ "key": key, "value": value })).await
    }

    pub async fn post_json(&self, body: &Value) -> (StatusCode, Value) {
        self.post_raw(body.to_string()).await
    }

    pub async fn post_raw(&self, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}/data", self.master()))
            .body(body)
            .send()
            .await
            .expect("POST /data");
        into_status_and_json(response).await
    }

    /// `GET /data/{key}`: the status and the JSON body.
    pub async fn get(&self, key: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::GET, &format!("/data/{}", encode_key(key)))
            .await
    }

    /// The value of `key`, `None` on 404; panics on any other answer.
    pub async fn value(&self, key: &str) -> Option<String> {
        let (status, body) = self.get(key).await;
        match status {
            StatusCode::OK => {
                assert_eq!(body["key"], key, "GET answered for another key");
                Some(
                    body["value"]
                        .as_str()
                        .expect("value is a string")
                        .to_owned(),
                )
            }
            StatusCode::NOT_FOUND => None,
            other => panic!("GET {key:?} answered {other}: {body}"),
        }
    }

    pub async fn delete(&self, key: &str) -> (StatusCode, Value) {
        self.request(
            reqwest::Method::DELETE,
            &format!("/data/{}", encode_key(key)),
        )
        .await
    }

    /// Any request to the master with a raw path.
    pub async fn request(&self, method: reqwest::Method, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .request(method, format!("{}{path}", self.master()))
            .send()
            .await
            .expect("request to master");
        into_status_and_json(response).await
    }

    /// Shards (and tombstones) held by each aux node, from its `/health`; `None` for
    /// a node that does not answer.
    pub async fn aux_items(&self) -> Vec<Option<u64>> {
        let mut counts = Vec::new();
        for node in &self.cluster.aux {
            let health = self
                .http
                .get(format!("http://{}/health", node.addr))
                .timeout(Duration::from_millis(500))
                .send()
                .await;
            let items = match health {
                Ok(response) => response
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|body| body["store"]["items"].as_u64()),
                Err(_) => None,
            };
            counts.push(items);
        }
        counts
    }

    /// Waits until every aux node together holds `expected` entries: the shards an
    /// acknowledged write left in flight have all landed.
    pub async fn wait_for_aux_items(&self, expected: u64) {
        wait_until(
            &format!("{expected} shards on the aux nodes"),
            Duration::from_secs(30),
            || async { self.aux_items().await.into_iter().flatten().sum::<u64>() == expected },
        )
        .await;
    }
}

async fn into_status_and_json(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap_or_default().to_owned());
    let text = response.text().await.expect("read response body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| {
        panic!("status {status}: body is not JSON ({content_type:?}): {text:?}")
    });
    (status, body)
}

/// Polls `condition` every 20 ms until it holds, panicking after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A random string of about `len` UTF-8 bytes, with characters JSON must escape and
/// multi-byte characters mixed in.
pub fn random_value(rng: &mut impl Rng, len: usize) -> String {
    const SPICE: [&str; 8] = ["\"", "\\", "\n", "é", "🍒", "\u{0}", "€", "/"];
    let mut value = String::with_capacity(len + 4);
    while value.len() < len {
        if rng.random_ratio(1, 20) {
            value.push_str(SPICE[rng.random_range(0..SPICE.len())]);
        } else {
            value.push(rng.random_range(b'a'..=b'z') as char);
        }
    }
    value
}
