//! Batched shard reads: every shard read bound for one aux node joins that node's
//! queue, and the node's dispatcher sends what has queued up as one multi-get
//! request (`shardcache_common::multi_get`).
//!
//! There is no timer and no waiting for a batch to fill. A dispatcher sends the
//! first read the moment a request slot is free; only while all of the node's
//! `in_flight` slots are busy do further reads queue, and the next free slot takes
//! up to `max_keys` of them at once. A lone read therefore costs what a single GET
//! did, and under load a hop's fixed cost (HTTP parsing, routing, syscalls on both
//! sides) is shared by the whole batch.
//!
//! Bounds (invariant 5 and 6): a queue holds at most `queue` reads (a full one makes
//! readers wait, it never grows), a batch at most `max_keys`, and every read gives
//! up after the client's timeout counted from when it was queued, so a hung node
//! costs its readers one timeout however long its queue.
//!
//! A reader may stop waiting at any point (a read that has heard enough owners drops
//! the rest): the request itself belongs to the dispatcher, so dropping a read never
//! cuts a pooled connection, and a read dropped while still queued is simply not
//! sent. Each read that is sent is counted and timed here, from queueing to answer,
//! whether or not its reader is still waiting.
//!
//! A dispatcher with nothing to do for [`IDLE_DISPATCHER`] closes its queue and
//! ends (after sending what was already queued), so a node that left the cluster
//! leaves no task behind; the next read for that address starts a fresh one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use shardcache_common::aux_client::{AuxClient, AuxError};
use shardcache_common::frame::ShardFrame;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::cluster::Node;
use crate::metrics::{MasterMetrics, ShardOp, ShardOutcome};

/// How long a dispatcher waits for a read before it ends.
pub const IDLE_DISPATCHER: Duration = Duration::from_secs(60);

/// How shard reads are batched per aux node.
#[derive(Clone, Copy, Debug)]
pub struct BatchSettings {
    /// Most keys in one multi-get request (at most `multi_get::MAX_KEYS`).
    pub max_keys: usize,
    /// Multi-get requests in flight to one node at a time.
    pub in_flight: usize,
    /// Most reads waiting in one node's queue.
    pub queue: usize,
}

/// What one shard read found: the frame, `None` when the node holds none, or why
/// the node could not say.
pub type ShardRead = Result<Option<ShardFrame>, AuxError>;

/// One read waiting for its batch.
struct QueuedRead {
    key: String,
    node_id: Arc<str>,
    queued_at: Instant,
    reply: oneshot::Sender<ShardRead>,
}

/// The per-node queues and their dispatchers.
pub struct ReadBatcher {
    client: AuxClient,
    settings: BatchSettings,
    metrics: Arc<MasterMetrics>,
    /// By node address. A closed queue belongs to a dispatcher that ended idle; it
    /// is replaced on the next read for that address.
    queues: Mutex<HashMap<String, mpsc::Sender<QueuedRead>>>,
}

