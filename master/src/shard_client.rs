//! The master's shard calls to aux nodes — put, get, delete — each one counted and
//! timed per node, operation and outcome (`shardcache_master_shard_requests_total`
//! and `…_shard_request_duration_seconds`). The data path and repair go through it,
//! so no shard call escapes the metrics. Gets go through the [`ReadBatcher`] unless
//! batching is off (`--read-batch-max 1`), then each is a GET of its own.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use shardcache_common::aux_client::{AuxClient, AuxError, PutOutcome};
use shardcache_common::frame::ShardFrame;
use shardcache_common::version::Version;

use crate::cluster::Node;
use crate::metrics::{MasterMetrics, ShardOp, ShardOutcome};
use crate::read_batcher::{BatchSettings, ReadBatcher};

/// An [`AuxClient`] whose shard calls are measured.
#[derive(Clone)]
pub struct ShardClient {
    client: AuxClient,
    metrics: Arc<MasterMetrics>,
    /// `None` when reads are not batched.
    reads: Option<Arc<ReadBatcher>>,
}

impl ShardClient {
    pub fn new(client: AuxClient, metrics: Arc<MasterMetrics>, batching: BatchSettings) -> Self {
        let reads = (batching.max_keys > 1)
            .then(|| Arc::new(ReadBatcher::new(client.clone(), batching, metrics.clone())));
        ShardClient {
            client,
            metrics,
            reads,
        }
    }

    /// The unmeasured client, for calls that are not shard traffic (inventory,
    /// leases).
    pub fn aux(&self) -> &AuxClient {
        &self.client
    }

    pub async fn put(&self, node: &Node, frame: Bytes) -> Result<PutOutcome, AuxError> {
        let started = Instant::now();
        let result = self.client.put_shard(&node.address, frame).await;
        self.record(node, ShardOp::Put, ShardOutcome::of_put(&result), started);
        result
    }

    /// True when gets are batched: a get may then be dropped half-way (the request
    /// belongs to the batcher, which also measures it). An unbatched get must be
    /// left to finish, or its pooled connection is closed and it goes unmeasured.
    pub fn gets_are_batched(&self) -> bool {
        self.reads.is_some()
    }

    pub async fn get(&self, node: &Node, key: &str) -> Result<Option<ShardFrame>, AuxError> {
        if let Some(batcher) = &self.reads {
            return batcher.get(node, key).await;
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
    pub async fn delete(
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
