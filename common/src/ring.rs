//! The consistent-hash ring: which `k + m` distinct aux nodes own a key.
//!
//! Each node is placed at [`DEFAULT_VNODES`] points on a 64-bit circle, at the
//! xxh3 hashes of `"{node}#{i}"`. A key hashes (xxh3 of its UTF-8 bytes) to a point,
//! and its owners are the first distinct nodes met walking clockwise from there.
//! xxh3 is specified and seedless, so every master, build and machine computes the
//! same placement (invariant 7); std's `DefaultHasher` is randomly keyed and never used.
//!
//! The owner at rank `i` stores shard `i`. Readers still accept any shard index from
//! any owner, because the rank order shifts when membership changes.

use xxhash_rust::xxh3::xxh3_64;

/// Virtual nodes per physical node. With 6–10 nodes this keeps the most loaded node
/// within about 10% of the mean (see the balance tests); lookups stay a binary search.
pub const DEFAULT_VNODES: usize = 1000;

/// A ring over a fixed set of node identities (their `host:port` addresses today).
#[derive(Clone, Debug)]
pub struct Ring {
    nodes: Vec<String>,
    /// Sorted `(point, index into nodes)`.
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// Builds a ring. Duplicate identities are collapsed, and the result does not
    /// depend on the order in which the nodes are given.
    pub fn new<I, S>(nodes: I, vnodes: usize) -> Ring
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut nodes: Vec<String> = nodes.into_iter().map(Into::into).collect();
        nodes.sort();
        nodes.dedup();
        let mut points: Vec<(u64, u32)> = nodes
            .iter()
            .enumerate()
            .flat_map(|(index, node)| {
                (0..vnodes).map(move |vnode| (vnode_point(node, vnode), index as u32))
            })
            .collect();
        points.sort_unstable();
        Ring { nodes, points }
    }

    /// The node identities, sorted.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The first `count` distinct owners of `key`, in rank order (fewer if the ring
    /// has fewer nodes).
    pub fn owners(&self, key: &str, count: usize) -> Vec<&str> {
        self.walk(key).take(count).collect()
    }

    /// Every node, each once, in the order met walking clockwise from `key`'s point.
    /// Skipping some nodes of this walk gives exactly the walk of the ring without
    /// them: the placement that routes around a down node is the placement of the
    /// ring it has left, so masters that disagree only on whether a node is down or
    /// gone still agree on where the other shards go.
    pub fn walk<'a>(&'a self, key: &str) -> impl Iterator<Item = &'a str> + 'a {
        let start = self
            .points
            .partition_point(|(point, _)| *point < key_point(key));
        let mut seen = vec![false; self.nodes.len()];
        let mut remaining = self.nodes.len();
        self.points[start..]
            .iter()
            .chain(&self.points[..start])
            // Stops as soon as every node has been met, not after every point.
            .map_while(move |(_, node)| {
                if remaining == 0 {
                    return None;
                }
                let index = *node as usize;
                if std::mem::replace(&mut seen[index], true) {
                    return Some(None);
                }
                remaining -= 1;
                Some(Some(self.nodes[index].as_str()))
            })
            .flatten()
    }
}

fn vnode_point(node: &str, vnode: usize) -> u64 {
    xxh3_64(format!("{node}#{vnode}").as_bytes())
}

