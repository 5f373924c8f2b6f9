//! broadcast-server: a WebSocket fan-out server.
//!
//! Every message one client sends reaches every other connected client, in
//! the order that client sent it.
//!
//! # Architecture
//! - [`Server::run`] accepts TCP connections on the caller's runtime and
//!   hands each to the least-loaded *shard*: a worker thread with its own
//!   current-thread tokio runtime. A connection stays on its shard for life.
//! - Each shard speaks HTTP/1.1 with hyper and upgrades `/ws` with
//!   fastwebsockets (`http`), then owns the socket (`conn`).
//! - A received message is framed once into a shared `Bytes` and pushed to
//!   every shard's inbox through an `arc-swap` snapshot (`fanout`); each
//!   shard writes those bytes to its own sockets with vectored writes
//!   (`shard`). No lock and no per-recipient copy on that path.
//! - Flow control (`flow`): a publisher reserves fan-out credit on every
//!   shard before publishing, so when delivery falls behind the server stops
//!   reading from publishers and TCP slows them; nothing is dropped. A
//!   connection that stops reading while the others keep up is closed with
//!   1013 once its backlog passes `--max-backlog`.
//! - Abuse limits (`admission`): origin, auth, per-IP and server-wide
//!   connection limits at upgrade (403/401/503), and an optional
//!   per-connection message rate (throttle by default, or close 1008).
//! - `/metrics` (`metrics`) encodes the `Stats` atomics and each shard's own
//!   counters and latency histogram at scrape time; shards update their
//!   counters once per dispatch batch, never per delivery. With
//!   `metrics_addr` it is served only on a listener of its own, by a task on
//!   the caller's runtime.

mod access;
mod admission;
mod api;
mod assets;
mod channels;
mod clock;
mod cluster;
mod config;
mod conn;
mod deflate;
mod dispatch;
mod fanout;
mod flow;
mod frame;
mod history;
mod http;
mod membership;
mod metrics;
mod names;
mod presence;
mod publish;
mod registry;
mod remote;
mod roster;
mod shard;
mod stats;
mod tls;
mod tls_session;
mod tls_stream;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub use cluster::{check as check_cluster, ClusterError, DEFAULT_CHANNEL, DEFAULT_LEASE};
pub use config::{
    mask_url_password, ClusterConfig, Config, RateLimitAction, CLOSE_TIMEOUT,
    DEFAULT_MAX_CHANNELS_PER_CONNECTION, DEFAULT_MAX_CONNECTIONS_PER_IP, DEFAULT_MAX_MESSAGE_RATE,
    DEFAULT_MAX_NEW_CONNECTIONS_PER_SEC,
};
pub use deflate::{CompressionMode, DEFAULT_COMPRESSION_MIN_SIZE};
use fanout::{Fanout, Peers, ShardHandle, ShardMsg};
pub use history::{DEFAULT_HISTORY_MEMORY, DEFAULT_HISTORY_SIZE, DEFAULT_HISTORY_TTL};
use stats::Stats;
pub use tls::{server_config as tls_config, TlsError};

/// Pending-connection queue length asked of the kernel (capped by
/// `net.core.somaxconn`), so that connection storms are not refused.
const LISTEN_BACKLOG: i32 = 4096;

/// A bound, not yet running, server.
#[derive(Debug)]
pub struct Server {
    listener: std::net::TcpListener,
    config: Config,
    /// The `--metrics-addr` listener, once [`Server::bind_metrics`] bound it.
    metrics_listener: Option<std::net::TcpListener>,
}

