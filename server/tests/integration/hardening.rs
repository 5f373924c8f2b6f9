//! Abuse limits (message rate, connections per IP, new-connection rate)
//! and the Prometheus `/metrics` endpoint.

use std::time::Duration;

use futures_util::SinkExt;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::util::*;

#[tokio::test]
async fn flooding_client_is_closed_with_rate_limit_action_close() {
    let server =
        Server::start(&["--max-message-rate", "100", "--rate-limit-action", "close"]).await;
    let mut c = server.connect_many(2, false).await;
    let mut flooder = RawClient::connect(&server).await;
    server.wait_connections(3).await;

    // Far above 100 msg/s: 2000 small messages in one write.
    let frame = masked(OP_TEXT, b"flood");
    let flood: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 2000)
        .collect();
    flooder.send_raw_lenient(&flood).await;

    // The normal sender keeps going at a modest pace meanwhile.
    for i in 0..10 {
        c[0].send(Message::text(format!("normal-{i}")))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The flooder is closed with 1008 "rate limited" (skipping whatever
    // broadcasts reached it first).
    let close = flooder.read_until(OP_CLOSE).await;
    let (code, reason) = close.close_code().expect("close with a code");
    assert_eq!((code, reason.as_str()), (1008, "rate limited"));

    // The receiver got every normal message, in order (and at most the
    // flooder's first burst of messages besides).
    let mut want = 0;
    let mut flood_seen = 0;
    while want < 10 {
        match recv(&mut c[1]).await {
            Message::Text(t) if t.as_str() == "flood" => flood_seen += 1,
            Message::Text(t) => {
                assert_eq!(t.as_str(), format!("normal-{want}"));
                want += 1;
            }
            other => panic!("receiver got {other:?}"),
        }
    }
    assert!(flood_seen <= 101, "{flood_seen} flood messages got through");

    // And the two can still talk both ways.
    c[1].send(Message::text("reply")).await.unwrap();
    loop {
        match recv(&mut c[0]).await {
            Message::Text(t) if t.as_str() == "flood" => {}
            m => {
                assert_eq!(m, Message::text("reply"));
                break;
            }
        }
    }
    server.wait_connections(2).await;
    assert_eq!(server.health_number("rate_limited_closes").await, 1);
    let m = server.metrics().await;
    assert_eq!(metric(&m, "broadcast_rate_limited_closes_total", ""), 1.0);
    assert_eq!(
        metric(&m, "broadcast_closes_total", "reason=\"rate_limited\""),
        1.0
    );
    assert_eq!(
        metric(&m, "broadcast_closes_total", "reason=\"protocol\""),
        0.0
    );
}

#[tokio::test]
async fn v1_client_gets_a_notice_before_the_rate_limit_close() {
    let server = Server::start(&["--max-message-rate", "5", "--rate-limit-action", "close"]).await;
    let (mut ws, _) = upgrade_with(
        &server.ws_url(),
        &[("Sec-WebSocket-Protocol", "broadcast.v1")],
    )
    .await
    .expect("connect v1");
    for i in 0..50 {
        if ws.send(Message::text(format!("{i}"))).await.is_err() {
            break;
        }
    }
    let mut notice = None;
    let close = timeout(EVENT_TIMEOUT, async {
        loop {
            match next_data(&mut ws).await {
                Message::Close(f) => break f,
                Message::Text(t) if t.contains("\"notice\"") => notice = Some(t.to_string()),
                _ => {}
            }
        }
    })
    .await
    .expect("v1 flooder never closed")
    .expect("close with a code");
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "rate limited");
    let notice = notice.expect("no notice before the close");
    assert!(notice.contains("1008"), "notice {notice}");
}

