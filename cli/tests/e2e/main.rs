//! End-to-end: shardcache with the real programs it is operated with. Real aux
//! nodes and two masters behind the repository's `nginx.conf` (Debian's nginx),
//! scraped by Prometheus, checked with every Grafana panel query, loaded with the
//! Locust file, and the docker-compose and Kubernetes files validated by
//! docker-compose and kubernetes-validate.
//!
//! The tools are installed when missing by `scripts/install-test-tools` (apt and a
//! pinned Python venv under `target/`), so `cargo test` needs nothing else. Every
//! process started here is a child of the test and is stopped by its PID.

#[allow(dead_code)]
#[path = "../cluster/support.rs"]
mod support;

mod tools;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use support::{wait_until, TestCluster};
use tools::{free_port, repo_root, tools, Daemon};

/// `nginx.conf` with its upstream servers (the lines between the markers) replaced.
fn with_upstream(template: &str, servers: &[String]) -> String {
    let mut out = Vec::new();
    let mut inside = false;
    for line in template.lines() {
        match line.trim() {
            "# BEGIN masters" => {
                inside = true;
                out.push(line.to_owned());
                let indent = &line[..line.len() - line.trim_start().len()];
                out.extend(servers.iter().map(|server| format!("{indent}{server}")));
            }
            "# END masters" => {
                inside = false;
                out.push(line.to_owned());
            }
            _ if inside => {}
            _ => out.push(line.to_owned()),
        }
    }
    assert!(!inside, "nginx.conf: # BEGIN masters without # END masters");
    out.join("\n") + "\n"
}

/// The repository's `nginx.conf` as the test runs it: on `listen`, in front of
/// `masters`, with its temp paths under `prefix`.
fn render_nginx_conf(listen: SocketAddr, masters: &[SocketAddr], prefix: &Path) -> String {
    let template = std::fs::read_to_string(repo_root().join("nginx.conf")).expect("nginx.conf");
    assert_eq!(
        template.matches("listen 80;").count(),
        1,
        "one `listen 80;` line"
    );
    let servers: Vec<String> = masters
        .iter()
        .map(|addr| format!("server {addr} max_fails=1 fail_timeout=5s;"))
        .collect();
    let temp_paths: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|kind| {
            let dir = prefix.join("temp").join(kind);
            format!("    {kind}_temp_path {};\n", dir.display())
        })
        .collect();
    with_upstream(&template, &servers)
        .replace("listen 80;", &format!("listen {listen};"))
        .replacen("http {\n", &format!("http {{\n{temp_paths}"), 1)
}

/// Starts nginx from the rendered config in `prefix` and waits until it answers.
async fn start_nginx(prefix: &Path, listen: SocketAddr, masters: &[SocketAddr]) -> Daemon {
    let conf = prefix.join("nginx.conf");
    std::fs::create_dir_all(prefix.join("temp")).unwrap();
    std::fs::write(&conf, render_nginx_conf(listen, masters, prefix)).unwrap();
    let pid_file = format!("pid {};", prefix.join("nginx.pid").display());
    let args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["-p", prefix.to_str().unwrap(), "-e", "stderr", "-c"]
            .iter()
            .map(|arg| arg.to_string())
            .collect();
        args.push(conf.display().to_string());
        args.extend(extra.iter().map(|arg| arg.to_string()));
        args
    };
    let check = std::process::Command::new(&tools().nginx)
        .args(args(&["-t", "-g", &pid_file]))
        .output()
        .expect("run nginx -t");
    assert!(
        check.status.success(),
        "nginx -t rejected the rendered nginx.conf:\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let daemon = Daemon::start(
        "nginx",
        &tools().nginx,
        &args(&["-g", &format!("daemon off; {pid_file}")]),
        prefix,
    );
    let http = reqwest::Client::new();
    wait_until("nginx to answer", Duration::from_secs(10), || async {
        let url = format!("http://{listen}/healthz");
        matches!(http.get(url).send().await, Ok(response) if response.status() == StatusCode::OK)
    })
    .await;
    daemon
}

