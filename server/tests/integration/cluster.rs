//! Several server processes on one real `redis-server` (`--redis`): one
//! broadcast domain, exactly once, per-sender order, and riding out a Redis
//! restart.
//!
//! Each test starts its own `redis-server` on a free loopback port, with no
//! persistence, and kills it at the end. `redis-server` must be installed
//! (`.ci/test.sh` installs the Debian package); without it these tests fail
//! with a message saying so rather than pass without testing anything.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::util::*;

/// A `redis-server` of this test's own, killed when dropped.
struct Redis {
    child: Option<Child>,
    port: u16,
}

impl Redis {
    /// Starts `redis-server` on a free loopback port.
    async fn start() -> Redis {
        // The port is free when probed; another process could take it before
        // redis binds it, so try a few.
        for _ in 0..5 {
            let mut redis = Redis {
                child: None,
                port: closed_port(),
            };
            if redis.spawn().await {
                return redis;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts (or restarts) the server on `self.port`; false if it exited.
    async fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed (not on PATH): the cluster tests need a real \
                 Redis; install it with `apt-get install redis-server` (.ci/test.sh does)"
            ),
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                self.child = Some(child);
                return true;
            }
            sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "redis-server on port {} did not listen within 10 s",
            self.port
        );
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL, like a crash) and waits for it to go.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill redis-server");
        }
    }
}

/// Starts `n` nodes on `redis`, rate limit off (the tests send fast), and
/// waits until each reports its cluster link up.
async fn nodes(redis: &Redis, n: usize, extra: &[&str]) -> Vec<Server> {
    let url = redis.url();
    let mut args = vec!["--redis", &url, "--max-message-rate", "0"];
    args.extend_from_slice(extra);
    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        let node = Server::start(&args).await;
        wait_cluster(&node, "up").await;
        nodes.push(node);
    }
    nodes
}

/// The `cluster` value of `/healthz` (`"up"`, `"degraded"`, `"off"`).
async fn cluster_state(node: &Server) -> String {
    let resp = node.http_get("/healthz").await;
    assert_eq!(resp.status, 200, "/healthz: {resp:?}");
    json_value(&resp.body, "cluster")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no cluster string in /healthz: {}", resp.body))
}

/// Polls `/healthz` until the cluster field is `want` (bounded).
async fn wait_cluster(node: &Server, want: &str) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let got = cluster_state(node).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {} cluster stayed {got:?}, expected {want:?}",
            node.port
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// One client on each node of `nodes` (in that order), all subscribed.
async fn one_client_each(nodes: &[Server]) -> Vec<Ws> {
    let mut clients = Vec::new();
    for node in nodes {
        clients.push(node.connect().await);
    }
    // The sync messages of the first client cross the nodes like any other.
    barrier(&mut clients, false).await;
    clients
}

#[tokio::test]
async fn two_nodes_exchange_both_ways() {
    let redis = Redis::start().await;
    let nodes = nodes(&redis, 2, &[]).await;
    let mut c = one_client_each(&nodes).await;

    c[0].send(Message::text("from node 0")).await.unwrap();
    assert_eq!(recv(&mut c[1]).await, Message::text("from node 0"));
    c[1].send(Message::binary(vec![0u8, 1, 255])).await.unwrap();
    assert_eq!(recv(&mut c[0]).await, Message::binary(vec![0u8, 1, 255]));

    // Exactly once: no copy from Redis on top of the local delivery, and no
    // sender gets its own message back.
    assert_quiet(&mut c[0], "client on node 0").await;
    assert_quiet(&mut c[1], "client on node 1").await;

    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(node.health_number("not_relayed").await, 0, "node {i}");
        let m = node.metrics().await;
        assert_eq!(metric(&m, "broadcast_cluster_link_up", ""), 1.0, "node {i}");
        assert!(metric(&m, "broadcast_cluster_relayed_out_total", "") >= 1.0);
        assert!(metric(&m, "broadcast_cluster_relayed_in_total", "") >= 1.0);
    }
}

