//! Shared test helpers: a cluster with its own temp dir, an HTTP client, random
//! values, and `wait_until` (tests wait on conditions, never on sleeps).

use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::StatusCode;
use serde_json::{json, Value};
use shardcache::harness::{ClusterSpec, LocalCluster};
use shardcache_common::frame::{shard_len, ShardFrame};
use shardcache_common::ring::{Ring, DEFAULT_VNODES};
use shardcache_common::version::Version;
use shardcache_common::wire::{self, encode_key, InventoryEntry, InventoryPage};

/// Runs `scripts/install-test-tools` once per test process: the tests that run
/// Debian's tools (libfaketime, wrk, nginx) call this first, so that the README's one
/// test command works on a fresh machine (it installs only what is missing).
pub fn install_test_tools() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the cluster crate sits in the workspace root")
            .to_owned();
        let status = std::process::Command::new(root.join("scripts/install-test-tools"))
            .arg(root.join("target/e2e-venv"))
            .status()
            .expect("run scripts/install-test-tools");
        assert!(
            status.success(),
            "scripts/install-test-tools failed ({status}); it needs apt-get (as root or with sudo) and PyPI"
        );
    });
}

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
        spec.aux_args = vec![
            "--capacity".into(),
            "512MiB".into(),
            "--snapshot-interval".into(),
            "1s".into(),
        ];
        // Fast failure detection and a short grace period, so recovery tests run in
        // seconds.
        spec.master_args = vec![
            "--probe-interval".into(),
            "100ms".into(),
            "--probe-timeout".into(),
            "300ms".into(),
            "--repair-grace".into(),
            "2s".into(),
        ];
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

    /// The owners of `key` in rank order while every aux node is up, computed the
    /// way every master does (over the node identities `aux-N`).
    pub fn owners(&self, key: &str) -> Vec<usize> {
        let ids: Vec<String> = self
            .cluster
            .aux
            .iter()
            .map(|node| node.name.clone())
            .collect();
        let ring = Ring::new(ids.clone(), DEFAULT_VNODES);
        let total = usize::from(self.cluster.spec.data_shards + self.cluster.spec.parity_shards);
        ring.owners(key, total)
            .into_iter()
            .map(|owner| ids.iter().position(|id| id == owner).unwrap())
            .collect()
    }

    /// `GET /cluster` of master `index`.
    pub async fn cluster_view(&self, index: usize) -> Value {
        let response = self
            .http
            .get(format!("{}/cluster", self.cluster.master_url(index)))
            .send()
            .await
            .expect("GET /cluster");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("cluster JSON")
    }

    /// `GET /cluster` of master `index`, or `None` if it could not be had: for
    /// waiting on a master just restarted, whose old pooled connection may still
    /// be in the client's pool.
    pub async fn try_cluster_view(&self, index: usize) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}/cluster", self.cluster.master_url(index)))
            .send()
            .await
            .ok()?;
        if response.status() != StatusCode::OK {
            return None;
        }
        response.json().await.ok()
    }

    /// The state (`up`, `suspect`, `down`) master `index` gives aux node `aux`.
    /// `None` too while the master cannot be asked (just restarted, say).
    pub async fn node_state(&self, master: usize, aux: usize) -> Option<String> {
        let view = self.try_cluster_view(master).await?;
        let id = &self.cluster.aux[aux].name;
        view["nodes"]
            .as_array()?
            .iter()
            .find(|node| node["id"] == id.as_str())
            .and_then(|node| node["state"].as_str().map(str::to_owned))
    }

    /// Waits until every master sees aux node `aux` in `state`.
    pub async fn wait_for_state(&self, aux: usize, state: &str) {
        wait_until(
            &format!("aux-{aux} to be {state} on every master"),
            Duration::from_secs(30),
            || async {
                for master in 0..self.cluster.masters.len() {
                    if self.node_state(master, aux).await.as_deref() != Some(state) {
                        return false;
                    }
                }
                true
            },
        )
        .await;
    }

    /// Waits until a master reports repair complete for its current placement, and
    /// returns that master's `/cluster`.
    pub async fn wait_for_repair(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            for master in 0..self.cluster.masters.len() {
                let view = self.cluster_view(master).await;
                if view["repair"]["complete"] == true {
                    return view;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for repair to complete"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /metrics` of master 0, parsed.
    pub async fn master_scrape(&self) -> Scrape {
        Scrape::fetch(&self.http, &format!("{}/metrics", self.master())).await
    }

    /// `GET /metrics` of aux node `aux`, parsed.
    pub async fn aux_scrape(&self, aux: usize) -> Scrape {
        let addr = self.cluster.aux[aux].addr;
        Scrape::fetch(&self.http, &format!("http://{addr}/metrics")).await
    }

    /// The placement epoch of master 0: it grows whenever a node joins, leaves, goes
    /// down, comes up or restarts.
    pub async fn placement_epoch(&self) -> u64 {
        self.cluster_view(0).await["placement_epoch"]
            .as_u64()
            .expect("placement_epoch")
    }

    /// Waits until master 0 has seen placement change since `epoch` (a restart it
    /// may not have noticed yet), then until repair is complete.
    pub async fn wait_for_repair_after(&self, epoch: u64) -> Value {
        wait_until(
            "the master to notice the change",
            Duration::from_secs(30),
            || async { self.placement_epoch().await > epoch },
        )
        .await;
        self.wait_for_repair().await
    }

    /// `/health` of aux node `aux`, `None` if it does not answer.
    pub async fn aux_health(&self, aux: usize) -> Option<Value> {
        let addr = self.cluster.aux[aux].addr;
        let response = self
            .http
            .get(format!("http://{addr}/health"))
            .timeout(Duration::from_millis(500))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// Waits until aux node `aux` wrote a snapshot that started after `since_ms`.
    pub async fn wait_for_snapshot(&self, aux: usize, since_ms: u64) {
        wait_until(
            &format!("a snapshot of aux-{aux}"),
            Duration::from_secs(30),
            || async {
                self.aux_health(aux).await.is_some_and(|health| {
                    health["snapshot"]["last_success_at_ms"]
                        .as_u64()
                        .is_some_and(|at| at > since_ms + 1)
                })
            },
        )
        .await;
    }

    /// `PUT /v1/shards` of `frame` straight to aux node `aux`.
    pub async fn put_frame(&self, aux: usize, frame: &ShardFrame) -> reqwest::Response {
        let addr = self.cluster.aux[aux].addr;
        self.http
            .put(format!("http://{addr}{}", wire::SHARDS_PATH))
            .body(frame.encode())
            .send()
            .await
            .expect("PUT a frame")
    }

    /// Every shard header aux node `aux` holds, from its inventory.
    pub async fn aux_inventory(&self, aux: usize) -> Vec<InventoryEntry> {
        let addr = self.cluster.aux[aux].addr;
        let mut entries = Vec::new();
        let mut cursor: Option<(u64, String)> = None;
        // Test stores hold far fewer than 100 pages; more means the cursor is stuck.
        for _page in 0..100 {
            let mut url = format!("http://{addr}/v1/inventory?limit=5000");
            if let Some((point, key)) = &cursor {
                url.push_str(&format!(
                    "&after_point={point}&after_key={}",
                    encode_key(key)
                ));
            }
            let page: InventoryPage = self
                .http
                .get(url)
                .send()
                .await
                .expect("inventory")
                .json()
                .await
                .expect("inventory JSON");
            entries.extend(page.entries);
            match page.next {
                Some(next) => cursor = Some((next.point, next.key)),
                None => return entries,
            }
        }
        panic!("aux-{aux}'s inventory did not end within 100 pages");
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

    /// Announces a `length`-byte body for `method path` with `Expect: 100-continue`,
    /// as curl does for large uploads, and returns the status the master answers
    /// before any body is sent (a client sending the body at once could meet a
    /// reset instead of the answer).
    pub async fn announced_body_status(&self, method: &str, path: &str, length: usize) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.cluster.masters[0].addr)
            .await
            .expect("connect to the master");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: shardcache\r\nContent-Type: application/json\r\n\
             Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
        );
        stream
            .write_all(head.as_bytes())
            .await
            .expect("send the head");
        let mut response = vec![0u8; 4096];
        let read = stream.read(&mut response).await.expect("read the answer");
        let status_line = String::from_utf8_lossy(&response[..read])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
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

/// Shard 0 of `value` for `key` in geometry `data_shards`+`parity_shards`, with a
/// consistent value checksum and a version stamped now (newer than any write made
/// before this millisecond, and not from the future, which aux nodes refuse): a
/// frame as a master would write it, for tests that put frames on aux nodes
/// directly.
pub fn first_shard(key: &str, value: &[u8], data_shards: u8, parity_shards: u8) -> ShardFrame {
    ShardFrame {
        key: key.into(),
        version: Version {
            timestamp: (shardcache_common::unix_millis() << 16) + 1,
            writer: 7,
        },
        tombstone: false,
        shard_index: 0,
        data_shards,
        parity_shards,
        expiry_ms: 0,
        value_len: value.len() as u64,
        value_checksum: shardcache_common::codec::value_checksum(value),
        payload: bytes::Bytes::copy_from_slice(
            &value[..shard_len(value.len() as u64, data_shards)],
        ),
    }
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

/// One sample: metric name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// One `GET /metrics` answer, parsed from the Prometheus text format.
pub struct Scrape {
    pub text: String,
    /// `(name, labels, value)` of every sample.
    samples: Vec<Sample>,
}

impl Scrape {
    /// Fetches and parses `url` (a full `http://…/metrics` URL).
    pub async fn fetch(http: &reqwest::Client, url: &str) -> Scrape {
        let response = http.get(url).send().await.expect("GET /metrics");
        assert_eq!(response.status(), StatusCode::OK, "GET {url}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        Scrape::parse(response.text().await.expect("metrics body"))
    }

    fn parse(text: String) -> Scrape {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("sample has a value");
                let value: f64 = value.parse().expect("sample value is a number");
                let Some((name, labels)) = series.split_once('{') else {
                    return (series.to_owned(), Vec::new(), value);
                };
                let labels = labels.strip_suffix('}').expect("labels end with }");
                (name.to_owned(), parse_labels(labels), value)
            })
            .collect();
        Scrape { text, samples }
    }

    /// The sum of `name` over the samples whose labels include all of `filter`;
    /// `None` when no sample matches (the series does not exist).
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> Option<f64> {
        let mut matched = self
            .samples
            .iter()
            .filter(|(sample, labels, _)| {
                sample == name
                    && filter
                        .iter()
                        .all(|(key, value)| labels.iter().any(|(k, v)| k == key && v == value))
            })
            .map(|(_, _, value)| *value)
            .peekable();
        matched.peek()?;
        Some(matched.sum())
    }

    /// Like [`Scrape::sum`], but the series must exist.
    pub fn value(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.sum(name, filter)
            .unwrap_or_else(|| panic!("no series {name} {filter:?} in:\n{}", self.text))
    }
}

/// `a="x",b="y \" z"` → `[(a, x), (b, y " z)]`.
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((at, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, escaped)) => value.push(escaped),
                    None => {}
                },
                '"' => {
                    end = at + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.push((name.trim_start_matches(',').to_owned(), value));
        rest = &after[end..];
    }
    labels
}
