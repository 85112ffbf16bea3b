//! A history checker, Jepsen-style and small: concurrent clients write, read and
//! delete a handful of keys through two masters while a nemesis SIGKILLs, restarts
//! and SIGSTOPs aux nodes (never more than `m` impaired at once) and kills a master.
//! Every operation is recorded with its client-side invoke and response times and
//! its answer; afterwards the history is checked against what README promises for
//! a 200 (real-time order):
//!
//! - a value read was written (byte for byte) to that key by a write invoked before
//!   the read answered;
//! - a value read is not **stale**: no acknowledged write or delete of the key
//!   began after the value's own write was acknowledged and was acknowledged before
//!   the read began;
//! - a miss (a GET's 404, or a DELETE's 404, which is a read that found nothing) does
//!   not hide an acknowledged write: some delete must have been able to take effect
//!   after that write began.
//!
//! A write or delete answered 200 is *acknowledged*; one answered 503, anything
//! else, or nothing (timeout, broken connection) is *indeterminate*: it may take
//! effect at any time after its invoke, so its response time counts as +∞. A
//! request whose connection was refused never reached a master and has no effect.
//! A 503 read tells nothing and is only counted.
//!
//! One kind of miss is reported but not failed on ([`is_racing_miss`]): README
//! (*How it works*, **Read**) says "while writers race on the same key a read can
//! find no version with k shards; it retries for up to ~30 ms and then answers a
//! miss", marked `shardcache-miss: partial`. So a miss behind an acknowledged write
//! is allowed when another write of the key was in flight *and* the master marked
//! the miss `partial`. An unmarked miss did not come from that path and is a
//! violation.
//!
//! An aux node counts as impaired from its fault until it is back and has caught up
//! (see [`Nemesis`]); the nemesis never impairs more than `m` at once. The seed is
//! printed; `SHARDCACHE_HISTORY_SEED` repeats the choices (not the timing).
//!
//! The checker ([`check`]) is a pure function over the recorded history, with table
//! tests below showing it can fail.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use shardcache_common::version::Version;
use shardcache_common::wire::encode_key;

use crate::support::{random_value, TestCluster};

// ---------------------------------------------------------------------------
// The history and its checker (pure).
// ---------------------------------------------------------------------------

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Write(String),
    Read,
    Delete,
}

/// What came back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 200; for a read, the value.
    Ok(Option<String>),
    /// 404; `partial` when the master marked it a miss after partial versions
    /// (`shardcache-miss: partial`).
    NotFound { partial: bool },
    /// 503.
    Unavailable,
    /// Another status, a timeout or a broken connection: no answer to go by.
    Unknown(String),
    /// The connection was refused: the request never reached a master.
    NotSent,
}

/// One operation of the history. Times are client-side, since the history began.
#[derive(Clone, Debug)]
pub struct Op {
    pub client: usize,
    pub master: usize,
    pub key: String,
    pub call: Call,
    pub invoke: Duration,
    pub response: Duration,
    pub answer: Answer,
    /// The version a write was acknowledged with, or a read answered with (for the
    /// report only).
    pub version: Option<String>,
}

impl Op {
    fn is_update(&self) -> bool {
        matches!(self.call, Call::Write(_) | Call::Delete)
    }

    /// A write or delete answered 200.
    fn acknowledged(&self) -> bool {
        self.is_update() && matches!(self.answer, Answer::Ok(_))
    }

    /// A write or delete that may have taken effect: acknowledged or indeterminate.
    /// A delete answered 404 found nothing and wrote nothing; a refused connection
    /// sent nothing.
    fn may_take_effect(&self) -> bool {
        !matches!(
            (&self.call, &self.answer),
            (Call::Read, _) | (_, Answer::NotSent) | (Call::Delete, Answer::NotFound { .. })
        )
    }

    /// When the operation's effect is known to be complete: its response if it was
    /// acknowledged, never (+∞) if indeterminate.
    fn settled_at(&self) -> Duration {
        if self.acknowledged() {
            self.response
        } else {
            Duration::MAX
        }
    }

    /// A read that found nothing: a GET's 404, or a DELETE's (it reads first).
    fn is_miss(&self) -> bool {
        matches!(self.call, Call::Read | Call::Delete)
            && matches!(self.answer, Answer::NotFound { .. })
    }
}

/// A read the history does not allow. Fields are indices into the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// The value read was not written to this key by any write invoked before the
    /// read answered.
    Invented { read: usize },
    /// The read answered `source`'s value, though `newer` (an acknowledged write or
    /// delete) began after `source` was acknowledged and was acknowledged before
    /// the read began.
    Stale {
        read: usize,
        source: usize,
        newer: usize,
    },
    /// The read found nothing, though `write` was acknowledged before it began and
    /// no delete could have taken effect after `write` began.
    Lost { read: usize, write: usize },
}

impl Violation {
    pub fn read(&self) -> usize {
        match *self {
            Violation::Invented { read }
            | Violation::Stale { read, .. }
            | Violation::Lost { read, .. } => read,
        }
    }
}

