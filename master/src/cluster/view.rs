//! The placement layer: an immutable [`View`] of the ring and every node's state,
//! and the answers placement gives from it (a key's owners, its fallback nodes,
//! the down nodes that may hold its shards, whether repair may start).
//!
//! Also the small public vocabulary the rest of the master speaks: [`Node`],
//! [`NodeState`] and [`Source`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use shardcache_common::ring::{Ring, DEFAULT_VNODES};
use xxhash_rust::xxh3::xxh3_64;

/// A node's health as this master judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum NodeState {
    Up,
    /// Missed a probe or more; still placed and asked, but not trusted to be there.
    Suspect,
    /// Missed `--down-after` probes: skipped by placement until it answers again.
    Down,
}

impl NodeState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Suspect => "suspect",
            NodeState::Down => "down",
        }
    }

    /// How much a node in this state is preferred when two addresses report one
    /// id: lower wins.
    pub(super) fn rank(self) -> u8 {
        match self {
            NodeState::Up => 0,
            NodeState::Suspect => 1,
            NodeState::Down => 2,
        }
    }
}

/// Where a member address came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Source {
    Configured,
    Dns,
    Added,
}

/// An aux node a shard is placed on or read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Node {
    pub(crate) id: Arc<str>,
    pub(crate) address: Arc<str>,
}

/// One node on the ring, as placement sees it.
#[derive(Clone, Debug)]
pub(super) struct Slot {
    pub(super) node: Node,
    pub(super) state: NodeState,
    pub(super) state_since: Instant,
    pub(super) instance: u64,
}

/// The ring's nodes by identity.
pub(super) type Slots = HashMap<Arc<str>, Slot>;

/// Where a read of one key looks (see [`View::read_placement`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ReadPlacement {
    pub(crate) owners: Vec<Node>,
    /// Live nodes after the owners, where shards written under an older placement
    /// may still sit.
    pub(crate) beyond: Vec<Node>,
    pub(crate) down_owners: usize,
}

/// An immutable picture of the cluster: the ring and every node's state. Readers
/// take an `Arc` of it; a probe round that changes anything publishes a new one.
#[derive(Debug)]
pub(crate) struct View {
    /// Bumped whenever placement changes (a node joins, leaves, goes down or up,
    /// or restarts).
    pub(crate) epoch: u64,
    /// When placement last changed.
    pub(crate) changed_at: Instant,
    /// xxh3 of the sorted node identities: equal on masters that agree on members.
    pub(crate) ring_version: String,
    ring: Ring,
    pub(super) slots: Slots,
}

impl View {
    pub(super) fn empty() -> Self {
        View {
            epoch: 0,
            changed_at: Instant::now(),
            ring_version: ring_version(&[]),
            ring: Ring::new(Vec::<String>::new(), DEFAULT_VNODES),
            slots: HashMap::new(),
        }
    }

    /// Every node that is not down, in `key`'s ring order: the first `k + m` are its
    /// owners, the rest are where a read falls back to.
    pub(crate) fn placement(&self, key: &str) -> Vec<Node> {
        self.ring
            .walk(key)
            .filter_map(|id| self.slots.get(id))
            .filter(|slot| slot.state != NodeState::Down)
            .map(|slot| slot.node.clone())
            .collect()
    }

    /// The first `count` nodes of [`placement`](Self::placement).
    pub(crate) fn owners(&self, key: &str, count: usize) -> Vec<Node> {
        let mut owners = self.placement(key);
        owners.truncate(count);
        owners
    }

    /// Nodes that answered their last probe.
    pub(crate) fn up_nodes(&self) -> Vec<Node> {
        let mut nodes: Vec<Node> = self
            .slots
            .values()
            .filter(|slot| slot.state == NodeState::Up)
            .map(|slot| slot.node.clone())
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes
    }

    /// Down nodes that `key`'s ring walk meets before its `owners`-th live node:
    /// the nodes that owned the key before they went down, and may hold its shards.
    /// The tests' reference for [`read_placement`](Self::read_placement)'s count.
    #[cfg(test)]
    pub(crate) fn down_owners(&self, key: &str, owners: usize) -> usize {
        let mut live = 0;
        let mut down = 0;
        for slot in self.ring.walk(key).filter_map(|id| self.slots.get(id)) {
            if live == owners {
                break;
            }
            match slot.state {
                NodeState::Down => down += 1,
                _ => live += 1,
            }
        }
        down
    }

