//! Shard reads and writes batched per aux node: under concurrent load many keys
//! share one multi-get (or multi-put) request, every byte still comes back right,
//! batches keep to their limits, owners killed or paused in the middle of batches
//! lose no acknowledged write, and `--read-batch-max 1` / `--write-batch-max 1`
//! turn batching off.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{stream, StreamExt};
use nix::sys::signal::Signal;
use rand::SeedableRng;
use reqwest::StatusCode;

use crate::support::{random_value, wait_until, Scrape, TestCluster};

const KEYS: usize = 300;
const READERS: usize = 64;

/// `(key, value)` pairs with values of many lengths and awkward characters.
fn entries(prefix: &str, count: usize) -> Vec<(String, String)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    (0..count)
        .map(|index| {
            let len = 1 + index * 37 % 5000;
            (
                format!("{prefix}/{index} ключ"),
                random_value(&mut rng, len),
            )
        })
        .collect()
}

async fn write_and_read_concurrently(cluster: &TestCluster, written: &[(String, String)]) {
    for (key, value) in written {
        assert_eq!(cluster.set(key, value).await.0, StatusCode::OK, "{key}");
    }
    for _round in 0..3 {
        stream::iter(written)
            .for_each_concurrent(READERS, |(key, value)| async move {
                assert_eq!(
                    cluster.value(key).await.as_deref(),
                    Some(value.as_str()),
                    "{key}"
                );
            })
            .await;
    }
}

/// Scrapes once every shard get the master sent has been answered and counted: a
/// read that settled before its last owner answered leaves that get to finish in
/// the background (or, still queued, unsent).
async fn scrape_when_settled(cluster: &TestCluster, sent_at_least: usize) -> Scrape {
    wait_until(
        "every shard get sent to be counted",
        Duration::from_secs(10),
        || async {
            let scrape = cluster.master_scrape().await;
            let gets = scrape.sum("shardcache_master_shard_requests_total", &[("op", "get")]);
            let batched = scrape.sum("shardcache_master_shard_batch_keys_sum", &[]);
            gets >= Some(sent_at_least as f64) && (batched == Some(0.0) || batched == gets)
        },
    )
    .await;
    cluster.master_scrape().await
}

