//! The store's invariants (module docs), each checked here.

use super::*;
use proptest::prelude::*;
use shardcache_common::frame::shard_len;

fn frame(key: &str, timestamp: u64, payload_len: usize, expiry_ms: u64) -> ShardFrame {
    let value_len = payload_len as u64 * 3;
    ShardFrame {
        key: key.to_owned(),
        version: Version {
            timestamp,
            writer: 1,
        },
        tombstone: false,
        shard_index: 0,
        data_shards: 3,
        parity_shards: 2,
        expiry_ms,
        value_len,
        value_checksum: timestamp ^ 0x5555,
        payload: Bytes::from(vec![timestamp as u8; shard_len(value_len, 3)]),
    }
}

fn tombstone(key: &str, timestamp: u64) -> ShardFrame {
    ShardFrame {
        tombstone: true,
        value_len: 0,
        payload: Bytes::new(),
        ..frame(key, timestamp, 1, 0)
    }
}

fn held_version(store: &ShardStore, key: &str, now_ms: u64) -> Option<u64> {
    let bytes = store.get(key, now_ms)?;
    Some(ShardFrame::decode(bytes).unwrap().version.timestamp)
}

impl ShardStore {
    /// Recounts everything the running counters say, from the segments and the
    /// index, and checks that every live record is indexed and nothing else is.
    fn check_consistency(&self) {
        let inner = self.inner.lock();
        inner.index.check_invariants();
        let (mut items, mut tombstones, mut record_bytes) = (0, 0, 0);
        for id in inner.segments.ids() {
            let segment = inner.segments.get_segment(id).unwrap();
            let (mut live, mut live_bytes, mut offset) = (0, 0, 0);
            while offset < segment.data.len() {
                let view = RecordView::parse(&segment.data[offset..], &inner.shapes).unwrap();
                let location = segments::location(id, offset);
                offset += view.len;
                if inner.live_position(&view, location).is_none() {
                    continue;
                }
                live += 1;
                live_bytes += view.len;
                tombstones += u64::from(view.is_tombstone());
            }
            assert_eq!(
                (segment.live_records, segment.live_bytes),
                (live, live_bytes)
            );
            items += u64::from(live);
            record_bytes += live_bytes as u64;
        }
        let stats = inner.stats;
        assert_eq!(
            inner.index.len() as u64,
            items,
            "only live records are indexed"
        );
        assert_eq!(
            (stats.items, stats.tombstones, stats.record_bytes),
            (items, tombstones, record_bytes)
        );
        assert_eq!(
            stats.bytes,
            inner.segments.allocated() as u64
                + inner.index.bytes() as u64
                + inner.ghost.bytes() as u64
        );
        assert!(stats.bytes <= stats.capacity_bytes);
    }
}

#[test]
fn stored_frames_come_back_byte_for_byte() {
    let store = ShardStore::new(1 << 20);
    let mut frames = vec![
        frame("plain", 1, 100, 0),
        frame("a/b?c#d%e 🍒", 2, 7, 1_900_000_000_000),
        tombstone("gone", 3),
    ];
    frames[0].shard_index = 4;
    frames[0].version.writer = u64::MAX;
    for frame in &frames {
        assert_eq!(store.put(frame, 0), PutResult::Stored);
    }
    for frame in &frames {
        assert_eq!(store.get(&frame.key, 0), Some(frame.encode()));
    }
    assert_eq!(store.get("absent", 0), None);
    store.check_consistency();
}

