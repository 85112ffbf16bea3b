//! The eviction policy's decisions, as pure functions, and its ghost queue.
//!
//! **S3-FIFO** (Yang et al., SOSP 2023) at segment granularity, the default: new
//! shards are appended to the *small* queue's segments (about a fifth of the
//! capacity; the paper has a tenth, which left more dead shards here); when the
//! store needs room and the small queue is over its share, its oldest segment is
//! emptied: shards read since they were written there move to the
//! *main* queue, the others are dropped and their key's hash is remembered in the
//! *ghost* queue. A shard whose key is in the ghost (it was dropped from the small
//! queue a short while ago, and is written again: cache-aside writes after a miss)
//! goes straight to the main queue, and so does a new version of a shard held in
//! the main queue. The main queue is a segment CLOCK: its oldest segment's shards
//! read since they were moved or written there get a second chance (up to half a
//! segment), the rest are dropped. So a key requested once (a one-hit wonder, a
//! scan) costs at most a trip through the small queue, and never pushes out shards
//! that were read twice.
//!
//! **FIFO** (`--eviction-policy fifo`, the policy before S3-FIFO): one queue, the
//! main queue's CLOCK alone.
//!
//! The ghost is a direct-mapped table of 16-bit fingerprints of ring points, a
//! fixed 1/128 of the capacity (counted in the store's bytes): inserting overwrites
//! whatever was in the slot, which ages it out like a FIFO would, at random. A false
//! hit (1 in 65,536 per lookup) only admits a shard to the main queue.

use serde::{Deserialize, Serialize};

use super::Emptying;

/// Share of the capacity the small queue may hold before it is evicted from first.
pub const SMALL_SHARE: f64 = 0.20;
/// Share of the capacity the ghost table takes.
const GHOST_DIVISOR: u64 = 128;

/// The eviction policies the store implements (`--eviction-policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Small, main and ghost queues (SOSP 2023): shards must be read once to stay.
    #[default]
    S3Fifo,
    /// One FIFO of segments with a second chance for shards read since written.
    Fifo,
}

/// The queue a segment (and every record in it) belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    Small,
    Main,
}

/// What emptying a segment does with one of its live records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Dropped (expired, or evicted from the main queue).
    Drop,
    /// Evicted from the small queue unread: dropped, its key remembered.
    DropToGhost,
    /// Appended to the open segment of this queue.
    MoveTo(Queue),
}

/// The queue whose oldest segment is emptied to make room, given the bytes each
/// holds: the small one while it is over its share (or the main one is empty).
pub fn victim(policy: Policy, small_bytes: usize, main_bytes: usize, capacity: u64) -> Queue {
    match policy {
        Policy::Fifo => Queue::Main,
        Policy::S3Fifo if small_bytes == 0 => Queue::Main,
        Policy::S3Fifo if main_bytes == 0 => Queue::Small,
        Policy::S3Fifo if small_bytes as f64 > capacity as f64 * SMALL_SHARE => Queue::Small,
        Policy::S3Fifo => Queue::Main,
    }
}

/// The queue a record being written joins: `held` is the queue of the key's record
/// it replaces, if any; `ghost_hit` whether the key was in the ghost.
pub fn admit(policy: Policy, held: Option<Queue>, ghost_hit: bool) -> Queue {
    match policy {
        Policy::Fifo => Queue::Main,
        Policy::S3Fifo if ghost_hit || held == Some(Queue::Main) => Queue::Main,
        Policy::S3Fifo => Queue::Small,
    }
}

/// What happens to a live record of a segment of `from` being emptied. `accessed`:
/// read since written or moved; `within_budget`: the main queue's second chances
/// for this segment still have room for it.
pub fn fate(
    from: Queue,
    how: Emptying,
    accessed: bool,
    expired: bool,
    within_budget: bool,
) -> Fate {
    match (how, from) {
        _ if expired => Fate::Drop,
        (Emptying::Compact, _) => Fate::MoveTo(from),
        (Emptying::Evict, Queue::Small) if accessed => Fate::MoveTo(Queue::Main),
        (Emptying::Evict, Queue::Small) => Fate::DropToGhost,
        (Emptying::Evict, Queue::Main) if accessed && within_budget => Fate::MoveTo(Queue::Main),
        (Emptying::Evict, Queue::Main) => Fate::Drop,
    }
}

/// Recently evicted keys (see the module docs).
pub struct Ghost {
    slots: Vec<u16>,
}

impl Ghost {
    /// A ghost of 1/128 of `capacity` for S3-FIFO; none for FIFO.
    pub fn for_capacity(capacity: u64, policy: Policy) -> Ghost {
        let len = match policy {
            Policy::S3Fifo => (capacity / GHOST_DIVISOR / 2) as usize,
            Policy::Fifo => 0,
        };
        Ghost {
            slots: vec![0; len],
        }
    }

