//! Tests of `channel` (kept apart so the module reads as its code).

use super::*;
use proptest::prelude::*;

#[test]
fn names_are_checked() {
    for ok in ["a", "news", "team-7/chat", "user:42@eu", "A.b_c-d", "a/b/c"] {
        assert_eq!(validate(ok), Ok(()), "{ok}");
    }
    assert_eq!(validate(&"x".repeat(MAX_LEN)), Ok(()));
    assert_eq!(validate(""), Err(ChannelError::Empty));
    assert_eq!(
        validate(&"x".repeat(MAX_LEN + 1)),
        Err(ChannelError::TooLong { len: 129 })
    );
    assert_eq!(
        validate("abc%41"),
        Err(ChannelError::BadByte { ch: '%', at: 3 })
    );
    assert_eq!(
        validate("caf\u{e9}"),
        Err(ChannelError::BadByte { ch: 'é', at: 3 })
    );
    assert_eq!(
        validate("a b"),
        Err(ChannelError::BadByte { ch: ' ', at: 1 })
    );
    assert_eq!(
        validate("team*"),
        Err(ChannelError::BadByte { ch: '*', at: 4 })
    );
    for bad in ["/a", "a/", "a//b", "/", "//"] {
        assert_eq!(validate(bad), Err(ChannelError::EmptySegment), "{bad}");
    }
}

#[test]
fn errors_are_one_short_line() {
    let errors = [
        validate(""),
        validate(&"x".repeat(500)),
        validate("a\nb"),
        validate("\u{202e}x"),
        validate("a//b"),
    ];
    for e in errors {
        let text = e.unwrap_err().to_string();
        assert!(
            text.is_ascii() && !text.contains('\n') && text.len() < 100,
            "{text}"
        );
    }
    assert_eq!(
        validate("abc%").unwrap_err().to_string(),
        "channel name has '%' at byte 3, outside A-Z a-z 0-9 - _ . : @ /"
    );
    assert_eq!(
        validate("a\nb").unwrap_err().to_string(),
        "channel name has '\\n' at byte 1, outside A-Z a-z 0-9 - _ . : @ /"
    );
}

#[test]
fn requests_name_their_channel() {
    let ok = |path, query| from_request(path, query).map(|r| r.unwrap());
    assert_eq!(ok("/ws", None), Some(DEFAULT.into()));
    assert_eq!(ok("/ws", Some("name=alice")), Some(DEFAULT.into()));
    assert_eq!(ok("/ws/news", None), Some("news".into()));
    assert_eq!(ok("/ws/team/chat", Some("x=1")), Some("team/chat".into()));
    assert_eq!(ok("/ws", Some("channel=news")), Some("news".into()));
    assert_eq!(
        ok("/ws", Some("name=a&channel=team%2Fchat")),
        Some("team/chat".into())
    );
    assert_eq!(ok("/ws/news", Some("channel=news")), Some("news".into()));
    for not_ws in ["/", "/foo", "/wsx", "/ws2/a", "/healthz", ""] {
        assert_eq!(from_request(not_ws, Some("channel=a")), None, "{not_ws}");
    }
}

#[test]
fn bad_request_channels_are_told_apart() {
    let err = |path, query| from_request(path, query).unwrap().unwrap_err();
    // The path is verbatim: an escape is a bad byte, not a decoded one.
    assert_eq!(
        err("/ws/caf%C3%A9", None),
        RequestError::Name(ChannelError::BadByte { ch: '%', at: 3 })
    );
    assert_eq!(err("/ws/", None), RequestError::Name(ChannelError::Empty));
    assert_eq!(
        err("/ws/a//b", None),
        RequestError::Name(ChannelError::EmptySegment)
    );
    assert_eq!(
        err("/ws", Some("channel=")),
        RequestError::Name(ChannelError::Empty)
    );
    assert_eq!(
        err("/ws", Some("channel=a+b")),
        RequestError::Name(ChannelError::BadByte { ch: ' ', at: 1 })
    );
    assert_eq!(err("/ws", Some("channel=%zz")), RequestError::BadEscape);
    let twice = err("/ws/a", Some("channel=b"));
    assert_eq!(
        twice,
        RequestError::NamedTwice {
            path: "a".into(),
            query: "b".into()
        }
    );
    assert_eq!(
        twice.to_string(),
        "the channel is named twice: /ws/a and ?channel=b"
    );
    // A bad name is reported as such even when the other one differs.
    assert_eq!(
        err("/ws/a", Some("channel=%0A")),
        RequestError::Name(ChannelError::BadByte { ch: '\n', at: 0 })
    );
}