#[test]
fn older_versions_never_replace_newer_ones() {
    let store = ShardStore::new(1 << 20);
    assert_eq!(store.put(&frame("k", 10, 50, 0), 0), PutResult::Stored);
    let stale = store.put(&frame("k", 9, 50, 0), 0);
    assert!(matches!(stale, PutResult::Superseded(v) if v.timestamp == 10));
    assert_eq!(store.put(&frame("k", 10, 50, 0), 0), PutResult::AlreadyHeld);
    assert_eq!(held_version(&store, "k", 0), Some(10));
    let other_index = ShardFrame {
        shard_index: 3,
        ..frame("k", 10, 50, 0)
    };
    assert_eq!(
        store.put(&other_index, 0),
        PutResult::Stored,
        "another index of the same write replaces"
    );
    let held = ShardFrame::decode(store.get("k", 0).unwrap()).unwrap();
    assert_eq!(held.shard_index, 3);
    assert_eq!(store.put(&tombstone("k", 11), 0), PutResult::Stored);
    assert!(matches!(
        store.put(&frame("k", 10, 50, 0), 0),
        PutResult::Superseded(_)
    ));
    let held = ShardFrame::decode(store.get("k", 0).unwrap()).unwrap();
    assert!(held.tombstone, "the delete must stick");
    assert_eq!(store.stats().superseded_puts, 2);
    assert_eq!((store.stats().items, store.stats().tombstones), (1, 1));
    store.check_consistency();
}

#[test]
fn expired_entries_are_not_served_and_are_reclaimed() {
    let store = ShardStore::new(1 << 20);
    store.put(&frame("short", 1, 100, 5_000), 0);
    store.put(&frame("long", 1, 100, 60_000), 0);
    store.put(&frame("forever", 1, 100, 0), 0);
    assert_eq!(held_version(&store, "short", 4_999), Some(1));
    assert_eq!(held_version(&store, "short", 5_000), None);
    assert_eq!(
        store.stats().items,
        2,
        "a read of an expired entry reclaims it"
    );
    assert_eq!(store.sweep_expired(59_999, 100), 0);
    assert_eq!(store.sweep_expired(60_000, 100), 1);
    assert_eq!(held_version(&store, "forever", u64::MAX), Some(1));
    let stats = store.stats();
    assert_eq!((stats.items, stats.expirations), (1, 2));
    store.check_consistency();
}

#[test]
fn a_sweep_frees_the_memory_of_expired_and_deleted_shards() {
    let store = ShardStore::new(4 << 20);
    for i in 0..20_000 {
        let expires = if i % 2 == 0 { 1_000 } else { 0 };
        store.put(&frame(&format!("key-{i}"), 1, 100, expires), 0);
    }
    for i in (1..20_000).step_by(4) {
        store.delete_up_to(&format!("key-{i}"), Version::default());
        assert_eq!(
            store.delete_up_to(
                &format!("key-{i}"),
                Version {
                    timestamp: 1,
                    writer: 1
                }
            ),
            DeleteResult::Removed
        );
    }
    let full = store.stats();
    assert_eq!(full.evictions, 0);
    store.sweep_expired(1_000, usize::MAX);
    // Compaction runs a few segments per sweep, as the sweeper's ticks would.
    for _ in 0..100 {
        store.sweep_expired(1_000, usize::MAX);
    }
    let swept = store.stats();
    assert_eq!(swept.items, 5_000);
    assert!(
        swept.segment_bytes * 10 < full.segment_bytes * 4,
        "a quarter of the shards remain: {} of {} bytes held",
        swept.segment_bytes,
        full.segment_bytes
    );
    for i in (3..20_000).step_by(4) {
        assert!(store.get(&format!("key-{i}"), 1_000).is_some(), "key-{i}");
    }
    store.check_consistency();
}

#[test]
fn an_expired_newer_version_still_blocks_an_older_write() {
    let store = ShardStore::new(1 << 20);
    store.put(&frame("k", 10, 10, 1_000), 0);
    assert!(matches!(
        store.put(&frame("k", 5, 10, 0), 2_000),
        PutResult::Superseded(_)
    ));
    assert_eq!(held_version(&store, "k", 2_000), None);
}

