//! TLS (`--tls-cert`, `--tls-key`): `wss://` and `https://` with a
//! certificate chain the test generates (a private CA and a leaf for
//! 127.0.0.1), real rustls clients and the console client.

use std::process::Stdio;

use futures_util::SinkExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{
    barrier, close_payload, encode_frame, masked, metric, next_data, parse_metrics, recv,
    run_start, run_to_exit, server_bin, Pki, Server, TempFile, EVENT_TIMEOUT, OP_BINARY, OP_CLOSE,
    OP_TEXT,
};

#[tokio::test]
async fn wss_clients_exchange_text_binary_and_large_messages() {
    let pki = Pki::new("exchange");
    let server = pki.server(&["--max-message-size", "4194304"]).await;
    let mut c = pki.connect_many(&server, 3).await;
    c[0].send(Message::text("hello over tls")).await.unwrap();
    for ws in &mut c[1..] {
        assert_eq!(recv(ws).await, Message::text("hello over tls"));
    }
    c[2].send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    for i in [0, 1] {
        assert_eq!(recv(&mut c[i]).await, Message::binary(vec![0u8, 1, 2, 255]));
    }
    // Larger than the TLS buffer and the socket buffers: written in pieces.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    c[1].send(Message::binary(big.clone())).await.unwrap();
    for i in [0, 2] {
        match recv(&mut c[i]).await {
            Message::Binary(b) => assert!(b[..] == big[..], "client {i}: large message corrupted"),
            m => panic!("client {i} got {m:?}"),
        }
    }
}

#[tokio::test]
async fn tls_reader_that_pauses_gets_every_message_in_order() {
    let pki = Pki::new("paused");
    let server = pki
        .server(&["--max-backlog", "67108864", "--max-message-rate", "0"])
        .await;
    let mut c = pki.connect_many(&server, 2).await;
    let (mut sender, mut reader) = {
        let mut it = c.drain(..);
        (it.next().unwrap(), it.next().unwrap())
    };
    // The reader reads nothing while 8 MB go out: the socket fills, the
    // TLS session's buffer fills, the rest waits in the queue.
    const N: usize = 4000;
    let pad = "x".repeat(2000);
    for i in 0..N {
        sender
            .feed(Message::text(format!("{i:05}{pad}")))
            .await
            .unwrap();
    }
    sender.flush().await.unwrap();
    for i in 0..N {
        let next = timeout(EVENT_TIMEOUT, next_data(&mut reader)).await;
        let Ok(next) = next else {
            panic!("message {i} of {N} never arrived")
        };
        match next {
            Message::Text(t) => {
                assert_eq!(&t[..5], format!("{i:05}"), "message {i} out of order");
                assert_eq!(t.len(), 2005, "message {i} damaged");
            }
            m => panic!("message {i}: got {m:?}"),
        }
    }
}

/// The console client's deflate shim sits above TLS: over `wss://` a long
/// message reaches it compressed and is printed intact.
#[tokio::test]
async fn console_client_inflates_over_wss() {
    let pki = Pki::new("cli-deflate");
    let server = pki.server(&[]).await;
    let url = format!("wss://127.0.0.1:{}/ws", server.port);
    let mut c = pki.connect_many(&server, 1).await;
    let mut child = tokio::process::Command::new(server_bin())
        .args(["connect", "--url", &url, "--ca", &pki.path("ca.pem")])
        .args(["--listen", "--no-reconnect"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let welcome = async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("(2 online)") {
                return;
            }
        }
        panic!("the console client ended before its welcome");
    };
    timeout(EVENT_TIMEOUT, welcome).await.expect("welcome");
    let text = "compressed over tls, inflated under tungstenite; ".repeat(100);
    c[0].send(Message::text(text.clone())).await.unwrap();
    let printed = async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            if line.ends_with(&format!(": {text}")) {
                return;
            }
        }
        panic!("the console client ended before the message");
    };
    timeout(EVENT_TIMEOUT, printed)
        .await
        .expect("the message printed");
    let m = pki.https_get(&server, "/metrics").await;
    let samples = parse_metrics(&m.body);
    assert_eq!(
        metric(&samples, "broadcast_deflate_connections_open", ""),
        1.0
    );
    assert_eq!(
        metric(&samples, "broadcast_deflate_messages_total", ""),
        1.0
    );
}

#[tokio::test]
async fn https_serves_health_and_plain_clients_are_refused() {
    let pki = Pki::new("https");
    let server = pki.server(&[]).await;
    let health = pki.https_get(&server, "/healthz").await;
    assert_eq!(health.status, 200, "{health:?}");
    assert!(health.body.contains("\"status\":\"ok\""), "{health:?}");
    let page = pki.https_get(&server, "/").await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("<html"), "{page:?}");

    // A plain-text client cannot talk to a TLS port; the server counts it.
    let plain = timeout(
        EVENT_TIMEOUT,
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", server.port)),
    )
    .await
    .expect("plain connect attempt timed out");
    assert!(plain.is_err(), "a plain ws client upgraded on a TLS port");
    pki.await_tls_failures(&server, 1.0).await;
}

