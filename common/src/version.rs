//! Value versions: a hybrid logical clock timestamp plus the writer's id.
//!
//! Versions are totally ordered (timestamp first, writer id as tie-break), so every
//! aux node and every reader agrees on which of two writes is the newer one. That
//! order is what makes last-writer-wins and the aux node's conditional put work
//! (ARCHITECTURE.md, invariant 2).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of the hybrid timestamp reserved for the logical counter below the
/// millisecond part: 65,536 versions per millisecond per writer before the clock
/// runs ahead of wall time.
const LOGICAL_BITS: u32 = 16;

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
/// faster clock moves past it.
#[derive(Debug)]
pub struct HybridClock {
    last: AtomicU64,
    writer: u64,
}

impl HybridClock {
    /// A clock for the writer `writer` (must differ between concurrent masters).
    pub fn new(writer: u64) -> Self {
        HybridClock {
            last: AtomicU64::new(0),
            writer,
        }
    }

    /// A clock with a random writer id.
    pub fn with_random_writer() -> Self {
        Self::new(rand::random())
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

    /// Moves the clock past a version seen from another writer.
    pub fn observe(&self, seen: Version) {
        self.last.fetch_max(seen.timestamp, Ordering::AcqRel);
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
        let clock = HybridClock::new(7);
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
    fn version_text_round_trips() {
        let version = HybridClock::new(0xdead_beef).next();
        let parsed: Version = version.to_string().parse().unwrap();
        assert_eq!(parsed, version);
        assert!("nonsense".parse::<Version>().is_err());
        assert!("12-zz".parse::<Version>().is_err());
    }
}