#[test]
fn shards_read_since_written_outlive_unread_ones() {
    let store = ShardStore::new(256 * 1024);
    let key = |i: usize| format!("key-{i:05}");
    for i in 0..1_000 {
        store.put(&frame(&key(i), 1, 100, 0), 0);
    }
    let hot: Vec<usize> = (0..1_000).step_by(10).collect();
    for &i in &hot {
        assert!(store.get(&key(i), 0).is_some());
    }
    // The store's size again: everything unread from before is pushed out, once.
    for i in 1_000..2_700 {
        store.put(&frame(&key(i), 1, 100, 0), 0);
    }
    let stats = store.stats();
    assert!(stats.evictions > 900, "{} evictions", stats.evictions);
    let old_survivors = (0..1_000).filter(|&i| store.get(&key(i), 0).is_some());
    let (hot_kept, cold_kept): (Vec<usize>, Vec<usize>) = old_survivors.partition(|i| i % 10 == 0);
    assert!(
        hot_kept.len() >= hot.len() * 9 / 10,
        "{} of {} read shards kept",
        hot_kept.len(),
        hot.len()
    );
    assert!(
        cold_kept.is_empty(),
        "{} unread shards kept",
        cold_kept.len()
    );
    store.check_consistency();
    assert_eq!(
        store.put(&frame("huge", 1, 300_000, 0), 0),
        PutResult::TooLarge
    );
}

#[test]
fn deletes_never_remove_a_newer_version() {
    let store = ShardStore::new(1 << 20);
    store.put(&frame("k", 10, 10, 0), 0);
    let older = Version {
        timestamp: 9,
        writer: 1,
    };
    assert!(matches!(store.delete_up_to("k", older), DeleteResult::Newer(v) if v.timestamp == 10));
    assert!(store.get("k", 0).is_some());
    let same = Version {
        timestamp: 10,
        writer: 1,
    };
    assert_eq!(store.delete_up_to("k", same), DeleteResult::Removed);
    assert!(store.get("k", 0).is_none());
    assert_eq!(store.delete_up_to("k", same), DeleteResult::Removed);
    assert_eq!((store.stats().items, store.stats().record_bytes), (0, 0));
    store.check_consistency();
}

#[test]
fn inventory_pages_through_every_live_entry_in_ring_order() {
    let store = ShardStore::new(1 << 22);
    for i in 0..2_500 {
        let expires = if i % 10 == 0 { 1_000 } else { 0 };
        store.put(&frame(&format!("key-{i}"), 1, 10, expires), 0);
    }
    let generation = store.generation();
    let mut listed = Vec::new();
    let mut after: Option<(u64, String)> = None;
    loop {
        let page = store.inventory(after.as_ref().map(|(p, k)| (*p, k.as_str())), 40, 2_000);
        let Some(last) = page.last() else { break };
        after = Some((last.point, last.key.clone()));
        listed.extend(page);
    }
    assert_eq!(
        listed.len(),
        2_250,
        "the 250 expired entries are not listed"
    );
    assert!(listed
        .windows(2)
        .all(|pair| (pair[0].point, &pair[0].key) < (pair[1].point, &pair[1].key)));
    assert!(listed
        .iter()
        .all(|entry| key_point(&entry.key) == entry.point && entry.shard_index == 0));
    assert_eq!(store.generation(), generation, "listing changes nothing");
}

/// Walks the store the way the snapshotter does, decoding the chunks into frames.
fn snapshot_frames(store: &ShardStore, now_ms: u64) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut after = 0;
    while let Some((seq, chunk, count)) = store.snapshot_chunk(after, now_ms) {
        after = seq;
        let mut at = 0;
        for _ in 0..count {
            let len = u32::from_be_bytes(chunk[at..at + 4].try_into().unwrap()) as usize;
            frames.push(chunk[at + 4..at + 4 + len].to_vec());
            at += 4 + len;
        }
        assert_eq!(at, chunk.len());
    }
    frames
}

