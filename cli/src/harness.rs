//! Starting and controlling a local cluster of real master and aux processes.
//!
//! One code path for `shardcache up` and for the cluster tests: both spawn the
//! `shardcache` executable with its `aux` and `master` subcommands. Each node may be
//! started on port 0; it prints `listening on ADDR` as its first stdout line and the
//! harness reads the port from there, so tests never guess free ports. A node keeps
//! its address and its ring identity (`--node-id aux-N`) across restarts. Each node's stdin is a pipe
//! held by the harness and nodes run with `--stop-with-parent`: if the harness dies,
//! however it dies, the pipe closes and every node exits.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a node gets to print its address before it is declared failed.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a node gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What cluster to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub masters: usize,
    pub aux_nodes: usize,
    pub data_shards: u8,
    pub parity_shards: u8,
    /// Give the aux nodes `--data-shards`/`--parity-shards` too, so that they refuse
    /// shards of any other geometry (the deployed shape; on by default).
    pub aux_checks_geometry: bool,
    /// Interface every node binds (loopback by default).
    pub host: IpAddr,
    /// Port of the first master, the next ones counting up; 0 = any free port.
    pub master_port: u16,
    /// Port of the first aux node, the next ones counting up; 0 = any free port.
    pub aux_port: u16,
    /// Parent of every node's data directory (`aux-0`, …) and of `logs/`.
    pub data_dir: PathBuf,
    /// Extra flags for every aux node.
    pub aux_args: Vec<String>,
    /// Extra flags for every master.
    pub master_args: Vec<String>,
}

impl ClusterSpec {
    /// One master and six aux nodes with 3+2 coding on any free loopback ports.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ClusterSpec {
            masters: 1,
            aux_nodes: 6,
            data_shards: 3,
            parity_shards: 2,
            aux_checks_geometry: true,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            master_port: 0,
            aux_port: 0,
            data_dir: data_dir.into(),
            aux_args: Vec::new(),
            master_args: Vec::new(),
        }
    }

    fn port(base: u16, index: usize) -> anyhow::Result<u16> {
        match base {
            0 => Ok(0),
            _ => u16::try_from(usize::from(base) + index).context("port number above 65535"),
        }
    }
}

/// One running (or stopped) node process.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    subcommand: &'static str,
    /// Flags other than `--listen`, reused on restart.
    args: Vec<String>,
    pub addr: SocketAddr,
    pub log_path: PathBuf,
    /// Extra environment variables, reused on restart (e.g. libfaketime's).
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Node {
    /// Starts `exe subcommand --listen LISTEN ARGS --stop-with-parent` (any
    /// subcommand that prints `listening on ADDR` first), its stderr and the rest of
    /// its stdout going to `log_path`, and waits for its address.
    pub fn start(
        exe: &Path,
        subcommand: &'static str,
        name: String,
        listen: SocketAddr,
        args: Vec<String>,
        log_path: PathBuf,
    ) -> anyhow::Result<Node> {
        let mut node = Node {
            name,
            subcommand,
            args,
            addr: listen,
            log_path,
            env: Vec::new(),
            child: None,
        };
        node.spawn(exe)?;
        Ok(node)
    }

    /// Starts the process on `self.addr` and waits for its `listening on` line.
    fn spawn(&mut self, exe: &Path) -> anyhow::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("open log {}", self.log_path.display()))?;
        let mut child = Command::new(exe)
            .arg(self.subcommand)
            .arg("--listen")
            .arg(self.addr.to_string())
            .args(&self.args)
            .arg("--stop-with-parent")
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log.try_clone()?)
            .spawn()
            .with_context(|| format!("start {} ({})", self.name, exe.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let announced = forward_stdout(stdout, log);
        match announced.recv_timeout(START_TIMEOUT) {
            Ok(addr) => {
                self.addr = addr;
                self.child = Some(child);
                Ok(())
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not start:\n{}",
                    self.name,
                    log_tail(&self.log_path, 20)
                )
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// SIGKILL: the node gets no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within the stop timeout.
    pub fn terminate(&mut self) {
        // SIGCONT too, so that a paused node can act on the SIGTERM.
        let _ = self.signal(Signal::SIGTERM);
        let _ = self.signal(Signal::SIGCONT);
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, …) to the running node.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name))?;
        kill(Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("send {signal} to {}", self.name))
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }
}

