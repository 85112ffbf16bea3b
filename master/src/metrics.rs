//! The master's Prometheus metrics (`GET /metrics`), all named `shardcache_master_*`.
//!
//! Events on the request path (shard calls, reads, decode failures, quorum
//! failures) are counted where they happen. State that already lives elsewhere —
//! node states, placement epoch, repair progress and totals — is copied into the
//! registry when it is scraped, so there is one source of truth and nothing to keep
//! in step on the hot path. The README's metrics table lists every family.

use std::time::Duration;

use parking_lot::Mutex;
use prometheus::{
    Gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};
use shardcache_common::aux_client::{AuxError, PutOutcome};
use shardcache_common::frame::FrameError;
use shardcache_common::http_metrics::{advance_counter as advance, HttpMetrics, Registrar};

/// A master→aux shard operation, the `op` label.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ShardOp {
    Put,
    Get,
    Delete,
}

impl ShardOp {
    fn label(self) -> &'static str {
        match self {
            ShardOp::Put => "put",
            ShardOp::Get => "get",
            ShardOp::Delete => "delete",
        }
    }
}

/// How a shard call ended, the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShardOutcome {
    Ok,
    /// A get found nothing.
    Miss,
    /// The node held a newer version and kept it.
    Stale,
    Timeout,
    Error,
}

impl ShardOutcome {
    const COUNT: usize = 5;

    fn index(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            ShardOutcome::Ok => "ok",
            ShardOutcome::Miss => "miss",
            ShardOutcome::Stale => "stale",
            ShardOutcome::Timeout => "timeout",
            ShardOutcome::Error => "error",
        }
    }

    pub(crate) fn of_put(result: &Result<PutOutcome, AuxError>) -> Self {
        match result {
            Ok(PutOutcome::Stored) => ShardOutcome::Ok,
            Ok(PutOutcome::Superseded(_)) => ShardOutcome::Stale,
            Err(error) => ShardOutcome::of_error(error),
        }
    }

    pub(crate) fn of_get<T>(result: &Result<Option<T>, AuxError>) -> Self {
        match result {
            Ok(Some(_)) => ShardOutcome::Ok,
            Ok(None) => ShardOutcome::Miss,
            Err(error) => ShardOutcome::of_error(error),
        }
    }

    fn of_error(error: &AuxError) -> Self {
        match error {
            AuxError::Timeout(_) => ShardOutcome::Timeout,
            _ => ShardOutcome::Error,
        }
    }
}

/// What a `GET /data/{key}` found, the `result` label of `reads_total`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ReadResult {
    Hit,
    Miss,
    Unavailable,
}

/// What met a shard of a foreign geometry, the `seen_by` label.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ForeignShardSeenBy {
    Read,
    Repair,
}

impl ForeignShardSeenBy {
    const ALL: [ForeignShardSeenBy; 2] = [ForeignShardSeenBy::Read, ForeignShardSeenBy::Repair];

    fn label(self) -> &'static str {
        match self {
            ForeignShardSeenBy::Read => "read",
            ForeignShardSeenBy::Repair => "repair",
        }
    }
}

/// Which request missed the write quorum, the `op` label.
#[derive(Clone, Copy, Debug)]
pub(crate) enum QuorumOp {
    Write,
    Delete,
}

/// Buckets of `shard_batch_keys`: powers of two up to the multi-get limit.
const BATCH_KEY_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Records shard calls to one node of one kind; see [`MasterMetrics::shard_calls`].
pub(crate) struct ShardCalls<'a> {
    metrics: &'a MasterMetrics,
    node: &'a str,
    op: ShardOp,
    /// The `shard_requests` counter and `shard_duration` histogram of each
    /// outcome met so far, by [`ShardOutcome::index`].
    by_outcome: [Option<(IntCounter, Histogram)>; ShardOutcome::COUNT],
}

impl ShardCalls<'_> {
    pub(crate) fn node(&self) -> &str {
        self.node
    }

    pub(crate) fn record(&mut self, outcome: ShardOutcome, took: Duration) {
        let (requests, duration) = self.by_outcome[outcome.index()].get_or_insert_with(|| {
            let labels = [self.node, self.op.label(), outcome.label()];
            (
                self.metrics.shard_requests.with_label_values(&labels),
                self.metrics.shard_duration.with_label_values(&labels),
            )
        });
        requests.inc();
        duration.observe(took.as_secs_f64());
    }
}

