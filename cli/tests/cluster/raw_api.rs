//! The cache API beyond JSON strings: raw bytes with `PUT` and
//! `Accept: application/octet-stream`, entity tags and `304`, `HEAD`, the TTL left
//! in `shardcache-ttl`, and writes carrying a condition refused with `501` until
//! conditional writes exist. Every value is checked byte for byte.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE, IF_MATCH, IF_NONE_MATCH};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use shardcache_common::wire::encode_key;

use crate::support::{wait_until, TestCluster};

/// The masters' `--max-value-size` in these tests: small, so the largest value is
/// cheap to send many times.
const VALUE_LIMIT: usize = 64 * 1024;
const OCTETS: &str = "application/octet-stream";
const SHARDS_PER_KEY: u64 = 5;

/// What a request answered: status, headers and body bytes.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

async fn send(
    cluster: &TestCluster,
    method: Method,
    key: &str,
    query: &str,
    headers: &[(reqwest::header::HeaderName, &str)],
    body: Option<Vec<u8>>,
) -> Answer {
    let url = format!("{}/data/{}{query}", cluster.master(), encode_key(key));
    let mut request = cluster.http.request(method.clone(), url);
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|error| panic!("{method} {key}: {error}"));
    Answer {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.bytes().await.expect("read body").to_vec(),
    }
}

async fn put(
    cluster: &TestCluster,
    key: &str,
    value: &[u8],
    headers: &[(reqwest::header::HeaderName, &str)],
) -> Answer {
    send(cluster, Method::PUT, key, "", headers, Some(value.to_vec())).await
}

async fn get_octets(cluster: &TestCluster, key: &str) -> Answer {
    send(cluster, Method::GET, key, "", &[(ACCEPT, OCTETS)], None).await
}

fn start() -> TestCluster {
    TestCluster::start_with(|spec| {
        spec.master_args
            .extend(["--max-value-size".into(), format!("{VALUE_LIMIT}")]);
    })
}

/// Values of every size class up to the limit: empty, shorter than k, every byte
/// value, invalid UTF-8, and random bytes.
fn binary_values() -> Vec<(String, Vec<u8>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    let mut values: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0],
        vec![0xff, 0xfe],
        (0..=255u8).collect(),
        (0..=255u8).cycle().take(VALUE_LIMIT).collect(),
        b"\xc3\x28 not UTF-8 \x80".to_vec(),
    ];
    for _ in 0..40 {
        let len = rng.random_range(0..=VALUE_LIMIT);
        values.push((0..len).map(|_| rng.random()).collect());
    }
    values
        .into_iter()
        .enumerate()
        .map(|(index, value)| (format!("raw/{index} 🍒"), value))
        .collect()
}

