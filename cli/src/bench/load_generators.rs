//! The load generators `shardcache bench` runs, each as a process of its own so
//! that it never competes with the benchmark's own code: `wrk` for the HTTP
//! systems (with `cli/src/bench/wrk-data-api.lua`), `redis-benchmark` for Redis and
//! `memaslap` (Debian's `memcaslap`) for memcached.
//!
//! For each it builds the command line, runs it bounded in time, reads its CPU time
//! (user + system, from this process's waited-for-children times in `/proc/self/stat`
//! around the wait) and parses its output into one [`LoadResult`]. The parsers are
//! pure functions of the output text.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use crate::bench::proc_stat;

/// The wrk script, kept in the repository and written next to each run's files.
pub const WRK_SCRIPT: &str = include_str!("wrk-data-api.lua");

/// The prefix of the line the wrk script's `done()` prints.
const WRK_RESULT_PREFIX: &str = "shardcache-wrk ";

/// Latency percentiles of one load phase, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Upper bounds rather than measured values: of power-of-two buckets
    /// (memaslap), or the first percentile printed at or above the one wanted
    /// (redis-benchmark prints 50%, 75%, 87.5%, … 99.2%, …).
    pub approximate: bool,
}

/// What one load phase measured, as its generator reported it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadResult {
    /// Requests measured (completed, errors included).
    pub requests: u64,
    /// Requests that failed: connection errors, timeouts, responses of status 400 or more, misses.
    pub errors: u64,
    /// What the errors were, e.g. `status 12, timeout 3` (empty when none).
    pub error_detail: String,
    /// How long the measured requests took, as the generator timed them.
    pub seconds: f64,
    pub latency: Option<Latency>,
    /// Requests the server handled during the phase (more than `requests` when the
    /// generator warms up inside the run, as memaslap does).
    pub server_requests: u64,
}

impl LoadResult {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// A finished generator process: its output and what it cost.
pub struct GeneratorRun {
    pub stdout: String,
    pub stderr: String,
    pub wall_seconds: f64,
    /// User + system CPU time of the generator.
    pub cpu_seconds: f64,
}

impl GeneratorRun {
    /// CPU time per wall-clock time, in percent of one core.
    pub fn cpu_percent(&self) -> f64 {
        100.0 * self.cpu_seconds / self.wall_seconds.max(1e-9)
    }
}

/// Runs `command` to completion, killing it after `timeout`, and measures its CPU
/// time as the growth of this process's waited-for-children time across the wait
/// (nothing else is waited for meanwhile: the benchmark is sequential).
pub fn run_generator(
    mut command: Command,
    timeout: Duration,
    clock_ticks: u64,
) -> anyhow::Result<GeneratorRun> {
    let program = command.get_program().to_string_lossy().into_owned();
    let before = proc_stat::read_own_stat()?.waited_children_cpu_ticks();
    let started = Instant::now();
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {program}"))?;
    let pid = child.id();
    let (finished, outcome) = mpsc::channel::<std::io::Result<Output>>();
    std::thread::spawn(move || {
        let _ = finished.send(child.wait_with_output());
    });
    let output = match outcome.recv_timeout(timeout) {
        Ok(output) => output.with_context(|| format!("wait for {program}"))?,
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = outcome.recv_timeout(Duration::from_secs(5));
            bail!("{program} did not finish within {timeout:?}");
        }
    };
    let wall_seconds = started.elapsed().as_secs_f64();
    let after = proc_stat::read_own_stat()?.waited_children_cpu_ticks();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ensure!(
        output.status.success(),
        "{program} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    Ok(GeneratorRun {
        stdout,
        stderr,
        wall_seconds,
        cpu_seconds: after.saturating_sub(before) as f64 / clock_ticks as f64,
    })
}

/// Whole seconds, at least 1, for generators that take no fractions.
pub fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs_f64().ceil().max(1.0) as u64
}

// ---------------------------------------------------------------------------
// wrk
// ---------------------------------------------------------------------------

/// What the wrk script is asked to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpOperation {
    Get,
    Post,
}

impl HttpOperation {
    pub fn name(self) -> &'static str {
        match self {
            HttpOperation::Get => "GET",
            HttpOperation::Post => "POST",
        }
    }

    fn script_mode(self) -> &'static str {
        match self {
            HttpOperation::Get => "get",
            HttpOperation::Post => "post",
        }
    }
}

