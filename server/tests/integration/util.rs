//! Helpers shared by the integration tests: spawning the real
//! `broadcast-server` binary, tungstenite clients, a hand-rolled raw
//! WebSocket client (for frames a well-behaved library refuses to send),
//! and a tiny raw HTTP/1.1 client.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::frame::{decode_header, OpCode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A tungstenite client connection.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Bound for "this event must happen": generous, tests never wait this long when green.
pub(crate) const EVENT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to watch for "nothing arrives".
pub(crate) const QUIET_PERIOD: Duration = Duration::from_millis(300);

const LISTEN_PREFIX: &str = "broadcast-server listening on ws://127.0.0.1:";
/// The same with `--tls-cert`.
const LISTEN_PREFIX_TLS: &str = "broadcast-server listening on wss://127.0.0.1:";

/// The server binary under test.
pub(crate) fn server_bin() -> &'static str {
    env!("CARGO_BIN_EXE_broadcast-server")
}

/// Collects everything a child writes on one pipe, for diagnostics; the
/// receiver resolves at the pipe's end.
fn drain_into<R>(mut pipe: R) -> (Arc<Mutex<Vec<u8>>>, tokio::sync::oneshot::Receiver<()>)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let sink = Arc::new(Mutex::new(Vec::new()));
    let out = sink.clone();
    let (done, ended) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
        let _ = done.send(());
    });
    (sink, ended)
}

/// A running `broadcast-server`, killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) port: u16,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// Resolves when the server's stderr has ended.
    stderr_end: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Standard output lines after the "listening" one.
    stdout: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Server {
    /// `broadcast-server start --host 127.0.0.1 --port 0 ARGS...`, waits for the
    /// "listening" line and parses the port from it.
    pub(crate) async fn start(args: &[&str]) -> Server {
        let mut full = vec!["start", "--host", "127.0.0.1", "--port", "0"];
        full.extend_from_slice(args);
        Self::start_exact(&full).await
    }

    /// Runs the binary with exactly `args` and waits for the "listening" line.
    pub(crate) async fn start_exact(args: &[&str]) -> Server {
        Self::start_env(args, &[]).await
    }

    /// [`Server::start_exact`] with these environment variables set.
    pub(crate) async fn start_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = spawn_server(args, env);
        let (stderr, stderr_end) = drain_into(child.stderr.take().unwrap());
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let read = timeout(Duration::from_secs(10), stdout.read_line(&mut line)).await;
        let dump = |why: &str| -> ! {
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "{why}: server {args:?} stdout line {line:?}; stderr:\n{}",
                String::from_utf8_lossy(&stderr.lock().unwrap())
            )
        };
        match read {
            Err(_) => dump("no listening line on stdout within 10 s"),
            Ok(Err(e)) => dump(&format!("reading stdout: {e}")),
            Ok(Ok(0)) => dump("stdout closed before the listening line"),
            Ok(Ok(_)) => {}
        }
        let trimmed = line.trim_end_matches(['\r', '\n']);
        let rest = trimmed
            .strip_prefix(LISTEN_PREFIX)
            .or_else(|| trimmed.strip_prefix(LISTEN_PREFIX_TLS));
        let Some(rest) = rest else {
            dump("listening line has the wrong format")
        };
        let Some(port) = rest.strip_suffix("/ws") else {
            dump("listening line does not end with /ws")
        };
        let port: u16 = match port.parse() {
            Ok(p) if p != 0 => p,
            _ => dump("listening line has no valid port"),
        };
        // Keep reading stdout so the server never blocks on a full pipe.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = stdout.lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        Server {
            child,
            port,
            stderr,
            stderr_end: Some(stderr_end),
            stdout: rx,
        }
    }

    /// The next line the server prints on standard output after the
    /// "listening" one.
    pub(crate) async fn stdout_line(&mut self) -> String {
        match timeout(EVENT_TIMEOUT, self.stdout.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("server stdout ended; stderr:\n{}", self.stderr()),
            Err(_) => panic!("no stdout line in time; stderr:\n{}", self.stderr()),
        }
    }

    pub(crate) fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Everything the server wrote on stderr, once it has exited and the
    /// pipe has ended.
    pub(crate) async fn stderr_to_end(&mut self) -> String {
        self.wait_exit(EVENT_TIMEOUT).await;
        if let Some(end) = self.stderr_end.take() {
            let _ = timeout(EVENT_TIMEOUT, end).await;
        }
        self.stderr()
    }

    /// Sends a signal by name ("TERM", "INT") with the `kill` utility.
    pub(crate) fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("server already reaped");
        let st = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} {pid} failed");
    }

    /// Waits for the process to exit, at most `limit`.
    pub(crate) async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        match timeout(limit, self.child.wait()).await {
            Ok(st) => st.expect("wait for server"),
            Err(_) => panic!(
                "server did not exit within {limit:?}; stderr:\n{}",
                self.stderr()
            ),
        }
    }

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

    /// `GET path` over raw HTTP/1.1.
    pub(crate) async fn http_get(&self, path: &str) -> HttpResponse {
        http_get(&self.addr(), path).await
    }

    /// The `connections` number from `/healthz`.
    pub(crate) async fn health_connections(&self) -> u64 {
        let resp = self.http_get("/healthz").await;
        assert_eq!(resp.status, 200, "/healthz: {resp:?}");
        json_number(&resp.body, "connections")
            .unwrap_or_else(|| panic!("no connections number in /healthz body {:?}", resp.body))
    }

    /// Polls `/healthz` until `connections == want` (bounded).
    pub(crate) async fn wait_connections(&self, want: u64) {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let got = self.health_connections().await;
            if got == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/healthz connections stayed at {got}, expected {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    /// A failing test shows what the server logged.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- broadcast-server (port {}) stderr ---\n{}--- end of stderr ---",
                self.port,
                self.stderr()
            );
        }
    }
}

