//! The client's state machine and view model, free of any DOM.
//!
//! The DOM layer feeds it user actions ([`Model::join`], [`Model::leave`],
//! [`Model::open_channel`], [`Model::show_channel`], [`Model::leave_channel`],
//! [`Model::publish`] then [`Model::sent`]) and socket events
//! ([`Model::opened`], [`Model::text_frame`], [`Model::binary_frame`],
//! [`Model::closed`]), polls [`Model::retry_due`] from a timer, sends what
//! [`Model::take_outgoing`] hands it, and renders what comes back: [`Line`]s
//! to append to the message log (those of the channel shown), the current
//! channel's history when another one is shown, [`Model::status_text`],
//! [`Model::online`], [`Model::members_text`] and the channel list and
//! unread list of [`Model::channels`]. Times are milliseconds since the Unix
//! epoch, as JavaScript's `Date.now()` gives them.
//!
//! The page offers `broadcast.v2` then `broadcast.v1`. On v2 one connection
//! carries every joined channel (each is subscribed again when a new
//! connection opens); on v1, or on a plain server, the connection is the
//! single channel its URL names (`/ws/NAME`), as before channels existed.
//! The per-channel bookkeeping is [`crate::channels`].

use std::collections::HashMap;
use std::time::Duration;

use protocol::backoff::Backoff;
use protocol::channel::{self, ChannelError};
use protocol::v1::{self, Body, NameError, Peer, ServerEvent};
use protocol::v2::{self, Command, ErrorCode, Event, Id};

use crate::channels::{ChannelState, Channels};

/// The reconnection schedule (see `protocol::backoff`): the first retry
/// waits up to a second, the ceiling doubles up to 30 s.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The ceiling of the reconnection delay stops doubling here.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A connection that stayed up this long resets the schedule: the next drop
/// is retried quickly again. A server that accepts and then closes at once
/// keeps growing the delay instead.
pub const STABLE_MS: f64 = 10_000.0;
/// The subprotocols the page offers, preferred first.
pub const OFFERED: [&str; 2] = [v2::SUBPROTOCOL, v1::SUBPROTOCOL];

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Status {
    /// Nothing tried yet: the user has not joined.
    Idle,
    /// No connection wanted any more: the user left.
    Disconnected,
    /// A socket is opening; `retry` when this is a reconnection attempt.
    Connecting {
        /// Whether an earlier connection or attempt failed.
        retry: bool,
    },
    /// The socket is open.
    Connected,
    /// Waiting to try again at `retry_at`.
    Waiting {
        /// When the next attempt is due.
        retry_at: f64,
    },
}

/// What the server answered the offer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `broadcast.v2`: channels over one connection.
    V2,
    /// `broadcast.v1`: one channel, names and presence.
    V1,
    /// No subprotocol: one channel, raw text and binary frames.
    Plain,
}

/// What kind of log line this is (the page styles each differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// A message this page sent.
    Mine,
    /// A message from someone else.
    Theirs,
    /// Joins, leaves, connection changes.
    Event,
    /// Something went wrong (dropped connection, server notice, bad frame).
    Problem,
}

/// One line of the message log. All strings are plain text: the DOM layer
/// inserts them as text nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Kind of line.
    pub kind: LineKind,
    /// When it happened (server time for messages from others).
    pub time_ms: f64,
    /// The sender, for messages.
    pub who: Option<String>,
    /// The text shown.
    pub text: String,
    /// Whether `text` stands for a binary message.
    pub binary: bool,
}

impl Line {
    pub(crate) fn event(time_ms: f64, text: impl Into<String>) -> Self {
        Line {
            kind: LineKind::Event,
            time_ms,
            who: None,
            text: text.into(),
            binary: false,
        }
    }

    pub(crate) fn problem(time_ms: f64, text: impl Into<String>) -> Self {
        Line {
            kind: LineKind::Problem,
            ..Line::event(time_ms, text)
        }
    }

    pub(crate) fn message(kind: LineKind, time_ms: f64, who: &str, body: &Body) -> Self {
        let (text, binary) = match body {
            Body::Text(t) => (t.clone(), false),
            Body::Data(d) => (binary_text(d.len()), true),
        };
        Line {
            kind,
            time_ms,
            who: Some(who.to_owned()),
            text,
            binary,
        }
    }
}

/// How a binary message is shown.
pub fn binary_text(len: usize) -> String {
    let unit = if len == 1 { "byte" } else { "bytes" };
    format!("<binary {len} {unit}>")
}

/// Why a message was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Nothing but spaces.
    Empty,
    /// No open connection.
    NotConnected,
    /// Over the server's default message size limit: the frame would be
    /// this many bytes (on v2, the command around the text included).
    TooLong(usize),
    /// The server refused this page the current channel.
    Refused(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Empty => write!(f, "nothing to send"),
            SendError::NotConnected => write!(f, "not connected: the message was not sent"),
            SendError::TooLong(n) => write!(
                f,
                "the message is {n} bytes, more than the server accepts ({})",
                protocol::DEFAULT_MAX_MESSAGE_SIZE
            ),
            SendError::Refused(channel) => write!(f, "you are not in #{channel}"),
        }
    }
}

/// Why a channel could not be opened from the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Not a channel name.
    Name(ChannelError),
    /// The server speaks `broadcast.v1` (or nothing): one channel only.
    OneChannelOnly,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Name(e) => e.fmt(f),
            OpenError::OneChannelOnly => write!(
                f,
                "this server speaks broadcast.v1, one channel per connection"
            ),
        }
    }
}

impl std::error::Error for OpenError {}

/// Name shown for senders on a plain (non-`broadcast.v1`) server.
pub const UNNAMED: &str = "someone";

/// A v2 command waiting for its answer, by id.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Subscribe(String),
    Publish(String),
    /// A `subscribe` to a channel left before the answer: the answer is
    /// dropped (the channel may have been joined again meanwhile, with a
    /// `subscribe` of its own).
    Abandoned,
}

/// Who joined and left a channel, as v1 and v2 presence events say.
struct PresenceChange {
    online: u64,
    joined: Vec<Peer>,
    left: Vec<Peer>,
    joined_count: Option<u64>,
    left_count: Option<u64>,
}

/// The client: connection state, who we are, the channels.
#[derive(Debug)]
pub struct Model {
    page_protocol: String,
    host: String,
    /// The validated name asked for; `None` before the first join.
    name: Option<String>,
    /// This connection as the server knows it (after `welcome`).
    me: Option<Peer>,
    status: Status,
    /// Counts consecutive failed connections and picks the delays.
    backoff: Backoff,
    /// When the current socket opened.
    opened_at: Option<f64>,
    /// What the last socket that opened speaks (`None` before the first).
    mode: Option<Mode>,
    /// Whether a welcome arrived since the last join.
    welcomed: bool,
    /// The server's last notice on this connection.
    notice: Option<(u16, String)>,
    /// Shared secret for a server started with `--auth-token` (taken from
    /// the page's own `?token=`), passed on to the WebSocket URL.
    token: Option<String>,
    /// The joined channels and the one shown.
    channels: Channels,
    /// The channel the socket's URL names: on v1 and plain connections,
    /// the only one it carries.
    conn_channel: String,
    /// v2 commands for the DOM layer to send, oldest first.
    outbox: Vec<String>,
    /// v2 commands sent with an id and not answered yet (cleared with the
    /// connection).
    pending: HashMap<u64, Pending>,
    next_id: u64,
}

