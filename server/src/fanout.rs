//! Publishing a framed message to the shards that have members of its
//! channel.
//!
//! A message is framed once (server header + payload) into one [`Bytes`] by
//! the shard that received it, then pushed to the inbox of every shard with
//! a member of its channel (`channels` counts them per shard); a shard with
//! none is not sent it, and not woken. The set of
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

use crate::channels::{Channel, ChannelId};
use crate::flow::Credit;
use crate::stats::ShardMetrics;

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
    /// `broadcast.v2`: JSON events naming the channel, and commands.
    V2,
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
    /// The complete server frame for `broadcast.v2` clients (`None` when no
    /// such client was connected when the message was published).
    pub(crate) v2: Option<Bytes>,
    /// Who sent it, so that shards can skip the sender.
    pub(crate) sender: ConnId,
    /// Where it goes.
    pub(crate) channel: ChannelId,
    /// When the server read it (for the latency histogram).
    pub(crate) framed_at: Instant,
    /// Fan-out credit this copy holds on the shard it is sent to (set by
    /// [`Fanout::publish`]; returned by that shard once it is written).
    pub(crate) cost: u32,
    /// Its offset in the channel's history (0: none, e.g. history off or
    /// a presence update).
    pub(crate) offset: u64,
    /// The permessage-deflate frames of the encodings above, compressed
    /// once by the fan-out (`None`: no such encoding, or no client that
    /// negotiated the extension wants one).
    pub(crate) deflated: Option<Arc<Deflated>>,
}

/// A message's compressed frames (RSV1 set), one per format, shared by
/// every recipient that negotiated permessage-deflate.
#[derive(Debug, Default)]
pub(crate) struct Deflated {
    /// (format, window bits, frame): the 15-bit encoding of each format,
    /// and a narrower one where a client asked for it and the message is
    /// longer than its window.
    frames: smallvec::SmallVec<[(Format, u8, Bytes); 2]>,
}

impl Deflated {
    /// Adds the compressed frame of `format` made with a window of `bits`.
    pub(crate) fn push(&mut self, format: Format, bits: u8, frame: Bytes) {
        self.frames.push((format, bits, frame));
    }
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
    /// Who is in a channel (the HTTP API, v2's `members`): this shard's
    /// named members of it (see `roster`).
    Members(crate::roster::Query),
    /// A paced drain: close every client with 1012, one at a time over this
    /// period; answer once they are gone.
    Drain(Duration, oneshot::Sender<()>),
    /// Stop publishing and accepting upgrades; answer when done.
    Quiesce(oneshot::Sender<()>),
    /// Deliver what is queued, close every connection with 1001, and stop.
    Shutdown,
}

impl Broadcast {
    /// The frame a connection of `format` gets, if any: the compressed one
    /// when it negotiated permessage-deflate (`deflate`) and its window
    /// allows it, else the plain one.
    pub(crate) fn frame_for(
        &self,
        format: Format,
        deflate: Option<crate::deflate::Negotiated>,
    ) -> Option<&Bytes> {
        let plain = self.plain(format)?;
        if let (Some(n), Some(z)) = (deflate, &self.deflated) {
            let bits = n.encoding(plain);
            if let Some((_, _, frame)) = z.frames.iter().find(|f| f.0 == format && f.1 == bits) {
                return Some(frame);
            }
        }
        Some(plain)
    }

    fn plain(&self, format: Format) -> Option<&Bytes> {
        match format {
            Format::Raw => self.raw.as_ref(),
            Format::V1 => self.v1.as_ref(),
            Format::V2 => self.v2.as_ref(),
        }
    }

    /// Compresses each encoding that some connected client of its format
    /// negotiated permessage-deflate for: once per message, on the shard
    /// that publishes it, before it is copied to the other shards.
    fn deflate(&mut self, min_size: usize, stats: &crate::stats::DeflateStats) {
        use crate::deflate::{compress_frame, window_covers, MAX_WINDOW_BITS, MIN_WINDOW_BITS};
        let mut deflated = Deflated::default();
        for format in [Format::Raw, Format::V1, Format::V2] {
            if stats.clients_of(format).load(Ordering::Relaxed) == 0 {
                continue;
            }
            let Some(plain) = self.plain(format) else {
                continue;
            };
            let narrower = (MIN_WINDOW_BITS..MAX_WINDOW_BITS)
                .filter(|&bits| !window_covers(bits, plain) && stats.with_window(format, bits));
            for bits in std::iter::once(MAX_WINDOW_BITS).chain(narrower) {
                let Some(frame) = compress_frame(plain, min_size, bits) else {
                    break;
                };
                let payload = |f: &[u8]| (f.len() - crate::frame::server_header_len(f)) as u64;
                stats.messages.fetch_add(1, Ordering::Relaxed);
                stats
                    .bytes_before
                    .fetch_add(payload(plain), Ordering::Relaxed);
                stats
                    .bytes_after
                    .fetch_add(payload(&frame), Ordering::Relaxed);
                deflated.push(format, bits, frame);
            }
        }
        if !deflated.frames.is_empty() {
            self.deflated = Some(Arc::new(deflated));
        }
    }
}

