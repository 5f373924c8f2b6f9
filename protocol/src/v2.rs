//! The `broadcast.v2` subprotocol: channels over one connection, with
//! commands from the client and replies and events from the server, all as
//! JSON text frames.
//!
//! # Negotiation
//! A client offers `Sec-WebSocket-Protocol: broadcast.v2` (it may offer
//! `broadcast.v1` after it, and speaks whichever the server answers with).
//! The display name is chosen as in v1 (`?name=`, see
//! [`v1::NAME_PARAM`](crate::v1::NAME_PARAM)). A v2 connection starts
//! subscribed to no channel and subscribes with commands; names follow
//! [`channel::validate`].
//!
//! # Client to server
//! Every frame is a text frame holding one JSON object with a `type`.
//! Unknown fields are ignored; a missing `id`, or `"id": null`, means none.
//!
//! | `type` | fields | the server answers |
//! | --- | --- | --- |
//! | `subscribe` | `channel`, `id`?, `since`? (`{offset, epoch}`: resume after that position) or `rewind`? (N: the last N kept messages) | `subscribed`, then (with `since` or `rewind`) the kept `message`s, then the channel's `message`s and `presence` |
//! | `unsubscribe` | `channel`, `id`? | `unsubscribed`; nothing more from that channel |
//! | `publish` | `channel`, `id`?, and `text` (a string) or `data` (base64 of bytes): exactly one | `published` if it had an `id`, nothing otherwise; the channel's other subscribers get a `message` |
//! | `members` | `channel`, `id`? | `members` (subscribing is not needed, the token must allow the channel) |
//! | `ping` | `id`? | `pong` |
//!
//! A command the server refuses gets an `error` instead of its answer.
//!
//! # Server to client
//! Every frame is a text frame holding one JSON object with a `type`.
//! `id` is present exactly when the command it answers carried one.
//!
//! | `type` | fields | when |
//! | --- | --- | --- |
//! | `welcome` | `client` (this connection's id), `name` (as accepted, maybe suffixed), `time` | first frame after the upgrade |
//! | `subscribed` | `id`?, `channel`, `online` (its subscribers, this one included); with history `offset` and `epoch` (the channel's position); with `since` `recovered` and, if false, `reason` (`epoch`, `expired`, `disabled`) | answer to `subscribe` |
//! | `unsubscribed` | `id`?, `channel`, `online` (its subscribers left) | answer to `unsubscribe` |
//! | `published` | `id`, `channel` | answer to a `publish` that had an `id`, once the server took it |
//! | `message` | `channel`, `from` (connection id), `name`, `time`, with history `offset` and `epoch`, and `text` or `data` (base64) | a publish on a subscribed channel |
//! | `presence` | `channel`, `online`, and `joined`/`left` (lists of `{id, name}`) or `joined_count`/`left_count` when many changed | a subscribed channel's subscribers changed (batched, like v1's) |
//! | `members` | `id`?, `channel`, `online` (everyone in it), `members` (its named members, a list of `{id, name}` by id, at most [`MAX_MEMBERS_LISTED`]), `truncated` (true when more are named than listed) | answer to `members` |
//! | `pong` | `id`? | answer to `ping` |
//! | `error` | `id`?, `code` (an [`ErrorCode`]), `text` (one line for humans) | a command was refused |
//! | `notice` | `code` (the close code that follows), `text` | just before the server closes the connection |
//!
//! `time` is the server's receive time in milliseconds since the Unix epoch.
//! Clients must ignore unknown fields and skip unknown types, and treat an
//! unknown error `code` as a generic refusal, so the server can add to v2.
//!
//! # Command ids
//! An `id` is a JSON unsigned integer (no fraction, no exponent, at most
//! 2^64-1) or a string of at most [`MAX_ID_LEN`] (64) bytes. The server
//! echoes it verbatim in the answer or the error, so a client can match
//! replies to commands. A command whose `id` breaks this rule is refused
//! with `bad_request` and an error without `id` (it cannot be echoed).
//!
//! # Error codes
//!
//! | `code` | the server sends it when |
//! | --- | --- |
//! | `bad_json` | the frame is not JSON; a `notice` and the close (1007) follow this `error` |
//! | `bad_request` | the JSON is not a command: not an object, no `type`, a field missing or of the wrong type, `text` and `data` both or neither, bad base64, a bad `id` |
//! | `unknown_type` | the `type` is not one of the commands above |
//! | `bad_channel` | `channel` is not a valid channel name |
//! | `not_subscribed` | `unsubscribe` of a channel this connection is not subscribed to |
//! | `already_subscribed` | `subscribe` to a channel this connection is already subscribed to |
//! | `forbidden` | the connection's token does not grant this channel (`subscribe`, `publish`, `members`) |
//! | `too_many_channels` | `subscribe` past the server's limit of channels per connection |
//! | `too_large` | a `publish` body is larger than the server's message limit |
//! | `rate_limited` | a `publish` came faster than the server's rate limit allows; it was dropped |
//!
//! # Closes
//! A frame that is not valid UTF-8 closes the connection with 1007. A text
//! frame that is not JSON closes it with 1007 after a `notice` (preceded by
//! its `bad_json` error). A binary frame closes it with 1003.
//! [`MAX_BAD_COMMANDS`] (16) commands in a row that [`Command::decode`]
//! refuses close it with 1008 (after a `notice`); a command it accepts
//! resets the count. Everything else a client gets wrong
//! is an `error` event and the connection stays open. The close reasons are
//! the `CLOSE_*` constants here and [`CloseReason::INVALID_UTF8`].
//!
//! Why one file of this size: it is the whole `broadcast.v2` wire contract
//! (the docs above, every command and event type with its serde shape, the
//! decoder that recovers the `id` of a refused command); its tests are in
//! `v2_tests.rs`.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::channel;
use crate::close::{self, CloseReason};
pub use crate::v1::{Body, BodyRef, Peer};

