//! Repair in bulk loses nothing: a pass with many keys in flight, cut short by a
//! second SIGKILL, or racing client writes on the very keys it rebuilds, ends with
//! every acknowledged value readable and every key back to full redundancy
//! (ARCHITECTURE.md, invariants 4 and 8).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{stream, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{wait_until, TestCluster};

/// Shards per key in the 3+2 test clusters.
const SHARDS_PER_KEY: u64 = 5;

/// The value of `key` in its `round`-th write: about 1 KiB, different per round.
fn value_of(key: &str, round: u64) -> String {
    let mut value = format!("{key}/{round}/");
    while value.len() < 1000 {
        value.push(char::from(b'a' + ((value.len() as u64 + round) % 26) as u8));
    }
    value
}

/// Seven aux nodes (so that two may die and 3+2 still has its five owners) and a
/// small repair budget bound so that a pass lasts long enough
/// to be interrupted.
fn cluster_with_a_slow_repair() -> TestCluster {
    TestCluster::start_with(|spec| {
        spec.aux_nodes = 7;
        spec.master_args
            .extend(["--repair-concurrency".into(), "2".into()]);
    })
}

/// Writes `keys` keys (round 0) through the master, 16 at a time; every write
/// must be acknowledged.
async fn load(cluster: &TestCluster, keys: usize) -> Vec<String> {
    let names: Vec<String> = (0..keys).map(|i| format!("speed-{i}")).collect();
    stream::iter(&names)
        .for_each_concurrent(16, |key| async move {
            let (status, body) = cluster.set(key, &value_of(key, 0)).await;
            assert_eq!(status, StatusCode::OK, "set {key}: {body}");
        })
        .await;
    names
}

/// The master's repair report while a pass over a placement newer than `epoch`
/// runs: waits for one to start.
async fn wait_for_a_running_pass(cluster: &TestCluster, epoch: u64) {
    wait_until(
        "a repair pass over the new placement to run",
        Duration::from_secs(30),
        || async {
            let view = cluster.cluster_view(0).await;
            view["repair"]["state"] == "running"
                && view["placement_epoch"].as_u64() > Some(epoch)
                && view["repair"]["current"]["placement_epoch"].as_u64() > Some(epoch)
        },
    )
    .await;
}

/// A slow-repair cluster loaded with `keys` keys, fully placed and repaired, whose
/// aux-0 is then SIGKILLed; returns once the pass rebuilding its shards runs.
async fn lose_aux_0_mid_repair(keys: usize) -> (TestCluster, Vec<String>) {
    let mut cluster = cluster_with_a_slow_repair();
    let keys = load(&cluster, keys).await;
    cluster
        .wait_for_aux_items(keys.len() as u64 * SHARDS_PER_KEY)
        .await;
    cluster.wait_for_repair().await;
    let epoch = cluster.placement_epoch().await;
    cluster.cluster.aux[0].kill();
    wait_for_a_running_pass(&cluster, epoch).await;
    (cluster, keys)
}

