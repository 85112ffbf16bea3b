//! The stored form of one shard: a compact record appended to a segment.
//!
//! The wire frame ([`shardcache_common::frame`]) spends 62 bytes on its header and
//! trailer; a stored record spends 24 (32 with an expiry). It keeps every field a
//! frame carries, so [`RecordView::encode_frame`] gives back the frame that was
//! stored, byte for byte.
//!
//! ```text
//! offset  size  field (integers little-endian)
//!      0     4  checksum: low 32 bits of xxh3-64 of every byte after it
//!      4     2  shape id: (writer, k, m, shard index, tombstone, has expiry),
//!               interned in the store's [`Shapes`] table; u16::MAX: the shape
//!               follows inline (12 bytes: writer 8, k, m, shard index, flags)
//!      …     8  version timestamp
//!      …     8  xxh3-64 of the whole original value
//!      …    [8] expiry, Unix milliseconds (only when the shape has one)
//!      …   1-3  key length (LEB128)
//!      …   1-10 value length (LEB128); the payload is `shard_len(value length, k)`
//!               bytes, none for a tombstone
//!      …        key, then payload
//! ```
//!
//! Records are immutable once written: whether one is live, and whether it was read
//! since it was written, is the index's business. A record never crosses a segment
//! boundary and nothing in it points elsewhere, so a segment can be scanned record
//! by record and a record copied verbatim.

use std::collections::HashMap;

use shardcache_common::frame::{self, shard_len, FrameRef, ShardFrame};
use shardcache_common::version::Version;
use xxhash_rust::xxh3::xxh3_64;

const FLAG_TOMBSTONE: u8 = 1;
const FLAG_EXPIRES: u8 = 1 << 1;

const CHECKSUM_LEN: usize = 4;
const SHAPE_ID_LEN: usize = 2;
/// The shape id that says the shape follows inline.
const INLINE_SHAPE: u16 = u16::MAX;
const INLINE_SHAPE_LEN: usize = 12;

/// Bytes of a record besides its key and payload, for a key under 128 bytes, a
/// value under 128 bytes and no expiry: the per-shard cost the store adds to what
/// the user stored (plus its index slot).
pub const TYPICAL_HEADER_LEN: usize = CHECKSUM_LEN + SHAPE_ID_LEN + 8 + 8 + 1 + 1;

/// Everything about a shard that many shards share: who wrote it, in which
/// geometry, which index it is, and its kind. The store keeps each distinct shape
/// once and records name it by a 2-byte id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub writer: u64,
    pub data_shards: u8,
    pub parity_shards: u8,
    pub shard_index: u8,
    flags: u8,
}

impl Shape {
    fn of(frame: &ShardFrame) -> Self {
        let mut flags = 0;
        if frame.tombstone {
            flags |= FLAG_TOMBSTONE;
        }
        if frame.expiry_ms != 0 {
            flags |= FLAG_EXPIRES;
        }
        Shape {
            writer: frame.version.writer,
            data_shards: frame.data_shards,
            parity_shards: frame.parity_shards,
            shard_index: frame.shard_index,
            flags,
        }
    }

    pub fn is_tombstone(&self) -> bool {
        self.flags & FLAG_TOMBSTONE != 0
    }

    fn expires(&self) -> bool {
        self.flags & FLAG_EXPIRES != 0
    }
}

/// The interning table of [`Shape`]s. Masters pick a random writer id per process,
/// so it grows by a few dozen entries per master start; past `u16::MAX - 1` entries
/// new shapes are stored inline instead (12 bytes instead of 2).
#[derive(Default)]
pub struct Shapes {
    list: Vec<Shape>,
    ids: HashMap<Shape, u16>,
}

impl Shapes {
    fn id_of(&mut self, shape: Shape) -> Option<u16> {
        if let Some(&id) = self.ids.get(&shape) {
            return Some(id);
        }
        let id = u16::try_from(self.list.len())
            .ok()
            .filter(|&id| id != INLINE_SHAPE)?;
        self.list.push(shape);
        self.ids.insert(shape, id);
        Some(id)
    }

