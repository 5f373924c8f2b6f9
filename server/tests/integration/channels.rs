//! Channels for plain and v1 clients (`/ws/NAME`, `?channel=NAME`), their
//! JWT claims, and the HTTP API for backends (`--api-key`), on the real
//! binary with default flags otherwise.

use futures_util::SinkExt;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::util::*;

const KEY: &str = "test-api-key-0123456789";

/// `ws://.../ws/NAME`-style URL of `server` for `path_and_query`.
fn url(server: &Server, path_and_query: &str) -> String {
    format!("ws://{}{path_and_query}", server.addr())
}

/// Connects to `path_and_query`, offering `subprotocol` and a bearer token
/// when given; the refusal's status and body line otherwise.
async fn try_join(
    server: &Server,
    path_and_query: &str,
    subprotocol: Option<&'static str>,
    bearer: Option<&str>,
) -> Result<Ws, (u16, String)> {
    let mut req = url(server, path_and_query).into_client_request().unwrap();
    if let Some(p) = subprotocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
    }
    if let Some(t) = bearer {
        req.headers_mut().insert(
            "Authorization",
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
    }
    match timeout(EVENT_TIMEOUT, tokio_tungstenite::connect_async(req))
        .await
        .expect("upgrade timed out")
    {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("upgrade of {path_and_query}: unexpected error {e}"),
    }
}

async fn join(server: &Server, path_and_query: &str) -> Ws {
    try_join(server, path_and_query, None, None)
        .await
        .unwrap_or_else(|e| panic!("join {path_and_query}: {e:?}"))
}

/// Joins `path_and_query` as a v1 client and returns it with its welcome.
async fn join_v1(server: &Server, path_and_query: &str) -> (Ws, Value) {
    let mut ws = try_join(server, path_and_query, Some("broadcast.v1"), None)
        .await
        .unwrap_or_else(|e| panic!("v1 join {path_and_query}: {e:?}"));
    let welcome = event(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

async fn event(ws: &mut Ws) -> Value {
    match recv(ws).await {
        Message::Text(t) => serde_json::from_str(&t).unwrap_or_else(|e| panic!("{t}: {e}")),
        other => panic!("expected a v1 event, got {other:?}"),
    }
}

/// The next event of type `kind`, skipping others (presence).
async fn event_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let e = event(ws).await;
        if e["type"] == kind {
            return e;
        }
    }
}

/// Two clients per channel, each pair synchronised (both registered).
async fn pair(server: &Server, path: &str) -> Vec<Ws> {
    let mut clients = vec![join(server, path).await, join(server, path).await];
    barrier(&mut clients, false).await;
    clients
}

#[tokio::test]
async fn raw_clients_only_hear_their_own_channel() {
    let server = Server::start(&[]).await;
    let mut a = pair(&server, "/ws/room-a").await;
    let mut b = pair(&server, "/ws?channel=room-b").await;
    // `/ws` is the channel named `default`.
    let mut d = vec![
        join(&server, "/ws").await,
        join(&server, "/ws/default").await,
    ];
    barrier(&mut d, false).await;

    a[0].send(Message::text("for a")).await.unwrap();
    assert_eq!(recv(&mut a[1]).await, Message::text("for a"));
    // Published after "for a": had "for a" reached b or d, it would come first.
    b[1].send(Message::text("for b")).await.unwrap();
    assert_eq!(recv(&mut b[0]).await, Message::text("for b"));
    d[1].send(Message::binary(vec![1u8, 2])).await.unwrap();
    assert_eq!(recv(&mut d[0]).await, Message::binary(vec![1u8, 2]));
    for (ws, who) in [(&mut a[0], "a0"), (&mut b[1], "b1"), (&mut d[1], "d1")] {
        assert_quiet(ws, who).await;
    }
    // The path and the query naming the same channel is the same channel.
    a.push(join(&server, "/ws/room-a?channel=room-a").await);
    barrier(&mut a, false).await;
    a[0].send(Message::text("again")).await.unwrap();
    assert_eq!(recv(&mut a[1]).await, Message::text("again"));
    assert_eq!(recv(&mut a[2]).await, Message::text("again"));

    let samples = server.metrics().await;
    assert_eq!(metric(&samples, "broadcast_channels", ""), 3.0);
}

#[tokio::test]
async fn bad_channel_names_are_refused_before_the_upgrade() {
    let server = Server::start(&[]).await;
    let long = format!("/ws/{}", "x".repeat(129));
    for path in [
        "/ws/a%20b",
        "/ws/a//b",
        "/ws/a/",
        "/ws/",
        "/ws?channel=",
        "/ws/sp ace",
        long.as_str(),
        "/ws/a?channel=b",
    ] {
        let path = path.replace(' ', "%20");
        match try_join(&server, &path, None, None).await {
            Err((400, body)) => {
                assert_eq!(body.lines().count(), 1, "{path}: {body:?}");
                assert!(body.contains("channel"), "{path}: {body:?}");
            }
            Err(other) => panic!("{path}: expected 400, got {other:?}"),
            Ok(_) => panic!("{path}: upgraded"),
        }
    }
    // Names with every allowed kind of byte are fine.
    let _ok = join(&server, "/ws/team-1/general_chat.v2:eu@x").await;
    server.wait_connections(1).await;
}

