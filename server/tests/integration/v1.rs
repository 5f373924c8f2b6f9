//! The `broadcast.v1` subprotocol, seen from a client: welcome, names,
//! message events, presence and notices, next to plain clients.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::util::{expect_ws_close, http_get, recv, upgrade_with, Server, Ws, EVENT_TIMEOUT};

/// Connects offering `broadcast.v1`, with `?name=` when given (already
/// percent-encoded), and checks the server chose the subprotocol.
async fn connect_v1(server: &Server, name: Option<&str>) -> Ws {
    try_connect_v1(server, name)
        .await
        .unwrap_or_else(|e| panic!("v1 connect: {e}"))
}

async fn try_connect_v1(server: &Server, name: Option<&str>) -> Result<Ws, WsError> {
    let url = match name {
        Some(n) => format!("{}?name={n}", server.ws_url()),
        None => server.ws_url(),
    };
    let (ws, resp) =
        upgrade_with(&url, &[("Sec-WebSocket-Protocol", "chat, broadcast.v1")]).await?;
    assert_eq!(
        resp.headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok()),
        Some("broadcast.v1"),
        "server did not select broadcast.v1"
    );
    Ok(ws)
}

/// The next event (a JSON text frame).
async fn event(ws: &mut Ws) -> Value {
    match recv(ws).await {
        Message::Text(t) => {
            serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
        }
        other => panic!("v1 clients get text frames only, got {other:?}"),
    }
}

/// The next event of `kind`, skipping others (presence may interleave).
async fn event_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let e = event(ws).await;
        if e["type"] == kind {
            return e;
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn welcome_names_and_message_events() {
    let server = Server::start(&[]).await;
    let mut alice = connect_v1(&server, Some("alice")).await;
    let welcome = event(&mut alice).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["name"], "alice");
    assert_eq!(welcome["online"], 1);
    let alice_id = welcome["id"].as_u64().expect("numeric id");
    assert!(welcome["time"].as_u64().unwrap().abs_diff(now_ms()) < 60_000);

    // Same name, other case: suffixed, never a second "alice".
    let mut bob = connect_v1(&server, Some("Alice")).await;
    let welcome = event(&mut bob).await;
    assert_eq!(welcome["name"], "Alice-2");
    assert_eq!(welcome["online"], 2);
    let bob_id = welcome["id"].as_u64().unwrap();
    assert_ne!(alice_id, bob_id);

    // A plain client in the same room, named by the server.
    let mut plain = server.connect().await;
    server.wait_connections(3).await;

    alice.send(Message::text("hi <b>all</b>")).await.unwrap();
    let msg = event_of(&mut bob, "message").await;
    assert_eq!(msg["from"], alice_id);
    assert_eq!(msg["name"], "alice");
    assert_eq!(msg["text"], "hi <b>all</b>");
    assert!(msg["time"].as_u64().unwrap().abs_diff(now_ms()) < 60_000);
    assert_eq!(recv(&mut plain).await, Message::text("hi <b>all</b>"));

    plain
        .send(Message::binary(vec![0u8, 255, 7]))
        .await
        .unwrap();
    let msg = event_of(&mut alice, "message").await;
    assert_eq!(msg["data"], "AP8H", "binary travels as base64");
    assert!(msg["name"].as_str().unwrap().starts_with("guest-"), "{msg}");
    assert!(msg.get("text").is_none());
    let msg = event_of(&mut bob, "message").await;
    assert_eq!(msg["data"], "AP8H");

    // The sender never gets its own message back.
    bob.send(Message::text("from bob")).await.unwrap();
    let msg = event_of(&mut alice, "message").await;
    assert_eq!(msg["text"], "from bob");
    assert_eq!(recv(&mut plain).await, Message::text("from bob"));
    plain.send(Message::text("marker")).await.unwrap();
    let next = event_of(&mut bob, "message").await;
    assert_eq!(
        next["text"], "marker",
        "bob got something else first: {next}"
    );
}

