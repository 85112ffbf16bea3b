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

// ---------------------------------------------------------------------------
// HTTP set-ups: bare, shardcache, nginx
// ---------------------------------------------------------------------------

fn run_bare(run: &Run, dir: &Path, result: &mut SetupResult) -> anyhow::Result<()> {
    println!("    starting shardcache bench-bare");
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let mut node = Node::start(
        &run.exe,
        "bench-bare",
        "bench-bare".into(),
        listen,
        Vec::new(),
        dir.join("bench-bare.log"),
    )?;
    let pid = node.pid().context("bench-bare is not running")?;
    let servers = vec![ServerProcess::new("bench-bare", pid)];
    let measured = http_phases(run, &format!("http://{}", node.addr), &servers, result);
    if measured.is_err() {
        eprintln!("bench-bare log:\n{}", node.log_tail(20));
    }
    node.terminate();
    measured
}

fn run_shardcache(
    run: &Run,
    shape: ShardcacheShape,
    dir: &Path,
    result: &mut SetupResult,
) -> anyhow::Result<()> {
    let mut spec = ClusterSpec::new(dir.join("cluster"));
    spec.masters = shape.masters;
    spec.aux_nodes = AUX_NODES;
    (spec.data_shards, spec.parity_shards) = (shape.data_shards, shape.parity_shards);
    spec.aux_args = ["--capacity", AUX_CAPACITY, "--snapshot-interval", "0s"]
        .map(String::from)
        .to_vec();
    spec.master_args = run.args.master_args.clone();
    println!(
        "    starting {AUX_NODES} aux nodes and {} master(s), {}+{}",
        shape.masters, shape.data_shards, shape.parity_shards
    );
    let delay = run.args.slow_aux_delay.0;
    let mut proxy = None;
    let cluster = LocalCluster::start_with_aux_route(&run.exe, spec, |index, addr| {
        if !(shape.slow_aux && index == 0) {
            return Ok(addr);
        }
        let relay = DelayProxy::start(addr, delay)?;
        println!(
            "    masters reach aux-0 ({addr}) through a {} delay proxy on {}",
            HumanDuration(delay),
            relay.addr
        );
        let relay_addr = relay.addr;
        proxy = Some(relay);
        Ok(relay_addr)
    })
    .context("start the local cluster")?;
    let mut servers = Vec::new();
    for node in cluster.aux.iter().chain(&cluster.masters) {
        let pid = node
            .pid()
            .with_context(|| format!("{} is not running", node.name))?;
        servers.push(ServerProcess::new(node.name.clone(), pid));
    }
    let nginx = match shape.behind_nginx {
        true => {
            let masters: Vec<SocketAddr> = cluster.masters.iter().map(|node| node.addr).collect();
            let nginx = start_nginx(dir, &masters)?;
            servers.push(ServerProcess {
                name: "nginx (master and workers)".into(),
                pid: nginx.pid,
                with_children: true,
            });
            result.version = Some(program_version(&program_path("nginx", "nginx")?, &["-v"]));
            Some(nginx)
        }
        false => None,
    };
    let url = match &nginx {
        Some(nginx) => format!("http://{}", nginx.addr),
        None => cluster.master_url(0),
    };
    let measured = http_phases(run, &url, &servers, result);
    if measured.is_err() {
        eprintln!("cluster logs:\n{}", cluster.logs(20));
        if let Some(nginx) = &nginx {
            eprintln!("nginx log:\n{}", nginx.log_tail());
        }
    }
    drop(nginx);
    drop(cluster);
    drop(proxy);
    measured
}

/// A minimal nginx configuration on loopback: one worker, the masters as an
/// upstream with a keep-alive pool, `/data` proxied over HTTP/1.1 keep-alive with
/// the shipped `nginx.conf`'s body settings, no access log, every path under `dir`.
fn nginx_config(listen: SocketAddr, masters: &[SocketAddr], dir: &Path) -> String {
    let dir = dir.display();
    let servers: String = masters
        .iter()
        .map(|master| format!("        server {master};\n"))
        .collect();
    format!(
        "worker_processes 1;\n\
         pid {dir}/nginx.pid;\n\
         error_log {dir}/error.log warn;\n\
         events {{\n    worker_connections 1024;\n}}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path {dir}/temp/client_body;\n\
         \x20   proxy_temp_path {dir}/temp/proxy;\n\
         \x20   fastcgi_temp_path {dir}/temp/fastcgi;\n\
         \x20   uwsgi_temp_path {dir}/temp/uwsgi;\n\
         \x20   scgi_temp_path {dir}/temp/scgi;\n\
         \x20   upstream masters {{\n{servers}\
         \x20       keepalive 64;\n\
         \x20   }}\n\
         \x20   server {{\n\
         \x20       listen {listen};\n\
         \x20       client_max_body_size 16394k;\n\
         \x20       location /data {{\n\
         \x20           proxy_pass http://masters;\n\
         \x20           proxy_http_version 1.1;\n\
         \x20           proxy_set_header Connection \"\";\n\
         \x20           proxy_request_buffering off;\n\
         \x20           proxy_buffers 16 16k;\n\
         \x20       }}\n\
         \x20   }}\n\
         }}\n"
    )
}