/// Every violation in `history`, in history order of the reads.
pub fn check(history: &[Op]) -> Vec<Violation> {
    let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
    // Writes by (key, value): values are meant to be unique, but need not be.
    let mut writes: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    for (index, op) in history.iter().enumerate() {
        by_key.entry(op.key.as_str()).or_default().push(index);
        if let Call::Write(value) = &op.call {
            writes
                .entry((op.key.as_str(), value.as_str()))
                .or_default()
                .push(index);
        }
    }
    let mut violations = Vec::new();
    for (index, read) in history.iter().enumerate() {
        let on_key = &by_key[read.key.as_str()];
        match (&read.call, &read.answer) {
            (Call::Read, Answer::Ok(Some(value))) => {
                let sources = writes
                    .get(&(read.key.as_str(), value.as_str()))
                    .map_or(&[][..], Vec::as_slice);
                if let Some(violation) = check_value(history, on_key, sources, index) {
                    violations.push(violation);
                }
            }
            _ if read.is_miss() => {
                if let Some(violation) = check_miss(history, on_key, index) {
                    violations.push(violation);
                }
            }
            _ => {}
        }
    }
    violations
}

/// A read of a value: written by a write of the key (one of `sources`, the writes
/// of that very value) invoked before the read answered, and not superseded in real
/// time before the read began.
fn check_value(
    history: &[Op],
    on_key: &[usize],
    sources: &[usize],
    read: usize,
) -> Option<Violation> {
    let reader = &history[read];
    // Should a value have been written twice, the later-settled write is the one
    // that can be seen latest.
    let source = sources
        .iter()
        .copied()
        .filter(|&at| {
            let op = &history[at];
            op.may_take_effect() && op.invoke < reader.response
        })
        .max_by_key(|&at| history[at].settled_at());
    let Some(source) = source else {
        return Some(Violation::Invented { read });
    };
    let written = history[source].settled_at();
    on_key
        .iter()
        .copied()
        .filter(|&at| {
            let op = &history[at];
            at != source && op.acknowledged() && written < op.invoke && op.response < reader.invoke
        })
        .max_by_key(|&at| history[at].response)
        .map(|newer| Violation::Stale {
            read,
            source,
            newer,
        })
}

/// A miss: every write acknowledged before the read began must have been
/// removable by some delete that could take effect after that write began. A delete
/// acknowledged before the write began cannot (the write outranks it); one invoked
/// after the read answered cannot either.
fn check_miss(history: &[Op], on_key: &[usize], read: usize) -> Option<Violation> {
    let reader = &history[read];
    let deletes: Vec<&Op> = on_key
        .iter()
        .map(|&at| &history[at])
        .filter(|op| op.call == Call::Delete && op.may_take_effect())
        .filter(|op| op.invoke < reader.response)
        .collect();
    on_key
        .iter()
        .copied()
        .filter(|&at| {
            let op = &history[at];
            matches!(op.call, Call::Write(_))
                && op.acknowledged()
                && op.response < reader.invoke
                && !deletes.iter().any(|delete| delete.settled_at() > op.invoke)
        })
        .max_by_key(|&at| history[at].response)
        .map(|write| Violation::Lost { read, write })
}

/// Other writes and deletes of the read's key that may have been in progress while
/// it ran: invoked before it answered and not acknowledged before it began
/// (indeterminate ones count forever). The report lists them.
fn racing(history: &[Op], read: usize) -> Vec<usize> {
    let reader = &history[read];
    history
        .iter()
        .enumerate()
        .filter(|(_, op)| {
            op.key == reader.key
                && op.may_take_effect()
                && op.invoke < reader.response
                && op.settled_at() > reader.invoke
        })
        .map(|(at, _)| at)
        .collect()
}

/// Whether a violation is the miss README allows while writers race: a write or
/// delete of the key was still in flight when the read began (its client had no
/// answer yet), and the master marked the miss `partial` (it met only partial
/// versions through its retries). A miss behind an acknowledged write with no update
/// in flight (only leftovers of indeterminate ones, or nothing), or not marked, is
/// not allowed.
pub fn is_racing_miss(history: &[Op], violation: &Violation) -> bool {
    let Violation::Lost { read, .. } = *violation else {
        return false;
    };
    let reader = &history[read];
    reader.answer == (Answer::NotFound { partial: true })
        && racing(history, read)
            .into_iter()
            .any(|at| history[at].response > reader.invoke)
}

// ---------------------------------------------------------------------------
// Reporting.
// ---------------------------------------------------------------------------

/// `c1-42` and the length, enough to recognise a value.
fn short(value: &str) -> String {
    let id = value.split('|').next().unwrap_or(value);
    let id: String = id.chars().take(24).collect();
    format!("{id:?} ({} B)", value.len())
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let call = match &self.call {
            Call::Write(value) => format!("write {}", short(value)),
            Call::Read => "read".to_owned(),
            Call::Delete => "delete".to_owned(),
        };
        let answer = match &self.answer {
            Answer::Ok(Some(value)) => format!("200 {}", short(value)),
            Answer::Ok(None) => "200".to_owned(),
            Answer::NotFound { partial: false } => "404".to_owned(),
            Answer::NotFound { partial: true } => "404 (partial)".to_owned(),
            Answer::Unavailable => "503".to_owned(),
            Answer::Unknown(why) => format!("no answer ({why})"),
            Answer::NotSent => "refused".to_owned(),
        };
        write!(
            f,
            "client {} via master-{}: {call} {:?} [{:.4}s .. {:.4}s] -> {answer}",
            self.client,
            self.master,
            self.key,
            self.invoke.as_secs_f64(),
            self.response.as_secs_f64()
        )?;
        match &self.version {
            Some(version) => write!(f, " version {version}"),
            None => Ok(()),
        }
    }
}

