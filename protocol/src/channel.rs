//! Channel names: which ones are valid, which one a WebSocket request asks
//! for, and the patterns a token's claims grant.
//!
//! A channel is a named broadcast domain: a message published on it reaches
//! its subscribers only. Every client that names no channel shares
//! [`DEFAULT`], which is what the server was before channels existed.
//!
//! # Names
//!
//! | rule | |
//! | --- | --- |
//! | length | 1 to [`MAX_LEN`] (128) bytes |
//! | bytes | `A-Z a-z 0-9 - _ . : @ /` (ASCII only, case-sensitive, no percent-decoding) |
//! | segments | split on `/`, none is empty: no leading or trailing `/`, no `//` |
//!
//! So `news`, `team-7/chat`, `user:42@eu` are names; `a b`, `/a`, `a//b`,
//! `caf%C3%A9` are not. The safe set needs no escaping in a URL path, a query
//! value, JSON, a log line or a Redis key, which is why it is this small.
//!
//! # In the request (raw and `broadcast.v1` clients)
//!
//! | request | channel |
//! | --- | --- |
//! | `/ws` | [`DEFAULT`] |
//! | `/ws/NAME` | `NAME`, the rest of the path taken verbatim |
//! | `/ws?channel=NAME` | `NAME`, percent-decoded like every query value |
//! | `/ws/NAME?channel=NAME` | `NAME` (both must agree) |
//! | anything else (`/wsx`, `/foo`) | not a WebSocket path |
//!
//! [`from_request`] applies this table.
//!
//! # Patterns (token claims)
//!
//! A [`Pattern`] is an exact name (`news`) or a prefix followed by `*`
//! (`team-*`, `team/*`, and `*` alone for every channel). The prefix is made
//! of name bytes; it may be empty or end in `/`, but has no empty segment
//! otherwise. `*` matches any rest, the empty one included, and appears
//! nowhere else.

use crate::v1::query_param;

/// The channel of a client that names none (`/ws`).
pub const DEFAULT: &str = "default";
/// Longest channel name, in bytes.
pub const MAX_LEN: usize = 128;
/// The query parameter that names a channel (`/ws?channel=NAME`).
pub const PARAM: &str = "channel";

/// The bytes a name may hold, `/` aside. Quoted in error messages.
const SAFE_SET: &str = "A-Z a-z 0-9 - _ . : @ /";

/// Why a channel name (or a pattern's prefix) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The name holds a character outside `A-Z a-z 0-9 - _ . : @ /`.
    BadByte {
        /// The first such character (`*` included, when it does not end a pattern).
        ch: char,
        /// Where it starts, in bytes from the start of the name.
        at: usize,
    },
    /// A `/`-separated segment is empty: the name starts or ends with `/`,
    /// or holds `//`.
    EmptySegment,
}

impl std::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChannelError::Empty => write!(f, "channel name is empty"),
            ChannelError::TooLong { len } => {
                write!(f, "channel name is {len} bytes long, more than {MAX_LEN}")
            }
            // escape_default keeps the line ASCII and on one line whatever the character.
            ChannelError::BadByte { ch, at } => write!(
                f,
                "channel name has '{}' at byte {at}, outside {SAFE_SET}",
                ch.escape_default()
            ),
            ChannelError::EmptySegment => write!(
                f,
                "channel name has an empty segment (a leading or trailing / or //)"
            ),
        }
    }
}

impl std::error::Error for ChannelError {}

/// Checks that `name` is a channel name (see the [module docs](self)).
///
/// # Errors
/// The first rule it breaks, scanning from the start (length first).
pub fn validate(name: &str) -> Result<(), ChannelError> {
    if name.is_empty() {
        return Err(ChannelError::Empty);
    }
    scan(name, false)
}

/// The name rules, for a whole name (`open_end` false) or for a pattern's
/// prefix, which may be empty or end in `/` (`open_end` true).
fn scan(name: &str, open_end: bool) -> Result<(), ChannelError> {
    if name.len() > MAX_LEN {
        return Err(ChannelError::TooLong { len: name.len() });
    }
    // The start of the name is a boundary, like a `/`.
    let mut after_slash = true;
    for (at, b) in name.bytes().enumerate() {
        if b == b'/' {
            if after_slash {
                return Err(ChannelError::EmptySegment);
            }
            after_slash = true;
        } else if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@') {
            after_slash = false;
        } else {
            // Every byte before `at` is ASCII, so `at` starts a character.
            let ch = name[at..]
                .chars()
                .next()
                .unwrap_or(char::REPLACEMENT_CHARACTER);
            return Err(ChannelError::BadByte { ch, at });
        }
    }
    if after_slash && !open_end {
        return Err(ChannelError::EmptySegment);
    }
    Ok(())
}

