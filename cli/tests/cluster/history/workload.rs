//! The workload: clients writing, reading and deleting a few keys through two
//! masters, each operation recorded with its invoke and response times.

use super::*;

pub(super) const CLIENTS: usize = 6;
pub(super) const KEYS: usize = 8;
/// How long clients run and the nemesis starts new faults.
pub(super) const LOAD: Duration = Duration::from_secs(15);
/// A hard cap on operations, whatever the speed of the machine.
pub(super) const MAX_OPS: usize = 60_000;
/// Per-request deadline of a client: past it the operation is indeterminate.
pub(super) const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const AUX_NODES: usize = 6;
/// Parity shards: the most aux nodes ever impaired at once.
pub(super) const M: usize = 2;

pub(super) fn key_name(index: usize) -> String {
    format!("key-{index}")
}

/// A value unique to (client, seq), `c{client}-{seq}|` then filler of mixed length
/// (JSON escapes and multi-byte characters included).
pub(super) fn unique_value(rng: &mut StdRng, client: usize, seq: usize) -> String {
    let len = match rng.random_range(0..10) {
        0..=5 => rng.random_range(0..64),
        6..=8 => rng.random_range(64..4096),
        _ => rng.random_range(4096..40_000),
    };
    format!("c{client}-{seq}|{}", random_value(rng, len))
}

/// The answer and the version it names (a write's body, a read's header).
pub(super) async fn answer_of(
    result: reqwest::Result<reqwest::Response>,
    key: &str,
    call: &Call,
) -> (Answer, Option<String>) {
    let response = match result {
        Ok(response) => response,
        Err(error) if error.is_connect() => return (Answer::NotSent, None),
        Err(error) => return (Answer::Unknown(error.to_string()), None),
    };
    let status = response.status().as_u16();
    let partial = response
        .headers()
        .get("shardcache-miss")
        .is_some_and(|miss| miss == "partial");
    let header = response
        .headers()
        .get("shardcache-version")
        .and_then(|version| version.to_str().ok())
        .map(str::to_owned);
    let text = match response.text().await {
        Ok(text) => text,
        Err(error) => return (Answer::Unknown(format!("status {status}: {error}")), None),
    };
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    match (status, call) {
        (200, Call::Read) => {
            // An answer that does not parse, or names another key, is recorded as a
            // value no one wrote, so the checker reports it.
            let value = match (body["key"].as_str(), body["value"].as_str()) {
                (Some(answered), Some(value)) if answered == key => value.to_owned(),
                _ => format!("\u{1}unexpected answer: {text}"),
            };
            (Answer::Ok(Some(value)), header)
        }
        (200, Call::Write(_)) => (
            Answer::Ok(None),
            body["version"].as_str().map(str::to_owned),
        ),
        (200, Call::Delete) => (Answer::Ok(None), None),
        (404, _) => (Answer::NotFound { partial }, None),
        (503, _) => (Answer::Unavailable, None),
        (other, _) => (Answer::Unknown(format!("status {other}: {text}")), None),
    }
}

pub(super) struct Load {
    pub(super) http: reqwest::Client,
    pub(super) masters: Vec<String>,
    pub(super) start: Instant,
    pub(super) until: Instant,
    /// Operations begun (the cap) and completed (the nemesis waits on it).
    pub(super) begun: AtomicUsize,
    pub(super) done: AtomicUsize,
    /// Requests a master refused (the nemesis waits on it while one is down).
    pub(super) refused: AtomicUsize,
    /// Every acknowledged write so far, per key: its invoke and its version. The
    /// nemesis uses it to tell when a node back from a fault holds no stale shard.
    pub(super) acked: Mutex<HashMap<String, Vec<(Instant, Version)>>>,
}

pub(super) async fn client(load: Arc<Load>, client: usize, seed: u64) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed ^ (client as u64 + 1).wrapping_mul(0x9e37_79b9));
    let mut history = Vec::new();
    let mut avoid: Option<usize> = None;
    for seq in 0.. {
        if Instant::now() >= load.until || load.begun.fetch_add(1, Ordering::Relaxed) >= MAX_OPS {
            break;
        }
        let key = key_name(rng.random_range(0..KEYS));
        // A client whose master refused the connection fails over to the other.
        let master = match avoid.take() {
            Some(refused) => 1 - refused,
            None => rng.random_range(0..load.masters.len()),
        };
        let base = &load.masters[master];
        let call = match rng.random_range(0..100) {
            0..=44 => Call::Write(unique_value(&mut rng, client, seq)),
            45..=92 => Call::Read,
            _ => Call::Delete,
        };
        let url = format!("{base}/data/{}", encode_key(&key));
        let invoked_at = Instant::now();
        let sent = match &call {
            Call::Write(value) => {
                load.http
                    .post(format!("{base}/data"))
                    .json(&json!({ "key": key, "value": value }))
                    .send()
                    .await
            }
            Call::Read => load.http.get(url).send().await,
            Call::Delete => load.http.delete(url).send().await,
        };
        let (answer, version) = answer_of(sent, &key, &call).await;
        let response = load.start.elapsed();
        match (&call, &answer, &version) {
            (Call::Write(_), Answer::Ok(_), Some(version)) => {
                let version: Version = version.parse().expect("a version");
                let mut acked = load.acked.lock().unwrap();
                acked
                    .entry(key.clone())
                    .or_default()
                    .push((invoked_at, version));
            }
            (_, Answer::NotSent, _) => {
                avoid = Some(master);
                load.refused.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        history.push(Op {
            client,
            master,
            key,
            call,
            invoke: invoked_at - load.start,
            response,
            answer,
            version,
        });
        load.done.fetch_add(1, Ordering::Relaxed);
    }
    history
}
