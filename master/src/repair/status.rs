//! What repair reports: counts per pass and in total, the worker's state, and the
//! figures the metrics copy in at each scrape.

use serde::Serialize;

use super::budget::Budget;
use crate::metrics::RepairSample;

/// Counts of one pass (or of all passes).
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct PassCounts {
    pub(crate) keys_scanned: u64,
    /// Keys that needed any work.
    pub(crate) keys_repaired: u64,
    pub(crate) shards_rebuilt: u64,
    pub(crate) shards_moved: u64,
    pub(crate) shards_deleted: u64,
    /// Bytes of shard frames written to owners.
    pub(crate) bytes_written: u64,
    /// Keys whose newest version has fewer than `k` shards anywhere (left as they
    /// are; a read falls back to an older decodable version, if any).
    pub(crate) keys_unreadable: u64,
    /// Steps that failed (a node error or timeout); the next pass retries them.
    pub(crate) failures: u64,
}

impl PassCounts {
    pub(crate) fn add(&mut self, other: &PassCounts) {
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
pub(crate) struct PassReport {
    pub(crate) placement_epoch: u64,
    pub(crate) started_at_ms: u64,
    pub(crate) duration_ms: u64,
    /// Fraction of the ring scanned so far (1.0 when finished).
    pub(crate) progress: f64,
    /// Why the pass ended early, if it did.
    pub(crate) aborted: Option<String>,
    #[serde(flatten)]
    pub(crate) counts: PassCounts,
}

impl RepairStatus {
    /// The totals of finished passes plus what the running pass did so far.
    pub(crate) fn totals_with_current(&self) -> PassCounts {
        let mut totals = self.totals.clone();
        if let Some(current) = &self.current {
            totals.add(&current.counts);
        }
        totals
    }

    /// The figures the metrics copy in at each scrape.
    pub(crate) fn sample(&self) -> RepairSample {
        let totals = self.totals_with_current();
        RepairSample {
            keys_scanned: totals.keys_scanned,
            keys_repaired: totals.keys_repaired,
            shards_rebuilt: totals.shards_rebuilt,
            shards_moved: totals.shards_moved,
            shards_deleted: totals.shards_deleted,
            bytes_written: totals.bytes_written,
            keys_unreadable: totals.keys_unreadable,
            failures: totals.failures,
            passes: self.passes,
            backlog_ratio: self.backlog_ratio(),
            complete: self.complete,
            running: self.state == RepairState::Running,
            lease_held: self.lease_holder.as_deref() == Some(&self.this_master),
            last_pass_seconds: self
                .last_pass
                .as_ref()
                .map(|last| last.duration_ms as f64 / 1000.0),
            budget_keys: self.budget.as_ref().map_or(0, |b| b.allowed() as u64),
            budget_limit_keys: self
                .budget
                .as_ref()
                .map_or(0, |b| b.limit.min(b.byte_limit) as u64),
            client_slowdown: self
                .budget
                .as_ref()
                .and_then(|b| b.client_slowdown)
                .unwrap_or(0.0),
        }
    }

    /// How much of the ring is still to be checked before the current placement has
    /// full redundancy: 0 when complete, the unscanned fraction while a pass runs,
    /// else 1 (including on standby masters, which cannot see the holder's pass).
    pub(crate) fn backlog_ratio(&self) -> f64 {
        match (&self.current, self.complete) {
            (_, true) => 0.0,
            (Some(pass), false) => (1.0 - pass.progress).clamp(0.0, 1.0),
            (None, false) => 1.0,
        }
    }
}

/// What the repair worker is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RepairState {
    /// Nothing to do until placement changes or the next sweep.
    Idle,
    /// A pass is due but must wait (a node suspect or within its grace period).
    Waiting,
    Running,
    /// Another master holds the repair lease.
    Standby,
}

/// What `GET /cluster` shows under `"repair"`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RepairStatus {
    pub(crate) state: RepairState,
    /// True when a pass over the current placement finished without failures:
    /// every key then has `k + m` shards on its owners.
    pub(crate) complete: bool,
    pub(crate) reason: Option<String>,
    pub(crate) lease_holder: Option<String>,
    pub(crate) this_master: String,
    pub(crate) current: Option<PassReport>,
    pub(crate) last_pass: Option<PassReport>,
    pub(crate) passes: u64,
    pub(crate) totals: PassCounts,
    /// The running pass's budget: keys in flight allowed now, the bound, and the
    /// client latency it follows; `None` when no pass runs.
    pub(crate) budget: Option<Budget>,
}
