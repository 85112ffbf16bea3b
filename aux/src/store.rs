//! The shard store: a byte-bounded LRU of shard frames with TTL and tombstones.
//!
//! One entry per key (an aux node holds at most one shard of a key). Each entry keeps
//! the encoded frame exactly as it arrived, so a read returns it without re-encoding,
//! plus the few header fields the store decides on (version, expiry, tombstone).
//!
//! Invariants, all checked by the tests below:
//! - `bytes <= capacity` after every operation: each entry is accounted as its key,
//!   its frame and [`ENTRY_OVERHEAD`], and least-recently-used entries are evicted
//!   until the store fits (invariant 5).
//! - A put never replaces a newer version with an older one (invariant 2); the same
//!   version replaces only when it carries another shard index of that write.
//! - An expired entry is never returned, and [`ShardStore::sweep_expired`] reclaims it.
//!
//! Time is passed in (`now_ms`, Unix milliseconds) rather than read here, so tests
//! control the clock exactly. The mutex is `parking_lot`'s and is never held across
//! an `.await` (every method is synchronous).

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;
use shardcache_common::frame::ShardFrame;
use shardcache_common::ring::key_point;
use shardcache_common::version::Version;

/// Bytes charged per entry on top of key and frame: the LRU node and its hash-table
/// slot, the shared key allocation, the key-order index entry and the expiry-index
/// entry, rounded up.
pub const ENTRY_OVERHEAD: u64 = 208;

/// What [`ShardStore::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutResult {
    /// The frame is now the entry for its key.
    Stored,
    /// The store already held this exact version; nothing changed.
    AlreadyHeld,
    /// The store holds a newer version, which it kept.
    Superseded(Version),
    /// The frame alone is larger than the whole store.
    TooLarge,
}

/// What [`ShardStore::delete_up_to`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteResult {
    /// The entry was at or below the given version and is gone (or there was none).
    Removed,
    /// The store holds a newer version, which it kept.
    Newer(Version),
}

/// One entry as the inventory lists it: a shard's header without its payload.
pub type InventoryEntry = shardcache_common::wire::InventoryEntry;

/// What [`ShardStore::restore`] did with a snapshot's frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RestoreReport {
    pub loaded: u64,
    pub expired: u64,
    /// Older than (or the same as) what the store already held.
    pub superseded: u64,
    /// Frames that failed their own checksum or were larger than the store.
    pub invalid: u64,
    /// Shards evicted because the snapshot did not fit the capacity.
    pub evicted: u64,
}

/// Counters and gauges for `/health` (and, later, metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    pub items: u64,
    pub tombstones: u64,
    pub bytes: u64,
    pub capacity_bytes: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub superseded_puts: u64,
}

struct Entry {
    version: Version,
    expires_at_ms: u64,
    tombstone: bool,
    shard_index: u8,
    data_shards: u8,
    parity_shards: u8,
    frame: Bytes,
}

struct Inner {
    entries: LruCache<Arc<str>, Entry>,
    /// `(ring point of the key, key)` for every entry: the stable order in which the
    /// inventory is listed page by page, the same order on every node.
    by_point: BTreeSet<(u64, Arc<str>)>,
    /// `(expiry, key)` for every entry that expires, so sweeping is ordered by time.
    expiries: BTreeSet<(u64, Arc<str>)>,
    /// Bumped by every change, so a snapshot can tell whether anything changed.
    generation: u64,
    stats: StoreStats,
}

/// A thread-safe, byte-bounded shard store.
pub struct ShardStore {
    inner: Mutex<Inner>,
}

fn entry_bytes(key: &str, frame: &Bytes) -> u64 {
    key.len() as u64 + frame.len() as u64 + ENTRY_OVERHEAD
}

