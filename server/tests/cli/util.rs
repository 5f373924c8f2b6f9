//! Helpers: a server process, CLI processes whose output lines are awaited
//! with bounded timeouts, tungstenite peers, and `/healthz` and `/metrics`
//! polling.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A tungstenite client connection.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Bound for "this must happen": never reached when the test is green.
pub(crate) const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

const LISTEN_PREFIX: &str = "broadcast-server listening on ws://127.0.0.1:";

pub(crate) fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_broadcast-server")
}

/// A running `broadcast-server start`, killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) port: u16,
}

impl Server {
    /// On a port the kernel picks.
    pub(crate) async fn start() -> Server {
        Self::start_on(0).await
    }

    /// On a port below the kernel's ephemeral range (32768 and up here), for
    /// a test that kills the server and starts it again on the same port:
    /// no other test's server on port 0, and no outgoing connection, can
    /// take that port meanwhile (one did, and the restarted client talked
    /// to another test's server).
    pub(crate) async fn start_restartable() -> Server {
        use std::hash::{BuildHasher, RandomState};
        for attempt in 0u64.. {
            let seed = RandomState::new().hash_one((attempt, std::process::id()));
            let port = 20_000 + (seed % 12_000) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Self::start_on(port).await;
            }
        }
        unreachable!()
    }

    /// On `port` (0: any). Retries briefly while the port is still taken.
    pub(crate) async fn start_on(port: u16) -> Server {
        Self::start_with(port, &[]).await
    }

    /// On `port` with extra `start` flags.
    pub(crate) async fn start_with(port: u16, extra: &[&str]) -> Server {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let mut child = Command::new(bin())
                .args(["start", "--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--shutdown-timeout", "2"])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn broadcast-server");
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            let _ = timeout(EVENT_TIMEOUT, stdout.read_line(&mut line)).await;
            if let Some(rest) = line.trim_end().strip_prefix(LISTEN_PREFIX) {
                let port = rest
                    .strip_suffix("/ws")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("bad listening line {line:?}"));
                tokio::spawn(async move {
                    let mut sink = Vec::new();
                    let _ = stdout.read_to_end(&mut sink).await;
                });
                return Server { child, port };
            }
            let _ = child.kill().await;
            assert!(
                Instant::now() < deadline,
                "server did not start on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("server running")
    }

    pub(crate) fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// Sends SIGTERM and waits for the process to end.
    pub(crate) async fn terminate(mut self) {
        signal(self.child.id().expect("server running"), "TERM");
        let st = timeout(EVENT_TIMEOUT, self.child.wait())
            .await
            .expect("server exits after SIGTERM")
            .expect("wait for server");
        assert!(st.success(), "server exit status {st}");
    }

    /// The body of `GET path` (HTTP/1.1, `Connection: close`).
    async fn get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap_or_else(|e| panic!("connect for {path}: {e}"));
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw);
        text.split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned()
    }

    /// The `connections` count from `/healthz`.
    async fn connections(&self) -> u64 {
        let body = self.get("/healthz").await;
        let start = body.find('{').unwrap_or(0);
        let end = body.rfind('}').map_or(body.len(), |e| e + 1);
        let json: serde_json::Value = serde_json::from_str(&body[start..end])
            .unwrap_or_else(|e| panic!("/healthz body {body:?}: {e}"));
        json["connections"]
            .as_u64()
            .unwrap_or_else(|| panic!("no connections in {json}"))
    }

    /// The value of the unlabelled sample `name` in `/metrics`.
    pub(crate) async fn metric(&self, name: &str) -> f64 {
        let body = self.get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics: {body}"))
    }

    /// Polls `/metrics` until `name` is `want`.
    pub(crate) async fn wait_metric(&self, name: &str, want: f64) {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let got = self.metric(name).await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} stayed at {got}, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `/healthz` until `want` WebSocket clients are connected.
    pub(crate) async fn wait_connections(&self, want: u64) {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let got = self.connections().await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/healthz connections stayed at {got}, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub(crate) fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{sig} {pid}");
}

/// Which output of a CLI process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pipe {
    Stdout,
    Stderr,
}

