//! The happy path at scale: set, get, overwrite, delete and TTL, byte-exact.

use std::collections::HashMap;
use std::time::Duration;

use futures::{stream, StreamExt};
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{first_shard, random_value, wait_until, TestCluster};

const KEYS: usize = 1000;
const MAX_VALUE_BYTES: usize = 256 * 1024;
const CONCURRENCY: usize = 16;

/// Writes every `(key, value)` with bounded concurrency, asserting each is acknowledged.
async fn write_all(cluster: &TestCluster, entries: &[(String, String)]) {
    stream::iter(entries)
        .for_each_concurrent(CONCURRENCY, |(key, value)| async move {
            let (status, body) = cluster.set(key, value).await;
            assert_eq!(status, StatusCode::OK, "set {key}: {body}");
            assert_eq!(body["key"], key.as_str());
            assert!(
                body["version"].is_string(),
                "the ack names the version: {body}"
            );
        })
        .await;
}

/// Reads every key back and compares it with `expected` (`None` = must be a miss).
async fn check_all(cluster: &TestCluster, expected: &HashMap<String, Option<String>>) {
    stream::iter(expected)
        .for_each_concurrent(CONCURRENCY, |(key, value)| async move {
            let got = cluster.value(key).await;
            assert!(
                got == *value,
                "key {key}: got {} bytes, expected {} bytes",
                got.as_ref().map_or(0, String::len),
                value.as_ref().map_or(0, String::len)
            );
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_get_overwrite_delete_a_thousand_keys_byte_exact() {
    let cluster = TestCluster::start();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // Edge sizes first (empty, smaller than k, exactly k, k+1), then random up to 256 KiB.
    let entries: Vec<(String, String)> = (0..KEYS)
        .map(|i| {
            let len = if i < 6 {
                i
            } else {
                rng.random_range(0..=MAX_VALUE_BYTES)
            };
            (format!("key-{i} 🍒/{i}?#%"), random_value(&mut rng, len))
        })
        .collect();
    write_all(&cluster, &entries).await;
    let mut expected: HashMap<String, Option<String>> = entries
        .iter()
        .map(|(key, value)| (key.clone(), Some(value.clone())))
        .collect();
    check_all(&cluster, &expected).await;

    // Overwrite every third key with a value of another size.
    let overwrites: Vec<(String, String)> = entries
        .iter()
        .step_by(3)
        .map(|(key, _)| {
            (key.clone(), {
                let len = rng.random_range(0..=MAX_VALUE_BYTES);
                random_value(&mut rng, len)
            })
        })
        .collect();
    write_all(&cluster, &overwrites).await;
    for (key, value) in &overwrites {
        expected.insert(key.clone(), Some(value.clone()));
    }

    // Delete every fifth key; a second delete of the same key is a 404.
    for (key, _) in entries.iter().skip(1).step_by(5) {
        let (status, body) = cluster.delete(key).await;
        assert_eq!(status, StatusCode::OK, "delete {key}: {body}");
        assert_eq!(body, json!({ "key": key, "deleted": true }));
        expected.insert(key.clone(), None);
    }
    let (status, body) = cluster.delete(&entries[1].0).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"].is_string());
    check_all(&cluster, &expected).await;

    // A deleted key can be written again.
    let (status, _) = cluster.set(&entries[1].0, "back again").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        cluster.value(&entries[1].0).await.as_deref(),
        Some("back again")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_expire_after_their_ttl_and_others_do_not() {
    let cluster = TestCluster::start_with(|spec| {
        spec.aux_args
            .extend(["--sweep-interval".into(), "100ms".into()])
    });
    let (status, body) = cluster
        .post_json(&json!({ "key": "short", "value": "lived", "ttl": 1 }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = cluster
        .post_json(&json!({ "key": "long", "value": "lived", "ttl": 3600 }))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = cluster
        .post_json(&json!({ "key": "forever", "value": "lived", "ttl": null }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cluster.value("short").await.as_deref(), Some("lived"));
    wait_until(
        "the short-lived key to expire",
        Duration::from_secs(10),
        || async { cluster.value("short").await.is_none() },
    )
    .await;
    // The sweeper reclaims the expired shards: only the other two keys' shards remain.
    cluster.wait_for_aux_items(2 * 5).await;
    assert_eq!(cluster.value("long").await.as_deref(), Some("lived"));
    assert_eq!(cluster.value("forever").await.as_deref(), Some("lived"));
}

/// The `shardcache-miss` header of a `method` on `/data/{key}`, asserting a 404, and
/// how long the request took.
async fn miss_kind(
    cluster: &TestCluster,
    method: reqwest::Method,
    key: &str,
) -> (String, std::time::Duration) {
    let started = std::time::Instant::now();
    let response = cluster
        .http
        .request(method.clone(), format!("{}/data/{key}", cluster.master()))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method} {key}");
    let header = response
        .headers()
        .get("shardcache-miss")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("not found"),
        "{body}"
    );
    (header, took)
}

/// A miss the owners settle at once is `absent`; one that met only part of a version
/// (here the leftover of a write that reached one owner) is retried and then
/// answered `partial`, for GET and DELETE alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_says_whether_it_met_only_partial_versions() {
    let cluster = TestCluster::start();
    assert_eq!(cluster.set("gone", "soon").await.0, 200);
    assert_eq!(cluster.delete("gone").await.0, 200);
    for key in ["never-written", "gone"] {
        for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
            let (kind, _) = miss_kind(&cluster, method.clone(), key).await;
            assert_eq!(kind, "absent", "{method} {key}");
        }
    }

    let key = "half-written";
    let value = b"only one shard of this ever landed";
    let owner = cluster.owners(key)[0];
    let leftover = first_shard(key, value, 3, 2);
    let stored = cluster.put_frame(owner, &leftover).await;
    assert_eq!(stored.status(), 204);
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let (kind, took) = miss_kind(&cluster, method.clone(), key).await;
        assert_eq!(kind, "partial", "{method}");
        // 2 + 4 + 8 + 16 ms of backoff between its five rounds.
        assert!(
            took >= Duration::from_millis(30),
            "{method} answered after {took:?}, too soon to have retried"
        );
    }
}
