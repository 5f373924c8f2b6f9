//! The read side of a connection: frames parsed with fastwebsockets (whose
//! reader exists only while bytes arrive), the checks fastwebsockets leaves
//! out, fragment reassembly, and the admission of each message through the
//! rate limit and the fan-out credit before it is published.
//!
//! permessage-deflate: fastwebsockets refuses any frame with RSV1 set and
//! checks the UTF-8 of whole text frames itself, which compressed text
//! never is. On a connection that negotiated the extension, [`Source`]
//! follows the frame headers in the bytes it hands over ([`Headers`]):
//! it records each frame's first byte as sent, and on a compressed frame
//! clears RSV1 and turns a text opcode into binary before fastwebsockets
//! sees it. The reader takes the recorded byte back for each frame it
//! parses, inflates, and checks the UTF-8 of the inflated text itself.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes};
use fastwebsockets::{Frame, OpCode, Role};
use protocol::close::{self, CloseReason};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;

use super::fragments::Assembly;
use super::tls_io::poll_read_tls;
use super::{Conn, End, HELD_FANOUT, HELD_RATE};
use crate::channels::Channel;
use crate::config::RateLimitAction;
use crate::fanout::Broadcast;
use crate::fanout::Format;
use crate::frame::{encodings, frame_message};

/// Waits until the socket is readable.
///
/// Polls readiness through the socket's single reader waker slot rather
/// than tokio's `readable()` waiter list: hyper's connection task left its
/// waker in that slot, and replacing it here is what releases hyper's
/// (kilobytes large) finished task after the upgrade.
pub(super) async fn readable(rd: &OwnedReadHalf) -> io::Result<()> {
    std::future::poll_fn(|cx| rd.as_ref().poll_read_ready(cx)).await
}

/// Feeds fastwebsockets' reader from the socket (after any bytes the HTTP
/// layer had read ahead) and counts what it handed over.
pub(super) struct Source<'a> {
    pub(super) prefix: &'a mut Bytes,
    pub(super) rd: &'a mut OwnedReadHalf,
    pub(super) delivered: &'a Cell<u64>,
    pub(super) conn: &'a Rc<Conn>,
    /// With permessage-deflate: the frame headers in the bytes handed over.
    pub(super) headers: Option<&'a RefCell<Headers>>,
}

/// Follows the frame headers in a connection's byte stream as [`Source`]
/// hands it to fastwebsockets (permessage-deflate only; see the module
/// doc). Lives as long as a read burst, which ends at a frame boundary.
#[derive(Debug, Default)]
pub(super) struct Headers {
    /// The header being read, and how many of its bytes are in.
    head: [u8; 14],
    have: usize,
    /// Its length once its second byte is in.
    need: usize,
    /// Payload bytes of the current frame still to pass.
    skip: u64,
    /// The first byte of each frame handed over and not yet parsed, as the
    /// peer sent it.
    firsts: VecDeque<u8>,
}

