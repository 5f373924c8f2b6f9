//! Publishing a framed message to every shard.
//!
//! A message is framed once (server header + payload) into one [`Bytes`] by
//! the shard that received it, then pushed to every shard's inbox. The set of
//! inboxes is an `arc-swap` snapshot ([`Peers`]): publishing loads it without
//! a lock or a reference-count write. Today the set is built once at start
//! and never replaced (shards live as long as the server; the Redis relay
//! sits beside it, in `publish`); the snapshot is what would let shards come
//! and go without stopping publishers, and it costs publishing nothing.
//! Each receiving shard writes the same shared bytes to its own sockets.
//!
//! Before publishing, a publisher reserves fan-out credit on every shard
//! ([`Fanout::reserve`]); the shard gives it back once the message is
//! written. That is what bounds the inboxes: see `flow` for the design.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::flow::Credit;
use crate::stats::ShardMetrics;

/// Identifies a broadcast domain ("room"). Every connection is in
/// [`LOBBY`] today; the registry and the messages already carry the channel
/// so that per-channel fan-out needs no new plumbing.
pub(crate) type ChannelId = u32;

/// The channel every connection joins.
pub(crate) const LOBBY: ChannelId = 0;

/// A connection's id, unique in this process for its lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnId(pub(crate) u64);

/// How a connection wants messages: the raw broadcast, or `broadcast.v1` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// The payload exactly as the sender sent it.
    Raw,
    /// A JSON `broadcast.v1` event (sender, name, time, payload).
    V1,
}

/// One framed message on its way to every shard, encoded at most once per
/// format: recipients of a format all share the same bytes.
#[derive(Debug, Clone)]
pub(crate) struct Broadcast {
    /// The complete server frame for raw clients (`None`: nothing for them,
    /// e.g. a presence update).
    pub(crate) raw: Option<Bytes>,
    /// The complete server frame for `broadcast.v1` clients (`None` when no
    /// such client was connected when the message was published).
    pub(crate) v1: Option<Bytes>,
    /// Who sent it, so that shards can skip the sender.
    pub(crate) sender: ConnId,
    /// Where it goes.
    pub(crate) channel: ChannelId,
    /// When the server read it (for the latency histogram).
    pub(crate) framed_at: Instant,
    /// Fan-out credit this copy holds on the shard it is sent to (set by
    /// [`Fanout::publish`]; returned by that shard once it is written).
    pub(crate) cost: u32,
}

/// What a shard's inbox carries. Everything goes through one FIFO queue so
/// that a shard sees broadcasts and control messages in the order they were
/// sent.
#[derive(Debug)]
pub(crate) enum ShardMsg {
    /// A message to write to this shard's members of its channel.
    Broadcast(Broadcast),
    /// A freshly accepted TCP connection to serve on this shard, counted
    /// in its load for as long as the placement lives.
    Accept(std::net::TcpStream, SocketAddr, Placement),
    /// Stop publishing and accepting upgrades; answer when done.
    Quiesce(oneshot::Sender<()>),
    /// Deliver what is queued, close every connection with 1001, and stop.
    Shutdown,
}

impl Broadcast {
    /// The frame a connection of `format` gets, if any.
    pub(crate) fn frame_for(&self, format: Format) -> Option<&Bytes> {
        match format {
            Format::Raw => self.raw.as_ref(),
            Format::V1 => self.v1.as_ref(),
        }
    }
}

/// The sending side of one shard's inbox, plus its load for placement.
#[derive(Debug)]
pub(crate) struct ShardHandle {
    tx: mpsc::UnboundedSender<ShardMsg>,
    /// Open connections (HTTP and WebSocket) on this shard; used to place new ones.
    pub(crate) load: AtomicUsize,
    /// WebSocket connections registered on this shard (the recipients a
    /// message's fan-out cost is computed from).
    pub(crate) members: AtomicUsize,
    /// This shard's fan-out budget (see `flow`).
    pub(crate) credit: Credit,
    /// Counters this shard keeps (written only by the shard itself).
    pub(crate) metrics: ShardMetrics,
}

impl ShardHandle {
    pub(crate) fn new(tx: mpsc::UnboundedSender<ShardMsg>) -> Self {
        Self {
            tx,
            load: AtomicUsize::new(0),
            members: AtomicUsize::new(0),
            credit: Credit::default(),
            metrics: ShardMetrics::default(),
        }
    }

    /// Queues `msg`; returns false when the shard has stopped.
    pub(crate) fn send(&self, msg: ShardMsg) -> bool {
        self.tx.send(msg).is_ok()
    }
}

