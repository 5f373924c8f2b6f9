//! Flow control on default flags: bursts and floods are slowed down, not
//! closed, and lose nothing; a rate limit throttles; clients that never read
//! are still cut off, and their TCP connections are reset rather than left
//! holding kernel buffers.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::util::*;

/// How long the server waits for a peer to take its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads `want` messages from `ws`, checking they are `"{tag}-{i}"` in order
/// (other tags are counted separately in order too), and returns the client.
fn spawn_ordered_reader(mut ws: Ws, tags: &'static [(&'static str, u32)]) -> JoinHandle<Ws> {
    tokio::spawn(async move {
        let mut next = vec![0u32; tags.len()];
        let total: u32 = tags.iter().map(|t| t.1).sum();
        for _ in 0..total {
            let m = timeout(Duration::from_secs(60), next_data(&mut ws))
                .await
                .expect("reader timed out");
            let Message::Text(t) = m else {
                panic!("reader got {m:?}")
            };
            let (tag, n) = t.rsplit_once('-').expect("tag-n");
            let k = tags
                .iter()
                .position(|(name, _)| *name == tag)
                .unwrap_or_else(|| panic!("unknown message {t}"));
            assert_eq!(n.parse::<u32>().unwrap(), next[k], "{tag} out of order");
            next[k] += 1;
        }
        for (k, (tag, n)) in tags.iter().enumerate() {
            assert_eq!(next[k], *n, "{tag}: messages received");
        }
        ws
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_20000_is_delivered_to_everyone_in_order_on_default_flags() {
    const N: u32 = 20_000;
    let server = Server::start(&[]).await;
    let mut c = server.connect_many(3, false).await;
    let publisher = c.remove(0);
    let readers: Vec<_> = c
        .into_iter()
        .map(|ws| spawn_ordered_reader(ws, &[("m", N)]))
        .collect();
    let (mut sink, mut incoming) = spawn_reader(publisher);
    for i in 0..N {
        sink.feed(Message::text(format!("m-{i}"))).await.unwrap();
    }
    sink.flush().await.unwrap();
    let mut readers_back = Vec::new();
    for r in readers {
        readers_back.push(r.await.expect("reader"));
    }
    // The publisher was never closed: nothing but pings reached it.
    while let Ok(m) = incoming.try_recv() {
        let m = m.expect("publisher's connection failed");
        assert!(
            matches!(m, Message::Ping(_) | Message::Pong(_)),
            "publisher got {m:?}"
        );
    }
    sink.send(Message::text("still here")).await.unwrap();
    for ws in &mut readers_back {
        assert_eq!(recv(ws).await, Message::text("still here"));
    }
    assert_eq!(server.health_number("rate_limited_closes").await, 0);
    assert_eq!(server.health_number("slow_consumer_closes").await, 0);
    assert!(server.health_number("messages_in").await > u64::from(N));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_client_is_slowed_not_closed_while_another_publisher_keeps_flowing() {
    const FLOOD: u32 = 100_000;
    const PACED: u32 = 50;
    const READERS: usize = 20;
    let server = Server::start(&[]).await;
    let mut c = server.connect_many(READERS + 1, false).await;
    let paced = c.remove(0);
    let readers: Vec<_> = c
        .into_iter()
        .map(|ws| spawn_ordered_reader(ws, &[("flood", FLOOD), ("paced", PACED)]))
        .collect();
    let mut flooder = RawClient::connect(&server).await;
    server.wait_connections(READERS as u64 + 2).await;

    // The flooder writes everything as fast as TCP takes it.
    let flood = tokio::spawn(async move {
        let mut buf = Vec::new();
        for i in 0..FLOOD {
            buf.extend_from_slice(&masked(OP_TEXT, format!("flood-{i}").as_bytes()));
            if buf.len() > 64 * 1024 {
                flooder.send_raw(&buf).await;
                buf.clear();
            }
        }
        flooder.send_raw(&buf).await;
        flooder
    });
    // Meanwhile the paced publisher sends 50 messages, 20 ms apart.
    let (mut sink, _paced_incoming) = spawn_reader(paced);
    for i in 0..PACED {
        sink.send(Message::text(format!("paced-{i}")))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut flooder = timeout(Duration::from_secs(60), flood)
        .await
        .expect("flooder could not write its messages")
        .unwrap();
    let mut kept = Vec::new();
    for r in readers {
        kept.push(
            timeout(Duration::from_secs(60), r)
                .await
                .expect("reader did not get everything")
                .expect("reader"),
        );
    }
    // Nobody was closed; the flooder was held back by the fan-out.
    assert_eq!(
        server.health_number("connections").await,
        READERS as u64 + 2
    );
    let m = server.metrics().await;
    for reason in ["slow_consumer", "rate_limited", "protocol"] {
        assert_eq!(
            metric(
                &m,
                "broadcast_closes_total",
                &format!("reason=\"{reason}\"")
            ),
            0.0,
            "{reason} closes"
        );
    }
    assert!(
        metric(
            &m,
            "broadcast_publisher_paused_seconds_total",
            "cause=\"fanout\""
        ) > 0.0,
        "the flooder was never held back"
    );
    // The flooder's connection still works.
    flooder.send_raw(&masked(OP_PING, b"p")).await;
    let pong = flooder.read_until(OP_PONG).await;
    assert_eq!(pong.payload, b"p");
}

#[tokio::test]
async fn rate_limit_throttles_by_default_and_loses_nothing() {
    const N: u32 = 1_500;
    let server = Server::start(&["--max-message-rate", "500"]).await;
    let mut c = server.connect_many(2, false).await;
    let publisher = c.remove(0);
    let reader = spawn_ordered_reader(c.remove(0), &[("r", N)]);
    let (mut sink, mut incoming) = spawn_reader(publisher);
    for i in 0..N {
        sink.feed(Message::text(format!("r-{i}"))).await.unwrap();
    }
    sink.flush().await.unwrap();
    reader.await.expect("reader");
    while let Ok(m) = incoming.try_recv() {
        let m = m.expect("publisher's connection failed");
        assert!(matches!(m, Message::Ping(_)), "publisher got {m:?}");
    }
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, "broadcast_closes_total", "reason=\"rate_limited\""),
        0.0
    );
    // 1,500 messages at 500/s with a burst of 500: about 2 s of throttling.
    assert!(
        metric(
            &m,
            "broadcast_publisher_paused_seconds_total",
            "cause=\"rate_limit\""
        ) > 1.0,
        "the publisher was not throttled"
    );
}

/// The server side of the TCP connections on `port` in /proc/net/tcp:
/// (client port, bytes in the send queue) per connection.
fn server_sockets(port: u16) -> Vec<(u16, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let hex_port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state, queues) = (f[1], f[2], f[3], f[4]);
            // 0A: LISTEN; 06: TIME_WAIT (no buffers: the /healthz polls).
            if hex_port(local) != port || state == "0A" || state == "06" {
                return None;
            }
            let tx = u64::from_str_radix(queues.split(':').next().unwrap(), 16).unwrap();
            Some((hex_port(remote), tx))
        })
        .collect()
}