impl Server {
    /// Binds the listening socket.
    ///
    /// # Errors
    /// The address is taken, not local, or not permitted.
    pub fn bind(config: Config) -> std::io::Result<Self> {
        let addr = config.addr;
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(false).ok();
        }
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            listener: socket.into(),
            config,
            metrics_listener: None,
        })
    }

    /// Binds [`Config::metrics_addr`], if set, and returns the address
    /// actually bound; [`Server::run`] then serves `/metrics` there.
    ///
    /// # Errors
    /// The address is taken, not local, or not permitted.
    pub fn bind_metrics(&mut self) -> std::io::Result<Option<SocketAddr>> {
        let Some(addr) = self.config.metrics_addr else {
            return Ok(None);
        };
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        self.metrics_listener = Some(listener);
        Ok(Some(local))
    }

    /// The address actually bound (with the kernel's port when asked for 0).
    ///
    /// # Errors
    /// Only if the OS cannot report the address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully: stops
    /// accepting, delivers what was already received, sends close 1001 to
    /// every client and waits for them up to the shutdown timeout.
    ///
    /// Must be called within a tokio runtime (any flavour); the shards run
    /// on threads of their own.
    ///
    /// # Errors
    /// If a worker thread cannot be started or the listener cannot be
    /// registered with the runtime.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        self.run_with_drain(std::future::pending(), shutdown).await
    }

    /// Like [`Server::run`], with a paced drain: when `drain` resolves
    /// (SIGTERM), the server stops taking new clients (upgrades get 503,
    /// `/readyz` says `draining`) and closes the connected ones with 1012,
    /// one at a time over [`Config::drain_period`], still serving the others
    /// meanwhile; then it shuts down as `run` does. `now` (a second SIGTERM,
    /// Ctrl+C) skips what is left of the drain. With a zero drain period,
    /// `drain` shuts down at once, like `now`.
    ///
    /// # Errors
    /// As for [`Server::run`].
    pub async fn run_with_drain(
        self,
        drain: impl Future<Output = ()>,
        now: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let config = Arc::new(self.config);
        let stats = Arc::new(Stats::new());
        let mut handles = Vec::with_capacity(config.workers);
        let mut inboxes = Vec::with_capacity(config.workers);
        for _ in 0..config.workers {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            handles.push(Arc::new(ShardHandle::new(tx)));
            inboxes.push(rx);
        }
        let mut fanout = Fanout::new(Peers {
            shards: handles.clone(),
        });
        if config.compression == CompressionMode::On {
            fanout = fanout.with_compression(fanout::Compression {
                min_size: config.compression_min_size,
                stats: stats.clone(),
            });
        }
        let history = match config.history_size {
            0 => None,
            size => Some(Arc::new(history::History::new(
                history::Limits {
                    size,
                    ttl: config.history_ttl,
                    memory: config.history_memory,
                },
                stats.history.clone(),
            ))),
        };
        let sweeper = history.clone().map(|history| {
            let every =
                (config.history_ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                loop {
                    ticks.tick().await;
                    history.sweep();
                }
            })
        });
        let channels =
            Arc::new(channels::Channels::new(config.workers, stats.clone()).with_history(history));
        let (presence_tx, presence_rx) = tokio::sync::mpsc::unbounded_channel();
        let (cluster, relay, to_cluster) = match &config.cluster {
            Some(c) => {
                let (local_tx, local) = tokio::sync::mpsc::unbounded_channel();
                let links = cluster::PresenceLinks {
                    local,
                    presence: presence_tx.clone(),
                };
                let (cluster, relay) =
                    cluster::start(c, fanout.clone(), channels.clone(), stats.clone(), links)?;
                shard::set_id_prefix(cluster::id_prefix(cluster.node()));
                (Some(cluster), Some(relay), Some(local_tx))
            }
            None => (None, None, None),
        };
        let presence = tokio::spawn(presence::run(
            presence_rx,
            presence::Targets {
                fanout: fanout.clone(),
                stats: stats.clone(),
                channels: channels.clone(),
                cluster: to_cluster,
            },
        ));
        let hub = Arc::new(
            shard::Hub::new(config.clone(), stats.clone(), presence_tx, channels.clone())
                .with_relay(relay),
        );
        let mut threads = Vec::with_capacity(config.workers);
        for (index, inbox) in inboxes.into_iter().enumerate() {
            threads.push(shard::spawn(
                index,
                config.clone(),
                fanout.clone(),
                handles[index].clone(),
                hub.clone(),
                inbox,
            )?);
        }

        if let Some(cluster) = &cluster {
            // Connections wait in the listen queue meanwhile.
            cluster.wait_up(Duration::from_secs(3)).await;
        }
        let metrics_server = match self.metrics_listener {
            Some(listener) => Some(tokio::spawn(metrics::serve(
                tokio::net::TcpListener::from_std(listener)?,
                stats.clone(),
                handles.clone(),
                config.workers,
            ))),
            None => None,
        };
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        tokio::pin!(drain, now);
        // Every shard's answer that its clients are gone, once a drain began.
        let mut drained: Pin<Box<dyn Future<Output = ()> + Send>> =
            Box::pin(std::future::pending());
        let mut draining = false;
        loop {
            tokio::select! {
                () = &mut now => break,
                () = &mut drain, if !draining => {
                    if config.drain_period.is_zero() {
                        break;
                    }
                    tracing::info!(period_secs = config.drain_period.as_secs_f64(), "draining");
                    hub.admission.start_draining();
                    draining = true;
                    drained = Box::pin(drain_shards(&handles, config.drain_period));
                }
                () = &mut drained => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => hand_over(&fanout, stream, peer),
                    Err(e) => accept_error(e).await,
                },
            }
        }
        drop(listener);
        tracing::info!("shutting down");

        // Phase 1: every shard stops publishing. Once all have answered, no
        // message can be added to any inbox, so phase 2 (queued behind
        // everything already published) delivers it all before the closes.
        let mut acks = Vec::with_capacity(handles.len());
        for handle in &handles {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if handle.send(ShardMsg::Quiesce(tx)) {
                acks.push(rx);
            }
        }
        for ack in acks {
            let _ = ack.await;
        }
        presence.abort();
        if let Some(task) = sweeper {
            task.abort();
        }
        if let Some(cluster) = cluster {
            cluster.stop(Duration::from_secs(1)).await;
        }
        for handle in &handles {
            handle.send(ShardMsg::Shutdown);
        }
        tokio::task::spawn_blocking(move || {
            for thread in threads {
                if thread.join().is_err() {
                    tracing::error!("a shard thread panicked");
                }
            }
        })
        .await
        .ok();
        if let Some(task) = metrics_server {
            task.abort();
        }
        tracing::info!(
            messages = stats.messages_in.load(Ordering::Relaxed),
            connections = stats.connections_total.load(Ordering::Relaxed),
            "stopped"
        );
        Ok(())
    }
}

/// Starts a paced drain on every shard; resolves once all have answered
/// that their clients are gone.
fn drain_shards(
    handles: &[Arc<ShardHandle>],
    period: Duration,
) -> impl Future<Output = ()> + Send + 'static {
    let mut acks = Vec::with_capacity(handles.len());
    for handle in handles {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if handle.send(ShardMsg::Drain(period, tx)) {
            acks.push(rx);
        }
    }
    async move {
        for ack in acks {
            let _ = ack.await;
        }
    }
}

/// Gives an accepted connection to the least-loaded shard.
fn hand_over(fanout: &Fanout, stream: tokio::net::TcpStream, peer: SocketAddr) {
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(cause = %e, "cannot detach accepted connection");
            return;
        }
    };
    if let Some(shard) = fanout.pick_shard() {
        let placement = fanout::Placement::new(shard.clone());
        shard.send(ShardMsg::Accept(stream, peer, placement));
    }
}

/// Accept failures are about one connection or a passing resource shortage
/// (out of file descriptors): never fatal. Back off briefly on the latter so
/// the loop does not spin.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock => {}
        _ => {
            tracing::warn!(cause = %e, "accept failed; retrying shortly");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