/// Every metric a master exports, in its own registry.
pub(crate) struct MasterMetrics {
    registry: Registry,
    pub(crate) http: HttpMetrics,
    shard_requests: IntCounterVec,
    shard_duration: HistogramVec,
    shard_batch_keys: Histogram,
    shard_put_batch_frames: Histogram,
    reads: IntCounterVec,
    degraded_reads: IntCounter,
    decode_failures: IntCounter,
    checksum_mismatches: IntCounter,
    foreign_shards: IntCounterVec,
    write_quorum_failures: IntCounterVec,
    read_repaired_shards: IntCounter,
    node_state: IntGaugeVec,
    nodes_by_state: IntGaugeVec,
    placement_epoch: IntGauge,
    clock_lead: Gauge,
    clock_beyond_bound: IntGauge,
    aux_clock_offset: prometheus::GaugeVec,
    repair: RepairMetrics,
    /// Serialises scrapes: copying totals into counters takes a read-then-add.
    scrape: Mutex<()>,
}

/// Repair progress, copied from a [`RepairSample`] at each scrape.
struct RepairMetrics {
    keys_scanned: IntCounter,
    keys_repaired: IntCounter,
    shards_rebuilt: IntCounter,
    shards_moved: IntCounter,
    shards_deleted: IntCounter,
    bytes_written: IntCounter,
    keys_unreadable: IntCounter,
    failures: IntCounter,
    passes: IntCounter,
    backlog_ratio: Gauge,
    complete: IntGauge,
    running: IntGauge,
    lease_held: IntGauge,
    last_pass_seconds: Gauge,
    budget_keys: IntGauge,
    budget_limit_keys: IntGauge,
    client_slowdown: Gauge,
}

impl MasterMetrics {
    pub(crate) fn new() -> Self {
        Self::build().expect("metric names and labels are valid and registered once")
    }

