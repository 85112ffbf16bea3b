//! Memory: an aux node's resident set stays within its `--capacity` plus a fixed
//! base, whatever it is asked to store — (a) sustained small writes, (b) mixed sizes
//! up to 1 MiB, (c) overwrites and deletes, (d) values that expire, and (e) a restart
//! that loads a snapshot larger than the capacity it restarts with. The resident set
//! is read from `/proc/PID/status` of the real aux processes while they are loaded
//! and after each phase; each node's own count of stored bytes is checked against
//! its capacity too.
//!
//! Phase (a) has a cluster of its own with a smaller capacity: through one master a
//! 100-byte write costs about as much as a 1 KiB one (a few thousand a second on 2
//! cores), and cycling 24 MiB of 100-byte shards twice on six nodes would take
//! ~180,000 of them (more still for a store that charges less per shard).

use std::cell::Cell;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures::{future, stream, StreamExt};
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{wait_until, TestCluster};

const MIB: u64 = 1 << 20;

/// `--capacity` of every aux node in phases (b) to (e).
const CAPACITY: u64 = 24 * MIB;

/// `--capacity` of every aux node in phase (a), small enough for 100-byte values
/// to fill it in seconds even where a shard is charged little more than its bytes.
const SMALL_VALUES_CAPACITY: u64 = 4 * MIB;

/// The capacity aux-0 restarts with in phase (e): half of what its snapshot holds,
/// so restoring it must evict.
const REDUCED_CAPACITY: u64 = CAPACITY / 2;

/// The fixed base: what an aux node may hold resident whatever it stores — runtime,
/// allocator, index minimums. The bound on its resident set is
/// `1.10 × capacity + BASE`.
const BASE: u64 = 32 * MIB;

/// Requests in flight at once.
const IN_FLIGHT: usize = 32;

const SHARDS_PER_KEY: u64 = 5;

/// Random lowercase letters that values are cut from (no JSON escaping, so the load
/// costs the test little CPU; nothing in the cluster compresses).
const POOL_BYTES: usize = 2 << 20;

/// The resident-set bound of an aux node with `capacity`.
fn rss_bound(capacity: u64) -> u64 {
    capacity * 11 / 10 + BASE
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// `VmRSS` of process `pid`, in bytes.
fn vm_rss(name: &str, pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|error| panic!("{name} (pid {pid}) is not running: {error}"));
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|number| number.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status:\n{status}"));
    kib * 1024
}

/// One aux node under watch.
struct Watched {
    name: String,
    pid: u32,
    capacity: u64,
}

/// Samples every aux node's resident set and store, asserts the bounds, and keeps
/// each phase's peak per node for the failure message.
struct Monitor {
    nodes: Vec<Watched>,
    /// `(phase, peak VmRSS of each node)`, in phase order.
    peaks: Vec<(String, Vec<u64>)>,
}

impl Monitor {
    /// Watches every aux node of `cluster`, each started with `capacity`.
    fn new(cluster: &TestCluster, capacity: u64) -> Self {
        let nodes = cluster
            .cluster
            .aux
            .iter()
            .map(|node| Watched {
                name: node.name.clone(),
                pid: node.pid().expect("aux node is running"),
                capacity,
            })
            .collect();
        Monitor {
            nodes,
            peaks: Vec::new(),
        }
    }

    /// The peaks seen so far, one line per phase.
    fn report(&self) -> String {
        let mut text = String::new();
        for (phase, peaks) in &self.peaks {
            let _ = write!(text, "\n  {phase}:");
            for (node, peak) in self.nodes.iter().zip(peaks) {
                let _ = write!(text, " {} {}", node.name, mib(*peak));
            }
        }
        text
    }

