//! One WebSocket connection on its shard. This file holds the connection's
//! state; the jobs around it have a file each:
//! - `close`: the closing handshake and [`serve`], which runs a connection
//!   until it ends;
//! - `outbox`: the write side (outbox, direct writes, flush task);
//! - `reader`: the read side (frames, checks, admission of messages);
//! - `v2`: the `broadcast.v2` commands;
//! - `fragments`: reassembly of fragmented messages;
//! - `tls_io`: TLS reads over the socket's read half;
//! - `signal`: the wake-up of its tasks when its close state changes.
//!
//! A connection knows nothing of shards or registries: it gets a
//! [`ConnCtx`] (limits, publisher, flow-control view, counters, and the
//! shard's `Membership` for v2's subscribe and unsubscribe).
//!
//! A connection is an `Rc<Conn>` owned by one shard thread. Three parties
//! touch it, all on that thread and never across an `.await` while borrowed:
//! - the shard's dispatcher writes broadcast frames straight to the socket
//!   when nothing is queued (one `send` or `sendmsg` per batch), and queues
//!   the rest;
//! - a flush task, spawned only while bytes are queued, drains the queue when
//!   the socket is writable;
//! - the connection's own task ([`serve`]) reads frames, publishes messages,
//!   answers pings and runs the closing handshake.
//!
//! The reader applies the flow control of `flow`: before publishing a
//! message it takes the message's fan-out credit (and, with
//! `--max-message-rate`, a token), waiting without reading its socket when
//! there is none, so TCP slows the sender down. The writer keeps its
//! shard's `Audience` informed of whether its outbox is empty.
//!
//! Idle connections cost little memory: the reader creates fastwebsockets'
//! `WebSocketRead` (which allocates an 8 KiB buffer) only when the socket is
//! readable, and drops it again as soon as every byte it was given has been
//! parsed into frames. A silent connection holds no read buffer at all.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastwebsockets::WebSocketError;
use protocol::close::CloseReason;
use smallvec::SmallVec;
use tokio::net::tcp::OwnedWriteHalf;

use crate::channels::{Channel, ChannelId};
use crate::config::TokenBucket;
use crate::dispatch::Recipient;
use crate::fanout::{ConnId, Format, ShardHandle};
use crate::flow::{Audience, Lag};
use crate::publish::Publisher;
use crate::stats::Stats;

mod close;
mod fragments;
mod outbox;
mod reader;
mod resume;
mod signal;
mod tls_io;
mod v2;

pub(crate) use close::serve;
use outbox::Outbox;
pub(crate) use outbox::Queued;
pub(crate) use resume::Start;
pub(crate) use v2::V2State;

/// Everything a connection needs from the rest of the server, and nothing
/// more: its limits, where it publishes, the flow-control view it shares
/// with the other connections of its shard, and the counters it updates.
/// One per shard, shared by that shard's connections.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub(crate) config: Arc<crate::config::Config>,
    pub(crate) publisher: Publisher,
    pub(crate) audience: Audience,
    /// The shard's fan-out credit and its own counters.
    pub(crate) handle: Arc<ShardHandle>,
    pub(crate) stats: Arc<Stats>,
    /// Joining and leaving channels on this shard.
    pub(crate) membership: Rc<dyn Subscriptions>,
}

/// Longest a newcomer's first message waits for its join to be published.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(1);

/// One channel a connection is in.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub(crate) channel: Arc<Channel>,
    /// Position in the registry's member list of the channel.
    pub(crate) slot: Cell<usize>,
    /// When it joined: presence events built before that are not sent to it
    /// (its welcome or subscribe answer already counted everyone).
    pub(crate) joined_at: Instant,
    /// Its join is known to have gone out in a presence event (or needs
    /// not): its messages may be published without waiting for it.
    pub(crate) announced: Cell<bool>,
    /// The channel's messages up to this offset were replayed to it on
    /// joining (0: none), so their live copies are skipped.
    pub(crate) after: Cell<u64>,
}

