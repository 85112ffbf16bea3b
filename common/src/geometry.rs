//! The erasure-coding geometry, `k` data shards + `m` parity shards: the one type
//! for it, used by frames, the codec, both nodes' flags, the aux `/health` answer
//! and the master's `/health` and `/cluster`.

use serde::{Deserialize, Serialize};

/// `k` data + `m` parity shards: any `k` of the `k + m` rebuild a value. `k = 1` is
/// plain `m + 1`-way replication on the same code path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Geometry {
    pub data_shards: u8,
    pub parity_shards: u8,
}

/// Why a `(k, m)` pair is not a geometry.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GeometryError {
    #[error("k (data shards) must be at least 1")]
    NoDataShards,
    #[error("k + m must be at most 255, not {0}")]
    TooManyShards(usize),
}

impl Geometry {
    /// `k` data and `m` parity shards, checked: `k >= 1`, `k + m <= 255` (a shard's
    /// index is one byte).
    pub fn new(data_shards: u8, parity_shards: u8) -> Result<Geometry, GeometryError> {
        let geometry = Geometry {
            data_shards,
            parity_shards,
        };
        match geometry.total() {
            _ if data_shards == 0 => Err(GeometryError::NoDataShards),
            total if total > 255 => Err(GeometryError::TooManyShards(total)),
            _ => Ok(geometry),
        }
    }

    /// `k + m`: how many shards, and so how many distinct owners, a value has.
    pub fn total(self) -> usize {
        usize::from(self.data_shards) + usize::from(self.parity_shards)
    }
}

/// `3+2`, as flags, logs and errors write it.
impl std::fmt::Display for Geometry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}+{}", self.data_shards, self.parity_shards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_geometry_needs_a_data_shard_and_at_most_255_shards() {
        assert_eq!(Geometry::new(3, 2).map(Geometry::total), Ok(5));
        assert_eq!(Geometry::new(1, 0).map(Geometry::total), Ok(1));
        assert_eq!(Geometry::new(0, 2), Err(GeometryError::NoDataShards));
        assert_eq!(
            Geometry::new(200, 56),
            Err(GeometryError::TooManyShards(256))
        );
        assert_eq!(Geometry::new(200, 55).map(Geometry::total), Ok(255));
        assert_eq!(Geometry::new(3, 2).unwrap().to_string(), "3+2");
    }

    #[test]
    fn serializes_as_the_two_counts() {
        let json = serde_json::to_string(&Geometry::new(3, 2).unwrap()).unwrap();
        assert_eq!(json, r#"{"data_shards":3,"parity_shards":2}"#);
    }
}
