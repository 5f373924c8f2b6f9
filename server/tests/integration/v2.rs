//! The `broadcast.v2` subprotocol against the real binary: subscribe,
//! publish and unsubscribe over one connection, next to plain and v1
//! clients, `members` across shards, every error code, the limits and the
//! closes.

use futures_util::SinkExt;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::util::*;

/// Connects offering `broadcast.v2` (and v1 after it) to `path_and_query`,
/// checks the server chose v2, and returns the client with its welcome.
pub(crate) async fn connect_v2(
    server: &Server,
    path_and_query: &str,
    bearer: Option<&str>,
) -> (Ws, Value) {
    let url = format!("ws://{}{path_and_query}", server.addr());
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("broadcast.v2, broadcast.v1"),
    );
    if let Some(t) = bearer {
        req.headers_mut().insert(
            "Authorization",
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
    }
    let (mut ws, resp) = timeout(EVENT_TIMEOUT, tokio_tungstenite::connect_async(req))
        .await
        .expect("v2 connect timed out")
        .unwrap_or_else(|e| panic!("v2 connect: {e}"));
    assert_eq!(
        resp.headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok()),
        Some("broadcast.v2")
    );
    let welcome = event(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

pub(crate) async fn event(ws: &mut Ws) -> Value {
    match recv(ws).await {
        Message::Text(t) => serde_json::from_str(&t).unwrap_or_else(|e| panic!("{t}: {e}")),
        other => panic!("expected a v2 event, got {other:?}"),
    }
}

/// The next event that is not `presence`.
pub(crate) async fn reply(ws: &mut Ws) -> Value {
    loop {
        let e = event(ws).await;
        if e["type"] != "presence" {
            return e;
        }
    }
}

pub(crate) async fn send(ws: &mut Ws, command: Value) {
    ws.send(Message::text(command.to_string())).await.unwrap();
}

/// Sends the command `kind` about `channel` with `id`, and returns its
/// answer, of type `answer`.
async fn ask(ws: &mut Ws, kind: &str, channel: &str, id: u64, answer: &str) -> Value {
    send(ws, json!({"type": kind, "channel": channel, "id": id})).await;
    let got = reply(ws).await;
    assert_eq!(got["type"], answer, "{got}");
    assert_eq!((&got["channel"], &got["id"]), (&json!(channel), &json!(id)));
    got
}

/// Subscribes and returns the `subscribed` answer.
async fn subscribe(ws: &mut Ws, channel: &str, id: u64) -> Value {
    ask(ws, "subscribe", channel, id, "subscribed").await
}

/// Sends `command` and expects an `error` with `code`, echoing `id`.
async fn expect_error(ws: &mut Ws, command: &str, code: &str, id: Value) {
    ws.send(Message::text(command)).await.unwrap();
    let e = reply(ws).await;
    assert_eq!(e["type"], "error", "{command}: {e}");
    assert_eq!(e["code"], code, "{command}: {e}");
    assert_eq!(
        e.get("id").cloned().unwrap_or(Value::Null),
        id,
        "{command}: {e}"
    );
    let text = e["text"].as_str().unwrap();
    assert!(!text.is_empty() && !text.contains('\n'), "{e}");
}

/// A ping round trip: everything sent before it has been handled.
async fn sync(ws: &mut Ws, id: &str) {
    send(ws, json!({"type": "ping", "id": id})).await;
    let pong = reply(ws).await;
    assert_eq!(pong, json!({"type": "pong", "id": id}));
}

#[tokio::test]
async fn subscribe_publish_and_unsubscribe_next_to_plain_and_v1_clients() {
    let server = Server::start(&[]).await;
    let (mut a, welcome) = connect_v2(&server, "/ws?name=alice", None).await;
    assert_eq!(welcome["name"], "alice");
    let a_id = welcome["client"].clone();
    let (mut b, _) = connect_v2(&server, "/ws?name=bob", None).await;
    let mut plain = vec![
        connect(&format!("ws://{}/ws/news", server.addr())).await,
        connect(&format!("ws://{}/ws/news", server.addr())).await,
    ];
    barrier(&mut plain, false).await;

    assert_eq!(subscribe(&mut a, "news", 1).await["online"], 3);
    assert_eq!(subscribe(&mut b, "news", 2).await["online"], 4);
    subscribe(&mut b, "sports", 3).await;

    // A publishes on news with an id: acknowledged, then everyone in news
    // gets it in their format.
    send(
        &mut a,
        json!({"type": "publish", "channel": "news", "text": "hello", "id": "p1"}),
    )
    .await;
    assert_eq!(
        reply(&mut a).await,
        json!({"type": "published", "id": "p1", "channel": "news"})
    );
    let m = reply(&mut b).await;
    assert_eq!(
        (
            &m["type"],
            &m["channel"],
            &m["from"],
            &m["name"],
            &m["text"]
        ),
        (
            &json!("message"),
            &json!("news"),
            &a_id,
            &json!("alice"),
            &json!("hello")
        ),
        "{m}"
    );
    for ws in plain.iter_mut() {
        assert_eq!(recv(ws).await, Message::text("hello"));
    }
    // A plain client's message reaches the v2 subscribers of its channel.
    plain[0].send(Message::binary(vec![7u8, 8])).await.unwrap();
    for ws in [&mut a, &mut b] {
        let m = reply(ws).await;
        assert_eq!(
            (&m["channel"], &m["data"]),
            (&json!("news"), &json!("Bwg=")),
            "{m}"
        );
    }
    assert_eq!(recv(&mut plain[1]).await, Message::binary(vec![7u8, 8]));

    // B publishes on sports (no id: no answer): A is not in it.
    send(
        &mut b,
        json!({"type": "publish", "channel": "sports", "data": "AQI="}),
    )
    .await;
    sync(&mut b, "after-sports").await;
    sync(&mut a, "a1").await;

    // A leaves news: it hears nothing more from it.
    send(
        &mut a,
        json!({"type": "unsubscribe", "channel": "news", "id": 9}),
    )
    .await;
    assert_eq!(
        reply(&mut a).await,
        json!({"type": "unsubscribed", "id": 9, "channel": "news", "online": 3})
    );
    plain[1].send(Message::text("after a left")).await.unwrap();
    let m = reply(&mut b).await;
    assert_eq!(m["text"], "after a left", "{m}");
    sync(&mut a, "a2").await;

    let samples = server.metrics().await;
    assert_eq!(metric(&samples, "broadcast_v2_connections_open", ""), 2.0);
    assert_eq!(metric(&samples, "broadcast_channels", ""), 2.0);
}

/// Asks who is in `channel` and returns the `members` answer.
async fn members(ws: &mut Ws, channel: &str, id: u64) -> Value {
    ask(ws, "members", channel, id, "members").await
}

/// The `(id, name)` pairs a `members` answer lists, in its order.
fn listed(answer: &Value) -> Vec<(u64, String)> {
    answer["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members list: {answer}"))
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn members_names_everyone_already_there_on_every_shard_but_guests() {
    let server = Server::start(&["--workers", "2"]).await;
    // Four v2 clients one after another: each goes to the least loaded
    // shard, so both shards get some.
    let mut v2s = Vec::new();
    for name in ["ann", "ben", "cat", "dan"] {
        let (mut ws, _) = connect_v2(&server, &format!("/ws?name={name}"), None).await;
        subscribe(&mut ws, "room", 1).await;
        v2s.push(ws);
    }
    // A v1 client (named) and a plain one (a guest: counted, not named).
    let url = format!("ws://{}/ws/room?name=eve", server.addr());
    let (mut eve, _) = upgrade_with(&url, &[("Sec-WebSocket-Protocol", "broadcast.v1")])
        .await
        .unwrap();
    let welcome = recv(&mut eve).await;
    assert!(welcome.to_string().contains("welcome"), "{welcome:?}");
    let mut guest = connect(&format!("ws://{}/ws/room?name=gus", server.addr())).await;
    // Its message reaching everyone says it is in the room.
    guest.send(Message::text("here")).await.unwrap();
    for ws in &mut v2s {
        assert_eq!(reply(ws).await["text"], "here");
    }
    let samples = server.metrics().await;
    for shard in ["0", "1"] {
        // The scrape itself is one connection of one shard.
        let n = metric(
            &samples,
            "broadcast_shard_connections",
            &format!(r#"shard="{shard}""#),
        );
        assert!(n >= 2.0, "shard {shard} holds {n} connections");
    }

    // Someone not subscribed may ask; the answer is sorted by id.
    let (mut zed, _) = connect_v2(&server, "/ws?name=zed", None).await;
    let answer = members(&mut zed, "room", 7).await;
    assert_eq!(
        (&answer["online"], &answer["truncated"]),
        (&json!(6), &json!(false)),
        "{answer}"
    );
    let list = listed(&answer);
    let mut names: Vec<&str> = list.iter().map(|(_, n)| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["ann", "ben", "cat", "dan", "eve"], "{answer}");
    assert!(list.windows(2).all(|w| w[0].0 < w[1].0), "{answer}");
    // A member gets the same list; a channel nobody is in is empty.
    assert_eq!(listed(&members(&mut v2s[3], "room", 8).await), list);
    assert_eq!(
        members(&mut zed, "nobody-here", 9).await,
        json!({"type": "members", "id": 9, "channel": "nobody-here", "online": 0, "members": [], "truncated": false})
    );
    // Unsubscribing takes one out of the list.
    send(
        &mut v2s[1],
        json!({"type": "unsubscribe", "channel": "room", "id": 2}),
    )
    .await;
    assert_eq!(reply(&mut v2s[1]).await["type"], "unsubscribed");
    let after = members(&mut zed, "room", 10).await;
    assert_eq!(after["online"], 5, "{after}");
    assert!(!listed(&after).iter().any(|(_, n)| n == "ben"), "{after}");
}

#[tokio::test]
async fn v2_presence_is_per_channel() {
    let server = Server::start(&[]).await;
    let (mut a, _) = connect_v2(&server, "/ws?name=anna", None).await;
    subscribe(&mut a, "one", 1).await;
    let (mut b, _) = connect_v2(&server, "/ws?name=ben", None).await;
    subscribe(&mut b, "two", 1).await;
    subscribe(&mut b, "one", 2).await;
    // Anna hears ben join "one"; every presence she gets is about "one".
    loop {
        let p = event(&mut a).await;
        assert_eq!(
            (&p["type"], &p["channel"]),
            (&json!("presence"), &json!("one")),
            "{p}"
        );
        let names: Vec<&str> = p["joined"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["name"].as_str().unwrap())
            .collect();
        if names.contains(&"ben") {
            assert_eq!(p["online"], 2, "{p}");
            break;
        }
    }
}

#[tokio::test]
async fn every_bad_command_gets_its_error_code_and_the_connection_stays() {
    let server = Server::start(&["--max-channels-per-connection", "2"]).await;
    let (mut ws, _) = connect_v2(&server, "/ws", None).await;
    subscribe(&mut ws, "a", 1).await;
    let cases = [
        (r#"[1,2]"#, "bad_request", Value::Null),
        (r#"{"id":5}"#, "bad_request", json!(5)),
        (
            r#"{"type":"subscribe","id":"x"}"#,
            "bad_request",
            json!("x"),
        ),
        (r#"{"type":"dance","id":6}"#, "unknown_type", json!(6)),
        (
            r#"{"type":"subscribe","channel":"a b","id":7}"#,
            "bad_channel",
            json!(7),
        ),
        (
            r#"{"type":"subscribe","channel":"a","id":8}"#,
            "already_subscribed",
            json!(8),
        ),
        (
            r#"{"type":"unsubscribe","channel":"zzz","id":9}"#,
            "not_subscribed",
            json!(9),
        ),
        (
            r#"{"type":"publish","channel":"elsewhere","text":"t","id":10}"#,
            "not_subscribed",
            json!(10),
        ),
        (
            r#"{"type":"publish","channel":"a","text":"t","data":"AA==","id":11}"#,
            "bad_request",
            json!(11),
        ),
        (
            r#"{"type":"members","channel":"a//b","id":"m"}"#,
            "bad_channel",
            json!("m"),
        ),
    ];
    for (command, code, id) in &cases {
        expect_error(&mut ws, command, code, id.clone()).await;
    }
    subscribe(&mut ws, "b", 12).await;
    expect_error(
        &mut ws,
        r#"{"type":"subscribe","channel":"c","id":13}"#,
        "too_many_channels",
        json!(13),
    )
    .await;
    // Still open and working.
    sync(&mut ws, "still-here").await;
    let samples = server.metrics().await;
    let count = |code: &str| {
        metric(
            &samples,
            "broadcast_v2_errors_total",
            &format!(r#"code="{code}""#),
        )
    };
    assert_eq!(count("bad_request"), 4.0);
    assert_eq!(count("too_many_channels"), 1.0);
    assert_eq!(count("not_subscribed"), 2.0);
}

#[tokio::test]
async fn a_jwt_limits_v2_subscriptions_and_lets_publish_where_it_allows() {
    let server = Server::start(&["--jwt-secret", "v2-secret"]).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = crate::jwt::token(
        Algorithm::HS256,
        "v2-secret",
        json!({"exp": exp, "channels": ["room-*", "alerts"]}),
    );
    // The URL's channel (`default`) is not checked for v2 clients.
    let (mut ws, _) = connect_v2(&server, "/ws", Some(&token)).await;
    subscribe(&mut ws, "room-1", 1).await;
    expect_error(
        &mut ws,
        r#"{"type":"subscribe","channel":"secret","id":2}"#,
        "forbidden",
        json!(2),
    )
    .await;
    expect_error(
        &mut ws,
        r#"{"type":"publish","channel":"secret","text":"x","id":3}"#,
        "forbidden",
        json!(3),
    )
    .await;
    // A channel the token allows can be published to without subscribing.
    let mut listener = connect(&format!("ws://{}/ws/alerts?token={token}", server.addr())).await;
    let (mut other, _) = connect_v2(&server, "/ws", Some(&token)).await;
    subscribe(&mut other, "alerts", 1).await;
    send(
        &mut ws,
        json!({"type": "publish", "channel": "alerts", "text": "fire", "id": 4}),
    )
    .await;
    assert_eq!(reply(&mut ws).await["type"], "published");
    assert_eq!(recv(&mut listener).await, Message::text("fire"));
    assert_eq!(reply(&mut other).await["text"], "fire");
    // Who is in a channel: only where the token allows, subscribed or not.
    expect_error(
        &mut ws,
        r#"{"type":"members","channel":"secret","id":5}"#,
        "forbidden",
        json!(5),
    )
    .await;
    let answer = members(&mut ws, "alerts", 6).await;
    assert_eq!(
        (&answer["online"], &answer["truncated"]),
        (&json!(2), &json!(false)),
        "{answer}"
    );
    // The plain listener is a guest: only the v2 subscriber is named.
    assert_eq!(listed(&answer).len(), 1, "{answer}");
}

#[tokio::test]
async fn not_json_is_closed_1007_after_an_error_and_a_notice() {
    let server = Server::start(&[]).await;
    let (mut ws, _) = connect_v2(&server, "/ws", None).await;
    ws.send(Message::text("this is not json")).await.unwrap();
    let e = event(&mut ws).await;
    assert_eq!(
        (&e["type"], &e["code"]),
        (&json!("error"), &json!("bad_json")),
        "{e}"
    );
    let n = event(&mut ws).await;
    assert_eq!(
        (&n["type"], &n["code"]),
        (&json!("notice"), &json!(1007)),
        "{n}"
    );
    assert_eq!(expect_ws_close(&mut ws).await.0, 1007);
}

#[tokio::test]
async fn a_binary_frame_is_closed_1003() {
    let server = Server::start(&[]).await;
    let (mut ws, _) = connect_v2(&server, "/ws", None).await;
    ws.send(Message::binary(vec![1u8])).await.unwrap();
    let n = event(&mut ws).await;
    assert_eq!(n["type"], "notice", "{n}");
    assert_eq!(expect_ws_close(&mut ws).await.0, 1003);
}

#[tokio::test]
async fn sixteen_bad_commands_in_a_row_close_1008_and_a_good_one_resets_the_count() {
    let server = Server::start(&[]).await;
    let (mut ws, _) = connect_v2(&server, "/ws", None).await;
    for _ in 0..15 {
        expect_error(&mut ws, r#"{"type":"nope"}"#, "unknown_type", Value::Null).await;
    }
    sync(&mut ws, "reset").await;
    for _ in 0..15 {
        expect_error(&mut ws, r#"{"type":"nope"}"#, "unknown_type", Value::Null).await;
    }
    ws.send(Message::text(r#"{"type":"nope"}"#)).await.unwrap();
    assert_eq!(event(&mut ws).await["code"], "unknown_type");
    assert_eq!(event(&mut ws).await["type"], "notice");
    assert_eq!(expect_ws_close(&mut ws).await.0, 1008);
}

#[tokio::test]
async fn over_the_rate_limit_with_action_close_a_v2_publish_is_refused_not_closed() {
    let server = Server::start(&["--max-message-rate", "1", "--rate-limit-action", "close"]).await;
    let (mut ws, _) = connect_v2(&server, "/ws", None).await;
    subscribe(&mut ws, "r", 1).await;
    let mut refused = 0;
    for i in 0..5 {
        send(
            &mut ws,
            json!({"type": "publish", "channel": "r", "text": "x", "id": i}),
        )
        .await;
        let answer = reply(&mut ws).await;
        match answer["type"].as_str() {
            Some("published") => {}
            Some("error") => {
                assert_eq!(answer["code"], "rate_limited", "{answer}");
                refused += 1;
            }
            _ => panic!("{answer}"),
        }
    }
    assert!(
        refused >= 3,
        "a bucket of 1/s let {} of 5 through",
        5 - refused
    );
    sync(&mut ws, "open").await;
}
