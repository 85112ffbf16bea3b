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

// ---------------------------------------------------------------------------
// Pure arithmetic
// ---------------------------------------------------------------------------

/// Key and value bytes summed over `keys` keys.
fn user_bytes(keys: u64, key_len: usize, value_len: usize) -> u64 {
    keys * (key_len + value_len) as u64
}

/// Bytes of one shard's payload: the value cut into `data_shards` pieces.
fn shard_payload_len(value_len: usize, data_shards: u8) -> usize {
    value_len.div_ceil(usize::from(data_shards.max(1)))
}

/// `bytes` per user byte (NaN when there are no user bytes).
fn per_user_byte(bytes: f64, user_bytes: u64) -> f64 {
    bytes / user_bytes as f64
}

/// Summed RSS after minus summed RSS before.
fn rss_growth(before: &[u64], after: &[u64]) -> i64 {
    after.iter().sum::<u64>() as i64 - before.iter().sum::<u64>() as i64
}

/// What each stored shard costs beyond its key and payload: (RSS growth − Σ over
/// shards of (key len + shard payload len)) / shard count, with `k+m` shards per key.
fn per_shard_overhead(
    rss_growth: i64,
    keys: u64,
    key_len: usize,
    value_len: usize,
    data_shards: u8,
    parity_shards: u8,
) -> f64 {
    let shards = keys * u64::from(data_shards + parity_shards);
    if shards == 0 {
        return f64::NAN;
    }
    let payload = shards * (key_len + shard_payload_len(value_len, data_shards)) as u64;
    (rss_growth as f64 - payload as f64) / shards as f64
}

/// Whether two summed RSS readings taken a settle interval apart count as steady.
fn is_steady(previous: u64, current: u64) -> bool {
    (current as f64 - previous as f64).abs() < previous as f64 * STEADY_FRACTION
}

// ---------------------------------------------------------------------------
// Process memory
// ---------------------------------------------------------------------------

fn read_rss_all(pids: &[u32]) -> anyhow::Result<Vec<u64>> {
    pids.iter().map(|&pid| read_rss(pid)).collect()
}

fn pid_of(node: &Node) -> anyhow::Result<u32> {
    node.pid()
        .with_context(|| format!("find the pid of {}: not running", node.name))
}

// ---------------------------------------------------------------------------
// shardcache
// ---------------------------------------------------------------------------

/// Starts a fresh cluster for `setup`, measures it and kills it.
fn run_cluster(
    exe: &Path,
    args: &BenchMemoryArgs,
    setup: Setup,
    workload: Workload,
) -> anyhow::Result<ClusterRun> {
    // Declared before the cluster, so it is removed after every node is gone.
    let data_dir = tempfile::tempdir().context("create a temp dir for the cluster")?;
    let mut spec = ClusterSpec::new(data_dir.path());
    (spec.data_shards, spec.parity_shards) = (setup.data_shards, setup.parity_shards);
    spec.aux_args = vec![
        "--capacity".into(),
        args.aux_capacity.to_string(),
        "--snapshot-interval".into(),
        "0s".into(),
    ];
    let cluster = LocalCluster::start(exe, spec).context("start the local cluster")?;
    let run =
        shardcache_common::runtime::block_on(measure_cluster(&cluster, args, setup, workload));
    if run.is_err() {
        eprintln!("cluster logs:\n{}", cluster.logs(20));
    }
    drop(cluster);
    run
}

async fn measure_cluster(
    cluster: &LocalCluster,
    args: &BenchMemoryArgs,
    setup: Setup,
    workload: Workload,
) -> anyhow::Result<ClusterRun> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .context("build the HTTP client")?;
    let aux_pids: Vec<u32> = cluster.aux.iter().map(pid_of).collect::<Result<_, _>>()?;
    let master_pid = pid_of(&cluster.masters[0])?;
    let shards_per_key = u64::from(setup.data_shards + setup.parity_shards);
    let warm_up = workload.warm_up();
    load_cluster(&http, &cluster.master_url(0), warm_up, args.concurrency).await?;
    let warm = settle_cluster(
        &http,
        cluster,
        &aux_pids,
        warm_up.keys * shards_per_key,
        args.settle_timeout.0,
    )
    .await?;
    let aux_rss_before = warm.rss;
    let master_rss_before = read_rss(master_pid)?;

    let started = Instant::now();
    load_cluster(&http, &cluster.master_url(0), workload, args.concurrency).await?;
    let load_seconds = started.elapsed().as_secs_f64();

    let expected_shards = workload.keys * shards_per_key;
    let settled = settle_cluster(
        &http,
        cluster,
        &aux_pids,
        warm.store.items + expected_shards,
        args.settle_timeout.0,
    )
    .await?;
    Ok(ClusterRun {
        setup: setup.label,
        data_shards: setup.data_shards,
        parity_shards: setup.parity_shards,
        value_len: workload.value_len,
        keys: workload.keys,
        user_bytes: workload.user_bytes(),
        aux_rss_before,
        aux_rss_after: settled.rss,
        master_rss_before,
        master_rss_after: read_rss(master_pid)?,
        store_bytes: settled.store.bytes.saturating_sub(warm.store.bytes),
        store_items: settled.store.items.saturating_sub(warm.store.items),
        store_evictions: settled.store.evictions,
        expected_shards,
        load_seconds,
        settle_seconds: settled.seconds,
        settled: settled.steady,
    })
}