impl ShardStore {
    /// An empty store that will never hold more than `capacity_bytes`.
    pub fn new(capacity_bytes: u64) -> Self {
        let stats = StoreStats {
            capacity_bytes,
            ..StoreStats::default()
        };
        ShardStore {
            inner: Mutex::new(Inner {
                // Unbounded by count on purpose: the bound is in bytes.
                entries: LruCache::unbounded(),
                by_point: BTreeSet::new(),
                expiries: BTreeSet::new(),
                generation: 0,
                stats,
            }),
        }
    }

    /// Stores `frame` (whose encoded form is `encoded`) unless a newer version of
    /// its key is held. Evicts least-recently-used entries to make room.
    pub fn put(&self, frame: &ShardFrame, encoded: Bytes, now_ms: u64) -> PutResult {
        let mut inner = self.inner.lock();
        let size = entry_bytes(&frame.key, &encoded);
        if size > inner.stats.capacity_bytes {
            return PutResult::TooLarge;
        }
        if let Some(existing) = inner.entries.peek(frame.key.as_str()) {
            // Compared even when the held entry has expired: a late, older write must
            // not come back after a newer one ran out.
            if existing.version > frame.version {
                let held = existing.version;
                inner.stats.superseded_puts += 1;
                return PutResult::Superseded(held);
            }
            // The same write with another shard index replaces it: a rebalancer
            // giving this node a different index of the write than it holds (so
            // that no two owners hold the same one).
            if existing.version == frame.version && existing.shard_index == frame.shard_index {
                return PutResult::AlreadyHeld;
            }
        }
        inner.remove(&frame.key);
        if frame.is_expired(now_ms) {
            // Newer than what was held but already dead: the old entry goes, nothing
            // takes its place.
            return PutResult::Stored;
        }
        // Allocated only once the frame is known to be stored.
        let key: Arc<str> = Arc::from(frame.key.as_str());
        if frame.expires_at_ms != 0 {
            inner.expiries.insert((frame.expires_at_ms, key.clone()));
        }
        inner.by_point.insert((key_point(&key), key.clone()));
        inner.generation += 1;
        let entry = Entry {
            version: frame.version,
            expires_at_ms: frame.expires_at_ms,
            tombstone: frame.tombstone,
            shard_index: frame.shard_index,
            data_shards: frame.data_shards,
            parity_shards: frame.parity_shards,
            frame: encoded,
        };
        inner.account_added(&entry, size);
        inner.entries.push(key, entry);
        inner.evict_to_capacity();
        PutResult::Stored
    }

    /// The encoded frame held for `key` (a tombstone too), unless absent or expired.
    pub fn get(&self, key: &str, now_ms: u64) -> Option<Bytes> {
        let mut inner = self.inner.lock();
        let expires_at_ms = inner.entries.get(key)?.expires_at_ms;
        if expires_at_ms != 0 && expires_at_ms <= now_ms {
            inner.remove(key);
            inner.stats.expirations += 1;
            return None;
        }
        inner.entries.peek(key).map(|entry| entry.frame.clone())
    }

    /// Removes up to `limit` entries that have expired by `now_ms`; returns how many.
    /// Bounded so one sweep never holds the lock for long.
    pub fn sweep_expired(&self, now_ms: u64, limit: usize) -> usize {
        let mut inner = self.inner.lock();
        let mut removed = 0;
        while removed < limit {
            let Some((expires_at_ms, key)) = inner.expiries.first().cloned() else {
                break;
            };
            if expires_at_ms > now_ms {
                break;
            }
            inner.remove(&key);
            inner.stats.expirations += 1;
            removed += 1;
        }
        removed
    }

    /// Removes the entry for `key` if its version is `version` or older: how a
    /// rebalancer drops a shard from a node that no longer owns the key without ever
    /// removing a newer write that landed meanwhile.
    pub fn delete_up_to(&self, key: &str, version: Version) -> DeleteResult {
        let mut inner = self.inner.lock();
        match inner.entries.peek(key) {
            Some(entry) if entry.version > version => DeleteResult::Newer(entry.version),
            Some(_) => {
                inner.remove(key);
                DeleteResult::Removed
            }
            None => DeleteResult::Removed,
        }
    }

