//! `shardcache bench-cache`: hit ratio at equal RAM, shardcache next to memcached and
//! Redis, in one run.
//!
//! Every system is driven the way applications use a cache (cache-aside): GET the
//! key, and on a miss SET it. `--threads` clients (8) each own a connection and draw
//! keys from one Zipf distribution (exponent 0.99 over `--keys` 16-byte keys); a
//! warm-up (`--warm-up` requests) fills the cache, then `--requests` requests are
//! counted. The systems, each started fresh for each workload as children of the
//! benchmark:
//!
//! - shardcache set-ups `K+M[:POLICY]`: 1 master, 6 aux nodes of `--aux-capacity`
//!   each (48 MiB in all by default), the aux nodes' `--eviction-policy` if named;
//! - memcached ×3 and redis ×3 (`allkeys-lru`): three servers of
//!   `--reference-memory-mib` each (16 MiB: the same total RAM), holding three copies
//!   as a client would for the same two-failure tolerance: a GET asks the key's
//!   primary copy, then the two others; it hits if any holds the key, and a miss
//!   SETs all three.
//!
//! Workloads ([`WORKLOADS`]): Zipf only, followed by a scan (a burst of sequential
//! never-seen keys, 2× what the 3+2 cluster holds, each GET then SET) and a second
//! counted window, whose hit ratio drop is the scan's cost; Zipf with 30% one-hit
//! wonders (unique keys, counted apart: the hit ratio is the Zipf requests'); 100 B
//! values with a quarter of the RAM (so the cache is as full as with 1 KiB).
//!
//! For shardcache it also measures the **dead-shard fraction** once the counted
//! window ends: the aux nodes' inventories (`GET /v1/inventory`) are merged by key,
//! and a shard is dead when its key has fewer than `k` shards of its newest version
//! in the whole cluster (the value is a miss; the shard is dead weight) or when it
//! is of an older version than another shard of its key. All shards of a workload
//! have one size, so the share of shards is the share of bytes.
//!
//! It prints progress, then writes the `## Hit ratio` section of `BENCHMARKS.md`,
//! the figures as JSON and a bar chart as PNG. Every node runs a copy of the
//! executable taken at the start; memcached, Redis and `rsvg-convert` are installed
//! with `apt-get` when missing. Every loop is bounded in count and time.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use shardcache_common::units::ByteSize;
use shardcache_common::version::Version;
use shardcache_common::wire::{self, InventoryPage};

use crate::bench::plot::{BarChart, Marker, Series};
use crate::bench::support::{
    copy_executable, ensure_installed, free_port, key, memcached_args, program_path,
    program_version, redis_args, shell_command, utc_date, value, write_file, write_section,
    ChildServer,
};
use crate::harness::{ClusterSpec, LocalCluster};

/// Measure hit ratio at equal RAM: shardcache vs memcached ×3 and redis ×3.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchCacheArgs {
    /// Distinct keys the Zipf distribution draws from.
    #[arg(long, default_value_t = 150_000)]
    pub keys: u64,
    /// Zipf exponent: rank r is drawn with probability ∝ 1 / r^s.
    #[arg(long, default_value_t = 0.99)]
    pub zipf: f64,
    /// Requests before counting starts (each window of every workload).
    #[arg(long, default_value_t = 60_000)]
    pub warm_up: u64,
    /// Requests counted per window.
    #[arg(long, default_value_t = 60_000)]
    pub requests: u64,
    /// Concurrent clients, one connection each.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// `--capacity` of each of the 6 aux nodes (the 100 B workload gets a quarter).
    #[arg(long, default_value = "8MiB")]
    pub aux_capacity: ByteSize,
    /// Memory of each of the 3 memcached and 3 redis servers, in MiB (a quarter for
    /// 100 B values); 16 MiB gives them the RAM of the 6 aux nodes.
    #[arg(long, default_value_t = 16)]
    pub reference_memory_mib: u64,
    /// Set-ups, comma-separated: `K+M` or `K+M:POLICY` (the aux nodes'
    /// `--eviction-policy`), `memcached`, `redis`.
    #[arg(long, default_value = "3+2,3+2:fifo,1+2,memcached,redis")]
    pub setups: String,
    /// Workloads, comma-separated: `zipf` (with the scan), `wonders`, `small`.
    #[arg(long, default_value = "zipf,wonders,small")]
    pub workloads: String,
    /// The Markdown file whose section is (re)written.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub output: PathBuf,
    /// The heading of that section (another one keeps the default run's section,
    /// e.g. for a run with a longer warm-up).
    #[arg(long, default_value = "## Hit ratio")]
    pub heading: String,
    /// Where the raw results are written as JSON.
    #[arg(long, default_value = "data/bench/cache.json")]
    pub json: PathBuf,
    /// Where the chart is written as PNG (its SVG goes next to the JSON).
    #[arg(long, default_value = "docs/bench-cache.png")]
    pub plot: PathBuf,
}

const AUX_NODES: usize = 6;
const REFERENCE_COPIES: usize = 3;
/// A scan is this many times the values the 3+2 cluster holds.
const SCAN_FACTOR: f64 = 2.0;
/// Share of one-hit wonders in the `wonders` workload.
const WONDER_SHARE: f64 = 0.3;
/// Deadline of one request (a connection that stalls longer fails the phase).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a phase may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Key index ranges that never meet: Zipf ranks, one-hit wonders, scan keys.
const WONDER_BASE: u64 = 1_000_000_000;
const SCAN_BASE: u64 = 2_000_000_000;
const INVENTORY_PAGE: usize = 10_000;