/// The subprotocol name offered in `Sec-WebSocket-Protocol`.
pub const SUBPROTOCOL: &str = "broadcast.v2";
/// Longest string command id, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Most members a `members` answer lists (the lowest ids); `truncated`
/// says when more are named.
pub const MAX_MEMBERS_LISTED: usize = 1000;
/// Commands refused in a row (by [`Command::decode`]) that close the connection.
pub const MAX_BAD_COMMANDS: u32 = 16;
/// The close after a text frame that is not JSON (a `notice` precedes it).
pub const CLOSE_NOT_JSON: CloseReason = CloseReason::new(close::INVALID_PAYLOAD, "not JSON");
/// The close after a binary frame, which v2 has no use for.
pub const CLOSE_BINARY_FRAME: CloseReason = CloseReason::new(
    close::UNSUPPORTED_DATA,
    "broadcast.v2 takes text frames only",
);
/// The close after [`MAX_BAD_COMMANDS`] refused commands in a row.
pub const CLOSE_BAD_COMMANDS: CloseReason =
    CloseReason::new(close::POLICY_VIOLATION, "too many bad commands");

/// A command id, echoed verbatim in the reply: an unsigned integer or a
/// string of at most [`MAX_ID_LEN`] bytes.
///
/// Deserializing checks the rule (so an [`Event`] with a bad id does not
/// decode); build a string id with [`Id::try_from`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum Id {
    /// A JSON unsigned integer.
    Num(u64),
    /// A JSON string of at most [`MAX_ID_LEN`] bytes.
    Str(String),
}

/// Why a value is not a command [`Id`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    /// A string longer than [`MAX_ID_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Neither an unsigned integer nor a string.
    WrongType {
        /// What it is instead (`"a negative number"`, `"an object"`, ...).
        found: &'static str,
    },
}

impl std::fmt::Display for IdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdError::TooLong { len } => write!(
                f,
                "\"id\" is a string of {len} bytes, longer than {MAX_ID_LEN}"
            ),
            IdError::WrongType { found } => {
                write!(f, "\"id\" is {found}, not an unsigned integer or a string")
            }
        }
    }
}

impl std::error::Error for IdError {}

impl From<u64> for Id {
    fn from(n: u64) -> Self {
        Id::Num(n)
    }
}

impl TryFrom<String> for Id {
    type Error = IdError;

    fn try_from(s: String) -> Result<Self, IdError> {
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong { len: s.len() });
        }
        Ok(Id::Str(s))
    }
}

impl TryFrom<&str> for Id {
    type Error = IdError;

    fn try_from(s: &str) -> Result<Self, IdError> {
        Id::try_from(s.to_owned())
    }
}

