//! Repair and rebalancing: bring every key back to `k + m` distinct shards on its
//! current owners, and remove shards from nodes that no longer own them.
//!
//! **When.** A pass starts when placement changes (a node joined, left, came back,
//! or has been down longer than `--repair-grace`), and every `--repair-interval` as
//! an anti-entropy sweep. It waits while any node is suspect or down within its grace
//! period: a node that comes back in time keeps its shards and nothing is rebuilt.
//!
//! **Who.** Only the master holding the `repair` lease runs passes. The lease is
//! granted by aux nodes and held while a majority of the ring's nodes grant it; it is
//! renewed during a pass. Every step is version-guarded anyway (conditional puts,
//! deletes only of versions no newer than the one placed), so two masters repairing
//! at once, or a pass repeated, cannot roll a key back or lose it (invariant 8).
//!
//! **How.** Each up node lists its shard headers in ring-point order
//! ([`wire::InventoryPage`]); the pass merges the lists, so it sees every holder of a
//! key at once while holding only one page per node in memory. For each key, the
//! newest version decides: owners lacking a distinct shard index of it get one —
//! copied from a node that holds that index (a move) or rebuilt from any `k` shards
//! (decode, re-encode) — and once every owner holds one, the copies on other nodes
//! are deleted. Moved and rebuilt shards keep their version and expiry. Keys are
//! worked on `--repair-concurrency` at a time so that foreground requests keep most
//! of the machine.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use shardcache_common::aux_client::PutOutcome;
use shardcache_common::frame::ShardFrame;
use shardcache_common::unix_millis;
use shardcache_common::version::Version;
use shardcache_common::wire::{InventoryCursor, InventoryEntry, LeaseRequest};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Node, View};
use crate::data_path::DataPath;

/// The lease's name on the aux nodes.
const LEASE_NAME: &str = "repair";

/// Inventory entries fetched per node per request.
const INVENTORY_PAGE: usize = 1_000;

/// How a master repairs.
#[derive(Clone, Debug)]
pub struct RepairSettings {
    /// Time between anti-entropy passes when nothing changed.
    pub interval: Duration,
    /// How long a down node may stay away before its shards are rebuilt elsewhere.
    pub grace: Duration,
    /// Keys repaired at once.
    pub concurrency: usize,
    /// How long a granted lease lasts without renewal.
    pub lease_ttl: Duration,
    /// How often to re-check when waiting (a node in its grace period, no lease).
    pub retry: Duration,
    /// Repair without the lease (tests only).
    pub ignore_lease: bool,
}

/// Counts of one pass (or of all passes).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PassCounts {
    pub keys_scanned: u64,
    /// Keys that needed any work.
    pub keys_repaired: u64,
    pub shards_rebuilt: u64,
    pub shards_moved: u64,
    pub shards_deleted: u64,
    /// Bytes of shard frames written to owners.
    pub bytes_written: u64,
    /// Keys whose newest version has fewer than `k` shards anywhere (left as they
    /// are; a read falls back to an older decodable version, if any).
    pub keys_unreadable: u64,
    /// Steps that failed (a node error or timeout); the next pass retries them.
    pub failures: u64,
}

impl PassCounts {
    fn add(&mut self, other: &PassCounts) {
        self.keys_scanned += other.keys_scanned;
        self.keys_repaired += other.keys_repaired;
        self.shards_rebuilt += other.shards_rebuilt;
        self.shards_moved += other.shards_moved;
        self.shards_deleted += other.shards_deleted;
        self.bytes_written += other.bytes_written;
        self.keys_unreadable += other.keys_unreadable;
        self.failures += other.failures;
    }
}

/// A pass in progress, or the last one finished.
#[derive(Clone, Debug, Serialize)]
pub struct PassReport {
    pub placement_epoch: u64,
    pub started_at_ms: u64,
    pub duration_ms: u64,
    /// Fraction of the ring scanned so far (1.0 when finished).
    pub progress: f64,
    /// Why the pass ended early, if it did.
    pub aborted: Option<String>,
    #[serde(flatten)]
    pub counts: PassCounts,
}

impl RepairStatus {
    /// The totals of finished passes plus what the running pass did so far.
    pub fn totals_with_current(&self) -> PassCounts {
        let mut totals = self.totals.clone();
        if let Some(current) = &self.current {
            totals.add(&current.counts);
        }
        totals
    }

