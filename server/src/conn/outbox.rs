//! The write side of a connection: the outbox of frames the socket has not
//! taken yet, the dispatcher's direct writes (small frames gathered
//! first), control frames at frame boundaries, and the flush task that
//! drains the outbox as the
//! socket becomes writable. It reports to the shard's audience whether the
//! outbox is behind (see `flow`).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use protocol::frame::encode_server_frame;
use tokio::net::tcp::OwnedWriteHalf;

use super::signal::Waiter;
use super::{CloseState, Conn};

/// Largest batch gathered into one buffer before its write (see
/// [`Conn::send_batch`]).
const GATHER_MAX: usize = 16 * 1024;

thread_local! {
    /// The shard's gather buffer (one per shard thread, reused).
    static GATHER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(GATHER_MAX));
}

/// Writes `iov` to a plain socket with one `send` (one slice) or `sendmsg`
/// (several), never blocking, through tokio's readiness (so that a full
/// socket's next `writable()` waits for the kernel's next edge). Not
/// `writev`: on a socket that crosses the VFS layer first (`vfs_writev`,
/// `fdget_pos`, the file-permission hook), which cost about 10 % of the
/// server's CPU at 1,000 subscribers × 50 msg/s (perf, bench scenario 1).
/// SIGPIPE is ignored by Rust's runtime, so a reset peer is an `EPIPE`
/// error here, not a signal.
fn send_plain(writer: &OwnedWriteHalf, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    let stream: &tokio::net::TcpStream = writer.as_ref();
    stream.try_io(tokio::io::Interest::WRITABLE, || send_now(stream, iov))
}

/// [`send_plain`] for a write with nothing queued before it, the common
/// case of a delivery: the send goes first, without reading tokio's
/// readiness (a cache line per socket, 3 % of the CPU in the same
/// profile). Only a send the socket refuses goes again through
/// [`send_plain`], which clears the readiness it read before that second
/// try, never a newer one.
fn send_direct(writer: &OwnedWriteHalf, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    match send_now(writer.as_ref(), iov) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => send_plain(writer, iov),
        result => result,
    }
}

fn send_now(stream: &tokio::net::TcpStream, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    let socket = socket2::SockRef::from(stream);
    match iov {
        [one] => socket.send(one),
        _ => socket.send_vectored(iov),
    }
}

/// Most slices handed to one `sendmsg` by the flush task.
pub(super) const MAX_IOV: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Data,
    /// A frame replayed from the channel's history on a resume or rewind:
    /// counted in the backlog at [`REPLAY_COST`], not at its length.
    Replay,
    Ping,
    Pong,
    /// A `broadcast.v1` notice explaining the close that follows; like
    /// control frames, never dropped and not counted in the backlog.
    Notice,
    Close,
}

/// What a replayed frame counts toward `--max-backlog`: its queue entry,
/// not its bytes. Those are the history's own frames (shared by reference
/// count with the log and every client replaying them), so a replay larger
/// than the backlog limit is no sign of a slow consumer, and it adds
/// little memory of its own. Still counted, so that a client asking for
/// replays again and again without reading is closed like any other.
pub(super) const REPLAY_COST: usize = 64;

/// A frame waiting to be written.
#[derive(Debug)]
pub(super) struct Out {
    pub(super) kind: Kind,
    pub(super) bytes: Bytes,
    /// When the server read the message (data frames; for the latency
    /// histogram).
    pub(super) at: Instant,
}

/// Frames waiting for the socket to accept them.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    pub(super) queue: VecDeque<Out>,
    /// Bytes of `queue[0]` already written: control frames may only be
    /// inserted after it when this is non-zero.
    pub(super) head_written: usize,
    /// Unwritten bytes of data frames: what `--max-backlog` bounds.
    pub(super) data_bytes: usize,
    /// A flush task is running for this connection.
    pub(super) flushing: bool,
    /// Our close frame left the queue (with TLS it may still sit in the
    /// session's buffer until that is flushed).
    pub(super) close_written: bool,
}

impl Outbox {
    /// Index at which a control frame can go: the first frame boundary.
    pub(super) fn boundary(&self) -> usize {
        usize::from(self.head_written > 0)
    }

