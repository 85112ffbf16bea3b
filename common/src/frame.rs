//! The binary shard frame: the one format in which shards travel between master and
//! aux and in which aux nodes keep them.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "SCS1" (format version 1)
//!      4     1  flags: bit 0 = tombstone (a delete marker, no payload)
//!      5     1  shard index (0..k+m; data shards first)
//!      6     1  k, data shards
//!      7     1  m, parity shards
//!      8     8  version timestamp (big-endian, like every integer here)
//!     16     8  version writer id
//!     24     8  expiry (0 = never expires): between nodes, milliseconds left to live;
//!               in an aux node's store and snapshots, Unix milliseconds on its clock
//!     32     8  length of the original value in bytes
//!     40     8  xxh3-64 of the whole original value
//!     48     2  key length in bytes
//!     50     4  payload length in bytes
//!     54   key  key (UTF-8)
//!      …   len  payload: this shard's bytes
//!      …     8  xxh3-64 of every byte above (catches a corrupt or torn frame)
//! ```
//!
//! The header carries everything a reader needs to decide whether shards belong to
//! the same write (key + version) and to rebuild and verify the value without asking
//! anyone else (invariant 1: no torn or invented values).
//!
//! The expiry travels as a duration so that each aux node decides it on its own
//! clock: a writer whose clock is off can neither shorten nor stretch a TTL. The aux
//! API turns it into a deadline on arrival ([`deadline_from_time_left`]) and back
//! into time left when it serves the frame ([`time_left_until`]).

use bytes::{BufMut, Bytes};
use xxhash_rust::xxh3::xxh3_64;

use crate::geometry::Geometry;
use crate::version::Version;

const MAGIC: &[u8; 4] = b"SCS1";
const HEADER_LEN: usize = 54;
const TRAILER_LEN: usize = 8;
const FLAG_TOMBSTONE: u8 = 1;

/// Longest key a frame can carry (the key length field is 16 bits).
pub const MAX_KEY_BYTES: usize = u16::MAX as usize;

/// Length of each shard of a `value_len`-byte value split into `k` data shards:
/// the value is zero-padded to `k * shard_len`, and every shard is at least one byte
/// long so that an empty value still has shards to carry its header.
pub fn shard_len(value_len: u64, data_shards: u8) -> usize {
    let data_shards = u64::from(data_shards.max(1));
    value_len.div_ceil(data_shards).max(1) as usize
}

/// A received frame's time left to live (0 = never) as a deadline on this node's
/// clock.
pub fn deadline_from_time_left(time_left_ms: u64, now_ms: u64) -> u64 {
    if time_left_ms == 0 {
        0
    } else {
        now_ms.saturating_add(time_left_ms)
    }
}

/// A deadline on this node's clock (0 = never) as the time left to send: at least
/// one millisecond, since 0 would mean "never expires".
pub fn time_left_until(deadline_ms: u64, now_ms: u64) -> u64 {
    if deadline_ms == 0 {
        0
    } else {
        deadline_ms.saturating_sub(now_ms).max(1)
    }
}

/// One shard of one version of one key, or a tombstone for that key and version:
/// the fields of the wire format, over any key and payload storage. The one frame
/// type: a received or built frame owns its key and payload ([`ShardFrame`]); the
/// aux store encodes frames straight from its records ([`FrameRef`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame<Key, Payload> {
    pub key: Key,
    pub version: Version,
    pub tombstone: bool,
    pub shard_index: u8,
    pub data_shards: u8,
    pub parity_shards: u8,
    /// When the shard stops being served; 0 = never. Milliseconds left to live
    /// in a frame that travels between nodes, a deadline in Unix milliseconds on the
    /// aux node's own clock in its store and snapshots (module docs).
    pub expiry_ms: u64,
    pub value_len: u64,
    pub value_checksum: u64,
    pub payload: Payload,
}

/// A frame that owns its key and payload (the payload may share a received buffer).
pub type ShardFrame = Frame<String, Bytes>;

/// A frame over borrowed key and payload bytes, for encoders that keep those
/// elsewhere (the aux store keeps shards in its own compact form and builds the
/// wire frame only when one is read).
pub type FrameRef<'a> = Frame<&'a [u8], &'a [u8]>;

/// Why bytes could not be read as a shard frame.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame is {0} bytes, shorter than a frame header")]
    TooShort(usize),
    #[error("frame does not start with the shardcache magic")]
    BadMagic,
    #[error("frame length {actual} does not match its header ({expected} bytes)")]
    LengthMismatch { expected: usize, actual: usize },
    #[error("frame checksum mismatch: the frame is corrupt")]
    ChecksumMismatch,
    #[error("frame key is not UTF-8")]
    KeyNotUtf8,
    #[error("frame key is empty")]
    EmptyKey,
    #[error("frame geometry is invalid: {0}")]
    BadGeometry(&'static str),
}

