//! `shardcache bench`: throughput, latency and CPU cost of the data API, next to a
//! bare server speaking the same API and to Redis and memcached, in one run.
//!
//! Each set-up is started fresh, as processes of their own: the bare baseline
//! (`shardcache bench-bare`, an in-memory map behind the master's own JSON API);
//! shardcache 3+2 (1 master, 6 aux nodes); 1+2 (3-way replication on the same code
//! path); nginx in front of a 3+2 cluster with 2 masters; 3+2 with one aux node
//! reached through a relay that holds every chunk 5 ms ([`crate::bench::delay_proxy`]);
//! and, for reference, `redis-server` and `memcached`. The load comes from a
//! separate generator process — `wrk` with `cli/src/bench/wrk-data-api.lua` for the
//! HTTP systems, `redis-benchmark` and `memaslap` for the references — with a fixed
//! number of keep-alive connections for a fixed time per phase: GETs of random
//! preloaded keys, then POSTs (SETs) of random keys. Before and after, a sample of
//! keys is read back and checked byte for byte, so that no phase can measure fast
//! misses; every response with a status of 400 or more counts as an error.
//!
//! For every phase it reports requests per second, the ratio to the bare server,
//! p50/p99/p99.9 latency, the CPU time all server processes of the set-up (masters,
//! aux nodes, nginx and its workers) spent per request, read from `/proc/PID/stat`
//! before and after, and the generator's own CPU use (so a reader can see when the
//! generator is the bottleneck). It checks the results against the targets, prints
//! progress and the report, and writes the report as Markdown (`--output`, and the
//! `## Throughput` section of `BENCHMARKS.md`), as JSON next to it, and as a chart
//! (`docs/bench-throughput.png`). `wrk`, `rsvg-convert`, nginx, Redis and memaslap are
//! installed with `apt-get` when missing; a reference whose tools cannot be had is
//! skipped with the reason. Every loop is bounded in count and time, and every
//! process it starts is stopped by PID when it is done.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context};
use futures::{stream, StreamExt};
use serde::Serialize;
use shardcache_common::units::{ByteSize, HumanDuration};

use crate::bench::delay_proxy::DelayProxy;
use crate::bench::load_generators::{
    self as generators, GeneratorRun, HttpOperation, LoadResult, WrkLoad,
};
use crate::bench::plot::{BarChart, Series};
use crate::bench::proc_stat;
use crate::bench::support::{
    copy_executable, encode_redis_set, ensure_installed, free_port, key, memcached_args,
    print_and_write, program_path, program_version, redis_args, shell_command, utc_date, value,
    write_file, write_section, ChildServer,
};
use crate::harness::{ClusterSpec, LocalCluster, Node};

mod http;
mod references;
mod report;
mod targets;
#[cfg(test)]
mod tests;

use self::http::*;
use self::references::*;
use self::report::*;
use self::targets::*;

/// Measure throughput, latency and CPU per request: shardcache vs a bare server
/// with the same API, nginx in front, one slow aux node, Redis and memcached.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// How long each load phase runs (wrk and memaslap take whole seconds).
    #[arg(long, default_value = "5s")]
    pub duration: HumanDuration,
    /// Concurrent keep-alive connections of the load generator.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Threads of wrk (each uses up to one core; the servers share the rest).
    #[arg(long, default_value_t = 1)]
    pub wrk_threads: usize,
    /// Size of every value.
    #[arg(long, default_value = "1KiB")]
    pub value_size: ByteSize,
    /// Keys preloaded, then read and written at random.
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// The set-ups to measure, in this order (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "bare,3+2,1+2,nginx,slow-aux,redis,memcached"
    )]
    pub setups: Vec<SetupName>,
    /// How long the delay proxy holds every chunk to and from the slow aux node.
    #[arg(long, default_value = "5ms")]
    pub slow_aux_delay: HumanDuration,
    /// An extra flag for every master of every set-up (repeatable), e.g.
    /// `--master-arg=--read-batch-in-flight=2`.
    #[arg(long = "master-arg", allow_hyphen_values = true)]
    pub master_args: Vec<String>,
    /// Where the report is written as Markdown (and, with `.json`, as JSON).
    #[arg(long, default_value = "data/bench/results.md")]
    pub output: PathBuf,
    /// The Markdown file whose `## Throughput` section is (re)written.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub benchmarks_md: PathBuf,
    /// Where the chart is written as PNG (its SVG goes next to the JSON).
    #[arg(long, default_value = "docs/bench-throughput.png")]
    pub plot: PathBuf,
}

