//! Unit tests of the pure parts: targets, rendering, arithmetic.

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
