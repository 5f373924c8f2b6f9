//! One WebSocket connection on its shard. This file holds the connection's
//! state and its closing handshake ([`serve`] runs a connection until it
//! ends); the jobs around it have a file each:
//! - `outbox`: the write side (outbox, direct writes, flush task);
//! - `reader`: the read side (frames, checks, admission of messages);
//! - `fragments`: reassembly of fragmented messages;
//! - `tls_io`: rustls record plumbing over the socket halves.
//!
//! A connection knows nothing of shards or registries: it gets a
//! [`ConnCtx`] (limits, publisher, flow-control view, counters).
//!
//! A connection is an `Rc<Conn>` owned by one shard thread. Three parties
//! touch it, all on that thread and never across an `.await` while borrowed:
//! - the shard's dispatcher writes broadcast frames straight to the socket
//!   when nothing is queued (one vectored `try_write` per batch), and queues
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
use std::io::{self};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::WebSocketError;
use protocol::close::CloseReason;
use protocol::frame::encode_server_frame;
use smallvec::SmallVec;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;

use crate::channels::{Channel, ChannelId};
use crate::config::{RateLimitAction, TokenBucket, CLOSE_TIMEOUT};
use crate::dispatch::Recipient;
use crate::fanout::{ConnId, Format, ShardHandle};
use crate::flow::{Audience, Lag};
use crate::frame;
use crate::membership::Membership;
use crate::publish::Publisher;
use crate::registry::Subscription;
use crate::stats::Stats;

mod fragments;
mod outbox;
mod reader;
mod tls_io;
mod v2;