/// One set-up the benchmark can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SetupName {
    /// `shardcache bench-bare`: the same API from an in-memory map.
    #[value(name = "bare")]
    Bare,
    /// shardcache 3+2, 1 master, 6 aux nodes.
    #[value(name = "3+2")]
    Coded,
    /// shardcache 1+2 (3-way replication), 1 master, 6 aux nodes.
    #[value(name = "1+2")]
    Replicated,
    /// nginx in front of shardcache 3+2 with 2 masters.
    #[value(name = "nginx")]
    Nginx,
    /// shardcache 3+2 with one aux node behind the delay proxy.
    #[value(name = "slow-aux")]
    SlowAux,
    /// redis-server, driven by redis-benchmark.
    #[value(name = "redis")]
    Redis,
    /// memcached, driven by memaslap.
    #[value(name = "memcached")]
    Memcached,
}

impl SetupName {
    /// The name on the command line and in the JSON.
    pub fn id(self) -> &'static str {
        match self {
            SetupName::Bare => "bare",
            SetupName::Coded => "3+2",
            SetupName::Replicated => "1+2",
            SetupName::Nginx => "nginx",
            SetupName::SlowAux => "slow-aux",
            SetupName::Redis => "redis",
            SetupName::Memcached => "memcached",
        }
    }

    fn label(self, slow_aux_delay: Duration) -> String {
        match self {
            SetupName::Bare => "bare axum, same API (in-memory map)".into(),
            SetupName::Coded => "shardcache 3+2".into(),
            SetupName::Replicated => "shardcache 1+2 (3-way replication)".into(),
            SetupName::Nginx => "nginx → shardcache 3+2, 2 masters".into(),
            SetupName::SlowAux => format!(
                "shardcache 3+2, one aux {} slow",
                HumanDuration(slow_aux_delay)
            ),
            SetupName::Redis => "redis-server (reference)".into(),
            SetupName::Memcached => "memcached (reference)".into(),
        }
    }

    /// Erasure-coding geometry, masters and nginx of a shardcache set-up.
    fn shardcache_shape(self) -> Option<ShardcacheShape> {
        let coded = ShardcacheShape {
            data_shards: 3,
            parity_shards: 2,
            masters: 1,
            behind_nginx: false,
            slow_aux: false,
        };
        match self {
            SetupName::Coded => Some(coded),
            SetupName::Replicated => Some(ShardcacheShape {
                data_shards: 1,
                ..coded
            }),
            SetupName::Nginx => Some(ShardcacheShape {
                masters: 2,
                behind_nginx: true,
                ..coded
            }),
            SetupName::SlowAux => Some(ShardcacheShape {
                slow_aux: true,
                ..coded
            }),
            SetupName::Bare | SetupName::Redis | SetupName::Memcached => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct ShardcacheShape {
    data_shards: u8,
    parity_shards: u8,
    masters: usize,
    behind_nginx: bool,
    slow_aux: bool,
}

/// Aux nodes of every shardcache set-up.
const AUX_NODES: usize = 6;

/// `--capacity` of every aux node: nothing the benchmark loads is evicted.
const AUX_CAPACITY: &str = "1GiB";

/// Most bytes of requests the wrk script prepares (keys × value size, roughly).
const MAX_PREPARED_BYTES: u64 = 256 << 20;

/// Longest a preload may take, deadline of one preload or check request, and
/// attempts per preloaded key.
const PRELOAD_TIMEOUT: Duration = Duration::from_secs(600);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_ATTEMPTS: usize = 3;

/// Keys read back and compared before and after the load phases.
const CHECKED_KEYS: usize = 20;

/// Generator CPU above this share of its threads' cores marks a phase as possibly
/// limited by the generator.
const GENERATOR_BOUND_PERCENT: f64 = 90.0;

/// Requests of redis-benchmark's calibration run, and bounds of a measured run.
const REDIS_CALIBRATION_REQUESTS: u64 = 20_000;
const REDIS_MIN_REQUESTS: u64 = 1_000;
const REDIS_MAX_REQUESTS: u64 = 100_000_000;

/// The heading of the section of `BENCHMARKS.md` this benchmark owns, and the
/// section it goes before when it is not there yet.
const SECTION_HEADING: &str = "## Throughput";
const SECTION_BEFORE: &str = "## Throughput before and after the compact store";

/// A server process of a set-up whose CPU time counts.
#[derive(Debug, Clone)]
struct ServerProcess {
    name: String,
    pid: u32,
    /// Count its children too (nginx's workers).
    with_children: bool,
}

impl ServerProcess {
    fn new(name: impl Into<String>, pid: u32) -> Self {
        ServerProcess {
            name: name.into(),
            pid,
            with_children: false,
        }
    }
}

/// What kind of server a process is, for the CPU breakdown: its name up to the
/// first `-` or space (`master-0` → `master`, `nginx (master and workers)` →
/// `nginx`).
fn server_kind(name: &str) -> &str {
    name.split(['-', ' ']).next().unwrap_or(name)
}

/// The CPU ticks of `servers` (and of the children of those that count them), by
/// [`server_kind`].
fn server_cpu_ticks(servers: &[ServerProcess]) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut ticks = BTreeMap::new();
    for server in servers {
        let stat = proc_stat::read_stat(server.pid)
            .with_context(|| format!("read the CPU time of {}", server.name))?;
        let mut own = stat.cpu_ticks();
        if server.with_children {
            // Children that exited and were reaped (an nginx worker replaced mid-phase)
            // left their time in their parent's waited-for count; the live ones are
            // read one by one.
            own += stat.waited_children_cpu_ticks();
            for child in proc_stat::children_of(server.pid) {
                own += proc_stat::read_stat(child).map_or(0, |stat| stat.cpu_ticks());
            }
        }
        *ticks
            .entry(server_kind(&server.name).to_owned())
            .or_insert(0) += own;
    }
    Ok(ticks)
}

/// One measured load phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    /// `GET`, `POST` or `SET`.
    pub operation: &'static str,
    #[serde(flatten)]
    pub load: LoadResult,
    pub requests_per_second: f64,
    /// CPU time of every server process of the set-up during the phase.
    pub server_cpu_seconds: f64,
    pub server_cpu_us_per_request: f64,
    /// The same per request, by kind of process (`master`, `aux`, `nginx`, …).
    pub server_cpu_us_per_request_by_kind: BTreeMap<String, f64>,
    /// `wrk`, `redis-benchmark` or `memaslap`, its threads, and its CPU use in
    /// percent of one core.
    pub generator: &'static str,
    pub generator_threads: usize,
    pub generator_cpu_percent: f64,
}

