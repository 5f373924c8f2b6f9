//! tungstenite clients: connecting (with extra headers, from another
//! loopback address), making sure a group of clients is subscribed, and
//! reading messages with bounds.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{Server, EVENT_TIMEOUT, QUIET_PERIOD};

/// A tungstenite client connection.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

impl Server {
    /// Connects a tungstenite client to `/ws`.
    pub(crate) async fn connect(&self) -> Ws {
        connect(&self.ws_url()).await
    }

    /// Connects `n` tungstenite clients and makes sure every one of them is
    /// subscribed (see [`barrier`]).
    pub(crate) async fn connect_many(&self, n: usize, echo: bool) -> Vec<Ws> {
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            clients.push(self.connect().await);
        }
        barrier(&mut clients, echo).await;
        clients
    }
}

/// Connects a tungstenite client, failing the test after a bound.
pub(crate) async fn connect(url: &str) -> Ws {
    match upgrade_with(url, &[]).await {
        Ok((ws, _resp)) => ws,
        Err(e) => panic!("connect {url}: {e}"),
    }
}

/// Upgrades `url` with these extra request headers, failing the test if
/// there is no answer within [`EVENT_TIMEOUT`]. A refused upgrade is
/// `Err(WsError::Http(response))`, which carries the status and headers.
pub(crate) async fn upgrade_with(
    url: &str,
    headers: &[(&'static str, &str)],
) -> Result<(Ws, Response), WsError> {
    let mut req = url.into_client_request().expect("a WebSocket URL");
    for &(name, value) in headers {
        let value = HeaderValue::from_str(value).expect("a valid header value");
        req.headers_mut().insert(name, value);
    }
    match timeout(EVENT_TIMEOUT, tokio_tungstenite::connect_async(req)).await {
        Ok(result) => result,
        Err(_) => panic!("upgrade of {url}: no answer in time"),
    }
}

const SYNC_PREFIX: &str = "__sync__";
const SYNC_DONE: &str = "__sync_done__";

/// Makes sure every client in `clients` is subscribed to the broadcast: the
/// first client sends sync messages until each other client has received
/// one, then a final marker that every client (and with `echo` the sender)
/// reads up to, so no sync message is left unread afterwards.
///
/// The server may register a connection a moment after it answered the
/// upgrade, so a message sent right after `connect` might legitimately miss
/// a brand new client; this removes that race without sleeping.
pub(crate) async fn barrier(clients: &mut [Ws], echo: bool) {
    if clients.len() < 2 {
        return;
    }
    let mut pending: Vec<usize> = (1..clients.len()).collect();
    for round in 0..40 {
        let text = format!("{SYNC_PREFIX}{round}");
        clients[0]
            .send(Message::text(text))
            .await
            .expect("send sync");
        let mut still = Vec::new();
        for &i in &pending {
            match timeout(Duration::from_millis(1000), next_data(&mut clients[i])).await {
                Ok(m) => assert!(
                    matches!(&m, Message::Text(t) if t.starts_with(SYNC_PREFIX)),
                    "client {i} got {m:?} during sync"
                ),
                Err(_) => still.push(i),
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
    }
    assert!(
        pending.is_empty(),
        "clients {pending:?} never received a broadcast"
    );
    clients[0]
        .send(Message::text(SYNC_DONE))
        .await
        .expect("send sync done");
    let start = if echo { 0 } else { 1 };
    for (i, c) in clients.iter_mut().enumerate().skip(start) {
        loop {
            let m = recv(c).await;
            match &m {
                Message::Text(t) if t.as_str() == SYNC_DONE => break,
                Message::Text(t) if t.starts_with(SYNC_PREFIX) => {}
                _ => panic!("client {i} got {m:?} during sync"),
            }
        }
    }
}

/// Next text/binary/close message (pings and pongs skipped); panics on
/// stream end or error.
pub(crate) async fn next_data(ws: &mut Ws) -> Message {
    loop {
        match ws.next().await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return m,
            Some(Err(e)) => panic!("websocket error while waiting for a message: {e}"),
            None => panic!("websocket ended while waiting for a message"),
        }
    }
}

/// [`next_data`] with [`EVENT_TIMEOUT`].
pub(crate) async fn recv(ws: &mut Ws) -> Message {
    timeout(EVENT_TIMEOUT, next_data(ws))
        .await
        .expect("timed out waiting for a message")
}

/// Asserts nothing (but pings/pongs) arrives during [`QUIET_PERIOD`].
pub(crate) async fn assert_quiet(ws: &mut Ws, who: &str) {
    if let Ok(m) = timeout(QUIET_PERIOD, next_data(ws)).await {
        panic!("{who} unexpectedly received {m:?}");
    }
}

/// [`assert_quiet`] for a `broadcast.v1` or `broadcast.v2` client:
/// `presence` events may still come (with `--redis` they follow the other
/// nodes' joins and leaves, and a node whose link came back relearns them),
/// anything else may not.
pub(crate) async fn assert_quiet_but_presence(ws: &mut Ws, who: &str) {
    let until = tokio::time::Instant::now() + QUIET_PERIOD;
    while let Ok(m) = tokio::time::timeout_at(until, next_data(ws)).await {
        let presence = match &m {
            Message::Text(t) => {
                serde_json::from_str::<serde_json::Value>(t).is_ok_and(|e| e["type"] == "presence")
            }
            _ => false,
        };
        assert!(presence, "{who} unexpectedly received {m:?}");
    }
}

/// Reads until a Close message and returns its code and reason.
pub(crate) async fn expect_ws_close(ws: &mut Ws) -> (u16, String) {
    match recv(ws).await {
        Message::Close(Some(f)) => (u16::from(f.code), f.reason.as_str().to_owned()),
        other => panic!("expected a Close frame with a code, got {other:?}"),
    }
}

/// Spawns a task that forwards every message a client receives (pings
/// included) into a channel, and keeps polling the socket so tungstenite
/// answers pings. The sender half is returned for writing.
pub(crate) fn spawn_reader(
    ws: Ws,
) -> (
    futures_util::stream::SplitSink<Ws, Message>,
    tokio::sync::mpsc::UnboundedReceiver<Result<Message, String>>,
) {
    let (sink, mut stream) = ws.split();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = stream.next().await {
            let stop = m.is_err();
            if tx.send(m.map_err(|e| e.to_string())).is_err() || stop {
                break;
            }
        }
    });
    (sink, rx)
}

/// Connects a tungstenite client to `server` from local address `ip`
/// (any 127.x.y.z works on Linux loopback). Returns the HTTP status when the
/// upgrade is refused.
pub(crate) async fn try_connect_from(server: &Server, ip: [u8; 4]) -> Result<Ws, u16> {
    let attempt = async {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind((std::net::Ipv4Addr::from(ip), 0).into())
            .expect("bind loopback source address");
        let stream = sock
            .connect(server.addr().parse().unwrap())
            .await
            .expect("tcp connect");
        match tokio_tungstenite::client_async(server.ws_url(), MaybeTlsStream::Plain(stream)).await
        {
            Ok((ws, _)) => Ok(ws),
            Err(WsError::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("connect from {ip:?}: {e}"),
        }
    };
    timeout(EVENT_TIMEOUT, attempt)
        .await
        .expect("no answer to the upgrade")
}

/// Connects from 127.0.0.1, returning the HTTP status of a refused upgrade.
pub(crate) async fn try_connect(server: &Server) -> Result<Ws, u16> {
    try_connect_from(server, [127, 0, 0, 1]).await
}