/// The nginx command line for the configuration in `dir`.
fn nginx_args(dir: &Path) -> Vec<String> {
    let conf = dir.join("nginx.conf");
    let path = |path: &Path| path.display().to_string();
    vec![
        "-p".into(),
        path(dir),
        "-e".into(),
        path(&dir.join("error.log")),
        "-c".into(),
        path(&conf),
        "-g".into(),
        "daemon off;".into(),
    ]
}

fn start_nginx(dir: &Path, masters: &[SocketAddr]) -> anyhow::Result<ChildServer> {
    let nginx_dir = dir.join("nginx");
    std::fs::create_dir_all(nginx_dir.join("temp"))
        .with_context(|| format!("create {}", nginx_dir.display()))?;
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    write_file(
        &nginx_dir.join("nginx.conf"),
        &nginx_config(listen, masters, &nginx_dir),
    )?;
    println!(
        "    starting nginx on {listen} in front of {} masters",
        masters.len()
    );
    ChildServer::start(
        "nginx",
        &program_path("nginx", "nginx")?,
        &nginx_args(&nginx_dir),
        listen,
        &nginx_dir.join("nginx.log"),
    )
}

/// Preloads every key through `url`, checks a sample, runs the GET and POST
/// phases, and checks the sample again.
fn http_phases(
    run: &Run,
    url: &str,
    servers: &[ServerProcess],
    result: &mut SetupResult,
) -> anyhow::Result<()> {
    result.server_processes = servers.iter().map(|server| server.name.clone()).collect();
    let (keys, value_len) = (run.args.keys, run.value_len());
    shardcache_common::runtime::block_on(async {
        let http = http_client(run.args.concurrency)?;
        preload(&http, url, keys, value_len, run.args.concurrency).await?;
        check_sample(&http, url, keys, value_len).await
    })?;
    for operation in [HttpOperation::Get, HttpOperation::Post] {
        let load = WrkLoad {
            wrk: &run.wrk,
            script: &run.script,
            base_url: url,
            operation,
            threads: run.args.wrk_threads,
            connections: run.args.concurrency,
            duration: run.args.duration.0,
            keys,
            value_len,
        };
        let phase = measure_phase(
            run,
            servers,
            operation.name(),
            "wrk",
            run.args.wrk_threads,
            || generators::run_wrk(&load, run.clock_ticks),
        )?;
        match operation {
            HttpOperation::Get => result.read = Some(phase),
            HttpOperation::Post => result.write = Some(phase),
        }
    }
    shardcache_common::runtime::block_on(async {
        let http = http_client(run.args.concurrency)?;
        check_sample(&http, url, keys, value_len).await
    })
    .context("read back after the POST phase")
}

fn http_client(connections: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(connections)
        .build()
        .context("build the HTTP client")
}