/// One workload: value size, RAM divisor, share of one-hit wonders, and whether a
/// scan follows the first counted window.
#[derive(Debug, Clone, Copy, Serialize)]
struct Workload {
    id: &'static str,
    label: &'static str,
    value_len: usize,
    ram_divisor: u64,
    wonders: f64,
    scan: bool,
}

const WORKLOADS: [Workload; 3] = [
    Workload {
        id: "zipf",
        label: "Zipf only",
        value_len: 1024,
        ram_divisor: 1,
        wonders: 0.0,
        scan: true,
    },
    Workload {
        id: "wonders",
        label: "Zipf + 30% one-hit wonders",
        value_len: 1024,
        ram_divisor: 1,
        wonders: WONDER_SHARE,
        scan: false,
    },
    Workload {
        id: "small",
        label: "Zipf, 100 B values (¼ RAM)",
        value_len: 100,
        ram_divisor: 4,
        wonders: 0.0,
        scan: false,
    },
];

/// A system under test.
#[derive(Debug, Clone, PartialEq, Serialize)]
enum Setup {
    Shardcache {
        data_shards: u8,
        parity_shards: u8,
        policy: Option<String>,
    },
    Memcached,
    Redis,
}

impl Setup {
    fn parse(text: &str) -> anyhow::Result<Setup> {
        match text {
            "memcached" => return Ok(Setup::Memcached),
            "redis" => return Ok(Setup::Redis),
            _ => {}
        }
        let (geometry, policy) = match text.split_once(':') {
            Some((geometry, policy)) => (geometry, Some(policy.to_owned())),
            None => (text, None),
        };
        let parsed = geometry
            .split_once('+')
            .and_then(|(k, m)| Some((k.parse().ok()?, m.parse().ok()?)));
        let Some((data_shards, parity_shards)) = parsed else {
            bail!("unknown set-up {text:?}: K+M, K+M:POLICY, memcached or redis");
        };
        ensure!(
            data_shards >= 1 && usize::from(data_shards + parity_shards) <= AUX_NODES,
            "set-up {text:?} needs 1 ≤ k and k+m ≤ {AUX_NODES}"
        );
        Ok(Setup::Shardcache {
            data_shards,
            parity_shards,
            policy,
        })
    }

    fn label(&self) -> String {
        match self {
            Setup::Shardcache {
                data_shards,
                parity_shards,
                policy,
            } => match policy {
                Some(policy) => format!("shardcache {data_shards}+{parity_shards} ({policy})"),
                None => format!("shardcache {data_shards}+{parity_shards}"),
            },
            Setup::Memcached => "memcached ×3".to_owned(),
            Setup::Redis => "redis ×3 (allkeys-lru)".to_owned(),
        }
    }
}

/// What one counted window saw.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Counts {
    zipf_requests: u64,
    zipf_hits: u64,
    wonder_requests: u64,
    errors: u64,
}

impl Counts {
    fn hit_ratio(&self) -> f64 {
        self.zipf_hits as f64 / self.zipf_requests.max(1) as f64
    }

    fn add(&mut self, other: Counts) {
        self.zipf_requests += other.zipf_requests;
        self.zipf_hits += other.zipf_hits;
        self.wonder_requests += other.wonder_requests;
        self.errors += other.errors;
    }
}

/// Shards in the cluster and the dead ones among them (see the module docs).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
struct ShardCensus {
    shards: u64,
    dead: u64,
}

impl ShardCensus {
    fn dead_fraction(&self) -> f64 {
        self.dead as f64 / self.shards.max(1) as f64
    }
}

/// One set-up on one workload.
#[derive(Debug, Clone, Serialize)]
struct Run {
    setup: String,
    workload: &'static str,
    counted: Counts,
    /// The window after the scan, for workloads with one.
    after_scan: Option<Counts>,
    census: Option<ShardCensus>,
    /// The aux nodes' summed store figures at the end (shardcache only).
    store_bytes: Option<u64>,
    evictions: Option<u64>,
    seconds: f64,
}

impl Run {
    fn scan_drop(&self) -> Option<f64> {
        self.after_scan
            .map(|after| self.counted.hit_ratio() - after.hit_ratio())
    }
}

#[derive(Debug, Serialize)]
struct Report {
    command: String,
    date: String,
    load_average: String,
    args: String,
    workloads: Vec<Workload>,
    /// Per workload, the hit ratio of an infinite cache ([`ceiling`]).
    ceilings: Vec<f64>,
    setups: Vec<String>,
    runs: Vec<Run>,
    versions: Vec<String>,
}

