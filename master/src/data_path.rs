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
//! Every shard request runs in a task of its own with the client's timeout, and is
//! left to finish after the client got its answer: the remaining owners still receive
//! their shards, and dropping a request half-way would close its pooled connection.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use shardcache_common::aux_client::{AuxClient, PutOutcome};
use shardcache_common::codec::{value_checksum, Codec};
use shardcache_common::frame::ShardFrame;
use shardcache_common::ring::Ring;
use shardcache_common::unix_millis;
use shardcache_common::version::{HybridClock, Version};
use tokio::sync::mpsc;

use crate::error::ApiError;

/// How often a read that found only partial versions (racing writers) is retried.
const PARTIAL_READ_RETRIES: u32 = 4;

/// What one round of a read found.
enum ReadOutcome {
    Value(Found),
    /// No value: never written, expired, or deleted (a tombstone is newest).
    Absent,
    /// Every owner answered, but no version had `k` shards.
    Partial,
    Unavailable(String),
}

/// A value read back, with the version that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub version: Version,
    pub value: Vec<u8>,
}

/// Everything a master needs to place, code and fetch shards.
pub struct DataPath {
    ring: Ring,
    codec: Codec,
    client: AuxClient,
    clock: HybridClock,
    write_quorum: usize,
    /// Derived from the geometry and `write_quorum` once; see [`ReadFloors`].
    read_floors: ReadFloors,
    tombstone_ttl: Duration,
}