/// One wrk run's shape.
#[derive(Debug, Clone)]
pub struct WrkLoad<'a> {
    pub wrk: &'a Path,
    pub script: &'a Path,
    pub base_url: &'a str,
    pub operation: HttpOperation,
    pub threads: usize,
    pub connections: usize,
    pub duration: Duration,
    pub keys: usize,
    pub value_len: usize,
}

/// The wrk command line for `load`.
pub fn wrk_command(load: &WrkLoad) -> Command {
    let mut command = Command::new(load.wrk);
    command
        .arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", whole_seconds(load.duration)))
        .arg("--latency")
        .args(["--timeout", "10s"])
        .arg("-s")
        .arg(load.script)
        .arg(load.base_url)
        .arg("--")
        .arg(load.operation.script_mode())
        .arg(load.keys.to_string())
        .arg(load.value_len.to_string());
    command
}

/// Runs wrk for `load` and parses the script's result line.
pub fn run_wrk(load: &WrkLoad, clock_ticks: u64) -> anyhow::Result<(LoadResult, GeneratorRun)> {
    let timeout = load.duration * 3 + Duration::from_secs(60);
    let run = run_generator(wrk_command(load), timeout, clock_ticks)?;
    let result = parse_wrk_result(&run.stdout)
        .with_context(|| format!("read wrk's result:\n{}\n{}", run.stdout, run.stderr))?;
    Ok((result, run))
}

/// Parses the `shardcache-wrk name=value ...` line of the script's `done()`.
pub fn parse_wrk_result(stdout: &str) -> anyhow::Result<LoadResult> {
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix(WRK_RESULT_PREFIX))
        .context("no `shardcache-wrk` line in wrk's output")?;
    let fields: Vec<(&str, &str)> = line
        .split_whitespace()
        .filter_map(|field| field.split_once('='))
        .collect();
    let number = |name: &str| -> anyhow::Result<f64> {
        let (_, text) = fields
            .iter()
            .find(|(field, _)| *field == name)
            .with_context(|| format!("no {name}= in {line:?}"))?;
        text.parse()
            .with_context(|| format!("{name}={text} is not a number"))
    };
    let count = |name: &str| number(name).map(|value| value as u64);
    let kinds = [
        ("connect", count("connect_errors")?),
        ("read", count("read_errors")?),
        ("write", count("write_errors")?),
        ("status ≥ 400", count("status_errors")?),
        ("timeout", count("timeout_errors")?),
    ];
    let requests = count("requests")?;
    let seconds = number("duration_us")? / 1e6;
    ensure!(seconds > 0.0, "wrk ran for no time: {line:?}");
    Ok(LoadResult {
        requests,
        errors: kinds.iter().map(|(_, count)| count).sum(),
        error_detail: error_detail(&kinds),
        seconds,
        latency: Some(Latency {
            p50_ms: number("p50_us")? / 1e3,
            p99_ms: number("p99_us")? / 1e3,
            p999_ms: number("p999_us")? / 1e3,
            approximate: false,
        }),
        server_requests: requests,
    })
}