    /// `key`'s placement for a read, from one walk of the ring: its first `count`
    /// live nodes (the owners), the live nodes after them, and the down nodes met
    /// before the last owner (see [`down_owners`](Self::down_owners)).
    pub(crate) fn read_placement(&self, key: &str, count: usize) -> ReadPlacement {
        let mut placement = ReadPlacement {
            owners: Vec::with_capacity(count),
            beyond: Vec::new(),
            down_owners: 0,
        };
        for slot in self.ring.walk(key).filter_map(|id| self.slots.get(id)) {
            let before_last_owner = placement.owners.len() < count;
            match slot.state {
                NodeState::Down if before_last_owner => placement.down_owners += 1,
                NodeState::Down => {}
                _ if before_last_owner => placement.owners.push(slot.node.clone()),
                _ => placement.beyond.push(slot.node.clone()),
            }
        }
        placement
    }

    /// Every node on the ring with its state.
    pub(crate) fn node_states(&self) -> impl Iterator<Item = (&str, NodeState)> {
        self.slots.values().map(|slot| (&*slot.node.id, slot.state))
    }

    /// Every node on the ring, whatever its state.
    pub(crate) fn all_nodes(&self) -> Vec<Node> {
        self.slots.values().map(|slot| slot.node.clone()).collect()
    }

    /// Why repair must not start yet, if it must not: a suspect node may be back in a
    /// moment, and a down node gets `--repair-grace` to return before its shards are
    /// rebuilt elsewhere.
    pub(crate) fn repair_blocker(&self, grace: Duration, now: Instant) -> Option<String> {
        let mut slots: Vec<&Slot> = self.slots.values().collect();
        slots.sort_by(|a, b| a.node.id.cmp(&b.node.id));
        for slot in slots {
            let for_how_long = now.saturating_duration_since(slot.state_since);
            match slot.state {
                NodeState::Suspect => {
                    return Some(format!("node {} is suspect", slot.node.id));
                }
                NodeState::Down if for_how_long < grace => {
                    return Some(format!(
                        "node {} is down ({}s); its shards are rebuilt after the {}s grace period",
                        slot.node.id,
                        for_how_long.as_secs(),
                        grace.as_secs()
                    ));
                }
                _ => {}
            }
        }
        None
    }

    /// Whether `slots` would place anything differently from this view: another
    /// node set, address, down-or-not, or instance (a restart).
    pub(super) fn placement_differs(&self, slots: &Slots) -> bool {
        placement_signature(&self.slots) != placement_signature(slots)
    }

    /// Whether any node of `slots` is new or has another state (or state start)
    /// than in this view.
    pub(super) fn states_differ(&self, slots: &Slots) -> bool {
        slots.iter().any(|(id, slot)| {
            self.slots
                .get(id)
                .is_none_or(|held| held.state != slot.state || held.state_since != slot.state_since)
        })
    }

    /// The view that follows this one with `slots`: the epoch (and change time)
    /// move on only when placement changed; the ring is rebuilt only when the
    /// node set changed.
    pub(super) fn successor(&self, slots: Slots, placement_changed: bool) -> View {
        let mut ids: Vec<String> = slots.keys().map(|id| id.to_string()).collect();
        ids.sort();
        let ring = if self.ring.nodes() == ids.as_slice() {
            self.ring.clone()
        } else {
            Ring::new(ids.iter().cloned(), DEFAULT_VNODES)
        };
        View {
            epoch: self.epoch + u64::from(placement_changed),
            changed_at: if placement_changed {
                Instant::now()
            } else {
                self.changed_at
            },
            ring_version: ring_version(&ids),
            ring,
            slots,
        }
    }
}

/// What placement depends on, in a comparable order.
fn placement_signature(slots: &Slots) -> Vec<(String, String, bool, u64)> {
    let mut placement: Vec<(String, String, bool, u64)> = slots
        .values()
        .map(|slot| {
            (
                slot.node.id.to_string(),
                slot.node.address.to_string(),
                slot.state != NodeState::Down,
                slot.instance,
            )
        })
        .collect();
    placement.sort();
    placement
}