#[tokio::test]
async fn v1_welcome_and_presence_are_per_channel() {
    let server = Server::start(&[]).await;
    // Both registered once the barrier is through.
    let _plain = pair(&server, "/ws/lobby").await;
    let (mut alice, welcome) = join_v1(&server, "/ws/lobby?name=alice").await;
    assert_eq!(welcome["online"], 3, "{welcome}");
    let (mut bob, welcome) = join_v1(&server, "/ws/elsewhere?name=bob").await;
    assert_eq!(welcome["online"], 1, "{welcome}");
    let (_carol, _) = join_v1(&server, "/ws/lobby?name=carol").await;

    // Alice hears of carol, not of bob.
    let mut joined = Vec::new();
    while !joined.contains(&json!("carol")) {
        let p = event_of(&mut alice, "presence").await;
        assert!(p["online"].as_u64().unwrap() <= 4, "{p}");
        for peer in p["joined"].as_array().unwrap() {
            joined.push(peer["name"].clone());
        }
    }
    assert!(!joined.contains(&json!("bob")), "{joined:?}");
    // Bob's channel saw nobody else: his next event is a message.
    let mut dave = join(&server, "/ws/elsewhere").await;
    dave.send(Message::text("hi bob")).await.unwrap();
    // Presence may come first (dave's join now precedes dave's message),
    // naming nobody from the lobby.
    let next = loop {
        let next = event(&mut bob).await;
        if next["type"] != "presence" {
            break next;
        }
        for peer in next["joined"].as_array().unwrap() {
            assert!(
                !["alice", "carol"].contains(&peer["name"].as_str().unwrap()),
                "{next}"
            );
        }
    };
    assert_eq!(next["type"], "message", "{next}");
    assert_eq!(next["text"], "hi bob", "{next}");
}

fn jwt(claims: Value) -> String {
    crate::jwt::token(Algorithm::HS256, "chan-secret", claims)
}

fn in_an_hour() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600
}

#[tokio::test]
async fn a_jwt_channels_claim_limits_what_a_client_may_join() {
    let server = Server::start(&["--jwt-secret", "chan-secret", "--auth-token", "shared"]).await;
    let limited = jwt(json!({"exp": in_an_hour(), "channels": ["news", "team/*"]}));
    for ok in ["/ws/news", "/ws/team/a", "/ws?channel=team/b/c"] {
        try_join(&server, ok, None, Some(&limited))
            .await
            .unwrap_or_else(|e| panic!("{ok}: {e:?}"));
    }
    for refused in ["/ws", "/ws/newsroom", "/ws/team"] {
        match try_join(&server, refused, None, Some(&limited)).await {
            Err((403, body)) => assert!(body.contains("channel"), "{body}"),
            other => panic!("{refused}: expected 403, got {:?}", other.map(|_| ())),
        }
    }
    // No claim, or the shared token: every channel.
    let unlimited = jwt(json!({"exp": in_an_hour()}));
    try_join(&server, "/ws/anything", None, Some(&unlimited))
        .await
        .unwrap();
    try_join(&server, "/ws/anything", None, Some("shared"))
        .await
        .unwrap();
    let samples = server.metrics().await;
    assert_eq!(
        metric(
            &samples,
            "broadcast_upgrades_refused_total",
            r#"reason="channel_forbidden""#
        ),
        3.0
    );
}

/// `method path` with a JSON body and the API key (`key`: `None` sends no
/// `Authorization`).
async fn api(
    server: &Server,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.addr(),
        body.len()
    );
    let res = http_raw(&server.addr(), req.as_bytes()).await;
    assert_eq!(
        res.header("content-type"),
        Some("application/json"),
        "{method} {path}: {}",
        res.body
    );
    let doc = serde_json::from_str(&res.body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}: {:?}", res.body));
    (res.status, doc)
}

#[tokio::test]
async fn without_an_api_key_the_api_is_off() {
    let server = Server::start(&[]).await;
    let (status, doc) = api(&server, "GET", "/api/channels", Some(KEY), None).await;
    assert_eq!(status, 404, "{doc}");
    assert!(
        doc["error"].as_str().unwrap().contains("--api-key"),
        "{doc}"
    );
}

