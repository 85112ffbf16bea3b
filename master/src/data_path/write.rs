//! Writes and deletes: frames to the key's owners, acknowledged at the write quorum.

use std::time::Duration;

use bytes::Bytes;
use shardcache_common::aux_client::PutOutcome;
use shardcache_common::unix_millis;
use shardcache_common::version::Version;

use super::DataPath;
use crate::error::ApiError;
use crate::metrics::QuorumOp;
use crate::shards::fan_out;
use crate::shards::frames::{self, Geometry};

impl DataPath {
    /// Stores `value` under `key`, expiring after `ttl` if given.
    pub async fn write(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Version, ApiError> {
        let version = self.clock.next();
        let expires_at_ms = ttl.map_or(0, |ttl| unix_millis() + ttl.as_millis() as u64);
        let frames = frames::encoded_value(&self.codec, key, version, value, expires_at_ms);
        self.store_frames(key, frames, QuorumOp::Write).await?;
        Ok(version)
    }

    /// Deletes `key`; `false` if there was no live value to delete.
    pub async fn delete(&self, key: &str) -> Result<bool, ApiError> {
        let Some(found) = self.read(key).await? else {
            return Ok(false);
        };
        self.clock.observe(found.version);
        let version = self.clock.next();
        let expires_at_ms = unix_millis() + self.tombstone_ttl.as_millis() as u64;
        let geometry = Geometry::of(&self.codec);
        let frames = frames::encoded_tombstones(key, version, geometry, expires_at_ms);
        self.store_frames(key, frames, QuorumOp::Delete).await?;
        Ok(true)
    }

    /// Sends frame `i` to the key's owner of rank `i`; returns once the write quorum
    /// acknowledged, or fails once it no longer can. With fewer nodes up than
    /// `k + m`, the shards beyond the last owner are not stored (repair adds them
    /// once nodes return).
    async fn store_frames(
        &self,
        key: &str,
        frames: Vec<Bytes>,
        op: QuorumOp,
    ) -> Result<(), ApiError> {
        let owners = self.cluster.view().owners(key, frames.len());
        let total = owners.len();
        if total < self.write_quorum {
            self.metrics.write_quorum_failure(op);
            return Err(ApiError::Unavailable(format!(
                "write quorum not reached: only {total} aux nodes are up, {} needed",
                self.write_quorum
            )));
        }
        let mut answers = fan_out(owners.into_iter().zip(frames).map(|(owner, frame)| {
            let (shards, node) = (self.shards.clone(), owner.clone());
            (owner, async move { shards.put(&node, frame).await })
        }));
        let (mut acknowledged, mut failures) = (0, Vec::new());
        while let Some((owner, outcome)) = answers.recv().await {
            match outcome {
                Ok(PutOutcome::Stored) => acknowledged += 1,
                Ok(PutOutcome::Superseded(newer)) => {
                    self.clock.observe(newer);
                    acknowledged += 1;
                }
                Err(error) => {
                    tracing::debug!(node = %owner.id, %error, "shard write failed");
                    failures.push(format!("{}: {error}", owner.id));
                }
            }
            if acknowledged >= self.write_quorum {
                return Ok(());
            }
            if failures.len() > total - self.write_quorum {
                break;
            }
        }
        self.metrics.write_quorum_failure(op);
        Err(ApiError::Unavailable(format!(
            "write quorum not reached: {acknowledged} of {total} shards stored, {} needed ({})",
            self.write_quorum,
            failures.join("; ")
        )))
    }
}
