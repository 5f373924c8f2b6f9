//! Several server processes on one real `redis-server` (`--redis`): one
//! broadcast domain, exactly once, per-sender order, and riding out a Redis
//! restart.
//!
//! Each test starts its own `redis-server` on a free loopback port, with no
//! persistence, and kills it at the end. `redis-server` must be installed
//! (`.ci/test.sh` installs the Debian package); without it these tests fail
//! with a message saying so rather than pass without testing anything.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::util::*;

/// Starts `n` nodes on `redis`, rate limit off (the tests send fast), and
/// waits until each reports its cluster link up.
async fn nodes(redis: &Redis, n: usize, extra: &[&str]) -> Vec<Server> {
    let url = redis.url();
    let mut args = vec!["--redis", &url, "--max-message-rate", "0"];
    args.extend_from_slice(extra);
    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        let node = Server::start(&args).await;
        node.wait_health("cluster", "up").await;
        nodes.push(node);
    }
    nodes
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
async fn exact_and_ordered(node_count: usize, extra: &[&str]) {
    const PER_SENDER: u64 = 5_000;
    let redis = Redis::start().await;
    let nodes = nodes(&redis, node_count, extra).await;
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
    exact_and_ordered(2, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_ten_thousand_messages_exactly_once_in_order() {
    exact_and_ordered(3, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_history_two_nodes_ten_thousand_messages_exactly_once_in_order() {
    // `--history-size 0`: the path without positions (local delivery at
    // once, PUBLISH), unchanged.
    exact_and_ordered(2, &["--history-size", "0"]).await;
}

#[tokio::test]
async fn v1_events_carry_the_senders_name_across_nodes() {
    let redis = Redis::start().await;
    let nodes = nodes(&redis, 2, &[]).await;
    let mut plain = nodes[0].connect().await;
    let carol = format!("{}?name=carol", nodes[1].ws_url());
    let (mut v1, _) = upgrade_with(&carol, &[("Sec-WebSocket-Protocol", "broadcast.v1")])
        .await
        .unwrap();
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
    nodes[0].wait_health("cluster", "degraded").await;
    nodes[1].wait_health("cluster", "degraded").await;
    let health = nodes[0].http_get("/healthz").await;
    assert_eq!(health.status, 200, "a degraded node still answers 200");
    assert_eq!(json_value(&health.body, "status"), Some("degraded".into()));
    // Not ready for new clients: they would not reach the other node's.
    let ready = nodes[0].http_get("/readyz").await;
    assert_eq!(ready.status, 503, "{ready:?}");
    assert_eq!(
        json_value(&ready.body, "reason"),
        Some("cluster link down: Redis is unreachable".into())
    );
    assert_eq!(nodes[0].http_get("/livez").await.status, 200);

    // Local delivery goes on while Redis is away; these are counted as not relayed.
    for n in 0..50 {
        a0.send(Message::text(format!("local-{n}"))).await.unwrap();
        assert_eq!(recv(&mut a1).await, Message::text(format!("local-{n}")));
    }
    assert!(nodes[0].health_number("not_relayed").await >= 50);
    assert_quiet(&mut b, "client on the cut-off node").await;

    redis.restart().await;
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
    nodes[0].wait_health("cluster", "up").await;
    nodes[1].wait_health("cluster", "up").await;
    assert_eq!(nodes[0].http_get("/readyz").await.status, 200);
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

#[tokio::test]
async fn bad_redis_url_exits_1_with_one_line() {
    // Unreachable Redis counts as a bad URL at start: see the README.
    let unreachable = format!("redis://127.0.0.1:{}", closed_port());
    for (url, says) in [
        ("http://127.0.0.1:6379", "invalid --redis url"),
        ("redis://127.0.0.1:notaport", "invalid --redis url"),
        ("rediss://127.0.0.1:6379", "tls"),
        (unreachable.as_str(), "cannot reach redis"),
    ] {
        let run = run_start(&["--redis", url], &[]).await;
        let (code, stderr) = (run.status.code(), run.stderr);
        assert_eq!(code, Some(1), "{url}: stderr {stderr:?}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{url}: expected one line, got {stderr:?}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].to_ascii_lowercase().contains(says),
            "{url}: {stderr:?}"
        );
    }
}

#[tokio::test]
async fn redis_password_is_not_printed() {
    let url = format!("redis://user:hunter2@127.0.0.1:{}", closed_port());
    let run = run_to_exit(&["start", "--port", "0", "--redis", &url], &[]).await;
    let (code, stderr) = (run.status.code(), run.stderr);
    assert_eq!(code, Some(1));
    assert!(!stderr.contains("hunter2"), "{stderr:?}");
    assert!(stderr.contains("user:***@"), "{stderr:?}");
}

/// `POST /api/publish` on `node` with the API key `key`; the status.
async fn api_publish(node: &Server, key: &str, body: &str) -> u16 {
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        node.addr(),
        body.len()
    );
    http_raw(&node.addr(), req.as_bytes()).await.status
}

#[tokio::test]
async fn channels_cross_nodes_and_a_node_hears_only_its_own_channels() {
    const KEY: &str = "cluster-api-key-0123";
    let redis = Redis::start().await;
    let nodes = nodes(&redis, 2, &["--api-key", KEY]).await;
    let url = |node: &Server, channel: &str| format!("ws://{}/ws/{channel}", node.addr());
    let mut x = vec![
        connect(&url(&nodes[0], "x")).await,
        connect(&url(&nodes[1], "x")).await,
    ];
    let mut y1 = connect(&url(&nodes[1], "y")).await;
    let mut y2 = connect(&url(&nodes[1], "y")).await;
    // Node 0 follows only x, node 1 both.
    nodes[0].wait_health("cluster_subscriptions", 1).await;
    nodes[1].wait_health("cluster_subscriptions", 2).await;
    barrier(&mut x, false).await;

    // y's traffic stays off node 0: a marker on x sent after it (same
    // publishing connection, so Redis delivers in that order) is all node 0
    // receives from Redis meanwhile.
    let before = nodes[0].health_number("relayed_in").await;
    for i in 0..20 {
        y1.send(Message::text(format!("y-{i}"))).await.unwrap();
    }
    for i in 0..20 {
        assert_eq!(recv(&mut y2).await, Message::text(format!("y-{i}")));
    }
    x[1].send(Message::text("marker")).await.unwrap();
    assert_eq!(recv(&mut x[0]).await, Message::text("marker"));
    assert_eq!(nodes[0].health_number("relayed_in").await - before, 1);

    // An API publish on node 0, which has nobody in y, reaches y on node 1.
    assert_eq!(
        api_publish(&nodes[0], KEY, r#"{"channel":"y","text":"via api"}"#).await,
        200
    );
    assert_eq!(recv(&mut y1).await, Message::text("via api"));
    assert_eq!(recv(&mut y2).await, Message::text("via api"));
    assert_quiet(&mut x[0], "x on node 0").await;

    // When y's last member on node 1 leaves, node 1 unsubscribes from it.
    drop((y1, y2));
    nodes[1].wait_health("cluster_subscriptions", 1).await;
}

// History in the cluster (docs/cluster.md, "History"): positions assigned
// in Redis, resume on any node, outages. Default history flags throughout.

/// One message as a subscriber saw it: offset, epoch, text.
type Seen = (u64, String, String);

/// A v2 client of `node` subscribed to `news` (from `since` when given),
/// with its `subscribed` answer.
async fn news_v2(node: &Server, since: Option<&Seen>) -> (Ws, serde_json::Value) {
    let (mut ws, _) = crate::v2::connect_v2(node, "/ws", None).await;
    let mut command = serde_json::json!({"type": "subscribe", "channel": "news", "id": 1});
    if let Some((offset, epoch, _)) = since {
        command["since"] = serde_json::json!({"offset": offset, "epoch": epoch});
    }
    crate::v2::send(&mut ws, command).await;
    let answer = crate::v2::reply(&mut ws).await;
    assert_eq!(answer["type"], "subscribed", "{answer}");
    (ws, answer)
}

/// A `broadcast.v1` client of `node` on `/ws/news`, with its welcome.
async fn news_v1(node: &Server, since: Option<&Seen>) -> (Ws, serde_json::Value) {
    let query = since.map_or(String::new(), |(o, e, _)| format!("?since={e}:{o}"));
    let url = format!("ws://{}/ws/news{query}", node.addr());
    let (mut ws, _) = upgrade_with(&url, &[("Sec-WebSocket-Protocol", "broadcast.v1")])
        .await
        .unwrap_or_else(|e| panic!("v1 {url}: {e}"));
    let welcome = crate::v2::event(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

/// A message event (v1 or v2) as [`Seen`]; `None` for anything else.
fn seen(event: &serde_json::Value) -> Option<Seen> {
    (event["type"] == "message").then(|| {
        (
            event["offset"]
                .as_u64()
                .unwrap_or_else(|| panic!("no offset: {event}")),
            event["epoch"].as_str().expect("epoch").to_owned(),
            event["text"].as_str().expect("text").to_owned(),
        )
    })
}

/// Reads messages into `got` until `count` were read in all, or (with
/// `None`) until the connection ends. Other events (presence) are skipped.
async fn read_news(ws: &mut Ws, got: &mut Vec<Seen>, count: Option<usize>) {
    while count.is_none_or(|n| got.len() < n) {
        let m = match timeout(EVENT_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(_) if count.is_none() => return,
            Ok(other) => panic!("connection ended after {} messages: {other:?}", got.len()),
            Err(_) => panic!("timed out after {} messages", got.len()),
        };
        let Message::Text(t) = m else { continue };
        let event: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert_ne!(event["type"], "subscribed", "unexpected notice: {event}");
        got.extend(seen(&event));
    }
}

/// A plain client of `node` sending `0`, `1`, … `n - 1` to `news`, one
/// every 5 ms (a steady stream rather than a burst: the default history
/// keeps 100 messages, 0.5 s of it).
fn publish_steadily(node: &Server, n: usize) -> tokio::task::JoinHandle<Ws> {
    let url = format!("ws://{}/ws/news", node.addr());
    tokio::spawn(async move {
        let mut ws = connect(&url).await;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        for i in 0..n {
            tick.tick().await;
            ws.send(Message::text(i.to_string())).await.unwrap();
        }
        ws
    })
}

/// `got` is `0..n` exactly once, in order, at consecutive offsets of one
/// epoch.
fn assert_exactly_once(got: &[Seen], n: usize, who: &str) {
    let texts: Vec<usize> = got.iter().map(|(_, _, t)| t.parse().unwrap()).collect();
    let first_gap = texts.iter().enumerate().find(|(i, t)| *i != **t);
    assert!(
        texts.len() == n && first_gap.is_none(),
        "{who}: {} messages, first out of place: {first_gap:?}",
        texts.len()
    );
    for pair in got.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "{who}: offsets {pair:?}");
        assert_eq!(pair[1].1, pair[0].1, "{who}: epochs {pair:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_cut_on_one_node_resumes_on_another_exactly_once_in_order() {
    const N: usize = 600;
    let redis = Redis::start().await;
    let nodes = nodes(&redis, 2, &[]).await;
    let (mut a, answer) = news_v2(&nodes[0], None).await;
    assert_eq!(answer["offset"], 0, "{answer}");
    // The publisher is on the subscriber's first node: its own messages
    // come back to that node through Redis, in offset order.
    let publisher = publish_steadily(&nodes[0], N);
    let mut got = Vec::new();
    read_news(&mut a, &mut got, Some(150)).await;
    drop(a); // cut: the TCP connection goes without a close
    let last = got.last().unwrap().clone();
    let (mut b, answer) = news_v2(&nodes[1], Some(&last)).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    assert_eq!(answer["epoch"], last.1.as_str(), "{answer}");
    read_news(&mut b, &mut got, Some(N)).await;
    assert_exactly_once(&got, N, "subscriber");
    assert_eq!(got[0].0, 1);
    let _publisher = publisher.await.unwrap();
    assert_quiet_but_presence(&mut b, "resumed subscriber").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_of_a_node_killed_mid_stream_resume_on_another_with_no_gap() {
    const N: usize = 600;
    let redis = Redis::start().await;
    let mut nodes = nodes(&redis, 2, &[]).await;
    let (mut v2, _) = news_v2(&nodes[0], None).await;
    let (mut v1, welcome) = news_v1(&nodes[0], None).await;
    assert_eq!(welcome["position"]["offset"], 0, "{welcome}");
    let publisher = publish_steadily(&nodes[1], N);
    let (mut got_v2, mut got_v1) = (Vec::new(), Vec::new());
    read_news(&mut v2, &mut got_v2, Some(100)).await;
    read_news(&mut v1, &mut got_v1, Some(100)).await;
    nodes[0].signal("KILL");
    nodes[0].wait_exit(Duration::from_secs(10)).await;
    // Whatever reached them before the kill, then the end of the stream.
    read_news(&mut v2, &mut got_v2, None).await;
    read_news(&mut v1, &mut got_v1, None).await;

    let (mut v2, answer) = news_v2(&nodes[1], got_v2.last()).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    let (mut v1, welcome) = news_v1(&nodes[1], got_v1.last()).await;
    assert_eq!(welcome["recovered"], true, "{welcome}");
    read_news(&mut v2, &mut got_v2, Some(N)).await;
    read_news(&mut v1, &mut got_v1, Some(N)).await;
    assert_exactly_once(&got_v2, N, "v2 subscriber");
    assert_exactly_once(&got_v1, N, "v1 subscriber");
    let _publisher = publisher.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_link_was_cut_delivers_what_it_missed_from_the_stream() {
    let redis = Redis::start().await;
    let proxy = LinkProxy::start(&redis).await;
    let url = proxy.url();
    let a = Server::start(&["--redis", &url, "--max-message-rate", "0"]).await;
    a.wait_health("cluster", "up").await;
    let b = nodes(&redis, 1, &[]).await.remove(0);
    let (mut sub, _) = news_v2(&a, None).await;
    let (mut watch, _) = news_v2(&b, None).await;
    let mut publisher = connect(&format!("ws://{}/ws/news", b.addr())).await;
    let (mut got, mut watched) = (Vec::new(), Vec::new());
    let mut sent = 0;
    let mut publish = async |n: usize, watched: &mut Vec<Seen>| {
        for _ in 0..n {
            publisher
                .send(Message::text(sent.to_string()))
                .await
                .unwrap();
            sent += 1;
        }
        read_news(&mut watch, watched, Some(sent)).await;
    };
    publish(10, &mut watched).await;
    read_news(&mut sub, &mut got, Some(10)).await;

    proxy.cut();
    a.wait_health("cluster", "degraded").await;
    // In Redis (B's subscriber saw them), not on node A.
    publish(50, &mut watched).await;
    proxy.restore();
    a.wait_health("cluster", "up").await;
    read_news(&mut sub, &mut got, Some(60)).await;
    publish(10, &mut watched).await;
    read_news(&mut sub, &mut got, Some(70)).await;
    assert_exactly_once(&got, 70, "subscriber on the cut node");
    assert_eq!(got, watched);
    assert_quiet_but_presence(&mut sub, "subscriber on the cut node").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_without_persistence_says_recovered_false_with_a_new_epoch() {
    let mut redis = Redis::start().await;
    let nodes = nodes(&redis, 2, &[]).await;
    let (mut sub, _) = news_v2(&nodes[0], None).await;
    let mut publisher = connect(&format!("ws://{}/ws/news", nodes[1].addr())).await;
    for i in 0..10 {
        publisher.send(Message::text(i.to_string())).await.unwrap();
    }
    let mut got = Vec::new();
    read_news(&mut sub, &mut got, Some(10)).await;
    let before = got.last().unwrap().clone();

    redis.kill().await;
    nodes[0].wait_health("cluster", "degraded").await;
    redis.restart().await;
    for node in &nodes {
        node.wait_health("cluster", "up").await;
    }
    // The streams are gone with the data: the subscriber is told, with the
    // channel's new position.
    let notice = crate::v2::reply(&mut sub).await;
    assert_eq!(notice["type"], "subscribed", "{notice}");
    assert_eq!(notice["channel"], "news", "{notice}");
    assert_eq!(notice["recovered"], false, "{notice}");
    assert_eq!(notice["reason"], "epoch", "{notice}");
    assert!(notice.get("id").is_none(), "{notice}");
    let epoch = notice["epoch"].as_str().unwrap().to_owned();
    assert_ne!(epoch, before.1);
    assert_eq!(notice["offset"], 0, "{notice}");
    // Resuming from the old position, on either node, is refused the same way.
    let (_, answer) = news_v2(&nodes[1], Some(&before)).await;
    assert_eq!(
        (&answer["recovered"], &answer["reason"], &answer["epoch"]),
        (
            &serde_json::json!(false),
            &serde_json::json!("epoch"),
            &serde_json::json!(epoch)
        ),
        "{answer}"
    );
    // And the new history goes on from 1.
    publisher.send(Message::text("10")).await.unwrap();
    read_news(&mut sub, &mut got, Some(11)).await;
    assert_eq!(got[10], (1, epoch, "10".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_before_the_nodes_ring_is_served_from_the_stream() {
    let redis = Redis::start().await;
    let a = nodes(&redis, 1, &[]).await.remove(0);
    // Node B's ring holds about a dozen messages (its byte budget); the
    // stream holds 100 (the default size).
    let b = nodes(&redis, 1, &["--history-memory", "2000"])
        .await
        .remove(0);
    let (mut sub, _) = news_v2(&a, None).await;
    let mut publisher = connect(&format!("ws://{}/ws/news", a.addr())).await;
    for i in 0..60 {
        publisher.send(Message::text(i.to_string())).await.unwrap();
    }
    let mut got = Vec::new();
    read_news(&mut sub, &mut got, Some(60)).await;
    let since = got[9].clone();
    let (mut resumed, answer) = news_v2(&b, Some(&since)).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    let mut seen = got[..10].to_vec();
    read_news(&mut resumed, &mut seen, Some(60)).await;
    assert_exactly_once(&seen, 60, "resumed on B");
    assert_eq!(seen, got);
    assert_quiet_but_presence(&mut resumed, "resumed on B").await;
    let m = b.metrics().await;
    assert_eq!(metric(&m, "broadcast_history_stream_reads_total", ""), 1.0);
    let recovered = "outcome=\"recovered\"";
    assert_eq!(
        metric(&m, "broadcast_history_resumes_total", recovered),
        1.0
    );
    assert_eq!(metric(&m, "broadcast_history_replayed_total", ""), 50.0);
}

/// A client that connects to one node, sends two messages and goes at
/// once (its socket dropped, no close frame): a subscriber on another node
/// still gets both, with history on (its messages are positioned in Redis
/// after it has left) and off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_messages_of_a_client_that_leaves_at_once_still_cross_the_nodes() {
    for extra in [&[][..], &["--history-size", "0"][..]] {
        let redis = Redis::start().await;
        let nodes = nodes(&redis, 2, extra).await;
        let (mut sub, _) = news_v1(&nodes[0], None).await;
        for round in 0..20 {
            // It does not wait for its welcome: its node may not follow
            // the channel yet when its messages arrive.
            let url = format!("ws://{}/ws/news", nodes[1].addr());
            let proto = [("Sec-WebSocket-Protocol", "broadcast.v1")];
            let (mut publisher, _) = upgrade_with(&url, &proto).await.unwrap();
            // As browsers do. Under Nagle's algorithm `end` could wait in
            // this side's kernel for the server's ACK of `one`, and dropping
            // a socket with unread data (the welcome) resets it, discarding
            // what it had not sent yet: lost before it left.
            if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = publisher.get_ref() {
                tcp.set_nodelay(true).unwrap();
            }
            let (one, end) = (format!("one {round}"), format!("end {round}"));
            publisher.send(Message::text(one.clone())).await.unwrap();
            publisher.send(Message::text(end.clone())).await.unwrap();
            drop(publisher);
            let mut texts = Vec::new();
            while texts.len() < 2 {
                let next = timeout(EVENT_TIMEOUT, next_data(&mut sub)).await;
                let Ok(Message::Text(event)) = next else {
                    panic!("{extra:?} round {round}: {next:?} after {texts:?}");
                };
                let event: serde_json::Value = serde_json::from_str(&event).unwrap();
                if event["type"] == "message" {
                    texts.push(event["text"].as_str().unwrap().to_owned());
                }
            }
            assert_eq!(texts, [one, end], "{extra:?}");
        }
    }
}

/// `GET /api/history` answers the same on every node, from Redis: on a
/// node that has no member of the channel (so its ring is empty) as on the
/// publisher's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_api_answers_the_same_on_every_node() {
    const KEY: &str = "cluster-api-key-0123";
    let redis = Redis::start().await;
    let nodes = nodes(&redis, 2, &["--api-key", KEY]).await;
    let (mut sub, _) = news_v2(&nodes[0], None).await;
    let mut publisher = connect(&format!("ws://{}/ws/news", nodes[0].addr())).await;
    for i in 0..10 {
        publisher.send(Message::text(i.to_string())).await.unwrap();
    }
    let mut got = Vec::new();
    read_news(&mut sub, &mut got, Some(10)).await;
    let path = "/api/history?channel=news&since=4&limit=3";
    let (status, a) = crate::history::api_get(&nodes[0], path, Some(KEY)).await;
    assert_eq!(status, 200, "{a}");
    let (status, b) = crate::history::api_get(&nodes[1], path, Some(KEY)).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(a, b);
    assert_eq!(
        (&a["epoch"], &a["offset"]),
        (&serde_json::json!(got[0].1), &serde_json::json!(10))
    );
    let texts: Vec<&str> = a["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["4", "5", "6"], "{a}");
    // A channel nobody used: no messages, and the epoch it will have.
    let (_, empty) =
        crate::history::api_get(&nodes[1], "/api/history?channel=quiet", Some(KEY)).await;
    assert_eq!(
        (&empty["offset"], &empty["messages"]),
        (&serde_json::json!(0), &serde_json::json!([]))
    );
    let (_, again) =
        crate::history::api_get(&nodes[0], "/api/history?channel=quiet", Some(KEY)).await;
    assert_eq!(again["epoch"], empty["epoch"], "{again} {empty}");
}

/// A member told it has joined (its v1 `welcome`, its raw upgrade) hears
/// every node's messages sent after that, even when its node's link to
/// Redis is slow: the join waits for the node's `SUBSCRIBE`, here 300 ms
/// away. Each round joins the channel afresh, while its node may still be
/// unsubscribing from the last one. History on and off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_member_hears_what_other_nodes_send_next_over_a_slow_link() {
    for extra in [&[][..], &["--history-size", "0"][..]] {
        let redis = Redis::start().await;
        let proxy = LinkProxy::start_delayed(&redis, Duration::from_millis(300)).await;
        let url = proxy.url();
        let mut args = vec!["--redis", &url, "--max-message-rate", "0"];
        args.extend_from_slice(extra);
        let slow = Server::start(&args).await;
        slow.wait_health("cluster", "up").await;
        let other = nodes(&redis, 1, extra).await.remove(0);
        let mut publisher = connect(&format!("ws://{}/ws/news", other.addr())).await;
        for round in 0..4 {
            let text = format!("after the join {round}");
            let (mut sub, _) = news_v1(&slow, None).await;
            publisher.send(Message::text(text.clone())).await.unwrap();
            let got = loop {
                let event = crate::v2::event(&mut sub).await;
                if event["type"] == "message" {
                    break event["text"].clone();
                }
            };
            assert_eq!(got, text.as_str(), "{extra:?}");
            // A raw client has only its upgrade to go by.
            let mut raw = connect(&format!("ws://{}/ws/news", slow.addr())).await;
            let text = format!("after the upgrade {round}");
            publisher.send(Message::text(text.clone())).await.unwrap();
            assert_eq!(recv(&mut raw).await, Message::text(text), "{extra:?}");
        }
    }
}