/// A `broadcast-server connect ...` process with piped stdout and stderr.
pub(crate) struct Cli {
    pub(crate) child: Child,
    pub(crate) stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<(Pipe, String)>,
    /// Everything read so far, for failure messages.
    seen: Arc<Mutex<Vec<(Pipe, String)>>>,
}

impl Cli {
    /// Runs `connect ARGS` with stdin piped (`stdin: true`) or `/dev/null`.
    pub(crate) fn spawn(args: &[&str], stdin: bool) -> Cli {
        let mut cmd = Command::new(bin());
        cmd.arg("connect").args(args);
        Self::spawn_cmd(cmd, stdin)
    }

    /// Runs `sh -c SCRIPT` (with `$BIN` set to the binary).
    pub(crate) fn shell(script: &str) -> Cli {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).env("BIN", bin());
        Self::spawn_cmd(cmd, false)
    }

    fn spawn_cmd(mut cmd: Command, stdin: bool) -> Cli {
        let mut child = cmd
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the client");
        let (tx, lines) = mpsc::unbounded_channel();
        for (pipe, reader) in [
            (
                Pipe::Stdout,
                Box::new(child.stdout.take().unwrap())
                    as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            ),
            (Pipe::Stderr, Box::new(child.stderr.take().unwrap())),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(reader).lines();
                while let Ok(Some(line)) = r.next_line().await {
                    if tx.send((pipe, line)).is_err() {
                        break;
                    }
                }
            });
        }
        Cli {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Arc::default(),
        }
    }

    /// Waits for a line on `pipe` that satisfies `want`; returns it.
    pub(crate) async fn expect(
        &mut self,
        pipe: Pipe,
        what: &str,
        want: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some((p, line))) => {
                    self.seen.lock().unwrap().push((p, line.clone()));
                    if p == pipe && want(&line) {
                        return line;
                    }
                }
                Ok(None) => panic!(
                    "output ended before {what} on {pipe:?}; saw {:#?}",
                    self.seen.lock().unwrap()
                ),
                Err(_) => panic!(
                    "no {what} on {pipe:?} within {EVENT_TIMEOUT:?}; saw {:#?}",
                    self.seen.lock().unwrap()
                ),
            }
        }
    }

    /// Waits for a line containing `needle`.
    pub(crate) async fn expect_contains(&mut self, pipe: Pipe, needle: &str) -> String {
        self.expect(pipe, &format!("line containing {needle:?}"), |l| {
            l.contains(needle)
        })
        .await
    }

    /// Writes one line to stdin.
    pub(crate) async fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is piped");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Closes stdin (end of input).
    pub(crate) fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the exit; then returns the status and every remaining line.
    pub(crate) async fn wait(&mut self) -> (ExitStatus, Vec<(Pipe, String)>) {
        self.wait_within(EVENT_TIMEOUT).await
    }

    /// [`wait`](Self::wait) for a client with much to do: up to `bound`.
    pub(crate) async fn wait_within(
        &mut self,
        bound: Duration,
    ) -> (ExitStatus, Vec<(Pipe, String)>) {
        let st = timeout(bound, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("client did not exit; saw {:#?}", self.seen.lock().unwrap()))
            .expect("wait for the client");
        let mut rest = Vec::new();
        while let Ok(Some(l)) = timeout(Duration::from_secs(2), self.lines.recv()).await {
            rest.push(l);
        }
        (st, rest)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("client running")
    }
}

/// `[HH:MM:SS] rest`: checks the time stamp and returns the rest.
pub(crate) fn after_time(line: &str) -> Option<&str> {
    let b = line.as_bytes();
    let ok = b.len() > 11
        && b[0] == b'['
        && b[9] == b']'
        && b[10] == b' '
        && [1, 2, 4, 5, 7, 8].iter().all(|&i| b[i].is_ascii_digit())
        && b[3] == b':'
        && b[6] == b':';
    ok.then(|| &line[11..])
}

/// A plain tungstenite client (no subprotocol: the raw contract).
pub(crate) async fn raw_client(url: &str) -> Ws {
    let (ws, _) = timeout(EVENT_TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("connect");
    ws
}

/// The next text message (pings and the like skipped).
pub(crate) async fn next_text(ws: &mut Ws) -> String {
    loop {
        match timeout(EVENT_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(
                Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_),
            ))) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}
