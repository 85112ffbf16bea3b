//! Making room and reclaiming it: eviction (the queues of [`super::policy`]),
//! compaction of half-empty segments, expiry sweeps, and dropping a segment whose
//! records cannot be read.

use shardcache_common::ring::key_point;

use super::policy::{self, Fate, Queue};
use super::record::RecordView;
use super::segments::{self, segment_of};
use super::{Emptying, Inner, Removal};

impl Inner {
    /// Evicts the oldest segments until a `len`-byte record fits in the capacity
    /// (appended to `queue`).
    pub(super) fn make_room(&mut self, len: usize, queue: Queue, now_ms: u64) {
        while self.stats.bytes + self.segments.bytes_needed(len, queue) as u64
            > self.stats.capacity_bytes
        {
            if !self.empty_oldest(now_ms) {
                return;
            }
        }
    }

    pub(super) fn evict_to_capacity(&mut self, now_ms: u64) {
        while self.stats.bytes > self.stats.capacity_bytes && self.empty_oldest(now_ms) {}
    }

    /// Empties the oldest segment of the queue the policy picks (of the other
    /// queue when that one has none); false when the store has no segment.
    pub(super) fn empty_oldest(&mut self, now_ms: u64) -> bool {
        let (small, main) = (Queue::Small, Queue::Main);
        let queue = policy::victim(
            self.policy,
            self.segments.allocated_in(small),
            self.segments.allocated_in(main),
            self.stats.capacity_bytes,
        );
        let other = match queue {
            Queue::Small => main,
            Queue::Main => small,
        };
        let oldest = self
            .segments
            .oldest(queue)
            .or_else(|| self.segments.oldest(other));
        match oldest {
            Some(id) => {
                self.empty_segment(id, Emptying::Evict, now_ms);
                true
            }
            None => false,
        }
    }

    /// Takes segment `id` out and drops or moves each of its live records (see
    /// [`Emptying`]); moved records keep their bytes (checksum included).
    pub(super) fn empty_segment(&mut self, id: u32, how: Emptying, now_ms: u64) {
        let Some(segment) = self.segments.take(id) else {
            return;
        };
        self.refresh_memory_stats();
        // Second chances in the main queue: at most 7/8 of a segment, so that
        // emptying a segment always frees memory. (Half a segment, the earlier
        // bound, dropped shards read since the last pass once more than half of a
        // segment was: 0.781 instead of 0.795 on a steady Zipf workload, see
        // `tests::steady_state_hit_ratio_per_policy`.)
        let keep_budget = segment.data.capacity() * 7 / 8;
        let mut kept = 0;
        // Live records looked at (dropped or moved), and their bytes.
        let (mut seen, mut seen_bytes) = (0, 0);
        let mut offset = 0;
        while offset < segment.data.len() {
            let Ok(view) = RecordView::parse(&segment.data[offset..], &self.shapes) else {
                // Unreadable: nothing after it can be found by scanning. The live
                // records not yet seen go with it.
                let lost = u64::from(segment.live_records - seen);
                self.stats.corrupt_records += lost;
                self.stats.items -= lost;
                self.stats.record_bytes -= (segment.live_bytes - seen_bytes) as u64;
                self.forget_segment_in_index(id);
                break;
            };
            let start = offset;
            offset += view.len;
            let Some(position) = self.live_position(&view, segments::location(id, start)) else {
                continue;
            };
            seen += 1;
            seen_bytes += view.len;
            let accessed = self.index.was_accessed(position);
            let fate = policy::fate(
                segment.queue,
                how,
                accessed,
                view.is_expired(now_ms),
                kept + view.len <= keep_budget,
            );
            let queue = match fate {
                Fate::MoveTo(queue) => queue,
                Fate::Drop | Fate::DropToGhost => {
                    self.index.remove(position);
                    if fate == Fate::DropToGhost {
                        self.ghost.insert(key_point(view.key_str()));
                    }
                    let why = match view.is_expired(now_ms) {
                        true => Removal::Expired,
                        false => Removal::Evicted,
                    };
                    self.count_dropped(&view, why);
                    continue;
                }
            };
            if (segment.queue, how) == (Queue::Main, Emptying::Evict) {
                kept += view.len;
            }
            // Compaction keeps a record's accessed bit; eviction spends it.
            let keep_accessed = how == Emptying::Compact && accessed;
            let moved = self.move_record(&segment.data[start..offset], &view, position, queue);
            if moved && keep_accessed {
                self.index.mark_accessed(position);
            }
        }
        drop(segment);
        self.segments.recycle(id);
        self.refresh_memory_stats();
    }