pub fn bench_cache(args: BenchCacheArgs) -> anyhow::Result<()> {
    ensure!(
        args.threads >= 1 && args.keys >= 1,
        "--threads and --keys must be at least 1"
    );
    ensure!(args.zipf > 0.0, "--zipf must be positive");
    let setups: Vec<Setup> = args
        .setups
        .split(',')
        .map(|text| Setup::parse(text.trim()))
        .collect::<anyhow::Result<_>>()?;
    let workloads: Vec<Workload> = args
        .workloads
        .split(',')
        .map(|id| {
            WORKLOADS
                .iter()
                .find(|workload| workload.id == id.trim())
                .copied()
                .with_context(|| format!("unknown workload {id:?}: zipf, wonders or small"))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut programs = vec![("rsvg-convert", "librsvg2-bin")];
    if setups.contains(&Setup::Memcached) {
        programs.push(("memcached", "memcached"));
    }
    if setups.contains(&Setup::Redis) {
        programs.push(("redis-server", "redis-server"));
    }
    ensure_installed(&programs)?;
    let exe_dir = tempfile::tempdir().context("create a temp dir for the executable")?;
    let exe = copy_executable(exe_dir.path())?;
    let zipf = ZipfTable::new(args.keys, args.zipf);
    let mut runs = Vec::new();
    for workload in &workloads {
        for setup in &setups {
            println!("{} — {}", workload.label, setup.label());
            let run = run_setup(&exe, &args, setup, *workload, &zipf)
                .with_context(|| format!("{} on {}", setup.label(), workload.label))?;
            print_run(&run);
            runs.push(run);
        }
    }
    let mut versions = Vec::new();
    if setups.contains(&Setup::Memcached) {
        versions.push(program_version(
            &program_path("memcached", "memcached")?,
            &["-V"],
        ));
    }
    if setups.contains(&Setup::Redis) {
        versions.push(program_version(
            &program_path("redis-server", "redis-server")?,
            &["-v"],
        ));
    }
    let ceilings = workloads
        .iter()
        .map(|workload| ceiling(&args, *workload, &zipf))
        .collect();
    let report = Report {
        command: shell_command(&std::env::args().collect::<Vec<_>>()),
        date: utc_date(SystemTime::now()),
        load_average: std::fs::read_to_string("/proc/loadavg").unwrap_or_default(),
        args: format!("{args:?}"),
        workloads,
        ceilings,
        setups: setups.iter().map(Setup::label).collect(),
        runs,
        versions,
    };
    write_outputs(&args, &report)
}

fn print_run(run: &Run) {
    let mut line = format!(
        "    hit ratio {:.3} over {} Zipf requests ({} errors)",
        run.counted.hit_ratio(),
        run.counted.zipf_requests,
        run.counted.errors
    );
    if let (Some(after), Some(drop)) = (run.after_scan, run.scan_drop()) {
        line.push_str(&format!(
            ", after the scan {:.3} (drop {drop:.3})",
            after.hit_ratio()
        ));
    }
    if let Some(census) = run.census {
        line.push_str(&format!(
            ", dead shards {:.1}% of {}",
            100.0 * census.dead_fraction(),
            census.shards
        ));
    }
    println!("{line} in {:.0} s", run.seconds);
}

// ---------------------------------------------------------------------------
// Running one set-up
// ---------------------------------------------------------------------------

/// A started system: its children, and how to open a client connection to it.
enum Started {
    Shardcache {
        cluster: Box<LocalCluster>,
        data_shards: u8,
        _data_dir: tempfile::TempDir,
    },
    References {
        servers: Vec<ChildServer>,
        redis: bool,
    },
}

impl Started {
    fn connect(&self) -> anyhow::Result<Box<dyn CacheClient>> {
        Ok(match self {
            Started::Shardcache { cluster, .. } => {
                Box::new(HttpCache(Http::connect(cluster.masters[0].addr)?))
            }
            Started::References { servers, redis } => {
                let connections = servers
                    .iter()
                    .map(|server| connect(server.addr).map(BufReader::new))
                    .collect::<anyhow::Result<_>>()?;
                Box::new(Replicated {
                    connections,
                    redis: *redis,
                })
            }
        })
    }
}

fn start(
    exe: &Path,
    args: &BenchCacheArgs,
    setup: &Setup,
    workload: Workload,
) -> anyhow::Result<Started> {
    match setup {
        Setup::Shardcache {
            data_shards,
            parity_shards,
            policy,
        } => {
            let data_dir = tempfile::tempdir().context("create a temp dir for the cluster")?;
            let mut spec = ClusterSpec::new(data_dir.path());
            (spec.data_shards, spec.parity_shards) = (*data_shards, *parity_shards);
            let capacity = ByteSize(args.aux_capacity.bytes() / workload.ram_divisor);
            spec.aux_args = vec![
                "--capacity".into(),
                capacity.to_string(),
                "--snapshot-interval".into(),
                "0s".into(),
            ];
            if let Some(policy) = policy {
                spec.aux_args
                    .extend(["--eviction-policy".into(), policy.clone()]);
            }
            let cluster = LocalCluster::start(exe, spec).context("start the local cluster")?;
            Ok(Started::Shardcache {
                cluster: Box::new(cluster),
                data_shards: *data_shards,
                _data_dir: data_dir,
            })
        }
        Setup::Memcached | Setup::Redis => {
            let redis = *setup == Setup::Redis;
            let (program, package) = match redis {
                true => ("redis-server", "redis-server"),
                false => ("memcached", "memcached"),
            };
            let program = program_path(program, package)?;
            let memory_mib = (args.reference_memory_mib / workload.ram_divisor).max(1);
            let log_dir = tempfile::tempdir().context("create a temp dir for the logs")?;
            let mut servers = Vec::new();
            for copy in 0..REFERENCE_COPIES {
                let port = free_port()?;
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                let server_args = match redis {
                    true => {
                        let mut server_args = redis_args(port);
                        server_args.extend([
                            "--maxmemory".to_owned(),
                            format!("{memory_mib}mb"),
                            "--maxmemory-policy".to_owned(),
                            "allkeys-lru".to_owned(),
                        ]);
                        server_args
                    }
                    false => memcached_args(port, memory_mib),
                };
                let log = log_dir.path().join(format!("server-{copy}.log"));
                servers.push(ChildServer::start(
                    &setup.label(),
                    &program,
                    &server_args,
                    addr,
                    &log,
                )?);
            }
            // The logs are only read while the servers start.
            drop(log_dir);
            Ok(Started::References { servers, redis })
        }
    }
}

fn run_setup(
    exe: &Path,
    args: &BenchCacheArgs,
    setup: &Setup,
    workload: Workload,
    zipf: &ZipfTable,
) -> anyhow::Result<Run> {
    let started_at = Instant::now();
    let system = start(exe, args, setup, workload)?;
    let result = drive(&system, args, setup, workload, zipf, started_at);
    if result.is_err() {
        if let Started::Shardcache { cluster, .. } = &system {
            eprintln!("cluster logs:\n{}", cluster.logs(20));
        }
    }
    result
}

fn drive(
    system: &Started,
    args: &BenchCacheArgs,
    setup: &Setup,
    workload: Workload,
    zipf: &ZipfTable,
    started_at: Instant,
) -> anyhow::Result<Run> {
    let wonders = AtomicU64::new(WONDER_BASE);
    let zipf_phase = |requests: u64| Phase::Zipf {
        requests,
        wonders: workload.wonders,
    };
    let phase = |name: &str, phase: Phase, seed: u64| {
        run_phase(system, args, workload, zipf, &wonders, name, phase, seed)
    };
    phase("warm-up", zipf_phase(args.warm_up), WARM_UP_SEED)?;
    let counted = phase("counted", zipf_phase(args.requests), COUNTED_SEED)?;
    let census = match system {
        Started::Shardcache {
            cluster,
            data_shards,
            ..
        } => Some(census(cluster, *data_shards)?),
        Started::References { .. } => None,
    };
    let after_scan = match workload.scan {
        true => {
            let scan = Phase::Scan {
                keys: scan_keys(args, workload),
            };
            phase("scan", scan, SCAN_SEED)?;
            Some(phase(
                "after the scan",
                zipf_phase(args.requests),
                AFTER_SCAN_SEED,
            )?)
        }
        false => None,
    };
    let (store_bytes, evictions) = match system {
        Started::Shardcache { cluster, .. } => {
            let (bytes, evictions) = store_totals(cluster)?;
            (Some(bytes), Some(evictions))
        }
        Started::References { .. } => (None, None),
    };
    Ok(Run {
        setup: setup.label(),
        workload: workload.id,
        counted,
        after_scan,
        census,
        store_bytes,
        evictions,
        seconds: started_at.elapsed().as_secs_f64(),
    })
}

/// Twice the values of the workload's size the 3+2 cluster can hold (payloads
/// only: an upper bound on what fits, so the scan surely sweeps the cache).
fn scan_keys(args: &BenchCacheArgs, workload: Workload) -> u64 {
    let ram = AUX_NODES as f64 * (args.aux_capacity.bytes() / workload.ram_divisor) as f64;
    (SCAN_FACTOR * ram * 3.0 / 5.0 / workload.value_len as f64) as u64
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Zipf { requests: u64, wonders: f64 },
    Scan { keys: u64 },
}

/// Runs one phase on `--threads` clients and adds up what they counted.
#[allow(clippy::too_many_arguments)]
fn run_phase(
    system: &Started,
    args: &BenchCacheArgs,
    workload: Workload,
    zipf: &ZipfTable,
    wonders: &AtomicU64,
    name: &str,
    phase: Phase,
    seed: u64,
) -> anyhow::Result<Counts> {
    let threads = args.threads as u64;
    let total = match phase {
        Phase::Zipf { requests, .. } => requests,
        Phase::Scan { keys } => keys,
    };
    let done = AtomicU64::new(0);
    let started = Instant::now();
    let every = (total / 5).max(1);
    let results: Vec<anyhow::Result<Counts>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let done = &done;
                scope.spawn(move || -> anyhow::Result<Counts> {
                    let mut client = system.connect()?;
                    let mut counts = Counts::default();
                    for request in Requests::new(phase, zipf, seed, thread, threads) {
                        ensure!(
                            started.elapsed() < PHASE_TIMEOUT,
                            "the {name} phase took longer than {PHASE_TIMEOUT:?}"
                        );
                        let (key_index, counted) = match request {
                            Request::Zipf(rank) => (rank, true),
                            Request::Wonder => (wonders.fetch_add(1, Ordering::Relaxed), false),
                            Request::Scan(index) => (SCAN_BASE + index, false),
                        };
                        let key = key(key_index);
                        let hit = match client.get(&key) {
                            Ok(hit) => hit,
                            Err(_) => {
                                counts.errors += 1;
                                client = system.connect()?;
                                false
                            }
                        };
                        if !hit
                            && client
                                .set(&key, &value(key_index, workload.value_len))
                                .is_err()
                        {
                            counts.errors += 1;
                            client = system.connect()?;
                        }
                        match counted {
                            true => {
                                counts.zipf_requests += 1;
                                counts.zipf_hits += u64::from(hit);
                            }
                            false => counts.wonder_requests += 1,
                        }
                        let count = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if count.is_multiple_of(every) {
                            println!(
                                "    {name}: {count}/{total} requests ({:.1} s)",
                                started.elapsed().as_secs_f64()
                            );
                        }
                    }
                    Ok(counts)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| bail!("a client thread panicked"))
            })
            .collect()
    });
    let mut counts = Counts::default();
    for result in results {
        counts.add(result?);
    }
    Ok(counts)
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// Seeds of the phases, so that every set-up meets the same requests.
const WARM_UP_SEED: u64 = 2;
const COUNTED_SEED: u64 = 3;
const SCAN_SEED: u64 = 4;
const AFTER_SCAN_SEED: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    /// A Zipf rank (the key's index).
    Zipf(u64),
    /// A key never requested before or after.
    Wonder,
    /// The scan's `n`th key.
    Scan(u64),
}

