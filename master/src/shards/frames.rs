//! Shard frames from the codec's side: a value into its `k + m` frames, any `k` of
//! them back into the value (verified against its checksum), the full set rebuilt
//! from a decoded value, and tombstones. The data path and repair both build frames
//! here, so every frame a master writes has the same shape.
//!
//! Frames carry their own geometry: shards written under another `k`/`m` (by a
//! cluster since reconfigured) decode and rebuild with a codec of their own. Reads
//! only ever pass frames of the master's own geometry (`data_path::read`); repair
//! may meet others.

use bytes::Bytes;
use shardcache_common::codec::{value_checksum, Codec, CodecError};
use shardcache_common::frame::ShardFrame;
use shardcache_common::geometry::Geometry;
use shardcache_common::version::Version;

/// The tombstone for shard `index` of `key` at `version`; a write's frames are
/// this plus the value's length, checksum and payload.
pub(crate) fn tombstone(
    key: &str,
    version: Version,
    index: usize,
    geometry: Geometry,
    expiry_ms: u64,
) -> ShardFrame {
    ShardFrame {
        key: key.to_owned(),
        version,
        tombstone: true,
        shard_index: index as u8,
        data_shards: geometry.data_shards,
        parity_shards: geometry.parity_shards,
        expiry_ms,
        value_len: 0,
        value_checksum: 0,
        payload: Bytes::new(),
    }
}

/// Every tombstone frame of a delete of `key` at `version`, encoded.
pub(crate) fn encoded_tombstones(
    key: &str,
    version: Version,
    geometry: Geometry,
    expiry_ms: u64,
) -> Vec<Bytes> {
    (0..geometry.total())
        .map(|index| tombstone(key, version, index, geometry, expiry_ms).encode())
        .collect()
}

/// The `k + m` encoded frames of `value` written under `key` at `version`.
pub(crate) fn encoded_value(
    codec: &Codec,
    key: &str,
    version: Version,
    value: &[u8],
    expiry_ms: u64,
) -> Vec<Bytes> {
    let checksum = value_checksum(value);
    codec
        .encode(value)
        .into_iter()
        .enumerate()
        .map(|(index, shard)| {
            ShardFrame {
                tombstone: false,
                value_len: value.len() as u64,
                value_checksum: checksum,
                payload: Bytes::from(shard),
                ..tombstone(key, version, index, codec.geometry(), expiry_ms)
            }
            .encode()
        })
        .collect()
}

/// All `k + m` frames of the write that `frames` (any `k` of its shards) and the
/// decoded `value` belong to, with the same version, expiry and checksum.
pub(crate) fn rebuild(
    codec: &Codec,
    frames: &[ShardFrame],
    value: &[u8],
) -> Result<Vec<ShardFrame>, CodecError> {
    let first = &frames[0];
    let shards = with_codec(codec, first, |codec| codec.encode(value))?;
    Ok(shards
        .into_iter()
        .enumerate()
        .map(|(index, shard)| ShardFrame {
            shard_index: index as u8,
            payload: Bytes::from(shard),
            ..first.clone()
        })
        .collect())
}

/// Decodes the value from `k` or more distinct shards of one write and verifies
/// its checksum.
pub(crate) fn decode(codec: &Codec, frames: &[ShardFrame]) -> Result<Vec<u8>, CodecError> {
    let first = &frames[0];
    with_codec(codec, first, |codec| {
        let mut shards = vec![None; codec.total_shards()];
        for frame in frames {
            if let Some(slot) = shards.get_mut(usize::from(frame.shard_index)) {
                *slot = Some(frame.payload.to_vec());
            }
        }
        codec.decode(shards, first.value_len, first.value_checksum)
    })?
}

/// Runs `work` with `codec`, or with a codec for `frame`'s geometry when it differs.
fn with_codec<R>(
    codec: &Codec,
    frame: &ShardFrame,
    work: impl FnOnce(&Codec) -> R,
) -> Result<R, CodecError> {
    if frame.geometry() == codec.geometry() {
        Ok(work(codec))
    } else {
        Ok(work(&Codec::new(frame.data_shards, frame.parity_shards)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_k_frames_decode_and_rebuild_the_full_set() {
        let codec = Codec::new(3, 2).unwrap();
        let version = Version {
            timestamp: 7,
            writer: 9,
        };
        let value = b"a value of some length, not a multiple of three".to_vec();
        let frames: Vec<ShardFrame> = encoded_value(&codec, "k", version, &value, 0)
            .into_iter()
            .map(|bytes| ShardFrame::decode(bytes).unwrap())
            .collect();
        assert_eq!(frames.len(), 5);
        let parity_and_one = [frames[4].clone(), frames[1].clone(), frames[3].clone()];
        assert_eq!(decode(&codec, &parity_and_one).unwrap(), value);
        assert_eq!(rebuild(&codec, &parity_and_one, &value).unwrap(), frames);
        // Frames of another geometry decode with their own codec.
        let other = Codec::new(2, 1).unwrap();
        let two_one: Vec<ShardFrame> = encoded_value(&other, "k", version, &value, 0)
            .into_iter()
            .map(|bytes| ShardFrame::decode(bytes).unwrap())
            .collect();
        assert_eq!(decode(&codec, &two_one[1..]).unwrap(), value);
    }

    #[test]
    fn tombstones_cover_every_index_with_no_payload() {
        let geometry = Geometry {
            data_shards: 3,
            parity_shards: 2,
        };
        let version = Version::default();
        let frames = encoded_tombstones("gone", version, geometry, 1_000);
        assert_eq!(frames.len(), 5);
        for (index, bytes) in frames.into_iter().enumerate() {
            let frame = ShardFrame::decode(bytes).unwrap();
            assert!(frame.tombstone && frame.payload.is_empty());
            assert_eq!(
                (frame.shard_index as usize, frame.expiry_ms),
                (index, 1_000)
            );
        }
    }
}