impl PhaseResult {
    fn new(
        operation: &'static str,
        load: LoadResult,
        server_cpu_seconds_by_kind: BTreeMap<String, f64>,
        generator: &'static str,
        generator_threads: usize,
        run: &GeneratorRun,
    ) -> Self {
        let per_request = |seconds: f64| seconds * 1e6 / load.server_requests.max(1) as f64;
        let server_cpu_seconds = server_cpu_seconds_by_kind.values().sum();
        PhaseResult {
            operation,
            requests_per_second: load.per_second(),
            server_cpu_us_per_request: per_request(server_cpu_seconds),
            server_cpu_us_per_request_by_kind: server_cpu_seconds_by_kind
                .into_iter()
                .map(|(kind, seconds)| (kind, per_request(seconds)))
                .collect(),
            server_cpu_seconds,
            load,
            generator,
            generator_threads,
            generator_cpu_percent: run.cpu_percent(),
        }
    }

    fn generator_bound(&self) -> bool {
        self.generator_cpu_percent >= GENERATOR_BOUND_PERCENT * self.generator_threads as f64
    }

    fn p99_ms(&self) -> Option<f64> {
        self.load.latency.map(|latency| latency.p99_ms)
    }
}

/// What one set-up measured, or why it was skipped.
#[derive(Debug, Clone, Serialize)]
pub struct SetupResult {
    pub id: &'static str,
    pub label: String,
    pub read: Option<PhaseResult>,
    pub write: Option<PhaseResult>,
    pub skipped: Option<String>,
    /// The processes whose CPU time counts as the server's.
    pub server_processes: Vec<String>,
    pub version: Option<String>,
}

/// One target and whether this run met it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    /// `None`: not measured in this run.
    pub met: Option<bool>,
}

/// The whole run, as written to the JSON file.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: String,
    pub date: String,
    pub cores: usize,
    pub phase_seconds: u64,
    pub concurrency: usize,
    pub wrk_threads: usize,
    pub value_len: usize,
    pub keys: usize,
    pub slow_aux_delay_ms: f64,
    pub setups: Vec<SetupResult>,
    pub targets: Vec<TargetCheck>,
}