    /// Up to `limit` live entries after `after` (a `(ring point, key)` cursor) in
    /// ring-point order. Expired entries are skipped. Listing does not touch the LRU
    /// order, so a rebalancer's scan does not keep cold shards alive.
    pub fn inventory(
        &self,
        after: Option<(u64, &str)>,
        limit: usize,
        now_ms: u64,
    ) -> Vec<InventoryEntry> {
        let inner = self.inner.lock();
        let start = match after {
            Some((point, key)) => Bound::Excluded((point, Arc::<str>::from(key))),
            None => Bound::Unbounded,
        };
        inner
            .by_point
            .range((start, Bound::Unbounded))
            .filter_map(|(point, key)| {
                let entry = inner.entries.peek(key)?;
                let expired = entry.expires_at_ms != 0 && entry.expires_at_ms <= now_ms;
                (!expired).then(|| InventoryEntry {
                    key: key.to_string(),
                    point: *point,
                    version: entry.version,
                    shard_index: entry.shard_index,
                    data_shards: entry.data_shards,
                    parity_shards: entry.parity_shards,
                    tombstone: entry.tombstone,
                    expires_at_ms: entry.expires_at_ms,
                })
            })
            .take(limit)
            .collect()
    }

    /// Every encoded frame, least recently used first: the order in which a restore
    /// re-inserts them so that the LRU order survives a restart.
    pub fn export(&self) -> Vec<Bytes> {
        let inner = self.inner.lock();
        inner
            .entries
            .iter()
            .rev()
            .map(|(_, entry)| entry.frame.clone())
            .collect()
    }

    /// Re-inserts frames from a snapshot, least recently used first, through the
    /// ordinary [`put`](Self::put): expired shards are dropped, versions are compared
    /// with anything already held, and when the snapshot is larger than the capacity
    /// the least recently used shards are the ones evicted.
    pub fn restore(&self, frames: &[Bytes], now_ms: u64) -> RestoreReport {
        let mut report = RestoreReport::default();
        for encoded in frames {
            // A copy, so the snapshot's one big buffer is freed once restored.
            let encoded = Bytes::copy_from_slice(encoded);
            match ShardFrame::decode(encoded.clone()) {
                Ok(frame) if frame.is_expired(now_ms) => report.expired += 1,
                Ok(frame) => match self.put(&frame, encoded.clone(), now_ms) {
                    PutResult::Stored => report.loaded += 1,
                    PutResult::AlreadyHeld | PutResult::Superseded(_) => report.superseded += 1,
                    PutResult::TooLarge => report.invalid += 1,
                },
                Err(_) => report.invalid += 1,
            }
        }
        report.evicted = self.stats().evictions;
        report
    }

    /// A number that changes whenever the contents change.
    pub fn generation(&self) -> u64 {
        self.inner.lock().generation
    }

    pub fn stats(&self) -> StoreStats {
        self.inner.lock().stats
    }
}

impl Inner {
    fn account_added(&mut self, entry: &Entry, size: u64) {
        self.stats.bytes += size;
        self.stats.items += 1;
        self.stats.tombstones += u64::from(entry.tombstone);
    }

    /// Drops the entry for `key`, if any, with its expiry-index slot and its bytes.
    fn remove(&mut self, key: &str) {
        if let Some((key, entry)) = self.entries.pop_entry(key) {
            self.forget(&key, &entry);
        }
    }

    fn forget(&mut self, key: &Arc<str>, entry: &Entry) {
        if entry.expires_at_ms != 0 {
            self.expiries.remove(&(entry.expires_at_ms, key.clone()));
        }
        self.by_point.remove(&(key_point(key), key.clone()));
        self.generation += 1;
        self.stats.bytes -= entry_bytes(key, &entry.frame);
        self.stats.items -= 1;
        self.stats.tombstones -= u64::from(entry.tombstone);
    }

    fn evict_to_capacity(&mut self) {
        while self.stats.bytes > self.stats.capacity_bytes {
            let Some((key, entry)) = self.entries.pop_lru() else {
                break;
            };
            self.forget(&key, &entry);
            self.stats.evictions += 1;
        }
    }
}

