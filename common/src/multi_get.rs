//! The multi-get exchange: a master asks one aux node for the shards of many keys in
//! one HTTP request (`POST /v1/multi-get`), so that under load the per-request cost
//! of a hop (parsing, routing, a syscall or two each way) is paid once per batch
//! instead of once per shard. Both sides encode and decode it here.
//!
//! ```text
//! request body                      response body (200)
//!   4  key count n (big-endian)       4  answer count n (as many as keys asked)
//!   n times:                          n times, in the order of the keys:
//!     4  key length l                   4  frame length f (0: no live shard)
//!     l  key bytes (UTF-8)              f  the shard frame, exactly as a single GET
//!                                          answers it (a tombstone too)
//! ```
//!
//! A request names at most [`MAX_KEYS`] keys; the aux node answers 400 to more.
//! Decoding checks every length against the bytes present and never panics.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::read_u32;

/// Most keys one multi-get may name (invariant 5: every batch has a limit).
pub const MAX_KEYS: usize = 1024;

pub(crate) const COUNT_LEN: usize = 4;
pub(crate) const LENGTH_PREFIX_LEN: usize = 4;

/// Encodes the request body naming `keys`.
pub fn encode_request<K: AsRef<str>>(keys: &[K]) -> Bytes {
    let size = COUNT_LEN
        + keys
            .iter()
            .map(|key| LENGTH_PREFIX_LEN + key.as_ref().len())
            .sum::<usize>();
    let mut body = BytesMut::with_capacity(size);
    body.put_u32(keys.len() as u32);
    for key in keys {
        body.put_u32(key.as_ref().len() as u32);
        body.put_slice(key.as_ref().as_bytes());
    }
    body.freeze()
}

/// The keys a request body names, or why it is malformed.
pub fn decode_request(body: &[u8]) -> Result<Vec<String>, String> {
    let (count, mut at) = read_count(body)?;
    if count > MAX_KEYS {
        return Err(format!(
            "a multi-get names at most {MAX_KEYS} keys, this one {count}"
        ));
    }
    let mut keys = Vec::with_capacity(count);
    for index in 0..count {
        let bytes = read_item(body, &mut at, index, count)?;
        let key =
            std::str::from_utf8(bytes).map_err(|_| format!("key {index} is not valid UTF-8"))?;
        keys.push(key.to_owned());
    }
    expect_end(body, at)?;
    Ok(keys)
}

/// Encodes the answers, one per key asked, in the order asked: the frame bytes the
/// node holds, or `None`.
pub fn encode_response(answers: &[Option<Bytes>]) -> Bytes {
    let size = answers
        .iter()
        .map(|answer| LENGTH_PREFIX_LEN + answer.as_ref().map_or(0, Bytes::len))
        .sum::<usize>();
    let mut body = ResponseBuilder::new(answers.len(), size);
    for answer in answers {
        body.answer(|out| match answer {
            Some(frame) => {
                out.extend_from_slice(frame);
                true
            }
            None => false,
        });
    }
    body.finish()
}

/// A response body built answer by answer, each frame written straight into the
/// body by whoever holds it (the aux store), with no copy in between.
pub struct ResponseBuilder {
    body: Vec<u8>,
}

impl ResponseBuilder {
    /// A body for `answers` answers; `size_hint` bytes are reserved for them.
    pub fn new(answers: usize, size_hint: usize) -> Self {
        let mut body = Vec::with_capacity(COUNT_LEN + size_hint);
        body.put_u32(answers as u32);
        ResponseBuilder { body }
    }

