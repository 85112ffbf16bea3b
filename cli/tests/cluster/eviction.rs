//! Eviction: a full cluster keeps serving its hot set while a scan passes. A set of
//! values is written and read (so it is hot), then twice the cluster's capacity of
//! never-seen values is written through it (a scan: a bulk load, a crawler, a
//! report reading everything once) while the hot values are still read now and
//! then. With the default policy (S3-FIFO) the hot values keep being served during
//! the scan and are all there after it; with `--eviction-policy fifo` (the segment
//! CLOCK) the same scan pushes them out — the control that shows the test can fail.

use futures::{stream, StreamExt};

use crate::support::TestCluster;

/// `--capacity` of every aux node: six of them hold 6 MiB.
const CAPACITY_MIB: u64 = 1;
const VALUE_LEN: usize = 1000;
const HOT_KEYS: usize = 120;
/// Twice what 6 × 1 MiB holds at 5/3 of 1000 bytes per value, payloads only.
const SCAN_KEYS: usize = 2 * 6 * (1 << 20) * 3 / 5 / VALUE_LEN;
/// Scan writes between two reads of a hot value.
const SCAN_WRITES_PER_HOT_READ: usize = 40;
const IN_FLIGHT: usize = 16;

/// What the hot set saw: reads served during the scan, and values there after it.
struct HotSet {
    served_during_scan: usize,
    read_during_scan: usize,
    there_after: usize,
}

fn hot_key(index: usize) -> String {
    format!("hot-{index:04}")
}

fn value_of(key: &str) -> String {
    let letter = char::from(b'a' + (key.len() as u8 + key.as_bytes()[key.len() - 1]) % 26);
    std::iter::repeat_n(letter, VALUE_LEN).collect()
}

/// Writes `keys` through the master, `IN_FLIGHT` at a time; every write must succeed.
async fn write_all(cluster: &TestCluster, keys: &[String]) {
    let failed = stream::iter(keys)
        .map(|key| async move { cluster.set(key, &value_of(key)).await.0 })
        .buffer_unordered(IN_FLIGHT)
        .filter(|status| std::future::ready(!status.is_success()))
        .count()
        .await;
    assert_eq!(failed, 0, "{failed} of {} writes failed", keys.len());
}

async fn is_served(cluster: &TestCluster, key: &str) -> bool {
    match cluster.value(key).await {
        Some(value) => {
            assert_eq!(value, value_of(key), "{key} came back changed");
            true
        }
        None => false,
    }
}

async fn hot_set_through_a_scan(policy: &str) -> HotSet {
    let cluster = TestCluster::start_with(|spec| {
        spec.aux_args = vec![
            "--capacity".into(),
            format!("{CAPACITY_MIB}MiB"),
            "--snapshot-interval".into(),
            "0s".into(),
            "--eviction-policy".into(),
            policy.into(),
        ];
    });
    let hot: Vec<String> = (0..HOT_KEYS).map(hot_key).collect();
    write_all(&cluster, &hot).await;
    for _ in 0..2 {
        for key in &hot {
            assert!(
                is_served(&cluster, key).await,
                "{key} missing before the scan"
            );
        }
    }
    let scan: Vec<String> = (0..SCAN_KEYS)
        .map(|index| format!("scan-{index:06}"))
        .collect();
    let mut served_during_scan = 0;
    let mut read_during_scan = 0;
    for (round, chunk) in scan.chunks(SCAN_WRITES_PER_HOT_READ).enumerate() {
        write_all(&cluster, chunk).await;
        read_during_scan += 1;
        served_during_scan += usize::from(is_served(&cluster, &hot[round % HOT_KEYS]).await);
    }
    let mut there_after = 0;
    for key in &hot {
        there_after += usize::from(is_served(&cluster, key).await);
    }
    let mut evictions = 0;
    for aux in 0..cluster.cluster.aux.len() {
        let health = cluster.aux_health(aux).await.expect("aux /health");
        evictions += health["store"]["evictions"].as_u64().unwrap_or(0);
    }
    assert!(evictions > 0, "the scan filled no store ({policy})");
    HotSet {
        served_during_scan,
        read_during_scan,
        there_after,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cluster_keeps_serving_its_hot_set_while_a_scan_passes() {
    let s3_fifo = hot_set_through_a_scan("s3-fifo").await;
    println!(
        "s3-fifo: {}/{} hot reads served during the scan, {}/{HOT_KEYS} hot values there after it",
        s3_fifo.served_during_scan, s3_fifo.read_during_scan, s3_fifo.there_after
    );
    assert!(
        s3_fifo.served_during_scan * 100 >= s3_fifo.read_during_scan * 98,
        "only {} of {} hot reads were served during the scan",
        s3_fifo.served_during_scan,
        s3_fifo.read_during_scan
    );
    assert!(
        s3_fifo.there_after * 100 >= HOT_KEYS * 98,
        "only {} of {HOT_KEYS} hot values survived the scan",
        s3_fifo.there_after
    );
    // The control: the segment CLOCK loses most of the hot set to the same scan.
    let fifo = hot_set_through_a_scan("fifo").await;
    println!(
        "fifo: {}/{} hot reads served during the scan, {}/{HOT_KEYS} hot values there after it",
        fifo.served_during_scan, fifo.read_during_scan, fifo.there_after
    );
    assert!(
        fifo.there_after * 10 < HOT_KEYS * 7,
        "the control kept {} of {HOT_KEYS} hot values: the scan did not push anything out",
        fifo.there_after
    );
}