/// Connects a tungstenite client, failing the test after a bound.
pub(crate) async fn connect(url: &str) -> Ws {
    match timeout(EVENT_TIMEOUT, tokio_tungstenite::connect_async(url)).await {
        Ok(Ok((ws, _resp))) => ws,
        Ok(Err(e)) => panic!("connect {url}: {e}"),
        Err(_) => panic!("connect {url}: timed out"),
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

/// Reads until a Close message and returns its code and reason.
pub(crate) async fn expect_ws_close(ws: &mut Ws) -> (u16, String) {
    match recv(ws).await {
        Message::Close(Some(f)) => (u16::from(f.code), f.reason.as_str().to_owned()),
        other => panic!("expected a Close frame with a code, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Raw WebSocket client
// ---------------------------------------------------------------------------

// Opcodes as raw bytes (tests also write reserved ones), from `protocol`.
pub(crate) const OP_CONT: u8 = OpCode::Continuation as u8;
pub(crate) const OP_TEXT: u8 = OpCode::Text as u8;
pub(crate) const OP_BINARY: u8 = OpCode::Binary as u8;
pub(crate) const OP_CLOSE: u8 = OpCode::Close as u8;
pub(crate) const OP_PING: u8 = OpCode::Ping as u8;
pub(crate) const OP_PONG: u8 = OpCode::Pong as u8;

pub(crate) const RSV1: u8 = 0x40;
pub(crate) const RSV2: u8 = 0x20;
pub(crate) const RSV3: u8 = 0x10;

const MASK_KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// Sec-WebSocket-Accept for [`WS_KEY`] (RFC 6455 §1.3).
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Encodes one frame. `mask: true` masks it like a client must.
pub(crate) fn encode_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | rsv | opcode);
    let mask_bit = if mask { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if mask {
        out.extend_from_slice(&MASK_KEY);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK_KEY[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A masked, final frame.
pub(crate) fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(true, 0, opcode, payload, true)
}

/// Close frame payload: code then reason.
pub(crate) fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) fin: bool,
    pub(crate) rsv: u8,
    pub(crate) opcode: u8,
    pub(crate) payload: Vec<u8>,
}

impl Frame {
    /// Code and reason of a close frame (None for an empty close payload).
    pub(crate) fn close_code(&self) -> Option<(u16, String)> {
        assert_eq!(self.opcode, OP_CLOSE, "not a close frame: {self:?}");
        if self.payload.is_empty() {
            return None;
        }
        assert!(self.payload.len() >= 2, "1-byte close payload: {self:?}");
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        let reason = String::from_utf8(self.payload[2..].to_vec())
            .unwrap_or_else(|_| panic!("close reason is not UTF-8: {self:?}"));
        Some((code, reason))
    }
}

/// What reading a frame from the raw socket produced.
#[derive(Debug)]
pub(crate) enum Read {
    Frame(Frame),
    /// The server closed the TCP connection (EOF, or reset).
    Eof,
}

/// A WebSocket client that writes and parses frames by hand.
pub(crate) struct RawClient {
    pub(crate) stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    /// Connects and completes the upgrade handshake.
    pub(crate) async fn connect(server: &Server) -> RawClient {
        let stream = TcpStream::connect(server.addr())
            .await
            .expect("tcp connect");
        Self::handshake(stream, server.port).await
    }

    /// Like [`RawClient::connect`] but with a small receive buffer, so the
    /// kernel holds little on this side for a client that never reads.
    pub(crate) async fn connect_small_rcvbuf(server: &Server, size: u32) -> RawClient {
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(size).unwrap();
        let stream = sock
            .connect(server.addr().parse().unwrap())
            .await
            .expect("tcp connect");
        Self::handshake(stream, server.port).await
    }

    async fn handshake(mut stream: TcpStream, port: u16) -> RawClient {
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut client = RawClient {
            stream,
            buf: Vec::new(),
        };
        let head = timeout(EVENT_TIMEOUT, client.read_http_head())
            .await
            .expect("timed out waiting for the upgrade response");
        let status_line = head.lines().next().unwrap_or("");
        assert!(
            status_line.starts_with("HTTP/1.1 101"),
            "upgrade refused: {head:?}"
        );
        let accept = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-accept"))
            .map(|(_, v)| v.trim().to_owned());
        assert_eq!(accept.as_deref(), Some(WS_ACCEPT), "bad accept in {head:?}");
        client
    }

    /// Reads the HTTP response head; leaves any bytes after it in `buf`.
    async fn read_http_head(&mut self) -> String {
        loop {
            if let Some(pos) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 4);
                return head;
            }
            let mut chunk = [0u8; 1024];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .expect("read upgrade response");
            assert!(n > 0, "EOF during the upgrade response: {:?}", self.buf);
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write frame");
    }

    /// Like [`RawClient::send_raw`] but tolerates the server having closed
    /// already (it may reject a frame before we finish writing it).
    pub(crate) async fn send_raw_lenient(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    async fn fill(&mut self, want: usize) -> bool {
        while self.buf.len() < want {
            let mut chunk = vec![0u8; 64 * 1024];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    }

    /// Reads one frame (no timeout). Asserts server frames are unmasked
    /// and well formed ([`decode_header`]). A truncated frame followed by
    /// EOF fails the test.
    pub(crate) async fn read_frame_untimed(&mut self) -> Read {
        let header = loop {
            match decode_header(&self.buf) {
                Ok(Some(h)) => break h,
                Ok(None) => {
                    if !self.fill(self.buf.len() + 1).await {
                        assert!(
                            self.buf.is_empty(),
                            "EOF inside a frame header: {:?}",
                            self.buf
                        );
                        return Read::Eof;
                    }
                }
                Err(e) => panic!(
                    "invalid frame header from the server ({e}): {:x?}",
                    &self.buf[..self.buf.len().min(16)]
                ),
            }
        };
        assert_eq!(header.mask, None, "server frame is masked");
        let hdr = header.header_len;
        let len = usize::try_from(header.payload_len).expect("frame length fits usize");
        assert!(
            self.fill(hdr + len).await,
            "EOF inside a frame payload (opcode {:?}, len {len}, have {})",
            header.opcode,
            self.buf.len() - hdr
        );
        let payload = self.buf[hdr..hdr + len].to_vec();
        self.buf.drain(..hdr + len);
        Read::Frame(Frame {
            fin: header.fin,
            rsv: header.rsv,
            opcode: header.opcode as u8,
            payload,
        })
    }

    /// Reads one frame within `limit`.
    pub(crate) async fn read_within(&mut self, limit: Duration) -> Read {
        timeout(limit, self.read_frame_untimed())
            .await
            .unwrap_or_else(|_| panic!("no frame or EOF from the server within {limit:?}"))
    }

    /// Reads one frame within [`EVENT_TIMEOUT`]; EOF fails the test.
    pub(crate) async fn read_frame(&mut self) -> Frame {
        match self.read_within(EVENT_TIMEOUT).await {
            Read::Frame(f) => f,
            Read::Eof => panic!("server closed the connection, expected a frame"),
        }
    }

    /// Reads frames (skipping server pings) until a Close; asserts its code,
    /// answers it and asserts the server then closes the TCP connection.
    /// Returns the close reason.
    pub(crate) async fn expect_close(&mut self, code: u16) -> String {
        let frame = loop {
            let f = self.read_frame().await;
            match f.opcode {
                OP_PING => continue,
                OP_CLOSE => break f,
                _ => panic!("expected Close {code}, got {f:?}"),
            }
        };
        assert!(frame.fin, "close frame must be final");
        let (got, reason) = frame
            .close_code()
            .unwrap_or_else(|| panic!("expected Close {code}, got a close without a code"));
        assert_eq!(got, code, "close code (reason {reason:?})");
        self.finish_close().await;
        reason
    }

    /// Answers a server Close and asserts the server closes the TCP connection.
    pub(crate) async fn finish_close(&mut self) {
        self.send_raw_lenient(&masked(
            OP_CLOSE,
            &close_payload(protocol::close::NORMAL, ""),
        ))
        .await;
        self.expect_eof().await;
    }

    /// Asserts the server closes the TCP connection without sending more frames.
    pub(crate) async fn expect_eof(&mut self) {
        match self.read_within(EVENT_TIMEOUT).await {
            Read::Eof => {}
            Read::Frame(f) => panic!("expected the TCP connection to close, got {f:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    /// Lower-cased header names with their values.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl HttpResponse {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` with `Connection: close`, read to EOF and parsed.
pub(crate) async fn http_get(addr: &str, path: &str) -> HttpResponse {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http_raw(addr, req.as_bytes()).await
}

/// Sends `request` as is and parses the response.
pub(crate) async fn http_raw(addr: &str, request: &[u8]) -> HttpResponse {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("tcp connect");
        s.write_all(request).await.expect("write request");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read response");
        raw
    };
    let raw = timeout(EVENT_TIMEOUT, fut)
        .await
        .expect("HTTP response not complete (connection not closed) in time");
    parse_http(&raw)
}

pub(crate) fn parse_http(raw: &[u8]) -> HttpResponse {
    let pos = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..pos]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or("");
    assert!(
        version.starts_with("HTTP/1."),
        "bad status line {status_line:?}"
    );
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[pos + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_str = String::from_utf8_lossy(&data[..eol]);
        let size_str = size_str.split(';').next().unwrap().trim().to_owned();
        let size = usize::from_str_radix(&size_str, 16).expect("chunk size");
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

/// The value of top-level `key` in a JSON object such as the /healthz
/// document; `None` if the body is not JSON or has no such key.
pub(crate) fn json_value(body: &str, key: &str) -> Option<serde_json::Value> {
    let mut doc: serde_json::Value = serde_json::from_str(body).ok()?;
    doc.get_mut(key).map(serde_json::Value::take)
}

/// The unsigned integer at top-level `key` (see [`json_value`]).
pub(crate) fn json_number(body: &str, key: &str) -> Option<u64> {
    json_value(body, key)?.as_u64()
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

// ---------------------------------------------------------------------------
// Hardening helpers: connecting from another loopback address, /metrics
// ---------------------------------------------------------------------------

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
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
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

/// One sample of a Prometheus text exposition: `name{labels} value`.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) name: String,
    /// The text between the braces (empty without labels).
    pub(crate) labels: String,
    pub(crate) value: f64,
}

/// Parses a Prometheus / OpenMetrics text document, asserting that every
/// line that is not a comment is `name{labels} value` or `name value` with
/// a numeric value.
pub(crate) fn parse_metrics(body: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in body.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("metrics line without a value: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("non-numeric value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let labels = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unterminated labels in {line:?}"));
                (name, labels)
            }
            None => (series, ""),
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        samples.push(Sample {
            name: name.to_owned(),
            labels: labels.to_owned(),
            value,
        });
    }
    samples
}

/// The value of the sample `name` whose labels are exactly `labels`.
pub(crate) fn metric(samples: &[Sample], name: &str, labels: &str) -> f64 {
    samples
        .iter()
        .find(|s| s.name == name && s.labels == labels)
        .unwrap_or_else(|| panic!("no sample {name}{{{labels}}} in {samples:#?}"))
        .value
}

impl Server {
    /// Scrapes `/metrics` (asserting 200 and the text content type) and parses it.
    pub(crate) async fn metrics(&self) -> Vec<Sample> {
        let resp = self.http_get("/metrics").await;
        assert_eq!(resp.status, 200, "/metrics: {resp:?}");
        let ct = resp.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("text/plain") || ct.starts_with("application/openmetrics-text"),
            "/metrics content type {ct:?}"
        );
        parse_metrics(&resp.body)
    }

    /// A number from `/healthz`.
    pub(crate) async fn health_number(&self, key: &str) -> u64 {
        let resp = self.http_get("/healthz").await;
        json_number(&resp.body, key)
            .unwrap_or_else(|| panic!("no {key} in /healthz body {:?}", resp.body))
    }
}

/// What a `broadcast-server` run that is expected to end by itself printed.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// The binary with `args` and `env`, stdin empty, stdout and stderr piped.
fn spawn_server(args: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new(server_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn broadcast-server")
}

/// Runs the binary with `args` and `env` to its exit (bounded).
pub(crate) async fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> Finished {
    let out = timeout(EVENT_TIMEOUT, spawn_server(args, env).wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("broadcast-server {args:?} did not exit"))
        .expect("wait for broadcast-server");
    Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `start --host 127.0.0.1 --port 0 ARGS` run to its exit (bounded).
pub(crate) async fn run_start(args: &[&str], env: &[(&str, &str)]) -> Finished {
    let mut full = vec!["start", "--host", "127.0.0.1", "--port", "0"];
    full.extend_from_slice(args);
    run_to_exit(&full, env).await
}

/// A file in the temporary directory, removed when dropped.
pub(crate) struct TempFile(tempfile::NamedTempFile);

impl TempFile {
    /// Writes `text` to a new file whose name ends with `tag`.
    pub(crate) fn new(tag: &str, text: &str) -> TempFile {
        use std::io::Write as _;
        let mut file = tempfile::Builder::new()
            .prefix("bs-test-")
            .suffix(&format!("-{tag}"))
            .tempfile()
            .expect("create temp file");
        file.write_all(text.as_bytes()).expect("write temp file");
        file.flush().expect("write temp file");
        TempFile(file)
    }

    pub(crate) fn path(&self) -> &str {
        self.0.path().to_str().expect("UTF-8 temp path")
    }
}