/// Copies the child's stdout into its log, sending the address from its first
/// `listening on ADDR` line through the returned channel.
fn forward_stdout(stdout: impl Read + Send + 'static, mut log: File) -> mpsc::Receiver<SocketAddr> {
    let (announce, announced) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            match line
                .strip_prefix("listening on ")
                .and_then(|addr| addr.parse().ok())
            {
                Some(addr) => {
                    let _ = announce.send(addr);
                }
                // One write per line, so that a reader of the log never sees half
                // of one (`writeln!` on a `File` may write it in pieces).
                None => {
                    let _ = log.write_all(format!("{line}\n").as_bytes());
                }
            }
        }
    });
    announced
}

fn log_tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let length = file.metadata().map(|meta| meta.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(length.saturating_sub(64 * 1024)));
        let _ = file.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A running local cluster. Dropping it kills every node; if the drop happens
/// during a panic (a failing test), the tail of every node's log is printed first.
#[derive(Debug)]
pub struct LocalCluster {
    exe: PathBuf,
    pub spec: ClusterSpec,
    pub masters: Vec<Node>,
    pub aux: Vec<Node>,
    /// The address masters are given for each aux node: its own, unless a route
    /// said otherwise (see [`LocalCluster::start_with_aux_route`]).
    pub aux_seen_by_masters: Vec<SocketAddr>,
}

impl LocalCluster {
    /// Starts the aux nodes, then the masters pointed at them, using the
    /// `shardcache` executable `exe`.
    pub fn start(exe: impl Into<PathBuf>, spec: ClusterSpec) -> anyhow::Result<LocalCluster> {
        Self::start_with_aux_route(exe, spec, |_, addr| Ok(addr))
    }