#[test]
fn a_restore_keeps_the_newest_shards_within_capacity() {
    let source = ShardStore::new(1 << 22);
    for i in 0..2_000 {
        source.put(&frame(&format!("key-{i}"), 1, 1000, 0), 0);
    }
    source.put(&frame("expiring", 1, 1000, 500), 0);
    let frames = snapshot_frames(&source, 0);
    assert_eq!(frames.len(), 2_001);
    let restored = ShardStore::new(512 * 1024);
    let mut report = RestoreReport::default();
    for frame in &frames {
        restored.restore_frame(frame, 1_000, &mut report);
    }
    assert_eq!((report.loaded, report.expired), (2_000, 1));
    let kept = restored.stats().items;
    assert!(
        kept > 300 && kept < 500,
        "{kept} shards of 1 KiB in 512 KiB"
    );
    assert_eq!(report.evicted, 2_000 - kept);
    for i in (2_000 - kept as usize + 32)..2_000 {
        assert!(
            restored.get(&format!("key-{i}"), 1_000).is_some(),
            "key-{i} is among the newest"
        );
    }
    restored.check_consistency();
}

#[test]
fn a_corrupted_record_is_never_served() {
    let store = ShardStore::new(1 << 20);
    store.put(&frame("victim", 1, 100, 0), 0);
    store.put(&frame("bystander", 1, 100, 0), 0);
    {
        let mut inner = store.inner.lock();
        let (_, location) = inner.find(tag_of(key_point("victim")), "victim").unwrap();
        let bytes = inner.segments.bytes_at_mut(location).unwrap();
        bytes[60] ^= 0x10; // inside the payload
    }
    assert_eq!(store.get("victim", 0), None);
    assert_eq!(store.stats().corrupt_records, 1);
    assert!(store.get("bystander", 0).is_some());
    assert_eq!(
        snapshot_frames(&store, 0).len(),
        1,
        "nor written to a snapshot"
    );
    store.check_consistency();
}

#[test]
fn a_small_shard_costs_at_most_34_bytes_beyond_key_and_payload() {
    // 16-byte keys, 100-byte values in 3+2: 34-byte payloads, as the benchmark loads.
    let store = ShardStore::new(1 << 30);
    for count in [50_000u64, 120_000, 200_000, 310_000] {
        for i in store.stats().items..count {
            let mut frame = frame(&format!("k{i:015}"), 1, 34, 0);
            frame.value_len = 100;
            store.put(&frame, 0);
        }
        // What is resident: the records and the index (the open segment's unwritten
        // tail is allocated but never touched, so it costs no memory).
        let stats = store.stats();
        let overhead = (stats.record_bytes + stats.index_bytes) as f64 / count as f64 - 50.0;
        println!("{count} shards: {overhead:.1} bytes per shard beyond key and payload");
        assert!(overhead <= 34.0, "{overhead:.1} bytes per shard at {count}");
    }
    store.check_consistency();
}

