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

/// How a resume ended, once the client knows (see [`Cursor`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// Every message missed was replayed: this many (the client's own
    /// messages not counted). The replay has ended: what follows is live.
    Recovered {
        /// Messages replayed, up to the seam.
        missed: u64,
    },
    /// The server could not replay everything missed: why.
    Unrecovered(Unrecovered),
}

/// A subscriber's place in one channel's history, kept across
/// reconnections so that the next join resumes from it (`since`), and the
/// count of a replay in progress. Shared by the console client, the
/// browser client and `load-test`; no I/O.
///
/// Feed it the join's answer ([`Cursor::joined`]: a v2 `subscribed`, or
/// a v1 `welcome`) and every message of the channel, replayed or live
/// ([`Cursor::message`]). Each returns the outcome of a resume once it is
/// known: at the answer when nothing was missed or history was lost, at the
/// last replayed message otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The last position seen (`None`: no history, or not joined yet).
    last: Option<Position>,
    /// A replay under way: its last offset (the seam) and how many of the
    /// client's messages have come.
    replay: Option<(u64, u64)>,
}

impl Cursor {
    /// Where the next join should resume from (`since`).
    #[must_use]
    pub fn since(&self) -> Option<&Position> {
        self.last.as_ref()
    }

    /// The answer to a join: `resumed` is whether it asked for `since`
    /// (this cursor's [`Cursor::since`] at the time); `recovered`, `reason`
    /// and `position` are the answer's fields. `Some` when the resume's
    /// outcome is known already.
    pub fn joined(
        &mut self,
        resumed: bool,
        recovered: Option<bool>,
        reason: Option<Unrecovered>,
        position: Option<Position>,
    ) -> Option<Resumed> {
        self.replay = None;
        let since = self.last.as_ref().map(|p| p.offset);
        match (resumed, recovered, position) {
            (true, Some(true), Some(seam)) => {
                let since = since.unwrap_or(0);
                if seam.offset <= since {
                    self.last = Some(seam);
                    return Some(Resumed::Recovered { missed: 0 });
                }
                self.replay = Some((seam.offset, 0));
                None
            }
            (true, Some(false), position) => {
                let reason = reason.unwrap_or(Unrecovered::Expired);
                // What is still kept of the same history is replayed: the
                // messages move the cursor; otherwise start over here.
                if reason != Unrecovered::Expired {
                    self.last = position;
                }
                Some(Resumed::Unrecovered(reason))
            }
            // A live join (or a server that ignored `since`): resume from
            // where the channel was when joined.
            (_, _, position) => {
                self.last = position;
                None
            }
        }
    }

    /// A message of the channel, with its position if it has one; `own`:
    /// sent by this client (replayed to it after a reconnect, not counted
    /// as missed). `Some` when it ends a replay.
    pub fn message(
        &mut self,
        offset: Option<u64>,
        epoch: Option<&str>,
        own: bool,
    ) -> Option<Resumed> {
        let (Some(offset), Some(epoch)) = (offset, epoch) else {
            return None;
        };
        match &mut self.last {
            // The same history: no allocation per message.
            Some(last) if last.epoch == epoch => last.offset = last.offset.max(offset),
            last => {
                *last = Some(Position {
                    offset,
                    epoch: epoch.to_owned(),
                });
            }
        }
        let (seam, count) = self.replay.as_mut()?;
        if !own {
            *count += 1;
        }
        if offset < *seam {
            return None;
        }
        let missed = *count;
        self.replay = None;
        Some(Resumed::Recovered { missed })
    }

    /// A replay is under way (its messages are arriving).
    #[must_use]
    pub fn replaying(&self) -> bool {
        self.replay.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u64, epoch: &str) -> Option<Position> {
        Some(Position {
            offset,
            epoch: epoch.into(),
        })
    }

    #[test]
    fn a_cursor_counts_the_replay_up_to_the_seam() {
        let mut c = Cursor::default();
        assert_eq!(c.since(), None);
        assert_eq!(c.joined(false, None, None, at(3, "e")), None);
        assert_eq!(c.since(), at(3, "e").as_ref());
        assert_eq!(c.message(Some(4), Some("e"), false), None);
        // Reconnect from 4; the server is at 8: 5, 6 (our own), 7, 8 replayed.
        assert_eq!(c.joined(true, Some(true), None, at(8, "e")), None);
        assert!(c.replaying());
        assert_eq!(c.message(Some(5), Some("e"), false), None);
        assert_eq!(c.message(Some(6), Some("e"), true), None);
        assert_eq!(c.message(Some(7), Some("e"), false), None);
        assert_eq!(
            c.message(Some(8), Some("e"), false),
            Some(Resumed::Recovered { missed: 3 })
        );
        assert_eq!(c.message(Some(9), Some("e"), false), None);
        assert_eq!(c.since(), at(9, "e").as_ref());
        // Nothing missed: known at the answer.
        assert_eq!(
            c.joined(true, Some(true), None, at(9, "e")),
            Some(Resumed::Recovered { missed: 0 })
        );
        assert!(!c.replaying());
    }

    #[test]
    fn a_cursor_reports_lost_history_and_follows_the_new_epoch() {
        let mut c = Cursor::default();
        c.joined(false, None, None, at(10, "old"));
        assert_eq!(
            c.joined(true, Some(false), Some(Unrecovered::Epoch), at(2, "new")),
            Some(Resumed::Unrecovered(Unrecovered::Epoch))
        );
        assert_eq!(c.since(), at(2, "new").as_ref());
        // Expired: what is kept is replayed and moves the cursor.
        assert_eq!(
            c.joined(true, Some(false), Some(Unrecovered::Expired), at(50, "new")),
            Some(Resumed::Unrecovered(Unrecovered::Expired))
        );
        assert_eq!(c.since(), at(2, "new").as_ref());
        c.message(Some(40), Some("new"), false);
        assert_eq!(c.since(), at(40, "new").as_ref());
        // Messages without positions (no history) change nothing.
        assert_eq!(c.message(None, None, false), None);
        assert_eq!(c.since(), at(40, "new").as_ref());
    }

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
