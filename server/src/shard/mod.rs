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
//!
//! Files: this one (the thread, its runtime, the inbox loop, delivery),
//! `lifecycle` (accepting, adopting and forgetting connections),
//! `keepalive` (idle pings and closes, the shutdown closes).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::CloseReason;
use tokio::sync::{mpsc, Notify};

mod keepalive;
mod lifecycle;

use crate::admission::Admission;
use crate::channels::Channels;
use crate::config::{Config, CLOSE_TIMEOUT};
use crate::conn::{ConnCtx, Queued};
use crate::dispatch::{self, Plan};
use crate::fanout::{Broadcast, Fanout, ShardHandle, ShardMsg};
use crate::flow::Audience;
use crate::http::HttpCtx;
use crate::membership::Membership;
use crate::names::Names;
use crate::presence::PresenceTx;
use crate::publish::Publisher;
use crate::stats::Stats;

/// Most inbox messages taken per dispatch round. Large enough that, with
/// many channels, each socket still gets several frames per `writev`
/// (measured: 1,000 channels of 10, server CPU per delivery 0.53 → 0.43 µs
/// going from 256 to 1,024; one room of 100 unchanged within noise).
const BATCH: usize = 1024;

/// While the audience gate is closed, how often the dispatcher looks for
/// connections that have stopped reading altogether.
const STALL_CHECK: Duration = Duration::from_millis(250);

/// Source of connection ids: unique in the process and, with `--redis`,
/// in the cluster (the node's prefix in the high bits: [`set_id_prefix`]).
/// They stay below 2^52, exact as JSON numbers in JavaScript.
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Makes every connection id from now on `prefix` (20 bits, not 0) in bits
/// 32..52 and a counter below: ids from different nodes never meet.
pub(crate) fn set_id_prefix(prefix: u64) {
    NEXT_CONN_ID.store(((prefix & 0xF_FFFF) << 32) | 1, Ordering::Relaxed);
}

/// What all shards share besides the fan-out: counters, admission, the
/// names in use, and the presence channel. None of it is touched per
/// delivery.
#[derive(Debug)]
pub(crate) struct Hub {
    pub(crate) stats: Arc<Stats>,
    pub(crate) admission: Arc<Admission>,
    pub(crate) names: Names,
    pub(crate) presence: PresenceTx,
    /// The channels with members on this node.
    pub(crate) channels: Arc<Channels>,
    /// With `--redis`: where published messages go to reach other nodes.
    relay: Option<crate::cluster::Relay>,
}

impl Hub {
    pub(crate) fn new(
        config: Arc<Config>,
        stats: Arc<Stats>,
        presence: PresenceTx,
        channels: Arc<Channels>,
    ) -> Self {
        Self {
            admission: Admission::new(config, stats.clone()),
            stats,
            names: Names::default(),
            presence,
            channels,
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
    handle: Arc<ShardHandle>,
    hub: Arc<Hub>,
    /// What this shard's connections share (the audience gate, counters).
    ctx: Rc<ConnCtx>,
    /// What its HTTP connections need.
    http: Rc<HttpCtx>,
    /// Its connections and their channels.
    membership: Rc<Membership>,
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
            let membership = Rc::new(Membership::new(
                index,
                hub.channels.clone(),
                hub.presence.clone(),
            ));
            let ctx = Rc::new(ConnCtx {
                config: config.clone(),
                publisher: Publisher::new(fanout.clone(), hub.stats.clone(), hub.relay.clone())
                    .with_channels(hub.channels.clone()),
                audience: Audience::default(),
                handle: handle.clone(),
                stats: hub.stats.clone(),
                membership: membership.clone(),
            });
            let http = Rc::new(HttpCtx {
                config: config.clone(),
                stats: hub.stats.clone(),
                admission: hub.admission.clone(),
                fanout: fanout.clone(),
                channels: hub.channels.clone(),
                conn: ctx.clone(),
            });
            let shard = Rc::new(Shard {
                index,
                config,
                handle,
                hub,
                ctx,
                http,
                membership,
                departed: Notify::new(),
            });
            runtime.block_on(shard.run(inbox));
        })
}

impl Shard {
    pub(crate) fn is_draining(&self) -> bool {
        self.ctx.publisher.is_draining()
    }

    async fn run(self: Rc<Self>, mut inbox: mpsc::UnboundedReceiver<ShardMsg>) {
        tracing::debug!(shard = self.index, "shard started");
        let keepalive = tokio::task::spawn_local(self.clone().keepalive());
        let mut msgs = Vec::with_capacity(BATCH);
        // Broadcast frames taken from the inbox, not yet written. Bounded by
        // this shard's fan-out credit: each of them holds some.
        let mut pending: VecDeque<Broadcast> = VecDeque::new();
        let mut plan = Plan::default();
        let mut stopping = false;
        loop {
            // What `recv_many` brought, then what has arrived since,
            // without waiting (taken straight into `pending`: each move of
            // a `Broadcast` showed in profiles).
            let taken = msgs.len();
            for msg in msgs.drain(..) {
                stopping |= self.take(msg, &mut pending);
            }
            for _ in taken..BATCH {
                match inbox.try_recv() {
                    Ok(msg) => stopping |= self.take(msg, &mut pending),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        stopping = true;
                        break;
                    }
                }
            }
            // Shutdown delivers everything already published, gate or not.
            if !pending.is_empty() && (stopping || !self.ctx.audience.congested()) {
                let n = pending.len().min(BATCH);
                // Delivered in place (a deque drained whole starts again
                // at the front of its buffer, so this rarely moves any).
                self.deliver(&pending.make_contiguous()[..n], &mut plan);
                pending.drain(..n);
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
            ShardMsg::Accept(stream, peer, placement) => self.accept(stream, peer, placement),
            ShardMsg::Members(query) => {
                let registry = self.membership.registry();
                let conns = registry.members(query.channel);
                query.answer(conns);
            }
            ShardMsg::Drain(period, done) => {
                tokio::task::spawn_local(self.clone().drain_clients(period, done));
            }
            ShardMsg::Quiesce(done) => {
                self.ctx.publisher.drain();
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
        for conn in self.membership.registry().all() {
            conn.check_stall(now);
        }
    }

    /// Writes a batch of frames to the members of their channels.
    fn deliver(&self, frames: &[Broadcast], plan: &mut Plan) {
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
        plan.group(frames);
        let registry = self.membership.registry();
        for (channel, run) in plan.runs(frames) {
            for conn in registry.members(channel) {
                if !conn.is_open() {
                    continue;
                }
                let Some(to) = conn.recipient(channel) else {
                    continue;
                };
                dispatch::pick(frames, run, to, echo, &mut picked);
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
}