#[tokio::test]
async fn console_client_speaks_wss_with_a_private_ca() {
    let pki = Pki::new("cli");
    let server = pki.server(&[]).await;
    let url = format!("wss://127.0.0.1:{}/ws", server.port);
    let mut c = pki.connect_many(&server, 2).await;

    // Sending: a piped console client's line reaches the wss clients.
    let out = tokio::process::Command::new(server_bin())
        .args(["connect", "--url", &url, "--ca", &pki.path("ca.pem")])
        .arg("--no-reconnect")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut child = out;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"typed over wss\n")
        .await
        .unwrap();
    for ws in &mut c {
        assert_eq!(recv(ws).await, Message::text("typed over wss"));
    }
    let status = timeout(EVENT_TIMEOUT, child.wait())
        .await
        .expect("console client did not exit at end of input")
        .unwrap();
    assert!(status.success(), "console client exited with {status}");

    // Without the CA the certificate is not trusted: one line, exit 1.
    let refused = run_to_exit(
        &["connect", "--url", &url, "--no-reconnect", "--listen"],
        &[],
    )
    .await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let err = &refused.stderr;
    assert!(
        err.to_lowercase().contains("certificate"),
        "stderr should name the certificate problem: {err:?}"
    );

    // A CA in the system's trust store is trusted without --ca
    // (SSL_CERT_FILE points the store at a file, as OpenSSL does).
    let mut child = tokio::process::Command::new(server_bin())
        .args(["connect", "--url", &url, "--no-reconnect"])
        .env("SSL_CERT_FILE", pki.path("ca.pem"))
        .env_remove("SSL_CERT_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"trusted by the system store\n")
        .await
        .unwrap();
    for ws in &mut c {
        assert_eq!(recv(ws).await, Message::text("trusted by the system store"));
    }
    let status = timeout(EVENT_TIMEOUT, child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "console client exited with {status}");
}

