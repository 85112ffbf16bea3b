//! What the benchmarks (`bench`, `bench-memory`, `bench-repair`) share: the keys
//! and values they load, third-party servers run as watched children
//! ([`ChildServer`]: Redis, memcached, nginx), installing missing Debian packages,
//! and writing reports (a command line a shell can rerun, today's date, one
//! section of a Markdown file replaced in place).

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::bench::proc_stat;

// ---------------------------------------------------------------------------
// Keys and values
// ---------------------------------------------------------------------------

/// Every benchmark key is this long: `k` and 15 digits.
pub const KEY_LEN: usize = 16;

/// The key of index `index`: 16 bytes. `cli/bench/*.lua` builds the same.
pub fn key(index: u64) -> String {
    format!("k{index:015}")
}

/// A value of `len` lowercase letters that differs from key to key: letter `j` is
/// `'a' + (index + j) mod 26`. `cli/bench/*.lua` builds the same.
pub fn value(index: u64, len: usize) -> String {
    (0..len)
        .map(|offset| char::from(b'a' + ((index as usize + offset) % 26) as u8))
        .collect()
}

/// Appends a Redis `SET key value` in RESP.
pub fn encode_redis_set(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    out.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
    for part in [key, value] {
        out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends a memcached text-protocol `set` (no flags, no expiry).
pub fn encode_memcached_set(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    out.extend_from_slice(b"set ");
    out.extend_from_slice(key);
    out.extend_from_slice(format!(" 0 0 {}\r\n", value.len()).as_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

// ---------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------

/// The date of `now` in UTC as `YYYY-MM-DD` (civil-from-days, proleptic Gregorian).
pub fn utc_date(now: SystemTime) -> String {
    let seconds = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    format!("{year:04}-{month:02}-{day:02}")
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The command line as one a shell would run again (arguments quoted when needed).
pub fn shell_command(args: &[String]) -> String {
    args.iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            match plain {
                true => arg.clone(),
                false => format!("'{}'", arg.replace('\'', r"'\''")),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `doc` with the section under `heading` (up to the next `## ` heading) replaced by
/// `section`; a missing section goes just before the section headed `before` when
/// there is one, else at the end; a new document gets a title.
pub fn replace_or_insert_section(
    doc: &str,
    heading: &str,
    section: &str,
    before: Option<&str>,
) -> String {
    let section = format!("{}\n", section.trim_end());
    if doc.trim().is_empty() {
        return format!("# Benchmarks\n\n{section}");
    }
    let lines: Vec<&str> = doc.split_inclusive('\n').collect();
    let find = |wanted: &str| lines.iter().position(|line| line.trim_end() == wanted);
    let (start, end) = match find(heading) {
        Some(start) => {
            let end = lines[start + 1..]
                .iter()
                .position(|line| line.starts_with("## "))
                .map_or(lines.len(), |offset| start + 1 + offset);
            (start, end)
        }
        None => match before.and_then(find) {
            Some(at) => (at, at),
            None => return format!("{}\n\n{section}", doc.trim_end()),
        },
    };
    let before: String = lines[..start].concat();
    let after: String = lines[end..].concat();
    match after.is_empty() {
        true => format!("{before}{section}"),
        false => format!("{before}{section}\n{after}"),
    }
}

/// Replaces (or inserts, before the section headed `before`) the section headed
/// `heading` of the markdown file at `path` with `section`; a missing file is
/// created.
pub fn write_section(
    path: &Path,
    heading: &str,
    section: &str,
    before: Option<&str>,
) -> anyhow::Result<()> {
    let doc = match std::fs::read_to_string(path) {
        Ok(doc) => doc,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(error).with_context(|| format!("read {}", path.display())),
    };
    write_file(
        path,
        &replace_or_insert_section(&doc, heading, section, before),
    )
}

/// Writes `text` to `path`, creating its directory.
pub fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

/// Prints a report and writes it to `output`, creating its directory.
pub fn print_and_write(report: &str, output: &Path) -> anyhow::Result<()> {
    println!("{report}");
    write_file(output, report)?;
    println!("written to {}", output.display());
    Ok(())
}

/// Copies the running executable into `dir` and returns the copy's path, so that
/// every node of a benchmark runs the same build even if it is rebuilt meanwhile.
pub fn copy_executable(dir: &Path) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("find the shardcache executable")?;
    let copy = dir.join("shardcache");
    std::fs::copy(&exe, &copy)
        .with_context(|| format!("copy {} to {}", exe.display(), copy.display()))?;
    Ok(copy)
}

// ---------------------------------------------------------------------------
// Third-party servers as children
// ---------------------------------------------------------------------------

/// How long a child server gets to accept connections.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a child server gets to exit after SIGTERM before it is killed.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A third-party server (Redis, memcached, nginx) started by a benchmark. It runs
/// under a `sh` watchdog whose stdin is a pipe held here: when the benchmark dies,
/// however it dies, the pipe closes and the watchdog stops the server with SIGTERM
/// (which also stops nginx's workers). Dropping this stops the server by PID —
/// SIGTERM, then SIGKILL for it and its children if it lingers — and lets the
/// watchdog exit.
pub struct ChildServer {
    pub name: String,
    /// The server's own process (nginx's master).
    pub pid: u32,
    pub addr: SocketAddr,
    log: PathBuf,
    watchdog: Child,
}

/// `$1` is the log; the rest is the server's command line. Prints the server's PID,
/// then waits for end of file on stdin and stops the server.
const WATCHDOG: &str = r#"log=$1; shift; "$@" >>"$log" 2>&1 </dev/null & echo "$!"; read -r _; kill -TERM "$!" 2>/dev/null; wait"#;

impl ChildServer {
    /// Starts `program args` (its output appended to `log`) and waits until it
    /// accepts TCP connections on `addr`.
    pub fn start(
        name: &str,
        program: &Path,
        args: &[String],
        addr: SocketAddr,
        log: &Path,
    ) -> anyhow::Result<ChildServer> {
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(log)
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {}", program.display()))?;
        let stdout = watchdog
            .stdout
            .take()
            .context("take the watchdog's stdout")?;
        let mut first_line = String::new();
        // The watchdog prints the PID at once; its stdout closes only if it dies.
        BufReader::new(stdout.take(64))
            .read_line(&mut first_line)
            .context("read the server's pid")?;
        let Ok(pid) = first_line.trim().parse::<u32>() else {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
            bail!(
                "{} did not start (watchdog said {first_line:?})",
                program.display()
            );
        };
        let server = ChildServer {
            name: name.to_owned(),
            pid,
            addr,
            log: log.to_owned(),
            watchdog,
        };
        server.wait_until_accepting()?;
        Ok(server)
    }

    fn wait_until_accepting(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            ensure!(
                !proc_stat::has_exited(self.pid),
                "{} exited at start:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "{} did not accept connections on {} within {SERVER_START_TIMEOUT:?}:\n{}",
            self.name,
            self.addr,
            self.log_tail()
        )
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let children = proc_stat::children_of(self.pid);
        signal(self.pid, Signal::SIGTERM);
        let deadline = Instant::now() + SERVER_STOP_TIMEOUT;
        while !proc_stat::has_exited(self.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for pid in children.into_iter().chain([self.pid]) {
            if !proc_stat::has_exited(pid) {
                signal(pid, Signal::SIGKILL);
            }
        }
        // Closing the pipe lets the watchdog reap the server and finish; it is
        // killed if it lingers.
        drop(self.watchdog.stdin.take());
        for _ in 0..100 {
            if let Ok(Some(_)) = self.watchdog.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

fn signal(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind a free loopback port")?;
    Ok(listener.local_addr().context("read the free port")?.port())
}

/// redis-server's command line: loopback `port`, no persistence, in the foreground.
pub fn redis_args(port: u16) -> Vec<String> {
    let args = [
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        "--dir",
        "/tmp",
    ];
    args.iter().map(|arg| arg.to_string()).collect()
}

/// memcached's command line: loopback `port`, `memory_mib` of item memory, no UDP.
pub fn memcached_args(port: u16, memory_mib: u64) -> Vec<String> {
    let mut args: Vec<String> = [
        "-l",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-m",
        &memory_mib.to_string(),
        "-U",
        "0",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    // memcached refuses to run as root unless told which user to be.
    if running_as_root() {
        args.extend(["-u".to_owned(), "root".to_owned()]);
    }
    args
}

// ---------------------------------------------------------------------------
// Installing what is missing
// ---------------------------------------------------------------------------

pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("Uid:"))?;
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// Where `program` is: on the PATH, or in /usr/sbin or /usr/bin (nginx is in
/// /usr/sbin, which a user's PATH may lack).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// [`find_program`], or an error naming the Debian package.
pub fn program_path(program: &str, package: &str) -> anyhow::Result<PathBuf> {
    find_program(program)
        .with_context(|| format!("{program} is not installed (Debian package {package})"))
}

/// Installs the Debian package of every program that is not on the PATH
/// (`apt-get update` first; as root, or through sudo).
pub fn ensure_installed(programs: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = programs
        .iter()
        .filter(|(program, _)| find_program(program).is_none())
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    println!("installing {} with apt-get", missing.join(" "));
    let mut packages = missing.clone();
    if missing.contains(&"librsvg2-bin") {
        packages.push("fonts-dejavu-core");
    }
    apt_get(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(packages);
    apt_get(&install)?;
    for (program, package) in programs {
        ensure!(
            find_program(program).is_some(),
            "{program} is still missing after installing {package}"
        );
    }
    Ok(())
}

fn apt_get(args: &[&str]) -> anyhow::Result<()> {
    let mut command = match running_as_root() {
        true => Command::new("apt-get"),
        false => {
            let mut sudo = Command::new("sudo");
            sudo.arg("apt-get");
            sudo
        }
    };
    let status = command
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .context("run apt-get")?;
    ensure!(
        status.success(),
        "apt-get {} failed ({status})",
        args.join(" ")
    );
    Ok(())
}

/// The first line `program version_args` prints (stdout, else stderr), or "".
pub fn program_version(program: &Path, version_args: &[&str]) -> String {
    Command::new(program)
        .args(version_args)
        .stdin(Stdio::null())
        .output()
        .map(|output| {
            let text = match output.stdout.is_empty() {
                true => output.stderr,
                false => output.stdout,
            };
            let text = String::from_utf8_lossy(&text);
            text.lines().next().unwrap_or_default().trim().to_owned()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replace_section(doc: &str, heading: &str, section: &str) -> String {
        replace_or_insert_section(doc, heading, section, None)
    }

    #[test]
    fn keys_are_sixteen_bytes_and_values_their_length() {
        assert_eq!(key(0), "k000000000000000");
        assert_eq!(key(123_456).len(), KEY_LEN);
        assert_eq!(value(1, 5), "bcdef");
        assert_eq!(value(25, 3), "zab");
        assert_eq!(value(7, 1000).len(), 1000);
    }

    #[test]
    fn encodes_redis_and_memcached_sets() {
        let mut out = Vec::new();
        encode_redis_set(&mut out, b"k1", b"hello");
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$2\r\nk1\r\n$5\r\nhello\r\n");
        out.clear();
        encode_memcached_set(&mut out, b"k1", b"hello");
        assert_eq!(out, b"set k1 0 0 5\r\nhello\r\n");
    }

    #[test]
    fn replaces_only_the_named_section() {
        let doc = "# Benchmarks\n\n## Throughput\n\nfast\n\n## Memory\n\nold\n\n## Later\n\nkept\n";
        let new = replace_section(doc, "## Memory", "## Memory\n\nnew\n");
        assert_eq!(
            new,
            "# Benchmarks\n\n## Throughput\n\nfast\n\n## Memory\n\nnew\n\n## Later\n\nkept\n"
        );
        let last = replace_section("# B\n\n## Memory\n\nold\n", "## Memory", "## Memory\n\nnew");
        assert_eq!(last, "# B\n\n## Memory\n\nnew\n");
        let appended = replace_section(
            "# B\n\n## Throughput\n\nx\n",
            "## Memory",
            "## Memory\n\nnew",
        );
        assert_eq!(appended, "# B\n\n## Throughput\n\nx\n\n## Memory\n\nnew\n");
        assert_eq!(
            replace_section("", "## Memory", "## Memory\n\nnew"),
            "# Benchmarks\n\n## Memory\n\nnew\n"
        );
        // A `### Memory` subsection elsewhere is not the section.
        let sub = replace_section("# B\n\n### Memory\n\nx\n", "## Memory", "## Memory\n\ny");
        assert!(sub.starts_with("# B\n\n### Memory\n\nx\n"));
        // A heading that merely starts the same is another section.
        let history = "# B\n\n## Memory\n\nm\n\n## Throughput before\n\nold\n";
        assert_eq!(
            replace_section(history, "## Throughput", "## Throughput\n\nnew"),
            format!("{}\n\n## Throughput\n\nnew\n", history.trim_end())
        );
    }

    #[test]
    fn inserts_a_missing_section_before_another() {
        let doc = "# B\n\n## Memory\n\nm\n\n## History\n\nh\n";
        let inserted = replace_or_insert_section(
            doc,
            "## Throughput",
            "## Throughput\n\nt",
            Some("## History"),
        );
        assert_eq!(
            inserted,
            "# B\n\n## Memory\n\nm\n\n## Throughput\n\nt\n\n## History\n\nh\n"
        );
        // Present: replaced in place, `before` ignored.
        let again = replace_or_insert_section(
            &inserted,
            "## Throughput",
            "## Throughput\n\nu",
            Some("## History"),
        );
        assert_eq!(
            again,
            "# B\n\n## Memory\n\nm\n\n## Throughput\n\nu\n\n## History\n\nh\n"
        );
        // Neither: appended.
        assert_eq!(
            replace_or_insert_section("# B\n", "## T", "## T\n\nt", Some("## Gone")),
            "# B\n\n## T\n\nt\n"
        );
    }

    #[test]
    fn dates_and_command_lines() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(
            shell_command(&[
                "shardcache".into(),
                "bench-memory".into(),
                "--scale".into(),
                "0.05".into(),
                "a b".into()
            ]),
            "shardcache bench-memory --scale 0.05 'a b'"
        );
    }

    #[test]
    fn finds_programs() {
        assert!(find_program("sh").is_some());
        assert!(find_program("no-such-program-anywhere").is_none());
        assert!(program_path("no-such-program-anywhere", "pkg")
            .unwrap_err()
            .to_string()
            .contains("Debian package pkg"));
    }
}