/// Two senders on the first two nodes send `PER_SENDER` messages each as
/// fast as they can; a receiver on every node, and each sender, must see
/// every message of the other sender(s) exactly once, in order.
async fn exact_and_ordered(node_count: usize) {
    const PER_SENDER: u64 = 5_000;
    let redis = Redis::start().await;
    let nodes = nodes(&redis, node_count, &[]).await;
    // Clients: senders 0 (node 0) and 1 (node 1), then a receiver per node.
    let mut clients = Vec::new();
    for node in nodes.iter().take(2).chain(nodes.iter()) {
        clients.push(node.connect().await);
    }
    barrier(&mut clients, false).await;

    let mut sinks = Vec::new();
    let mut readers = Vec::new();
    for (idx, ws) in clients.into_iter().enumerate() {
        let (sink, mut stream) = ws.split();
        sinks.push(sink);
        // Senders see the other sender's stream; receivers both.
        let from: Vec<u64> = match idx {
            0 => vec![1],
            1 => vec![0],
            _ => vec![0, 1],
        };
        readers.push(tokio::spawn(async move {
            let mut next: HashMap<u64, u64> = from.iter().map(|&s| (s, 0)).collect();
            let total = PER_SENDER * from.len() as u64;
            for _ in 0..total {
                let m = timeout(EVENT_TIMEOUT, stream.next())
                    .await
                    .unwrap_or_else(|_| panic!("client {idx}: timed out; at {next:?}"))
                    .expect("stream ended")
                    .expect("websocket error");
                let Message::Text(t) = m else {
                    panic!("client {idx}: unexpected {m:?}")
                };
                let (s, n) = t.split_once('-').expect("sender-seq");
                let (s, n): (u64, u64) = (s.parse().unwrap(), n.parse().unwrap());
                let want = next
                    .get_mut(&s)
                    .unwrap_or_else(|| panic!("client {idx} got a message from sender {s}"));
                assert_eq!(
                    n, *want,
                    "client {idx}: sender {s} out of order or duplicated"
                );
                *want += 1;
            }
            // Nothing more: no duplicates after the last one either.
            if let Ok(Some(m)) = timeout(QUIET_PERIOD, stream.next()).await {
                panic!("client {idx}: unexpected extra message {m:?}");
            }
            next
        }));
    }
    let mut senders = Vec::new();
    for (s, mut sink) in sinks.drain(..2).enumerate() {
        senders.push(tokio::spawn(async move {
            for n in 0..PER_SENDER {
                sink.feed(Message::text(format!("{s}-{n}"))).await.unwrap();
            }
            sink.flush().await.unwrap();
            sink
        }));
    }
    let mut keep = Vec::new();
    for s in senders {
        keep.push(s.await.unwrap());
    }
    for (idx, r) in readers.into_iter().enumerate() {
        let seen = r.await.unwrap();
        assert!(
            seen.values().all(|&n| n == PER_SENDER),
            "client {idx}: {seen:?}"
        );
    }
    let mut relayed_out = 0;
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(node.health_number("not_relayed").await, 0, "node {i}");
        relayed_out += node.health_number("relayed_out").await;
    }
    // Both senders' messages, plus the barrier's.
    assert!(relayed_out >= 2 * PER_SENDER, "relayed_out {relayed_out}");
    drop(keep);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_ten_thousand_messages_exactly_once_in_order() {
    exact_and_ordered(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_ten_thousand_messages_exactly_once_in_order() {
    exact_and_ordered(3).await;
}

#[tokio::test]
async fn v1_events_carry_the_senders_name_across_nodes() {
    let redis = Redis::start().await;
    let nodes = nodes(&redis, 2, &[]).await;
    let mut plain = nodes[0].connect().await;
    let mut req = format!("{}?name=carol", nodes[1].ws_url())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("broadcast.v1"),
    );
    let (mut v1, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let welcome = recv(&mut v1).await;
    assert!(welcome.to_text().unwrap().contains("\"welcome\""));
    let mut named = connect(&format!("{}?name=alice", nodes[0].ws_url())).await;

    // Until the v1 client has one: the nodes may need a moment to count it.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let event = loop {
        named.send(Message::text("hi carol")).await.unwrap();
        let got = timeout(Duration::from_millis(200), async {
            loop {
                let m = next_data(&mut v1).await;
                let t = m.to_text().unwrap().to_string();
                if t.contains("\"message\"") {
                    return t;
                }
            }
        })
        .await;
        if let Ok(t) = got {
            break t;
        }
        assert!(Instant::now() < deadline, "no message event on node 1");
    };
    let v: serde_json::Value = serde_json::from_str(&event).unwrap();
    assert_eq!(v["name"], "alice", "{event}");
    assert_eq!(v["text"], "hi carol", "{event}");
    assert!(v["from"].as_u64().is_some() && v["time"].as_u64().is_some());
    // The plain client on the sender's node gets the raw text.
    assert_eq!(recv(&mut plain).await, Message::text("hi carol"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_local_delivery_continues_and_relaying_resumes() {
    let mut redis = Redis::start().await;
    let nodes = nodes(&redis, 2, &[]).await;
    // a0, a1 on node 0; b on node 1.
    let mut clients = vec![
        nodes[0].connect().await,
        nodes[0].connect().await,
        nodes[1].connect().await,
    ];
    barrier(&mut clients, false).await;
    let mut b = clients.pop().unwrap();
    let mut a1 = clients.pop().unwrap();
    let mut a0 = clients.pop().unwrap();

    redis.kill().await;
    wait_cluster(&nodes[0], "degraded").await;
    wait_cluster(&nodes[1], "degraded").await;
    let health = nodes[0].http_get("/healthz").await;
    assert_eq!(health.status, 200, "a degraded node still answers 200");
    assert_eq!(json_value(&health.body, "status"), Some("degraded".into()));

    // Local delivery goes on while Redis is away; these are counted as not relayed.
    for n in 0..50 {
        a0.send(Message::text(format!("local-{n}"))).await.unwrap();
        assert_eq!(recv(&mut a1).await, Message::text(format!("local-{n}")));
    }
    assert!(nodes[0].health_number("not_relayed").await >= 50);
    assert_quiet(&mut b, "client on the cut-off node").await;

    redis.spawn().await;
    // Probe until a message crosses again; node 0's own client must get
    // every probe meanwhile, in order.
    let deadline = Instant::now() + 2 * EVENT_TIMEOUT;
    let mut n = 0u64;
    let first = loop {
        a0.send(Message::text(format!("probe-{n}"))).await.unwrap();
        assert_eq!(recv(&mut a1).await, Message::text(format!("probe-{n}")));
        n += 1;
        if let Ok(m) = timeout(Duration::from_millis(100), next_data(&mut b)).await {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "relaying did not resume after Redis came back ({n} probes)"
        );
    };
    let first: u64 = first
        .to_text()
        .unwrap()
        .strip_prefix("probe-")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("node 1 got {first:?}"));
    // Later probes arrive in order, once each.
    let mut last = first;
    while let Ok(m) = timeout(QUIET_PERIOD, next_data(&mut b)).await {
        let k: u64 = m.to_text().unwrap()["probe-".len()..].parse().unwrap();
        assert!(k > last, "probe {k} after {last}");
        last = k;
    }
    wait_cluster(&nodes[0], "up").await;
    wait_cluster(&nodes[1], "up").await;
    // And the other way round (the two directions use different
    // connections, which reconnect independently).
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let mut k = 0u64;
    let back = loop {
        b.send(Message::text(format!("back-{k}"))).await.unwrap();
        k += 1;
        if let Ok(m) = timeout(Duration::from_millis(100), next_data(&mut a0)).await {
            break m;
        }
        assert!(Instant::now() < deadline, "node 1 to node 0 did not resume");
    };
    assert_eq!(recv(&mut a1).await, back, "both clients of node 0 get it");
    assert!(
        nodes[0].stderr().matches("Redis link lost").count() == 1
            && nodes[0].stderr().matches("Redis link restored").count() == 1,
        "the outage is logged once each way:\n{}",
        nodes[0].stderr()
    );
}

/// A loopback port nothing listens on (just released by the kernel).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `broadcast-server ARGS` expecting it to exit by itself; returns the
/// exit code and standard error.
fn run_failing(args: &[&str]) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(server_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn broadcast-server");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_redis_url_exits_1_with_one_line() {
    // Unreachable Redis counts as a bad URL at start: see the README.
    let unreachable = format!("redis://127.0.0.1:{}", closed_port());
    for (url, says) in [
        ("http://127.0.0.1:6379", "invalid --redis url"),
        ("redis://127.0.0.1:notaport", "invalid --redis url"),
        ("rediss://127.0.0.1:6379", "tls"),
        (unreachable.as_str(), "cannot reach redis"),
    ] {
        let (code, stderr) = run_failing(&[
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--redis",
            url,
        ]);
        assert_eq!(code, Some(1), "{url}: stderr {stderr:?}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{url}: expected one line, got {stderr:?}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].to_ascii_lowercase().contains(says),
            "{url}: {stderr:?}"
        );
    }
}

#[test]
fn redis_password_is_not_printed() {
    let url = format!("redis://user:hunter2@127.0.0.1:{}", closed_port());
    let (code, stderr) = run_failing(&["start", "--port", "0", "--redis", &url]);
    assert_eq!(code, Some(1));
    assert!(!stderr.contains("hunter2"), "{stderr:?}");
    assert!(stderr.contains("user:***@"), "{stderr:?}");
}
