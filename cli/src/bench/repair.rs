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

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use futures::{stream, StreamExt};
use serde_json::Value;
use shardcache_common::units::ByteSize;

use crate::harness::{ClusterSpec, LocalCluster};

/// Measure how fast a lost aux node's shards are rebuilt.
#[derive(Debug, Clone, clap::Args)]
pub struct RepairBenchArgs {
    /// User bytes to load (rounded down to whole values) before the node is lost.
    #[arg(long, default_value = "256MiB")]
    pub data: ByteSize,
    /// Size of every value.
    #[arg(long, default_value = "64KiB")]
    pub value_size: ByteSize,
    /// Keys the master repairs at once (its `--repair-concurrency`).
    #[arg(long, default_value_t = 4)]
    pub repair_concurrency: usize,
    /// Where the report is written (it is printed too).
    #[arg(long, default_value = "data/bench/repair.md")]
    pub output: PathBuf,
}

/// Concurrent requests while loading and verifying.
const LOAD_CONCURRENCY: usize = 16;

/// Keys read back and checked after the repair.
const VERIFY_SAMPLE: usize = 200;

/// Most keys one run may load, whatever `--data` says.
const MAX_KEYS: u64 = 10_000_000;

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

/// What one run measured.
struct RepairRun {
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
    checked: usize,
    mismatches: usize,
}

impl RepairRun {
    fn pass_u64(&self, field: &str) -> u64 {
        self.last_pass[field].as_u64().unwrap_or(0)
    }
}

/// Runs the benchmark and writes its report; fails if any write failed or any
/// value read back after the repair differs.
pub fn bench_repair(args: RepairBenchArgs) -> anyhow::Result<()> {
    let value_size = args.value_size.bytes();
    ensure!(value_size > 0, "--value-size must be above 0");
    ensure!(
        args.repair_concurrency > 0,
        "--repair-concurrency must be above 0"
    );
    let keys = args.data.bytes() / value_size;
    ensure!(
        keys > 0,
        "--data ({}) is smaller than one value ({})",
        args.data,
        args.value_size
    );
    ensure!(
        keys <= MAX_KEYS,
        "{keys} keys is more than this benchmark loads ({MAX_KEYS}); raise --value-size"
    );
    let exe = std::env::current_exe().context("find the shardcache executable")?;
    let command: Vec<String> = std::env::args().collect();
    let capacity = ByteSize(args.data.bytes() * 2 + (64 << 20));

    // Declared before the cluster, so it is removed after every node is gone.
    let data_dir = tempfile::tempdir().context("create temp dir")?;
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
        "--repair-concurrency".into(),
        args.repair_concurrency.to_string(),
    ];
    let aux_nodes = spec.aux_nodes;
    let mut cluster = LocalCluster::start(&exe, spec)?;
    let run = shardcache_common::runtime::block_on(measure(&mut cluster, &args, keys));
    if run.is_err() {
        eprintln!("cluster logs:\n{}", cluster.logs(20));
    }
    cluster.stop();
    let run = run?;

    let report = render(&args, &command, aux_nodes, capacity, &run);
    crate::bench::support::print_and_write(&report, &args.output)?;
    if run.mismatches > 0 {
        bail!(
            "{} of {} values read back after the repair were wrong or missing",
            run.mismatches,
            run.checked
        );
    }
    Ok(())
}

