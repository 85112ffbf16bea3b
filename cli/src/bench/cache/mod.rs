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
//!
//! Files: this one holds the arguments, the workloads and set-ups and the run over
//! them; `run` starts one set-up and drives its phases; `requests` draws the
//! requests (and computes the infinite-cache ceiling); `clients` speaks HTTP,
//! memcached and RESP; `census` counts dead shards; `report` writes the outputs.

mod census;
mod clients;
mod report;
mod requests;
mod run;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{bail, ensure, Context};
use serde::Serialize;
use shardcache_common::units::ByteSize;

use crate::bench::support::{
    copy_executable, ensure_installed, program_path, program_version, shell_command, utc_date,
};
use report::write_outputs;
use requests::{ceiling, ZipfTable};
use run::run_setup;

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

#[cfg(test)]
impl BenchCacheArgs {
    /// One key, one request of each kind, one thread, the default RAM, and no
    /// outputs: what unit tests start from (with `..BenchCacheArgs::for_tests()`).
    pub(crate) fn for_tests() -> Self {
        BenchCacheArgs {
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
        }
    }
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
    /// Shards a full repair pass would rebuild for values still readable (fewer
    /// than k+m distinct shards, at least k): what owners evicted and repair would
    /// put back.
    missing_from_readable: u64,
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

/// The figures of the run the report's prose names.
#[derive(Debug, Serialize)]
struct Settings {
    keys: u64,
    zipf: f64,
    warm_up: u64,
    requests: u64,
    threads: usize,
    aux_capacity: String,
    reference_memory_mib: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    command: String,
    date: String,
    load_average: String,
    args: String,
    settings: Settings,
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
        settings: Settings {
            keys: args.keys,
            zipf: args.zipf,
            warm_up: args.warm_up,
            requests: args.requests,
            threads: args.threads,
            aux_capacity: args.aux_capacity.to_string(),
            reference_memory_mib: args.reference_memory_mib,
        },
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
            ", dead shards {:.1}% of {} (a repair pass would rebuild {} evicted shards of readable values)",
            100.0 * census.dead_fraction(),
            census.shards,
            census.missing_from_readable
        ));
    }
    println!("{line} in {:.0} s", run.seconds);
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let args = BenchCacheArgs::for_tests();
        assert_eq!(run::scan_keys(&args, WORKLOADS[0]), 58_982);
    }
}
