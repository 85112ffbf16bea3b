//! The bench's arithmetic (user bytes, shard payloads, overhead per shard, when memory
//! is steady): **pure**.

use super::*;

/// Key and value bytes summed over `keys` keys.
pub(super) fn user_bytes(keys: u64, key_len: usize, value_len: usize) -> u64 {
    keys * (key_len + value_len) as u64
}

/// Bytes of one shard's payload: the value cut into `data_shards` pieces.
pub(super) fn shard_payload_len(value_len: usize, data_shards: u8) -> usize {
    value_len.div_ceil(usize::from(data_shards.max(1)))
}

/// `bytes` per user byte (NaN when there are no user bytes).
pub(super) fn per_user_byte(bytes: f64, user_bytes: u64) -> f64 {
    bytes / user_bytes as f64
}

/// Summed RSS after minus summed RSS before.
pub(super) fn rss_growth(before: &[u64], after: &[u64]) -> i64 {
    after.iter().sum::<u64>() as i64 - before.iter().sum::<u64>() as i64
}

/// What each stored shard costs beyond its key and payload: (RSS growth − Σ over
/// shards of (key len + shard payload len)) / shard count, with `k+m` shards per key.
pub(super) fn per_shard_overhead(
    rss_growth: i64,
    keys: u64,
    key_len: usize,
    value_len: usize,
    data_shards: u8,
    parity_shards: u8,
) -> f64 {
    let shards = keys * u64::from(data_shards + parity_shards);
    if shards == 0 {
        return f64::NAN;
    }
    let payload = shards * (key_len + shard_payload_len(value_len, data_shards)) as u64;
    (rss_growth as f64 - payload as f64) / shards as f64
}

/// Whether two summed RSS readings taken a settle interval apart count as steady.
pub(super) fn is_steady(previous: u64, current: u64) -> bool {
    (current as f64 - previous as f64).abs() < previous as f64 * STEADY_FRACTION
}
