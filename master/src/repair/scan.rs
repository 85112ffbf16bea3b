//! The scan: every up node's inventory, streamed page by page in ring-point order
//! and merged, so that a pass sees every holder of a key at once.
//!
//! Each node's pages are fetched by a task of its own, one page ahead of the merge
//! (a channel of one page), so the pass never stops to wait for a page while the
//! next is already on its way: at most three pages per node are in memory (the one
//! being merged, the one queued, the one being fetched). Dropping the
//! [`Inventories`] stops the fetchers.

use std::collections::VecDeque;

use shardcache_common::aux_client::AuxClient;
use shardcache_common::wire::InventoryEntry;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::plan::Holding;
use crate::cluster::Node;

/// Inventory entries fetched per node per request.
const INVENTORY_PAGE: usize = 2_000;

/// Pages fetched ahead of the merge, per node.
const PAGES_AHEAD: usize = 1;

/// The merged inventories of a set of nodes.
pub(crate) struct Inventories {
    sources: Vec<Source>,
    /// The page fetchers; aborted when the scan is dropped.
    _fetchers: JoinSet<()>,
}

/// One key and everything the nodes hold of it.
pub(crate) struct KeyHoldings {
    /// The key's ring point: how far the scan has come.
    pub(crate) point: u64,
    pub(crate) key: String,
    pub(crate) holdings: Vec<Holding>,
}

impl Inventories {
    /// Starts fetching every node's inventory.
    pub(crate) fn new(nodes: Vec<Node>, client: &AuxClient) -> Self {
        let mut fetchers = JoinSet::new();
        let sources = nodes
            .into_iter()
            .map(|node| {
                let (pages, receiver) = mpsc::channel(PAGES_AHEAD);
                fetchers.spawn(fetch_pages(client.clone(), node.clone(), pages));
                Source {
                    node,
                    buffer: VecDeque::new(),
                    pages: receiver,
                    exhausted: false,
                }
            })
            .collect();
        Inventories {
            sources,
            _fetchers: fetchers,
        }
    }

    /// The next key in ring order with every node's entry for it; `Ok(None)` when
    /// every inventory is exhausted. A node whose page cannot be fetched fails the
    /// scan: without its list a pass could misjudge which indices exist.
    pub(crate) async fn next(&mut self) -> Result<Option<KeyHoldings>, String> {
        for source in &mut self.sources {
            source.fill().await?;
        }
        let Some((point, key)) = self.sources.iter().filter_map(Source::front).min() else {
            return Ok(None);
        };
        let key = key.to_owned();
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
}

/// Sends `node`'s inventory to `pages`, a page at a time, until it is exhausted,
/// a fetch fails (sent as the last item), or nobody listens any more.
async fn fetch_pages(
    client: AuxClient,
    node: Node,
    pages: mpsc::Sender<Result<Vec<InventoryEntry>, String>>,
) {
    let mut cursor = None;
    loop {
        let page = match client
            .inventory(&node.address, cursor.as_ref(), INVENTORY_PAGE)
            .await
        {
            Ok(page) => page,
            Err(error) => {
                let problem = format!("inventory of {} failed: {error}", node.id);
                let _ = pages.send(Err(problem)).await;
                return;
            }
        };
        cursor = page.next;
        if pages.send(Ok(page.entries)).await.is_err() || cursor.is_none() {
            return; // the scan was dropped, or this was the last page
        }
    }
}

/// One node's inventory, as its fetcher delivers it.
struct Source {
    node: Node,
    buffer: VecDeque<InventoryEntry>,
    pages: mpsc::Receiver<Result<Vec<InventoryEntry>, String>>,
    exhausted: bool,
}

impl Source {
    /// Waits for the next page if the buffer ran dry and pages remain.
    async fn fill(&mut self) -> Result<(), String> {
        while self.buffer.is_empty() && !self.exhausted {
            match self.pages.recv().await {
                Some(Ok(entries)) => self.buffer.extend(entries),
                Some(Err(problem)) => return Err(problem),
                None => self.exhausted = true, // the fetcher sent the last page
            }
        }
        Ok(())
    }

    fn front(&self) -> Option<(u64, &str)> {
        self.buffer
            .front()
            .map(|entry| (entry.point, entry.key.as_str()))
    }

    fn take(&mut self, point: u64, key: &str) -> Option<InventoryEntry> {
        let front = self.buffer.front()?;
        (front.point == point && front.key == key)
            .then(|| self.buffer.pop_front())
            .flatten()
    }
}
