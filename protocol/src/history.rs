//! Stream positions: where a message sits in its channel's history, and
//! how a client names the position it wants to resume from.
//!
//! A position is an `offset` (1 for a channel's first message, +1 per
//! message) and an `epoch`, a short string naming one continuous history:
//! when the server loses a channel's history (it restarted, or the history
//! expired), the channel gets a new epoch, and a client resuming from a
//! position of the old one is told so instead of silently missing messages.
//! See `docs/history.md`.

use serde::{Deserialize, Serialize};

/// URL query parameter of a plain or v1 client resuming from a position:
/// `?since=EPOCH:OFFSET`.
pub const SINCE_PARAM: &str = "since";

/// URL query parameter of a plain or v1 client asking for the last N kept
/// messages on joining: `?rewind=N`.
pub const REWIND_PARAM: &str = "rewind";

/// Most messages `?rewind=N` may ask for.
pub const MAX_REWIND: u64 = 1_000_000;

/// A position in a channel's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The offset of the last message seen (0: none yet).
    pub offset: u64,
    /// The history this offset belongs to.
    pub epoch: String,
}

impl Position {
    /// Parses `EPOCH:OFFSET` (the `?since=` form).
    ///
    /// # Errors
    /// A one-line reason, for an HTTP 400.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some((epoch, offset)) = text.rsplit_once(':') else {
            return Err("since is EPOCH:OFFSET".into());
        };
        if epoch.is_empty() || epoch.len() > 64 || !epoch.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err("since: the epoch is 1 to 64 letters or digits".into());
        }
        let offset = offset
            .parse::<u64>()
            .map_err(|_| "since: the offset is a whole number".to_owned())?;
        Ok(Self {
            offset,
            epoch: epoch.to_owned(),
        })
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// Parses the `?rewind=N` value.
///
/// # Errors
/// A one-line reason, for an HTTP 400.
pub fn parse_rewind(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if n <= MAX_REWIND => Ok(n),
        _ => Err(format!("rewind is a whole number from 0 to {MAX_REWIND}")),
    }
}

/// Why a resume did not recover everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unrecovered {
    /// The position names another history than the channel's current one.
    Epoch,
    /// Messages after the position are no longer kept.
    Expired,
    /// The server keeps no history (`--history-size 0`, or a cluster).
    Disabled,
}

impl Unrecovered {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Unrecovered::Epoch => "epoch",
            Unrecovered::Expired => "expired",
            Unrecovered::Disabled => "disabled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_values_parse_or_say_why_not() {
        assert_eq!(
            Position::parse("ab12:7"),
            Ok(Position {
                offset: 7,
                epoch: "ab12".into()
            })
        );
        assert_eq!(Position::parse("ab12:7").unwrap().to_string(), "ab12:7");
        for bad in ["", "7", ":7", "ab:", "ab:-1", "a b:1", "ab:1x"] {
            assert!(Position::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_rewind("10"), Ok(10));
        assert!(parse_rewind("-1").is_err());
        assert!(parse_rewind("x").is_err());
        assert!(parse_rewind("1000001").is_err());
    }
}
