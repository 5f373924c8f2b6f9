//! Where the page connects and which channel its location names.
//!
//! The WebSocket endpoint is the one of the server that served the page
//! (`ws:` for an `http:` page, `wss:` for `https:`, same host and port), at
//! [`protocol::WS_PATH`] for the default channel and `/ws/NAME` for channel
//! `NAME`, with the chosen name in the query. The path matters only if the
//! server answers `broadcast.v1` (or nothing): a `broadcast.v2` connection
//! subscribes with commands.
//!
//! The page's own location picks the channel it starts in: `/#NAME`, else
//! `/?channel=NAME`, else [`protocol::channel::DEFAULT`].

use protocol::channel::{self, ChannelError};
use protocol::v1::{decode_query_value, encode_query_value, query_param, NAME_PARAM};

/// The WebSocket URL for a page served from `page_protocol` (as in
/// `location.protocol`, e.g. `"https:"`) and `host` (as in `location.host`,
/// with the port if any), for `channel` (a valid name), asking for display
/// name `name`.
pub fn ws_url(page_protocol: &str, host: &str, channel: &str, name: &str) -> String {
    let scheme = if page_protocol.eq_ignore_ascii_case("https:") {
        "wss:"
    } else {
        "ws:"
    };
    // Channel names are made of bytes that need no escaping in a path.
    let path = if channel == channel::DEFAULT {
        protocol::WS_PATH.to_owned()
    } else {
        format!("{}/{channel}", protocol::WS_PATH)
    };
    format!(
        "{scheme}//{host}{path}?{NAME_PARAM}={value}",
        value = encode_query_value(name)
    )
}

/// The page's location names no usable channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLocation {
    /// What it names, decoded as far as it could be.
    pub asked: String,
    /// Why that is not a channel name.
    pub why: String,
}

impl std::fmt::Display for BadLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} is not a channel name: {}", self.asked, self.why)
    }
}

impl std::error::Error for BadLocation {}

/// The channel the page's location names: its `hash` (as in
/// `location.hash`, `"#NAME"` or empty) first, else the `channel` parameter
/// of its `search` (`"?channel=NAME"` or empty), else the default channel.
///
/// # Errors
/// The hash or the parameter names something that is not a valid channel.
pub fn location_channel(hash: &str, search: &str) -> Result<String, BadLocation> {
    let hash = hash.strip_prefix('#').unwrap_or(hash);
    let search = search.strip_prefix('?').unwrap_or(search);
    let asked = if !hash.is_empty() {
        match decode_query_value(hash) {
            Some(name) => name,
            None => {
                return Err(BadLocation {
                    asked: hash.to_owned(),
                    why: "not valid percent-encoded UTF-8".to_owned(),
                })
            }
        }
    } else {
        match query_param(search, channel::PARAM) {
            None => return Ok(channel::DEFAULT.to_owned()),
            Some(Some(name)) => name,
            Some(None) => {
                return Err(BadLocation {
                    asked: search.to_owned(),
                    why: "not valid percent-encoded UTF-8".to_owned(),
                })
            }
        }
    };
    match channel::validate(&asked) {
        Ok(()) => Ok(asked),
        Err(e) => Err(BadLocation {
            asked,
            why: e.to_string(),
        }),
    }
}

/// The hash to set so that the location names `current`, or `None` when it
/// already does (the location is left alone).
pub fn hash_for(current: &str, hash: &str, search: &str) -> Option<String> {
    match location_channel(hash, search) {
        Ok(named) if named == current => None,
        _ => Some(format!("#{current}")),
    }
}

