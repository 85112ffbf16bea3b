//! The shardcache side of `shardcache bench-memory`: start a cluster, load it, wait
//! until its memory settles, and read the aux processes' RSS and the stores' own counts.

use super::*;

pub(super) fn read_rss_all(pids: &[u32]) -> anyhow::Result<Vec<u64>> {
    pids.iter().map(|&pid| read_rss(pid)).collect()
}

pub(super) fn pid_of(node: &Node) -> anyhow::Result<u32> {
    node.pid()
        .with_context(|| format!("find the pid of {}: not running", node.name))
}

// ---------------------------------------------------------------------------
// shardcache
// ---------------------------------------------------------------------------

/// Starts a fresh cluster for `setup`, measures it and kills it.
pub(super) fn run_cluster(
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

pub(super) async fn measure_cluster(
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
pub(super) async fn load_cluster(
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

pub(super) async fn write_with_retries(http: &reqwest::Client, url: &str, body: String) -> bool {
    for _ in 0..WRITE_ATTEMPTS {
        let sent = http.post(url).body(body.clone()).send().await;
        if sent.is_ok_and(|response| response.status().is_success()) {
            return true;
        }
    }
    false
}

/// Print progress about ten times per load.
pub(super) fn progress_step(keys: u64) -> u64 {
    (keys / 10).max(1)
}

pub(super) fn print_progress(done: u64, total: u64, started: Instant) {
    println!(
        "    loaded {done}/{total} keys ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
}

/// The aux nodes' own counts, summed.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct StoreTotals {
    bytes: u64,
    items: u64,
    evictions: u64,
}

pub(super) async fn store_totals(
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
pub(super) struct Settled {
    rss: Vec<u64>,
    store: StoreTotals,
    seconds: f64,
    steady: bool,
}

/// Polls every settle interval until every shard has landed and the summed RSS
/// changed by less than 1% since the previous reading, or until `timeout`.
pub(super) async fn settle_cluster(
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

pub(super) fn print_cluster_run(run: &ClusterRun) {
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