impl ReadBatcher {
    pub fn new(client: AuxClient, settings: BatchSettings, metrics: Arc<MasterMetrics>) -> Self {
        ReadBatcher {
            client,
            settings,
            metrics,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Reads the shard of `key` held by `node`, as part of whatever batch it joins.
    pub async fn get(&self, node: &Node, key: &str) -> ShardRead {
        let timeout = self.client.timeout();
        let (reply, answer) = oneshot::channel();
        let mut read = QueuedRead {
            key: key.to_owned(),
            node_id: node.id.clone(),
            queued_at: Instant::now(),
            reply,
        };
        let exchange = async {
            // A dispatcher may end idle between taking its queue and sending to it:
            // then the read goes to a fresh one.
            let mut sent = false;
            for _ in 0..2 {
                match self.queue(&node.address).send(read).await {
                    Ok(()) => {
                        sent = true;
                        break;
                    }
                    Err(mpsc::error::SendError(back)) => read = back,
                }
            }
            if !sent {
                return Err(AuxError::Transport("the read batcher has stopped".into()));
            }
            answer.await.unwrap_or_else(|_| {
                Err(AuxError::Transport(
                    "the batch was dropped unanswered".into(),
                ))
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(AuxError::Timeout(timeout)))
    }

    /// The queue of `address`, starting its dispatcher on first use (or after the
    /// last one ended idle).
    fn queue(&self, address: &str) -> mpsc::Sender<QueuedRead> {
        let mut queues = self.queues.lock();
        if let Some(queue) = queues.get(address).filter(|queue| !queue.is_closed()) {
            return queue.clone();
        }
        let (sender, receiver) = mpsc::channel(self.settings.queue.max(1));
        tokio::spawn(dispatch(
            self.client.clone(),
            address.to_owned(),
            receiver,
            self.settings,
            self.metrics.clone(),
        ));
        queues.insert(address.to_owned(), sender.clone());
        sender
    }
}

/// Sends one node's queued reads as batches, until it has been idle for
/// [`IDLE_DISPATCHER`].
async fn dispatch(
    client: AuxClient,
    address: String,
    mut queue: mpsc::Receiver<QueuedRead>,
    settings: BatchSettings,
    metrics: Arc<MasterMetrics>,
) {
    let slots = Arc::new(Semaphore::new(settings.in_flight.max(1)));
    let max_keys = settings.max_keys.max(1);
    loop {
        let first = match tokio::time::timeout(IDLE_DISPATCHER, queue.recv()).await {
            Ok(Some(read)) => read,
            Ok(None) => return,
            // Idle: refuse new reads, but still send those that made it in.
            Err(_) => {
                queue.close();
                match queue.recv().await {
                    Some(read) => read,
                    None => return,
                }
            }
        };
        // While every slot is busy, reads pile up in the queue: that is the batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return; // never closed
        };
        let mut batch = vec![first];
        while batch.len() < max_keys {
            match queue.try_recv() {
                Ok(read) => batch.push(read),
                Err(_) => break,
            }
        }
        batch.retain(|read| !read.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        metrics.shard_batch(batch.len());
        let (client, address, metrics) = (client.clone(), address.clone(), metrics.clone());
        tokio::spawn(async move {
            let keys: Vec<&str> = batch.iter().map(|read| read.key.as_str()).collect();
            let answers: Vec<ShardRead> = match client.multi_get_shards(&address, &keys).await {
                Ok(answers) => answers
                    .into_iter()
                    .map(|answer| answer.map_err(AuxError::from))
                    .collect(),
                Err(error) => vec![Err(error); batch.len()],
            };
            drop(slot);
            for (read, answer) in batch.into_iter().zip(answers) {
                metrics.shard_call(
                    &read.node_id,
                    ShardOp::Get,
                    ShardOutcome::of_get(&answer),
                    read.queued_at.elapsed(),
                );
                if let Err(error) = &answer {
                    metrics.shard_error(error);
                }
                let _ = read.reply.send(answer);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_idle_dispatcher_ends_and_the_next_read_starts_a_fresh_one() {
        // Nothing listens on port 1: every read fails at once, which is enough here.
        let client = AuxClient::new(Duration::from_secs(1), 1 << 20);
        let settings = BatchSettings {
            max_keys: 8,
            in_flight: 2,
            queue: 16,
        };
        let batcher = ReadBatcher::new(client, settings, Arc::new(MasterMetrics::new()));
        let node = Node {
            id: "aux-0".into(),
            address: "127.0.0.1:1".into(),
        };
        let is_closed = |batcher: &ReadBatcher| batcher.queues.lock()["127.0.0.1:1"].is_closed();
        assert!(batcher.get(&node, "k").await.is_err());
        assert!(!is_closed(&batcher));
        tokio::time::sleep(IDLE_DISPATCHER + Duration::from_secs(1)).await;
        assert!(is_closed(&batcher), "the idle dispatcher ended");
        let answer = batcher.get(&node, "k").await;
        assert!(
            matches!(&answer, Err(error) if !error.to_string().contains("stopped")),
            "a fresh dispatcher took the read: {answer:?}"
        );
        assert!(!is_closed(&batcher));
    }
}