fn ring_version(ids: &[String]) -> String {
    format!("{:016x}", xxh3_64(ids.join("\n").as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(id: &str, state: NodeState, since: Instant) -> (Arc<str>, Slot) {
        let node = Node {
            id: id.into(),
            address: format!("{id}:1").into(),
        };
        (
            id.into(),
            Slot {
                node,
                state,
                state_since: since,
                instance: 1,
            },
        )
    }

    fn view_of(slots: Vec<(Arc<str>, Slot)>) -> View {
        let ids: Vec<String> = slots.iter().map(|(id, _)| id.to_string()).collect();
        View {
            epoch: 1,
            changed_at: Instant::now(),
            ring_version: ring_version(&ids),
            ring: Ring::new(ids, DEFAULT_VNODES),
            slots: slots.into_iter().collect(),
        }
    }

    #[test]
    fn placement_skips_down_nodes_like_a_ring_without_them() {
        let now = Instant::now();
        let names = ["a", "b", "c", "d", "e", "f", "g"];
        let with_down = view_of(
            names
                .iter()
                .map(|id| {
                    slot(
                        id,
                        if *id == "c" {
                            NodeState::Down
                        } else {
                            NodeState::Up
                        },
                        now,
                    )
                })
                .collect(),
        );
        let without = view_of(
            names
                .iter()
                .filter(|id| **id != "c")
                .map(|id| slot(id, NodeState::Up, now))
                .collect(),
        );
        for i in 0..2000 {
            let key = format!("key-{i}");
            assert_eq!(with_down.owners(&key, 5), without.owners(&key, 5));
            assert_eq!(with_down.placement(&key).len(), 6);
        }
    }

    #[test]
    fn down_owners_are_the_down_nodes_among_a_keys_former_owners() {
        let now = Instant::now();
        let names = ["a", "b", "c", "d", "e", "f", "g"];
        let all_up = view_of(
            names
                .iter()
                .map(|id| slot(id, NodeState::Up, now))
                .collect(),
        );
        let down = ["c", "f"];
        let two_down = view_of(
            names
                .iter()
                .map(|id| {
                    let state = match down.contains(id) {
                        true => NodeState::Down,
                        false => NodeState::Up,
                    };
                    slot(id, state, now)
                })
                .collect(),
        );
        let down_among = |nodes: Vec<Node>| {
            nodes
                .iter()
                .filter(|node| down.contains(&&*node.id))
                .count()
        };
        for i in 0..2000 {
            let key = format!("key-{i}");
            let counted = two_down.down_owners(&key, 5);
            // Every node that owned the key while all were up may hold a shard...
            assert!(counted >= down_among(all_up.owners(&key, 5)), "{key}");
            // ...and so may one that took over from a node that went down first:
            // the count is the down nodes among the first 5 + counted of the walk.
            assert_eq!(
                down_among(all_up.owners(&key, 5 + counted)),
                counted,
                "{key}"
            );
            assert_eq!(all_up.down_owners(&key, 5), 0);
            // One walk gives the same as the three separate ones.
            let mut placement = two_down.placement(&key);
            let beyond = placement.split_off(5);
            let expected = ReadPlacement {
                owners: placement,
                beyond,
                down_owners: counted,
            };
            assert_eq!(two_down.read_placement(&key, 5), expected, "{key}");
        }
    }

    #[test]
    fn repair_waits_for_suspects_and_for_the_grace_period() {
        let start = Instant::now();
        let grace = Duration::from_secs(30);
        let suspect = view_of(vec![
            slot("a", NodeState::Up, start),
            slot("b", NodeState::Suspect, start),
        ]);
        assert!(suspect
            .repair_blocker(grace, start)
            .unwrap()
            .contains("suspect"));
        let down = view_of(vec![
            slot("a", NodeState::Up, start),
            slot("b", NodeState::Down, start),
        ]);
        assert!(down
            .repair_blocker(grace, start + Duration::from_secs(29))
            .is_some());
        assert!(down
            .repair_blocker(grace, start + Duration::from_secs(30))
            .is_none());
    }
}