/// The eviction policy against exact LRU on a skewed workload larger than the
/// store: Zipf 0.99 over 20,000 keys, a store that holds about a fifth of them.
#[test]
fn the_hit_ratio_is_close_to_exact_lru_on_a_zipf_workload() {
    use rand::{Rng, SeedableRng};
    let keys = 20_000usize;
    let weights: Vec<f64> = (1..=keys)
        .map(|rank| 1.0 / (rank as f64).powf(0.99))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut cumulative = Vec::with_capacity(keys);
    let mut sum = 0.0;
    for weight in &weights {
        sum += weight / total;
        cumulative.push(sum);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let requests: Vec<usize> = (0..300_000)
        .map(|_| {
            let draw: f64 = rng.random();
            cumulative.partition_point(|&c| c < draw).min(keys - 1)
        })
        .collect();
    let store = ShardStore::new(1 << 20);
    let record_len = record::len_of(&frame("k00000", 1, 100, 0));
    // Exact LRU of the same number of shards as our store holds in its segments.
    let lru_entries = ((1 << 20) - 64 * 1024) / record_len;
    let mut lru = lru::LruCache::new(std::num::NonZeroUsize::new(lru_entries).unwrap());
    let (mut ours, mut exact) = (0u64, 0u64);
    for &key in &requests {
        let name = format!("k{key:05}");
        if store.get(&name, 0).is_some() {
            ours += 1;
        } else {
            store.put(&frame(&name, 1, 100, 0), 0);
        }
        if lru.get(&key).is_some() {
            exact += 1;
        } else {
            lru.put(key, ());
        }
    }
    let (ours, exact) = (
        ours as f64 / requests.len() as f64,
        exact as f64 / requests.len() as f64,
    );
    println!("hit ratio: segment CLOCK {ours:.3}, exact LRU {exact:.3} ({lru_entries} entries)");
    assert!(ours >= exact * 0.95, "{ours:.3} against {exact:.3}");
}

#[derive(Debug, Clone)]
enum Op {
    Put {
        key: u8,
        timestamp: u8,
        payload_len: u16,
        ttl: Option<u8>,
    },
    Delete {
        key: u8,
        timestamp: u8,
    },
    Get {
        key: u8,
    },
    Sweep,
    Tick(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..40, any::<u8>(), 0u16..3000, proptest::option::of(any::<u8>()))
            .prop_map(|(key, timestamp, payload_len, ttl)| Op::Put { key, timestamp, payload_len, ttl }),
        1 => (0u8..40, any::<u8>()).prop_map(|(key, timestamp)| Op::Delete { key, timestamp }),
        2 => (0u8..40).prop_map(|key| Op::Get { key }),
        1 => Just(Op::Sweep),
        1 => any::<u8>().prop_map(Op::Tick),
    ]
}

proptest! {
    #[test]
    fn never_exceeds_capacity_and_accounts_exactly(
        capacity in 16_384u64..200_000,
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        let store = ShardStore::new(capacity);
        let mut now_ms = 0u64;
        // The newest version each key was given, to check nothing older comes back.
        let mut newest = std::collections::HashMap::new();
        for op in ops {
            match op {
                Op::Put { key, timestamp, payload_len, ttl } => {
                    let expires = ttl.map_or(0, |ttl| now_ms + u64::from(ttl) + 1);
                    let frame = frame(&format!("key-{key}"), timestamp.into(), payload_len.into(), expires);
                    if store.put(&frame, now_ms) == PutResult::Stored {
                        newest.insert(key, (timestamp, expires));
                    }
                }
                Op::Delete { key, timestamp } => {
                    let tombstone = tombstone(&format!("key-{key}"), timestamp.into());
                    if store.put(&tombstone, now_ms) == PutResult::Stored {
                        newest.insert(key, (timestamp, tombstone.expiry_ms));
                    }
                }
                Op::Get { key } => {
                    if let Some(bytes) = store.get(&format!("key-{key}"), now_ms) {
                        let frame = ShardFrame::decode(bytes).unwrap();
                        let (timestamp, deadline) = newest[&key];
                        prop_assert_eq!(frame.version.timestamp as u8, timestamp);
                        // Served with the time it has left, never past its deadline.
                        prop_assert!(deadline == 0 || deadline > now_ms);
                        let time_left = if deadline == 0 { 0 } else { deadline - now_ms };
                        prop_assert_eq!(frame.expiry_ms, time_left);
                    }
                }
                Op::Sweep => {
                    store.sweep_expired(now_ms, usize::MAX);
                }
                Op::Tick(millis) => now_ms += u64::from(millis),
            }
            let stats = store.stats();
            prop_assert!(stats.bytes <= capacity, "{} > {}", stats.bytes, capacity);
            store.check_consistency();
        }
    }
}

