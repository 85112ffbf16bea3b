//! `shardcache bench-repair`: measures how fast a lost aux node's shards are rebuilt.
//!
//! It starts a fresh local cluster (one master, six aux nodes, 3+2 coding, periodic
//! snapshots off), loads `--data` bytes of user values through the master, waits
//! until every shard has landed and the initial repair pass is complete, then
//! SIGKILLs aux node 0 and polls `GET /cluster` until the master has changed the
//! placement and reports repair complete again. The report gives that pass's
//! duration and counts from `repair.last_pass`, the rebuild throughput, the
//! headline figure — seconds of repair per GB of user data held by the cluster —
//! and the wall time from SIGKILL to complete (which includes failure detection and
//! the `--repair-grace` period). Afterwards it reads a sample of keys back through
//! the master and checks them byte for byte. The report is printed and written to
//! a file with the command line in it. Every loop is bounded in count and time.
//!
//! **With clients at work** (`--clients N`): before the kill, `wrk` (with
//! `wrk-data-api.lua`, N connections) GETs random loaded keys for
//! [`CLIENTS_BEFORE`]; then, once the master reports the repair pass running, a
//! second `wrk` runs until it reports the pass finished (stopped with SIGINT, which
//! makes wrk print its result). The report gives both runs' throughput and p99 and
//! their ratios: what the pass cost the clients, and what they cost the pass.
//!
//! **`--suite`** runs the standard set-ups on fresh clusters — 1 KiB values, 64 KiB
//! values, 1 KiB values under a saturating GET load — and writes their table to the
//! `## Repair` section of `--benchmarks` (BENCHMARKS.md), the README's figures.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use futures::{stream, StreamExt};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use shardcache_common::units::ByteSize;

use crate::bench::load_generators::{
    parse_wrk_result, run_wrk, wrk_command, HttpOperation, LoadResult, WrkLoad, WRK_SCRIPT,
};
use crate::bench::proc_stat;
use crate::bench::support::{key, program_path, utc_date, value, write_file, write_section};
use crate::harness::{ClusterSpec, LocalCluster};

/// Measure how fast a lost aux node's shards are rebuilt.
#[derive(Debug, Clone, clap::Args)]
pub struct RepairBenchArgs {
    /// User bytes to load (rounded down to whole values) before the node is lost.
    #[arg(long, default_value = "128MiB")]
    pub data: ByteSize,
    /// Size of every value.
    #[arg(long, default_value = "1KiB")]
    pub value_size: ByteSize,
    /// The master's `--repair-concurrency` (the upper bound of its repair budget);
    /// the master's default when not given.
    #[arg(long)]
    pub repair_concurrency: Option<usize>,
    /// wrk connections GETting loaded keys before and during the pass (0: none).
    #[arg(long, default_value_t = 0)]
    pub clients: usize,
    /// Run the standard set-ups (1 KiB, 64 KiB, 1 KiB under a GET load) and write
    /// their table to `--benchmarks`; `--data`, `--value-size` and `--clients` are
    /// then ignored.
    #[arg(long)]
    pub suite: bool,
    /// With `--suite`: scales every set-up's data (0.25 for a quick run).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Where the full report is written (it is printed too).
    #[arg(long, default_value = "data/bench/repair.md")]
    pub output: PathBuf,
    /// With `--suite`: the file whose `## Repair` section gets the table.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub benchmarks: PathBuf,
}

/// One benchmark run's shape.
#[derive(Debug, Clone, Copy)]
struct Setup {
    data: ByteSize,
    value_size: ByteSize,
    /// wrk connections during the pass (0: no client load).
    clients: usize,
}

/// The set-ups of `--suite`, before `--scale`.
const SUITE: [Setup; 3] = [
    Setup {
        data: ByteSize(128 << 20),
        value_size: ByteSize(1 << 10),
        clients: 0,
    },
    Setup {
        data: ByteSize(256 << 20),
        value_size: ByteSize(64 << 10),
        clients: 0,
    },
    Setup {
        data: ByteSize(128 << 20),
        value_size: ByteSize(1 << 10),
        clients: 16,
    },
];

