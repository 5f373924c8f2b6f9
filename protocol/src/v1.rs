//! The `broadcast.v1` subprotocol: what our own clients (console, browser,
//! load tester) get on top of the raw broadcast.
//!
//! # Negotiation
//! A client offers `Sec-WebSocket-Protocol: broadcast.v1` and may pick a
//! display name with the query parameter `name` (`/ws?name=alice`). A server
//! that answers with the same header speaks v1 on that connection; one that
//! does not is a plain broadcast server (the client then uses raw mode).
//!
//! # Client to server
//! Unchanged from the raw contract: a text frame is a text message, a binary
//! frame a binary message. Plain clients in the same room receive exactly
//! those bytes.
//!
//! # Server to client
//! Every frame is a text frame holding one JSON object with a `type`:
//!
//! | `type` | fields | when |
//! | --- | --- | --- |
//! | `welcome` | `id`, `name` (as accepted, maybe suffixed), `online`, `time` | first frame after the upgrade |
//! | `message` | `from` (id), `name`, `time`, and `text` (text message) or `data` (base64 of a binary message) | someone else's message |
//! | `presence` | `online`, and `joined`/`left` (lists of `{id, name}`) or `joined_count`/`left_count` when many changed | at most twice a second, only when something changed |
//! | `notice` | `code` (the close code that follows), `text` | just before the server closes the connection |
//!
//! `time` is the server's receive time in milliseconds since the Unix epoch.
//! Unknown fields must be ignored and unknown types skipped, so the server
//! can add to v1 without breaking clients.

use serde::{Deserialize, Serialize};

/// The subprotocol name offered in `Sec-WebSocket-Protocol`.
pub const SUBPROTOCOL: &str = "broadcast.v1";
/// The query parameter carrying the requested display name.
pub const NAME_PARAM: &str = "name";
/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// Presence updates list names up to this many joins plus leaves; past it
/// they carry counts only.
pub const PRESENCE_NAME_LIMIT: usize = 20;

/// One participant, as presence updates name them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Connection id, unique on the server for the connection's lifetime.
    pub id: u64,
    /// Display name.
    pub name: String,
}

/// An event the server sends to a v1 client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerEvent {
    /// Sent once, right after the upgrade.
    Welcome {
        /// This connection's id.
        id: u64,
        /// The display name the server gave this connection.
        name: String,
        /// Connections online, this one included.
        online: u64,
        /// Server time, ms since the Unix epoch.
        time: u64,
        /// With `?since=` or `?rewind=`: whether every message asked for
        /// follows (absent otherwise). The replayed messages come right
        /// after this event, before anything live.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// Why not, when `recovered` is false.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<crate::history::Unrecovered>,
        /// The channel's position when this client joined (absent without
        /// history): resume from it if no message comes before a reconnect.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<crate::history::Position>,
    },
    /// A message from another client.
    Message {
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
        /// The message itself.
        #[serde(flatten)]
        body: Body,
    },
    /// Who joined and left since the last update.
    Presence {
        /// Connections online now.
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
    /// Why the server is about to close this connection.
    Notice {
        /// The close code that follows.
        code: u16,
        /// Human-readable explanation.
        text: String,
    },
}

/// A message body: text, or binary carried as base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    /// A text message.
    Text(String),
    /// A binary message.
    #[serde(with = "b64")]
    Data(Vec<u8>),
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(data))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// A server frame that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad broadcast.v1 event: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

impl ServerEvent {
    /// The JSON text of this event.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("events always serialize")
    }

    /// Parses one event. Returns `Ok(None)` for a well-formed event of a type
    /// this version does not know (to be skipped).
    ///
    /// # Errors
    /// The text is not a JSON object with a known shape.
    pub fn decode(text: &str) -> Result<Option<Self>, DecodeError> {
        crate::json::decode_event(text, &KNOWN_TYPES).map_err(DecodeError)
    }
}

const KNOWN_TYPES: [&str; 4] = ["welcome", "message", "presence", "notice"];

/// Appends the JSON of a `message` event to `out`, without building an
/// owned [`ServerEvent`]: the server encodes each message once this way.
pub fn encode_message_into(out: &mut Vec<u8>, from: u64, name: &str, time: u64, body: BodyRef<'_>) {
    encode_message_json(out, from, name, time, body);
}

/// Writes the JSON of a `message` event to `out` (see [`encode_message_into`]).
pub fn encode_message_json(
    out: impl std::io::Write,
    from: u64,
    name: &str,
    time: u64,
    body: BodyRef<'_>,
) {
    crate::json::write_message(out, None, from, name, time, None, body);
}

/// Writes the JSON of a `message` event with its history position
/// (`offset`, `epoch`), the bytes of [`ServerEvent::Message`] with both set.
pub fn encode_positioned_message_json(
    out: impl std::io::Write,
    from: u64,
    name: &str,
    time: u64,
    position: (u64, &str),
    body: BodyRef<'_>,
) {
    crate::json::write_message(out, None, from, name, time, Some(position), body);
}