impl ShardFrame {
    /// Whether a frame whose expiry is a deadline has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expiry_ms != 0 && self.expiry_ms <= now_ms
    }

    /// Serialises the frame in the wire format described in the module docs.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        Bytes::from(out)
    }

    /// Parses and verifies a frame. The payload shares `bytes`' buffer (no copy).
    pub fn decode(bytes: Bytes) -> Result<ShardFrame, FrameError> {
        if bytes.len() < HEADER_LEN + TRAILER_LEN {
            return Err(FrameError::TooShort(bytes.len()));
        }
        if &bytes[0..4] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        let key_len = usize::from(read_u16(&bytes, 48));
        let payload_len = read_u32(&bytes, 50) as usize;
        let expected = HEADER_LEN + key_len + payload_len + TRAILER_LEN;
        if bytes.len() != expected {
            return Err(FrameError::LengthMismatch {
                expected,
                actual: bytes.len(),
            });
        }
        let body_end = expected - TRAILER_LEN;
        if xxh3_64(&bytes[..body_end]) != read_u64(&bytes, body_end) {
            return Err(FrameError::ChecksumMismatch);
        }
        let key = std::str::from_utf8(&bytes[HEADER_LEN..HEADER_LEN + key_len])
            .map_err(|_| FrameError::KeyNotUtf8)?
            .to_owned();
        let frame = ShardFrame {
            key,
            version: Version {
                timestamp: read_u64(&bytes, 8),
                writer: read_u64(&bytes, 16),
            },
            tombstone: bytes[4] & FLAG_TOMBSTONE != 0,
            shard_index: bytes[5],
            data_shards: bytes[6],
            parity_shards: bytes[7],
            expiry_ms: read_u64(&bytes, 24),
            value_len: read_u64(&bytes, 32),
            value_checksum: read_u64(&bytes, 40),
            payload: bytes.slice(HEADER_LEN + key_len..body_end),
        };
        frame.check_geometry()?;
        Ok(frame)
    }

    /// A frame whose checksum is right can still describe an impossible shard (a bug
    /// in a writer); refuse those too rather than feed them to the decoder.
    fn check_geometry(&self) -> Result<(), FrameError> {
        if self.key.is_empty() {
            return Err(FrameError::EmptyKey);
        }
        if self.tombstone {
            return match self.payload.is_empty() {
                true => Ok(()),
                false => Err(FrameError::BadGeometry("tombstone with a payload")),
            };
        }
        if self.data_shards == 0 {
            return Err(FrameError::BadGeometry("zero data shards"));
        }
        let total = usize::from(self.data_shards) + usize::from(self.parity_shards);
        if total > 255 {
            return Err(FrameError::BadGeometry("more than 255 shards"));
        }
        if usize::from(self.shard_index) >= total {
            return Err(FrameError::BadGeometry("shard index out of range"));
        }
        if self.payload.len() != shard_len(self.value_len, self.data_shards) {
            return Err(FrameError::BadGeometry(
                "payload length does not match value length",
            ));
        }
        Ok(())
    }
}

/// Length of the encoded frame of a `key_len`-byte key and a `payload_len`-byte shard.
pub fn encoded_len(key_len: usize, payload_len: usize) -> usize {
    HEADER_LEN + key_len + payload_len + TRAILER_LEN
}

impl<Key: AsRef<[u8]>, Payload: AsRef<[u8]>> Frame<Key, Payload> {
    /// The geometry the frame claims (checked against its index on decode).
    pub fn geometry(&self) -> Geometry {
        Geometry {
            data_shards: self.data_shards,
            parity_shards: self.parity_shards,
        }
    }

    /// Length of the encoded frame.
    pub fn encoded_len(&self) -> usize {
        encoded_len(self.key.as_ref().len(), self.payload.as_ref().len())
    }

    /// Appends the frame to `out` in the wire format of the module docs: the one
    /// encoder of that format.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let (key, payload) = (self.key.as_ref(), self.payload.as_ref());
        debug_assert!(key.len() <= MAX_KEY_BYTES);
        let start = out.len();
        out.reserve(encoded_len(key.len(), payload.len()));
        out.put_slice(MAGIC);
        out.put_u8(if self.tombstone { FLAG_TOMBSTONE } else { 0 });
        out.put_u8(self.shard_index);
        out.put_u8(self.data_shards);
        out.put_u8(self.parity_shards);
        out.put_u64(self.version.timestamp);
        out.put_u64(self.version.writer);
        out.put_u64(self.expiry_ms);
        out.put_u64(self.value_len);
        out.put_u64(self.value_checksum);
        out.put_u16(key.len() as u16);
        out.put_u32(payload.len() as u32);
        out.put_slice(key);
        out.put_slice(payload);
        let checksum = xxh3_64(&out[start..]);
        out.put_u64(checksum);
    }
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// The big-endian `u32` at `at` (the caller has checked the length).
pub fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(raw)
}

