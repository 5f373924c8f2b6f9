//! Command line, startup errors, graceful shutdown, keepalive and the
//! handshake deadline.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::util::*;

/// Runs the binary with `args` to completion (bounded) and returns
/// (exit code, stdout, stderr).
async fn run_to_exit(args: &[&str]) -> (Option<i32>, String, String) {
    let run = crate::util::run_to_exit(args, &[]).await;
    (run.status.code(), run.stdout, run.stderr)
}

async fn assert_usage_error(args: &[&str]) {
    let (code, stdout, stderr) = run_to_exit(args).await;
    assert_eq!(code, Some(2), "{args:?}: stderr {stderr:?}");
    assert!(
        !stdout.contains("listening"),
        "{args:?}: printed {stdout:?}"
    );
    assert!(
        stderr.to_ascii_lowercase().contains("usage"),
        "{args:?}: no usage on stderr: {stderr:?}"
    );
}

#[tokio::test]
async fn unknown_flag_exits_2_with_usage() {
    assert_usage_error(&["start", "--bogus"]).await;
}

#[tokio::test]
async fn bad_flag_value_exits_2_with_usage() {
    assert_usage_error(&["start", "--port", "notanumber"]).await;
}

#[tokio::test]
async fn taken_port_exits_1_with_one_line() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let (code, stdout, stderr) =
        run_to_exit(&["start", "--host", "127.0.0.1", "--port", &port]).await;
    assert_eq!(code, Some(1), "stderr {stderr:?}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one stderr line, got {stderr:?}"
    );
    let line = lines[0].to_ascii_lowercase();
    assert!(
        line.contains("address") || line.contains(&port),
        "error line names neither the address nor the port: {stderr:?}"
    );
    assert!(!stdout.contains("listening"), "printed {stdout:?}");
    drop(holder);
}

#[tokio::test]
async fn go_style_single_dash_flags() {
    let server = Server::start_exact(&["start", "-port", "0", "-host", "127.0.0.1"]).await;
    let mut c = server.connect_many(2, false).await;
    c[1].send(Message::text("go style")).await.unwrap();
    assert_eq!(recv(&mut c[0]).await, Message::text("go style"));
    assert_eq!(server.health_connections().await, 2);
}

#[tokio::test]
async fn single_dash_limit_flags() {
    let server = Server::start_exact(&[
        "start",
        "-host",
        "127.0.0.1",
        "-port",
        "0",
        "-max-message-size",
        "100",
    ])
    .await;
    let mut c = server.connect_many(2, false).await;
    c[0].send(Message::binary(vec![0u8; 101])).await.unwrap();
    assert_eq!(expect_ws_close(&mut c[0]).await.0, 1009);
}

/// Reads until the Close frame; returns its code and reason and checks the
/// stream then ends.
async fn read_to_close(ws: &mut Ws, who: &str) -> (u16, String) {
    let (code, reason) = match recv(ws).await {
        Message::Close(Some(f)) => (u16::from(f.code), f.reason.as_str().to_owned()),
        other => panic!("{who}: expected Close, got {other:?}"),
    };
    // tungstenite answers the close; the stream must then end.
    let end = timeout(EVENT_TIMEOUT, ws.next()).await;
    match end {
        Err(_) => panic!("{who}: connection not closed after Close"),
        Ok(Some(Ok(m))) => panic!("{who}: message after Close: {m:?}"),
        Ok(None | Some(Err(_))) => {}
    }
    (code, reason)
}

fn shutdown_close() -> (u16, String) {
    (1001, "server shutting down".to_owned())
}

fn seq_payload(i: u32) -> Vec<u8> {
    let mut v = vec![(i % 256) as u8; 4096];
    v[..4].copy_from_slice(&i.to_be_bytes());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_delivers_accepted_messages_then_closes_1001() {
    const N: u32 = 200;
    let mut server = Server::start(&["--echo"]).await;
    let mut c = server.connect_many(2, true).await;

    // The sender reads its own echoes: proof the server accepted all N.
    // The other client reads nothing yet, so they queue up for it.
    for i in 0..N {
        c[0].feed(Message::binary(seq_payload(i))).await.unwrap();
    }
    c[0].flush().await.unwrap();
    for i in 0..N {
        assert_eq!(recv(&mut c[0]).await, Message::binary(seq_payload(i)));
    }

    let t0 = Instant::now();
    server.signal("TERM");
    for i in 0..N {
        let m = recv(&mut c[1]).await;
        assert!(
            m == Message::binary(seq_payload(i)),
            "late reader: message {i} missing or out of order before shutdown"
        );
    }
    assert_eq!(
        read_to_close(&mut c[1], "late reader").await,
        shutdown_close()
    );
    assert_eq!(read_to_close(&mut c[0], "sender").await, shutdown_close());
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "shutdown took {:?} (timeout 5 s)",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_delivers_last_message_then_closes_1001() {
    let mut server = Server::start(&["--shutdown-timeout", "2"]).await;
    // 0 sends, 1 witnesses that the server accepted the message, 2 reads
    // only after the signal.
    let mut c = server.connect_many(3, false).await;
    // A client that never reads nor answers the close must not hold the
    // shutdown past its timeout.
    let _mute = RawClient::connect(&server).await;
    server.wait_connections(4).await;

    c[0].send(Message::text("last words")).await.unwrap();
    assert_eq!(recv(&mut c[1]).await, Message::text("last words"));
    let t0 = Instant::now();
    server.signal("INT");

    assert_eq!(recv(&mut c[2]).await, Message::text("last words"));
    for (i, ws) in c.iter_mut().enumerate() {
        assert_eq!(
            read_to_close(ws, &format!("client {i}")).await,
            shutdown_close()
        );
    }
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "exit status after SIGINT");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "shutdown took {:?} with --shutdown-timeout 2",
        t0.elapsed()
    );
}

