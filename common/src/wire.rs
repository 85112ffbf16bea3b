//! The aux node's HTTP API as both sides see it: paths, headers and the encoding of
//! keys in paths. Shard bytes always travel as [`crate::frame`] frames
//! (`application/octet-stream`), never as JSON.
//!
//! | request                      | body      | answers                                      |
//! |------------------------------|-----------|----------------------------------------------|
//! | `PUT /v1/shards`             | one frame | 204 stored (or already held at that version); 409 a newer version is held, named in the `shardcache-current-version` header; 400 bad frame; 413 too large |
//! | `GET /v1/shards/{key}`       | —         | 200 the frame (a tombstone too); 404 nothing live |
//! | `GET /health`                | —         | 200 `{"status":"ok",…}`                      |

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Collection path for storing shards.
pub const SHARDS_PATH: &str = "/v1/shards";

/// Header on a 409 answer naming the version the aux node holds instead.
pub const CURRENT_VERSION_HEADER: &str = "shardcache-current-version";

/// Everything but RFC 3986 unreserved characters is escaped, so `/`, `?`, `#`, `%`
/// and spaces in keys stay inside one path segment.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a key as one path segment.
pub fn encode_key(key: &str) -> String {
    utf8_percent_encode(key, PATH_SEGMENT).to_string()
}

/// The path that reads the shard of `key`.
pub fn shard_path(key: &str) -> String {
    format!("{SHARDS_PATH}/{}", encode_key(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awkward_keys_stay_in_one_segment() {
        assert_eq!(encode_key("a/b?c#d%e f"), "a%2Fb%3Fc%23d%25e%20f");
        assert_eq!(shard_path("🍒"), "/v1/shards/%F0%9F%8D%92");
        assert_eq!(encode_key("plain-key_1.0~"), "plain-key_1.0~");
    }
}
