//! The store's key index: an open-addressing table of 8-byte slots kept sorted by
//! key hash, so it is both the lookup table and the ring-order inventory.
//!
//! Each slot holds a 27-bit *tag* (the top bits of the key's ring point,
//! [`shardcache_common::ring::key_point`]), the record's *accessed* bit (read since
//! written: the eviction's second chance) and a 36-bit *location* of the record
//! (0 = empty slot). A record is live exactly when a slot names it. A tag's *home*
//! slot is `tag * homes >> 27`, which grows with the tag, and the table keeps two
//! invariants (linear probing with ordered insertion,
//! the layout of a Robin Hood table):
//!
//! 1. every entry sits at or after its home slot, with no empty slot in between;
//! 2. entries are sorted by tag, slot by slot.
//!
//! Lookups therefore start at the home slot and stop at the first empty slot or
//! larger tag; inserts shift the rest of their run one slot right; removals shift it
//! back left (never past an entry's home). The table never wraps: a few spare slots
//! follow the last home, and the table grows when a run would pass them.
//!
//! Because the slots are in tag order, the entries after a ring point are found by
//! scanning forward from that point's home: the inventory needs no second index.
//! Keys and full ring points are not in the slots: callers compare them through the
//! location (the record holds the key). At most 90% of the home slots are used, so
//! an entry costs about 8 / 0.89 ≈ 9 bytes on average over growth (a sorted run is
//! short even at that load: a lookup reads one or two cache lines).

use std::ops::{Deref, DerefMut};

use memmap2::MmapMut;

/// Bits of the ring point kept in a slot.
const TAG_BITS: u32 = 27;
const LOCATION_BITS: u32 = 36;
const ACCESSED: u64 = 1 << LOCATION_BITS;
/// Largest location a slot can hold.
pub const MAX_LOCATION: u64 = (1 << LOCATION_BITS) - 1;
const MIN_HOMES: usize = 16;
/// The table grows past this load...
const MAX_LOAD: f64 = 0.94;
/// ...to this one, and shrinks back to it when it falls below [`MIN_LOAD`].
const TARGET_LOAD: f64 = 0.85;
const MIN_LOAD: f64 = 0.30;

/// The slot array, in a memory mapping of its own: when the table grows or
/// shrinks, the old array is unmapped at once instead of being kept by the
/// allocator for reuse (resident memory the store would not count).
struct Slots {
    map: MmapMut,
}

impl Slots {
    fn zeroed(len: usize) -> Self {
        // Anonymous mappings start zeroed: every slot empty.
        let map = MmapMut::map_anon(len * 8).expect("map memory for the store's index");
        Slots { map }
    }
}

impl Deref for Slots {
    type Target = [u64];

    fn deref(&self) -> &[u64] {
        // A mapping is page-aligned, so the cast cannot fail.
        bytemuck::cast_slice(&self.map)
    }
}

impl DerefMut for Slots {
    fn deref_mut(&mut self) -> &mut [u64] {
        bytemuck::cast_slice_mut(&mut self.map)
    }
}

/// The tag of a ring point.
pub fn tag_of(point: u64) -> u32 {
    (point >> (64 - TAG_BITS)) as u32
}

/// The sorted open-addressing table; see the module docs.
pub struct Index {
    slots: Slots,
    homes: usize,
    len: usize,
}

impl Default for Index {
    fn default() -> Self {
        Index::with_homes(MIN_HOMES)
    }
}

