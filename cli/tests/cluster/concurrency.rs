//! Concurrent writers to one key, through two masters: every write is acknowledged
//! (racing writers re-stamp above each other's versions a bounded number of times),
//! and every read returns exactly one written value (or, rarely, a miss while no
//! version has `k` shards yet).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use reqwest::StatusCode;

use crate::support::{random_value, TestCluster};

const WRITERS: usize = 8;
const WRITES_EACH: usize = 40;
const READERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_never_produce_a_torn_value() {
    let cluster = Arc::new(TestCluster::start_with(|spec| spec.masters = 2));
    let key = "contended";
    // Every value any writer will write, each of a different length so that shards
    // of different writes could be mixed up if versions were ignored.
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let values: Vec<Vec<String>> = (0..WRITERS)
        .map(|writer| {
            (0..WRITES_EACH)
                .map(|i| {
                    format!("writer {writer} write {i}: {}", {
                        let len = rng.random_range(10..20_000);
                        random_value(&mut rng, len)
                    })
                })
                .collect()
        })
        .collect();
    let written: Arc<HashSet<String>> = Arc::new(values.iter().flatten().cloned().collect());
    let first_ack = Arc::new(AtomicBool::new(false));
    let writers_done = Arc::new(AtomicUsize::new(0));

    let mut readers = Vec::new();
    for _ in 0..READERS {
        let (cluster, written, first_ack, writers_done) = (
            cluster.clone(),
            written.clone(),
            first_ack.clone(),
            writers_done.clone(),
        );
        readers.push(tokio::spawn(async move {
            // Reads started after the first acknowledged write, and how many of them
            // missed: allowed (ARCHITECTURE.md, invariant 1) while racing writes leave no
            // version with k shards, but they must stay the exception.
            let (mut reads_after_ack, mut misses_after_ack) = (0usize, 0usize);
            while writers_done.load(Ordering::Acquire) < WRITERS {
                let acked_before = first_ack.load(Ordering::Acquire);
                let (status, body) = cluster.get(key).await;
                match status {
                    StatusCode::OK => {
                        let value = body["value"].as_str().unwrap();
                        assert!(
                            written.contains(value),
                            "read a value nobody wrote ({} bytes)",
                            value.len()
                        );
                    }
                    StatusCode::NOT_FOUND => misses_after_ack += usize::from(acked_before),
                    other => panic!("read answered {other}: {body}"),
                }
                reads_after_ack += usize::from(acked_before);
            }
            (reads_after_ack, misses_after_ack)
        }));
    }
    let mut writers = Vec::new();
    for (writer, own_values) in values.into_iter().enumerate() {
        let (cluster, first_ack, writers_done) =
            (cluster.clone(), first_ack.clone(), writers_done.clone());
        writers.push(tokio::spawn(async move {
            let master = cluster.cluster.master_url(writer % 2);
            for value in own_values {
                let response = cluster
                    .http
                    .post(format!("{master}/data"))
                    .json(&serde_json::json!({"key": key, "value": value}))
                    .send()
                    .await
                    .expect("write");
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                assert_eq!(status, StatusCode::OK, "{body}");
                first_ack.store(true, Ordering::Release);
            }
            writers_done.fetch_add(1, Ordering::Release);
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let (mut reads, mut misses) = (0, 0);
    for reader in readers {
        let (reader_reads, reader_misses) = reader.await.unwrap();
        reads += reader_reads;
        misses += reader_misses;
    }
    eprintln!("{reads} reads raced the writers, {misses} of them missed");
    assert!(reads > 0, "the readers ran while writers were writing");
    assert!(
        misses * 4 <= reads,
        "{misses} of {reads} racing reads missed"
    );
    let last = cluster.value(key).await.expect("the key holds a value");
    assert!(written.contains(&last));
}