#[tokio::test]
async fn a_name_is_free_again_after_its_owner_leaves() {
    let server = Server::start(&[]).await;
    let mut first = connect_v1(&server, Some("carol")).await;
    assert_eq!(event(&mut first).await["name"], "carol");
    first.close(None).await.unwrap();
    server.wait_connections(0).await;
    let mut again = connect_v1(&server, Some("carol")).await;
    assert_eq!(event(&mut again).await["name"], "carol");
}

#[tokio::test]
async fn bad_names_are_refused_before_the_upgrade() {
    let server = Server::start(&[]).await;
    let long = "x".repeat(33);
    for bad in [
        "%0Aevil",
        "%20%20",
        long.as_str(),
        "%E2%80%8Bzw",
        "%FF",
        "%zz",
    ] {
        match try_connect_v1(&server, Some(bad)).await {
            Err(WsError::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 400, "name {bad:?}");
                let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
                    .into_owned();
                assert!(body.contains("invalid name"), "name {bad:?}: body {body:?}");
            }
            Err(e) => panic!("name {bad:?}: expected HTTP 400, got {e}"),
            Ok(_) => panic!("name {bad:?} was accepted"),
        }
    }
    // Unicode names are fine.
    let mut ok = connect_v1(&server, Some("Zo%C3%AB%20%F0%9F%A6%80")).await;
    assert_eq!(event(&mut ok).await["name"], "Zoë 🦀");
    assert_eq!(server.health_connections().await, 1);
}

#[tokio::test]
async fn presence_is_coalesced_and_counts_past_the_name_limit() {
    let server = Server::start(&[]).await;
    let mut watcher = connect_v1(&server, Some("watcher")).await;
    event_of(&mut watcher, "welcome").await;

    // A burst of 30 plain clients joining, then leaving.
    let mut crowd = Vec::new();
    for _ in 0..30 {
        crowd.push(server.connect().await);
    }
    let started = tokio::time::Instant::now();
    let mut updates = 0;
    let mut joined = 0;
    loop {
        let e = event_of(&mut watcher, "presence").await;
        updates += 1;
        joined += e["joined"].as_array().map_or(0, Vec::len) as u64;
        joined += e["joined_count"].as_u64().unwrap_or(0);
        if e["online"] == 31 && joined >= 30 {
            break;
        }
    }
    // Its own join may come in the first update too; 30 joins took at most
    // a few updates, not 30.
    assert!(updates <= 4, "{updates} presence updates for one burst");
    assert!(started.elapsed() < EVENT_TIMEOUT);

    for mut c in crowd.drain(..) {
        c.close(None).await.unwrap();
    }
    let mut left = 0;
    let mut updates = 0;
    loop {
        let e = event_of(&mut watcher, "presence").await;
        updates += 1;
        left += e["left"].as_array().map_or(0, Vec::len) as u64;
        left += e["left_count"].as_u64().unwrap_or(0);
        if let Some(count) = e["left_count"].as_u64() {
            assert!(count > 20, "counts only past the name limit: {e}");
            assert!(e.get("left").is_none());
        }
        if e["online"] == 1 && left >= 30 {
            break;
        }
    }
    assert!(updates <= 4, "{updates} presence updates for one burst");
}

#[tokio::test]
async fn presence_names_who_joined_and_left() {
    let server = Server::start(&[]).await;
    let mut watcher = connect_v1(&server, Some("watcher")).await;
    event_of(&mut watcher, "welcome").await;
    let mut dave = connect_v1(&server, Some("dave")).await;
    let dave_id = event(&mut dave).await["id"].as_u64().unwrap();
    loop {
        let e = event_of(&mut watcher, "presence").await;
        let names: Vec<_> = e["joined"].as_array().into_iter().flatten().collect();
        if names
            .iter()
            .any(|p| p["name"] == "dave" && p["id"] == dave_id)
        {
            assert_eq!(e["online"], 2);
            break;
        }
    }
    dave.close(None).await.unwrap();
    loop {
        let e = event_of(&mut watcher, "presence").await;
        let names: Vec<_> = e["left"].as_array().into_iter().flatten().collect();
        if names.iter().any(|p| p["name"] == "dave") {
            assert_eq!(e["online"], 1);
            break;
        }
    }
}