#[tokio::test]
async fn per_ip_limit_refuses_the_extra_connection_with_503() {
    let server = Server::start(&["--max-connections-per-ip", "2"]).await;
    let a = try_connect(&server).await.expect("first connection");
    let _b = try_connect(&server).await.expect("second connection");
    assert_eq!(
        try_connect(&server).await.err(),
        Some(503),
        "third from 127.0.0.1"
    );
    // The body names the limit.
    let refused = http_raw(
        &server.addr(),
        format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            server.addr()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(refused.status, 503);
    assert!(
        refused
            .body
            .contains("the limit is 2 (--max-connections-per-ip)"),
        "503 body {:?}",
        refused.body
    );

    // Another address has its own allowance.
    let mut other = Vec::new();
    for _ in 0..2 {
        other.push(
            try_connect_from(&server, [127, 0, 0, 2])
                .await
                .expect("from 127.0.0.2"),
        );
    }
    assert_eq!(
        try_connect_from(&server, [127, 0, 0, 2]).await.err(),
        Some(503)
    );
    server.wait_connections(4).await;
    assert_eq!(server.health_number("refused_per_ip").await, 3);
    // One log line per address, however many upgrades it had refused.
    let stderr = server.stderr();
    let logged = |ip: &str| {
        stderr
            .lines()
            .filter(|l| l.contains("max-connections-per-ip reached") && l.contains(ip))
            .count()
    };
    assert_eq!(
        (logged("127.0.0.1"), logged("127.0.0.2")),
        (1, 1),
        "{stderr}"
    );
    let m = server.metrics().await;
    assert_eq!(
        metric(
            &m,
            "broadcast_upgrades_refused_total",
            "reason=\"max_connections_per_ip\""
        ),
        3.0
    );

    // Closing one frees its slot.
    drop(a);
    server.wait_connections(3).await;
    let _c = try_connect(&server)
        .await
        .expect("a slot freed after a client left");
}

#[tokio::test]
async fn new_connection_rate_sheds_excess_upgrades_with_503() {
    let server = Server::start(&["--max-new-connections-per-sec", "1"]).await;
    let mut statuses = Vec::new();
    let mut kept = Vec::new();
    for _ in 0..3 {
        match try_connect(&server).await {
            Ok(ws) => kept.push(ws),
            Err(status) => statuses.push(status),
        }
    }
    assert!(!kept.is_empty(), "the first connection should be admitted");
    assert!(
        !statuses.is_empty() && statuses.iter().all(|&s| s == 503),
        "expected at least one 503, got {statuses:?}"
    );
    // Plain HTTP is not shed.
    assert_eq!(server.http_get("/healthz").await.status, 200);
    let m = server.metrics().await;
    assert_eq!(
        metric(
            &m,
            "broadcast_upgrades_refused_total",
            "reason=\"new_connection_rate\""
        ),
        statuses.len() as f64
    );
    assert_eq!(
        server.health_number("refused_new_connection_rate").await,
        statuses.len() as u64
    );
    // The bucket refills: a connection is admitted again within a few seconds.
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        if try_connect(&server).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bucket never refilled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn metrics_parse_and_move_with_traffic() {
    let server = Server::start(&["--workers", "2"]).await;
    let resp = server.http_get("/metrics").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    let mut c = server.connect_many(3, false).await;
    server.wait_connections(3).await;
    let before = server.metrics().await;
    assert_eq!(metric(&before, "broadcast_connections_open", ""), 3.0);
    assert!(metric(&before, "broadcast_connections_total", "") >= 3.0);
    assert_eq!(metric(&before, "broadcast_workers", ""), 2.0);
    let per_shard: f64 = before
        .iter()
        .filter(|s| s.name == "broadcast_shard_connections")
        .map(|s| s.value)
        .sum();
    // Shard loads count WebSocket connections plus HTTP ones (the scrape itself).
    assert!(
        (3.0..=5.0).contains(&per_shard),
        "shard connections {per_shard}"
    );

    const N: usize = 5;
    for i in 0..N {
        c[0].send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for receiver in &mut c[1..] {
        for i in 0..N {
            assert_eq!(recv(receiver).await, Message::text(format!("m{i}")));
        }
    }
    let after = server.metrics().await;
    let delta = |name: &str| metric(&after, name, "") - metric(&before, name, "");
    assert!(delta("broadcast_messages_in_total") >= N as f64);
    assert!(delta("broadcast_deliveries_total") >= (2 * N) as f64);
    assert!(delta("broadcast_bytes_in_total") > 0.0);
    assert!(delta("broadcast_bytes_out_total") > 0.0);
    assert!(delta("broadcast_delivery_latency_seconds_count") >= 1.0);
    let inf = metric(
        &after,
        "broadcast_delivery_latency_seconds_bucket",
        "le=\"+Inf\"",
    );
    assert_eq!(
        inf,
        metric(&after, "broadcast_delivery_latency_seconds_count", "")
    );
    assert_eq!(metric(&after, "broadcast_connections_open", ""), 3.0);

    // A normal close is counted by reason, and the gauge follows.
    let mut gone = c.pop().unwrap();
    gone.close(None).await.unwrap();
    server.wait_connections(2).await;
    let m = server.metrics().await;
    assert_eq!(metric(&m, "broadcast_connections_open", ""), 2.0);
    assert_eq!(
        metric(&m, "broadcast_closes_total", "reason=\"normal\""),
        1.0
    );
}
