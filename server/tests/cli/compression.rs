//! The console client offers permessage-deflate: long lines reach it
//! compressed and arrive intact; `--no-compression` turns the offer off,
//! a server without the extension is spoken to without it, and an answer
//! that breaks RFC 7692 is a one-line connect error.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{after_time, raw_client, Cli, Pipe, Server};

const COMPRESSED: &str = "broadcast_deflate_messages_total";
const BEFORE: &str = "broadcast_deflate_bytes_before_total";
const AFTER: &str = "broadcast_deflate_bytes_after_total";
const NEGOTIATED: &str = "broadcast_deflate_connections_open";

/// A line of `len` bytes or a few more (over the server's 256-byte minimum
/// for compression when `len` is), different for each `tag`, and as
/// compressible as prose.
fn line(tag: &str, len: usize) -> String {
    const WORDS: [&str; 8] = [
        "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy dog",
    ];
    let mut l = format!("{tag}:");
    let mut i = 0usize;
    while l.len() < len {
        l.push_str(&format!(" {}{}", WORDS[i * 5 % 8], i % 13));
        i += 1;
    }
    l
}

/// A console client with the given flags, connected (its welcome seen).
async fn client(server: &Server, name: &str, flags: &[&str], stdin: bool) -> Cli {
    let port = server.port.to_string();
    let mut args = vec!["--host", "127.0.0.1", "--port", &port, "--name", name];
    args.extend(flags);
    let mut cli = Cli::spawn(&args, stdin);
    cli.expect_contains(Pipe::Stderr, &format!("as {name} ("))
        .await;
    cli
}

async fn expect_message(cli: &mut Cli, want: &str) {
    cli.expect(
        Pipe::Stdout,
        &format!("message of {} bytes", want.len()),
        |l| after_time(l) == Some(want),
    )
    .await;
}

#[tokio::test]
async fn long_lines_reach_a_console_client_compressed_and_intact() {
    let server = Server::start().await;
    // Without compression first: nobody negotiated, nothing is compressed.
    let mut plain = client(&server, "plain", &["--listen", "--no-compression"], false).await;
    let mut sender = client(&server, "tx", &["-no-compression"], true).await;
    server.wait_connections(2).await;
    assert_eq!(server.metric(NEGOTIATED).await, 0.0);
    let lines = [line("a", 300), line("b", 6000)];
    for l in &lines {
        sender.send_line(l).await;
        expect_message(&mut plain, &format!("tx: {l}")).await;
    }
    assert_eq!(server.metric(COMPRESSED).await, 0.0);

    // A console client with the default flags negotiates the extension.
    let mut rx = client(&server, "rx", &["--listen"], false).await;
    server.wait_metric(NEGOTIATED, 1.0).await;
    let lines = [line("c", 300), line("d", 6000), line("e", 40_000)];
    for l in &lines {
        sender.send_line(l).await;
        let want = format!("tx: {l}");
        expect_message(&mut rx, &want).await;
        expect_message(&mut plain, &want).await;
    }
    // Each compressed once, for rx; plain got them uncompressed (it would
    // have failed the connection on RSV1).
    server.wait_metric(COMPRESSED, 3.0).await;
    let (before, after) = (server.metric(BEFORE).await, server.metric(AFTER).await);
    assert!(
        before > 46_000.0 && after < before / 2.0,
        "{after} of {before}"
    );
    // Below the minimum: sent plain, and read as such.
    sender.send_line("short").await;
    expect_message(&mut rx, "tx: short").await;
    assert_eq!(server.metric(COMPRESSED).await, 3.0);

    sender.close_stdin();
    assert_eq!(sender.wait().await.0.code(), Some(0));
    for mut cli in [rx, plain] {
        crate::util::signal(cli.pid(), "TERM");
        let (st, rest) = cli.wait().await;
        assert_eq!(st.code(), Some(0), "{rest:?}");
        assert!(!rest.iter().any(|(_, l)| l.contains("error")), "{rest:?}");
    }
}