/// Writes every key through the master, `concurrency` requests at a time, each key
/// retried a few times; fails if any key could not be written.
async fn load_cluster(
    http: &reqwest::Client,
    master: &str,
    workload: Workload,
    concurrency: usize,
) -> anyhow::Result<()> {
    let url = format!("{master}/data");
    let done = AtomicUsize::new(0);
    let started = Instant::now();
    let every = progress_step(workload.keys);
    let writes = stream::iter(workload.key_indices())
        .map(|index| {
            let (url, done) = (&url, &done);
            async move {
                let body = format!(
                    r#"{{"key":"{}","value":"{}"}}"#,
                    key(index),
                    value(index, workload.value_len)
                );
                let ok = write_with_retries(http, url, body).await;
                let count = done.fetch_add(1, Ordering::Relaxed) as u64 + 1;
                if count.is_multiple_of(every) {
                    print_progress(count, workload.keys, started);
                }
                ok
            }
        })
        .buffer_unordered(concurrency)
        .filter(|ok| std::future::ready(!ok))
        .count();
    let failed = tokio::time::timeout(LOAD_TIMEOUT, writes)
        .await
        .with_context(|| format!("load {} keys within {LOAD_TIMEOUT:?}", workload.keys))?;
    if failed > 0 {
        bail!(
            "{failed} of {} writes failed after {WRITE_ATTEMPTS} attempts",
            workload.keys
        );
    }
    Ok(())
}

async fn write_with_retries(http: &reqwest::Client, url: &str, body: String) -> bool {
    for _ in 0..WRITE_ATTEMPTS {
        let sent = http.post(url).body(body.clone()).send().await;
        if sent.is_ok_and(|response| response.status().is_success()) {
            return true;
        }
    }
    false
}

/// Print progress about ten times per load.
fn progress_step(keys: u64) -> u64 {
    (keys / 10).max(1)
}

fn print_progress(done: u64, total: u64, started: Instant) {
    println!(
        "    loaded {done}/{total} keys ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
}

/// The aux nodes' own counts, summed.
#[derive(Debug, Clone, Copy, Default)]
struct StoreTotals {
    bytes: u64,
    items: u64,
    evictions: u64,
}

async fn store_totals(
    http: &reqwest::Client,
    cluster: &LocalCluster,
) -> anyhow::Result<StoreTotals> {
    let mut totals = StoreTotals::default();
    for node in &cluster.aux {
        let health: serde_json::Value = http
            .get(format!("http://{}/health", node.addr))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("ask {} for /health", node.name))?
            .json()
            .await
            .with_context(|| format!("read the /health of {}", node.name))?;
        let store = &health["store"];
        let field = |name: &str| store[name].as_u64().unwrap_or(0);
        totals.bytes += field("bytes");
        totals.items += field("items");
        totals.evictions += field("evictions");
    }
    Ok(totals)
}

/// The state once steady, or at the timeout.
struct Settled {
    rss: Vec<u64>,
    store: StoreTotals,
    seconds: f64,
    steady: bool,
}