    /// How much of the ring is still to be checked before the current placement has
    /// full redundancy: 0 when complete, the unscanned fraction while a pass runs,
    /// else 1 (including on standby masters, which cannot see the holder's pass).
    pub fn backlog_ratio(&self) -> f64 {
        match (&self.current, self.complete) {
            (_, true) => 0.0,
            (Some(pass), false) => (1.0 - pass.progress).clamp(0.0, 1.0),
            (None, false) => 1.0,
        }
    }
}

/// What `GET /cluster` shows under `"repair"`.
#[derive(Clone, Debug, Serialize)]
pub struct RepairStatus {
    /// `idle`, `waiting`, `running` or `standby` (another master holds the lease).
    pub state: &'static str,
    /// True when a pass over the current placement finished without failures:
    /// every key then has `k + m` shards on its owners.
    pub complete: bool,
    pub reason: Option<String>,
    pub lease_holder: Option<String>,
    pub this_master: String,
    pub current: Option<PassReport>,
    pub last_pass: Option<PassReport>,
    pub passes: u64,
    pub totals: PassCounts,
}

/// The repair worker of one master.
pub struct Repairer {
    data: Arc<DataPath>,
    settings: RepairSettings,
    holder: String,
    status: Mutex<RepairStatus>,
    /// The placement epoch of the last pass that finished cleanly.
    clean_epoch: Mutex<Option<u64>>,
}

impl Repairer {
    pub fn new(data: Arc<DataPath>, settings: RepairSettings) -> Self {
        let holder = format!("master-{:016x}", rand::random::<u64>());
        let status = RepairStatus {
            state: "idle",
            complete: false,
            reason: Some("no pass has run yet".into()),
            lease_holder: None,
            this_master: holder.clone(),
            current: None,
            last_pass: None,
            passes: 0,
            totals: PassCounts::default(),
        };
        Repairer {
            data,
            settings,
            holder,
            status: Mutex::new(status),
            clean_epoch: Mutex::new(None),
        }
    }

    /// The status as `/cluster` shows it, `complete` judged against the current view.
    pub fn status(&self) -> RepairStatus {
        let view = self.data.cluster().view();
        let mut status = self.status.lock().clone();
        let blocker = view.repair_blocker(self.settings.grace, Instant::now());
        status.complete = blocker.is_none() && *self.clean_epoch.lock() == Some(view.epoch);
        if status.state == "idle" && !status.complete {
            // The worker has not looked since placement changed; say why it will wait.
            status.state = if blocker.is_some() { "waiting" } else { "idle" };
            status.reason = blocker.or_else(|| Some("a pass is due".into()));
        }
        status
    }

    fn set_state(&self, state: &'static str, reason: Option<String>) {
        let mut status = self.status.lock();
        // Logged on a change of state only: a waiting reason counts seconds.
        if status.state != state {
            if let Some(reason) = &reason {
                tracing::info!(state, %reason, "repair");
            }
        }
        status.state = state;
        status.reason = reason;
    }

