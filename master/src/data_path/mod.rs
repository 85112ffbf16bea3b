//! The read, write and delete paths: from a key and a value to shards on aux nodes
//! and back.
//!
//! **Write.** Take a fresh version, encode the value into `k + m` shards, send shard
//! `i` to the key's owner of rank `i`, all at once, and acknowledge once `W` (the
//! write quorum) owners stored it. An owner that already holds a *newer* version
//! counts towards `W`: under last-writer-wins this write is then already overwritten.
//!
//! **Read** (`read`). Ask every owner for its shard. Group the answers by version;
//! the newest version with `k` shards is decoded (a plain concatenation when the `k`
//! data shards are there) and checked against the value checksum in its frames. A
//! tombstone newer than it means "deleted". The read stops waiting once enough
//! owners have answered to be sure it has seen every acknowledged write (see
//! [`verdict::ReadFloors`]: all but one owner for 3+2) and the newest version seen
//! is decodable or a tombstone, so one dead or hung owner costs nothing. A miss
//! waits for every owner (or its timeout) before it says 404. What the answers mean
//! — value, miss or 503 — is decided in one pure function, [`verdict::verdict`].
//!
//! **Write and delete** (`write`). A delete is a read (so a missing key answers
//! 404), then a tombstone with a newer version to every owner, acknowledged at the
//! same quorum as a write.
//!
//! **Owners** are the first `k + m` nodes of the key's placement in the current
//! [`crate::cluster::View`]: down nodes are skipped (their shard goes to the next node of the ring)
//! and never waited for. When the owners' answers are inconclusive (no version
//! decodable, or a miss shortly after placement changed), the read also asks the rest
//! of the placement, where shards written under another view may still sit.
//!
//! **Read-repair.** A read that decoded a value (or found a tombstone) and heard an
//! owner answer "none" or an older version gives that owner the missing shard in the
//! background, version-guarded like every write.
//!
//! Every shard request is bounded by the client's timeout and is left to finish after
//! the client got its answer: the remaining owners still receive their shards, and
//! dropping a request half-way would close its pooled connection
//! ([`ShardClient::gather`] and [`ShardClient::put_all`] take care of that).

mod read;
pub(crate) mod verdict;
mod write;

use std::sync::Arc;
use std::time::Duration;

use shardcache_common::codec::Codec;
use shardcache_common::version::{HybridClock, Version};
use tokio::sync::Semaphore;

use crate::cluster::Cluster;
use crate::metrics::MasterMetrics;
use crate::shards::ShardClient;
use verdict::ReadFloors;

/// Most read-repairs in flight; beyond it a read leaves the fix to the repairer.
const MAX_READ_REPAIRS_IN_FLIGHT: usize = 64;

/// A value read back, with the version that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) version: Version,
    pub(crate) value: Vec<u8>,
    /// Some owner asked failed to answer or lacked this version's shard, or the
    /// value was found only by asking nodes beyond the owners.
    pub(crate) degraded: bool,
    /// Milliseconds the value has left to live, the least among the frames decoded
    /// (each aux node counts its own, ARCHITECTURE.md invariant 12); `None` when
    /// it never expires.
    pub(crate) expires_in_ms: Option<u64>,
}

/// Why a read found no value. Both answer 404; the `shardcache-miss` header tells
/// them apart ([`Miss::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// The owners' first answers settled it: never written, deleted or expired.
    Absent,
    /// The first answers held only partial versions (writers racing on the key, or
    /// the leftovers of a write that failed), and the read answered a miss after its
    /// retries. A write racing this read may still be acknowledged.
    Partial,
}

impl Miss {
    /// The value of the `shardcache-miss` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Miss::Absent => "absent",
            Miss::Partial => "partial",
        }
    }
}

/// Everything a master needs to place, code and fetch shards.
pub(crate) struct DataPath {
    cluster: Arc<Cluster>,
    codec: Arc<Codec>,
    shards: ShardClient,
    metrics: Arc<MasterMetrics>,
    clock: HybridClock,
    write_quorum: usize,
    /// Derived from the geometry and `write_quorum` once; see [`ReadFloors`].
    read_floors: ReadFloors,
    tombstone_ttl: Duration,
    read_repairs: Arc<Semaphore>,
}

impl DataPath {
    pub(crate) fn new(
        cluster: Arc<Cluster>,
        codec: Arc<Codec>,
        shards: ShardClient,
        metrics: Arc<MasterMetrics>,
        write_quorum: usize,
        tombstone_ttl: Duration,
        max_clock_skew: Duration,
    ) -> Self {
        let read_floors = ReadFloors::new(
            codec.total_shards(),
            write_quorum,
            usize::from(codec.parity_shards()),
        );
        DataPath {
            cluster,
            codec,
            shards,
            metrics,
            clock: HybridClock::with_random_writer(max_clock_skew),
            write_quorum,
            read_floors,
            tombstone_ttl,
            read_repairs: Arc::new(Semaphore::new(MAX_READ_REPAIRS_IN_FLIGHT)),
        }
    }

    pub(crate) fn metrics(&self) -> &Arc<MasterMetrics> {
        &self.metrics
    }

    fn total_shards(&self) -> usize {
        self.codec.total_shards()
    }
}
