//! Invalid configuration: the process exits non-zero with one clear `error:` line
//! (clap may add a usage hint below it), never a panic or a backtrace.

use std::process::Command;

fn run_shardcache(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_shardcache"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run shardcache");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stderr)
}

fn assert_clear_failure(args: &[&str], expected: &str) {
    let (code, stderr) = run_shardcache(args);
    assert_ne!(code, 0, "{args:?} should fail");
    let first_line = stderr.lines().next().unwrap_or_default();
    assert!(
        first_line.starts_with("error:"),
        "{args:?}: first line {first_line:?}"
    );
    assert!(
        stderr.contains(expected),
        "{args:?}: {stderr:?} should mention {expected:?}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{args:?}: {stderr}"
    );
    let meaningful_lines = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .count();
    // clap adds a usage line and a --help hint to its own errors.
    assert!(meaningful_lines <= 4, "{args:?}: too chatty:\n{stderr}");
}

#[test]
fn invalid_configuration_exits_with_one_clear_line() {
    let six_aux = "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4,127.0.0.1:5,127.0.0.1:6";
    let master = |extra: &[&'static str]| {
        let mut args = vec!["master", "--listen", "127.0.0.1:0", "--aux", six_aux];
        args.extend_from_slice(extra);
        args
    };
    assert_clear_failure(
        &master(&["--data-shards", "0"]),
        "--data-shards must be at least 1",
    );
    assert_clear_failure(
        &master(&["--data-shards", "5", "--parity-shards", "2"]),
        "needs at least 7 distinct aux nodes",
    );
    assert_clear_failure(&master(&["--write-quorum", "9"]), "--write-quorum");
    assert_clear_failure(
        &master(&["--read-batch-max", "0"]),
        "--read-batch-max must be between 1 and 1024",
    );
    assert_clear_failure(
        &master(&["--read-batch-max", "1025"]),
        "--read-batch-max must be between 1 and 1024",
    );
    assert_clear_failure(
        &master(&["--read-batch-in-flight", "0"]),
        "--read-batch-in-flight must be at least 1",
    );
    assert_clear_failure(&master(&["--shard-timeout", "soon"]), "invalid duration");
    assert_clear_failure(&master(&["--max-value-size", "lots"]), "invalid size");
    assert_clear_failure(&["master", "--listen", "127.0.0.1:0"], "--aux");
    assert_clear_failure(
        &["aux", "--listen", "127.0.0.1:0", "--capacity", "lots"],
        "invalid size",
    );
    assert_clear_failure(
        &["aux", "--listen", "127.0.0.1:0", "--capacity", "1KiB"],
        "too small",
    );
    assert_clear_failure(
        &["aux", "--listen", "127.0.0.1:0", "--data-shards", "3"],
        "--parity-shards",
    );
    assert_clear_failure(
        &[
            "aux",
            "--listen",
            "127.0.0.1:0",
            "--data-shards",
            "0",
            "--parity-shards",
            "2",
        ],
        "--data-shards must be at least 1",
    );
    assert_clear_failure(&["up", "--aux-nodes", "4"], "needs at least 5 aux nodes");
    assert_clear_failure(
        &["up", "--data-shards", "0"],
        "--data-shards must be at least 1",
    );
}

#[test]
fn a_port_in_use_is_reported_plainly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_clear_failure(
        &[
            "aux",
            "--listen",
            &addr,
            "--data-dir",
            std::env::temp_dir().to_str().unwrap(),
        ],
        "address already in use",
    );
}