    /// Runs passes until `stop`: on every placement change, and every interval.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let cluster = self.data.cluster().clone();
        let mut epochs = cluster.subscribe();
        let mut last_pass_at: Option<Instant> = None;
        let mut holding = false;
        loop {
            let view = cluster.view();
            let clean = *self.clean_epoch.lock() == Some(view.epoch);
            let sweep_due = last_pass_at.is_none_or(|at| at.elapsed() >= self.settings.interval);
            let mut wait = self.settings.interval;
            if holding && clean && !sweep_due {
                // Keep the lease while idle, so the standby masters stay standby.
                holding = self.take_lease(&view).await.is_ok();
                wait = self.settings.lease_ttl / 3;
            } else if !clean || sweep_due {
                wait = self.settings.retry;
                if let Some(reason) = view.repair_blocker(self.settings.grace, Instant::now()) {
                    self.set_state("waiting", Some(reason));
                } else if view.up_nodes().is_empty() {
                    self.set_state("waiting", Some("no aux node is up".into()));
                } else if let Err(holder) = self.take_lease(&view).await {
                    holding = false;
                    self.status.lock().lease_holder = holder.clone();
                    self.set_state(
                        "standby",
                        Some(format!(
                            "the repair lease is held by {}",
                            holder.unwrap_or_else(|| "nobody (no majority)".into())
                        )),
                    );
                } else {
                    holding = true;
                    self.status.lock().lease_holder = Some(self.holder.clone());
                    last_pass_at = Some(Instant::now());
                    let report = self.pass(&view, &stop).await;
                    let finished_clean = report.aborted.is_none() && report.counts.failures == 0;
                    if finished_clean {
                        *self.clean_epoch.lock() = Some(view.epoch);
                        wait = self.settings.lease_ttl / 3;
                    }
                    self.finish_pass(report);
                }
            }
            tokio::select! {
                _ = epochs.changed() => {}
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    fn finish_pass(&self, report: PassReport) {
        let counts = &report.counts;
        tracing::info!(
            epoch = report.placement_epoch,
            duration_ms = report.duration_ms,
            keys = counts.keys_scanned,
            repaired = counts.keys_repaired,
            rebuilt = counts.shards_rebuilt,
            moved = counts.shards_moved,
            deleted = counts.shards_deleted,
            unreadable = counts.keys_unreadable,
            failures = counts.failures,
            aborted = ?report.aborted,
            "repair pass finished"
        );
        let mut status = self.status.lock();
        status.totals.add(counts);
        status.passes += 1;
        status.current = None;
        status.last_pass = Some(report);
        status.state = "idle";
        status.reason = None;
    }

    /// Takes or renews the repair lease: `Ok` once a majority of the ring's nodes
    /// granted it, else `Err` with the holder some node named.
    async fn take_lease(&self, view: &View) -> Result<(), Option<String>> {
        if self.settings.ignore_lease {
            return Ok(());
        }
        let nodes = view.all_nodes();
        let request = LeaseRequest {
            name: LEASE_NAME.into(),
            holder: self.holder.clone(),
            ttl_ms: self.settings.lease_ttl.as_millis() as u64,
        };
        let client = self.data.shards().aux();
        let answers = futures::future::join_all(
            nodes
                .iter()
                .map(|node| client.lease(&node.address, &request)),
        )
        .await;
        let granted = answers
            .iter()
            .filter(|answer| matches!(answer, Ok(answer) if answer.granted))
            .count();
        if granted > nodes.len() / 2 {
            return Ok(());
        }
        let holder = answers.into_iter().find_map(|answer| {
            answer
                .ok()
                .filter(|answer| !answer.granted)
                .map(|answer| answer.holder)
        });
        Err(holder)
    }

    /// One pass over every key held by any up node.
    async fn pass(&self, view: &Arc<View>, stop: &CancellationToken) -> PassReport {
        let started = Instant::now();
        let mut report = PassReport {
            placement_epoch: view.epoch,
            started_at_ms: unix_millis(),
            duration_ms: 0,
            progress: 0.0,
            aborted: None,
            counts: PassCounts::default(),
        };
        self.set_state("running", None);
        let mut sources: Vec<Source> = view.up_nodes().into_iter().map(Source::new).collect();
        let mut work: JoinSet<PassCounts> = JoinSet::new();
        let mut lease_renewed = Instant::now();
        let mut dispatched = 0u64;
        loop {
            if let Err(problem) = self.fill(&mut sources).await {
                report.aborted = Some(problem);
                break;
            }
            let Some((point, key)) = sources.iter().filter_map(Source::front).min() else {
                break; // every inventory exhausted
            };
            let holdings: Vec<(Node, InventoryEntry)> = sources
                .iter_mut()
                .filter_map(|source| {
                    source
                        .take(point, &key)
                        .map(|entry| (source.node.clone(), entry))
                })
                .collect();
            while work.len() >= self.settings.concurrency.max(1) {
                if let Some(Ok(counts)) = work.join_next().await {
                    report.counts.add(&counts);
                }
            }
            let (data, view_for_key) = (self.data.clone(), view.clone());
            work.spawn(async move { repair_key(&data, &view_for_key, key, holdings).await });
            report.progress = point as f64 / u64::MAX as f64;
            dispatched += 1;
            if dispatched.is_multiple_of(256) {
                self.publish_progress(&report, started);
            }
            if stop.is_cancelled() {
                report.aborted = Some("master shutting down".into());
                break;
            }
            if self.data.cluster().view().epoch != view.epoch {
                report.aborted = Some("placement changed during the pass".into());
                break;
            }
            if lease_renewed.elapsed() >= self.settings.lease_ttl / 3 {
                if self.take_lease(view).await.is_err() {
                    report.aborted = Some("lost the repair lease".into());
                    break;
                }
                lease_renewed = Instant::now();
            }
        }
        while let Some(joined) = work.join_next().await {
            if let Ok(counts) = joined {
                report.counts.add(&counts);
            }
        }
        if report.aborted.is_none() {
            report.progress = 1.0;
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        report
    }

    fn publish_progress(&self, report: &PassReport, started: Instant) {
        let mut current = report.clone();
        current.duration_ms = started.elapsed().as_millis() as u64;
        self.status.lock().current = Some(current);
    }

    /// Fetches the next inventory page of every source whose buffer ran dry.
    async fn fill(&self, sources: &mut [Source]) -> Result<(), String> {
        let client = self.data.shards().aux();
        let fetches =
            sources
                .iter_mut()
                .filter(|source| source.needs_page())
                .map(|source| async move {
                    let page = client
                        .inventory(&source.node.address, source.cursor.as_ref(), INVENTORY_PAGE)
                        .await;
                    match page {
                        Ok(page) => {
                            source.cursor = page.next;
                            source.exhausted = source.cursor.is_none();
                            source.buffer.extend(page.entries);
                            Ok(())
                        }
                        // Without this node's list the pass could misjudge which indices exist.
                        Err(error) => {
                            Err(format!("inventory of {} failed: {error}", source.node.id))
                        }
                    }
                });
        futures::future::join_all(fetches)
            .await
            .into_iter()
            .collect()
    }
}

/// One node's inventory, read page by page.
struct Source {
    node: Node,
    buffer: VecDeque<InventoryEntry>,
    cursor: Option<InventoryCursor>,
    exhausted: bool,
}

impl Source {
    fn new(node: Node) -> Self {
        Source {
            node,
            buffer: VecDeque::new(),
            cursor: None,
            exhausted: false,
        }
    }

    fn needs_page(&self) -> bool {
        self.buffer.is_empty() && !self.exhausted
    }

    fn front(&self) -> Option<(u64, String)> {
        self.buffer
            .front()
            .map(|entry| (entry.point, entry.key.clone()))
    }

    fn take(&mut self, point: u64, key: &str) -> Option<InventoryEntry> {
        let front = self.buffer.front()?;
        (front.point == point && front.key == key)
            .then(|| self.buffer.pop_front())
            .flatten()
    }
}

/// Brings one key to `k + m` distinct shards of its newest version on its owners,
/// then deletes its shards elsewhere.
async fn repair_key(
    data: &DataPath,
    view: &View,
    key: String,
    holdings: Vec<(Node, InventoryEntry)>,
) -> PassCounts {
    let mut counts = PassCounts {
        keys_scanned: 1,
        ..PassCounts::default()
    };
    let Some(newest) = holdings
        .iter()
        .map(|(_, entry)| entry)
        .max_by_key(|entry| entry.version)
        .cloned()
    else {
        return counts;
    };
    let total = usize::from(newest.data_shards) + usize::from(newest.parity_shards);
    let owners = view.owners(&key, total);
    let holds_newest = |node: &Node| {
        holdings
            .iter()
            .find(|(holder, entry)| holder.id == node.id && entry.version == newest.version)
            .map(|(_, entry)| entry)
    };

    // Which owners already hold a distinct index of the newest version.
    let mut claimed: HashMap<u8, Arc<str>> = HashMap::new();
    let mut lacking: Vec<&Node> = Vec::new();
    for owner in &owners {
        match holds_newest(owner) {
            Some(entry) if newest.tombstone => {
                claimed.insert(entry.shard_index, owner.id.clone());
            }
            Some(entry) if !claimed.contains_key(&entry.shard_index) => {
                claimed.insert(entry.shard_index, owner.id.clone());
            }
            _ => lacking.push(owner),
        }
    }
    let owner_ids: Vec<&Arc<str>> = owners.iter().map(|owner| &owner.id).collect();
    let strays: Vec<&Node> = holdings
        .iter()
        .map(|(node, _)| node)
        .filter(|node| !owner_ids.contains(&&node.id))
        .collect();
    if lacking.is_empty() && strays.is_empty() {
        return counts;
    }
    counts.keys_repaired = 1;

    if !lacking.is_empty() {
        let placed = place_missing(
            data,
            &key,
            &newest,
            &holdings,
            &claimed,
            &lacking,
            &mut counts,
        )
        .await;
        if !placed {
            return counts; // nothing is deleted unless every owner holds its shard
        }
    }
    for stray in strays {
        match data.shards().delete(stray, &key, newest.version).await {
            Ok(PutOutcome::Stored) => counts.shards_deleted += 1,
            Ok(PutOutcome::Superseded(_)) => {} // a newer write landed there; keep it
            Err(error) => {
                tracing::debug!(key, node = %stray.id, %error, "could not delete a stray shard");
                counts.failures += 1;
            }
        }
    }
    counts
}

/// Gives each lacking owner a missing index of the newest version. True when every
/// one of them now holds it.
async fn place_missing(
    data: &DataPath,
    key: &str,
    newest: &InventoryEntry,
    holdings: &[(Node, InventoryEntry)],
    claimed: &HashMap<u8, Arc<str>>,
    lacking: &[&Node],
    counts: &mut PassCounts,
) -> bool {
    let total = usize::from(newest.data_shards) + usize::from(newest.parity_shards);
    let newest_holders: Vec<&(Node, InventoryEntry)> = holdings
        .iter()
        .filter(|(_, entry)| entry.version == newest.version)
        .collect();
    let mut distinct: Vec<u8> = newest_holders
        .iter()
        .map(|(_, entry)| entry.shard_index)
        .collect();
    distinct.sort_unstable();
    distinct.dedup();
    if !newest.tombstone && distinct.len() < usize::from(newest.data_shards) {
        counts.keys_unreadable += 1;
        return false;
    }
    let missing: Vec<u8> = (0..total as u8)
        .filter(|index| newest.tombstone || !claimed.contains_key(index))
        .collect();
    let mut rebuilt: Option<Vec<ShardFrame>> = None;
    let mut all_placed = true;
    for (owner, index) in lacking.iter().zip(missing) {
        // A move when some node holds this index, else a rebuild from k shards.
        let mut frame = None;
        if newest.tombstone {
            frame = Some(tombstone_frame(key, newest, index));
        } else if let Some((source, _)) = newest_holders
            .iter()
            .find(|(_, entry)| entry.shard_index == index)
        {
            if let Ok(Some(found)) = data.shards().get(source, key).await {
                if found.version == newest.version && found.shard_index == index {
                    frame = Some(found);
                    counts.shards_moved += 1;
                }
            }
        }
        if frame.is_none() {
            if rebuilt.is_none() {
                rebuilt = rebuild(data, key, newest.version, &newest_holders).await;
            }
            match rebuilt
                .as_ref()
                .and_then(|frames| frames.get(usize::from(index)))
            {
                Some(found) => {
                    frame = Some(found.clone());
                    counts.shards_rebuilt += 1;
                }
                None => {
                    counts.failures += 1;
                    return false;
                }
            }
        }
        let encoded = frame.expect("set above").encode();
        let size = encoded.len() as u64;
        match data.shards().put(owner, encoded).await {
            Ok(PutOutcome::Stored) => counts.bytes_written += size,
            // A newer write reached this owner meanwhile: the next pass sees it.
            Ok(PutOutcome::Superseded(_)) => all_placed = false,
            Err(error) => {
                tracing::debug!(key, node = %owner.id, %error, "repair put failed");
                counts.failures += 1;
                all_placed = false;
            }
        }
    }
    all_placed
}

/// Fetches shards of `version` from its holders until `k` distinct ones decode, and
/// returns all `k + m` frames of that write.
async fn rebuild(
    data: &DataPath,
    key: &str,
    version: Version,
    holders: &[&(Node, InventoryEntry)],
) -> Option<Vec<ShardFrame>> {
    let mut frames: Vec<ShardFrame> = Vec::new();
    for (node, entry) in holders {
        if frames
            .iter()
            .any(|frame| frame.shard_index == entry.shard_index)
        {
            continue;
        }
        match data.shards().get(node, key).await {
            Ok(Some(frame)) if frame.version == version => frames.push(frame),
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(key, node = %node.id, %error, "could not fetch a shard to rebuild from")
            }
        }
        if frames.len() >= usize::from(entry.data_shards) {
            break;
        }
    }
    if frames.len() < usize::from(frames.first()?.data_shards) {
        return None;
    }
    let value = match data.decode(&frames) {
        Ok(value) => value,
        Err(error) => {
            tracing::error!(key, %version, %error, "shards failed verification during repair");
            return None;
        }
    };
    data.rebuild_frames(&frames, &value).ok()
}

fn tombstone_frame(key: &str, entry: &InventoryEntry, index: u8) -> ShardFrame {
    ShardFrame {
        key: key.to_owned(),
        version: entry.version,
        tombstone: true,
        shard_index: index,
        data_shards: entry.data_shards,
        parity_shards: entry.parity_shards,
        expires_at_ms: entry.expires_at_ms,
        value_len: 0,
        value_checksum: 0,
        payload: bytes::Bytes::new(),
    }
}
