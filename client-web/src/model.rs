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
//!
//! History and resume (v2): a channel joined for the first time is
//! subscribed with `rewind` [`REWIND_ON_OPEN`], so the page opens on its
//! recent messages; each channel's last position is kept (a
//! `protocol::history::Cursor`), and a new connection subscribes with
//! `since` it: the server replays what was missed, then the page says
//! `resumed: N missed messages delivered`, or, if the server no longer had
//! it all, that some messages may be missing. Messages this page sent on an
//! earlier connection are not shown twice.
//!
//! Why one file of this size: the page's whole state machine (connection,
//! reconnection, v1/v2 events, channels) is kept apart from the DOM so that
//! it runs and is tested natively; its tests are in `model_tests.rs`, the
//! channel bookkeeping in `channels.rs`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use protocol::backoff::{is_planned_close, Backoff};
use protocol::channel::{self, ChannelError};
use protocol::history::{Cursor, Position, Resumed, Unrecovered};
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
/// Messages a channel joined afresh shows from its history (`rewind`).
pub const REWIND_ON_OPEN: u64 = 50;
/// How many earlier connection ids a replay recognises as this page's.
const PAST_IDS: usize = 16;
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
    /// A `members` asked right after the channel's `subscribed`.
    Members(String),
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
    /// Each joined channel's place in its history (v2), across connections.
    cursors: HashMap<String, Cursor>,
    /// The channels this connection subscribed to with `since`.
    resuming: HashSet<String>,
    /// The ids of earlier connections: a replay skips this page's own
    /// messages (they are already shown).
    past_ids: Vec<u64>,
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
            cursors: HashMap::new(),
            resuming: HashSet::new(),
            past_ids: Vec::new(),
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
        if let Some(me) = self.me.take() {
            if self.past_ids.len() == PAST_IDS {
                self.past_ids.remove(0);
            }
            self.past_ids.push(me.id);
        }
        self.resuming.clear();
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

    /// Queues a v2 `subscribe` to `name` (a joined channel): with `since`
    /// its last position when it has one, else with `rewind`
    /// [`REWIND_ON_OPEN`] (its recent history).
    fn subscribe(&mut self, name: &str) {
        let since = self.cursors.get(name).and_then(Cursor::since).cloned();
        if since.is_some() {
            self.resuming.insert(name.to_owned());
        }
        let rewind = since.is_none().then_some(REWIND_ON_OPEN);
        self.queue(Pending::Subscribe(name.to_owned()), |id| {
            Command::Subscribe {
                channel: name.to_owned(),
                id,
                since,
                rewind,
            }
        });
        if let Some(c) = self.channels.get_mut(name) {
            c.set_state(ChannelState::Joining);
        }
    }

    /// Queues a v2 `members` for `name`, to learn who was there first
    /// (presence only names who joins later).
    fn ask_members(&mut self, name: &str) {
        self.queue(Pending::Members(name.to_owned()), |id| Command::Members {
            channel: name.to_owned(),
            id,
        });
    }

    /// Queues the command `make` builds with a fresh id, waiting as `pending`.
    fn queue(&mut self, pending: Pending, make: impl FnOnce(Option<Id>) -> Command) {
        let id = self.next_id();
        self.pending.insert(id, pending);
        self.outbox.push(make(Some(Id::Num(id))).encode());
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
                ..
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
                offset,
                epoch,
                recovered,
                reason,
            } => {
                let resumed = self.resuming.remove(&channel);
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
                let position = offset
                    .zip(epoch)
                    .map(|(offset, epoch)| Position { offset, epoch });
                let outcome = self
                    .cursors
                    .entry(channel.clone())
                    .or_default()
                    .joined(resumed, recovered, reason, position);
                self.resumed(now, &channel, outcome, out);
                self.ask_members(&channel);
            }
            Event::Members {
                id,
                channel,
                online,
                members,
                ..
            } => {
                self.answered(id.as_ref());
                let me = self.me.clone();
                // Only a channel still joined (not left, not reconnecting).
                if let Some(c) = self.channels.get_mut(&channel) {
                    if c.state() == &ChannelState::Joined {
                        c.listed(online, &members, me.as_ref());
                    }
                }
            }
            // Only a channel already left is unsubscribed.
            Event::Unsubscribed { .. } | Event::Pong { .. } => {}
            Event::Published { id, .. } => {
                self.answered(id.as_ref());
            }
            Event::Message {
                channel,
                from,
                name,
                time,
                offset,
                epoch,
                body,
            } => {
                let Some(cursor) = self.cursors.get_mut(&channel) else {
                    let line = Line::message(LineKind::Theirs, time as f64, &name, &body);
                    self.in_channel(&channel, line, out);
                    return;
                };
                let own = cursor.replaying() && self.past_ids.contains(&from);
                let outcome = cursor.message(offset, epoch.as_deref(), own);
                if !own {
                    let line = Line::message(LineKind::Theirs, time as f64, &name, &body);
                    self.in_channel(&channel, line, out);
                }
                self.resumed(now, &channel, outcome, out);
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
                Some(Pending::Members(channel)) => {
                    let line = Line::problem(now, format!("cannot list #{channel}: {text}"));
                    self.in_channel(&channel, line, out);
                }
                Some(Pending::Abandoned) => {}
                None => self.in_current(Line::problem(now, format!("refused: {text}")), out),
            },
            Event::Notice { code, text } => self.notice(now, code, text, out),
        }
    }

    /// Tells how a resume of `channel` went, if there is something to tell.
    fn resumed(&mut self, now: f64, channel: &str, outcome: Option<Resumed>, out: &mut Vec<Line>) {
        let line = match outcome {
            None | Some(Resumed::Recovered { missed: 0 }) => return,
            Some(Resumed::Recovered { missed: 1 }) => {
                Line::event(now, "resumed: 1 missed message delivered")
            }
            Some(Resumed::Recovered { missed }) => {
                Line::event(now, format!("resumed: {missed} missed messages delivered"))
            }
            Some(Resumed::Unrecovered(why)) => {
                let why = match why {
                    Unrecovered::Epoch => "the server lost its history (restarted)",
                    Unrecovered::Expired => "the server no longer had them all",
                    Unrecovered::Disabled => "the server keeps no history",
                };
                Line::problem(
                    now,
                    format!("could not resume #{channel}: some messages may be missing ({why})"),
                )
            }
        };
        self.in_channel(channel, line, out);
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
        if opened_at.is_some() && is_planned_close(code) {
            // 1001/1012: the server is expected back soon.
            self.backoff.expect_return();
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
        // Joined again later, it opens on its recent history.
        self.cursors.remove(name);
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
#[path = "model_tests.rs"]
mod tests;