/// Heading of the section `--suite` writes.
const SECTION_HEADING: &str = "## Repair";

/// Concurrent requests while loading and verifying.
const LOAD_CONCURRENCY: usize = 16;

/// Keys read back and checked after the repair.
const VERIFY_SAMPLE: usize = 200;

/// Most keys one run may load, whatever `--data` says.
const MAX_KEYS: u64 = 10_000_000;

/// Most distinct keys wrk GETs (it formats every request up front).
const WRK_KEYS: u64 = 32_768;

/// How long the clients' load runs before the kill, for the "before" figures.
const CLIENTS_BEFORE: Duration = Duration::from_secs(5);

/// Longest the load may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Longest to wait for every shard of the load to land on the aux nodes.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest to wait for the initial repair pass (before the kill).
const INITIAL_REPAIR_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Longest to wait from the kill until repair is complete again.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Time between polls of `/cluster` and `/health`.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Coding geometry of the benchmark cluster.
const DATA_SHARDS: u8 = 3;
const PARITY_SHARDS: u8 = 2;

/// What the clients saw before the kill and during the pass.
struct ClientPhases {
    connections: usize,
    before: LoadResult,
    /// `None` when the pass ended before the clients' second run could start.
    during: Option<LoadResult>,
}

/// What one run measured.
struct RepairRun {
    setup: Setup,
    keys: u64,
    user_bytes: u64,
    /// Sum of the aux nodes' `store.bytes` before the kill, and aux-0's share.
    aux_bytes_before: u64,
    lost_node_bytes: u64,
    /// `repair.last_pass` of the pass that made the new placement complete.
    last_pass: Value,
    /// Passes that finished between the kill and complete.
    passes_since_kill: u64,
    epoch_before: u64,
    epoch_after: u64,
    /// SIGKILL to `repair.complete` for the new placement, as polled.
    kill_to_complete: Duration,
    clients: Option<ClientPhases>,
    checked: usize,
    mismatches: usize,
    /// `/proc/loadavg`'s 1-minute figure before the load and after the pass.
    load_average: (f64, f64),
}

impl RepairRun {
    fn pass_u64(&self, field: &str) -> u64 {
        self.last_pass[field].as_u64().unwrap_or(0)
    }

    fn pass_seconds(&self) -> f64 {
        self.pass_u64("duration_ms") as f64 / 1e3
    }

    /// Pass seconds per GB (10^9 bytes) of user data held.
    fn seconds_per_gb(&self) -> f64 {
        self.pass_seconds() / (self.user_bytes as f64 / 1e9)
    }
}

/// Runs the benchmark and writes its report; fails if any write failed or any
/// value read back after the repair differs.
pub fn bench_repair(args: RepairBenchArgs) -> anyhow::Result<()> {
    ensure!(
        args.repair_concurrency != Some(0),
        "--repair-concurrency must be above 0"
    );
    ensure!(args.scale > 0.0, "--scale must be above 0");
    let command: Vec<String> = std::env::args().collect();
    let setups: Vec<Setup> = match args.suite {
        true => SUITE
            .iter()
            .map(|setup| Setup {
                data: ByteSize((setup.data.bytes() as f64 * args.scale) as u64),
                ..*setup
            })
            .collect(),
        false => vec![Setup {
            data: args.data,
            value_size: args.value_size,
            clients: args.clients,
        }],
    };
    let mut runs = Vec::new();
    let mut report = String::new();
    for setup in setups {
        let run = run_setup(setup, args.repair_concurrency)?;
        report.push_str(&render(&run, &command, args.repair_concurrency));
        report.push('\n');
        if run.mismatches > 0 {
            crate::bench::support::print_and_write(&report, &args.output)?;
            bail!(
                "{} of {} values read back after the repair were wrong or missing",
                run.mismatches,
                run.checked
            );
        }
        runs.push(run);
    }
    crate::bench::support::print_and_write(&report, &args.output)?;
    if args.suite {
        let section = render_section(&runs, &command);
        println!("\n{section}");
        write_section(&args.benchmarks, SECTION_HEADING, &section, None)?;
        println!(
            "written to {} ({SECTION_HEADING})",
            args.benchmarks.display()
        );
    }
    Ok(())
}

