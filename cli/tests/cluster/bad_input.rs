//! Bad input: every malformed request gets a JSON error with the right status, and
//! nothing that was stored is lost.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::TestCluster;

fn assert_error(what: &str, (status, body): (StatusCode, Value), expected: StatusCode) {
    assert_eq!(status, expected, "{what}: {body}");
    assert!(
        body["error"].as_str().is_some_and(|text| !text.is_empty()),
        "{what}: no error text in {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_json_errors_and_lose_nothing() {
    let cluster = TestCluster::start_with(|spec| {
        spec.master_args.extend([
            "--max-value-size".into(),
            "64KiB".into(),
            "--max-key-size".into(),
            "250B".into(),
        ]);
    });
    let (status, _) = cluster.set("precious", "do not lose me").await;
    assert_eq!(status, StatusCode::OK);

    let bad_bodies = [
        ("truncated JSON", r#"{"key": "a", "value": "#.to_owned()),
        ("not JSON", "key=a&value=b".to_owned()),
        ("empty body", String::new()),
        ("a JSON array", "[1,2]".to_owned()),
        ("numeric key", r#"{"key": 1, "value": "v"}"#.to_owned()),
        ("numeric value", r#"{"key": "k", "value": 5}"#.to_owned()),
        (
            "object value",
            r#"{"key": "k", "value": {"a": 1}}"#.to_owned(),
        ),
        ("missing value", r#"{"key": "k"}"#.to_owned()),
        ("missing key", r#"{"value": "v"}"#.to_owned()),
        (
            "unknown field",
            r#"{"key": "k", "value": "v", "tll": 5}"#.to_owned(),
        ),
        (
            "negative ttl",
            r#"{"key": "k", "value": "v", "ttl": -1}"#.to_owned(),
        ),
        (
            "zero ttl",
            r#"{"key": "k", "value": "v", "ttl": 0}"#.to_owned(),
        ),
        (
            "fractional ttl",
            r#"{"key": "k", "value": "v", "ttl": 1.5}"#.to_owned(),
        ),
        (
            "string ttl",
            r#"{"key": "k", "value": "v", "ttl": "60"}"#.to_owned(),
        ),
        (
            "huge ttl",
            r#"{"key": "k", "value": "v", "ttl": 99999999999999}"#.to_owned(),
        ),
        ("empty key", r#"{"key": "", "value": "v"}"#.to_owned()),
        (
            "key over the limit",
            json!({ "key": "k".repeat(251), "value": "v" }).to_string(),
        ),
    ];
    for (what, body) in bad_bodies {
        assert_error(what, cluster.post_raw(body).await, StatusCode::BAD_REQUEST);
    }
    // Invalid UTF-8 inside a JSON string.
    let mut invalid_utf8 = br#"{"key": "k", "value": ""#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe]);
    invalid_utf8.extend_from_slice(br#""}"#);
    assert_error(
        "invalid UTF-8",
        cluster.post_raw(invalid_utf8).await,
        StatusCode::BAD_REQUEST,
    );

    let too_large_value = json!({ "key": "big", "value": "x".repeat(64 * 1024 + 1) });
    assert_error(
        "value over the limit",
        cluster.post_json(&too_large_value).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    );
    assert_eq!(
        cluster
            .announced_body_status("POST", "/data", 4 << 20)
            .await,
        413,
        "body over the limit"
    );
    let (status, _) = cluster.set("limit", &"x".repeat(64 * 1024)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a value exactly at the limit is fine"
    );

    let long_key_path = format!("/data/{}", "k".repeat(251));
    let bad_paths = [
        (
            "empty key in path",
            Method::GET,
            "/data/",
            StatusCode::BAD_REQUEST,
        ),
        (
            "empty key delete",
            Method::DELETE,
            "/data/",
            StatusCode::BAD_REQUEST,
        ),
        (
            "long key in path",
            Method::GET,
            long_key_path.as_str(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "invalid UTF-8 in path",
            Method::GET,
            "/data/%FF%FE",
            StatusCode::BAD_REQUEST,
        ),
        (
            "miss",
            Method::GET,
            "/data/never%20written",
            StatusCode::NOT_FOUND,
        ),
        (
            "delete of a miss",
            Method::DELETE,
            "/data/never%20written",
            StatusCode::NOT_FOUND,
        ),
        ("unknown route", Method::GET, "/nope", StatusCode::NOT_FOUND),
        (
            "wrong method",
            Method::PUT,
            "/data",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "wrong method on a key",
            Method::PATCH,
            "/data/k",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (what, method, path, expected) in bad_paths {
        assert_error(what, cluster.request(method, path).await, expected);
    }

    assert_eq!(
        cluster.value("precious").await.as_deref(),
        Some("do not lose me")
    );
    let (status, _) = cluster.request(Method::GET, "/health").await;
    assert_eq!(status, StatusCode::OK, "the master survived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_keys_round_trip_through_percent_encoding() {
    let cluster = TestCluster::start();
    let keys = [
        "with space",
        "a/b/c",
        "/leading",
        "trailing/",
        "100%",
        "%2F",
        "what?",
        "#hash",
        "a+b",
        "🍒",
        "ключ",
        "キー",
        "tab\there",
        "quote\"s",
        "back\\slash",
        "...",
        "a/../b",
        "nul\u{0}byte",
        "&=;,",
    ];
    for (index, key) in keys.iter().enumerate() {
        let value = format!("value of key {index}");
        let (status, body) = cluster.set(key, &value).await;
        assert_eq!(status, StatusCode::OK, "{key:?}: {body}");
        assert_eq!(body["key"], *key);
    }
    for (index, key) in keys.iter().enumerate() {
        assert_eq!(
            cluster.value(key).await,
            Some(format!("value of key {index}")),
            "{key:?}"
        );
    }
    // A raw (unencoded) slash stays part of the key too.
    let (status, body) = cluster.request(Method::GET, "/data/a/b/c").await;
    assert_eq!(
        (status, body["value"].as_str()),
        (StatusCode::OK, Some("value of key 1"))
    );
    for key in keys {
        let (status, body) = cluster.delete(key).await;
        assert_eq!(status, StatusCode::OK, "{key:?}: {body}");
        assert_eq!(cluster.value(key).await, None);
    }
}