impl DataPath {
    pub fn new(
        ring: Ring,
        codec: Codec,
        client: AuxClient,
        write_quorum: usize,
        tombstone_ttl: Duration,
    ) -> Self {
        let read_floors = ReadFloors::new(
            codec.total_shards(),
            write_quorum,
            usize::from(codec.parity_shards()),
        );
        DataPath {
            ring,
            codec,
            client,
            clock: HybridClock::with_random_writer(),
            write_quorum,
            read_floors,
            tombstone_ttl,
        }
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
        self.store_frames(key, frames).await?;
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
        self.store_frames(key, frames).await?;
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
    /// acknowledged, or fails once it no longer can.
    async fn store_frames(&self, key: &str, frames: Vec<Bytes>) -> Result<(), ApiError> {
        let owners = self.ring.owners(key, frames.len());
        let total = owners.len();
        let mut answers = fan_out(owners.into_iter().zip(frames).map(|(owner, frame)| {
            let (client, node) = (self.client.clone(), owner.to_owned());
            (owner.to_owned(), async move {
                client.put_shard(&node, frame).await
            })
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
                    tracing::debug!(%owner, %error, "shard write failed");
                    failures.push(format!("{owner}: {error}"));
                }
            }
            if acknowledged >= self.write_quorum {
                return Ok(());
            }
            if failures.len() > total - self.write_quorum {
                break;
            }
        }
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
                ReadOutcome::Absent => return Ok(None),
                ReadOutcome::Partial if attempt < PARTIAL_READ_RETRIES => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                // Leftovers of a write that never reached its quorum: a miss.
                ReadOutcome::Partial => return Ok(None),
                ReadOutcome::Unavailable(reason) => return Err(ApiError::Unavailable(reason)),
            }
        }
        unreachable!("the retry loop always returns")
    }

    /// One round of asking every owner of `key` for its shard.
    async fn read_once(&self, key: &str) -> ReadOutcome {
        let owners = self.ring.owners(key, self.total_shards());
        let mut answers = fan_out(owners.into_iter().map(|owner| {
            let (client, node, key) = (self.client.clone(), owner.to_owned(), key.to_owned());
            (owner.to_owned(), async move {
                client.get_shard(&node, &key).await
            })
        }));
        let floors = self.read_floors;
        let mut seen = SeenVersions::default();
        let now_ms = unix_millis();
        while let Some((owner, outcome)) = answers.recv().await {
            match outcome {
                Ok(Some(frame)) if frame.key != key => {
                    tracing::warn!(%owner, held = %frame.key, "aux node answered with another key's shard");
                    seen.failures += 1;
                }
                Ok(Some(frame)) if frame.is_expired(now_ms) => seen.answered += 1,
                Ok(Some(frame)) => {
                    self.clock.observe(frame.version);
                    seen.add(frame);
                }
                Ok(None) => seen.answered += 1,
                Err(error) => {
                    tracing::debug!(%owner, %error, "shard read failed");
                    seen.failures += 1;
                }
            }
            if seen.answered >= floors.settle && seen.newest_is_settled() {
                break;
            }
        }
        self.decide(key, seen, floors)
    }

    /// Turns the shards a read collected into its answer: the newest decodable
    /// version, unless a newer tombstone says the key was deleted.
    fn decide(&self, key: &str, seen: SeenVersions, floors: ReadFloors) -> ReadOutcome {
        let mut partial = false;
        for (version, shards) in seen.versions.into_iter().rev() {
            if shards.tombstone {
                return ReadOutcome::Absent;
            }
            if shards.frames.len() < shards.needed() {
                partial = true;
                continue;
            }
            return match self.decode(&shards.frames) {
                Ok(value) => ReadOutcome::Value(Found { version, value }),
                Err(error) => {
                    tracing::error!(key, %version, %error, "stored shards failed verification");
                    ReadOutcome::Unavailable(format!(
                        "stored shards of {key:?} failed verification"
                    ))
                }
            };
        }
        // Nothing decodable. Owners that did not answer may hold what is missing.
        if (partial && seen.failures > 0) || seen.answered < floors.miss {
            return ReadOutcome::Unavailable(format!(
                "too few aux nodes answered to read {key:?}: {} answered, {} failed",
                seen.answered, seen.failures
            ));
        }
        match partial {
            true => ReadOutcome::Partial,
            false => ReadOutcome::Absent,
        }
    }

    fn decode(
        &self,
        frames: &[ShardFrame],
    ) -> Result<Vec<u8>, shardcache_common::codec::CodecError> {
        let first = &frames[0];
        let geometry_differs = (first.data_shards, first.parity_shards)
            != (self.codec.data_shards(), self.codec.parity_shards());
        // Shards written under another k/m (a reconfigured cluster) decode with their own.
        let own_codec;
        let codec = if geometry_differs {
            own_codec = Codec::new(first.data_shards, first.parity_shards)?;
            &own_codec
        } else {
            &self.codec
        };
        let mut shards = vec![None; codec.total_shards()];
        for frame in frames {
            shards[usize::from(frame.shard_index)] = Some(frame.payload.to_vec());
        }
        codec.decode(shards, first.value_len, first.value_checksum)
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
fn fan_out<T, Fut>(calls: impl Iterator<Item = (String, Fut)>) -> mpsc::Receiver<(String, T)>
where
    T: Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let calls: Vec<(String, Fut)> = calls.collect();
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
    /// Owners that answered (with a shard, a tombstone or "none").
    answered: usize,
    /// Owners that failed or timed out.
    failures: usize,
}

#[derive(Default)]
struct VersionShards {
    tombstone: bool,
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
    fn add(&mut self, frame: ShardFrame) {
        self.answered += 1;
        let shards = self.versions.entry(frame.version).or_default();
        if frame.tombstone {
            shards.tombstone = true;
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

    #[test]
    fn the_newest_version_settles_only_once_decodable_or_deleted() {
        let mut seen = SeenVersions::default();
        assert!(
            !seen.newest_is_settled(),
            "nothing seen is never settled early"
        );
        seen.add(frame(1, 0, false));
        seen.add(frame(1, 1, false));
        seen.add(frame(1, 1, false));
        assert!(
            !seen.newest_is_settled(),
            "a duplicate index does not count twice"
        );
        seen.add(frame(1, 2, false));
        assert!(seen.newest_is_settled());
        seen.add(frame(2, 0, false));
        assert!(
            !seen.newest_is_settled(),
            "a newer partial version is not settled"
        );
        seen.add(frame(3, 4, true));
        assert!(seen.newest_is_settled(), "a newer tombstone is");
        assert_eq!(seen.answered, 6);
    }
}