/// Writes every key (`POST /data`), `concurrency` at a time, each retried a few
/// times; fails if any key could not be written or the whole takes too long.
async fn preload(
    http: &reqwest::Client,
    url: &str,
    keys: usize,
    value_len: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    println!("    preloading {keys} keys of {value_len} B");
    let started = Instant::now();
    let endpoint = format!("{url}/data");
    let writes = stream::iter(0..keys as u64)
        .map(|index| {
            let endpoint = &endpoint;
            async move {
                let body =
                    serde_json::json!({ "key": key(index), "value": value(index, value_len) })
                        .to_string();
                for _ in 0..WRITE_ATTEMPTS {
                    let sent = http.post(endpoint).body(body.clone()).send().await;
                    if sent.is_ok_and(|response| response.status().is_success()) {
                        return true;
                    }
                }
                false
            }
        })
        .buffer_unordered(concurrency)
        .filter(|written| std::future::ready(!written))
        .count();
    let failed = tokio::time::timeout(PRELOAD_TIMEOUT, writes)
        .await
        .with_context(|| format!("preload {keys} keys within {PRELOAD_TIMEOUT:?}"))?;
    ensure!(
        failed == 0,
        "{failed} of {keys} preload writes failed after {WRITE_ATTEMPTS} attempts"
    );
    println!("    preloaded in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The keys read back: the first, the last and others spread evenly between.
fn sample_indices(keys: usize, wanted: usize) -> Vec<u64> {
    let wanted = wanted.clamp(1, keys.max(1));
    let mut indices: Vec<u64> = (0..wanted)
        .map(|step| match wanted {
            1 => 0,
            _ => (step * (keys - 1) / (wanted - 1)) as u64,
        })
        .collect();
    indices.dedup();
    indices
}

/// Reads a sample of keys back and fails unless each answers 200 with its value.
async fn check_sample(
    http: &reqwest::Client,
    url: &str,
    keys: usize,
    value_len: usize,
) -> anyhow::Result<()> {
    for index in sample_indices(keys, CHECKED_KEYS) {
        let key = key(index);
        let response = http
            .get(format!("{url}/data/{key}"))
            .send()
            .await
            .with_context(|| format!("GET {key}"))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        ensure!(status.is_success(), "GET {key} answered {status}: {body}");
        let reply: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("GET {key} answered {body:?}"))?;
        ensure!(
            reply["key"] == key.as_str() && reply["value"] == value(index, value_len).as_str(),
            "GET {key} answered another key or value: {}",
            &body[..body.len().min(200)]
        );
    }
    println!("    checked: sampled keys answer 200 with their bytes");
    Ok(())
}

/// Runs one phase's generator and measures the servers' CPU time around it.
fn measure_phase(
    run: &Run,
    servers: &[ServerProcess],
    operation: &'static str,
    generator: &'static str,
    generator_threads: usize,
    drive: impl FnOnce() -> anyhow::Result<(LoadResult, GeneratorRun)>,
) -> anyhow::Result<PhaseResult> {
    println!(
        "    {operation}: {generator} for {} s, {} connections",
        generators::whole_seconds(run.args.duration.0),
        run.args.concurrency
    );
    let before = server_cpu_ticks(servers)?;
    let (load, generator_run) = drive()?;
    let after = server_cpu_ticks(servers)?;
    let server_cpu_seconds_by_kind = after
        .into_iter()
        .map(|(kind, ticks)| {
            let spent = ticks.saturating_sub(before.get(&kind).copied().unwrap_or(0));
            (kind, spent as f64 / run.clock_ticks as f64)
        })
        .collect();
    let phase = PhaseResult::new(
        operation,
        load,
        server_cpu_seconds_by_kind,
        generator,
        generator_threads,
        &generator_run,
    );
    println!("      {}", phase_summary(&phase));
    Ok(phase)
}

fn phase_summary(phase: &PhaseResult) -> String {
    let latency = match phase.load.latency {
        Some(latency) => format!(
            "p50 {} p99 {} p99.9 {}",
            millis(latency.p50_ms, latency.approximate),
            millis(latency.p99_ms, latency.approximate),
            millis(latency.p999_ms, latency.approximate)
        ),
        None => "no latency".into(),
    };
    format!(
        "{:.0} req/s, {latency}, server {:.1} µs/request ({}), {} {:.0}% CPU, {} errors{}",
        phase.requests_per_second,
        phase.server_cpu_us_per_request,
        cpu_by_kind(phase),
        phase.generator,
        phase.generator_cpu_percent,
        phase.load.errors,
        match phase.load.error_detail.is_empty() {
            true => String::new(),
            false => format!(" ({})", phase.load.error_detail),
        }
    )
}

// ---------------------------------------------------------------------------
// Reference servers: Redis and memcached
// ---------------------------------------------------------------------------

/// Installs the programs of a reference set-up; `Err` is the reason to skip it.
fn reference_tools(programs: &[(&str, &str)]) -> Result<(), String> {
    ensure_installed(programs).map_err(|error| format!("{error:#}"))
}

fn run_redis(run: &Run, dir: &Path, result: &mut SetupResult) -> anyhow::Result<()> {
    if let Err(reason) = reference_tools(&[
        ("redis-server", "redis-server"),
        ("redis-benchmark", "redis-tools"),
    ]) {
        result.skipped = Some(reason);
        return Ok(());
    }
    let program = program_path("redis-server", "redis-server")?;
    let benchmark = program_path("redis-benchmark", "redis-tools")?;
    result.version = Some(program_version(&program, &["--version"]));
    let port = free_port()?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    println!("    starting redis-server on {addr}");
    let server = ChildServer::start(
        "redis",
        &program,
        &redis_args(port),
        addr,
        &dir.join("redis.log"),
    )?;
    let servers = vec![ServerProcess::new("redis-server", server.pid)];
    result.server_processes = vec!["redis-server".into()];
    let (keys, value_len, connections) = (run.args.keys, run.value_len(), run.args.concurrency);
    redis_preload(addr, keys, value_len)?;
    for (test, operation) in [("get", "GET"), ("set", "SET")] {
        // redis-benchmark takes a request count, not a time: a short run first
        // tells how many fill the phase.
        let calibration = generators::redis_benchmark_command(
            &benchmark,
            port,
            test,
            REDIS_CALIBRATION_REQUESTS,
            connections,
            keys,
            value_len,
        );
        let calibrated =
            generators::run_generator(calibration, Duration::from_secs(120), run.clock_ticks)?;
        let rate =
            generators::parse_redis_benchmark(&calibrated.stdout, REDIS_CALIBRATION_REQUESTS)?
                .per_second();
        let requests = redis_requests_for(rate, run.args.duration.0);
        let phase = measure_phase(run, &servers, operation, "redis-benchmark", 1, || {
            let command = generators::redis_benchmark_command(
                &benchmark,
                port,
                test,
                requests,
                connections,
                keys,
                value_len,
            );
            let timeout = run.args.duration.0 * 10 + Duration::from_secs(60);
            let generator_run = generators::run_generator(command, timeout, run.clock_ticks)?;
            let load = generators::parse_redis_benchmark(&generator_run.stdout, requests)?;
            Ok((load, generator_run))
        })?;
        match test {
            "get" => result.read = Some(phase),
            _ => result.write = Some(phase),
        }
    }
    drop(server);
    Ok(())
}

/// Requests that keep redis-benchmark busy for about `duration` at `rate`.
fn redis_requests_for(rate: f64, duration: Duration) -> u64 {
    ((rate * duration.as_secs_f64()) as u64).clamp(REDIS_MIN_REQUESTS, REDIS_MAX_REQUESTS)
}

/// Sets every key redis-benchmark's `-r` draws (`key:` and 12 digits), pipelined
/// over one connection, and reads one back.
fn redis_preload(addr: SocketAddr, keys: usize, value_len: usize) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader, Read, Write};
    println!("    preloading {keys} keys of {value_len} B");
    let mut stream = std::net::TcpStream::connect(addr).context("connect to redis")?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT * 6))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT * 6))?;
    let mut replies = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    for batch in (0..keys as u64).collect::<Vec<_>>().chunks(512) {
        let mut out = Vec::new();
        for &index in batch {
            encode_redis_set(
                &mut out,
                generators::redis_benchmark_key(index).as_bytes(),
                value(index, value_len).as_bytes(),
            );
        }
        stream.write_all(&out).context("send sets to redis")?;
        for _ in batch {
            line.clear();
            replies
                .read_line(&mut line)
                .context("read a reply from redis")?;
            ensure!(line.trim_end() == "+OK", "redis answered {line:?} to a set");
        }
    }
    let first = generators::redis_benchmark_key(0);
    stream.write_all(format!("*2\r\n$3\r\nGET\r\n${}\r\n{first}\r\n", first.len()).as_bytes())?;
    line.clear();
    replies.read_line(&mut line)?;
    ensure!(
        line.trim_end() == format!("${value_len}"),
        "redis answered {line:?} to a GET of a preloaded key"
    );
    let mut body = vec![0; value_len + 2];
    replies.read_exact(&mut body)?;
    ensure!(
        body[..value_len] == *value(0, value_len).as_bytes(),
        "redis returned other bytes"
    );
    println!("    checked: a preloaded key reads back");
    Ok(())
}

