//! A rolling deploy's drain (`--drain-period`) in a cluster with history:
//! node A, holding 1,000 `broadcast.v1` clients, gets SIGTERM while a
//! publisher on node B keeps sending. A is unready at once, closes its
//! clients with 1012 spread over the period, and each client that resumes
//! on B with `?since=` gets every message exactly once, in order. A
//! publisher A drains loses nothing either: what it sends before answering
//! its 1012 is still published.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::util::*;

const CLIENTS: usize = 1000;

/// What one client saw: the offsets and texts of its messages, in order,
/// over both its connections, and when A closed it.
struct Seen {
    messages: Vec<(u64, String)>,
    closed_at: Instant,
}

async fn v1(url: &str) -> Ws {
    let (ws, _) = upgrade_with(url, &[("Sec-WebSocket-Protocol", "broadcast.v1")])
        .await
        .unwrap_or_else(|e| panic!("v1 {url}: {e}"));
    ws
}

/// Reads `ws` until it closes (returns the close code) or, with `until`,
/// until the message `until` arrived; appends messages to `seen` and takes
/// the epoch from the welcome.
async fn read(
    ws: &mut Ws,
    seen: &mut Vec<(u64, String)>,
    epoch: &mut String,
    until: Option<&str>,
) -> Option<u16> {
    loop {
        let m = match timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(m))) => m,
            other => panic!("after {} messages: {other:?}", seen.len()),
        };
        match m {
            Message::Text(t) => {
                let e: Value = serde_json::from_str(&t).unwrap();
                match e["type"].as_str() {
                    Some("welcome") => {
                        assert_ne!(e["recovered"], false, "not resumed: {e}");
                        *epoch = e["position"]["epoch"].as_str().unwrap().to_owned();
                    }
                    Some("message") => {
                        let data = e["data"].as_str().map(str::to_owned);
                        let text = e["text"].as_str().map(str::to_owned).or(data).unwrap();
                        seen.push((e["offset"].as_u64().unwrap(), text.clone()));
                        if until == Some(text.as_str()) {
                            return None;
                        }
                    }
                    _ => {}
                }
            }
            Message::Close(frame) => return Some(frame.map_or(1005, |f| u16::from(f.code))),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_nodes_clients_resume_on_another_with_nothing_lost() {
    let redis = Redis::start().await;
    let url = redis.url();
    let mut a = Server::start(&["--redis", &url, "--drain-period", "4"]).await;
    let b = Server::start(&["--redis", &url]).await;
    for node in [&a, &b] {
        node.wait_health("cluster", "up").await;
    }
    let (a_url, b_url) = (
        format!("{}/live", a.ws_url()),
        format!("{}/live", b.ws_url()),
    );
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(v1(&a_url).await);
    }
    // A publisher on B, every 100 ms (the default history keeps 100
    // messages: 10 s of it), until told to stop; then "end".
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let mut publisher = v1(&b_url).await;
    let sending = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut sent = 0u64;
        while !*stopped.borrow_and_update() {
            tick.tick().await;
            publisher
                .send(Message::text(sent.to_string()))
                .await
                .unwrap();
            sent += 1;
        }
        publisher.send(Message::text("end")).await.unwrap();
        // Kept open until the clients have it: the last messages of a
        // client that vanishes right after sending them are not what this
        // test is about.
        (sent, publisher)
    });
    let mut tasks = Vec::with_capacity(CLIENTS);
    for mut ws in clients {
        let b_url = b_url.clone();
        tasks.push(tokio::spawn(async move {
            let (mut messages, mut epoch) = (Vec::new(), String::new());
            let code = read(&mut ws, &mut messages, &mut epoch, None).await;
            let closed_at = Instant::now();
            assert_eq!(code, Some(1012), "A's drain closes with 1012");
            let after = messages.last().map_or(0, |m| m.0);
            let mut ws = v1(&format!("{b_url}?since={epoch}:{after}")).await;
            read(&mut ws, &mut messages, &mut epoch, Some("end")).await;
            Seen {
                messages,
                closed_at,
            }
        }));
    }
    // Let the publisher run a little first, so that every client has seen
    // some messages on A.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signalled = Instant::now();
    a.signal("TERM");
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let ready = a.http_get("/readyz").await;
        if ready.status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz still {ready:?}");
        tokio::task::yield_now().await;
    }
    a.wait_exit(Duration::from_secs(30)).await;
    stop.send(true).unwrap();
    let (sent, _publisher) = sending.await.unwrap();
    let mut seen = Vec::with_capacity(CLIENTS);
    for t in tasks {
        seen.push(t.await.unwrap());
    }

    // Nothing lost, nothing twice, in order, for every client.
    let want: Vec<String> = (0..sent)
        .map(|i| i.to_string())
        .chain(["end".into()])
        .collect();
    let first = seen[0].messages.first().map_or(1, |m| m.0);
    for (i, s) in seen.iter().enumerate() {
        let offsets: Vec<u64> = s.messages.iter().map(|m| m.0).collect();
        let expected: Vec<u64> = (first..first + want.len() as u64).collect();
        assert_eq!(offsets, expected, "client {i}: offsets");
        let texts: Vec<&str> = s.messages.iter().map(|m| m.1.as_str()).collect();
        assert_eq!(texts, want, "client {i}: messages");
    }
    // The closes were spread over the period, not all at once: no second
    // of it holds more than half of them (at 250 a second, a quarter).
    let mut per_second = [0usize; 64];
    for s in &seen {
        let at = s.closed_at.saturating_duration_since(signalled).as_secs() as usize;
        per_second[at.min(63)] += 1;
    }
    let busiest = per_second.iter().max().unwrap();
    assert!(
        *busiest <= CLIENTS / 2,
        "closes per second after SIGTERM: {:?}",
        &per_second[..8]
    );
}