#[tokio::test]
async fn notice_precedes_a_close_for_a_too_big_message() {
    let server = Server::start(&["--max-message-size", "100"]).await;
    let mut v1 = connect_v1(&server, Some("big")).await;
    event_of(&mut v1, "welcome").await;
    v1.send(Message::text("x".repeat(101))).await.unwrap();
    let notice = event_of(&mut v1, "notice").await;
    assert_eq!(notice["code"], 1009);
    assert!(!notice["text"].as_str().unwrap().is_empty());
    let (code, _) = expect_ws_close(&mut v1).await;
    assert_eq!(code, 1009);
}

#[tokio::test]
async fn shutdown_sends_notice_then_close_1001() {
    let mut server = Server::start(&[]).await;
    let mut v1 = connect_v1(&server, Some("late")).await;
    event_of(&mut v1, "welcome").await;
    let mut plain = server.connect().await;
    server.wait_connections(2).await;
    server.signal("TERM");
    let notice = event_of(&mut v1, "notice").await;
    assert_eq!(notice["code"], 1001);
    assert_eq!(expect_ws_close(&mut v1).await.0, 1001);
    // The plain client gets no JSON, just the close.
    assert_eq!(
        expect_ws_close(&mut plain).await,
        (1001, "server shutting down".to_owned())
    );
    assert!(server.wait_exit(Duration::from_secs(10)).await.success());
}

/// Guests' names are theirs alone: a client that asks for a live guest's
/// name, or for one a guest could get, is given another.
#[tokio::test]
async fn a_chosen_name_never_looks_like_a_guest() {
    let server = Server::start(&[]).await;
    let mut guest = connect_v1(&server, None).await;
    let guests_name = event_of(&mut guest, "welcome").await["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut mimic = connect_v1(&server, Some(&guests_name)).await;
    assert_eq!(
        event_of(&mut mimic, "welcome").await["name"],
        format!("{guests_name}-2")
    );
    let mut first = connect_v1(&server, Some("guest")).await;
    assert_eq!(event_of(&mut first, "welcome").await["name"], "guest");
    let mut second = connect_v1(&server, Some("guest")).await;
    assert_eq!(event_of(&mut second, "welcome").await["name"], "guest_2");
}

#[tokio::test]
async fn healthz_counts_v1_connections() {
    let server = Server::start(&[]).await;
    let mut a = connect_v1(&server, None).await;
    let welcome = event(&mut a).await;
    assert!(
        welcome["name"].as_str().unwrap().starts_with("guest-"),
        "{welcome}"
    );
    let _plain = server.connect().await;
    server.wait_connections(2).await;
    let body = http_get(&server.addr(), "/healthz").await.body;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["v1_connections"], 1, "{body}");
}

/// A newcomer that speaks at once: every watcher, on both shards, sees
/// "erin joined" before erin's first message, although presence is
/// coalesced over half a second.
#[tokio::test]
async fn a_newcomers_join_arrives_before_its_first_message() {
    let server = Server::start(&["--workers", "2"]).await;
    let mut watchers = Vec::new();
    for name in ["w0", "w1"] {
        let mut w = connect_v1(&server, Some(name)).await;
        event_of(&mut w, "welcome").await;
        watchers.push(w);
    }
    let mut erin = connect_v1(&server, Some("erin")).await;
    let erin_id = event_of(&mut erin, "welcome").await["id"].as_u64().unwrap();
    erin.send(Message::text("hi, I am new")).await.unwrap();
    for (i, w) in watchers.iter_mut().enumerate() {
        let mut announced = false;
        loop {
            let e = event(w).await;
            match e["type"].as_str() {
                Some("presence") => {
                    let joined = e["joined"].as_array().into_iter().flatten();
                    announced |= joined.into_iter().any(|p| p["id"] == erin_id);
                }
                Some("message") if e["from"] == erin_id => {
                    assert_eq!(e["text"], "hi, I am new");
                    assert!(
                        announced,
                        "watcher {i} got erin's message before erin's join"
                    );
                    break;
                }
                _ => {}
            }
        }
    }
}
