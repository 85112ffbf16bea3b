//! Human-friendly configuration values: byte sizes (`256MiB`) and durations (`500ms`).
//!
//! Both parse from the strings operators type on the command line or in environment
//! variables and print back in the same form, so defaults read naturally in `--help`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A number of bytes, written `1024`, `64KiB`, `256MiB`, `2GiB` (or `KB`/`MB`/`GB`
/// in powers of 1000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

const BYTE_UNITS: &[(&str, u64)] = &[
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("kB", 1_000),
    ("B", 1),
];

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (number, multiplier) = BYTE_UNITS
            .iter()
            .find_map(|(suffix, multiplier)| {
                text.strip_suffix(suffix)
                    .map(|number| (number, *multiplier))
            })
            .unwrap_or((text, 1));
        let number: u64 = number.trim().parse().map_err(|_| {
            format!("invalid size {text:?}: expected a whole number with an optional unit (B, KiB, MiB, GiB, KB, MB, GB), e.g. 256MiB")
        })?;
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (suffix, multiplier) in &BYTE_UNITS[..3] {
            if self.0 >= *multiplier && self.0.is_multiple_of(*multiplier) {
                return write!(f, "{}{suffix}", self.0 / multiplier);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// A duration, written `250ms`, `2s`, `5m` or `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

const DURATION_UNITS: &[(&str, u64)] = &[("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)];

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let invalid = || format!("invalid duration {text:?}: expected e.g. 250ms, 2s, 5m or 1h");
        let (number, millis) = DURATION_UNITS
            .iter()
            .find_map(|(suffix, millis)| text.strip_suffix(suffix).map(|n| (n, *millis)))
            .ok_or_else(invalid)?;
        let number: u64 = number.trim().parse().map_err(|_| invalid())?;
        let total = number.checked_mul(millis).ok_or_else(invalid)?;
        Ok(HumanDuration(Duration::from_millis(total)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis() as u64;
        for (suffix, unit) in DURATION_UNITS.iter().rev() {
            if millis >= *unit && millis.is_multiple_of(*unit) {
                return write!(f, "{}{suffix}", millis / unit);
            }
        }
        write!(f, "{millis}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!("256MiB".parse::<ByteSize>().unwrap().bytes(), 256 << 20);
        assert_eq!("1024".parse::<ByteSize>().unwrap().bytes(), 1024);
        assert_eq!("2 GiB".parse::<ByteSize>().unwrap().bytes(), 2 << 30);
        assert_eq!("5KB".parse::<ByteSize>().unwrap().bytes(), 5000);
        assert_eq!(ByteSize(256 << 20).to_string(), "256MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
        for bad in ["", "lots", "12XB", "-5MiB", "99999999999999999999GiB"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            "2s".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(2)
        );
        assert_eq!(
            "5m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(300)
        );
        assert_eq!(HumanDuration(Duration::from_secs(3600)).to_string(), "1h");
        assert_eq!(
            HumanDuration(Duration::from_millis(1500)).to_string(),
            "1500ms"
        );
        for bad in ["", "5", "fast", "1.5s"] {
            assert!(
                bad.parse::<HumanDuration>().is_err(),
                "{bad} should not parse"
            );
        }
    }
}
