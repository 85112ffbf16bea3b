//! The multi-put exchange: a master stores many shard frames on one aux node in one
//! HTTP request (`POST /v1/multi-put`), the write-side twin of `multi_get`, so that
//! under load a hop's fixed cost is paid once per batch. Each frame is stored (or
//! refused) exactly as a single `PUT /v1/shards` would, and gets its own answer.
//!
//! ```text
//! request body                      response body (200)
//!   4  frame count n (big-endian)     4  answer count n (as many as frames sent)
//!   n times:                          n times, in the order of the frames:
//!     4  frame length f                 1  0 stored | 1 superseded | 2 refused
//!     f  the shard frame                   superseded: 8 timestamp, 8 writer of
//!                                                      the newer version held
//!                                          refused:    2 HTTP status a single put
//!                                                      would have answered,
//!                                                      4 reason length, reason
//! ```
//!
//! A request carries at most [`MAX_FRAMES`] frames; the aux node answers 400 to more
//! (and 413 to a body over its `--max-request-size`). Decoding checks every length
//! against the bytes present and never panics.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::read_u64;
use crate::multi_get::{expect_end, read_count, read_item, COUNT_LEN, LENGTH_PREFIX_LEN};
use crate::version::Version;

/// Most frames one multi-put may carry (invariant 5: every batch has a limit).
pub const MAX_FRAMES: usize = 1024;

const STORED: u8 = 0;
const SUPERSEDED: u8 = 1;
const REFUSED: u8 = 2;

/// What became of one frame of a multi-put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutAnswer {
    /// Stored, or already held at exactly this version.
    Stored,
    /// The node holds this newer version of the key and kept it.
    Superseded(Version),
    /// Not stored, with the status and reason a single put would have answered.
    Refused { status: u16, reason: String },
}

/// Encodes the request body carrying `frames`.
pub fn encode_request(frames: &[Bytes]) -> Bytes {
    let size = COUNT_LEN
        + frames
            .iter()
            .map(|frame| LENGTH_PREFIX_LEN + frame.len())
            .sum::<usize>();
    let mut body = BytesMut::with_capacity(size);
    body.put_u32(frames.len() as u32);
    for frame in frames {
        body.put_u32(frame.len() as u32);
        body.put_slice(frame);
    }
    body.freeze()
}

/// The frames a request body carries, each a slice of `body` (no copy), or why it
/// is malformed. The frames themselves are checked when they are decoded.
pub fn decode_request(body: &Bytes) -> Result<Vec<Bytes>, String> {
    let (count, mut at) = read_count(body)?;
    if count > MAX_FRAMES {
        return Err(format!(
            "a multi-put carries at most {MAX_FRAMES} frames, this one {count}"
        ));
    }
    let mut frames = Vec::with_capacity(count);
    for index in 0..count {
        let start = at + LENGTH_PREFIX_LEN;
        let len = read_item(body, &mut at, index, count)?.len();
        frames.push(body.slice(start..start + len));
    }
    expect_end(body, at)?;
    Ok(frames)
}

/// Encodes the answers, one per frame sent, in the order sent.
pub fn encode_response(answers: &[PutAnswer]) -> Bytes {
    let mut body = BytesMut::with_capacity(COUNT_LEN + answers.len() * 17);
    body.put_u32(answers.len() as u32);
    for answer in answers {
        match answer {
            PutAnswer::Stored => body.put_u8(STORED),
            PutAnswer::Superseded(held) => {
                body.put_u8(SUPERSEDED);
                body.put_u64(held.timestamp);
                body.put_u64(held.writer);
            }
            PutAnswer::Refused { status, reason } => {
                body.put_u8(REFUSED);
                body.put_u16(*status);
                body.put_u32(reason.len() as u32);
                body.put_slice(reason.as_bytes());
            }
        }
    }
    body.freeze()
}

/// The answers in a response body to a request that carried `sent` frames, or why
/// the body is malformed.
pub fn decode_response(body: &[u8], sent: usize) -> Result<Vec<PutAnswer>, String> {
    let (count, mut at) = read_count(body)?;
    if count != sent {
        return Err(format!("{count} answers to {sent} frames"));
    }
    let truncated = |index: usize| format!("truncated: answer {index} of {count}");
    let mut answers = Vec::with_capacity(count);
    for index in 0..count {
        let code = *body.get(at).ok_or_else(|| truncated(index))?;
        at += 1;
        let answer = match code {
            STORED => PutAnswer::Stored,
            SUPERSEDED => {
                if body.len() - at < 16 {
                    return Err(truncated(index));
                }
                let held = Version {
                    timestamp: read_u64(body, at),
                    writer: read_u64(body, at + 8),
                };
                at += 16;
                PutAnswer::Superseded(held)
            }
            REFUSED => {
                if body.len() - at < 2 {
                    return Err(truncated(index));
                }
                let status = u16::from_be_bytes([body[at], body[at + 1]]);
                at += 2;
                let reason = read_item(body, &mut at, index, count)?;
                PutAnswer::Refused {
                    status,
                    reason: String::from_utf8_lossy(reason).into_owned(),
                }
            }
            other => return Err(format!("answer {index} has unknown code {other}")),
        };
        answers.push(answer);
    }
    expect_end(body, at)?;
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers() -> Vec<PutAnswer> {
        vec![
            PutAnswer::Stored,
            PutAnswer::Superseded(Version {
                timestamp: 9,
                writer: 3,
            }),
            PutAnswer::Refused {
                status: 400,
                reason: "frame checksum mismatch".into(),
            },
            PutAnswer::Stored,
        ]
    }

    #[test]
    fn requests_and_responses_round_trip_in_order() {
        let frames = vec![
            Bytes::from_static(b"one"),
            Bytes::new(),
            Bytes::from(vec![7u8; 5000]),
        ];
        assert_eq!(decode_request(&encode_request(&frames)).unwrap(), frames);
        let body = encode_response(&answers());
        assert_eq!(decode_response(&body, 4).unwrap(), answers());
        assert!(decode_response(&body, 3)
            .unwrap_err()
            .contains("4 answers to 3 frames"));
    }

    #[test]
    fn every_truncation_and_any_extra_byte_is_an_error_never_a_panic() {
        let request = encode_request(&[Bytes::from_static(b"alpha"), Bytes::from_static(b"b")]);
        for len in 0..request.len() {
            assert!(
                decode_request(&request.slice(..len)).is_err(),
                "request cut at {len}"
            );
        }
        let response = encode_response(&answers());
        for len in 0..response.len() {
            assert!(
                decode_response(&response[..len], 4).is_err(),
                "response cut at {len}"
            );
        }
        let mut longer = response.to_vec();
        longer.push(0);
        assert!(decode_response(&longer, 4)
            .unwrap_err()
            .contains("after the last"));
        let mut unknown = BytesMut::new();
        unknown.put_u32(1);
        unknown.put_u8(9);
        assert!(decode_response(&unknown, 1)
            .unwrap_err()
            .contains("unknown code"));
    }

    #[test]
    fn a_request_over_the_frame_limit_is_refused() {
        let too_many = vec![Bytes::from_static(b"f"); MAX_FRAMES + 1];
        assert!(decode_request(&encode_request(&too_many))
            .unwrap_err()
            .contains("at most 1024 frames"));
    }
}
