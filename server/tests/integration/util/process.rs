//! Running the real `broadcast-server` binary: spawning it on a port the
//! kernel picks, reading its "listening" line, collecting its logs, sending
//! it signals and waiting for its exit, or running it to its exit.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

use super::EVENT_TIMEOUT;

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
        Self::start_exact(&start_args(args)).await
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

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("server already reaped")
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
    run_to_exit(&start_args(args), env).await
}

/// `start --host 127.0.0.1 --port 0` followed by `args`.
fn start_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut full = vec!["start", "--host", "127.0.0.1", "--port", "0"];
    full.extend_from_slice(args);
    full
}

/// A loopback port nothing listens on, below the kernel's ephemeral range
/// (32768 and up here), so that no other test's server on port 0, and no
/// outgoing connection, can take it while a test restarts something on it
/// (Redis). Another process could still bind it, so callers that bind it
/// retry.
pub(crate) fn closed_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    for attempt in 0u64.. {
        let seed = RandomState::new().hash_one((attempt, std::process::id()));
        let port = 20_000 + (seed % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    unreachable!()
}
