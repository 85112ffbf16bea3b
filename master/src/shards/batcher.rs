//! Batched shard calls: every shard read (or write) bound for one aux node joins
//! that node's queue, and the node's dispatcher sends what has queued up as one
//! multi-get (or multi-put) request (`shardcache_common::multi_get`, `multi_put`).
//! [`BatchKind`] says what is batched; [`Reads`] and [`Writes`] are the two kinds.
//!
//! There is no timer and no waiting for a batch to fill. A dispatcher sends the
//! first call as soon as a request slot is free and the tasks already runnable
//! have had their turn (one `yield_now`: requests that arrived together queue
//! their calls first); while all of the node's `in_flight` slots are busy, further
//! calls queue, and the next free slot takes up to `max_items` of them (and
//! `max_bytes` of what they carry) at once. A lone
//! call therefore costs what a single request did, and under load a hop's fixed
//! cost (HTTP parsing, routing, syscalls on both sides) is shared by the batch.
//! Each call gets its own answer: one frame refused or superseded does not touch
//! the others of its batch.
//!
//! Bounds (invariant 5 and 6): a queue holds at most `queue` calls (a full one
//! makes callers wait, it never grows), a batch at most `max_items` and `max_bytes`
//! (a single larger item goes alone), and every call gives up after the client's
//! timeout counted from when it was queued, so a hung node costs its callers one
//! timeout however long its queue.
//!
//! A caller may stop waiting at any point (a read that has heard enough owners drops
//! the rest): the request itself belongs to the dispatcher, so dropping a call never
//! cuts a pooled connection. A read dropped while still queued is not sent; a write
//! is sent anyway (a write's shards beyond its quorum still go out). Each call that
//! is sent is counted and timed here, from queueing to answer, whether or not its
//! caller is still waiting.
//!
//! A dispatcher with nothing to do for [`IDLE_DISPATCHER`] closes its queue and
//! ends (after sending what was already queued), so a node that left the cluster
//! leaves no task behind; the next call for that address starts a fresh one.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use shardcache_common::aux_client::{AuxClient, AuxError, PutOutcome};
use shardcache_common::frame::ShardFrame;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::cluster::Node;
use crate::metrics::{MasterMetrics, ShardOp, ShardOutcome};

/// How long a dispatcher waits for a call before it ends.
pub const IDLE_DISPATCHER: Duration = Duration::from_secs(60);

/// How shard calls of one kind are batched per aux node.
#[derive(Clone, Copy, Debug)]
pub struct BatchSettings {
    /// Most calls in one request (at most the exchange's own limit).
    pub max_items: usize,
    /// Most bytes of items in one request (a single larger item goes alone).
    pub max_bytes: usize,
    /// Requests in flight to one node at a time.
    pub in_flight: usize,
    /// Most calls waiting in one node's queue.
    pub queue: usize,
}

/// What one shard read found: the frame, `None` when the node holds none, or why
/// the node could not say.
pub type ShardRead = Result<Option<ShardFrame>, AuxError>;

/// One kind of batched shard call.
pub trait BatchKind: Send + Sync + 'static {
    /// What one call carries: a key to read, a frame to store.
    type Item: Send + Sync + 'static;
    /// What one call comes to when the node answers.
    type Value: Clone + Send + 'static;
    /// How calls of this kind are measured.
    const OP: ShardOp;
    /// Whether a queued call whose caller stopped waiting is still sent.
    const SEND_UNWANTED: bool;
    /// Bytes the item adds to a request.
    fn bytes(item: &Self::Item) -> usize;
    /// Sends one batch to `address`: an answer per item, in order.
    fn send(
        client: &AuxClient,
        address: &str,
        items: &[Self::Item],
    ) -> impl Future<Output = Result<Vec<Result<Self::Value, AuxError>>, AuxError>> + Send;
    /// The outcome label of an answer.
    fn outcome(answer: &Result<Self::Value, AuxError>) -> ShardOutcome;
    /// Records a batch of `size` calls.
    fn record_batch(metrics: &MasterMetrics, size: usize);
}

