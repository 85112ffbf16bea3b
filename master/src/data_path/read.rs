//! Reads: gather the shards of a key from its owners (and beyond them when the
//! owners are inconclusive), take the [`verdict`] on them, decode what it names,
//! and give owners that lack the answer's shard a copy (read-repair).

use std::time::Duration;

use shardcache_common::aux_client::PutOutcome;
use shardcache_common::codec::CodecError;
use shardcache_common::frame::ShardFrame;
use shardcache_common::version::Version;

use super::verdict::{self, SeenVersions, Verdict};
use super::{DataPath, Found, Miss};
use crate::cluster::{Node, ReadPlacement};
use crate::error::ApiError;
use crate::metrics::{ForeignShardSeenBy, ReadResult};
use crate::shards::frames;

/// How often a read that found only partial versions, or an unsettled newer write
/// (racing writers), is retried.
const PARTIAL_READ_RETRIES: u32 = 4;

/// For this long after placement changed, a miss also asks the nodes beyond the
/// owners: shards may not have been moved to their new owners yet.
const RECENT_PLACEMENT_CHANGE: Duration = Duration::from_secs(300);

/// What one round of a read found: the verdict, with the value decoded.
enum ReadOutcome {
    Value(Found),
    /// A verdict other than [`Verdict::Decode`].
    NoValue(Verdict),
    /// `k` shards of one version did not rebuild their value (or failed the value
    /// checksum): stored data is corrupt or inconsistent.
    Undecodable {
        reason: String,
        checksum: bool,
    },
}

impl DataPath {
    /// A client's read of `key`: [`find`](Self::find), counted in the read metrics
    /// (hit, miss or unavailable, and degraded hits) — the one place reads are
    /// counted, for single and batched reads alike.
    pub(crate) async fn read(&self, key: &str) -> Result<Result<Found, Miss>, ApiError> {
        let outcome = self.find(key).await;
        let result = match &outcome {
            Ok(Ok(found)) => {
                if found.degraded {
                    self.metrics.degraded_read();
                }
                ReadResult::Hit
            }
            Ok(Err(_)) => ReadResult::Miss,
            Err(_) => ReadResult::Unavailable,
        };
        self.metrics.read(result);
        outcome
    }

