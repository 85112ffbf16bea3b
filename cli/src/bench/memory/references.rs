//! The reference side of `shardcache bench-memory`: Redis and memcached as children,
//! loaded through pipelined commands, their RSS read once it settles.

use super::*;

/// How to start, load and recognise one reference server.
pub(super) struct ReferenceSystem {
    pub(super) name: &'static str,
    program: &'static str,
    /// Arguments after the program, given the port.
    args: fn(u16) -> Vec<String>,
    version_args: &'static [&'static str],
    encode_set: fn(&mut Vec<u8>, &[u8], &[u8]),
    /// The reply line of a successful set.
    stored: &'static str,
}

pub(super) const REDIS: ReferenceSystem = ReferenceSystem {
    name: "redis",
    program: "redis-server",
    args: redis_args,
    version_args: &["--version"],
    encode_set: encode_redis_set,
    stored: "+OK",
};

pub(super) const MEMCACHED: ReferenceSystem = ReferenceSystem {
    name: "memcached",
    program: "memcached",
    args: |port| memcached_args(port, 8192),
    version_args: &["-V"],
    encode_set: encode_memcached_set,
    stored: "STORED",
};

/// Starts a fresh server, loads the workload into it, waits for steady RSS and
/// kills it.
pub(super) fn run_reference(
    system: &ReferenceSystem,
    workload: Workload,
) -> anyhow::Result<ReferenceRun> {
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

pub(super) fn measure_reference(
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
pub(super) fn pipeline_load(
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
pub(super) fn read_replies(
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
pub(super) fn settle_process(pid: u32) -> anyhow::Result<(u64, bool)> {
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

pub(super) fn print_reference_run(run: &ReferenceRun) {
    println!(
        "    loaded in {:.1} s: RSS +{:.1} MiB = {:.2} per user byte (×3: {:.2})",
        run.load_seconds,
        (run.rss_after as f64 - run.rss_before as f64) / (1 << 20) as f64,
        run.per_user_byte(),
        run.per_user_byte() * REFERENCE_COPIES
    );
}
