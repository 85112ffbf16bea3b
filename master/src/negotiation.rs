//! HTTP content negotiation and revalidation for `GET`/`HEAD /data/{key}`: which
//! representation a client asked for (`Accept`), the entity tag of each, and whether
//! an `If-None-Match` header matches it (RFC 9110, sections 8.8.3, 12.5.1 and
//! 13.1.2). **Pure**, with table tests.

use shardcache_common::version::Version;

/// The two ways a value is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Representation {
    /// `{"key": …, "value": …}`: the value must be UTF-8.
    Json,
    /// The stored bytes as they are, `application/octet-stream`.
    Octets,
}

/// `application/octet-stream` when `accept` lists it (or `application/*`) with a
/// weight above zero and above JSON's; JSON otherwise, and when `accept` is absent
/// or only `*/*` (the answer today's clients get).
pub(crate) fn representation(accept: Option<&str>) -> Representation {
    let Some(accept) = accept else {
        return Representation::Json;
    };
    let (mut octets, mut json) = (0.0_f32, 0.0_f32);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let weight = parts
            .filter_map(|param| param.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/octet-stream" => octets = octets.max(weight),
            "application/json" => json = json.max(weight),
            "application/*" => {
                octets = octets.max(weight.min(0.999));
                json = json.max(weight.min(0.999));
            }
            _ => {}
        }
    }
    if octets > 0.0 && octets > json {
        Representation::Octets
    } else {
        Representation::Json
    }
}

/// The strong entity tag of `version` served as `representation`, quotes included:
/// `"<version>"` for JSON, `"<version>.bin"` for the raw bytes (a different tag per
/// representation, as a cache between client and server must tell them apart).
pub(crate) fn entity_tag(version: Version, representation: Representation) -> String {
    match representation {
        Representation::Json => format!("\"{version}\""),
        Representation::Octets => format!("\"{version}.bin\""),
    }
}

/// Whether an `If-None-Match` header value matches `current` (a quoted tag): `*`
/// matches any current value; otherwise any listed tag that equals it under the weak
/// comparison (`W/` prefixes ignored), as RFC 9110 asks for `If-None-Match`.
pub(crate) fn if_none_match(header: &str, current: &str) -> bool {
    let header = header.trim();
    if header == "*" {
        return true;
    }
    let current = current.strip_prefix("W/").unwrap_or(current);
    entity_tags(header).any(|tag| tag.strip_prefix("W/").unwrap_or(tag) == current)
}

/// The tags of a comma-separated list; commas inside quotes are part of a tag.
fn entity_tags(list: &str) -> impl Iterator<Item = &str> {
    let mut rest = list;
    std::iter::from_fn(move || loop {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        if rest.is_empty() {
            return None;
        }
        let weak = rest.starts_with("W/");
        let body = if weak { &rest[2..] } else { rest };
        let end = match body.strip_prefix('"') {
            Some(inner) => inner.find('"').map(|close| close + 2),
            None => body.find(',').or(Some(body.len())),
        };
        let Some(end) = end else {
            // An unterminated quote: nothing more can match.
            rest = "";
            return None;
        };
        let taken = end + if weak { 2 } else { 0 };
        let tag = rest[..taken].trim();
        rest = &rest[taken..];
        if !tag.is_empty() {
            return Some(tag);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octets_only_when_asked_for_and_not_below_json() {
        use Representation::{Json, Octets};
        let table = [
            (None, Json),
            (Some("*/*"), Json),
            (Some("application/json"), Json),
            (Some("application/octet-stream"), Octets),
            (Some("Application/Octet-Stream"), Octets),
            (Some("application/octet-stream, application/json"), Json),
            (
                Some("application/json;q=0.5, application/octet-stream"),
                Octets,
            ),
            (
                Some("application/octet-stream;q=0.2, application/json;q=0.9"),
                Json,
            ),
            (Some("application/octet-stream;q=0"), Json),
            (Some("application/*"), Json),
            (
                Some("application/*;q=0.5, application/octet-stream"),
                Octets,
            ),
            (Some("text/html, */*;q=0.8"), Json),
        ];
        for (accept, expected) in table {
            assert_eq!(representation(accept), expected, "Accept: {accept:?}");
        }
    }

    #[test]
    fn tags_differ_per_representation() {
        let version: Version = "01a1fc0001c20000-45a639ad2ba398f5".parse().unwrap();
        assert_eq!(
            entity_tag(version, Representation::Json),
            "\"01a1fc0001c20000-45a639ad2ba398f5\""
        );
        assert_eq!(
            entity_tag(version, Representation::Octets),
            "\"01a1fc0001c20000-45a639ad2ba398f5.bin\""
        );
    }

    #[test]
    fn if_none_match_follows_rfc_9110() {
        let current = "\"v1\"";
        let table = [
            ("\"v1\"", true),
            ("*", true),
            (" * ", true),
            ("W/\"v1\"", true),
            ("\"v0\", \"v1\"", true),
            ("\"v0\",W/\"v1\"", true),
            ("\"v0\"", false),
            ("\"v1.bin\"", false),
            ("v1", false),
            ("\"a,b\", \"v1\"", true),
            ("\"a,\"v1\"", false),
            ("", false),
            ("\"v1", false),
        ];
        for (header, expected) in table {
            assert_eq!(
                if_none_match(header, current),
                expected,
                "If-None-Match: {header}"
            );
        }
    }
}