/// Shard reads: keys in, frames (or none) out, by multi-get.
pub struct Reads;

impl BatchKind for Reads {
    type Item = String;
    type Value = Option<ShardFrame>;
    const OP: ShardOp = ShardOp::Get;
    const SEND_UNWANTED: bool = false;

    fn bytes(key: &String) -> usize {
        key.len()
    }

    async fn send(
        client: &AuxClient,
        address: &str,
        keys: &[String],
    ) -> Result<Vec<ShardRead>, AuxError> {
        Ok(client
            .multi_get_shards(address, keys)
            .await?
            .into_iter()
            .map(|answer| answer.map_err(AuxError::from))
            .collect())
    }

    fn outcome(answer: &ShardRead) -> ShardOutcome {
        ShardOutcome::of_get(answer)
    }

    fn record_batch(metrics: &MasterMetrics, size: usize) {
        metrics.shard_batch(size);
    }
}

/// Shard writes: encoded frames in, stored or superseded out, by multi-put.
pub struct Writes;

impl BatchKind for Writes {
    type Item = Bytes;
    type Value = PutOutcome;
    const OP: ShardOp = ShardOp::Put;
    const SEND_UNWANTED: bool = true;

    fn bytes(frame: &Bytes) -> usize {
        frame.len()
    }

    async fn send(
        client: &AuxClient,
        address: &str,
        frames: &[Bytes],
    ) -> Result<Vec<Result<PutOutcome, AuxError>>, AuxError> {
        client.multi_put_shards(address, frames).await
    }

    fn outcome(answer: &Result<PutOutcome, AuxError>) -> ShardOutcome {
        ShardOutcome::of_put(answer)
    }

    fn record_batch(metrics: &MasterMetrics, size: usize) {
        metrics.shard_put_batch(size);
    }
}

/// One call waiting for its batch.
struct Queued<K: BatchKind> {
    item: K::Item,
    node_id: Arc<str>,
    queued_at: Instant,
    reply: oneshot::Sender<Result<K::Value, AuxError>>,
}

/// The per-node queues and their dispatchers, for one kind of call.
pub struct Batcher<K: BatchKind> {
    client: AuxClient,
    settings: BatchSettings,
    metrics: Arc<MasterMetrics>,
    /// By node address. A closed queue belongs to a dispatcher that ended idle; it
    /// is replaced on the next call for that address.
    queues: Mutex<HashMap<String, mpsc::Sender<Queued<K>>>>,
}

