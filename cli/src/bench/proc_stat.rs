//! What the benchmarks read about processes from `/proc`: resident memory
//! (`/proc/PID/status`), CPU time, state and parent (`/proc/PID/stat`), and a
//! process's children (every `/proc/*/stat` whose parent it is).
//!
//! The parsers are pure functions of the file's text; the readers around them add
//! the file access. CPU times are in clock ticks ([`clock_ticks_per_second`]).

use anyhow::Context;

/// The fields of `/proc/PID/stat` the benchmarks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `D`, `Z` (zombie: exited, not yet reaped), …
    pub state: char,
    pub parent: u32,
    /// CPU time in user and kernel mode, summed over all threads, in clock ticks.
    pub user_ticks: u64,
    pub system_ticks: u64,
    /// The same for the children this process has waited for.
    pub waited_children_user_ticks: u64,
    pub waited_children_system_ticks: u64,
}

impl ProcStat {
    /// User plus kernel time of the process itself.
    pub fn cpu_ticks(&self) -> u64 {
        self.user_ticks + self.system_ticks
    }

    /// User plus kernel time of the children it has waited for.
    pub fn waited_children_cpu_ticks(&self) -> u64 {
        self.waited_children_user_ticks + self.waited_children_system_ticks
    }

    /// Whether the process has exited (a zombie counts: it runs no more).
    pub fn has_exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Parses the text of `/proc/PID/stat`. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so fields are counted
/// from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let after_name = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name; field N is at index N - 3.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let number = |field: usize| -> Option<u64> { fields.get(field - 3)?.parse().ok() };
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        parent: u32::try_from(number(4)?).ok()?,
        user_ticks: number(14)?,
        system_ticks: number(15)?,
        waited_children_user_ticks: number(16)?,
        waited_children_system_ticks: number(17)?,
    })
}

/// The `VmRSS` of a `/proc/PID/status` text, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let number: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") | None => Some(number * 1024),
        Some(_) => None,
    }
}

/// `/proc/PID/stat` of process `pid`.
pub fn read_stat(pid: u32) -> anyhow::Result<ProcStat> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_stat(&text).with_context(|| format!("parse {path}: {text:?}"))
}

/// `/proc/self/stat`: this process.
pub fn read_own_stat() -> anyhow::Result<ProcStat> {
    read_stat(std::process::id())
}

/// Whether process `pid` has exited (or is gone altogether).
pub fn has_exited(pid: u32) -> bool {
    read_stat(pid).map_or(true, |stat| stat.has_exited())
}

/// The resident set of process `pid`, in bytes.
pub fn read_rss(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("find VmRSS in {path}"))
}

/// The processes whose parent is `pid` right now (nginx's workers, say).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&candidate| read_stat(candidate).is_ok_and(|stat| stat.parent == pid))
        .collect()
}

/// Clock ticks per second, the unit of the CPU times in `/proc/PID/stat`.
pub fn clock_ticks_per_second() -> anyhow::Result<u64> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .context("sysconf(_SC_CLK_TCK)")?
        .context("sysconf(_SC_CLK_TCK) has no value")?;
    u64::try_from(ticks)
        .ok()
        .filter(|ticks| *ticks > 0)
        .context("sysconf(_SC_CLK_TCK) is not positive")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_fields_after_an_awkward_name() {
        let text = "4242 (we ird) (name)) S 17 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 3 4 20 0 9 0 98765 123456789 2048 18446744073709551615";
        let stat = parse_stat(text).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                state: 'S',
                parent: 17,
                user_ticks: 250,
                system_ticks: 75,
                waited_children_user_ticks: 3,
                waited_children_system_ticks: 4,
            }
        );
        assert_eq!(stat.cpu_ticks(), 325);
        assert_eq!(stat.waited_children_cpu_ticks(), 7);
        assert!(!stat.has_exited());
        assert!(parse_stat("12 (x) Z 1 2 3 4 5 6 7 8 9 10 11 12 13 14")
            .unwrap()
            .has_exited());
        assert_eq!(parse_stat("12 (x) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn reads_this_process() {
        let stat = read_own_stat().unwrap();
        assert!(!stat.has_exited());
        assert!(clock_ticks_per_second().unwrap() >= 1);
        assert!(!has_exited(std::process::id()));
        assert!(children_of(stat.parent).contains(&std::process::id()));
    }

    #[test]
    fn reads_vm_rss_in_bytes() {
        let status = "Name:\taux\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert!(read_rss(std::process::id()).unwrap() > 0);
    }
}