pub(crate) use outbox::Queued;
use outbox::{Kind, Out, Outbox};
use reader::{read_loop, readable};
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
    pub(crate) membership: Rc<Membership>,
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
    writer: OwnedWriteHalf,
    /// The TLS session, on a `--tls-cert` server (boxed: plain connections
    /// pay one pointer).
    tls: Option<Box<RefCell<rustls::ServerConnection>>>,
    out: RefCell<Outbox>,
    close: Cell<CloseState>,
    /// When a close we started is given up on.
    close_deadline: Cell<Option<Instant>>,
    /// Last time bytes arrived from the peer.
    last_seen: Cell<Instant>,
    /// A keepalive ping was sent since the peer was last heard from.
    pinged: Cell<bool>,
    /// Wakes the connection's own task when the close state changes.
    wake: Notify,
    /// `--max-message-rate` (0: unlimited) and this connection's bucket.
    rate: u32,
    rate_action: RateLimitAction,
    bucket: Cell<TokenBucket>,
    /// Whether the outbox is behind, for the shard's audience gate.
    lag: Lag,
    /// The causes (bits of `HELD_*`) this publisher was already logged as
    /// held back for.
    held_back: Cell<u8>,
    ctx: Rc<ConnCtx>,
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
        (writer, tls): (OwnedWriteHalf, Option<Box<rustls::ServerConnection>>),
        ctx: Rc<ConnCtx>,
    ) -> Self {
        let (rate, rate_action) = (ctx.config.max_message_rate, ctx.config.rate_limit_action);
        let now = Instant::now();
        let tls = tls.map(|mut session| {
            session.set_buffer_limit(Some(crate::tls::TLS_BUFFER));
            Box::new(RefCell::new(*session))
        });
        Self {
            id,
            format,
            name: name.into_boxed_str(),
            slot: Cell::new(usize::MAX),
            subs: RefCell::default(),
            v2: None,
            writer,
            tls,
            out: RefCell::new(Outbox::default()),
            close: Cell::new(CloseState::Open),
            close_deadline: Cell::new(None),
            last_seen: Cell::new(now),
            pinged: Cell::new(false),
            wake: Notify::new(),
            rate,
            rate_action,
            bucket: Cell::new(TokenBucket::full(rate, now)),
            lag: Lag::new(now),
            held_back: Cell::new(0),
            ctx,
        }
    }

    /// Takes a token for one more message; `Err(wait)` when the connection
    /// is over `--max-message-rate` and the next token is `wait` away.
    fn take_message_token(&self) -> Result<(), Duration> {
        if self.rate == 0 {
            return Ok(());
        }
        let mut bucket = self.bucket.get();
        let ok = bucket.take(self.rate, Instant::now());
        self.bucket.set(bucket);
        if ok {
            Ok(())
        } else {
            Err(bucket.shortfall(self.rate))
        }
    }

    /// Updates the rate-limit bucket: the server kept this client waiting
    /// `waited` (`Some`), or its socket has been read empty (`None`).
    fn adjust_bucket(&self, waited: Option<Duration>) {
        if self.rate == 0 {
            return;
        }
        let mut bucket = self.bucket.get();
        match waited {
            Some(d) => bucket.forgive(self.rate, d),
            None => bucket.settle(self.rate),
        }
        self.bucket.set(bucket);
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
        })
    }

    /// The id of channel `name` if this connection is in it.
    pub(crate) fn subscription(&self, name: &str) -> Option<ChannelId> {
        let subs = self.subs.borrow();
        subs.iter()
            .find(|s| &*s.channel.name == name)
            .map(|s| s.channel.id)
    }

    /// The channel a plain or v1 client publishes to: the one its URL named
    /// (`None` once it has left it, while closing).
    pub(crate) fn home(&self) -> Option<Arc<Channel>> {
        self.subs.borrow().first().map(|s| s.channel.clone())
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

    /// Starts the closing handshake: queues a close frame with `payload`
    /// (after the queued data unless `drop_data`), and gives the peer
    /// `timeout` to answer before the connection is dropped.
    pub(crate) fn start_close(
        self: &Rc<Self>,
        payload: &[u8],
        notice: Option<Bytes>,
        drop_data: bool,
        timeout: Duration,
    ) {
        if !self.is_open() {
            return;
        }
        self.close.set(CloseState::Queued);
        self.close_deadline.set(Some(Instant::now() + timeout));
        let frame = Bytes::from(encode_server_frame(protocol::frame::OpCode::Close, payload));
        let mut out = self.out.borrow_mut();
        if drop_data {
            out.drop_unstarted();
        }
        let now = Instant::now();
        if let Some(notice) = notice {
            out.queue.push_back(Out {
                kind: Kind::Notice,
                bytes: notice,
                at: now,
            });
        }
        out.queue.push_back(Out {
            kind: Kind::Close,
            bytes: frame,
            at: now,
        });
        drop(out);
        self.kick();
        self.wake.notify_waiters();
    }

    /// Closes with `reason` (see [`Conn::start_close`]).
    pub(crate) fn close_with(
        self: &Rc<Self>,
        reason: CloseReason,
        drop_data: bool,
        timeout: Duration,
    ) {
        let notice = (self.format != Format::Raw).then(|| frame::notice(reason));
        self.start_close(&reason.payload(), notice, drop_data, timeout);
    }

    /// Whether the TLS session already holds input to parse (so waiting for
    /// the socket to become readable could wait forever).
    fn tls_has_input(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| {
            t.borrow_mut().process_new_packets().map_or(true, |state| {
                state.plaintext_bytes_to_read() > 0 || state.peer_has_closed()
            })
        })
    }

    /// Counts a close for a protocol violation (or the rate limit).
    fn note_violation(&self, reason: CloseReason) {
        let stats = &self.ctx.stats;
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

    /// Gives up on the connection at once: the kernel is told to reset it
    /// when the socket is closed (`SO_LINGER` 0), which frees its send
    /// buffer now instead of after minutes of retransmitting to a peer that
    /// does not read. Counted.
    fn abort(&self) {
        if self.close.get() == CloseState::Broken {
            return;
        }
        let _ = socket2::SockRef::from(self.writer.as_ref()).set_linger(Some(Duration::ZERO));
        self.ctx
            .handle
            .metrics
            .aborted
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            conn = self.id.0,
            "close not taken in time: connection reset"
        );
        self.mark_broken();
    }

    /// The socket failed: forget everything queued and wake the owner.
    fn mark_broken(&self) {
        self.close.set(CloseState::Broken);
        let mut out = self.out.borrow_mut();
        out.queue.clear();
        out.head_written = 0;
        out.data_bytes = 0;
        drop(out);
        self.wake.notify_waiters();
    }

    /// Notes that the peer was heard from.
    fn touch(&self) {
        self.last_seen.set(Instant::now());
        self.pinged.set(false);
    }

    /// How long the peer has been silent, and whether it was pinged since.
    pub(crate) fn silence(&self, now: Instant) -> (Duration, bool) {
        (
            now.saturating_duration_since(self.last_seen.get()),
            self.pinged.get(),
        )
    }

    /// Whether our close frame has not reached the socket.
    fn close_unsent(&self) -> bool {
        self.close.get() == CloseState::Queued
    }

    /// Resolves when the socket breaks or a close we started times out.
    async fn abandoned(&self) {
        loop {
            let notified = self.wake.notified();
            if self.close.get() == CloseState::Broken {
                return;
            }
            match self.close_deadline.get() {
                Some(deadline) => {
                    // Boxed: only closing connections pay for a timer.
                    let timer = Box::pin(tokio::time::sleep_until(deadline.into()));
                    tokio::select! {
                        () = timer => return,
                        () = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Resolves when our close frame is on the wire (or cannot be sent).
    async fn close_sent(&self) {
        loop {
            let notified = self.wake.notified();
            if matches!(self.close.get(), CloseState::Sent | CloseState::Broken) {
                return;
            }
            notified.await;
        }
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

/// Serves an upgraded connection until it is closed (the caller then
/// forgets it).
///
/// `prefix` holds bytes the client sent right behind its upgrade request,
/// which the HTTP layer had already read.
pub(crate) async fn serve(conn: Rc<Conn>, mut reader: OwnedReadHalf, prefix: Bytes) {
    let end = tokio::select! {
        biased;
        () = conn.abandoned() => {
            if conn.close_unsent() {
                // Our close frame is stuck behind data the peer does not read.
                conn.abort();
            }
            End::Gone
        }
        end = read_loop(&conn, &mut reader, prefix) => end,
    };
    // Closes the server started were counted by reason where it decided.
    if conn.close_deadline.get().is_none() {
        let stats = &conn.ctx.stats;
        match &end {
            End::PeerClose(_) => stats.peer_closes.fetch_add(1, Ordering::Relaxed),
            End::Gone => stats.dropped_closes.fetch_add(1, Ordering::Relaxed),
            End::Violation(_) => 0,
        };
    }
    match end {
        End::PeerClose(code) => {
            if conn.is_open() {
                // Answer with the same code; drop data that has not started
                // to go out (no data may follow a close frame).
                let payload = code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
                conn.start_close(&payload, None, true, CLOSE_TIMEOUT);
                let sent = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, conn.close_sent())).await;
                if sent.is_err() {
                    conn.abort();
                }
            }
            // Both close frames are exchanged: the server closes TCP first.
        }
        End::Violation(reason) => {
            conn.note_violation(reason);
            // Let this shard's dispatcher run first, so that messages this
            // connection sent before the violation reach it (with --echo)
            // ahead of the close, as Autobahn's strict cases expect.
            tokio::task::yield_now().await;
            conn.close_with(reason, true, CLOSE_TIMEOUT);
            Box::pin(linger(&conn, &mut reader)).await;
        }
        End::Gone => {}
    }
}

/// After failing a connection: let the close frame go out, half-close, and
/// discard input until the peer closes (bounded), so that unread input does
/// not turn our close into a reset that destroys the close frame.
async fn linger(conn: &Conn, reader: &mut OwnedReadHalf) {
    let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
    let drain = async {
        conn.close_sent().await;
        if conn.close.get() == CloseState::Broken {
            return;
        }
        if let Some(tls) = &conn.tls {
            // Best effort: the WebSocket close frame is what matters.
            tls.borrow_mut().send_close_notify();
            let _ = conn.flush_tls();
        }
        let _ = socket2::SockRef::from(conn.writer.as_ref()).shutdown(std::net::Shutdown::Write);
        let mut sink = [0u8; 1024];
        loop {
            if readable(reader).await.is_err() {
                return;
            }
            match reader.try_read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    if tokio::time::timeout_at(deadline, drain).await.is_err() && conn.close_unsent() {
        conn.abort();
    }
}
