//! `shardcache bench-cache` keeps working: a tiny run (small key space, small
//! stores, a few thousand requests) of a 3+2 cluster and memcached ×3 completes,
//! evicts, measures hit ratios strictly between 0 and 1 with no errors, counts
//! shards for the dead-shard fraction, runs the scan, and writes its section, JSON
//! and chart.

use std::process::Command;

#[test]
fn a_tiny_bench_cache_run_measures_hit_ratios_and_dead_shards_and_writes_its_outputs() {
    crate::support::install_test_tools(); // memcached, rsvg-convert
    let dir = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_shardcache"))
        .args([
            "bench-cache",
            "--keys",
            "4000",
            "--warm-up",
            "3000",
            "--requests",
            "3000",
            "--threads",
            "4",
            "--aux-capacity",
            "256KiB",
            "--reference-memory-mib",
            "2",
            "--setups",
            "3+2,memcached",
            "--workloads",
            "zipf,wonders",
            "--json",
            "out/cache.json",
            "--plot",
            "out/cache.png",
        ])
        .current_dir(dir.path())
        .output()
        .expect("run shardcache bench-cache");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "bench-cache failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/cache.json")).expect("the JSON"),
    )
    .expect("JSON results");
    let runs = json["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 4, "{json:#}");
    for run in runs {
        let counted = &run["counted"];
        let context = format!("{run:#}");
        assert_eq!(counted["errors"].as_u64(), Some(0), "{context}");
        let (requests, hits) = (
            counted["zipf_requests"].as_u64().unwrap(),
            counted["zipf_hits"].as_u64().unwrap(),
        );
        assert!(requests > 0 && hits > 0 && hits < requests, "{context}");
        let shardcache = run["setup"].as_str().unwrap().starts_with("shardcache");
        if shardcache {
            assert!(run["census"]["shards"].as_u64() > Some(0), "{context}");
            assert!(run["evictions"].as_u64() > Some(0), "{context}");
        }
        if run["workload"] == "zipf" {
            assert!(
                run["after_scan"]["zipf_requests"].as_u64() > Some(0),
                "{context}"
            );
        }
    }
    let ceilings = json["ceilings"].as_array().expect("ceilings");
    assert!(ceilings.iter().all(|ceiling| ceiling.as_f64() > Some(0.0)));
    let benchmarks = std::fs::read_to_string(dir.path().join("BENCHMARKS.md")).unwrap();
    assert!(benchmarks.starts_with("# Benchmarks\n\n## Hit ratio\n"));
    for row in [
        "| shardcache 3+2 |",
        "| memcached ×3 |",
        "| infinite cache (ceiling) |",
    ] {
        assert!(benchmarks.contains(row), "no {row:?} row in:\n{benchmarks}");
    }
    let png = std::fs::read(dir.path().join("out/cache.png")).expect("the chart");
    assert!(png.starts_with(b"\x89PNG"));
}