#[tokio::test]
async fn bad_tls_files_fail_at_start_with_one_line() {
    let pki = Pki::new("bad");
    let (cert, key) = (pki.path("cert.pem"), pki.path("key.pem"));
    // The key file holds no certificate.
    let out = run_start(&["--tls-cert", &key, "--tls-key", &key], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = &out.stderr;
    assert_eq!(err.lines().count(), 1, "one line expected: {err:?}");
    assert!(err.starts_with("error: --tls-cert "), "{err:?}");

    let missing = pki.path("missing.pem");
    let out = run_start(&["--tls-cert", &cert, "--tls-key", &missing], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = &out.stderr;
    assert!(
        err.starts_with("error: --tls-key ") && err.contains("missing.pem"),
        "{err:?}"
    );

    // A certificate without its key is a usage error.
    let out = run_start(&["--tls-cert", &cert], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("Usage:"));
}

#[tokio::test]
async fn tls_client_that_never_reads_is_closed_as_slow_while_others_get_everything() {
    let pki = Pki::new("slow");
    let server = pki
        .server(&["--max-backlog", "262144", "--max-message-rate", "0"])
        .await;
    let mut c = pki.connect_many(&server, 3).await;
    let mut slow = c.pop().unwrap();
    let mut fast = c.pop().unwrap();
    let mut sender = c.pop().unwrap();
    // 32 MB: far more than the slow client's socket buffers, TLS buffer
    // and backlog hold. The fast client reads each message before the next
    // is sent, so its own queue never grows.
    const N: usize = 2000;
    let body = vec![7u8; 16 * 1024];
    for i in 0..N {
        sender.send(Message::binary(body.clone())).await.unwrap();
        match recv(&mut fast).await {
            Message::Binary(b) => assert_eq!(b.len(), body.len(), "message {i}"),
            m => panic!("fast client, message {i}: {m:?}"),
        }
    }
    // The slow client now reads: some data, then the 1013 close.
    let code = loop {
        match recv(&mut slow).await {
            Message::Binary(_) => {}
            Message::Close(Some(frame)) => break u16::from(frame.code),
            m => panic!("slow client got {m:?}"),
        }
    };
    assert_eq!(code, 1013, "slow consumer close code");
}

/// The TLS flags come from the config file and the environment like any
/// other, and `--check-config` loads the pair (and names a missing file).
#[tokio::test]
async fn tls_files_from_the_config_file_and_the_environment() {
    let pki = Pki::new("settings");
    let (cert, key) = (pki.path("cert.pem"), pki.path("key.pem"));
    let file = TempFile::new(
        "tls.toml",
        &format!("tls-cert = \"{cert}\"\ntls-key = \"{key}\"\n"),
    );
    let server = Server::start(&["--config", file.path()]).await;
    let mut c = vec![pki.connect(&server).await, pki.connect(&server).await];
    barrier(&mut c, false).await;
    let server = Server::start_env(
        &["start", "--host", "127.0.0.1", "--port", "0"],
        &[("BROADCAST_TLS_CERT", &cert), ("BROADCAST_TLS_KEY", &key)],
    )
    .await;
    pki.connect(&server).await;

    let ok = run_start(&["--config", file.path(), "--check-config"], &[]).await;
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    assert!(
        ok.stdout.contains(&format!("tls-cert = \"{cert}\"")),
        "{ok:?}"
    );
    let missing = TempFile::new(
        "tls-missing.toml",
        &format!("tls-key = \"{key}\"\ntls-cert = \"/nonexistent/cert.pem\"\n"),
    );
    let bad = run_start(&["--config", missing.path(), "--check-config"], &[]).await;
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert_eq!(
        bad.stderr.lines().collect::<Vec<_>>(),
        [format!(
            "error: {}:2: key \"tls-cert\": cannot read /nonexistent/cert.pem: No such file or directory (os error 2)",
            missing.path()
        )]
    );
    // A key that is not the certificate's: the check loads the pair.
    let swapped = TempFile::new(
        "tls-swapped.toml",
        &format!("tls-cert = \"{key}\"\ntls-key = \"{key}\"\n"),
    );
    let bad = run_start(&["--config", swapped.path(), "--check-config"], &[]).await;
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert_eq!(bad.stderr.lines().count(), 1, "{bad:?}");
}

/// What one TLS write carries, the TCP stream splits anywhere: many small
/// frames and a frame of several records in one write reach another client
/// whole and in order.
#[tokio::test]
async fn frames_spread_over_records_and_reads_arrive_whole_and_in_order() {
    let pki = Pki::new("records");
    let server = pki
        .server(&["--max-message-rate", "0", "--max-message-size", "1048576"])
        .await;
    let mut reader = pki.connect(&server).await;
    let mut sender = pki.raw_wss(&server).await;
    let mut reader_only = vec![reader];
    barrier(&mut reader_only, false).await;
    reader = reader_only.pop().unwrap();
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let mut bytes = Vec::new();
    for i in 0..300 {
        bytes.extend(masked(OP_TEXT, format!("small {i}").as_bytes()));
    }
    bytes.extend(masked(OP_BINARY, &big));
    for i in 300..600 {
        bytes.extend(masked(OP_TEXT, format!("small {i}").as_bytes()));
    }
    sender.write_all(&bytes).await.unwrap();
    sender.flush().await.unwrap();
    for i in 0..600 {
        if i == 300 {
            match recv(&mut reader).await {
                Message::Binary(b) => assert!(b[..] == big[..], "large message corrupted"),
                m => panic!("expected the large message, got {m:?}"),
            }
        }
        assert_eq!(recv(&mut reader).await, Message::text(format!("small {i}")));
    }
}

/// A client that connects and never completes the handshake is dropped at
/// the handshake timeout and counted as a TLS failure.
#[tokio::test]
async fn a_stalled_tls_handshake_times_out() {
    let pki = Pki::new("stall");
    let server = pki.server(&["--handshake-timeout", "1"]).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    // The start of a ClientHello record, and nothing more.
    tcp.write_all(&[22, 3, 1, 0, 200, 1]).await.unwrap();
    let mut rest = Vec::new();
    let ended = timeout(EVENT_TIMEOUT, tcp.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the server kept a stalled handshake open");
    pki.await_tls_failures(&server, 1.0).await;
}

/// The server ends TLS with close_notify after the WebSocket close, both
/// when it fails a connection and after a close the client started: the
/// client sees a clean end of the TLS stream, not a truncation.
#[tokio::test]
async fn tls_connections_end_with_close_notify() {
    let pki = Pki::new("notify");
    let server = pki.server(&[]).await;
    for client_closes in [false, true] {
        let mut tls = pki.raw_wss(&server).await;
        let frame = if client_closes {
            masked(OP_CLOSE, &close_payload(1000, "bye"))
        } else {
            // Unmasked: a protocol violation the server closes with 1002.
            encode_frame(true, 0, OP_TEXT, b"unmasked", false)
        };
        tls.write_all(&frame).await.unwrap();
        let mut rest = Vec::new();
        let read = timeout(EVENT_TIMEOUT, tls.read_to_end(&mut rest))
            .await
            .expect("the server never ended the connection");
        // tokio-rustls reports a TCP end without close_notify as an error.
        read.unwrap_or_else(|e| panic!("client_closes {client_closes}: {e}"));
        let code = if client_closes { 1000u16 } else { 1002 };
        assert_eq!(rest[0], 0x80 | OP_CLOSE, "{rest:?}");
        assert_eq!(&rest[2..4], &code.to_be_bytes(), "{rest:?}");
    }
}