/// A connection's place in its shard's load (what placement balances):
/// taken when the acceptor picks the shard, given back when dropped, from
/// the HTTP phase through the WebSocket connection's whole life.
#[derive(Debug)]
pub(crate) struct Placement(Arc<ShardHandle>);

impl Placement {
    pub(crate) fn new(shard: Arc<ShardHandle>) -> Self {
        shard.load.fetch_add(1, Ordering::Relaxed);
        Self(shard)
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        self.0.load.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The snapshot of shard inboxes publishers fan out to.
#[derive(Debug)]
pub(crate) struct Peers {
    pub(crate) shards: Vec<Arc<ShardHandle>>,
}

/// Shared handle to the current [`Peers`] snapshot.
#[derive(Debug, Clone)]
pub(crate) struct Fanout {
    peers: Arc<ArcSwap<Peers>>,
}

impl Fanout {
    pub(crate) fn new(peers: Peers) -> Self {
        Self {
            peers: Arc::new(ArcSwap::from_pointee(peers)),
        }
    }

    /// Reserves the fan-out credit a message of `frame_len` bytes needs on
    /// every shard, waiting (first come, first served) while a shard's
    /// budget is used up. `costs` receives what was taken per shard, to be
    /// passed to [`Fanout::publish`] (or [`Fanout::give_back`]). Returns how
    /// long it waited (zero on the fast path: one compare-and-swap per shard).
    pub(crate) async fn reserve(&self, frame_len: usize, costs: &mut Vec<u32>) -> Duration {
        let peers = self.peers.load();
        costs.clear();
        costs.extend(
            peers
                .shards
                .iter()
                .map(|s| Credit::cost(frame_len, s.members.load(Ordering::Relaxed))),
        );
        let Some(short) = peers
            .shards
            .iter()
            .zip(costs.iter())
            .position(|(s, &cost)| !s.credit.try_take(cost))
        else {
            return Duration::ZERO;
        };
        // Slow path: hold the shards (not the snapshot guard) while waiting.
        let shards = peers.shards.clone();
        drop(peers);
        let started = Instant::now();
        for (shard, &cost) in shards.iter().zip(costs.iter()).skip(short) {
            shard.credit.take(cost).await;
        }
        started.elapsed()
    }

    /// Returns credit reserved for a message that is not published after all.
    pub(crate) fn give_back(&self, costs: &[u32]) {
        let peers = self.peers.load();
        for (shard, &cost) in peers.shards.iter().zip(costs) {
            shard.credit.give_back(u64::from(cost));
        }
    }

    /// Pushes `msg` to every shard's inbox: one reference-count increment per
    /// shard, no copy, no lock. `costs` is what [`Fanout::reserve`] took.
    pub(crate) fn publish(&self, msg: Broadcast, costs: &[u32]) {
        debug_assert_eq!(self.peers.load().shards.len(), costs.len());
        self.send_all(msg, |i| costs.get(i).copied().unwrap_or(0));
    }

    /// Publishes a message that holds no credit (presence updates: small,
    /// and at most two a second).
    pub(crate) fn publish_free(&self, msg: Broadcast) {
        self.send_all(msg, |_| 0);
    }

    /// Sends a copy of `msg` holding `cost(i)` credit to shard `i`; the last
    /// shard gets `msg` itself (one reference-count increment per other
    /// shard). Credit of a copy a stopped shard refused is given back.
    fn send_all(&self, mut msg: Broadcast, cost: impl Fn(usize) -> u32) {
        let peers = self.peers.load();
        let Some((last, rest)) = peers.shards.split_last() else {
            return;
        };
        for (i, shard) in rest.iter().enumerate() {
            let mut copy = msg.clone();
            copy.cost = cost(i);
            if !shard.send(ShardMsg::Broadcast(copy)) {
                shard.credit.give_back(u64::from(cost(i)));
            }
        }
        msg.cost = cost(rest.len());
        if !last.send(ShardMsg::Broadcast(msg)) {
            last.credit.give_back(u64::from(cost(rest.len())));
        }
    }

    /// The current set of shards (for `/metrics`).
    pub(crate) fn shards(&self) -> Vec<Arc<ShardHandle>> {
        self.peers.load().shards.clone()
    }

    /// The least-loaded shard (ties go to the lowest index), for a new connection.
    pub(crate) fn pick_shard(&self) -> Option<Arc<ShardHandle>> {
        let peers = self.peers.load();
        peers
            .shards
            .iter()
            .min_by_key(|s| s.load.load(Ordering::Relaxed))
            .cloned()
    }
}