    fn get(&self, id: u16) -> Option<Shape> {
        self.list.get(usize::from(id)).copied()
    }
}

/// Appends the record of `frame` to `out`; returns its length.
pub fn append(frame: &ShardFrame, shapes: &mut Shapes, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    let shape = Shape::of(frame);
    out.extend_from_slice(&[0; CHECKSUM_LEN]);
    match shapes.id_of(shape) {
        Some(id) => out.extend_from_slice(&id.to_le_bytes()),
        None => {
            out.extend_from_slice(&INLINE_SHAPE.to_le_bytes());
            out.extend_from_slice(&shape.writer.to_le_bytes());
            out.extend_from_slice(&[
                shape.data_shards,
                shape.parity_shards,
                shape.shard_index,
                shape.flags,
            ]);
        }
    }
    out.extend_from_slice(&frame.version.timestamp.to_le_bytes());
    out.extend_from_slice(&frame.value_checksum.to_le_bytes());
    if shape.expires() {
        out.extend_from_slice(&frame.expiry_ms.to_le_bytes());
    }
    put_varint(out, frame.key.len() as u64);
    put_varint(out, frame.value_len);
    out.extend_from_slice(frame.key.as_bytes());
    out.extend_from_slice(&frame.payload);
    let checksum = checksum_of(&out[start..]);
    out[start..start + CHECKSUM_LEN].copy_from_slice(&checksum.to_le_bytes());
    out.len() - start
}

/// The length `frame`'s record will have (without the inline-shape case, which the
/// store meets only past 65,535 shapes and which adds 12 bytes).
pub fn len_of(frame: &ShardFrame) -> usize {
    TYPICAL_HEADER_LEN - 2
        + if frame.expiry_ms != 0 { 8 } else { 0 }
        + varint_len(frame.key.len() as u64)
        + varint_len(frame.value_len)
        + frame.key.len()
        + frame.payload.len()
}

fn checksum_of(record: &[u8]) -> u32 {
    xxh3_64(&record[CHECKSUM_LEN..]) as u32
}

/// A parsed record, borrowing its key and payload from the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub shape: Shape,
    pub timestamp: u64,
    pub value_checksum: u64,
    pub expiry_ms: u64,
    pub value_len: u64,
    pub key: &'a [u8],
    pub payload: &'a [u8],
    /// Length of the whole record.
    pub len: usize,
}

/// Why bytes in a segment could not be read as a record: always a bug or memory
/// corruption, since the store wrote them itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record runs past the end of its segment")]
    Truncated,
    #[error("record names a shape the store does not know")]
    UnknownShape,
    #[error("record checksum mismatch")]
    Checksum,
}

impl<'a> RecordView<'a> {
    /// Parses the record at the start of `bytes` (which may go on past it). Checks
    /// the structure only; [`verify`](Self::verify) checks the contents.
    pub fn parse(bytes: &'a [u8], shapes: &Shapes) -> Result<Self, RecordError> {
        let mut reader = Reader { bytes, at: 0 };
        reader.take(CHECKSUM_LEN)?;
        let raw = reader.take(SHAPE_ID_LEN)?;
        let shape = match u16::from_le_bytes([raw[0], raw[1]]) {
            INLINE_SHAPE => {
                let raw = reader.take(INLINE_SHAPE_LEN)?;
                Shape {
                    writer: u64::from_le_bytes(raw[..8].try_into().expect("8 bytes")),
                    data_shards: raw[8],
                    parity_shards: raw[9],
                    shard_index: raw[10],
                    flags: raw[11],
                }
            }
            id => shapes.get(id).ok_or(RecordError::UnknownShape)?,
        };
        let timestamp = reader.u64()?;
        let value_checksum = reader.u64()?;
        let expiry_ms = match shape.expires() {
            true => reader.u64()?,
            false => 0,
        };
        let key_len = usize::try_from(reader.varint()?).map_err(|_| RecordError::Truncated)?;
        let value_len = reader.varint()?;
        let payload_len = match shape.is_tombstone() {
            true => 0,
            false => shard_len(value_len, shape.data_shards),
        };
        let key = reader.take(key_len)?;
        let payload = reader.take(payload_len)?;
        Ok(RecordView {
            shape,
            timestamp,
            value_checksum,
            expiry_ms,
            value_len,
            key,
            payload,
            len: reader.at,
        })
    }

