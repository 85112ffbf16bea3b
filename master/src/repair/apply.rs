//! Carrying out a key's [`plan`](super::plan): fetch, rebuild and put the shards it
//! places, then delete the strays — each step version-guarded on the aux nodes, so
//! a step that meets a newer write changes nothing and the next pass looks again.

use shardcache_common::aux_client::PutOutcome;
use shardcache_common::codec::Codec;
use shardcache_common::frame::ShardFrame;
use shardcache_common::version::Version;
use shardcache_common::wire::InventoryEntry;

use super::plan::{self, Abandon, Holding, KeyPlan, Placement, Source};
use super::PassCounts;
use crate::cluster::View;
use crate::metrics::ForeignShardSeenBy;
use crate::shards::frames;
use crate::shards::ShardClient;

/// What a key's repair needs: the shard client, the default codec, and when a
/// partial version counts as abandoned.
pub(crate) struct Apply<'a> {
    pub(crate) shards: &'a ShardClient,
    pub(crate) codec: &'a Codec,
    pub(crate) abandon: Abandon,
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
        for stray in strays {
            match self.shards.delete(&stray, key, newest.version).await {
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
        holders: &[crate::cluster::Node],
        counts: &mut PassCounts,
    ) -> bool {
        tracing::info!(key, %version, holders = holders.len(), "dropping a write that never reached k shards");
        let mut all_gone = true;
        for holder in holders {
            match self.shards.delete(holder, key, version).await {
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

    /// Puts every placement's shard on its owner. True when all of them now hold it.
    async fn place(
        &self,
        key: &str,
        newest: &InventoryEntry,
        holdings: &[Holding],
        placements: &[Placement],
        counts: &mut PassCounts,
    ) -> bool {
        let mut rebuilt: Option<Vec<ShardFrame>> = None;
        let mut all_placed = true;
        for placement in placements {
            let mut frame = match &placement.source {
                Source::Tombstone => Some(tombstone(key, newest, placement.index)),
                Source::Move { from } => match self.shards.get(from, key).await {
                    Ok(Some(found))
                        if found.version == newest.version
                            && found.shard_index == placement.index =>
                    {
                        counts.shards_moved += 1;
                        Some(found)
                    }
                    _ => None, // gone or changed meanwhile: rebuild it instead
                },
                Source::Rebuild => None,
            };
            if frame.is_none() {
                if rebuilt.is_none() {
                    rebuilt = self.rebuild(key, newest.version, holdings).await;
                }
                match rebuilt
                    .as_ref()
                    .and_then(|all| all.get(usize::from(placement.index)))
                {
                    Some(found) => {
                        frame = Some(found.clone());
                        counts.shards_rebuilt += 1;
                    }
                    None => {
                        counts.failures += 1;
                        return false;
                    }
                }
            }
            let encoded = frame.expect("set above").encode();
            let size = encoded.len() as u64;
            match self.shards.put(&placement.owner, encoded).await {
                Ok(PutOutcome::Stored) => counts.bytes_written += size,
                // A newer write reached this owner meanwhile: the next pass sees it.
                Ok(PutOutcome::Superseded(_)) => all_placed = false,
                Err(error) => {
                    tracing::debug!(key, node = %placement.owner.id, %error, "repair put failed");
                    counts.failures += 1;
                    all_placed = false;
                }
            }
        }
        all_placed
    }

    /// Fetches shards of `version` from its holders until `k` distinct ones decode,
    /// and returns all `k + m` frames of that write.
    async fn rebuild(
        &self,
        key: &str,
        version: Version,
        holdings: &[Holding],
    ) -> Option<Vec<ShardFrame>> {
        let mut fetched: Vec<ShardFrame> = Vec::new();
        for (node, entry) in holdings
            .iter()
            .filter(|(_, entry)| entry.version == version)
        {
            if fetched
                .iter()
                .any(|frame| frame.shard_index == entry.shard_index)
            {
                continue;
            }
            match self.shards.get(node, key).await {
                Ok(Some(frame)) if frame.version == version => fetched.push(frame),
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(key, node = %node.id, %error, "could not fetch a shard to rebuild from")
                }
            }
            if fetched.len() >= usize::from(entry.data_shards) {
                break;
            }
        }
        if fetched.len() < usize::from(fetched.first()?.data_shards) {
            return None;
        }
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
