//! Node failures: SIGKILL, SIGSTOP, and nodes that come back holding stale shards.

use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use nix::sys::signal::Signal;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;

use crate::support::{random_value, wait_until, TestCluster};

const SHARDS_PER_KEY: u64 = 5;

async fn write_keys(cluster: &TestCluster, count: usize, max_len: usize) -> Vec<(String, String)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(count as u64);
    let entries: Vec<(String, String)> = (0..count)
        .map(|i| {
            (format!("survivor-{i}"), {
                let len = rng.random_range(0..=max_len);
                random_value(&mut rng, len)
            })
        })
        .collect();
    stream::iter(&entries)
        .for_each_concurrent(16, |(key, value)| async move {
            let (status, body) = cluster.set(key, value).await;
            assert_eq!(status, StatusCode::OK, "set {key}: {body}");
        })
        .await;
    entries
}

async fn assert_all_readable(cluster: &TestCluster, entries: &[(String, String)]) {
    stream::iter(entries)
        .for_each_concurrent(16, |(key, value)| async move {
            let (status, body) = cluster.get(key).await;
            assert_eq!(status, StatusCode::OK, "get {key}: {body}");
            assert!(body["value"] == value.as_str(), "{key}: wrong bytes");
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_survives_sigkill_of_m_aux_nodes() {
    let mut cluster = TestCluster::start();
    let entries = write_keys(&cluster, 1000, 16 * 1024).await;
    // Acknowledged at k+1 shards; wait for the in-flight (k+m)th shards to land.
    cluster.wait_for_aux_items(1000 * SHARDS_PER_KEY).await;
    cluster.cluster.aux[1].kill();
    cluster.cluster.aux[4].kill();
    assert_all_readable(&cluster, &entries).await;
}

/// With more than `m` nodes down a stored value may be unreadable, but it must never
/// be reported absent: a client would take the 404 as "not cached" and could act on
/// a wrong answer. 503 says "cannot tell".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_m_failures_a_stored_key_is_unavailable_never_a_miss() {
    let mut cluster = TestCluster::start();
    let entries = write_keys(&cluster, 100, 64).await;
    cluster.wait_for_aux_items(100 * SHARDS_PER_KEY).await;
    for down in 1..=4 {
        cluster.cluster.aux[down - 1].kill();
        cluster.wait_for_state(down - 1, "down").await;
        for (key, value) in &entries {
            let (status, body) = cluster.get(key).await;
            match status {
                StatusCode::OK => assert!(body["value"] == value.as_str(), "{key}: wrong bytes"),
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert!(down > 2, "{key} unreadable with {down} down")
                }
                other => panic!("{key} with {down} nodes down: {other} {body}"),
            }
        }
    }
}

/// With one node down, a read says 503 only for a key that node owned (it may hold
/// the missing shard); a key never written, or one left with fewer than `k` shards
/// on nodes that are all up, is a plain miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_node_down_only_keys_it_owned_can_be_unavailable() {
    let mut cluster = TestCluster::start();
    let dead = 0;
    let pick = |prefix: &str, owned: bool| {
        (0..)
            .map(|i| format!("{prefix}-{i}"))
            .find(|key| cluster.owners(key).contains(&dead) == owned)
            .unwrap()
    };
    let (owned, elsewhere) = (pick("owned", true), pick("elsewhere", false));
    for key in [&owned, &elsewhere] {
        assert_eq!(cluster.set(key, "v").await.0, StatusCode::OK);
    }
    cluster.wait_for_aux_items(2 * SHARDS_PER_KEY).await;
    // Leave each key two shards on live nodes (fewer than k = 3): the shard on the
    // node about to die is kept.
    for key in [&owned, &elsewhere] {
        let response = cluster
            .http
            .get(format!("{}/data/{key}", cluster.master()))
            .send()
            .await
            .unwrap();
        let version = response.headers()["shardcache-version"]
            .to_str()
            .unwrap()
            .to_owned();
        let live_owners: Vec<usize> = cluster
            .owners(key)
            .into_iter()
            .filter(|aux| *aux != dead)
            .collect();
        for aux in &live_owners[2..] {
            let addr = cluster.cluster.aux[*aux].addr;
            let url = format!(
                "http://{addr}{}?version={version}",
                shardcache_common::wire::shard_path(key)
            );
            let deleted = cluster.http.delete(url).send().await.unwrap();
            assert!(
                deleted.status().is_success(),
                "delete a shard of {key} on aux-{aux}"
            );
        }
    }
    cluster.cluster.aux[dead].kill();
    cluster.wait_for_state(dead, "down").await;

    let (status, body) = cluster.get(&owned).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{owned}: {body}");
    let (status, body) = cluster.get(&elsewhere).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{elsewhere}: {body}");
    for index in 0..50 {
        let key = format!("never-written-{index}");
        assert_eq!(cluster.get(&key).await.0, StatusCode::NOT_FOUND, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_aux_node_costs_at_most_one_timeout() {
    let timeout = Duration::from_millis(300);
    let cluster = TestCluster::start_with(|spec| {
        spec.master_args
            .extend(["--shard-timeout".into(), "300ms".into()]);
    });
    let entries = write_keys(&cluster, 200, 4096).await;
    cluster.wait_for_aux_items(200 * SHARDS_PER_KEY).await;
    cluster.cluster.aux[0].signal(Signal::SIGSTOP).unwrap();

    let slowest_allowed = timeout + Duration::from_millis(700);
    for (key, value) in entries.iter().take(100) {
        let started = Instant::now();
        assert_eq!(
            cluster.value(key).await.as_deref(),
            Some(value.as_str()),
            "{key}"
        );
        assert!(
            started.elapsed() < slowest_allowed,
            "read of {key} took {:?}",
            started.elapsed()
        );
    }
    // Writes keep succeeding too: four of the five owners are enough for the quorum.
    for (key, _) in entries.iter().skip(100).take(50) {
        let started = Instant::now();
        let (status, body) = cluster.set(key, "written while aux-0 was stopped").await;
        assert_eq!(status, StatusCode::OK, "{key}: {body}");
        assert!(
            started.elapsed() < slowest_allowed,
            "write of {key} took {:?}",
            started.elapsed()
        );
    }

    cluster.cluster.aux[0].signal(Signal::SIGCONT).unwrap();
    for (key, value) in entries.iter().take(100) {
        assert_eq!(cluster.value(key).await.as_deref(), Some(value.as_str()));
    }
    for (key, _) in entries.iter().skip(100).take(50) {
        assert_eq!(
            cluster.value(key).await.as_deref(),
            Some("written while aux-0 was stopped")
        );
    }
}

/// Raw frame bytes an aux node holds for `key`, straight from its API.
async fn aux_frame(cluster: &TestCluster, aux: usize, key: &str) -> bytes::Bytes {
    let addr = cluster.cluster.aux[aux].addr;
    let response = cluster
        .http
        .get(format!(
            "http://{addr}{}",
            shardcache_common::wire::shard_path(key)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "aux-{aux} holds a shard of {key}"
    );
    response.bytes().await.unwrap()
}

async fn put_frame(cluster: &TestCluster, aux: usize, frame: bytes::Bytes) {
    let addr = cluster.cluster.aux[aux].addr;
    let response = cluster
        .http
        .put(format!(
            "http://{addr}{}",
            shardcache_common::wire::SHARDS_PATH
        ))
        .body(frame)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

/// `k` owners come back holding the old value's shards (as a restore from an old
/// snapshot would leave them) while the other `m` hold the delete's tombstones.
/// Without tombstones winning by version, the `k` stale shards would decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_is_not_undone_by_nodes_returning_with_stale_shards() {
    let mut cluster = TestCluster::start();
    let key = "deleted fruit";
    let (status, _) = cluster.set(key, "cherry").await;
    assert_eq!(status, StatusCode::OK);
    cluster.wait_for_aux_items(SHARDS_PER_KEY).await;
    let owners = cluster.owners(key);
    let stale = &owners[..3];
    let mut old_frames = Vec::new();
    for &aux in stale {
        old_frames.push(aux_frame(&cluster, aux, key).await);
    }

    // The first stale owner is down during the delete and misses it.
    cluster.cluster.aux[stale[0]].kill();
    let (status, body) = cluster.delete(key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Each stale owner in turn crashes and comes back with only the old shard.
    for (&aux, frame) in stale.iter().zip(old_frames) {
        cluster.cluster.restart_aux_empty(aux).unwrap();
        put_frame(&cluster, aux, frame).await;
    }
    assert_eq!(
        cluster.value(key).await,
        None,
        "the deleted value came back"
    );
    let (status, body) = cluster.delete(key).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

/// An aux node paused while a key was overwritten resumes holding the old version
/// until the overwrite's late shard reaches it; reads in that window must group by
/// version and return the new value, never a mix or the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_node_with_an_old_version_never_wins() {
    let cluster = TestCluster::start();
    let key = "fruit";
    cluster.set(key, "apple").await;
    cluster.wait_for_aux_items(SHARDS_PER_KEY).await;
    let paused = cluster.owners(key)[0];
    cluster.cluster.aux[paused].signal(Signal::SIGSTOP).unwrap();
    let (status, _) = cluster.set(key, "banana").await;
    assert_eq!(status, StatusCode::OK);
    cluster.cluster.aux[paused].signal(Signal::SIGCONT).unwrap();
    for _ in 0..20 {
        assert_eq!(cluster.value(key).await.as_deref(), Some("banana"));
    }
}

/// A node restored from a snapshot holding an old tombstone, under a write that was
/// acknowledged while it was away, must not make that write read as deleted once
/// two of the write's owners fail: the read answers 503 (the newer version may be
/// on them), and the value once they return. Found by the history checker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_tombstone_never_hides_an_acknowledged_write_that_is_partly_reachable() {
    // Slow probes: the masters do not mark the killed nodes down, and no repair pass
    // starts during the test.
    let mut cluster = TestCluster::start_with(|spec| {
        spec.master_args = vec!["--probe-interval".into(), "10s".into()];
    });
    let key = "tomb";
    let owners = cluster.owners(key);
    assert_eq!(cluster.set(key, "v1").await.0, 200);
    assert_eq!(cluster.delete(key).await.0, 200);
    let stale = owners[4];
    wait_until(
        "the last owner holds the tombstone",
        Duration::from_secs(10),
        || async {
            cluster
                .aux_inventory(stale)
                .await
                .iter()
                .any(|entry| entry.key == key && entry.tombstone)
        },
    )
    .await;
    cluster
        .wait_for_snapshot(stale, shardcache_common::unix_millis())
        .await;
    // It is away while v2 is written (acknowledged by the other four), then comes
    // back from its snapshot with the tombstone.
    cluster.cluster.aux[stale].kill();
    assert_eq!(cluster.set(key, "v2").await.0, 200);
    cluster.cluster.restart_aux(stale).unwrap();
    assert!(
        cluster
            .aux_inventory(stale)
            .await
            .iter()
            .any(|entry| entry.key == key && entry.tombstone),
        "the stale owner came back without its tombstone, so the 503 below would prove nothing"
    );
    // The two owners about to fail snapshot v2 first, so that it is back when they
    // are (two failures of the five; the stale node is not a third).
    let since = shardcache_common::unix_millis();
    for owner in [owners[0], owners[1]] {
        cluster.wait_for_snapshot(owner, since).await;
    }
    cluster.cluster.aux[owners[0]].kill();
    cluster.cluster.aux[owners[1]].kill();
    let (status, body) = cluster.get(key).await;
    assert_eq!(
        status, 503,
        "an acknowledged write read as {status}: {body}"
    );
    cluster.cluster.restart_aux(owners[0]).unwrap();
    cluster.cluster.restart_aux(owners[1]).unwrap();
    wait_until("v2 reads again", Duration::from_secs(10), || async {
        cluster.value(key).await.as_deref() == Some("v2")
    })
    .await;
}
