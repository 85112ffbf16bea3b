//! What repair must do for one key — a pure function of who holds which shard of
//! it and who owns it. The I/O that carries a plan out is in [`super::apply`].
//!
//! The newest version of the key decides. Each owner that lacks a distinct shard
//! index of it (holds nothing, an older version, or an index another owner already
//! holds) is given one of the indices no owner holds: **moved** from a node that
//! holds that index (any node, owner or not), else **rebuilt** from any `k` shards;
//! for a deleted key every lacking owner gets a **tombstone**. Nodes that hold the
//! key but do not own it are **strays**: their copies are deleted, but only once
//! every placement succeeded, so a key never has fewer shards than before.
//!
//! A newest version with fewer than `k` distinct shards anywhere cannot be rebuilt.
//! By its age (the version's timestamp) it is one of three things:
//! - **in flight** (younger than [`IN_FLIGHT_MS`]): a write still landing, which a
//!   pass under write load always meets; left alone, and no mark against the pass;
//! - **unreadable** (older, but younger than `--repair-abandon-after`): maybe a
//!   write that died half-way; left alone for now, and the pass is not complete;
//! - **abandoned** (older still — no write takes that long): its shards are deleted
//!   and the key is planned again without it, so the newest version that is
//!   readable gets back to `k + m` shards instead of staying one failure from loss
//!   behind a write that died half-way.

use std::collections::HashSet;

use shardcache_common::version::Version;
use shardcache_common::wire::InventoryEntry;

use crate::cluster::Node;

/// One node's holding of the key: its inventory entry (a shard header).
pub(crate) type Holding = (Node, InventoryEntry);

/// Where a placed shard comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// Copy the shard of this index from a node that holds it.
    Move { from: Node },
    /// Decode the value from any `k` shards and re-encode this index.
    Rebuild,
    /// A tombstone of the newest version.
    Tombstone,
}

/// One shard to give to one owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Placement {
    pub(crate) owner: Node,
    pub(crate) index: u8,
    pub(crate) source: Source,
}

/// The plan for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyPlan {
    /// Every owner holds a distinct index of the newest version; no strays.
    Healthy,
    /// The newest version has fewer than `k` distinct shards and is young enough
    /// to be a write still landing: nothing to do.
    InFlight,
    /// The newest version has fewer than `k` distinct shards and may be a write
    /// that died half-way: nothing is done yet, and the pass is not complete.
    Unreadable,
    /// The newest version has fewer than `k` distinct shards and is past the
    /// abandon bound: delete it from `holders`, then plan the key again without it.
    DropAbandoned {
        version: Version,
        holders: Vec<Node>,
    },
    /// Shards to place, then strays to delete (only if every placement succeeds).
    Repair {
        newest: InventoryEntry,
        placements: Vec<Placement>,
        strays: Vec<Node>,
    },
}

/// Below this age a version too partial to read is taken for a write in flight:
/// a write takes at most two rounds of `--shard-timeout`, and masters' clocks may
/// differ by a few seconds.
pub(crate) const IN_FLIGHT_MS: u64 = 10_000;

/// When a version too partial to read counts as abandoned (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Abandon {
    pub(crate) now_ms: u64,
    /// Age, by its timestamp, past which a version is abandoned.
    pub(crate) after_ms: u64,
}

impl Abandon {
    fn age_ms(self, version: Version) -> u64 {
        self.now_ms.saturating_sub(version.timestamp >> 16)
    }
}