/// Polls every settle interval until every shard has landed and the summed RSS
/// changed by less than 1% since the previous reading, or until `timeout`.
async fn settle_cluster(
    http: &reqwest::Client,
    cluster: &LocalCluster,
    pids: &[u32],
    expected_shards: u64,
    timeout: Duration,
) -> anyhow::Result<Settled> {
    let started = Instant::now();
    let rounds = (timeout.as_secs_f64() / SETTLE_INTERVAL.as_secs_f64()).ceil() as usize;
    let mut previous = read_rss_all(pids)?;
    for _ in 0..rounds.max(1) {
        tokio::time::sleep(SETTLE_INTERVAL).await;
        let rss = read_rss_all(pids)?;
        let store = store_totals(http, cluster).await?;
        let steady = is_steady(previous.iter().sum(), rss.iter().sum());
        if steady && store.items >= expected_shards {
            let seconds = started.elapsed().as_secs_f64();
            return Ok(Settled {
                rss,
                store,
                seconds,
                steady: true,
            });
        }
        previous = rss;
    }
    let store = store_totals(http, cluster).await?;
    println!(
        "    warning: not steady after {timeout:?} ({} of {expected_shards} shards stored)",
        store.items
    );
    Ok(Settled {
        rss: previous,
        store,
        seconds: started.elapsed().as_secs_f64(),
        steady: false,
    })
}

fn print_cluster_run(run: &ClusterRun) {
    println!(
        "    loaded in {:.1} s, steady after {:.1} s: aux RSS +{:.1} MiB = {:.2} per user byte, \
         store-counted {:.2}, per-shard overhead {:.0} B ({} of {} shards, {} evictions)",
        run.load_seconds,
        run.settle_seconds,
        run.rss_growth() as f64 / (1 << 20) as f64,
        run.rss_per_user_byte(),
        run.store_per_user_byte(),
        run.per_shard_overhead(),
        run.store_items,
        run.expected_shards,
        run.store_evictions
    );
}

// ---------------------------------------------------------------------------
// Redis and memcached
// ---------------------------------------------------------------------------

/// How to start, load and recognise one reference server.
struct ReferenceSystem {
    name: &'static str,
    program: &'static str,
    /// Arguments after the program, given the port.
    args: fn(u16) -> Vec<String>,
    version_args: &'static [&'static str],
    encode_set: fn(&mut Vec<u8>, &[u8], &[u8]),
    /// The reply line of a successful set.
    stored: &'static str,
}

const REDIS: ReferenceSystem = ReferenceSystem {
    name: "redis",
    program: "redis-server",
    args: redis_args,
    version_args: &["--version"],
    encode_set: encode_redis_set,
    stored: "+OK",
};

const MEMCACHED: ReferenceSystem = ReferenceSystem {
    name: "memcached",
    program: "memcached",
    args: |port| memcached_args(port, 8192),
    version_args: &["-V"],
    encode_set: encode_memcached_set,
    stored: "STORED",
};

/// Starts a fresh server, loads the workload into it, waits for steady RSS and
/// kills it.
fn run_reference(system: &ReferenceSystem, workload: Workload) -> anyhow::Result<ReferenceRun> {
    let log_dir = tempfile::tempdir().context("create a temp dir for the server log")?;
    let program = program_path(system.program, system.program)?;
    let port = free_port()?;
    let server = ChildServer::start(
        system.name,
        &program,
        &(system.args)(port),
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        &log_dir.path().join("server.log"),
    )?;
    let measured = measure_reference(system, &server, workload);
    if measured.is_err() {
        eprintln!("{} log:\n{}", system.name, server.log_tail());
    }
    drop(server);
    measured
}

fn measure_reference(
    system: &ReferenceSystem,
    server: &ChildServer,
    workload: Workload,
) -> anyhow::Result<ReferenceRun> {
    pipeline_load(server.addr, system, workload.warm_up())?;
    let (rss_before, _) = settle_process(server.pid)?;
    let started = Instant::now();
    pipeline_load(server.addr, system, workload)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let settle_started = Instant::now();
    let (rss_after, settled) = settle_process(server.pid)?;
    Ok(ReferenceRun {
        system: system.name,
        version: program_path(system.program, system.program)
            .map(|program| program_version(&program, system.version_args))
            .unwrap_or_default(),
        value_len: workload.value_len,
        keys: workload.keys,
        user_bytes: workload.user_bytes(),
        rss_before,
        rss_after,
        load_seconds,
        settle_seconds: settle_started.elapsed().as_secs_f64(),
        settled,
    })
}