impl Index {
    fn with_homes(homes: usize) -> Self {
        let spare = (homes / 16).clamp(8, 1024);
        Index {
            slots: Slots::zeroed(homes + spare),
            homes,
            len: 0,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Memory the slots take (whole pages).
    pub fn bytes(&self) -> usize {
        self.slots.map.len().div_ceil(4096) * 4096
    }

    fn home(&self, tag: u32) -> usize {
        ((u64::from(tag) * self.homes as u64) >> TAG_BITS) as usize
    }

    /// The slot position and location of the entry with `tag` for which `is_it`
    /// says yes, if any.
    pub fn find(&self, tag: u32, mut is_it: impl FnMut(u64) -> bool) -> Option<(usize, u64)> {
        for position in self.home(tag)..self.slots.len() {
            let slot = self.slots[position];
            if slot == 0 || slot_tag(slot) > tag {
                return None;
            }
            if slot_tag(slot) == tag && is_it(slot_location(slot)) {
                return Some((position, slot_location(slot)));
            }
        }
        None
    }

    /// Adds an entry (the caller has checked its key is not present).
    pub fn insert(&mut self, tag: u32, location: u64) {
        debug_assert!(location != 0 && location <= MAX_LOCATION);
        if (self.len + 1) as f64 > self.homes as f64 * MAX_LOAD {
            self.resize_for(self.len + 1);
        }
        loop {
            let mut position = self.home(tag);
            while position < self.slots.len()
                && self.slots[position] != 0
                && slot_tag(self.slots[position]) <= tag
            {
                position += 1;
            }
            let Some(empty) = (position..self.slots.len()).find(|&at| self.slots[at] == 0) else {
                // The run reaches the end of the spare slots: make the table larger.
                self.resize_to(self.homes + self.homes / 4 + MIN_HOMES);
                continue;
            };
            self.slots.copy_within(position..empty, position + 1);
            self.slots[position] = make_slot(tag, location);
            self.len += 1;
            return;
        }
    }

    /// Marks the entry at `position` read.
    pub fn mark_accessed(&mut self, position: usize) {
        self.slots[position] |= ACCESSED;
    }

    /// Whether the entry at `position` was read since it was written or last asked.
    pub fn was_accessed(&self, position: usize) -> bool {
        self.slots[position] & ACCESSED != 0
    }

    /// Points the entry at `position` (from [`find`](Self::find)) at a new location,
    /// not yet read.
    pub fn relocate(&mut self, position: usize, location: u64) {
        debug_assert!(self.slots[position] != 0 && location != 0);
        self.slots[position] = make_slot(slot_tag(self.slots[position]), location);
    }

    /// Removes the entry at `position` (from [`find`](Self::find)).
    pub fn remove(&mut self, position: usize) {
        debug_assert!(self.slots[position] != 0);
        let mut hole = position;
        while let Some(&next) = self.slots.get(hole + 1) {
            // An entry already at its home cannot move left; nor can any after it.
            if next == 0 || self.home(slot_tag(next)) > hole {
                break;
            }
            self.slots[hole] = next;
            hole += 1;
        }
        self.slots[hole] = 0;
        self.len -= 1;
    }

    /// Shrinks the table when it is mostly empty (after evictions or expiries).
    pub fn shrink_if_sparse(&mut self) {
        if self.homes > MIN_HOMES && (self.len as f64) < self.homes as f64 * MIN_LOAD {
            self.resize_for(self.len);
        }
    }

    /// Locations of the entries whose tag is `tag` or more, in tag order, until
    /// `visit` returns false. Entries with the same tag come in no particular order.
    pub fn scan_from(&self, tag: u32, mut visit: impl FnMut(u32, u64) -> bool) {
        for &slot in &self.slots[self.home(tag)..] {
            if slot != 0 && slot_tag(slot) >= tag && !visit(slot_tag(slot), slot_location(slot)) {
                return;
            }
        }
    }

    /// Removes every entry whose location `keep` says no to, in one pass over the
    /// table: for the rare case where the caller cannot say the entries' tags.
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        let mut position = 0;
        while position < self.slots.len() {
            let slot = self.slots[position];
            if slot != 0 && !keep(slot_location(slot)) {
                // The run shifts left into `position`: look at it again.
                self.remove(position);
            } else {
                position += 1;
            }
        }
    }

    /// Every location, in tag order.
    pub fn locations(&self) -> impl Iterator<Item = u64> + '_ {
        self.slots
            .iter()
            .filter(|&&slot| slot != 0)
            .map(|&slot| slot_location(slot))
    }

    fn resize_for(&mut self, entries: usize) {
        let homes = ((entries as f64 / TARGET_LOAD).ceil() as usize).max(MIN_HOMES);
        self.resize_to(homes);
    }

    /// Rebuilds the table with `homes` home slots. The old slots are already in tag
    /// order, so each entry goes at its new home or just after the previous one.
    fn resize_to(&mut self, homes: usize) {
        let mut homes = homes.max(MIN_HOMES);
        'rebuild: loop {
            let mut table = Index::with_homes(homes);
            let mut next_free = 0;
            for slot in self.slots.iter().copied().filter(|&slot| slot != 0) {
                let position = table.home(slot_tag(slot)).max(next_free);
                if position >= table.slots.len() {
                    homes += homes / 4 + MIN_HOMES;
                    continue 'rebuild;
                }
                table.slots[position] = slot;
                next_free = position + 1;
            }
            table.len = self.len;
            *self = table;
            return;
        }
    }

    /// Checks both invariants of the module docs (tests only).
    #[cfg(test)]
    pub fn check_invariants(&self) {
        let mut previous_tag = 0;
        let mut last_empty: Option<usize> = None;
        let mut count = 0;
        for (position, &slot) in self.slots.iter().enumerate() {
            if slot == 0 {
                last_empty = Some(position);
                continue;
            }
            count += 1;
            let tag = slot_tag(slot);
            assert!(tag >= previous_tag, "slot {position} out of tag order");
            previous_tag = tag;
            let home = self.home(tag);
            assert!(home <= position, "slot {position} before its home");
            assert!(
                last_empty.is_none_or(|empty| empty < home),
                "an empty slot between slot {position} and its home"
            );
        }
        assert_eq!(count, self.len);
    }
}

