//! Batched shard calls: every shard read (or write) bound for one aux node joins
//! that node's queue, and the node's dispatcher sends what has queued up as one
//! multi-get (or multi-put) request (`shardcache_common::multi_get`, `multi_put`).
//! [`BatchKind`] says what is batched; [`Reads`] and [`Writes`] are the two kinds.
//!
//! There is no batching timer and no waiting for a batch to fill. A dispatcher
//! sends the first call as soon as a request slot is free and the tasks already
//! runnable have had their turn (one `yield_now`: requests that arrived together
//! queue their calls first); while all of the node's `in_flight` slots are busy,
//! further calls queue, and the next free slot takes up to `max_items` of them
//! (and `max_bytes` of what they carry) at once. A lone call therefore costs what
//! a single request did, and under load a hop's fixed cost (HTTP parsing,
//! routing, syscalls on both sides) is shared by the batch.
//! Each call gets its own answer: one frame refused or superseded does not touch
//! the others of its batch.
//!
//! Bounds (invariant 5 and 6): a queue holds at most `queue` calls (a call that
//! finds it full waits for room until its deadline, then times out unsent: the
//! queue never grows), a batch at most `max_items` and `max_bytes`
//! (a single larger item goes alone), and every call gives up after the client's
//! timeout counted from when it was queued, so a hung node costs its callers one
//! timeout however long its queue. A caller asking several nodes at once
//! ([`Batcher::fan_out`]: a read's owners, a write's shards) gets their answers on
//! one channel under one deadline, rather than a channel and a timer per node.
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
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use shardcache_common::aux_client::{AuxClient, AuxError, PutOutcome};
use shardcache_common::frame::ShardFrame;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Sleep;

use crate::cluster::Node;
use crate::metrics::{MasterMetrics, ShardOp, ShardOutcome};

/// How long a dispatcher waits for a call before it ends.
pub(crate) const IDLE_DISPATCHER: Duration = Duration::from_secs(60);

/// How shard calls of one kind are batched per aux node.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchSettings {
    /// Most calls in one request (at most the exchange's own limit).
    pub(crate) max_items: usize,
    /// Most bytes of items in one request (a single larger item goes alone).
    pub(crate) max_bytes: usize,
    /// Requests in flight to one node at a time.
    pub(crate) in_flight: usize,
    /// Most calls waiting in one node's queue.
    pub(crate) queue: usize,
}

/// What one shard read found: the frame, `None` when the node holds none, or why
/// the node could not say.
pub(crate) type ShardRead = Result<Option<ShardFrame>, AuxError>;

/// One kind of batched shard call.
pub(crate) trait BatchKind: Send + Sync + 'static {
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
pub(crate) struct Reads;

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
pub(crate) struct Writes;

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
    reply: Reply<K::Value>,
}

/// Where the answer to one call goes.
enum Reply<V> {
    /// To the one caller of [`Batcher::call`].
    Alone(oneshot::Sender<Result<V, AuxError>>),
    /// To the [`FanOut`] the call is part of, with the call's position in it.
    Fanned {
        index: usize,
        answers: mpsc::UnboundedSender<(usize, Result<V, AuxError>)>,
    },
}

impl<V> Reply<V> {
    /// Whether nobody waits for the answer any more.
    fn is_closed(&self) -> bool {
        match self {
            Reply::Alone(reply) => reply.is_closed(),
            Reply::Fanned { answers, .. } => answers.is_closed(),
        }
    }

    fn send(self, answer: Result<V, AuxError>) {
        match self {
            Reply::Alone(reply) => {
                let _ = reply.send(answer);
            }
            Reply::Fanned { index, answers } => {
                let _ = answers.send((index, answer));
            }
        }
    }
}

/// The answers to the calls of one [`Batcher::fan_out`], as they arrive, each
/// with the position of its call, exactly once per call. One deadline covers them
/// all: once it passes, each call still unanswered yields a timeout (and an answer
/// arriving after that is dropped). Dropping it stops the listening, not the calls
/// already sent.
pub(crate) struct FanOut<V> {
    answers: mpsc::UnboundedReceiver<(usize, Result<V, AuxError>)>,
    /// Whether each call is still unanswered.
    unanswered: Vec<bool>,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    /// Why the calls still unanswered will never be answered, once that is known.
    given_up: Option<AuxError>,
}

impl<V> FanOut<V> {
    /// Listens on `answers` for the answers to `calls` calls, until `timeout`.
    fn new(
        answers: mpsc::UnboundedReceiver<(usize, Result<V, AuxError>)>,
        calls: usize,
        timeout: Duration,
    ) -> Self {
        FanOut {
            answers,
            unanswered: vec![true; calls],
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            given_up: None,
        }
    }