    /// Whether the stored bytes are the ones written (`record` is this record's bytes).
    pub fn verify(&self, record: &[u8]) -> Result<(), RecordError> {
        let stored = u32::from_le_bytes(record[..CHECKSUM_LEN].try_into().expect("4 bytes"));
        match stored == checksum_of(&record[..self.len]) {
            true => Ok(()),
            false => Err(RecordError::Checksum),
        }
    }

    pub fn version(&self) -> Version {
        Version {
            timestamp: self.timestamp,
            writer: self.shape.writer,
        }
    }

    pub fn is_tombstone(&self) -> bool {
        self.shape.is_tombstone()
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expiry_ms != 0 && self.expiry_ms <= now_ms
    }

    /// The key; records are written only from frames, whose keys are UTF-8.
    pub fn key_str(&self) -> &'a str {
        std::str::from_utf8(self.key).unwrap_or_default()
    }

    /// Appends the frame this record was made from to `out`, its expiry as a
    /// deadline on this node's clock (snapshots) or as the time left at a moment
    /// (answers to masters).
    pub fn encode_frame(&self, expiry: ExpiryForm, out: &mut Vec<u8>) {
        let expiry_ms = match expiry {
            ExpiryForm::Deadline => self.expiry_ms,
            ExpiryForm::TimeLeftAt(now_ms) => frame::time_left_until(self.expiry_ms, now_ms),
        };
        FrameRef {
            key: self.key,
            version: self.version(),
            tombstone: self.is_tombstone(),
            shard_index: self.shape.shard_index,
            data_shards: self.shape.data_shards,
            parity_shards: self.shape.parity_shards,
            expiry_ms,
            value_len: self.value_len,
            value_checksum: self.value_checksum,
            payload: self.payload,
        }
        .encode_into(out);
    }

    /// Length of [`encode_frame`](Self::encode_frame)'s output.
    pub fn frame_len(&self) -> usize {
        frame::encoded_len(self.key.len(), self.payload.len())
    }
}