/// `seq 5000 | connect` with lines long enough to be compressed for the
/// console client that records them, both clients having negotiated the
/// extension: every line arrives, in order, and the sender exits 0.
#[tokio::test]
async fn five_thousand_piped_long_lines_arrive_compressed_in_order() {
    const LINES: usize = 5000;
    let server = Server::start().await;
    let mut rx = client(&server, "rx", &["--listen"], false).await;
    let mut sender = client(&server, "tx", &[], true).await;
    server.wait_metric(NEGOTIATED, 2.0).await;
    let pad = line("", 300);
    let text: String = (1..=LINES).map(|i| format!("{i}{pad}\n")).collect();
    let stdin = sender.stdin.as_mut().unwrap();
    let write = async {
        stdin.write_all(text.as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    };
    let read = async {
        for i in 1..=LINES {
            expect_message(&mut rx, &format!("tx: {i}{pad}")).await;
        }
    };
    tokio::join!(write, read);
    sender.close_stdin();
    let (st, rest) = sender.wait_within(Duration::from_secs(60)).await;
    assert_eq!(st.code(), Some(0), "{rest:?}");
    assert_eq!(server.metric(COMPRESSED).await, LINES as f64);
    crate::util::signal(rx.pid(), "TERM");
    assert_eq!(rx.wait().await.0.code(), Some(0));
}

#[tokio::test]
async fn a_server_without_compression_is_spoken_to_without_it() {
    let server = Server::start_with(0, &["--compression", "off"]).await;
    let mut rx = client(&server, "rx", &["--listen"], false).await;
    let mut sender = raw_client(&server.url()).await;
    server.wait_connections(2).await;
    let l = line("f", 5000);
    sender.send(Message::text(l.clone())).await.unwrap();
    rx.expect(Pipe::Stdout, "the long line", |got| {
        after_time(got).is_some_and(|m| m.ends_with(&format!(": {l}")))
    })
    .await;
    assert_eq!(server.metric(NEGOTIATED).await, 0.0);
    assert_eq!(server.metric(COMPRESSED).await, 0.0);
}

/// A tungstenite server whose upgrade answers `Sec-WebSocket-Extensions:
/// answer`, then sends one text message.
async fn server_answering(answer: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                #[allow(clippy::result_large_err, reason = "tungstenite's callback type")]
                let answer = |_: &Request, mut resp: Response| {
                    resp.headers_mut()
                        .insert("Sec-WebSocket-Extensions", HeaderValue::from_static(answer));
                    Ok(resp)
                };
                if let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, answer).await {
                    let _ = ws.send(Message::text("hello")).await;
                    while let Some(Ok(_)) = ws.next().await {}
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn an_answer_that_breaks_the_rfc_is_a_connect_error() {
    let cases = [
        (
            "x-webkit-deflate-frame",
            &[][..],
            "extension \"x-webkit-deflate-frame\" was not offered",
        ),
        (
            "permessage-deflate; client_max_window_bits=10",
            &[],
            "parameter \"client_max_window_bits=10\" was not offered",
        ),
        (
            "permessage-deflate",
            &["--no-compression"],
            "extension \"permessage-deflate\" was not offered",
        ),
    ];
    for (answer, flags, why) in cases {
        let port = server_answering(answer).await;
        let url = format!("ws://127.0.0.1:{port}/ws");
        let mut args = vec!["--url", url.as_str(), "--listen"];
        args.extend(flags);
        let mut cli = Cli::spawn(&args, false);
        let (st, rest) = cli.wait().await;
        assert_eq!(st.code(), Some(1), "{answer}: {rest:?}");
        let want =
            format!("error: cannot connect to {url}: bad Sec-WebSocket-Extensions answer: {why}");
        assert!(
            rest.iter().any(|(p, l)| *p == Pipe::Stderr && *l == want),
            "{answer}: want {want:?} in {rest:?}"
        );
    }
}
