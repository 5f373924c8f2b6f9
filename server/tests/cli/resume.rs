//! The console client resumes by itself: its connection is cut by a TCP
//! proxy the test severs (the server keeps running), messages are published
//! meanwhile, and on reconnecting the client gets them (v2 `since`, or
//! `?since=` on a v1 URL), once and in order, and says so in one line.

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::interactive::Term;
use crate::util::{after_time, Server, Ws, EVENT_TIMEOUT};

/// A loopback TCP proxy in front of the server. [`Proxy::sever`] drops
/// every connection it carries (both sockets closed: a real cut, not a
/// close frame); while it is held, new connections wait, unforwarded.
struct Proxy {
    port: u16,
    /// Bumped by each sever: a pipe of an older generation stops.
    cuts: watch::Sender<u64>,
    /// New connections are forwarded only while this is true.
    open: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cuts, _) = watch::channel(0u64);
        let (open, _) = watch::channel(true);
        let (cuts_rx, open_rx) = (cuts.subscribe(), open.subscribe());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (mut cuts, mut open) = (cuts_rx.clone(), open_rx.clone());
                tokio::spawn(async move {
                    if open.wait_for(|o| *o).await.is_err() {
                        return;
                    }
                    let generation = *cuts.borrow_and_update();
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.wait_for(|g| *g != generation) => {}
                    }
                    // Both sockets drop here.
                });
            }
        });
        Proxy { port, cuts, open }
    }

    /// Cuts every connection and holds new ones until [`Proxy::release`].
    fn sever(&self) {
        self.open.send_replace(false);
        self.cuts.send_modify(|g| *g += 1);
    }

    fn release(&self) {
        self.open.send_replace(true);
    }
}

/// A `broadcast.v2` publisher in `channel`, straight to the server.
struct Publisher {
    ws: Ws,
    channel: String,
    next_id: u64,
}

