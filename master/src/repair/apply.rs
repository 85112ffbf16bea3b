//! Carrying out a key's [`plan`](super::plan): fetch, rebuild and put the shards it
//! places, then delete the strays — each step version-guarded on the aux nodes, so
//! a step that meets a newer write changes nothing and the next pass looks again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use shardcache_common::aux_client::PutOutcome;
use shardcache_common::codec::Codec;
use shardcache_common::frame::ShardFrame;
use shardcache_common::version::Version;
use shardcache_common::wire::InventoryEntry;

use super::plan::{self, Abandon, Holding, KeyPlan, Placement, Source};
use super::PassCounts;
use crate::cluster::{Node, View};
use crate::metrics::ForeignShardSeenBy;
use crate::shards::frames;
use crate::shards::ShardClient;

/// What a key's repair needs: the shard client, the default codec, and when a
/// partial version counts as abandoned.
pub(crate) struct Apply<'a> {
    pub(crate) shards: &'a ShardClient,
    pub(crate) codec: &'a Codec,
    pub(crate) abandon: Abandon,
    /// Shard bytes this key's repair held (fetched and rebuilt): what the budget's
    /// byte bound learns from.
    pub(crate) held_bytes: AtomicU64,
}

impl Apply<'_> {
    /// Brings one key to `k + m` distinct shards of its newest version on its
    /// owners, then deletes its shards elsewhere.
    pub(crate) async fn repair_key(
        &self,
        view: &View,
        key: &str,
        mut holdings: Vec<Holding>,
    ) -> PassCounts {
        let mut counts = PassCounts {
            keys_scanned: 1,
            ..PassCounts::default()
        };
        // Only shards of the geometry this master writes count, as for reads. A
        // frame claiming another (forged, or from a master configured with another
        // k and m) is neither copied nor taken for the key's newest version: that
        // would make the real shards strays of it, and delete them.
        let own = self.codec.geometry();
        holdings.retain(|(node, entry)| {
            let ours = entry.geometry() == own;
            if !ours {
                tracing::warn!(
                    key,
                    node = %node.id,
                    k = entry.data_shards,
                    m = entry.parity_shards,
                    "repair ignores a shard of a geometry this master does not write"
                );
                self.shards
                    .metrics()
                    .foreign_shard(ForeignShardSeenBy::Repair);
            }
            ours
        });
        // At most one abandoned version per round; a key has few versions.
        let (newest, placements, strays) = loop {
            match plan::plan(&holdings, |total| view.owners(key, total), self.abandon) {
                KeyPlan::Healthy | KeyPlan::InFlight => return counts,
                KeyPlan::Unreadable => {
                    counts.keys_repaired = 1;
                    counts.keys_unreadable = 1;
                    return counts;
                }
                KeyPlan::DropAbandoned { version, holders } => {
                    counts.keys_repaired = 1;
                    if !self.drop_version(key, version, &holders, &mut counts).await {
                        return counts;
                    }
                    holdings.retain(|(_, entry)| entry.version != version);
                }
                KeyPlan::Repair {
                    newest,
                    placements,
                    strays,
                } => break (newest, placements, strays),
            }
        };
        counts.keys_repaired = 1;
        if !self
            .place(key, &newest, &holdings, &placements, &mut counts)
            .await
        {
            return counts; // nothing is deleted unless every owner holds its shard
        }
        // Every owner holds its shard now: the strays go, all at once.
        let deletes = strays
            .iter()
            .map(|stray| self.shards.delete(stray, key, newest.version));
        for (stray, outcome) in strays.iter().zip(futures::future::join_all(deletes).await) {
            match outcome {
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

    /// Deletes an abandoned version's shards from its holders (each only if it is
    /// still that version or older). True when every one of them is gone.
    async fn drop_version(
        &self,
        key: &str,
        version: Version,
        holders: &[Node],
        counts: &mut PassCounts,
    ) -> bool {
        tracing::info!(key, %version, holders = holders.len(), "dropping a write that never reached k shards");
        let mut all_gone = true;
        let deletes = holders
            .iter()
            .map(|holder| self.shards.delete(holder, key, version));
        for (holder, outcome) in holders.iter().zip(futures::future::join_all(deletes).await) {
            match outcome {
                Ok(PutOutcome::Stored) => counts.shards_deleted += 1,
                // A newer write landed there meanwhile: the next pass looks again.
                Ok(PutOutcome::Superseded(_)) => all_gone = false,
                Err(error) => {
                    tracing::debug!(key, node = %holder.id, %error, "could not drop an abandoned shard");
                    counts.failures += 1;
                    all_gone = false;
                }
            }
        }
        all_gone
    }

    /// Puts every placement's shard on its owner, all at once (each joins its
    /// owner's multi-put). True when all of them now hold it.
    async fn place(
        &self,
        key: &str,
        newest: &InventoryEntry,
        holdings: &[Holding],
        placements: &[Placement],
        counts: &mut PassCounts,
    ) -> bool {
        let Some(frames) = self
            .frames_for(key, newest, holdings, placements, counts)
            .await
        else {
            counts.failures += 1;
            return false;
        };
        let puts: Vec<(Node, Bytes)> = placements
            .iter()
            .zip(frames)
            .map(|(placement, frame)| (placement.owner.clone(), frame.encode()))
            .collect();
        let sizes: Vec<(Arc<str>, u64)> = puts
            .iter()
            .map(|(node, frame)| (node.id.clone(), frame.len() as u64))
            .collect();
        let mut answers = self.shards.put_all(puts);
        let mut all_placed = true;
        while let Some((owner, answer)) = answers.next().await {
            match answer {
                Ok(PutOutcome::Stored) => {
                    counts.bytes_written += sizes
                        .iter()
                        .find(|(id, _)| *id == owner.id)
                        .map_or(0, |(_, size)| *size);
                }
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

    /// The frame each placement puts, in placement order: tombstones made here,
    /// moves fetched from their sources all at once, and whatever could not be
    /// moved (gone or changed meanwhile) rebuilt from `k` shards. `None` when a
    /// frame can be neither moved nor rebuilt.
    async fn frames_for(
        &self,
        key: &str,
        newest: &InventoryEntry,
        holdings: &[Holding],
        placements: &[Placement],
        counts: &mut PassCounts,
    ) -> Option<Vec<ShardFrame>> {
        let mut frames: Vec<Option<ShardFrame>> = placements
            .iter()
            .map(|placement| {
                (placement.source == Source::Tombstone)
                    .then(|| tombstone(key, newest, placement.index))
            })
            .collect();
        let sources: Vec<Node> = placements
            .iter()
            .filter_map(|placement| match &placement.source {
                Source::Move { from } => Some(from.clone()),
                _ => None,
            })
            .collect();
        if !sources.is_empty() {
            let mut answers = self.shards.gather(key, &sources);
            while let Some((from, answer)) = answers.next().await {
                let Ok(Some(found)) = answer else { continue };
                // A source holds one index of the newest version: one placement.
                let wanted = placements.iter().position(|placement| {
                    placement.source == (Source::Move { from: from.clone() })
                        && found.version == newest.version
                        && found.shard_index == placement.index
                });
                if let Some(position) = wanted {
                    self.hold(found.payload.len());
                    counts.shards_moved += 1;
                    frames[position] = Some(found);
                }
            }
        }
        if frames.iter().any(Option::is_none) {
            let rebuilt = self.rebuild(key, newest.version, holdings).await?;
            for (placement, frame) in placements.iter().zip(frames.iter_mut()) {
                if frame.is_none() {
                    let index = usize::from(placement.index);
                    *frame = Some(rebuilt.get(index)?.clone());
                    counts.shards_rebuilt += 1;
                }
            }
        }
        frames.into_iter().collect()
    }

    /// Fetches shards of `version` until `k` distinct ones decode, and returns all
    /// `k + m` frames of that write. It asks `k` holders of distinct indices at
    /// once (the data shards first: they decode without inversion), then, if some
    /// failed, holders of the indices not yet tried.
    async fn rebuild(
        &self,
        key: &str,
        version: Version,
        holdings: &[Holding],
    ) -> Option<Vec<ShardFrame>> {
        let mut candidates: Vec<&Holding> = holdings
            .iter()
            .filter(|(_, entry)| entry.version == version)
            .collect();
        candidates.sort_by_key(|(_, entry)| entry.shard_index);
        candidates.dedup_by_key(|(_, entry)| entry.shard_index);
        let needed = usize::from(candidates.first()?.1.data_shards);
        let mut fetched: Vec<ShardFrame> = Vec::new();
        let mut untried = candidates.as_slice();
        while fetched.len() < needed && !untried.is_empty() {
            let ask = (needed - fetched.len()).min(untried.len());
            let (round, rest) = untried.split_at(ask);
            untried = rest;
            let nodes: Vec<Node> = round.iter().map(|(node, _)| node.clone()).collect();
            let mut answers = self.shards.gather(key, &nodes);
            while let Some((node, answer)) = answers.next().await {
                match answer {
                    Ok(Some(frame))
                        if frame.version == version
                            && !fetched
                                .iter()
                                .any(|held| held.shard_index == frame.shard_index) =>
                    {
                        fetched.push(frame)
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::debug!(key, node = %node.id, %error, "could not fetch a shard to rebuild from")
                    }
                }
            }
        }
        if fetched.len() < needed {
            return None;
        }
        let payload = fetched.first().map_or(0, |frame| frame.payload.len());
        self.hold(payload * (fetched.len() + self.codec.total_shards()));
        let value = match frames::decode(self.codec, &fetched) {
            Ok(value) => value,
            Err(error) => {
                tracing::error!(key, %version, %error, "shards failed verification during repair");
                return None;
            }
        };
        frames::rebuild(self.codec, &fetched, &value).ok()
    }
}

impl Apply<'_> {
    fn hold(&self, bytes: usize) {
        self.held_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// The tombstone of index `index` of the deleted key's newest version.
fn tombstone(key: &str, newest: &InventoryEntry, index: u8) -> ShardFrame {
    frames::tombstone(
        key,
        newest.version,
        usize::from(index),
        newest.geometry(),
        newest.expiry_ms,
    )
}