/// `status ≥ 400 12, timeout 3`: the kinds with a non-zero count.
fn error_detail(kinds: &[(&str, u64)]) -> String {
    kinds
        .iter()
        .filter(|(_, count)| *count > 0)
        .map(|(kind, count)| format!("{kind} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------
// redis-benchmark
// ---------------------------------------------------------------------------

/// The key pattern redis-benchmark fills with `-r`: `key:` and 12 digits.
pub fn redis_benchmark_key(index: u64) -> String {
    format!("key:{index:012}")
}

/// The redis-benchmark command line: `test` (`get` or `set`) `requests` times over
/// `keys` random keys with `value_len`-byte values, `connections` at a time, showing
/// error replies (`-e`).
pub fn redis_benchmark_command(
    program: &Path,
    port: u16,
    test: &str,
    requests: u64,
    connections: usize,
    keys: usize,
    value_len: usize,
) -> Command {
    let mut command = Command::new(program);
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", test])
        .args(["-n", &requests.to_string()])
        .args(["-c", &connections.to_string()])
        .args(["-r", &keys.to_string()])
        .args(["-d", &value_len.to_string()])
        .arg("-e");
    command
}

/// Parses redis-benchmark's default (not `--csv`, not `-q`) output: requests per
/// second from `throughput summary`, percentiles from the `Latency by percentile
/// distribution` lines (the first at or above each percentile, so upper bounds).
/// With `-e` error replies are printed as lines starting `Error`, at most one a
/// second: the error count is a lower bound, zero only if there were none.
pub fn parse_redis_benchmark(output: &str, requests: u64) -> anyhow::Result<LoadResult> {
    // Progress is redrawn with carriage returns; only the final lines matter.
    let lines: Vec<&str> = output.split(['\n', '\r']).map(str::trim).collect();
    let per_second: f64 = lines
        .iter()
        .find_map(|line| line.strip_prefix("throughput summary:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .context("no `throughput summary` in redis-benchmark's output")?;
    ensure!(per_second > 0.0, "redis-benchmark measured no throughput");
    let distribution: Vec<(f64, f64)> = lines
        .iter()
        .skip_while(|line| !line.starts_with("Latency by percentile distribution"))
        .take_while(|line| !line.starts_with("Cumulative distribution"))
        .filter_map(|line| {
            // `99.902% <= 4.295 milliseconds (cumulative count 49952)`
            let (percent, rest) = line.split_once("% <= ")?;
            let millis = rest.split_whitespace().next()?;
            Some((percent.parse().ok()?, millis.parse().ok()?))
        })
        .collect();
    let at = |wanted: f64| -> anyhow::Result<f64> {
        distribution
            .iter()
            .find(|(percent, _)| *percent >= wanted)
            .map(|(_, millis)| *millis)
            .with_context(|| {
                format!("no latency at or above {wanted}% in redis-benchmark's output")
            })
    };
    let errors = lines
        .iter()
        .filter(|line| line.starts_with("Error"))
        .count() as u64;
    Ok(LoadResult {
        requests,
        errors,
        error_detail: match errors {
            0 => String::new(),
            count => format!("error replies ≥ {count} (shown at most one a second)"),
        },
        seconds: requests as f64 / per_second,
        latency: Some(Latency {
            p50_ms: at(50.0)?,
            p99_ms: at(99.0)?,
            p999_ms: at(99.9)?,
            approximate: true,
        }),
        server_requests: requests,
    })
}

// ---------------------------------------------------------------------------
// memaslap
// ---------------------------------------------------------------------------

/// memaslap's configuration: 16-byte keys, `value_len`-byte values, only sets or
/// only gets.
pub fn memaslap_config(value_len: usize, sets: bool) -> String {
    let (set, get) = match sets {
        true => ("1.0", "0.0"),
        false => ("0.0", "1.0"),
    };
    format!(
        "key\n{key} {key} 1\nvalue\n{value_len} {value_len} 1\ncmd\n0 {set}\n1 {get}\n",
        key = crate::bench::support::KEY_LEN
    )
}

/// Keys per connection of memaslap's window: its smallest, 1k (it takes no less),
/// or enough that all connections together cover `keys`.
pub fn memaslap_window_thousands(keys: usize, connections: usize) -> usize {
    keys.div_ceil(connections.max(1) * 1024).max(1)
}

/// The memaslap command line: one thread, `connections` concurrent, for
/// `seconds`, statistics once at the end.
pub fn memaslap_command(
    program: &Path,
    port: u16,
    config: &Path,
    connections: usize,
    window_thousands: usize,
    seconds: u64,
) -> Command {
    let mut command = Command::new(program);
    command
        .arg(format!("--servers=127.0.0.1:{port}"))
        .arg("--threads=1")
        .arg(format!("--concurrency={connections}"))
        .arg(format!("--win_size={window_thousands}k"))
        .arg(format!("--time={seconds}s"))
        .arg(format!("--stat_freq={seconds}s"))
        .arg(format!("--cfg_cmd={}", config.display()));
    command
}

/// Parses memaslap's output for `Get` or `Set`: the operation's event count and
/// log2 latency histogram (`Get Statistics (N events)` … `Log2 Dist:`), the run
/// time, the misses and every command the server got (memaslap first sets the keys
/// of its window, inside the run).
pub fn parse_memaslap(output: &str, operation: &str) -> anyhow::Result<LoadResult> {
    let lines: Vec<&str> = output.lines().map(str::trim).collect();
    let heading = format!("{operation} Statistics (");
    let start = lines
        .iter()
        .position(|line| line.starts_with(&heading))
        .with_context(|| format!("no `{heading}N events)` in memaslap's output"))?;
    let events: u64 = lines[start][heading.len()..]
        .split_whitespace()
        .next()
        .and_then(|number| number.parse().ok())
        .context("unreadable event count")?;
    let mut buckets = Vec::new();
    for line in lines[start..]
        .iter()
        .skip_while(|line| !line.starts_with("Log2 Dist:"))
        .skip(1)
        .take_while(|line| !line.is_empty())
    {
        // `8:    35405   104802    12386     1753`: buckets 2^8, 2^9, … µs.
        let Some((first, counts)) = line.split_once(':') else {
            break;
        };
        let first: u32 = first.trim().parse().context("unreadable log2 bucket")?;
        for (offset, count) in counts.split_whitespace().enumerate() {
            let count: u64 = count.parse().context("unreadable log2 count")?;
            buckets.push((first + offset as u32, count));
        }
    }
    let field = |name: &str| -> Option<f64> {
        lines
            .iter()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|number| number.trim_end_matches('s').parse().ok())
    };
    let seconds = field("Run time:").context("no `Run time:` in memaslap's output")?;
    ensure!(seconds > 0.0, "memaslap ran for no time");
    let misses = match operation {
        "Get" => field("get_misses:").unwrap_or(0.0) as u64,
        _ => 0,
    };
    let commands = field("cmd_get:").unwrap_or(0.0) + field("cmd_set:").unwrap_or(0.0);
    Ok(LoadResult {
        requests: events,
        errors: misses,
        error_detail: match misses {
            0 => String::new(),
            count => format!("misses {count}"),
        },
        seconds,
        latency: log2_percentiles(&buckets),
        server_requests: (commands as u64).max(events),
    })
}

/// p50, p99 and p99.9 of a log2 histogram (bucket `b` holds latencies from 2^b to
/// 2^(b+1) µs), each as the upper bound of the bucket it falls in.
pub fn log2_percentiles(buckets: &[(u32, u64)]) -> Option<Latency> {
    let total: u64 = buckets.iter().map(|(_, count)| count).sum();
    if total == 0 {
        return None;
    }
    let at = |fraction: f64| -> f64 {
        let wanted = (total as f64 * fraction).ceil() as u64;
        let mut seen = 0;
        for &(bucket, count) in buckets {
            seen += count;
            if seen >= wanted {
                return 2f64.powi(bucket as i32 + 1) / 1e3;
            }
        }
        f64::NAN
    };
    Some(Latency {
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        approximate: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_wrk_scripts_result_line() {
        let stdout = "Running 2s test @ http://127.0.0.1:1\n  1 threads and 32 connections\n\
            shardcache-wrk requests=20000 duration_us=2000000 bytes=99 connect_errors=0 \
            read_errors=0 write_errors=1 status_errors=12 timeout_errors=3 p50_us=900 \
            p99_us=2500 p999_us=7100 mean_us=1000.5 max_us=9000\n";
        let result = parse_wrk_result(stdout).unwrap();
        assert_eq!(result.requests, 20_000);
        assert_eq!(result.errors, 16);
        assert_eq!(result.error_detail, "write 1, status ≥ 400 12, timeout 3");
        assert_eq!(result.seconds, 2.0);
        assert_eq!(result.per_second(), 10_000.0);
        assert_eq!(
            result.latency,
            Some(Latency {
                p50_ms: 0.9,
                p99_ms: 2.5,
                p999_ms: 7.1,
                approximate: false
            })
        );
        assert!(parse_wrk_result("no result").is_err());
        assert!(parse_wrk_result("shardcache-wrk requests=1").is_err());
    }

    #[test]
    fn builds_the_wrk_command() {
        let load = WrkLoad {
            wrk: Path::new("/usr/bin/wrk"),
            script: Path::new("/tmp/s.lua"),
            base_url: "http://127.0.0.1:9",
            operation: HttpOperation::Post,
            threads: 1,
            connections: 32,
            duration: Duration::from_millis(1500),
            keys: 100,
            value_len: 1024,
        };
        let command = wrk_command(&load);
        let args: Vec<String> = command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "-t1 -c32 -d2s --latency --timeout 10s -s /tmp/s.lua http://127.0.0.1:9 -- post 100 1024"
        );
    }

    const REDIS_OUTPUT: &str = "GET: rps=0.0 (overall: nan) avg_msec=nan (overall: nan)\r\
        GET: rps=66000.0 (overall: 66000.0) avg_msec=0.3 (overall: 0.3)\r\
        ====== GET ======\n  50000 requests completed in 0.76 seconds\n\
        Latency by percentile distribution:\n\
        0.000% <= 0.039 milliseconds (cumulative count 1)\n\
        50.000% <= 0.303 milliseconds (cumulative count 26036)\n\
        98.438% <= 0.487 milliseconds (cumulative count 49251)\n\
        99.219% <= 0.551 milliseconds (cumulative count 49631)\n\
        99.902% <= 4.295 milliseconds (cumulative count 49952)\n\
        100.000% <= 6.031 milliseconds (cumulative count 50000)\n\n\
        Cumulative distribution of latencies:\n\
        99.996% <= 5.103 milliseconds (cumulative count 49998)\n\n\
        Summary:\n  throughput summary: 66050.20 requests per second\n";

    #[test]
    fn parses_redis_benchmark() {
        let result = parse_redis_benchmark(REDIS_OUTPUT, 50_000).unwrap();
        assert_eq!(result.requests, 50_000);
        assert_eq!(result.errors, 0);
        assert!((result.per_second() - 66_050.2).abs() < 0.01);
        let latency = result.latency.unwrap();
        assert_eq!(
            (latency.p50_ms, latency.p99_ms, latency.p999_ms),
            (0.303, 0.551, 4.295)
        );
        assert!(latency.approximate, "99.219% stands for 99%");
        let with_error = format!("Error from server: OOM\n{REDIS_OUTPUT}");
        assert_eq!(parse_redis_benchmark(&with_error, 1).unwrap().errors, 1);
        assert!(parse_redis_benchmark("nothing", 1).is_err());
        assert_eq!(redis_benchmark_key(42), "key:000000000042");
    }

    const MEMASLAP_OUTPUT: &str = "servers: 127.0.0.1:21299\nGet Statistics\n\
        Type  Time(s)  Ops  TPS(ops/s)\nGlobal  2  212380  106190\n\n\
        Get Statistics (212414 events)\n   Min:        10\n   Max:     14152\n\
           Log2 Dist:\n       4:      360    13494    26874    15310\n\
               8:    35405   104802    12386     1753\n\
              12:     1254      594      182\n\n\
        Total Statistics (245182 events)\n   Log2 Dist:\n       4:     1\n\n\
        cmd_get: 212446\ncmd_set: 32768\nget_misses: 5\n\n\
        Run time: 2.0s Ops: 245214 TPS: 122591 Net_rate: 126.4M/s\n";

    #[test]
    fn parses_memaslap() {
        let result = parse_memaslap(MEMASLAP_OUTPUT, "Get").unwrap();
        assert_eq!(result.requests, 212_414);
        assert_eq!(result.seconds, 2.0);
        assert_eq!(
            (result.errors, result.error_detail.as_str()),
            (5, "misses 5")
        );
        assert_eq!(result.server_requests, 212_446 + 32_768);
        let latency = result.latency.unwrap();
        // 212,414 events: the median falls in bucket 2^9 µs (512–1023 µs).
        assert_eq!(latency.p50_ms, 1.024);
        assert!(latency.approximate);
        assert!(parse_memaslap(MEMASLAP_OUTPUT, "Set").is_err());
    }

    #[test]
    fn log2_percentiles_take_the_bucket_upper_bound() {
        let latency = log2_percentiles(&[(4, 50), (5, 49), (10, 1)]).unwrap();
        assert_eq!(latency.p50_ms, 0.032);
        assert_eq!(latency.p99_ms, 0.064);
        assert_eq!(latency.p999_ms, 2.048);
        assert_eq!(log2_percentiles(&[]), None);
    }

    #[test]
    fn memaslap_configuration_and_window() {
        assert_eq!(
            memaslap_config(1024, false),
            "key\n16 16 1\nvalue\n1024 1024 1\ncmd\n0 0.0\n1 1.0\n"
        );
        assert_eq!(memaslap_window_thousands(10_000, 32), 1);
        assert_eq!(memaslap_window_thousands(100_000, 32), 4);
        assert_eq!(whole_seconds(Duration::from_millis(200)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(2500)), 3);
    }

    #[test]
    fn measures_a_generators_cpu_time() {
        let ticks = proc_stat::clock_ticks_per_second().unwrap();
        let mut busy = Command::new("sh");
        busy.args([
            "-c",
            "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo done",
        ]);
        let run = run_generator(busy, Duration::from_secs(60), ticks).unwrap();
        assert_eq!(run.stdout.trim(), "done");
        assert!(run.cpu_seconds > 0.0, "no CPU time measured");
        assert!(run.cpu_percent() > 0.0, "{}%", run.cpu_percent());
        let mut slow = Command::new("sleep");
        slow.arg("30");
        let started = Instant::now();
        assert!(run_generator(slow, Duration::from_millis(100), ticks).is_err());
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