/// A borrowed message body, for [`encode_message_into`].
#[derive(Debug, Clone, Copy)]
pub enum BodyRef<'a> {
    /// A text message.
    Text(&'a str),
    /// A binary message.
    Data(&'a [u8]),
}

/// Why a requested display name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// Empty after trimming spaces.
    Empty,
    /// Longer than [`MAX_NAME_CHARS`].
    TooLong,
    /// Contains a control or other non-printable character.
    NotPrintable,
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameError::Empty => write!(f, "the name is empty"),
            NameError::TooLong => write!(f, "the name is longer than {MAX_NAME_CHARS} characters"),
            NameError::NotPrintable => write!(f, "the name contains a non-printable character"),
        }
    }
}

impl std::error::Error for NameError {}

/// Checks a requested display name and returns it trimmed.
///
/// # Errors
/// Empty, too long, or containing control characters, invisible format
/// characters (which could make two names look alike) or line breaks.
pub fn validate_name(requested: &str) -> Result<String, NameError> {
    let invisible = |c: char| {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
    };
    // Checked before trimming: a line break is refused, not silently cut.
    if requested.chars().any(invisible) {
        return Err(NameError::NotPrintable);
    }
    let name = requested.trim();
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(NameError::TooLong);
    }
    Ok(name.to_owned())
}

/// The name a client gets when it asks for none.
pub fn guest_name(id: u64) -> String {
    format!("guest-{id}")
}

/// Whether `name` is in the guests' namespace: `guest-` and digits, in any
/// case. Only [`guest_name`] gives out such names, so a server can keep them
/// unique by the id alone; a client that asks for one gets it suffixed.
pub fn is_guest_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() > 6
        && bytes[..6].eq_ignore_ascii_case(b"guest-")
        && bytes[6..].iter().all(u8::is_ascii_digit)
}

/// Percent-decodes a query-string value (`+` is a space). Returns `None` for
/// malformed escapes or bytes that are not UTF-8.
pub fn decode_query_value(v: &str) -> Option<String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                // Two hex digits, nothing else: `u8::from_str_radix` alone
                // would also take a sign (`%+A` decoded as a line feed).
                let &[hi, lo] = bytes.get(i + 1..i + 3)? else {
                    return None;
                };
                let digit = |b: u8| char::from(b).to_digit(16);
                out.push((digit(hi)? * 16 + digit(lo)?) as u8);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes a query-string value (everything but unreserved characters).
