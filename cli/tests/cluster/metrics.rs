//! `/metrics` on real processes: every counter a dashboard relies on moves with the
//! traffic and failures that should move it, keys never become labels, and
//! `--metrics-listen` takes the endpoint off the API port.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{wait_until, Scrape, TestCluster};

const KEYS: usize = 200;

fn key(index: usize) -> String {
    format!("metrics-secret-key-{index}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_traffic_failures_and_repair() {
    let mut cluster = TestCluster::start();
    let total_shards = 5.0;
    // The pass every master runs at start must not overlap the writes: its puts
    // (idempotent re-puts of shards still in flight) would count as shard puts too.
    cluster.wait_for_repair().await;

    for index in 0..KEYS {
        let (status, _) = cluster.set(&key(index), &format!("value {index}")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = cluster
        .post_json(&json!({"key": "short-lived", "value": "x", "ttl": 1}))
        .await;
    assert_eq!(status, StatusCode::OK);
    for index in 0..KEYS {
        assert_eq!(
            cluster.value(&key(index)).await.as_deref(),
            Some(format!("value {index}").as_str())
        );
    }
    for index in 0..20 {
        assert_eq!(
            cluster.get(&format!("never-written-{index}")).await.0,
            StatusCode::NOT_FOUND
        );
    }
    let (status, _) = cluster.post_raw("{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let scrape = cluster.master_scrape().await;
    assert_eq!(
        scrape.value("shardcache_master_reads_total", &[("result", "hit")]),
        KEYS as f64
    );
    assert_eq!(
        scrape.value("shardcache_master_reads_total", &[("result", "miss")]),
        20.0
    );
    assert_eq!(
        scrape.value(
            "shardcache_master_reads_total",
            &[("result", "unavailable")]
        ),
        0.0
    );
    let requests = "shardcache_master_http_requests_total";
    let posts_ok = [("route", "/data"), ("method", "POST"), ("status", "200")];
    assert_eq!(scrape.value(requests, &posts_ok), KEYS as f64 + 1.0);
    let bad = [("route", "/data"), ("method", "POST"), ("status", "400")];
    assert_eq!(scrape.value(requests, &bad), 1.0, "errors are counted too");
    let misses = [("route", "/data/{*key}"), ("status", "404")];
    assert_eq!(scrape.value(requests, &misses), 20.0);
    assert_eq!(
        scrape.value(
            "shardcache_master_http_request_duration_seconds_count",
            &posts_ok
        ),
        KEYS as f64 + 1.0
    );
    assert_eq!(
        scrape.value("shardcache_master_aux_nodes", &[("state", "up")]),
        6.0
    );
    assert_eq!(
        scrape.value("shardcache_master_degraded_reads_total", &[]),
        0.0
    );
    assert_eq!(
        scrape.value("shardcache_master_write_quorum_failures_total", &[]),
        0.0
    );

    // Every shard put lands (the ones beyond the quorum in the background), each
    // counted once under its node.
    let writes = (KEYS + 1) as f64 * total_shards;
    wait_until(
        "every shard put to be counted",
        Duration::from_secs(10),
        || async {
            let scrape = cluster.master_scrape().await;
            scrape.sum(
                "shardcache_master_shard_requests_total",
                &[("op", "put"), ("outcome", "ok")],
            ) == Some(writes)
        },
    )
    .await;
    let scrape = cluster.master_scrape().await;
    for node in &cluster.cluster.aux {
        assert!(
            scrape.value(
                "shardcache_master_shard_requests_total",
                &[("node", &node.name), ("op", "put")]
            ) > 0.0,
            "no puts counted for {}",
            node.name
        );
    }

    // The aux nodes' own view: items add up, the TTL'd shards expire, snapshots run.
    wait_until(
        "aux metrics to show the writes, expiry and a snapshot",
        Duration::from_secs(20),
        || async {
            let (mut items, mut expired, mut snapshots) = (0.0, 0.0, 0.0);
            for aux in 0..cluster.cluster.aux.len() {
                let scrape = cluster.aux_scrape(aux).await;
                items += scrape.value("shardcache_aux_store_items", &[]);
                expired += scrape.value("shardcache_aux_store_expirations_total", &[]);
                snapshots += scrape.value("shardcache_aux_snapshots_total", &[]);
            }
            items == KEYS as f64 * total_shards && expired == total_shards && snapshots >= 6.0
        },
    )
    .await;
    for aux in 0..cluster.cluster.aux.len() {
        let scrape = cluster.aux_scrape(aux).await;
        let id = cluster.cluster.aux[aux].name.as_str();
        assert_eq!(scrape.value("shardcache_aux_info", &[("node_id", id)]), 1.0);
        assert!(scrape.value("shardcache_aux_store_bytes", &[]) > 0.0);
        assert_eq!(
            scrape.value("shardcache_aux_store_capacity_bytes", &[]),
            512.0 * 1048576.0
        );
        assert!(
            scrape.value(
                "shardcache_aux_snapshot_last_success_timestamp_seconds",
                &[]
            ) > 1.7e9
        );
        assert!(scrape.value("shardcache_aux_snapshot_duration_seconds_count", &[]) >= 1.0);
        // Shard writes arrive batched, as multi-puts.
        let shard_puts = [("route", "/v1/multi-put"), ("method", "POST")];
        assert!(scrape.value("shardcache_aux_http_requests_total", &shard_puts) > 0.0);
        assert!(
            !scrape.text.contains("metrics-secret-key"),
            "a key became a label"
        );
    }
    assert!(!cluster
        .master_scrape()
        .await
        .text
        .contains("metrics-secret-key"));

    // A node dies: reads stay byte-exact, some need parity (degraded), the node is
    // reported down, and repair's work shows up once it is done.
    let epoch = cluster.placement_epoch().await;
    cluster.cluster.aux[0].kill();
    for index in 0..KEYS {
        assert_eq!(
            cluster.value(&key(index)).await.as_deref(),
            Some(format!("value {index}").as_str())
        );
    }
    cluster.wait_for_state(0, "down").await;
    let repaired = cluster.wait_for_repair_after(epoch).await;
    let scrape = cluster.master_scrape().await;
    assert!(scrape.value("shardcache_master_degraded_reads_total", &[]) > 0.0);
    let dead = cluster.cluster.aux[0].name.as_str();
    assert_eq!(
        scrape.value(
            "shardcache_master_aux_node_state",
            &[("node", dead), ("state", "down")]
        ),
        1.0
    );
    assert_eq!(
        scrape.value("shardcache_master_aux_nodes", &[("state", "down")]),
        1.0
    );
    assert_eq!(
        scrape.value("shardcache_master_placement_epoch", &[]),
        repaired["placement_epoch"].as_f64().unwrap()
    );
    let totals = &repaired["repair"]["totals"];
    assert!(totals["shards_rebuilt"].as_f64().unwrap() > 0.0);
    for (metric, field) in [
        (
            "shardcache_master_repair_shards_rebuilt_total",
            "shards_rebuilt",
        ),
        (
            "shardcache_master_repair_shards_moved_total",
            "shards_moved",
        ),
        (
            "shardcache_master_repair_keys_scanned_total",
            "keys_scanned",
        ),
    ] {
        assert_eq!(
            scrape.value(metric, &[]),
            totals[field].as_f64().unwrap(),
            "{metric}"
        );
    }
    assert_eq!(scrape.value("shardcache_master_repair_complete", &[]), 1.0);
    assert_eq!(
        scrape.value("shardcache_master_repair_backlog_ratio", &[]),
        0.0
    );
    assert_eq!(
        scrape.value("shardcache_master_repair_lease_held", &[]),
        1.0
    );
    assert!(scrape.value("shardcache_master_repair_passes_total", &[]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_quorum_failures_are_counted() {
    let mut cluster = TestCluster::start_with(|spec| spec.aux_nodes = 5);
    for aux in 0..5 {
        cluster.wait_for_state(aux, "up").await;
    }
    for aux in 0..2 {
        cluster.cluster.aux[aux].kill();
    }
    for aux in 0..2 {
        cluster.wait_for_state(aux, "down").await;
    }
    let (status, _) = cluster.set("needs-four-nodes", "v").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let scrape = cluster.master_scrape().await;
    assert_eq!(
        scrape.value(
            "shardcache_master_write_quorum_failures_total",
            &[("op", "write")]
        ),
        1.0
    );
    assert_eq!(
        scrape.value("shardcache_master_aux_nodes", &[("state", "down")]),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_moves_the_endpoint_off_the_api_port() {
    let listen = ["--metrics-listen".to_owned(), "127.0.0.1:0".to_owned()];
    let cluster = TestCluster::start_with(|spec| {
        spec.master_args.extend(listen.clone());
        spec.aux_args.extend(listen.clone());
    });
    let (status, body) = cluster.request(reqwest::Method::GET, "/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let aux = cluster.cluster.aux[0].addr;
    let on_api = cluster
        .http
        .get(format!("http://{aux}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(on_api.status(), StatusCode::NOT_FOUND);

    for (node, family) in [
        (&cluster.cluster.masters[0], "shardcache_master_info"),
        (&cluster.cluster.aux[0], "shardcache_aux_info"),
    ] {
        // The node prints it after its API address, which is all the harness waits
        // for: wait until it is in the log.
        let metrics_address = || {
            node.log_tail(200)
                .lines()
                .find_map(|line| line.strip_prefix("metrics listening on "))
                .and_then(|addr| addr.parse::<std::net::SocketAddr>().ok())
        };
        wait_until(
            &format!("the metrics address in the log of {}", node.name),
            Duration::from_secs(10),
            || async { metrics_address().is_some() },
        )
        .await;
        let addr = metrics_address().expect("seen above");
        let scrape = Scrape::fetch(&cluster.http, &format!("http://{addr}/metrics")).await;
        assert_eq!(scrape.sum(family, &[]), Some(1.0), "{family} on {addr}");
    }
}