/// Why a WebSocket request's channel could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// The path or the query names an invalid channel.
    Name(ChannelError),
    /// The `channel` query value is not valid percent-encoded UTF-8.
    BadEscape,
    /// The path and the query name two different channels (both valid).
    NamedTwice {
        /// The name in the path (`/ws/NAME`).
        path: String,
        /// The name in the query (`?channel=NAME`), decoded.
        query: String,
    },
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Name(e) => e.fmt(f),
            RequestError::BadEscape => write!(
                f,
                "the {PARAM} parameter is not valid percent-encoded UTF-8"
            ),
            // Both are valid names, so printing them keeps the line safe.
            RequestError::NamedTwice { path, query } => write!(
                f,
                "the channel is named twice: /ws/{path} and ?{PARAM}={query}"
            ),
        }
    }
}

impl std::error::Error for RequestError {}

impl From<ChannelError> for RequestError {
    fn from(e: ChannelError) -> Self {
        RequestError::Name(e)
    }
}

/// The channel a WebSocket request asks for, from its URL path and query
/// (without the `?`), as the [module docs](self#in-the-request-raw-and-broadcastv1-clients)
/// tabulate.
///
/// Returns `None` when `path` is not a WebSocket path at all (neither
/// [`WS_PATH`](crate::WS_PATH) nor below it: the server answers 404), and
/// otherwise the resolved name, [`DEFAULT`] when the request names none.
/// Each `Err` displays as one line fit for an HTTP 400 body.
#[must_use]
pub fn from_request(path: &str, query: Option<&str>) -> Option<Result<String, RequestError>> {
    let in_path = match path.strip_prefix(crate::WS_PATH)? {
        "" => None,
        rest => Some(rest.strip_prefix('/')?),
    };
    Some(resolve(in_path, query))
}

fn resolve(in_path: Option<&str>, query: Option<&str>) -> Result<String, RequestError> {
    if let Some(name) = in_path {
        validate(name)?;
    }
    let in_query = match query.and_then(|q| query_param(q, PARAM)) {
        None => None,
        Some(None) => return Err(RequestError::BadEscape),
        Some(Some(name)) => {
            validate(&name)?;
            Some(name)
        }
    };
    match (in_path, in_query) {
        (Some(path), Some(query)) if path != query => Err(RequestError::NamedTwice {
            path: path.to_owned(),
            query,
        }),
        (Some(path), _) => Ok(path.to_owned()),
        (None, Some(query)) => Ok(query),
        (None, None) => Ok(DEFAULT.to_owned()),
    }
}

/// One entry of a token's channel claim: an exact name, or a prefix ending
/// in `*` (see the [module docs](self#patterns-token-claims)).
///
/// Deserializes from (and serializes to) its text, so a claims struct can
/// hold a `Vec<Pattern>` and refuse a bad entry while it parses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pattern {
    /// The pattern as written, `*` included.
    text: String,
    /// Whether it ends in `*` (then `text` minus that `*` is the prefix).
    prefix: bool,
}

impl Pattern {
    /// Parses a claim entry.
    ///
    /// # Errors
    /// An exact name that [`validate`] refuses, or a prefix that breaks the
    /// name rules other than being empty or ending in `/` (a `*` before the
    /// end is a [`ChannelError::BadByte`]).
    pub fn parse(text: &str) -> Result<Self, ChannelError> {
        let prefix = match text.strip_suffix('*') {
            Some(prefix) => {
                scan(prefix, true)?;
                true
            }
            None => {
                validate(text)?;
                false
            }
        };
        Ok(Self {
            text: text.to_owned(),
            prefix,
        })
    }

    /// Whether the channel `name` is one this pattern grants. `name` is
    /// expected to be valid already (this does not check it).
    #[must_use]
    pub fn matches(&self, name: &str) -> bool {
        if self.prefix {
            name.starts_with(&self.text[..self.text.len() - 1])
        } else {
            name == self.text
        }
    }

    /// The pattern as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Pattern {
    type Err = ChannelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Pattern {
    type Error = ChannelError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Pattern> for String {
    fn from(p: Pattern) -> Self {
        p.text
    }
}

/// Whether any of `patterns` grants the channel `name` (none: no channel).
#[must_use]
pub fn allowed(patterns: &[Pattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

#[cfg(test)]
#[path = "channel_tests.rs"]
mod tests;
