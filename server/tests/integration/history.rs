//! History and resume on one node (`docs/history.md`): offsets and epochs
//! on message events, `subscribe` with `since`, `?since=` and `?rewind=`
//! on the URL, the three limits and `GET /api/history`, against the real
//! binary.

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::util::*;
use crate::v2::{connect_v2, event, reply, send};

const KEY: &str = "history-api-key-0123456789";

/// Subscribes (with `since` when given) and returns the `subscribed` answer.
async fn subscribe_since(ws: &mut Ws, channel: &str, since: Option<Value>) -> Value {
    let mut command = json!({"type": "subscribe", "channel": channel, "id": 1});
    if let Some(since) = since {
        command["since"] = since;
    }
    send(ws, command).await;
    let answer = reply(ws).await;
    assert_eq!(answer["type"], "subscribed", "{answer}");
    answer
}

/// The next `message` event (presence skipped).
async fn message(ws: &mut Ws) -> Value {
    let m = reply(ws).await;
    assert_eq!(m["type"], "message", "{m}");
    m
}

fn offset(event: &Value) -> u64 {
    event["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offset in {event}"))
}

/// A plain client on `/ws/NAME` (it publishes; raw clients get no offsets).
async fn plain(server: &Server, path: &str) -> Ws {
    connect(&format!("ws://{}{path}", server.addr())).await
}