impl Headers {
    /// Scans bytes about to be handed over, rewriting the first byte of
    /// each compressed frame (RSV1 cleared, text made binary).
    fn scan(&mut self, bytes: &mut [u8]) {
        let mut i = 0;
        while i < bytes.len() {
            if self.skip > 0 {
                let n =
                    usize::try_from(self.skip).map_or(bytes.len() - i, |s| s.min(bytes.len() - i));
                i += n;
                self.skip -= n as u64;
                continue;
            }
            if self.have == 0 {
                let first = bytes[i];
                self.firsts.push_back(first);
                if first & crate::deflate::RSV1 != 0 {
                    let mut plain = first & !crate::deflate::RSV1;
                    if plain & 0x0f == protocol::frame::OpCode::Text as u8 {
                        plain = (plain & 0xf0) | protocol::frame::OpCode::Binary as u8;
                    }
                    bytes[i] = plain;
                }
                self.need = 2;
            }
            self.head[self.have] = bytes[i];
            self.have += 1;
            i += 1;
            if self.have == 2 {
                let extended = match self.head[1] & 0x7f {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                self.need = 2 + extended + if self.head[1] & 0x80 != 0 { 4 } else { 0 };
            }
            if self.have == self.need {
                self.skip = match self.head[1] & 0x7f {
                    126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
                    127 => u64::from_be_bytes(self.head[2..10].try_into().unwrap_or_default()),
                    n => u64::from(n),
                };
                self.have = 0;
            }
        }
    }
}

impl AsyncRead for Source<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            if let Some(headers) = this.headers {
                headers.borrow_mut().scan(&mut buf.filled_mut()[before..]);
            }
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // Release hyper's read buffer, which the prefix points into.
                *this.prefix = Bytes::new();
            }
            this.delivered.set(this.delivered.get() + n as u64);
            return Poll::Ready(Ok(()));
        }
        match &this.conn.tls {
            None => ready!(Pin::new(&mut *this.rd).poll_read(cx, buf))?,
            Some(tls) => ready!(poll_read_tls(this.conn, tls, this.rd, cx, buf))?,
        }
        let n = buf.filled().len() - before;
        if let Some(headers) = this.headers {
            headers.borrow_mut().scan(&mut buf.filled_mut()[before..]);
        }
        if n > 0 {
            this.delivered.set(this.delivered.get() + n as u64);
            this.conn.touch();
        }
        Poll::Ready(Ok(()))
    }
}

/// Reads frames until the connection ends.
///
/// While the socket is quiet this future only waits for readability: the
/// parsing state (fastwebsockets' `WebSocketRead`, whose buffer is 8 KiB,
/// and its futures) lives in a boxed [`read_burst`] that exists only while
/// bytes are arriving, so idle connections stay small.
///
/// `prefix`: the bytes the client sent behind its upgrade request, boxed
/// (rare, and this future is held for the connection's life).
pub(super) async fn read_loop(
    conn: &Rc<Conn>,
    rd: &mut OwnedReadHalf,
    prefix: &mut Option<Box<Bytes>>,
) -> End {
    let mut message = Assembly::default();
    loop {
        if prefix.is_none() && !conn.tls_has_input() {
            let ready = std::future::poll_fn(|cx| Poll::Ready(rd.as_ref().poll_read_ready(cx)));
            if ready.await.is_pending() {
                // Read empty: whatever backlog forgiven tokens were for is gone.
                conn.adjust_bucket(None);
                if let Some(deflate) = conn.deflate {
                    message.idle(deflate.client_no_context_takeover);
                }
                if readable(rd).await.is_err() {
                    return End::Gone;
                }
            }
        }
        let burst = read_burst(conn, rd, prefix, &mut message);
        if let Some(end) = Box::pin(burst).await {
            return end;
        }
    }
}

