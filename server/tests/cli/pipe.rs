//! Pipe mode never loses a line silently: `seq N | connect` exits 0 only
//! when the server confirmed every line (its close reply), and a connection
//! that ends first is reported with the count of lines that may be lost.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{next_text, raw_client, signal, Cli, Pipe, Server};

/// Long enough for the client to send 200,000 lines on a busy machine.
const LONG_EXIT: Duration = Duration::from_secs(60);

/// The `N` and `M` of "N of the M lines sent on this connection may not
/// have been delivered ...".
fn loss_counts(line: &str) -> (u64, u64) {
    let rest = line.strip_prefix("error: ").unwrap_or(line);
    let mut words = rest.split(' ');
    let n = words.next().and_then(|w| w.parse().ok());
    let m = words.nth(2).and_then(|w| w.parse().ok());
    match (n, m) {
        (Some(n), Some(m)) => (n, m),
        _ => panic!("no counts in {line:?}"),
    }
}

#[tokio::test]
async fn fifty_thousand_piped_lines_arrive_in_order_and_exit_0() {
    let server = Server::start().await;
    let mut listener = raw_client(&server.url()).await;
    server.wait_connections(1).await;
    let mut cli = Cli::shell(&format!(
        "seq 50000 | \"$BIN\" connect --host 127.0.0.1 --port {}",
        server.port
    ));
    for i in 1..=50_000u32 {
        let got = next_text(&mut listener).await;
        assert_eq!(got, i.to_string(), "message {i}");
    }
    let (st, rest) = cli.wait_within(LONG_EXIT).await;
    assert_eq!(st.code(), Some(0), "{rest:?}");
    assert!(
        rest.iter()
            .all(|(p, l)| *p == Pipe::Stdout || !l.contains("error")),
        "{rest:?}"
    );
}

/// SIGKILL mid-pipe: the client says how many lines may be lost and exits
/// 1, also when it reconnects to the server started again and sends the
/// rest (if stdin had not all been sent yet).
#[tokio::test]
async fn server_killed_mid_pipe_is_reported_and_the_exit_status_is_1() {
    let server = Server::start_restartable().await;
    let port = server.port;
    let mut listener = raw_client(&server.url()).await;
    server.wait_connections(1).await;
    let mut cli = Cli::shell(&format!(
        "seq 200000 | \"$BIN\" connect --host 127.0.0.1 --port {port}"
    ));
    // The server cannot be far ahead of its only reader (its backlog is
    // bounded), so at line 1,000 it has not read everything yet.
    for i in 1..=1000u32 {
        assert_eq!(next_text(&mut listener).await, i.to_string());
    }
    signal(server.pid(), "KILL");
    drop(server);
    let server = Server::start_on(port).await;
    let loss = cli
        .expect_contains(Pipe::Stderr, "may not have been delivered")
        .await;
    let (unconfirmed, sent) = loss_counts(&loss);
    assert!(
        unconfirmed >= 1 && unconfirmed <= sent && sent <= 200_000,
        "{loss}"
    );
    let (st, rest) = cli.wait_within(LONG_EXIT).await;
    assert_eq!(st.code(), Some(1), "{rest:?}");
    // Stdin not all sent: it reconnected, sent the rest, and says at the end
    // what may be missing.
    if rest.iter().any(|(_, l)| l.contains("reconnected to")) {
        let want =
            format!("error: exit status 1: {unconfirmed} lines sent may not have been delivered");
        assert!(
            rest.iter().any(|(p, l)| *p == Pipe::Stderr && *l == want),
            "want {want:?} in {rest:?}"
        );
    }
    drop(server);
}

/// What the fake server below recorded: (data connection index, line).
type Record = mpsc::UnboundedReceiver<(usize, String)>;

/// A plain WebSocket server (no `broadcast.v1`) whose first connection that
/// sends data is closed with 1011 after 100 lines; what it reads after its
/// close is dropped, as the real server does. Later connections are read to
/// the end (tungstenite answers their close).
async fn server_closing_the_first_connection() -> (u16, Record) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    let data_conns = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            let data_conns = data_conns.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let mut index = None;
                let mut lines = 0;
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Text(t) = msg else { continue };
                    let i = *index.get_or_insert_with(|| data_conns.fetch_add(1, Ordering::SeqCst));
                    if i == 0 && lines == 100 {
                        continue;
                    }
                    let _ = tx.send((i, t.to_string()));
                    lines += 1;
                    if i == 0 && lines == 100 {
                        let close = CloseFrame {
                            code: CloseCode::Error,
                            reason: "test".into(),
                        };
                        let _ = ws.send(Message::Close(Some(close))).await;
                    }
                }
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn a_server_closing_the_client_mid_pipe_is_reported_and_the_exit_status_is_1() {
    let (port, mut record) = server_closing_the_first_connection().await;
    let url = format!("ws://127.0.0.1:{port}/ws");
    let mut cli = Cli::spawn(&["--url", &url], true);
    let first: String = (1..=100).map(|i| format!("{i}\n")).collect();
    let stdin = cli.stdin.as_mut().unwrap();
    stdin.write_all(first.as_bytes()).await.unwrap();
    cli.expect_contains(Pipe::Stderr, "connection closed by server: 1011")
        .await;
    let loss = cli
        .expect_contains(Pipe::Stderr, "may not have been delivered")
        .await;
    // The server's pongs stopped with its close, before its ping after line
    // 100: lines count as unconfirmed, although this server read them.
    let (unconfirmed, sent) = loss_counts(&loss);
    assert!(sent == 100 && unconfirmed >= 1, "{loss}");
    let rest: String = (101..=1000).map(|i| format!("{i}\n")).collect();
    let stdin = cli.stdin.as_mut().unwrap();
    stdin.write_all(rest.as_bytes()).await.unwrap();
    cli.close_stdin();
    let (st, rest) = cli.wait_within(LONG_EXIT).await;
    assert_eq!(st.code(), Some(1), "{rest:?}");
    let want =
        format!("error: exit status 1: {unconfirmed} lines sent may not have been delivered");
    assert!(
        rest.iter().any(|(p, l)| *p == Pipe::Stderr && *l == want),
        "{rest:?}"
    );

    // The first connection took lines 1..=100, the second the rest.
    let mut got: Vec<Vec<u64>> = vec![Vec::new(), Vec::new()];
    while let Ok((i, line)) = record.try_recv() {
        got[i].push(line.parse().unwrap());
    }
    assert_eq!(got[0], (1..=100).collect::<Vec<_>>());
    assert_eq!(got[1], (101..=1000).collect::<Vec<_>>());
}