/// What every set-up needs: the flags, the copied executable, the generator.
struct Run<'a> {
    args: &'a BenchArgs,
    exe: PathBuf,
    wrk: PathBuf,
    script: PathBuf,
    clock_ticks: u64,
    work_dir: PathBuf,
}

impl Run<'_> {
    fn value_len(&self) -> usize {
        self.args.value_size.bytes() as usize
    }
}

/// Runs the benchmark and writes the report, the JSON and the chart.
pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let command = shell_command(&std::env::args().collect::<Vec<_>>());
    println!("shardcache bench: {command}");
    let mut setups: Vec<SetupName> = Vec::new();
    for setup in &args.setups {
        if !setups.contains(setup) {
            setups.push(*setup);
        }
    }
    let mut tools = vec![("wrk", "wrk"), ("rsvg-convert", "librsvg2-bin")];
    if setups.contains(&SetupName::Nginx) {
        tools.push(("nginx", "nginx"));
    }
    ensure_installed(&tools)?;
    // Every node runs the same build, even if the executable is rebuilt meanwhile.
    let work_dir = tempfile::tempdir().context("create the benchmark's temp dir")?;
    let script = work_dir.path().join("wrk-data-api.lua");
    write_file(&script, generators::WRK_SCRIPT)?;
    let run = Run {
        args: &args,
        exe: copy_executable(work_dir.path())?,
        wrk: program_path("wrk", "wrk")?,
        script,
        clock_ticks: proc_stat::clock_ticks_per_second()?,
        work_dir: work_dir.path().to_owned(),
    };
    let mut results = Vec::new();
    for (index, &setup) in setups.iter().enumerate() {
        let label = setup.label(args.slow_aux_delay.0);
        println!("[{}/{}] {label}", index + 1, setups.len());
        let result = run_setup(&run, setup).with_context(|| format!("measure {label}"))?;
        results.push(result);
    }
    let report = Report {
        command,
        date: utc_date(SystemTime::now()),
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        phase_seconds: generators::whole_seconds(args.duration.0),
        concurrency: args.concurrency,
        wrk_threads: args.wrk_threads,
        value_len: run.value_len(),
        keys: args.keys,
        slow_aux_delay_ms: args.slow_aux_delay.0.as_secs_f64() * 1e3,
        targets: check_targets(&results, args.slow_aux_delay.0),
        setups: results,
    };
    write_outputs(&args, &report)
}

fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    ensure!(args.concurrency > 0, "--concurrency must be above 0");
    ensure!(
        (1..=64).contains(&args.wrk_threads),
        "--wrk-threads must be 1 to 64"
    );
    ensure!(
        args.wrk_threads <= args.concurrency,
        "--wrk-threads must not exceed --concurrency"
    );
    ensure!(args.keys > 0, "--keys must be above 0");
    ensure!(
        args.value_size.bytes() > 0 && args.value_size.bytes() <= 1 << 20,
        "--value-size must be 1B to 1MiB"
    );
    let prepared = args.keys as u64 * (args.value_size.bytes() + 128);
    ensure!(
        prepared <= MAX_PREPARED_BYTES,
        "--keys × --value-size is {prepared} bytes of prepared requests, more than {MAX_PREPARED_BYTES}"
    );
    ensure!(!args.setups.is_empty(), "--setups names no set-up");
    ensure!(
        args.duration.0 >= Duration::from_millis(1) && args.duration.0 <= Duration::from_secs(3600),
        "--duration must be 1ms to 1h"
    );
    Ok(())
}

fn run_setup(run: &Run, setup: SetupName) -> anyhow::Result<SetupResult> {
    let dir = run.work_dir.join(setup.id().replace('+', "-"));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut result = SetupResult {
        id: setup.id(),
        label: setup.label(run.args.slow_aux_delay.0),
        read: None,
        write: None,
        skipped: None,
        server_processes: Vec::new(),
        version: None,
    };
    match (setup, setup.shardcache_shape()) {
        (_, Some(shape)) => run_shardcache(run, shape, &dir, &mut result)?,
        (SetupName::Bare, None) => run_bare(run, &dir, &mut result)?,
        (SetupName::Redis, None) => run_redis(run, &dir, &mut result)?,
        (SetupName::Memcached, None) => run_memcached(run, &dir, &mut result)?,
        (other, None) => bail!("{} has no runner", other.id()),
    }
    if let Some(reason) = &result.skipped {
        println!("    skipped: {reason}");
    }
    Ok(result)
}
