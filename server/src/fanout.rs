//! Publishing a framed message to every shard.
//!
//! A message is framed once (server header + payload) into one [`Bytes`] by
//! the shard that received it, then pushed to every shard's inbox. The set of
//! inboxes is an `arc-swap` snapshot ([`Peers`]): publishing loads it without
//! a lock or a reference-count write, and the set can be replaced at run time
//! (for example to add a relay to other nodes) without stopping publishers.
//! Each receiving shard writes the same shared bytes to its own sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::ShardMetrics;

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
    /// When the publishing shard framed it (for the latency histogram).
    pub(crate) framed_at: Instant,
}

/// What a shard's inbox carries. Everything goes through one FIFO queue so
/// that a shard sees broadcasts and control messages in the order they were
/// sent.
#[derive(Debug)]
pub(crate) enum ShardMsg {
    /// A message to write to this shard's members of its channel.
    Broadcast(Broadcast),
    /// A freshly accepted TCP connection to serve on this shard.
    Accept(std::net::TcpStream, SocketAddr),
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
    /// Counters this shard keeps (written only by the shard itself).
    pub(crate) metrics: ShardMetrics,
}

impl ShardHandle {
    pub(crate) fn new(tx: mpsc::UnboundedSender<ShardMsg>) -> Self {
        Self {
            tx,
            load: AtomicUsize::new(0),
            metrics: ShardMetrics::default(),
        }
    }

    /// Queues `msg`; returns false when the shard has stopped.
    pub(crate) fn send(&self, msg: ShardMsg) -> bool {
        self.tx.send(msg).is_ok()
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

    /// Pushes `msg` to every shard's inbox: one reference-count increment per
    /// shard, no copy, no lock.
    pub(crate) fn publish(&self, msg: Broadcast) {
        let peers = self.peers.load();
        if let Some((last, rest)) = peers.shards.split_last() {
            for shard in rest {
                shard.send(ShardMsg::Broadcast(msg.clone()));
            }
            last.send(ShardMsg::Broadcast(msg));
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