/// Starts a fresh cluster, measures one set-up on it, and stops it.
fn run_setup(setup: Setup, concurrency: Option<usize>) -> anyhow::Result<RepairRun> {
    let value_size = setup.value_size.bytes();
    ensure!(value_size > 0, "--value-size must be above 0");
    let keys = setup.data.bytes() / value_size;
    ensure!(
        keys > 0,
        "--data ({}) is smaller than one value ({})",
        setup.data,
        setup.value_size
    );
    ensure!(
        keys <= MAX_KEYS,
        "{keys} keys is more than this benchmark loads ({MAX_KEYS}); raise --value-size"
    );
    let exe = std::env::current_exe().context("find the shardcache executable")?;
    let capacity = ByteSize(setup.data.bytes() * 2 + (64 << 20));

    // Declared before the cluster, so it is removed after every node is gone.
    let data_dir = tempfile::tempdir().context("create temp dir")?;
    let wrk = match setup.clients {
        0 => None,
        _ => {
            let script = data_dir.path().join("wrk-data-api.lua");
            write_file(&script, WRK_SCRIPT)?;
            Some((program_path("wrk", "wrk")?, script))
        }
    };
    let mut spec = ClusterSpec::new(data_dir.path());
    (spec.data_shards, spec.parity_shards) = (DATA_SHARDS, PARITY_SHARDS);
    spec.aux_args = vec![
        "--capacity".into(),
        capacity.to_string(),
        "--snapshot-interval".into(),
        "0s".into(),
    ];
    spec.master_args = vec![
        "--probe-interval".into(),
        "100ms".into(),
        "--probe-timeout".into(),
        "300ms".into(),
        "--repair-grace".into(),
        "1s".into(),
    ];
    if let Some(concurrency) = concurrency {
        spec.master_args
            .extend(["--repair-concurrency".into(), concurrency.to_string()]);
    }
    let mut cluster = LocalCluster::start(&exe, spec)?;
    let wrk = wrk
        .as_ref()
        .map(|(wrk, script)| (wrk.as_path(), script.as_path()));
    let run = shardcache_common::runtime::block_on(measure(&mut cluster, setup, keys, wrk));
    if run.is_err() {
        eprintln!("cluster logs:\n{}", cluster.logs(20));
    }
    cluster.stop();
    run
}