/// What the fan-out needs to compress messages (`--compression on`).
#[derive(Debug)]
pub(crate) struct Compression {
    /// `--compression-min-size`.
    pub(crate) min_size: usize,
    pub(crate) stats: Arc<crate::stats::Stats>,
}

/// The sending side of one shard's inbox, plus its load for placement.
#[derive(Debug)]
pub(crate) struct ShardHandle {
    tx: mpsc::UnboundedSender<ShardMsg>,
    /// Open connections (HTTP and WebSocket) on this shard; used to place new ones.
    pub(crate) load: AtomicUsize,
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
    /// `None`: `--compression off`.
    compression: Option<Arc<Compression>>,
}

impl Fanout {
    pub(crate) fn new(peers: Peers) -> Self {
        Self {
            peers: Arc::new(ArcSwap::from_pointee(peers)),
            compression: None,
        }
    }

    /// Compresses messages for the clients that negotiate permessage-deflate.
    pub(crate) fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = Some(Arc::new(compression));
        self
    }

    /// Reserves the fan-out credit a message of `frame_len` bytes to
    /// `channel` needs on every shard with members of it, waiting (first
    /// come, first served) while a shard's budget is used up. `costs`
    /// receives what was taken per shard (0: the shard has no member and is
    /// skipped), to be passed to [`Fanout::publish`] (or
    /// [`Fanout::give_back`]). Returns how long it waited (zero on the fast
    /// path: one compare-and-swap per shard with members).
    pub(crate) async fn reserve(
        &self,
        channel: &Channel,
        frame_len: usize,
        costs: &mut Vec<u32>,
    ) -> Duration {
        let peers = self.peers.load();
        costs.clear();
        costs.extend((0..peers.shards.len()).map(|i| match channel.on_shard(i) {
            0 => 0,
            members => Credit::cost(frame_len, members),
        }));
        let Some(short) = peers
            .shards
            .iter()
            .zip(costs.iter())
            .position(|(s, &cost)| cost > 0 && !s.credit.try_take(cost))
        else {
            return Duration::ZERO;
        };
        // Slow path: hold the shards (not the snapshot guard) while waiting.
        let shards = peers.shards.clone();
        drop(peers);
        let started = Instant::now();
        for (shard, &cost) in shards.iter().zip(costs.iter()).skip(short) {
            if cost > 0 {
                shard.credit.take(cost).await;
            }
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

    /// Pushes `msg` to the inbox of every shard `costs` (what
    /// [`Fanout::reserve`] took) has a share for: one reference-count
    /// increment per shard, no copy, no lock.
    pub(crate) fn publish(&self, msg: Broadcast, costs: &[u32]) {
        debug_assert_eq!(self.peers.load().shards.len(), costs.len());
        self.send_all(msg, |i| costs.get(i).copied().filter(|&c| c > 0));
    }

    /// Like [`Fanout::publish`], and also to the shards that gained
    /// members of `channel` since the credit was reserved (with cost 0):
    /// called under the channel's history lock, so that a member that
    /// joined under it after reading its replay gets every later message.
    pub(crate) fn publish_logged(&self, msg: Broadcast, costs: &[u32], channel: &Channel) {
        self.send_all(msg, |i| match costs.get(i).copied() {
            Some(c) if c > 0 => Some(c),
            _ => (channel.on_shard(i) > 0).then_some(0),
        });
    }

    /// Publishes a message that holds no credit (presence updates: small,
    /// and at most two a second per channel) to the shards with members of
    /// `channel`.
    pub(crate) fn publish_free(&self, msg: Broadcast, channel: &Channel) {
        self.send_all(msg, |i| (channel.on_shard(i) > 0).then_some(0));
    }

    /// Sends a copy of `msg` holding `cost(i)` credit to each shard `i` for
    /// which it is `Some`; the last of them gets `msg` itself. Credit of a
    /// copy a stopped shard refused is given back.
    fn send_all(&self, mut msg: Broadcast, cost: impl Fn(usize) -> Option<u32>) {
        let peers = self.peers.load();
        let Some(last) = (0..peers.shards.len()).rev().find(|&i| cost(i).is_some()) else {
            return;
        };
        if let Some(c) = &self.compression {
            msg.deflate(c.min_size, &c.stats.deflate);
        }
        let send = |shard: &ShardHandle, msg: Broadcast| {
            let cost = msg.cost;
            if !shard.send(ShardMsg::Broadcast(msg)) {
                shard.credit.give_back(u64::from(cost));
            }
        };
        for (i, shard) in peers.shards[..last].iter().enumerate() {
            if let Some(cost) = cost(i) {
                let mut copy = msg.clone();
                copy.cost = cost;
                send(shard, copy);
            }
        }
        msg.cost = cost(last).unwrap_or(0);
        send(&peers.shards[last], msg);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::Channels;
    use crate::flow::Credit;
    use crate::stats::Stats;

    /// A fan-out over `n` shards whose inboxes the test reads.
    fn hub(n: usize) -> (Fanout, Vec<mpsc::UnboundedReceiver<ShardMsg>>) {
        let mut shards = Vec::new();
        let mut inboxes = Vec::new();
        for _ in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            shards.push(Arc::new(ShardHandle::new(tx)));
            inboxes.push(rx);
        }
        (Fanout::new(Peers { shards }), inboxes)
    }

    fn message(channel: ChannelId) -> Broadcast {
        Broadcast {
            raw: Some(Bytes::from_static(b"\x81\x02hi")),
            v1: None,
            v2: None,
            sender: ConnId(1),
            channel,
            framed_at: Instant::now(),
            cost: 0,
            offset: 0,
            deflated: None,
        }
    }

    /// What each inbox holds now: the credit of each broadcast.
    fn drain(inboxes: &mut [mpsc::UnboundedReceiver<ShardMsg>]) -> Vec<Vec<u32>> {
        inboxes
            .iter_mut()
            .map(|rx| {
                std::iter::from_fn(|| rx.try_recv().ok())
                    .map(|m| match m {
                        ShardMsg::Broadcast(b) => b.cost,
                        other => panic!("unexpected {other:?}"),
                    })
                    .collect()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_message_reaches_only_the_shards_with_members_of_its_channel() {
        let (fanout, mut inboxes) = hub(3);
        let channels = Channels::new(3, Arc::new(Stats::new()));
        // Channel a: 2 members on shard 0, 1 on shard 2; none on shard 1.
        let a = channels.join("a", 0);
        channels.join("a", 0);
        channels.join("a", 2);
        let mut costs = Vec::new();
        let waited = fanout.reserve(&a, 100, &mut costs).await;
        assert_eq!(waited, Duration::ZERO);
        assert_eq!(
            costs,
            [Credit::cost(100, 2), 0, Credit::cost(100, 1)],
            "credit from each shard's members of the channel"
        );
        fanout.publish(message(a.id), &costs);
        let got = drain(&mut inboxes);
        assert_eq!(got, [vec![costs[0]], vec![], vec![costs[2]]]);
        // The shards hold that credit until they give it back.
        let shards = fanout.shards();
        assert!(shards[0].credit.in_use_bytes() > 0);
        assert_eq!(shards[1].credit.in_use_bytes(), 0);

        // Presence is free and follows the same members.
        fanout.publish_free(message(a.id), &a);
        assert_eq!(drain(&mut inboxes), [vec![0], vec![], vec![0]]);

        // A channel with nobody here costs nothing and goes nowhere.
        let b = channels.join("b", 1);
        channels.leave(&b, 1);
        fanout.reserve(&b, 100, &mut costs).await;
        assert_eq!(costs, [0, 0, 0]);
        fanout.publish(message(b.id), &costs);
        assert_eq!(drain(&mut inboxes), [Vec::<u32>::new(), vec![], vec![]]);
    }

    #[tokio::test]
    async fn credit_of_a_stopped_shard_is_given_back() {
        let (fanout, mut inboxes) = hub(2);
        let channels = Channels::new(2, Arc::new(Stats::new()));
        let a = channels.join("a", 0);
        channels.join("a", 1);
        drop(inboxes.remove(1)); // shard 1 has stopped
        let mut costs = Vec::new();
        fanout.reserve(&a, 1000, &mut costs).await;
        fanout.publish(message(a.id), &costs);
        let shards = fanout.shards();
        assert_eq!(
            shards[1].credit.in_use_bytes(),
            0,
            "refused copy's credit returned"
        );
        assert!(shards[0].credit.in_use_bytes() > 0);
        assert_eq!(drain(&mut inboxes), [vec![costs[0]]]);
    }

    #[tokio::test]
    async fn a_publisher_waits_while_a_shard_is_over_its_budget() {
        let (fanout, mut inboxes) = hub(1);
        let channels = Channels::new(1, Arc::new(Stats::new()));
        let a = channels.join("a", 0);
        let mut costs = Vec::new();
        // One huge message takes the whole budget (its cost is capped at it).
        fanout.reserve(&a, usize::MAX / 2, &mut costs).await;
        fanout.publish(message(a.id), &costs);
        let mut next = Vec::new();
        let waiting = fanout.reserve(&a, 10, &mut next);
        tokio::pin!(waiting);
        let first = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(waiting.as_mut(), cx))
        })
        .await;
        assert!(
            first.is_pending(),
            "no credit left: the publisher must wait"
        );
        // The shard writes the first message and gives its credit back.
        let held = drain(&mut inboxes)[0][0];
        fanout.shards()[0].credit.give_back(u64::from(held));
        assert!(waiting.await > Duration::ZERO);
    }
}