    fn build() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let r = Registrar {
            registry: &registry,
            prefix: "shardcache_master",
        };
        r.info(&[("version", env!("CARGO_PKG_VERSION"))])?;
        let shard_labels = &["node", "op", "outcome"];
        let metrics = MasterMetrics {
            http: HttpMetrics::register(&r)?,
            shard_requests: r.counter_vec(
                "shard_requests_total",
                "Shard calls to aux nodes, by node id, operation (put/get/delete) and outcome (ok/miss/stale/timeout/error).",
                shard_labels,
            )?,
            shard_duration: r.histogram_vec(
                "shard_request_duration_seconds",
                "Latency of shard calls to aux nodes, by node id, operation and outcome.",
                shard_labels,
            )?,
            shard_batch_keys: r.histogram(
                "shard_batch_keys",
                "Keys per batched shard read (one multi-get request to one aux node).",
                &BATCH_KEY_BUCKETS,
            )?,
            shard_put_batch_frames: r.histogram(
                "shard_put_batch_frames",
                "Frames per batched shard write (one multi-put request to one aux node).",
                &BATCH_KEY_BUCKETS,
            )?,
            reads: r.counter_vec(
                "reads_total",
                "GET /data results: hit, miss (absent, expired or deleted) or unavailable (503).",
                &["result"],
            )?,
            degraded_reads: r.counter(
                "degraded_reads_total",
                "Hits where an owner that answered before the read settled failed or lacked the shard, or that were found only beyond the owners.",
            )?,
            decode_failures: r.counter(
                "decode_failures_total",
                "Sets of k shards that did not rebuild into their value (the read answered 503).",
            )?,
            checksum_mismatches: r.counter(
                "checksum_mismatches_total",
                "Shard frames or rebuilt values that failed their checksum.",
            )?,
            foreign_shards: r.counter_vec(
                "foreign_shards_total",
                "Shards of a geometry (k, m) this master does not write, met by reads or repair (`seen_by`) and ignored: a forged frame, or another master configured with other --data-shards/--parity-shards on the same aux nodes.",
                &["seen_by"],
            )?,
            write_quorum_failures: r.counter_vec(
                "write_quorum_failures_total",
                "Writes and deletes that did not reach the write quorum (answered 503).",
                &["op"],
            )?,
            read_repaired_shards: r.counter(
                "read_repaired_shards_total",
                "Shards written back to owners that lacked them, by read-repair.",
            )?,
            node_state: r.gauge_vec(
                "aux_node_state",
                "1 for each aux node's current state (up, suspect, down), 0 for the others.",
                &["node", "state"],
            )?,
            nodes_by_state: r.gauge_vec("aux_nodes", "Aux nodes in each state.", &["state"])?,
            placement_epoch: r.gauge(
                "placement_epoch",
                "Increments whenever placement changes (a node goes down, returns, joins or leaves).",
            )?,
            clock_lead: r.float_gauge(
                "clock_lead_seconds",
                "How far this master's clock is ahead of the aux nodes' (the median node's); negative when behind.",
            )?,
            clock_beyond_bound: r.gauge(
                "clock_beyond_bound",
                "1 while this master's clock is proven further from the aux nodes' than --max-clock-skew: writes are refused.",
            )?,
            aux_clock_offset: r.float_gauge_vec(
                "aux_clock_offset_seconds",
                "Each aux node's clock minus this master's, from its last health probe.",
                &["node"],
            )?,
            repair: RepairMetrics {
                keys_scanned: r.counter("repair_keys_scanned_total", "Keys checked by repair passes.")?,
                keys_repaired: r.counter("repair_keys_repaired_total", "Keys a repair pass had to fix.")?,
                shards_rebuilt: r.counter("repair_shards_rebuilt_total", "Shards re-encoded from k others by repair.")?,
                shards_moved: r.counter("repair_shards_moved_total", "Shards copied to their owner by repair (rebalancing).")?,
                shards_deleted: r.counter("repair_shards_deleted_total", "Stray copies removed from nodes that no longer own them.")?,
                bytes_written: r.counter("repair_bytes_written_total", "Shard bytes written by repair.")?,
                keys_unreadable: r.counter("repair_keys_unreadable_total", "Keys found with fewer than k shards of their newest version.")?,
                failures: r.counter("repair_failures_total", "Repair steps that failed; the next pass retries them.")?,
                passes: r.counter("repair_passes_total", "Repair passes finished (clean or not).")?,
                backlog_ratio: r.float_gauge(
                    "repair_backlog_ratio",
                    "Fraction of the ring still to be checked before the current placement has full redundancy (0 = complete; standby masters say 1).",
                )?,
                complete: r.gauge("repair_complete", "1 when a pass over the current placement finished cleanly.")?,
                running: r.gauge("repair_running", "1 while this master runs a repair pass.")?,
                lease_held: r.gauge("repair_lease_held", "1 when this master holds the repair lease.")?,
                last_pass_seconds: r.float_gauge(
                    "repair_last_pass_duration_seconds",
                    "Duration of the last finished repair pass.",
                )?,
                budget_keys: r.gauge(
                    "repair_budget_keys",
                    "Keys the running repair pass may keep in flight now (its budget; 0 when no pass runs).",
                )?,
                budget_limit_keys: r.gauge(
                    "repair_budget_limit_keys",
                    "Upper bound of the repair budget: --repair-concurrency, or fewer when the byte bound on shards in flight is tighter.",
                )?,
                client_slowdown: r.float_gauge(
                    "repair_client_slowdown_ratio",
                    "How much slower client requests are during the running repair pass, as the budget judges it: the larger of their mean latency over its lowest this pass and their highest rate this pass over the current one (0 when no pass runs or no client is seen).",
                )?,
            },
            scrape: Mutex::new(()),
            registry,
        };
        // Label sets every dashboard expects to exist before the first event.
        for result in ["hit", "miss", "unavailable"] {
            metrics.reads.with_label_values(&[result]);
        }
        for op in ["write", "delete"] {
            metrics.write_quorum_failures.with_label_values(&[op]);
        }
        for seen_by in ForeignShardSeenBy::ALL {
            metrics.foreign_shards.with_label_values(&[seen_by.label()]);
        }
        for state in ["up", "suspect", "down"] {
            metrics.nodes_by_state.with_label_values(&[state]);
        }
        Ok(metrics)
    }

    pub(crate) fn shard_call(
        &self,
        node: &str,
        op: ShardOp,
        outcome: ShardOutcome,
        took: Duration,
    ) {
        self.shard_calls(node, op).record(outcome, took);
    }

    /// A recorder for many shard calls to `node` of kind `op` (one batch's): it
    /// looks each outcome's counter and histogram up once, not once per call.
    pub(crate) fn shard_calls<'a>(&'a self, node: &'a str, op: ShardOp) -> ShardCalls<'a> {
        ShardCalls {
            metrics: self,
            node,
            op,
            by_outcome: Default::default(),
        }
    }

    /// Records the size of one batched shard read sent to an aux node.
    pub(crate) fn shard_batch(&self, keys: usize) {
        self.shard_batch_keys.observe(keys as f64);
    }

    /// Records the size of one batched shard write sent to an aux node.
    pub(crate) fn shard_put_batch(&self, frames: usize) {
        self.shard_put_batch_frames.observe(frames as f64);
    }

    /// Counts a frame that failed its checksum on the way from an aux node.
    pub(crate) fn shard_error(&self, error: &AuxError) {
        if matches!(error, AuxError::BadFrame(FrameError::ChecksumMismatch)) {
            self.checksum_mismatches.inc();
        }
    }

    /// Counts a shard of another geometry that a read or repair (`seen_by`) ignored.
    pub(crate) fn foreign_shard(&self, seen_by: ForeignShardSeenBy) {
        self.foreign_shards
            .with_label_values(&[seen_by.label()])
            .inc();
    }

    pub(crate) fn read(&self, result: ReadResult) {
        let label = match result {
            ReadResult::Hit => "hit",
            ReadResult::Miss => "miss",
            ReadResult::Unavailable => "unavailable",
        };
        self.reads.with_label_values(&[label]).inc();
    }

    pub(crate) fn degraded_read(&self) {
        self.degraded_reads.inc();
    }

    /// Counts shards that did not decode; `checksum` when the rebuilt value failed
    /// its checksum (as opposed to inconsistent shards).
    pub(crate) fn decode_failure(&self, checksum: bool) {
        self.decode_failures.inc();
        if checksum {
            self.checksum_mismatches.inc();
        }
    }

    pub(crate) fn write_quorum_failure(&self, op: QuorumOp) {
        let label = match op {
            QuorumOp::Write => "write",
            QuorumOp::Delete => "delete",
        };
        self.write_quorum_failures.with_label_values(&[label]).inc();
    }

    pub(crate) fn read_repaired_shard(&self) {
        self.read_repaired_shards.inc();
    }

    pub(crate) fn read_repaired_shards(&self) -> u64 {
        self.read_repaired_shards.get()
    }

    /// Copies the node states, placement epoch and repair figures in, then renders
    /// the text format. `nodes` gives each aux node's id and state label (`up`,
    /// `suspect` or `down`).
    pub(crate) fn render<'a>(
        &self,
        nodes: impl Iterator<Item = (&'a str, &'static str)>,
        placement_epoch: u64,
        clocks: &ClockFigures<'_>,
        repair: &RepairSample,
    ) -> axum::response::Response {
        let _scrape = self.scrape.lock();
        self.node_state.reset();
        let mut counts = [0i64; 3];
        for (node, state) in nodes {
            for (slot, candidate) in NODE_STATES.into_iter().enumerate() {
                let current = state == candidate;
                counts[slot] += i64::from(current);
                self.node_state
                    .with_label_values(&[node, candidate])
                    .set(i64::from(current));
            }
        }
        for (state, count) in NODE_STATES.into_iter().zip(counts) {
            self.nodes_by_state.with_label_values(&[state]).set(count);
        }
        self.placement_epoch.set(placement_epoch as i64);
        self.clock_lead.set(clocks.lead_seconds.unwrap_or(0.0));
        self.clock_beyond_bound.set(i64::from(clocks.beyond_bound));
        self.aux_clock_offset.reset();
        for (node, offset) in &clocks.node_offsets_seconds {
            self.aux_clock_offset
                .with_label_values(&[node])
                .set(*offset);
        }
        self.repair.update(repair);
        shardcache_common::http_metrics::exposition(&self.registry)
    }
}