/// Publishes `n` 16 KiB messages, each only once `reader` has the one
/// before the previous, so the reader is never a slow consumer itself.
async fn publish_to_reader(publisher: &mut Ws, reader: &mut Ws, n: u32) {
    let body = |i: u32| {
        let mut b = vec![(i % 251) as u8; 16 * 1024];
        b[..4].copy_from_slice(&i.to_be_bytes());
        b
    };
    let mut got = 0u32;
    for i in 0..n {
        publisher.send(Message::binary(body(i))).await.unwrap();
        while got + 1 < i {
            match recv(reader).await {
                Message::Binary(b) => {
                    assert!(b[..] == body(got)[..], "reader: message {got}");
                    got += 1;
                }
                other => panic!("reader got {other:?}"),
            }
        }
    }
    while got < n {
        match recv(reader).await {
            Message::Binary(b) => {
                assert!(b[..] == body(got)[..], "reader: message {got}");
                got += 1;
            }
            other => panic!("reader got {other:?}"),
        }
    }
}

/// Waits until `/healthz` reports at least `want` slow-consumer closes.
async fn wait_slow_closes(server: &Server, want: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let got = server.health_number("slow_consumer_closes").await;
        if got >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "slow consumer closes stayed at {got}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_reading_subscriber_is_closed_1013_and_its_connection_reset() {
    let server = Server::start(&[]).await;
    let mut c = server.connect_many(2, false).await;
    let mut slow = RawClient::connect_small_rcvbuf(&server, 4096).await;
    let slow_port = slow.stream.local_addr().unwrap().port();
    server.wait_connections(3).await;
    let (mut publisher, mut reader) = (c.remove(0), c.remove(0));
    // 200 x 16 KiB: far more than the 1 MiB default backlog and what the
    // kernel holds for the slow client.
    publish_to_reader(&mut publisher, &mut reader, 200).await;
    wait_slow_closes(&server, 1, EVENT_TIMEOUT).await;
    // It never takes the close frame either: once the close timeout is
    // over, the server resets the connection instead of leaving it (and
    // megabytes of send queue) in the kernel.
    let deadline = Instant::now() + CLOSE_TIMEOUT + Duration::from_secs(1);
    while server_sockets(server.port)
        .iter()
        .any(|&(p, _)| p == slow_port)
    {
        assert!(
            Instant::now() < deadline,
            "the never-reading client's connection is still open: {:?}",
            server_sockets(server.port)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = server.metrics().await;
    assert_eq!(metric(&m, "broadcast_aborted_connections_total", ""), 1.0);
    // The reader was never behind and is still served.
    server.wait_connections(2).await;
    publisher.send(Message::text("after")).await.unwrap();
    assert_eq!(recv(&mut reader).await, Message::text("after"));
    // The slow client sees its connection reset (or closed).
    let mut sink = vec![0u8; 1 << 20];
    let ended = timeout(EVENT_TIMEOUT, async {
        loop {
            match tokio::io::AsyncReadExt::read(&mut slow.stream, &mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the slow client's socket never ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_never_reading_subscribers_leave_no_send_queue_behind() {
    const SLOW: usize = 1000;
    let server = Server::start(&[]).await;
    let mut c = server.connect_many(2, false).await;
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        slow.push(RawClient::connect_small_rcvbuf(&server, 4096).await);
    }
    server.wait_connections(SLOW as u64 + 2).await;
    let (mut publisher, mut reader) = (c.remove(0), c.remove(0));
    // The never-readers are the majority, but they make no progress at
    // all: after a moment they stop holding the publishers back, fall
    // behind past the backlog limit and are closed.
    publish_to_reader(&mut publisher, &mut reader, 120).await;
    wait_slow_closes(&server, SLOW as u64, Duration::from_secs(60)).await;
    let deadline = Instant::now() + CLOSE_TIMEOUT + Duration::from_secs(2);
    loop {
        let left = server_sockets(server.port);
        // Only the reader and the publisher remain.
        if left.len() <= 2 {
            assert!(
                left.iter().all(|&(_, tx)| tx < 64 * 1024),
                "send queues left: {left:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} connections still open, {} bytes in their send queues",
            left.len(),
            left.iter().map(|s| s.1).sum::<u64>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, "broadcast_aborted_connections_total", ""),
        SLOW as f64
    );
    publisher.send(Message::text("after")).await.unwrap();
    assert_eq!(recv(&mut reader).await, Message::text("after"));
    drop(slow);
    let _ = reader.next().await;
}