impl Publisher {
    async fn join(url: &str, channel: &str) -> Publisher {
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "broadcast.v2".parse().unwrap());
        let (ws, _) = timeout(EVENT_TIMEOUT, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect in time")
            .expect("connect");
        let mut p = Publisher {
            ws,
            channel: channel.to_owned(),
            next_id: 0,
        };
        let subscribe = format!(r#"{{"type":"subscribe","channel":"{channel}","id":0}}"#);
        p.ws.send(Message::text(subscribe)).await.unwrap();
        p.answer(r#""type":"subscribed""#).await;
        p
    }

    /// Waits for an event containing `needle` (others skipped).
    async fn answer(&mut self, needle: &str) {
        loop {
            match timeout(EVENT_TIMEOUT, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.contains(needle) => return,
                Ok(Some(Ok(_))) => {}
                other => panic!("publisher: expected {needle}, got {other:?}"),
            }
        }
    }

    /// Publishes `text` and waits until the server took it (so it is in
    /// the channel's history).
    async fn publish(&mut self, text: &str) {
        self.next_id += 1;
        let (channel, id) = (&self.channel, self.next_id);
        let publish =
            format!(r#"{{"type":"publish","channel":"{channel}","id":{id},"text":"{text}"}}"#);
        self.ws.send(Message::text(publish)).await.unwrap();
        self.answer(&format!(r#""type":"published","id":{id}"#))
            .await;
    }
}

fn text(n: usize) -> String {
    format!("msg-{n:02}")
}

/// The messages on screen (`[HH:MM:SS] pub: msg-NN`), in screen order.
fn shown(rows: &[String]) -> Vec<String> {
    rows.iter()
        .filter_map(|r| after_time(r)?.strip_prefix("pub: "))
        .map(str::to_owned)
        .collect()
}

/// What a run of [`cut_and_resume`] expects.
struct Case<'a> {
    /// `connect` flags before `--url`.
    args: &'a [&'a str],
    /// The `--url` path (channel `news`).
    path: &'a str,
    /// Extra `start` flags.
    server: &'a [&'a str],
    /// The line the client prints on resuming.
    line: &'a str,
    /// The messages published while cut that reach the client.
    replayed: std::ops::Range<usize>,
}

/// 3 messages live, a cut, 12 published meanwhile, release, 3 more live.
async fn cut_and_resume(case: Case<'_>) {
    const BEFORE: usize = 3;
    const MISSED: usize = 12;
    const AFTER: usize = 3;
    let server = Server::start_with(0, case.server).await;
    let proxy = Proxy::start(server.port).await;
    let mut publisher = Publisher::join(&format!("{}?name=pub", server.url()), "news").await;
    let url = format!("ws://127.0.0.1:{}{}", proxy.port, case.path);
    let mut args = case.args.to_vec();
    args.extend(["--url", &url, "--name", "erin"]);
    let term = Term::spawn_sized(&args, 80);
    // A v2 client is in the channel once its subscribe is answered, after
    // the welcome ("as erin"): publishing before that could miss it.
    let joined = if case.args.contains(&"--channel") {
        "joined #news"
    } else {
        "as erin"
    };
    term.wait_for("the join", |rows, _| {
        rows.iter().any(|r| r.contains(joined))
    })
    .await;
    for n in 1..=BEFORE {
        publisher.publish(&text(n)).await;
    }
    term.wait_for("the first messages", |rows, _| shown(rows).len() == BEFORE)
        .await;

    proxy.sever();
    term.wait_for("the cut noticed", |rows, _| {
        rows.iter().any(|r| r.contains("reconnecting in"))
    })
    .await;
    for n in BEFORE + 1..=BEFORE + MISSED {
        publisher.publish(&text(n)).await;
    }
    proxy.release();
    term.wait_for("the resume line", |rows, _| {
        rows.iter().any(|r| r == case.line)
    })
    .await;
    for n in BEFORE + MISSED + 1..=BEFORE + MISSED + AFTER {
        publisher.publish(&text(n)).await;
    }
    let want: Vec<String> = (1..=BEFORE)
        .chain(case.replayed.clone())
        .chain(BEFORE + MISSED + 1..=BEFORE + MISSED + AFTER)
        .map(text)
        .collect();
    let rows = term
        .wait_for("the last message", |rows, _| {
            shown(rows).last() == want.last()
        })
        .await;
    // The server writes in order: a duplicate or a reordering would show
    // before the last message.
    assert_eq!(shown(&rows), want, "screen:\n{}", rows.join("\n"));
    let lines = rows
        .iter()
        .filter(|r| r.contains("resumed:") || r.contains("history expired"))
        .count();
    assert_eq!(lines, 1, "one resume line; screen:\n{}", rows.join("\n"));
    // The line comes after the replayed messages and before the live ones.
    let at = |needle: &str| rows.iter().position(|r| r.ends_with(needle)).unwrap();
    let line_at = rows.iter().position(|r| r == case.line).unwrap();
    if case.replayed.is_empty() || case.line.starts_with("history expired") {
        assert!(line_at < at(&text(BEFORE + MISSED + 1)));
    } else {
        assert!(at(&text(case.replayed.end - 1)) < line_at);
        assert!(line_at < at(&text(BEFORE + MISSED + 1)));
    }
}

#[tokio::test]
async fn a_v2_client_cut_off_resumes_with_what_it_missed() {
    cut_and_resume(Case {
        args: &["--channel", "news"],
        path: "/ws",
        server: &[],
        line: "resumed: 12 missed messages delivered",
        replayed: 4..16,
    })
    .await;
}

#[tokio::test]
async fn a_v1_client_cut_off_resumes_with_since_on_its_url() {
    cut_and_resume(Case {
        args: &[],
        path: "/ws/news",
        server: &[],
        line: "resumed: 12 missed messages delivered",
        replayed: 4..16,
    })
    .await;
}

#[tokio::test]
async fn a_client_told_history_expired_says_so_and_gets_what_is_kept() {
    // 5 kept per channel: of the 12 missed, the last 5 come.
    cut_and_resume(Case {
        args: &["--channel", "news"],
        path: "/ws",
        server: &["--history-size", "5"],
        line: "history expired: some messages may be missing",
        replayed: 11..16,
    })
    .await;
}