#[test]
fn patterns_grant_channels() {
    let p = |s: &str| Pattern::parse(s).unwrap();
    assert!(p("news").matches("news"));
    assert!(!p("news").matches("news2"));
    assert!(!p("news").matches("new"));
    assert!(p("team-*").matches("team-7"));
    assert!(p("team-*").matches("team-"));
    assert!(!p("team-*").matches("team"));
    assert!(p("team/*").matches("team/a/b"));
    assert!(!p("team/*").matches("team"));
    assert!(p("*").matches("anything:at@all"));
    assert!(p("*").matches(DEFAULT));
    let claims = [p("news"), p("team-*")];
    assert!(allowed(&claims, "news"));
    assert!(allowed(&claims, "team-x"));
    assert!(!allowed(&claims, "other"));
    assert!(!allowed(&[], "news"));
    assert_eq!(p("team-*").to_string(), "team-*");
    assert_eq!("a/*".parse::<Pattern>().map(String::from), Ok("a/*".into()));
}

#[test]
fn bad_patterns_are_refused() {
    assert_eq!(Pattern::parse(""), Err(ChannelError::Empty));
    assert_eq!(
        Pattern::parse("a*b"),
        Err(ChannelError::BadByte { ch: '*', at: 1 })
    );
    assert_eq!(
        Pattern::parse("**"),
        Err(ChannelError::BadByte { ch: '*', at: 0 })
    );
    assert_eq!(Pattern::parse("/*"), Err(ChannelError::EmptySegment));
    assert_eq!(Pattern::parse("a//*"), Err(ChannelError::EmptySegment));
    assert_eq!(Pattern::parse("a/"), Err(ChannelError::EmptySegment));
    assert_eq!(
        Pattern::parse("a b*"),
        Err(ChannelError::BadByte { ch: ' ', at: 1 })
    );
    assert!(Pattern::parse(&format!("{}*", "x".repeat(MAX_LEN))).is_ok());
    assert_eq!(
        Pattern::parse(&format!("{}*", "x".repeat(MAX_LEN + 1))),
        Err(ChannelError::TooLong { len: 129 })
    );
}

#[test]
fn patterns_deserialize_from_claims() {
    let ok: Vec<Pattern> = serde_json::from_str(r#"["news","team-*","*"]"#).unwrap();
    assert_eq!(ok.len(), 3);
    assert!(allowed(&ok, "team-1"));
    assert_eq!(
        serde_json::to_string(&ok).unwrap(),
        r#"["news","team-*","*"]"#
    );
    let bad = serde_json::from_str::<Vec<Pattern>>(r#"["news","a b"]"#).unwrap_err();
    assert!(bad.to_string().contains("outside A-Z"), "{bad}");
}

/// The module docs' rule, as a regular expression.
const NAME_REGEX: &str = "^[A-Za-z0-9_.:@-]+(/[A-Za-z0-9_.:@-]+)*$";

fn name_regex() -> regex_automata::meta::Regex {
    regex_automata::meta::Regex::new(NAME_REGEX).unwrap()
}

proptest! {
    #[test]
    fn validate_accepts_exactly_the_regex(
        s in prop_oneof![
            // Names by construction, some longer than the limit.
            "[A-Za-z0-9_.:@-]{1,40}(/[A-Za-z0-9_.:@-]{1,40}){0,4}",
            // Near misses: slashes anywhere, a few bytes outside the set.
            "[a-c0/]{0,12}",
            "[A-Za-z0-9_.:@/ %*é\n-]{0,140}",
            ".{0,20}",
        ]
    ) {
        let expected = s.len() <= MAX_LEN && name_regex().is_match(&s);
        prop_assert_eq!(validate(&s).is_ok(), expected, "{:?}", s);
    }

    #[test]
    fn a_prefix_pattern_matches_what_starts_with_it(
        prefix in "([a-w]{1,4}/){0,2}[a-w-]{0,4}",
        rest in "[a-z/]{0,8}",
    ) {
        let pattern = Pattern::parse(&format!("{prefix}*")).unwrap();
        let name = format!("{prefix}{rest}");
        prop_assert!(pattern.matches(&name));
        let other = format!("x{name}");
        prop_assert!(!pattern.matches(&other) || prefix.is_empty());
    }

    #[test]
    fn from_request_never_panics(path in "(/ws)?.{0,20}", query in proptest::option::of(".{0,20}")) {
        let _ = from_request(&path, query.as_deref());
    }
}