/// How a `broadcast.v2` connection joins and leaves channels: the shard's
/// `Membership` (a trait here, so that this module needs nothing of it).
pub(crate) trait Subscriptions: std::fmt::Debug {
    /// Puts `conn` in channel `name` (valid, not joined yet); returns it.
    fn join(&self, conn: &Rc<Conn>, name: &str) -> Arc<Channel>;
    /// Takes `conn` out of channel `name`; the channel if it was in it.
    fn leave(&self, conn: &Conn, name: &str) -> Option<Arc<Channel>>;
    /// Channel `name`, if this node has members of it.
    fn lookup(&self, name: &str) -> Option<Arc<Channel>>;
    /// Members of `channel` in the whole cluster (this node's alone
    /// without `--redis`).
    fn online(&self, channel: &Channel) -> u64;
    /// Members of channel `name` on the other nodes, and the named ones
    /// among them by id (`--redis`; none otherwise).
    fn remote(&self, name: &str) -> (u64, Vec<protocol::v1::Peer>);

    /// Publishes the presence changes still gathered for `channel` now,
    /// instead of at the end of the coalescing interval; resolves once
    /// they are in the shards' inboxes (or at once if presence has
    /// stopped).
    fn announce(&self, channel: &Channel) -> tokio::sync::oneshot::Receiver<()>;
}

/// Where a connection is in its closing handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseState {
    /// Data flows both ways.
    Open,
    /// Our close frame is queued; no more data is queued after it.
    Queued,
    /// Our close frame has been written to the socket.
    Sent,
    /// The socket failed; nothing more can be written.
    Broken,
}

/// A WebSocket connection's shared state.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) id: ConnId,
    /// Raw broadcast or `broadcast.v1` events.
    pub(crate) format: Format,
    /// Display name (unique on the server, see `names`).
    pub(crate) name: Box<str>,
    /// Position in the shard registry's list (maintained by the registry).
    pub(crate) slot: Cell<usize>,
    /// The channels it is in (maintained by the registry). A plain or v1
    /// client is in exactly one, the one its URL named, kept inline.
    pub(crate) subs: RefCell<SmallVec<[Subscription; 1]>>,
    /// `broadcast.v2` state (commands), for v2 clients only.
    pub(crate) v2: Option<Box<V2State>>,
    /// What it negotiated of permessage-deflate (`None`: not used).
    pub(crate) deflate: Option<crate::deflate::Negotiated>,
    writer: OwnedWriteHalf,
    /// The TLS session, on a `--tls-cert` server (boxed: plain connections
    /// pay one pointer).
    tls: Option<Box<RefCell<crate::tls_session::TlsSession>>>,
    out: RefCell<Outbox>,
    close: Cell<CloseState>,
    /// When a close we started is given up on.
    close_deadline: Cell<Option<Instant>>,
    /// A drain's close (1012): the peer's messages are still published
    /// until its close frame arrives. A publisher moving to another node
    /// cannot tell which of the messages it sent after our close would be
    /// dropped; this way none is (they all precede its answer).
    input_until_answer: Cell<bool>,
    /// Last time bytes arrived from the peer.
    /// (In [`crate::clock::millis`]: 4 bytes, not an `Instant`'s 16.)
    last_seen: Cell<u32>,
    /// A keepalive ping was sent since the peer was last heard from.
    pinged: Cell<bool>,
    /// Wakes the connection's own task when the close state changes.
    wake: signal::Signal,
    /// This connection's `--max-message-rate` bucket; `None` (no
    /// allocation) when the limit is off, the default.
    bucket: Option<Box<Cell<TokenBucket>>>,
    /// Whether the outbox is behind, for the shard's audience gate.
    lag: Lag,
    /// The causes (bits of `HELD_*`) this publisher was already logged as
    /// held back for.
    held_back: Cell<u8>,
    ctx: Rc<ConnCtx>,
    /// Its place in the server's admission counts, given back when the
    /// connection is dropped. Here rather than in its task: it fits this
    /// struct's size class, and the task would take the next one.
    _admission: crate::admission::Ticket,
}

/// `Conn::held_back` bit: waited for fan-out credit.
const HELD_FANOUT: u8 = 1;
/// `Conn::held_back` bit: waited for a rate-limit token.
const HELD_RATE: u8 = 2;

