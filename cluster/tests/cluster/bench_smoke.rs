//! `shardcache bench` keeps working: a very short run completes with no errors and
//! writes its report.

use std::process::Command;

#[test]
fn a_short_bench_run_writes_its_report_with_no_errors() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("results.md");
    let run = Command::new(env!("CARGO_BIN_EXE_shardcache"))
        .args([
            "bench",
            "--duration",
            "200ms",
            "--keys",
            "50",
            "--concurrency",
            "4",
            "--output",
        ])
        .arg(&output)
        .current_dir(dir.path())
        .output()
        .expect("run shardcache bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report = std::fs::read_to_string(&output).expect("the report is written");
    for row in [
        "| GET, 4+2 erasure coding |",
        "| GET, 3+2 erasure coding |",
        "| GET, 3+2 erasure coding, reads not batched |",
        "| SET, 3-way replication |",
        "| 3+2 erasure coding |",
    ] {
        assert!(report.contains(row), "missing {row:?} in:\n{report}");
    }
    // Every load row ends with its error count, which must be 0.
    for line in report.lines().filter(|line| line.contains(" ms |")) {
        assert!(line.ends_with("| 0 |"), "errors in {line}");
    }
}