fn run_memcached(run: &Run, dir: &Path, result: &mut SetupResult) -> anyhow::Result<()> {
    if let Err(reason) = reference_tools(&[
        ("memcached", "memcached"),
        ("memcaslap", "libmemcached-tools"),
    ]) {
        result.skipped = Some(reason);
        return Ok(());
    }
    let program = program_path("memcached", "memcached")?;
    let memaslap = program_path("memcaslap", "libmemcached-tools")?;
    result.version = Some(program_version(&program, &["-V"]));
    let port = free_port()?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    println!("    starting memcached on {addr}");
    let server = ChildServer::start(
        "memcached",
        &program,
        &memcached_args(port, 1024),
        addr,
        &dir.join("memcached.log"),
    )?;
    let servers = vec![ServerProcess::new("memcached", server.pid)];
    result.server_processes = vec!["memcached".into()];
    let seconds = generators::whole_seconds(run.args.duration.0);
    let window = generators::memaslap_window_thousands(run.args.keys, run.args.concurrency);
    for (sets, operation, statistics) in [(false, "GET", "Get"), (true, "SET", "Set")] {
        let config = dir.join(format!("memaslap-{}.cfg", operation.to_lowercase()));
        write_file(&config, &generators::memaslap_config(run.value_len(), sets))?;
        let phase = measure_phase(run, &servers, operation, "memaslap", 1, || {
            let command = generators::memaslap_command(
                &memaslap,
                port,
                &config,
                run.args.concurrency,
                window,
                seconds,
            );
            let timeout = Duration::from_secs(seconds * 3 + 60);
            let generator_run = generators::run_generator(command, timeout, run.clock_ticks)?;
            let load = generators::parse_memaslap(&generator_run.stdout, statistics)?;
            Ok((load, generator_run))
        })?;
        match sets {
            false => result.read = Some(phase),
            true => result.write = Some(phase),
        }
    }
    drop(server);
    Ok(())
}

// ---------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------

fn find<'a>(setups: &'a [SetupResult], id: &str) -> Option<&'a SetupResult> {
    setups.iter().find(|setup| setup.id == id)
}

fn phase_of<'a>(setups: &'a [SetupResult], id: &str, read: bool) -> Option<&'a PhaseResult> {
    let setup = find(setups, id)?;
    match read {
        true => setup.read.as_ref(),
        false => setup.write.as_ref(),
    }
}