/// Sends every set in pipelined batches over one connection and checks every reply.
fn pipeline_load(
    addr: SocketAddr,
    system: &ReferenceSystem,
    workload: Workload,
) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(addr)
        .with_context(|| format!("connect to {} at {addr}", system.name))?;
    stream.set_read_timeout(Some(REFERENCE_REPLY_TIMEOUT))?;
    stream.set_write_timeout(Some(REFERENCE_REPLY_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut replies = BufReader::new(stream.try_clone().context("clone the connection")?);
    let (started, every) = (Instant::now(), progress_step(workload.keys));
    let mut batch = Vec::with_capacity(PIPELINE_BYTES + workload.value_len + 64);
    let (mut index, end) = (workload.first_key, workload.first_key + workload.keys);
    while index < end {
        batch.clear();
        let first = index;
        while index < end
            && index - first < PIPELINE_COMMANDS as u64
            && batch.len() < PIPELINE_BYTES
        {
            (system.encode_set)(
                &mut batch,
                key(index).as_bytes(),
                value(index, workload.value_len).as_bytes(),
            );
            index += 1;
        }
        stream
            .write_all(&batch)
            .with_context(|| format!("send sets to {}", system.name))?;
        read_replies(&mut replies, system, index - first)?;
        if (index - workload.first_key) / every != (first - workload.first_key) / every {
            print_progress(index - workload.first_key, workload.keys, started);
        }
    }
    Ok(())
}

/// Reads `count` reply lines and fails on the first that is not `system.stored`.
fn read_replies(
    replies: &mut impl BufRead,
    system: &ReferenceSystem,
    count: u64,
) -> anyhow::Result<()> {
    let mut line = String::new();
    for _ in 0..count {
        line.clear();
        let read = replies
            .read_line(&mut line)
            .with_context(|| format!("read a reply from {}", system.name))?;
        ensure!(read > 0, "{} closed the connection", system.name);
        ensure!(
            line.trim_end() == system.stored,
            "{} answered {:?} to a set",
            system.name,
            line.trim_end()
        );
    }
    Ok(())
}

/// Polls until the process's RSS changed by less than 1% between two readings a
/// settle interval apart (bounded); returns the last reading and whether it was steady.
fn settle_process(pid: u32) -> anyhow::Result<(u64, bool)> {
    let mut previous = read_rss(pid)?;
    for _ in 0..30 {
        std::thread::sleep(SETTLE_INTERVAL);
        let current = read_rss(pid)?;
        if is_steady(previous, current) {
            return Ok((current, true));
        }
        previous = current;
    }
    Ok((previous, false))
}

fn print_reference_run(run: &ReferenceRun) {
    println!(
        "    loaded in {:.1} s: RSS +{:.1} MiB = {:.2} per user byte (×3: {:.2})",
        run.load_seconds,
        (run.rss_after as f64 - run.rss_before as f64) / (1 << 20) as f64,
        run.per_user_byte(),
        run.per_user_byte() * REFERENCE_COPIES
    );
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

fn write_outputs(args: &BenchMemoryArgs, report: &Report) -> anyhow::Result<()> {
    write_file(
        &args.json,
        &serde_json::to_string_pretty(report).context("serialise the results")?,
    )?;
    println!("raw results written to {}", args.json.display());
    let svg = args.json.with_extension("svg");
    crate::bench::plot::write_png(&chart(report), &svg, &args.plot, 1200)?;
    println!(
        "chart written to {} (SVG: {})",
        args.plot.display(),
        svg.display()
    );
    let section = render_section(report, &args.plot);
    println!("\n{section}");
    write_section(&args.output, SECTION_HEADING, &section, None)?;
    println!("written to {} ({SECTION_HEADING})", args.output.display());
    Ok(())
}

fn size_label(value_len: usize) -> String {
    match value_len {
        len if len >= 1024 && len % 1024 == 0 => format!("{} KiB", len / 1024),
        len => format!("{len} B"),
    }
}

fn ratio(value: Option<f64>) -> String {
    match value {
        Some(value) if value.is_finite() => format!("{value:.2}"),
        _ => "n/a".to_owned(),
    }
}

/// The figure of set-up `k+m` in `result`, through `measure`.
fn figure(result: &WorkloadResult, k: u8, m: u8, measure: fn(&ClusterRun) -> f64) -> Option<f64> {
    result.cluster(k, m).map(measure)
}

/// The `## Memory` section: command, date, what the columns mean, the tables.
fn render_section(report: &Report, plot: &Path) -> String {
    let mut out = format!(
        "{SECTION_HEADING}\n\n\
         Reproduce with `{}` (run on {}, {} cores; `--scale 0.05` is a quick run).\n\n",
        report.command, report.date, report.cores
    );
    out.push_str(
        "Each set-up ran on a fresh local cluster (1 master, 6 aux nodes, \
         `--capacity` large enough that nothing is evicted, periodic snapshots off), \
         loaded through the master's `POST /data` with 16-byte keys; Redis and memcached \
         got the same keys and values, pipelined, on a fresh process per value size. \
         **RSS / user byte** is the growth of the summed `VmRSS` of all aux processes \
         (or of the one server) from a baseline to steady state (every shard \
         landed, summed RSS changing by < 1% per second), divided by the user bytes \
         (key + value lengths summed over keys). The baseline is read after a warm-up \
         load of 2% as many other keys, so that connection pools, request buffers and \
         the code the load runs are resident in both readings: the growth is what the \
         data costs, the figure to size a node by. **store-counted** is the aux nodes' \
         own count (`store.bytes` of `GET /health`) per user byte. **per-shard \
         overhead** is (RSS growth − Σ over stored shards of (key length + shard \
         payload ⌈value/k⌉)) ÷ shard count (keys × (k+m)): what each stored shard costs \
         beyond its key and payload. **3+2 ÷ 1+2** compares erasure coding with 3-way \
         replication (both survive 2 lost nodes); **redis ×3** and **memcached ×3** are \
         one server's RSS growth per user byte times 3, the copies needed for the same \
         2-failure tolerance. **target** is the goal for 3+2 RSS / user byte.\n\n",
    );
    out.push_str(
        "| value size | keys | 3+2 RSS / user byte | 3+2 store-counted / user byte | \
         3+2 per-shard overhead (B) | 4+2 RSS / user byte | 1+2 RSS / user byte | \
         3+2 ÷ 1+2 | redis ×3 | memcached ×3 | target (3+2 RSS / user byte) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for result in &report.results {
        out.push_str(&table_row(result));
    }
    out.push_str(
        "\nMore detail (the JSON has every process's RSS before and after, load and \
         settle times, and shard counts):\n\n\
         | value size | 3+2 floor: keys + payloads only | 4+2 store-counted / user byte | \
         1+2 store-counted / user byte | 4+2 per-shard overhead (B) | \
         1+2 per-shard overhead (B) | redis, 1 copy | memcached, 1 copy |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for result in &report.results {
        out.push_str(&detail_row(result));
    }
    let unsteady: Vec<String> = report
        .results
        .iter()
        .flat_map(|result| {
            let clusters = result
                .clusters
                .iter()
                .filter(|run| !run.settled)
                .map(|run| format!("{} at {}", run.setup, size_label(run.value_len)));
            let references = [&result.redis, &result.memcached]
                .into_iter()
                .filter(|run| !run.settled)
                .map(|run| format!("{} at {}", run.system, size_label(run.value_len)));
            clusters.chain(references).collect::<Vec<_>>()
        })
        .collect();
    if !unsteady.is_empty() {
        out.push_str(&format!(
            "\nNot steady within the settle timeout (read at the timeout): {}.\n",
            unsteady.join(", ")
        ));
    }
    let versions: Vec<&str> = report
        .results
        .first()
        .map(|result| {
            vec![
                result.redis.version.as_str(),
                result.memcached.version.as_str(),
            ]
        })
        .unwrap_or_default();
    if !versions.is_empty() {
        out.push_str(&format!("\nReference servers: {}.\n", versions.join("; ")));
    }
    out.push_str(&format!("\n![RSS per user byte]({})\n", plot.display()));
    out
}

fn table_row(result: &WorkloadResult) -> String {
    let workload = result.workload;
    let coded_rss = figure(result, 3, 2, ClusterRun::rss_per_user_byte);
    let replicated_rss = figure(result, 1, 2, ClusterRun::rss_per_user_byte);
    let coded_vs_replicated = coded_rss.zip(replicated_rss).map(|(c, r)| c / r);
    let verdict = match coded_rss {
        Some(rss) if rss <= workload.target => "met",
        Some(_) => "missed",
        None => "n/a",
    };
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | ≤ {} ({verdict}) |\n",
        size_label(workload.value_len),
        workload.keys,
        ratio(coded_rss),
        ratio(figure(result, 3, 2, ClusterRun::store_per_user_byte)),
        figure(result, 3, 2, ClusterRun::per_shard_overhead)
            .map_or("n/a".into(), |b| format!("{b:.0}")),
        ratio(figure(result, 4, 2, ClusterRun::rss_per_user_byte)),
        ratio(replicated_rss),
        ratio(coded_vs_replicated),
        ratio(Some(result.redis.per_user_byte() * REFERENCE_COPIES)),
        ratio(Some(result.memcached.per_user_byte() * REFERENCE_COPIES)),
        workload.target,
    )
}

fn detail_row(result: &WorkloadResult) -> String {
    let workload = result.workload;
    let floor = 5.0 * (KEY_LEN + shard_payload_len(workload.value_len, 3)) as f64
        / (KEY_LEN + workload.value_len) as f64;
    let overhead = |k, m| {
        figure(result, k, m, ClusterRun::per_shard_overhead)
            .map_or("n/a".into(), |b| format!("{b:.0}"))
    };
    format!(
        "| {} | {floor:.2} | {} | {} | {} | {} | {} | {} |\n",
        size_label(workload.value_len),
        ratio(figure(result, 4, 2, ClusterRun::store_per_user_byte)),
        ratio(figure(result, 1, 2, ClusterRun::store_per_user_byte)),
        overhead(4, 2),
        overhead(1, 2),
        ratio(Some(result.redis.per_user_byte())),
        ratio(Some(result.memcached.per_user_byte())),
    )
}

/// RSS per user byte of every system, grouped by value size.
fn chart(report: &Report) -> BarChart {
    let groups = report
        .results
        .iter()
        .map(|result| size_label(result.workload.value_len))
        .collect();
    let mut series: Vec<Series> = SETUPS
        .iter()
        .map(|setup| Series {
            name: setup.label.to_owned(),
            values: report
                .results
                .iter()
                .map(|result| {
                    figure(
                        result,
                        setup.data_shards,
                        setup.parity_shards,
                        ClusterRun::rss_per_user_byte,
                    )
                })
                .collect(),
        })
        .collect();
    for (name, pick) in [
        (
            "redis ×3 copies",
            (|r: &WorkloadResult| &r.redis) as fn(&WorkloadResult) -> &ReferenceRun,
        ),
        ("memcached ×3 copies", |r: &WorkloadResult| &r.memcached),
    ] {
        series.push(Series {
            name: name.to_owned(),
            values: report
                .results
                .iter()
                .map(|result| Some(pick(result).per_user_byte() * REFERENCE_COPIES))
                .collect(),
        });
    }
    let markers = report
        .results
        .iter()
        .enumerate()
        .map(|(group, result)| Marker {
            group,
            value: result.workload.target,
            label: "3+2 target".into(),
        })
        .collect();
    let values = series
        .iter()
        .flat_map(|s| s.values.iter().flatten().copied());
    let (min, max) = values
        .filter(|value| value.is_finite() && *value > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(min, max), v| {
            (min.min(v), max.max(v))
        });
    BarChart {
        title: "Memory per user byte (RSS growth ÷ key + value bytes; lower is better)".into(),
        subtitle: format!(
            "{} · {} · {} cores",
            report.command, report.date, report.cores
        ),
        x_label: "value size (16-byte keys)".into(),
        y_label: "RSS bytes per user byte".into(),
        groups,
        series,
        markers,
        decimals: 2,
        // Orders of magnitude apart would flatten the small bars on a linear axis.
        log_scale: max > 20.0 * min,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_shard_overhead_subtracts_keys_and_payloads() {
        // 10 keys, 3+2, 100-byte values: 50 shards of 16 + 34 bytes = 2500 bytes.
        assert_eq!(
            per_shard_overhead(2500 + 50 * 200, 10, 16, 100, 3, 2),
            200.0
        );
        // Replication: every shard carries the whole value.
        assert_eq!(per_shard_overhead(3 * (16 + 1024), 1, 16, 1024, 1, 2), 0.0);
        assert!(per_shard_overhead(0, 0, 16, 100, 3, 2).is_nan());
        assert_eq!(shard_payload_len(16384, 3), 5462);
        assert_eq!(shard_payload_len(1024, 4), 256);
    }

    #[test]
    fn ratios_and_growth() {
        assert_eq!(user_bytes(1000, KEY_LEN, 100), 116_000);
        assert_eq!(rss_growth(&[10, 20], &[15, 35]), 20);
        assert_eq!(rss_growth(&[10], &[5]), -5);
        assert!(is_steady(1000, 1009) && !is_steady(1000, 1010) && is_steady(1000, 995));
    }

    #[test]
    fn scale_multiplies_key_counts() {
        let quick = workloads(0.05).unwrap();
        assert_eq!(
            quick.iter().map(|w| w.keys).collect::<Vec<_>>(),
            [10_000, 5_000, 500]
        );
        assert!(workloads(1000.0).is_err());
        assert_eq!(size_label(100), "100 B");
        assert_eq!(size_label(16384), "16 KiB");
    }
}