#[tokio::test]
async fn idle_client_is_pinged_then_closed_1001() {
    let server = Server::start(&["--idle-timeout", "2"]).await;
    let mut raw = RawClient::connect(&server).await;
    let t0 = Instant::now();

    let first = match raw.read_within(Duration::from_secs(8)).await {
        Read::Frame(f) => f,
        Read::Eof => panic!("closed without a ping first"),
    };
    assert_eq!(
        first.opcode, OP_PING,
        "first frame of an idle connection: {first:?}"
    );
    assert!(first.fin);

    // Never answer: the next non-ping frame must be Close 1001.
    let close = loop {
        match raw.read_within(Duration::from_secs(8)).await {
            Read::Frame(f) if f.opcode == OP_PING => continue,
            Read::Frame(f) => break f,
            Read::Eof => panic!("EOF without a Close frame"),
        }
    };
    let elapsed = t0.elapsed();
    assert_eq!(
        close.close_code(),
        Some((1001, "idle timeout".to_owned())),
        "close for an idle connection"
    );
    assert!(
        elapsed >= Duration::from_millis(1900),
        "closed after {elapsed:?}, before the 2 s idle timeout"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "closed only after {elapsed:?}"
    );
    // Without our close reply, the server still drops the TCP connection.
    match raw.read_within(Duration::from_secs(8)).await {
        Read::Eof => {}
        Read::Frame(f) => panic!("frame after the idle close: {f:?}"),
    }
    server.wait_connections(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responsive_client_survives_idle_timeout() {
    let server = Server::start(&["--idle-timeout", "2"]).await;
    let c = server.connect_many(2, false).await;
    let mut c = c.into_iter();
    // Both clients keep polling their sockets, so tungstenite answers pings.
    let (_sink_a, mut rx_a) = spawn_reader(c.next().unwrap());
    let (mut sink_b, mut rx_b) = spawn_reader(c.next().unwrap());

    tokio::time::sleep(Duration::from_secs(5)).await;
    sink_b.send(Message::text("after 5 s")).await.unwrap();

    let mut pings = 0;
    let got = timeout(EVENT_TIMEOUT, async {
        loop {
            match rx_a.recv().await {
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(Message::Pong(_))) => {}
                Some(Ok(m)) => break m,
                Some(Err(e)) => panic!("client a: error {e}"),
                None => panic!("client a: connection ended"),
            }
        }
    })
    .await
    .expect("client a received nothing");
    assert_eq!(got, Message::text("after 5 s"));
    assert!(pings >= 1, "no keepalive ping in 5 s with --idle-timeout 2");
    // b was not closed either.
    while let Ok(m) = rx_b.try_recv() {
        let m = m.unwrap_or_else(|e| panic!("client b: error {e}"));
        assert!(
            matches!(m, Message::Ping(_) | Message::Pong(_)),
            "client b got {m:?}"
        );
    }
    assert_eq!(server.health_connections().await, 2);
}

#[tokio::test]
async fn handshake_deadline_closes_silent_connections() {
    let server = Server::start(&["--handshake-timeout", "1"]).await;
    let t0 = Instant::now();
    let mut silent = TcpStream::connect(server.addr()).await.unwrap();
    let mut half = TcpStream::connect(server.addr()).await.unwrap();
    half.write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();

    // Stalled handshakes do not block others.
    let mut c = server.connect_many(2, false).await;
    c[0].send(Message::text("unblocked")).await.unwrap();
    assert_eq!(recv(&mut c[1]).await, Message::text("unblocked"));

    for (name, s) in [("silent", &mut silent), ("half request", &mut half)] {
        let mut sink = Vec::new();
        let r = timeout(Duration::from_secs(6), s.read_to_end(&mut sink)).await;
        assert!(
            r.is_ok(),
            "{name}: connection still open 6 s after a 1 s handshake deadline"
        );
        let elapsed = t0.elapsed();
        assert!(
            elapsed >= Duration::from_millis(900),
            "{name}: closed after {elapsed:?}, before the 1 s deadline"
        );
    }
    // The established WebSocket connections are not subject to it.
    c[1].send(Message::text("still here")).await.unwrap();
    assert_eq!(recv(&mut c[0]).await, Message::text("still here"));
}

/// `--drain-period`: SIGTERM makes the node unready at once and refuse new
/// clients, then closes the connected ones with 1012 one at a time, spread
/// over the period, while those still connected keep getting every message
/// (a backend publishes through the API meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_drain_period_closes_clients_gradually_with_1012() {
    const CLIENTS: usize = 40;
    const MESSAGES: usize = 20;
    let mut server = Server::start(&["--drain-period", "2", "--api-key", "k"]).await;
    let clients = server.connect_many(CLIENTS, false).await;
    assert_eq!(server.http_get("/readyz").await.status, 200);
    let t0 = Instant::now();
    server.signal("TERM");
    // Unready while it drains; new clients are turned away.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let ready = server.http_get("/readyz").await;
        if ready.status == 503 {
            assert!(ready.body.contains("draining"), "{ready:?}");
            break;
        }
        assert!(Instant::now() < deadline, "/readyz still {ready:?}");
        tokio::task::yield_now().await;
    }
    assert_eq!(try_connect(&server).await.err(), Some(503));
    // Each client records when and how it was closed, and what it got.
    let mut readers = Vec::new();
    for mut ws in clients {
        readers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let close = loop {
                match recv(&mut ws).await {
                    Message::Close(Some(f)) => break (u16::from(f.code), f.reason.to_string()),
                    Message::Text(t) => got.push(t.to_string()),
                    other => panic!("unexpected {other:?}"),
                }
            };
            (Instant::now(), close, got)
        }));
    }
    let sent: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    for text in &sent {
        let body = format!(r#"{{"channel":"default","text":"{text}"}}"#);
        let req = format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let resp = http_raw(&server.addr(), req.as_bytes()).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let mut closes = Vec::new();
    for r in readers {
        closes.push(r.await.unwrap());
    }
    for (_, close, got) in &closes {
        assert_eq!(
            *close,
            (1012, "server restarting: reconnect".to_owned()),
            "the drain's close"
        );
        // Up to its close, a client got every message, in order.
        assert_eq!(got[..], sent[..got.len()], "a client lost messages");
    }
    assert!(
        closes.iter().any(|c| !c.2.is_empty()),
        "nobody got a message during the drain"
    );
    // Spread out, not all at once: 20 clients per shard at 20 a second
    // (the floor rate; the period alone would allow 10) is about 1 s from
    // the first close to the last.
    let first = closes.iter().map(|c| c.0).min().unwrap();
    let last = closes.iter().map(|c| c.0).max().unwrap();
    assert!(
        last - first >= Duration::from_millis(600),
        "closes within {:?}",
        last - first
    );
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "exit status after the drain");
    assert!(t0.elapsed() < Duration::from_secs(9), "{:?}", t0.elapsed());
}

