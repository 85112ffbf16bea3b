//! Shard reads batched per aux node: under concurrent load many keys share one
//! multi-get request, every byte still comes back right, and `--read-batch-max 1`
//! turns batching off.

use std::time::Duration;

use futures::{stream, StreamExt};
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
