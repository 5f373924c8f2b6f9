//! A shard: one worker thread, its own current-thread tokio runtime, and the
//! connections pinned to it for their whole life.
//!
//! The shard's inbox (one FIFO queue) brings it new TCP connections,
//! broadcast frames from every shard, and shutdown steps. The dispatcher
//! takes the inbox in batches and writes each batch to every member socket
//! with one vectored write per socket, then returns the batch's fan-out
//! credit. While most of its connections are behind (the audience gate of
//! `flow`), it holds broadcast frames back, and with them their credit,
//! which is what slows the publishers down. Everything a shard owns is `Rc`
//! and `Cell`: no lock is taken on this thread.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::IoSlice;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::CloseReason;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

use crate::config::{Config, TokenBucket, CLOSE_TIMEOUT};
use crate::conn::{self, Conn, Queued, ShardCtx};
use crate::fanout::{Broadcast, ConnId, Fanout, Format, ShardHandle, ShardMsg, LOBBY};
use crate::flow::Audience;
use crate::names::Names;
use crate::presence::{Change, PresenceTx};
use crate::registry::Registry;
use crate::stats::Stats;

/// Most inbox messages taken per dispatch round.
const BATCH: usize = 256;

/// While the audience gate is closed, how often the dispatcher looks for
/// connections that have stopped reading altogether.
const STALL_CHECK: Duration = Duration::from_millis(250);

/// Most client addresses remembered as already logged for hitting
/// `--max-connections-per-ip`.
const LOGGED_IPS: usize = 4096;

/// Source of process-unique connection ids.
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// What all shards share besides the fan-out: counters, the names in use,
/// and the presence channel. None of it is touched per delivery.
#[derive(Debug)]
pub(crate) struct Hub {
    pub(crate) stats: Arc<Stats>,
    pub(crate) names: Names,
    pub(crate) presence: PresenceTx,
    /// Open WebSocket connections per client address (`--max-connections-per-ip`);
    /// touched only when a connection starts or ends.
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    /// Addresses already logged for hitting `--max-connections-per-ip`.
    per_ip_logged: Mutex<HashSet<IpAddr>>,
    /// Server-wide bucket of `--max-new-connections-per-sec`; taken once per upgrade.
    new_conns: Mutex<TokenBucket>,
    /// With `--redis`: where published messages go to reach other nodes.
    relay: Option<crate::cluster::Relay>,
}

impl Hub {
    pub(crate) fn new(stats: Arc<Stats>, presence: PresenceTx, new_conn_rate: u32) -> Self {
        Self {
            stats,
            names: Names::default(),
            presence,
            per_ip: Mutex::new(HashMap::new()),
            per_ip_logged: Mutex::new(HashSet::new()),
            new_conns: Mutex::new(TokenBucket::full(new_conn_rate, Instant::now())),
            relay: None,
        }
    }

    /// Also relays every published message to other nodes (`--redis`).
    pub(crate) fn with_relay(mut self, relay: Option<crate::cluster::Relay>) -> Self {
        self.relay = relay;
        self
    }
}

/// State of one shard, shared by the tasks on its thread.
#[derive(Debug)]
pub(crate) struct Shard {
    index: usize,
    config: Arc<Config>,
    fanout: Fanout,
    handle: Arc<ShardHandle>,
    hub: Arc<Hub>,
    /// What this shard's connections share (the audience gate, counters).
    ctx: Rc<ShardCtx>,
    registry: RefCell<Registry>,
    /// Set when shutdown starts: no more publishing or upgrades.
    draining: Cell<bool>,
    /// Signalled whenever a WebSocket connection ends.
    departed: Notify,
}

/// Starts shard `index` on its own thread.
pub(crate) fn spawn(
    index: usize,
    config: Arc<Config>,
    fanout: Fanout,
    handle: Arc<ShardHandle>,
    hub: Arc<Hub>,
    inbox: mpsc::UnboundedReceiver<ShardMsg>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("shard-{index}"))
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build_local(tokio::runtime::LocalOptions::default())
                .expect("cannot build the shard runtime");
            let ctx = Rc::new(ShardCtx {
                audience: Audience::default(),
                handle: handle.clone(),
                config: config.clone(),
            });
            let shard = Rc::new(Shard {
                index,
                config,
                fanout,
                handle,
                hub,
                ctx,
                registry: RefCell::new(Registry::default()),
                draining: Cell::new(false),
                departed: Notify::new(),
            });
            runtime.block_on(shard.run(inbox));
        })
}

