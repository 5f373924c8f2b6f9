//! Fuzzes `protocol::channel`: the channel-name rule, the channel a
//! WebSocket request asks for, and the token patterns that grant channels.
//!
//! Input: the first byte picks a path prefix (none, `/ws`, `/ws/`, `/w`);
//! the rest (lossily UTF-8) is split on NUL into pieces. Checked:
//!
//! - `validate` agrees with two independent checkers of each piece: one
//!   splitting on `/` (accepted or not), one finding the first broken rule
//!   by position (which error: empty, too long, then the earlier of the first
//!   byte outside the set and the first empty segment); error texts are one
//!   ASCII line;
//! - `from_request(path, query)`, the prefix and the first piece split at
//!   its first `?`: never panics, `None` exactly for paths that are neither
//!   `/ws` nor below `/ws/`, otherwise the resolution the module docs
//!   tabulate (worked out here: the path's name verbatim, the first
//!   `channel` query value percent-decoded, both agreeing, or `default`);
//!   an accepted name passes `validate`; an error text is one line;
//! - `Pattern::parse` of each piece accepts exactly a valid name or a prefix
//!   (empty, or a valid name maybe followed by one `/`) followed by `*`, and
//!   keeps the text; `matches` on valid names (the pieces, the prefix itself,
//!   the prefix followed by each piece) agrees with a byte-by-byte prefix or
//!   equality check, and `allowed` with "any of them matches".

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::channel::{
    allowed, from_request, validate, ChannelError, Pattern, RequestError, DEFAULT, MAX_LEN, PARAM,
};
use protocol::v1::decode_query_value;
use protocol_fuzz::{is_name, is_one_line, name_byte};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let pieces: Vec<&str> = text.split('\0').collect();
    for piece in &pieces {
        check_validate(piece);
    }
    let prefix = ["", "/ws", "/ws/", "/w"][usize::from(pick & 3)];
    let target = format!("{prefix}{}", pieces[0]);
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target.as_str(), None),
    };
    check_request(path, query);
    check_patterns(&pieces);
});

/// The first rule `s` breaks, scanning from the start, length first.
fn first_broken_rule(s: &str) -> Result<(), ChannelError> {
    if s.is_empty() {
        return Err(ChannelError::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(ChannelError::TooLong { len: s.len() });
    }
    let b = s.as_bytes();
    let bad = b.iter().position(|&c| c != b'/' && !name_byte(c));
    // A `/` first or after another ends an empty segment; so does a `/` last,
    // which is known only at the end.
    let empty = (0..b.len())
        .find(|&i| b[i] == b'/' && (i == 0 || b[i - 1] == b'/'))
        .or_else(|| (b[b.len() - 1] == b'/').then_some(b.len()));
    match (bad, empty) {
        (Some(at), e) if e.is_none_or(|e| at < e) => Err(ChannelError::BadByte {
            ch: s[at..].chars().next().unwrap(),
            at,
        }),
        (_, Some(_)) => Err(ChannelError::EmptySegment),
        (None, None) => Ok(()),
        (Some(_), None) => unreachable!(),
    }
}

fn check_validate(s: &str) {
    let got = validate(s);
    assert_eq!(got.is_ok(), is_name(s), "{s:?}");
    assert_eq!(got, first_broken_rule(s), "{s:?}");
    if let Err(e) = got {
        let text = e.to_string();
        assert!(text.is_ascii() && is_one_line(&text), "{text:?}");
    }
}

fn check_request(path: &str, query: Option<&str>) {
    let got = from_request(path, query);
    let is_ws = path == "/ws" || path.starts_with("/ws/");
    assert_eq!(got.is_some(), is_ws, "{path:?}");
    let Some(got) = got else { return };
    let expected = (|| -> Result<String, RequestError> {
        let in_path = path.strip_prefix("/ws/");
        if let Some(name) = in_path {
            first_broken_rule(name)?;
        }
        let param = query.and_then(|q| {
            q.split('&')
                .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
                .find(|(k, _)| *k == PARAM)
        });
        let in_query = match param {
            None => None,
            Some((_, raw)) => {
                let name = decode_query_value(raw).ok_or(RequestError::BadEscape)?;
                first_broken_rule(&name)?;
                Some(name)
            }
        };
        match (in_path, in_query) {
            (Some(p), Some(q)) if p != q => Err(RequestError::NamedTwice {
                path: p.to_owned(),
                query: q,
            }),
            (Some(p), _) => Ok(p.to_owned()),
            (None, Some(q)) => Ok(q),
            (None, None) => Ok(DEFAULT.to_owned()),
        }
    })();
    assert_eq!(got, expected, "{path:?} {query:?}");
    match got {
        Ok(name) => assert!(is_name(&name), "{name:?} accepted"),
        Err(e) => assert!(is_one_line(&e.to_string()), "{e}"),
    }
}

fn check_patterns(pieces: &[&str]) {
    let mut parsed = Vec::new();
    for &text in pieces {
        let expected_prefix = match text.strip_suffix('*') {
            Some(p)
                if p.len() <= MAX_LEN
                    && (p.is_empty() || is_name(p.strip_suffix('/').unwrap_or(p))) =>
            {
                Some(Some(p))
            }
            Some(_) => None,
            None => is_name(text).then_some(None),
        };
        let got = Pattern::parse(text);
        assert_eq!(got.is_ok(), expected_prefix.is_some(), "{text:?}");
        if text.strip_suffix('*').is_none() {
            assert_eq!(got.as_ref().err(), validate(text).err().as_ref());
        }
        let (Ok(pattern), Some(prefix)) = (got, expected_prefix) else {
            continue;
        };
        assert_eq!(pattern.as_str(), text);
        assert_eq!(pattern.to_string(), text);
        let json = serde_json::to_string(&pattern).unwrap();
        assert_eq!(
            serde_json::from_str::<Pattern>(&json).as_ref().ok(),
            Some(&pattern)
        );

        let mut names: Vec<String> = pieces.iter().map(|p| p.to_string()).collect();
        if let Some(prefix) = prefix {
            names.push(prefix.to_owned());
            names.extend(pieces.iter().map(|p| format!("{prefix}{p}")));
        }
        for name in names.iter().filter(|n| is_name(n)) {
            let expected = match prefix {
                Some(p) => {
                    name.len() >= p.len() && p.bytes().zip(name.bytes()).all(|(a, b)| a == b)
                }
                None => name.len() == text.len() && name.bytes().eq(text.bytes()),
            };
            assert_eq!(pattern.matches(name), expected, "{text:?} on {name:?}");
        }
        parsed.push(pattern);
    }
    for name in pieces.iter().filter(|n| is_name(n)) {
        assert_eq!(
            allowed(&parsed, name),
            parsed.iter().any(|p| p.matches(name)),
            "{name:?}"
        );
    }
}
