//! The aux node's HTTP API as both sides see it: paths, headers and the encoding of
//! keys in paths. Shard bytes always travel as [`crate::frame`] frames
//! (`application/octet-stream`), never as JSON.
//!
//! | request                      | body      | answers                                      |
//! |------------------------------|-----------|----------------------------------------------|
//! | `PUT /v1/shards`             | one frame | 204 stored (or already held at that version); 409 a newer version is held, named in the `shardcache-current-version` header; 400 bad frame; 413 too large |
//! | `GET /v1/shards/{key}`       | —         | 200 the frame (a tombstone too); 404 nothing live |
//! | `POST /v1/multi-get`         | keys ([`crate::multi_get`]) | 200 one answer per key, in order: its frame or none; 400 malformed or over [`crate::multi_get::MAX_KEYS`] keys |
//! | `DELETE /v1/shards/{key}?version=V` | — | 204 removed (or nothing held) if the held version is `V` or older; 409 a newer version is held, named in the header |
//! | `GET /v1/inventory?after_point=P&after_key=K&limit=N` | — | 200 [`InventoryPage`]: shard headers in ring-point order, no payloads |
//! | `POST /v1/lease`             | [`LeaseRequest`] JSON | 200 [`LeaseAnswer`]           |
//! | `GET /v1/membership`         | —         | 200 [`MembershipDoc`]; 404 none held yet     |
//! | `PUT /v1/membership`         | [`MembershipDoc`] JSON | 204 stored; 409 a newer one is held |
//! | `GET /health`                | —         | 200 [`AuxHealth`]                            |
//!
//! Every route answers 413 to a body declared or found larger than the node's
//! `--max-request-size`, and 408 to a request not complete within 10 s
//! ([`crate::http_limits`]); a connection whose headers take longer than
//! `--header-read-timeout`, or one beyond `--max-connections`, is closed
//! ([`crate::server`]).

use std::collections::BTreeSet;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

use crate::geometry::Geometry;
use crate::version::Version;

/// Collection path for storing shards.
pub const SHARDS_PATH: &str = "/v1/shards";

/// Batched shard reads: many keys, one request ([`crate::multi_get`]).
pub const MULTI_GET_PATH: &str = "/v1/multi-get";

/// Many shard frames stored on one node in one request (see `multi_put`).
pub const MULTI_PUT_PATH: &str = "/v1/multi-put";

/// Paged listing of the shards an aux node holds.
pub const INVENTORY_PATH: &str = "/v1/inventory";

/// Where masters take the repair lease.
pub const LEASE_PATH: &str = "/v1/lease";

/// Where masters share the run-time membership changes.
pub const MEMBERSHIP_PATH: &str = "/v1/membership";

/// Header on a 409 answer naming the version the aux node holds instead.
pub const CURRENT_VERSION_HEADER: &str = "shardcache-current-version";

/// Everything but RFC 3986 unreserved characters is escaped, so `/`, `?`, `#`, `%`
/// and spaces in keys stay inside one path segment.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a key as one path segment.
pub fn encode_key(key: &str) -> String {
    utf8_percent_encode(key, PATH_SEGMENT).to_string()
}

/// The path that reads the shard of `key`.
pub fn shard_path(key: &str) -> String {
    format!("{SHARDS_PATH}/{}", encode_key(key))
}

/// One shard as an inventory lists it: its header, without the payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryEntry {
    pub key: String,
    /// [`crate::ring::key_point`] of the key: the listing order.
    pub point: u64,
    pub version: Version,
    pub shard_index: u8,
    pub data_shards: u8,
    pub parity_shards: u8,
    pub tombstone: bool,
    pub expiry_ms: u64,
}

impl InventoryEntry {
    /// The geometry the listed shard was written with.
    pub fn geometry(&self) -> Geometry {
        Geometry {
            data_shards: self.data_shards,
            parity_shards: self.parity_shards,
        }
    }
}

/// One page of an inventory; `next` is the cursor of the following page, if any.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InventoryPage {
    pub entries: Vec<InventoryEntry>,
    pub next: Option<InventoryCursor>,
}

/// Where an inventory page ends: the last `(point, key)` it listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryCursor {
    pub point: u64,
    pub key: String,
}

/// A master asks an aux node to grant (or extend) a named lease.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub name: String,
    pub holder: String,
    pub ttl_ms: u64,
}

/// The aux node's answer: granted, or who holds the lease and for how much longer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaseAnswer {
    pub granted: bool,
    pub holder: String,
    pub remaining_ms: u64,
}

/// Membership changes made at run time through a master's admin API, shared with
/// every other master through the aux nodes. The newest version wins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipDoc {
    pub version: Version,
    /// Aux addresses added at run time.
    pub added: BTreeSet<String>,
    /// Aux addresses removed at run time (configured or discovered ones too).
    pub removed: BTreeSet<String>,
}

/// What an aux node says about itself on `GET /health`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AuxHealth {
    pub status: String,
    /// The node's identity on the ring, stable across restarts.
    pub node_id: String,
    /// Random per process start: a change tells masters the node restarted (and may
    /// have lost shards) even when no probe saw it down.
    #[serde(default)]
    pub instance: u64,
    pub store: AuxStoreSummary,
    /// Version of the membership document the node holds, if any.
    #[serde(default)]
    pub membership_version: Option<Version>,
    /// The node's clock (Unix milliseconds) when it answered: masters measure their
    /// offset from it. Absent from nodes of older builds.
    #[serde(default)]
    pub unix_ms: Option<u64>,
    /// The only geometry the node stores (its `--data-shards`/`--parity-shards`);
    /// absent when it takes any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geometry: Option<Geometry>,
}

/// The store figures a master shows in its cluster view.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct AuxStoreSummary {
    pub items: u64,
    pub tombstones: u64,
    pub bytes: u64,
    pub capacity_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awkward_keys_stay_in_one_segment() {
        assert_eq!(encode_key("a/b?c#d%e f"), "a%2Fb%3Fc%23d%25e%20f");
        assert_eq!(shard_path("🍒"), "/v1/shards/%F0%9F%8D%92");
        assert_eq!(encode_key("plain-key_1.0~"), "plain-key_1.0~");
    }
}