    /// Samples every node; returns each node's `store` from its `/health`.
    async fn check(&mut self, cluster: &TestCluster, phase: &str, when: &str) -> Vec<Value> {
        if self.peaks.last().is_none_or(|(last, _)| last != phase) {
            self.peaks
                .push((phase.to_owned(), vec![0; self.nodes.len()]));
        }
        let mut stores = Vec::new();
        for index in 0..self.nodes.len() {
            let store = aux_store(cluster, index).await;
            let node = &self.nodes[index];
            assert_eq!(
                store["capacity_bytes"].as_u64(),
                Some(node.capacity),
                "{} runs with another --capacity than expected: {store}",
                node.name
            );
            let rss = vm_rss(&node.name, node.pid);
            let peak = &mut self.peaks.last_mut().expect("a phase").1[index];
            *peak = (*peak).max(rss);
            let bound = rss_bound(node.capacity);
            assert!(
                rss <= bound,
                "phase {phase}, {when}: {} has VmRSS {}, over its bound {} \
                 (1.10 × --capacity {} + base {}); its store counts {} in {} shards. \
                 Peak VmRSS per phase so far:{}",
                node.name,
                mib(rss),
                mib(bound),
                mib(node.capacity),
                mib(BASE),
                mib(store["bytes"].as_u64().unwrap_or_default()),
                store["items"],
                self.report()
            );
            let bytes = store["bytes"].as_u64().expect("store.bytes");
            assert!(
                bytes <= node.capacity,
                "phase {phase}, {when}: {} counts {} stored, over its --capacity {}: {store}",
                node.name,
                mib(bytes),
                mib(node.capacity)
            );
            stores.push(store);
        }
        stores
    }
}

/// The `store` figures of aux node `aux`'s `/health`.
async fn aux_store(cluster: &TestCluster, aux: usize) -> Value {
    let addr = cluster.cluster.aux[aux].addr;
    let response = cluster
        .http
        .get(format!("http://{addr}/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|error| panic!("aux-{aux} /health: {error}"));
    let mut body: Value = response.json().await.expect("aux /health JSON");
    body["store"].take()
}

fn has_evicted(store: &Value) -> bool {
    store["evictions"].as_u64() > Some(0)
}

/// Every node evicted: the load really went past the capacity. `when` says when.
fn assert_every_node_evicted(stores: &[Value], when: &str) {
    for (index, store) in stores.iter().enumerate() {
        assert!(
            has_evicted(store),
            "aux-{index} never evicted {when}: {store}"
        );
    }
}

/// The sum of `field` of every node's store.
fn total(stores: &[Value], field: &str) -> u64 {
    stores
        .iter()
        .map(|store| store[field].as_u64().expect(field))
        .sum()
}

/// One request of a load.
enum Op<'a> {
    Set {
        key: String,
        value: &'a str,
        ttl: Option<u64>,
    },
    Delete(String),
}

impl<'a> Op<'a> {
    /// A set of `key` to `len` bytes cut from `pool` at a place picked by `seed`.
    fn set(key: String, pool: &'a str, seed: usize, len: usize) -> Self {
        let at = seed.wrapping_mul(7919) % (pool.len() - len + 1);
        Op::Set {
            key,
            value: &pool[at..at + len],
            ttl: None,
        }
    }

    fn with_ttl(mut self, seconds: u64) -> Self {
        if let Op::Set { ttl, .. } = &mut self {
            *ttl = Some(seconds);
        }
        self
    }

    async fn send(self, cluster: &TestCluster) {
        match self {
            Op::Set { key, value, ttl } => {
                let mut body = json!({ "key": key, "value": value });
                if let Some(ttl) = ttl {
                    body["ttl"] = ttl.into();
                }
                let (status, answer) = cluster.post_json(&body).await;
                assert_eq!(
                    status,
                    StatusCode::OK,
                    "set {key} ({} bytes): {answer}",
                    value.len()
                );
            }
            Op::Delete(key) => {
                let (status, answer) = cluster.delete(&key).await;
                assert_eq!(status, StatusCode::OK, "delete {key}: {answer}");
            }
        }
    }
}

/// How long one phase's load may run, and how often it samples the nodes.
struct Load {
    max_time: Duration,
    sample_every: usize,
}

/// Sends `ops`, [`IN_FLIGHT`] at a time, until they run out, `load.max_time` has
/// passed, or `done` (asked at every sample with every node's store) says the
/// phase did its work; samples every node every `load.sample_every` requests and
/// once at the end. Returns how many requests were sent.
async fn drive<'a>(
    cluster: &TestCluster,
    monitor: &mut Monitor,
    phase: &str,
    ops: impl Iterator<Item = Op<'a>>,
    load: Load,
    mut done: impl FnMut(&[Value]) -> bool,
) -> usize {
    let deadline = Instant::now() + load.max_time;
    let stop = Cell::new(false);
    let mut answers = stream::iter(ops)
        .take_while(|_| future::ready(!stop.get() && Instant::now() < deadline))
        .map(|op| op.send(cluster))
        .buffer_unordered(IN_FLIGHT);
    let mut sent = 0;
    while let Some(()) = answers.next().await {
        sent += 1;
        if sent % load.sample_every == 0 {
            let stores = monitor
                .check(cluster, phase, &format!("after {sent} requests"))
                .await;
            if done(&stores) {
                stop.set(true);
            }
        }
    }
    monitor
        .check(cluster, phase, &format!("after all {sent} requests"))
        .await;
    sent
}

