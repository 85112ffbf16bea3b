//! The shard store: byte-bounded, with TTL and tombstones, built so that what it
//! counts is what the process holds.
//!
//! One entry per key (an aux node holds at most one shard of a key). Shards arrive
//! as wire frames and are kept as compact [`record`]s appended to large
//! [`segments`] the store owns; nothing from a network buffer is kept. The
//! [`index`] finds a key's record and lists keys in ring order. A read builds the
//! wire frame again from the record.
//!
//! Memory per shard beyond its key and payload: the record header (24 bytes, 32
//! with an expiry) plus an index slot (8 bytes at 85–94% load), and the slack of the
//! segment a record sits in. Expiry needs no per-entry bookkeeping (each segment
//! knows its earliest expiry), eviction none but one bit in the index slot.
//!
//! Eviction is a segment FIFO with a second chance (CLOCK at segment granularity):
//! when the store needs room it empties its oldest segment; records read since they
//! were written there are moved to the open segment (their accessed bit cleared, at
//! most half a segment per eviction), the rest are dropped.
//!
//! Invariants, all checked by the tests below:
//! - `bytes <= capacity` after every operation, where `bytes` is the memory of every
//!   segment held plus the index (ARCHITECTURE.md, invariant 5).
//! - A put never replaces a newer version with an older one (invariant 2); the same
//!   version replaces only when it carries another shard index of that write.
//! - An expired entry is never returned, and [`ShardStore::sweep_expired`] reclaims it.
//! - A record whose bytes changed after it was written is never served: reads check
//!   its checksum, drop it and count it in `corrupt_records`.
//!
//! Files: this one holds the store's API, writes, reads and accounting; `evict`
//! makes room and reclaims it; `listing` reads without changing anything
//! (inventory, snapshot walk); `record`, `segments` and `index` are the parts.
//!
//! Time is passed in (`now_ms`, Unix milliseconds) rather than read here, so tests
//! control the clock exactly. The mutex is `parking_lot`'s and is never held across
//! an `.await` (every method is synchronous).

mod evict;
mod index;
mod listing;
mod record;
mod segments;

use bytes::Bytes;
use parking_lot::Mutex;
use shardcache_common::frame::ShardFrame;
use shardcache_common::ring::key_point;
use shardcache_common::version::Version;

use index::{tag_of, Index};
use record::{ExpiryForm, RecordView, Shapes};
use segments::{segment_of, Segments};

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

/// What [`ShardStore::restore_frame`] calls added up over a snapshot.
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

/// Counters and gauges for `/health` and the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    pub items: u64,
    pub tombstones: u64,
    /// Memory held: segments plus index. Never above `capacity_bytes`.
    pub bytes: u64,
    pub capacity_bytes: u64,
    /// Bytes of live records (headers, keys, payloads), within `bytes`.
    pub record_bytes: u64,
    pub segment_bytes: u64,
    pub index_bytes: u64,
    pub segments: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub superseded_puts: u64,
    /// Records found changed after they were written (memory corruption or a bug),
    /// dropped rather than served.
    pub corrupt_records: u64,
}

/// The record-building buffer is kept between puts up to this size.
const SCRATCH_KEPT_BYTES: usize = 64 * 1024;

/// Why a record leaves the store, for the counters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Removal {
    Replaced,
    Deleted,
    Expired,
    Evicted,
    Corrupt,
}

/// What emptying a segment does with its live records.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Emptying {
    /// Make room: keep only records read since they were written there.
    Evict,
    /// Reclaim dead bytes: keep every live record.
    Compact,
}

struct Inner {
    segments: Segments,
    index: Index,
    shapes: Shapes,
    /// Where a record is built before it is copied into its segment.
    scratch: Vec<u8>,
    /// Bumped by every change, so a snapshot can tell whether anything changed.
    generation: u64,
    stats: StoreStats,
}

/// A thread-safe, byte-bounded shard store.
pub struct ShardStore {
    inner: Mutex<Inner>,
}

impl ShardStore {
    /// An empty store that will never hold more than `capacity_bytes`.
    pub fn new(capacity_bytes: u64) -> Self {
        let mut inner = Inner {
            segments: Segments::for_capacity(capacity_bytes),
            index: Index::default(),
            shapes: Shapes::default(),
            scratch: Vec::new(),
            generation: 0,
            stats: StoreStats {
                capacity_bytes,
                ..StoreStats::default()
            },
        };
        inner.refresh_memory_stats();
        ShardStore {
            inner: Mutex::new(inner),
        }
    }

    /// Stores a copy of `frame` unless a newer version of its key is held. Evicts
    /// to make room.
    pub fn put(&self, frame: &ShardFrame, now_ms: u64) -> PutResult {
        self.inner.lock().put(frame, now_ms)
    }

    /// The wire frame held for `key` (a tombstone too), unless absent or expired.
    pub fn get(&self, key: &str, now_ms: u64) -> Option<Bytes> {
        let mut frame = Vec::new();
        self.get_into(key, now_ms, &mut frame)
            .then(|| Bytes::from(frame))
    }