/// A v1 client on `path`, with its welcome.
async fn v1(server: &Server, path: &str) -> (Ws, Value) {
    let url = format!("ws://{}{path}", server.addr());
    let (mut ws, _) = upgrade_with(&url, &[("Sec-WebSocket-Protocol", "broadcast.v1")])
        .await
        .unwrap_or_else(|e| panic!("v1 {path}: {e}"));
    let welcome = event(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

/// A v2 client subscribed to `channel`, with its `subscribed` answer.
async fn watcher(server: &Server, channel: &str) -> (Ws, Value) {
    let (mut ws, _) = connect_v2(server, "/ws", None).await;
    let subscribed = subscribe_since(&mut ws, channel, None).await;
    (ws, subscribed)
}

/// Sends `n` text messages `prefix0..` from `ws`, then waits until `watch`
/// (a v2 subscriber of the channel) got the last, so that all are kept.
async fn publish_seen(ws: &mut Ws, watch: &mut Ws, prefix: &str, n: usize) -> u64 {
    for i in 0..n {
        ws.send(Message::text(format!("{prefix}{i}")))
            .await
            .unwrap();
    }
    let last = format!("{prefix}{}", n - 1);
    loop {
        let m = message(watch).await;
        if m["text"] == last.as_str() {
            return offset(&m);
        }
    }
}

async fn refused(server: &Server, path: &str, subprotocol: Option<&str>) -> (u16, String) {
    let url = format!("ws://{}{path}", server.addr());
    let headers: Vec<(&'static str, &str)> = subprotocol
        .map(|p| vec![("Sec-WebSocket-Protocol", p)])
        .unwrap_or_default();
    match upgrade_with(&url, &headers).await {
        Ok(_) => panic!("{path} was accepted"),
        Err(WsError::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("{path}: {e}"),
    }
}

pub(crate) async fn api_get(server: &Server, path: &str, key: Option<&str>) -> (u16, Value) {
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
        server.addr()
    );
    let res = http_raw(&server.addr(), req.as_bytes()).await;
    let doc = serde_json::from_str(&res.body)
        .unwrap_or_else(|e| panic!("GET {path}: {e}: {:?}", res.body));
    (res.status, doc)
}

#[tokio::test]
async fn a_subscriber_that_resumes_gets_all_500_missed_messages_once_in_order() {
    let server = Server::start(&["--history-size", "1000"]).await;
    let (mut first, subscribed) = watcher(&server, "room").await;
    // The position to resume from even though no message came yet.
    assert_eq!(subscribed["offset"], 0, "{subscribed}");
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();
    assert_eq!(epoch.len(), 8, "{subscribed}");
    assert!(subscribed.get("recovered").is_none(), "{subscribed}");
    first.close(None).await.unwrap();
    drop(first);

    let mut publisher = plain(&server, "/ws/room").await;
    let (mut watch, _) = watcher(&server, "room").await;
    let last = publish_seen(&mut publisher, &mut watch, "m", 500).await;
    assert_eq!(last, 500);

    let (mut back, _) = connect_v2(&server, "/ws", None).await;
    let answer = subscribe_since(
        &mut back,
        "room",
        Some(json!({"offset": 0, "epoch": epoch})),
    )
    .await;
    assert_eq!(answer["recovered"], true, "{answer}");
    assert_eq!(
        (&answer["offset"], &answer["epoch"]),
        (&json!(500), &json!(epoch))
    );
    for i in 0..500u64 {
        let m = message(&mut back).await;
        assert_eq!(
            (offset(&m), &m["text"]),
            (i + 1, &json!(format!("m{i}"))),
            "{m}"
        );
        assert_eq!(m["epoch"], epoch.as_str());
    }
    // Then live, and nothing of the replay again.
    publisher.send(Message::text("live")).await.unwrap();
    let m = message(&mut back).await;
    assert_eq!((offset(&m), &m["text"]), (501, &json!("live")), "{m}");

    let m = server.metrics().await;
    let resumes = |outcome: &str| {
        metric(
            &m,
            "broadcast_history_resumes_total",
            &format!("outcome=\"{outcome}\""),
        )
    };
    assert_eq!(resumes("recovered"), 1.0);
    assert_eq!(resumes("expired") + resumes("epoch"), 0.0);
    assert_eq!(metric(&m, "broadcast_history_replayed_total", ""), 500.0);
    assert_eq!(metric(&m, "broadcast_history_messages", ""), 501.0);
    assert!(metric(&m, "broadcast_history_bytes", "") > 501.0 * 10.0);
}

#[tokio::test]
async fn resuming_while_messages_keep_coming_loses_and_doubles_nothing() {
    const RESUMES: usize = 40;
    const READ_EACH: u64 = 50;
    let server = Server::start(&["--history-size", "100000", "--workers", "2"]).await;
    // Two publishers, placed on the two shards: both shards' inboxes carry
    // the channel's messages while subscribers join and resume.
    let mut publishers = vec![
        plain(&server, "/ws/busy").await,
        plain(&server, "/ws/busy").await,
    ];
    let (mut watch, _) = watcher(&server, "busy").await;
    for (i, p) in publishers.iter_mut().enumerate() {
        publish_seen(p, &mut watch, &format!("warmup{i}-"), 1).await;
    }
    drop(watch);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sending: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(p, mut publisher)| {
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                // Paced (a load, not a synchronisation), so that the
                // resumes below happen while messages keep coming.
                let mut pace = tokio::time::interval(std::time::Duration::from_micros(250));
                let mut sent = 1u64; // the warm-up message
                while !*stopped.borrow_and_update() {
                    pace.tick().await;
                    publisher
                        .send(Message::text(format!("p{p}-{sent}")))
                        .await
                        .unwrap();
                    sent += 1;
                }
                (publisher, sent)
            })
        })
        .collect();
    // Read a stretch, drop, resume from the last offset seen; again.
    let mut seen = 2u64; // the warm-up messages
    let (mut ws, _) = connect_v2(&server, "/ws", None).await;
    let answer = subscribe_since(
        &mut ws,
        "busy",
        Some(json!({"offset": 2, "epoch": "unknown0"})),
    )
    .await;
    // A wrong epoch: nothing replayed, the answer gives the right one.
    assert_eq!(
        (&answer["recovered"], &answer["reason"]),
        (&json!(false), &json!("epoch"))
    );
    let epoch = answer["epoch"].as_str().unwrap().to_owned();
    drop(ws);
    for resume in 0..RESUMES {
        let (mut ws, _) = connect_v2(&server, "/ws", None).await;
        let since = json!({"offset": seen, "epoch": epoch});
        let answer = subscribe_since(&mut ws, "busy", Some(since)).await;
        assert_eq!(answer["recovered"], true, "{answer}");
        for _ in 0..READ_EACH {
            let m = message(&mut ws).await;
            assert_eq!(offset(&m), seen + 1, "after {resume} resumes: {m}");
            seen += 1;
        }
    }
    stop.send(true).unwrap();
    let mut total = 0;
    let mut publishers = Vec::new();
    for task in sending {
        let (publisher, sent) = task.await.unwrap();
        total += sent;
        publishers.push(publisher);
    }
    // The last resume, after the publishers stopped: exactly the rest.
    let (mut ws, _) = connect_v2(&server, "/ws", None).await;
    let (mut watch, _) = watcher(&server, "busy").await;
    publishers[0].send(Message::text("tail")).await.unwrap();
    // Messages the publishers sent before they stopped may still be on
    // their way: "tail" comes after all of them.
    while message(&mut watch).await["text"] != "tail" {}
    let answer = subscribe_since(
        &mut ws,
        "busy",
        Some(json!({"offset": seen, "epoch": epoch})),
    )
    .await;
    assert_eq!(answer["recovered"], true, "{answer}");
    for at in seen + 1..=total + 1 {
        let m = message(&mut ws).await;
        assert_eq!(offset(&m), at, "{m}");
    }
}