impl MasterMetrics {
    /// Client data requests served so far (`/data` routes, every method and status)
    /// and the sum of their durations in seconds: repair's budget takes the mean
    /// over each tick from two readings.
    pub fn client_requests(&self) -> (u64, f64) {
        let name = "shardcache_master_http_request_duration_seconds";
        let Some(family) = self
            .registry
            .gather()
            .into_iter()
            .find(|family| family.name() == name)
        else {
            return (0, 0.0);
        };
        family
            .get_metric()
            .iter()
            .filter(|metric| {
                metric
                    .get_label()
                    .iter()
                    .any(|label| label.name() == "route" && label.value().starts_with("/data"))
            })
            .map(|metric| metric.get_histogram())
            .fold((0, 0.0), |(count, sum), histogram| {
                (
                    count + histogram.get_sample_count(),
                    sum + histogram.get_sample_sum(),
                )
            })
    }
}

impl Default for MasterMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The clock figures copied in at each scrape (see `cluster/clock.rs`).
pub(crate) struct ClockFigures<'a> {
    pub(crate) lead_seconds: Option<f64>,
    pub(crate) beyond_bound: bool,
    /// Each identified aux node's clock minus this master's.
    pub(crate) node_offsets_seconds: Vec<(&'a str, f64)>,
}