/// Judges `measured` (a value, and whether its phases were free of errors) with
/// `passes`; a phase with errors fails its target whatever the numbers.
fn judge(
    target: &str,
    measured: Option<(f64, bool)>,
    passes: impl Fn(f64) -> bool,
    show: impl Fn(f64) -> String,
) -> TargetCheck {
    match measured {
        Some((value, clean)) => TargetCheck {
            target: target.to_owned(),
            measured: match clean {
                true => show(value),
                false => format!("{} (with errors)", show(value)),
            },
            met: Some(clean && passes(value)),
        },
        None => TargetCheck {
            target: target.to_owned(),
            measured: "not measured".into(),
            met: None,
        },
    }
}

fn times(value: f64) -> String {
    format!("{value:.2}×")
}

fn micros(value: f64) -> String {
    format!("{value:.1} µs")
}

fn clean(phase: &PhaseResult) -> bool {
    phase.load.errors == 0
}

/// `id`'s phase throughput over the bare server's, and whether both were clean.
fn ratio_to_bare(setups: &[SetupResult], id: &str, read: bool) -> Option<(f64, bool)> {
    let phase = phase_of(setups, id, read)?;
    let bare = phase_of(setups, "bare", read)?;
    Some((
        phase.requests_per_second / bare.requests_per_second,
        clean(phase) && clean(bare),
    ))
}

/// This run's results against the targets (1 KiB values, 32 connections).
pub fn check_targets(setups: &[SetupResult], slow_aux_delay: Duration) -> Vec<TargetCheck> {
    let cpu = |read: bool| {
        phase_of(setups, "3+2", read).map(|phase| (phase.server_cpu_us_per_request, clean(phase)))
    };
    let slow_p99 = phase_of(setups, "slow-aux", true)
        .zip(phase_of(setups, "3+2", true))
        .and_then(|(slow, healthy)| {
            let ratio = slow.p99_ms()? / healthy.p99_ms()?;
            Some((ratio, clean(slow) && clean(healthy)))
        });
    vec![
        judge(
            "3+2 GET ≥ 0.40× bare GET",
            ratio_to_bare(setups, "3+2", true),
            |ratio| ratio >= 0.40,
            times,
        ),
        judge(
            "3+2 POST ≥ 0.30× bare POST",
            ratio_to_bare(setups, "3+2", false),
            |ratio| ratio >= 0.30,
            times,
        ),
        judge(
            "3+2 server CPU ≤ 25 µs per GET",
            cpu(true),
            |micros| micros <= 25.0,
            micros,
        ),
        judge(
            "3+2 server CPU ≤ 40 µs per POST",
            cpu(false),
            |micros| micros <= 40.0,
            micros,
        ),
        judge(
            "nginx → 3+2 GET ≥ 0.30× bare GET",
            ratio_to_bare(setups, "nginx", true),
            |ratio| ratio >= 0.30,
            times,
        ),
        judge(
            &format!(
                "one aux {} slow: GET p99 ≤ 1.3× healthy 3+2 GET p99",
                HumanDuration(slow_aux_delay)
            ),
            slow_p99,
            |ratio| ratio <= 1.3,
            times,
        ),
    ]
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

fn write_outputs(args: &BenchArgs, report: &Report) -> anyhow::Result<()> {
    let json = args.output.with_extension("json");
    write_file(
        &json,
        &serde_json::to_string_pretty(report).context("serialise the results")?,
    )?;
    println!("raw results written to {}", json.display());
    let svg = args.output.with_extension("svg");
    crate::bench::plot::write_stacked_png(&charts(report), &svg, &args.plot, 1200)?;
    println!(
        "chart written to {} (SVG: {})",
        args.plot.display(),
        svg.display()
    );
    let section = render_section(report, &args.plot);
    print_and_write(
        &format!(
            "# shardcache bench\n\n{}",
            section.replacen(SECTION_HEADING, "", 1).trim_start()
        ),
        &args.output,
    )?;
    write_section(
        &args.benchmarks_md,
        SECTION_HEADING,
        &section,
        Some(SECTION_BEFORE),
    )?;
    println!(
        "written to {} ({SECTION_HEADING})",
        args.benchmarks_md.display()
    );
    Ok(())
}

/// `0.43 ms`, or `≤ 1.02 ms` for a bucket's upper bound.
fn millis(value: f64, approximate: bool) -> String {
    let prefix = if approximate { "≤ " } else { "" };
    match value {
        value if value >= 10.0 => format!("{prefix}{value:.1} ms"),
        value => format!("{prefix}{value:.2} ms"),
    }
}

fn met_label(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "n/a",
    }
}

