//! The reference set-ups of `shardcache bench`: Redis (with `redis-benchmark`) and
//! memcached (with `memaslap`), started as children of the bench.

use super::*;

/// Installs the programs of a reference set-up; `Err` is the reason to skip it.
pub(super) fn reference_tools(programs: &[(&str, &str)]) -> Result<(), String> {
    ensure_installed(programs).map_err(|error| format!("{error:#}"))
}

pub(super) fn run_redis(run: &Run, dir: &Path, result: &mut SetupResult) -> anyhow::Result<()> {
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
pub(super) fn redis_requests_for(rate: f64, duration: Duration) -> u64 {
    ((rate * duration.as_secs_f64()) as u64).clamp(REDIS_MIN_REQUESTS, REDIS_MAX_REQUESTS)
}

/// Sets every key redis-benchmark's `-r` draws (`key:` and 12 digits), pipelined
/// over one connection, and reads one back.
pub(super) fn redis_preload(addr: SocketAddr, keys: usize, value_len: usize) -> anyhow::Result<()> {
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

pub(super) fn run_memcached(run: &Run, dir: &Path, result: &mut SetupResult) -> anyhow::Result<()> {
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
