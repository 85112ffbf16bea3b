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
//! (`wire::InventoryPage`); the pass merges the lists, so it sees every holder of a
//! key at once while holding only one page per node in memory. For each key, the
//! newest version decides: owners lacking a distinct shard index of it get one —
//! copied from a node that holds that index (a move) or rebuilt from any `k` shards
//! (decode, re-encode) — and once every owner holds one, the copies on other nodes
//! are deleted. Moved and rebuilt shards keep their version and expiry. Keys are
//! worked on `--repair-concurrency` at a time so that foreground requests keep most
//! of the machine.
//!
//! - `scan`: the merged inventories, key by key in ring order.
//! - `plan`: what one key needs (pure, table-tested): placements and strays.
//! - `apply`: the I/O that carries a plan out.
//! - `status`: what `/cluster` and the metrics show of repair.
//! - this module: the worker — when passes run, the lease, progress.

mod apply;
mod budget;
mod plan;
mod scan;
mod status;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use shardcache_common::codec::Codec;
use shardcache_common::unix_millis;
use shardcache_common::wire::LeaseRequest;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, View};
use crate::metrics::MasterMetrics;
use crate::shards::ShardClient;
use apply::Apply;
use budget::{Budget, ClientSample};
use plan::Abandon;
use scan::Inventories;
pub(crate) use status::{PassCounts, PassReport, RepairState, RepairStatus};

/// The lease's name on the aux nodes.
const LEASE_NAME: &str = "repair";

/// How a master repairs.
#[derive(Clone, Debug)]
pub(crate) struct RepairSettings {
    /// Time between anti-entropy passes when nothing changed.
    pub(crate) interval: Duration,
    /// How long a down node may stay away before its shards are rebuilt elsewhere.
    pub(crate) grace: Duration,
    /// Most keys repaired at once: the upper bound of the pass's [`Budget`].
    pub(crate) concurrency: usize,
    /// How long a granted lease lasts without renewal.
    pub(crate) lease_ttl: Duration,
    /// How often to re-check when waiting (a node in its grace period, no lease).
    pub(crate) retry: Duration,
    /// Repair without the lease (tests only).
    pub(crate) ignore_lease: bool,
    /// Age past which a version too partial to read is abandoned (see `plan`).
    pub(crate) abandon_after: Duration,
}

/// The repair worker of one master.
pub(crate) struct Repairer {
    cluster: Arc<Cluster>,
    shards: ShardClient,
    /// The cluster's geometry; repair ignores shards of any other.
    codec: Arc<Codec>,
    settings: RepairSettings,
    holder: String,
    status: Mutex<RepairStatus>,
    /// The placement epoch of the last pass that finished cleanly.
    clean_epoch: Mutex<Option<u64>>,
}

impl Repairer {
    pub(crate) fn new(
        cluster: Arc<Cluster>,
        shards: ShardClient,
        codec: Arc<Codec>,
        settings: RepairSettings,
    ) -> Self {
        let holder = format!("master-{:016x}", rand::random::<u64>());
        let status = RepairStatus {
            state: RepairState::Idle,
            complete: false,
            reason: Some("no pass has run yet".into()),
            lease_holder: None,
            this_master: holder.clone(),
            current: None,
            last_pass: None,
            passes: 0,
            totals: PassCounts::default(),
            budget: None,
        };
        Repairer {
            cluster,
            shards,
            codec,
            settings,
            holder,
            status: Mutex::new(status),
            clean_epoch: Mutex::new(None),
        }
    }

    /// The status as `/cluster` shows it, `complete` judged against the current view.
    pub(crate) fn status(&self) -> RepairStatus {
        let view = self.cluster.view();
        let mut status = self.status.lock().clone();
        let blocker = view.repair_blocker(self.settings.grace, Instant::now());
        status.complete = blocker.is_none() && *self.clean_epoch.lock() == Some(view.epoch);
        if status.state == RepairState::Idle && !status.complete {
            // The worker has not looked since placement changed; say why it will wait.
            if blocker.is_some() {
                status.state = RepairState::Waiting;
            }
            status.reason = blocker.or_else(|| Some("a pass is due".into()));
        }
        status
    }