/// Used by the tests to cross-check the running byte count.
#[cfg(test)]
impl ShardStore {
    fn recount_bytes(&self) -> u64 {
        let inner = self.inner.lock();
        inner
            .entries
            .iter()
            .map(|(key, entry)| entry_bytes(key, &entry.frame))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shardcache_common::frame::shard_len;

    fn frame(key: &str, timestamp: u64, payload_len: usize, expires_at_ms: u64) -> ShardFrame {
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
            expires_at_ms,
            value_len,
            value_checksum: 0,
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

    fn put(store: &ShardStore, frame: &ShardFrame, now_ms: u64) -> PutResult {
        store.put(frame, frame.encode(), now_ms)
    }

    fn held_version(store: &ShardStore, key: &str, now_ms: u64) -> Option<u64> {
        let bytes = store.get(key, now_ms)?;
        Some(ShardFrame::decode(bytes).unwrap().version.timestamp)
    }

    #[test]
    fn older_versions_never_replace_newer_ones() {
        let store = ShardStore::new(1 << 20);
        assert_eq!(put(&store, &frame("k", 10, 50, 0), 0), PutResult::Stored);
        let stale = put(&store, &frame("k", 9, 50, 0), 0);
        assert!(matches!(stale, PutResult::Superseded(v) if v.timestamp == 10));
        assert_eq!(
            put(&store, &frame("k", 10, 50, 0), 0),
            PutResult::AlreadyHeld
        );
        assert_eq!(held_version(&store, "k", 0), Some(10));
        let other_index = ShardFrame {
            shard_index: 3,
            ..frame("k", 10, 50, 0)
        };
        assert_eq!(
            put(&store, &other_index, 0),
            PutResult::Stored,
            "another index of the same write replaces"
        );
        let held = ShardFrame::decode(store.get("k", 0).unwrap()).unwrap();
        assert_eq!(held.shard_index, 3);
        assert_eq!(put(&store, &tombstone("k", 11), 0), PutResult::Stored);
        assert!(matches!(
            put(&store, &frame("k", 10, 50, 0), 0),
            PutResult::Superseded(_)
        ));
        let held = ShardFrame::decode(store.get("k", 0).unwrap()).unwrap();
        assert!(held.tombstone, "the delete must stick");
        assert_eq!(store.stats().superseded_puts, 2);
    }

    #[test]
    fn expired_entries_are_not_served_and_are_reclaimed() {
        let store = ShardStore::new(1 << 20);
        put(&store, &frame("short", 1, 100, 5_000), 0);
        put(&store, &frame("long", 1, 100, 60_000), 0);
        put(&store, &frame("forever", 1, 100, 0), 0);
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
        assert_eq!(stats.bytes, store.recount_bytes());
    }

    #[test]
    fn an_expired_newer_version_still_blocks_an_older_write() {
        let store = ShardStore::new(1 << 20);
        put(&store, &frame("k", 10, 10, 1_000), 0);
        assert!(matches!(
            put(&store, &frame("k", 5, 10, 0), 2_000),
            PutResult::Superseded(_)
        ));
        assert_eq!(held_version(&store, "k", 2_000), None);
    }

    #[test]
    fn least_recently_used_entries_are_evicted_first() {
        let one = entry_bytes("a", &frame("a", 1, 1000, 0).encode());
        let store = ShardStore::new(one * 3);
        for key in ["a", "b", "c"] {
            put(&store, &frame(key, 1, 1000, 0), 0);
        }
        assert!(
            store.get("a", 0).is_some(),
            "touch a so that b is the oldest"
        );
        put(&store, &frame("d", 1, 1000, 0), 0);
        assert!(store.get("b", 0).is_none());
        for key in ["a", "c", "d"] {
            assert!(store.get(key, 0).is_some(), "{key} should remain");
        }
        assert_eq!(store.stats().evictions, 1);
        assert_eq!(
            put(&store, &frame("huge", 1, 10_000, 0), 0),
            PutResult::TooLarge
        );
    }

    #[test]
    fn deletes_never_remove_a_newer_version() {
        let store = ShardStore::new(1 << 20);
        put(&store, &frame("k", 10, 10, 0), 0);
        let older = Version {
            timestamp: 9,
            writer: 1,
        };
        assert!(
            matches!(store.delete_up_to("k", older), DeleteResult::Newer(v) if v.timestamp == 10)
        );
        assert!(store.get("k", 0).is_some());
        let same = Version {
            timestamp: 10,
            writer: 1,
        };
        assert_eq!(store.delete_up_to("k", same), DeleteResult::Removed);
        assert!(store.get("k", 0).is_none());
        assert_eq!(store.delete_up_to("k", same), DeleteResult::Removed);
        assert_eq!(store.stats().bytes, 0);
    }

    #[test]
    fn inventory_pages_through_every_live_entry_in_ring_order() {
        let store = ShardStore::new(1 << 22);
        for i in 0..250 {
            let expires = if i % 10 == 0 { 1_000 } else { 0 };
            put(&store, &frame(&format!("key-{i}"), 1, 10, expires), 0);
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
        assert_eq!(listed.len(), 225, "the 25 expired entries are not listed");
        assert!(listed
            .windows(2)
            .all(|pair| (pair[0].point, &pair[0].key) < (pair[1].point, &pair[1].key)));
        assert!(listed
            .iter()
            .all(|entry| key_point(&entry.key) == entry.point && entry.shard_index == 0));
        assert_eq!(store.generation(), generation, "listing changes nothing");
    }

    #[test]
    fn a_restore_keeps_the_most_recently_used_shards_within_capacity() {
        let source = ShardStore::new(1 << 22);
        for i in 0..20 {
            put(&source, &frame(&format!("key-{i}"), 1, 1000, 0), 0);
        }
        put(&source, &frame("expiring", 1, 1000, 500), 0);
        assert!(
            source.get("key-0", 0).is_some(),
            "key-0 becomes the most recent"
        );
        let frames = source.export();
        let one = entry_bytes("key-10", &frame("key-10", 1, 1000, 0).encode());
        let restored = ShardStore::new(one * 5);
        let report = restored.restore(&frames, 1_000);
        assert_eq!((report.loaded, report.expired), (20, 1));
        assert_eq!(restored.stats().items, 5);
        for key in ["key-0", "key-19", "key-18", "key-17", "key-16"] {
            assert!(
                restored.get(key, 1_000).is_some(),
                "{key} was among the most recent"
            );
        }
        assert!(restored.stats().bytes <= one * 5);
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
            capacity in 500u64..40_000,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let store = ShardStore::new(capacity);
            let mut now_ms = 0u64;
            for op in ops {
                match op {
                    Op::Put { key, timestamp, payload_len, ttl } => {
                        let expires = ttl.map_or(0, |ttl| now_ms + u64::from(ttl) + 1);
                        let frame = frame(&format!("key-{key}"), timestamp.into(), payload_len.into(), expires);
                        put(&store, &frame, now_ms);
                    }
                    Op::Delete { key, timestamp } => {
                        put(&store, &tombstone(&format!("key-{key}"), timestamp.into()), now_ms);
                    }
                    Op::Get { key } => {
                        if let Some(bytes) = store.get(&format!("key-{key}"), now_ms) {
                            prop_assert!(!ShardFrame::decode(bytes).unwrap().is_expired(now_ms));
                        }
                    }
                    Op::Sweep => {
                        store.sweep_expired(now_ms, usize::MAX);
                    }
                    Op::Tick(millis) => now_ms += u64::from(millis),
                }
                let stats = store.stats();
                prop_assert!(stats.bytes <= capacity, "{} > {}", stats.bytes, capacity);
                prop_assert_eq!(stats.bytes, store.recount_bytes());
            }
        }
    }
}