    /// The next answer; `None` once every call has had one.
    pub(crate) async fn next(&mut self) -> Option<(usize, Result<V, AuxError>)> {
        while self.unanswered.contains(&true) {
            if self.given_up.is_none() {
                tokio::select! {
                    biased;
                    answer = self.answers.recv() => match answer {
                        Some((index, answer)) => {
                            if self.take(index) {
                                return Some((index, answer));
                            }
                            continue; // late: that call already timed out
                        }
                        // Every call left was dropped unanswered (a batch task
                        // that died, a runtime shutting down).
                        None => {
                            self.given_up = Some(AuxError::Transport(
                                "the batch was dropped unanswered".into(),
                            ));
                        }
                    },
                    () = &mut self.deadline => {
                        self.given_up = Some(AuxError::Timeout(self.timeout));
                    }
                }
            }
            let index = self.unanswered.iter().position(|&waiting| waiting)?;
            self.take(index);
            return Some((index, Err(self.given_up.clone()?)));
        }
        None
    }

    /// Marks call `index` answered; false if it already was.
    fn take(&mut self, index: usize) -> bool {
        self.unanswered
            .get_mut(index)
            .is_some_and(|waiting| std::mem::replace(waiting, false))
    }
}

/// The per-node queues and their dispatchers, for one kind of call.
pub(crate) struct Batcher<K: BatchKind> {
    client: AuxClient,
    settings: BatchSettings,
    metrics: Arc<MasterMetrics>,
    /// By node address. A closed queue belongs to a dispatcher that ended idle; it
    /// is replaced on the next call for that address.
    queues: Mutex<HashMap<String, mpsc::Sender<Queued<K>>>>,
}

impl<K: BatchKind> Batcher<K> {
    pub(crate) fn new(
        client: AuxClient,
        settings: BatchSettings,
        metrics: Arc<MasterMetrics>,
    ) -> Self {
        Batcher {
            client,
            settings,
            metrics,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Makes one call per `(node, item)`, each joining its node's batch, without
    /// waiting; the answers come through the returned [`FanOut`] as they arrive,
    /// under one deadline (the client's timeout) for them all. A node whose queue
    /// is full does not hold up the calls to the others.
    pub(crate) fn fan_out<'a>(
        &self,
        calls: impl IntoIterator<Item = (&'a Node, K::Item)>,
    ) -> FanOut<K::Value> {
        let timeout = self.client.timeout();
        let queued_at = Instant::now();
        let (sender, answers) = mpsc::unbounded_channel();
        let mut calls_made = 0;
        for (index, (node, item)) in calls.into_iter().enumerate() {
            calls_made += 1;
            self.enqueue(
                &node.address,
                Queued {
                    item,
                    node_id: node.id.clone(),
                    queued_at,
                    reply: Reply::Fanned {
                        index,
                        answers: sender.clone(),
                    },
                },
            );
        }
        FanOut::new(answers, calls_made, timeout)
    }

    /// Queues `call` for `address` at once when there is room, else from a task of
    /// its own that waits for room until the call's deadline (the client's timeout
    /// from queueing), then answers it with a timeout: a call that never got into
    /// the queue is never sent, so a slow node's backlog stays within its queue.
    fn enqueue(&self, address: &str, call: Queued<K>) {
        let call = match self.queue(address).try_send(call) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(call)) => call,
            // The dispatcher ended idle after its queue was taken: a fresh one.
            Err(mpsc::error::TrySendError::Closed(call)) => call,
        };
        let queue = self.queue(address);
        let timeout = self.client.timeout();
        let patience = timeout.saturating_sub(call.queued_at.elapsed());
        tokio::spawn(async move {
            match tokio::time::timeout(patience, queue.reserve()).await {
                Ok(Ok(room)) => room.send(call),
                Ok(Err(_)) => call.reply.send(Err(AuxError::Transport(
                    "the shard batcher has stopped".into(),
                ))),
                Err(_) => call.reply.send(Err(AuxError::Timeout(timeout))),
            }
        });
    }