/// One run's full report.
fn render(run: &RepairRun, command: &[String], concurrency: Option<usize>) -> String {
    let setup = &run.setup;
    let seconds = run.pass_seconds();
    let bytes_written = run.pass_u64("bytes_written");
    let per_gb = |bytes: u64| match (bytes, run.pass_u64("duration_ms")) {
        (0, _) | (_, 0) => "n/a".to_owned(),
        _ => format!("{:.2} s", seconds / (bytes as f64 / 1e9)),
    };
    let throughput = match run.pass_u64("duration_ms") {
        0 => "n/a".to_owned(),
        _ => format!("{:.1} MiB/s", bytes_written as f64 / MIB / seconds),
    };
    let mut report = format!(
        "# shardcache bench-repair: {} of {} values{}\n\ncommand: `{}`\n\n\
         1 master, 6 aux nodes, {DATA_SHARDS}+{PARITY_SHARDS} erasure coding, \
         repair concurrency {}, {} cores, load average {:.2} before / {:.2} after; \
         aux `--capacity {} --snapshot-interval 0s`, \
         master `--probe-interval 100ms --probe-timeout 300ms --repair-grace 1s`. \
         Aux node 0 is SIGKILLed once the load has landed and the initial repair is \
         complete; the figures are those of the repair pass that made the new placement \
         complete (`repair.last_pass` in `GET /cluster`).\n\n",
        setup.data,
        setup.value_size,
        match setup.clients {
            0 => String::new(),
            clients => format!(", {clients} wrk GET connections"),
        },
        command.join(" "),
        concurrency.map_or("the master's default".to_owned(), |c| c.to_string()),
        std::thread::available_parallelism().map_or(0, usize::from),
        run.load_average.0,
        run.load_average.1,
        ByteSize(setup.data.bytes() * 2 + (64 << 20)),
    );
    report.push_str("| measure | value |\n|---|---|\n");
    let mut row = |name: &str, value: String| report.push_str(&format!("| {name} | {value} |\n"));
    row(
        "user data held by the cluster",
        format!(
            "{} ({:.1} MiB: {} keys × {} values)",
            run.user_bytes,
            run.user_bytes as f64 / MIB,
            run.keys,
            setup.value_size
        ),
    );
    row(
        "aux store bytes before the kill (all nodes / lost node)",
        format!(
            "{:.1} MiB / {:.1} MiB",
            run.aux_bytes_before as f64 / MIB,
            run.lost_node_bytes as f64 / MIB
        ),
    );
    for field in [
        "keys_scanned",
        "keys_repaired",
        "shards_rebuilt",
        "shards_moved",
        "shards_deleted",
        "failures",
    ] {
        row(&field.replace('_', " "), run.pass_u64(field).to_string());
    }
    row(
        "shard bytes written",
        format!("{bytes_written} ({:.1} MiB)", bytes_written as f64 / MIB),
    );
    row("repair pass duration", format!("{seconds:.3} s"));
    row(
        "rebuild throughput (shard bytes written / pass duration)",
        throughput,
    );
    row(
        "repair seconds per GB of user data (pass duration / user GB held)",
        per_gb(run.user_bytes),
    );
    row(
        "repair seconds per GB rebuilt (pass duration / shard GB written)",
        per_gb(bytes_written),
    );
    row(
        "SIGKILL to repair complete, wall time",
        format!("{:.3} s", run.kill_to_complete.as_secs_f64()),
    );
    if let Some(clients) = &run.clients {
        let before = &clients.before;
        row("wrk GET connections", clients.connections.to_string());
        row(
            "clients before the kill: GET/s, p99",
            format!("{:.0}/s, {}", before.per_second(), p99(before)),
        );
        match &clients.during {
            Some(during) => {
                row(
                    "clients during the pass: GET/s, p99",
                    format!(
                        "{:.0}/s, {} (over {:.2} s)",
                        during.per_second(),
                        p99(during),
                        during.seconds
                    ),
                );
                row(
                    "clients during ÷ before: throughput, p99",
                    format!(
                        "{:.2}×, {}",
                        during.per_second() / before.per_second(),
                        p99_ratio(before, during)
                    ),
                );
                row(
                    "client errors before / during",
                    format!("{} / {}", before.errors, during.errors),
                );
            }
            None => row(
                "clients during the pass",
                "n/a: the pass ended before wrk started".into(),
            ),
        }
    }
    row(
        "placement epoch before / after",
        format!("{} / {}", run.epoch_before, run.epoch_after),
    );
    row(
        "repair passes finished after the kill",
        run.passes_since_kill.to_string(),
    );
    row(
        "values read back after repair / mismatches",
        format!("{} / {}", run.checked, run.mismatches),
    );
    report.push_str(
        "\nWhat each number divides by (GB = 10^9 bytes):\n\n\
         - *repair seconds per GB of user data*: the pass duration divided by the user \
         bytes the cluster held (keys × value size, before coding) in GB — how long \
         losing one of the six nodes costs per GB cached.\n\
         - *repair seconds per GB rebuilt*: the pass duration divided by the shard \
         bytes (frames: header + shard) the pass wrote to their new owners, in GB.\n\
         - *rebuild throughput*: the same shard bytes written, in MiB (2^20 bytes), \
         divided by the pass duration in seconds.\n\
         - The pass duration covers one repair pass only (scan every up node's \
         inventory, rebuild, move, delete). The wall time from SIGKILL additionally \
         includes failure detection (probes every 100 ms) and the 1 s repair grace.\n",
    );
    if run.clients.is_some() {
        report.push_str(
            "- *clients*: wrk GETs random loaded keys for 5 s before the kill, and again \
             from when the master reports the pass running until it reports it done \
             (polled every 50 ms); throughput is requests over wrk's own run time.\n",
        );
    }
    if run.passes_since_kill > 1 {
        report.push_str(&format!(
            "\nNote: {} passes finished after the kill; the figures are those of the \
             last one only.\n",
            run.passes_since_kill
        ));
    }
    report
}

