//! Writes and deletes: frames to the key's owners, acknowledged at the write quorum.
//!
//! **Real-time order.** A write acknowledged to a client outranks every write
//! acknowledged before it began, through any master (ARCHITECTURE.md, invariant 2),
//! although masters' clocks differ and writer ids break same-millisecond ties in
//! an arbitrary order. The first version a write takes counts an owner's answer
//! "I hold a newer version" (409) as an acknowledgement only when this master
//! stamped that version (after this one: a concurrent write, which may win either
//! way). A newer version from another master may be a write acknowledged before
//! this one began, so the write re-stamps itself above the newest version it met
//! (the hybrid clock observed it) and tries once more, and that second version
//! counts every 409 as an acknowledgement. Why one re-stamp is enough: a write
//! acknowledged before this one began sits on at least `W` of the `k + m` owners, so
//! whenever the first version fails for want of acknowledgements, at least one of
//! the 409s it heard came from one of them and named that write's version or a
//! newer one; the second version is above it. Anything newer than the second
//! version was stamped after the first attempt looked, so it is concurrent. Writers
//! racing on one key therefore cost at most one extra round, never a livelock.
//! The argument needs `W` to be more than half of the `k + m` owners (else the
//! first version could reach `W` on owners the earlier write missed): the default
//! `W = k + 1` is, whenever `m <= k + 1`; `--write-quorum` below that weakens the
//! guarantee to "ordered per master".

use std::time::Duration;

use bytes::Bytes;
use shardcache_common::aux_client::PutOutcome;
use shardcache_common::unix_millis;
use shardcache_common::version::{HybridClock, Version};

use super::{DataPath, Miss};
use crate::error::ApiError;
use crate::metrics::QuorumOp;
use crate::shards::frames;
use shardcache_common::codec::Codec;

/// Which version of a write is being stored (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stamp {
    /// Must outrank newer versions of other masters.
    First,
    /// Above every version the first one met: every 409 acknowledges it.
    Restamped,
}

/// What storing one version's frames came to.
enum Stored {
    /// `W` owners hold this version.
    Acknowledged,
    /// Too many owners hold a newer version for this one to reach `W`; the newest
    /// of them.
    Outranked(Version),
}

impl DataPath {
    /// Stores `value` under `key`, expiring after `ttl` if given.
    pub(crate) async fn write(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Version, ApiError> {
        // Time left, not a deadline: each aux node decides expiry on its own clock.
        let expiry_ms = ttl.map_or(0, |ttl| (ttl.as_millis() as u64).max(1));
        let codec: &Codec = &self.codec;
        self.store_versions(key, QuorumOp::Write, |version| {
            frames::encoded_value(codec, key, version, value, expiry_ms)
        })
        .await
    }

    /// Deletes `key`; `Ok(Err(miss))` if there was no live value to delete.
    pub(crate) async fn delete(&self, key: &str) -> Result<Result<(), Miss>, ApiError> {
        let found = match self.find(key).await? {
            Ok(found) => found,
            Err(miss) => return Ok(Err(miss)),
        };
        self.clock.observe(found.version);
        let expiry_ms = (self.tombstone_ttl.as_millis() as u64).max(1);
        let geometry = self.codec.geometry();
        self.store_versions(key, QuorumOp::Delete, |version| {
            frames::encoded_tombstones(key, version, geometry, expiry_ms)
        })
        .await?;
        Ok(Ok(()))
    }

    /// Stores the frames `frames_of` makes for a fresh version, and once more for a
    /// version above every newer one it met if the first was outranked (module docs).
    async fn store_versions(
        &self,
        key: &str,
        op: QuorumOp,
        frames_of: impl Fn(Version) -> Vec<Bytes>,
    ) -> Result<Version, ApiError> {
        self.cluster.check_clock().map_err(ApiError::Unavailable)?;
        let mut newest_met = None;
        for stamp in [Stamp::First, Stamp::Restamped] {
            let version = self.clock.next();
            if let Some(newest) = newest_met.filter(|newest| version <= *newest) {
                // The clock moves at most --max-clock-skew ahead for what it sees, so
                // a version from further ahead (stamped by a writer whose clock ran
                // fast) cannot be outranked without that jump.
                return Err(ApiError::Unavailable(format!(
                    "{key:?} holds a version from {} ms in the future (a writer's clock is off); refusing rather than being hidden by it",
                    HybridClock::lead_of(newest, unix_millis())
                )));
            }
            match self
                .store_frames(key, version, stamp, frames_of(version), op)
                .await?
            {
                Stored::Acknowledged => return Ok(version),
                Stored::Outranked(newest) => {
                    tracing::debug!(key, %version, %newest, "met a newer version; re-stamping above it");
                    newest_met = Some(newest);
                }
            }
        }
        // Not reached: a re-stamped version counts every 409 as an acknowledgement.
        self.metrics.write_quorum_failure(op);
        Err(ApiError::Unavailable(format!(
            "{key:?}: the re-stamped version was outranked too"
        )))
    }

    /// Sends frame `i` to the key's owner of rank `i`; returns once the write quorum
    /// holds this version, or once it no longer can: outranked when owners holding a
    /// newer version made it impossible, an error when failures did. With fewer
    /// nodes up than `k + m`, the shards beyond the last owner are not stored (repair
    /// adds them once nodes return).
    async fn store_frames(
        &self,
        key: &str,
        version: Version,
        stamp: Stamp,
        frames: Vec<Bytes>,
        op: QuorumOp,
    ) -> Result<Stored, ApiError> {
        let owners = self.cluster.view().owners(key, frames.len());
        let total = owners.len();
        if total < self.write_quorum {
            self.metrics.write_quorum_failure(op);
            return Err(ApiError::Unavailable(format!(
                "write quorum not reached: only {total} aux nodes are up, {} needed",
                self.write_quorum
            )));
        }
        let mut answers = self
            .shards
            .put_all(owners.into_iter().zip(frames).collect());
        let (mut acknowledged, mut outranked, mut failures) = (0, 0, Vec::new());
        let mut newest_met = version;
        while let Some((owner, outcome)) = answers.next().await {
            match outcome {
                Ok(PutOutcome::Stored) => acknowledged += 1,
                // A concurrent write: stamped by this master after this one, or
                // newer than every version the first stamp met.
                Ok(PutOutcome::Superseded(newer))
                    if newer.writer == version.writer || stamp == Stamp::Restamped =>
                {
                    self.clock.observe(newer);
                    acknowledged += 1;
                }
                Ok(PutOutcome::Superseded(newer)) => {
                    self.clock.observe(newer);
                    newest_met = newest_met.max(newer);
                    outranked += 1;
                }
                Err(error) => {
                    tracing::debug!(node = %owner.id, %error, "shard write failed");
                    failures.push(format!("{}: {error}", owner.id));
                }
            }
            if acknowledged >= self.write_quorum {
                return Ok(Stored::Acknowledged);
            }
            if outranked + failures.len() > total - self.write_quorum {
                if outranked > 0 {
                    return Ok(Stored::Outranked(newest_met));
                }
                break;
            }
        }
        self.metrics.write_quorum_failure(op);
        Err(ApiError::Unavailable(format!(
            "write quorum not reached: {acknowledged} of {total} shards stored, {} needed ({})",
            self.write_quorum,
            failures.join("; ")
        )))
    }
}