    /// Appends the wire frame held for `key` to `out`; false (and nothing appended)
    /// when there is none.
    pub fn get_into(&self, key: &str, now_ms: u64, out: &mut Vec<u8>) -> bool {
        self.inner.lock().get_into(key, now_ms, out)
    }

    /// Removes up to `limit` entries that have expired by `now_ms` and compacts
    /// segments that deletes and expiries left mostly empty; returns how many
    /// entries expired. Bounded so one sweep never holds the lock for long.
    pub fn sweep_expired(&self, now_ms: u64, limit: usize) -> usize {
        self.inner.lock().sweep(now_ms, limit)
    }

    /// Removes the entry for `key` if its version is `version` or older: how a
    /// rebalancer drops a shard from a node that no longer owns the key without ever
    /// removing a newer write that landed meanwhile.
    pub fn delete_up_to(&self, key: &str, version: Version) -> DeleteResult {
        let mut inner = self.inner.lock();
        let tag = tag_of(key_point(key));
        let Some((position, location)) = inner.find(tag, key) else {
            return DeleteResult::Removed;
        };
        match inner.view(location).ok().map(|held| held.version()) {
            Some(held) if held > version => DeleteResult::Newer(held),
            _ => {
                inner.remove_at(position, location, Removal::Deleted);
                DeleteResult::Removed
            }
        }
    }

    /// Up to `limit` live entries after `after` (a `(ring point, key)` cursor) in
    /// ring-point order. Expired entries are skipped. Listing does not mark entries
    /// read, so a rebalancer's scan does not keep cold shards alive.
    pub fn inventory(
        &self,
        after: Option<(u64, &str)>,
        limit: usize,
        now_ms: u64,
    ) -> Vec<InventoryEntry> {
        self.inner.lock().inventory(after, limit, now_ms)
    }

    /// The wire frames of the oldest segment opened after `after_seq`, each behind
    /// its 4-byte big-endian length (the snapshot's entry layout), with that
    /// segment's sequence number and frame count; `None` when no segment is left.
    /// Walking from 0 visits the store oldest first, a segment per lock, so a
    /// snapshot never copies the whole store; records moved meanwhile may be seen
    /// twice, which a restore resolves by version.
    pub fn snapshot_chunk(&self, after_seq: u64, now_ms: u64) -> Option<(u64, Vec<u8>, usize)> {
        self.inner.lock().snapshot_chunk(after_seq, now_ms)
    }

    /// Stores one frame read from a snapshot (encoded), through the ordinary put:
    /// expired shards are dropped, versions are compared with anything already held,
    /// and when the snapshot is larger than the capacity the oldest go first.
    pub fn restore_frame(&self, encoded: &[u8], now_ms: u64, report: &mut RestoreReport) {
        let evictions_before = self.stats().evictions;
        match ShardFrame::decode(Bytes::copy_from_slice(encoded)) {
            Ok(frame) if frame.is_expired(now_ms) => report.expired += 1,
            Ok(frame) => match self.put(&frame, now_ms) {
                PutResult::Stored => report.loaded += 1,
                PutResult::AlreadyHeld | PutResult::Superseded(_) => report.superseded += 1,
                PutResult::TooLarge => report.invalid += 1,
            },
            Err(_) => report.invalid += 1,
        }
        report.evicted += self.stats().evictions - evictions_before;
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
    fn put(&mut self, frame: &ShardFrame, now_ms: u64) -> PutResult {
        let len = record::len_of(frame);
        // Room for the record's segment and the index as it is: or it never fits.
        if (self.segments.footprint(len) + self.index.bytes()) as u64 > self.stats.capacity_bytes {
            return PutResult::TooLarge;
        }
        let tag = tag_of(key_point(&frame.key));
        if let Some((position, location)) = self.find(tag, &frame.key) {
            let held = self
                .view(location)
                .ok()
                .map(|held| (held.version(), held.shape.shard_index));
            match held {
                // Compared even when the held entry has expired: a late, older write
                // must not come back after a newer one ran out.
                Some((version, _)) if version > frame.version => {
                    self.stats.superseded_puts += 1;
                    return PutResult::Superseded(version);
                }
                // The same write with another shard index replaces it: a rebalancer
                // giving this node a different index of the write than it holds (so
                // that no two owners hold the same one).
                Some((version, index))
                    if version == frame.version && index == frame.shard_index =>
                {
                    return PutResult::AlreadyHeld;
                }
                _ => {}
            }
            if frame.is_expired(now_ms) {
                // Newer than what was held but already dead: the old entry goes,
                // nothing takes its place.
                self.remove_at(position, location, Removal::Replaced);
                return PutResult::Stored;
            }
        } else if frame.is_expired(now_ms) {
            return PutResult::Stored;
        }
        // Eviction may move or drop the held entry: look it up again after it.
        self.make_room(len, now_ms);
        let Some((new_location, written)) = self.append_frame(frame, now_ms) else {
            return PutResult::TooLarge;
        };
        match self.find(tag, &frame.key) {
            Some((position, old_location)) => {
                self.index.relocate(position, new_location);
                self.forget(old_location, Removal::Replaced);
            }
            None => self.index.insert(tag, new_location),
        }
        self.stats.items += 1;
        self.stats.tombstones += u64::from(frame.tombstone);
        self.stats.record_bytes += written as u64;
        self.generation += 1;
        self.refresh_memory_stats();
        // The index may have grown: hold the bound by evicting the oldest.
        self.evict_to_capacity(now_ms);
        PutResult::Stored
    }

    /// Appends `frame`'s record, evicting more when no segment can be had; returns
    /// its location and length (`record::len_of`, or 12 bytes more with an inline
    /// shape).
    fn append_frame(&mut self, frame: &ShardFrame, now_ms: u64) -> Option<(u64, usize)> {
        self.scratch.clear();
        let written = record::append(frame, &mut self.shapes, &mut self.scratch);
        let location = loop {
            if let Some(location) = self.segments.append(&self.scratch) {
                break location;
            }
            if !self.empty_oldest(now_ms) {
                return None;
            }
        };
        if self.scratch.capacity() > SCRATCH_KEPT_BYTES {
            self.scratch = Vec::new();
        }
        self.segments.note_expiry(location, frame.expiry_ms);
        Some((location, written))
    }

    fn get_into(&mut self, key: &str, now_ms: u64, out: &mut Vec<u8>) -> bool {
        let tag = tag_of(key_point(key));
        let Some((position, location)) = self.find(tag, key) else {
            return false;
        };
        let problem = match self.view(location) {
            Ok(view) if view.is_expired(now_ms) => Some(Removal::Expired),
            Ok(view) => match view.verify(self.segments.bytes_at(location).unwrap_or(&[])) {
                Ok(()) => {
                    view.encode_frame(ExpiryForm::TimeLeftAt(now_ms), out);
                    None
                }
                Err(_) => Some(Removal::Corrupt),
            },
            Err(_) => Some(Removal::Corrupt),
        };
        match problem {
            None => {
                self.index.mark_accessed(position);
                true
            }
            Some(reason) => {
                self.remove_at(position, location, reason);
                false
            }
        }
    }

    /// The index position and location of `key`'s record.
    fn find(&self, tag: u32, key: &str) -> Option<(usize, u64)> {
        let (segments, shapes) = (&self.segments, &self.shapes);
        self.index.find(tag, |location| {
            segments
                .bytes_at(location)
                .and_then(|bytes| RecordView::parse(bytes, shapes).ok())
                .is_some_and(|view| view.key == key.as_bytes())
        })
    }

    fn view(&self, location: u64) -> Result<RecordView<'_>, record::RecordError> {
        let bytes = self
            .segments
            .bytes_at(location)
            .ok_or(record::RecordError::Truncated)?;
        RecordView::parse(bytes, &self.shapes)
    }