fn p99(result: &LoadResult) -> String {
    result
        .latency
        .map_or("n/a".into(), |latency| format!("{:.2} ms", latency.p99_ms))
}

fn p99_ratio(before: &LoadResult, during: &LoadResult) -> String {
    match (before.latency, during.latency) {
        (Some(before), Some(during)) if before.p99_ms > 0.0 => {
            format!("{:.2}×", during.p99_ms / before.p99_ms)
        }
        _ => "n/a".into(),
    }
}

/// The `## Repair` section of BENCHMARKS.md: one row per set-up.
fn render_section(runs: &[RepairRun], command: &[String]) -> String {
    let mut section = format!(
        "{SECTION_HEADING}\n\ncommand: `{}` (run on {}, {} cores; the full reports are in \
         `data/bench/repair.md`)\n\n\
         Each set-up ran on a fresh local cluster (1 master, 6 aux nodes, 3+2, the \
         master's defaults but `--probe-interval 100ms --repair-grace 1s`): load the \
         values, wait for the initial repair, SIGKILL aux node 0, and time the repair \
         pass that restores full redundancy (`repair.last_pass`). **s per GB** is the pass \
         duration over the user data held (keys × value size, GB = 10^9 B). With \
         clients, wrk GETs random loaded keys 5 s before the kill and again for the \
         length of the pass; the ratios compare the two runs. The load average is \
         `/proc/loadavg` (1 min) before the load and after the pass: the machine is \
         shared.\n\n\
         | set-up | keys | pass | s per GB of user data | shards rebuilt | clients GET/s before → during | client p99 before → during | load average |\n\
         |---|---|---|---|---|---|---|---|\n",
        command.join(" "),
        utc_date(std::time::SystemTime::now()),
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    for run in runs {
        let setup = &run.setup;
        let name = match setup.clients {
            0 => format!("{} of {} values", setup.data, setup.value_size),
            clients => format!(
                "{} of {} values, wrk GET load ({clients} connections)",
                setup.data, setup.value_size
            ),
        };
        let (throughput, latency) = match &run.clients {
            Some(ClientPhases {
                before,
                during: Some(during),
                ..
            }) => (
                format!(
                    "{:.0} → {:.0} ({:.2}×)",
                    before.per_second(),
                    during.per_second(),
                    during.per_second() / before.per_second()
                ),
                format!(
                    "{} → {} ({})",
                    p99(before),
                    p99(during),
                    p99_ratio(before, during)
                ),
            ),
            Some(_) => ("n/a".into(), "n/a".into()),
            None => ("–".into(), "–".into()),
        };
        section.push_str(&format!(
            "| {name} | {} | {:.2} s | **{:.1} s** | {} | {throughput} | {latency} | {:.2} / {:.2} |\n",
            run.keys,
            run.pass_seconds(),
            run.seconds_per_gb(),
            run.pass_u64("shards_rebuilt"),
            run.load_average.0,
            run.load_average.1,
        ));
    }
    section
}

const MIB: f64 = (1u64 << 20) as f64;

/// The 1-minute load average.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The wrk GET load of a run with clients.
fn wrk_load<'a>(
    (wrk, script): (&'a Path, &'a Path),
    master: &'a str,
    connections: usize,
    duration: Duration,
    keys: u64,
    value_len: usize,
) -> WrkLoad<'a> {
    WrkLoad {
        wrk,
        script,
        base_url: master,
        operation: HttpOperation::Get,
        threads: 1,
        connections,
        duration,
        keys: keys.min(WRK_KEYS) as usize,
        value_len,
    }
}

/// A wrk run in the background, stopped with SIGINT (it then prints its result).
struct BackgroundWrk {
    child: Child,
}

impl BackgroundWrk {
    fn start(load: &WrkLoad) -> anyhow::Result<Self> {
        let child = wrk_command(load)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start wrk")?;
        Ok(BackgroundWrk { child })
    }