/// Starts Prometheus scraping every node once a second, under the job names the
/// dashboards use, and waits until it is ready.
async fn start_prometheus(dir: &Path, listen: SocketAddr, cluster: &TestCluster) -> Daemon {
    let targets = |addrs: Vec<SocketAddr>| -> String {
        let quoted: Vec<String> = addrs.iter().map(|addr| format!("\"{addr}\"")).collect();
        quoted.join(", ")
    };
    let masters = targets(
        cluster
            .cluster
            .masters
            .iter()
            .map(|node| node.addr)
            .collect(),
    );
    let aux = targets(cluster.cluster.aux.iter().map(|node| node.addr).collect());
    let shipped = std::fs::read_to_string(repo_root().join("deploy/prometheus.yml")).unwrap();
    for job in ["shardcache-master", "shardcache-aux"] {
        assert!(
            shipped.contains(&format!("job_name: {job}")),
            "deploy/prometheus.yml lacks {job}"
        );
    }
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
         scrape_configs:\n\
         \x20 - job_name: shardcache-master\n    static_configs:\n      - targets: [{masters}]\n\
         \x20 - job_name: shardcache-aux\n    static_configs:\n      - targets: [{aux}]\n"
    );
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let args = [
        format!("--config.file={}", config_path.display()),
        format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
        format!("--web.listen-address={listen}"),
    ];
    let daemon = Daemon::start("prometheus", &tools().prometheus, &args, dir);
    let http = reqwest::Client::new();
    wait_until("Prometheus to be ready", Duration::from_secs(30), || async {
        let url = format!("http://{listen}/-/ready");
        matches!(http.get(url).send().await, Ok(response) if response.status() == StatusCode::OK)
    })
    .await;
    daemon
}