/// Checks what the user typed to join a channel: surrounding spaces and one
/// leading `#` are not part of the name.
///
/// # Errors
/// The rest is not a valid channel name.
pub fn channel_input(input: &str) -> Result<String, ChannelError> {
    let input = input.trim();
    let name = input.strip_prefix('#').unwrap_or(input);
    channel::validate(name)?;
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_page() {
        assert_eq!(
            ws_url("http:", "localhost:8080", "default", "alice"),
            "ws://localhost:8080/ws?name=alice"
        );
        assert_eq!(
            ws_url("https:", "chat.example.org", "default", "bob"),
            "wss://chat.example.org/ws?name=bob"
        );
        assert_eq!(
            ws_url("HTTPS:", "[::1]:9000", "default", "x"),
            "wss://[::1]:9000/ws?name=x"
        );
    }

    #[test]
    fn a_channel_goes_into_the_path() {
        assert_eq!(
            ws_url("http:", "h:1", "team-7/chat", "al"),
            "ws://h:1/ws/team-7/chat?name=al"
        );
        let url = ws_url("http:", "h:1", "user:42@eu", "al");
        let path = url
            .strip_prefix("ws://h:1")
            .unwrap()
            .split('?')
            .next()
            .unwrap();
        let query = url.split_once('?').unwrap().1;
        assert_eq!(
            protocol::channel::from_request(path, Some(query)),
            Some(Ok("user:42@eu".into())),
            "the server reads the channel back"
        );
    }

    #[test]
    fn encodes_the_name() {
        let url = ws_url("http:", "h:1", "default", "Zoë & <b>/?#=");
        assert_eq!(url, "ws://h:1/ws?name=Zo%C3%AB%20%26%20%3Cb%3E%2F%3F%23%3D");
        let query = url.split_once('?').unwrap().1;
        assert_eq!(
            protocol::v1::query_param(query, "name"),
            Some(Some("Zoë & <b>/?#=".into()))
        );
    }

    #[test]
    fn the_location_names_the_channel() {
        let ok = |hash, search| location_channel(hash, search).unwrap();
        assert_eq!(ok("", ""), "default");
        assert_eq!(ok("#", "?"), "default");
        assert_eq!(ok("", "?token=t"), "default");
        assert_eq!(ok("#red", ""), "red");
        assert_eq!(ok("", "?channel=blue"), "blue");
        assert_eq!(ok("", "?token=t&channel=team%2Fchat"), "team/chat");
        assert_eq!(ok("#red", "?channel=blue"), "red", "the hash wins");
        assert_eq!(ok("#a%3Ab", ""), "a:b", "the hash is percent-decoded");

        let bad = location_channel("#a%20b", "").unwrap_err();
        assert_eq!(bad.asked, "a b");
        assert_eq!(
            bad.to_string(),
            "\"a b\" is not a channel name: channel name has ' ' at byte 1, outside A-Z a-z 0-9 - _ . : @ /"
        );
        assert!(location_channel("", "?channel=").is_err());
        assert!(location_channel("#%FF", "").is_err());
        assert!(location_channel("", "?channel=a//b").is_err());
    }

    #[test]
    fn the_hash_follows_the_current_channel() {
        assert_eq!(hash_for("default", "", ""), None);
        assert_eq!(hash_for("red", "#red", ""), None);
        assert_eq!(hash_for("red", "", "?channel=red"), None);
        assert_eq!(hash_for("blue", "#red", ""), Some("#blue".into()));
        assert_eq!(hash_for("blue", "", "?channel=red"), Some("#blue".into()));
        assert_eq!(hash_for("default", "#red", ""), Some("#default".into()));
        assert_eq!(hash_for("red", "#a%20b", ""), Some("#red".into()));
    }

    #[test]
    fn typed_channel_names() {
        assert_eq!(channel_input("  #red "), Ok("red".into()));
        assert_eq!(channel_input("team/chat"), Ok("team/chat".into()));
        assert_eq!(channel_input(" "), Err(ChannelError::Empty));
        assert_eq!(channel_input("#"), Err(ChannelError::Empty));
        assert_eq!(
            channel_input("##red"),
            Err(ChannelError::BadByte { ch: '#', at: 0 })
        );
        assert_eq!(channel_input("a//b"), Err(ChannelError::EmptySegment));
    }
}
