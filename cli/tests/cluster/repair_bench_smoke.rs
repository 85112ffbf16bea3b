//! `shardcache bench-repair` keeps working: a tiny run kills an aux node, sees its
//! shards rebuilt, reads every value back intact and writes its report.

use std::process::Command;

#[test]
fn a_small_repair_bench_run_rebuilds_shards_and_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("repair.md");
    let run = Command::new(env!("CARGO_BIN_EXE_shardcache"))
        .args([
            "bench-repair",
            "--data",
            "4MiB",
            "--value-size",
            "16KiB",
            "--output",
        ])
        .arg(&output)
        .current_dir(dir.path())
        .output()
        .expect("run shardcache bench-repair");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "bench-repair failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report = std::fs::read_to_string(&output).expect("the report is written");
    let value = |name: &str| -> String {
        let prefix = format!("| {name} | ");
        let line = report
            .lines()
            .find(|line| line.starts_with(&prefix))
            .unwrap_or_else(|| panic!("missing {prefix:?} in:\n{report}"));
        line[prefix.len()..].trim_end_matches(" |").to_owned()
    };
    let rebuilt: u64 = value("shards rebuilt")
        .parse()
        .expect("shards rebuilt is a count");
    assert!(rebuilt > 0, "no shards rebuilt in:\n{report}");
    let per_gb = value("repair seconds per GB of user data (pass duration / user GB held)");
    assert!(per_gb.ends_with(" s"), "no seconds per GB in:\n{report}");
    // 256 keys were loaded; a sample of 200 is read back and none may differ.
    assert_eq!(
        value("values read back after repair / mismatches"),
        "200 / 0",
        "in:\n{report}"
    );
}
