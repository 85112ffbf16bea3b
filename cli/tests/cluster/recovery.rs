//! Recovery: repair to full redundancy after a node is lost, nodes returning empty or
//! from their snapshot, a node added at run time, whole-cluster restarts, corrupt
//! snapshots, a paused node, and two masters repairing at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use nix::sys::signal::Signal;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{random_value, wait_until, TestCluster};

const SHARDS_PER_KEY: u64 = 5;

/// `count` keys named `{prefix}-{i}` with random values of up to `max_len` bytes.
fn entries(prefix: &str, count: usize, max_len: usize) -> Vec<(String, String)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(count as u64 ^ prefix.len() as u64);
    (0..count)
        .map(|i| {
            let len = rng.random_range(0..=max_len);
            (format!("{prefix}-{i}"), random_value(&mut rng, len))
        })
        .collect()
}

/// Writes every entry through master `master` (16 at a time); returns each key's
/// acknowledged version.
async fn write_all(
    cluster: &TestCluster,
    master: usize,
    entries: &[(String, String)],
) -> HashMap<String, String> {
    let url = format!("{}/data", cluster.cluster.master_url(master));
    stream::iter(entries)
        .map(|(key, value)| {
            let url = url.clone();
            async move {
                let response = cluster
                    .http
                    .post(url)
                    .json(&json!({ "key": key, "value": value }))
                    .send()
                    .await
                    .expect("POST /data");
                let status = response.status();
                let body: Value = response.json().await.expect("JSON");
                assert_eq!(status, StatusCode::OK, "set {key}: {body}");
                (key.clone(), body["version"].as_str().unwrap().to_owned())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// Reads every key and checks its bytes: `Some(value)` must come back exactly,
/// `None` must be a 404.
async fn assert_reads(cluster: &TestCluster, expected: &BTreeMap<String, Option<String>>) {
    stream::iter(expected)
        .for_each_concurrent(16, |(key, value)| async move {
            let (status, body) = cluster.get(key).await;
            match value {
                Some(value) => {
                    assert_eq!(status, StatusCode::OK, "get {key}: {body}");
                    assert!(body["value"] == value.as_str(), "{key}: wrong bytes");
                }
                None => assert_eq!(
                    status,
                    StatusCode::NOT_FOUND,
                    "{key} should be gone: {body}"
                ),
            }
        })
        .await;
}

fn expect_all(entries: &[(String, String)]) -> BTreeMap<String, Option<String>> {
    entries
        .iter()
        .map(|(key, value)| (key.clone(), Some(value.clone())))
        .collect()
}

/// Every key the aux nodes hold (value or tombstone) has `k + m` shards of one
/// version on distinct nodes, values with distinct indices, and `values` keys hold
/// values.
async fn assert_full_redundancy(cluster: &TestCluster, alive: &[usize], values: usize) {
    let mut per_key: HashMap<String, Vec<(String, u8, bool)>> = HashMap::new();
    for &aux in alive {
        for entry in cluster.aux_inventory(aux).await {
            per_key.entry(entry.key).or_default().push((
                entry.version.to_string(),
                entry.shard_index,
                entry.tombstone,
            ));
        }
    }
    let live = per_key.values().filter(|shards| !shards[0].2).count();
    assert_eq!(live, values, "keys holding values");
    for (key, shards) in per_key {
        assert_eq!(shards.len() as u64, SHARDS_PER_KEY, "{key}: {shards:?}");
        let versions: HashSet<&String> = shards.iter().map(|(version, ..)| version).collect();
        assert_eq!(
            versions.len(),
            1,
            "{key}: one version everywhere: {shards:?}"
        );
        if !shards[0].2 {
            let indices: HashSet<u8> = shards.iter().map(|(_, index, _)| *index).collect();
            assert_eq!(indices.len() as u64, SHARDS_PER_KEY, "{key}: {shards:?}");
        }
    }
}

fn unix_millis() -> u64 {
    shardcache_common::unix_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_repair_m_more_failures_lose_nothing() {
    let mut cluster = TestCluster::start();
    let written = entries("repair", 2000, 2048);
    write_all(&cluster, 0, &written).await;
    cluster.wait_for_aux_items(2000 * SHARDS_PER_KEY).await;

    cluster.cluster.aux[0].kill();
    cluster.wait_for_state(0, "down").await;
    let view = cluster.wait_for_repair().await;
    let pass = &view["repair"]["last_pass"];
    assert!(pass["shards_rebuilt"].as_u64().unwrap() > 0, "{pass}");
    assert_full_redundancy(&cluster, &[1, 2, 3, 4, 5], 2000).await;

    // m more: 3 nodes left, exactly k shards of every key.
    cluster.cluster.aux[1].kill();
    cluster.cluster.aux[2].kill();
    assert_reads(&cluster, &expect_all(&written)).await;
}

/// A node comes back from its snapshot after its shards were rebuilt elsewhere, and
/// another comes back empty within the grace period, while keys were overwritten and
/// deleted. Nothing is lost, rolled back or resurrected, and full redundancy returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_returning_with_a_snapshot_or_empty_roll_nothing_back() {
    let mut cluster = TestCluster::start();
    let original = entries("returning", 900, 1024);
    write_all(&cluster, 0, &original).await;
    cluster.wait_for_aux_items(900 * SHARDS_PER_KEY).await;
    let written_at = unix_millis();
    cluster.wait_for_snapshot(0, written_at).await;
    let mut expected = expect_all(&original);

    // aux-0 dies holding a snapshot of every original value.
    cluster.cluster.aux[0].kill();
    cluster.wait_for_state(0, "down").await;
    let overwritten: Vec<(String, String)> = original[..300]
        .iter()
        .map(|(key, _)| (key.clone(), format!("overwritten {key}")))
        .collect();
    let new_versions = write_all(&cluster, 0, &overwritten).await;
    for (key, value) in &overwritten {
        expected.insert(key.clone(), Some(value.clone()));
    }
    for (key, _) in &original[300..450] {
        let (status, body) = cluster.delete(key).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        expected.insert(key.clone(), None);
    }
    // Past the grace period: its shards are rebuilt on the other five.
    cluster.wait_for_repair().await;

    cluster.cluster.restart_aux(0).unwrap();
    let restored = cluster.aux_health(0).await.unwrap();
    assert!(
        restored["snapshot"]["restored"]["loaded"].as_u64().unwrap() > 0,
        "{restored}"
    );
    cluster.wait_for_state(0, "up").await;
    assert_reads(&cluster, &expected).await;
    cluster.wait_for_repair().await;
    assert_reads(&cluster, &expected).await;
    // Nothing on aux-0 is older than what was acknowledged while it was away.
    for entry in cluster.aux_inventory(0).await {
        if let Some(version) = new_versions.get(&entry.key) {
            assert_eq!(
                &entry.version.to_string(),
                version,
                "{} rolled back on aux-0",
                entry.key
            );
        }
    }

    // aux-1 comes back empty before its grace period ends (quite possibly before any
    // probe noticed it was gone: the master sees the new instance and repairs).
    let epoch = cluster.placement_epoch().await;
    cluster.cluster.restart_aux_empty(1).unwrap();
    for (key, _) in &original[450..500] {
        let value = format!("second overwrite {key}");
        let (status, body) = cluster.set(key, &value).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        expected.insert(key.clone(), Some(value));
    }
    cluster.wait_for_repair_after(epoch).await;
    assert_reads(&cluster, &expected).await;
    let live: Vec<usize> = (0..6).collect();
    let kept = expected.values().filter(|value| value.is_some()).count();
    assert_full_redundancy(&cluster, &live, kept).await;

    // Full redundancy again: any m more failures lose nothing.
    cluster.cluster.aux[4].kill();
    cluster.cluster.aux[5].kill();
    assert_reads(&cluster, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_node_takes_its_share_while_every_read_succeeds() {
    let mut cluster = TestCluster::start();
    let written = entries("joining", 2000, 512);
    write_all(&cluster, 0, &written).await;
    cluster.wait_for_aux_items(2000 * SHARDS_PER_KEY).await;
    cluster.wait_for_repair().await;

    let added = cluster.cluster.add_aux().unwrap();
    let address = cluster.cluster.aux[added].addr.to_string();
    let response = cluster
        .http
        .post(format!("{}/cluster/nodes", cluster.master()))
        .json(&json!({ "address": address }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{}",
        response.text().await.unwrap()
    );

    // Read keys, over and over, while the shards move; every read must succeed.
    let started = Instant::now();
    let mut rounds = 0;
    loop {
        let done = cluster.cluster_view(0).await["repair"]["complete"] == true;
        assert_reads(&cluster, &expect_all(&written[..400])).await;
        rounds += 1;
        if done || started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    let view = cluster.wait_for_repair().await;
    assert_reads(&cluster, &expect_all(&written)).await;

    let items = cluster.aux_items().await;
    let on_new = items[added].unwrap();
    let total: u64 = items.iter().flatten().sum();
    assert_eq!(
        total,
        2000 * SHARDS_PER_KEY,
        "no shard lost or left behind: {items:?}"
    );
    let moved = on_new as f64 / total as f64;
    let ideal = 1.0 / 7.0;
    assert!(
        moved <= 1.1 * ideal,
        "moved {moved:.4} of all shards, ideal {ideal:.4}"
    );
    assert!(
        moved >= 0.9 * ideal,
        "the new node took too little: {moved:.4}"
    );
    let moved_by_repair = view["repair"]["totals"]["shards_moved"].as_u64().unwrap();
    assert_eq!(
        moved_by_repair, on_new,
        "every shard on the new node was moved there"
    );
    eprintln!("join: {rounds} read rounds during the move; new node holds {on_new} of {total} shards ({moved:.4}, ideal {ideal:.4})");
    assert_full_redundancy(&cluster, &(0..7).collect::<Vec<_>>(), 2000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_is_back_after_all_aux_nodes_restart() {
    let mut cluster = TestCluster::start();
    // SIGTERM: each node writes a final snapshot, so everything comes back.
    let first = entries("restart-term", 500, 1024);
    write_all(&cluster, 0, &first).await;
    cluster.wait_for_aux_items(500 * SHARDS_PER_KEY).await;
    for aux in 0..6 {
        cluster.cluster.aux[aux].terminate();
    }
    for aux in 0..6 {
        cluster.cluster.restart_aux(aux).unwrap();
    }
    for aux in 0..6 {
        cluster.wait_for_state(aux, "up").await;
    }
    assert_reads(&cluster, &expect_all(&first)).await;

    // SIGKILL: everything older than one snapshot interval comes back.
    let second = entries("restart-kill", 500, 1024);
    write_all(&cluster, 0, &second).await;
    cluster.wait_for_aux_items(1000 * SHARDS_PER_KEY).await;
    let written_at = unix_millis();
    for aux in 0..6 {
        cluster.wait_for_snapshot(aux, written_at).await;
    }
    for aux in 0..6 {
        cluster.cluster.aux[aux].kill();
    }
    for aux in 0..6 {
        cluster.cluster.restart_aux(aux).unwrap();
    }
    for aux in 0..6 {
        cluster.wait_for_state(aux, "up").await;
    }
    let mut expected = expect_all(&first);
    expected.extend(expect_all(&second));
    assert_reads(&cluster, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_is_reported_skipped_and_repaired() {
    let mut cluster = TestCluster::start();
    let mut written = entries("corrupt", 600, 1024);
    write_all(&cluster, 0, &written[..500]).await;
    cluster.wait_for_aux_items(500 * SHARDS_PER_KEY).await;
    let written_at = unix_millis();
    cluster.wait_for_snapshot(0, written_at).await;
    write_all(&cluster, 0, &written[500..]).await;
    cluster.wait_for_aux_items(600 * SHARDS_PER_KEY).await;
    cluster.cluster.aux[0].terminate(); // the second snapshot, on the way out

    // Both kept snapshots damaged: the newest gets a flipped byte in its last frame
    // (a flipped length prefix would read as "truncated"), the older is cut.
    let dir = cluster.cluster.aux_data_dir(0);
    let mut snapshots: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "snap"))
        .collect();
    snapshots.sort();
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    let mut newest = std::fs::read(&snapshots[1]).unwrap();
    let last_frame_byte = newest.len() - 17; // before the entry count and the checksum
    newest[last_frame_byte] ^= 0x10;
    std::fs::write(&snapshots[1], newest).unwrap();
    let older = std::fs::read(&snapshots[0]).unwrap();
    std::fs::write(&snapshots[0], &older[..older.len() / 3]).unwrap();

    let epoch = cluster.placement_epoch().await;
    cluster.cluster.restart_aux(0).unwrap();
    let health = cluster.aux_health(0).await.unwrap();
    assert_eq!(
        health["snapshot"]["skipped_files"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "{health}"
    );
    assert_eq!(health["store"]["items"], 0, "nothing half-loaded: {health}");
    let log = cluster.cluster.aux[0].log_tail(50);
    assert!(log.contains("snapshot file is corrupt"), "{log}");
    assert!(
        log.contains("checksum mismatch") && log.contains("truncated"),
        "{log}"
    );

    cluster.wait_for_repair_after(epoch).await;
    assert_full_redundancy(&cluster, &[0, 1, 2, 3, 4, 5], 600).await;
    cluster.cluster.aux[1].kill();
    cluster.cluster.aux[2].kill();
    written.truncate(600);
    assert_reads(&cluster, &expect_all(&written)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_is_marked_down_and_returns_without_stale_reads() {
    let cluster = TestCluster::start();
    let written = entries("paused", 300, 1024);
    write_all(&cluster, 0, &written).await;
    cluster.wait_for_aux_items(300 * SHARDS_PER_KEY).await;
    let mut expected = expect_all(&written);

    cluster.cluster.aux[3].signal(Signal::SIGSTOP).unwrap();
    // Writes and reads keep succeeding while the probe decides.
    let changed: Vec<(String, String)> = written[..150]
        .iter()
        .map(|(key, _)| (key.clone(), format!("while paused {key}")))
        .collect();
    write_all(&cluster, 0, &changed[..50]).await;
    cluster.wait_for_state(3, "down").await;
    write_all(&cluster, 0, &changed[50..]).await;
    for (key, value) in &changed {
        expected.insert(key.clone(), Some(value.clone()));
    }
    assert_reads(&cluster, &expected).await;

    cluster.cluster.aux[3].signal(Signal::SIGCONT).unwrap();
    cluster.wait_for_state(3, "up").await;
    assert_reads(&cluster, &expected).await;
    cluster.wait_for_repair().await;
    assert_reads(&cluster, &expected).await;
    assert_full_redundancy(&cluster, &[0, 1, 2, 3, 4, 5], 300).await;
}

/// Two masters, both ignoring the lease (a test-only flag), repair the same loss at
/// the same time: every step is version-guarded, so the result is the same as one
/// master's. With the lease, only one of them repairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_masters_repairing_at_once_corrupt_nothing() {
    let mut cluster = TestCluster::start_with(|spec| {
        spec.masters = 2;
        spec.master_args.push("--repair-ignore-lease".into());
    });
    let written = entries("two-masters", 1500, 1024);
    let (first, second) = written.split_at(750);
    write_all(&cluster, 0, first).await;
    write_all(&cluster, 1, second).await;
    cluster.wait_for_aux_items(1500 * SHARDS_PER_KEY).await;

    cluster.cluster.aux[2].kill();
    cluster.wait_for_state(2, "down").await;
    wait_until(
        "both masters to finish repairing",
        Duration::from_secs(120),
        || async {
            cluster.cluster_view(0).await["repair"]["complete"] == true
                && cluster.cluster_view(1).await["repair"]["complete"] == true
        },
    )
    .await;
    assert_full_redundancy(&cluster, &[0, 1, 3, 4, 5], 1500).await;
    cluster.cluster.aux[0].kill();
    cluster.cluster.aux[5].kill();
    assert_reads(&cluster, &expect_all(&written)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_lease_only_one_master_repairs() {
    let mut cluster = TestCluster::start_with(|spec| spec.masters = 2);
    write_all(&cluster, 0, &entries("lease", 200, 256)).await;
    cluster.wait_for_aux_items(200 * SHARDS_PER_KEY).await;
    cluster.cluster.aux[1].kill();
    cluster.wait_for_state(1, "down").await;
    cluster.wait_for_repair().await;
    let states: Vec<Value> = vec![
        cluster.cluster_view(0).await["repair"].clone(),
        cluster.cluster_view(1).await["repair"].clone(),
    ];
    let standby = states
        .iter()
        .filter(|status| status["state"] == "standby")
        .count();
    let repaired = states
        .iter()
        .filter(|status| status["passes"].as_u64().unwrap() > 0)
        .count();
    assert_eq!((standby, repaired), (1, 1), "{states:?}");
}

/// A write that died half-way (2 of 5 shards landed, as when its master is killed
/// mid fan-out) leaves the acknowledged value before it at exactly `k` shards, one
/// failure from loss. The next repair pass, once that partial write is older than
/// `--repair-abandon-after`, drops it and brings the acknowledged value back to
/// `k + m`; then one more owner fails and the value still reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_protects_the_value_behind_a_write_that_died_half_way() {
    let mut cluster = TestCluster::start_with(|spec| {
        spec.master_args
            .extend(["--repair-abandon-after".into(), "1s".into()]);
    });
    let key = "behind a dead write";
    assert_eq!(cluster.set(key, "acknowledged").await.0, StatusCode::OK);
    cluster.wait_for_aux_items(SHARDS_PER_KEY).await;
    let owners = cluster.owners(key);

    // Shards 0 and 1 of a newer write, on the owners of rank 0 and 1.
    let codec = shardcache_common::codec::Codec::new(3, 2).unwrap();
    let value = b"never acknowledged".to_vec();
    let version = shardcache_common::version::Version {
        timestamp: unix_millis() << 16,
        writer: 0xdead,
    };
    for (rank, shard) in codec.encode(&value).into_iter().enumerate().take(2) {
        let frame = shardcache_common::frame::ShardFrame {
            key: key.into(),
            version,
            tombstone: false,
            shard_index: rank as u8,
            data_shards: 3,
            parity_shards: 2,
            expiry_ms: 0,
            value_len: value.len() as u64,
            value_checksum: shardcache_common::codec::value_checksum(&value),
            payload: shard.into(),
        };
        let addr = cluster.cluster.aux[owners[rank]].addr;
        let stored = cluster
            .http
            .put(format!(
                "http://{addr}{}",
                shardcache_common::wire::SHARDS_PATH
            ))
            .body(frame.encode())
            .send()
            .await
            .unwrap();
        assert_eq!(stored.status(), StatusCode::NO_CONTENT);
    }
    assert_eq!(cluster.value(key).await.as_deref(), Some("acknowledged"));

    // A placement change that does not touch the key's owners starts a pass.
    let bystander = (0..6).find(|aux| !owners.contains(aux)).unwrap();
    let epoch = cluster.placement_epoch().await;
    cluster.cluster.aux[bystander].kill();
    let view = cluster.wait_for_repair_after(epoch).await;
    let totals = &view["repair"]["totals"];
    assert!(totals["shards_deleted"].as_u64() >= Some(2), "{totals}");
    let mut holders = 0;
    for &aux in &owners {
        let addr = cluster.cluster.aux[aux].addr;
        let path = shardcache_common::wire::shard_path(key);
        let response = cluster
            .http
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            let frame =
                shardcache_common::frame::ShardFrame::decode(response.bytes().await.unwrap())
                    .unwrap();
            holders += usize::from(frame.version != version);
        }
    }
    assert_eq!(holders, 5, "every owner holds the acknowledged value again");

    // One more failure among the value's original holders.
    cluster.cluster.aux[owners[2]].kill();
    assert_eq!(cluster.value(key).await.as_deref(), Some("acknowledged"));
}
