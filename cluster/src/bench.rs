//! `shardcache bench`: measures the data path side by side in one run.
//!
//! For each set-up — 4+2 and 3+2 erasure coding, 3+2 with shard reads not batched
//! (one GET per shard, to show what batching buys), and 1+2, which is 3-way
//! replication on the same code path — it starts a fresh local cluster, preloads
//! keys, then drives GETs and SETs through one master with a fixed number of
//! concurrent keep-alive connections for a fixed time. As the baseline it drives the
//! same master's `/health`, a bare axum GET handler in the same process. It reports
//! throughput, latency percentiles, and the aux nodes' stored record bytes per user
//! byte (resident memory is `bench-memory`'s business), as ratios, and writes the
//! report to a file. Load loops are bounded in time and count.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{stream, StreamExt};
use rand::Rng;
use shardcache_common::units::{ByteSize, HumanDuration};

use crate::bench_support::print_and_write;
use crate::harness::{ClusterSpec, LocalCluster};

/// Measure GET/SET throughput, latency and memory of erasure coding vs replication.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// How long each load phase runs.
    #[arg(long, default_value = "5s")]
    pub duration: HumanDuration,
    /// Concurrent keep-alive connections driving load.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Size of every value.
    #[arg(long, default_value = "1KiB")]
    pub value_size: ByteSize,
    /// Keys preloaded and then read at random.
    #[arg(long, default_value_t = 2000)]
    pub keys: usize,
    /// An extra flag for every master of every set-up (repeatable), e.g.
    /// `--master-arg=--read-batch-in-flight=2`.
    #[arg(long = "master-arg", allow_hyphen_values = true)]
    pub master_args: Vec<String>,
    /// Where the report is written (it is printed too).
    #[arg(long, default_value = "data/bench/results.md")]
    pub output: PathBuf,
}

/// Most requests one load phase may send, whatever its duration.
const MAX_REQUESTS_PER_PHASE: usize = 2_000_000;

/// Throughput and latency of one load phase.
struct Phase {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, fraction: f64) -> Duration {
        let index = ((self.latencies.len() as f64 - 1.0) * fraction).round() as usize;
        self.latencies.get(index).copied().unwrap_or_default()
    }

    fn row(&self, name: &str, baseline: f64) -> String {
        format!(
            "| {name} | {:.0} | {:.2} | {:.2} ms | {:.2} ms | {} |",
            self.per_second(),
            self.per_second() / baseline,
            self.percentile(0.5).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
            self.errors
        )
    }
}

/// One cluster set-up the benchmark measures.
struct Setup {
    label: &'static str,
    data_shards: u8,
    parity_shards: u8,
    master_args: &'static [&'static str],
}

const CODED: &str = "3+2 erasure coding";
const REPLICATED: &str = "3-way replication";

/// Measured in this order, each on a fresh cluster.
const SETUPS: [Setup; 4] = [
    Setup {
        label: "4+2 erasure coding",
        data_shards: 4,
        parity_shards: 2,
        master_args: &[],
    },
    Setup {
        label: CODED,
        data_shards: 3,
        parity_shards: 2,
        master_args: &[],
    },
    Setup {
        label: "3+2 erasure coding, reads not batched",
        data_shards: 3,
        parity_shards: 2,
        master_args: &["--read-batch-max", "1"],
    },
    Setup {
        label: REPLICATED,
        data_shards: 1,
        parity_shards: 2,
        master_args: &[],
    },
];

/// Runs the benchmark and writes its report.
pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("find the shardcache executable")?;
    let command: Vec<String> = std::env::args().collect();
    let mut report = format!(
        "# shardcache bench\n\ncommand: `{}`\n\n{} concurrent connections, {} per phase, {} values, {} keys, {} cores\n\n",
        command.join(" "),
        args.concurrency,
        args.duration,
        args.value_size,
        args.keys,
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    report.push_str(
        "| phase | requests/s | × bare axum (same run; bare rows: × the first) | p50 | p99 | errors |\n|---|---|---|---|---|---|\n",
    );
    let mut memory = Vec::new();
    let mut first_bare = None;
    for setup in SETUPS {
        let data_dir = tempfile::tempdir().context("create temp dir")?;
        let mut spec = ClusterSpec::new(data_dir.path());
        (spec.data_shards, spec.parity_shards) = (setup.data_shards, setup.parity_shards);
        spec.aux_args = vec!["--capacity".into(), "1GiB".into()];
        spec.master_args = setup
            .master_args
            .iter()
            .map(|arg| arg.to_string())
            .collect();
        spec.master_args.extend(args.master_args.iter().cloned());
        let cluster = LocalCluster::start(&exe, spec)?;
        let run = shardcache_common::runtime::block_on(bench_cluster(&cluster, &args))?;
        // GET and SET against this run's own bare handler: the machine's speed drifts
        // between runs; the bare rows show by how much, against the first.
        let bare = run.bare.per_second();
        let first_bare = *first_bare.get_or_insert(bare);
        let label = setup.label;
        report.push_str(&run.bare.row(
            &format!("bare axum GET (master /health, {label} run)"),
            first_bare,
        ));
        report.push('\n');
        report.push_str(&run.get.row(&format!("GET, {label}"), bare));
        report.push('\n');
        report.push_str(&run.set.row(&format!("SET, {label}"), bare));
        report.push('\n');
        memory.push((label, run.shard_bytes as f64 / run.user_bytes as f64));
    }
    report.push_str("\n| set-up | aux record bytes per user byte |\n|---|---|\n");
    for (label, ratio) in &memory {
        report.push_str(&format!("| {label} | {ratio:.2} |\n"));
    }
    let bytes_of = |label: &str| {
        memory
            .iter()
            .find(|(name, _)| *name == label)
            .map(|(_, ratio)| *ratio)
    };
    if let (Some(coded), Some(replicated)) = (bytes_of(CODED), bytes_of(REPLICATED)) {
        report.push_str(&format!(
            "\n{CODED} holds {:.2}× the bytes of {REPLICATED} for the same data\n",
            coded / replicated
        ));
    }
    print_and_write(&report, &args.output)?;
    Ok(())
}

