//! The sending half of a connection: lines go out as fast as the socket
//! takes them, and in pipe mode pings numbered with the count of lines sent
//! so far are slipped in between, so that the server's pongs say how many
//! lines it has read.
//!
//! WebSocket has no acknowledgements, but the server reads a connection's
//! frames in order and publishes each message before reading the next frame.
//! So its pong for a ping sent after line N means it has read (and published)
//! lines 1..=N, and its close reply to our close frame means it has read
//! every line. What is not confirmed either way when a connection ends may
//! have been lost.
//!
//! On a `broadcast.v2` connection a line goes out as a `publish` command and
//! the same holds: the server handles each command before reading the next
//! frame, so the WebSocket pings still count lines read. (A `publish` the
//! server refuses gets an `error` event, which the session counts; since
//! the server drops unsent events when it answers a close, the session
//! sends a v2 `ping` at the end of the input and closes after its `pong`,
//! which comes after every earlier answer.) The
//! session's own commands (`subscribe`, `unsubscribe`) go out ahead of the
//! next line and are not counted as lines.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::SinkExt as _;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use protocol::v2::{Body, Command};

use crate::conn::Ws;

/// A line to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) text: String,
    /// On a `broadcast.v2` connection: the channel to publish it to (`None`
    /// on other connections, where it goes out as the frame's text).
    pub(crate) channel: Option<String>,
}

impl Line {
    fn into_frame(self) -> Message {
        match self.channel {
            None => Message::text(self.text),
            Some(channel) => Message::text(
                Command::Publish {
                    channel,
                    id: None,
                    body: Body::Text(self.text),
                }
                .encode(),
            ),
        }
    }
}

/// A ping after this many lines...
const PING_EVERY_LINES: u64 = 100;
/// ...or after the first line sent this long after the previous ping.
const PING_EVERY: Duration = Duration::from_secs(1);

/// What one step of [`Outgoing::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// A frame was handed to the connection (it may still sit in a buffer).
    Queued,
    /// Everything queued so far, the close frame included if it was queued,
    /// has been written to the socket.
    Flushed,
}

/// The sending half of one connection and what it has sent.
pub(crate) struct Outgoing {
    sink: SplitSink<Ws, Message>,
    /// Number the lines with pings (pipe mode).
    confirm: bool,
    /// Commands of the session's own, to go out before the next line.
    commands: VecDeque<String>,
    /// Lines handed to this connection.
    pub(crate) sent: u64,
    /// Lines the server has read: the highest count a pong echoed, or all of
    /// them once the server answered our close.
    pub(crate) confirmed: u64,
    /// The count carried by the last ping, and when it went.
    pinged: u64,
    last_ping: Instant,
    ping_due: bool,
    /// A close frame is wanted / has been queued.
    close_wanted: bool,
    close_queued: bool,
    /// Frames were queued since the last completed flush.
    unflushed: bool,
}

impl Outgoing {
    pub(crate) fn new(sink: SplitSink<Ws, Message>, confirm: bool) -> Self {
        Self {
            sink,
            confirm,
            commands: VecDeque::new(),
            sent: 0,
            confirmed: 0,
            pinged: 0,
            last_ping: Instant::now(),
            ping_due: false,
            close_wanted: false,
            close_queued: false,
            unflushed: false,
        }
    }

    /// Lines sent on this connection that the server has not confirmed.
    pub(crate) fn unconfirmed(&self) -> u64 {
        self.sent - self.confirmed
    }

    /// Asks for the close frame (1000) to go out after what is queued.
    pub(crate) fn want_close(&mut self) {
        self.close_wanted = true;
    }

    /// The close frame has been queued (`step` may still need to flush it).
    pub(crate) fn close_queued(&self) -> bool {
        self.close_queued
    }

    /// Queues a command (a v2 `subscribe` or `unsubscribe`) ahead of the
    /// next line.
    pub(crate) fn command(&mut self, command: &Command) {
        self.commands.push_back(command.encode());
    }

    /// Something for [`step`](Self::step) to do, besides sending `line`.
    pub(crate) fn busy(&self) -> bool {
        self.ping_due
            || !self.commands.is_empty()
            || (self.close_wanted && !self.close_queued)
            || self.unflushed
    }

    /// A pong from the server: the lines up to the count in its payload
    /// have been read. Other payloads (not ours) are ignored.
    pub(crate) fn on_pong(&mut self, payload: &[u8]) {
        if let Ok(count) = <[u8; 8]>::try_from(payload) {
            let count = u64::from_be_bytes(count);
            if count <= self.sent {
                self.confirmed = self.confirmed.max(count);
            }
        }
    }

    /// The server answered our close frame: it has read every line.
    pub(crate) fn on_close_reply(&mut self) {
        self.confirmed = self.sent;
    }

    /// Does the next piece of work: a due ping first, then a queued
    /// command, then `line` (taken
    /// only once the connection accepts it), then the close frame if it is
    /// wanted and no line waits, else a flush. Cancel safe: each call either
    /// completes one piece or changes nothing, so it can sit in a `select!`.
    ///
    /// # Errors
    /// The connection failed; `line`, if taken, counts as sent.
    pub(crate) async fn step(&mut self, line: &mut Option<Line>) -> Result<Step, WsError> {
        poll_fn(|cx| self.poll_step(cx, line)).await
    }

    fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        line: &mut Option<Line>,
    ) -> Poll<Result<Step, WsError>> {
        let close_now =
            self.close_wanted && !self.close_queued && line.is_none() && self.commands.is_empty();
        if self.ping_due || !self.commands.is_empty() || line.is_some() || close_now {
            ready!(self.sink.poll_ready_unpin(cx))?;
            let frame = if self.ping_due {
                self.ping_due = false;
                self.pinged = self.sent;
                self.last_ping = Instant::now();
                Message::Ping(self.sent.to_be_bytes().to_vec().into())
            } else if let Some(command) = self.commands.pop_front() {
                Message::text(command)
            } else if let Some(line) = line.take() {
                self.sent += 1;
                let since = self.sent - self.pinged;
                self.ping_due = self.confirm
                    && (since >= PING_EVERY_LINES || self.last_ping.elapsed() >= PING_EVERY);
                line.into_frame()
            } else {
                self.close_queued = true;
                Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                }))
            };
            self.unflushed = true;
            self.sink.start_send_unpin(frame)?;
            return Poll::Ready(Ok(Step::Queued));
        }
        ready!(self.sink.poll_flush_unpin(cx))?;
        self.unflushed = false;
        Poll::Ready(Ok(Step::Flushed))
    }
}
