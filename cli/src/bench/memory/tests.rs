//! Unit tests of the pure parts: targets, rendering, arithmetic.

use super::*;

#[test]
fn per_shard_overhead_subtracts_keys_and_payloads() {
    // 10 keys, 3+2, 100-byte values: 50 shards of 16 + 34 bytes = 2500 bytes.
    assert_eq!(
        per_shard_overhead(2500 + 50 * 200, 10, 16, 100, 3, 2),
        200.0
    );
    // Replication: every shard carries the whole value.
    assert_eq!(per_shard_overhead(3 * (16 + 1024), 1, 16, 1024, 1, 2), 0.0);
    assert!(per_shard_overhead(0, 0, 16, 100, 3, 2).is_nan());
    assert_eq!(shard_payload_len(16384, 3), 5462);
    assert_eq!(shard_payload_len(1024, 4), 256);
}

#[test]
fn ratios_and_growth() {
    assert_eq!(user_bytes(1000, KEY_LEN, 100), 116_000);
    assert_eq!(rss_growth(&[10, 20], &[15, 35]), 20);
    assert_eq!(rss_growth(&[10], &[5]), -5);
    assert!(is_steady(1000, 1009) && !is_steady(1000, 1010) && is_steady(1000, 995));
}

#[test]
fn scale_multiplies_key_counts() {
    let quick = workloads(0.05).unwrap();
    assert_eq!(
        quick.iter().map(|w| w.keys).collect::<Vec<_>>(),
        [10_000, 5_000, 500]
    );
    assert!(workloads(1000.0).is_err());
    assert_eq!(size_label(100), "100 B");
    assert_eq!(size_label(16384), "16 KiB");
}