/// Requests through nginx: the data API works, keys pass byte for byte, nothing
/// else is exposed, and nginx's own errors are JSON.
async fn exercise_nginx(http: &reqwest::Client, nginx: &str) -> Vec<(String, String)> {
    let mut written = Vec::new();
    for index in 0..300 {
        let key = format!("e2e/key {index} %?#🍒");
        let value = format!("value {index} \"quoted\" \u{e9}");
        let response = http
            .post(format!("{nginx}/data"))
            .json(&json!({"key": key, "value": value, "ttl": if index % 10 == 0 { Some(1) } else { None }}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{}",
            response.text().await.unwrap()
        );
        if index % 10 != 0 {
            written.push((key, value));
        }
    }
    for (key, value) in &written {
        let body = get_json(
            http,
            &format!("{nginx}/data/{}", encode(key)),
            StatusCode::OK,
        )
        .await;
        assert_eq!(body["key"], key.as_str());
        assert_eq!(
            body["value"],
            value.as_str(),
            "{key}: wrong bytes through nginx"
        );
    }
    for index in 0..20 {
        get_json(
            http,
            &format!("{nginx}/data/e2e-missing-{index}"),
            StatusCode::NOT_FOUND,
        )
        .await;
    }
    let (key, _) = written.pop().unwrap();
    let deleted = http
        .delete(format!("{nginx}/data/{}", encode(&key)))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    get_json(
        http,
        &format!("{nginx}/data/{}", encode(&key)),
        StatusCode::NOT_FOUND,
    )
    .await;

    // Only /data is public.
    for path in [
        "/cluster",
        "/metrics",
        "/health",
        "/ready",
        "/x/..%2Fcluster",
    ] {
        let body = get_json(http, &format!("{nginx}{path}"), StatusCode::NOT_FOUND).await;
        assert_eq!(body, json!({"error": "not found"}), "{path}");
    }
    let admin = http
        .post(format!("{nginx}/cluster/nodes"))
        .json(&json!({"address": "127.0.0.1:1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), StatusCode::NOT_FOUND);
    // Bad input: the master's 400 passes through; nginx's own 413 is JSON too.
    let bad = http
        .post(format!("{nginx}/data"))
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(bad.json::<Value>().await.unwrap()["error"].is_string());
    // One byte over the masters' limit: refused by nginx, as JSON.
    let master_limit = 2 * (8 << 20) + 6 * 1024 + 4096;
    let huge = http
        .post(format!("{nginx}/data"))
        .body(vec![b'x'; master_limit + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        huge.json::<Value>().await.unwrap(),
        json!({"error": "request body too large"}),
        "nginx refuses it"
    );
    written
}

fn encode(key: &str) -> String {
    shardcache_common::wire::encode_key(key)
}

async fn get_json(http: &reqwest::Client, url: &str, expected: StatusCode) -> Value {
    let response = http.get(url).send().await.unwrap();
    let status = response.status();
    let content_type = response.headers().get("content-type").cloned();
    let text = response.text().await.unwrap();
    assert_eq!(status, expected, "GET {url}: {text}");
    assert_eq!(
        content_type.as_ref().and_then(|value| value.to_str().ok()),
        Some("application/json"),
        "GET {url}"
    );
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("GET {url}: not JSON: {text}"))
}

/// Runs `loadtest/run.sh` against `host` for `duration` with `extra` environment and
/// arguments; returns whether it passed, and its output.
fn run_locust(
    host: &str,
    dir: &Path,
    duration: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> (bool, String) {
    let output = std::process::Command::new(repo_root().join("loadtest/run.sh"))
        .arg(host)
        .args(args)
        .current_dir(dir)
        .env("LOCUST", tools().venv.join("bin/locust"))
        .env("USERS", "10")
        .env("SPAWN_RATE", "10")
        .env("DURATION", duration)
        .env("CSV_PREFIX", dir.join("locust"))
        .envs(env.iter().copied())
        .output()
        .expect("run loadtest/run.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Runs `grafana/check_dashboards.py` with `args`; returns (success, output).
fn check_dashboards(args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(tools().venv.join("bin/python"))
        .arg(repo_root().join("grafana/check_dashboards.py"))
        .args(args)
        .output()
        .expect("run check_dashboards.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_behind_nginx_under_locust_with_every_dashboard_query_answered() {
    let work = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start_with(|spec| spec.masters = 2);
    let masters: Vec<SocketAddr> = cluster
        .cluster
        .masters
        .iter()
        .map(|node| node.addr)
        .collect();

    let nginx_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let nginx_dir = work.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).unwrap();
    let _nginx = start_nginx(&nginx_dir, nginx_addr, &masters).await;
    let prometheus_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let prometheus_dir = work.path().join("prometheus");
    std::fs::create_dir_all(&prometheus_dir).unwrap();
    let _prometheus = start_prometheus(&prometheus_dir, prometheus_addr, &cluster).await;

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let nginx = format!("http://{nginx_addr}");
    let written = exercise_nginx(&http, &nginx).await;

    // One aux node dies before the load: reads are served degraded, its shards are
    // rebuilt elsewhere, and the recovery dashboard has something to show.
    cluster.cluster.aux[5].kill();
    let (ok, locust) = run_locust(&nginx, work.path(), "20s", &[], &[]);
    assert!(ok, "Locust reported failures:\n{locust}");
    println!("---- Locust (loadtest/run.sh {nginx}) ----\n{locust}");

    let prometheus = format!("http://{prometheus_addr}");
    let (ok, report) = check_dashboards(&["--prometheus", &prometheus, "--wait", "60"]);
    println!("---- check_dashboards.py ----\n{report}");
    assert!(ok, "a dashboard query failed:\n{report}");

    // The check fails when a panel names a metric nobody exports.
    let broken = work.path().join("broken-dashboards");
    std::fs::create_dir_all(&broken).unwrap();
    let overview =
        std::fs::read_to_string(repo_root().join("grafana/dashboards/overview.json")).unwrap();
    assert!(overview.contains("shardcache_master_reads_total"));
    std::fs::write(
        broken.join("overview.json"),
        overview.replace(
            "shardcache_master_reads_total",
            "shardcache_master_reeds_total",
        ),
    )
    .unwrap();
    let (ok, report) = check_dashboards(&[
        "--prometheus",
        &prometheus,
        "--dashboards",
        broken.to_str().unwrap(),
    ]);
    assert!(!ok, "a dashboard with a missing metric passed:\n{report}");
    assert!(
        report.contains("shardcache_master_reeds_total does not exist"),
        "{report}"
    );

    // A master dies: nginx fails over, for reads and for writes.
    cluster.cluster.masters[0].kill();
    for (key, value) in written.iter().take(50) {
        let body = get_json(
            &http,
            &format!("{nginx}/data/{}", encode(key)),
            StatusCode::OK,
        )
        .await;
        assert_eq!(body["value"], value.as_str());
    }
    let response = http
        .post(format!("{nginx}/data"))
        .json(&json!({"key": "after-failover", "value": "still writable"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// The load test's value check is real: a value whose embedded digest does not
/// match fails the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locust_fails_the_run_when_a_value_is_corrupted() {
    let cluster = TestCluster::start();
    // Every key of the load test's key space holds a forged value; read-heavy users
    // overwrite a few of them, but the GETs cannot all miss the rest.
    let forged = format!("sc1:{}:{}", "0".repeat(64), "x".repeat(100));
    for index in 0..50 {
        let (status, body) = cluster.set(&format!("lt:{index}"), &forged).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let work = tempfile::tempdir().unwrap();
    let (ok, output) = run_locust(
        &cluster.master(),
        work.path(),
        "3s",
        &[("SHARDCACHE_KEYS", "50")],
        &["ReadHeavyUser"],
    );
    assert!(!ok, "Locust passed a corrupted value:\n{output}");
    assert!(output.contains("digest mismatch"), "{output}");
}

#[test]
fn compose_and_kubernetes_files_pass_their_validators() {
    let tools = tools();
    let root = repo_root();
    let compose = std::process::Command::new(&tools.docker_compose)
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(&root)
        .output()
        .expect("run docker-compose");
    assert!(
        compose.status.success(),
        "docker-compose config -q:\n{}",
        String::from_utf8_lossy(&compose.stderr)
    );
    let shape = tools::compose_shape(&root);
    assert_eq!(
        shape["published"],
        json!(["grafana", "nginx", "prometheus"]),
        "{shape}"
    );
    assert!(shape["masters"].as_u64().unwrap() >= 2, "{shape}");
    assert!(shape["aux_with_volume"].as_u64().unwrap() >= 6, "{shape}");
    assert_eq!(
        shape["without_healthcheck"],
        json!(["grafana", "prometheus"]),
        "{shape}"
    );

    let manifests: Vec<String> = std::fs::read_dir(root.join("deploy/k8s"))
        .unwrap()
        .map(|entry| entry.unwrap().path().display().to_string())
        .filter(|path| path.ends_with(".yaml"))
        .collect();
    assert!(manifests.len() >= 3);
    let validate = std::process::Command::new(tools.venv.join("bin/kubernetes-validate"))
        .arg("--strict")
        .args(&manifests)
        .output()
        .expect("run kubernetes-validate");
    assert!(
        validate.status.success(),
        "kubernetes-validate --strict:\n{}{}",
        String::from_utf8_lossy(&validate.stdout),
        String::from_utf8_lossy(&validate.stderr)
    );

    // The Kubernetes nginx ConfigMap is nginx.conf with the Service as upstream.
    let template = std::fs::read_to_string(root.join("nginx.conf")).unwrap();
    let expected = with_upstream(&template, &["server shardcache-master:8080;".into()]);
    let embedded = tools::configmap_nginx_conf(&root.join("deploy/k8s/nginx.yaml"));
    assert!(
        embedded == expected,
        "deploy/k8s/nginx.yaml has drifted from nginx.conf; regenerate its ConfigMap"
    );

    let (ok, report) = check_dashboards(&["--schema-only"]);
    assert!(ok, "dashboards:\n{report}");
}