    /// Makes the call `item` to `node`, as part of whatever batch it joins.
    pub(crate) async fn call(&self, node: &Node, item: K::Item) -> Result<K::Value, AuxError> {
        let timeout = self.client.timeout();
        let (reply, answer) = oneshot::channel();
        let queued = Queued::<K> {
            item,
            node_id: node.id.clone(),
            queued_at: Instant::now(),
            reply: Reply::Alone(reply),
        };
        self.enqueue(&node.address, queued);
        let answer = async {
            answer.await.unwrap_or_else(|_| {
                Err(AuxError::Transport(
                    "the batch was dropped unanswered".into(),
                ))
            })
        };
        tokio::time::timeout(timeout, answer)
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
            // One clock reading and one metrics lookup per outcome for the batch.
            let answered_at = Instant::now();
            let batch_node = waiting.first().map(|(node_id, ..)| node_id.clone());
            let mut calls = metrics.shard_calls(batch_node.as_deref().unwrap_or(""), K::OP);
            for ((node_id, queued_at, reply), answer) in waiting.into_iter().zip(answers) {
                let took = answered_at.saturating_duration_since(queued_at);
                match *node_id == *calls.node() {
                    true => calls.record(K::outcome(&answer), took),
                    false => metrics.shard_call(&node_id, K::OP, K::outcome(&answer), took),
                }
                if let Err(error) = &answer {
                    metrics.shard_error(error);
                }
                reply.send(answer);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batcher that sends one call per batch and one batch at a time, with room
    /// for `queue` calls waiting, giving up after `timeout`.
    fn one_call_at_a_time<K: BatchKind>(timeout: Duration, queue: usize) -> Batcher<K> {
        let settings = BatchSettings {
            max_items: 1,
            max_bytes: 1 << 20,
            in_flight: 1,
            queue,
        };
        Batcher::new(
            AuxClient::new(timeout, 1 << 20),
            settings,
            Arc::new(MasterMetrics::new()),
        )
    }

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

    #[tokio::test(start_paused = true)]
    async fn a_fan_out_answers_every_call_once_and_times_out_a_hung_node_under_one_deadline() {
        // A node that accepts connections and never answers, and one that refuses them.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hung = Node {
            id: "hung".into(),
            address: listener.local_addr().unwrap().to_string().into(),
        };
        let refusing = Node {
            id: "refusing".into(),
            address: "127.0.0.1:1".into(),
        };
        let timeout = Duration::from_secs(1);
        // One call per request and one request at a time: the hung node's second
        // call waits a whole timeout for the first, so only the fan-out's own
        // deadline can answer it within one.
        let batcher = one_call_at_a_time::<Reads>(timeout, 16);
        let started = tokio::time::Instant::now();
        let mut calls = batcher.fan_out([
            (&hung, "a".to_owned()),
            (&refusing, "b".to_owned()),
            (&hung, "c".to_owned()),
        ]);
        let mut answered = Vec::new();
        while let Some((index, answer)) = calls.next().await {
            let timed_out = matches!(answer, Err(AuxError::Timeout(_)));
            assert!(answer.is_err(), "call {index}: {answer:?}");
            answered.push((index, timed_out));
        }
        assert!(started.elapsed() <= timeout + Duration::from_millis(10));
        answered.sort();
        assert_eq!(
            answered,
            [(0, true), (1, false), (2, true)],
            "each call answered once: the hung node's by the deadline, the refusing one's at once"
        );
        assert!(calls.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_fan_out_answers_each_call_once_even_when_answers_come_after_the_deadline() {
        let (sender, answers) = mpsc::unbounded_channel();
        let timeout = Duration::from_secs(1);
        let mut calls = FanOut::<u32>::new(answers, 3, timeout);
        sender.send((2, Ok(7))).unwrap();
        assert!(matches!(calls.next().await, Some((2, Ok(7)))));
        tokio::time::sleep(timeout * 2).await;
        assert!(matches!(
            calls.next().await,
            Some((0, Err(AuxError::Timeout(_))))
        ));
        // Answers arriving after the deadline, one for a call already timed out.
        sender.send((0, Ok(8))).unwrap();
        sender.send((1, Ok(9))).unwrap();
        assert!(matches!(
            calls.next().await,
            Some((1, Err(AuxError::Timeout(_))))
        ));
        assert!(calls.next().await.is_none());
        assert!(calls.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_fan_out_whose_calls_were_dropped_unanswered_says_so_at_once() {
        let (sender, answers) = mpsc::unbounded_channel::<(usize, Result<u32, AuxError>)>();
        let mut calls = FanOut::<u32>::new(answers, 2, Duration::from_secs(60));
        drop(sender);
        let started = tokio::time::Instant::now();
        for index in 0..2 {
            let answer = calls.next().await;
            assert!(
                matches!(&answer, Some((at, Err(AuxError::Transport(_)))) if *at == index),
                "{answer:?}"
            );
        }
        assert!(calls.next().await.is_none());
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn calls_that_find_a_full_queue_give_up_at_their_deadline_and_are_never_sent() {
        // A node that reads requests and never answers; it counts the batches sent.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = Node {
            id: "hung".into(),
            address: listener.local_addr().unwrap().to_string().into(),
        };
        let batches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = batches.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 1 << 16];
                    while let Ok(read) =
                        tokio::io::AsyncReadExt::read(&mut stream, &mut buffer).await
                    {
                        if read == 0 {
                            break;
                        }
                        let requests = buffer[..read]
                            .windows(18)
                            .filter(|at| at == b"POST /v1/multi-put")
                            .count();
                        counted.fetch_add(requests, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            }
        });
        let timeout = Duration::from_millis(100);
        // One call per batch, one batch at a time, one call waiting in the queue.
        let batcher = one_call_at_a_time::<Writes>(timeout, 1);
        let mut calls = batcher.fan_out((0..10).map(|_| (&node, Bytes::from_static(b"frame"))));
        let mut answered = 0;
        while let Some((_, answer)) = calls.next().await {
            assert!(answer.is_err(), "{answer:?}");
            answered += 1;
        }
        assert_eq!(answered, 10);
        // Ten deadlines later, only the calls that made it into the queue went out:
        // the rest gave up rather than waiting on for room.
        tokio::time::sleep(timeout * 10).await;
        let sent = batches.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            (1..=4).contains(&sent),
            "{sent} batches sent for a hung node"
        );
    }
}