impl<K: BatchKind> Batcher<K> {
    pub fn new(client: AuxClient, settings: BatchSettings, metrics: Arc<MasterMetrics>) -> Self {
        Batcher {
            client,
            settings,
            metrics,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Makes the call `item` to `node`, as part of whatever batch it joins.
    pub async fn call(&self, node: &Node, item: K::Item) -> Result<K::Value, AuxError> {
        let timeout = self.client.timeout();
        let (reply, answer) = oneshot::channel();
        let mut queued = Queued::<K> {
            item,
            node_id: node.id.clone(),
            queued_at: Instant::now(),
            reply,
        };
        let exchange = async {
            // A dispatcher may end idle between taking its queue and sending to it:
            // then the call goes to a fresh one.
            let mut sent = false;
            for _ in 0..2 {
                match self.queue(&node.address).send(queued).await {
                    Ok(()) => {
                        sent = true;
                        break;
                    }
                    Err(mpsc::error::SendError(back)) => queued = back,
                }
            }
            if !sent {
                return Err(AuxError::Transport("the shard batcher has stopped".into()));
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
    fn queue(&self, address: &str) -> mpsc::Sender<Queued<K>> {
        let mut queues = self.queues.lock();
        if let Some(queue) = queues.get(address).filter(|queue| !queue.is_closed()) {
            return queue.clone();
        }
        let (sender, receiver) = mpsc::channel(self.settings.queue.max(1));
        tokio::spawn(dispatch::<K>(
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

/// Sends one node's queued calls as batches, until it has been idle for
/// [`IDLE_DISPATCHER`].
async fn dispatch<K: BatchKind>(
    client: AuxClient,
    address: String,
    mut queue: mpsc::Receiver<Queued<K>>,
    settings: BatchSettings,
    metrics: Arc<MasterMetrics>,
) {
    let slots = Arc::new(Semaphore::new(settings.in_flight.max(1)));
    let max_items = settings.max_items.max(1);
    // A call taken from the queue that did not fit the last batch: the next one's
    // first.
    let mut carried: Option<Queued<K>> = None;
    loop {
        let first = match carried.take() {
            Some(call) => call,
            None => match tokio::time::timeout(IDLE_DISPATCHER, queue.recv()).await {
                Ok(Some(call)) => call,
                Ok(None) => return,
                // Idle: refuse new calls, but still send those that made it in.
                Err(_) => {
                    queue.close();
                    match queue.recv().await {
                        Some(call) => call,
                        None => return,
                    }
                }
            },
        };
        // While every slot is busy, calls pile up in the queue: that is the batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return; // never closed
        };
        // Let the tasks that are already runnable go first: requests that arrived
        // together (one socket readiness pass) then queue their calls before this
        // batch is cut, rather than each opening a batch of its own.
        tokio::task::yield_now().await;
        let mut bytes = K::bytes(&first.item);
        let mut batch = vec![first];
        while batch.len() < max_items {
            let Ok(call) = queue.try_recv() else { break };
            let call_bytes = K::bytes(&call.item);
            if bytes.saturating_add(call_bytes) > settings.max_bytes {
                carried = Some(call);
                break;
            }
            bytes += call_bytes;
            batch.push(call);
        }
        if !K::SEND_UNWANTED {
            batch.retain(|call| !call.reply.is_closed());
        }
        if batch.is_empty() {
            continue;
        }
        K::record_batch(&metrics, batch.len());
        let (client, address, metrics) = (client.clone(), address.clone(), metrics.clone());
        tokio::spawn(async move {
            let (items, waiting): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|call| (call.item, (call.node_id, call.queued_at, call.reply)))
                .unzip();
            let answers = match K::send(&client, &address, &items).await {
                Ok(answers) => answers,
                Err(error) => vec![Err(error); items.len()],
            };
            drop(slot);
            for ((node_id, queued_at, reply), answer) in waiting.into_iter().zip(answers) {
                metrics.shard_call(&node_id, K::OP, K::outcome(&answer), queued_at.elapsed());
                if let Err(error) = &answer {
                    metrics.shard_error(error);
                }
                let _ = reply.send(answer);
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
            max_items: 8,
            max_bytes: 1 << 20,
            in_flight: 2,
            queue: 16,
        };
        let batcher = Batcher::<Reads>::new(client, settings, Arc::new(MasterMetrics::new()));
        let node = Node {
            id: "aux-0".into(),
            address: "127.0.0.1:1".into(),
        };
        let is_closed = |batcher: &Batcher<Reads>| batcher.queues.lock()["127.0.0.1:1"].is_closed();
        assert!(batcher.call(&node, "k".to_owned()).await.is_err());
        assert!(!is_closed(&batcher));
        tokio::time::sleep(IDLE_DISPATCHER + Duration::from_secs(1)).await;
        assert!(is_closed(&batcher), "the idle dispatcher ended");
        let answer = batcher.call(&node, "k".to_owned()).await;
        assert!(
            matches!(&answer, Err(error) if !error.to_string().contains("stopped")),
            "a fresh dispatcher took the read: {answer:?}"
        );
        assert!(!is_closed(&batcher));
    }
}
