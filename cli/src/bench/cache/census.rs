//! The dead-shard census: the aux nodes' inventories merged by key.

use std::collections::HashMap;

use anyhow::ensure;
use shardcache_common::version::Version;
use shardcache_common::wire::{self, InventoryPage};

use super::clients::Http;
use super::{ShardCensus, INVENTORY_PAGE};
use crate::harness::LocalCluster;

/// The aux nodes' inventories merged into a [`ShardCensus`].
pub(super) fn census(
    cluster: &LocalCluster,
    data_shards: u8,
    total_shards: u8,
) -> anyhow::Result<ShardCensus> {
    let mut shards = Vec::new();
    for node in &cluster.aux {
        let mut http = Http::connect(node.addr)?;
        let mut cursor: Option<wire::InventoryCursor> = None;
        // Bounded: a page per 10,000 shards of a store of at most a few million.
        for _ in 0..10_000 {
            let mut path = format!("{}?limit={INVENTORY_PAGE}", wire::INVENTORY_PATH);
            if let Some(cursor) = &cursor {
                path.push_str(&format!(
                    "&after_point={}&after_key={}",
                    cursor.point,
                    wire::encode_key(&cursor.key)
                ));
            }
            let (status, body) = http.request("GET", &path, b"")?;
            ensure!(
                status == 200,
                "inventory of {} answered {status}",
                node.name
            );
            let page: InventoryPage = serde_json::from_slice(&body)?;
            shards.extend(
                page.entries
                    .into_iter()
                    .filter(|entry| !entry.tombstone)
                    .map(|entry| (entry.key, entry.version, entry.shard_index)),
            );
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
    }
    Ok(count_dead(&shards, data_shards, total_shards))
}

/// Counts the shards that cannot serve their key: of a key with fewer than `k`
/// distinct shard indices of its newest version, or of an older version.
pub(super) fn count_dead(
    shards: &[(String, Version, u8)],
    data_shards: u8,
    total_shards: u8,
) -> ShardCensus {
    let mut newest: HashMap<&str, (Version, Vec<u8>)> = HashMap::new();
    for (key, version, index) in shards {
        let entry = newest.entry(key).or_insert((*version, Vec::new()));
        if *version > entry.0 {
            *entry = (*version, Vec::new());
        }
        if *version == entry.0 && !entry.1.contains(index) {
            entry.1.push(*index);
        }
    }
    let dead = shards
        .iter()
        .filter(|(key, version, _)| {
            let (newest_version, indices) = &newest[key.as_str()];
            version < newest_version || indices.len() < usize::from(data_shards)
        })
        .count();
    let missing_from_readable = newest
        .values()
        .map(|(_, indices)| indices.len())
        .filter(|&held| held >= usize::from(data_shards))
        .map(|held| usize::from(total_shards).saturating_sub(held) as u64)
        .sum();
    ShardCensus {
        shards: shards.len() as u64,
        dead: dead as u64,
        missing_from_readable,
    }
}

/// The aux nodes' summed store bytes and evictions (`GET /health`).
pub(super) fn store_totals(cluster: &LocalCluster) -> anyhow::Result<(u64, u64)> {
    let (mut bytes, mut evictions) = (0, 0);
    for node in &cluster.aux {
        let (status, body) = Http::connect(node.addr)?.request("GET", "/health", b"")?;
        ensure!(status == 200, "/health of {} answered {status}", node.name);
        let health: serde_json::Value = serde_json::from_slice(&body)?;
        bytes += health["store"]["bytes"].as_u64().unwrap_or(0);
        evictions += health["store"]["evictions"].as_u64().unwrap_or(0);
    }
    Ok((bytes, evictions))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(ms: u64) -> Version {
        Version {
            timestamp: ms,
            writer: 7,
        }
    }

    #[test]
    fn dead_shards_are_those_of_undecodable_or_older_versions() {
        let shard = |key: &str, ms, index| (key.to_owned(), version(ms), index);
        type Shards = Vec<(String, Version, u8)>;
        let cases: Vec<(Shards, u8, ShardCensus)> = vec![
            (
                vec![],
                3,
                ShardCensus {
                    shards: 0,
                    dead: 0,
                    missing_from_readable: 0,
                },
            ),
            // Three distinct indices of one version: alive.
            (
                vec![shard("a", 1, 0), shard("a", 1, 1), shard("a", 1, 2)],
                3,
                ShardCensus {
                    shards: 3,
                    dead: 0,
                    missing_from_readable: 2,
                },
            ),
            // Two left of three needed: both dead.
            (
                vec![shard("a", 1, 0), shard("a", 1, 4)],
                3,
                ShardCensus {
                    shards: 2,
                    dead: 2,
                    missing_from_readable: 0,
                },
            ),
            // The same index twice counts once.
            (
                vec![shard("a", 1, 0), shard("a", 1, 0), shard("a", 1, 1)],
                3,
                ShardCensus {
                    shards: 3,
                    dead: 3,
                    missing_from_readable: 0,
                },
            ),
            // An older version beside a decodable newer one is dead weight.
            (
                vec![
                    shard("a", 2, 0),
                    shard("a", 2, 1),
                    shard("a", 2, 2),
                    shard("a", 1, 3),
                ],
                3,
                ShardCensus {
                    shards: 4,
                    dead: 1,
                    missing_from_readable: 2,
                },
            ),
            // Replication (k = 1): one copy is enough.
            (
                vec![shard("b", 1, 2)],
                1,
                ShardCensus {
                    shards: 1,
                    dead: 0,
                    missing_from_readable: 2,
                },
            ),
        ];
        for (shards, k, expected) in cases {
            assert_eq!(count_dead(&shards, k, k + 2), expected, "{shards:?} k={k}");
        }
    }
}
