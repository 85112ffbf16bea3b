//! Value versions: a hybrid logical clock timestamp plus the writer's id.
//!
//! Versions are totally ordered (timestamp first, writer id as tie-break), so every
//! aux node and every reader agrees on which of two writes is the newer one. That
//! order is what makes last-writer-wins and the aux node's conditional put work
//! (ARCHITECTURE.md, invariant 2).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bits of the hybrid timestamp reserved for the logical counter below the
/// millisecond part: 65,536 versions per millisecond per writer before the clock
/// runs ahead of wall time.
const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;

/// A totally ordered value version. Field order matters: the derived `Ord` compares
/// the timestamp first and the writer id only to break ties.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Hybrid timestamp: Unix milliseconds shifted left by 16, plus a logical counter.
    pub timestamp: u64,
    /// Identity of the master that made this version (random per process).
    pub writer: u64,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{:016x}", self.timestamp, self.writer)
    }
}

/// The text of a version could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("malformed version {0:?}: expected 16 hex digits, '-', 16 hex digits")]
pub struct ParseVersionError(String);

impl FromStr for Version {
    type Err = ParseVersionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || ParseVersionError(text.to_owned());
        let (timestamp, writer) = text.split_once('-').ok_or_else(malformed)?;
        Ok(Version {
            timestamp: u64::from_str_radix(timestamp, 16).map_err(|_| malformed())?,
            writer: u64::from_str_radix(writer, 16).map_err(|_| malformed())?,
        })
    }
}

/// Versions travel in JSON (inventory, membership) as their text form.
impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Hands out strictly increasing versions for one writer.
///
/// Each new timestamp is above both the wall clock and every timestamp this clock has
/// issued or [observed](HybridClock::observe), so versions stay monotonic when the
/// wall clock steps back and a master that sees a newer version from a peer with a
/// faster clock moves past it — but never more than `max_lead` past its own wall
/// clock because of a version it saw: a writer whose clock is far ahead cannot drag
/// every other writer's clock along (`--max-clock-skew`).
#[derive(Debug)]
pub struct HybridClock {
    last: AtomicU64,
    writer: u64,
    max_lead_ms: u64,
}

impl HybridClock {
    /// A clock for the writer `writer` (must differ between concurrent masters)
    /// that observed versions move at most `max_lead` ahead of the wall clock.
    pub fn new(writer: u64, max_lead: Duration) -> Self {
        HybridClock {
            last: AtomicU64::new(0),
            writer,
            max_lead_ms: max_lead.as_millis().try_into().unwrap_or(u64::MAX),
        }
    }

    /// A clock with a random writer id.
    pub fn with_random_writer(max_lead: Duration) -> Self {
        Self::new(rand::random(), max_lead)
    }

    /// The next version: strictly greater than any issued or observed before.
    pub fn next(&self) -> Version {
        let physical = crate::unix_millis() << LOGICAL_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let candidate = physical.max(last + 1);
            match self.last.compare_exchange_weak(
                last,
                candidate,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Version {
                        timestamp: candidate,
                        writer: self.writer,
                    }
                }
                Err(actual) => last = actual,
            }
        }
    }

    /// Moves the clock past a version seen from another writer, at most to
    /// `max_lead` ahead of the wall clock.
    pub fn observe(&self, seen: Version) {
        self.observe_at(seen, crate::unix_millis());
    }

    fn observe_at(&self, seen: Version, now_ms: u64) {
        let ceiling = now_ms
            .saturating_add(self.max_lead_ms)
            .min(u64::MAX >> LOGICAL_BITS)
            << LOGICAL_BITS
            | LOGICAL_MASK;
        self.last
            .fetch_max(seen.timestamp.min(ceiling), Ordering::AcqRel);
    }

    /// How far `version` is ahead of this node's wall clock at `now_ms`, in
    /// milliseconds (0 when it is not).
    pub fn lead_of(version: Version, now_ms: u64) -> u64 {
        (version.timestamp >> LOGICAL_BITS).saturating_sub(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_by_timestamp_then_writer() {
        let older = Version {
            timestamp: 5,
            writer: 9,
        };
        let newer = Version {
            timestamp: 6,
            writer: 1,
        };
        assert!(older < newer);
        let tie_break = Version {
            timestamp: 6,
            writer: 2,
        };
        assert!(newer < tie_break);
    }

    #[test]
    fn clock_is_strictly_monotonic_and_moves_past_observed_versions() {
        let clock = HybridClock::new(7, Duration::MAX);
        let mut previous = clock.next();
        for _ in 0..100_000 {
            let next = clock.next();
            assert!(next > previous);
            previous = next;
        }
        let from_the_future = Version {
            timestamp: previous.timestamp + (1 << 40),
            writer: 1,
        };
        clock.observe(from_the_future);
        assert!(clock.next() > from_the_future);
    }

    #[test]
    fn a_version_from_far_ahead_moves_the_clock_only_to_the_bound() {
        let clock = HybridClock::new(7, Duration::from_secs(1));
        let now_ms = crate::unix_millis();
        let thirty_seconds_ahead = Version {
            timestamp: (now_ms + 30_000) << LOGICAL_BITS,
            writer: 1,
        };
        clock.observe_at(thirty_seconds_ahead, now_ms);
        let next = clock.next();
        assert!(next < thirty_seconds_ahead);
        assert!(
            HybridClock::lead_of(next, now_ms) >= 1_000,
            "moved up to the bound"
        );
        assert!(
            HybridClock::lead_of(next, now_ms) <= 1_001,
            "and no further"
        );
        // Within the bound it still moves past what it saw.
        let half_a_second_ahead = Version {
            timestamp: (now_ms + 500) << LOGICAL_BITS,
            writer: 1,
        };
        let fresh = HybridClock::new(8, Duration::from_secs(1));
        fresh.observe_at(half_a_second_ahead, now_ms);
        assert!(fresh.next() > half_a_second_ahead);
        assert_eq!(HybridClock::lead_of(half_a_second_ahead, now_ms + 600), 0);
    }

    #[test]
    fn version_text_round_trips() {
        let version = HybridClock::new(0xdead_beef, Duration::ZERO).next();
        let parsed: Version = version.to_string().parse().unwrap();
        assert_eq!(parsed, version);
        assert!("nonsense".parse::<Version>().is_err());
        assert!("12-zz".parse::<Version>().is_err());
    }
}