#[test]
fn an_unreadable_segment_is_dropped_whole_with_its_counts_when_evicted() {
    let store = ShardStore::new(256 * 1024);
    let key = |i: usize| format!("key-{i:05}");
    for i in 0..100 {
        store.put(&frame(&key(i), 1, 100, 0), 0);
    }
    {
        // The first record's shape id names no shape: nothing after it in its
        // segment can be parsed any more.
        let mut inner = store.inner.lock();
        let (_, location) = inner.find(tag_of(key_point(&key(0))), &key(0)).unwrap();
        let bytes = inner.segments.bytes_at_mut(location).unwrap();
        bytes[4..6].copy_from_slice(&0xfffeu16.to_le_bytes());
    }
    // The store's size again: the damaged segment is evicted like any other.
    for i in 100..2_000 {
        store.put(&frame(&key(i), 1, 100, 0), 0);
    }
    assert!(store.stats().corrupt_records > 0);
    store.check_consistency();
}

/// The cost of a put and of a get under each policy, with the store full and
/// evicting (a measurement, not a check: `cargo test --release -p shardcache-aux
/// -- --ignored --nocapture put_and_get_cost`).
#[test]
#[ignore]
fn put_and_get_cost_per_policy() {
    for policy in [Policy::Fifo, Policy::S3Fifo, Policy::Fifo, Policy::S3Fifo] {
        let store = ShardStore::with_policy(8 << 20, policy);
        let frames: Vec<ShardFrame> = (0..200_000)
            .map(|i| frame(&format!("k{i:015}"), 1, 342, 0))
            .collect();
        let started = std::time::Instant::now();
        for frame in &frames {
            store.put(frame, 0);
        }
        let put_ns = started.elapsed().as_nanos() as f64 / frames.len() as f64;
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        let mut hits = 0;
        for _ in 0..4 {
            for frame in frames.iter().rev().take(15_000) {
                out.clear();
                hits += usize::from(store.get_into(&frame.key, 0, &mut out));
            }
        }
        let get_ns = started.elapsed().as_nanos() as f64 / 60_000.0;
        println!(
            "{policy:?}: put {put_ns:.0} ns (evicting), get {get_ns:.0} ns ({hits} of 60000 hit), {} evictions",
            store.stats().evictions
        );
    }
}

/// Steady-state hit ratio of each policy, cache-aside, Zipf 0.99 over 150k keys
/// in a store that holds ~24k of them, with and without 30% one-hit wonders (a
/// measurement: `-- --ignored --nocapture steady_state_hit_ratio`).
#[test]
#[ignore]
fn steady_state_hit_ratio_per_policy() {
    use rand::{Rng, SeedableRng};
    let keys = 150_000usize;
    let mut cumulative = Vec::with_capacity(keys);
    let mut sum = 0.0;
    for rank in 1..=keys {
        sum += 1.0 / (rank as f64).powf(0.99);
        cumulative.push(sum);
    }
    for weight in &mut cumulative {
        *weight /= sum;
    }
    for wonders in [0.0, 0.3] {
        for policy in [Policy::Fifo, Policy::S3Fifo] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let store = ShardStore::with_policy(8 << 20, policy);
            let (mut hits, mut counted, mut unique) = (0u64, 0u64, 0u64);
            for request in 0..360_000 {
                let name = match rng.random::<f64>() < wonders {
                    true => {
                        unique += 1;
                        format!("w{unique:015}")
                    }
                    false => {
                        let draw: f64 = rng.random();
                        let rank = cumulative.partition_point(|&c| c < draw).min(keys - 1);
                        format!("k{rank:015}")
                    }
                };
                let hit = store.get(&name, 0).is_some();
                if !hit {
                    store.put(&frame(&name, 1, 342, 0), 0);
                }
                if request >= 300_000 && name.starts_with('k') {
                    counted += 1;
                    hits += u64::from(hit);
                }
            }
            println!(
                "{policy:?}, {wonders} wonders: hit ratio {:.3} ({} shards held)",
                hits as f64 / counted as f64,
                store.stats().items
            );
        }
    }
}