    fn set_state(&self, state: RepairState, reason: Option<String>) {
        let mut status = self.status.lock();
        // Logged on a change of state only: a waiting reason counts seconds.
        if status.state != state {
            if let Some(reason) = &reason {
                tracing::info!(?state, %reason, "repair");
            }
        }
        status.state = state;
        status.reason = reason;
    }

    /// Runs passes until `stop`: on every placement change, and every interval.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let cluster = self.cluster.clone();
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
                    self.set_state(RepairState::Waiting, Some(reason));
                } else if view.up_nodes().is_empty() {
                    self.set_state(RepairState::Waiting, Some("no aux node is up".into()));
                } else if let Err(holder) = self.take_lease(&view).await {
                    holding = false;
                    self.status.lock().lease_holder = holder.clone();
                    self.set_state(
                        RepairState::Standby,
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
                    if finished_clean && report.counts.keys_unreadable == 0 {
                        *self.clean_epoch.lock() = Some(view.epoch);
                        wait = self.settings.lease_ttl / 3;
                    } else if finished_clean {
                        // Only versions that may still be in flight are left: look
                        // again once they would count as abandoned, not every retry.
                        wait = self.settings.abandon_after.min(self.settings.interval);
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
        status.state = RepairState::Idle;
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
        let client = self.shards.aux();
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
        // Split: neither this master nor a rival has a majority, and each renewing
        // its own grants would keep it so forever. The master with the larger holder
        // name gives its grants back (a request for 0 ms ends a lease), so the
        // smaller one gets a majority at its next attempt.
        let rival = answers
            .iter()
            .filter_map(|answer| answer.as_ref().ok().filter(|answer| !answer.granted))
            .map(|answer| answer.holder.clone())
            .min();
        if gives_back_a_split_lease(granted, rival.as_deref(), &self.holder) {
            let release = LeaseRequest {
                ttl_ms: 0,
                ..request
            };
            let granted_by = nodes.iter().zip(&answers).filter_map(|(node, answer)| {
                matches!(answer, Ok(answer) if answer.granted).then_some(&node.address)
            });
            futures::future::join_all(granted_by.map(|address| client.lease(address, &release)))
                .await;
            tracing::info!(rival = ?rival, "repair lease split between masters; gave this master's grants back");
        }
        Err(rival)
    }

    /// One pass over every key held by any up node, keeping as many keys in flight
    /// as its [`Budget`] allows.
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
        self.set_state(RepairState::Running, None);
        let mut budget = Budget::new(self.settings.concurrency);
        let mut clients = ClientMeter::new(self.shards.metrics());
        let mut inventories = Inventories::new(view.up_nodes(), self.shards.aux());
        let mut work: JoinSet<(PassCounts, u64)> = JoinSet::new();
        let mut lease_renewed = Instant::now();
        let mut dispatched = 0u64;
        loop {
            let next = match inventories.next().await {
                Ok(Some(next)) => next,
                Ok(None) => break, // every inventory exhausted
                Err(problem) => {
                    report.aborted = Some(problem);
                    break;
                }
            };
            while work.len() >= budget.allowed() {
                if let Some(Ok((counts, held_bytes))) = work.join_next().await {
                    report.counts.add(&counts);
                    budget.key_done(held_bytes);
                }
            }
            if let Some(sample) = clients.tick_due() {
                budget.tick(sample);
            }
            let (shards, codec, view_for_key) =
                (self.shards.clone(), self.codec.clone(), view.clone());
            let abandon = Abandon {
                now_ms: unix_millis(),
                after_ms: self.settings.abandon_after.as_millis() as u64,
            };
            work.spawn(async move {
                let apply = Apply {
                    shards: &shards,
                    codec: &codec,
                    abandon,
                    held_bytes: Default::default(),
                };
                let counts = apply
                    .repair_key(&view_for_key, &next.key, next.holdings)
                    .await;
                (counts, apply.held_bytes.into_inner())
            });
            report.progress = next.point as f64 / u64::MAX as f64;
            dispatched += 1;
            if dispatched.is_multiple_of(256) {
                self.publish_progress(&report, started, &budget);
            }
            if stop.is_cancelled() {
                report.aborted = Some("master shutting down".into());
                break;
            }
            if self.cluster.view().epoch != view.epoch {
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
            if let Ok((counts, _)) = joined {
                report.counts.add(&counts);
            }
        }
        if report.aborted.is_none() {
            report.progress = 1.0;
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        self.status.lock().budget = None;
        report
    }

    fn publish_progress(&self, report: &PassReport, started: Instant, budget: &Budget) {
        let mut current = report.clone();
        current.duration_ms = started.elapsed().as_millis() as u64;
        let mut status = self.status.lock();
        status.current = Some(current);
        status.budget = Some(budget.clone());
    }
}

/// What the clients' requests cost, read every [`budget::TICK`] for the budget:
/// their mean time on the master (the HTTP metrics of the `/data` routes), plus
/// how long a task that became ready waited for the master's thread meanwhile
/// (the lag of a probe task that yields every few milliseconds). The HTTP time
/// alone misses that wait: a request is timed from when it is read, and while
/// repair keeps the thread busy it waits before that.
struct ClientMeter<'a> {
    metrics: &'a MasterMetrics,
    last: (u64, f64),
    last_lag: (u64, u64),
    last_at: Instant,
    /// Probes so far and their summed lag in microseconds.
    lag: Arc<(AtomicU64, AtomicU64)>,
    /// The probe task; aborted when the meter is dropped.
    _probe: JoinSet<()>,
}

/// Time between two lag probes.
const LAG_PROBE_EVERY: Duration = Duration::from_millis(5);

impl<'a> ClientMeter<'a> {
    fn new(metrics: &'a MasterMetrics) -> Self {
        let lag: Arc<(AtomicU64, AtomicU64)> = Arc::default();
        let mut probe = JoinSet::new();
        let probe_lag = lag.clone();
        probe.spawn(async move {
            loop {
                tokio::time::sleep(LAG_PROBE_EVERY).await;
                let yielded = Instant::now();
                tokio::task::yield_now().await;
                let waited = yielded.elapsed().as_micros() as u64;
                probe_lag.0.fetch_add(1, Ordering::Relaxed);
                probe_lag.1.fetch_add(waited, Ordering::Relaxed);
            }
        });
        ClientMeter {
            metrics,
            last: metrics.client_requests(),
            last_lag: (0, 0),
            last_at: Instant::now(),
            lag,
            _probe: probe,
        }
    }

    /// What the clients saw since the last reading, once a tick has passed.
    fn tick_due(&mut self) -> Option<ClientSample> {
        if self.last_at.elapsed() < budget::TICK {
            return None;
        }
        let now = self.metrics.client_requests();
        let lag = (
            self.lag.0.load(Ordering::Relaxed),
            self.lag.1.load(Ordering::Relaxed),
        );
        let tick_seconds = self.last_at.elapsed().as_secs_f64();
        let requests = now.0.saturating_sub(self.last.0);
        let seconds = (now.1 - self.last.1).max(0.0);
        let probes = lag.0.saturating_sub(self.last_lag.0);
        let lag_seconds = lag.1.saturating_sub(self.last_lag.1) as f64 / 1e6;
        (self.last, self.last_lag, self.last_at) = (now, lag, Instant::now());
        let mean = |sum: f64, count: u64| if count == 0 { 0.0 } else { sum / count as f64 };
        Some(ClientSample {
            requests,
            tick_seconds,
            mean_seconds: mean(seconds, requests) + mean(lag_seconds, probes),
        })
    }
}

/// Whether a master that failed to get a majority of the lease grants should give
/// back the `granted` ones it got: only when it got some and a rival with a smaller
/// holder name holds others, so that of two masters splitting the nodes exactly one
/// yields and the split cannot last.
fn gives_back_a_split_lease(granted: usize, rival: Option<&str>, holder: &str) -> bool {
    granted > 0 && rival.is_some_and(|rival| rival < holder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_two_masters_splitting_the_lease_exactly_one_gives_back() {
        // (grants this master got, the smallest rival named, this master) -> give back
        for (granted, rival, holder, gives_back) in [
            (3, Some("master-a"), "master-b", true),
            (3, Some("master-b"), "master-a", false),
            (0, Some("master-a"), "master-b", false), // nothing to give back
            (2, None, "master-b", false),             // no rival: nodes unreachable
        ] {
            assert_eq!(
                gives_back_a_split_lease(granted, rival, holder),
                gives_back,
                "{granted} {rival:?} {holder}"
            );
        }
    }
}