impl Shard {
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.hub.stats
    }

    pub(crate) fn fanout(&self) -> &Fanout {
        &self.fanout
    }

    /// Whether messages must also be encoded as `broadcast.v1` events.
    pub(crate) fn has_v1_clients(&self) -> bool {
        self.hub.stats.v1_connections.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// This shard's own counters.
    pub(crate) fn metrics(&self) -> &crate::metrics::ShardMetrics {
        &self.handle.metrics
    }

    /// The `/metrics` document.
    pub(crate) fn metrics_text(&self) -> String {
        crate::metrics::render(&self.hub.stats, &self.fanout.shards(), self.config.workers)
    }

    /// Takes a token from `--max-new-connections-per-sec`; false: shed this upgrade.
    pub(crate) fn admit_new_connection(&self) -> bool {
        let rate = self.config.max_new_connections_per_sec;
        if rate == 0 {
            return true;
        }
        let mut bucket = self.hub.new_conns.lock().unwrap_or_else(|e| e.into_inner());
        bucket.take(rate, Instant::now())
    }

    /// Counts a connection from `ip` against `--max-connections-per-ip`.
    /// `Ok(Some(ip))`: counted, release it with [`Shard::release_ip`];
    /// `Ok(None)`: the limit is off; `Err(())`: over the limit.
    pub(crate) fn admit_ip(&self, ip: IpAddr) -> Result<Option<IpAddr>, ()> {
        let limit = self.config.max_connections_per_ip;
        if limit == 0 {
            return Ok(None);
        }
        let mut map = self.hub.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= limit {
            drop(map);
            let mut logged = self
                .hub
                .per_ip_logged
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if logged.len() < LOGGED_IPS && logged.insert(ip) {
                tracing::warn!(
                    %ip,
                    limit,
                    "refusing connections from this address: --max-connections-per-ip reached (logged once per address)"
                );
            }
            return Err(());
        }
        *n += 1;
        Ok(Some(ip))
    }

    /// Undoes [`Shard::admit_ip`].
    pub(crate) fn release_ip(&self, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return };
        let mut map = self.hub.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }

    async fn run(self: Rc<Self>, mut inbox: mpsc::UnboundedReceiver<ShardMsg>) {
        tracing::debug!(shard = self.index, "shard started");
        let keepalive = tokio::task::spawn_local(self.clone().keepalive());
        let mut msgs = Vec::with_capacity(BATCH);
        // Broadcast frames taken from the inbox, not yet written. Bounded by
        // this shard's fan-out credit: each of them holds some.
        let mut pending: VecDeque<Broadcast> = VecDeque::new();
        let mut frames: Vec<Broadcast> = Vec::with_capacity(BATCH);
        let mut stopping = false;
        loop {
            // Take what has arrived, without waiting.
            while msgs.len() < BATCH {
                match inbox.try_recv() {
                    Ok(msg) => msgs.push(msg),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        stopping = true;
                        break;
                    }
                }
            }
            for msg in msgs.drain(..) {
                stopping |= self.take(msg, &mut pending);
            }
            // Shutdown delivers everything already published, gate or not.
            if !pending.is_empty() && (stopping || !self.ctx.audience.congested()) {
                let n = pending.len().min(BATCH);
                frames.extend(pending.drain(..n));
                self.deliver(&frames);
                frames.clear();
                // Let the readers and flush tasks of this shard run too.
                tokio::task::yield_now().await;
                continue;
            }
            if stopping {
                break;
            }
            tokio::select! {
                n = inbox.recv_many(&mut msgs, BATCH) => {
                    if n == 0 {
                        stopping = true;
                    }
                }
                () = self.ctx.audience.progress(STALL_CHECK), if !pending.is_empty() => {
                    self.check_stalls();
                }
            }
        }
        self.close_all().await;
        keepalive.abort();
        tracing::debug!(shard = self.index, "shard stopped");
    }

    /// Handles one inbox message (broadcasts join `pending`); returns true
    /// on shutdown.
    fn take(self: &Rc<Self>, msg: ShardMsg, pending: &mut VecDeque<Broadcast>) -> bool {
        match msg {
            ShardMsg::Broadcast(b) => pending.push_back(b),
            ShardMsg::Accept(stream, peer) => self.accept(stream, peer),
            ShardMsg::Quiesce(done) => {
                self.draining.set(true);
                let _ = done.send(());
            }
            ShardMsg::Shutdown => return true,
        }
        false
    }

    /// The audience gate is closed: connections whose outbox has not moved
    /// for [`crate::flow::STALL_AFTER`] stop holding it closed.
    fn check_stalls(&self) {
        let now = Instant::now();
        for conn in self.registry.borrow().all() {
            conn.check_stall(now);
        }
    }

    /// Writes a batch of frames to every member socket.
    fn deliver(&self, frames: &[Broadcast]) {
        if frames.is_empty() {
            return;
        }
        let echo = self.config.echo;
        let max_backlog = self.config.max_backlog;
        let oldest = frames
            .iter()
            .map(|f| f.framed_at)
            .min()
            .unwrap_or_else(Instant::now);
        let mut written = 0u64;
        let mut picked: Vec<&Bytes> = Vec::with_capacity(frames.len());
        let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len());
        let mut overflowed = Vec::new();
        let mut deliveries = 0u64;
        let mut bytes_out = 0u64;
        let registry = self.registry.borrow();
        for (channel, members) in registry.channels() {
            if !frames.iter().any(|f| f.channel == channel) {
                continue;
            }
            for conn in members {
                if !conn.is_open() {
                    continue;
                }
                picked.clear();
                picked.extend(
                    frames
                        .iter()
                        .filter(|f| f.channel == channel && (echo || f.sender != conn.id))
                        // A presence event (no raw frame) built before this
                        // connection joined is older than its welcome.
                        .filter(|f| f.raw.is_some() || f.framed_at >= conn.joined_at)
                        .filter_map(|f| f.frame_for(conn.format)),
                );
                if picked.is_empty() {
                    continue;
                }
                deliveries += picked.len() as u64;
                bytes_out += picked.iter().map(|f| f.len() as u64).sum::<u64>();
                match conn.send_batch(&picked, &mut iov, max_backlog, oldest) {
                    Queued::Written => written += 1,
                    Queued::Ok => {}
                    Queued::Overflow => overflowed.push(conn.clone()),
                }
            }
        }
        drop(registry);
        // Shard-local tallies: a few relaxed adds per batch, none per delivery.
        let metrics = &self.handle.metrics;
        metrics.deliveries.fetch_add(deliveries, Ordering::Relaxed);
        metrics.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        // Sockets that took the whole batch; the rest is observed as their
        // flush tasks write it.
        if written > 0 {
            metrics.latency.observe(oldest.elapsed(), written);
        }
        // The batch is in the sockets or the outboxes: its credit is free.
        let credit: u64 = frames.iter().map(|f| u64::from(f.cost)).sum();
        self.handle.credit.give_back(credit);
        for conn in overflowed {
            self.hub
                .stats
                .slow_consumer_closes
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(conn = conn.id.0, "closing slow consumer");
            conn.close_with(CloseReason::SLOW_CONSUMER, true, CLOSE_TIMEOUT);
        }
    }

    /// Starts serving HTTP on a connection the acceptor handed over.
    fn accept(self: &Rc<Self>, stream: std::net::TcpStream, peer: std::net::SocketAddr) {
        match TcpStream::from_std(stream) {
            Ok(stream) => {
                tokio::task::spawn_local(crate::http::serve(self.clone(), stream, peer));
            }
            Err(e) => {
                self.handle.load.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(cause = %e, "cannot register accepted connection");
            }
        }
    }

    /// An HTTP connection on this shard ended (upgraded or not).
    pub(crate) fn http_done(&self) {
        self.handle.load.fetch_sub(1, Ordering::Relaxed);
    }

    /// Takes over a socket that completed the WebSocket upgrade.
    ///
    /// The caller has already counted it in `Stats::connections` (and its
    /// address, `ip`, against the per-address limit when that is on).
    /// `name` is the validated name the client asked for, if any.
    pub(crate) fn adopt(
        self: &Rc<Self>,
        stream: TcpStream,
        tls: Option<Box<rustls::ServerConnection>>,
        prefix: Bytes,
        format: Format,
        name: Option<String>,
        ip: Option<IpAddr>,
    ) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(cause = %e, "set_nodelay failed");
        }
        // Keep a backlog in the outbox (measured, bounded, seen by the
        // audience gate) instead of megabytes of kernel send buffer.
        if let Err(e) =
            socket2::SockRef::from(&stream).set_tcp_notsent_lowat(crate::flow::NOTSENT_LOWAT)
        {
            tracing::debug!(cause = %e, "TCP_NOTSENT_LOWAT failed");
        }
        let (reader, writer) = stream.into_split();
        let id = ConnId(NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed));
        let wanted = name.unwrap_or_else(|| protocol::v1::guest_name(id.0));
        let name = self.hub.names.claim(&wanted);
        let conn = Rc::new(Conn::new(
            id,
            LOBBY,
            format,
            name,
            (writer, tls),
            ip,
            self.ctx.clone(),
        ));
        self.handle.load.fetch_add(1, Ordering::Relaxed);
        self.handle.members.fetch_add(1, Ordering::Relaxed);
        self.ctx.audience.joined();
        self.hub
            .stats
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        if format == Format::V1 {
            self.hub
                .stats
                .v1_connections
                .fetch_add(1, Ordering::Relaxed);
            let welcome = protocol::v1::ServerEvent::Welcome {
                id: id.0,
                name: conn.name.to_string(),
                online: self.hub.stats.connections.load(Ordering::Relaxed) as u64,
                time: conn::unix_millis(),
            };
            conn.send_own(conn::frame_text(welcome.encode().as_bytes()));
        }
        let _ = self.hub.presence.send(Change::Joined(conn.peer()));
        self.registry.borrow_mut().insert(conn.clone());
        tracing::trace!(conn = id.0, shard = self.index, "connected");
        if self.draining.get() {
            self.hub
                .stats
                .shutdown_closes
                .fetch_add(1, Ordering::Relaxed);
            conn.close_with(
                CloseReason::SHUTTING_DOWN,
                false,
                self.config.shutdown_timeout,
            );
        }
        tokio::task::spawn_local(conn::serve(self.clone(), conn, reader, prefix));
    }

    /// Forgets a connection whose task is ending.
    pub(crate) fn unregister(&self, conn: &Conn) {
        self.registry.borrow_mut().remove(conn);
        conn.leave_audience();
        self.ctx.audience.left();
        self.handle.members.fetch_sub(1, Ordering::Relaxed);
        self.handle.load.fetch_sub(1, Ordering::Relaxed);
        self.hub.stats.connections.fetch_sub(1, Ordering::Relaxed);
        if conn.format == Format::V1 {
            self.hub
                .stats
                .v1_connections
                .fetch_sub(1, Ordering::Relaxed);
        }
        self.hub.names.release(&conn.name);
        self.release_ip(conn.ip);
        let _ = self.hub.presence.send(Change::Left(conn.peer()));
        tracing::trace!(conn = conn.id.0, "disconnected");
        self.departed.notify_waiters();
    }

    /// Publishes a message received on this shard (from the client named
    /// `name`) to every shard, and to the other nodes with `--redis`.
    /// `costs` is the fan-out credit reserved for it.
    pub(crate) fn publish(&self, msg: Broadcast, name: &str, costs: &[u32]) {
        if self.draining.get() {
            self.fanout.give_back(costs);
            return;
        }
        self.hub.stats.messages_in.fetch_add(1, Ordering::Relaxed);
        if let Some(relay) = &self.hub.relay {
            relay.offer(&msg, name);
        }
        self.fanout.publish(msg, costs);
    }

    pub(crate) fn note_violation(&self, reason: CloseReason) {
        let stats = &self.hub.stats;
        let counter = if reason == CloseReason::RATE_LIMITED {
            &stats.rate_limited_closes
        } else {
            &stats.protocol_closes
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            code = reason.code,
            reason = reason.reason,
            "closing connection"
        );
    }

    /// Pings connections silent for half the idle timeout and closes those
    /// silent for all of it.
    async fn keepalive(self: Rc<Self>) {
        let idle = self.config.idle_timeout;
        if idle.is_zero() {
            return;
        }
        let period = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let mut expired = Vec::new();
            let registry = self.registry.borrow();
            for conn in registry.all() {
                if !conn.is_open() {
                    continue;
                }
                let (silent, pinged) = conn.silence(now);
                if silent >= idle {
                    expired.push(conn.clone());
                } else if silent >= idle / 2 && !pinged {
                    conn.queue_ping();
                }
            }
            drop(registry);
            for conn in expired {
                self.hub.stats.idle_closes.fetch_add(1, Ordering::Relaxed);
                conn.close_with(CloseReason::IDLE_TIMEOUT, false, CLOSE_TIMEOUT);
            }
        }
    }

    /// Shutdown: everything queued before it has been handed to the sockets;
    /// now send 1001 to everyone after their queued data and wait for the
    /// closes, up to the shutdown timeout.
    async fn close_all(&self) {
        self.draining.set(true);
        let conns: Vec<Rc<Conn>> = self.registry.borrow().all().cloned().collect();
        for conn in &conns {
            if conn.is_open() {
                self.hub
                    .stats
                    .shutdown_closes
                    .fetch_add(1, Ordering::Relaxed);
            }
            conn.close_with(
                CloseReason::SHUTTING_DOWN,
                false,
                self.config.shutdown_timeout,
            );
        }
        drop(conns);
        let deadline = tokio::time::Instant::now() + self.config.shutdown_timeout;
        let all_gone = async {
            loop {
                let departed = self.departed.notified();
                if self.registry.borrow().len() == 0 {
                    return;
                }
                departed.await;
            }
        };
        if tokio::time::timeout_at(deadline, all_gone).await.is_err() {
            tracing::warn!(
                shard = self.index,
                remaining = self.registry.borrow().len(),
                "shutdown timeout: dropping connections that did not close"
            );
        }
    }
}
