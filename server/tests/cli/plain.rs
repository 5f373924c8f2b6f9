//! Non-interactive mode: pipes in, lines out.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{after_time, next_text, raw_client, Cli, Pipe, Server, EVENT_TIMEOUT};

fn port_args(server: &Server) -> Vec<String> {
    vec![
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        server.port.to_string(),
    ]
}

fn args<'a>(base: &'a [String], more: &[&'a str]) -> Vec<&'a str> {
    base.iter()
        .map(String::as_str)
        .chain(more.iter().copied())
        .collect()
}

/// The message part of `[HH:MM:SS] name: text` lines on stdout.
async fn expect_message(cli: &mut Cli, want: &str) {
    cli.expect(Pipe::Stdout, &format!("message {want:?}"), |l| {
        after_time(l) == Some(want)
    })
    .await;
}

#[tokio::test]
async fn two_named_clients_exchange_messages() {
    let server = Server::start().await;
    let base = port_args(&server);
    let mut alice = Cli::spawn(&args(&base, &["--name", "alice"]), true);
    alice
        .expect_contains(Pipe::Stderr, "as alice (1 online)")
        .await;
    let mut bob = Cli::spawn(&args(&base, &["-name", "bob"]), true);
    bob.expect_contains(Pipe::Stderr, "as bob (2 online)").await;
    alice
        .expect(Pipe::Stdout, "bob's arrival", |l| {
            l == "* bob joined (2 online)"
        })
        .await;

    alice.send_line("hi bob").await;
    expect_message(&mut bob, "alice: hi bob").await;
    bob.send_line("hello alice, how are you?").await;
    expect_message(&mut alice, "bob: hello alice, how are you?").await;

    // End of stdin: alice leaves cleanly, and bob sees it.
    alice.close_stdin();
    let (st, rest) = alice.wait().await;
    assert!(st.success(), "alice exited with {st}");
    // Her own messages were never printed back to her.
    assert!(
        !rest.iter().any(|(_, l)| l.contains("alice: hi bob")),
        "{rest:?}"
    );
    bob.expect(Pipe::Stdout, "alice leaving", |l| {
        l == "* alice left (1 online)"
    })
    .await;
    bob.close_stdin();
    assert!(bob.wait().await.0.success());
}

#[tokio::test]
async fn piped_stdin_is_sent_then_the_client_exits_0() {
    let server = Server::start().await;
    let mut listener = raw_client(&server.url()).await;
    server.wait_connections(1).await;
    let mut cli = Cli::shell(&format!(
        "printf 'one\\ntwo\\n' | \"$BIN\" connect -host 127.0.0.1 -port {}",
        server.port
    ));
    assert_eq!(next_text(&mut listener).await, "one");
    assert_eq!(next_text(&mut listener).await, "two");
    let (st, _) = cli.wait().await;
    assert!(st.success(), "piping client exited with {st}");
}

#[tokio::test]
async fn shutdown_is_reported_and_the_client_reconnects() {
    let server = Server::start_restartable().await;
    let port = server.port;
    let mut cli = Cli::spawn(
        &[
            "--port",
            &port.to_string(),
            "--host",
            "127.0.0.1",
            "--name",
            "carol",
            "--listen",
        ],
        false,
    );
    cli.expect_contains(Pipe::Stderr, "connected to").await;
    server.terminate().await;
    let closed = cli
        .expect_contains(Pipe::Stderr, "connection closed by server")
        .await;
    assert!(
        closed.contains("1001 going away (server shutting down)"),
        "{closed}"
    );
    let again = cli.expect_contains(Pipe::Stderr, "reconnecting in").await;
    assert!(again.ends_with("(attempt 1)..."), "{again}");
    // A planned restart (1001): each failed attempt is one line, and every
    // delay comes from the one-second window, not the doubling schedule
    // (which would be past 4 s by the fourth attempt).
    let mut delays = vec![delay_of(&again)];
    for attempt in 2..=4 {
        let line = cli.expect_contains(Pipe::Stderr, "; retrying in").await;
        assert!(line.contains("cannot connect to"), "{line}");
        assert!(line.ends_with(&format!("(attempt {attempt})...")), "{line}");
        delays.push(delay_of(&line));
    }
    assert!(delays.iter().all(|&d| d <= 1.0), "{delays:?}");

    let server = Server::start_on(port).await;
    cli.expect_contains(Pipe::Stderr, "reconnected to").await;
    server.wait_connections(1).await;
    let mut peer = raw_client(&server.url()).await;
    server.wait_connections(2).await;
    peer.send(Message::text("welcome back")).await.unwrap();
    cli.expect(Pipe::Stdout, "the message after reconnecting", |l| {
        after_time(l).is_some_and(|m| m.ends_with(": welcome back"))
    })
    .await;
    super::util::signal(cli.pid(), "TERM");
    let (st, _) = cli.wait().await;
    assert!(st.success(), "SIGTERM exit {st}");
}

/// The delay in a "... in 0.4 s (attempt N)..." line, in seconds.
fn delay_of(line: &str) -> f64 {
    let rest = &line[line.rfind(" in ").expect("a delay") + 4..];
    rest.split(' ').next().unwrap().parse().expect("seconds")
}

#[tokio::test]
async fn unreachable_server_is_one_line_and_exit_1() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for flags in [
        ["--host", "127.0.0.1", "--port"],
        ["-host", "127.0.0.1", "-port"],
    ] {
        let p = port.to_string();
        let mut cli = Cli::spawn(&[flags[0], flags[1], flags[2], &p], false);
        let (st, lines) = cli.wait().await;
        assert_eq!(st.code(), Some(1), "{lines:?}");
        assert_eq!(lines.len(), 1, "{lines:?}");
        let (pipe, line) = &lines[0];
        assert_eq!(*pipe, Pipe::Stderr);
        assert!(
            line.starts_with(&format!(
                "error: cannot connect to ws://127.0.0.1:{port}/ws: "
            )),
            "{line}"
        );
        assert!(line.contains("refused"), "{line}");
    }
}

