//! The master's shard calls to aux nodes — put, get, delete — each one counted and
//! timed per node, operation and outcome (`shardcache_master_shard_requests_total`
//! and `…_shard_request_duration_seconds`). The data path and repair go through it,
//! so no shard call escapes the metrics. Gets and puts go through a [`Batcher`]
//! unless batching is off for them (`--read-batch-max 1`, `--write-batch-max 1`),
//! then each is a request of its own; callers that ask several nodes use
//! [`ShardClient::gather`] and [`ShardClient::put_all`], which hide the difference.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use shardcache_common::aux_client::{AuxClient, AuxError, PutOutcome};
use shardcache_common::frame::ShardFrame;
use shardcache_common::version::Version;
use tokio::sync::mpsc;

use super::batcher::{BatchKind, BatchSettings, Batcher, FanOut, Reads, ShardRead, Writes};
use crate::cluster::Node;
use crate::metrics::{MasterMetrics, ShardOp, ShardOutcome};

/// A batcher for calls of kind `K`, unless batching is off for them (one item per
/// batch).
fn batcher<K: BatchKind>(
    client: &AuxClient,
    settings: BatchSettings,
    metrics: &Arc<MasterMetrics>,
) -> Option<Arc<Batcher<K>>> {
    (settings.max_items > 1)
        .then(|| Arc::new(Batcher::new(client.clone(), settings, metrics.clone())))
}

/// An [`AuxClient`] whose shard calls are measured.
#[derive(Clone)]
pub(crate) struct ShardClient {
    client: AuxClient,
    metrics: Arc<MasterMetrics>,
    /// `None` when reads are not batched.
    reads: Option<Arc<Batcher<Reads>>>,
    /// `None` when writes are not batched.
    writes: Option<Arc<Batcher<Writes>>>,
}

impl ShardClient {
    pub(crate) fn new(
        client: AuxClient,
        metrics: Arc<MasterMetrics>,
        reads: BatchSettings,
        writes: BatchSettings,
    ) -> Self {
        ShardClient {
            reads: batcher(&client, reads, &metrics),
            writes: batcher(&client, writes, &metrics),
            client,
            metrics,
        }
    }

    /// The metrics its calls are counted in.
    pub(crate) fn metrics(&self) -> &MasterMetrics {
        &self.metrics
    }

    /// The unmeasured client, for calls that are not shard traffic (inventory,
    /// leases).
    pub(crate) fn aux(&self) -> &AuxClient {
        &self.client
    }

    /// Stores `frame` on `node`, as part of whatever batch it joins.
    pub(crate) async fn put(&self, node: &Node, frame: Bytes) -> Result<PutOutcome, AuxError> {
        if let Some(batcher) = &self.writes {
            return batcher.call(node, frame).await;
        }
        let started = Instant::now();
        let result = self.client.put_shard(&node.address, frame).await;
        self.record(node, ShardOp::Put, ShardOutcome::of_put(&result), started);
        result
    }

    /// Asks each of `nodes` for its shard of `key`; the answers come as they arrive,
    /// and the caller may stop listening at any time. Batched gets still queued then
    /// are never sent, and those in flight finish inside their batch, which measures
    /// them. Unbatched gets run in tasks of their own and finish in the background,
    /// since dropping one half-way would close its pooled connection and leave it
    /// unmeasured.
    pub(crate) fn gather(&self, key: &str, nodes: &[Node]) -> Answers<Option<ShardFrame>> {
        match &self.reads {
            Some(reads) => Answers::Batched {
                calls: reads.fan_out(nodes.iter().map(|node| (node, key.to_owned()))),
                nodes: nodes.to_vec(),
            },
            None => Answers::Unbatched(fan_out(nodes.iter().map(|node| {
                let (shards, node, key) = (self.clone(), node.clone(), key.to_owned());
                (node.clone(), async move { shards.get(&node, &key).await })
            }))),
        }
    }

    /// Stores each frame on its node; the answers come as they arrive. Every put is
    /// sent, even once the caller stops listening (a write's shards beyond its
    /// quorum still land).
    pub(crate) fn put_all(&self, puts: Vec<(Node, Bytes)>) -> Answers<PutOutcome> {
        match &self.writes {
            Some(writes) => {
                let (nodes, frames): (Vec<Node>, Vec<Bytes>) = puts.into_iter().unzip();
                Answers::Batched {
                    calls: writes.fan_out(nodes.iter().zip(frames)),
                    nodes,
                }
            }
            None => Answers::Unbatched(fan_out(puts.into_iter().map(|(node, frame)| {
                let shards = self.clone();
                (node.clone(), async move { shards.put(&node, frame).await })
            }))),
        }
    }

    /// One node's shard of `key`. Await it to the end (see [`gather`](Self::gather)).
    pub(crate) async fn get(&self, node: &Node, key: &str) -> ShardRead {
        if let Some(batcher) = &self.reads {
            return batcher.call(node, key.to_owned()).await;
        }
        let started = Instant::now();
        let result = self.client.get_shard(&node.address, key).await;
        self.record(node, ShardOp::Get, ShardOutcome::of_get(&result), started);
        if let Err(error) = &result {
            self.metrics.shard_error(error);
        }
        result
    }

    /// Removes `key`'s shard from `node` unless the node holds a version newer than
    /// `version`.
    pub(crate) async fn delete(
        &self,
        node: &Node,
        key: &str,
        version: Version,
    ) -> Result<PutOutcome, AuxError> {
        let started = Instant::now();
        let result = self.client.delete_shard(&node.address, key, version).await;
        self.record(
            node,
            ShardOp::Delete,
            ShardOutcome::of_put(&result),
            started,
        );
        result
    }

    fn record(&self, node: &Node, op: ShardOp, outcome: ShardOutcome, started: Instant) {
        self.metrics
            .shard_call(&node.id, op, outcome, started.elapsed());
    }
}

/// The answers of several nodes to one shard call each, in the order they arrive
/// (from [`ShardClient::gather`] and [`ShardClient::put_all`]).
pub(crate) enum Answers<V> {
    /// Calls that joined their nodes' batches.
    Batched { calls: FanOut<V>, nodes: Vec<Node> },
    /// Calls made one request each, from tasks of their own.
    Unbatched(mpsc::Receiver<(Node, Result<V, AuxError>)>),
}

impl<V> Answers<V> {
    /// The next node's answer; `None` once every node has answered (or timed out).
    pub(crate) async fn next(&mut self) -> Option<(Node, Result<V, AuxError>)> {
        match self {
            Answers::Batched { calls, nodes } => {
                let (index, answer) = calls.next().await?;
                Some((nodes[index].clone(), answer))
            }
            Answers::Unbatched(answers) => answers.recv().await,
        }
    }
}

/// Runs every `(label, call)` in a task of its own and yields `(label, result)` as
/// each finishes. The tasks outlive the receiver: a caller that stops listening once
/// it has enough answers leaves the rest to complete (their shards still land, and
/// their pooled connections stay open).
fn fan_out<L, T, Fut>(calls: impl Iterator<Item = (L, Fut)>) -> mpsc::Receiver<(L, T)>
where
    L: Send + 'static,
    T: Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let calls: Vec<(L, Fut)> = calls.collect();
    let (results, answers) = mpsc::channel(calls.len().max(1));
    for (label, call) in calls {
        let results = results.clone();
        tokio::spawn(async move {
            let outcome = call.await;
            let _ = results.send((label, outcome)).await;
        });
    }
    answers
}