/// The states an aux node can be in, as the `state` label spells them.
const NODE_STATES: [&str; 3] = ["up", "suspect", "down"];

/// Repair's figures at a scrape: totals so far (the running pass included) and
/// the worker's state. The repairer fills it in; this module knows nothing else of
/// repair.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct RepairSample {
    pub(crate) keys_scanned: u64,
    pub(crate) keys_repaired: u64,
    pub(crate) shards_rebuilt: u64,
    pub(crate) shards_moved: u64,
    pub(crate) shards_deleted: u64,
    pub(crate) bytes_written: u64,
    pub(crate) keys_unreadable: u64,
    pub(crate) failures: u64,
    pub(crate) passes: u64,
    pub(crate) backlog_ratio: f64,
    pub(crate) complete: bool,
    pub(crate) running: bool,
    pub(crate) lease_held: bool,
    pub(crate) last_pass_seconds: Option<f64>,
    /// The running pass's budget: keys allowed in flight, their upper bound, and
    /// the client slowdown it follows (all 0 when no pass runs).
    pub(crate) budget_keys: u64,
    pub(crate) budget_limit_keys: u64,
    pub(crate) client_slowdown: f64,
}

impl RepairMetrics {
    fn update(&self, sample: &RepairSample) {
        advance(&self.keys_scanned, sample.keys_scanned);
        advance(&self.keys_repaired, sample.keys_repaired);
        advance(&self.shards_rebuilt, sample.shards_rebuilt);
        advance(&self.shards_moved, sample.shards_moved);
        advance(&self.shards_deleted, sample.shards_deleted);
        advance(&self.bytes_written, sample.bytes_written);
        advance(&self.keys_unreadable, sample.keys_unreadable);
        advance(&self.failures, sample.failures);
        advance(&self.passes, sample.passes);
        self.backlog_ratio.set(sample.backlog_ratio);
        self.complete.set(i64::from(sample.complete));
        self.running.set(i64::from(sample.running));
        self.lease_held.set(i64::from(sample.lease_held));
        if let Some(seconds) = sample.last_pass_seconds {
            self.last_pass_seconds.set(seconds);
        }
        self.budget_keys.set(sample.budget_keys as i64);
        self.budget_limit_keys.set(sample.budget_limit_keys as i64);
        self.client_slowdown.set(sample.client_slowdown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_recorder_counts_like_single_calls() {
        let outcomes = [
            ShardOutcome::Ok,
            ShardOutcome::Miss,
            ShardOutcome::Stale,
            ShardOutcome::Timeout,
            ShardOutcome::Error,
        ];
        assert_eq!(outcomes.len(), ShardOutcome::COUNT);
        let metrics = MasterMetrics::new();
        let mut calls = metrics.shard_calls("aux-1", ShardOp::Get);
        for (times, outcome) in outcomes.iter().enumerate() {
            assert!(outcome.index() < ShardOutcome::COUNT);
            for _ in 0..=times {
                calls.record(*outcome, Duration::from_millis(1));
            }
        }
        metrics.shard_call("aux-1", ShardOp::Get, ShardOutcome::Ok, Duration::ZERO);
        for (times, outcome) in outcomes.iter().enumerate() {
            let labels = ["aux-1", ShardOp::Get.label(), outcome.label()];
            let single = u64::from(*outcome == ShardOutcome::Ok);
            assert_eq!(
                metrics.shard_requests.with_label_values(&labels).get(),
                times as u64 + 1 + single,
                "{outcome:?}"
            );
            assert_eq!(
                metrics
                    .shard_duration
                    .with_label_values(&labels)
                    .get_sample_count(),
                times as u64 + 1 + single
            );
        }
    }
}