#[tokio::test]
async fn a_wrong_epoch_or_a_position_older_than_the_ring_is_not_recovered() {
    let server = Server::start(&["--history-size", "10"]).await;
    let mut publisher = plain(&server, "/ws/small").await;
    let (mut watch, subscribed) = watcher(&server, "small").await;
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();
    publish_seen(&mut publisher, &mut watch, "s", 20).await;

    let (mut ws, _) = connect_v2(&server, "/ws", None).await;
    let answer = subscribe_since(
        &mut ws,
        "small",
        Some(json!({"offset": 3, "epoch": "zzzzzzzz"})),
    )
    .await;
    assert_eq!(
        (&answer["recovered"], &answer["reason"]),
        (&json!(false), &json!("epoch")),
        "{answer}"
    );
    // Nothing replayed: the next message is live.
    publisher.send(Message::text("after")).await.unwrap();
    let m = message(&mut ws).await;
    assert_eq!((offset(&m), &m["text"]), (21, &json!("after")));

    // Offsets 4..=10 are gone: what is kept (11..) follows, and the
    // client is told some are missing.
    let (mut ws, _) = connect_v2(&server, "/ws", None).await;
    let answer =
        subscribe_since(&mut ws, "small", Some(json!({"offset": 3, "epoch": epoch}))).await;
    assert_eq!(
        (&answer["recovered"], &answer["reason"]),
        (&json!(false), &json!("expired")),
        "{answer}"
    );
    for at in 12..=21 {
        let m = message(&mut ws).await;
        assert_eq!(offset(&m), at, "{m}");
    }
    let m = server.metrics().await;
    for (outcome, n) in [("recovered", 0.0), ("epoch", 1.0), ("expired", 1.0)] {
        let label = format!("outcome=\"{outcome}\"");
        assert_eq!(
            metric(&m, "broadcast_history_resumes_total", &label),
            n,
            "{outcome}"
        );
    }
    assert_eq!(metric(&m, "broadcast_history_replayed_total", ""), 10.0);
    assert_eq!(metric(&m, "broadcast_history_messages", ""), 10.0);

    // A malformed since is a bad request, and the connection stays.
    send(
        &mut ws,
        json!({"type": "subscribe", "channel": "x", "since": 5}),
    )
    .await;
    let e = reply(&mut ws).await;
    assert_eq!(
        (&e["type"], &e["code"]),
        (&json!("error"), &json!("bad_request")),
        "{e}"
    );
}

