//! The slash commands of interactive mode (`/join NAME`, `/who`, ...),
//! parsed without any state so the grammar can be unit-tested. A line that
//! starts with `//` is not a command: it is sent with one slash removed.

/// What a typed line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slash<'a> {
    /// Send this text (a plain line, or a `//` line with one slash removed).
    Send(&'a str),
    /// `/join NAME`: subscribe to a channel and write there.
    Join(&'a str),
    /// `/leave [NAME]`: unsubscribe (the current channel when no name).
    Leave(Option<&'a str>),
    /// `/who [NAME]`: the members of a channel (the current one by default).
    Who(Option<&'a str>),
    /// `/switch NAME`: where typed lines go.
    Switch(&'a str),
    /// `/help`.
    Help,
    /// `/quit`: leave like Ctrl+D.
    Quit,
    /// A known command used wrongly: its usage.
    Usage(&'static str),
    /// `/cmd` that is not a command (the word, slash included).
    Unknown(&'a str),
}

/// One line per command, for `/help`.
pub(crate) const HELP: [&str; 7] = [
    "/join NAME     join channel NAME and write there",
    "/leave [NAME]  leave channel NAME (default: the current one)",
    "/switch NAME   write to channel NAME (one you joined)",
    "/who [NAME]    who is in channel NAME (default: the current one)",
    "/help          this list",
    "/quit          leave (like Ctrl+D)",
    "//text         send a line that starts with a slash: /text",
];

/// The line is a command for the client rather than text to send: it starts
/// with `/` but not `//`. The line editor waits for such a line to be
/// handled before it shows the next prompt, which the command may change.
pub(crate) fn is_command(line: &str) -> bool {
    line.starts_with('/') && !line.starts_with("//")
}

/// The text to send for a line that is not a command: a `//` line loses
/// its first slash.
pub(crate) fn unescape(line: &str) -> &str {
    match line.strip_prefix('/') {
        Some(rest) if rest.starts_with('/') => rest,
        _ => line,
    }
}

/// Parses a line typed in interactive mode.
pub(crate) fn parse(line: &str) -> Slash<'_> {
    if !is_command(line) {
        return Slash::Send(unescape(line));
    }
    let rest = &line[1..];
    let (word, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let mut words = args.split_whitespace();
    let arg = words.next();
    let extra = words.next().is_some();
    match (word, arg, extra) {
        ("join", Some(name), false) => Slash::Join(name),
        ("join", ..) => Slash::Usage("/join NAME"),
        ("switch", Some(name), false) => Slash::Switch(name),
        ("switch", ..) => Slash::Usage("/switch NAME"),
        ("leave", name, false) => Slash::Leave(name),
        ("leave", ..) => Slash::Usage("/leave [NAME]"),
        ("who", name, false) => Slash::Who(name),
        ("who", ..) => Slash::Usage("/who [NAME]"),
        ("help", None, _) => Slash::Help,
        ("help", ..) => Slash::Usage("/help"),
        ("quit", None, _) => Slash::Quit,
        ("quit", ..) => Slash::Usage("/quit"),
        _ => Slash::Unknown(line.split_whitespace().next().unwrap_or("/")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_escaped_lines_are_sent() {
        assert_eq!(parse("hello"), Slash::Send("hello"));
        assert_eq!(parse(" /join a"), Slash::Send(" /join a"));
        assert_eq!(parse("//join a"), Slash::Send("/join a"));
        assert_eq!(parse("//"), Slash::Send("/"));
        assert_eq!(parse("///x"), Slash::Send("//x"));
        assert!(!is_command("//x"));
        assert!(!is_command("x/"));
        assert!(is_command("/x"));
        assert!(is_command("/"));
    }

    #[test]
    fn commands_and_their_arguments() {
        assert_eq!(parse("/join news"), Slash::Join("news"));
        assert_eq!(parse("/join   team/a  "), Slash::Join("team/a"));
        assert_eq!(parse("/switch a"), Slash::Switch("a"));
        assert_eq!(parse("/leave"), Slash::Leave(None));
        assert_eq!(parse("/leave b"), Slash::Leave(Some("b")));
        assert_eq!(parse("/who"), Slash::Who(None));
        assert_eq!(parse("/who b"), Slash::Who(Some("b")));
        assert_eq!(parse("/help"), Slash::Help);
        assert_eq!(parse("/quit"), Slash::Quit);
    }

    #[test]
    fn misuse_shows_the_usage() {
        assert_eq!(parse("/join"), Slash::Usage("/join NAME"));
        assert_eq!(parse("/join a b"), Slash::Usage("/join NAME"));
        assert_eq!(parse("/switch"), Slash::Usage("/switch NAME"));
        assert_eq!(parse("/leave a b"), Slash::Usage("/leave [NAME]"));
        assert_eq!(parse("/who a b"), Slash::Usage("/who [NAME]"));
        assert_eq!(parse("/quit now"), Slash::Usage("/quit"));
        assert_eq!(parse("/help me"), Slash::Usage("/help"));
    }

    #[test]
    fn unknown_commands_are_named() {
        assert_eq!(parse("/frob x"), Slash::Unknown("/frob"));
        assert_eq!(parse("/JOIN a"), Slash::Unknown("/JOIN"));
        assert_eq!(parse("/"), Slash::Unknown("/"));
        assert_eq!(parse("/ join"), Slash::Unknown("/"));
    }
}