impl Id {
    /// The id a JSON value holds.
    fn from_value(v: Value) -> Result<Self, IdError> {
        match v {
            Value::String(s) => Id::try_from(s),
            Value::Number(n) => match n.as_u64() {
                Some(n) => Ok(Id::Num(n)),
                // serde_json reads `-0` and `-1.5` as floats: they are
                // negative numbers too, not (only) ones with a fraction.
                None if n.as_f64().is_some_and(f64::is_sign_negative) => Err(IdError::WrongType {
                    found: "a negative number",
                }),
                None => Err(IdError::WrongType {
                    found: "a number with a fraction, an exponent or over 2^64-1",
                }),
            },
            other => Err(IdError::WrongType {
                found: json_kind(&other),
            }),
        }
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Id;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(
                    f,
                    "an unsigned integer or a string of at most {MAX_ID_LEN} bytes"
                )
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Id, E> {
                Ok(Id::Num(n))
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Id, E> {
                u64::try_from(n).map(Id::Num).map_err(|_| {
                    E::custom(IdError::WrongType {
                        found: "a negative number",
                    })
                })
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Id, E> {
                Id::try_from(s).map_err(E::custom)
            }

            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Id, E> {
                Id::try_from(s).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// What kind of refusal an `error` event carries; the JSON is the
/// snake_case name (`"bad_channel"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not JSON; a `notice` and the close (1007) follow.
    BadJson,
    /// The JSON is not a well-formed command (see the module docs' list).
    BadRequest,
    /// The command's `type` is not one the server knows.
    UnknownType,
    /// The command's `channel` is not a valid channel name.
    BadChannel,
    /// `unsubscribe` of a channel this connection is not subscribed to.
    NotSubscribed,
    /// `subscribe` to a channel this connection is already subscribed to.
    AlreadySubscribed,
    /// The connection's token does not grant this channel.
    Forbidden,
    /// `subscribe` past the server's limit of channels per connection.
    TooManyChannels,
    /// A `publish` body is larger than the server's message limit.
    TooLarge,
    /// A `publish` came faster than the server's rate limit allows.
    RateLimited,
    /// A code this version does not know (decoded only: the server never
    /// sends it, a newer server may send codes that decode to it).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code the server sends (all but [`ErrorCode::Unknown`]), e.g.
    /// to register a metric per code up front.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::BadJson,
        ErrorCode::BadRequest,
        ErrorCode::UnknownType,
        ErrorCode::BadChannel,
        ErrorCode::NotSubscribed,
        ErrorCode::AlreadySubscribed,
        ErrorCode::Forbidden,
        ErrorCode::TooManyChannels,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
    ];

    /// The wire name (`"bad_channel"`), e.g. for a metric label.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManyChannels => "too_many_channels",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A command from a v2 client. Parse with [`Command::decode`]; clients
/// write one with [`Command::encode`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Start receiving a channel's messages and presence.
    Subscribe {
        /// A valid channel name.
        channel: String,
        /// Echoed in the answer.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        /// Resume: replay every kept message after this position first.
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<crate::history::Position>,
        /// Replay the last N kept messages first (not with `since`).
        #[serde(skip_serializing_if = "Option::is_none")]
        rewind: Option<u64>,
    },
    /// Stop receiving a channel.
    Unsubscribe {
        /// A valid channel name.
        channel: String,
        /// Echoed in the answer.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
    },
    /// Send a message to a channel's subscribers.
    Publish {
        /// A valid channel name.
        channel: String,
        /// Asks for a `published` answer, which echoes it.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        /// The message: `text` or `data` (base64) in the JSON.
        #[serde(flatten)]
        body: Body,
    },
    /// Ask who is in a channel (subscribed or not).
    Members {
        /// A valid channel name.
        channel: String,
        /// Echoed in the answer.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
    },
    /// Ask for a `pong`.
    Ping {
        /// Echoed in the `pong`.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
    },
}

/// Why [`Command::decode`] refused a frame: what the `error` event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    /// The command's id, when it had a valid one, to echo.
    pub id: Option<Id>,
    /// [`ErrorCode::BadJson`], [`BadRequest`](ErrorCode::BadRequest),
    /// [`UnknownType`](ErrorCode::UnknownType) or
    /// [`BadChannel`](ErrorCode::BadChannel).
    pub code: ErrorCode,
    /// One line saying what is wrong.
    pub text: String,
}

impl CommandError {
    fn new(id: Option<Id>, code: ErrorCode, text: impl Into<String>) -> Self {
        Self {
            id,
            code,
            text: text.into(),
        }
    }

    /// The `error` event that answers it.
    #[must_use]
    pub fn into_event(self) -> Event {
        Event::Error {
            id: self.id,
            code: self.code,
            text: self.text,
        }
    }
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.text)
    }
}