/// One thing the nemesis did, and when (since the history began).
#[derive(Clone, Debug)]
struct Event {
    at: Duration,
    what: String,
}

/// A violation, the operations it involves, the updates of the key around it and
/// what the nemesis was doing.
fn describe(history: &[Op], violation: &Violation, events: &[Event]) -> String {
    let at = violation.read();
    let read = &history[at];
    let racing_miss = if is_racing_miss(history, violation) {
        " (a miss marked partial while writers raced: README allows it)"
    } else {
        ""
    };
    let mut text = format!("{violation:?}{racing_miss}\n  read   #{at}: {read}\n");
    let involved = match *violation {
        Violation::Invented { .. } => at,
        Violation::Stale { source, newer, .. } => {
            text += &format!("  source #{source}: {}\n", history[source]);
            text += &format!("  newer  #{newer}: {}\n", history[newer]);
            source
        }
        Violation::Lost { write, .. } => {
            text += &format!("  lost   #{write}: {}\n", history[write]);
            text += &format!(
                "  the miss took {:.1} ms\n",
                (read.response - read.invoke).as_secs_f64() * 1000.0
            );
            write
        }
    };
    let racing = racing(history, at);
    text += "  updates of the key unsettled when the read began:\n";
    for &other in &racing {
        text += &format!("    #{other}: {}\n", history[other]);
    }
    let from = history[involved]
        .invoke
        .saturating_sub(Duration::from_millis(20));
    let between: Vec<usize> = (0..history.len())
        .filter(|&other| {
            let op = &history[other];
            op.key == read.key
                && op.is_update()
                && op.answer != Answer::NotSent
                && !racing.contains(&other)
                && op.response >= from
                && op.invoke <= read.response
        })
        .collect();
    text += &format!(
        "  other updates of the key from {:.4}s to the read ({}, the last 20):\n",
        from.as_secs_f64(),
        between.len()
    );
    for &other in &between[between.len().saturating_sub(20)..] {
        text += &format!("    #{other}: {}\n", history[other]);
    }
    text += "  nemesis in the 3 s before:\n";
    for event in events {
        if event.at + Duration::from_secs(3) >= from && event.at <= read.response {
            text += &format!("    {:.4}s {}\n", event.at.as_secs_f64(), event.what);
        }
    }
    text
}

// ---------------------------------------------------------------------------
// The workload.
// ---------------------------------------------------------------------------

const CLIENTS: usize = 6;
const KEYS: usize = 8;
/// How long clients run and the nemesis starts new faults.
const LOAD: Duration = Duration::from_secs(15);
/// A hard cap on operations, whatever the speed of the machine.
const MAX_OPS: usize = 60_000;
/// Per-request deadline of a client: past it the operation is indeterminate.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
const AUX_NODES: usize = 6;
/// Parity shards: the most aux nodes ever impaired at once.
const M: usize = 2;

fn key_name(index: usize) -> String {
    format!("key-{index}")
}

/// A value unique to (client, seq), `c{client}-{seq}|` then filler of mixed length
/// (JSON escapes and multi-byte characters included).
fn unique_value(rng: &mut StdRng, client: usize, seq: usize) -> String {
    let len = match rng.random_range(0..10) {
        0..=5 => rng.random_range(0..64),
        6..=8 => rng.random_range(64..4096),
        _ => rng.random_range(4096..40_000),
    };
    format!("c{client}-{seq}|{}", random_value(rng, len))
}

/// The answer and the version it names (a write's body, a read's header).
async fn answer_of(
    result: reqwest::Result<reqwest::Response>,
    key: &str,
    call: &Call,
) -> (Answer, Option<String>) {
    let response = match result {
        Ok(response) => response,
        Err(error) if error.is_connect() => return (Answer::NotSent, None),
        Err(error) => return (Answer::Unknown(error.to_string()), None),
    };
    let status = response.status().as_u16();
    let partial = response
        .headers()
        .get("shardcache-miss")
        .is_some_and(|miss| miss == "partial");
    let header = response
        .headers()
        .get("shardcache-version")
        .and_then(|version| version.to_str().ok())
        .map(str::to_owned);
    let text = match response.text().await {
        Ok(text) => text,
        Err(error) => return (Answer::Unknown(format!("status {status}: {error}")), None),
    };
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    match (status, call) {
        (200, Call::Read) => {
            // An answer that does not parse, or names another key, is recorded as a
            // value no one wrote, so the checker reports it.
            let value = match (body["key"].as_str(), body["value"].as_str()) {
                (Some(answered), Some(value)) if answered == key => value.to_owned(),
                _ => format!("\u{1}unexpected answer: {text}"),
            };
            (Answer::Ok(Some(value)), header)
        }
        (200, Call::Write(_)) => (
            Answer::Ok(None),
            body["version"].as_str().map(str::to_owned),
        ),
        (200, Call::Delete) => (Answer::Ok(None), None),
        (404, _) => (Answer::NotFound { partial }, None),
        (503, _) => (Answer::Unavailable, None),
        (other, _) => (Answer::Unknown(format!("status {other}: {text}")), None),
    }
}

