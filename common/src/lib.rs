//! What shardcache masters and aux nodes must agree on.
//!
//! # Layout
//!
//! - [`version`]: totally ordered value versions (hybrid logical clock + writer id),
//!   the basis of last-writer-wins and of the aux node's conditional put.
//! - [`frame`]: the binary shard frame, defined once: header (key, version, shard
//!   index, `k`, `m`, value length, expiry, value checksum), payload, frame checksum.
//! - [`geometry`]: `k` data + `m` parity shards, the one type for it.
//! - [`codec`]: Reed-Solomon encoding of a value into `k + m` shards and back.
//! - [`ring`]: the consistent-hash ring that maps a key to `k + m` distinct aux nodes.
//! - [`aux_client`]: the master's typed HTTP client for the aux node API ([`wire`]).
//! - [`multi_get`]: the binary body of a batched shard read (many keys, one request).
//! - [`units`]: byte sizes (`256MiB`) and durations (`500ms`) for configuration.
//! - [`http_metrics`]: per-route HTTP request metrics and the `/metrics` text;
//!   [`http_limits`]: request size and time limits in front of every route.
//! - [`runtime`]: logging set-up and the shutdown signal shared by every binary;
//!   [`server`]: the aux port's serve loop (header timeout, connection cap).

pub mod aux_client;
pub mod cluster_token;
pub mod codec;
pub mod frame;
pub mod geometry;
pub mod http_limits;
pub mod http_metrics;
pub mod multi_get;
pub mod multi_put;
pub mod ring;
pub mod runtime;
pub mod server;
pub mod units;
pub mod version;
pub mod wire;

/// Milliseconds since the Unix epoch, the time base of versions and expiries.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}
