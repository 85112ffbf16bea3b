//! Reed-Solomon coding of a value into `k` data + `m` parity shards and back.
//!
//! The value is zero-padded to `k * shard_len` and cut into `k` data shards; `m`
//! parity shards are computed from them. Any `k` of the `k + m` shards rebuild the
//! value. When all `k` data shards are present the value is their concatenation and
//! no decoding happens at all (the common, healthy read). `m = 0` needs no parity and
//! `k = 1` makes every shard a full copy: plain replication on the same code path.

use reed_solomon_erasure::galois_8::ReedSolomon;
use xxhash_rust::xxh3::xxh3_64;

use crate::frame::shard_len;
use crate::geometry::Geometry;

/// Why a value could not be encoded or rebuilt.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("invalid geometry: {0}")]
    Geometry(String),
    #[error("only {present} of the {needed} shards needed to rebuild the value are present")]
    TooFewShards { present: usize, needed: usize },
    #[error("shards have inconsistent lengths")]
    ShardLength,
    #[error("rebuilt value does not match its checksum")]
    ChecksumMismatch,
}

/// An encoder/decoder for one `(k, m)` geometry. Cheap to share behind an `Arc`.
pub struct Codec {
    data_shards: u8,
    parity_shards: u8,
    /// `None` when `m = 0`: there is no parity to compute or to rebuild from.
    reed_solomon: Option<ReedSolomon>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Codec({}+{})", self.data_shards, self.parity_shards)
    }
}

/// The checksum every frame carries of the whole original value.
pub fn value_checksum(value: &[u8]) -> u64 {
    xxh3_64(value)
}

impl Codec {
    /// A codec for `k` data and `m` parity shards (`k >= 1`, `k + m <= 255`).
    pub fn new(data_shards: u8, parity_shards: u8) -> Result<Codec, CodecError> {
        Geometry::new(data_shards, parity_shards)
            .map_err(|error| CodecError::Geometry(error.to_string()))?;
        let reed_solomon = match parity_shards {
            0 => None,
            _ => Some(
                ReedSolomon::new(data_shards.into(), parity_shards.into())
                    .map_err(|error| CodecError::Geometry(format!("{error:?}")))?,
            ),
        };
        Ok(Codec {
            data_shards,
            parity_shards,
            reed_solomon,
        })
    }

    pub fn geometry(&self) -> Geometry {
        Geometry {
            data_shards: self.data_shards,
            parity_shards: self.parity_shards,
        }
    }

    pub fn data_shards(&self) -> u8 {
        self.data_shards
    }

    pub fn parity_shards(&self) -> u8 {
        self.parity_shards
    }

    pub fn total_shards(&self) -> usize {
        usize::from(self.data_shards) + usize::from(self.parity_shards)
    }

    /// Splits `value` into `k + m` shards of equal length, data shards first.
    pub fn encode(&self, value: &[u8]) -> Vec<Vec<u8>> {
        let len = shard_len(value.len() as u64, self.data_shards);
        let mut shards: Vec<Vec<u8>> = (0..self.total_shards())
            .map(|index| {
                let start = (index * len).min(value.len());
                let end = ((index + 1) * len).min(value.len());
                let mut shard = Vec::with_capacity(len);
                if index < usize::from(self.data_shards) {
                    shard.extend_from_slice(&value[start..end]);
                }
                shard.resize(len, 0);
                shard
            })
            .collect();
        if let Some(reed_solomon) = &self.reed_solomon {
            // Cannot fail: the shard count and equal lengths are guaranteed above.
            reed_solomon
                .encode(&mut shards)
                .expect("equal-length shards of the codec's own geometry");
        }
        shards
    }

