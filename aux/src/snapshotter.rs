//! When and how the store is snapshotted and restored; the file format itself is in
//! [`crate::snapshot`].
//!
//! A snapshot is taken every `--snapshot-interval` if anything changed since the last
//! one, and once more at shutdown. It walks the store a segment at a time (each
//! segment's frames copied under the lock, written after it), so it never holds a
//! second copy of the store; the disk work runs on a blocking thread, never on the
//! async threads that serve requests. A restore hands the file's frames to the store
//! one at a time, for the same reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::Histogram;
use shardcache_common::unix_millis;
use tokio_util::sync::CancellationToken;

use crate::snapshot;
use crate::store::{RestoreReport, ShardStore};

/// What `/health` shows about snapshots.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(crate) struct SnapshotReport {
    /// Unix milliseconds of the last snapshot written successfully.
    pub(crate) last_success_at_ms: Option<u64>,
    /// Snapshots written since start.
    pub(crate) written: u64,
    pub(crate) last_duration_ms: u64,
    pub(crate) last_entries: u64,
    pub(crate) last_bytes: u64,
    pub(crate) failures: u64,
    pub(crate) last_error: Option<String>,
    /// The file restored at start, and what it held.
    pub(crate) restored_from: Option<PathBuf>,
    pub(crate) restored: RestoreReport,
    /// Snapshot files found corrupt at start, with the reason.
    pub(crate) skipped_files: Vec<String>,
}

/// Shared snapshot bookkeeping: the report, and which store generation is on disk.
#[derive(Default)]
pub(crate) struct SnapshotStatus {
    report: Mutex<SnapshotReport>,
    saved_generation: Mutex<Option<u64>>,
    /// Observes every successful snapshot's duration, when metrics are kept.
    duration_seconds: Option<Histogram>,
}

impl SnapshotStatus {
    pub(crate) fn with_duration_histogram(histogram: Histogram) -> Self {
        SnapshotStatus {
            duration_seconds: Some(histogram),
            ..SnapshotStatus::default()
        }
    }

    pub(crate) fn report(&self) -> SnapshotReport {
        self.report.lock().clone()
    }
}

/// Loads the newest valid snapshot in `dir` into `store`, reporting corrupt files.
pub(crate) async fn restore(
    store: &Arc<ShardStore>,
    dir: &Path,
    status: &SnapshotStatus,
) -> anyhow::Result<()> {
    let owned_dir = dir.to_owned();
    let owned_store = store.clone();
    let (loaded, restored) = tokio::task::spawn_blocking(move || {
        let now_ms = unix_millis();
        let mut restored = RestoreReport::default();
        let loaded = snapshot::load_newest(&owned_dir, |frame| {
            owned_store.restore_frame(frame, now_ms, &mut restored)
        })?;
        anyhow::Ok((loaded, restored))
    })
    .await??;
    let mut report = status.report.lock();
    for (path, reason) in &loaded.skipped {
        tracing::error!(path = %path.display(), %reason, "snapshot file is corrupt; skipped it");
        report
            .skipped_files
            .push(format!("{}: {reason}", path.display()));
    }
    *status.saved_generation.lock() = Some(store.generation());
    let Some(path) = loaded.path else {
        tracing::info!(dir = %dir.display(), "no snapshot to restore; starting empty");
        return Ok(());
    };
    tracing::info!(
        path = %path.display(),
        loaded = restored.loaded,
        expired = restored.expired,
        evicted = restored.evicted,
        invalid = restored.invalid,
        "restored snapshot"
    );
    report.restored_from = Some(path);
    report.restored = restored;
    Ok(())
}

/// Writes every live shard of `store` as the newest snapshot in `dir`, a segment at
/// a time (blocking).
fn write_store(
    store: &ShardStore,
    dir: &Path,
) -> Result<snapshot::SnapshotWritten, snapshot::SnapshotError> {
    let now_ms = unix_millis();
    let mut writer = snapshot::SnapshotWriter::create(dir, now_ms)?;
    let mut after_seq = 0;
    while let Some((seq, entries, count)) = store.snapshot_chunk(after_seq, now_ms) {
        writer.append_entries(&entries, count)?;
        after_seq = seq;
    }
    writer.finish()
}

/// Writes a snapshot if the store changed since the last one.
pub(crate) async fn save_if_changed(store: &Arc<ShardStore>, dir: &Path, status: &SnapshotStatus) {
    let generation = store.generation();
    if *status.saved_generation.lock() == Some(generation) {
        return;
    }
    let started = Instant::now();
    let owned_dir = dir.to_owned();
    let owned_store = store.clone();
    let written = tokio::task::spawn_blocking(move || write_store(&owned_store, &owned_dir)).await;
    let mut report = status.report.lock();
    match written {
        Ok(Ok(written)) => {
            let took = started.elapsed();
            if let Some(histogram) = &status.duration_seconds {
                histogram.observe(took.as_secs_f64());
            }
            report.last_success_at_ms = Some(unix_millis());
            report.written += 1;
            report.last_duration_ms = took.as_millis() as u64;
            report.last_entries = written.entries;
            report.last_bytes = written.bytes;
            report.last_error = None;
            *status.saved_generation.lock() = Some(generation);
            tracing::debug!(path = %written.path.display(), entries = written.entries, "snapshot written");
        }
        Ok(Err(error)) => {
            report.failures += 1;
            report.last_error = Some(error.to_string());
            tracing::error!(dir = %dir.display(), %error, "snapshot failed");
        }
        Err(error) => {
            report.failures += 1;
            report.last_error = Some(error.to_string());
            tracing::error!(%error, "snapshot task failed");
        }
    }
}

/// Background worker: a snapshot every `interval` (when changed) until `stop`.
pub(crate) async fn run(
    store: Arc<ShardStore>,
    dir: PathBuf,
    interval: Duration,
    status: Arc<SnapshotStatus>,
    stop: CancellationToken,
) {
    if interval.is_zero() {
        return;
    }
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => save_if_changed(&store, &dir, &status).await,
            () = stop.cancelled() => return,
        }
    }
}
