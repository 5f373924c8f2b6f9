//! A connection's end: the closing handshake (RFC 6455 §7) in both
//! directions, closes the server starts (with a v1/v2 notice first), the
//! close timeout and the reset (`SO_LINGER` 0) of a peer that never takes
//! our close frame, and [`serve`], which runs a connection until it ends.

use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::close::CloseReason;
use protocol::frame::encode_server_frame;
use tokio::net::tcp::OwnedReadHalf;

use super::outbox::{Kind, Out};
use super::reader::{read_loop, readable};
use super::signal::Waiter;
use super::{CloseState, Conn, End};
use crate::config::CLOSE_TIMEOUT;
use crate::fanout::Format;
use crate::frame;

impl Conn {
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
        self.wake.notify();
    }

    /// Closes with `reason` (see [`Conn::start_close`]); after 1012, the
    /// peer's messages are still published until it answers.
    pub(crate) fn close_with(
        self: &Rc<Self>,
        reason: CloseReason,
        drop_data: bool,
        timeout: Duration,
    ) {
        let notice = (self.format != Format::Raw).then(|| frame::notice(reason));
        if self.is_open() {
            self.input_until_answer
                .set(reason == CloseReason::RESTARTING);
        }
        self.start_close(&reason.payload(), notice, drop_data, timeout);
    }

    /// Counts a close for a protocol violation (or the rate limit).
    pub(super) fn note_violation(&self, reason: CloseReason) {
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
    pub(super) fn abort(&self) {
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
    pub(super) fn mark_broken(&self) {
        self.close.set(CloseState::Broken);
        let mut out = self.out.borrow_mut();
        out.queue.clear();
        out.head_written = 0;
        out.data_bytes = 0;
        drop(out);
        self.wake.notify();
    }

    /// Whether our close frame has not reached the socket.
    pub(super) fn close_unsent(&self) -> bool {
        self.close.get() == CloseState::Queued
    }

    /// Resolves when the socket breaks or a close we started times out.
    #[allow(clippy::manual_async_fn)] // an `async fn` would keep `self` twice
    pub(super) fn abandoned(&self) -> impl std::future::Future<Output = ()> + '_ {
        // An `async move` block, not an `async fn`, which would keep `self`
        // twice in this future, held by every idle connection.
        async move {
            let broken = || self.close.get() == CloseState::Broken;
            loop {
                self.wake
                    .until(Waiter::Task, || {
                        broken() || self.close_deadline.get().is_some()
                    })
                    .await;
                if broken() {
                    return;
                }
                let Some(deadline) = self.close_deadline.get() else {
                    continue;
                };
                // Boxed: only closing connections pay for a timer.
                let changed = self.wake.until(Waiter::Task, || {
                    broken() || self.close_deadline.get() != Some(deadline)
                });
                if Box::pin(timed_out(deadline, changed)).await {
                    return;
                }
            }
        }
    }

    /// Resolves when our close frame is on the wire (or cannot be sent).
    pub(super) async fn close_sent(&self) {
        self.wake
            .until(Waiter::Task, || {
                matches!(self.close.get(), CloseState::Sent | CloseState::Broken)
            })
            .await;
    }
}

/// Whether `deadline` comes before `changed`.
async fn timed_out(deadline: Instant, changed: impl std::future::Future<Output = ()>) -> bool {
    tokio::select! {
        () = tokio::time::sleep_until(deadline.into()) => true,
        () = changed => false,
    }
}

/// How long a connection whose socket broke may still take to publish the
/// message its reader holds (its join's announcement waits at most 1 s,
/// following a channel in the cluster at most 3 s; fan-out credit comes
/// back as the shards write).
const FINISH_READING: Duration = Duration::from_secs(5);

/// Serves an upgraded connection until it is closed, then calls `ended`
/// (which forgets it).
///
/// `prefix` holds bytes the client sent right behind its upgrade request,
/// which the HTTP layer had already read (rare: boxed).
///
/// This future is the connection's task, held for as long as the
/// connection lives: what it keeps across an idle wait is memory every idle
/// connection pays (docs/benchmarks.md, "Idle connections"), so the waits
/// only closing connections reach are boxed.
///
/// A function returning an `async move` block rather than an `async fn`:
/// an `async fn` keeps its arguments twice in its future (as they came, and
/// moved into its body), which cost 40 bytes of every connection's task.
#[allow(clippy::manual_async_fn)] // see above: an `async fn` is 40 bytes larger
pub(crate) fn serve(
    conn: Rc<Conn>,
    mut reader: OwnedReadHalf,
    mut prefix: Option<Box<Bytes>>,
    ended: impl FnOnce(&Rc<Conn>),
) -> impl std::future::Future<Output = ()> {
    async move {
        let end = {
            let reading = read_loop(&conn, &mut reader, &mut prefix);
            tokio::pin!(reading);
            tokio::select! {
            biased;
            () = conn.abandoned() => {
                if conn.close_unsent() {
                    // Our close frame is stuck behind data the peer does not read.
                    conn.abort();
                } else if conn.close.get() == CloseState::Broken {
                    // The socket broke (the peer went away) while the reader
                    // may hold a whole message waiting to be published: let it
                    // finish, bounded; its next read ends it.
                    let _ = Box::pin(tokio::time::timeout(FINISH_READING, &mut reading)).await;
                }
                End::Gone
            }
            end = &mut reading => end,
            }
        };
        // Boxed: only an ending connection needs what comes after.
        Box::pin(finish(&conn, &mut reader, end)).await;
        ended(&conn);
    }
}

/// What a connection does once its reading has ended: counts the end,
/// answers a peer's close, or fails the connection after a violation.
async fn finish(conn: &Rc<Conn>, reader: &mut OwnedReadHalf, end: End) {
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
            // Both close frames are exchanged: the server closes TCP first
            // (a TLS connection after its close_notify).
            if conn.close.get() == CloseState::Sent {
                conn.send_close_notify();
            }
        }
        End::Violation(reason) => {
            conn.note_violation(reason);
            // Let this shard's dispatcher run first, so that messages this
            // connection sent before the violation reach it (with --echo)
            // ahead of the close, as Autobahn's strict cases expect.
            tokio::task::yield_now().await;
            conn.close_with(reason, true, CLOSE_TIMEOUT);
            Box::pin(linger(conn, reader)).await;
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
        conn.send_close_notify();
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