    /// Adds the next answer: `write` appends the frame to the body and says whether
    /// there was one (appending nothing and saying false is a "none").
    pub fn answer(&mut self, write: impl FnOnce(&mut Vec<u8>) -> bool) {
        let prefix_at = self.body.len();
        self.body.put_u32(0);
        if write(&mut self.body) {
            let len = (self.body.len() - prefix_at - LENGTH_PREFIX_LEN) as u32;
            self.body[prefix_at..prefix_at + LENGTH_PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
        } else {
            self.body.truncate(prefix_at + LENGTH_PREFIX_LEN);
        }
    }

    pub fn finish(self) -> Bytes {
        Bytes::from(self.body)
    }
}

/// The answers in a response body to a request that named `asked` keys: each a slice
/// of `body` (no copy), or `None`; or why the body is malformed.
pub fn decode_response(body: &Bytes, asked: usize) -> Result<Vec<Option<Bytes>>, String> {
    let (count, mut at) = read_count(body)?;
    if count != asked {
        return Err(format!("{count} answers to {asked} keys"));
    }
    let mut answers = Vec::with_capacity(count);
    for index in 0..count {
        let start = at + LENGTH_PREFIX_LEN;
        let frame = read_item(body, &mut at, index, count)?;
        answers.push((!frame.is_empty()).then(|| body.slice(start..start + frame.len())));
    }
    expect_end(body, at)?;
    Ok(answers)
}

pub(crate) fn read_count(body: &[u8]) -> Result<(usize, usize), String> {
    if body.len() < COUNT_LEN {
        return Err(format!("truncated: only {} bytes", body.len()));
    }
    Ok((read_u32(body, 0) as usize, COUNT_LEN))
}

/// The length-prefixed item at `*at`, advancing `*at` past it.
pub(crate) fn read_item<'a>(
    body: &'a [u8],
    at: &mut usize,
    index: usize,
    count: usize,
) -> Result<&'a [u8], String> {
    let truncated = || format!("truncated: item {index} of {count} runs past the end");
    if body.len() - *at < LENGTH_PREFIX_LEN {
        return Err(truncated());
    }
    let len = read_u32(body, *at) as usize;
    let start = *at + LENGTH_PREFIX_LEN;
    if body.len() - start < len {
        return Err(truncated());
    }
    *at = start + len;
    Ok(&body[start..start + len])
}

pub(crate) fn expect_end(body: &[u8], at: usize) -> Result<(), String> {
    match body.len() - at {
        0 => Ok(()),
        extra => Err(format!("{extra} bytes after the last item")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_any_utf8_key() {
        let keys = ["", "a", "with space/slash%25", "ключ 🔑", &"x".repeat(1000)];
        assert_eq!(decode_request(&encode_request(&keys)).unwrap(), keys);
        assert_eq!(
            decode_request(&encode_request::<&str>(&[])).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn responses_round_trip_and_keep_misses_in_place() {
        let answers = vec![
            Some(Bytes::from_static(b"frame one")),
            None,
            Some(Bytes::from(vec![7u8; 5000])),
            None,
        ];
        let body = encode_response(&answers);
        assert_eq!(decode_response(&body, 4).unwrap(), answers);
        assert!(decode_response(&body, 3)
            .unwrap_err()
            .contains("4 answers to 3 keys"));
    }

    #[test]
    fn every_truncation_and_any_extra_byte_is_an_error_never_a_panic() {
        let request = encode_request(&["alpha", "beta", "gamma"]);
        let response = encode_response(&[Some(Bytes::from_static(b"frame")), None]);
        for len in 0..request.len() {
            assert!(
                decode_request(&request[..len]).is_err(),
                "request cut at {len}"
            );
        }
        for len in 0..response.len() {
            assert!(
                decode_response(&response.slice(..len), 2).is_err(),
                "response cut at {len}"
            );
        }
        let mut longer = request.to_vec();
        longer.push(0);
        assert!(decode_request(&longer)
            .unwrap_err()
            .contains("after the last"));
        // Lengths that claim more than is there, up to u32::MAX.
        let mut huge = BytesMut::new();
        huge.put_u32(1);
        huge.put_u32(u32::MAX);
        assert!(decode_request(&huge).is_err());
        assert!(decode_response(&huge.freeze(), 1).is_err());
    }

    #[test]
    fn a_request_over_the_key_limit_or_with_bad_utf8_is_refused() {
        let too_many: Vec<String> = (0..=MAX_KEYS).map(|n| n.to_string()).collect();
        assert!(decode_request(&encode_request(&too_many))
            .unwrap_err()
            .contains("at most 1024 keys"));
        let mut bad = BytesMut::new();
        bad.put_u32(1);
        bad.put_u32(2);
        bad.put_slice(&[0xff, 0xfe]);
        assert!(decode_request(&bad).unwrap_err().contains("UTF-8"));
    }
}