    /// Appends a copy of a live record's bytes to `queue` and points its index
    /// slot at it (not yet read); false if the record was lost instead.
    pub(super) fn move_record(
        &mut self,
        bytes: &[u8],
        view: &RecordView<'_>,
        position: usize,
        queue: Queue,
    ) -> bool {
        let Some(new_location) = self.segments.append(bytes, queue) else {
            // The kernel refused a mapping: the record is lost to the cache.
            self.index.remove(position);
            self.count_dropped(view, Removal::Evicted);
            return false;
        };
        self.segments.note_expiry(new_location, view.expiry_ms);
        self.index.relocate(position, new_location);
        true
    }

    pub(super) fn count_dropped(&mut self, view: &RecordView<'_>, why: Removal) {
        self.stats.items -= 1;
        self.stats.tombstones -= u64::from(view.is_tombstone());
        self.stats.record_bytes -= view.len as u64;
        self.generation += 1;
        match why {
            Removal::Expired => self.stats.expirations += 1,
            _ => self.stats.evictions += 1,
        }
    }

    /// Drops a segment whose records cannot be read (never expected: the store
    /// wrote them), with every index entry pointing into it.
    pub(super) fn drop_segment(&mut self, id: u32) {
        if let Some(segment) = self.segments.take(id) {
            tracing::error!(
                segment = id,
                "a store segment is unreadable; dropping its shards"
            );
            self.stats.corrupt_records += u64::from(segment.live_records);
            self.stats.items -= u64::from(segment.live_records);
            self.stats.record_bytes -= segment.live_bytes as u64;
            self.forget_segment_in_index(id);
            self.segments.recycle(id);
            self.generation += 1;
            self.refresh_memory_stats();
        }
    }

    /// Removes every index entry pointing into segment `id` (its records cannot be
    /// read, so their tags are unknown).
    pub(super) fn forget_segment_in_index(&mut self, id: u32) {
        self.index.retain(|location| segment_of(location) != id);
        // Tombstone counts of unreadable records are unknown; recount them.
        self.stats.tombstones = self.count_tombstones();
    }

    pub(super) fn count_tombstones(&self) -> u64 {
        self.index
            .locations()
            .filter_map(|location| self.view(location).ok())
            .filter(|view| view.is_tombstone())
            .count() as u64
    }

    pub(super) fn sweep(&mut self, now_ms: u64, limit: usize) -> usize {
        let expirations_before = self.stats.expirations;
        let expiring: Vec<u32> = self.segments.expiring(now_ms).collect();
        for id in expiring {
            if (self.stats.expirations - expirations_before) as usize >= limit {
                break;
            }
            self.expire_in(id, now_ms);
        }
        let sparse: Vec<u32> = self.segments.sparse().take(4).collect();
        for id in sparse {
            self.empty_segment(id, Emptying::Compact, now_ms);
        }
        self.index.shrink_if_sparse();
        self.refresh_memory_stats();
        (self.stats.expirations - expirations_before) as usize
    }

    /// Drops the expired records of one segment and notes its next expiry.
    pub(super) fn expire_in(&mut self, id: u32, now_ms: u64) {
        let mut expired = Vec::new();
        let mut next_expiry_ms = u64::MAX;
        if let Some(segment) = self.segments.get_segment(id) {
            let mut offset = 0;
            while offset < segment.data.len() {
                let Ok(view) = RecordView::parse(&segment.data[offset..], &self.shapes) else {
                    break;
                };
                let location = segments::location(id, offset);
                offset += view.len;
                if view.expiry_ms == 0 {
                    continue;
                }
                let Some(position) = self.live_position(&view, location) else {
                    continue;
                };
                if view.is_expired(now_ms) {
                    expired.push((position, location));
                } else {
                    next_expiry_ms = next_expiry_ms.min(view.expiry_ms);
                }
            }
        }
        if let Some(segment) = self.segments.get_segment_mut(id) {
            segment.next_expiry_ms = next_expiry_ms;
        }
        // Last first: removing a slot shifts only the slots after it.
        expired.sort_unstable_by_key(|&(position, _)| std::cmp::Reverse(position));
        for (position, location) in expired {
            self.remove_at(position, location, Removal::Expired);
        }
    }
}