    /// Rebuilds a `value_len`-byte value from at least `k` of its shards (indexed by
    /// shard index; `None` for a missing one) and verifies it against `checksum`.
    pub fn decode(
        &self,
        mut shards: Vec<Option<Vec<u8>>>,
        value_len: u64,
        checksum: u64,
    ) -> Result<Vec<u8>, CodecError> {
        let needed = usize::from(self.data_shards);
        let expected_len = shard_len(value_len, self.data_shards);
        shards.resize(self.total_shards(), None);
        if shards
            .iter()
            .flatten()
            .any(|shard| shard.len() != expected_len)
        {
            return Err(CodecError::ShardLength);
        }
        let present = shards.iter().filter(|shard| shard.is_some()).count();
        if present < needed {
            return Err(CodecError::TooFewShards { present, needed });
        }
        let all_data_present = shards[..needed].iter().all(Option::is_some);
        if !all_data_present {
            let reed_solomon = self
                .reed_solomon
                .as_ref()
                .ok_or(CodecError::TooFewShards { present: 0, needed })?;
            reed_solomon
                .reconstruct_data(&mut shards)
                .map_err(|_| CodecError::TooFewShards { present, needed })?;
        }
        let mut value = Vec::with_capacity(expected_len * needed);
        for shard in shards.into_iter().take(needed).flatten() {
            value.extend_from_slice(&shard);
        }
        value.truncate(value_len as usize);
        if value_checksum(&value) != checksum {
            return Err(CodecError::ChecksumMismatch);
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip_without(codec: &Codec, value: &[u8], missing: &[usize]) -> Vec<u8> {
        let shards: Vec<Option<Vec<u8>>> = codec
            .encode(value)
            .into_iter()
            .enumerate()
            .map(|(index, shard)| (!missing.contains(&index)).then_some(shard))
            .collect();
        codec
            .decode(shards, value.len() as u64, value_checksum(value))
            .unwrap()
    }

    /// Every way of choosing which `m` shards are lost, for a small geometry.
    fn all_missing_sets(total: usize, lost: usize) -> Vec<Vec<usize>> {
        (0u32..(1 << total))
            .filter(|mask| mask.count_ones() as usize == lost)
            .map(|mask| (0..total).filter(|i| mask & (1 << i) != 0).collect())
            .collect()
    }

    #[test]
    fn round_trips_every_size_class_with_any_m_shards_missing() {
        let codec = Codec::new(3, 2).unwrap();
        let k = 3;
        for size in [0, 1, k - 1, k, k + 1, 1024, 1 << 20] {
            let value: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
            for missing in all_missing_sets(5, 2).iter().chain(&[vec![], vec![4]]) {
                assert_eq!(
                    round_trip_without(&codec, &value, missing),
                    value,
                    "size {size}, missing {missing:?}"
                );
            }
        }
    }

    #[test]
    fn too_many_missing_shards_is_an_error_not_garbage() {
        let codec = Codec::new(3, 2).unwrap();
        let value = b"cherry".to_vec();
        let mut shards: Vec<Option<Vec<u8>>> = codec.encode(&value).into_iter().map(Some).collect();
        shards[0] = None;
        shards[1] = None;
        shards[2] = None;
        assert_eq!(
            codec.decode(shards, 6, value_checksum(&value)),
            Err(CodecError::TooFewShards {
                present: 2,
                needed: 3
            })
        );
    }

    #[test]
    fn a_corrupted_shard_is_caught_by_the_value_checksum() {
        let codec = Codec::new(3, 2).unwrap();
        let value = vec![9u8; 3000];
        let mut shards: Vec<Option<Vec<u8>>> = codec.encode(&value).into_iter().map(Some).collect();
        shards[0] = None;
        shards[3].as_mut().unwrap()[10] ^= 0xff;
        assert_eq!(
            codec.decode(shards, 3000, value_checksum(&value)),
            Err(CodecError::ChecksumMismatch)
        );
    }

    #[test]
    fn replication_geometries_work() {
        let replicated = Codec::new(1, 2).unwrap();
        let value = b"three copies".to_vec();
        let shards = replicated.encode(&value);
        assert!(shards.iter().all(|shard| shard == &value));
        assert_eq!(round_trip_without(&replicated, &value, &[0, 1]), value);
        let no_parity = Codec::new(4, 0).unwrap();
        assert_eq!(round_trip_without(&no_parity, &value, &[]), value);
        assert!(Codec::new(0, 2).is_err());
        assert!(Codec::new(200, 100).is_err());
    }

    proptest! {
        #[test]
        fn random_values_survive_any_m_losses(
            value in proptest::collection::vec(any::<u8>(), 0..5000),
            k in 1u8..8,
            m in 0u8..4,
            loss_seed in any::<u64>(),
        ) {
            let codec = Codec::new(k, m).unwrap();
            let total = codec.total_shards();
            let mut missing = Vec::new();
            let mut seed = loss_seed;
            while missing.len() < usize::from(m) {
                let index = (seed % total as u64) as usize;
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                if !missing.contains(&index) {
                    missing.push(index);
                }
            }
            prop_assert_eq!(round_trip_without(&codec, &value, &missing), value);
        }
    }
}