impl Conn {
    /// A connection writing to the socket's write half, through the TLS
    /// session when there is one.
    pub(crate) fn new(
        id: ConnId,
        format: Format,
        name: String,
        (writer, tls): (OwnedWriteHalf, Option<Box<crate::tls_session::TlsSession>>),
        ctx: Rc<ConnCtx>,
        admission: crate::admission::Ticket,
    ) -> Self {
        let rate = ctx.config.max_message_rate;
        let now = Instant::now();
        let tls = tls.map(|session| Box::new(RefCell::new(*session)));
        Self {
            id,
            format,
            name: name.into_boxed_str(),
            slot: Cell::new(usize::MAX),
            subs: RefCell::default(),
            v2: None,
            deflate: None,
            writer,
            tls,
            out: RefCell::new(Outbox::default()),
            close: Cell::new(CloseState::Open),
            close_deadline: Cell::new(None),
            input_until_answer: Cell::new(false),
            last_seen: Cell::new(crate::clock::millis(now)),
            pinged: Cell::new(false),
            wake: signal::Signal::default(),
            bucket: (rate > 0).then(|| Box::new(Cell::new(TokenBucket::full(rate, now)))),
            lag: Lag::new(now),
            held_back: Cell::new(0),
            ctx,
            _admission: admission,
        }
    }

    /// Takes a token for one more message; `Err(wait)` when the connection
    /// is over `--max-message-rate` and the next token is `wait` away.
    fn take_message_token(&self) -> Result<(), Duration> {
        let Some(cell) = &self.bucket else {
            return Ok(());
        };
        let rate = self.ctx.config.max_message_rate;
        let mut bucket = cell.get();
        let ok = bucket.take(rate, Instant::now());
        cell.set(bucket);
        if ok {
            Ok(())
        } else {
            Err(bucket.shortfall(rate))
        }
    }

    /// Updates the rate-limit bucket: the server kept this client waiting
    /// `waited` (`Some`), or its socket has been read empty (`None`).
    fn adjust_bucket(&self, waited: Option<Duration>) {
        let Some(cell) = &self.bucket else {
            return;
        };
        let rate = self.ctx.config.max_message_rate;
        let mut bucket = cell.get();
        match waited {
            Some(d) => bucket.forgive(rate, d),
            None => bucket.settle(rate),
        }
        cell.set(bucket);
    }