impl Model {
    /// A model for a page served from `page_protocol` (`location.protocol`)
    /// and `host` (`location.host`); `seed` seeds the reconnection jitter
    /// (a random number: pages that lost the same server must not all draw
    /// the same delays). It starts in the default channel; see
    /// [`Model::open_channel`].
    pub fn new(page_protocol: &str, host: &str, seed: u64) -> Self {
        Model {
            page_protocol: page_protocol.to_owned(),
            host: host.to_owned(),
            name: None,
            me: None,
            status: Status::Idle,
            backoff: Backoff::with_seed(BACKOFF_FIRST, BACKOFF_CAP, seed),
            opened_at: None,
            mode: None,
            welcomed: false,
            notice: None,
            token: None,
            channels: Channels::new(channel::DEFAULT),
            conn_channel: channel::DEFAULT.to_owned(),
            outbox: Vec::new(),
            pending: HashMap::new(),
            next_id: 0,
        }
    }

    /// Uses `token` (from the page's `?token=`) when connecting.
    pub fn set_token(&mut self, token: Option<String>) {
        self.token = token.filter(|t| !t.is_empty());
    }

    /// The user asks to join as `input`. Checks the name as the server will
    /// (a refused name would only show as a failed connection in a browser)
    /// and returns the URL to open a socket to.
    ///
    /// # Errors
    /// The name is not acceptable; nothing changes.
    pub fn join(&mut self, input: &str) -> Result<String, NameError> {
        let name = v1::validate_name(input)?;
        self.name = Some(name);
        self.drop_connection();
        self.backoff.reset();
        self.welcomed = false;
        Ok(self.connect(false))
    }

    /// Starts a connection attempt; returns its URL.
    fn connect(&mut self, retry: bool) -> String {
        self.status = Status::Connecting { retry };
        self.conn_channel = self.channels.current().name().to_owned();
        self.url()
    }

    /// Forgets everything that lives as long as one connection.
    fn drop_connection(&mut self) {
        self.opened_at = None;
        self.me = None;
        self.notice = None;
        self.outbox.clear();
        self.pending.clear();
        for channel in self.channels.iter_mut() {
            channel.disconnected();
        }
    }

    /// The user leaves. Returns a line to log if there was something to
    /// leave; the caller closes the socket (its close event is then ignored).
    /// The channels stay joined for the next time.
    pub fn leave(&mut self, now: f64) -> Option<Line> {
        if matches!(self.status, Status::Idle | Status::Disconnected) {
            return None;
        }
        self.status = Status::Disconnected;
        self.drop_connection();
        let line = Line::event(now, "you left");
        self.channels.record_everywhere(&line);
        Some(line)
    }

    /// The socket opened; `negotiated` is its `protocol` attribute.
    pub fn opened(&mut self, now: f64, negotiated: &str) -> Vec<Line> {
        if !matches!(self.status, Status::Connecting { .. }) {
            return Vec::new();
        }
        self.status = Status::Connected;
        self.opened_at = Some(now);
        self.notice = None;
        let mode = match negotiated {
            v2::SUBPROTOCOL => Mode::V2,
            v1::SUBPROTOCOL => Mode::V1,
            _ => Mode::Plain,
        };
        self.mode = Some(mode);
        let mut out = Vec::new();
        match mode {
            Mode::V2 => {
                // Every joined channel again (a refusal stands).
                let names: Vec<String> = self
                    .channels
                    .iter()
                    .filter(|c| !matches!(c.state(), ChannelState::Refused(_)))
                    .map(|c| c.name().to_owned())
                    .collect();
                for name in names {
                    self.subscribe(&name);
                }
            }
            // The welcome that follows says who we are.
            Mode::V1 => self.set_conn_channel_joined(),
            Mode::Plain => {
                self.set_conn_channel_joined();
                self.everywhere(
                    Line::event(
                        now,
                        "connected to a plain broadcast server: no names or presence",
                    ),
                    &mut out,
                );
            }
        }
        out
    }

    fn set_conn_channel_joined(&mut self) {
        if let Some(c) = self.channels.get_mut(&self.conn_channel) {
            c.set_state(ChannelState::Joined);
        }
    }