pub fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The value of query parameter `key` in `query` (without the `?`), decoded.
pub fn query_param(query: &str, key: &str) -> Option<Option<String>> {
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == key).then(|| decode_query_value(v))
        })
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn events_round_trip() {
        let events = [
            ServerEvent::Welcome {
                id: 7,
                name: "alice".into(),
                online: 3,
                time: 1_700_000_000_000,
                recovered: None,
                reason: None,
                position: None,
            },
            ServerEvent::Welcome {
                id: 7,
                name: "alice".into(),
                online: 3,
                time: 1_700_000_000_000,
                recovered: Some(false),
                reason: Some(crate::history::Unrecovered::Expired),
                position: Some(crate::history::Position {
                    offset: 4,
                    epoch: "abcd1234".into(),
                }),
            },
            ServerEvent::Message {
                from: 8,
                name: "bob \"the\" <b>".into(),
                time: 5,
                offset: None,
                epoch: None,
                body: Body::Text("héllo\nworld".into()),
            },
            ServerEvent::Message {
                from: 8,
                name: "bob".into(),
                time: 5,
                offset: Some(9),
                epoch: Some("abcd1234".into()),
                body: Body::Data(vec![0, 1, 2, 255]),
            },
            ServerEvent::Presence {
                online: 2,
                joined: vec![Peer {
                    id: 1,
                    name: "a".into(),
                }],
                left: vec![],
                joined_count: None,
                left_count: None,
            },
            ServerEvent::Presence {
                online: 200,
                joined: vec![],
                left: vec![],
                joined_count: Some(150),
                left_count: Some(3),
            },
            ServerEvent::Notice {
                code: 1013,
                text: "too slow".into(),
            },
        ];
        for e in events {
            assert_eq!(
                ServerEvent::decode(&e.encode()),
                Ok(Some(e.clone())),
                "{}",
                e.encode()
            );
        }
    }

    #[test]
    fn guest_names_are_their_own_namespace() {
        for id in [0, 7, u64::from(u32::MAX)] {
            assert!(is_guest_name(&guest_name(id)));
        }
        assert!(is_guest_name("GUEST-12"));
        for chosen in [
            "guest",
            "guest-",
            "guest-1a",
            "guest-1-2",
            "guests-1",
            "alice-3",
            "gu",
        ] {
            assert!(!is_guest_name(chosen), "{chosen}");
        }
    }

    #[test]
    fn wire_format_is_documented_shape() {
        let e = ServerEvent::Message {
            from: 8,
            name: "bob".into(),
            time: 5,
            offset: None,
            epoch: None,
            body: Body::Text("hi".into()),
        };
        assert_eq!(
            e.encode(),
            r#"{"type":"message","from":8,"name":"bob","time":5,"text":"hi"}"#
        );
        let mut v = Vec::new();
        encode_message_into(&mut v, 8, "bob", 5, BodyRef::Text("hi"));
        assert_eq!(String::from_utf8(v).unwrap(), e.encode());
        let mut v = Vec::new();
        encode_message_into(&mut v, 1, "x", 2, BodyRef::Data(&[0xff]));
        assert_eq!(
            String::from_utf8(v).unwrap(),
            r#"{"type":"message","from":1,"name":"x","time":2,"data":"/w=="}"#
        );
    }

    #[test]
    fn unknown_types_are_skipped_and_garbage_rejected() {
        assert_eq!(
            ServerEvent::decode(r#"{"type":"typing","who":3}"#),
            Ok(None)
        );
        assert!(ServerEvent::decode(r#"{"type":"message"}"#).is_err());
        assert!(ServerEvent::decode("not json").is_err());
        assert!(ServerEvent::decode("[]").is_err());
        // Caught by fuzz/fuzz_targets/v1_event.rs: an array of the fields in
        // order decoded as an event, and one of an unknown type was skipped.
        assert!(ServerEvent::decode(r#"["welcome",1,"a",1,1]"#).is_err());
        assert!(ServerEvent::decode(r#"["notice",1001,"bye"]"#).is_err());
        assert!(ServerEvent::decode(r#" ["typing"]"#).is_err());
        assert!(matches!(
            ServerEvent::decode(" \r\n\t{\"type\":\"notice\",\"code\":1000,\"text\":\"\"}"),
            Ok(Some(ServerEvent::Notice { code: 1000, .. }))
        ));
        assert_eq!(ServerEvent::decode(" {\"type\":\"typing\"} "), Ok(None));
        // Extra fields are ignored.
        assert!(matches!(
            ServerEvent::decode(r#"{"type":"notice","code":1001,"text":"bye","extra":1}"#),
            Ok(Some(ServerEvent::Notice { code: 1001, .. }))
        ));
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(validate_name("  alice "), Ok("alice".into()));
        assert_eq!(validate_name("Zoë 🦀"), Ok("Zoë 🦀".into()));
        assert_eq!(validate_name("   "), Err(NameError::Empty));
        assert_eq!(validate_name(&"x".repeat(33)), Err(NameError::TooLong));
        assert_eq!(validate_name(&"é".repeat(32)), Ok("é".repeat(32)));
        assert_eq!(validate_name("a\nb"), Err(NameError::NotPrintable));
        assert_eq!(validate_name("\nevil"), Err(NameError::NotPrintable));
        assert_eq!(validate_name("a\u{200B}b"), Err(NameError::NotPrintable));
        assert_eq!(validate_name("\u{1b}[31mred"), Err(NameError::NotPrintable));
    }

    #[test]
    fn query_values() {
        assert_eq!(
            query_param("name=J%C3%BCrgen+K&x=1", "name"),
            Some(Some("Jürgen K".into()))
        );
        assert_eq!(query_param("x=1", "name"), None);
        assert_eq!(query_param("name=%zz", "name"), Some(None));
        // Caught by fuzz/fuzz_targets/v1_query.rs: a sign was taken as part
        // of an escape.
        assert_eq!(decode_query_value("%+A"), None);
        assert_eq!(decode_query_value("%-1"), None);
        assert_eq!(decode_query_value("%4"), None);
        assert_eq!(decode_query_value("%4a%4A"), Some("JJ".into()));
        assert_eq!(
            decode_query_value(&encode_query_value("a b&c=d/é")),
            Some("a b&c=d/é".into())
        );
    }

    proptest! {
        #[test]
        fn decoder_never_panics(s in ".*") {
            let _ = ServerEvent::decode(&s);
        }

        #[test]
        fn decoder_never_panics_on_json_like(s in r#"\{"type":"(message|welcome|presence|notice)"(,"[a-z_]{1,8}":("[^"]*"|[0-9]{1,20}|\[\]|null|true))*\}"#) {
            let _ = ServerEvent::decode(&s);
        }

        #[test]
        fn messages_round_trip(from: u64, time: u64, name in "\\PC{1,32}", text in "\\PC*", data: Vec<u8>) {
            for body in [Body::Text(text.clone()), Body::Data(data.clone())] {
                let e = ServerEvent::Message { from, name: name.clone(), time, offset: None, epoch: None, body };
                prop_assert_eq!(ServerEvent::decode(&e.encode()), Ok(Some(e)));
            }
        }

        #[test]
        fn query_decoding_never_panics(s in ".*") {
            let _ = decode_query_value(&s);
            prop_assert_eq!(decode_query_value(&encode_query_value(&s)), Some(s));
        }
    }
}