/// One row of the main table.
fn phase_row(setup: &SetupResult, phase: &PhaseResult, bare: Option<&PhaseResult>) -> String {
    let latency = |pick: fn(&generators::Latency) -> f64| {
        phase.load.latency.map_or("n/a".into(), |latency| {
            millis(pick(&latency), latency.approximate)
        })
    };
    let versus_bare = bare.map_or("n/a".into(), |bare| {
        format!(
            "{:.2}",
            phase.requests_per_second / bare.requests_per_second
        )
    });
    let errors = match phase.load.error_detail.is_empty() {
        true => phase.load.errors.to_string(),
        false => format!("{} ({})", phase.load.errors, phase.load.error_detail),
    };
    format!(
        "| {} | {} | {:.0} | {versus_bare} | {} | {} | {} | {:.1} | {} | {} {:.0}%{} | {errors} |\n",
        setup.label,
        phase.operation,
        phase.requests_per_second,
        latency(|l| l.p50_ms),
        latency(|l| l.p99_ms),
        latency(|l| l.p999_ms),
        phase.server_cpu_us_per_request,
        cpu_by_kind(phase),
        phase.generator,
        phase.generator_cpu_percent,
        if phase.generator_bound() { " ⚠" } else { "" },
    )
}

/// The server CPU per request by kind of process, `master 20.1 · aux 10.2`, when
/// the set-up has more than one kind.
fn cpu_by_kind(phase: &PhaseResult) -> String {
    if phase.server_cpu_us_per_request_by_kind.len() < 2 {
        return "–".into();
    }
    let kinds = phase.server_cpu_us_per_request_by_kind.iter();
    kinds
        .map(|(kind, us)| format!("{kind} {us:.1}"))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// The `## Throughput` section: command, how it was measured, results, targets.
pub fn render_section(report: &Report, plot: &Path) -> String {
    let mut out = format!(
        "{SECTION_HEADING}\n\n\
         command: `{}`\n\n\
         Run on {}, {} cores; {} s per phase, {} connections, wrk with {} thread(s), \
         {} B values, {} keys.\n\n",
        report.command,
        report.date,
        report.cores,
        report.phase_seconds,
        report.concurrency,
        report.wrk_threads,
        report.value_len,
        report.keys
    );
    out.push_str(
        "Each set-up is started fresh as processes of its own; the load generator is a \
         separate process on the same machine (`wrk` with `cli/src/bench/wrk-data-api.lua` \
         for the HTTP set-ups, `redis-benchmark` and `memaslap` for the references). \
         GET reads random preloaded keys; POST (SET) writes random keys. Before and \
         after, sampled keys are read back and compared byte for byte; every response \
         of status 400 or more is an error. **× bare** is throughput over the bare server's for the \
         same request (POST for writes), in this run. **server CPU** is the user + \
         system time of every server process of the set-up (masters, aux nodes, nginx \
         and its workers; not the generator, nor the benchmark's own delay proxy), from \
         `/proc/PID/stat` before and after the phase, per request; **by kind** splits it \
         between masters, aux nodes and nginx (all of a kind summed). **generator CPU** is \
         the generator's own CPU time over its run time, in % of one core: near 100% \
         per thread (⚠) means the generator, not the server, may be the limit.\n\n",
    );
    out.push_str(
        "| set-up | request | req/s | × bare | p50 | p99 | p99.9 | server CPU µs/request | by kind | generator CPU | errors |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let bare = find(&report.setups, "bare");
    let mut skipped = Vec::new();
    for setup in &report.setups {
        if let Some(reason) = &setup.skipped {
            skipped.push(format!("{}: {reason}", setup.label));
            continue;
        }
        if let Some(read) = &setup.read {
            out.push_str(&phase_row(setup, read, bare.and_then(|b| b.read.as_ref())));
        }
        if let Some(write) = &setup.write {
            out.push_str(&phase_row(
                setup,
                write,
                bare.and_then(|b| b.write.as_ref()),
            ));
        }
    }
    out.push_str("\n| target | measured | met? |\n|---|---|---|\n");
    let target_shape = report.value_len == 1024 && report.concurrency == 32;
    for check in &report.targets {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            check.target,
            check.measured,
            met_label(check.met)
        ));
    }
    if !target_shape {
        out.push_str(&format!(
            "\nThe targets are set for 1024 B values and 32 connections; this run used \
             {} B and {}, so read them as a guide only.\n",
            report.value_len, report.concurrency
        ));
    }
    let memaslap_window =
        generators::memaslap_window_thousands(report.keys, report.concurrency) * 1024;
    out.push_str(&format!(
        "\nShardcache set-ups: 6 aux nodes (`--capacity 1GiB`, snapshots off), 1 master \
         (2 behind nginx, one worker, upstream keep-alive); the slow aux node is reached \
         by the masters through a relay that holds every chunk both ways. Redis and \
         memcached are references only: redis-benchmark is preloaded with the same \
         number of keys, and its percentiles are the first it prints at or above each \
         (≤); memaslap sets the keys of its own window ({memaslap_window} per \
         connection) inside its run, so its GET rate counts that time, its server CPU \
         counts those sets, and its percentiles are the upper bounds of its power-of-two \
         buckets (≤).\n",
    ));
    if !skipped.is_empty() {
        out.push_str(&format!("\nSkipped: {}.\n", skipped.join("; ")));
    }
    let versions: Vec<&str> = report
        .setups
        .iter()
        .filter_map(|setup| setup.version.as_deref())
        .filter(|version| !version.is_empty())
        .collect();
    if !versions.is_empty() {
        out.push_str(&format!("\nVersions: {}.\n", versions.join("; ")));
    }
    out.push_str(&format!(
        "\n![Throughput and p99 latency]({})\n",
        plot.display()
    ));
    out
}