#[tokio::test]
async fn plain_clients_rewind_and_v1_clients_resume_on_the_url() {
    let server = Server::start(&[]).await;
    let mut publisher = plain(&server, "/ws/r").await;
    let (mut watch, _) = watcher(&server, "r").await;
    publish_seen(&mut publisher, &mut watch, "r", 5).await;

    let mut rewound = plain(&server, "/ws/r?rewind=3").await;
    for text in ["r2", "r3", "r4"] {
        assert_eq!(recv(&mut rewound).await, Message::text(text));
    }
    publisher.send(Message::text("live")).await.unwrap();
    assert_eq!(recv(&mut rewound).await, Message::text("live"));
    assert_eq!(message(&mut watch).await["text"], "live");

    // A v1 client: its welcome says how it went, then the missed messages,
    // each with its position.
    let epoch = {
        let (_, welcome) = v1(&server, "/ws/r").await;
        assert!(welcome.get("recovered").is_none(), "{welcome}");
        assert_eq!(welcome["position"]["offset"], 6, "{welcome}");
        welcome["position"]["epoch"].as_str().unwrap().to_owned()
    };
    let (mut ws, welcome) = v1(&server, &format!("/ws/r?since={epoch}:4")).await;
    assert_eq!(welcome["recovered"], true, "{welcome}");
    for (text, at) in [("r4", 5), ("live", 6)] {
        let m = event(&mut ws).await;
        assert_eq!(
            (&m["type"], &m["text"], offset(&m)),
            (&json!("message"), &json!(text), at),
            "{m}"
        );
        assert_eq!(m["epoch"], epoch.as_str());
    }
    let (_, welcome) = v1(&server, "/ws/r?since=other:4").await;
    assert_eq!(
        (&welcome["recovered"], &welcome["reason"]),
        (&json!(false), &json!("epoch"))
    );

    for path in [
        "/ws/r?since=nocolon",
        "/ws/r?since=ab:x",
        "/ws/r?rewind=-1",
        "/ws/r?rewind=lots",
        "/ws/r?rewind=1&since=ab:1",
    ] {
        let (status, body) = refused(&server, path, None).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body.ends_with('\n') && body.trim().lines().count() == 1,
            "{path}: {body:?}"
        );
    }
    let (status, _) = refused(&server, "/ws?since=ab:1", Some("broadcast.v2")).await;
    assert_eq!(status, 400);
}

/// A v2 `subscribe` with `rewind: N` gets `subscribed`, the last N kept
/// messages in order, then live ones; asking for more than the channel
/// ever had replays all of it and is still `recovered: true`.
#[tokio::test]
async fn v2_subscribe_with_rewind_replays_the_last_messages_then_live() {
    let server = Server::start(&[]).await;
    let mut publisher = plain(&server, "/ws/w").await;
    let (mut watch, _) = watcher(&server, "w").await;
    publish_seen(&mut publisher, &mut watch, "w", 5).await;

    let (mut ws, _) = connect_v2(&server, "/ws", None).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "channel": "w", "id": 7, "rewind": 2}),
    )
    .await;
    let answer = reply(&mut ws).await;
    assert_eq!(
        (
            &answer["type"],
            &answer["id"],
            &answer["recovered"],
            &answer["offset"]
        ),
        (&json!("subscribed"), &json!(7), &json!(true), &json!(5)),
        "{answer}"
    );
    for (text, at) in [("w3", 4), ("w4", 5)] {
        let m = message(&mut ws).await;
        assert_eq!((&m["text"], offset(&m)), (&json!(text), at), "{m}");
    }
    publisher.send(Message::text("live")).await.unwrap();
    let m = message(&mut ws).await;
    assert_eq!((&m["text"], offset(&m)), (&json!("live"), 6), "{m}");

    // More than the channel ever had: all of it, nothing was lost.
    let (mut all, _) = connect_v2(&server, "/ws", None).await;
    send(
        &mut all,
        json!({"type": "subscribe", "channel": "w", "rewind": 50}),
    )
    .await;
    let answer = reply(&mut all).await;
    assert_eq!(
        (&answer["type"], &answer["recovered"]),
        (&json!("subscribed"), &json!(true)),
        "{answer}"
    );
    let texts: Vec<Value> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(message(&mut all).await["text"].clone());
        }
        v
    };
    assert_eq!(
        texts,
        json!(["w0", "w1", "w2", "w3", "w4", "live"])
            .as_array()
            .unwrap()
            .clone()
    );

    // `since` and `rewind` together are a bad request, not a close.
    send(
        &mut all,
        json!({"type": "subscribe", "channel": "x", "id": 8, "rewind": 1,
               "since": {"offset": 1, "epoch": "e"}}),
    )
    .await;
    let error = reply(&mut all).await;
    assert_eq!(
        (&error["type"], &error["id"], &error["code"]),
        (&json!("error"), &json!(8), &json!("bad_request")),
        "{error}"
    );
}