    /// The index position of the record at `location` if it is live (a record is
    /// live exactly when the index names it).
    fn live_position(&self, view: &RecordView<'_>, location: u64) -> Option<usize> {
        let tag = tag_of(key_point(view.key_str()));
        self.index
            .find(tag, |held| held == location)
            .map(|(position, _)| position)
    }

    /// Drops the record at `location`, listed at index `position`.
    fn remove_at(&mut self, position: usize, location: u64, why: Removal) {
        self.index.remove(position);
        self.forget(location, why);
    }

    /// Takes a record no longer in the index out of the counts, and frees its
    /// segment when that was the segment's last live record.
    fn forget(&mut self, location: u64, why: Removal) {
        let (len, tombstone) = match self.view(location) {
            Ok(view) => (view.len, view.is_tombstone()),
            // Unreadable: its segment's counters cannot be trusted; drop them all.
            Err(_) => {
                self.drop_segment(segment_of(location));
                return;
            }
        };
        let segment = self
            .segments
            .get_segment_mut(segment_of(location))
            .expect("a readable record has a segment");
        segment.live_records -= 1;
        segment.live_bytes -= len;
        self.stats.items -= 1;
        self.stats.tombstones -= u64::from(tombstone);
        self.stats.record_bytes -= len as u64;
        self.generation += 1;
        match why {
            Removal::Expired => self.stats.expirations += 1,
            Removal::Evicted => self.stats.evictions += 1,
            Removal::Corrupt => self.stats.corrupt_records += 1,
            Removal::Replaced | Removal::Deleted => {}
        }
        self.free_if_empty(segment_of(location));
    }

    /// Frees a segment with no live record left, unless it is the one appended to.
    fn free_if_empty(&mut self, id: u32) {
        let empty = self
            .segments
            .get_segment(id)
            .is_some_and(|segment| segment.live_records == 0);
        if empty && !self.segments.is_open(id) {
            self.segments.take(id);
            self.segments.recycle(id);
            self.refresh_memory_stats();
        }
    }

    fn refresh_memory_stats(&mut self) {
        let segment_bytes = self.segments.allocated() as u64;
        let index_bytes = self.index.bytes() as u64;
        self.stats.segment_bytes = segment_bytes;
        self.stats.index_bytes = index_bytes;
        self.stats.bytes = segment_bytes + index_bytes;
        self.stats.segments = self.segments.count() as u64;
    }
}

#[cfg(test)]
mod tests;