/// One client's requests in one phase: requests `thread`, `thread + threads`, … of
/// it, drawn from a generator seeded by the phase and the thread.
struct Requests<'a> {
    phase: Phase,
    zipf: &'a ZipfTable,
    rng: rand::rngs::StdRng,
    index: u64,
    step: u64,
}

impl<'a> Requests<'a> {
    fn new(phase: Phase, zipf: &'a ZipfTable, seed: u64, thread: u64, threads: u64) -> Self {
        Requests {
            phase,
            zipf,
            rng: rand::rngs::StdRng::seed_from_u64(seed * 1000 + thread),
            index: thread,
            step: threads,
        }
    }
}

impl Iterator for Requests<'_> {
    type Item = Request;

    fn next(&mut self) -> Option<Request> {
        let total = match self.phase {
            Phase::Zipf { requests, .. } => requests,
            Phase::Scan { keys } => keys,
        };
        if self.index >= total {
            return None;
        }
        let request = match self.phase {
            Phase::Zipf { wonders, .. } if self.rng.random::<f64>() < wonders => Request::Wonder,
            Phase::Zipf { .. } => Request::Zipf(self.zipf.sample(self.rng.random::<f64>())),
            Phase::Scan { .. } => Request::Scan(self.index),
        };
        self.index += self.step;
        Some(request)
    }
}