/// A second SIGTERM during a long drain stops at once: the clients left
/// get 1001 and the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_the_drain_at_once() {
    let mut server = Server::start(&["--drain-period", "600", "--workers", "1"]).await;
    let mut clients = server.connect_many(100, false).await;
    server.signal("TERM");
    // The drain has begun: 100 clients over 600 s go at 20 a second, in
    // random order, so the first close comes soon and most clients are
    // still connected then.
    // (`recv` takes nothing from the clients whose future is dropped.)
    let (message, first, _) =
        futures_util::future::select_all(clients.iter_mut().map(|ws| Box::pin(recv(ws)))).await;
    let Message::Close(Some(frame)) = message else {
        panic!("expected a close, got {message:?}");
    };
    let code = u16::from(frame.code);
    assert!(code == 1012 || code == 1001, "{code}");
    server.signal("TERM");
    let mut codes = Vec::new();
    for (i, ws) in clients.iter_mut().enumerate().filter(|(i, _)| *i != first) {
        codes.push(read_to_close(ws, &format!("client {i}")).await.0);
    }
    assert!(
        codes.contains(&1001),
        "nobody got the prompt shutdown's 1001: {codes:?}"
    );
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
}

/// A drained client that takes its 1012 but never answers it (a tungstenite
/// client that moves to another node at once sends its answer only on its
/// next read or write) does not hold the node for the shutdown timeout:
/// its connection is dropped soon after, and the node exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_client_that_never_answers_does_not_hold_the_node() {
    let mut server = Server::start(&["--drain-period", "1", "--shutdown-timeout", "600"]).await;
    let mut client = RawClient::connect(&server).await;
    server.signal("TERM");
    let close = client.read_until(OP_CLOSE).await;
    assert_eq!(close.close_code().map(|c| c.0), Some(1012), "{close:?}");
    // No answer: within the test's event timeout (not the 600 s shutdown
    // timeout) the server gives up on it.
    client.expect_eof().await;
    let status = server.wait_exit(EVENT_TIMEOUT).await;
    assert_eq!(status.code(), Some(0), "exit status after the drain");
}