#[tokio::test]
async fn history_size_and_memory_are_honoured_and_the_api_lists_what_is_kept() {
    let server = Server::start(&["--history-size", "10", "--api-key", KEY]).await;
    let mut publisher = plain(&server, "/ws/ten").await;
    let (mut watch, _) = watcher(&server, "ten").await;
    publish_seen(&mut publisher, &mut watch, "t", 15).await;
    let (status, doc) = api_get(&server, "/api/history?channel=ten", Some(KEY)).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["offset"], 15, "{doc}");
    let offsets: Vec<u64> = doc["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(offset)
        .collect();
    assert_eq!(offsets, (6..=15).collect::<Vec<_>>(), "{doc}");
    assert_eq!(doc["messages"][0]["text"], "t5");
    assert_eq!(
        doc["messages"][0]["name"].as_str().map(str::is_empty),
        Some(false)
    );
    let (_, page) = api_get(
        &server,
        "/api/history?channel=ten&since=12&limit=2",
        Some(KEY),
    )
    .await;
    let offsets: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(offset)
        .collect();
    assert_eq!(offsets, [13, 14], "{page}");
    assert_eq!(page["epoch"], doc["epoch"]);

    for (path, key, status) in [
        ("/api/history?channel=ten", None, 401),
        ("/api/history?channel=ten", Some("wrong"), 401),
        ("/api/history", Some(KEY), 400),
        ("/api/history?channel=a%20b", Some(KEY), 400),
        ("/api/history?channel=ten&limit=0", Some(KEY), 400),
        ("/api/history?channel=ten&limit=x", Some(KEY), 400),
        ("/api/history?channel=ten&since=-1", Some(KEY), 400),
    ] {
        let (got, doc) = api_get(&server, path, key).await;
        assert_eq!(got, status, "{path}: {doc}");
        assert!(
            doc["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{doc}"
        );
    }

    // A budget of about 4 messages of 1 kB: older ones are evicted.
    let server = Server::start(&["--history-memory", "4500", "--api-key", KEY]).await;
    let mut publisher = plain(&server, "/ws/big").await;
    let (mut watch, _) = watcher(&server, "big").await;
    let big = "x".repeat(1000);
    publish_seen(&mut publisher, &mut watch, &big, 10).await;
    let (_, doc) = api_get(&server, "/api/history?channel=big", Some(KEY)).await;
    let kept = doc["messages"].as_array().unwrap();
    assert!((1..5).contains(&kept.len()), "{} kept", kept.len());
    assert_eq!(offset(kept.last().unwrap()), 10);
    let m = server.metrics().await;
    let evicted = metric(&m, "broadcast_history_evicted_total", "");
    assert_eq!(evicted, 10.0 - kept.len() as f64);
    assert!(metric(&m, "broadcast_history_bytes", "") <= 4500.0);
}

#[tokio::test]
async fn with_history_off_there_are_no_offsets_and_no_history_api() {
    let server = Server::start(&["--history-size", "0", "--api-key", KEY]).await;
    let mut publisher = plain(&server, "/ws/off").await;
    let (mut watch, subscribed) = watcher(&server, "off").await;
    assert!(subscribed.get("offset").is_none(), "{subscribed}");
    let (mut old, _) = v1(&server, "/ws/off").await;
    publisher.send(Message::text("plain")).await.unwrap();
    let m = message(&mut watch).await;
    assert!(m.get("offset").is_none() && m.get("epoch").is_none(), "{m}");
    let m = loop {
        let e = event(&mut old).await;
        if e["type"] == "message" {
            break e;
        }
    };
    assert!(m.get("offset").is_none(), "{m}");
    let (mut ws, _) = connect_v2(&server, "/ws", None).await;
    let answer = subscribe_since(&mut ws, "off", Some(json!({"offset": 1, "epoch": "abc"}))).await;
    assert_eq!(
        (&answer["recovered"], &answer["reason"]),
        (&json!(false), &json!("disabled"))
    );
    let (status, doc) = api_get(&server, "/api/history?channel=off", Some(KEY)).await;
    assert_eq!(status, 404, "{doc}");
}

/// History lives in the server's memory: after a restart the channel has a
/// new epoch, and a client resuming from a position of the old one is told
/// `recovered: false` (`"epoch"`) instead of silently missing messages.
#[tokio::test]
async fn after_a_restart_a_resume_is_told_the_epoch_changed() {
    let mut first = Server::start(&[]).await;
    let mut publisher = plain(&first, "/ws/r").await;
    let (mut watch, _) = watcher(&first, "r").await;
    let last = publish_seen(&mut publisher, &mut watch, "r", 3).await;
    let (_, welcome) = v1(&first, "/ws/r").await;
    let old = welcome["position"]["epoch"].as_str().unwrap().to_owned();
    drop((publisher, watch));
    first.signal("TERM");
    first.wait_exit(std::time::Duration::from_secs(10)).await;

    let second = Server::start(&[]).await;
    let (mut ws, _) = connect_v2(&second, "/ws", None).await;
    let answer = subscribe_since(&mut ws, "r", Some(json!({"offset": last, "epoch": old}))).await;
    assert_eq!(
        (&answer["recovered"], &answer["reason"]),
        (&json!(false), &json!("epoch")),
        "{answer}"
    );
    assert_ne!(answer["epoch"], old.as_str(), "a new epoch: {answer}");
    let (_, welcome) = v1(&second, &format!("/ws/r?since={old}:{last}")).await;
    assert_eq!(
        (&welcome["recovered"], &welcome["reason"]),
        (&json!(false), &json!("epoch")),
        "{welcome}"
    );
}

/// A resume whose replay is far larger than `--max-backlog` (1 MiB by
/// default; here 20 MiB of kept messages) is not taken for a slow
/// consumer, even when live messages arrive before the client has read
/// any of it: the replayed frames are the history's own bytes.
#[tokio::test]
async fn a_replay_larger_than_the_backlog_limit_is_delivered_whole() {
    let server = Server::start(&["--history-size", "1000"]).await;
    let (mut watch, subscribed) = watcher(&server, "big").await;
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();
    let mut publisher = plain(&server, "/ws/big").await;
    // Twenty at a time (400 KiB), each batch read before the next is sent:
    // the watcher's backlog stays under the limit however busy this machine
    // is (it would be closed with 1013 as a straggler otherwise, its shard's
    // other connection, the publisher, being up to date).
    let pad = "p".repeat(20 * 1024);
    for batch in 0..50 {
        for i in batch * 20..(batch + 1) * 20 {
            publisher
                .send(Message::text(format!("{i} {pad}")))
                .await
                .unwrap();
        }
        for at in batch * 20 + 1..=(batch + 1) * 20 {
            assert_eq!(offset(&message(&mut watch).await), at);
        }
    }

    let (mut back, _) = connect_v2(&server, "/ws", None).await;
    let answer =
        subscribe_since(&mut back, "big", Some(json!({"offset": 0, "epoch": epoch}))).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    // Live messages reach the shard while the replay waits, unread.
    publish_seen(&mut publisher, &mut watch, "live", 3).await;
    for at in 1..=1003 {
        let m = message(&mut back).await;
        assert_eq!(offset(&m), at, "{}", &m["text"].as_str().unwrap()[..8]);
    }
    let m = server.metrics().await;
    assert_eq!(metric(&m, "broadcast_slow_consumer_closes_total", ""), 0.0);
}
