//! `connect --channel`: broadcast.v2 with the real server (pipe mode, the
//! `[#channel]` display, re-subscribing after a reconnect, refusals) and the
//! fallback to a channel URL with a server that only speaks broadcast.v1.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{after_time, next_text, raw_client, signal, Cli, Pipe, Server, Ws};

fn channel_url(server: &Server, channel: &str) -> String {
    format!("{}/{channel}", server.url())
}

/// `connect --host 127.0.0.1 --port PORT` followed by `more`.
fn connect_args<'a>(port: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--host", "127.0.0.1", "--port", port];
    args.extend_from_slice(more);
    args
}

/// Sends `marker` from another member of the channel and returns what
/// `listener` got before it (the server delivers a channel's messages in
/// the order it took them, so everything published earlier comes first).
async fn until_marker(listener: &mut Ws, sender: &mut Ws) -> Vec<String> {
    sender.send(Message::text("marker")).await.unwrap();
    let mut before = Vec::new();
    loop {
        let text = next_text(listener).await;
        if text == "marker" {
            return before;
        }
        before.push(text);
    }
}

#[tokio::test]
async fn piped_lines_go_to_the_first_channel_only() {
    let server = Server::start().await;
    let mut in_a = raw_client(&channel_url(&server, "a")).await;
    let mut in_b = raw_client(&channel_url(&server, "b")).await;
    let mut other_b = raw_client(&channel_url(&server, "b")).await;
    server.wait_connections(3).await;
    let mut cli = Cli::shell(&format!(
        "seq 2000 | \"$BIN\" connect --host 127.0.0.1 --port {} --channel a --channel b",
        server.port
    ));
    for i in 1..=2000u32 {
        assert_eq!(next_text(&mut in_a).await, i.to_string(), "message {i}");
    }
    let (st, rest) = cli.wait().await;
    assert_eq!(st.code(), Some(0), "{rest:?}");
    assert!(
        rest.iter()
            .all(|(p, l)| *p == Pipe::Stdout || !l.contains("error")),
        "{rest:?}"
    );
    // The client had read and published everything before its exit 0.
    assert_eq!(
        until_marker(&mut in_b, &mut other_b).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn lines_from_two_channels_are_tagged_and_from_one_are_not() {
    let server = Server::start().await;
    let port = server.port.to_string();
    let mut two = Cli::spawn(
        &connect_args(
            &port,
            &["-l", "--name", "tess", "--channel", "a", "--channel", "b"],
        ),
        false,
    );
    two.expect_contains(Pipe::Stderr, "as tess").await;
    two.expect_contains(Pipe::Stderr, "joined #a (1 online)")
        .await;
    two.expect_contains(Pipe::Stderr, "joined #b (1 online)")
        .await;
    let mut one = Cli::spawn(
        &connect_args(&port, &["-l", "--name", "olga", "--channel", "a"]),
        false,
    );
    one.expect_contains(Pipe::Stderr, "joined #a (2 online)")
        .await;
    two.expect(Pipe::Stdout, "olga's arrival in #a", |l| {
        l == "[#a] * olga joined (2 online)"
    })
    .await;

    let mut ann = raw_client(&format!("{}?name=ann", channel_url(&server, "a"))).await;
    let mut ben = raw_client(&format!("{}?name=ben", channel_url(&server, "b"))).await;
    ann.send(Message::text("hello a")).await.unwrap();
    two.expect(Pipe::Stdout, "the tagged message in #a", |l| {
        after_time(l) == Some("[#a] ann: hello a")
    })
    .await;
    one.expect(Pipe::Stdout, "the untagged message", |l| {
        after_time(l) == Some("ann: hello a")
    })
    .await;
    // Sent once the first arrived: the two channels' orders are independent.
    ben.send(Message::text("hello b")).await.unwrap();
    two.expect(Pipe::Stdout, "the tagged message in #b", |l| {
        after_time(l) == Some("[#b] ben: hello b")
    })
    .await;

    for cli in [&mut two, &mut one] {
        signal(cli.pid(), "TERM");
        let (st, rest) = cli.wait().await;
        assert_eq!(st.code(), Some(0), "{rest:?}");
    }
}

#[tokio::test]
async fn a_reconnect_subscribes_to_every_channel_again() {
    let server = Server::start_restartable().await;
    let port = server.port;
    let port_arg = port.to_string();
    let mut cli = Cli::spawn(
        &connect_args(&port_arg, &["-l", "--channel", "a", "--channel", "b"]),
        false,
    );
    cli.expect_contains(Pipe::Stderr, "joined #b (1 online)")
        .await;
    server.terminate().await;
    cli.expect_contains(Pipe::Stderr, "reconnecting in").await;

    let server = Server::start_on(port).await;
    cli.expect_contains(Pipe::Stderr, "rejoined #a (1 online)")
        .await;
    cli.expect_contains(Pipe::Stderr, "rejoined #b (1 online)")
        .await;
    let mut ben = raw_client(&format!("{}?name=ben", channel_url(&server, "b"))).await;
    ben.send(Message::text("welcome back")).await.unwrap();
    cli.expect(Pipe::Stdout, "the message in #b", |l| {
        after_time(l) == Some("[#b] ben: welcome back")
    })
    .await;
    signal(cli.pid(), "TERM");
    let (st, rest) = cli.wait().await;
    assert_eq!(st.code(), Some(0), "{rest:?}");
}

/// Publishes the server refuses (over `--max-message-rate`) are counted:
/// they and the delivered ones add up to every line, and the exit status
/// is 1.
#[tokio::test]
async fn refused_publishes_make_the_exit_status_1() {
    let server = Server::start_with(
        0,
        &["--max-message-rate", "20", "--rate-limit-action", "close"],
    )
    .await;
    let mut in_a = raw_client(&channel_url(&server, "a")).await;
    let mut other_a = raw_client(&channel_url(&server, "a")).await;
    server.wait_connections(2).await;
    let mut cli = Cli::shell(&format!(
        "seq 500 | \"$BIN\" connect --host 127.0.0.1 --port {} --channel a",
        server.port
    ));
    let (st, rest) = cli.wait().await;
    assert_eq!(st.code(), Some(1), "{rest:?}");
    assert!(
        rest.iter()
            .any(|(p, l)| *p == Pipe::Stderr && l.starts_with("! rate_limited: ")),
        "{rest:?}"
    );
    let last = rest
        .iter()
        .rev()
        .find(|(p, _)| *p == Pipe::Stderr)
        .map(|(_, l)| l.as_str())
        .unwrap_or_default();
    let refused: usize = last
        .strip_prefix("error: exit status 1: ")
        .and_then(|l| l.strip_suffix(" lines sent were refused by the server"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no refused count in {last:?}"));
    let delivered = until_marker(&mut in_a, &mut other_a).await;
    assert!(refused >= 1, "{refused}");
    assert_eq!(delivered.len() + refused, 500, "{delivered:?}");
    let numbers: Vec<u32> = delivered.iter().map(|l| l.parse().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
}

#[tokio::test]
async fn a_bad_channel_name_is_a_usage_error() {
    let mut cli = Cli::spawn(
        &["--port", "1", "--channel", "a", "--channel", "a//b"],
        false,
    );
    let (st, lines) = cli.wait().await;
    assert_eq!(st.code(), Some(2), "{lines:?}");
    assert!(
        matches!(&lines[..], [(Pipe::Stderr, l)] if l.starts_with("error: invalid --channel \"a//b\": ")),
        "{lines:?}"
    );
}

/// A server that speaks broadcast.v1 only (as before channels): it answers
/// `broadcast.v1` when offered, welcomes the client, and reports the
/// request's path and every text frame it reads.
async fn v1_only_server() -> (u16, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let path_tx = tx.clone();
                #[allow(clippy::result_large_err, reason = "tungstenite's callback type")]
                let answer = |req: &Request, mut resp: Response| {
                    let _ = path_tx.send(format!("path {}", req.uri()));
                    let offers_v1 = req
                        .headers()
                        .get("Sec-WebSocket-Protocol")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.split(',').any(|p| p.trim() == "broadcast.v1"));
                    if offers_v1 {
                        resp.headers_mut().insert(
                            "Sec-WebSocket-Protocol",
                            HeaderValue::from_static("broadcast.v1"),
                        );
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, answer).await else {
                    return;
                };
                let welcome = r#"{"type":"welcome","id":1,"name":"erin","online":1,"time":0}"#;
                if ws.send(Message::text(welcome)).await.is_err() {
                    return;
                }
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        let _ = tx.send(t.to_string());
                    }
                }
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn without_v2_the_client_joins_the_first_channel_by_its_url() {
    let (port, mut got) = v1_only_server().await;
    let url = format!("ws://127.0.0.1:{port}");
    let mut cli = Cli::spawn(
        &[
            "--url",
            &url,
            "--name",
            "erin",
            "--channel",
            "a",
            "--channel",
            "b",
        ],
        true,
    );
    cli.expect(Pipe::Stderr, "the fallback", |l| {
        l == "the server does not speak broadcast.v2: in #a only (not joined: 1 more --channel)"
    })
    .await;
    let connected = format!("connected to ws://127.0.0.1:{port}/ws/a as erin (1 online)");
    cli.expect(Pipe::Stderr, "the v1 welcome", |l| l == connected)
        .await;
    cli.send_line("plain text").await;
    cli.close_stdin();
    let (st, rest) = cli.wait().await;
    assert_eq!(st.code(), Some(0), "{rest:?}");
    let mut seen = Vec::new();
    while let Ok(s) = got.try_recv() {
        seen.push(s);
    }
    // One connection, to the channel's URL; the line sent as v1 sends it.
    assert_eq!(seen, ["path /ws/a?name=erin", "plain text"]);
}
