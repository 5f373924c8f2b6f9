//! A `redis-server` process of a test's own for the cluster tests: on a
//! free loopback port, without persistence, killed (or crashed on purpose)
//! and restarted on the same port.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::time::{sleep, Instant};

use super::closed_port;

/// A `redis-server` of this test's own, killed when dropped.
pub(crate) struct Redis {
    child: Option<Child>,
    port: u16,
}

impl Redis {
    /// Starts `redis-server` on a free loopback port.
    pub(crate) async fn start() -> Redis {
        // The port is free when probed; another process could take it before
        // redis binds it, so try a few.
        for _ in 0..5 {
            let mut redis = Redis {
                child: None,
                port: closed_port(),
            };
            if redis.spawn().await {
                return redis;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts (or restarts) the server on `self.port`; false if it exited.
    async fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed (not on PATH): the cluster tests need a real \
                 Redis; install it with `apt-get install redis-server` (.ci/test.sh does)"
            ),
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                self.child = Some(child);
                return true;
            }
            sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "redis-server on port {} did not listen within 10 s",
            self.port
        );
    }

    /// Starts it again on the same port (after [`Redis::kill`]).
    pub(crate) async fn restart(&mut self) {
        assert!(
            self.spawn().await,
            "redis-server did not restart on port {}",
            self.port
        );
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL, like a crash) and waits for it to go.
    pub(crate) async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill redis-server");
        }
    }
}

impl Redis {
    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

/// A TCP relay between one node and Redis, so that a test can cut that
/// node's link (both its connections) while Redis and the other nodes go
/// on, and restore it.
pub(crate) struct LinkProxy {
    port: u16,
    state: std::sync::Arc<std::sync::Mutex<ProxyState>>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    cut: bool,
    links: Vec<tokio::task::JoinHandle<()>>,
}

impl LinkProxy {
    /// Relays a loopback port to `redis`.
    pub(crate) async fn start(redis: &Redis) -> LinkProxy {
        LinkProxy::start_delayed(redis, Duration::ZERO).await
    }

    /// Relays a loopback port to `redis`, holding what the node sends for
    /// `delay` before passing it on (in order): a slow link to Redis.
    pub(crate) async fn start_delayed(redis: &Redis, delay: Duration) -> LinkProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let to = redis.port();
        let state = std::sync::Arc::new(std::sync::Mutex::new(ProxyState::default()));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let mut state = shared.lock().unwrap();
                if state.cut {
                    continue; // dropped: the node sees its connection closed
                }
                state.links.push(tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                        return;
                    };
                    if delay.is_zero() {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                        return;
                    }
                    let (mut down_read, mut down_write) = down.into_split();
                    let (mut up_read, mut up_write) = up.into_split();
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                    let reading = async move {
                        let mut buf = vec![0; 64 * 1024];
                        while let Ok(n @ 1..) = down_read.read(&mut buf).await {
                            let due = tokio::time::Instant::now() + delay;
                            if tx.send((due, buf[..n].to_vec())).is_err() {
                                break;
                            }
                        }
                    };
                    let writing = async move {
                        while let Some((due, bytes)) = rx.recv().await {
                            tokio::time::sleep_until(due).await;
                            if up_write.write_all(&bytes).await.is_err() {
                                break;
                            }
                        }
                    };
                    let back = tokio::io::copy(&mut up_read, &mut down_write);
                    tokio::select! {
                        () = async { tokio::join!(reading, writing); } => {}
                        _ = back => {}
                    }
                }));
            }
        });
        LinkProxy {
            port,
            state,
            accept,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Closes every relayed connection and refuses new ones.
    pub(crate) fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.cut = true;
        for link in state.links.drain(..) {
            link.abort();
        }
    }

    /// Relays new connections again.
    pub(crate) fn restore(&self) {
        self.state.lock().unwrap().cut = false;
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