/// The hit ratio of an infinite cache on the counted window: every key's first
/// request misses (it is a compulsory miss), every later one hits. No policy can
/// do better. The clients' requests are taken in turn, as they roughly run.
fn ceiling(args: &BenchCacheArgs, workload: Workload, zipf: &ZipfTable) -> f64 {
    let threads = args.threads as u64;
    let phase = |requests| Phase::Zipf {
        requests,
        wonders: workload.wonders,
    };
    let mut seen = std::collections::HashSet::new();
    let mut counts = Counts::default();
    for (seed, requests, counted) in [
        (WARM_UP_SEED, args.warm_up, false),
        (COUNTED_SEED, args.requests, true),
    ] {
        let mut clients: Vec<Requests> = (0..threads)
            .map(|thread| Requests::new(phase(requests), zipf, seed, thread, threads))
            .collect();
        let mut active = true;
        while active {
            active = false;
            for client in &mut clients {
                let Some(request) = client.next() else {
                    continue;
                };
                active = true;
                if let Request::Zipf(rank) = request {
                    let hit = !seen.insert(rank);
                    if counted {
                        counts.zipf_requests += 1;
                        counts.zipf_hits += u64::from(hit);
                    }
                }
            }
        }
    }
    counts.hit_ratio()
}

// ---------------------------------------------------------------------------
// Zipf
// ---------------------------------------------------------------------------

/// The cumulative distribution of ranks 0..n with P(rank r) ∝ 1 / (r+1)^s.
struct ZipfTable {
    cumulative: Vec<f64>,
}

impl ZipfTable {
    fn new(n: u64, s: f64) -> Self {
        let mut sum = 0.0;
        let mut cumulative: Vec<f64> = (1..=n)
            .map(|rank| {
                sum += 1.0 / (rank as f64).powf(s);
                sum
            })
            .collect();
        for weight in &mut cumulative {
            *weight /= sum;
        }
        ZipfTable { cumulative }
    }