    /// Stops it and reads its result.
    fn stop(self) -> anyhow::Result<LoadResult> {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).context("wrk's pid")?);
        kill(pid, Signal::SIGINT).context("SIGINT wrk")?;
        let output = self.child.wait_with_output().context("wait for wrk")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        parse_wrk_result(&stdout).with_context(|| {
            format!(
                "read wrk's result:\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }
}

/// Loads the set-up's values, waits for them to settle, runs the clients' "before"
/// phase if any, kills aux-0 and measures the repair (and the clients during it).
async fn measure(
    cluster: &mut LocalCluster,
    setup: Setup,
    keys: u64,
    wrk: Option<(&Path, &Path)>,
) -> anyhow::Result<RepairRun> {
    let load_average_before = load_average();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(LOAD_CONCURRENCY)
        .build()?;
    let master = cluster.master_url(0);
    let value_len = setup.value_size.bytes() as usize;
    let total_shards = u64::from(DATA_SHARDS + PARITY_SHARDS);

    eprintln!(
        "loading {keys} keys of {} ({} in all) through {master}",
        setup.value_size, setup.data
    );
    let started = Instant::now();
    let deadline = started + LOAD_TIMEOUT;
    let failures = stream::iter(0..keys)
        .map(|index| {
            let body = serde_json::json!({ "key": key(index), "value": value(index, value_len) })
                .to_string();
            let request = http.post(format!("{master}/data")).body(body);
            async move {
                if Instant::now() >= deadline {
                    return false;
                }
                request
                    .send()
                    .await
                    .is_ok_and(|response| response.status() == reqwest::StatusCode::OK)
            }
        })
        .buffer_unordered(LOAD_CONCURRENCY)
        .filter(|ok| std::future::ready(!ok))
        .count()
        .await;
    ensure!(
        failures == 0,
        "{failures} of {keys} writes did not answer 200 (or the load ran past {LOAD_TIMEOUT:?})"
    );
    eprintln!("loaded in {:.1} s", started.elapsed().as_secs_f64());

    let expected = keys * total_shards;
    poll(
        "every shard of the load to land",
        SETTLE_TIMEOUT,
        || async {
            let items: u64 = aux_stores(&http, cluster).await?.iter().map(|s| s.0).sum();
            Ok((items == expected).then_some(()))
        },
    )
    .await?;
    poll(
        "the initial repair to complete",
        INITIAL_REPAIR_TIMEOUT,
        || async {
            let view = cluster_view(&http, &master).await?;
            Ok((view["repair"]["complete"] == true).then_some(()))
        },
    )
    .await?;
    let before = cluster_view(&http, &master).await?;
    let epoch_before = before["placement_epoch"]
        .as_u64()
        .context("no placement_epoch in /cluster")?;
    let passes_before = before["repair"]["passes"].as_u64().unwrap_or(0);
    let stores = aux_stores(&http, cluster).await?;
    let aux_bytes_before = stores.iter().map(|s| s.1).sum();
    let lost_node_bytes = stores[0].1;

    let clients_before = match wrk {
        Some(wrk) => {
            eprintln!(
                "clients: {} wrk connections for {CLIENTS_BEFORE:?}",
                setup.clients
            );
            let (wrk_path, script) = (wrk.0.to_owned(), wrk.1.to_owned());
            let (master, clients) = (master.clone(), setup.clients);
            let ticks = proc_stat::clock_ticks_per_second()?;
            let result = tokio::task::spawn_blocking(move || {
                let load = wrk_load(
                    (&wrk_path, &script),
                    &master,
                    clients,
                    CLIENTS_BEFORE,
                    keys,
                    value_len,
                );
                run_wrk(&load, ticks)
            })
            .await??;
            Some(result.0)
        }
        None => None,
    };

    cluster.aux[0].kill();
    let killed_at = Instant::now();
    eprintln!("killed aux-0; waiting for the master to repair");
    let done = |view: &Value| {
        let epoch = view["placement_epoch"].as_u64().unwrap_or(0);
        let repair = &view["repair"];
        // `complete` may turn true a moment before `last_pass` is published.
        epoch > epoch_before
            && repair["complete"] == true
            && repair["last_pass"]["placement_epoch"].as_u64() == Some(epoch)
    };
    let mut during = None;
    if let Some(wrk) = wrk {
        // Start the clients' second run once the pass is running (or done).
        let view = poll("the repair pass to start", REPAIR_TIMEOUT, || async {
            let view = cluster_view(&http, &master).await?;
            let running = view["repair"]["current"]["placement_epoch"]
                .as_u64()
                .is_some_and(|epoch| epoch > epoch_before)
                || view["repair"]["state"] == "running"
                    && view["placement_epoch"].as_u64() > Some(epoch_before);
            Ok((running || done(&view)).then_some(view))
        })
        .await?;
        if !done(&view) {
            let load = wrk_load(wrk, &master, setup.clients, REPAIR_TIMEOUT, keys, value_len);
            during = Some(BackgroundWrk::start(&load)?);
        }
    }
    let after = poll(
        "repair after the kill to complete",
        REPAIR_TIMEOUT,
        || async {
            let view = cluster_view(&http, &master).await?;
            Ok(done(&view).then_some(view))
        },
    )
    .await;
    let during = during.map(BackgroundWrk::stop).transpose()?;
    let after = after?;
    let kill_to_complete = killed_at.elapsed();
    let load_average_after = load_average();
    let last_pass = after["repair"]["last_pass"].clone();
    if let Some(reason) = last_pass["aborted"].as_str() {
        bail!("the repair pass was aborted: {reason}");
    }
    eprintln!(
        "repair complete {:.1} s after the kill; checking values",
        kill_to_complete.as_secs_f64()
    );

    let sample: Vec<u64> = match keys <= VERIFY_SAMPLE as u64 {
        true => (0..keys).collect(),
        false => (0..VERIFY_SAMPLE as u64)
            .map(|i| i * keys / VERIFY_SAMPLE as u64)
            .collect(),
    };
    let mismatches = stream::iter(sample.iter().copied())
        .map(|index| {
            let request = http.get(format!("{master}/data/{}", key(index)));
            async move {
                let Ok(response) = request.send().await else {
                    return false;
                };
                if response.status() != reqwest::StatusCode::OK {
                    return false;
                }
                let Ok(body) = response.json::<Value>().await else {
                    return false;
                };
                body["value"].as_str() == Some(value(index, value_len).as_str())
            }
        })
        .buffer_unordered(LOAD_CONCURRENCY)
        .filter(|ok| std::future::ready(!ok))
        .count()
        .await;

    Ok(RepairRun {
        setup,
        keys,
        user_bytes: keys * value_len as u64,
        aux_bytes_before,
        lost_node_bytes,
        last_pass,
        passes_since_kill: after["repair"]["passes"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(passes_before),
        epoch_before,
        epoch_after: after["placement_epoch"].as_u64().unwrap_or(0),
        kill_to_complete,
        clients: clients_before.map(|before| ClientPhases {
            connections: setup.clients,
            before,
            during,
        }),
        checked: sample.len(),
        mismatches,
        load_average: (load_average_before, load_average_after),
    })
}

/// `GET /cluster` of the master at `master`.
async fn cluster_view(http: &reqwest::Client, master: &str) -> anyhow::Result<Value> {
    let response = http
        .get(format!("{master}/cluster"))
        .send()
        .await
        .context("GET /cluster")?;
    ensure!(
        response.status().is_success(),
        "GET /cluster answered {}",
        response.status()
    );
    response.json().await.context("/cluster is not JSON")
}

/// `(store.items, store.bytes)` of every running aux node, from its `/health`.
async fn aux_stores(
    http: &reqwest::Client,
    cluster: &LocalCluster,
) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut stores = Vec::new();
    for node in &cluster.aux {
        let health: Value = http
            .get(format!("http://{}/health", node.addr))
            .send()
            .await
            .with_context(|| format!("GET /health of {}", node.name))?
            .json()
            .await
            .with_context(|| format!("/health of {} is not JSON", node.name))?;
        stores.push((
            health["store"]["items"].as_u64().unwrap_or(0),
            health["store"]["bytes"].as_u64().unwrap_or(0),
        ));
    }
    Ok(stores)
}

/// Polls `condition` every [`POLL_INTERVAL`] until it returns a value; an error
/// after `timeout`.
async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut condition: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await? {
            return Ok(value);
        }
        ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