/// One master and six aux nodes with `--capacity capacity`, snapshotting every
/// second.
fn start_cluster(capacity: u64) -> TestCluster {
    TestCluster::start_with(|spec| {
        spec.aux_args = vec![
            "--capacity".into(),
            format!("{}MiB", capacity / MIB),
            "--snapshot-interval".into(),
            "1s".into(),
        ];
        // Default failure detection: nodes busy with the load must not be declared
        // down. A generous shard timeout, so a loaded 2-core machine gets no 503s.
        spec.master_args = vec!["--shard-timeout".into(), "5s".into()];
    })
}

/// Random lowercase letters that values are cut from.
fn value_pool(rng: &mut impl Rng) -> String {
    (0..POOL_BYTES)
        .map(|_| rng.random_range(b'a'..=b'z') as char)
        .collect()
}

/// (a) Sustained 100-byte writes through aux nodes with [`SMALL_VALUES_CAPACITY`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_values_cycling_through_aux_nodes_keep_their_memory_within_capacity() {
    let cluster = start_cluster(SMALL_VALUES_CAPACITY);
    let pool = value_pool(&mut rand::rngs::StdRng::seed_from_u64(0xa));
    let mut monitor = Monitor::new(&cluster, SMALL_VALUES_CAPACITY);
    monitor.check(&cluster, "start", "before any write").await;

    // Until as many shards were evicted as are held (about twice the capacity
    // written). After 12 s, settle for every node having evicted (more than its
    // capacity written): a slow machine, or a store that charges a shard little more
    // than its bytes, may need longer to cycle twice.
    let phase = "a (100-byte values)";
    let started = Instant::now();
    let sent = drive(
        &cluster,
        &mut monitor,
        phase,
        (0..400_000).map(|i| Op::set(format!("small-{i}"), &pool, i, 100)),
        Load {
            max_time: Duration::from_secs(60),
            sample_every: 2000,
        },
        |stores| {
            let evicted = stores.iter().all(has_evicted);
            total(stores, "evictions") >= total(stores, "items")
                || (evicted && started.elapsed() > Duration::from_secs(12))
        },
    )
    .await;
    let stores = monitor
        .check(&cluster, phase, "once the load is over")
        .await;
    assert_every_node_evicted(&stores, &format!("after {sent} writes of 100 bytes"));
    println!("peak aux VmRSS per phase:{}", monitor.report());
}

