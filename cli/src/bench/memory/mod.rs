//! `shardcache bench-memory`: how much memory the aux nodes really use per byte of
//! user data, next to Redis and memcached, in one run.
//!
//! For each value size (100 B, 1 KiB, 16 KiB; 16-byte keys) and each set-up — 3+2
//! and 4+2 erasure coding and 1+2, which is 3-way replication on the same code path
//! — it starts a fresh local cluster (1 master, 6 aux nodes, a capacity nothing is
//! evicted from, periodic snapshots off), reads every aux process's `VmRSS`, loads
//! the keys through the master's `POST /data` from many concurrent connections,
//! waits until every shard has landed and the summed RSS is steady, and reads `VmRSS`
//! and the aux nodes' own counted bytes (`GET /health`) again. For reference it
//! loads the same keys and values into a `redis-server` and a `memcached` started as
//! children of the benchmark (pipelined over one TCP connection) and reads their
//! RSS growth, once per value size on a fresh process.
//!
//! It prints progress, then writes the results as the `## Memory` section of
//! `BENCHMARKS.md` (other sections are kept), the raw figures as JSON, and a grouped
//! bar chart as PNG. Every node runs a copy of the executable taken at the start, so
//! one run measures one build even if the executable is rebuilt meanwhile. Redis,
//! memcached and `rsvg-convert` are installed with `apt-get` when missing. Every loop
//! is bounded in count and time; the reference servers are killed by PID when the
//! benchmark ends and, through a watchdog on a pipe, when it dies.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context};
use futures::{stream, StreamExt};
use serde::Serialize;
use shardcache_common::units::{ByteSize, HumanDuration};

use crate::bench::plot::{BarChart, Marker, Series};
use crate::bench::proc_stat::read_rss;
use crate::bench::support::{
    copy_executable, encode_memcached_set, encode_redis_set, ensure_installed, free_port, key,
    memcached_args, program_path, program_version, redis_args, shell_command, utc_date, value,
    write_file, write_section, ChildServer, KEY_LEN,
};
use crate::harness::{ClusterSpec, LocalCluster, Node};

mod arithmetic;
mod cluster;
mod references;
mod report;
#[cfg(test)]
mod tests;

use self::arithmetic::*;
use self::cluster::*;
use self::references::*;
use self::report::*;

/// Measure memory per user byte: erasure coding vs replication vs Redis and memcached.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchMemoryArgs {
    /// Multiplies every key count (200k at 100 B, 100k at 1 KiB, 10k at 16 KiB),
    /// e.g. 0.05 for a quick run.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Concurrent requests while loading a cluster.
    #[arg(long, default_value_t = 48)]
    pub concurrency: usize,
    /// `--capacity` of every aux node: large enough that nothing is evicted.
    #[arg(long, default_value = "4GiB")]
    pub aux_capacity: ByteSize,
    /// Longest wait, after the load, for every shard to land and RSS to be steady.
    #[arg(long, default_value = "60s")]
    pub settle_timeout: HumanDuration,
    /// The Markdown file whose `## Memory` section is (re)written.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub output: PathBuf,
    /// Where the raw results are written as JSON.
    #[arg(long, default_value = "data/bench/memory.json")]
    pub json: PathBuf,
    /// Where the chart is written as PNG (its SVG goes next to the JSON).
    #[arg(long, default_value = "docs/bench-memory.png")]
    pub plot: PathBuf,
}

/// The section of the Markdown file this benchmark owns.
const SECTION_HEADING: &str = "## Memory";

/// Value sizes, default key counts (before `--scale`) and the target for 3+2 RSS
/// per user byte.
const WORKLOADS: [(usize, u64, f64); 3] = [
    (100, 200_000, 3.6),
    (1024, 100_000, 1.95),
    (16384, 10_000, 1.75),
];

/// Most keys one workload may load, whatever `--scale` says.
const MAX_KEYS: u64 = 5_000_000;