/// How [`RecordView::encode_frame`] writes a frame's expiry (see `frame`'s docs).
#[derive(Clone, Copy, Debug)]
pub enum ExpiryForm {
    /// Unix milliseconds on this node's clock, as the store keeps it: snapshots.
    Deadline,
    /// Milliseconds left at the given Unix time: frames sent to masters.
    TimeLeftAt(u64),
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], RecordError> {
        let end = self.at.checked_add(len).ok_or(RecordError::Truncated)?;
        let taken = self.bytes.get(self.at..end).ok_or(RecordError::Truncated)?;
        self.at = end;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn varint(&mut self) -> Result<u64, RecordError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(RecordError::Truncated)
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_len(value: u64) -> usize {
    (64 - value.max(1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn frame(key: &str, value_len: u64, k: u8, expiry_ms: u64, tombstone: bool) -> ShardFrame {
        let payload_len = if tombstone {
            0
        } else {
            shard_len(value_len, k)
        };
        ShardFrame {
            key: key.to_owned(),
            version: Version {
                timestamp: 0x0102_0304_0506_0708,
                writer: 0xdead_beef,
            },
            tombstone,
            shard_index: 1,
            data_shards: k,
            parity_shards: 2,
            expiry_ms,
            value_len: if tombstone { 0 } else { value_len },
            value_checksum: 0x1122_3344_5566_7788,
            payload: Bytes::from((0..payload_len).map(|i| i as u8).collect::<Vec<u8>>()),
        }
    }

    fn round_trip(frame: &ShardFrame, shapes: &mut Shapes, expected_len: usize) {
        let mut segment = vec![0xee; 3];
        let written = append(frame, shapes, &mut segment);
        assert_eq!(written, segment.len() - 3);
        assert_eq!(written, expected_len);
        segment.extend_from_slice(b"next record");
        let view = RecordView::parse(&segment[3..], shapes).unwrap();
        assert_eq!(view.len, written);
        view.verify(&segment[3..]).unwrap();
        let mut encoded = Vec::new();
        view.encode_frame(ExpiryForm::Deadline, &mut encoded);
        assert_eq!(encoded.len(), view.frame_len());
        assert_eq!(
            Bytes::from(encoded),
            frame.encode(),
            "the stored frame comes back"
        );
    }

    #[test]
    fn records_give_back_their_frames() {
        let mut shapes = Shapes::default();
        for frame in [
            frame("k", 100, 3, 0, false),
            frame("k", 0, 3, 0, false),
            frame("ttl", 1000, 3, 1_700_000_000_000, false),
            frame("gone", 0, 3, 0, true),
            frame(&"long key ".repeat(40), 70_000, 1, 0, false),
            frame("🍒", 5, 4, 0, false),
        ] {
            round_trip(&frame, &mut shapes, len_of(&frame));
        }
        assert_eq!(
            shapes.list.len(),
            5,
            "one shape per writer, geometry and kind"
        );
    }

    #[test]
    fn a_small_untimed_record_costs_24_bytes_beyond_key_and_payload() {
        let frame = frame("sixteen-byte-key", 100, 3, 0, false);
        let mut out = Vec::new();
        let len = append(&frame, &mut Shapes::default(), &mut out);
        assert_eq!(len - 16 - 34, 24);
        assert_eq!(TYPICAL_HEADER_LEN, 24);
    }

    #[test]
    fn shapes_past_the_table_are_stored_inline() {
        let mut shapes = Shapes::default();
        let filler = Shape::of(&frame("k", 10, 3, 0, true));
        shapes.list = vec![filler; usize::from(INLINE_SHAPE)];
        let frame = frame("k", 10, 3, 0, false);
        round_trip(&frame, &mut shapes, len_of(&frame) + INLINE_SHAPE_LEN);
        assert_eq!(shapes.list.len(), usize::from(INLINE_SHAPE));
    }

    #[test]
    fn varints_round_trip_at_their_boundaries() {
        for value in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
            let mut reader = Reader { bytes: &out, at: 0 };
            assert_eq!(reader.varint().unwrap(), value);
        }
    }

    proptest! {
        #[test]
        fn any_flipped_bit_is_caught_or_fails_to_parse(
            value_len in 0u64..400,
            expires in proptest::option::of(1u64..u64::MAX),
            position_seed in any::<usize>(),
            bit in 0u8..8,
        ) {
            let mut shapes = Shapes::default();
            let mut out = Vec::new();
            append(&frame("some key", value_len, 3, expires.unwrap_or(0), false), &mut shapes, &mut out);
            // A second shape, so that a flipped shape id can name a known one.
            append(&frame("other", value_len, 3, 0, true), &mut shapes, &mut Vec::new());
            let position = position_seed % out.len();
            out[position] ^= 1 << bit;
            if let Ok(view) = RecordView::parse(&out, &shapes) {
                prop_assert!(view.verify(&out).is_err());
            }
        }

        #[test]
        fn parsing_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let mut shapes = Shapes::default();
            shapes.id_of(Shape::of(&frame("k", 10, 3, 0, false)));
            if let Ok(view) = RecordView::parse(&bytes, &shapes) {
                let _ = view.verify(&bytes);
            }
        }
    }
}