    /// Records that `n` more bytes were written; returns whether a close
    /// frame was completed, and when the oldest data frame completed by
    /// these bytes was read.
    pub(super) fn consume(&mut self, mut n: usize) -> (bool, Option<Instant>) {
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
                if front.kind == Kind::Replay {
                    self.data_bytes -= REPLAY_COST;
                }
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
    pub(super) fn drop_unstarted(&mut self) {
        let keep = self.boundary();
        self.queue.truncate(keep);
        self.data_bytes = match self.queue.front() {
            Some(front) if front.kind == Kind::Data => front.bytes.len() - self.head_written,
            Some(front) if front.kind == Kind::Replay => REPLAY_COST,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flush {
    Done,
    Pending,
    Broken,
}

/// Waits until the socket is writable (see [`readable`] for why it polls).
pub(super) async fn writable(wr: &OwnedWriteHalf) -> io::Result<()> {
    std::future::poll_fn(|cx| wr.as_ref().poll_write_ready(cx)).await
}

/// Drains a connection's queue as the socket becomes writable; exits when
/// the queue is empty or the connection is given up.
pub(super) async fn flush(conn: Rc<Conn>) {
    let broken = || conn.close.get() == CloseState::Broken;
    loop {
        if broken() {
            break;
        }
        tokio::select! {
            ready = writable(&conn.writer) => {
                if ready.is_err() {
                    conn.mark_broken();
                    break;
                }
            }
            () = conn.wake.until(Waiter::Flush, broken) => break,
        }
        if conn.write_queued() != Flush::Pending {
            break;
        }
    }
    conn.out.borrow_mut().flushing = false;
    conn.lag.caught_up(&conn.ctx.audience);
}

impl Conn {
    /// The outbox (or the TLS session) holds bytes: a flush task takes
    /// over, and the shard counts this connection as behind.
    pub(super) fn begin_flush(&self, out: &mut Outbox) {
        out.flushing = true;
        self.lag.fell_behind(&self.ctx.audience);
    }

    /// Writes `frames` to the socket, or queues what it does not take now.
    ///
    /// When nothing is queued this is one write: a batch of small frames
    /// (up to [`GATHER_MAX`] bytes in all) is first gathered into the
    /// shard's one reusable buffer and written as a single slice, larger
    /// batches go as one vectored write straight from the shared frames.
    /// The kernel copies every byte into the socket either way; what the
    /// gather saves is its per-slice cost, which dominated with many small
    /// frames per socket (measured, bench scenario 2a: server CPU per
    /// delivery 0.10 → 0.075 µs; scenario 8: 0.21-0.26 → 0.18-0.23 µs).
    /// Only the unwritten tail is queued, by reference count: the frames
    /// themselves are never copied per recipient in memory that outlives
    /// the write.
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
            let total: usize = frames.iter().map(|f| f.len()).sum();
            let result = if self.tls.is_none() && frames.len() > 1 && total <= GATHER_MAX {
                GATHER.with_borrow_mut(|buf| {
                    buf.clear();
                    for f in frames {
                        buf.extend_from_slice(f);
                    }
                    send_direct(&self.writer, &[IoSlice::new(buf)])
                })
            } else {
                iov.clear();
                iov.extend(frames.iter().map(|f| IoSlice::new(f)));
                if self.tls.is_none() {
                    send_direct(&self.writer, iov)
                } else {
                    self.write_wire(iov)
                }
            };
            match result {
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

    /// Queues the frames replayed from history for a join, after its
    /// answer and before anything live (see [`REPLAY_COST`]).
    pub(crate) fn send_replay(self: &Rc<Self>, frames: Vec<Bytes>) {
        if !self.is_open() || frames.is_empty() {
            return;
        }
        let mut out = self.out.borrow_mut();
        let at = Instant::now();
        out.data_bytes += frames.len() * REPLAY_COST;
        out.queue.extend(frames.into_iter().map(|bytes| Out {
            kind: Kind::Replay,
            bytes,
            at,
        }));
        drop(out);
        self.kick();
    }

    /// Sends an event that must precede a close the server is about to
    /// start (queued like a notice: never dropped, not counted as backlog).
    pub(crate) fn send_notice(self: &Rc<Self>, frame: Bytes) {
        if !self.is_open() {
            return;
        }
        self.out.borrow_mut().queue.push_back(Out {
            kind: Kind::Notice,
            bytes: frame,
            at: Instant::now(),
        });
        self.kick();
    }

    /// Queues a pong answering a ping with `payload`. Only the newest
    /// unanswered ping gets a pong (RFC 6455 §5.5.3), which bounds ping floods.
    pub(super) fn queue_pong(self: &Rc<Self>, payload: &[u8]) {
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

    /// Makes sure queued frames are being written: writes what the socket
    /// takes now and leaves the rest to a flush task.
    pub(super) fn kick(self: &Rc<Self>) {
        if self.out.borrow().flushing {
            return;
        }
        if self.write_queued() == Flush::Pending {
            self.begin_flush(&mut self.out.borrow_mut());
            tokio::task::spawn_local(flush(self.clone()));
        }
    }

    /// Writes queued frames until the queue is empty or the socket is full.
    pub(super) fn write_queued(&self) -> Flush {
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
                    self.wake.notify();
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
    /// taken: straight to the socket, or with TLS encrypted (at most
    /// [`crate::tls::TLS_BUFFER`] of ciphertext held beyond what the socket
    /// took), written out, and again, until the socket is full or
    /// everything is taken (so a TLS connection takes as much per call as
    /// a plain one). `WouldBlock` when nothing was taken.
    pub(super) fn write_wire(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        let Some(tls) = &self.tls else {
            return send_plain(&self.writer, iov);
        };
        // Records the socket did not take are written by the flush task.
        tls.borrow_mut().write(iov, |b| self.writer.try_write(b))
    }

    /// Writes the TLS session's pending records; true when none are left
    /// (always true without TLS).
    pub(super) fn flush_tls(&self) -> io::Result<bool> {
        let Some(tls) = &self.tls else {
            return Ok(true);
        };
        tls.borrow_mut().flush(&mut |b| self.writer.try_write(b))
    }

    /// Whether TLS records are waiting for the socket.
    pub(super) fn tls_pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.borrow().wants_write())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn replayed_frames_count_their_queue_entry_not_their_bytes() {
        let mut o = Outbox::default();
        let t0 = Instant::now();
        for _ in 0..2 {
            o.data_bytes += REPLAY_COST;
            o.queue.push_back(Out {
                kind: Kind::Replay,
                bytes: Bytes::from(vec![b'r'; 10_000]),
                at: t0,
            });
        }
        // Partly written: still counted at its entry's cost, until done.
        assert_eq!(o.consume(9_999), (false, None));
        assert_eq!(o.data_bytes, 2 * REPLAY_COST);
        assert_eq!(o.consume(1), (false, None));
        assert_eq!(o.data_bytes, REPLAY_COST);
        o.consume(5);
        o.drop_unstarted();
        assert_eq!((o.queue.len(), o.data_bytes), (1, REPLAY_COST));
        o.consume(9_995);
        assert_eq!((o.queue.len(), o.data_bytes), (0, 0));
    }
}