#[tokio::test]
async fn refused_upgrade_shows_status_and_body() {
    let server = Server::start_with(0, &["--max-connections", "1"]).await;
    let _first = raw_client(&server.url()).await;
    server.wait_connections(1).await;
    let mut cli = Cli::spawn(&["--url", &server.url()], false);
    let (st, lines) = cli.wait().await;
    assert_eq!(st.code(), Some(1), "{lines:?}");
    let want = format!(
        "error: cannot connect to {}: server refused the upgrade: HTTP 503 Service Unavailable: ",
        server.url()
    );
    assert!(
        matches!(&lines[..], [(Pipe::Stderr, l)] if l.starts_with(&want) && l.len() > want.len()),
        "{lines:?}"
    );
}

#[tokio::test]
async fn bad_name_is_refused_before_connecting() {
    let mut cli = Cli::spawn(&["--port", "1", "--name", "   "], false);
    let (st, lines) = cli.wait().await;
    assert_eq!(st.code(), Some(2), "{lines:?}");
    assert_eq!(
        lines,
        [(
            Pipe::Stderr,
            "error: invalid --name: the name is empty".to_owned()
        )]
    );
}

#[tokio::test]
async fn raw_and_v1_clients_see_each_other() {
    let server = Server::start().await;
    let mut raw = raw_client(&server.url()).await;
    server.wait_connections(1).await;
    let mut dave = Cli::spawn(
        &[
            "--url",
            &format!("ws://127.0.0.1:{}", server.port),
            "--name",
            "dave",
        ],
        true,
    );
    dave.expect_contains(Pipe::Stderr, "as dave (2 online)")
        .await;

    raw.send(Message::text("from raw")).await.unwrap();
    let line = dave
        .expect(Pipe::Stdout, "the raw client's message", |l| {
            after_time(l).is_some_and(|m| m.ends_with(": from raw"))
        })
        .await;
    assert!(!line.contains("dave"), "{line}");
    dave.send_line("from cli").await;
    assert_eq!(next_text(&mut raw).await, "from cli");
    dave.close_stdin();
    assert!(dave.wait().await.0.success());
}

/// A plain broadcast server that does not know `broadcast.v1`: the client
/// falls back to raw mode.
#[tokio::test]
async fn raw_mode_with_a_plain_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (got_tx, mut got) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let got_tx = got_tx.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let _ = ws.send(Message::text("hello raw\nline 2")).await;
                let _ = ws.send(Message::binary(vec![1, 2, 3])).await;
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        let _ = got_tx.send(t.to_string());
                    }
                }
            });
        }
    });
    let mut cli = Cli::spawn(
        &[
            "--port",
            &port.to_string(),
            "--host",
            "127.0.0.1",
            "--name",
            "erin",
        ],
        true,
    );
    let status = cli.expect_contains(Pipe::Stderr, "connected to").await;
    assert!(status.contains("raw mode"), "{status}");
    cli.expect(Pipe::Stdout, "the text", |l| {
        after_time(l) == Some("hello raw\\nline 2")
    })
    .await;
    cli.expect(Pipe::Stdout, "the binary", |l| {
        after_time(l) == Some("<binary 3 bytes>")
    })
    .await;
    cli.send_line("typed").await;
    let typed = tokio::time::timeout(EVENT_TIMEOUT, got.recv())
        .await
        .expect("line in time");
    assert_eq!(typed.as_deref(), Some("typed"));
    cli.close_stdin();
    let (st, _) = cli.wait().await;
    assert!(st.success());
}

#[tokio::test]
async fn token_is_sent_and_a_refusal_is_explained() {
    let server = Server::start_with(0, &["--auth-token", "s3cret"]).await;
    let mut refused = Cli::spawn(&["--url", &server.url()], false);
    let (st, lines) = refused.wait().await;
    assert_eq!(st.code(), Some(1), "{lines:?}");
    assert!(
        matches!(&lines[..], [(Pipe::Stderr, l)] if l.contains("HTTP 401") && !l.contains("s3cret")),
        "{lines:?}"
    );
    let mut listener = raw_client(&format!("{}?token=s3cret", server.url())).await;
    let mut sender = Cli::spawn(&["--url", &server.url(), "--token", "s3cret"], true);
    server.wait_connections(2).await;
    sender.send_line("with a token").await;
    assert_eq!(next_text(&mut listener).await, "with a token");
    sender.close_stdin();
    let (st, lines) = sender.wait().await;
    assert_eq!(st.code(), Some(0), "{lines:?}");
    assert!(
        lines.iter().all(|(_, l)| !l.contains("s3cret")),
        "the token is never printed: {lines:?}"
    );
}