    /// The rank whose share of the distribution holds `uniform` (in [0, 1)).
    fn sample(&self, uniform: f64) -> u64 {
        let rank = self.cumulative.partition_point(|&below| below <= uniform);
        rank.min(self.cumulative.len() - 1) as u64
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// A cache as cache-aside sees it.
trait CacheClient: Send {
    /// Whether the cache holds `key`.
    fn get(&mut self, key: &str) -> anyhow::Result<bool>;
    fn set(&mut self, key: &str, value: &str) -> anyhow::Result<()>;
}

fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A minimal HTTP/1.1 keep-alive client: enough for the master's data API and the
/// aux inventory (bodies with `content-length` or chunked).
struct Http {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Http {
    fn connect(addr: SocketAddr) -> anyhow::Result<Http> {
        Ok(Http {
            stream: BufReader::new(connect(addr)?),
            host: addr.to_string(),
        })
    }

    fn request(&mut self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n\r\n",
            self.host,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.stream.get_mut().write_all(&request)?;
        let status_line = read_line(&mut self.stream)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let (mut length, mut chunked) = (0, false);
        loop {
            let line = read_line(&mut self.stream)?;
            if line.is_empty() {
                break;
            }
            let (name, field) = line.split_once(':').unwrap_or((&line, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = field.trim().parse()?,
                "transfer-encoding" => chunked = field.trim().eq_ignore_ascii_case("chunked"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if !chunked {
            body.resize(length, 0);
            self.stream.read_exact(&mut body)?;
            return Ok((status, body));
        }
        loop {
            let size = usize::from_str_radix(read_line(&mut self.stream)?.trim(), 16)?;
            let start = body.len();
            body.resize(start + size, 0);
            self.stream.read_exact(&mut body[start..])?;
            read_line(&mut self.stream)?;
            if size == 0 {
                return Ok((status, body));
            }
        }
    }
}

/// One line without its CRLF; an error at end of stream.
fn read_line(stream: &mut impl BufRead) -> anyhow::Result<String> {
    let mut line = String::new();
    ensure!(stream.read_line(&mut line)? > 0, "connection closed");
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// shardcache through its master.
struct HttpCache(Http);

impl CacheClient for HttpCache {
    fn get(&mut self, key: &str) -> anyhow::Result<bool> {
        match self.0.request("GET", &format!("/data/{key}"), b"")?.0 {
            200 => Ok(true),
            404 => Ok(false),
            status => bail!("GET answered {status}"),
        }
    }

    fn set(&mut self, key: &str, value: &str) -> anyhow::Result<()> {
        let body = format!(r#"{{"key":"{key}","value":"{value}"}}"#);
        match self.0.request("POST", "/data", body.as_bytes())?.0 {
            200 | 201 => Ok(()),
            status => bail!("POST answered {status}"),
        }
    }
}

/// Three copies on three memcached or redis servers.
struct Replicated {
    connections: Vec<BufReader<TcpStream>>,
    redis: bool,
}

impl Replicated {
    fn get_one(&mut self, copy: usize, key: &str) -> anyhow::Result<bool> {
        let (redis, connection) = (self.redis, &mut self.connections[copy]);
        let command = match redis {
            true => format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()),
            false => format!("get {key}\r\n"),
        };
        connection.get_mut().write_all(command.as_bytes())?;
        let line = read_line(connection)?;
        if redis {
            return match line.strip_prefix('$').map(str::parse::<i64>) {
                Some(Ok(-1)) => Ok(false),
                Some(Ok(len)) => {
                    skip(connection, len as usize + 2)?;
                    Ok(true)
                }
                _ => bail!("redis answered {line:?}"),
            };
        }
        if line == "END" {
            return Ok(false);
        }
        let len: usize = match line.strip_prefix("VALUE ") {
            Some(rest) => rest.rsplit(' ').next().unwrap_or("").parse()?,
            None => bail!("memcached answered {line:?}"),
        };
        skip(connection, len + 2)?;
        ensure!(
            read_line(connection)? == "END",
            "memcached: no END after a value"
        );
        Ok(true)
    }
}

fn skip(connection: &mut impl Read, len: usize) -> anyhow::Result<()> {
    let mut buffer = vec![0; len];
    connection.read_exact(&mut buffer)?;
    Ok(())
}

impl CacheClient for Replicated {
    fn get(&mut self, key: &str) -> anyhow::Result<bool> {
        let primary = (primary_hash(key) % REFERENCE_COPIES as u64) as usize;
        for step in 0..REFERENCE_COPIES {
            if self.get_one((primary + step) % REFERENCE_COPIES, key)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn set(&mut self, key: &str, value: &str) -> anyhow::Result<()> {
        let mut command = Vec::new();
        match self.redis {
            true => crate::bench::support::encode_redis_set(
                &mut command,
                key.as_bytes(),
                value.as_bytes(),
            ),
            false => crate::bench::support::encode_memcached_set(
                &mut command,
                key.as_bytes(),
                value.as_bytes(),
            ),
        }
        for connection in &mut self.connections {
            connection.get_mut().write_all(&command)?;
        }
        for connection in &mut self.connections {
            let line = read_line(connection)?;
            ensure!(line == "+OK" || line == "STORED", "SET answered {line:?}");
        }
        Ok(())
    }
}

/// A stable hash of a key (FNV-1a) to pick its primary copy.
fn primary_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------
// Dead shards
// ---------------------------------------------------------------------------

/// The aux nodes' inventories merged into a [`ShardCensus`].
fn census(cluster: &LocalCluster, data_shards: u8) -> anyhow::Result<ShardCensus> {
    let mut shards = Vec::new();
    for node in &cluster.aux {
        let mut http = Http::connect(node.addr)?;
        let mut cursor: Option<wire::InventoryCursor> = None;
        // Bounded: a page per 10,000 shards of a store of at most a few million.
        for _ in 0..10_000 {
            let mut path = format!("{}?limit={INVENTORY_PAGE}", wire::INVENTORY_PATH);
            if let Some(cursor) = &cursor {
                path.push_str(&format!(
                    "&after_point={}&after_key={}",
                    cursor.point,
                    wire::encode_key(&cursor.key)
                ));
            }
            let (status, body) = http.request("GET", &path, b"")?;
            ensure!(
                status == 200,
                "inventory of {} answered {status}",
                node.name
            );
            let page: InventoryPage = serde_json::from_slice(&body)?;
            shards.extend(
                page.entries
                    .into_iter()
                    .filter(|entry| !entry.tombstone)
                    .map(|entry| (entry.key, entry.version, entry.shard_index)),
            );
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
    }
    Ok(count_dead(&shards, data_shards))
}

/// Counts the shards that cannot serve their key: of a key with fewer than `k`
/// distinct shard indices of its newest version, or of an older version.
fn count_dead(shards: &[(String, Version, u8)], data_shards: u8) -> ShardCensus {
    let mut newest: HashMap<&str, (Version, Vec<u8>)> = HashMap::new();
    for (key, version, index) in shards {
        let entry = newest.entry(key).or_insert((*version, Vec::new()));
        if *version > entry.0 {
            *entry = (*version, Vec::new());
        }
        if *version == entry.0 && !entry.1.contains(index) {
            entry.1.push(*index);
        }
    }
    let dead = shards
        .iter()
        .filter(|(key, version, _)| {
            let (newest_version, indices) = &newest[key.as_str()];
            version < newest_version || indices.len() < usize::from(data_shards)
        })
        .count();
    ShardCensus {
        shards: shards.len() as u64,
        dead: dead as u64,
    }
}

/// The aux nodes' summed store bytes and evictions (`GET /health`).
fn store_totals(cluster: &LocalCluster) -> anyhow::Result<(u64, u64)> {
    let (mut bytes, mut evictions) = (0, 0);
    for node in &cluster.aux {
        let (status, body) = Http::connect(node.addr)?.request("GET", "/health", b"")?;
        ensure!(status == 200, "/health of {} answered {status}", node.name);
        let health: serde_json::Value = serde_json::from_slice(&body)?;
        bytes += health["store"]["bytes"].as_u64().unwrap_or(0);
        evictions += health["store"]["evictions"].as_u64().unwrap_or(0);
    }
    Ok((bytes, evictions))
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

fn write_outputs(args: &BenchCacheArgs, report: &Report) -> anyhow::Result<()> {
    write_file(&args.json, &serde_json::to_string_pretty(report)?)?;
    let svg = args.json.with_extension("svg");
    crate::bench::plot::write_png(&chart(report), &svg, &args.plot, 1200)?;
    let section = render_section(report, &args.heading, &args.plot);
    println!("{section}");
    write_section(&args.output, &args.heading, &section, None)?;
    println!(
        "written to {}, {} and {}",
        args.output.display(),
        args.json.display(),
        args.plot.display()
    );
    Ok(())
}

fn find<'a>(report: &'a Report, setup: &str, workload: &str) -> Option<&'a Run> {
    report
        .runs
        .iter()
        .find(|run| run.setup == setup && run.workload == workload)
}

/// 1 − misses ÷ memcached ×3's misses, on the same workload.
fn misses_saved(run: &Run, memcached: Option<&Run>) -> Option<f64> {
    let reference = 1.0 - memcached?.counted.hit_ratio();
    (reference > 0.0).then(|| 1.0 - (1.0 - run.counted.hit_ratio()) / reference)
}

fn render_section(report: &Report, heading: &str, plot: &Path) -> String {
    let memcached = Setup::Memcached.label();
    let mut out = format!(
        "{heading}\n\ncommand: `{}`\n\nRun on {}; load average at the end: {}.\n\n",
        report.command,
        report.date,
        report
            .load_average
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    out.push_str(
        "Cache-aside (GET; SET on a miss), 8 clients, Zipf 0.99 over 150k 16-byte keys, \
         60k warm-up then 60k counted requests per window (the defaults; see the command). \
         **infinite cache** is the ceiling no policy can pass: the hit ratio if every key's \
         first request missed and every later one hit (with a short warm-up, many keys are \
         first requested in the counted window). \
         Equal RAM: shardcache runs 6 aux nodes of `--capacity 8MiB` (48 MiB), memcached and \
         redis three servers of 16 MiB holding three copies (a GET tries the key's primary \
         copy, then the others; a miss SETs all three). **hit ratio** counts the Zipf \
         requests only; **misses saved** is 1 − misses ÷ memcached ×3's misses; **scan drop** \
         is the hit ratio of the window before a scan (2× what the 3+2 cluster holds, \
         never-seen keys) minus the window after it; **dead shards** is the share of the \
         cluster's shards (of one size, so of its bytes) whose key has fewer than k shards of \
         its newest version, or that are of an older version, at the end of the counted window.\n\n",
    );
    out.push_str("| set-up |");
    for workload in &report.workloads {
        out.push_str(&format!(" {} |", workload.label));
    }
    out.push_str(" misses saved vs memcached ×3 (Zipf only) | scan drop | dead shards (Zipf only / wonders) |\n|---|");
    for _ in &report.workloads {
        out.push_str("---|");
    }
    out.push_str("---|---|---|\n");
    out.push_str("| infinite cache (ceiling) |");
    for ceiling in &report.ceilings {
        out.push_str(&format!(" {ceiling:.3} |"));
    }
    out.push_str(" | | |\n");
    for setup in &report.setups {
        out.push_str(&format!("| {setup} |"));
        for workload in &report.workloads {
            match find(report, setup, workload.id) {
                Some(run) => out.push_str(&format!(" {:.3} |", run.counted.hit_ratio())),
                None => out.push_str(" – |"),
            }
        }
        let zipf = find(report, setup, "zipf");
        let saved = zipf.and_then(|run| misses_saved(run, find(report, &memcached, "zipf")));
        let drop = zipf.and_then(Run::scan_drop);
        let dead = ["zipf", "wonders"]
            .iter()
            .map(|workload| {
                find(report, setup, workload)
                    .and_then(|run| run.census)
                    .map_or("–".to_owned(), |census| {
                        format!("{:.1}%", 100.0 * census.dead_fraction())
                    })
            })
            .collect::<Vec<_>>()
            .join(" / ");
        out.push_str(&format!(
            " {} | {} | {dead} |\n",
            saved.map_or("–".to_owned(), |saved| format!("{:.0}%", 100.0 * saved)),
            drop.map_or("–".to_owned(), |drop| format!("{drop:+.3}")),
        ));
    }
    let errors: u64 = report.runs.iter().map(|run| run.counted.errors).sum();
    out.push_str(&format!(
        "\nErrors (requests that failed, counted as misses): {errors}. Versions: {}.\n\n![Hit ratio at equal RAM]({})\n",
        match report.versions.is_empty() {
            true => "–".to_owned(),
            false => report.versions.join("; "),
        },
        plot.display()
    ));
    out
}

fn chart(report: &Report) -> BarChart {
    let mut groups: Vec<String> = report
        .workloads
        .iter()
        .map(|workload| workload.label.to_owned())
        .collect();
    let has_scan = report.workloads.iter().any(|workload| workload.scan);
    let mut markers: Vec<Marker> = report
        .ceilings
        .iter()
        .enumerate()
        .map(|(group, &value)| Marker {
            group,
            value,
            label: "infinite cache (ceiling)".to_owned(),
        })
        .collect();
    if has_scan {
        groups.push("Zipf, after a 2× scan".to_owned());
    }
    let series = report
        .setups
        .iter()
        .map(|setup| {
            let mut values: Vec<Option<f64>> = report
                .workloads
                .iter()
                .map(|workload| find(report, setup, workload.id).map(|run| run.counted.hit_ratio()))
                .collect();
            if has_scan {
                values.push(
                    find(report, setup, "zipf")
                        .and_then(|run| run.after_scan)
                        .map(|after| after.hit_ratio()),
                );
            }
            Series {
                name: setup.clone(),
                values,
            }
        })
        .collect();
    markers.extend(
        report
            .workloads
            .iter()
            .enumerate()
            .filter_map(|(group, workload)| {
                let target = match workload.id {
                    "zipf" => 0.82,
                    "wonders" => 0.80,
                    _ => return None,
                };
                Some(Marker {
                    group,
                    value: target,
                    label: "target (3+2)".to_owned(),
                })
            }),
    );
    BarChart {
        title: "Hit ratio at equal RAM (cache-aside, Zipf 0.99)".to_owned(),
        subtitle: format!("{} · {}", report.command, report.date),
        x_label: "workload".to_owned(),
        y_label: "hit ratio".to_owned(),
        groups,
        series,
        markers,
        decimals: 3,
        log_scale: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(ms: u64) -> Version {
        Version {
            timestamp: ms,
            writer: 7,
        }
    }

    #[test]
    fn dead_shards_are_those_of_undecodable_or_older_versions() {
        let shard = |key: &str, ms, index| (key.to_owned(), version(ms), index);
        type Shards = Vec<(String, Version, u8)>;
        let cases: Vec<(Shards, u8, ShardCensus)> = vec![
            (vec![], 3, ShardCensus { shards: 0, dead: 0 }),
            // Three distinct indices of one version: alive.
            (
                vec![shard("a", 1, 0), shard("a", 1, 1), shard("a", 1, 2)],
                3,
                ShardCensus { shards: 3, dead: 0 },
            ),
            // Two left of three needed: both dead.
            (
                vec![shard("a", 1, 0), shard("a", 1, 4)],
                3,
                ShardCensus { shards: 2, dead: 2 },
            ),
            // The same index twice counts once.
            (
                vec![shard("a", 1, 0), shard("a", 1, 0), shard("a", 1, 1)],
                3,
                ShardCensus { shards: 3, dead: 3 },
            ),
            // An older version beside a decodable newer one is dead weight.
            (
                vec![
                    shard("a", 2, 0),
                    shard("a", 2, 1),
                    shard("a", 2, 2),
                    shard("a", 1, 3),
                ],
                3,
                ShardCensus { shards: 4, dead: 1 },
            ),
            // Replication (k = 1): one copy is enough.
            (
                vec![shard("b", 1, 2)],
                1,
                ShardCensus { shards: 1, dead: 0 },
            ),
        ];
        for (shards, k, expected) in cases {
            assert_eq!(count_dead(&shards, k), expected, "{shards:?} k={k}");
        }
    }

    #[test]
    fn zipf_ranks_follow_the_distribution() {
        let table = ZipfTable::new(4, 1.0);
        // Weights 1, 1/2, 1/3, 1/4 of 25/12.
        assert_eq!(table.sample(0.0), 0);
        assert_eq!(table.sample(0.47), 0);
        assert_eq!(table.sample(0.49), 1);
        assert_eq!(table.sample(0.999_999), 3);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let big = ZipfTable::new(150_000, 0.99);
        let top = (0..100_000)
            .filter(|_| big.sample(rng.random::<f64>()) < 100)
            .count();
        // The 100 most popular of 150k keys draw about 40% of requests.
        assert!((35_000..45_000).contains(&top), "{top}");
    }

    #[test]
    fn the_ceiling_counts_first_requests_as_misses() {
        let args = |warm_up, requests| BenchCacheArgs {
            keys: 10,
            zipf: 0.99,
            warm_up,
            requests,
            threads: 2,
            aux_capacity: ByteSize(8 << 20),
            reference_memory_mib: 16,
            setups: String::new(),
            workloads: String::new(),
            output: PathBuf::new(),
            heading: String::new(),
            json: PathBuf::new(),
            plot: PathBuf::new(),
        };
        let zipf = ZipfTable::new(10, 0.99);
        // Ten keys, thousands of requests: at most ten misses.
        assert!(ceiling(&args(0, 10_000), WORKLOADS[0], &zipf) >= 0.999);
        // After a long warm-up every key was seen.
        assert_eq!(ceiling(&args(10_000, 1_000), WORKLOADS[0], &zipf), 1.0);
        // One-hit wonders are not counted, and miss anyway.
        assert_eq!(ceiling(&args(10_000, 1_000), WORKLOADS[1], &zipf), 1.0);
    }

    #[test]
    fn setups_parse_and_scans_are_twice_the_coded_capacity() {
        assert_eq!(
            Setup::parse("3+2:fifo").unwrap(),
            Setup::Shardcache {
                data_shards: 3,
                parity_shards: 2,
                policy: Some("fifo".into())
            }
        );
        assert_eq!(Setup::parse("redis").unwrap(), Setup::Redis);
        assert!(Setup::parse("5+2").is_err());
        assert!(Setup::parse("three").is_err());
        let args = BenchCacheArgs {
            keys: 1,
            zipf: 1.0,
            warm_up: 1,
            requests: 1,
            threads: 1,
            aux_capacity: ByteSize(8 << 20),
            reference_memory_mib: 16,
            setups: String::new(),
            workloads: String::new(),
            output: PathBuf::new(),
            heading: String::new(),
            json: PathBuf::new(),
            plot: PathBuf::new(),
        };
        assert_eq!(scan_keys(&args, WORKLOADS[0]), 58_982);
    }
}