/// Longest one load may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Deadline of one request to the master, and attempts per key.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_ATTEMPTS: usize = 3;

/// Time between two RSS readings while waiting for steady state, and how much the
/// summed RSS may change between them to count as steady.
const SETTLE_INTERVAL: Duration = Duration::from_secs(1);
const STEADY_FRACTION: f64 = 0.01;

/// Pipelined commands per batch to Redis or memcached (or fewer, at 1 MiB).
const PIPELINE_COMMANDS: usize = 512;
const PIPELINE_BYTES: usize = 1 << 20;

/// How long a reference server gets to answer a batch.
const REFERENCE_REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Copies a reference server keeps to survive 2 failures, like 3+2 coding.
const REFERENCE_COPIES: f64 = 3.0;

/// One cluster set-up.
#[derive(Debug, Clone, Copy)]
struct Setup {
    label: &'static str,
    data_shards: u8,
    parity_shards: u8,
}

const SETUPS: [Setup; 3] = [
    Setup {
        label: "3+2 erasure coding",
        data_shards: 3,
        parity_shards: 2,
    },
    Setup {
        label: "4+2 erasure coding",
        data_shards: 4,
        parity_shards: 2,
    },
    Setup {
        label: "1+2 (3-way replication)",
        data_shards: 1,
        parity_shards: 2,
    },
];

/// One value size and how many keys of it are loaded.
#[derive(Debug, Clone, Copy, Serialize)]
struct Workload {
    value_len: usize,
    keys: u64,
    /// Index of the first key (keys are numbered; a warm-up uses other numbers).
    #[serde(skip)]
    first_key: u64,
    target: f64,
}

impl Workload {
    fn user_bytes(&self) -> u64 {
        user_bytes(self.keys, KEY_LEN, self.value_len)
    }

    fn key_indices(&self) -> std::ops::Range<u64> {
        self.first_key..self.first_key + self.keys
    }

    /// The load before the baseline reading: 2% as many other keys of the same
    /// size, so that connection pools, buffers and the code the load runs are
    /// resident in both readings and the growth is what the data costs.
    fn warm_up(&self) -> Workload {
        Workload {
            keys: (self.keys / 50).max(100),
            first_key: self.first_key + self.keys,
            ..*self
        }
    }
}

/// What one cluster run measured.
#[derive(Debug, Clone, Serialize)]
struct ClusterRun {
    setup: &'static str,
    data_shards: u8,
    parity_shards: u8,
    value_len: usize,
    keys: u64,
    user_bytes: u64,
    /// VmRSS of each aux process, in bytes, before and after the load.
    aux_rss_before: Vec<u64>,
    aux_rss_after: Vec<u64>,
    master_rss_before: u64,
    master_rss_after: u64,
    /// Summed over the aux nodes' `GET /health` `store` figures.
    store_bytes: u64,
    store_items: u64,
    store_evictions: u64,
    expected_shards: u64,
    load_seconds: f64,
    settle_seconds: f64,
    settled: bool,
}

impl ClusterRun {
    fn rss_growth(&self) -> i64 {
        rss_growth(&self.aux_rss_before, &self.aux_rss_after)
    }

    fn rss_per_user_byte(&self) -> f64 {
        per_user_byte(self.rss_growth() as f64, self.user_bytes)
    }

    fn store_per_user_byte(&self) -> f64 {
        per_user_byte(self.store_bytes as f64, self.user_bytes)
    }

    fn per_shard_overhead(&self) -> f64 {
        per_shard_overhead(
            self.rss_growth(),
            self.keys,
            KEY_LEN,
            self.value_len,
            self.data_shards,
            self.parity_shards,
        )
    }
}

/// What one Redis or memcached run measured.
#[derive(Debug, Clone, Serialize)]
struct ReferenceRun {
    system: &'static str,
    version: String,
    value_len: usize,
    keys: u64,
    user_bytes: u64,
    rss_before: u64,
    rss_after: u64,
    load_seconds: f64,
    settle_seconds: f64,
    settled: bool,
}

