//! The read, write and delete paths: from a key and a value to shards on aux nodes
//! and back.
//!
//! **Write.** Take a fresh version, encode the value into `k + m` shards, send shard
//! `i` to the key's owner of rank `i`, all at once, and acknowledge once `W` (the
//! write quorum) owners stored it. An owner that already holds a *newer* version
//! counts towards `W`: under last-writer-wins this write is then already overwritten.
//!
//! **Read.** Ask every owner for its shard. Group the answers by version; the newest
//! version with `k` shards is decoded (a plain concatenation when the `k` data shards
//! are there) and checked against the value checksum in its frames. A tombstone
//! newer than it means "deleted". The read stops waiting once enough owners have
//! answered to be sure it has seen every acknowledged write (see [`ReadFloors`]:
//! all but one owner for 3+2) and the newest version seen is decodable or a
//! tombstone, so one dead or hung owner costs nothing. A miss waits for every owner
//! (or its timeout) before it says 404.
//!
//! **Delete.** A read (so a missing key answers 404), then a tombstone with a newer
//! version to every owner, acknowledged at the same quorum as a write.
//!
//! **Owners** are the first `k + m` nodes of the key's placement in the current
//! [`View`]: down nodes are skipped (their shard goes to the next node of the ring)
//! and never waited for. When the owners' answers are inconclusive (no version
//! decodable, or a miss shortly after placement changed), the read also asks the rest
//! of the placement, where shards written under another view may still sit.
//!
//! **Read-repair.** A read that decoded a value (or found a tombstone) and heard an
//! owner answer "none" or an older version gives that owner the missing shard in the
//! background, version-guarded like every write.
//!
//! Every shard request is bounded by the client's timeout and is left to finish after
//! the client got its answer: the remaining owners still receive their shards, and
//! dropping a request half-way would close its pooled connection. Writes and
//! unbatched reads run each request in a task of its own for that; batched reads
//! need none, as the request belongs to the node's batch (see
//! [`crate::read_batcher`]), and a read that settles early simply stops listening.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, FuturesUnordered, StreamExt};
use shardcache_common::aux_client::PutOutcome;
use shardcache_common::codec::{value_checksum, Codec, CodecError};
use shardcache_common::frame::ShardFrame;
use shardcache_common::unix_millis;
use shardcache_common::version::{HybridClock, Version};
use tokio::sync::{mpsc, Semaphore};

use crate::cluster::{Cluster, Node};
use crate::error::ApiError;
use crate::metrics::{MasterMetrics, QuorumOp};
use crate::read_batcher::ShardRead;
use crate::shard_client::ShardClient;

/// How often a read that found only partial versions (racing writers) is retried.
const PARTIAL_READ_RETRIES: u32 = 4;

/// For this long after placement changed, a miss also asks the nodes beyond the
/// owners: shards may not have been moved to their new owners yet.
const RECENT_PLACEMENT_CHANGE: Duration = Duration::from_secs(300);

/// Most read-repairs in flight; beyond it a read leaves the fix to the repairer.
const MAX_READ_REPAIRS_IN_FLIGHT: usize = 64;

/// What one round of a read found.
enum ReadOutcome {
    Value(Found),
    /// Deleted: a tombstone is the newest version.
    Deleted,
    /// No value: never written, or expired.
    Absent,
    /// Every owner answered, but no version had `k` shards. `recoverable` when
    /// down owners may hold enough of the missing shards to make one decodable.
    Partial {
        recoverable: bool,
    },
    Unavailable(String),
    /// `k` shards of one version did not rebuild their value (or failed the value
    /// checksum): stored data is corrupt or inconsistent.
    Undecodable {
        reason: String,
        checksum: bool,
    },
}

/// A value read back, with the version that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub version: Version,
    pub value: Vec<u8>,
    /// Some owner asked failed to answer or lacked this version's shard, or the
    /// value was found only by asking nodes beyond the owners.
    pub degraded: bool,
}

/// Everything a master needs to place, code and fetch shards.
pub struct DataPath {
    cluster: Arc<Cluster>,
    codec: Codec,
    shards: ShardClient,
    metrics: Arc<MasterMetrics>,
    clock: HybridClock,
    write_quorum: usize,
    /// Derived from the geometry and `write_quorum` once; see [`ReadFloors`].
    read_floors: ReadFloors,
    tombstone_ttl: Duration,
    read_repairs: Arc<Semaphore>,
}

