//! The external programs of the end-to-end tests: finding (or installing) them,
//! running them as child processes that stop with the test, and reading the
//! deployment files they validate.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Where the external programs are.
pub struct Tools {
    pub nginx: PathBuf,
    pub prometheus: PathBuf,
    pub docker_compose: PathBuf,
    /// The Python venv with locust, kubernetes-validate and grafana-foundation-sdk.
    pub venv: PathBuf,
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the cluster crate sits in the workspace root")
        .to_owned()
}

/// Runs `scripts/install-test-tools` once per test process (it installs only what
/// is missing) and finds the programs.
pub fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let root = repo_root();
        let venv = root.join("target/e2e-venv");
        let status = Command::new(root.join("scripts/install-test-tools"))
            .arg(&venv)
            .status()
            .expect("run scripts/install-test-tools");
        assert!(
            status.success(),
            "scripts/install-test-tools failed ({status}); it needs apt-get (as root or with sudo) and PyPI"
        );
        Tools {
            nginx: find_program("nginx"),
            prometheus: find_program("prometheus"),
            docker_compose: find_program("docker-compose"),
            venv,
        }
    })
}

/// `name` on PATH, or in /usr/sbin (nginx, when PATH is a user's).
fn find_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed"))
}

/// A free loopback port, for programs that cannot bind port 0 and report it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a free port")
        .port()
}

/// Runs `"$@"` until its stdin closes, then stops it with SIGTERM. The test holds
/// the other end of stdin, so the program stops when the test drops the [`Daemon`]
/// and also when the test process dies without running any destructor.
const STOP_WITH_STDIN: &str = r#""$@" </dev/null & program=$!
cat >/dev/null
kill -TERM "$program" 2>/dev/null
wait "$program""#;

/// A program (nginx, Prometheus) run under [`STOP_WITH_STDIN`], stopped when
/// dropped; its output goes to `<name>.log` in its directory, printed if the test
/// fails.
pub struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    pub fn start(name: &'static str, program: &Path, args: &[String], dir: &Path) -> Daemon {
        let log = dir.join(format!("{name}.log"));
        let file = File::create(&log).expect("create log");
        let child = Command::new("sh")
            .args(["-c", STOP_WITH_STDIN, name])
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(file.try_clone().expect("clone log"))
            .stderr(file)
            // A group of its own, so the last resort below can kill program and wrapper.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|error| panic!("start {}: {error}", program.display()));
        Daemon { name, child, log }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("----- {} log -----\n{}", self.name, tail.join("\n"));
        }
        // Closing stdin makes the wrapper SIGTERM the program and wait for it.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Still running after 10 s: kill the wrapper's whole family.
        let _ = kill(Pid::from_raw(-(self.child.id() as i32)), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What matters about `docker-compose.yml` once docker-compose has resolved it:
/// which services publish ports, how many masters, how many aux nodes keep their
/// data on a named volume, and which services have no healthcheck.
pub fn compose_shape(root: &Path) -> Value {
    const SHAPE: &str = r#"
import json, sys, yaml
services = yaml.safe_load(sys.stdin)["services"]
def runs(service, binary):
    command = service.get("command") or []
    return binary in (command if isinstance(command, list) else command.split())
def named_volume_at(service, target):
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "volume" and volume.get("target") == target:
                return True
        elif volume.split(":")[1] == target and not volume.startswith((".", "/")):
            return True
    return False
print(json.dumps({
    "published": sorted(name for name, s in services.items() if s.get("ports")),
    "masters": sum(runs(s, "shardcache-master") for s in services.values()),
    "aux_with_volume": sum(runs(s, "shardcache-aux") and named_volume_at(s, "/var/lib/shardcache")
                           for s in services.values()),
    "without_healthcheck": sorted(name for name, s in services.items() if "healthcheck" not in s),
}))
"#;
    let resolved = Command::new(&tools().docker_compose)
        .args(["-f", "docker-compose.yml", "config"])
        .current_dir(root)
        .output()
        .expect("run docker-compose config");
    assert!(resolved.status.success());
    let mut python = Command::new(tools().venv.join("bin/python"))
        .args(["-c", SHAPE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python");
    std::io::Write::write_all(python.stdin.as_mut().unwrap(), &resolved.stdout).unwrap();
    drop(python.stdin.take());
    let output = python.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "reading the resolved compose file failed"
    );
    serde_json::from_slice(&output.stdout).expect("shape JSON")
}

/// The `nginx.conf: |` block of the ConfigMap in `path`, unindented.
pub fn configmap_nginx_conf(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read the nginx manifest");
    let mut lines = text
        .lines()
        .skip_while(|line| line.trim() != "nginx.conf: |");
    lines.next().expect("a `nginx.conf: |` block");
    let block: Vec<&str> = lines
        .take_while(|line| line.is_empty() || line.starts_with("    "))
        .map(|line| line.strip_prefix("    ").unwrap_or(line))
        .collect();
    block.join("\n").trim_end().to_owned() + "\n"
}