impl ReferenceRun {
    fn per_user_byte(&self) -> f64 {
        per_user_byte(
            self.rss_after as f64 - self.rss_before as f64,
            self.user_bytes,
        )
    }
}

/// Everything measured for one value size.
#[derive(Debug, Clone, Serialize)]
struct WorkloadResult {
    workload: Workload,
    clusters: Vec<ClusterRun>,
    redis: ReferenceRun,
    memcached: ReferenceRun,
}

impl WorkloadResult {
    fn cluster(&self, data_shards: u8, parity_shards: u8) -> Option<&ClusterRun> {
        self.clusters
            .iter()
            .find(|run| run.data_shards == data_shards && run.parity_shards == parity_shards)
    }
}

/// The whole run, as written to the JSON file.
#[derive(Debug, Clone, Serialize)]
struct Report {
    command: String,
    date: String,
    cores: usize,
    scale: f64,
    concurrency: usize,
    aux_capacity: String,
    key_len: usize,
    results: Vec<WorkloadResult>,
}

/// Runs the benchmark and writes the Markdown section, the JSON and the chart.
pub fn bench_memory(args: BenchMemoryArgs) -> anyhow::Result<()> {
    ensure!(
        args.scale > 0.0 && args.scale.is_finite(),
        "--scale must be a positive number"
    );
    ensure!(args.concurrency > 0, "--concurrency must be above 0");
    let command = shell_command(&std::env::args().collect::<Vec<_>>());
    println!("bench-memory: {command}");
    ensure_installed(&[
        ("redis-server", "redis-server"),
        ("memcached", "memcached"),
        ("rsvg-convert", "librsvg2-bin"),
    ])?;
    // Every cluster runs the same build, even if the executable is rebuilt meanwhile.
    let exe_dir = tempfile::tempdir().context("create a temp dir for the executable")?;
    let exe = copy_executable(exe_dir.path())?;
    let workloads = workloads(args.scale)?;
    let steps = workloads.len() * (SETUPS.len() + 2);
    let mut step = 0;
    let mut results = Vec::new();
    for workload in workloads {
        let mut clusters = Vec::new();
        for setup in SETUPS {
            step += 1;
            println!(
                "[{step}/{steps}] {}: {} keys of {} B values",
                setup.label, workload.keys, workload.value_len
            );
            let run = run_cluster(&exe, &args, setup, workload)
                .with_context(|| format!("measure {} at {} B", setup.label, workload.value_len))?;
            print_cluster_run(&run);
            clusters.push(run);
        }
        let mut reference = |system: &ReferenceSystem| -> anyhow::Result<ReferenceRun> {
            step += 1;
            println!(
                "[{step}/{steps}] {}: {} keys of {} B values",
                system.name, workload.keys, workload.value_len
            );
            let run = run_reference(system, workload)
                .with_context(|| format!("measure {}", system.name))?;
            print_reference_run(&run);
            Ok(run)
        };
        let redis = reference(&REDIS)?;
        let memcached = reference(&MEMCACHED)?;
        results.push(WorkloadResult {
            workload,
            clusters,
            redis,
            memcached,
        });
    }
    let report = Report {
        command,
        date: utc_date(SystemTime::now()),
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        scale: args.scale,
        concurrency: args.concurrency,
        aux_capacity: args.aux_capacity.to_string(),
        key_len: KEY_LEN,
        results,
    };
    write_outputs(&args, &report)
}

/// The workloads at `scale`, at least one key each.
fn workloads(scale: f64) -> anyhow::Result<Vec<Workload>> {
    WORKLOADS
        .iter()
        .map(|&(value_len, keys, target)| {
            let keys = ((keys as f64 * scale).round() as u64).max(1);
            ensure!(
                keys <= MAX_KEYS,
                "--scale {scale} asks for {keys} keys, more than {MAX_KEYS}"
            );
            Ok(Workload {
                value_len,
                keys,
                first_key: 0,
                target,
            })
        })
        .collect()
}
