//! What the client prints: one line per message, presence change or status,
//! built here without a terminal so it can be unit-tested.

use std::borrow::Cow;
use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};
use chrono::TimeZone;
use protocol::history::Resumed;
use protocol::v1::{Body, Peer};

/// Turns events into lines, in local time `tz`, with ANSI colours or not.
#[derive(Debug, Clone)]
pub(crate) struct Render<Tz: TimeZone> {
    pub(crate) tz: Tz,
    pub(crate) colour: bool,
}

const TIME: Style = Style::new().dimmed();
const PRESENCE: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::BrightBlack)));
const STATUS: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Yellow)));
const ERROR: Style = Style::new()
    .bold()
    .fg_color(Some(anstyle::Color::Ansi(AnsiColor::Red)));
const NAME_COLOURS: [AnsiColor; 6] = [
    AnsiColor::Cyan,
    AnsiColor::Green,
    AnsiColor::Magenta,
    AnsiColor::Blue,
    AnsiColor::BrightYellow,
    AnsiColor::BrightRed,
];

/// What a message holds, borrowed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BodyView<'a> {
    Text(&'a str),
    Binary(usize),
}

impl<'a> From<&'a Body> for BodyView<'a> {
    fn from(b: &'a Body) -> Self {
        match b {
            Body::Text(t) => BodyView::Text(t),
            Body::Data(d) => BodyView::Binary(d.len()),
        }
    }
}