/// (b) to (e) on aux nodes with [`CAPACITY`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_overwrites_expiry_and_a_smaller_restart_keep_aux_memory_within_capacity() {
    let mut cluster = start_cluster(CAPACITY);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xb);
    let pool = value_pool(&mut rng);
    let mut monitor = Monitor::new(&cluster, CAPACITY);
    monitor.check(&cluster, "start", "before any write").await;

    // b. Sizes from 1 KiB to 1 MiB, log-uniform, until as many value bytes were
    // written as the cluster holds (their shards take 5/3 of that).
    let phase = "b (1 KiB to 1 MiB values)";
    let mut sizes = Vec::new();
    let mut written = 0;
    while written < CAPACITY * 6 {
        let size = (1024.0 * 1024f64.powf(rng.random::<f64>())) as usize;
        sizes.push(size);
        written += size as u64;
    }
    drive(
        &cluster,
        &mut monitor,
        phase,
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| Op::set(format!("mixed-{i}"), &pool, i, size)),
        Load {
            max_time: Duration::from_secs(30),
            sample_every: 40,
        },
        |_| false,
    )
    .await;
    let stores = monitor
        .check(&cluster, phase, "once the load is over")
        .await;
    assert_every_node_evicted(
        &stores,
        &format!("while {} of mixed sizes were written", mib(written)),
    );

    // c. The same 2000 keys overwritten three times with other sizes, then half of
    // them deleted (tombstones replace the values).
    let phase = "c (overwrites and deletes)";
    let keys = 2000;
    let overwrites = (0..3 * keys).map(|i| {
        let size = 1024 + (i * 131) % (15 * 1024);
        Op::set(format!("rewritten-{}", i % keys), &pool, i, size)
    });
    let deletes = (0..keys)
        .step_by(2)
        .map(|i| Op::Delete(format!("rewritten-{i}")));
    drive(
        &cluster,
        &mut monitor,
        phase,
        overwrites.chain(deletes),
        Load {
            max_time: Duration::from_secs(30),
            sample_every: 1000,
        },
        |_| false,
    )
    .await;

    // d. Values with a 1-second TTL, then their memory reclaimed: every shard of
    // them counted as expired.
    let phase = "d (values expiring)";
    let stores = monitor.check(&cluster, phase, "before the writes").await;
    let expired_before = total(&stores, "expirations");
    let sent = drive(
        &cluster,
        &mut monitor,
        phase,
        (0..3000).map(|i| {
            Op::set(format!("expiring-{i}"), &pool, i, 1024 + (i * 37) % 3072).with_ttl(1)
        }),
        Load {
            max_time: Duration::from_secs(30),
            sample_every: 1000,
        },
        |_| false,
    )
    .await;
    let shards = sent as u64 * SHARDS_PER_KEY;
    wait_until(
        &format!("the aux nodes to expire {shards} shards"),
        Duration::from_secs(15),
        || async {
            let mut expired = 0;
            for aux in 0..cluster.cluster.aux.len() {
                expired += aux_store(&cluster, aux).await["expirations"]
                    .as_u64()
                    .expect("expirations");
            }
            expired >= expired_before + shards
        },
    )
    .await;
    monitor.check(&cluster, phase, "once they expired").await;

    // e. aux-0 snapshots its (full) store, then restarts with half the capacity:
    // the restore must evict, and the node stays within the smaller bound.
    let phase = "e (a snapshot larger than half the capacity)";
    let restarted = 0;
    let snapshots = |health: &Value| health["snapshot"]["written"].as_u64().unwrap_or(0);
    let health = cluster.aux_health(restarted).await.expect("aux-0 /health");
    let snapshots_before = snapshots(&health);
    // A change after that count was read, so another snapshot is due.
    drive(
        &cluster,
        &mut monitor,
        phase,
        (0..500).map(|i| Op::set(format!("late-{i}"), &pool, i, 4096)),
        Load {
            max_time: Duration::from_secs(30),
            sample_every: 250,
        },
        |_| false,
    )
    .await;
    wait_until(
        &format!("a snapshot of aux-0 larger than {}", mib(REDUCED_CAPACITY)),
        Duration::from_secs(15),
        || async {
            cluster.aux_health(restarted).await.is_some_and(|health| {
                snapshots(&health) > snapshots_before
                    && health["snapshot"]["last_bytes"].as_u64() > Some(REDUCED_CAPACITY)
            })
        },
    )
    .await;
    cluster
        .cluster
        .restart_aux_with(
            restarted,
            "--capacity",
            &format!("{}MiB", REDUCED_CAPACITY / MIB),
        )
        .expect("restart aux-0 with a smaller capacity");
    monitor.nodes[restarted].pid = cluster.cluster.aux[restarted].pid().expect("running");
    monitor.nodes[restarted].capacity = REDUCED_CAPACITY;
    // It answers once the snapshot is loaded.
    wait_until(
        "aux-0 to answer after its restore",
        Duration::from_secs(20),
        || async { cluster.aux_health(restarted).await.is_some() },
    )
    .await;
    let health = cluster.aux_health(restarted).await.expect("aux-0 /health");
    let restored = &health["snapshot"]["restored"];
    assert!(
        restored["loaded"].as_u64() > Some(0) && restored["evicted"].as_u64() > Some(0),
        "aux-0 should have loaded a snapshot larger than its capacity: {restored}"
    );
    let phase = "e (restored with half the capacity)";
    monitor
        .check(&cluster, phase, "right after the restore")
        .await;
    cluster.wait_for_state(restarted, "up").await;
    monitor
        .check(&cluster, phase, "once the master saw it up")
        .await;
    // Shown with --nocapture: the margins, for the README's memory section.
    println!("peak aux VmRSS per phase:{}", monitor.report());
}
