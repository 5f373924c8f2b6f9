//! One WebSocket connection on its shard: the outbound queue and writer, the
//! reader, and the closing handshake.
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
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Role, WebSocketError};
use protocol::close::{self, CloseReason};
use protocol::frame::{encode_server_frame, encode_server_header, MAX_SERVER_HEADER};
use protocol::utf8::Utf8Validator;
use protocol::v1::BodyRef;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;

use crate::config::{RateLimitAction, TokenBucket, CLOSE_TIMEOUT};
use crate::fanout::{Broadcast, ChannelId, ConnId, Format, ShardHandle};
use crate::flow::{Audience, Lag};
use crate::shard::Shard;

/// What a connection shares with the other connections of its shard: the
/// flow-control view of their outboxes, and the shard's counters.
#[derive(Debug)]
pub(crate) struct ShardCtx {
    pub(crate) audience: Audience,
    pub(crate) handle: Arc<ShardHandle>,
    pub(crate) config: Arc<crate::config::Config>,
}

/// Most slices handed to one `writev` by the flush task.
const MAX_IOV: usize = 64;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Data,
    Ping,
    Pong,
    /// A `broadcast.v1` notice explaining the close that follows; like
    /// control frames, never dropped and not counted in the backlog.
    Notice,
    Close,
}

/// A frame waiting to be written.
#[derive(Debug)]
struct Out {
    kind: Kind,
    bytes: Bytes,
    /// When the server read the message (data frames; for the latency
    /// histogram).
    at: Instant,
}

/// Frames waiting for the socket to accept them.
#[derive(Debug, Default)]
struct Outbox {
    queue: VecDeque<Out>,
    /// Bytes of `queue[0]` already written: control frames may only be
    /// inserted after it when this is non-zero.
    head_written: usize,
    /// Unwritten bytes of data frames: what `--max-backlog` bounds.
    data_bytes: usize,
    /// A flush task is running for this connection.
    flushing: bool,
    /// Our close frame left the queue (with TLS it may still sit in the
    /// session's buffer until that is flushed).
    close_written: bool,
}

impl Outbox {
    /// Index at which a control frame can go: the first frame boundary.
    fn boundary(&self) -> usize {
        usize::from(self.head_written > 0)
    }

    /// Records that `n` more bytes were written; returns whether a close
    /// frame was completed, and when the oldest data frame completed by
    /// these bytes was read.
    fn consume(&mut self, mut n: usize) -> (bool, Option<Instant>) {
        let mut close_written = false;
        let mut oldest: Option<Instant> = None;
        while n > 0 {
            let front = &self.queue[0];
            let rest = front.bytes.len() - self.head_written;
            let step = rest.min(n);
            if front.kind == Kind::Data {
                self.data_bytes -= step;
            }
            n -= step;
            if step == rest {
                close_written |= front.kind == Kind::Close;
                if front.kind == Kind::Data {
                    oldest = Some(oldest.map_or(front.at, |o| o.min(front.at)));
                }
                self.queue.pop_front();
                self.head_written = 0;
            } else {
                self.head_written += step;
            }
        }
        (close_written, oldest)
    }

    /// Drops every queued frame that has not started to go out.
    fn drop_unstarted(&mut self) {
        let keep = self.boundary();
        self.queue.truncate(keep);
        self.data_bytes = match self.queue.front() {
            Some(front) if front.kind == Kind::Data => front.bytes.len() - self.head_written,
            _ => 0,
        };
    }
}

/// Outcome of queueing broadcast data for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queued {
    /// All of it went to the socket at once.
    Written,
    /// Some of it waits in the outbox, within the backlog budget.
    Ok,
    /// The backlog is over budget: the caller closes the connection.
    Overflow,
}

