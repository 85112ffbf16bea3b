//! The aux node's Prometheus metrics (`GET /metrics`), all named `shardcache_aux_*`.
//!
//! HTTP requests are counted by the shared middleware as they happen, and snapshot
//! durations are observed by the snapshotter. Everything else — store size, evictions,
//! expirations, rejected puts, snapshot results — already lives in the store and the
//! snapshot report, and is copied into the registry when it is scraped, so there is
//! one source of truth and nothing extra on the hot path.

use parking_lot::Mutex;
use prometheus::{Gauge, Histogram, IntCounter, IntGauge, Registry};
use shardcache_common::http_metrics::{self, advance_counter as advance, HttpMetrics, Registrar};

use crate::snapshotter::SnapshotReport;
use crate::store::StoreStats;

/// Snapshot durations in seconds: a few milliseconds when small, minutes for a
/// large store on a slow disk.
const SNAPSHOT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Every metric an aux node exports, in its own registry.
pub(crate) struct AuxMetrics {
    registry: Registry,
    pub(crate) http: HttpMetrics,
    /// Observed by the snapshotter for every snapshot written.
    pub(crate) snapshot_duration: Histogram,
    items: IntGauge,
    bytes: IntGauge,
    capacity: IntGauge,
    evictions: IntCounter,
    expirations: IntCounter,
    rejected_puts: IntCounter,
    snapshots: IntCounter,
    snapshot_failures: IntCounter,
    snapshot_bytes: IntGauge,
    last_snapshot: Gauge,
    restored: IntGauge,
    /// Serialises scrapes: copying totals into counters takes a read-then-add.
    scrape: Mutex<()>,
}

impl AuxMetrics {
    pub(crate) fn new(node_id: &str) -> Self {
        Self::build(node_id).expect("metric names and labels are valid and registered once")
    }

    fn build(node_id: &str) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let r = Registrar {
            registry: &registry,
            prefix: "shardcache_aux",
        };
        r.info(&[("node_id", node_id), ("version", env!("CARGO_PKG_VERSION"))])?;
        Ok(AuxMetrics {
            http: HttpMetrics::register(&r)?,
            snapshot_duration: r.histogram(
                "snapshot_duration_seconds",
                "Time to write one snapshot (copy, encode, write, fsync, rename).",
                SNAPSHOT_BUCKETS,
            )?,
            items: r.gauge("store_items", "Shards held, tombstones included.")?,
            bytes: r.gauge(
                "store_bytes",
                "Bytes charged against the capacity: keys, frames and per-entry bookkeeping.",
            )?,
            capacity: r.gauge("store_capacity_bytes", "The --capacity limit.")?,
            evictions: r.counter(
                "store_evictions_total",
                "Shards evicted (oldest segment first, shards read since kept) to stay within capacity.",
            )?,
            expirations: r.counter(
                "store_expirations_total",
                "Shards removed because their TTL passed.",
            )?,
            rejected_puts: r.counter(
                "store_rejected_puts_total",
                "Conditional puts refused because a newer version of the key is held.",
            )?,
            snapshots: r.counter("snapshots_total", "Snapshots written.")?,
            snapshot_failures: r
                .counter("snapshot_failures_total", "Snapshot writes that failed.")?,
            snapshot_bytes: r.gauge("snapshot_bytes", "Size of the last snapshot file.")?,
            last_snapshot: r.float_gauge(
                "snapshot_last_success_timestamp_seconds",
                "Unix time of the last successful snapshot (0 until the first one).",
            )?,
            restored: r.gauge(
                "restored_shards",
                "Shards loaded from the snapshot at start.",
            )?,
            scrape: Mutex::new(()),
            registry,
        })
    }

    /// Copies the store's and the snapshotter's figures in, then renders the text
    /// format.
    pub(crate) fn render(
        &self,
        store: &StoreStats,
        snapshot: &SnapshotReport,
    ) -> axum::response::Response {
        let _scrape = self.scrape.lock();
        self.items.set(store.items as i64);
        self.bytes.set(store.bytes as i64);
        self.capacity.set(store.capacity_bytes as i64);
        advance(&self.evictions, store.evictions);
        advance(&self.expirations, store.expirations);
        advance(&self.rejected_puts, store.superseded_puts);
        advance(&self.snapshots, snapshot.written);
        advance(&self.snapshot_failures, snapshot.failures);
        self.snapshot_bytes.set(snapshot.last_bytes as i64);
        self.last_snapshot.set(
            snapshot
                .last_success_at_ms
                .map_or(0.0, |ms| ms as f64 / 1000.0),
        );
        self.restored.set(snapshot.restored.loaded as i64);
        http_metrics::exposition(&self.registry)
    }
}