impl std::error::Error for CommandError {}

impl From<CommandError> for Event {
    fn from(e: CommandError) -> Self {
        e.into_event()
    }
}

/// A refusal before the id is known to the caller: code and text.
type Refusal = (ErrorCode, String);

impl Command {
    /// The JSON text of this command.
    #[must_use]
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("commands always serialize")
    }

    /// Parses one command frame, checking every field (channel names with
    /// [`channel::validate`]) and ignoring unknown ones.
    ///
    /// # Errors
    /// [`ErrorCode::BadJson`] when `text` is not JSON at all (the server
    /// closes on that); otherwise [`ErrorCode::BadRequest`],
    /// [`ErrorCode::UnknownType`] or [`ErrorCode::BadChannel`], with the
    /// command's `id` when it had a valid one.
    pub fn decode(text: &str) -> Result<Self, CommandError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| CommandError::new(None, ErrorCode::BadJson, format!("not JSON: {e}")))?;
        let Value::Object(mut obj) = value else {
            return Err(CommandError::new(
                None,
                ErrorCode::BadRequest,
                format!("a command is a JSON object, not {}", json_kind(&value)),
            ));
        };
        // The id first, so that every later refusal can echo it.
        let id = match obj.remove("id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                Id::from_value(v)
                    .map_err(|e| CommandError::new(None, ErrorCode::BadRequest, e.to_string()))?,
            ),
        };
        match Self::decode_fields(obj) {
            Ok(mut command) => {
                *command.id_mut() = id;
                Ok(command)
            }
            Err((code, text)) => Err(CommandError { id, code, text }),
        }
    }

    /// The command in `obj` (its `id` removed already), with no id yet.
    fn decode_fields(mut obj: Map<String, Value>) -> Result<Self, Refusal> {
        let kind = match obj.remove("type") {
            Some(Value::String(kind)) => kind,
            None => return Err(bad_request("the command has no \"type\"")),
            Some(other) => {
                return Err(bad_request(format!(
                    "\"type\" is a string, not {}",
                    json_kind(&other)
                )))
            }
        };
        let id = None;
        match kind.as_str() {
            "subscribe" => {
                let channel = take_channel(&mut obj, "subscribe")?;
                let since = take_since(&mut obj)?;
                let rewind = take_rewind(&mut obj)?;
                if since.is_some() && rewind.is_some() {
                    return Err(bad_request("\"since\" and \"rewind\" exclude each other"));
                }
                Ok(Command::Subscribe {
                    channel,
                    id,
                    since,
                    rewind,
                })
            }
            "unsubscribe" => Ok(Command::Unsubscribe {
                channel: take_channel(&mut obj, "unsubscribe")?,
                id,
            }),
            "publish" => {
                let channel = take_channel(&mut obj, "publish")?;
                let body = take_body(&mut obj)?;
                Ok(Command::Publish { channel, id, body })
            }
            "members" => Ok(Command::Members {
                channel: take_channel(&mut obj, "members")?,
                id,
            }),
            "ping" => Ok(Command::Ping { id }),
            other => Err((
                ErrorCode::UnknownType,
                format!("unknown command type {}", quote(other)),
            )),
        }
    }

    /// The command's id, if it has one.
    #[must_use]
    pub fn id(&self) -> Option<&Id> {
        match self {
            Command::Subscribe { id, .. }
            | Command::Unsubscribe { id, .. }
            | Command::Publish { id, .. }
            | Command::Members { id, .. }
            | Command::Ping { id } => id.as_ref(),
        }
    }

    fn id_mut(&mut self) -> &mut Option<Id> {
        match self {
            Command::Subscribe { id, .. }
            | Command::Unsubscribe { id, .. }
            | Command::Publish { id, .. }
            | Command::Members { id, .. }
            | Command::Ping { id } => id,
        }
    }

    /// The channel the command is about (`None` for `ping`).
    #[must_use]
    pub fn channel(&self) -> Option<&str> {
        match self {
            Command::Subscribe { channel, .. }
            | Command::Unsubscribe { channel, .. }
            | Command::Publish { channel, .. }
            | Command::Members { channel, .. } => Some(channel),
            Command::Ping { .. } => None,
        }
    }
}