/// The plan for a key held as `holdings` (every node's entry for it, from the
/// inventories) and owned by `owners` (its first `k + m` nodes, in rank order).
/// `owners_for` gives the owners for the newest version's shard count. The caller
/// passes only holdings of the cluster's own geometry (`Apply::repair_key`): one
/// claiming another would otherwise decide the owners, and the real shards would
/// be strays.
pub(crate) fn plan(
    holdings: &[Holding],
    owners_for: impl FnOnce(usize) -> Vec<Node>,
    abandon: Abandon,
) -> KeyPlan {
    let Some(newest) = holdings
        .iter()
        .map(|(_, entry)| entry)
        .max_by_key(|entry| entry.version)
        .cloned()
    else {
        return KeyPlan::Healthy;
    };
    let total = usize::from(newest.data_shards) + usize::from(newest.parity_shards);
    let owners = owners_for(total);
    let newest_index_of = |node: &Node| {
        holdings
            .iter()
            .find(|(holder, entry)| holder.id == node.id && entry.version == newest.version)
            .map(|(_, entry)| entry.shard_index)
    };
    // Which owners already hold a distinct index of the newest version (any index
    // will do for a tombstone).
    let mut claimed: HashSet<u8> = HashSet::new();
    let mut lacking: Vec<&Node> = Vec::new();
    for owner in &owners {
        match newest_index_of(owner) {
            Some(index) if newest.tombstone => {
                claimed.insert(index);
            }
            Some(index) if claimed.insert(index) => {}
            _ => lacking.push(owner),
        }
    }
    let strays: Vec<Node> = holdings
        .iter()
        .map(|(node, _)| node)
        .filter(|node| !owners.iter().any(|owner| owner.id == node.id))
        .cloned()
        .collect();
    if lacking.is_empty() && strays.is_empty() {
        return KeyPlan::Healthy;
    }
    let newest_holders: Vec<&Holding> = holdings
        .iter()
        .filter(|(_, entry)| entry.version == newest.version)
        .collect();
    let distinct: HashSet<u8> = newest_holders
        .iter()
        .map(|(_, entry)| entry.shard_index)
        .collect();
    if !lacking.is_empty() && !newest.tombstone && distinct.len() < usize::from(newest.data_shards)
    {
        let age_ms = abandon.age_ms(newest.version);
        return if age_ms > abandon.after_ms {
            KeyPlan::DropAbandoned {
                version: newest.version,
                holders: newest_holders
                    .iter()
                    .map(|(node, _)| node.clone())
                    .collect(),
            }
        } else if age_ms > IN_FLIGHT_MS {
            KeyPlan::Unreadable
        } else {
            KeyPlan::InFlight
        };
    }
    let missing = (0..total as u8).filter(|index| newest.tombstone || !claimed.contains(index));
    let placements = lacking
        .into_iter()
        .zip(missing)
        .map(|(owner, index)| Placement {
            owner: owner.clone(),
            index,
            source: match newest_holders
                .iter()
                .find(|(_, entry)| entry.shard_index == index)
            {
                _ if newest.tombstone => Source::Tombstone,
                Some((from, _)) => Source::Move { from: from.clone() },
                None => Source::Rebuild,
            },
        })
        .collect();
    KeyPlan::Repair {
        newest,
        placements,
        strays,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardcache_common::version::Version;

    fn node(n: usize) -> Node {
        let id = format!("aux-{n}");
        Node {
            id: id.as_str().into(),
            address: id.as_str().into(),
        }
    }

    /// Node `n` holds index `index` of version `timestamp` (a tombstone if asked).
    fn holds(n: usize, timestamp: u64, index: u8, tombstone: bool) -> Holding {
        let entry = InventoryEntry {
            key: "k".into(),
            point: 7,
            version: Version {
                timestamp,
                writer: 1,
            },
            shard_index: index,
            data_shards: 3,
            parity_shards: 2,
            tombstone,
            expiry_ms: 0,
        };
        (node(n), entry)
    }

    fn shard(n: usize, timestamp: u64, index: u8) -> Holding {
        holds(n, timestamp, index, false)
    }

    /// Versions here are stamped at 0 ms; "now" is 1 s later.
    const RECENT: Abandon = Abandon {
        now_ms: 1_000,
        after_ms: 60_000,
    };

    fn at(now_ms: u64) -> Abandon {
        Abandon {
            now_ms,
            after_ms: 60_000,
        }
    }

    /// Owners are aux-0..aux-4 (5 = k+m).
    fn owners(total: usize) -> Vec<Node> {
        (0..total).map(node).collect()
    }

    fn placements(plan: &KeyPlan) -> Vec<(usize, u8, Source)> {
        match plan {
            KeyPlan::Repair { placements, .. } => placements
                .iter()
                .map(|placement| {
                    let owner = placement.owner.id[4..].parse().unwrap();
                    (owner, placement.index, placement.source.clone())
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    fn strays(plan: &KeyPlan) -> Vec<Node> {
        match plan {
            KeyPlan::Repair { strays, .. } => strays.clone(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn every_owner_holding_a_distinct_index_needs_nothing() {
        let holdings: Vec<Holding> = (0..5).map(|n| shard(n, 9, n as u8)).collect();
        assert_eq!(plan(&holdings, owners, RECENT), KeyPlan::Healthy);
        assert_eq!(
            plan(&[], owners, RECENT),
            KeyPlan::Healthy,
            "no holder: nothing to do"
        );
    }

    #[test]
    fn a_missing_index_is_moved_from_a_stray_which_is_deleted_after() {
        // aux-4 lost its shard; aux-6 (no owner) holds index 4.
        let holdings = vec![
            shard(0, 9, 0),
            shard(1, 9, 1),
            shard(2, 9, 2),
            shard(3, 9, 3),
            shard(6, 9, 4),
        ];
        let plan = plan(&holdings, owners, RECENT);
        let from = node(6);
        assert_eq!(
            placements(&plan),
            [(4, 4, Source::Move { from: from.clone() })]
        );
        assert_eq!(strays(&plan), [from]);
    }

    #[test]
    fn an_index_nobody_holds_is_rebuilt_and_older_versions_do_not_count() {
        // aux-3 holds an older version, aux-4 nothing: indices 3 and 4 are rebuilt.
        let holdings = vec![
            shard(0, 9, 0),
            shard(1, 9, 1),
            shard(2, 9, 2),
            shard(3, 8, 3),
        ];
        let plan = plan(&holdings, owners, RECENT);
        assert_eq!(
            placements(&plan),
            [(3, 3, Source::Rebuild), (4, 4, Source::Rebuild)]
        );
        assert!(strays(&plan).is_empty());
    }

    #[test]
    fn two_owners_with_the_same_index_keep_one_and_the_other_gets_a_free_one() {
        let holdings = vec![
            shard(0, 9, 0),
            shard(1, 9, 0),
            shard(2, 9, 2),
            shard(3, 9, 3),
            shard(4, 9, 4),
        ];
        let plan = plan(&holdings, owners, RECENT);
        assert_eq!(placements(&plan), [(1, 1, Source::Rebuild)]);
    }

    #[test]
    fn a_deleted_key_gets_tombstones_on_lacking_owners_whatever_their_index() {
        let holdings = vec![
            holds(0, 9, 0, true),
            holds(1, 9, 0, true),
            shard(2, 8, 2),
            holds(7, 9, 3, true),
        ];
        let plan = plan(&holdings, owners, RECENT);
        assert_eq!(
            placements(&plan),
            [
                (2, 0, Source::Tombstone),
                (3, 1, Source::Tombstone),
                (4, 2, Source::Tombstone)
            ]
        );
        assert_eq!(strays(&plan), [node(7)]);
    }

    #[test]
    fn a_partial_newest_version_is_in_flight_then_unreadable_then_dropped() {
        // A write that died after 2 of 5 shards; the acknowledged one before it has 3.
        let holdings = vec![
            shard(0, 9, 0),
            shard(1, 9, 1),
            shard(2, 8, 2),
            shard(3, 8, 3),
            shard(4, 8, 4),
        ];
        assert_eq!(plan(&holdings, owners, RECENT), KeyPlan::InFlight);
        assert_eq!(plan(&holdings, owners, at(30_000)), KeyPlan::Unreadable);
        let later = at(61_000);
        let KeyPlan::DropAbandoned { version, holders } = plan(&holdings, owners, later) else {
            panic!("past the bound the partial version is abandoned");
        };
        assert_eq!((version.timestamp, holders), (9, vec![node(0), node(1)]));
        // Planned again without it: the older version goes back to every owner.
        let rest: Vec<Holding> = holdings
            .into_iter()
            .filter(|(_, entry)| entry.version != version)
            .collect();
        let plan = plan(&rest, owners, later);
        assert_eq!(
            placements(&plan),
            [(0, 0, Source::Rebuild), (1, 1, Source::Rebuild)]
        );
    }

    #[test]
    fn strays_alone_are_deleted() {
        let mut holdings: Vec<Holding> = (0..5).map(|n| shard(n, 9, n as u8)).collect();
        holdings.push(shard(5, 9, 2));
        holdings.push(shard(6, 7, 1));
        let plan = plan(&holdings, owners, RECENT);
        assert!(placements(&plan).is_empty());
        assert_eq!(strays(&plan), [node(5), node(6)]);
    }

    #[test]
    fn the_owners_follow_the_newest_versions_geometry() {
        // The newest write was 1+2 (three owners): aux-3 and aux-4 are strays.
        let mut holdings: Vec<Holding> = (0..5).map(|n| shard(n, 8, n as u8)).collect();
        for (n, entry) in holdings.iter_mut().enumerate().take(3) {
            entry.1.version.timestamp = 9;
            entry.1.data_shards = 1;
            entry.1.shard_index = n as u8;
        }
        let plan = plan(&holdings, owners, RECENT);
        assert!(placements(&plan).is_empty());
        assert_eq!(strays(&plan), [node(3), node(4)]);
    }
}