/// Checks every key reads back as one of the values `allowed` lists for it.
async fn assert_every_value_readable(
    cluster: &TestCluster,
    allowed: &HashMap<String, Vec<String>>,
) {
    stream::iter(allowed)
        .for_each_concurrent(16, |(key, values)| async move {
            let (status, body) = cluster.get(key).await;
            assert_eq!(status, StatusCode::OK, "get {key}: {body}");
            let got = body["value"].as_str().unwrap_or_default();
            assert!(
                values.iter().any(|value| value == got),
                "{key} read back {:?}, not one of its acknowledged-or-later values",
                &got[..got.len().min(40)]
            );
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_cut_short_by_a_second_sigkill_loses_nothing_and_the_next_pass_finishes_it() {
    let (mut cluster, keys) = lose_aux_0_mid_repair(3000).await;
    let interrupted_epoch = cluster.placement_epoch().await;
    // The second failure, while the pass is rebuilding the first one's shards.
    cluster.cluster.aux[1].kill();
    wait_until(
        "the interrupted pass to report why it ended",
        Duration::from_secs(30),
        || async {
            let last = &cluster.cluster_view(0).await["repair"]["last_pass"];
            last["placement_epoch"].as_u64() == Some(interrupted_epoch)
        },
    )
    .await;
    let last = cluster.cluster_view(0).await["repair"]["last_pass"].clone();
    assert_eq!(
        last["aborted"], "placement changed during the pass",
        "the second kill must land while the pass runs: {last}"
    );
    assert!(
        last["shards_rebuilt"].as_u64() > Some(0),
        "the pass had begun rebuilding: {last}"
    );

    let view = cluster.wait_for_repair_after(interrupted_epoch).await;
    assert_eq!(view["repair"]["last_pass"]["failures"], 0, "{view}");
    // Back to five distinct shards per key on the five nodes left, no strays.
    cluster
        .wait_for_aux_items(keys.len() as u64 * SHARDS_PER_KEY)
        .await;
    let allowed = keys
        .iter()
        .map(|key| (key.clone(), vec![value_of(key, 0)]))
        .collect();
    assert_every_value_readable(&cluster, &allowed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_writes_racing_the_repair_of_their_keys_are_never_rolled_back() {
    // The writers start once the pass rebuilding aux-0's shards runs, so that they
    // race it on keys it has not reached yet as well as on keys it is rebuilding.
    let (cluster, keys) = lose_aux_0_mid_repair(4000).await;
    // Four writers, each owning a quarter of the keys and rewriting them in turn,
    // so every key's writes are sequential: the last acknowledged one (or a later
    // one whose answer was lost) is what must be read back.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let mine: Vec<String> = keys.iter().skip(writer).step_by(4).cloned().collect();
            let (http, master) = (cluster.http.clone(), cluster.master());
            let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
            tokio::spawn(async move {
                let mut allowed: HashMap<String, Vec<String>> = mine
                    .iter()
                    .map(|key| (key.clone(), vec![value_of(key, 0)]))
                    .collect();
                for round in 1..=1000u64 {
                    for key in &mine {
                        if stop.load(Ordering::Relaxed) {
                            return allowed;
                        }
                        let value = value_of(key, round);
                        let answer = http
                            .post(format!("{master}/data"))
                            .json(&json!({ "key": key, "value": value }))
                            .send()
                            .await;
                        let ok =
                            matches!(&answer, Ok(response) if response.status() == StatusCode::OK);
                        let values = allowed.get_mut(key).expect("a key of this writer");
                        if ok {
                            acknowledged.fetch_add(1, Ordering::Relaxed);
                            values.clear(); // everything before it is outranked
                        }
                        values.push(value);
                    }
                }
                allowed
            })
        })
        .collect();
    wait_until(
        "the pass over the new placement to finish",
        Duration::from_secs(60),
        || async {
            let view = cluster.cluster_view(0).await;
            view["repair"]["state"] != "running"
                && view["repair"]["last_pass"]["placement_epoch"].as_u64()
                    == view["placement_epoch"].as_u64()
        },
    )
    .await;
    let written_since_the_pass_began = acknowledged.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut allowed = HashMap::new();
    for writer in writers {
        allowed.extend(writer.await.expect("writer task"));
    }
    assert!(
        written_since_the_pass_began > 0,
        "no client write was acknowledged once the pass had begun"
    );

    // Writes left in flight may need one more pass; then every key has its five
    // shards again and reads back its last acknowledged value (or a later one).
    cluster.wait_for_repair().await;
    cluster
        .wait_for_aux_items(keys.len() as u64 * SHARDS_PER_KEY)
        .await;
    assert_every_value_readable(&cluster, &allowed).await;
    let view: Value = cluster.cluster_view(0).await;
    assert_eq!(view["repair"]["last_pass"]["failures"], 0, "{view}");
}