/// A publisher on a draining node keeps publishing until it answers the
/// drain's 1012: a message it sends after the close arrived (it cannot know
/// the close is coming) still reaches a subscriber on another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_publishers_messages_before_its_answer_are_published() {
    let redis = Redis::start().await;
    let url = redis.url();
    let mut a = Server::start(&["--redis", &url, "--drain-period", "1"]).await;
    let b = Server::start(&["--redis", &url]).await;
    for node in [&a, &b] {
        node.wait_health("cluster", "up").await;
    }
    // A v1 subscriber has its welcome once its node follows the channel:
    // from then on it gets every message.
    let mut subscriber = v1(&b.ws_url()).await;
    next_event(&mut subscriber, "welcome").await;
    let mut publisher = RawClient::connect(&a).await;
    publisher.send_raw(&masked(OP_TEXT, b"before")).await;
    assert_eq!(
        next_event(&mut subscriber, "message").await["text"],
        "before"
    );
    a.signal("TERM");
    let close = publisher.read_until(OP_CLOSE).await;
    assert_eq!(close.close_code().map(|c| c.0), Some(1012), "{close:?}");
    publisher
        .send_raw(&masked(OP_TEXT, b"after the close"))
        .await;
    publisher.finish_close().await;
    assert_eq!(
        next_event(&mut subscriber, "message").await["text"],
        "after the close"
    );
    let status = a.wait_exit(EVENT_TIMEOUT).await;
    assert_eq!(status.code(), Some(0));
}

/// The next v1 event of type `kind` on `ws` (others skipped), each within
/// the event timeout.
async fn next_event(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let m = match timeout(EVENT_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(m))) => m,
            other => panic!("waiting for a {kind} event: {other:?}"),
        };
        if let Message::Text(t) = m {
            let e: Value = serde_json::from_str(&t).unwrap();
            if e["type"] == kind {
                return e;
            }
        }
    }
}