struct Load {
    http: reqwest::Client,
    masters: Vec<String>,
    start: Instant,
    until: Instant,
    /// Operations begun (the cap) and completed (the nemesis waits on it).
    begun: AtomicUsize,
    done: AtomicUsize,
    /// Requests a master refused (the nemesis waits on it while one is down).
    refused: AtomicUsize,
    /// Every acknowledged write so far, per key: its invoke and its version. The
    /// nemesis uses it to tell when a node back from a fault holds no stale shard.
    acked: Mutex<HashMap<String, Vec<(Instant, Version)>>>,
}

async fn client(load: Arc<Load>, client: usize, seed: u64) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed ^ (client as u64 + 1).wrapping_mul(0x9e37_79b9));
    let mut history = Vec::new();
    let mut avoid: Option<usize> = None;
    for seq in 0.. {
        if Instant::now() >= load.until || load.begun.fetch_add(1, Ordering::Relaxed) >= MAX_OPS {
            break;
        }
        let key = key_name(rng.random_range(0..KEYS));
        // A client whose master refused the connection fails over to the other.
        let master = match avoid.take() {
            Some(refused) => 1 - refused,
            None => rng.random_range(0..load.masters.len()),
        };
        let base = &load.masters[master];
        let call = match rng.random_range(0..100) {
            0..=44 => Call::Write(unique_value(&mut rng, client, seq)),
            45..=92 => Call::Read,
            _ => Call::Delete,
        };
        let url = format!("{base}/data/{}", encode_key(&key));
        let invoked_at = Instant::now();
        let sent = match &call {
            Call::Write(value) => {
                load.http
                    .post(format!("{base}/data"))
                    .json(&json!({ "key": key, "value": value }))
                    .send()
                    .await
            }
            Call::Read => load.http.get(url).send().await,
            Call::Delete => load.http.delete(url).send().await,
        };
        let (answer, version) = answer_of(sent, &key, &call).await;
        let response = load.start.elapsed();
        match (&call, &answer, &version) {
            (Call::Write(_), Answer::Ok(_), Some(version)) => {
                let version: Version = version.parse().expect("a version");
                let mut acked = load.acked.lock().unwrap();
                acked
                    .entry(key.clone())
                    .or_default()
                    .push((invoked_at, version));
            }
            (_, Answer::NotSent, _) => {
                avoid = Some(master);
                load.refused.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        history.push(Op {
            client,
            master,
            key,
            call,
            invoke: invoked_at - load.start,
            response,
            answer,
            version,
        });
        load.done.fetch_add(1, Ordering::Relaxed);
    }
    history
}

// ---------------------------------------------------------------------------
// The nemesis.
// ---------------------------------------------------------------------------

/// A master started by this test in place of a killed one, on the same address and
/// log, with the same flags; killed when dropped.
struct RestartedMaster {
    child: Child,
}

impl RestartedMaster {
    fn start(cluster: &TestCluster, index: usize) -> RestartedMaster {
        let local = &cluster.cluster;
        let spec = &local.spec;
        let node = &local.masters[index];
        let aux: Vec<String> = local.aux.iter().map(|aux| aux.addr.to_string()).collect();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .expect("open master log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardcache"))
            .arg("master")
            .arg("--listen")
            .arg(node.addr.to_string())
            .args(["--aux", &aux.join(",")])
            .args(["--data-shards", &spec.data_shards.to_string()])
            .args(["--parity-shards", &spec.parity_shards.to_string()])
            .args(&spec.master_args)
            .arg("--stop-with-parent")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log.try_clone().expect("log handle"))
            .spawn()
            .expect("start master");
        let stdout = child.stdout.take().expect("master stdout");
        let (announce, announced) = mpsc::channel();
        std::thread::spawn(move || {
            let mut log = log;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("listening on ") {
                    let _ = announce.send(());
                } else {
                    let _ = writeln!(log, "{line}");
                }
            }
        });
        let mut master = RestartedMaster { child };
        if announced.recv_timeout(Duration::from_secs(20)).is_err() {
            master.kill();
            panic!("master-{index} did not start again:\n{}", node.log_tail(20));
        }
        master
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RestartedMaster {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill,
    Pause,
}

/// How long an aux fault lasts.
#[derive(Clone, Copy, Debug)]
enum Until {
    /// The node is brought back at once (a restart between two probes).
    Immediately,
    /// Until every master calls it suspect or down.
    Suspect,
    /// Until every master calls it down (placement skips it).
    Down,
}

#[derive(Clone, Debug)]
enum Action {
    Aux(Vec<(usize, Fault)>, Until),
    KillMaster,
}

