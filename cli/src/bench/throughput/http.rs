//! The HTTP set-ups of `shardcache bench`: the bare server, shardcache clusters (with
//! one slow aux node or nginx in front), their preload, byte-for-byte checks and wrk
//! phases.

use super::*;

pub(super) fn run_bare(run: &Run, dir: &Path, result: &mut SetupResult) -> anyhow::Result<()> {
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

pub(super) fn run_shardcache(
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
pub(super) fn nginx_config(listen: SocketAddr, masters: &[SocketAddr], dir: &Path) -> String {
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
pub(super) fn nginx_args(dir: &Path) -> Vec<String> {
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

pub(super) fn start_nginx(dir: &Path, masters: &[SocketAddr]) -> anyhow::Result<ChildServer> {
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
pub(super) fn http_phases(
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

pub(super) fn http_client(connections: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(connections)
        .build()
        .context("build the HTTP client")
}

/// Writes every key (`POST /data`), `concurrency` at a time, each retried a few
/// times; fails if any key could not be written or the whole takes too long.
pub(super) async fn preload(
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
pub(super) fn sample_indices(keys: usize, wanted: usize) -> Vec<u64> {
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
pub(super) async fn check_sample(
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
pub(super) fn measure_phase(
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

pub(super) fn phase_summary(phase: &PhaseResult) -> String {
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