impl<Tz: TimeZone> Render<Tz>
where
    Tz::Offset: std::fmt::Display,
{
    fn paint(&self, style: Style, text: &str) -> String {
        if self.colour {
            format!("{style}{text}{style:#}")
        } else {
            text.to_owned()
        }
    }

    /// `HH:MM:SS` in local time for `ms` since the Unix epoch.
    pub(crate) fn clock(&self, ms: u64) -> String {
        i64::try_from(ms)
            .ok()
            .and_then(|ms| self.tz.timestamp_millis_opt(ms).single())
            .map_or_else(
                || "--:--:--".to_owned(),
                |t| t.format("%H:%M:%S").to_string(),
            )
    }

    /// `[HH:MM:SS] name: text` (no `name: ` in raw mode).
    pub(crate) fn message(&self, time_ms: u64, name: Option<&str>, body: BodyView<'_>) -> String {
        self.message_in(None, time_ms, name, body)
    }

    /// [`message`](Self::message) with `[#channel] ` after the time when
    /// `tag` names a channel.
    pub(crate) fn message_in(
        &self,
        tag: Option<&str>,
        time_ms: u64,
        name: Option<&str>,
        body: BodyView<'_>,
    ) -> String {
        let mut line = self.paint(TIME, &format!("[{}]", self.clock(time_ms)));
        line.push(' ');
        if let Some(channel) = tag {
            let _ = write!(line, "[#{channel}] ");
        }
        if let Some(name) = name {
            let name = sanitize(name);
            let style = Style::new()
                .bold()
                .fg_color(Some(name_colour(&name).into()));
            line.push_str(&self.paint(style, &name));
            line.push_str(": ");
        }
        match body {
            BodyView::Text(t) => line.push_str(&sanitize(t)),
            BodyView::Binary(n) => {
                let _ = write!(line, "<binary {n} bytes>");
            }
        }
        line
    }

    /// `* bob joined (3 online)`, `* 150 joined, 3 left (200 online)`.
    pub(crate) fn presence(
        &self,
        online: u64,
        joined: &[Peer],
        left: &[Peer],
        joined_count: Option<u64>,
        left_count: Option<u64>,
    ) -> String {
        let names = |peers: &[Peer]| {
            peers
                .iter()
                .map(|p| sanitize(&p.name).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        if !joined.is_empty() {
            parts.push(format!("{} joined", names(joined)));
        } else if let Some(n) = joined_count.filter(|n| *n > 0) {
            parts.push(format!("{n} joined"));
        }
        if !left.is_empty() {
            parts.push(format!("{} left", names(left)));
        } else if let Some(n) = left_count.filter(|n| *n > 0) {
            parts.push(format!("{n} left"));
        }
        let text = if parts.is_empty() {
            format!("* {online} online")
        } else {
            format!("* {} ({online} online)", parts.join(", "))
        };
        self.paint(PRESENCE, &text)
    }

    /// [`presence`](Self::presence) led by `[#channel] ` when `tag` names
    /// a channel.
    pub(crate) fn presence_in(&self, tag: Option<&str>, presence: String) -> String {
        match tag {
            Some(channel) => format!("[#{channel}] {presence}"),
            None => presence,
        }
    }

    /// A status line (connected, closed, reconnecting).
    pub(crate) fn status(&self, text: &str) -> String {
        self.paint(STATUS, text)
    }

    /// An error line, `error: ...`.
    pub(crate) fn error(&self, text: &str) -> String {
        self.paint(ERROR, &format!("error: {text}"))
    }

    /// A `broadcast.v2` `error` event, `! code: text`.
    pub(crate) fn refusal(&self, code: &str, text: &str) -> String {
        self.paint(ERROR, &format!("! {code}: {}", sanitize(text)))
    }
}

/// `connected to URL as alice (3 online)`.
pub(crate) fn welcome(url: &str, name: &str, online: u64, again: bool) -> String {
    let verb = if again { "reconnected" } else { "connected" };
    format!("{verb} to {url} as {} ({online} online)", sanitize(name))
}

/// `connected to URL as alice`: a `broadcast.v2` welcome (its channels'
/// counts follow as they are joined).
pub(crate) fn welcome_v2(url: &str, name: &str, again: bool) -> String {
    let verb = if again { "reconnected" } else { "connected" };
    format!("{verb} to {url} as {}", sanitize(name))
}

/// `joined #news (3 online)`.
pub(crate) fn joined(channel: &str, online: u64, again: bool) -> String {
    let verb = if again { "rejoined" } else { "joined" };
    format!("{verb} #{channel} ({online} online)")
}

/// How a resume went, for the user: `None` when nothing was missed.
pub(crate) fn resumed(outcome: Resumed) -> Option<String> {
    match outcome {
        Resumed::Recovered { missed: 0 } => None,
        Resumed::Recovered { missed: 1 } => Some("resumed: 1 missed message delivered".to_owned()),
        Resumed::Recovered { missed } => {
            Some(format!("resumed: {missed} missed messages delivered"))
        }
        Resumed::Unrecovered(_) => Some("history expired: some messages may be missing".to_owned()),
    }
}

/// The server answered without `broadcast.v2`: the client is in the first
/// channel only, through its URL.
pub(crate) fn without_v2(channel: &str, others: usize) -> String {
    let mut line = format!(
        "the server does not speak {}: in #{channel} only",
        protocol::v2::SUBPROTOCOL
    );
    if others > 0 {
        let _ = write!(line, " (not joined: {others} more --channel)");
    }
    line
}

/// `connected to URL (raw mode ...)`: the server did not accept broadcast.v1.
pub(crate) fn raw_connected(url: &str, again: bool) -> String {
    let verb = if again { "reconnected" } else { "connected" };
    format!(
        "{verb} to {url} (raw mode: the server does not speak {})",
        protocol::v1::SUBPROTOCOL
    )
}

/// `connection closed by server: 1001 going away (server shutting down)`,
/// plus the notice the server sent before, when it says more than the reason.
pub(crate) fn closed_by_server(code: Option<u16>, reason: &str, notice: Option<&str>) -> String {
    let mut line = match code {
        Some(code) => format!(
            "connection closed by server: {code} {}",
            protocol::close::describe(code)
        ),
        None => "connection closed by server (no status code)".to_owned(),
    };
    let reason = reason.trim();
    if !reason.is_empty() {
        let _ = write!(line, " ({})", sanitize(reason));
    }
    append_notice(&mut line, reason, notice);
    line
}

/// `connection lost: CAUSE`: the connection ended without a close frame.
pub(crate) fn lost(cause: &str, notice: Option<&str>) -> String {
    let mut line = format!("connection lost: {cause}");
    append_notice(&mut line, "", notice);
    line
}

fn append_notice(line: &mut String, reason: &str, notice: Option<&str>) {
    if let Some(n) = notice
        .map(str::trim)
        .filter(|n| !n.is_empty() && *n != reason)
    {
        let _ = write!(line, ": {}", sanitize(n));
    }
}

/// Makes text from the network safe to print on one terminal line: control
/// characters (newlines included) and invisible formatting characters are
/// shown escaped (`\n`, `\u{1b}`), so a message can neither break the
/// one-line-per-message format nor send escape sequences to the terminal.
pub(crate) fn sanitize(s: &str) -> Cow<'_, str> {
    let bad = |c: char| {
        (c.is_control() && c != '\t')
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
    };
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn name_colour(name: &str) -> AnsiColor {
    // FNV-1a: a stable colour per name across runs.
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    NAME_COLOURS[(h % NAME_COLOURS.len() as u64) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    fn plain() -> Render<FixedOffset> {
        Render {
            tz: FixedOffset::east_opt(2 * 3600).unwrap(),
            colour: false,
        }
    }

    // 2023-11-14T22:13:20Z
    const T: u64 = 1_700_000_000_000;

    fn peer(id: u64, name: &str) -> Peer {
        Peer {
            id,
            name: name.into(),
        }
    }

    #[test]
    fn messages_show_local_time_name_and_text() {
        let r = plain();
        assert_eq!(
            r.message(T, Some("bob"), BodyView::Text("hi there")),
            "[00:13:20] bob: hi there"
        );
        assert_eq!(
            r.message(T + 999, None, BodyView::Text("raw")),
            "[00:13:20] raw"
        );
        assert_eq!(
            r.message(T, Some("bob"), BodyView::Binary(5)),
            "[00:13:20] bob: <binary 5 bytes>"
        );
        assert_eq!(
            r.message(T, None, BodyView::Binary(0)),
            "[00:13:20] <binary 0 bytes>"
        );
        assert_eq!(r.clock(u64::MAX), "--:--:--");
        assert_eq!(
            r.message_in(Some("team/a"), T, Some("bob"), BodyView::Text("hi")),
            "[00:13:20] [#team/a] bob: hi"
        );
        assert_eq!(
            r.presence_in(Some("a"), r.presence(2, &[peer(1, "bob")], &[], None, None)),
            "[#a] * bob joined (2 online)"
        );
        let body = Body::Data(vec![1, 2, 3]);
        assert_eq!(
            r.message(0, Some("x"), (&body).into()),
            "[02:00:00] x: <binary 3 bytes>"
        );
    }

    #[test]
    fn hostile_text_stays_on_one_line_without_escapes() {
        let r = plain();
        assert_eq!(
            r.message(
                T,
                Some("e\u{1b}[2Jve"),
                BodyView::Text("a\nb\r\u{1b}[31mred\u{202E}\tx")
            ),
            "[00:13:20] e\\u{1b}[2Jve: a\\nb\\r\\u{1b}[31mred\\u{202e}\tx"
        );
        assert!(matches!(sanitize("plain Zoë 🦀"), Cow::Borrowed(_)));
    }

    #[test]
    fn colours_only_when_asked() {
        let mut r = plain();
        r.colour = true;
        let line = r.message(T, Some("bob"), BodyView::Text("hi"));
        assert!(line.contains("\u{1b}["), "{line:?}");
        assert!(line.ends_with("hi"));
        assert!(!plain().status("x").contains('\u{1b}'));
        assert_eq!(name_colour("bob"), name_colour("bob"));
    }

    #[test]
    fn presence_lines() {
        let r = plain();
        assert_eq!(
            r.presence(3, &[peer(1, "bob")], &[], None, None),
            "* bob joined (3 online)"
        );
        assert_eq!(
            r.presence(
                2,
                &[peer(1, "bob"), peer(2, "carol")],
                &[peer(3, "dave")],
                None,
                None
            ),
            "* bob, carol joined, dave left (2 online)"
        );
        assert_eq!(
            r.presence(1, &[], &[peer(3, "dave")], None, None),
            "* dave left (1 online)"
        );
        assert_eq!(
            r.presence(200, &[], &[], Some(150), Some(3)),
            "* 150 joined, 3 left (200 online)"
        );
        assert_eq!(
            r.presence(200, &[], &[], Some(150), Some(0)),
            "* 150 joined (200 online)"
        );
        assert_eq!(r.presence(7, &[], &[], None, None), "* 7 online");
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            welcome("ws://h:1/ws", "alice-2", 3, false),
            "connected to ws://h:1/ws as alice-2 (3 online)"
        );
        assert_eq!(
            welcome("u", "a", 1, true),
            "reconnected to u as a (1 online)"
        );
        assert_eq!(
            raw_connected("ws://h/ws", false),
            "connected to ws://h/ws (raw mode: the server does not speak broadcast.v1)"
        );
        assert_eq!(
            closed_by_server(
                Some(1001),
                "server shutting down",
                Some("server shutting down")
            ),
            "connection closed by server: 1001 going away (server shutting down)"
        );
        assert_eq!(
            closed_by_server(Some(1013), "slow consumer", Some("you read too slowly: 1 MiB queued")),
            "connection closed by server: 1013 try again later (slow consumer): you read too slowly: 1 MiB queued"
        );
        assert_eq!(
            closed_by_server(None, "", None),
            "connection closed by server (no status code)"
        );
        assert_eq!(
            lost("connection reset", Some("bye")),
            "connection lost: connection reset: bye"
        );
        assert_eq!(plain().error("x"), "error: x");
        assert_eq!(
            plain().refusal("forbidden", "no\nway"),
            "! forbidden: no\\nway"
        );
        assert_eq!(
            welcome_v2("ws://h/ws", "erin", true),
            "reconnected to ws://h/ws as erin"
        );
        assert_eq!(joined("a/b", 2, false), "joined #a/b (2 online)");
        assert_eq!(joined("a", 1, true), "rejoined #a (1 online)");
        assert_eq!(
            without_v2("a", 0),
            "the server does not speak broadcast.v2: in #a only"
        );
        assert_eq!(
            without_v2("a", 2),
            "the server does not speak broadcast.v2: in #a only (not joined: 2 more --channel)"
        );
    }
}