#[tokio::test]
async fn the_api_publishes_to_channels_and_lists_them() {
    let server = Server::start(&["--api-key", KEY]).await;
    let mut news = pair(&server, "/ws/news").await;
    let (mut v1, _) = join_v1(&server, "/ws/news?name=viewer").await;
    let mut other = join(&server, "/ws/other").await;

    let (status, doc) = api(
        &server,
        "POST",
        "/api/publish",
        Some(KEY),
        Some(r#"{"channel":"news","text":"breaking"}"#),
    )
    .await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["subscribers"], 3, "{doc}");
    for ws in news.iter_mut() {
        assert_eq!(recv(ws).await, Message::text("breaking"));
    }
    let m = event_of(&mut v1, "message").await;
    assert_eq!(
        (&m["text"], &m["name"], &m["from"]),
        (&json!("breaking"), &json!("api"), &json!(0))
    );

    // Binary, to several channels at once, with a name.
    let (status, doc) = api(
        &server,
        "POST",
        "/api/publish",
        Some(KEY),
        Some(r#"{"channels":["news","other","nobody"],"data":"AAEC/w==","name":"robot"}"#),
    )
    .await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["subscribers"], 4, "{doc}");
    assert_eq!(
        doc["channels"][2],
        json!({"channel": "nobody", "subscribers": 0})
    );
    assert_eq!(
        recv(&mut other).await,
        Message::binary(vec![0u8, 1, 2, 255])
    );
    assert_eq!(
        recv(&mut news[0]).await,
        Message::binary(vec![0u8, 1, 2, 255])
    );
    let m = event_of(&mut v1, "message").await;
    assert_eq!(
        (&m["data"], &m["name"]),
        (&json!("AAEC/w=="), &json!("robot"))
    );

    let (status, doc) = api(&server, "GET", "/api/channels", Some(KEY), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        doc,
        json!({"channels": [
            {"channel": "news", "subscribers": 3},
            {"channel": "other", "subscribers": 1},
        ]})
    );
    let (status, doc) = api(&server, "GET", "/api/channels/news", Some(KEY), None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["subscribers"], 3, "{doc}");
    let names: Vec<&str> = doc["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["viewer"], "{doc}");
    let (_, doc) = api(&server, "GET", "/api/channels/empty", Some(KEY), None).await;
    assert_eq!(
        doc,
        json!({"channel": "empty", "subscribers": 0, "members": []})
    );

    let samples = server.metrics().await;
    assert_eq!(metric(&samples, "broadcast_api_messages_total", ""), 4.0);
    assert_eq!(metric(&samples, "broadcast_api_requests_total", ""), 5.0);
}

/// Method, path, API key, body, and the status it must get.
type Case<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>, u16);

#[tokio::test]
async fn bad_api_requests_get_a_4xx_with_a_json_reason() {
    let server = Server::start(&["--api-key", KEY, "--max-message-size", "1000"]).await;
    let mut listener = join(&server, "/ws/x").await;
    let big = format!(r#"{{"channel":"x","text":"{}"}}"#, "y".repeat(1001));
    let huge = format!(r#"{{"channel":"x","text":"{}"}}"#, "y".repeat(200_000));
    let cases: Vec<Case<'_>> = vec![
        (
            "POST",
            "/api/publish",
            None,
            Some(r#"{"channel":"x","text":"t"}"#),
            401,
        ),
        (
            "POST",
            "/api/publish",
            Some("wrong"),
            Some(r#"{"channel":"x","text":"t"}"#),
            401,
        ),
        (
            "GET",
            "/api/channels",
            Some("test-api-key-012345678"),
            None,
            401,
        ),
        ("POST", "/api/publish", Some(KEY), Some("not json"), 400),
        (
            "POST",
            "/api/publish",
            Some(KEY),
            Some(r#"{"text":"no channel"}"#),
            400,
        ),
        (
            "POST",
            "/api/publish",
            Some(KEY),
            Some(r#"{"channel":"x"}"#),
            400,
        ),
        (
            "POST",
            "/api/publish",
            Some(KEY),
            Some(r#"{"channel":"x","text":"t","data":"AA=="}"#),
            400,
        ),
        (
            "POST",
            "/api/publish",
            Some(KEY),
            Some(r#"{"channel":"x","data":"***"}"#),
            400,
        ),
        (
            "POST",
            "/api/publish",
            Some(KEY),
            Some(r#"{"channel":"a b","text":"t"}"#),
            400,
        ),
        (
            "POST",
            "/api/publish",
            Some(KEY),
            Some(r#"{"channels":[],"text":"t"}"#),
            400,
        ),
        (
            "POST",
            "/api/publish",
            Some(KEY),
            Some(r#"{"channel":"x","text":"t","extra":1}"#),
            400,
        ),
        (
            "POST",
            "/api/publish",
            Some(KEY),
            Some(r#"{"channel":"x","text":"t","name":""}"#),
            400,
        ),
        ("POST", "/api/publish", Some(KEY), Some(&big), 413),
        ("POST", "/api/publish", Some(KEY), Some(&huge), 413),
        ("GET", "/api/publish", Some(KEY), None, 405),
        ("DELETE", "/api/channels/x", Some(KEY), None, 405),
        ("GET", "/api/channels/a%20b", Some(KEY), None, 400),
        ("GET", "/api/nothing", Some(KEY), None, 404),
    ];
    for (method, path, key, body, want) in &cases {
        let (status, doc) = api(&server, method, path, *key, *body).await;
        assert_eq!(status, *want, "{method} {path} {body:?}: {doc}");
        let reason = doc["error"].as_str().unwrap_or_default();
        assert!(!reason.is_empty() && !reason.contains('\n'), "{doc}");
    }
    // Nothing of it was published.
    assert_quiet(&mut listener, "listener of x").await;
    let samples = server.metrics().await;
    assert_eq!(
        metric(&samples, "broadcast_api_errors_total", ""),
        cases.len() as f64
    );
}