fn bad_request(text: impl Into<String>) -> Refusal {
    (ErrorCode::BadRequest, text.into())
}

/// Removes and checks the `channel` field of a `command`.
fn take_channel(obj: &mut Map<String, Value>, command: &str) -> Result<String, Refusal> {
    match obj.remove("channel") {
        Some(Value::String(name)) => match channel::validate(&name) {
            Ok(()) => Ok(name),
            Err(e) => Err((ErrorCode::BadChannel, e.to_string())),
        },
        None => Err(bad_request(format!("{command} needs a \"channel\""))),
        Some(other) => Err(bad_request(format!(
            "\"channel\" is a string, not {}",
            json_kind(&other)
        ))),
    }
}

/// Removes and checks the optional `since` field of a subscribe:
/// `{"offset": N, "epoch": "..."}`.
fn take_since(obj: &mut Map<String, Value>) -> Result<Option<crate::history::Position>, Refusal> {
    match obj.remove("since") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let position: crate::history::Position = serde_json::from_value(v).map_err(|e| {
                bad_request(format!(
                    "\"since\" is {{\"offset\": N, \"epoch\": \"...\"}}: {e}"
                ))
            })?;
            if position.epoch.is_empty() || position.epoch.len() > 64 {
                return Err(bad_request("\"since\": the epoch is 1 to 64 characters"));
            }
            Ok(Some(position))
        }
    }
}

/// Removes and checks the optional `rewind` field of a subscribe: how many
/// of the last kept messages to replay, up to
/// [`crate::history::MAX_REWIND`].
fn take_rewind(obj: &mut Map<String, Value>) -> Result<Option<u64>, Refusal> {
    match obj.remove("rewind") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n <= crate::history::MAX_REWIND) => {
            Ok(n.as_u64())
        }
        Some(_) => Err(bad_request(format!(
            "\"rewind\" is a whole number from 0 to {}",
            crate::history::MAX_REWIND
        ))),
    }
}

/// Removes and checks the `text` or `data` field of a publish.
fn take_body(obj: &mut Map<String, Value>) -> Result<Body, Refusal> {
    match (obj.remove("text"), obj.remove("data")) {
        (Some(Value::String(text)), None) => Ok(Body::Text(text)),
        (Some(other), None) => Err(bad_request(format!(
            "\"text\" is a string, not {}",
            json_kind(&other)
        ))),
        (None, Some(Value::String(data))) => base64::engine::general_purpose::STANDARD
            .decode(data.as_bytes())
            .map(Body::Data)
            .map_err(|e| bad_request(format!("\"data\" is not base64: {e}"))),
        (None, Some(other)) => Err(bad_request(format!(
            "\"data\" is a base64 string, not {}",
            json_kind(&other)
        ))),
        (Some(_), Some(_)) => Err(bad_request(
            "publish takes one of \"text\" and \"data\", not both",
        )),
        (None, None) => Err(bad_request("publish needs \"text\" or \"data\"")),
    }
}