/// A WebSocket connection's shared state.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) id: ConnId,
    pub(crate) channel: ChannelId,
    /// Raw broadcast or `broadcast.v1` events.
    pub(crate) format: Format,
    /// Display name (unique on the server, see `names`).
    pub(crate) name: Box<str>,
    /// Position in the shard registry's member list (maintained by the registry).
    pub(crate) slot: Cell<usize>,
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
    /// When the connection was registered: presence events built before it
    /// are not sent to it (its welcome already counts everyone online).
    pub(crate) joined_at: Instant,
    /// A keepalive ping was sent since the peer was last heard from.
    pinged: Cell<bool>,
    /// Wakes the connection's own task when the close state changes.
    wake: Notify,
    /// The client address, when it counts against `--max-connections-per-ip`.
    pub(crate) ip: Option<IpAddr>,
    /// `--max-message-rate` (0: unlimited) and this connection's bucket.
    rate: u32,
    rate_action: RateLimitAction,
    bucket: Cell<TokenBucket>,
    /// Whether the outbox is behind, for the shard's audience gate.
    lag: Lag,
    /// The causes (bits of `HELD_*`) this publisher was already logged as
    /// held back for.
    held_back: Cell<u8>,
    ctx: Rc<ShardCtx>,
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
        channel: ChannelId,
        format: Format,
        name: String,
        (writer, tls): (OwnedWriteHalf, Option<Box<rustls::ServerConnection>>),
        ip: Option<IpAddr>,
        ctx: Rc<ShardCtx>,
    ) -> Self {
        let (rate, rate_action) = (ctx.config.max_message_rate, ctx.config.rate_limit_action);
        let now = Instant::now();
        let tls = tls.map(|mut session| {
            session.set_buffer_limit(Some(crate::tls::TLS_BUFFER));
            Box::new(RefCell::new(*session))
        });
        Self {
            id,
            channel,
            format,
            name: name.into_boxed_str(),
            slot: Cell::new(usize::MAX),
            writer,
            tls,
            out: RefCell::new(Outbox::default()),
            close: Cell::new(CloseState::Open),
            close_deadline: Cell::new(None),
            last_seen: Cell::new(now),
            joined_at: now,
            pinged: Cell::new(false),
            wake: Notify::new(),
            ip,
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

    /// The outbox (or the TLS session) holds bytes: a flush task takes
    /// over, and the shard counts this connection as behind.
    fn begin_flush(&self, out: &mut Outbox) {
        out.flushing = true;
        self.lag.fell_behind(&self.ctx.audience);
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

    /// Writes `frames` to the socket, or queues what it does not take now.
    ///
    /// When nothing is queued this is one vectored `try_write` straight from
    /// the shared frames; only the unwritten tail is queued (by reference
    /// count, never copied).
    pub(crate) fn send_batch<'a>(
        self: &Rc<Self>,
        frames: &[&'a Bytes],
        iov: &mut Vec<IoSlice<'a>>,
        max_backlog: usize,
        read_at: Instant,
    ) -> Queued {
        let mut out = self.out.borrow_mut();
        let mut written = 0;
        if out.queue.is_empty() && !out.flushing {
            iov.clear();
            iov.extend(frames.iter().map(|f| IoSlice::new(f)));
            match self.write_wire(iov) {
                Ok(n) => written = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    drop(out);
                    self.mark_broken();
                    return Queued::Ok;
                }
            }
        }
        for &frame in frames {
            if written >= frame.len() {
                written -= frame.len();
                continue;
            }
            if written > 0 {
                // Only the first unwritten frame can be partly written, and
                // only when the queue was empty: it becomes the head.
                debug_assert!(out.queue.is_empty());
                out.head_written = written;
            }
            out.data_bytes += frame.len() - written;
            written = 0;
            out.queue.push_back(Out {
                kind: Kind::Data,
                bytes: frame.clone(),
                at: read_at,
            });
        }
        let over = out.data_bytes > max_backlog;
        let queued = !out.queue.is_empty();
        let start_flush = (queued || self.tls_pending()) && !out.flushing;
        if start_flush {
            self.begin_flush(&mut out);
        }
        drop(out);
        if start_flush {
            tokio::task::spawn_local(flush(self.clone()));
        }
        if over {
            Queued::Overflow
        } else if queued {
            Queued::Ok
        } else {
            Queued::Written
        }
    }

    /// Sends a frame meant for this connection only (the v1 welcome).
    pub(crate) fn send_own(self: &Rc<Self>, frame: Bytes) {
        if !self.is_open() {
            return;
        }
        let mut out = self.out.borrow_mut();
        out.data_bytes += frame.len();
        out.queue.push_back(Out {
            kind: Kind::Data,
            bytes: frame,
            at: Instant::now(),
        });
        drop(out);
        self.kick();
    }

    /// Queues a pong answering a ping with `payload`. Only the newest
    /// unanswered ping gets a pong (RFC 6455 §5.5.3), which bounds ping floods.
    fn queue_pong(self: &Rc<Self>, payload: &[u8]) {
        if !self.is_open() {
            return;
        }
        let bytes = Bytes::from(encode_server_frame(protocol::frame::OpCode::Pong, payload));
        let mut out = self.out.borrow_mut();
        let at = out.boundary();
        let end = out.queue.len().min(at + 2);
        if let Some(pending) = out.queue.range_mut(at..end).find(|o| o.kind == Kind::Pong) {
            pending.bytes = bytes;
            return;
        }
        out.queue.insert(
            at,
            Out {
                kind: Kind::Pong,
                bytes,
                at: Instant::now(),
            },
        );
        drop(out);
        self.kick();
    }

    /// Sends a keepalive ping (empty payload) at the next frame boundary.
    pub(crate) fn queue_ping(self: &Rc<Self>) {
        if !self.is_open() {
            return;
        }
        let bytes = Bytes::from_static(b"\x89\x00");
        let mut out = self.out.borrow_mut();
        let at = out.boundary();
        out.queue.insert(
            at,
            Out {
                kind: Kind::Ping,
                bytes,
                at: Instant::now(),
            },
        );
        drop(out);
        self.pinged.set(true);
        self.kick();
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
        let notice = (self.format == Format::V1).then(|| {
            let event = protocol::v1::ServerEvent::Notice {
                code: reason.code,
                text: notice_text(reason).to_owned(),
            };
            frame_text(event.encode().as_bytes())
        });
        self.start_close(&reason.payload(), notice, drop_data, timeout);
    }

    /// Makes sure queued frames are being written: writes what the socket
    /// takes now and leaves the rest to a flush task.
    fn kick(self: &Rc<Self>) {
        if self.out.borrow().flushing {
            return;
        }
        if self.write_queued() == Flush::Pending {
            self.begin_flush(&mut self.out.borrow_mut());
            tokio::task::spawn_local(flush(self.clone()));
        }
    }

    /// Writes queued frames until the queue is empty or the socket is full.
    fn write_queued(&self) -> Flush {
        let mut out = self.out.borrow_mut();
        loop {
            if out.queue.is_empty() {
                // With TLS, encrypted records may still wait for the socket.
                match self.flush_tls() {
                    Ok(true) => {}
                    Ok(false) => return Flush::Pending,
                    Err(_) => {
                        drop(out);
                        self.mark_broken();
                        return Flush::Broken;
                    }
                }
                if out.close_written && self.close.get() == CloseState::Queued {
                    self.close.set(CloseState::Sent);
                    self.wake.notify_waiters();
                }
                return Flush::Done;
            }
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut k = 0;
            for (i, o) in out.queue.iter().take(MAX_IOV).enumerate() {
                let start = if i == 0 { out.head_written } else { 0 };
                iov[k] = IoSlice::new(&o.bytes[start..]);
                k += 1;
            }
            match self.write_wire(&iov[..k]) {
                Ok(0) => {
                    drop(out);
                    self.mark_broken();
                    return Flush::Broken;
                }
                Ok(n) => {
                    let (close_written, oldest) = out.consume(n);
                    out.close_written |= close_written;
                    let now = Instant::now();
                    self.lag.moved(&self.ctx.audience, now);
                    if let Some(read_at) = oldest {
                        let latency = &self.ctx.handle.metrics.latency;
                        latency.observe(now.saturating_duration_since(read_at), 1);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flush::Pending,
                Err(_) => {
                    drop(out);
                    self.mark_broken();
                    return Flush::Broken;
                }
            }
        }
    }

    /// Writes `iov` to the peer and returns how many of its bytes were
    /// taken: straight to the socket, or with TLS encrypted into the
    /// session's bounded buffer, written out, and again, until the socket
    /// is full or everything is taken (so a TLS connection takes as much
    /// per call as a plain one). `WouldBlock` when nothing was taken.
    fn write_wire(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        let Some(tls) = &self.tls else {
            return self.writer.try_write_vectored(iov);
        };
        let mut taken = 0;
        while self.flush_tls()? {
            let n = encrypt(&mut tls.borrow_mut(), iov, taken)?;
            if n == 0 {
                break;
            }
            taken += n;
        }
        // Records the socket did not take are written by the flush task.
        if taken == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// Writes the TLS session's pending records; true when none are left
    /// (always true without TLS).
    fn flush_tls(&self) -> io::Result<bool> {
        let Some(tls) = &self.tls else {
            return Ok(true);
        };
        let mut session = tls.borrow_mut();
        while session.wants_write() {
            match session.write_tls(&mut SocketWriter(&self.writer)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Whether TLS records are waiting for the socket.
    fn tls_pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.borrow().wants_write())
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

/// Encrypts the bytes of `iov` after the first `skip` into the session's
/// buffer, as far as its limit allows; returns how many it took.
fn encrypt(
    session: &mut rustls::ServerConnection,
    iov: &[IoSlice<'_>],
    mut skip: usize,
) -> io::Result<usize> {
    let mut taken = 0;
    for slice in iov {
        if skip >= slice.len() {
            skip -= slice.len();
            continue;
        }
        let part = &slice[skip..];
        skip = 0;
        let n = io::Write::write(&mut session.writer(), part)?;
        taken += n;
        if n < part.len() {
            break;
        }
    }
    Ok(taken)
}

/// `std::io::Write` over the socket's write half, never blocking (what
/// rustls writes its records to).
struct SocketWriter<'a>(&'a OwnedWriteHalf);

impl io::Write for SocketWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `std::io::Read` over the socket's read half, never blocking (what rustls
/// reads records from).
struct SocketReader<'a>(&'a OwnedReadHalf);

impl io::Read for SocketReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    Done,
    Pending,
    Broken,
}

/// Waits until the socket is readable.
///
/// Polls readiness through the socket's single reader waker slot rather
/// than tokio's `readable()` waiter list: hyper's connection task left its
/// waker in that slot, and replacing it here is what releases hyper's
/// (kilobytes large) finished task after the upgrade.
async fn readable(rd: &OwnedReadHalf) -> io::Result<()> {
    std::future::poll_fn(|cx| rd.as_ref().poll_read_ready(cx)).await
}

/// Waits until the socket is writable (see [`readable`] for why it polls).
async fn writable(wr: &OwnedWriteHalf) -> io::Result<()> {
    std::future::poll_fn(|cx| wr.as_ref().poll_write_ready(cx)).await
}

/// Drains a connection's queue as the socket becomes writable; exits when
/// the queue is empty or the connection is given up.
async fn flush(conn: Rc<Conn>) {
    loop {
        let woken = conn.wake.notified();
        if conn.close.get() == CloseState::Broken {
            break;
        }
        tokio::select! {
            ready = writable(&conn.writer) => {
                if ready.is_err() {
                    conn.mark_broken();
                    break;
                }
            }
            () = woken => continue,
        }
        if conn.write_queued() != Flush::Pending {
            break;
        }
    }
    conn.out.borrow_mut().flushing = false;
    conn.lag.caught_up(&conn.ctx.audience);
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

/// Serves an upgraded connection until it is closed, then unregisters it.
///
/// `prefix` holds bytes the client sent right behind its upgrade request,
/// which the HTTP layer had already read.
pub(crate) async fn serve(
    shard: Rc<Shard>,
    conn: Rc<Conn>,
    mut reader: OwnedReadHalf,
    prefix: Bytes,
) {
    let end = tokio::select! {
        biased;
        () = conn.abandoned() => {
            if conn.close_unsent() {
                // Our close frame is stuck behind data the peer does not read.
                conn.abort();
            }
            End::Gone
        }
        end = read_loop(&shard, &conn, &mut reader, prefix) => end,
    };
    // Closes the server started were counted by reason where it decided.
    if conn.close_deadline.get().is_none() {
        let stats = shard.stats();
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
            shard.note_violation(reason);
            // Let this shard's dispatcher run first, so that messages this
            // connection sent before the violation reach it (with --echo)
            // ahead of the close, as Autobahn's strict cases expect.
            tokio::task::yield_now().await;
            conn.close_with(reason, true, CLOSE_TIMEOUT);
            Box::pin(linger(&conn, &mut reader)).await;
        }
        End::Gone => {}
    }
    shard.unregister(&conn);
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

/// Feeds fastwebsockets' reader from the socket (after any bytes the HTTP
/// layer had read ahead) and counts what it handed over.
struct Source<'a> {
    prefix: &'a mut Bytes,
    rd: &'a mut OwnedReadHalf,
    delivered: &'a Cell<u64>,
    conn: &'a Rc<Conn>,
}

impl AsyncRead for Source<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // Release hyper's read buffer, which the prefix points into.
                *this.prefix = Bytes::new();
            }
            this.delivered.set(this.delivered.get() + n as u64);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match &this.conn.tls {
            None => ready!(Pin::new(&mut *this.rd).poll_read(cx, buf))?,
            Some(tls) => ready!(poll_read_tls(this.conn, tls, this.rd, cx, buf))?,
        }
        let n = buf.filled().len() - before;
        if n > 0 {
            this.delivered.set(this.delivered.get() + n as u64);
            this.conn.touch();
        }
        Poll::Ready(Ok(()))
    }
}

/// Reads plaintext from a TLS connection: what the session already holds,
/// else records from the socket. Ready with nothing read means the end of
/// the stream.
fn poll_read_tls(
    conn: &Rc<Conn>,
    tls: &RefCell<rustls::ServerConnection>,
    rd: &OwnedReadHalf,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    loop {
        let mut session = tls.borrow_mut();
        match io::Read::read(&mut session.reader(), buf.initialize_unfilled()) {
            Ok(n) => {
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // The peer closed TCP without TLS close_notify: an end, too.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(())),
            Err(e) => return Poll::Ready(Err(e)),
        }
        match session.read_tls(&mut SocketReader(rd)) {
            Ok(0) => return Poll::Ready(Ok(())),
            Ok(_) => {
                let processed = session.process_new_packets();
                // An alert to send, or an answer to a key update.
                let reply = session.wants_write();
                drop(session);
                if reply {
                    conn.kick();
                }
                if let Err(e) = processed {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                drop(session);
                ready!(rd.as_ref().poll_read_ready(cx))?;
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// Reads frames until the connection ends.
///
/// While the socket is quiet this future only waits for readability: the
/// parsing state (fastwebsockets' `WebSocketRead`, whose buffer is 8 KiB,
/// and its futures) lives in a boxed [`read_burst`] that exists only while
/// bytes are arriving, so idle connections stay small.
async fn read_loop(
    shard: &Shard,
    conn: &Rc<Conn>,
    rd: &mut OwnedReadHalf,
    mut prefix: Bytes,
) -> End {
    if prefix.is_empty() {
        // An empty slice may still hold hyper's whole read buffer alive.
        prefix = Bytes::new();
    }
    let mut message = Assembly::default();
    let mut costs = Vec::new();
    loop {
        if prefix.is_empty() && !conn.tls_has_input() {
            let ready = std::future::poll_fn(|cx| Poll::Ready(rd.as_ref().poll_read_ready(cx)));
            if ready.await.is_pending() {
                // Read empty: whatever backlog forgiven tokens were for is gone.
                conn.adjust_bucket(None);
                if readable(rd).await.is_err() {
                    return End::Gone;
                }
            }
        }
        let burst = read_burst(shard, conn, rd, &mut prefix, &mut message, &mut costs);
        if let Some(end) = Box::pin(burst).await {
            return end;
        }
    }
}

/// Parses frames until every byte read so far has been consumed (or the
/// connection ends). It is never dropped in the middle of a frame, which
/// fastwebsockets' reader would not survive.
async fn read_burst(
    shard: &Shard,
    conn: &Rc<Conn>,
    rd: &mut OwnedReadHalf,
    prefix: &mut Bytes,
    message: &mut Assembly,
    costs: &mut Vec<u32>,
) -> Option<End> {
    let max_message = shard.config().max_message_size;
    let delivered = Cell::new(0u64);
    let source = Source {
        prefix,
        rd,
        delivered: &delivered,
        conn,
    };
    let (mut ws, _) =
        fastwebsockets::after_handshake_split(source, tokio::io::sink(), Role::Server);
    ws.set_auto_close(false);
    ws.set_auto_pong(false);
    // fastwebsockets rejects a frame when `len >= max`.
    ws.set_max_message_size(max_message.saturating_add(1));
    let mut consumed = 0u64;
    let end = async {
        loop {
            let mut frame = match ws
                .read_frame(&mut |_: Frame<'_>| {
                    std::future::ready(Ok::<(), std::convert::Infallible>(()))
                })
                .await
            {
                Ok(frame) => frame,
                Err(e) => return Some(e.into()),
            };
            let mut head = [0u8; 14];
            let head_len = frame.fmt_head(&mut head);
            consumed += (head_len + frame.payload.len()) as u64;
            // fastwebsockets unmasks but does not reject unmasked frames, which
            // RFC 6455 §5.1 requires of a server. The mask bit survives in the
            // re-encoded header.
            if head[1] & 0x80 == 0 {
                return Some(End::Violation(CloseReason::protocol(
                    "unmasked client frame",
                )));
            }
            let read_at = Instant::now();
            match on_frame(conn, message, max_message, frame) {
                Step::Next => {}
                Step::End(end) => return Some(end),
                Step::Message(raw) => {
                    if let Err(end) = admit(shard, conn, raw, read_at, costs).await {
                        return Some(end);
                    }
                }
            }
            // Everything handed to the reader is parsed: its buffer is empty.
            // (A peer using over-long length encodings keeps this from ever
            // matching; its connection then just keeps its reader.)
            if consumed == delivered.get() {
                return None;
            }
        }
    }
    .await;
    shard
        .metrics()
        .bytes_in
        .fetch_add(delivered.get(), Ordering::Relaxed);
    end
}

/// What the reader does after a frame.
enum Step {
    /// Read on.
    Next,
    /// A whole message (framed for the recipients) to publish.
    Message(Bytes),
    /// Stop reading, for this reason.
    End(End),
}

/// Handles one frame.
fn on_frame(conn: &Rc<Conn>, message: &mut Assembly, max: usize, frame: Frame<'_>) -> Step {
    let payload: &[u8] = &frame.payload;
    match frame.opcode {
        OpCode::Text | OpCode::Binary => {
            if message.in_progress() {
                return Step::End(End::Violation(CloseReason::protocol(
                    "expected a continuation frame",
                )));
            }
            let opcode = if frame.opcode == OpCode::Text {
                protocol::frame::OpCode::Text
            } else {
                protocol::frame::OpCode::Binary
            };
            if frame.fin {
                // fastwebsockets has checked the size, and UTF-8 for text.
                return Step::Message(frame_message(opcode, payload));
            } else if let Err(reason) = message.start(opcode, payload, max) {
                return Step::End(End::Violation(reason));
            }
        }
        OpCode::Continuation => {
            if !message.in_progress() {
                return Step::End(End::Violation(CloseReason::protocol(
                    "continuation frame without a message",
                )));
            }
            match message.extend(payload, frame.fin, max) {
                Err(reason) => return Step::End(End::Violation(reason)),
                Ok(Some(whole)) => return Step::Message(whole),
                Ok(None) => {}
            }
        }
        OpCode::Ping => conn.queue_pong(payload),
        OpCode::Pong => {
            if payload.len() > protocol::MAX_CONTROL_PAYLOAD {
                return Step::End(End::Violation(CloseReason::protocol(
                    "control frame too long",
                )));
            }
        }
        OpCode::Close => return Step::End(on_close(payload)),
    }
    Step::Next
}

/// Lets a message through the rate limit and the fan-out credit, waiting
/// (without reading the socket) while either says "not yet", then
/// publishes it.
async fn admit(
    shard: &Shard,
    conn: &Rc<Conn>,
    raw: Bytes,
    read_at: Instant,
    costs: &mut Vec<u32>,
) -> Result<(), End> {
    while let Err(wait) = conn.take_message_token() {
        if conn.rate_action == RateLimitAction::Close {
            return Err(End::Violation(CloseReason::RATE_LIMITED));
        }
        let started = Instant::now();
        tokio::time::sleep(wait).await;
        conn.held(HELD_RATE, started.elapsed());
    }
    if !conn.is_open() {
        // Data after a close is discarded (RFC 6455 §5.5.1).
        return Ok(());
    }
    let v1 = shard
        .has_v1_clients()
        .then(|| v1_message(&raw, conn.id.0, &conn.name, unix_millis()));
    let len = raw.len() + v1.as_ref().map_or(0, Bytes::len);
    let waited = shard.fanout().reserve(len, costs).await;
    if !waited.is_zero() {
        conn.held(HELD_FANOUT, waited);
        conn.adjust_bucket(Some(waited));
    }
    let msg = Broadcast {
        raw: Some(raw),
        v1,
        sender: conn.id,
        channel: conn.channel,
        framed_at: read_at,
        cost: 0,
    };
    if conn.is_open() {
        shard.publish(msg, &conn.name, costs);
    } else {
        shard.fanout().give_back(costs);
    }
    Ok(())
}

/// Checks a close frame from the peer (RFC 6455 §5.5.1, §7.4).
fn on_close(payload: &[u8]) -> End {
    if payload.len() > protocol::MAX_CONTROL_PAYLOAD {
        return End::Violation(CloseReason::protocol("control frame too long"));
    }
    match payload.len() {
        0 => End::PeerClose(None),
        1 => End::Violation(CloseReason::protocol("close frame with a 1-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close::is_valid_close_code(code) {
                End::Violation(CloseReason::protocol("invalid close code"))
            } else if std::str::from_utf8(&payload[2..]).is_err() {
                End::Violation(CloseReason::INVALID_UTF8)
            } else {
                End::PeerClose(Some(code))
            }
        }
    }
}

/// Frames a `broadcast.v1` event (a text frame).
pub(crate) fn frame_text(json: &[u8]) -> Bytes {
    frame_message(protocol::frame::OpCode::Text, json)
}

/// What a v1 client is told before the server closes it.
fn notice_text(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::SHUTTING_DOWN => "the server is shutting down",
        CloseReason::IDLE_TIMEOUT => "closing the connection after a long silence",
        CloseReason::SLOW_CONSUMER => {
            "you are not reading fast enough: too much was waiting to be sent to you"
        }
        CloseReason::MESSAGE_TOO_BIG => "your message is larger than the server accepts",
        CloseReason::INVALID_UTF8 => "your text message was not valid UTF-8",
        CloseReason::RATE_LIMITED => "you are sending messages faster than the server allows",
        other => other.reason,
    }
}

/// Length of the header of a frame made by [`frame_message`].
pub(crate) fn server_header_len(frame: &[u8]) -> usize {
    match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Frames a complete single-frame message: the one copy a message gets.
pub(crate) fn frame_message(opcode: protocol::frame::OpCode, payload: &[u8]) -> Bytes {
    let mut head = [0u8; MAX_SERVER_HEADER];
    let n = encode_server_header(opcode, payload.len(), &mut head);
    let mut frame = BytesMut::with_capacity(n + payload.len());
    frame.put_slice(&head[..n]);
    frame.put_slice(payload);
    frame.freeze()
}

/// The `broadcast.v1` message event for `raw` (a server frame of a text or
/// binary message), framed: what every v1 client gets for it.
pub(crate) fn v1_message(raw: &[u8], from: u64, name: &str, time: u64) -> Bytes {
    let payload = &raw[server_header_len(raw)..];
    let body = if raw[0] & 0x0f == protocol::frame::OpCode::Text as u8 {
        // Validated as UTF-8 when it was read.
        BodyRef::Text(std::str::from_utf8(payload).unwrap_or_default())
    } else {
        BodyRef::Data(payload)
    };
    let mut json = BytesMut::with_capacity(MAX_SERVER_HEADER + payload.len() + 64);
    json.put_bytes(0, MAX_SERVER_HEADER);
    let mut writer = json.writer();
    protocol::v1::encode_message_json(&mut writer, from, name, time, body);
    seal(writer.into_inner(), protocol::frame::OpCode::Text)
}

/// Writes the server header into the [`MAX_SERVER_HEADER`] spare bytes at
/// the front of `buf` (which holds the payload after them) and returns the
/// frame, without moving the payload.
fn seal(mut buf: BytesMut, opcode: protocol::frame::OpCode) -> Bytes {
    let len = buf.len() - MAX_SERVER_HEADER;
    let mut head = [0u8; MAX_SERVER_HEADER];
    let n = encode_server_header(opcode, len, &mut head);
    buf[MAX_SERVER_HEADER - n..MAX_SERVER_HEADER].copy_from_slice(&head[..n]);
    buf.advance(MAX_SERVER_HEADER - n);
    buf.freeze()
}

/// A fragmented message being reassembled.
///
/// The buffer starts with [`MAX_SERVER_HEADER`] spare bytes so that the
/// server header can be written in front of the payload when the last
/// fragment arrives, without copying the payload again.
#[derive(Debug, Default)]
struct Assembly {
    buf: Option<BytesMut>,
    opcode: Option<protocol::frame::OpCode>,
    utf8: Utf8Validator,
}

impl Assembly {
    fn in_progress(&self) -> bool {
        self.buf.is_some()
    }

    fn start(
        &mut self,
        opcode: protocol::frame::OpCode,
        payload: &[u8],
        max: usize,
    ) -> Result<(), CloseReason> {
        let mut buf = BytesMut::with_capacity(MAX_SERVER_HEADER + payload.len().max(256));
        buf.put_bytes(0, MAX_SERVER_HEADER);
        self.buf = Some(buf);
        self.opcode = Some(opcode);
        self.utf8 = Utf8Validator::new();
        self.extend(payload, false, max).map(|_| ())
    }

    /// Appends a fragment; returns the framed message after the last one.
    fn extend(
        &mut self,
        payload: &[u8],
        fin: bool,
        max: usize,
    ) -> Result<Option<Bytes>, CloseReason> {
        let buf = self.buf.as_mut().expect("a message is in progress");
        if buf.len() - MAX_SERVER_HEADER + payload.len() > max {
            return Err(CloseReason::MESSAGE_TOO_BIG);
        }
        buf.put_slice(payload);
        let opcode = self.opcode.expect("a message is in progress");
        if opcode == protocol::frame::OpCode::Text
            && self.utf8.feed(&buf[MAX_SERVER_HEADER..], fin).is_err()
        {
            return Err(CloseReason::INVALID_UTF8);
        }
        if !fin {
            return Ok(None);
        }
        let buf = self.buf.take().expect("a message is in progress");
        Ok(Some(seal(buf, opcode)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::frame::OpCode as Op;

    #[test]
    fn assembly_frames_fragments_in_place() {
        let mut a = Assembly::default();
        a.start(Op::Text, b"hel", 100).unwrap();
        assert!(a.extend(b"lo ", false, 100).unwrap().is_none());
        let whole = a.extend("wörld".as_bytes(), true, 100).unwrap().unwrap();
        assert_eq!(
            &whole[..],
            &encode_server_frame(Op::Text, "hello wörld".as_bytes())[..]
        );
        assert!(!a.in_progress());
    }

    #[test]
    fn assembly_caps_total_size() {
        let mut a = Assembly::default();
        a.start(Op::Binary, &[0; 60], 100).unwrap();
        assert_eq!(
            a.extend(&[0; 41], false, 100),
            Err(CloseReason::MESSAGE_TOO_BIG)
        );
    }

    #[test]
    fn assembly_rejects_bad_utf8_early() {
        let mut a = Assembly::default();
        assert_eq!(
            a.start(Op::Text, b"ok\xc0\xaf", 100),
            Err(CloseReason::INVALID_UTF8)
        );
    }

    #[test]
    fn large_frames_use_the_64_bit_length() {
        let payload = vec![7u8; 70_000];
        let mut a = Assembly::default();
        a.start(Op::Binary, &payload[..1], 100_000).unwrap();
        let whole = a.extend(&payload[1..], true, 100_000).unwrap().unwrap();
        assert_eq!(&whole[..], &encode_server_frame(Op::Binary, &payload)[..]);
    }

    #[test]
    fn server_header_matches_fastwebsockets() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 1 << 20] {
            let payload = vec![0u8; len];
            let mut theirs = Frame::binary(fastwebsockets::Payload::Borrowed(&payload));
            let mut head = [0u8; 14];
            let n = theirs.fmt_head(&mut head);
            let ours = frame_message(Op::Binary, &payload);
            assert_eq!(&ours[..n], &head[..n], "len {len}");
            assert_eq!(ours.len(), n + len);
        }
    }

    #[test]
    fn outbox_consume_tracks_partial_head_and_close() {
        let mut o = Outbox::default();
        let t0 = Instant::now();
        for (kind, b) in [(Kind::Data, &b"abcd"[..]), (Kind::Close, &b"xy"[..])] {
            if kind == Kind::Data {
                o.data_bytes += b.len();
            }
            o.queue.push_back(Out {
                kind,
                bytes: Bytes::copy_from_slice(b),
                at: t0,
            });
        }
        assert_eq!(o.consume(3), (false, None));
        assert_eq!((o.head_written, o.data_bytes, o.boundary()), (3, 1, 1));
        o.drop_unstarted();
        assert_eq!(o.queue.len(), 1);
        assert_eq!(o.data_bytes, 1);
        o.queue.push_back(Out {
            kind: Kind::Close,
            bytes: Bytes::from_static(b"xy"),
            at: t0,
        });
        assert_eq!(o.consume(3), (true, Some(t0)));
        assert!(o.queue.is_empty());
        assert_eq!(o.data_bytes, 0);
    }
}