fn render(
    args: &RepairBenchArgs,
    command: &[String],
    aux_nodes: usize,
    capacity: ByteSize,
    run: &RepairRun,
) -> String {
    let duration_ms = run.pass_u64("duration_ms");
    let seconds = duration_ms as f64 / 1e3;
    let bytes_written = run.pass_u64("bytes_written");
    let per_gb = |bytes: u64| match bytes {
        0 => "n/a".to_owned(),
        _ => format!("{:.2} s", seconds / (bytes as f64 / 1e9)),
    };
    let throughput = match duration_ms {
        0 => "n/a".to_owned(),
        _ => format!("{:.1} MiB/s", bytes_written as f64 / MIB / seconds),
    };
    let mut report = format!(
        "# shardcache bench-repair\n\ncommand: `{}`\n\n\
         1 master, {aux_nodes} aux nodes, {DATA_SHARDS}+{PARITY_SHARDS} erasure coding, \
         repair concurrency {}, {} cores; aux `--capacity {capacity} --snapshot-interval 0s`, \
         master `--probe-interval 100ms --probe-timeout 300ms --repair-grace 1s`. \
         Aux node 0 is SIGKILLed once the load has landed and the initial repair is \
         complete; the figures are those of the repair pass that made the new placement \
         complete (`repair.last_pass` in `GET /cluster`).\n\n",
        command.join(" "),
        args.repair_concurrency,
        std::thread::available_parallelism().map_or(0, usize::from),
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
            args.value_size
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
    row("keys scanned", run.pass_u64("keys_scanned").to_string());
    row("keys repaired", run.pass_u64("keys_repaired").to_string());
    row("shards rebuilt", run.pass_u64("shards_rebuilt").to_string());
    row("shards moved", run.pass_u64("shards_moved").to_string());
    row("shards deleted", run.pass_u64("shards_deleted").to_string());
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
    if run.passes_since_kill > 1 {
        report.push_str(&format!(
            "\nNote: {} passes finished after the kill; the figures are those of the \
             last one only.\n",
            run.passes_since_kill
        ));
    }
    report
}

const MIB: f64 = (1u64 << 20) as f64;

async fn measure(
    cluster: &mut LocalCluster,
    args: &RepairBenchArgs,
    keys: u64,
) -> anyhow::Result<RepairRun> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(LOAD_CONCURRENCY)
        .build()?;
    let master = cluster.master_url(0);
    let value_len = args.value_size.bytes() as usize;
    let total_shards = u64::from(DATA_SHARDS + PARITY_SHARDS);

    eprintln!(
        "loading {keys} keys of {} ({} in all) through {master}",
        args.value_size, args.data
    );
    let started = Instant::now();
    let deadline = started + LOAD_TIMEOUT;
    let failures = stream::iter(0..keys)
        .map(|index| {
            let (key, value) = (key_name(index), value_for(index, value_len));
            let body = serde_json::json!({ "key": key, "value": value }).to_string();
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

    cluster.aux[0].kill();
    let killed_at = Instant::now();
    eprintln!("killed aux-0; waiting for the master to repair");
    let after = poll(
        "repair after the kill to complete",
        REPAIR_TIMEOUT,
        || async {
            let view = cluster_view(&http, &master).await?;
            let epoch = view["placement_epoch"].as_u64().unwrap_or(0);
            let repair = &view["repair"];
            // `complete` may turn true a moment before `last_pass` is published.
            let done = epoch > epoch_before
                && repair["complete"] == true
                && repair["last_pass"]["placement_epoch"].as_u64() == Some(epoch);
            Ok(done.then_some(view))
        },
    )
    .await?;
    let kill_to_complete = killed_at.elapsed();
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
            let request = http.get(format!("{master}/data/{}", key_name(index)));
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
                body["value"].as_str() == Some(value_for(index, value_len).as_str())
            }
        })
        .buffer_unordered(LOAD_CONCURRENCY)
        .filter(|ok| std::future::ready(!ok))
        .count()
        .await;

    Ok(RepairRun {
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
        checked: sample.len(),
        mismatches,
    })
}

fn key_name(index: u64) -> String {
    format!("repair-bench-{index}")
}

/// The value of key `index`: exactly `len` ASCII bytes, different for every key,
/// regenerated when checking so the load is not held in memory.
fn value_for(index: u64, len: usize) -> String {
    let mut value = format!("{index}:");
    value.truncate(len);
    let mut state = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while value.len() < len {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        value.push(char::from(b'a' + (state % 26) as u8));
    }
    value
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