async fn assert_all_bytes(cluster: &TestCluster, values: &[(String, Vec<u8>)]) {
    for (key, value) in values {
        let answer = get_octets(cluster, key).await;
        assert_eq!(answer.status, StatusCode::OK, "{key}: {:?}", answer.json());
        assert!(
            answer.body == *value,
            "{key}: {} bytes back, {} written",
            answer.body.len(),
            value.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_bytes_round_trip_exactly_and_survive_m_failures_after_a_repair() {
    let mut cluster = start();
    let values = binary_values();
    for (key, value) in &values {
        let answer = put(&cluster, key, value, &[(CONTENT_TYPE, "image/jpeg")]).await;
        assert_eq!(answer.status, StatusCode::OK, "{key}: {:?}", answer.json());
        let version = answer.json()["version"]
            .as_str()
            .expect("version")
            .to_owned();
        assert_eq!(answer.json()["key"], key.as_str());
        assert_eq!(
            answer.header("etag"),
            Some(format!("\"{version}\"").as_str())
        );
    }
    for (key, value) in &values {
        let answer = get_octets(&cluster, key).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.body == *value, "{key}: wrong bytes");
        assert_eq!(answer.header("content-type"), Some(OCTETS));
        assert_eq!(answer.header("vary"), Some("accept"));
        let version = answer
            .header("shardcache-version")
            .expect("version header")
            .to_owned();
        assert_eq!(
            answer.header("etag"),
            Some(format!("\"{version}.bin\"").as_str())
        );
        // As JSON: the string when it is UTF-8, else 406 saying how to ask.
        let json = send(&cluster, Method::GET, key, "", &[], None).await;
        match String::from_utf8(value.clone()) {
            Ok(text) => {
                assert_eq!(json.status, StatusCode::OK);
                assert_eq!(json.json()["value"], text.as_str());
                assert_eq!(json.header("etag"), Some(format!("\"{version}\"").as_str()));
            }
            Err(_) => {
                assert_eq!(json.status, StatusCode::NOT_ACCEPTABLE);
                let error = json.json()["error"].as_str().unwrap_or_default().to_owned();
                assert!(error.contains(OCTETS), "{error}");
            }
        }
    }
    // One byte over the limit: 413 before the body is read, and nothing stored.
    let over = cluster
        .announced_body_status("PUT", "/data/raw%2Fover", VALUE_LIMIT + 1)
        .await;
    assert_eq!(over, 413, "a value one byte over the limit");
    assert_eq!(
        get_octets(&cluster, "raw/over").await.status,
        StatusCode::NOT_FOUND
    );

    // A node lost and repaired, then m more: every byte still there.
    cluster
        .wait_for_aux_items(values.len() as u64 * SHARDS_PER_KEY)
        .await;
    cluster.cluster.aux[0].kill();
    cluster.wait_for_state(0, "down").await;
    cluster.wait_for_repair().await;
    cluster.cluster.aux[1].kill();
    cluster.cluster.aux[2].kill();
    assert_all_bytes(&cluster, &values).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etags_revalidate_head_has_no_body_and_the_ttl_left_counts_down() {
    let cluster = start();
    let key = "revalidate";
    let first = put(&cluster, key, b"one", &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    let etag = first.header("etag").expect("etag").to_owned();

    let plain = send(&cluster, Method::GET, key, "", &[], None).await;
    assert_eq!(plain.header("etag"), Some(etag.as_str()));
    assert_eq!(plain.header("shardcache-ttl"), None, "no TTL, no header");
    let weak = format!("W/{etag}");
    let listed = format!("\"other\", {etag}");
    for condition in [etag.as_str(), weak.as_str(), listed.as_str(), "*"] {
        let answer = send(
            &cluster,
            Method::GET,
            key,
            "",
            &[(IF_NONE_MATCH, condition)],
            None,
        )
        .await;
        assert_eq!(
            answer.status,
            StatusCode::NOT_MODIFIED,
            "If-None-Match: {condition}"
        );
        assert!(answer.body.is_empty());
        assert_eq!(answer.header("etag"), Some(etag.as_str()));
        assert_eq!(answer.header("vary"), Some("accept"));
    }
    // The other representation has another tag, so the JSON tag does not match it.
    let octets = send(
        &cluster,
        Method::GET,
        key,
        "",
        &[(ACCEPT, OCTETS), (IF_NONE_MATCH, &etag)],
        None,
    )
    .await;
    assert_eq!(octets.status, StatusCode::OK);
    assert_eq!(octets.body, b"one");

    // After a write the old tag no longer matches.
    let second = put(&cluster, key, b"two", &[]).await;
    let new_etag = second.header("etag").expect("etag").to_owned();
    assert_ne!(new_etag, etag);
    let answer = send(
        &cluster,
        Method::GET,
        key,
        "",
        &[(IF_NONE_MATCH, &etag)],
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["value"], "two");
    assert_eq!(answer.header("etag"), Some(new_etag.as_str()));

    // HEAD: the GET's status and headers, no body.
    let head = send(&cluster, Method::HEAD, key, "", &[(ACCEPT, OCTETS)], None).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("etag"),
        Some(format!("{}.bin\"", new_etag.trim_end_matches('"')).as_str())
    );
    assert_eq!(head.header("content-type"), Some(OCTETS));
    let missing = send(&cluster, Method::HEAD, "never-written", "", &[], None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.is_empty());
    assert_eq!(missing.header("shardcache-miss"), Some("absent"));

    // The TTL, from the header or the query (both only if equal), counts down.
    let timed = put(
        &cluster,
        "ttl",
        b"v",
        &[(
            reqwest::header::HeaderName::from_static("shardcache-ttl"),
            "3",
        )],
    )
    .await;
    assert_eq!(timed.status, StatusCode::OK, "{:?}", timed.json());
    let ttl_left = |answer: &Answer| {
        answer
            .header("shardcache-ttl")
            .and_then(|ttl| ttl.parse::<u64>().ok())
    };
    let start = ttl_left(&send(&cluster, Method::GET, "ttl", "", &[], None).await).expect("a TTL");
    assert!((1..=3).contains(&start), "{start}");
    wait_until(
        "the TTL left to count down",
        Duration::from_secs(5),
        || async {
            let answer = send(&cluster, Method::GET, "ttl", "", &[], None).await;
            answer.status == StatusCode::OK && ttl_left(&answer).is_some_and(|left| left < start)
        },
    )
    .await;
    let by_query = send(
        &cluster,
        Method::PUT,
        "ttl-q",
        "?ttl=60",
        &[],
        Some(b"q".to_vec()),
    )
    .await;
    assert_eq!(by_query.status, StatusCode::OK);
    let left =
        ttl_left(&send(&cluster, Method::HEAD, "ttl-q", "", &[], None).await).expect("a TTL");
    assert!((59..=60).contains(&left), "{left}");
    let ttl_header = reqwest::header::HeaderName::from_static("shardcache-ttl");
    for (query, header, what) in [
        ("?ttl=5", Some("6"), "header and query differ"),
        ("?ttl=0", None, "zero"),
        ("?ttl=soon", None, "not a number"),
        ("?tll=5", None, "unknown parameter"),
    ] {
        let headers: Vec<_> = header
            .map(|value| (ttl_header.clone(), value))
            .into_iter()
            .collect();
        let answer = send(
            &cluster,
            Method::PUT,
            "ttl-bad",
            query,
            &headers,
            Some(b"x".to_vec()),
        )
        .await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{what}: {:?}",
            answer.json()
        );
        assert!(answer.json()["error"].is_string(), "{what}");
    }
    assert_eq!(
        send(&cluster, Method::GET, "ttl-bad", "", &[], None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_are_refused_with_501_and_batch_names_are_plain_keys() {
    let cluster = start();
    assert_eq!(
        put(&cluster, "guarded", b"kept", &[]).await.status,
        StatusCode::OK
    );
    let etag = send(&cluster, Method::GET, "guarded", "", &[], None)
        .await
        .header("etag")
        .unwrap()
        .to_owned();
    let post_body = br#"{"key":"guarded","value":"changed"}"#.to_vec();
    let attempts = [
        (Method::PUT, "/data/guarded", IF_MATCH, etag.as_str()),
        (Method::PUT, "/data/guarded", IF_NONE_MATCH, "*"),
        (Method::POST, "/data", IF_NONE_MATCH, "*"),
        (Method::DELETE, "/data/guarded", IF_MATCH, etag.as_str()),
    ];
    for (method, path, header, value) in attempts {
        let response = cluster
            .http
            .request(method.clone(), format!("{}{path}", cluster.master()))
            .header(header.clone(), value)
            .body(post_body.clone())
            .send()
            .await
            .expect("request");
        assert_eq!(
            response.status(),
            StatusCode::NOT_IMPLEMENTED,
            "{method} {path} with {header}"
        );
        let body: Value = response.json().await.expect("JSON error");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("conditional"),
            "{body}"
        );
    }
    let after = get_octets(&cluster, "guarded").await;
    assert_eq!(
        (after.status, after.body.as_slice()),
        (StatusCode::OK, &b"kept"[..])
    );

    // The batch routes' names are ordinary keys for single-key requests.
    for name in ["_mget", "_mset", "_mdelete"] {
        assert_eq!(
            put(&cluster, name, name.as_bytes(), &[]).await.status,
            StatusCode::OK,
            "PUT {name}"
        );
        assert_eq!(
            get_octets(&cluster, name).await.body,
            name.as_bytes(),
            "GET {name}"
        );
        assert_eq!(
            send(&cluster, Method::HEAD, name, "", &[], None)
                .await
                .status,
            StatusCode::OK
        );
        let (status, _) = cluster.delete(name).await;
        assert_eq!(status, StatusCode::OK, "DELETE {name}");
        assert_eq!(
            get_octets(&cluster, name).await.status,
            StatusCode::NOT_FOUND
        );
    }
}
