//! The aux port refuses what it cannot hold, and masters do not trust what aux
//! nodes answer: a declared oversize body is refused before a byte of it is read
//! (no `100 Continue`), a body that never comes is given up on, and a well-formed
//! frame claiming a geometry the cluster does not write is never served as a value.
//! With a cluster token set, internal routes and the admin API refuse anyone
//! without it. Both the aux port and the master's client port cut off clients that
//! never finish their headers and close connections over their cap.

use std::time::{Duration, Instant};

use shardcache_common::wire;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use serde_json::Value;

use crate::support::{first_shard, wait_until, TestCluster};

/// Sends `head` to aux node 0 and returns its first response line, and how long it
/// took; a response that does not come within `patience` fails the test.
async fn first_line(cluster: &TestCluster, head: &str, patience: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(cluster.cluster.aux[0].addr)
        .await
        .unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = vec![0u8; 4096];
    let read = tokio::time::timeout(patience, stream.read(&mut response))
        .await
        .expect("the aux node answered in time")
        .unwrap();
    let line = String::from_utf8_lossy(&response[..read])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    (line, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_stalled_bodies_are_refused_promptly_on_the_aux_port() {
    let cluster = TestCluster::start();
    for path in [wire::SHARDS_PATH, wire::MULTI_GET_PATH] {
        let method = if path == wire::SHARDS_PATH {
            "PUT"
        } else {
            "POST"
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: aux\r\nContent-Length: 99999999999\r\n\
             Expect: 100-continue\r\n\r\n"
        );
        let (line, took) = first_line(&cluster, &head, Duration::from_secs(5)).await;
        assert!(line.contains(" 413 "), "{method} {path}: {line}");
        assert!(
            took < Duration::from_secs(2),
            "{method} {path} took {took:?}"
        );
    }
    // Ten bytes announced, none sent: the request deadline (10 s) ends it.
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: aux\r\nContent-Length: 10\r\n\r\n",
        wire::SHARDS_PATH
    );
    let (line, took) = first_line(&cluster, &head, Duration::from_secs(15)).await;
    assert!(line.contains(" 408 "), "{line}");
    assert!(took >= Duration::from_secs(9), "gave up after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_frame_claiming_another_geometry_is_never_served() {
    // Repair passes every second, to show that repair does not act on it either.
    // The aux nodes take any well-formed frame here, as when started without
    // --data-shards/--parity-shards: this is the masters' own defence.
    let cluster = TestCluster::start_with(|spec| {
        spec.aux_checks_geometry = false;
        spec.master_args
            .extend(["--repair-interval".into(), "1s".into()]);
    });
    let key = "forged";
    assert_eq!(cluster.set(key, "the real value").await.0, 200);
    cluster.wait_for_aux_items(5).await;
    // A newer version on one owner, in the 1+0 geometry: a whole value in one
    // shard, with a consistent checksum. It decodes, if anyone lets it.
    // (Newer than the real value, and not from the future: that is refused.)
    let forged = first_shard(key, b"a forged value", 1, 0);
    let owner = cluster.owners(key)[0];
    let stored = cluster.put_frame(owner, &forged).await;
    assert_eq!(
        stored.status(),
        204,
        "the aux node took the well-formed frame"
    );
    for _ in 0..20 {
        assert_eq!(
            cluster.value(key).await.as_deref(),
            Some("the real value"),
            "a frame of a geometry the master does not write was served"
        );
    }
    // Operators see it: reads counted what they ignored (the forged owner answers
    // among the first four of five in most reads; 20 reads make none unlikely).
    let foreign = |scrape: &crate::support::Scrape, seen_by: &str| {
        scrape.value(
            "shardcache_master_foreign_shards_total",
            &[("seen_by", seen_by)],
        )
    };
    assert!(foreign(&cluster.master_scrape().await, "read") > 0.0);
    // Nor does repair take it for the key's newest version: it neither copies it
    // nor deletes the real shards as strays of it.
    let passes = |view: Value| view["repair"]["passes"].as_u64().unwrap_or(0);
    let before = passes(cluster.cluster_view(0).await);
    wait_until(
        "two more repair passes",
        Duration::from_secs(30),
        || async { passes(cluster.cluster_view(0).await) >= before + 2 },
    )
    .await;
    assert_eq!(
        cluster.value(key).await.as_deref(),
        Some("the real value"),
        "repair acted on a frame of a geometry the master does not write"
    );
    // The first of those passes may have scanned the key before the frame landed;
    // the second began after it.
    assert!(
        foreign(&cluster.master_scrape().await, "repair") >= 1.0,
        "repair counts the foreign shard it ignored"
    );
    // Every other owner still holds its real 3+2 shard, and no node a copy of the
    // forged frame.
    let owners = cluster.owners(key);
    for aux in 0..cluster.cluster.aux.len() {
        let held: Vec<_> = cluster
            .aux_inventory(aux)
            .await
            .into_iter()
            .filter(|entry| entry.key == key)
            .collect();
        let forged_copies = held
            .iter()
            .filter(|entry| entry.version == forged.version)
            .count();
        let expected_forged = usize::from(aux == owner);
        assert_eq!(forged_copies, expected_forged, "aux-{aux}: {held:?}");
        if aux != owner && owners.contains(&aux) {
            let rank = owners.iter().position(|&other| other == aux).unwrap();
            assert!(
                held.iter().any(|entry| entry.data_shards == 3
                    && entry.parity_shards == 2
                    && usize::from(entry.shard_index) == rank),
                "aux-{aux} lost its real shard: {held:?}"
            );
        }
    }
}

/// Aux nodes given the cluster's geometry refuse shards of any other, forged or
/// from a master configured with another k and m. Such a master refuses to start
/// while it can see them; one that started before they were configured so has its
/// writes fail with a 503 that says why, and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aux_nodes_refuse_shards_of_another_geometry_and_say_why() {
    let mut cluster = TestCluster::start(); // 3+2 on masters and aux nodes
    let aux_list: Vec<String> = cluster
        .cluster
        .aux
        .iter()
        .map(|node| node.addr.to_string())
        .collect();
    let mut misconfigured = std::process::Command::new(env!("CARGO_BIN_EXE_shardcache"))
        .args([
            "master",
            "--listen",
            "127.0.0.1:0",
            "--aux",
            &aux_list.join(","),
        ])
        .args(["--data-shards", "2", "--parity-shards", "3"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let gave_up_at = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = misconfigured.try_wait().unwrap() {
            break exit;
        }
        if Instant::now() > gave_up_at {
            misconfigured.kill().unwrap();
            panic!("a master configured for 2+3 started against 3+2 aux nodes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut misconfigured.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!exit.success());
    assert!(
        stderr.contains("error: this master writes 2+3 shards")
            && stderr.contains("aux-0 stores 3+2"),
        "{stderr}"
    );

    // The aux nodes turn 2+3 under the running 3+2 master.
    for aux in 0..cluster.cluster.aux.len() {
        cluster
            .cluster
            .restart_aux_with(aux, "--data-shards", "2")
            .unwrap();
        cluster
            .cluster
            .restart_aux_with(aux, "--parity-shards", "3")
            .unwrap();
    }
    for aux in 0..cluster.cluster.aux.len() {
        cluster.wait_for_state(aux, "up").await;
    }
    // Every write fails; once the master's pooled connections to the restarted
    // nodes are fresh, the 503 carries their reason.
    let gave_up_at = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = cluster.set("k", "v").await;
        assert_eq!(status, 503, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("write quorum not reached"), "{error}");
        if error.contains("stores 2+3 shards") {
            break;
        }
        assert!(
            Instant::now() < gave_up_at,
            "no refusal's reason in {error}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for aux in 0..cluster.cluster.aux.len() {
        assert!(cluster.aux_inventory(aux).await.is_empty(), "aux-{aux}");
    }
    assert_eq!(cluster.value("k").await, None);

    // Directly: a frame of the nodes' geometry is taken, another refused.
    let direct = |data_shards: u8, parity_shards: u8| {
        let key = format!("direct {data_shards}+{parity_shards}");
        first_shard(&key, b"a value", data_shards, parity_shards)
    };
    assert_eq!(cluster.put_frame(0, &direct(2, 3)).await.status(), 204);
    let refused = cluster.put_frame(0, &direct(1, 0)).await;
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("the shard is 1+0"),
        "{body}"
    );
}

/// Headers sent slowly (or never finished) cost a connection for at most
/// `--header-read-timeout`; connections past `--max-connections` are closed at
/// once; and the node goes on serving the masters throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_and_connections_are_capped_on_the_aux_port() {
    let cluster = TestCluster::start_with(|spec| {
        spec.aux_args.extend(tight_connection_limits());
    });
    let addr = cluster.cluster.aux[0].addr;
    slow_headers_are_cut_off_and_excess_connections_closed(&cluster, addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_and_connections_are_capped_on_the_master_port() {
    let cluster = TestCluster::start_with(|spec| {
        spec.master_args.extend(tight_connection_limits());
    });
    let addr = cluster.cluster.masters[0].addr;
    slow_headers_are_cut_off_and_excess_connections_closed(&cluster, addr).await;
}

/// The header-read timeout of [`tight_connection_limits`].
const HEADER_READ_TIMEOUT_SECS: u64 = 2;

/// A 2 s header timeout and a cap of 64 connections.
fn tight_connection_limits() -> [String; 4] {
    [
        "--header-read-timeout".into(),
        HEADER_READ_TIMEOUT_SECS.to_string() + "s",
        "--max-connections".into(),
        "64".into(),
    ]
}

/// With [`tight_connection_limits`] on the node at `addr`: a client that never
/// finishes its headers is cut off within seconds, connections over the cap are
/// closed, and the cluster still serves afterwards.
async fn slow_headers_are_cut_off_and_excess_connections_closed(
    cluster: &TestCluster,
    addr: std::net::SocketAddr,
) {
    let started = Instant::now();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: node\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buffer))
        .await
        .expect("the node closed the slow connection");
    assert!(
        matches!(read, Ok(0) | Err(_)) || String::from_utf8_lossy(&buffer).contains(" 408 "),
        "{read:?}: {}",
        String::from_utf8_lossy(&buffer)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // 80 idle connections against a cap of 64 (masters hold a few to aux nodes too).
    let flood_began = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..80 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // All at once and well within the header timeout (checked below), so that only
    // the cap can have closed any.
    let peeks = idle.iter_mut().map(|stream| async move {
        let mut byte = [0u8; 1];
        let peek = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut byte)).await;
        matches!(peek, Ok(Ok(0)) | Ok(Err(_)))
    });
    let closed = futures::future::join_all(peeks)
        .await
        .into_iter()
        .filter(|closed| *closed)
        .count();
    assert!(
        flood_began.elapsed() < Duration::from_secs(HEADER_READ_TIMEOUT_SECS),
        "the flood took {:?}: the header timeout, not the cap, may have closed them",
        flood_began.elapsed()
    );
    assert!(
        closed >= 16,
        "only {closed} of 80 connections over the cap were closed"
    );
    drop(idle);
    // The node learns of the dropped connections only as it reads their EOFs, and
    // the client's pooled connections may have met the header timeout: until
    // then a request can find its connection closed. It must succeed soon after.
    let url = format!("{}/data", cluster.master());
    wait_until(
        "the cluster to serve after the flood",
        Duration::from_secs(10),
        || {
            let request = cluster
                .http
                .post(&url)
                .json(&serde_json::json!({ "key": "after the flood", "value": "fine" }));
            async move { matches!(request.send().await, Ok(response) if response.status() == 200) }
        },
    )
    .await;
    assert_eq!(
        cluster.value("after the flood").await.as_deref(),
        Some("fine")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_cluster_token_internal_ports_and_the_admin_api_refuse_strangers() {
    const TOKEN: &str = "correct horse battery staple";
    let cluster = TestCluster::start_with(|spec| {
        for args in [&mut spec.aux_args, &mut spec.master_args] {
            args.extend(["--cluster-token".into(), TOKEN.into()]);
        }
    });
    // The masters present it: the data path works.
    assert_eq!(cluster.set("k", "v").await.0, 200);
    assert_eq!(cluster.value("k").await.as_deref(), Some("v"));

    let aux = cluster.cluster.aux[0].addr;
    let shard_url = format!("http://{aux}{}/k", wire::SHARDS_PATH);
    let master = cluster.master();
    let on_aux = |path: &str| format!("http://{aux}{path}");
    let requests = [
        (reqwest::Method::GET, shard_url.clone()),
        (reqwest::Method::DELETE, shard_url.clone()),
        (reqwest::Method::PUT, on_aux(wire::SHARDS_PATH)),
        (reqwest::Method::POST, on_aux(wire::MULTI_GET_PATH)),
        (reqwest::Method::POST, on_aux(wire::MULTI_PUT_PATH)),
        (reqwest::Method::GET, on_aux(wire::INVENTORY_PATH)),
        (reqwest::Method::POST, on_aux(wire::LEASE_PATH)),
        (reqwest::Method::GET, on_aux(wire::MEMBERSHIP_PATH)),
        (reqwest::Method::PUT, on_aux(wire::MEMBERSHIP_PATH)),
        (reqwest::Method::GET, format!("{master}/cluster")),
        (reqwest::Method::POST, format!("{master}/cluster/nodes")),
        (
            reqwest::Method::DELETE,
            format!("{master}/cluster/nodes/aux-0"),
        ),
    ];
    for (method, url) in &requests {
        for authorization in [None, Some("Bearer wrong"), Some(TOKEN)] {
            let mut request = cluster.http.request(method.clone(), url);
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                401,
                "{method} {url} with {authorization:?}"
            );
            let body: serde_json::Value = response.json().await.unwrap();
            assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
        }
    }
    // The refused deletes and writes changed nothing.
    assert_eq!(cluster.value("k").await.as_deref(), Some("v"));
    // With it, they answer; health and the client API stay open.
    let bearer = format!("Bearer {TOKEN}");
    let shard = cluster
        .http
        .get(&shard_url)
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert!(
        [200, 404].contains(&shard.status().as_u16()),
        "{}",
        shard.status()
    );
    let view = cluster
        .http
        .get(format!("{master}/cluster"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(view.status(), 200);
    let view: serde_json::Value = view.json().await.unwrap();
    assert_eq!(
        view["nodes"].as_array().map(Vec::len),
        Some(cluster.cluster.aux.len()),
        "the refused DELETE removed no node: {view}"
    );
    for url in [format!("http://{aux}/health"), format!("{master}/health")] {
        assert_eq!(
            cluster.http.get(&url).send().await.unwrap().status(),
            200,
            "{url}"
        );
    }
}
