//! Clocks: a master whose wall clock is off (libfaketime from Debian, preloaded into
//! the real master process) is measured from its health probes, reported in
//! `/cluster`, `/health` and `/metrics`, and refused writes past `--max-clock-skew`;
//! inside the bound nothing is lost, and a TTL lasts as long as it says on the aux
//! nodes' clocks, whichever master's clock wrote it.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{install_test_tools, wait_until, Scrape, TestCluster};

/// Where Debian's `libfaketime` package puts the library (`.ci/run` installs it
/// through `scripts/install-test-tools`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Restarts master `index` with its wall clock moved by `offset` (libfaketime's
/// syntax, e.g. `+30s`); the monotonic clock, which timeouts use, is left alone.
fn skew_master(cluster: &mut TestCluster, index: usize, offset: &str) {
    install_test_tools();
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: run scripts/install-test-tools"
    );
    cluster
        .cluster
        .restart_master_with_env(
            index,
            &[
                ("LD_PRELOAD", LIBFAKETIME),
                ("FAKETIME", offset),
                ("DONT_FAKE_MONOTONIC", "1"),
            ],
        )
        .expect("restart master with a skewed clock");
}

async fn send(
    cluster: &TestCluster,
    master: usize,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let url = format!("{}{path}", cluster.cluster.master_url(master));
    let mut request = cluster.http.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn write(cluster: &TestCluster, master: usize, body: Value) -> (StatusCode, Value) {
    send(cluster, master, reqwest::Method::POST, "/data", Some(body)).await
}

async fn read(cluster: &TestCluster, master: usize, key: &str) -> (StatusCode, Value) {
    send(
        cluster,
        master,
        reqwest::Method::GET,
        &format!("/data/{key}"),
        None,
    )
    .await
}

/// Waits until master `index` has measured its clock against the aux nodes and
/// returns the `clock` part of its `/cluster`.
async fn measured_clock(cluster: &TestCluster, index: usize, lead_ms: i64) -> Value {
    let near = |clock: &Value| {
        clock["lead_ms"]
            .as_i64()
            .is_some_and(|lead| (lead - lead_ms).abs() < 2_000)
    };
    wait_until(
        "the master measures its clock",
        Duration::from_secs(20),
        || async {
            let view = cluster.try_cluster_view(index).await;
            view.is_some_and(|view| near(&view["clock"]))
        },
    )
    .await;
    cluster.cluster_view(index).await["clock"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_whose_clock_is_off_reports_it_and_refuses_writes() {
    let mut cluster = TestCluster::start_with(|spec| spec.masters = 2);
    let (status, _) = write(&cluster, 0, json!({"key": "kept", "value": "before"})).await;
    assert_eq!(status, 200);

    for offset in ["+30s", "-30s"] {
        skew_master(&mut cluster, 1, offset);
        let lead_ms = if offset.starts_with('+') {
            30_000
        } else {
            -30_000
        };
        let clock = measured_clock(&cluster, 1, lead_ms).await;
        assert_eq!(clock["beyond_bound"], true, "{clock}");
        assert_eq!(clock["max_skew_ms"], 1_000, "{clock}");
        let (_, health) = send(&cluster, 1, reqwest::Method::GET, "/health", None).await;
        assert_eq!(health["status"], "degraded", "{health}");
        let scrape = Scrape::fetch(
            &cluster.http,
            &format!("{}/metrics", cluster.cluster.master_url(1)),
        )
        .await;
        assert_eq!(
            scrape.value("shardcache_master_clock_beyond_bound", &[]),
            1.0
        );
        let lead = scrape.value("shardcache_master_clock_lead_seconds", &[]);
        assert!(
            (lead * 1e3 - lead_ms as f64).abs() < 2_000.0,
            "lead {lead} s"
        );

        // Writes and deletes through it are refused with a clear 503; reads work.
        let (status, body) = write(&cluster, 1, json!({"key": "kept", "value": offset})).await;
        assert_eq!(status, 503, "{body}");
        assert!(body["error"].as_str().unwrap().contains("clock"), "{body}");
        let (status, body) = send(&cluster, 1, reqwest::Method::DELETE, "/data/kept", None).await;
        assert_eq!(status, 503, "{body}");
        let (status, body) = read(&cluster, 1, "kept").await;
        assert_eq!((status, &body["value"]), (StatusCode::OK, &json!("before")));

        // The master with a good clock sees nothing wrong and is not dragged along.
        let good = cluster.cluster_view(0).await["clock"].clone();
        assert_eq!(good["beyond_bound"], false, "{good}");
        assert!(good["lead_ms"].as_i64().unwrap().abs() < 1_000, "{good}");
        let (_, health) = send(&cluster, 0, reqwest::Method::GET, "/health", None).await;
        assert_eq!(health["status"], "ok", "{health}");
    }

    // The clock fixed, writes through it are accepted again.
    cluster
        .cluster
        .restart_master_with_env(1, &[])
        .expect("restart master with a good clock");
    measured_clock(&cluster, 1, 0).await;
    let (status, body) = write(&cluster, 1, json!({"key": "kept", "value": "after"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = read(&cluster, 0, "kept").await;
    assert_eq!((status, &body["value"]), (StatusCode::OK, &json!("after")));
}

/// With a bound wide enough to let masters 30 s fast and 30 s slow write, writes
/// alternating between them and a good master keep real-time order, and TTLs last
/// what they say on the aux nodes' clocks: 30 s fast no longer stretches a 2 s TTL to
/// 32 s, 30 s slow no longer makes it expire at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_the_bound_nothing_is_lost_and_ttls_follow_the_aux_clocks() {
    let mut cluster = TestCluster::start_with(|spec| {
        spec.masters = 3;
        spec.master_args
            .extend(["--max-clock-skew".into(), "60s".into()]);
        spec.aux_args
            .extend(["--max-clock-skew".into(), "60s".into()]);
    });
    skew_master(&mut cluster, 1, "+30s");
    skew_master(&mut cluster, 2, "-30s");
    let fast = measured_clock(&cluster, 1, 30_000).await;
    assert_eq!(fast["beyond_bound"], false, "{fast}");
    let slow = measured_clock(&cluster, 2, -30_000).await;
    assert_eq!(slow["beyond_bound"], false, "{slow}");

    // Each write acknowledged before the next began: the last one must win, whatever
    // the clocks of the masters that took them.
    for (round, order) in [[1, 0, 2], [2, 1, 0], [0, 2, 1], [1, 2, 0]]
        .iter()
        .enumerate()
    {
        let key = format!("order-{round}");
        for (step, &master) in order.iter().enumerate() {
            let value = format!("{round}-{step}-via-{master}");
            let (status, body) = write(&cluster, master, json!({"key": key, "value": value})).await;
            assert_eq!(status, 200, "{body}");
            for reader in 0..3 {
                let (status, body) = read(&cluster, reader, &key).await;
                assert_eq!(
                    (status, &body["value"]),
                    (StatusCode::OK, &json!(value)),
                    "round {round}: read via master {reader} after the write via master {master}"
                );
            }
        }
    }

    for (writer, name) in [(1, "fast"), (2, "slow")] {
        let key = format!("ttl-via-{name}");
        let written = Instant::now();
        let (status, body) = write(
            &cluster,
            writer,
            json!({"key": key, "value": "v", "ttl": 2}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = read(&cluster, 0, &key).await;
        assert_eq!(
            status, 200,
            "a 2 s TTL via the {name} master expired at once: {body}"
        );
        wait_until(
            &format!("the 2 s TTL written via the {name} master expires"),
            Duration::from_secs(10),
            || async { read(&cluster, 0, &key).await.0 == StatusCode::NOT_FOUND },
        )
        .await;
        assert!(
            written.elapsed() >= Duration::from_millis(1_900),
            "expired after {:?}",
            written.elapsed()
        );
    }
}

/// A version stamped further ahead than this master's --max-clock-skew (here put on
/// the owners directly, as a writer with a fast clock and aux nodes with a looser
/// bound would) cannot be outranked without moving the clock that far: the write
/// answers 503 rather than 200 for a value every read would hide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_under_a_version_from_beyond_the_bound_is_refused_not_hidden() {
    use shardcache_common::frame::ShardFrame;
    use shardcache_common::version::{HybridClock, Version};
    let cluster = TestCluster::start_with(|spec| {
        spec.aux_args
            .extend(["--max-clock-skew".into(), "60s".into()]);
    });
    let key = "from-the-future";
    let future = Version {
        timestamp: (shardcache_common::unix_millis() + 30_000) << 16,
        writer: 7,
    };
    for (index, owner) in cluster.owners(key).into_iter().enumerate() {
        let tombstone = ShardFrame {
            key: key.into(),
            version: future,
            tombstone: true,
            shard_index: index as u8,
            data_shards: 3,
            parity_shards: 2,
            expiry_ms: 0,
            value_len: 0,
            value_checksum: 0,
            payload: bytes::Bytes::new(),
        };
        let addr = cluster.cluster.aux[owner].addr;
        let stored = cluster
            .http
            .put(format!(
                "http://{addr}{}",
                shardcache_common::wire::SHARDS_PATH
            ))
            .body(tombstone.encode())
            .send()
            .await
            .unwrap();
        assert_eq!(stored.status(), 204);
    }
    let (status, body) = write(&cluster, 0, json!({"key": key, "value": "now"})).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("future"), "{body}");
    // The master's clock was not dragged 30 s ahead by what it met.
    let (status, body) = write(&cluster, 0, json!({"key": "other", "value": "v"})).await;
    assert_eq!(status, 200, "{body}");
    let version: Version = body["version"].as_str().unwrap().parse().unwrap();
    let lead_ms = HybridClock::lead_of(version, shardcache_common::unix_millis());
    assert!(lead_ms < 2_000, "{version} is {lead_ms} ms ahead");
}