/// Where `key` sits on the ring (xxh3 of its UTF-8 bytes). Aux nodes list their
/// inventory in this order, so a rebalancer can merge the lists of many nodes.
pub fn key_point(key: &str) -> u64 {
    xxh3_64(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    const KEYS: usize = 60_000;

    fn node_names(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("10.0.0.{i}:7100")).collect()
    }

    fn keys() -> impl Iterator<Item = String> {
        (0..KEYS).map(|i| format!("user:{i}:profile"))
    }

    /// max / mean of the number of shards each node holds when every key stores one
    /// shard on each of its `shards_per_key` owners.
    fn max_over_mean(ring: &Ring, shards_per_key: usize) -> f64 {
        let mut load: HashMap<&str, usize> = HashMap::new();
        for key in keys() {
            for owner in ring.owners(&key, shards_per_key) {
                *load.entry(owner).or_default() += 1;
            }
        }
        let max = *load.values().max().unwrap() as f64;
        let mean = (KEYS * shards_per_key) as f64 / ring.nodes().len() as f64;
        max / mean
    }

    #[test]
    fn load_is_balanced_for_6_and_10_nodes() {
        for node_count in [6, 10] {
            let ring = Ring::new(node_names(node_count), DEFAULT_VNODES);
            for shards_per_key in [1, 3, 5] {
                let ratio = max_over_mean(&ring, shards_per_key);
                assert!(
                    ratio <= 1.10,
                    "{node_count} nodes, {shards_per_key} shards/key: max/mean {ratio:.3}"
                );
            }
        }
    }

    #[test]
    fn owners_are_distinct_and_bounded_by_the_node_count() {
        let ring = Ring::new(node_names(6), DEFAULT_VNODES);
        for key in keys().take(5000) {
            let owners = ring.owners(&key, 5);
            assert_eq!(owners.iter().collect::<HashSet<_>>().len(), 5);
        }
        assert_eq!(ring.owners("k", 50).len(), 6);
        assert!(Ring::new(Vec::<String>::new(), 10)
            .owners("k", 3)
            .is_empty());
    }

    #[test]
    fn placement_is_deterministic_and_order_independent() {
        let forwards = Ring::new(node_names(8), DEFAULT_VNODES);
        let mut reversed_names = node_names(8);
        reversed_names.reverse();
        let backwards = Ring::new(reversed_names, DEFAULT_VNODES);
        for key in keys().take(5000) {
            assert_eq!(forwards.owners(&key, 5), backwards.owners(&key, 5));
        }
        // Pinned placement: a change of hash or point scheme would move every key.
        assert_eq!(
            forwards.owners("fruit", 3),
            vec!["10.0.0.6:7100", "10.0.0.2:7100", "10.0.0.5:7100"]
        );
    }

    #[test]
    fn skipping_a_node_in_the_walk_equals_the_ring_without_it() {
        let names = node_names(8);
        let full = Ring::new(names.clone(), DEFAULT_VNODES);
        let without = Ring::new(names[1..].to_vec(), DEFAULT_VNODES);
        for key in keys().take(5000) {
            let skipped: Vec<&str> = full
                .walk(&key)
                .filter(|node| *node != names[0])
                .take(5)
                .collect();
            assert_eq!(skipped, without.owners(&key, 5));
            assert_eq!(full.walk(&key).count(), 8, "the walk meets every node once");
        }
    }

    /// Fraction of (key, owner) shard placements that are new after a change.
    fn moved_fraction(before: &Ring, after: &Ring, shards_per_key: usize) -> f64 {
        let mut moved = 0usize;
        for key in keys() {
            let old: HashSet<&str> = before.owners(&key, shards_per_key).into_iter().collect();
            moved += after
                .owners(&key, shards_per_key)
                .into_iter()
                .filter(|owner| !old.contains(owner))
                .count();
        }
        moved as f64 / (KEYS * shards_per_key) as f64
    }

    #[test]
    fn join_and_leave_move_close_to_the_ideal_share() {
        for node_count in [6, 10] {
            let small = Ring::new(node_names(node_count), DEFAULT_VNODES);
            let large = Ring::new(node_names(node_count + 1), DEFAULT_VNODES);
            for shards_per_key in [1, 5] {
                // Ideally a join moves exactly the newcomer's share of all shards, and
                // the (N+1)th node leaving moves exactly the share it held: 1/(N+1).
                let ideal = 1.0 / (node_count + 1) as f64;
                let joined = moved_fraction(&small, &large, shards_per_key);
                let left = moved_fraction(&large, &small, shards_per_key);
                assert!(
                    joined <= 1.1 * ideal,
                    "join moved {joined:.4}, ideal {ideal:.4}"
                );
                assert!(
                    left <= 1.1 * ideal,
                    "leave moved {left:.4}, ideal {ideal:.4}"
                );
            }
        }
    }
}