    /// Like [`start`](Self::start), but masters reach aux node `index` at
    /// `route(index, its address)` instead of its own address: a relay in front of
    /// it, say (the benchmark's delay proxy). Called once per aux node, after the
    /// aux nodes are up and before any master starts.
    pub fn start_with_aux_route(
        exe: impl Into<PathBuf>,
        spec: ClusterSpec,
        mut route: impl FnMut(usize, SocketAddr) -> anyhow::Result<SocketAddr>,
    ) -> anyhow::Result<LocalCluster> {
        let exe = exe.into();
        let log_dir = spec.data_dir.join("logs");
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("create {}", log_dir.display()))?;
        let mut cluster = LocalCluster {
            exe,
            spec: spec.clone(),
            masters: Vec::new(),
            aux: Vec::new(),
            aux_seen_by_masters: Vec::new(),
        };
        for _ in 0..spec.aux_nodes {
            cluster.add_aux()?;
        }
        for (index, node) in cluster.aux.iter().enumerate() {
            cluster.aux_seen_by_masters[index] = route(index, node.addr)?;
        }
        for index in 0..spec.masters {
            cluster.add_master(index)?;
        }
        Ok(cluster)
    }

    /// Starts one more aux node (`aux-N`, N counting on); returns its index. Masters
    /// learn of it only when told (`POST /cluster/nodes`) or restarted.
    pub fn add_aux(&mut self) -> anyhow::Result<usize> {
        let index = self.aux.len();
        let spec = &self.spec;
        let listen = SocketAddr::new(spec.host, ClusterSpec::port(spec.aux_port, index)?);
        let name = format!("aux-{index}");
        let mut args = vec![
            "--data-dir".to_owned(),
            self.aux_data_dir(index).display().to_string(),
            "--node-id".to_owned(),
            name.clone(),
        ];
        if spec.aux_checks_geometry {
            args.extend([
                "--data-shards".to_owned(),
                spec.data_shards.to_string(),
                "--parity-shards".to_owned(),
                spec.parity_shards.to_string(),
            ]);
        }
        args.extend(spec.aux_args.iter().cloned());
        let log = spec.data_dir.join("logs").join(format!("{name}.log"));
        let node = Node::start(&self.exe, "aux", name, listen, args, log)?;
        self.aux_seen_by_masters.push(node.addr);
        self.aux.push(node);
        Ok(index)
    }

    /// Where aux node `index` keeps its snapshots.
    pub fn aux_data_dir(&self, index: usize) -> PathBuf {
        self.spec.data_dir.join(format!("aux-{index}"))
    }

    fn add_master(&mut self, index: usize) -> anyhow::Result<()> {
        let spec = &self.spec;
        let listen = SocketAddr::new(spec.host, ClusterSpec::port(spec.master_port, index)?);
        let aux_list: Vec<String> = self
            .aux_seen_by_masters
            .iter()
            .map(SocketAddr::to_string)
            .collect();
        let mut args = vec![
            "--aux".to_owned(),
            aux_list.join(","),
            "--data-shards".to_owned(),
            spec.data_shards.to_string(),
            "--parity-shards".to_owned(),
            spec.parity_shards.to_string(),
        ];
        args.extend(spec.master_args.iter().cloned());
        let log = spec
            .data_dir
            .join("logs")
            .join(format!("master-{index}.log"));
        let node = Node::start(
            &self.exe,
            "master",
            format!("master-{index}"),
            listen,
            args,
            log,
        )?;
        self.masters.push(node);
        Ok(())
    }

    /// `http://ADDR` of master `index`.
    pub fn master_url(&self, index: usize) -> String {
        format!("http://{}", self.masters[index].addr)
    }

    /// Restarts master `index` on its old address with `env` added to its
    /// environment from now on (e.g. libfaketime's, to run it with a skewed clock).
    pub fn restart_master_with_env(
        &mut self,
        index: usize,
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let exe = self.exe.clone();
        let node = &mut self.masters[index];
        node.kill();
        node.env = env
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        node.spawn(&exe)
    }

    /// Starts a stopped or killed aux node again on its old address and data dir.
    pub fn restart_aux(&mut self, index: usize) -> anyhow::Result<()> {
        let exe = self.exe.clone();
        let node = &mut self.aux[index];
        node.kill();
        node.spawn(&exe)
    }

    /// Starts aux node `index` again like [`restart_aux`](Self::restart_aux), with
    /// `flag` set to `value` from now on (say, a smaller `--capacity`).
    pub fn restart_aux_with(
        &mut self,
        index: usize,
        flag: &str,
        value: &str,
    ) -> anyhow::Result<()> {
        let args = &mut self.aux[index].args;
        match args.iter().position(|arg| arg == flag) {
            Some(at) => args[at + 1] = value.to_owned(),
            None => args.extend([flag.to_owned(), value.to_owned()]),
        }
        self.restart_aux(index)
    }

    /// Kills aux node `index`, deletes its data directory (snapshots; the identity
    /// is given by flag and survives) and starts it again, empty.
    pub fn restart_aux_empty(&mut self, index: usize) -> anyhow::Result<()> {
        self.aux[index].kill();
        let dir = self.aux_data_dir(index);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("wipe {}", dir.display()))?;
        }
        self.restart_aux(index)
    }

    /// Every node, aux nodes first.
    pub fn nodes_mut(&mut self) -> impl Iterator<Item = &mut Node> {
        self.aux.iter_mut().chain(self.masters.iter_mut())
    }

    /// Stops every node with SIGTERM (masters first), killing stragglers.
    pub fn stop(&mut self) {
        for node in self.masters.iter_mut().chain(self.aux.iter_mut()) {
            node.terminate();
        }
    }

    /// The tail of every node's log, for a failure report.
    pub fn logs(&self, lines: usize) -> String {
        self.aux
            .iter()
            .chain(&self.masters)
            .map(|node| {
                format!(
                    "----- {} ({}) -----\n{}\n",
                    node.name,
                    node.addr,
                    node.log_tail(lines)
                )
            })
            .collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "cluster logs (data in {}):\n{}",
                self.spec.data_dir.display(),
                self.logs(40)
            );
        }
        for node in self.nodes_mut() {
            node.kill();
        }
    }
}