    /// Finds `key`'s value: `Ok(Err(miss))` on a miss or a delete, 503 when the verdict is
    /// that the answer cannot be known (see [`verdict`]).
    ///
    /// Owners hold one version each, so while writers race on a key the owners can
    /// hold shards of several versions with none at `k` yet. Such a read is retried a
    /// few times, briefly, before it counts as a miss: [`Miss::Partial`], as is any
    /// miss found by a retry.
    pub(crate) async fn find(&self, key: &str) -> Result<Result<Found, Miss>, ApiError> {
        let mut backoff = Duration::from_millis(2);
        for attempt in 0.. {
            let miss = match attempt {
                0 => Miss::Absent,
                _ => Miss::Partial,
            };
            let verdict = match self.read_once(key).await {
                ReadOutcome::Value(found) => return Ok(Ok(found)),
                ReadOutcome::Undecodable { reason, checksum } => {
                    tracing::error!(key, %reason, "stored shards failed verification");
                    self.metrics.decode_failure(checksum);
                    return Err(ApiError::Unavailable(format!(
                        "stored shards of {key:?} failed verification"
                    )));
                }
                ReadOutcome::NoValue(verdict) => verdict,
            };
            match verdict {
                Verdict::Partial { .. } | Verdict::Unsettled(_)
                    if attempt < PARTIAL_READ_RETRIES =>
                {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Verdict::Absent | Verdict::Deleted(_) => return Ok(Err(miss)),
                // Only part of the value is reachable, and the down owners may hold
                // the rest: "not found" could be wrong.
                Verdict::Partial { recoverable: true } => {
                    return Err(ApiError::Unavailable(format!(
                        "fewer than k shards of {key:?} are reachable; the rest may be on aux nodes that are down"
                    )));
                }
                // Leftovers of a write that never reached its quorum: a miss.
                Verdict::Partial { recoverable: false } => return Ok(Err(Miss::Partial)),
                Verdict::Unsettled(reason) => {
                    return Err(ApiError::Unavailable(format!(
                        "{key:?} is unsettled: {reason}"
                    )))
                }
                Verdict::Unavailable(counts) => {
                    return Err(ApiError::Unavailable(format!(
                        "too few aux nodes answered to read {key:?}: {counts}"
                    )))
                }
                Verdict::Decode(_) => unreachable!("decoded in read_once"),
            }
        }
        unreachable!("the retry loop always returns")
    }

    /// One round of asking the owners of `key` for their shards, and the rest of its
    /// placement too when the owners' answers are inconclusive.
    async fn read_once(&self, key: &str) -> ReadOutcome {
        let view = self.cluster.view();
        let ReadPlacement {
            owners,
            beyond,
            down_owners,
        } = view.read_placement(key, self.total_shards());
        let mut seen = SeenVersions {
            down_owners,
            ..SeenVersions::default()
        };
        self.collect(key, &owners, &mut seen, true).await;
        let verdict = verdict::verdict(&seen, self.read_floors);
        let recently_moved = view.changed_at.elapsed() < RECENT_PLACEMENT_CHANGE;
        if !verdict.is_inconclusive(recently_moved) || beyond.is_empty() {
            let outcome = self.outcome(&seen, verdict);
            self.read_repair(key, &owners, &seen, &outcome);
            return outcome;
        }
        tracing::debug!(
            key,
            asked = beyond.len(),
            "owners were inconclusive; asking the other nodes"
        );
        self.collect(key, &beyond, &mut seen, false).await;
        let mut outcome = self.outcome(&seen, verdict::verdict(&seen, self.read_floors));
        if let ReadOutcome::Value(found) = &mut outcome {
            found.degraded = true;
        }
        self.read_repair(key, &owners, &seen, &outcome);
        outcome
    }

    /// Decodes the version a [`Verdict::Decode`] names.
    fn outcome(&self, seen: &SeenVersions, verdict: Verdict) -> ReadOutcome {
        let Verdict::Decode(version) = verdict else {
            return ReadOutcome::NoValue(verdict);
        };
        let frames = &seen.versions[&version].frames;
        match frames::decode(&self.codec, frames) {
            Ok(value) => ReadOutcome::Value(Found {
                version,
                value,
                degraded: seen.is_degraded(version),
                expires_in_ms: frames
                    .iter()
                    .map(|frame| frame.expiry_ms)
                    .filter(|&time_left| time_left != 0)
                    .min(),
            }),
            Err(error) => ReadOutcome::Undecodable {
                reason: format!("version {version}: {error}"),
                checksum: matches!(error, CodecError::ChecksumMismatch),
            },
        }
    }

    /// Asks `nodes` for their shard of `key`, adding the answers to `seen`. With
    /// `settle_early`, stops listening once the newest version is settled (see
    /// [`verdict::ReadFloors`]); the remaining requests finish in the background.
    async fn collect(
        &self,
        key: &str,
        nodes: &[Node],
        seen: &mut SeenVersions,
        settle_early: bool,
    ) {
        let mut answers = self.shards.gather(key, nodes);
        while let Some((node, outcome)) = answers.next().await {
            match outcome {
                Ok(Some(frame)) if frame.key != key => {
                    tracing::warn!(node = %node.id, held = %frame.key, "aux node answered with another key's shard");
                    seen.add_failure();
                }
                // Only shards this cluster writes are decoded: a frame claiming
                // another geometry (say k = 1, a whole value in one shard) is not
                // trusted to stand for the key.
                Ok(Some(frame)) if frame.geometry() != self.codec.geometry() => {
                    tracing::warn!(
                        node = %node.id,
                        key,
                        k = frame.data_shards,
                        m = frame.parity_shards,
                        "aux node answered with a shard of a geometry this master does not write"
                    );
                    self.metrics.foreign_shard(ForeignShardSeenBy::Read);
                    seen.add_failure();
                }
                Ok(Some(frame)) => {
                    self.clock.observe(frame.version);
                    seen.add(node, frame);
                }
                Ok(None) => seen.add_none(node),
                Err(error) => {
                    tracing::debug!(node = %node.id, %error, "shard read failed");
                    seen.add_failure();
                }
            }
            if settle_early && seen.answered >= self.read_floors.settle && seen.newest_is_settled()
            {
                break;
            }
        }
    }

    /// Gives owners that answered "none" or an older version the shard they lack, in
    /// the background, when every owner answered. Conditional puts make a stale
    /// repair harmless.
    fn read_repair(&self, key: &str, owners: &[Node], seen: &SeenVersions, outcome: &ReadOutcome) {
        let version = match outcome {
            ReadOutcome::Value(found) => found.version,
            ReadOutcome::NoValue(Verdict::Deleted(version)) => *version,
            _ => return,
        };
        // Indices are only known to be free once every owner has answered; a read
        // that settled early leaves the fix to the repairer rather than risk giving
        // two owners the same index.
        if !owners
            .iter()
            .all(|owner| seen.answers.contains_key(&owner.id))
        {
            return;
        }
        let lacking: Vec<&Node> = owners
            .iter()
            .filter(|owner| match seen.answers.get(&owner.id) {
                Some(Some(held)) => *held < version,
                Some(None) => true,
                None => false,
            })
            .collect();
        if lacking.is_empty() {
            return; // the common case: nothing is encoded
        }
        let Some(frames) = self.repair_frames(seen, version, outcome) else {
            return;
        };
        for (owner, frame) in lacking.into_iter().zip(frames) {
            self.spawn_read_repair(key, owner, frame);
        }
    }

    /// The frames of `version` that no owner holds yet (every tombstone frame for a
    /// delete), to give to owners that lack one.
    fn repair_frames(
        &self,
        seen: &SeenVersions,
        version: Version,
        outcome: &ReadOutcome,
    ) -> Option<Vec<ShardFrame>> {
        let shards = seen.versions.get(&version)?;
        let frames: Vec<ShardFrame> = match (outcome, &shards.template) {
            (ReadOutcome::Value(found), _) => {
                frames::rebuild(&self.codec, &shards.frames, &found.value).ok()?
            }
            (_, Some(template)) => (0..self.total_shards())
                .map(|index| ShardFrame {
                    shard_index: index as u8,
                    ..template.clone()
                })
                .collect(),
            _ => return None,
        };
        let held_indices: Vec<u8> = shards
            .frames
            .iter()
            .map(|frame| frame.shard_index)
            .collect();
        Some(
            frames
                .into_iter()
                .filter(|frame| frame.tombstone || !held_indices.contains(&frame.shard_index))
                .collect(),
        )
    }

    /// Puts `frame` on `owner` in the background, within the read-repair budget.
    fn spawn_read_repair(&self, key: &str, owner: &Node, frame: ShardFrame) {
        let Ok(permit) = self.read_repairs.clone().try_acquire_owned() else {
            return;
        };
        let (shards, metrics, owner) = (self.shards.clone(), self.metrics.clone(), owner.clone());
        let key = key.to_owned();
        tokio::spawn(async move {
            let _permit = permit;
            match shards.put(&owner, frame.encode()).await {
                Ok(PutOutcome::Stored) => {
                    metrics.read_repaired_shard();
                    tracing::debug!(key, node = %owner.id, "read-repaired a shard");
                }
                Ok(PutOutcome::Superseded(_)) => {}
                Err(error) => {
                    tracing::debug!(key, node = %owner.id, %error, "read-repair failed")
                }
            }
        });
    }
}