    pub fn bytes(&self) -> usize {
        self.slots.len() * 2
    }

    /// The slot and (never zero) fingerprint of a ring point.
    fn place(&self, point: u64) -> Option<(usize, u16)> {
        if self.slots.is_empty() {
            return None;
        }
        let slot = ((point & 0xffff_ffff) * self.slots.len() as u64) >> 32;
        let fingerprint = ((point >> 48) as u16).max(1);
        Some((slot as usize, fingerprint))
    }

    pub fn insert(&mut self, point: u64) {
        if let Some((slot, fingerprint)) = self.place(point) {
            self.slots[slot] = fingerprint;
        }
    }

    /// Whether `point` was in the ghost; it is not any more.
    pub fn take(&mut self, point: u64) -> bool {
        match self.place(point) {
            Some((slot, fingerprint)) if self.slots[slot] == fingerprint => {
                self.slots[slot] = 0;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Queue::{Main, Small};

    #[test]
    fn the_small_queue_is_evicted_from_while_over_its_share() {
        let capacity = 1000;
        let cases = [
            // (policy, small bytes, main bytes, victim)
            (Policy::S3Fifo, 201, 700, Small),
            (Policy::S3Fifo, 200, 700, Main),
            (Policy::S3Fifo, 50, 0, Small),
            (Policy::S3Fifo, 0, 900, Main),
            (Policy::S3Fifo, 0, 0, Main),
            (Policy::Fifo, 900, 0, Main),
            (Policy::Fifo, 0, 900, Main),
        ];
        for (policy, small, main, expected) in cases {
            assert_eq!(
                victim(policy, small, main, capacity),
                expected,
                "{policy:?} small {small} main {main}"
            );
        }
    }

    #[test]
    fn only_keys_seen_before_skip_the_small_queue() {
        let cases = [
            // (policy, held, ghost hit, queue)
            (Policy::S3Fifo, None, false, Small),
            (Policy::S3Fifo, None, true, Main),
            (Policy::S3Fifo, Some(Small), false, Small),
            (Policy::S3Fifo, Some(Small), true, Main),
            (Policy::S3Fifo, Some(Main), false, Main),
            (Policy::Fifo, None, false, Main),
            (Policy::Fifo, Some(Small), false, Main),
        ];
        for (policy, held, ghost_hit, expected) in cases {
            assert_eq!(
                admit(policy, held, ghost_hit),
                expected,
                "{policy:?} held {held:?} ghost {ghost_hit}"
            );
        }
    }

    #[test]
    fn read_shards_are_promoted_unread_ones_leave_a_ghost() {
        use Emptying::{Compact, Evict};
        let cases = [
            // (from, how, accessed, expired, within budget, fate)
            (Small, Evict, true, false, false, Fate::MoveTo(Main)),
            (Small, Evict, false, false, true, Fate::DropToGhost),
            (Small, Evict, true, true, true, Fate::Drop),
            (Main, Evict, true, false, true, Fate::MoveTo(Main)),
            (Main, Evict, true, false, false, Fate::Drop),
            (Main, Evict, false, false, true, Fate::Drop),
            (Small, Compact, false, false, false, Fate::MoveTo(Small)),
            (Main, Compact, false, false, false, Fate::MoveTo(Main)),
            (Main, Compact, true, true, true, Fate::Drop),
        ];
        for (from, how, accessed, expired, budget, expected) in cases {
            assert_eq!(
                fate(from, how, accessed, expired, budget),
                expected,
                "{from:?} {how:?} accessed {accessed} expired {expired} budget {budget}"
            );
        }
    }

    #[test]
    fn the_ghost_remembers_until_overwritten_or_taken() {
        let mut ghost = Ghost::for_capacity(64 * 1024, Policy::S3Fifo);
        assert_eq!(ghost.bytes(), 512);
        let point = 0x1234_5678_9abc_def0;
        assert!(!ghost.take(point));
        ghost.insert(point);
        // Same slot, another fingerprint: not a hit.
        assert!(!ghost.take(point ^ (1 << 60)));
        assert!(ghost.take(point));
        assert!(!ghost.take(point), "taken once");
        ghost.insert(point);
        ghost.insert(point ^ (1 << 60)); // overwrites the slot
        assert!(!ghost.take(point));
        let mut none = Ghost::for_capacity(64 * 1024, Policy::Fifo);
        none.insert(point);
        assert!(!none.take(point));
        assert_eq!(none.bytes(), 0);
    }
}
