//! Segments: the large buffers the store appends records to, and their FIFO.
//!
//! Memory is mapped from the kernel a segment at a time (`segment_size` bytes, whole
//! pages, at most 1 MiB) and unmapped a segment at a time, so the store's memory is
//! what it charges: its segments plus its index. Going around the allocator is on
//! purpose: an allocator keeps freed memory for reuse (mimalloc in huge pages, here),
//! so evicted shards would stay resident; an unmapped segment is gone at once. A
//! record larger than half a segment gets a segment of its own, sized to fit it.
//!
//! Every segment belongs to one eviction [`Queue`] (small or main, see `policy`).
//! Records are only appended, to the *open* segment of their queue; a record that
//! is deleted, replaced, expired or moved is marked dead in place and its bytes stay
//! until its segment is emptied (evicted from its queue's head, compacted by the
//! sweeper, or freed when its last live record goes). Segments are kept in the order
//! they were opened, oldest first: that order, within a queue, is the eviction
//! order, and across queues the snapshot order.
//!
//! A *location* names a record: the segment id (1..=65535) above 20 bits of byte
//! offset. It is never 0, which the index uses for an empty slot.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};

use memmap2::MmapMut;

use super::policy::Queue;

/// Largest segment: record offsets have 20 bits.
pub const MAX_SEGMENT_BYTES: usize = 1 << OFFSET_BITS;
/// The unit the kernel maps memory in.
const PAGE_BYTES: usize = 4096;
/// Smallest segment: one page.
const MIN_SEGMENT_BYTES: usize = PAGE_BYTES;
const OFFSET_BITS: u32 = 20;
/// Segment ids fit in 16 bits (a location has 36).
const MAX_SEGMENT_ID: u32 = u16::MAX as u32;

/// A segment's memory: an anonymous mapping of whole pages, written front to back.
/// It derefs to the bytes written so far; pages not yet written take no memory.
pub struct SegmentBuf {
    map: MmapMut,
    len: usize,
}

impl SegmentBuf {
    fn new(size: usize) -> Option<Self> {
        let map = MmapMut::map_anon(page_rounded(size)).ok()?;
        Some(SegmentBuf { map, len: 0 })
    }

    /// Bytes mapped.
    pub fn capacity(&self) -> usize {
        self.map.len()
    }

    fn room(&self) -> usize {
        self.map.len() - self.len
    }

    fn push(&mut self, bytes: &[u8]) {
        self.map[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

impl Deref for SegmentBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map[..self.len]
    }
}

impl DerefMut for SegmentBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.map[..self.len]
    }
}

fn page_rounded(size: usize) -> usize {
    size.max(1).div_ceil(PAGE_BYTES) * PAGE_BYTES
}

/// One buffer of records.
pub struct Segment {
    /// Records back to back; `len()` is where the next one goes.
    pub data: SegmentBuf,
    pub live_records: u32,
    pub live_bytes: usize,
    /// Earliest expiry among its live records (`u64::MAX`: none expires).
    pub next_expiry_ms: u64,
    /// Opening order, for snapshot cursors.
    pub seq: u64,
    pub queue: Queue,
}

/// Every segment, by id, with the FIFO order and each queue's open segment.
pub struct Segments {
    slab: Vec<Option<Segment>>,
    free_ids: Vec<u32>,
    fifo: VecDeque<u32>,
    /// The open segment of the small and of the main queue.
    open: [Option<u32>; 2],
    segment_size: usize,
    /// Sum of the capacities of every segment held.
    allocated: usize,
    /// The same, per queue (small, main).
    allocated_in: [usize; 2],
    next_seq: u64,
}

pub fn location(id: u32, offset: usize) -> u64 {
    (u64::from(id) << OFFSET_BITS) | offset as u64
}

pub fn segment_of(location: u64) -> u32 {
    (location >> OFFSET_BITS) as u32
}

fn offset_of(location: u64) -> usize {
    (location & ((1 << OFFSET_BITS) - 1)) as usize
}