/// Parses frames until every byte read so far has been consumed (or the
/// connection ends). It is never dropped in the middle of a frame, which
/// fastwebsockets' reader would not survive.
pub(super) async fn read_burst(
    conn: &Rc<Conn>,
    rd: &mut OwnedReadHalf,
    prefix: &mut Option<Box<Bytes>>,
    message: &mut Assembly,
) -> Option<End> {
    let max_message = conn.ctx.config.max_message_size;
    let delivered = Cell::new(0u64);
    let headers = conn.deflate.map(|_| RefCell::new(Headers::default()));
    let mut ahead = prefix.take().map_or_else(Bytes::new, |b| *b);
    // The fan-out credit a message reserves (see `flow`), reused for the
    // burst's messages.
    let mut reserved = Vec::new();
    let costs = &mut reserved;
    let source = Source {
        prefix: &mut ahead,
        rd,
        delivered: &delivered,
        conn,
        headers: headers.as_ref(),
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
            let first = headers
                .as_ref()
                .map(|h| h.borrow_mut().firsts.pop_front().unwrap_or_default());
            let read_at = Instant::now();
            match on_frame(conn, message, max_message, frame, first) {
                Step::Next => {}
                Step::End(end) => return Some(end),
                Step::Message(raw) => {
                    let handled = if conn.format == Format::V2 {
                        super::v2::command(conn, raw, read_at, costs).await
                    } else {
                        admit(conn, raw, read_at, costs).await
                    };
                    if let Err(end) = handled {
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
    drop(ws);
    if !ahead.is_empty() {
        *prefix = Some(Box::new(ahead));
    }
    conn.ctx
        .handle
        .metrics
        .bytes_in
        .fetch_add(delivered.get(), Ordering::Relaxed);
    end
}

/// What the reader does after a frame.
pub(super) enum Step {
    /// Read on.
    Next,
    /// A whole message (framed for the recipients) to publish.
    Message(Bytes),
    /// Stop reading, for this reason.
    End(End),
}

/// Handles one frame; `first`: its first byte as sent, on a connection
/// that negotiated permessage-deflate (see [`Headers`]).
pub(super) fn on_frame(
    conn: &Rc<Conn>,
    message: &mut Assembly,
    max: usize,
    frame: Frame<'_>,
    first: Option<u8>,
) -> Step {
    let payload: &[u8] = &frame.payload;
    if let Some(first) = first.filter(|b| b & crate::deflate::RSV1 != 0) {
        return on_compressed(conn, message, max, &frame, first);
    }
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

/// Handles a frame with RSV1 set, on a connection that negotiated
/// permessage-deflate: only the first frame of a data message may carry it
/// (RFC 7692 §6.1); the message is inflated as it arrives.
fn on_compressed(
    conn: &Rc<Conn>,
    message: &mut Assembly,
    max: usize,
    frame: &Frame<'_>,
    first: u8,
) -> Step {
    let opcode = match first & 0x0f {
        1 => protocol::frame::OpCode::Text,
        2 => protocol::frame::OpCode::Binary,
        _ => {
            return Step::End(End::Violation(CloseReason::protocol(
                "RSV1 set on a control or continuation frame",
            )))
        }
    };
    if message.in_progress() {
        return Step::End(End::Violation(CloseReason::protocol(
            "expected a continuation frame",
        )));
    }
    let Some(deflate) = conn.deflate else {
        return Step::End(End::Violation(CloseReason::protocol("RSV1 set")));
    };
    match message.start_compressed(opcode, &frame.payload, frame.fin, max, deflate) {
        Ok(Some(whole)) => Step::Message(whole),
        Ok(None) => Step::Next,
        Err(reason) => Step::End(End::Violation(reason)),
    }
}

/// Lets a plain or v1 client's message through the rate limit and the
/// fan-out credit, waiting (without reading the socket) while either says
/// "not yet", then publishes it to the client's channel.
// The borrow of `subs` held across the wait is safe: see the comment inside.
#[allow(clippy::await_holding_refcell_ref)]
pub(super) async fn admit(
    conn: &Rc<Conn>,
    raw: Bytes,
    read_at: Instant,
    costs: &mut Vec<u32>,
) -> Result<(), End> {
    if !rate_limit(conn).await? {
        return Ok(());
    }
    // Borrowed, not cloned: a clone per message would write the channel's
    // reference count, a cache line every shard publishing to it shares.
    // A plain or v1 connection's channel changes only once it has ended,
    // so the borrow held across the credit wait meets no writer.
    let subs = conn.subs.borrow();
    let Some(home) = subs.first() else {
        return Ok(());
    };
    publish(
        conn,
        Some(&home.channel),
        &home.channel.name,
        raw,
        read_at,
        costs,
    )
    .await;
    drop(subs);
    Ok(())
}

/// Waits for a rate-limit token (`--max-message-rate`). With
/// `--rate-limit-action close` a client over the limit is closed with 1008,
/// except a v2 client, whose message is refused instead (`Ok(false)`).
pub(super) async fn rate_limit(conn: &Rc<Conn>) -> Result<bool, End> {
    while let Err(wait) = conn.take_message_token() {
        if conn.ctx.config.rate_limit_action == RateLimitAction::Close {
            if conn.format == Format::V2 {
                return Ok(false);
            }
            return Err(End::Violation(CloseReason::RATE_LIMITED));
        }
        let started = Instant::now();
        tokio::time::sleep(wait).await;
        conn.held(HELD_RATE, started.elapsed());
    }
    Ok(true)
}

/// Publishes `raw` to channel `name` (`channel`: its entry when this node
/// has members of it) after taking its fan-out credit, waiting for it
/// without reading the socket. Encoded once per format.
pub(super) async fn publish(
    conn: &Rc<Conn>,
    channel: Option<&Arc<Channel>>,
    name: &str,
    raw: Bytes,
    read_at: Instant,
    costs: &mut Vec<u32>,
) {
    if !conn.takes_input() {
        // Data after a close is discarded (RFC 6455 §5.5.1).
        return;
    }
    if let Some(channel) = channel {
        conn.announce_join(channel).await;
    }
    let publisher = &conn.ctx.publisher;
    if publisher.history().is_some() {
        return publish_logged(conn, channel, name, raw, read_at, costs).await;
    }
    let (raw, v1, v2) = encodings(raw, name, conn.id.0, &conn.name, conn.ctx.stats.wanted());
    let mut msg = Broadcast {
        raw: Some(raw),
        v1,
        v2,
        sender: conn.id,
        channel: 0,
        framed_at: read_at,
        cost: 0,
        offset: 0,
        deflated: None,
    };
    let Some(channel) = channel else {
        publisher.relay_only(&msg, name, &conn.name);
        return;
    };
    msg.channel = channel.id;
    let len = msg
        .raw
        .iter()
        .chain(&msg.v1)
        .chain(&msg.v2)
        .map(Bytes::len)
        .sum();
    let waited = publisher.reserve(channel, len, costs).await;
    if !waited.is_zero() {
        conn.held(HELD_FANOUT, waited);
        conn.adjust_bucket(Some(waited));
    }
    if conn.takes_input() {
        publisher.publish(msg, channel, &conn.name, costs);
    } else {
        publisher.give_back(costs);
    }
}

/// [`publish`] with history on: the credit is reserved first, for an
/// estimate of the events' size (they are framed under the channel's log
/// lock, carrying the offset given there).
async fn publish_logged(
    conn: &Rc<Conn>,
    channel: Option<&Arc<Channel>>,
    name: &str,
    raw: Bytes,
    read_at: Instant,
    costs: &mut Vec<u32>,
) {
    let publisher = &conn.ctx.publisher;
    let wanted = conn.ctx.stats.wanted();
    costs.clear();
    if let Some(channel) = channel {
        let events = usize::from(wanted.v1) + usize::from(wanted.v2);
        // JSON fields, the position and base64 of binary payloads.
        let event_len = raw.len() * 4 / 3 + conn.name.len() + name.len() + 160;
        let waited = publisher
            .reserve(channel, raw.len() + events * event_len, costs)
            .await;
        if !waited.is_zero() {
            conn.held(HELD_FANOUT, waited);
            conn.adjust_bucket(Some(waited));
        }
        if !conn.takes_input() {
            publisher.give_back(costs);
            return;
        }
    }
    publisher.publish_logged(
        crate::publish::Logged {
            raw,
            sender: conn.id,
            from_name: &conn.name,
            channel_name: name,
            channel: channel.map(|c| &**c),
            framed_at: read_at,
            wanted,
        },
        costs,
    );
}

/// Checks a close frame from the peer (RFC 6455 §5.5.1, §7.4).
pub(super) fn on_close(payload: &[u8]) -> End {
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