/// Throughput and p99 of every measured set-up, reads and writes.
fn charts(report: &Report) -> Vec<BarChart> {
    let measured: Vec<&SetupResult> = report
        .setups
        .iter()
        .filter(|setup| setup.skipped.is_none())
        .collect();
    let series = |pick: fn(&PhaseResult) -> Option<f64>| -> Vec<Series> {
        measured
            .iter()
            .map(|setup| Series {
                name: setup.label.clone(),
                values: vec![
                    setup.read.as_ref().and_then(pick),
                    setup.write.as_ref().and_then(pick),
                ],
            })
            .collect()
    };
    let subtitle = format!(
        "shardcache bench · {} · {} cores · {} B values · {} connections · {} s per phase",
        report.date, report.cores, report.value_len, report.concurrency, report.phase_seconds
    );
    let groups = vec!["GET".to_owned(), "POST / SET".to_owned()];
    let throughput = BarChart {
        title: "Throughput (requests per second; higher is better)".into(),
        subtitle: subtitle.clone(),
        x_label: "request".into(),
        y_label: "requests per second".into(),
        groups: groups.clone(),
        series: series(|phase| Some(phase.requests_per_second)),
        markers: Vec::new(),
        decimals: 0,
        log_scale: false,
    };
    let p99 = series(PhaseResult::p99_ms);
    let values = p99.iter().flat_map(|s| s.values.iter().flatten().copied());
    let (min, max) = values
        .filter(|value| value.is_finite() && *value > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(min, max), v| {
            (min.min(v), max.max(v))
        });
    let latency = BarChart {
        title: "p99 latency (ms; lower is better)".into(),
        subtitle,
        x_label: "request".into(),
        y_label: "p99 latency, ms".into(),
        groups,
        series: p99,
        markers: Vec::new(),
        decimals: 2,
        log_scale: max > 20.0 * min,
    };
    vec![throughput, latency]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::load_generators::Latency;

    fn phase(operation: &'static str, per_second: f64, p99_ms: f64, cpu_us: f64) -> PhaseResult {
        let requests = (per_second * 5.0) as u64;
        PhaseResult {
            operation,
            load: LoadResult {
                requests,
                errors: 0,
                error_detail: String::new(),
                seconds: 5.0,
                latency: Some(Latency {
                    p50_ms: p99_ms / 3.0,
                    p99_ms,
                    p999_ms: p99_ms * 2.0,
                    approximate: false,
                }),
                server_requests: requests,
            },
            requests_per_second: per_second,
            server_cpu_seconds: cpu_us * requests as f64 / 1e6,
            server_cpu_us_per_request: cpu_us,
            server_cpu_us_per_request_by_kind: BTreeMap::from([
                ("aux".to_owned(), cpu_us / 4.0),
                ("master".to_owned(), cpu_us * 3.0 / 4.0),
            ]),
            generator: "wrk",
            generator_threads: 1,
            generator_cpu_percent: 50.0,
        }
    }

    fn setup(id: &'static str, read: PhaseResult, write: PhaseResult) -> SetupResult {
        SetupResult {
            id,
            label: id.into(),
            read: Some(read),
            write: Some(write),
            skipped: None,
            server_processes: Vec::new(),
            version: None,
        }
    }

    fn sample() -> Vec<SetupResult> {
        vec![
            setup(
                "bare",
                phase("GET", 100_000.0, 1.0, 8.0),
                phase("POST", 80_000.0, 1.0, 9.0),
            ),
            setup(
                "3+2",
                phase("GET", 45_000.0, 2.0, 20.0),
                phase("POST", 20_000.0, 4.0, 45.0),
            ),
            setup(
                "nginx",
                phase("GET", 25_000.0, 3.0, 40.0),
                phase("POST", 15_000.0, 5.0, 60.0),
            ),
            setup(
                "slow-aux",
                phase("GET", 40_000.0, 2.4, 21.0),
                phase("POST", 18_000.0, 5.0, 50.0),
            ),
        ]
    }

    #[test]
    fn targets_are_judged_against_the_same_run() {
        let checks = check_targets(&sample(), Duration::from_millis(5));
        let summary: Vec<(&str, Option<bool>)> = checks
            .iter()
            .map(|check| (check.measured.as_str(), check.met))
            .collect();
        assert_eq!(
            summary,
            [
                ("0.45×", Some(true)),
                ("0.25×", Some(false)),
                ("20.0 µs", Some(true)),
                ("45.0 µs", Some(false)),
                ("0.25×", Some(false)),
                ("1.20×", Some(true)),
            ]
        );
        // Errors fail a target whatever the numbers.
        let mut with_errors = sample();
        with_errors[1].read.as_mut().unwrap().load.errors = 3;
        let checks = check_targets(&with_errors, Duration::from_millis(5));
        assert_eq!(checks[0].met, Some(false));
        assert!(checks[0].measured.contains("with errors"));
        // Not measured: n/a.
        let checks = check_targets(&sample()[..2], Duration::from_millis(5));
        assert_eq!(checks[4].met, None);
        assert_eq!(checks[5].measured, "not measured");
    }

    #[test]
    fn the_section_has_the_command_rows_and_targets() {
        let mut setups = sample();
        setups.push(SetupResult {
            id: "memcached",
            label: "memcached (reference)".into(),
            read: None,
            write: None,
            skipped: Some("memcaslap is missing".into()),
            server_processes: Vec::new(),
            version: None,
        });
        let report = Report {
            command: "shardcache bench --duration 2s".into(),
            date: "2026-12-01".into(),
            cores: 2,
            phase_seconds: 2,
            concurrency: 32,
            wrk_threads: 1,
            value_len: 1024,
            keys: 10_000,
            slow_aux_delay_ms: 5.0,
            targets: check_targets(&setups, Duration::from_millis(5)),
            setups,
        };
        let section = render_section(&report, Path::new("docs/bench-throughput.png"));
        assert!(section.starts_with("## Throughput\n\ncommand: `shardcache bench --duration 2s`\n"));
        assert!(section.contains(
            "| 3+2 | GET | 45000 | 0.45 | 0.67 ms | 2.00 ms | 4.00 ms | 20.0 | aux 5.0 · master 15.0 | wrk 50% | 0 |"
        ));
        assert!(section.contains("| bare | POST | 80000 | 1.00 |"));
        assert!(section.contains("| 3+2 POST ≥ 0.30× bare POST | 0.25× | **no** |"));
        assert!(section.contains("Skipped: memcached (reference): memcaslap is missing."));
        assert!(section.ends_with("![Throughput and p99 latency](docs/bench-throughput.png)\n"));
        let charts = charts(&report);
        assert_eq!(charts.len(), 2);
        assert_eq!(charts[0].series.len(), 4);
        assert_eq!(charts[0].series[1].values, [Some(45_000.0), Some(20_000.0)]);
        assert_eq!(charts[1].series[1].values, [Some(2.0), Some(4.0)]);
    }

    #[test]
    fn cpu_is_split_by_kind_of_process() {
        let kinds: Vec<&str> = [
            "master-0",
            "aux-12",
            "nginx (master and workers)",
            "memcached",
        ]
        .into_iter()
        .map(server_kind)
        .collect();
        assert_eq!(kinds, ["master", "aux", "nginx", "memcached"]);
        let mut alone = phase("GET", 1000.0, 1.0, 10.0);
        alone.server_cpu_us_per_request_by_kind = BTreeMap::from([("memcached".into(), 10.0)]);
        assert_eq!(cpu_by_kind(&alone), "–");
    }

    #[test]
    fn a_busy_generator_is_flagged() {
        let mut busy = phase("GET", 1000.0, 1.0, 10.0);
        busy.generator_cpu_percent = 97.0;
        assert!(busy.generator_bound());
        let row = phase_row(&sample()[0], &busy, None);
        assert!(
            row.contains("| n/a |") && row.contains("wrk 97% ⚠"),
            "{row}"
        );
        busy.generator_threads = 2;
        assert!(!busy.generator_bound());
    }

    #[test]
    fn samples_spread_over_the_keys() {
        assert_eq!(sample_indices(100, 5), [0, 24, 49, 74, 99]);
        assert_eq!(sample_indices(3, 20), [0, 1, 2]);
        assert_eq!(sample_indices(1, 20), [0]);
    }

    #[test]
    fn redis_runs_fill_the_phase_within_bounds() {
        assert_eq!(
            redis_requests_for(50_000.0, Duration::from_secs(5)),
            250_000
        );
        assert_eq!(
            redis_requests_for(10.0, Duration::from_secs(1)),
            REDIS_MIN_REQUESTS
        );
        assert_eq!(
            redis_requests_for(f64::INFINITY, Duration::from_secs(1)),
            REDIS_MAX_REQUESTS
        );
    }

    #[test]
    fn nginx_config_is_minimal_and_accepted_by_nginx() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("temp")).unwrap();
        let masters = [
            "127.0.0.1:8081".parse().unwrap(),
            "127.0.0.1:8082".parse().unwrap(),
        ];
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port().unwrap()));
        let config = nginx_config(listen, &masters, dir.path());
        assert!(config.contains("worker_processes 1;"));
        assert!(config.contains("        server 127.0.0.1:8082;\n"));
        assert!(config.contains("keepalive 64;"));
        std::fs::write(dir.path().join("nginx.conf"), &config).unwrap();
        ensure_installed(&[("nginx", "nginx")]).expect("install nginx");
        let nginx = program_path("nginx", "nginx").unwrap();
        let mut args = nginx_args(dir.path());
        args.truncate(6);
        let check = std::process::Command::new(nginx)
            .args(&args)
            .arg("-t")
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "nginx -t rejected:\n{config}\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
}