impl Segments {
    /// Segments sized for a store of `capacity` bytes: about 1/32 of it, between
    /// 256 B and 1 MiB, so that the capacity holds many segments.
    pub fn for_capacity(capacity: u64) -> Self {
        let segment_size = usize::try_from(capacity / 32).map_or(MAX_SEGMENT_BYTES, |size| {
            size.clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES)
        });
        Segments {
            slab: vec![None],
            free_ids: Vec::new(),
            fifo: VecDeque::new(),
            open: [None; 2],
            segment_size,
            allocated: 0,
            allocated_in: [0; 2],
            next_seq: 1,
        }
    }

    /// Bytes of memory the segments hold.
    pub fn allocated(&self) -> usize {
        self.allocated
    }

    /// Bytes of memory the segments of `queue` hold.
    pub fn allocated_in(&self, queue: Queue) -> usize {
        self.allocated_in[queue as usize]
    }

    pub fn count(&self) -> usize {
        self.fifo.len()
    }

    /// Whether a record of `len` bytes gets a segment of its own.
    fn is_large(&self, len: usize) -> bool {
        len > self.segment_size / 2
    }

    /// The memory a `len`-byte record occupies at most: its own segment, or a
    /// shared one.
    pub fn footprint(&self, len: usize) -> usize {
        match self.is_large(len) {
            true => page_rounded(len),
            false => self.segment_size,
        }
    }

    /// Memory an append of a `len`-byte record to `queue` would add (0 if it fits
    /// the queue's open segment).
    pub fn bytes_needed(&self, len: usize, queue: Queue) -> usize {
        if self.is_large(len) {
            return page_rounded(len);
        }
        match self.open[queue as usize].and_then(|id| self.get_segment(id)) {
            Some(open) if open.data.room() >= len => 0,
            _ => self.segment_size,
        }
    }

    /// Appends a record to `queue` and returns its location, or `None` when no
    /// segment could be had (every id in use, or the kernel refused the mapping):
    /// the caller evicts and retries.
    pub fn append(&mut self, record: &[u8], queue: Queue) -> Option<u64> {
        let len = record.len();
        let id = if self.is_large(len) {
            self.new_segment(len, queue)?
        } else if self.bytes_needed(len, queue) == 0 {
            self.open[queue as usize].expect("fits the open segment")
        } else {
            let id = self.new_segment(self.segment_size, queue)?;
            self.open[queue as usize] = Some(id);
            id
        };
        let segment = self.slab[id as usize].as_mut().expect("segment exists");
        let offset = segment.data.len();
        segment.data.push(record);
        segment.live_records += 1;
        segment.live_bytes += len;
        Some(location(id, offset))
    }

    fn new_segment(&mut self, size: usize, queue: Queue) -> Option<u32> {
        if self.free_ids.is_empty() && self.slab.len() as u32 > MAX_SEGMENT_ID {
            return None;
        }
        let data = SegmentBuf::new(size)?;
        let id = match self.free_ids.pop() {
            Some(id) => id,
            None => {
                self.slab.push(None);
                self.slab.len() as u32 - 1
            }
        };
        let size = data.capacity();
        self.slab[id as usize] = Some(Segment {
            data,
            live_records: 0,
            live_bytes: 0,
            next_expiry_ms: u64::MAX,
            seq: self.next_seq,
            queue,
        });
        self.next_seq += 1;
        self.allocated += size;
        self.allocated_in[queue as usize] += size;
        self.fifo.push_back(id);
        Some(id)
    }

    /// Notes that the record at `location` expires at `expiry_ms` (0: never),
    /// so the sweeper knows when its segment needs a look.
    pub fn note_expiry(&mut self, location: u64, expiry_ms: u64) {
        if expiry_ms == 0 {
            return;
        }
        if let Some(segment) = self.get_segment_mut(segment_of(location)) {
            segment.next_expiry_ms = segment.next_expiry_ms.min(expiry_ms);
        }
    }

    /// The oldest segment of `queue`, to empty next.
    pub fn oldest(&self, queue: Queue) -> Option<u32> {
        self.fifo.iter().copied().find(|&id| {
            self.get_segment(id)
                .is_some_and(|segment| segment.queue == queue)
        })
    }

    /// Ids in FIFO order, oldest first.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.fifo.iter().copied()
    }

    pub fn is_open(&self, id: u32) -> bool {
        self.open.contains(&Some(id))
    }

    /// Takes a segment out (no more appends go to it) and gives its memory back to
    /// the accounting; the caller drops it once done reading it, then hands its id
    /// back with [`recycle`](Self::recycle). Until then no new segment gets the id,
    /// so the taken segment's locations cannot be confused with new ones.
    pub fn take(&mut self, id: u32) -> Option<Segment> {
        let segment = self.slab.get_mut(id as usize)?.take()?;
        for open in &mut self.open {
            if *open == Some(id) {
                *open = None;
            }
        }
        self.fifo.retain(|&held| held != id);
        self.allocated -= segment.data.capacity();
        self.allocated_in[segment.queue as usize] -= segment.data.capacity();
        Some(segment)
    }

    /// Makes the id of a segment [`take`](Self::take)n out usable again.
    pub fn recycle(&mut self, id: u32) {
        debug_assert!(self.slab[id as usize].is_none());
        self.free_ids.push(id);
    }

    pub fn get_segment(&self, id: u32) -> Option<&Segment> {
        self.slab.get(id as usize)?.as_ref()
    }

    pub fn get_segment_mut(&mut self, id: u32) -> Option<&mut Segment> {
        self.slab.get_mut(id as usize)?.as_mut()
    }

    /// The bytes from `location` to the end of its segment (the record is at their
    /// start), or `None` for a location that names no segment.
    pub fn bytes_at(&self, location: u64) -> Option<&[u8]> {
        self.get_segment(segment_of(location))?
            .data
            .get(offset_of(location)..)
    }

    #[cfg(test)]
    pub fn bytes_at_mut(&mut self, location: u64) -> Option<&mut [u8]> {
        self.get_segment_mut(segment_of(location))?
            .data
            .get_mut(offset_of(location)..)
    }

    /// Sealed segments less than half live: worth compacting.
    pub fn sparse(&self) -> impl Iterator<Item = u32> + '_ {
        self.fifo.iter().copied().filter(move |&id| {
            let segment = self.get_segment(id).expect("listed segments exist");
            !self.is_open(id) && segment.live_bytes < segment.data.capacity() / 2
        })
    }

    /// Segments holding a record that has expired by `now_ms`.
    pub fn expiring(&self, now_ms: u64) -> impl Iterator<Item = u32> + '_ {
        self.fifo.iter().copied().filter(move |&id| {
            self.get_segment(id)
                .is_some_and(|segment| segment.next_expiry_ms <= now_ms)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_fill_the_open_segment_then_a_new_one() {
        let mut segments = Segments::for_capacity(128 * 1024);
        assert_eq!(segments.segment_size, 4096);
        let first = segments.append(&[1; 3000], Queue::Main).unwrap();
        assert_eq!(
            segments.allocated(),
            4096,
            "more than half a segment: its own"
        );
        let small = segments.append(&[2; 1500], Queue::Main).unwrap();
        let next = segments.append(&[3; 1500], Queue::Main).unwrap();
        let third = segments.append(&[4; 1500], Queue::Main).unwrap();
        // The other queue has an open segment of its own.
        let other = segments.append(&[5; 100], Queue::Small).unwrap();
        assert_ne!(segment_of(other), segment_of(third));
        assert_eq!(segments.allocated_in(Queue::Small), 4096);
        assert_eq!(segments.oldest(Queue::Small), Some(segment_of(other)));
        segments.take(segment_of(other)).unwrap();
        assert_eq!(segments.allocated_in(Queue::Small), 0);
        assert_eq!(segment_of(small), segment_of(next));
        assert_ne!(segment_of(next), segment_of(third));
        assert_eq!(segments.allocated(), 3 * 4096);
        assert_eq!(segments.bytes_at(next).unwrap()[..1500], [3; 1500]);
        assert_eq!(segments.oldest(Queue::Main), Some(segment_of(first)));
        let taken = segments.take(segment_of(first)).unwrap();
        assert_eq!(taken.live_records, 1);
        assert_eq!(segments.allocated(), 2 * 4096);
        assert!(segments.bytes_at(first).is_none());
        assert_eq!(segments.ids().count(), 2);
    }

    #[test]
    fn locations_are_never_zero_and_round_trip() {
        let at = location(1, 0);
        assert_ne!(at, 0);
        let at = location(65_535, MAX_SEGMENT_BYTES - 1);
        assert_eq!(
            (segment_of(at), offset_of(at)),
            (65_535, MAX_SEGMENT_BYTES - 1)
        );
        assert!(at <= super::super::index::MAX_LOCATION);
    }
}
