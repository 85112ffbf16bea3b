//! The scan: every up node's inventory, read page by page in ring-point order and
//! merged, so that a pass sees every holder of a key at once while holding only one
//! page per node in memory.

use std::collections::VecDeque;

use shardcache_common::aux_client::AuxClient;
use shardcache_common::wire::{InventoryCursor, InventoryEntry};

use super::plan::Holding;
use crate::cluster::Node;

/// Inventory entries fetched per node per request.
const INVENTORY_PAGE: usize = 1_000;

/// The merged inventories of a set of nodes.
pub(crate) struct Inventories {
    sources: Vec<Source>,
}

/// One key and everything the nodes hold of it.
pub(crate) struct KeyHoldings {
    /// The key's ring point: how far the scan has come.
    pub(crate) point: u64,
    pub(crate) key: String,
    pub(crate) holdings: Vec<Holding>,
}

impl Inventories {
    pub(crate) fn new(nodes: Vec<Node>) -> Self {
        Inventories {
            sources: nodes.into_iter().map(Source::new).collect(),
        }
    }

    /// The next key in ring order with every node's entry for it; `Ok(None)` when
    /// every inventory is exhausted. A node whose page cannot be fetched fails the
    /// scan: without its list a pass could misjudge which indices exist.
    pub(crate) async fn next(&mut self, client: &AuxClient) -> Result<Option<KeyHoldings>, String> {
        self.fill(client).await?;
        let Some((point, key)) = self.sources.iter().filter_map(Source::front).min() else {
            return Ok(None);
        };
        let holdings = self
            .sources
            .iter_mut()
            .filter_map(|source| {
                source
                    .take(point, &key)
                    .map(|entry| (source.node.clone(), entry))
            })
            .collect();
        Ok(Some(KeyHoldings {
            point,
            key,
            holdings,
        }))
    }

    /// Fetches the next page of every source whose buffer ran dry.
    async fn fill(&mut self, client: &AuxClient) -> Result<(), String> {
        let fetches = self
            .sources
            .iter_mut()
            .filter(|source| source.needs_page())
            .map(|source| async move {
                let page = client
                    .inventory(&source.node.address, source.cursor.as_ref(), INVENTORY_PAGE)
                    .await
                    .map_err(|error| format!("inventory of {} failed: {error}", source.node.id))?;
                source.cursor = page.next;
                source.exhausted = source.cursor.is_none();
                source.buffer.extend(page.entries);
                Ok(())
            });
        futures::future::join_all(fetches)
            .await
            .into_iter()
            .collect()
    }
}

/// One node's inventory, read page by page.
struct Source {
    node: Node,
    buffer: VecDeque<InventoryEntry>,
    cursor: Option<InventoryCursor>,
    exhausted: bool,
}

impl Source {
    fn new(node: Node) -> Self {
        Source {
            node,
            buffer: VecDeque::new(),
            cursor: None,
            exhausted: false,
        }
    }

    fn needs_page(&self) -> bool {
        self.buffer.is_empty() && !self.exhausted
    }

    fn front(&self) -> Option<(u64, String)> {
        self.buffer
            .front()
            .map(|entry| (entry.point, entry.key.clone()))
    }

    fn take(&mut self, point: u64, key: &str) -> Option<InventoryEntry> {
        let front = self.buffer.front()?;
        (front.point == point && front.key == key)
            .then(|| self.buffer.pop_front())
            .flatten()
    }
}