    /// Queues a v2 `subscribe` to `name` (a joined channel).
    fn subscribe(&mut self, name: &str) {
        let id = self.next_id();
        self.pending.insert(id, Pending::Subscribe(name.to_owned()));
        self.outbox.push(
            Command::Subscribe {
                channel: name.to_owned(),
                id: Some(Id::Num(id)),
            }
            .encode(),
        );
        if let Some(c) = self.channels.get_mut(name) {
            c.set_state(ChannelState::Joining);
        }
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The frames to send on the open socket now, oldest first (v2
    /// commands: subscriptions when it opened, a channel joined or left).
    pub fn take_outgoing(&mut self) -> Vec<String> {
        std::mem::take(&mut self.outbox)
    }

    /// Keeps `line` in channel `name` and, if that is the one shown, in `out`.
    fn in_channel(&mut self, name: &str, line: Line, out: &mut Vec<Line>) {
        if self.channels.current().name() == name {
            out.push(line.clone());
        }
        self.channels.record(name, line);
    }

    /// Keeps `line`, about the connection, in every channel and in `out`.
    fn everywhere(&mut self, line: Line, out: &mut Vec<Line>) {
        self.channels.record_everywhere(&line);
        out.push(line);
    }

    /// A text frame arrived. Returns the lines to show now.
    pub fn text_frame(&mut self, now: f64, text: &str) -> Vec<Line> {
        if self.status != Status::Connected {
            return Vec::new();
        }
        let mut out = Vec::new();
        match self.mode {
            Some(Mode::V2) => match Event::decode(text) {
                Ok(Some(event)) => self.v2_event(now, event, &mut out),
                Ok(None) => {}
                Err(e) => self.in_current(Line::problem(now, format!("ignored: {e}")), &mut out),
            },
            Some(Mode::V1) => match ServerEvent::decode(text) {
                Ok(Some(event)) => self.v1_event(now, event, &mut out),
                Ok(None) => {}
                Err(e) => self.in_current(Line::problem(now, format!("ignored: {e}")), &mut out),
            },
            Some(Mode::Plain) | None => {
                let line =
                    Line::message(LineKind::Theirs, now, UNNAMED, &Body::Text(text.to_owned()));
                let conn = self.conn_channel.clone();
                self.in_channel(&conn, line, &mut out);
            }
        }
        out
    }

    fn in_current(&mut self, line: Line, out: &mut Vec<Line>) {
        let current = self.channels.current().name().to_owned();
        self.in_channel(&current, line, out);
    }

    /// A binary frame of `len` bytes arrived (only plain servers send them).
    pub fn binary_frame(&mut self, now: f64, len: usize) -> Vec<Line> {
        if self.status != Status::Connected {
            return Vec::new();
        }
        let mut out = Vec::new();
        let line = Line::message(LineKind::Theirs, now, UNNAMED, &Body::Data(vec![0; len]));
        let conn = self.conn_channel.clone();
        self.in_channel(&conn, line, &mut out);
        out
    }

    fn v1_event(&mut self, now: f64, event: ServerEvent, out: &mut Vec<Line>) {
        let conn = self.conn_channel.clone();
        match event {
            ServerEvent::Welcome {
                id,
                name,
                online,
                time,
            } => {
                let text = if self.welcomed {
                    format!("reconnected as {name} ({online} online)")
                } else if self.name.as_deref() == Some(name.as_str()) {
                    format!("you joined as {name} ({online} online)")
                } else {
                    let asked = self.name.as_deref().unwrap_or_default();
                    format!("you joined as {name} ({asked} is taken; {online} online)")
                };
                self.welcomed = true;
                let me = Peer { id, name };
                if let Some(c) = self.channels.get_mut(&conn) {
                    c.subscribed(online, Some(&me));
                }
                self.me = Some(me);
                self.in_channel(&conn, Line::event(time as f64, text), out);
            }
            ServerEvent::Message {
                name, time, body, ..
            } => {
                let line = Line::message(LineKind::Theirs, time as f64, &name, &body);
                self.in_channel(&conn, line, out);
            }
            ServerEvent::Presence {
                online,
                joined,
                left,
                joined_count,
                left_count,
            } => {
                let change = PresenceChange {
                    online,
                    joined,
                    left,
                    joined_count,
                    left_count,
                };
                self.presence(now, &conn, change, out);
            }
            ServerEvent::Notice { code, text } => self.notice(now, code, text, out),
        }
    }

    fn v2_event(&mut self, now: f64, event: Event, out: &mut Vec<Line>) {
        match event {
            Event::Welcome { client, name, time } => {
                let text = if self.welcomed {
                    format!("reconnected as {name}")
                } else if self.name.as_deref() == Some(name.as_str()) {
                    format!("connected as {name}")
                } else {
                    let asked = self.name.as_deref().unwrap_or_default();
                    format!("connected as {name} ({asked} is taken)")
                };
                self.welcomed = true;
                self.me = Some(Peer { id: client, name });
                self.everywhere(Line::event(time as f64, text), out);
            }
            Event::Subscribed {
                id,
                channel,
                online,
            } => {
                if self.answered(id.as_ref()) == Some(Pending::Abandoned) {
                    return;
                }
                let me = self.me.clone();
                // A channel left meanwhile is not brought back.
                let Some(c) = self.channels.get_mut(&channel) else {
                    return;
                };
                let text = if c.subscribed(online, me.as_ref()) {
                    format!("rejoined #{channel} ({online} online)")
                } else {
                    format!("you joined #{channel} ({online} online)")
                };
                self.in_channel(&channel, Line::event(now, text), out);
            }
            // Only a channel already left is unsubscribed.
            Event::Unsubscribed { .. } | Event::Pong { .. } => {}
            Event::Published { id, .. } => {
                self.answered(id.as_ref());
            }
            Event::Message {
                channel,
                name,
                time,
                body,
                ..
            } => {
                let line = Line::message(LineKind::Theirs, time as f64, &name, &body);
                self.in_channel(&channel, line, out);
            }
            Event::Presence {
                channel,
                online,
                joined,
                left,
                joined_count,
                left_count,
            } => {
                let change = PresenceChange {
                    online,
                    joined,
                    left,
                    joined_count,
                    left_count,
                };
                self.presence(now, &channel, change, out);
            }
            Event::Error { id, code, text } => match self.answered(id.as_ref()) {
                Some(Pending::Subscribe(channel)) if code == ErrorCode::AlreadySubscribed => {
                    if let Some(c) = self.channels.get_mut(&channel) {
                        c.set_state(ChannelState::Joined);
                    }
                }
                Some(Pending::Subscribe(channel)) => {
                    let Some(c) = self.channels.get_mut(&channel) else {
                        return;
                    };
                    c.set_state(ChannelState::Refused(text.clone()));
                    let line = Line::problem(now, format!("cannot join #{channel}: {text}"));
                    self.in_channel(&channel, line, out);
                }
                Some(Pending::Publish(channel)) => {
                    let line = Line::problem(now, format!("not sent to #{channel}: {text}"));
                    self.in_channel(&channel, line, out);
                }
                Some(Pending::Abandoned) => {}
                None => self.in_current(Line::problem(now, format!("refused: {text}")), out),
            },
            Event::Notice { code, text } => self.notice(now, code, text, out),
        }
    }

    /// The command with this id got its answer: what it was.
    fn answered(&mut self, id: Option<&Id>) -> Option<Pending> {
        match id {
            Some(Id::Num(n)) => self.pending.remove(n),
            _ => None,
        }
    }

    fn presence(&mut self, now: f64, channel: &str, change: PresenceChange, out: &mut Vec<Line>) {
        let my_id = self.me.as_ref().map(|p| p.id);
        let Some(c) = self.channels.get_mut(channel) else {
            return;
        };
        c.set_online(change.online);
        for p in &change.joined {
            c.member_joined(p);
        }
        for p in &change.left {
            c.member_left(p.id);
        }
        let mut lines: Vec<Line> = change
            .joined
            .iter()
            .filter(|p| Some(p.id) != my_id)
            .map(|p| Line::event(now, format!("{} joined", p.name)))
            .chain(
                change
                    .left
                    .iter()
                    .filter(|p| Some(p.id) != my_id)
                    .map(|p| Line::event(now, format!("{} left", p.name))),
            )
            .collect();
        let counts: Vec<String> = [(change.joined_count, "joined"), (change.left_count, "left")]
            .into_iter()
            .filter_map(|(n, what)| n.filter(|&n| n > 0).map(|n| format!("{n} {what}")))
            .collect();
        if !counts.is_empty() {
            lines.push(Line::event(now, counts.join(", ")));
        }
        for line in lines {
            self.in_channel(channel, line, out);
        }
    }

    fn notice(&mut self, now: f64, code: u16, text: String, out: &mut Vec<Line>) {
        self.everywhere(Line::problem(now, format!("server: {text}")), out);
        self.notice = Some((code, text));
    }

    /// The socket closed (or failed to open) with `code` and `reason`.
    /// Schedules the next attempt.
    pub fn closed(&mut self, now: f64, code: u16, reason: &str) -> Vec<Line> {
        if !matches!(self.status, Status::Connecting { .. } | Status::Connected) {
            // We left (or this is a stale socket): nothing to do.
            return Vec::new();
        }
        let opened_at = self.opened_at;
        if opened_at.is_some_and(|t| now - t >= STABLE_MS) {
            self.backoff.reset();
        }
        let delay = self.backoff.next_delay();
        self.status = Status::Waiting {
            retry_at: now + delay.as_secs_f64() * 1_000.0,
        };
        let notice = self.notice.take();
        self.drop_connection();
        let mut lines = Vec::new();
        if opened_at.is_some() {
            let why = match notice {
                // The notice line already said why.
                Some((code, _)) => format!("closed with code {code}"),
                None if reason.is_empty() => match code {
                    1005 | 1006 => "the connection broke".to_owned(),
                    _ => format!("closed with code {code}"),
                },
                None => format!("{reason} ({code})"),
            };
            let line = Line::problem(now, format!("connection lost: {why}; reconnecting…"));
            self.everywhere(line, &mut lines);
        } else if self.backoff.attempt() == 1 {
            let line = Line::problem(now, "cannot reach the server; retrying…");
            self.everywhere(line, &mut lines);
        }
        lines
    }

    /// If a retry is due at `now`, starts it and returns the URL to open.
    pub fn retry_due(&mut self, now: f64) -> Option<String> {
        match self.status {
            Status::Waiting { retry_at } if now >= retry_at => self.retry_now(),
            _ => None,
        }
    }

    /// Skips the wait ("retry now" button, or the browser came back online).
    pub fn retry_now(&mut self) -> Option<String> {
        match self.status {
            Status::Waiting { .. } => Some(self.connect(true)),
            _ => None,
        }
    }

    /// The user opens channel `input` (typed, or from the URL's hash): it
    /// becomes the one shown, joined first if need be (on an open v2
    /// connection a `subscribe` is queued; otherwise the next connection
    /// subscribes). Before the first join it replaces the start channel.
    ///
    /// # Errors
    /// Not a channel name, or a new channel on a v1 or plain server (which
    /// carry one channel per connection); nothing changes.
    pub fn open_channel(&mut self, input: &str) -> Result<(), OpenError> {
        let name = crate::endpoint::channel_input(input).map_err(OpenError::Name)?;
        if self.status == Status::Idle {
            self.channels.restart(&name);
            return Ok(());
        }
        if self.channels.switch(&name) {
            // Joining a refused channel again asks again.
            if matches!(self.channels.current().state(), ChannelState::Refused(_)) {
                if self.status == Status::Connected && self.mode == Some(Mode::V2) {
                    self.subscribe(&name);
                } else if let Some(c) = self.channels.get_mut(&name) {
                    c.set_state(ChannelState::Waiting);
                }
            }
            return Ok(());
        }
        if self.single_channel() {
            return Err(OpenError::OneChannelOnly);
        }
        self.channels.add(&name);
        self.channels.switch(&name);
        if self.status == Status::Connected {
            self.subscribe(&name);
        }
        Ok(())
    }

    /// Shows joined channel `name` (its unread messages count as read).
    /// Returns whether it is joined.
    pub fn show_channel(&mut self, name: &str) -> bool {
        self.channels.switch(name)
    }

    /// The user leaves channel `name` (on an open v2 connection an
    /// `unsubscribe` is queued). The last channel, and the one channel of a
    /// v1 or plain connection, stay. Returns whether it was left.
    pub fn leave_channel(&mut self, name: &str) -> bool {
        if self.single_channel() {
            return false;
        }
        let Some(channel) = self.channels.remove(name) else {
            return false;
        };
        for pending in self.pending.values_mut() {
            if *pending == Pending::Subscribe(name.to_owned()) {
                *pending = Pending::Abandoned;
            }
        }
        if channel.is_subscribed() && self.status == Status::Connected {
            self.outbox.push(
                Command::Unsubscribe {
                    channel: name.to_owned(),
                    id: None,
                }
                .encode(),
            );
        }
        true
    }

    /// Whether the server carries one channel per connection (it answered
    /// `broadcast.v1` or nothing): the page then neither joins nor leaves
    /// channels.
    pub fn single_channel(&self) -> bool {
        matches!(self.mode, Some(Mode::V1 | Mode::Plain))
    }

    /// What the last socket that opened speaks.
    pub fn mode(&self) -> Option<Mode> {
        self.mode
    }

    /// The frame that sends `text` to the current channel: a v2 `publish`
    /// (with an id, so that a refusal names the channel), or the text itself
    /// on a v1 or plain connection. Once it is sent, call [`Model::sent`].
    ///
    /// # Errors
    /// Blank, too long, no open connection, or a channel the server
    /// refused.
    pub fn publish(&mut self, text: &str) -> Result<String, SendError> {
        if text.trim().is_empty() {
            return Err(SendError::Empty);
        }
        if self.status != Status::Connected {
            return Err(SendError::NotConnected);
        }
        if self.mode != Some(Mode::V2) {
            if text.len() > protocol::DEFAULT_MAX_MESSAGE_SIZE {
                return Err(SendError::TooLong(text.len()));
            }
            return Ok(text.to_owned());
        }
        let current = self.channels.current();
        let channel = current.name().to_owned();
        if matches!(current.state(), ChannelState::Refused(_)) {
            return Err(SendError::Refused(channel));
        }
        let id = self.next_id();
        let frame = Command::Publish {
            channel: channel.clone(),
            id: Some(Id::Num(id)),
            body: Body::Text(text.to_owned()),
        }
        .encode();
        // The server's limit is on the frame, the command around the text included.
        if frame.len() > protocol::DEFAULT_MAX_MESSAGE_SIZE {
            return Err(SendError::TooLong(frame.len()));
        }
        self.pending.insert(id, Pending::Publish(channel));
        Ok(frame)
    }

    /// The page sent `text` to the current channel: the line that shows it
    /// (the server does not echo our own messages, so this is the only time
    /// it is shown), kept in the channel's history.
    pub fn sent(&mut self, now: f64, text: &str) -> Line {
        let line = Line::message(
            LineKind::Mine,
            now,
            self.display_name(),
            &Body::Text(text.to_owned()),
        );
        let current = self.channels.current().name().to_owned();
        self.channels.record(&current, line.clone());
        line
    }

    /// The name we show for ourselves: as the server granted it, else as
    /// asked for.
    pub fn display_name(&self) -> &str {
        self.me
            .as_ref()
            .map(|p| p.name.as_str())
            .or(self.name.as_deref())
            .unwrap_or_default()
    }

    /// The connection status, as shown to the user.
    pub fn status_text(&self, now: f64) -> String {
        match self.status {
            Status::Idle => "not connected".to_owned(),
            Status::Disconnected => "disconnected".to_owned(),
            Status::Connecting { retry: false } => "connecting…".to_owned(),
            Status::Connecting { retry: true } => "reconnecting…".to_owned(),
            Status::Connected => "connected".to_owned(),
            Status::Waiting { retry_at } => {
                format!("reconnecting in {} s…", seconds_left(now, retry_at))
            }
        }
    }

    /// Where the connection stands.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Subscribers of the current channel (this page included), when known.
    pub fn online(&self) -> Option<u64> {
        self.channels.current().online()
    }

    /// Who is in the current channel, as far as the page knows (see
    /// [`Channel::members_text`](crate::channels::Channel::members_text)).
    pub fn members_text(&self) -> String {
        self.channels
            .current()
            .members_text(self.me.as_ref().map(|p| p.id))
    }

    /// The joined channels, the current one and the unread list.
    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    /// The channel shown.
    pub fn current_channel(&self) -> &str {
        self.channels.current().name()
    }

    fn url(&self) -> String {
        let mut url = crate::endpoint::ws_url(
            &self.page_protocol,
            &self.host,
            &self.conn_channel,
            self.name.as_deref().unwrap_or_default(),
        );
        if let Some(token) = &self.token {
            url.push_str("&token=");
            url.push_str(&protocol::v1::encode_query_value(token));
        }
        url
    }
}

/// Whole seconds left until `at`, rounded up, for "reconnecting in N s…".
/// Never less than 1 while waiting.
fn seconds_left(now_ms: f64, at_ms: f64) -> u64 {
    let left = ((at_ms - now_ms) / 1_000.0).ceil();
    if left.is_finite() && left >= 1.0 {
        left as u64
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The jitter seed of the models under test.
    const SEED: u64 = 42;

    #[test]
    fn countdown_rounds_up() {
        assert_eq!(seconds_left(0.0, 3_000.0), 3);
        assert_eq!(seconds_left(0.0, 2_001.0), 3);
        assert_eq!(seconds_left(0.0, 2_000.0), 2);
        assert_eq!(seconds_left(0.0, 10.0), 1);
        assert_eq!(seconds_left(5_000.0, 10.0), 1);
        assert_eq!(seconds_left(0.0, f64::NAN), 1);
    }

    #[test]
    fn the_page_token_goes_into_the_websocket_url() {
        let mut m = Model::new("http:", "h:1", SEED);
        m.name = Some("al".into());
        assert_eq!(m.url(), "ws://h:1/ws?name=al");
        m.set_token(Some("a b".into()));
        assert_eq!(m.url(), "ws://h:1/ws?name=al&token=a%20b");
        m.set_token(Some(String::new()));
        assert_eq!(m.url(), "ws://h:1/ws?name=al");
    }

    const T: f64 = 1_700_000_000_000.0;

    fn joined(name: &str) -> Model {
        let mut m = Model::new("http:", "localhost:8080", SEED);
        m.join(name).unwrap();
        assert!(m.opened(T, v1::SUBPROTOCOL).is_empty());
        m
    }

    fn welcome(m: &mut Model, id: u64, name: &str, online: u64) -> Vec<Line> {
        m.text_frame(
            T,
            &ServerEvent::Welcome {
                id,
                name: name.into(),
                online,
                time: T as u64,
            }
            .encode(),
        )
    }

    fn texts(lines: &[Line]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn join_checks_the_name_and_builds_the_url() {
        let mut m = Model::new("https:", "example.org", SEED);
        assert_eq!(m.status_text(T), "not connected", "nothing tried yet");
        assert_eq!(m.join("   "), Err(NameError::Empty));
        assert_eq!(m.join("a\u{200B}b"), Err(NameError::NotPrintable));
        assert_eq!(m.join(&"x".repeat(33)), Err(NameError::TooLong));
        assert_eq!(m.status(), Status::Idle);
        assert_eq!(
            m.join("  Zoë K "),
            Ok("wss://example.org/ws?name=Zo%C3%AB%20K".into())
        );
        assert_eq!(m.status_text(T), "connecting…");
    }

    #[test]
    fn welcome_messages_and_presence_become_lines() {
        let mut m = joined("alice");
        assert_eq!(m.status_text(T), "connected");
        assert_eq!(m.online(), None);
        let lines = welcome(&mut m, 7, "alice", 3);
        assert_eq!(texts(&lines), ["you joined as alice (3 online)"]);
        assert_eq!(m.online(), Some(3));

        let msg = ServerEvent::Message {
            from: 8,
            name: "bob".into(),
            time: T as u64 + 5,
            body: Body::Text("<script>alert(1)</script>".into()),
        };
        let lines = m.text_frame(T, &msg.encode());
        assert_eq!(
            lines,
            [Line {
                kind: LineKind::Theirs,
                time_ms: T + 5.0,
                who: Some("bob".into()),
                text: "<script>alert(1)</script>".into(),
                binary: false,
            }]
        );

        let bin = ServerEvent::Message {
            from: 8,
            name: "bob".into(),
            time: T as u64,
            body: Body::Data(vec![1, 2, 3]),
        };
        let lines = m.text_frame(T, &bin.encode());
        assert_eq!(texts(&lines), ["<binary 3 bytes>"]);
        assert!(lines[0].binary);

        // Our own join is not news; others' are.
        let presence = ServerEvent::Presence {
            online: 4,
            joined: vec![
                Peer {
                    id: 7,
                    name: "alice".into(),
                },
                Peer {
                    id: 9,
                    name: "carol".into(),
                },
            ],
            left: vec![Peer {
                id: 8,
                name: "bob".into(),
            }],
            joined_count: None,
            left_count: None,
        };
        let lines = m.text_frame(T, &presence.encode());
        assert_eq!(texts(&lines), ["carol joined", "bob left"]);
        assert_eq!(m.online(), Some(4));

        let many = ServerEvent::Presence {
            online: 200,
            joined: vec![],
            left: vec![],
            joined_count: Some(150),
            left_count: Some(3),
        };
        assert_eq!(
            texts(&m.text_frame(T, &many.encode())),
            ["150 joined, 3 left"]
        );
        assert_eq!(m.online(), Some(200));

        // Future event types are skipped; garbage is reported, not fatal.
        assert!(m.text_frame(T, r#"{"type":"typing"}"#).is_empty());
        let lines = m.text_frame(T, "nope");
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].kind, LineKind::Problem);
        assert_eq!(m.status(), Status::Connected);
    }

    #[test]
    fn a_taken_name_is_explained() {
        let mut m = joined("alice");
        let lines = welcome(&mut m, 2, "alice-2", 2);
        assert_eq!(
            texts(&lines),
            ["you joined as alice-2 (alice is taken; 2 online)"]
        );
        assert_eq!(m.display_name(), "alice-2");
        let mine = m.sent(T, "hi");
        assert_eq!(mine.kind, LineKind::Mine);
        assert_eq!(mine.who.as_deref(), Some("alice-2"));
    }

    #[test]
    fn sending_needs_an_open_connection_and_a_sane_size() {
        let mut m = Model::new("http:", "h", SEED);
        assert_eq!(m.publish("hi"), Err(SendError::NotConnected));
        m.join("a").unwrap();
        assert_eq!(m.publish("hi"), Err(SendError::NotConnected));
        m.opened(T, v1::SUBPROTOCOL);
        assert_eq!(m.publish("hi").as_deref(), Ok("hi"), "v1 sends the text");
        assert_eq!(m.publish("  \n "), Err(SendError::Empty));
        let big = "x".repeat(protocol::DEFAULT_MAX_MESSAGE_SIZE + 1);
        assert_eq!(m.publish(&big), Err(SendError::TooLong(big.len())));
        assert!(m.publish(&big[1..]).is_ok(), "exactly the limit is fine");
        assert!(m.take_outgoing().is_empty(), "v1 has no commands");
    }

    #[test]
    fn drops_are_retried_with_growing_delays() {
        let mut m = joined("alice");
        welcome(&mut m, 1, "alice", 1);
        let notice = ServerEvent::Notice {
            code: 1001,
            text: "the server is shutting down".into(),
        };
        assert_eq!(
            texts(&m.text_frame(T, &notice.encode())),
            ["server: the server is shutting down"]
        );
        // The same schedule as the model's: same bounds, same seed. Each
        // delay the model waits is the twin's next one, so a reset that
        // should (or should not) happen shows as a different delay.
        let mut twin = Backoff::with_seed(BACKOFF_FIRST, BACKOFF_CAP, SEED);
        let next = |attempt: u32, twin: &mut Backoff| {
            let d = twin.next_delay();
            assert_eq!(twin.attempt(), attempt);
            assert!(d <= twin.ceiling(attempt), "{d:?} over the ceiling");
            d.as_secs_f64() * 1_000.0
        };
        let waiting = |t: f64, delay: f64| Status::Waiting {
            retry_at: t + delay,
        };

        // Up for a minute: the schedule starts over.
        let t = T + 60_000.0;
        let lines = m.closed(t, 1001, "server shutting down");
        assert_eq!(
            texts(&lines),
            ["connection lost: closed with code 1001; reconnecting…"]
        );
        let d = next(1, &mut twin);
        assert!(d <= 1_000.0);
        assert_eq!(m.status(), waiting(t, d));
        assert_eq!(m.status_text(t), "reconnecting in 1 s…");
        assert_eq!(m.online(), None);
        assert_eq!(m.retry_due(t + d - 1.0), None);
        assert_eq!(
            m.retry_due(t + d).as_deref(),
            Some("ws://localhost:8080/ws?name=alice")
        );
        assert_eq!(m.status_text(t), "reconnecting…");
        assert_eq!(m.retry_due(t + d + 100.0), None, "already connecting");

        // The server is still down: quietly wait, the ceiling doubling each time.
        let t = t + d + 100.0;
        assert!(m.closed(t, 1006, "").is_empty());
        let d = next(2, &mut twin);
        assert_eq!(m.status(), waiting(t, d));
        assert_eq!(
            m.status_text(t),
            format!("reconnecting in {} s…", seconds_left(t, t + d))
        );
        m.retry_due(t + d).unwrap();
        let t = t + d + 100.0;
        assert!(m.closed(t, 1006, "").is_empty());
        let d = next(3, &mut twin);
        assert_eq!(m.status(), waiting(t, d));

        // "Retry now", and this time it works.
        m.retry_now().unwrap();
        m.opened(t + 10.0, v1::SUBPROTOCOL);
        let lines = welcome(&mut m, 2, "alice", 2);
        assert_eq!(texts(&lines), ["reconnected as alice (2 online)"]);
        assert_eq!(m.status_text(t), "connected");

        // A connection that drops at once does not reset the schedule.
        let lines = m.closed(t + 20.0, 1013, "slow consumer");
        assert_eq!(
            texts(&lines),
            ["connection lost: slow consumer (1013); reconnecting…"]
        );
        assert_eq!(m.status(), waiting(t + 20.0, next(4, &mut twin)));

        // One that stayed up does: back to the first ceiling.
        m.retry_now().unwrap();
        m.opened(t + 30.0, v1::SUBPROTOCOL);
        welcome(&mut m, 3, "alice", 2);
        let t = t + 30.0 + STABLE_MS;
        m.closed(t, 1006, "");
        twin.reset();
        assert_eq!(m.status(), waiting(t, next(1, &mut twin)));
    }

    #[test]
    fn a_first_connection_that_fails_says_so_once() {
        let mut m = Model::new("http:", "h", SEED);
        m.join("a").unwrap();
        assert_eq!(
            texts(&m.closed(T, 1006, "")),
            ["cannot reach the server; retrying…"]
        );
        m.retry_now().unwrap();
        assert!(m.closed(T, 1006, "").is_empty());
        // The second attempt waits up to two seconds.
        let text = m.status_text(T);
        assert!(
            ["reconnecting in 1 s…", "reconnecting in 2 s…"].contains(&text.as_str()),
            "{text}"
        );
    }

    #[test]
    fn leaving_stops_everything() {
        let mut m = joined("alice");
        welcome(&mut m, 1, "alice", 1);
        assert_eq!(
            texts(&m.leave(T).into_iter().collect::<Vec<_>>()),
            ["you left"]
        );
        assert_eq!(m.status_text(T), "disconnected");
        assert_eq!(m.online(), None);
        // The close event of the socket we closed changes nothing.
        assert!(m.closed(T, 1000, "").is_empty());
        assert_eq!(m.status(), Status::Disconnected);
        assert_eq!(m.retry_due(T + 1e9), None);
        assert_eq!(m.leave(T), None);
        // Frames from a stale socket are ignored.
        assert!(m
            .text_frame(T, r#"{"type":"notice","code":1,"text":"x"}"#)
            .is_empty());
        // Joining again under another name starts afresh.
        assert_eq!(
            m.join("bob").as_deref(),
            Ok("ws://localhost:8080/ws?name=bob")
        );
        m.opened(T, v1::SUBPROTOCOL);
        assert_eq!(
            texts(&welcome(&mut m, 5, "bob", 2)),
            ["you joined as bob (2 online)"]
        );
    }

    #[test]
    fn plain_servers_work_in_raw_mode() {
        let mut m = Model::new("http:", "h", SEED);
        m.join("a").unwrap();
        let lines = m.opened(T, "");
        assert_eq!(
            texts(&lines),
            ["connected to a plain broadcast server: no names or presence"]
        );
        let lines = m.text_frame(T, r#"{"type":"welcome"}"#);
        assert_eq!(lines[0].who.as_deref(), Some(UNNAMED));
        assert_eq!(lines[0].text, r#"{"type":"welcome"}"#);
        let lines = m.binary_frame(T, 1);
        assert_eq!(texts(&lines), ["<binary 1 byte>"]);
        assert_eq!(m.online(), None);
    }

    // ------------------------------------------------------------ broadcast.v2

    fn ev(m: &mut Model, event: Event) -> Vec<Line> {
        m.text_frame(T, &event.encode())
    }

    fn subscribe_cmd(channel: &str, id: u64) -> String {
        Command::Subscribe {
            channel: channel.into(),
            id: Some(Id::Num(id)),
        }
        .encode()
    }

    fn v2_message(channel: &str, name: &str, text: &str) -> Event {
        Event::Message {
            channel: channel.into(),
            from: 8,
            name: name.into(),
            time: T as u64,
            body: Body::Text(text.into()),
        }
    }

    /// A page started at `/#red`, joined as alice on a v2 server, in `red`
    /// with `online` subscribers.
    fn v2_in_red(online: u64) -> Model {
        let mut m = Model::new("http:", "h", SEED);
        m.open_channel("red").unwrap();
        assert_eq!(m.join("alice").as_deref(), Ok("ws://h/ws/red?name=alice"));
        assert!(m.opened(T, v2::SUBPROTOCOL).is_empty());
        assert_eq!(m.take_outgoing(), [subscribe_cmd("red", 1)]);
        assert!(m.take_outgoing().is_empty(), "taken once");
        assert_eq!(m.channels().current().state(), &ChannelState::Joining);
        let welcome = Event::Welcome {
            client: 7,
            name: "alice".into(),
            time: T as u64,
        };
        assert_eq!(texts(&ev(&mut m, welcome)), ["connected as alice"]);
        let subscribed = Event::Subscribed {
            id: Some(Id::Num(1)),
            channel: "red".into(),
            online,
        };
        assert_eq!(
            texts(&ev(&mut m, subscribed)),
            [format!("you joined #red ({online} online)")]
        );
        m
    }

    fn history(m: &Model, channel: &str) -> Vec<String> {
        m.channels()
            .get(channel)
            .unwrap()
            .history()
            .map(|l| l.text.clone())
            .collect()
    }

    #[test]
    fn v2_carries_every_channel_over_one_connection() {
        let mut m = v2_in_red(2);
        assert_eq!(m.mode(), Some(Mode::V2));
        assert!(!m.single_channel());
        assert_eq!(m.online(), Some(2));
        assert_eq!(m.members_text(), "alice (you) and 1 more");
        assert_eq!(m.channels().current().state(), &ChannelState::Joined);

        // Joining a second channel subscribes at once and shows it.
        assert_eq!(m.open_channel(" #blue "), Ok(()));
        assert_eq!(m.current_channel(), "blue");
        assert_eq!(m.take_outgoing(), [subscribe_cmd("blue", 2)]);
        assert_eq!(m.online(), None, "not known before the answer");
        let subscribed = Event::Subscribed {
            id: Some(Id::Num(2)),
            channel: "blue".into(),
            online: 1,
        };
        assert_eq!(
            texts(&ev(&mut m, subscribed)),
            ["you joined #blue (1 online)"]
        );

        // A message in the channel not shown is kept and counted, not shown.
        assert!(ev(&mut m, v2_message("red", "bob", "in red")).is_empty());
        let lines = ev(&mut m, v2_message("blue", "carol", "in blue"));
        assert_eq!(texts(&lines), ["in blue"]);
        assert_eq!(lines[0].who.as_deref(), Some("carol"));
        let red = m.channels().get("red").unwrap();
        assert_eq!(red.unread(), 1);
        assert_eq!(m.channels().get("blue").unwrap().unread(), 0);
        let unread: Vec<_> = m
            .channels()
            .unread()
            .map(|u| {
                format!(
                    "{} {}: {}",
                    u.tag(),
                    u.line.who.as_deref().unwrap(),
                    u.line.text
                )
            })
            .collect();
        assert_eq!(unread, ["[#red] bob: in red"]);

        // Showing it reads it; its history has everything.
        assert!(m.show_channel("red"));
        assert_eq!(m.channels().get("red").unwrap().unread(), 0);
        assert_eq!(m.channels().unread().count(), 0);
        assert_eq!(
            history(&m, "red"),
            ["connected as alice", "you joined #red (2 online)", "in red"]
        );
        assert!(!m.show_channel("green"), "not joined");

        // Sending goes to the channel shown, with an id; the line is kept there.
        let frame = m.publish("hi red").unwrap();
        assert_eq!(
            Command::decode(&frame),
            Ok(Command::Publish {
                channel: "red".into(),
                id: Some(Id::Num(3)),
                body: Body::Text("hi red".into()),
            })
        );
        let mine = m.sent(T, "hi red");
        assert_eq!(
            (mine.kind, mine.who.as_deref()),
            (LineKind::Mine, Some("alice"))
        );
        assert_eq!(history(&m, "red").last().unwrap(), "hi red");
        assert!(ev(
            &mut m,
            Event::Published {
                id: Some(Id::Num(3)),
                channel: "red".into()
            }
        )
        .is_empty());
        // A refusal names its channel, wherever it is shown.
        m.publish("again").unwrap();
        m.show_channel("blue");
        let refused = Event::Error {
            id: Some(Id::Num(4)),
            code: ErrorCode::RateLimited,
            text: "too fast".into(),
        };
        assert!(ev(&mut m, refused).is_empty());
        assert_eq!(
            history(&m, "red").last().unwrap(),
            "not sent to #red: too fast"
        );
        let anonymous = Event::Error {
            id: None,
            code: ErrorCode::BadRequest,
            text: "what?".into(),
        };
        assert_eq!(texts(&ev(&mut m, anonymous)), ["refused: what?"]);

        // Presence per channel: counts, names, lines.
        let presence = Event::Presence {
            channel: "blue".into(),
            online: 3,
            joined: vec![
                Peer {
                    id: 7,
                    name: "alice".into(),
                },
                Peer {
                    id: 9,
                    name: "dave".into(),
                },
            ],
            left: vec![],
            joined_count: None,
            left_count: None,
        };
        assert_eq!(texts(&ev(&mut m, presence)), ["dave joined"]);
        assert_eq!(m.online(), Some(3));
        assert_eq!(m.members_text(), "alice (you), dave and 1 more");
        assert_eq!(m.channels().get("red").unwrap().online(), Some(2));

        // Leaving: an unsubscribe, the neighbour shown, later events dropped.
        assert!(m.leave_channel("blue"));
        assert_eq!(
            m.take_outgoing(),
            [Command::Unsubscribe {
                channel: "blue".into(),
                id: None
            }
            .encode()]
        );
        assert_eq!(m.current_channel(), "red");
        assert!(ev(&mut m, v2_message("blue", "dave", "late")).is_empty());
        assert!(m.channels().get("blue").is_none());
        assert_eq!(m.channels().unread().count(), 0);
        assert!(!m.leave_channel("red"), "the last channel stays");
        assert!(m.take_outgoing().is_empty());
        // Joining it again starts afresh.
        m.open_channel("blue").unwrap();
        assert_eq!(m.take_outgoing(), [subscribe_cmd("blue", 5)]);
        assert!(history(&m, "blue").is_empty());
    }

    #[test]
    fn a_reconnection_subscribes_every_channel_again() {
        let mut m = v2_in_red(1);
        m.open_channel("blue").unwrap();
        m.take_outgoing();
        let lines = m.closed(T + 60_000.0, 1006, "");
        assert_eq!(
            texts(&lines),
            ["connection lost: the connection broke; reconnecting…"]
        );
        assert_eq!(
            history(&m, "red").last(),
            lines.last().map(|l| &l.text),
            "told everywhere"
        );
        for c in m.channels().iter() {
            assert_eq!(c.state(), &ChannelState::Waiting);
            assert_eq!(c.online(), None);
        }
        assert_eq!(m.members_text(), "");
        // A channel joined while disconnected waits for the connection.
        m.open_channel("green").unwrap();
        assert!(m.take_outgoing().is_empty());
        assert_eq!(m.publish("x"), Err(SendError::NotConnected));

        // The URL names the channel shown (for a server that answers v1).
        assert_eq!(m.retry_now().as_deref(), Some("ws://h/ws/green?name=alice"));
        m.opened(T + 61_000.0, v2::SUBPROTOCOL);
        assert_eq!(
            m.take_outgoing(),
            [
                subscribe_cmd("red", 3),
                subscribe_cmd("blue", 4),
                subscribe_cmd("green", 5)
            ]
        );
        let welcome = Event::Welcome {
            client: 11,
            name: "alice".into(),
            time: T as u64,
        };
        assert_eq!(texts(&ev(&mut m, welcome)), ["reconnected as alice"]);
        m.show_channel("red");
        let again = Event::Subscribed {
            id: Some(Id::Num(3)),
            channel: "red".into(),
            online: 2,
        };
        assert_eq!(texts(&ev(&mut m, again)), ["rejoined #red (2 online)"]);
        assert_eq!(m.members_text(), "alice (you) and 1 more");
        // Answers to the old connection's commands mean nothing now.
        let stale = Event::Error {
            id: Some(Id::Num(2)),
            code: ErrorCode::Forbidden,
            text: "no".into(),
        };
        assert_eq!(texts(&ev(&mut m, stale)), ["refused: no"]);
        assert_eq!(
            m.channels().get("blue").unwrap().state(),
            &ChannelState::Joining
        );
    }

    #[test]
    fn a_refused_channel_says_why_and_is_not_retried() {
        let mut m = v2_in_red(1);
        m.open_channel("secret").unwrap();
        m.take_outgoing();
        let forbidden = Event::Error {
            id: Some(Id::Num(2)),
            code: ErrorCode::Forbidden,
            text: "your token does not allow this channel".into(),
        };
        assert_eq!(
            texts(&ev(&mut m, forbidden)),
            ["cannot join #secret: your token does not allow this channel"]
        );
        assert_eq!(
            m.channels().current().state(),
            &ChannelState::Refused("your token does not allow this channel".into())
        );
        assert_eq!(m.publish("x"), Err(SendError::Refused("secret".into())));
        assert_eq!(
            SendError::Refused("secret".into()).to_string(),
            "you are not in #secret"
        );

        m.closed(T, 1006, "");
        m.retry_now().unwrap();
        m.opened(T, v2::SUBPROTOCOL);
        assert_eq!(m.take_outgoing(), [subscribe_cmd("red", 3)], "not secret");
        // Joining it again asks again (say the token changed).
        m.show_channel("red");
        m.open_channel("secret").unwrap();
        assert_eq!(m.take_outgoing(), [subscribe_cmd("secret", 4)]);
        assert_eq!(m.channels().current().state(), &ChannelState::Joining);
        ev(
            &mut m,
            Event::Error {
                id: Some(Id::Num(4)),
                code: ErrorCode::Forbidden,
                text: "still no".into(),
            },
        );
        // Leaving it sends nothing: it was never subscribed.
        assert!(m.leave_channel("secret"));
        assert!(m.take_outgoing().is_empty());

        // "Already subscribed" is as good as subscribed.
        m.open_channel("blue").unwrap();
        ev(
            &mut m,
            Event::Error {
                id: Some(Id::Num(5)),
                code: ErrorCode::AlreadySubscribed,
                text: "already".into(),
            },
        );
        assert_eq!(m.channels().current().state(), &ChannelState::Joined);
    }

    #[test]
    fn answers_for_a_channel_left_are_dropped() {
        let mut m = v2_in_red(1);
        m.open_channel("blue").unwrap();
        assert!(m.leave_channel("blue"));
        m.open_channel("blue").unwrap();
        assert_eq!(
            m.take_outgoing(),
            [
                subscribe_cmd("blue", 2),
                Command::Unsubscribe {
                    channel: "blue".into(),
                    id: None
                }
                .encode(),
                subscribe_cmd("blue", 3),
            ]
        );
        // The server answers all three in order; only the last counts.
        let old = Event::Subscribed {
            id: Some(Id::Num(2)),
            channel: "blue".into(),
            online: 1,
        };
        assert!(ev(&mut m, old).is_empty());
        assert_eq!(m.channels().current().state(), &ChannelState::Joining);
        ev(
            &mut m,
            Event::Unsubscribed {
                id: None,
                channel: "blue".into(),
                online: 0,
            },
        );
        let new = Event::Subscribed {
            id: Some(Id::Num(3)),
            channel: "blue".into(),
            online: 1,
        };
        assert_eq!(texts(&ev(&mut m, new)), ["you joined #blue (1 online)"]);
        assert_eq!(m.channels().current().state(), &ChannelState::Joined);
    }

    #[test]
    fn channel_names_are_checked_in_the_page() {
        let mut m = v2_in_red(1);
        assert_eq!(
            m.open_channel("a b"),
            Err(OpenError::Name(ChannelError::BadByte { ch: ' ', at: 1 }))
        );
        assert_eq!(
            m.open_channel(""),
            Err(OpenError::Name(ChannelError::Empty))
        );
        let long = "x".repeat(channel::MAX_LEN + 1);
        assert_eq!(
            m.open_channel(&long),
            Err(OpenError::Name(ChannelError::TooLong { len: long.len() }))
        );
        assert_eq!(m.channels().iter().count(), 1);
        assert!(m.take_outgoing().is_empty());
        // The one already joined is only shown.
        m.open_channel("blue").unwrap();
        m.take_outgoing();
        m.open_channel("#red").unwrap();
        assert_eq!(m.current_channel(), "red");
        assert!(m.take_outgoing().is_empty());
    }

    #[test]
    fn a_v1_server_gets_the_single_channel_of_the_url() {
        let mut m = Model::new("http:", "h", SEED);
        m.open_channel("red").unwrap();
        m.open_channel("blue").unwrap();
        assert_eq!(
            m.channels().iter().map(|c| c.name()).collect::<Vec<_>>(),
            ["blue"],
            "before the first join the start channel is replaced"
        );
        assert_eq!(m.join("alice").as_deref(), Ok("ws://h/ws/blue?name=alice"));
        assert!(m.opened(T, v1::SUBPROTOCOL).is_empty());
        assert!(m.take_outgoing().is_empty());
        assert!(m.single_channel());
        assert_eq!(
            texts(&welcome(&mut m, 3, "alice", 2)),
            ["you joined as alice (2 online)"]
        );
        assert_eq!(m.online(), Some(2));
        assert_eq!(m.members_text(), "alice (you) and 1 more");
        assert_eq!(m.open_channel("green"), Err(OpenError::OneChannelOnly));
        assert_eq!(
            OpenError::OneChannelOnly.to_string(),
            "this server speaks broadcast.v1, one channel per connection"
        );
        assert!(!m.leave_channel("blue"));
        assert_eq!(m.publish("hi").as_deref(), Ok("hi"));
        let msg = ServerEvent::Message {
            from: 8,
            name: "bob".into(),
            time: T as u64,
            body: Body::Text("hello blue".into()),
        };
        assert_eq!(texts(&m.text_frame(T, &msg.encode())), ["hello blue"]);
        assert_eq!(history(&m, "blue").last().unwrap(), "hello blue");
    }

    #[test]
    fn the_url_names_the_channel_shown_when_connecting() {
        let mut m = Model::new("https:", "h", SEED);
        m.open_channel("?channel=x").unwrap_err();
        assert_eq!(m.join("al").as_deref(), Ok("wss://h/ws?name=al"));
        assert_eq!(m.status_text(T), "connecting…");
        m.open_channel("team/chat").unwrap();
        m.closed(T, 1006, "");
        assert_eq!(
            m.retry_now().as_deref(),
            Some("wss://h/ws/team/chat?name=al")
        );
    }
}