fn make_slot(tag: u32, location: u64) -> u64 {
    (u64::from(tag) << (LOCATION_BITS + 1)) | location
}

fn slot_tag(slot: u64) -> u32 {
    (slot >> (LOCATION_BITS + 1)) as u32
}

fn slot_location(slot: u64) -> u64 {
    slot & MAX_LOCATION
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A test "key" is its location; its ring point is derived from it.
    fn point_of(location: u64) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&location.to_le_bytes())
    }

    fn find(index: &Index, location: u64) -> Option<usize> {
        index
            .find(tag_of(point_of(location)), |held| held == location)
            .map(|(position, _)| position)
    }

    #[test]
    fn a_full_cycle_of_inserts_and_removals_keeps_every_entry_findable() {
        let mut index = Index::default();
        for location in 1..=20_000u64 {
            index.insert(tag_of(point_of(location)), location);
        }
        index.check_invariants();
        assert!(
            index.bytes() < 20_000 * 8 * 100 / 70,
            "{} bytes",
            index.bytes()
        );
        for location in 1..=20_000u64 {
            assert!(find(&index, location).is_some(), "{location}");
        }
        for location in (1..=20_000u64).filter(|location| location % 3 != 0) {
            let position = find(&index, location).unwrap();
            index.remove(position);
        }
        index.check_invariants();
        index.shrink_if_sparse();
        index.check_invariants();
        for location in 1..=20_000u64 {
            assert_eq!(find(&index, location).is_some(), location % 3 == 0);
        }
    }

    #[test]
    fn retain_keeps_exactly_what_it_is_told_to() {
        let mut index = Index::default();
        for location in 1..=5_000u64 {
            index.insert(tag_of(point_of(location)), location);
        }
        index.retain(|location| location % 7 != 0);
        index.check_invariants();
        for location in 1..=5_000u64 {
            assert_eq!(
                find(&index, location).is_some(),
                location % 7 != 0,
                "{location}"
            );
        }
    }

    #[test]
    fn equal_tags_are_told_apart_by_the_caller() {
        let mut index = Index::default();
        for location in 1..=50 {
            index.insert(7, location);
        }
        for location in 1..=50 {
            let (position, found) = index.find(7, |held| held == location).unwrap();
            assert_eq!(found, location);
            index.relocate(position, location + 1000);
        }
        assert!(index.find(7, |held| held == 3).is_none());
        assert!(index.find(7, |held| held == 1003).is_some());
        index.check_invariants();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        Remove(u64),
        Scan(u64),
    }

    proptest! {
        #[test]
        fn behaves_like_an_ordered_map(ops in proptest::collection::vec(
            prop_oneof![
                3 => (1u64..400).prop_map(Op::Insert),
                2 => (1u64..400).prop_map(Op::Remove),
                1 => any::<u64>().prop_map(Op::Scan),
            ],
            1..600,
        )) {
            let mut index = Index::default();
            // (tag, location) → present, the order the scan must give.
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(location) => {
                        let tag = tag_of(point_of(location));
                        if model.insert((tag, location), ()).is_none() {
                            index.insert(tag, location);
                        }
                    }
                    Op::Remove(location) => {
                        let tag = tag_of(point_of(location));
                        if model.remove(&(tag, location)).is_some() {
                            let position = find(&index, location).unwrap();
                            index.remove(position);
                        }
                        index.shrink_if_sparse();
                    }
                    Op::Scan(point) => {
                        let tag = tag_of(point);
                        let mut seen = Vec::new();
                        index.scan_from(tag, |tag, location| { seen.push((tag, location)); true });
                        seen.sort_unstable();
                        let expected: Vec<_> = model.range((tag, 0)..).map(|(&entry, _)| entry).collect();
                        prop_assert_eq!(seen, expected);
                    }
                }
                index.check_invariants();
                prop_assert_eq!(index.len(), model.len());
            }
            for &(_, location) in model.keys() {
                prop_assert!(find(&index, location).is_some());
            }
        }
    }
}