impl DataPath {
    pub fn new(
        cluster: Arc<Cluster>,
        codec: Codec,
        shards: ShardClient,
        metrics: Arc<MasterMetrics>,
        write_quorum: usize,
        tombstone_ttl: Duration,
    ) -> Self {
        let read_floors = ReadFloors::new(
            codec.total_shards(),
            write_quorum,
            usize::from(codec.parity_shards()),
        );
        DataPath {
            cluster,
            codec,
            shards,
            metrics,
            clock: HybridClock::with_random_writer(),
            write_quorum,
            read_floors,
            tombstone_ttl,
            read_repairs: Arc::new(Semaphore::new(MAX_READ_REPAIRS_IN_FLIGHT)),
        }
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The measured client for shard calls (bounded by `--shard-timeout`).
    pub fn shards(&self) -> &ShardClient {
        &self.shards
    }

    pub fn metrics(&self) -> &Arc<MasterMetrics> {
        &self.metrics
    }

    fn total_shards(&self) -> usize {
        self.codec.total_shards()
    }

    /// Stores `value` under `key`, expiring after `ttl` if given.
    pub async fn write(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Version, ApiError> {
        let version = self.clock.next();
        let expires_at_ms = ttl.map_or(0, |ttl| unix_millis() + ttl.as_millis() as u64);
        let checksum = value_checksum(value);
        let frames = self
            .codec
            .encode(value)
            .into_iter()
            .enumerate()
            .map(|(index, shard)| {
                ShardFrame {
                    tombstone: false,
                    value_len: value.len() as u64,
                    value_checksum: checksum,
                    payload: Bytes::from(shard),
                    ..self.tombstone_frame(key, version, index, expires_at_ms)
                }
                .encode()
            })
            .collect();
        self.store_frames(key, frames, QuorumOp::Write).await?;
        Ok(version)
    }

    /// Deletes `key`; `false` if there was no live value to delete.
    pub async fn delete(&self, key: &str) -> Result<bool, ApiError> {
        let Some(found) = self.read(key).await? else {
            return Ok(false);
        };
        self.clock.observe(found.version);
        let version = self.clock.next();
        let expires_at_ms = unix_millis() + self.tombstone_ttl.as_millis() as u64;
        let frames = (0..self.total_shards())
            .map(|index| {
                self.tombstone_frame(key, version, index, expires_at_ms)
                    .encode()
            })
            .collect();
        self.store_frames(key, frames, QuorumOp::Delete).await?;
        Ok(true)
    }

    /// The tombstone for shard `index` of `key` at `version`; a write's shard frames
    /// are this plus the value's length, checksum and payload.
    fn tombstone_frame(
        &self,
        key: &str,
        version: Version,
        index: usize,
        expires_at_ms: u64,
    ) -> ShardFrame {
        ShardFrame {
            key: key.to_owned(),
            version,
            tombstone: true,
            shard_index: index as u8,
            data_shards: self.codec.data_shards(),
            parity_shards: self.codec.parity_shards(),
            expires_at_ms,
            value_len: 0,
            value_checksum: 0,
            payload: Bytes::new(),
        }
    }

    /// Sends frame `i` to the key's owner of rank `i`; returns once the write quorum
    /// acknowledged, or fails once it no longer can. With fewer nodes up than
    /// `k + m`, the shards beyond the last owner are not stored (repair adds them
    /// once nodes return).
    async fn store_frames(
        &self,
        key: &str,
        frames: Vec<Bytes>,
        op: QuorumOp,
    ) -> Result<(), ApiError> {
        let owners = self.cluster.view().owners(key, frames.len());
        let total = owners.len();
        if total < self.write_quorum {
            self.metrics.write_quorum_failure(op);
            return Err(ApiError::Unavailable(format!(
                "write quorum not reached: only {total} aux nodes are up, {} needed",
                self.write_quorum
            )));
        }
        let mut answers = fan_out(owners.into_iter().zip(frames).map(|(owner, frame)| {
            let (shards, node) = (self.shards.clone(), owner.clone());
            (owner, async move { shards.put(&node, frame).await })
        }));
        let (mut acknowledged, mut failures) = (0, Vec::new());
        while let Some((owner, outcome)) = answers.recv().await {
            match outcome {
                Ok(PutOutcome::Stored) => acknowledged += 1,
                Ok(PutOutcome::Superseded(newer)) => {
                    self.clock.observe(newer);
                    acknowledged += 1;
                }
                Err(error) => {
                    tracing::debug!(node = %owner.id, %error, "shard write failed");
                    failures.push(format!("{}: {error}", owner.id));
                }
            }
            if acknowledged >= self.write_quorum {
                return Ok(());
            }
            if failures.len() > total - self.write_quorum {
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

    /// Reads `key`: `Ok(None)` on a miss or a delete, 503 when too few owners answer.
    ///
    /// Owners hold one version each, so while writers race on a key the owners can
    /// hold shards of several versions with none at `k` yet. Such a read is retried a
    /// few times, briefly, before it counts as a miss.
    pub async fn read(&self, key: &str) -> Result<Option<Found>, ApiError> {
        let mut backoff = Duration::from_millis(2);
        for attempt in 0.. {
            match self.read_once(key).await {
                ReadOutcome::Value(found) => return Ok(Some(found)),
                ReadOutcome::Absent | ReadOutcome::Deleted => return Ok(None),
                ReadOutcome::Partial { .. } if attempt < PARTIAL_READ_RETRIES => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                // Only part of the value is reachable, and the down owners may hold
                // the rest: "not found" could be wrong.
                ReadOutcome::Partial { recoverable: true } => {
                    return Err(ApiError::Unavailable(format!(
                        "fewer than k shards of {key:?} are reachable; the rest may be on aux nodes that are down"
                    )));
                }
                // Leftovers of a write that never reached its quorum: a miss.
                ReadOutcome::Partial { recoverable: false } => return Ok(None),
                ReadOutcome::Unavailable(reason) => return Err(ApiError::Unavailable(reason)),
                ReadOutcome::Undecodable { reason, checksum } => {
                    tracing::error!(key, %reason, "stored shards failed verification");
                    self.metrics.decode_failure(checksum);
                    return Err(ApiError::Unavailable(format!(
                        "stored shards of {key:?} failed verification"
                    )));
                }
            }
        }
        unreachable!("the retry loop always returns")
    }

    /// One round of asking the owners of `key` for their shards, and the rest of its
    /// placement too when the owners' answers are inconclusive.
    async fn read_once(&self, key: &str) -> ReadOutcome {
        let view = self.cluster.view();
        let mut placement = view.placement(key);
        let mut seen = SeenVersions {
            down_owners: view.down_owners(key, self.total_shards()),
            ..SeenVersions::default()
        };
        let beyond = placement.split_off(self.total_shards().min(placement.len()));
        let owners = placement;
        self.collect(key, &owners, &mut seen, true).await;
        let outcome = self.decide(key, &seen, self.read_floors);
        let recently_moved = view.changed_at.elapsed() < RECENT_PLACEMENT_CHANGE;
        let inconclusive = match &outcome {
            ReadOutcome::Partial { .. }
            | ReadOutcome::Unavailable(_)
            | ReadOutcome::Undecodable { .. } => true,
            ReadOutcome::Absent => recently_moved,
            ReadOutcome::Value(_) | ReadOutcome::Deleted => false,
        };
        if !inconclusive || beyond.is_empty() {
            self.read_repair(key, &owners, &seen, &outcome);
            return outcome;
        }
        tracing::debug!(
            key,
            asked = beyond.len(),
            "owners were inconclusive; asking the other nodes"
        );
        self.collect(key, &beyond, &mut seen, false).await;
        let mut outcome = self.decide(key, &seen, self.read_floors);
        if let ReadOutcome::Value(found) = &mut outcome {
            found.degraded = true;
        }
        self.read_repair(key, &owners, &seen, &outcome);
        outcome
    }

    /// Asks `nodes` for their shard of `key`, adding the answers to `seen`. With
    /// `settle_early`, stops listening once the newest version is settled (see
    /// [`ReadFloors`]); the remaining requests finish in the background.
    async fn collect(
        &self,
        key: &str,
        nodes: &[Node],
        seen: &mut SeenVersions,
        settle_early: bool,
    ) {
        let gets = nodes.iter().map(|node| {
            let (shards, node, key) = (self.shards.clone(), node.clone(), key.to_owned());
            (node.clone(), async move { shards.get(&node, &key).await })
        });
        let mut answers: BoxStream<'static, (Node, ShardRead)> = if self.shards.gets_are_batched() {
            // Polled right here: gets still pending when the read settles are dropped,
            // which costs nothing (see `read_batcher`), and no task is spawned per shard.
            gets.map(|(node, get)| async move { (node, get.await) })
                .collect::<FuturesUnordered<_>>()
                .boxed()
        } else {
            let mut receiver = fan_out(gets);
            futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)).boxed()
        };
        let now_ms = unix_millis();
        while let Some((node, outcome)) = answers.next().await {
            match outcome {
                Ok(Some(frame)) if frame.key != key => {
                    tracing::warn!(node = %node.id, held = %frame.key, "aux node answered with another key's shard");
                    seen.failures += 1;
                }
                Ok(Some(frame)) if frame.is_expired(now_ms) => seen.add_none(node),
                Ok(Some(frame)) => {
                    self.clock.observe(frame.version);
                    seen.add(node, frame);
                }
                Ok(None) => seen.add_none(node),
                Err(error) => {
                    tracing::debug!(node = %node.id, %error, "shard read failed");
                    seen.failures += 1;
                }
            }
            if settle_early && seen.answered >= self.read_floors.settle && seen.newest_is_settled()
            {
                break;
            }
        }
    }

    /// Turns the shards a read collected into its answer: the newest decodable
    /// version, unless a newer tombstone says the key was deleted.
    fn decide(&self, key: &str, seen: &SeenVersions, floors: ReadFloors) -> ReadOutcome {
        // The most shards any undecodable version has, and how many it needs.
        let mut partial: Option<(usize, usize)> = None;
        for (version, shards) in seen.versions.iter().rev() {
            if shards.tombstone {
                return ReadOutcome::Deleted;
            }
            if shards.frames.len() < shards.needed() {
                let (most, needed) = partial.unwrap_or((0, shards.needed()));
                partial = Some((most.max(shards.frames.len()), needed));
                continue;
            }
            return match self.decode(&shards.frames) {
                Ok(value) => ReadOutcome::Value(Found {
                    version: *version,
                    value,
                    degraded: seen.is_degraded(*version),
                }),
                Err(error) => ReadOutcome::Undecodable {
                    reason: format!("version {version}: {error}"),
                    checksum: matches!(error, CodecError::ChecksumMismatch),
                },
            };
        }
        // Nothing decodable. Owners that did not answer may hold what is missing;
        // and when as many of the key's owners are down as a write needs, every
        // shard of an acknowledged write may be on them.
        if (partial.is_some() && seen.failures > 0)
            || seen.answered < floors.miss
            || seen.down_owners >= self.write_quorum
        {
            return ReadOutcome::Unavailable(format!(
                "too few aux nodes answered to read {key:?}: {} answered, {} failed, {} of its owners down",
                seen.answered, seen.failures, seen.down_owners
            ));
        }
        match partial {
            Some((most, needed)) => ReadOutcome::Partial {
                recoverable: most + seen.down_owners >= needed,
            },
            None => ReadOutcome::Absent,
        }
    }

    /// Gives owners that answered "none" or an older version the shard they lack, in
    /// the background, when every owner answered. Conditional puts make a stale
    /// repair harmless.
    fn read_repair(&self, key: &str, owners: &[Node], seen: &SeenVersions, outcome: &ReadOutcome) {
        let version = match outcome {
            ReadOutcome::Value(found) => found.version,
            ReadOutcome::Deleted => match seen.versions.last_key_value() {
                Some((version, _)) => *version,
                None => return,
            },
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
        let Some(shards) = seen.versions.get(&version) else {
            return;
        };
        let frames: Vec<ShardFrame> = match (outcome, &shards.template) {
            (ReadOutcome::Value(found), _) => {
                match self.rebuild_frames(&shards.frames, &found.value) {
                    Ok(frames) => frames,
                    Err(_) => return,
                }
            }
            (_, Some(template)) => (0..self.total_shards())
                .map(|index| ShardFrame {
                    shard_index: index as u8,
                    ..template.clone()
                })
                .collect(),
            _ => return,
        };
        let held_indices: Vec<u8> = shards
            .frames
            .iter()
            .map(|frame| frame.shard_index)
            .collect();
        let spare = frames
            .into_iter()
            .filter(|frame| frame.tombstone || !held_indices.contains(&frame.shard_index));
        for (owner, frame) in lacking.into_iter().zip(spare) {
            let Ok(permit) = self.read_repairs.clone().try_acquire_owned() else {
                return;
            };
            let (shards, metrics, owner) =
                (self.shards.clone(), self.metrics.clone(), (*owner).clone());
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

    /// All `k + m` frames of the write that `frames` (any `k` of its shards) and the
    /// decoded `value` belong to, with the same version, expiry and checksum.
    pub(crate) fn rebuild_frames(
        &self,
        frames: &[ShardFrame],
        value: &[u8],
    ) -> Result<Vec<ShardFrame>, CodecError> {
        let first = &frames[0];
        let shards = self.with_codec(first, |codec| codec.encode(value))?;
        Ok(shards
            .into_iter()
            .enumerate()
            .map(|(index, shard)| ShardFrame {
                shard_index: index as u8,
                payload: Bytes::from(shard),
                ..first.clone()
            })
            .collect())
    }

    /// The codec for the geometry `frame` was written with (shards written under
    /// another k/m, by a reconfigured cluster, decode with their own).
    fn with_codec<R>(
        &self,
        frame: &ShardFrame,
        work: impl FnOnce(&Codec) -> R,
    ) -> Result<R, CodecError> {
        if (frame.data_shards, frame.parity_shards)
            == (self.codec.data_shards(), self.codec.parity_shards())
        {
            Ok(work(&self.codec))
        } else {
            Ok(work(&Codec::new(frame.data_shards, frame.parity_shards)?))
        }
    }

    /// Decodes the value from `k` or more distinct shards of one write and verifies
    /// its checksum.
    pub(crate) fn decode(&self, frames: &[ShardFrame]) -> Result<Vec<u8>, CodecError> {
        let first = &frames[0];
        self.with_codec(first, |codec| {
            let mut shards = vec![None; codec.total_shards()];
            for frame in frames {
                if let Some(slot) = shards.get_mut(usize::from(frame.shard_index)) {
                    *slot = Some(frame.payload.to_vec());
                }
            }
            codec.decode(shards, first.value_len, first.value_checksum)
        })?
    }
}

/// How many owners must have answered before a read may conclude.
///
/// An acknowledged write (or delete) reached `W` owners. If up to `m` of those later
/// lose it (restarted empty, or restored from an older snapshot, possibly holding an
/// older version), `W - m` still hold it, so hearing from `n - (W - m) + 1` owners
/// guarantees seeing it: only then may the newest version seen be trusted without
/// waiting for the rest. With `k + m` owners and `W = k + 1` that is all but one,
/// so one slow or hung owner still costs nothing.
#[derive(Clone, Copy, Debug)]
struct ReadFloors {
    /// Answers after which a decodable newest version (or tombstone) is returned.
    settle: usize,
    /// Answers needed for a miss to be a 404 rather than a 503: enough to include a
    /// shard of every acknowledged write while no owner has lost data.
    miss: usize,
}

impl ReadFloors {
    fn new(owners: usize, write_quorum: usize, parity_shards: usize) -> Self {
        let write_quorum = write_quorum.min(owners);
        let survivors = write_quorum.saturating_sub(parity_shards).max(1);
        ReadFloors {
            settle: owners + 1 - survivors,
            miss: owners + 1 - write_quorum,
        }
    }
}

/// Runs every `(owner, call)` in a task of its own and yields `(owner, result)` as
/// each finishes. The tasks outlive the receiver: a caller that stops listening once
/// it has enough answers leaves the rest to complete (their shards still land, and
/// their pooled connections stay open).
fn fan_out<L, T, Fut>(calls: impl Iterator<Item = (L, Fut)>) -> mpsc::Receiver<(L, T)>
where
    L: Send + 'static,
    T: Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let calls: Vec<(L, Fut)> = calls.collect();
    let (results, answers) = mpsc::channel(calls.len().max(1));
    for (owner, call) in calls {
        let results = results.clone();
        tokio::spawn(async move {
            let outcome = call.await;
            let _ = results.send((owner, outcome)).await;
        });
    }
    answers
}

/// What the owners of one key answered, grouped by version.
#[derive(Default)]
struct SeenVersions {
    versions: BTreeMap<Version, VersionShards>,
    /// What each node that answered holds: a version, or nothing (`None`).
    answers: std::collections::HashMap<Arc<str>, Option<Version>>,
    /// Nodes that answered (with a shard, a tombstone or "none").
    answered: usize,
    /// Nodes that failed or timed out.
    failures: usize,
    /// The key's owners that are down, so were not asked (they may hold shards).
    down_owners: usize,
}

#[derive(Default)]
struct VersionShards {
    tombstone: bool,
    /// A tombstone frame of this version, to copy when repairing a delete.
    template: Option<ShardFrame>,
    /// Distinct shard indices of one write; all share its header fields.
    frames: Vec<ShardFrame>,
}

impl VersionShards {
    fn needed(&self) -> usize {
        self.frames
            .first()
            .map_or(usize::MAX, |frame| usize::from(frame.data_shards))
    }
}

impl SeenVersions {
    /// True when a node asked failed, or answered without a shard of `version`.
    fn is_degraded(&self, version: Version) -> bool {
        self.failures > 0
            || self
                .answers
                .values()
                .any(|held| held.is_none_or(|held| held < version))
    }

    fn add_none(&mut self, node: Node) {
        self.answered += 1;
        self.answers.insert(node.id, None);
    }

    fn add(&mut self, node: Node, frame: ShardFrame) {
        self.answered += 1;
        self.answers.insert(node.id, Some(frame.version));
        let shards = self.versions.entry(frame.version).or_default();
        if frame.tombstone {
            shards.tombstone = true;
            shards.template.get_or_insert(frame);
            return;
        }
        let same_write = |held: &ShardFrame| {
            (
                held.value_len,
                held.value_checksum,
                held.data_shards,
                held.parity_shards,
            ) == (
                frame.value_len,
                frame.value_checksum,
                frame.data_shards,
                frame.parity_shards,
            )
        };
        let duplicate = shards
            .frames
            .iter()
            .any(|held| held.shard_index == frame.shard_index);
        if !duplicate && shards.frames.first().is_none_or(same_write) {
            shards.frames.push(frame);
        }
    }

    /// Whether the newest version seen so far can be answered with: a tombstone, or
    /// enough shards to decode. A miss is never settled early: owners that lost their
    /// data (restarted empty) answer "none" fastest, so a miss waits for every owner.
    fn newest_is_settled(&self) -> bool {
        self.versions
            .last_key_value()
            .is_some_and(|(_, shards)| shards.tombstone || shards.frames.len() >= shards.needed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_floors_tolerate_m_lost_owners_and_one_slow_one() {
        // 3+2, W=4: trust the newest version after 4 answers; a miss needs 2.
        let floors = ReadFloors::new(5, 4, 2);
        assert_eq!((floors.settle, floors.miss), (4, 2));
        // 1+2 replication, W=2: all 3 owners before trusting; a miss needs 2.
        let floors = ReadFloors::new(3, 2, 2);
        assert_eq!((floors.settle, floors.miss), (3, 2));
        // W = k+m: every owner has every acknowledged write.
        let floors = ReadFloors::new(5, 5, 2);
        assert_eq!((floors.settle, floors.miss), (3, 1));
    }

    fn frame(timestamp: u64, index: u8, tombstone: bool) -> ShardFrame {
        ShardFrame {
            key: "k".into(),
            version: Version {
                timestamp,
                writer: 1,
            },
            tombstone,
            shard_index: index,
            data_shards: 3,
            parity_shards: 2,
            expires_at_ms: 0,
            value_len: if tombstone { 0 } else { 3 },
            value_checksum: 0,
            payload: if tombstone {
                Bytes::new()
            } else {
                Bytes::from_static(b"x")
            },
        }
    }

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            address: id.into(),
        }
    }

    #[test]
    fn the_newest_version_settles_only_once_decodable_or_deleted() {
        let mut seen = SeenVersions::default();
        assert!(
            !seen.newest_is_settled(),
            "nothing seen is never settled early"
        );
        seen.add(node("n"), frame(1, 0, false));
        seen.add(node("n"), frame(1, 1, false));
        seen.add(node("n"), frame(1, 1, false));
        assert!(
            !seen.newest_is_settled(),
            "a duplicate index does not count twice"
        );
        seen.add(node("n"), frame(1, 2, false));
        assert!(seen.newest_is_settled());
        seen.add(node("n"), frame(2, 0, false));
        assert!(
            !seen.newest_is_settled(),
            "a newer partial version is not settled"
        );
        seen.add(node("n"), frame(3, 4, true));
        assert!(seen.newest_is_settled(), "a newer tombstone is");
        assert_eq!(seen.answered, 6);
    }
}