struct ClusterRun {
    bare: Phase,
    get: Phase,
    set: Phase,
    shard_bytes: u64,
    user_bytes: u64,
}

async fn bench_cluster(cluster: &LocalCluster, args: &BenchArgs) -> anyhow::Result<ClusterRun> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let master = cluster.master_url(0);
    let value_len = args.value_size.bytes() as usize;
    let value: Arc<str> = Arc::from("v".repeat(value_len));
    let keys: Arc<Vec<String>> =
        Arc::new((0..args.keys).map(|i| format!("bench-key-{i}")).collect());

    let preload = stream::iter(keys.iter().cloned())
        .map(|key| set(&http, &master, key, &value))
        .buffer_unordered(args.concurrency)
        .filter(|ok| std::future::ready(!ok))
        .count()
        .await;
    if preload > 0 {
        bail!("{preload} preload writes failed");
    }
    let bare = drive(args, |_| {
        let request = http.get(format!("{master}/health"));
        async move {
            request
                .send()
                .await
                .is_ok_and(|response| response.status().is_success())
        }
    })
    .await;
    let get = drive(args, |rng| {
        let key = &keys[rng.random_range(0..keys.len())];
        let request = http.get(format!("{master}/data/{key}"));
        async move {
            match request.send().await {
                Ok(response) if response.status().is_success() => response
                    .bytes()
                    .await
                    .is_ok_and(|body| body.len() >= value_len),
                _ => false,
            }
        }
    })
    .await;
    let set = drive(args, |rng| {
        set(
            &http,
            &master,
            keys[rng.random_range(0..keys.len())].clone(),
            &value,
        )
    })
    .await;
    let mut shard_bytes = 0;
    for node in &cluster.aux {
        let health: serde_json::Value = http
            .get(format!("http://{}/health", node.addr))
            .send()
            .await?
            .json()
            .await?;
        // The records alone: `bytes` also counts whole segments and index pages,
        // which a preload of a few thousand keys leaves mostly empty.
        shard_bytes += health["store"]["record_bytes"].as_u64().unwrap_or(0);
    }
    Ok(ClusterRun {
        bare,
        get,
        set,
        shard_bytes,
        user_bytes: (args.keys * value_len) as u64,
    })
}

fn set(
    http: &reqwest::Client,
    master: &str,
    key: String,
    value: &str,
) -> impl std::future::Future<Output = bool> {
    let request = http
        .post(format!("{master}/data"))
        .body(serde_json::json!({ "key": key, "value": value }).to_string());
    async move {
        request
            .send()
            .await
            .is_ok_and(|response| response.status().is_success())
    }
}

/// Runs `request` from `concurrency` loops until the phase's time or request budget
/// is spent; each call returns whether the request succeeded.
async fn drive<F, Fut>(args: &BenchArgs, request: F) -> Phase
where
    F: Fn(&mut rand::rngs::ThreadRng) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    let deadline = started + args.duration.0;
    let budget = MAX_REQUESTS_PER_PHASE / args.concurrency.max(1);
    let request = &request;
    let loops = (0..args.concurrency).map(|_| async move {
        let mut rng = rand::rng();
        let (mut latencies, mut errors) = (Vec::new(), 0);
        while Instant::now() < deadline && latencies.len() < budget {
            let sent = Instant::now();
            let ok = request(&mut rng).await;
            latencies.push(sent.elapsed());
            errors += usize::from(!ok);
        }
        (latencies, errors)
    });
    let results = futures::future::join_all(loops).await;
    let elapsed = started.elapsed();
    let mut latencies: Vec<Duration> = results
        .iter()
        .flat_map(|(latencies, _)| latencies.iter().copied())
        .collect();
    latencies.sort_unstable();
    Phase {
        requests: latencies.len(),
        errors: results.iter().map(|(_, errors)| errors).sum(),
        elapsed,
        latencies,
    }
}