/// Requests the aux nodes served on `route`, summed over all of them.
async fn aux_requests(cluster: &TestCluster, route: &str) -> f64 {
    let mut total = 0.0;
    for aux in 0..cluster.cluster.aux.len() {
        total += cluster
            .aux_scrape(aux)
            .await
            .sum("shardcache_aux_http_requests_total", &[("route", route)])
            .unwrap_or(0.0);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_share_multi_gets_and_return_every_byte() {
    let cluster = TestCluster::start_with(|spec| {
        spec.master_args
            .extend(["--read-batch-in-flight".into(), "1".into()]);
    });
    cluster.wait_for_repair().await; // its reads are shard reads too; keep them apart
    let written = entries("batched", KEYS);
    write_and_read_concurrently(&cluster, &written).await;

    // Each read hears at least 4 of the 5 owners (all but one, for 3+2).
    let scrape = scrape_when_settled(&cluster, 3 * KEYS * 4).await;
    let batches = scrape.value("shardcache_master_shard_batch_keys_count", &[]);
    let batched_keys = scrape.value("shardcache_master_shard_batch_keys_sum", &[]);
    let shard_gets = scrape.value("shardcache_master_shard_requests_total", &[("op", "get")]);
    // Every shard get sent went out in some multi-get, and none was sent twice.
    assert_eq!(batched_keys, shard_gets);
    assert!(shard_gets <= (3 * KEYS * 5) as f64, "{shard_gets}");
    assert!(
        batched_keys >= 1.5 * batches,
        "{READERS} concurrent readers should share requests: {batched_keys} keys in {batches} multi-gets"
    );
    assert_eq!(aux_requests(&cluster, "/v1/multi-get").await, batches);
    assert_eq!(aux_requests(&cluster, "/v1/shards/{key}").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_batching_off_every_shard_read_is_a_get_of_its_own() {
    let cluster = TestCluster::start_with(|spec| {
        spec.master_args
            .extend(["--read-batch-max".into(), "1".into()]);
    });
    cluster.wait_for_repair().await;
    let written = entries("unbatched", 40);
    write_and_read_concurrently(&cluster, &written).await;

    // Unbatched, every read's get to every owner is sent and left to finish.
    let shard_gets = 3 * 40 * 5;
    let scrape = scrape_when_settled(&cluster, shard_gets).await;
    assert_eq!(
        scrape.value("shardcache_master_shard_batch_keys_count", &[]),
        0.0
    );
    let shard_gets = shard_gets as f64;
    assert_eq!(
        scrape.value("shardcache_master_shard_requests_total", &[("op", "get")]),
        shard_gets
    );
    assert_eq!(aux_requests(&cluster, "/v1/shards/{key}").await, shard_gets);
    assert_eq!(aux_requests(&cluster, "/v1/multi-get").await, 0.0);
}

/// Writes `entries` with `writers` concurrent clients; the statuses, in order.
async fn write_concurrently(
    cluster: &TestCluster,
    entries: &[(String, String)],
    writers: usize,
) -> Vec<StatusCode> {
    write_counting(cluster, entries, writers, &AtomicUsize::new(0)).await
}

/// [`write_concurrently`], counting the writes answered in `answered` as they are.
async fn write_counting(
    cluster: &TestCluster,
    entries: &[(String, String)],
    writers: usize,
    answered: &AtomicUsize,
) -> Vec<StatusCode> {
    stream::iter(entries)
        .map(|(key, value)| async move {
            let status = cluster.set(key, value).await.0;
            answered.fetch_add(1, Ordering::Relaxed);
            status
        })
        .buffered(writers)
        .collect()
        .await
}

/// Values of mixed sizes, some of whose shards (a third of the value each) are
/// larger than a 64 KiB batch on their own.
fn mixed_sizes(prefix: &str, count: usize) -> Vec<(String, String)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    (0..count)
        .map(|index| {
            let len = match index % 10 {
                0 => 300_000,
                1..=3 => 20_000 + index * 13,
                _ => 1 + index * 37 % 3000,
            };
            (format!("{prefix}/{index}"), random_value(&mut rng, len))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_multi_puts_within_their_limits_and_read_back() {
    let cluster = TestCluster::start_with(|spec| {
        spec.master_args.extend([
            "--write-batch-in-flight".into(),
            "1".into(),
            "--write-batch-max".into(),
            "4".into(),
            "--write-batch-bytes".into(),
            "64KiB".into(),
        ]);
    });
    cluster.wait_for_repair().await; // its puts are shard puts too; keep them apart
    let written = mixed_sizes("batched-write", 200);
    let statuses = write_concurrently(&cluster, &written, READERS).await;
    assert!(
        statuses.iter().all(|status| *status == StatusCode::OK),
        "{statuses:?}"
    );
    for (key, value) in &written {
        assert_eq!(
            cluster.value(key).await.as_deref(),
            Some(value.as_str()),
            "{key}"
        );
    }

    // Every shard put lands (those beyond the quorum in the background).
    let shard_puts = (written.len() * 5) as f64;
    wait_until(
        "every shard put to be counted",
        Duration::from_secs(10),
        || async {
            let scrape = cluster.master_scrape().await;
            scrape.sum("shardcache_master_shard_requests_total", &[("op", "put")])
                >= Some(shard_puts)
        },
    )
    .await;
    let scrape = cluster.master_scrape().await;
    let batches = scrape.value("shardcache_master_shard_put_batch_frames_count", &[]);
    let batched = scrape.value("shardcache_master_shard_put_batch_frames_sum", &[]);
    assert_eq!(
        batched, shard_puts,
        "every put went out in one multi-put, once"
    );
    assert_eq!(
        scrape.value(
            "shardcache_master_shard_requests_total",
            &[("op", "put"), ("outcome", "ok")]
        ),
        shard_puts
    );
    assert!(
        batched >= 1.5 * batches,
        "{READERS} concurrent writers should share requests: {batched} frames in {batches} multi-puts"
    );
    // No batch above --write-batch-max.
    assert_eq!(
        scrape.value(
            "shardcache_master_shard_put_batch_frames_bucket",
            &[("le", "4")]
        ),
        batches
    );
    assert_eq!(aux_requests(&cluster, "/v1/multi-put").await, batches);
    assert_eq!(aux_requests(&cluster, "/v1/shards").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_killed_or_paused_mid_batch_lose_no_acknowledged_write() {
    let mut cluster = TestCluster::start();
    let written = mixed_sizes("faults", 560);
    let (before, during) = written.split_at(80);
    let (during, after) = during.split_at(400);
    assert!(write_concurrently(&cluster, before, READERS)
        .await
        .iter()
        .all(|status| *status == StatusCode::OK));
    // Kill one node and pause another while the next writes are in their batches.
    let puts_before = cluster
        .master_scrape()
        .await
        .sum("shardcache_master_shard_requests_total", &[("op", "put")])
        .unwrap_or(0.0);
    let answered = AtomicUsize::new(0);
    let writes = write_counting(&cluster, during, READERS, &answered);
    let faults = async {
        wait_until(
            "the writes to be under way",
            Duration::from_secs(10),
            || async {
                let scrape = cluster.master_scrape().await;
                let puts = scrape.sum("shardcache_master_shard_requests_total", &[("op", "put")]);
                puts >= Some(puts_before + 50.0)
            },
        )
        .await;
        cluster.cluster.aux[1].signal(Signal::SIGKILL).unwrap();
        cluster.cluster.aux[4].signal(Signal::SIGSTOP).unwrap();
        answered.load(Ordering::Relaxed)
    };
    let (statuses, answered_before_faults) = tokio::join!(writes, faults);
    assert!(
        answered_before_faults < during.len() - READERS,
        "the faults came after the writes: {answered_before_faults} of {} answered",
        during.len()
    );
    for status in &statuses {
        assert!(
            [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE].contains(status),
            "{status}"
        );
    }
    cluster.wait_for_state(1, "down").await;
    cluster.wait_for_state(4, "down").await;
    let late = write_concurrently(&cluster, after, READERS).await;
    assert!(
        late.iter().all(|status| *status == StatusCode::OK),
        "{late:?}"
    );
    cluster.cluster.aux[4].signal(Signal::SIGCONT).unwrap();
    cluster.cluster.restart_aux(1).unwrap();
    cluster.wait_for_state(1, "up").await;
    cluster.wait_for_state(4, "up").await;
    let during_with_status = during.iter().zip(&statuses);
    let acknowledged = before
        .iter()
        .chain(
            during_with_status
                .clone()
                .filter(|(_, status)| **status == StatusCode::OK)
                .map(|(entry, _)| entry),
        )
        .chain(after);
    let mut checked = 0;
    for (key, value) in acknowledged {
        assert_eq!(
            cluster.value(key).await.as_deref(),
            Some(value.as_str()),
            "{key}"
        );
        checked += 1;
    }
    assert!(checked >= 400, "only {checked} writes were acknowledged");
    // A refused write may or may not have landed, but never as other bytes.
    for ((key, value), _) in during_with_status.filter(|(_, status)| **status != StatusCode::OK) {
        let read = cluster.value(key).await;
        assert!(
            read.is_none() || read.as_deref() == Some(value.as_str()),
            "{key}: a refused write read back as {} bytes of something else",
            read.map_or(0, |read| read.len())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_write_batching_off_every_shard_write_is_a_put_of_its_own() {
    let cluster = TestCluster::start_with(|spec| {
        spec.master_args
            .extend(["--write-batch-max".into(), "1".into()]);
    });
    cluster.wait_for_repair().await;
    let written = entries("unbatched-write", 40);
    let statuses = write_concurrently(&cluster, &written, READERS).await;
    assert!(statuses.iter().all(|status| *status == StatusCode::OK));
    let shard_puts = (written.len() * 5) as f64;
    wait_until(
        "every shard put to be counted",
        Duration::from_secs(10),
        || async { aux_requests(&cluster, "/v1/shards").await >= shard_puts },
    )
    .await;
    assert_eq!(
        aux_requests(&cluster, "/v1/shards").await,
        shard_puts,
        "each shard put once"
    );
    assert_eq!(aux_requests(&cluster, "/v1/multi-put").await, 0.0);
    assert_eq!(
        cluster
            .master_scrape()
            .await
            .value("shardcache_master_shard_put_batch_frames_count", &[]),
        0.0
    );
}