    /// Counts time this publisher was held back, and logs the first time
    /// per cause.
    fn held(&self, cause: u8, waited: Duration) {
        let metrics = &self.ctx.handle.metrics;
        let counter = if cause == HELD_FANOUT {
            &metrics.paused_fanout_nanos
        } else {
            &metrics.paused_rate_nanos
        };
        counter.fetch_add(
            u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let logged = self.held_back.get();
        if logged & cause == 0 {
            self.held_back.set(logged | cause);
            tracing::debug!(
                conn = self.id.0,
                cause = if cause == HELD_FANOUT {
                    "fan-out backlog"
                } else {
                    "rate limit"
                },
                "publisher held back: not reading from it until it may send again"
            );
        }
        // Not reading is the server's doing: it does not count as silence.
        self.touch();
    }

    /// Leaves the shard's audience (the connection is going away).
    pub(crate) fn leave_audience(&self) {
        self.lag.caught_up(&self.ctx.audience);
    }

    /// Marks the connection stalled if its outbox has not moved for a
    /// while (see `flow`).
    pub(crate) fn check_stall(&self, now: Instant) {
        self.lag.check_stall(&self.ctx.audience, now);
    }

    /// This connection as presence updates name it.
    /// How dispatch sees this connection as a member of `channel` (`None`:
    /// it is not in it).
    pub(crate) fn recipient(&self, channel: ChannelId) -> Option<Recipient> {
        let subs = self.subs.borrow();
        let sub = subs.iter().find(|s| s.channel.id == channel)?;
        Some(Recipient {
            id: self.id,
            format: self.format,
            joined_at: sub.joined_at,
            after: sub.after.get(),
            deflate: self.deflate,
        })
    }

    /// Before this connection's first message to `channel`, if it joined
    /// moments ago: has its join published now (see `presence`), so that
    /// every member sees "X joined" before X's first message. Waits at
    /// most [`ANNOUNCE_WAIT`]; once per subscription, nothing after.
    pub(crate) async fn announce_join(&self, channel: &Channel) {
        let due = {
            let subs = self.subs.borrow();
            match subs.iter().find(|s| s.channel.id == channel.id) {
                Some(sub) if !sub.announced.get() => {
                    sub.announced.set(true);
                    // Older joins have gone out with their interval.
                    sub.joined_at.elapsed() < crate::presence::PRESENCE_INTERVAL * 2
                }
                _ => false,
            }
        };
        if due {
            let flushed = self.ctx.membership.announce(channel);
            let _ = tokio::time::timeout(ANNOUNCE_WAIT, flushed).await;
        }
    }

    /// The id of channel `name` if this connection is in it.
    pub(crate) fn subscription(&self, name: &str) -> Option<ChannelId> {
        let subs = self.subs.borrow();
        subs.iter()
            .find(|s| &*s.channel.name == name)
            .map(|s| s.channel.id)
    }

    pub(crate) fn peer(&self) -> protocol::v1::Peer {
        protocol::v1::Peer {
            id: self.id.0,
            name: self.name.to_string(),
        }
    }

    /// Whether broadcast data may still be queued for this connection.
    pub(crate) fn is_open(&self) -> bool {
        self.close.get() == CloseState::Open
    }

    /// Whether a message read from this connection is still published: yes
    /// unless the server has started its closing handshake (data after a
    /// close is discarded). A connection whose socket broke while its
    /// message waited (for fan-out credit, or for its join to be announced)
    /// still publishes it: it was received whole. After a drain's close
    /// (1012), input is taken until the peer's answer.
    pub(crate) fn takes_input(&self) -> bool {
        matches!(self.close.get(), CloseState::Open | CloseState::Broken)
            || self.input_until_answer.get()
    }

    /// Whether the TLS session already holds input to parse (so waiting for
    /// the socket to become readable could wait forever).
    fn tls_has_input(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.borrow().has_input())
    }

    /// Notes that the peer was heard from.
    fn touch(&self) {
        self.last_seen.set(crate::clock::millis(Instant::now()));
        self.pinged.set(false);
    }

    /// How long the peer has been silent, and whether it was pinged since.
    pub(crate) fn silence(&self, now: Instant) -> (Duration, bool) {
        (
            crate::clock::since(now, self.last_seen.get()),
            self.pinged.get(),
        )
    }
}

/// Why a connection's read side ended.
#[derive(Debug)]
enum End {
    /// The peer sent a close frame (with this code, if any).
    PeerClose(Option<u16>),
    /// The peer broke the protocol; close with this reason.
    Violation(CloseReason),
    /// The socket reached EOF or failed.
    Gone,
}

impl From<WebSocketError> for End {
    fn from(e: WebSocketError) -> Self {
        use WebSocketError as E;
        match e {
            E::InvalidUTF8 => End::Violation(CloseReason::INVALID_UTF8),
            E::FrameTooLarge => End::Violation(CloseReason::MESSAGE_TOO_BIG),
            E::ReservedBitsNotZero => End::Violation(CloseReason::protocol("reserved bits set")),
            E::ControlFrameFragmented => {
                End::Violation(CloseReason::protocol("fragmented control frame"))
            }
            E::PingFrameTooLarge => End::Violation(CloseReason::protocol("control frame too long")),
            E::InvalidValue => End::Violation(CloseReason::protocol("unknown opcode")),
            E::UnexpectedEOF | E::IoError(_) => End::Gone,
            _ => End::Violation(CloseReason::protocol("protocol error")),
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every idle connection holds a `Conn` in an `Rc` (16 bytes of counts
    /// in front), which jemalloc rounds up to a size class: crossing a class
    /// boundary costs the whole next class per connection
    /// (docs/benchmarks.md, "Idle connections").
    #[test]
    fn conn_stays_in_its_size_class() {
        let size = std::mem::size_of::<super::Conn>();
        eprintln!("Conn: {size} bytes");
        assert!(size + 16 <= 320, "Conn is {size} bytes");
    }
}