/// The big-endian `u64` at `at` (the caller has checked the length).
pub fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_frame(key: String, payload: Vec<u8>, k: u8, m: u8, index: u8) -> ShardFrame {
        let value_len = payload.len() as u64 * u64::from(k);
        ShardFrame {
            key,
            version: Version {
                timestamp: 0x0123_4567_89ab_cdef,
                writer: 42,
            },
            tombstone: false,
            shard_index: index,
            data_shards: k,
            parity_shards: m,
            expiry_ms: 1_700_000_000_000,
            value_len,
            value_checksum: 0xfeed,
            payload: Bytes::from(payload),
        }
    }

    proptest! {
        #[test]
        fn frames_round_trip(
            key in "\\PC{1,40}",
            payload in proptest::collection::vec(any::<u8>(), 1..2000),
            k in 1u8..10,
            m in 0u8..5,
            index_seed in any::<u8>(),
        ) {
            let index = index_seed % (k + m);
            let frame = sample_frame(key, payload, k, m, index);
            let decoded = ShardFrame::decode(frame.encode()).unwrap();
            prop_assert_eq!(decoded, frame);
        }

        #[test]
        fn any_flipped_bit_is_rejected(
            payload in proptest::collection::vec(any::<u8>(), 1..300),
            position_seed in any::<usize>(),
            bit in 0u8..8,
        ) {
            let encoded = sample_frame("fruit".into(), payload, 3, 2, 4).encode();
            let mut corrupt = encoded.to_vec();
            let position = position_seed % corrupt.len();
            corrupt[position] ^= 1 << bit;
            prop_assert!(ShardFrame::decode(Bytes::from(corrupt)).is_err());
        }

        #[test]
        fn any_truncation_is_rejected(cut_seed in any::<usize>()) {
            let encoded = sample_frame("fruit".into(), vec![7; 100], 3, 2, 1).encode();
            let cut = cut_seed % encoded.len();
            prop_assert!(ShardFrame::decode(encoded.slice(..cut)).is_err());
        }
    }

    #[test]
    fn tombstones_round_trip() {
        let mut frame = sample_frame("gone".into(), vec![], 3, 2, 0);
        frame.tombstone = true;
        frame.value_len = 0;
        assert_eq!(ShardFrame::decode(frame.encode()).unwrap(), frame);
    }

    #[test]
    fn impossible_geometry_is_rejected_even_with_a_valid_checksum() {
        let out_of_range = sample_frame("k".into(), vec![1; 4], 3, 2, 5);
        assert_eq!(
            ShardFrame::decode(out_of_range.encode()),
            Err(FrameError::BadGeometry("shard index out of range"))
        );
        let mut wrong_length = sample_frame("k".into(), vec![1; 4], 3, 2, 0);
        wrong_length.value_len = 100;
        assert!(matches!(
            ShardFrame::decode(wrong_length.encode()),
            Err(FrameError::BadGeometry(_))
        ));
        let empty_key = sample_frame(String::new(), vec![1; 4], 3, 2, 0);
        assert_eq!(
            ShardFrame::decode(empty_key.encode()),
            Err(FrameError::EmptyKey)
        );
    }

    #[test]
    fn expiry_travels_as_time_left_and_is_kept_as_a_deadline() {
        // (time left sent, receiver's clock, deadline kept, time left when served at +400 ms)
        for (sent, now, deadline, served) in [
            (0, 1_000, 0, 0), // never expires, on both sides
            (5_000, 1_000, 6_000, 4_600),
            (300, 1_000, 1_300, 1), // served after its deadline: 1 ms, never "0 = never"
            (u64::MAX, 1_000, u64::MAX, u64::MAX - 1_400),
        ] {
            assert_eq!(
                deadline_from_time_left(sent, now),
                deadline,
                "{sent} at {now}"
            );
            assert_eq!(time_left_until(deadline, now + 400), served, "{deadline}");
        }
    }

    #[test]
    fn expiry_zero_means_never() {
        let mut frame = sample_frame("k".into(), vec![1], 1, 0, 0);
        frame.expiry_ms = 0;
        assert!(!frame.is_expired(u64::MAX));
        frame.expiry_ms = 10;
        assert!(!frame.is_expired(9));
        assert!(frame.is_expired(10));
    }
}