/// Kills, pauses and restarts, one action at a time. An aux node counts as
/// impaired from its fault until it is back and holds, for every key it owns, a
/// version at least as new as a write acknowledged after it was back; actions never
/// impair more than `m` nodes at once, and wait for the last ones to catch up first.
struct Nemesis {
    load: Arc<Load>,
    rng: StdRng,
    events: Vec<Event>,
    kills: usize,
    pauses: usize,
    master_kills: usize,
    restarted: Vec<RestartedMaster>,
}

impl Nemesis {
    fn log(&mut self, what: String) {
        let at = self.load.start.elapsed();
        eprintln!("nemesis {:.3}s {what}", at.as_secs_f64());
        self.events.push(Event { at, what });
    }

    /// Polls `condition` until it holds (true) or the load is over (false).
    async fn while_loading<F, Fut>(&self, mut condition: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        loop {
            if condition().await {
                return true;
            }
            if Instant::now() >= self.load.until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until clients completed `count` more operations (or the load ended).
    async fn let_clients_run(&self, count: usize) {
        let target = self.load.done.load(Ordering::Relaxed) + count;
        self.while_loading(|| async { self.load.done.load(Ordering::Relaxed) >= target })
            .await;
    }

    fn next_action(&mut self, round: usize) -> Action {
        let mut nodes: Vec<usize> = (0..AUX_NODES).collect();
        for at in 0..nodes.len() {
            let other = self.rng.random_range(at..nodes.len());
            nodes.swap(at, other);
        }
        let (a, b) = (nodes[0], nodes[1]);
        let until = [Until::Immediately, Until::Suspect, Until::Down][self.rng.random_range(0..3)];
        // The first rounds cover a pause with a kill, and a master; then at random.
        let choice = if round < 2 {
            round
        } else {
            self.rng.random_range(0..6)
        };
        match choice {
            0 => Action::Aux(vec![(a, Fault::Pause), (b, Fault::Kill)], Until::Down),
            1 => Action::KillMaster,
            2 => Action::Aux(vec![(a, Fault::Kill), (b, Fault::Kill)], until),
            3 => Action::Aux(vec![(a, Fault::Kill)], until),
            4 => Action::Aux(vec![(a, Fault::Pause)], until),
            _ => Action::Aux(vec![(a, Fault::Pause), (b, Fault::Kill)], until),
        }
    }

    async fn run(&mut self, cluster: &mut TestCluster) {
        let mut round = 0;
        while Instant::now() < self.load.until {
            let action = self.next_action(round);
            round += 1;
            match action {
                Action::Aux(victims, until) => self.aux_faults(cluster, &victims, until).await,
                Action::KillMaster => self.kill_master(cluster).await,
            }
            // Some load on a healthy cluster between faults.
            self.let_clients_run(100).await;
        }
    }

    async fn aux_faults(
        &mut self,
        cluster: &mut TestCluster,
        victims: &[(usize, Fault)],
        until: Until,
    ) {
        assert!(victims.len() <= M, "at most m aux nodes impaired at once");
        for &(aux, fault) in victims {
            match fault {
                Fault::Kill => {
                    cluster.cluster.aux[aux].kill();
                    self.kills += 1;
                    self.log(format!("SIGKILL aux-{aux}"));
                }
                Fault::Pause => {
                    cluster.cluster.aux[aux].signal(Signal::SIGSTOP).unwrap();
                    self.pauses += 1;
                    self.log(format!("SIGSTOP aux-{aux}"));
                }
            }
        }
        let view: &TestCluster = cluster;
        let wanted: &[&str] = match until {
            Until::Immediately => &[],
            Until::Suspect => &["suspect", "down"],
            Until::Down => &["down"],
        };
        if !wanted.is_empty() {
            let reached = self
                .while_loading(|| async {
                    for &(aux, _) in victims {
                        for master in 0..2 {
                            let state = view.node_state(master, aux).await;
                            if !state.is_some_and(|state| wanted.contains(&state.as_str())) {
                                return false;
                            }
                        }
                    }
                    true
                })
                .await;
            if reached {
                self.log(format!("every master sees them {}", wanted.join(" or ")));
                self.let_clients_run(150).await;
            }
        }
        for &(aux, fault) in victims {
            match fault {
                Fault::Kill => {
                    tokio::task::block_in_place(|| cluster.cluster.restart_aux(aux))
                        .expect("restart aux");
                    self.log(format!("restarted aux-{aux}"));
                }
                Fault::Pause => {
                    cluster.cluster.aux[aux].signal(Signal::SIGCONT).unwrap();
                    self.log(format!("SIGCONT aux-{aux}"));
                }
            }
        }
        for &(aux, _) in victims {
            cluster.wait_for_state(aux, "up").await;
        }
        let back = Instant::now();
        self.log("every master sees them up".to_owned());
        let view: &TestCluster = cluster;
        let caught_up = self
            .while_loading(|| async {
                for &(aux, _) in victims {
                    if !self.caught_up(view, aux, back).await {
                        return false;
                    }
                }
                true
            })
            .await;
        self.log(match caught_up {
            true => "they caught up: no aux node impaired".to_owned(),
            false => "load over before they caught up".to_owned(),
        });
    }

    /// Whether aux node `aux` holds, for every key it owns, a version at least as
    /// new as some write acknowledged after `back` (so newer than every write
    /// acknowledged before it was back, by real-time order).
    async fn caught_up(&self, view: &TestCluster, aux: usize, back: Instant) -> bool {
        let owned: Vec<String> = (0..KEYS)
            .map(key_name)
            .filter(|key| view.owners(key).contains(&aux))
            .collect();
        let mut needed: HashMap<String, Version> = HashMap::new();
        {
            let acked = self.load.acked.lock().unwrap();
            for key in &owned {
                let oldest_since = acked.get(key).and_then(|writes| {
                    writes
                        .iter()
                        .filter(|(invoked, _)| *invoked > back)
                        .map(|(_, version)| *version)
                        .min()
                });
                match oldest_since {
                    Some(version) => needed.insert(key.clone(), version),
                    None => return false,
                };
            }
        }
        let held: HashMap<String, Version> = view
            .aux_inventory(aux)
            .await
            .into_iter()
            .map(|entry| (entry.key, entry.version))
            .collect();
        needed
            .iter()
            .all(|(key, version)| held.get(key).is_some_and(|held| held >= version))
    }

    async fn kill_master(&mut self, cluster: &mut TestCluster) {
        match self.restarted.pop() {
            Some(mut restarted) => restarted.kill(),
            None => cluster.cluster.masters[1].kill(),
        }
        self.master_kills += 1;
        self.log("SIGKILL master-1".to_owned());
        // Until clients have found it gone, and a little more.
        let refused = self.load.refused.load(Ordering::Relaxed);
        self.while_loading(|| async { self.load.refused.load(Ordering::Relaxed) >= refused + 3 })
            .await;
        self.let_clients_run(150).await;
        let restarted = tokio::task::block_in_place(|| RestartedMaster::start(cluster, 1));
        self.restarted.push(restarted);
        self.log("restarted master-1".to_owned());
        for aux in 0..AUX_NODES {
            cluster.wait_for_state(aux, "up").await;
        }
        self.log("master-1 sees every aux node up".to_owned());
    }
}

// ---------------------------------------------------------------------------
// The test.
// ---------------------------------------------------------------------------

/// Counts of (call, answer) for the summary.
fn tally(history: &[Op]) -> BTreeMap<(&'static str, &'static str), usize> {
    let mut counts = BTreeMap::new();
    for op in history {
        let call = match op.call {
            Call::Write(_) => "write",
            Call::Read => "read",
            Call::Delete => "delete",
        };
        let answer = match op.answer {
            Answer::Ok(_) => "200",
            Answer::NotFound { .. } => "404",
            Answer::Unavailable => "503",
            Answer::Unknown(_) => "no answer",
            Answer::NotSent => "refused",
        };
        *counts.entry((call, answer)).or_insert(0) += 1;
    }
    counts
}

/// The repair state each master reports (to show in the summary).
async fn repair_states(cluster: &TestCluster) -> Vec<String> {
    let mut states = Vec::new();
    for master in 0..2 {
        let repair = &cluster.cluster_view(master).await["repair"];
        states.push(format!(
            "master-{master} ({}): {} complete={} passes={} reason={}",
            repair["this_master"],
            repair["state"],
            repair["complete"],
            repair["passes"],
            repair["reason"]
        ));
    }
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_faults_keep_real_time_order() {
    let started = Instant::now();
    let seed = std::env::var("SHARDCACHE_HISTORY_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(shardcache_common::unix_millis);
    eprintln!("history seed {seed} (set SHARDCACHE_HISTORY_SEED to repeat the schedule)");
    let mut cluster = TestCluster::start_with(|spec| spec.masters = 2);
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .expect("http client");
    let start = Instant::now();
    let load = Arc::new(Load {
        http,
        masters: vec![cluster.cluster.master_url(0), cluster.cluster.master_url(1)],
        start,
        until: start + LOAD,
        begun: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
        acked: Mutex::new(HashMap::new()),
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client(load.clone(), id, seed)))
        .collect();
    let mut nemesis = Nemesis {
        load: load.clone(),
        rng: StdRng::seed_from_u64(seed),
        events: Vec::new(),
        kills: 0,
        pauses: 0,
        master_kills: 0,
        restarted: Vec::new(),
    };
    // Let the keys get written before the first fault.
    nemesis.let_clients_run(200).await;
    nemesis.run(&mut cluster).await;
    let mut history: Vec<Op> = Vec::new();
    for handle in clients {
        history.extend(handle.await.expect("client task"));
    }
    history.sort_by_key(|op| op.invoke);
    let last_response = history
        .iter()
        .map(|op| op.response)
        .max()
        .unwrap_or_default();

    let checking = Instant::now();
    let violations = check(&history);
    let check_time = checking.elapsed();
    let (racing_misses, violations): (Vec<Violation>, Vec<Violation>) = violations
        .into_iter()
        .partition(|violation| is_racing_miss(&history, violation));
    let counts = tally(&history);
    let count = |call, answer| counts.get(&(call, answer)).copied().unwrap_or(0);
    let reads: usize = ["200", "404", "503", "no answer", "refused"]
        .iter()
        .map(|answer| count("read", answer))
        .sum();
    let misses = count("read", "404") + count("delete", "404");
    eprintln!(
        "history: {} operations, the last answered at {:.1}s; nemesis: {} aux kills, {} aux \
         pauses, {} master kills; {counts:?}",
        history.len(),
        last_response.as_secs_f64(),
        nemesis.kills,
        nemesis.pauses,
        nemesis.master_kills,
    );
    eprintln!(
        "reads answered 503: {} of {reads} ({:.2}%); misses (GET or DELETE 404): {misses}, \
         of which marked partial while writers raced (README allows them): {}; \
         violations: {}; checked in {:.0} ms",
        count("read", "503"),
        100.0 * count("read", "503") as f64 / reads.max(1) as f64,
        racing_misses.len(),
        violations.len(),
        check_time.as_secs_f64() * 1000.0,
    );
    eprintln!("repair at the end: {:?}", repair_states(&cluster).await);
    for racing_miss in racing_misses.iter().take(3) {
        eprintln!(
            "a racing miss, for reference:\n{}",
            describe(&history, racing_miss, &nemesis.events)
        );
    }
    if !violations.is_empty() {
        for violation in &violations {
            eprintln!("{}", describe(&history, violation, &nemesis.events));
        }
        // The cluster's Drop prints the tail of every node's log
        // (`cluster.cluster.logs(40)`) while this panics.
        panic!(
            "{} reads break real-time order (seed {seed}); each is listed above",
            violations.len()
        );
    }
    let acked_writes = count("write", "200");
    let answered_reads = count("read", "200") + count("read", "404");
    assert!(
        acked_writes >= 300 && answered_reads >= 300,
        "too little work: {acked_writes} acknowledged writes, {answered_reads} answered reads"
    );
    assert!(
        nemesis.kills >= 1 && nemesis.pauses >= 1 && nemesis.master_kills >= 1,
        "the nemesis did too little: {} kills, {} pauses, {} master kills",
        nemesis.kills,
        nemesis.pauses,
        nemesis.master_kills
    );
    drop(nemesis);
    eprintln!("history test took {:.1}s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------
// The checker's own table tests.
// ---------------------------------------------------------------------------

#[cfg(test)]
mod checker {
    use super::*;

    fn ms(at: u64) -> Duration {
        Duration::from_millis(at)
    }

    fn op(call: Call, (invoke, response): (u64, u64), answer: Answer) -> Op {
        Op {
            client: 0,
            master: 0,
            key: "k".into(),
            call,
            invoke: ms(invoke),
            response: ms(response),
            answer,
            version: None,
        }
    }

    fn write(value: &str, span: (u64, u64)) -> Op {
        op(Call::Write(value.into()), span, Answer::Ok(None))
    }

    fn write_503(value: &str, span: (u64, u64)) -> Op {
        op(Call::Write(value.into()), span, Answer::Unavailable)
    }

    fn delete(span: (u64, u64), answer: Answer) -> Op {
        op(Call::Delete, span, answer)
    }

    fn read(span: (u64, u64), value: Option<&str>) -> Op {
        let answer = match value {
            Some(value) => Answer::Ok(Some(value.into())),
            None => Answer::NotFound { partial: false },
        };
        op(Call::Read, span, answer)
    }

    /// A read answered 404 marked `partial`.
    fn partial_miss(span: (u64, u64)) -> Op {
        op(Call::Read, span, Answer::NotFound { partial: true })
    }

    #[test]
    fn a_stale_read_is_detected() {
        let history = [
            write("a", (0, 10)),
            write("b", (20, 30)),
            read((40, 50), Some("a")),
        ];
        assert_eq!(
            check(&history),
            [Violation::Stale {
                read: 2,
                source: 0,
                newer: 1
            }]
        );
        // The newest value is fine.
        assert_eq!(
            check(&[
                history[0].clone(),
                history[1].clone(),
                read((40, 50), Some("b"))
            ]),
            []
        );
    }

    #[test]
    fn reads_concurrent_with_a_write_may_see_either_value() {
        for seen in ["a", "b"] {
            let history = [
                write("a", (0, 10)),
                write("b", (20, 60)),
                read((40, 50), Some(seen)),
            ];
            assert_eq!(check(&history), [], "{seen}");
        }
        // Overlapping writes: either may win, whatever their order of invoke.
        let history = [
            write("a", (0, 30)),
            write("b", (10, 20)),
            read((40, 50), Some("a")),
        ];
        assert_eq!(check(&history), []);
    }

    #[test]
    fn an_indeterminate_write_may_be_seen_late_but_not_before_it_began() {
        let history = [
            write_503("a", (0, 10)),
            write("b", (20, 30)),
            read((40, 50), Some("a")),
        ];
        assert_eq!(check(&history), []);
        let history = [
            write("a", (0, 10)),
            write("b", (20, 30)),
            op(
                Call::Write("c".into()),
                (32, 34),
                Answer::Unknown("timeout".into()),
            ),
            read((40, 50), Some("c")),
        ];
        assert_eq!(check(&history), []);
        // A read answered before the write was invoked saw a value from nowhere.
        let history = [read((0, 10), Some("a")), write_503("a", (20, 30))];
        assert_eq!(check(&history), [Violation::Invented { read: 0 }]);
    }

    #[test]
    fn a_value_no_one_wrote_or_of_another_key_is_invented() {
        let mut other_key = write("a", (0, 10));
        other_key.key = "other".into();
        let history = [other_key, read((20, 30), Some("a"))];
        assert_eq!(check(&history), [Violation::Invented { read: 1 }]);
        let history = [write("a", (0, 10)), read((20, 30), Some("a "))];
        assert_eq!(check(&history), [Violation::Invented { read: 1 }]);
        // A refused request sent nothing.
        let history = [
            op(Call::Write("a".into()), (0, 1), Answer::NotSent),
            read((20, 30), Some("a")),
        ];
        assert_eq!(check(&history), [Violation::Invented { read: 1 }]);
    }

    #[test]
    fn a_miss_after_an_acknowledged_write_with_no_delete_is_flagged() {
        let history = [write("a", (0, 10)), read((20, 30), None)];
        assert_eq!(check(&history), [Violation::Lost { read: 1, write: 0 }]);
        // A DELETE answered 404 read nothing too.
        let history = [
            write("a", (0, 10)),
            delete((20, 30), Answer::NotFound { partial: false }),
        ];
        assert_eq!(check(&history), [Violation::Lost { read: 1, write: 0 }]);
        // A write still in flight, or indeterminate, proves nothing.
        assert_eq!(check(&[write("a", (0, 25)), read((20, 30), None)]), []);
        assert_eq!(check(&[write_503("a", (0, 10)), read((20, 30), None)]), []);
    }

    #[test]
    fn a_miss_is_excused_only_by_a_delete_that_could_follow_the_write() {
        let write_then_miss =
            |delete_op: Op| [write("a", (10, 20)), delete_op, read((40, 50), None)];
        // Acknowledged or indeterminate, invoked before the miss answered: fine.
        for excuse in [
            delete((25, 30), Answer::Ok(None)),
            delete((15, 30), Answer::Ok(None)),
            delete((45, 60), Answer::Ok(None)),
            delete((0, 5), Answer::Unavailable),
            delete((0, 5), Answer::Unknown("reset".into())),
        ] {
            assert_eq!(check(&write_then_miss(excuse.clone())), [], "{excuse}");
        }
        // Acknowledged before the write began, invoked after the miss, found
        // nothing, or never sent: the write should have been seen.
        for no_excuse in [
            delete((0, 5), Answer::Ok(None)),
            delete((55, 60), Answer::Ok(None)),
            delete((25, 30), Answer::NotSent),
        ] {
            assert_eq!(
                check(&write_then_miss(no_excuse.clone())),
                [Violation::Lost { read: 2, write: 0 }],
                "{no_excuse}"
            );
        }
    }

    #[test]
    fn a_value_read_after_an_acknowledged_delete_is_stale() {
        let history = [
            write("a", (0, 10)),
            delete((20, 30), Answer::Ok(None)),
            read((40, 50), Some("a")),
        ];
        assert_eq!(
            check(&history),
            [Violation::Stale {
                read: 2,
                source: 0,
                newer: 1
            }]
        );
        // A delete that found nothing deleted nothing.
        let history = [
            write("a", (0, 10)),
            delete((20, 30), Answer::NotFound { partial: false }),
            read((40, 50), Some("a")),
        ];
        assert_eq!(check(&history), [Violation::Lost { read: 1, write: 0 }]);
    }

    #[test]
    fn a_miss_is_excused_only_while_writers_race_and_marked_partial() {
        let history = [
            write("a", (0, 10)),
            write("b", (20, 45)),
            write_503("c", (5, 6)),
            write("d", (60, 70)),
            read((40, 50), None),
        ];
        assert_eq!(racing(&history, 4), [1, 2]);
        // Write 1 is in flight while the read runs, but the master did not mark the
        // miss partial: it did not come from a racing read's retries.
        let lost = Violation::Lost { read: 4, write: 0 };
        assert!(!is_racing_miss(&history, &lost));
        let mut marked = history.clone();
        marked[4] = partial_miss((40, 50));
        assert!(is_racing_miss(&marked, &lost));
        // Only an indeterminate write's leftovers, long answered: not racing.
        let history = [
            write("a", (0, 10)),
            write_503("c", (5, 6)),
            read((40, 50), None),
        ];
        let lost = Violation::Lost { read: 2, write: 0 };
        assert_eq!(check(&history), std::slice::from_ref(&lost));
        let mut marked = history.clone();
        marked[2] = partial_miss((40, 50));
        assert!(!is_racing_miss(&marked, &lost));
        // A stale value is never excused.
        let history = [
            write("a", (0, 10)),
            write("b", (20, 30)),
            write("c", (35, 60)),
            read((40, 50), Some("a")),
        ];
        let stale = check(&history);
        assert_eq!(stale.len(), 1);
        assert!(!is_racing_miss(&history, &stale[0]));
    }
}