/// What kind of JSON value `v` is, for error messages.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A client-supplied string quoted for an error message: escaped onto one
/// line and cut to a few characters.
fn quote(s: &str) -> String {
    const MAX_CHARS: usize = 32;
    let mut cut: String = s.chars().take(MAX_CHARS).collect();
    if cut.len() < s.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// An event the server sends to a v2 client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Sent once, right after the upgrade.
    Welcome {
        /// This connection's id.
        client: u64,
        /// The display name the server gave this connection.
        name: String,
        /// Server time, ms since the Unix epoch.
        time: u64,
    },
    /// Answer to `subscribe`: the connection now gets the channel.
    Subscribed {
        /// The command's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        /// The channel subscribed to.
        channel: String,
        /// Its subscribers now, this connection included.
        online: u64,
        /// The channel's last offset when it was joined (0: none yet;
        /// absent without history): resume from it with `since`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// The epoch of the channel's history (absent without history).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        /// With `since`: whether every message after it follows (they come
        /// right after this event, before anything live).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// Why not, when `recovered` is false.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<crate::history::Unrecovered>,
    },
    /// Answer to `unsubscribe`: nothing more comes from the channel.
    Unsubscribed {
        /// The command's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        /// The channel left.
        channel: String,
        /// Its subscribers now, this connection no longer counted.
        online: u64,
    },
    /// Answer to a `publish` that carried an id: the server took the message.
    Published {
        /// The command's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        /// The channel published to.
        channel: String,
    },
    /// A message published on a subscribed channel.
    Message {
        /// The channel it was published on.
        channel: String,
        /// Sender's connection id.
        from: u64,
        /// Sender's display name.
        name: String,
        /// When the server received it, ms since the Unix epoch.
        time: u64,
        /// Its offset in the channel's history (absent without history).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// The epoch of that history (absent without history).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        /// The message itself: `text` or `data` (base64) in the JSON.
        #[serde(flatten)]
        body: Body,
    },
    /// Who joined and left a subscribed channel since its last update.
    Presence {
        /// The channel.
        channel: String,
        /// Its subscribers now.
        online: u64,
        /// Who joined (empty when only counts are given).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        joined: Vec<Peer>,
        /// Who left (empty when only counts are given).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        left: Vec<Peer>,
        /// How many joined, when too many to name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        joined_count: Option<u64>,
        /// How many left, when too many to name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        left_count: Option<u64>,
    },
    /// Answer to `members`: who is in a channel.
    Members {
        /// The command's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        /// The channel asked about.
        channel: String,
        /// Everyone in it on this server, guests (plain clients) included.
        online: u64,
        /// Its named members (`broadcast.v1` and `broadcast.v2`
        /// connections) by id, at most [`MAX_MEMBERS_LISTED`].
        members: Vec<Peer>,
        /// Whether more are named than `members` lists.
        #[serde(default)]
        truncated: bool,
    },
    /// Answer to `ping`.
    Pong {
        /// The command's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
    },
    /// A command was refused.
    Error {
        /// The refused command's id (none when it had none or a bad one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        /// What kind of refusal.
        code: ErrorCode,
        /// One line saying what is wrong, for humans.
        text: String,
    },
    /// Why the server is about to close this connection.
    Notice {
        /// The close code that follows.
        code: u16,
        /// Human-readable explanation.
        text: String,
    },
}

/// A server frame that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad broadcast.v2 event: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

const KNOWN_EVENTS: [&str; 10] = [
    "welcome",
    "subscribed",
    "unsubscribed",
    "published",
    "message",
    "presence",
    "members",
    "pong",
    "error",
    "notice",
];

impl Event {
    /// The JSON text of this event.
    #[must_use]
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("events always serialize")
    }

    /// Parses one event. Returns `Ok(None)` for a well-formed event of a type
    /// this version does not know (to be skipped).
    ///
    /// # Errors
    /// The text is not a JSON object with a known shape.
    pub fn decode(text: &str) -> Result<Option<Self>, DecodeError> {
        crate::json::decode_event(text, &KNOWN_EVENTS).map_err(DecodeError)
    }
}

/// Appends the JSON of a `message` event to `out`, without building an
/// owned [`Event`]: the server encodes each message once this way. The
/// bytes equal those of [`Event::Message`]'s [`encode`](Event::encode).
pub fn encode_message_into(
    out: &mut Vec<u8>,
    channel: &str,
    from: u64,
    name: &str,
    time: u64,
    body: BodyRef<'_>,
) {
    encode_message_json(out, channel, from, name, time, body);
}

/// Writes the JSON of a `message` event to `out` (see [`encode_message_into`]).
pub fn encode_message_json(
    out: impl std::io::Write,
    channel: &str,
    from: u64,
    name: &str,
    time: u64,
    body: BodyRef<'_>,
) {
    // The same bytes as `Event::Message`'s derive (a test checks it).
    crate::json::write_message(out, Some(channel), from, name, time, None, body);
}

/// Writes the JSON of a `message` event with its history position
/// (`offset`, `epoch`), the bytes of [`Event::Message`] with both set.
pub fn encode_positioned_message_json(
    out: impl std::io::Write,
    channel: &str,
    from: u64,
    name: &str,
    time: u64,
    position: (u64, &str),
    body: BodyRef<'_>,
) {
    crate::json::write_message(out, Some(channel), from, name, time, Some(position), body);
}

#[cfg(test)]
#[path = "v2_tests.rs"]
mod tests;
