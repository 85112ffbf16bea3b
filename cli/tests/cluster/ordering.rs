//! Real-time order: a write acknowledged to a client outranks every write that was
//! acknowledged before it began, whichever master took either — also when the two
//! land in the same millisecond, where the masters' clocks alone cannot order them.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::TestCluster;

/// Writes in a row, alternating between two masters.
const WRITES: usize = 2_000;

/// Pairs of writes to one key: the first through one master, the second through
/// the other as soon as the first was acknowledged (which master goes first
/// alternates, since the writer ids break ties one way only). Then a read must
/// return the second (nothing else writes the key). The read goes through the
/// first master, so the second one's clock learns nothing from reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_writes_through_two_masters_keep_the_later_one() {
    let cluster = TestCluster::start_with(|spec| spec.masters = 2);
    let masters = [cluster.cluster.master_url(0), cluster.cluster.master_url(1)];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lost = Vec::new();
    for pair in 0..WRITES / 2 {
        assert!(
            Instant::now() < deadline,
            "{WRITES} writes took over a minute"
        );
        let key = format!("pair-{pair}");
        let first = pair % 2;
        for (write, master) in [(2 * pair, first), (2 * pair + 1, 1 - first)] {
            let response = cluster
                .http
                .post(format!("{}/data", masters[master]))
                .json(&json!({"key": key, "value": write.to_string()}))
                .send()
                .await
                .expect("write");
            assert_eq!(response.status(), 200, "write {write}");
        }
        let read: Value = cluster
            .http
            .get(format!("{}/data/{key}", masters[first]))
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("JSON");
        let expected = (2 * pair + 1).to_string();
        if read["value"] != expected.as_str() {
            lost.push((pair, read["value"].clone()));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} pairs kept the first write, not the later acknowledged one \
         (pair, value read): {:?}",
        lost.len(),
        WRITES / 2,
        &lost[..lost.len().min(10)]
    );
}
