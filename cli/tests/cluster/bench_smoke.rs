//! `shardcache bench` keeps working: a very short run of the bare server and a 3+2
//! cluster under wrk completes, measures requests with no errors (so GETs found
//! their keys), and writes its report, JSON, chart and `BENCHMARKS.md` section.

use std::process::Command;

#[test]
fn a_short_bench_run_measures_requests_with_no_errors_and_writes_its_outputs() {
    crate::support::install_test_tools(); // wrk, rsvg-convert
    let dir = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_shardcache"))
        .args([
            "bench",
            "--duration",
            "1s",
            "--keys",
            "50",
            "--concurrency",
            "4",
            "--setups",
            "bare,3+2",
            "--output",
            "out/results.md",
            "--plot",
            "out/throughput.png",
        ])
        .current_dir(dir.path())
        .output()
        .expect("run shardcache bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report = std::fs::read_to_string(dir.path().join("out/results.md")).expect("the report");
    assert!(report.contains("command: `"), "no command in:\n{report}");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/results.json")).expect("the JSON"),
    )
    .expect("JSON results");
    let setups = json["setups"].as_array().expect("setups");
    assert_eq!(setups.len(), 2, "{json:#}");
    for setup in setups {
        for phase in ["read", "write"] {
            let measured = &setup[phase];
            let context = format!("{} {phase}: {measured:#}", setup["id"]);
            assert!(measured["requests"].as_u64() > Some(0), "{context}");
            assert!(
                measured["requests_per_second"].as_f64() > Some(0.0),
                "{context}"
            );
            assert_eq!(measured["errors"].as_u64(), Some(0), "{context}");
            // A second of serving thousands of requests spends many clock ticks.
            assert!(
                measured["server_cpu_seconds"].as_f64() > Some(0.0),
                "{context}"
            );
            let kinds: Vec<&str> = match setup["id"].as_str() {
                Some("bare") => vec!["bench"], // bench-bare,
                _ => vec!["master", "aux"],
            };
            for kind in kinds {
                assert!(
                    measured["server_cpu_us_per_request_by_kind"][kind].as_f64() > Some(0.0),
                    "{kind} in {context}"
                );
            }
        }
    }
    for row in [
        "| shardcache 3+2 | GET |",
        "| bare axum, same API (in-memory map) | POST |",
    ] {
        let line = report
            .lines()
            .find(|line| line.starts_with(row))
            .unwrap_or_else(|| panic!("no {row:?} row in:\n{report}"));
        assert!(line.ends_with("| 0 |"), "errors in {line}");
    }
    assert!(report.contains("| 3+2 GET ≥ 0.40× bare GET |"));
    let benchmarks = std::fs::read_to_string(dir.path().join("BENCHMARKS.md")).unwrap();
    assert!(benchmarks.starts_with("# Benchmarks\n\n## Throughput\n"));
    let png = std::fs::read(dir.path().join("out/throughput.png")).expect("the chart");
    assert!(png.starts_with(b"\x89PNG"));
}
