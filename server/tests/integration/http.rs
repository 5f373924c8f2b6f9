//! Plain HTTP endpoints: /healthz, the /livez and /readyz probes, /ws
//! without an upgrade, unknown paths.

use crate::util::*;

#[tokio::test]
async fn healthz_reports_ok_and_connection_count() {
    let server = Server::start(&[]).await;
    let resp = server.http_get("/healthz").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let ctype = resp.header("content-type").unwrap_or("");
    assert!(
        ctype.to_ascii_lowercase().starts_with("application/json"),
        "content-type {ctype:?}"
    );
    assert_eq!(
        json_value(&resp.body, "status"),
        Some("ok".into()),
        "{:?}",
        resp.body
    );
    assert_eq!(
        json_number(&resp.body, "connections"),
        Some(0),
        "{:?}",
        resp.body
    );
    assert!(
        json_number(&resp.body, "uptime_secs").is_some(),
        "no uptime_secs in {:?}",
        resp.body
    );

    let mut c = server.connect_many(3, false).await;
    let resp = server.http_get("/healthz").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        json_value(&resp.body, "status"),
        Some("ok".into()),
        "{:?}",
        resp.body
    );
    assert_eq!(
        json_number(&resp.body, "connections"),
        Some(3),
        "{:?}",
        resp.body
    );

    // A client leaving is reflected.
    let mut gone = c.pop().unwrap();
    gone.close(None).await.unwrap();
    server.wait_connections(2).await;
}

#[tokio::test]
async fn probes_say_live_and_ready_until_the_node_is_full() {
    let server = Server::start(&["--max-connections", "2"]).await;
    let live = server.http_get("/livez").await;
    assert_eq!(
        (live.status, live.body.as_str()),
        (200, "{\"live\":true}"),
        "{live:?}"
    );
    let ready = server.http_get("/readyz").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (200, "{\"ready\":true}"),
        "{ready:?}"
    );
    assert_eq!(ready.header("cache-control"), Some("no-store"));
    assert!(ready
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    // Full: not ready for more clients, and it says why; still live.
    let mut clients = server.connect_many(2, false).await;
    let full = server.http_get("/readyz").await;
    assert_eq!(full.status, 503, "{full:?}");
    assert_eq!(
        json_value(&full.body, "reason"),
        Some("full: at --max-connections (2)".into())
    );
    assert_eq!(json_value(&full.body, "ready"), Some(false.into()));
    assert_eq!(server.http_get("/livez").await.status, 200);
    // A client leaves: ready again.
    clients.pop().unwrap().close(None).await.unwrap();
    server.wait_connections(1).await;
    assert_eq!(server.http_get("/readyz").await.status, 200);
    // Probes are read-only.
    let post = http_raw(
        &server.addr(),
        b"POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(post.status, 405, "{post:?}");
}

#[tokio::test]
async fn ws_path_without_upgrade_is_426() {
    let server = Server::start(&[]).await;
    // Also for a channel's path (`/ws/NAME`).
    for path in ["/ws", "/ws/extra"] {
        let resp = server.http_get(path).await;
        assert_eq!(resp.status, 426, "{path}: {resp:?}");
    }
}

#[tokio::test]
async fn unknown_path_is_404() {
    let server = Server::start(&[]).await;
    for path in ["/nope", "/wsx", "/healthzz"] {
        let resp = server.http_get(path).await;
        assert_eq!(resp.status, 404, "GET {path}: {resp:?}");
    }
    // And the server is fine afterwards.
    assert_eq!(server.http_get("/healthz").await.status, 200);
}
