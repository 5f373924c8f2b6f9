//! Tests of `v2` (kept apart so the module reads as its code).

use super::*;
use proptest::prelude::*;

fn id(s: &str) -> Option<Id> {
    Some(Id::try_from(s).unwrap())
}

#[test]
fn commands_round_trip() {
    let commands = [
        Command::Subscribe {
            channel: "news".into(),
            id: Some(Id::Num(1)),
            since: None,
            rewind: None,
        },
        Command::Subscribe {
            channel: "team/a".into(),
            id: None,
            since: Some(crate::history::Position {
                offset: 7,
                epoch: "abcd1234".into(),
            }),
            rewind: None,
        },
        Command::Subscribe {
            channel: "team/b".into(),
            id: None,
            since: None,
            rewind: Some(20),
        },
        Command::Unsubscribe {
            channel: "news".into(),
            id: id("u-1"),
        },
        Command::Publish {
            channel: "news".into(),
            id: Some(Id::Num(u64::MAX)),
            body: Body::Text("héllo \"you\"\n".into()),
        },
        Command::Publish {
            channel: "news".into(),
            id: None,
            body: Body::Data(vec![0, 1, 254, 255]),
        },
        Command::Members {
            channel: "team/a".into(),
            id: Some(Id::Num(2)),
        },
        Command::Members {
            channel: "news".into(),
            id: None,
        },
        Command::Ping { id: id("") },
        Command::Ping { id: None },
    ];
    for c in commands {
        assert_eq!(
            Command::decode(&c.encode()),
            Ok(c.clone()),
            "{}",
            c.encode()
        );
    }
}

#[test]
fn commands_have_the_documented_shape() {
    assert_eq!(
        Command::Publish {
            channel: "news".into(),
            id: Some(Id::Num(7)),
            body: Body::Data(vec![0xff]),
        }
        .encode(),
        r#"{"type":"publish","channel":"news","id":7,"data":"/w=="}"#
    );
    assert_eq!(Command::Ping { id: None }.encode(), r#"{"type":"ping"}"#);
    let c = Command::decode(r#"{"id":"a","text":"hi","channel":"x","type":"publish"}"#);
    assert_eq!(
        c,
        Ok(Command::Publish {
            channel: "x".into(),
            id: id("a"),
            body: Body::Text("hi".into()),
        })
    );
    let c = c.unwrap();
    assert_eq!(c.id(), id("a").as_ref());
    assert_eq!(c.channel(), Some("x"));
    assert_eq!(Command::Ping { id: None }.channel(), None);
    let m = Command::Members {
        channel: "news".into(),
        id: id("m1"),
    };
    assert_eq!(
        m.encode(),
        r#"{"type":"members","channel":"news","id":"m1"}"#
    );
    assert_eq!((m.id(), m.channel()), (id("m1").as_ref(), Some("news")));
}

#[test]
fn unknown_command_fields_are_ignored() {
    assert_eq!(
        Command::decode(r#"{"type":"subscribe","channel":"a","x":[1]}"#),
        Ok(Command::Subscribe {
            channel: "a".into(),
            id: None,
            since: None,
            rewind: None,
        })
    );
    // `since` is checked: an offset and an epoch.
    assert_eq!(
        Command::decode(r#"{"type":"subscribe","channel":"a","since":{"offset":3,"epoch":"e1"}}"#)
            .map(|c| match c {
                Command::Subscribe { since, .. } => since,
                _ => None,
            }),
        Ok(Some(crate::history::Position {
            offset: 3,
            epoch: "e1".into()
        }))
    );
    assert_eq!(
        Command::decode(r#"{"type":"subscribe","channel":"a","rewind":1000000}"#).map(
            |c| match c {
                Command::Subscribe { rewind, .. } => rewind,
                _ => None,
            }
        ),
        Ok(Some(1_000_000))
    );
    for bad in [
        r#"{"type":"subscribe","channel":"a","since":{"offset":3}}"#,
        r#"{"type":"subscribe","channel":"a","since":5}"#,
        r#"{"type":"subscribe","channel":"a","since":{"offset":-1,"epoch":"e"}}"#,
        r#"{"type":"subscribe","channel":"a","since":{"offset":1,"epoch":""}}"#,
        r#"{"type":"subscribe","channel":"a","rewind":-1}"#,
        r#"{"type":"subscribe","channel":"a","rewind":1.5}"#,
        r#"{"type":"subscribe","channel":"a","rewind":"5"}"#,
        r#"{"type":"subscribe","channel":"a","rewind":1000001}"#,
        r#"{"type":"subscribe","channel":"a","rewind":2,"since":{"offset":1,"epoch":"e"}}"#,
    ] {
        assert_eq!(
            Command::decode(bad).map_err(|e| e.code),
            Err(ErrorCode::BadRequest),
            "{bad}"
        );
    }
    assert_eq!(
        Command::decode(r#"{"type":"ping","id":null,"channel":"not checked: /"}"#),
        Ok(Command::Ping { id: None })
    );
    assert_eq!(
        Command::decode(r#"{"limit":5,"type":"members","id":3,"channel":"a","text":"x"}"#),
        Ok(Command::Members {
            channel: "a".into(),
            id: Some(Id::Num(3)),
        })
    );
}

#[test]
fn a_members_command_needs_a_valid_channel() {
    use ErrorCode::*;
    let n = || Some(Id::Num(4));
    refused(
        r#"{"type":"members","id":4}"#,
        BadRequest,
        n(),
        "members needs a \"channel\"",
    );
    refused(
        r#"{"type":"members","id":4,"channel":["a"]}"#,
        BadRequest,
        n(),
        "not an array",
    );
    refused(
        r#"{"type":"members","id":4,"channel":"a b"}"#,
        BadChannel,
        n(),
        "",
    );
}

/// Asserts that `text` is refused with `code`, echoing `id`, with a
/// message containing `says`.
#[track_caller]
fn refused(text: &str, code: ErrorCode, id: Option<Id>, says: &str) {
    let e = Command::decode(text).expect_err(text);
    assert_eq!((e.code, &e.id), (code, &id), "{text}: {e}");
    assert!(e.text.contains(says), "{text}: {:?} lacks {says:?}", e.text);
    assert!(!e.text.contains('\n'), "{text}: {:?}", e.text);
}

#[test]
fn every_refusal_has_its_code_and_echoes_the_id() {
    use ErrorCode::*;
    let n = || Some(Id::Num(9));
    refused("not json", BadJson, None, "not JSON");
    refused(r#"{"type":"ping""#, BadJson, None, "not JSON");
    refused("", BadJson, None, "not JSON");
    refused("[1]", BadRequest, None, "not an array");
    refused("\"ping\"", BadRequest, None, "not a string");
    refused(r#"{"id":9}"#, BadRequest, n(), "no \"type\"");
    refused(r#"{"id":9,"type":3}"#, BadRequest, n(), "not a number");
    refused(r#"{"id":9,"type":"shout"}"#, UnknownType, n(), "\"shout\"");
    refused(
        r#"{"id":"q","type":"Ping"}"#,
        UnknownType,
        id("q"),
        "\"Ping\"",
    );
    refused(
        r#"{"id":9,"type":"subscribe"}"#,
        BadRequest,
        n(),
        "subscribe needs a \"channel\"",
    );
    refused(
        r#"{"id":9,"type":"unsubscribe"}"#,
        BadRequest,
        n(),
        "unsubscribe needs",
    );
    refused(
        r#"{"id":9,"type":"publish","text":"x"}"#,
        BadRequest,
        n(),
        "publish needs a",
    );
    refused(
        r#"{"id":9,"type":"subscribe","channel":5}"#,
        BadRequest,
        n(),
        "not a number",
    );
    refused(
        r#"{"id":9,"type":"subscribe","channel":null}"#,
        BadRequest,
        n(),
        "not null",
    );
    refused(
        r#"{"id":9,"type":"subscribe","channel":"a b"}"#,
        BadChannel,
        n(),
        "outside A-Z",
    );
    refused(
        r#"{"id":9,"type":"unsubscribe","channel":"/a"}"#,
        BadChannel,
        n(),
        "empty segment",
    );
    refused(
        r#"{"id":9,"type":"publish","channel":""}"#,
        BadChannel,
        n(),
        "empty",
    );
    let long = format!(
        r#"{{"id":9,"type":"subscribe","channel":"{}"}}"#,
        "x".repeat(129)
    );
    refused(&long, BadChannel, n(), "129 bytes");
    let publish = |rest: &str| format!(r#"{{"id":9,"type":"publish","channel":"c",{rest}}}"#);
    refused(
        &publish(r#""x":1"#),
        BadRequest,
        n(),
        "needs \"text\" or \"data\"",
    );
    refused(
        &publish(r#""text":"a","data":"AA==""#),
        BadRequest,
        n(),
        "not both",
    );
    refused(
        &publish(r#""text":1"#),
        BadRequest,
        n(),
        "\"text\" is a string, not a number",
    );
    refused(&publish(r#""text":null"#), BadRequest, n(), "not null");
    refused(&publish(r#""data":[1]"#), BadRequest, n(), "not an array");
    refused(&publish(r#""data":"%%%""#), BadRequest, n(), "not base64");
    refused(&publish(r#""data":"AA""#), BadRequest, n(), "not base64");
    // A bad id cannot be echoed, whatever else is wrong.
    let bad_ids = [
        ("-1", "a negative number"),
        ("-0", "a negative number"),
        ("-1.5", "a negative number"),
        ("-1e3", "a negative number"),
        ("1.5", "fraction"),
        ("1e3", "exponent"),
        ("18446744073709551616", "2^64-1"),
        ("true", "a boolean"),
        ("{}", "an object"),
        ("[1]", "an array"),
    ];
    for (bad, says) in bad_ids {
        let text = format!(r#"{{"type":"subscribe","channel":"//","id":{bad}}}"#);
        refused(&text, BadRequest, None, says);
    }
    let long_id = format!(r#"{{"type":"nope","id":"{}"}}"#, "i".repeat(65));
    refused(&long_id, BadRequest, None, "65 bytes, longer than 64");
    let max_id = format!(r#"{{"type":"nope","id":"{}"}}"#, "i".repeat(64));
    refused(&max_id, UnknownType, id(&"i".repeat(64)), "nope");
}

#[test]
fn refusal_texts_stay_short_and_on_one_line() {
    let e = Command::decode(&format!(r#"{{"type":"{}\n"}}"#, "é".repeat(1000))).unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownType);
    assert!(e.text.len() < 120 && !e.text.contains('\n'), "{}", e.text);
    let e = Command::decode(r#"{"type":"a\nb"}"#).unwrap_err();
    assert_eq!(e.text, r#"unknown command type "a\nb""#);
}

#[test]
fn a_refusal_becomes_an_error_event() {
    let e = Command::decode(r#"{"type":"subscribe","id":"s1","channel":"a//b"}"#).unwrap_err();
    assert_eq!(
        Event::from(e).encode(),
        r#"{"type":"error","id":"s1","code":"bad_channel","text":"channel name has an empty segment (a leading or trailing / or //)"}"#
    );
}

fn all_events() -> Vec<Event> {
    vec![
        Event::Welcome {
            client: 7,
            name: "alice".into(),
            time: 1_700_000_000_000,
        },
        Event::Subscribed {
            id: Some(Id::Num(1)),
            channel: "news".into(),
            online: 3,
            offset: Some(12),
            epoch: Some("abcd1234".into()),
            recovered: Some(false),
            reason: Some(crate::history::Unrecovered::Epoch),
        },
        Event::Subscribed {
            id: None,
            channel: "news".into(),
            online: 1,
            offset: None,
            epoch: None,
            recovered: None,
            reason: None,
        },
        Event::Unsubscribed {
            id: id("u"),
            channel: "a/b".into(),
            online: 0,
        },
        Event::Published {
            id: Some(Id::Num(0)),
            channel: "news".into(),
        },
        Event::Message {
            channel: "news".into(),
            from: 8,
            name: "bob \"the\" <b>".into(),
            time: 5,
            offset: None,
            epoch: None,
            body: Body::Text("héllo\nworld".into()),
        },
        Event::Message {
            channel: "news".into(),
            from: 8,
            name: "bob".into(),
            time: 5,
            offset: Some(3),
            epoch: Some("abcd1234".into()),
            body: Body::Data(vec![0, 1, 2, 255]),
        },
        Event::Presence {
            channel: "news".into(),
            online: 2,
            joined: vec![Peer {
                id: 1,
                name: "a".into(),
            }],
            left: vec![],
            joined_count: None,
            left_count: None,
        },
        Event::Presence {
            channel: "news".into(),
            online: 200,
            joined: vec![],
            left: vec![],
            joined_count: Some(150),
            left_count: Some(3),
        },
        Event::Members {
            id: Some(Id::Num(5)),
            channel: "news".into(),
            online: 3,
            members: vec![
                Peer {
                    id: 1,
                    name: "a".into(),
                },
                Peer {
                    id: 9,
                    name: "b \"c\"".into(),
                },
            ],
            truncated: false,
        },
        Event::Members {
            id: None,
            channel: "big".into(),
            online: 5000,
            members: vec![],
            truncated: true,
        },
        Event::Pong { id: id("p") },
        Event::Pong { id: None },
        Event::Error {
            id: Some(Id::Num(4)),
            code: ErrorCode::Forbidden,
            text: "no".into(),
        },
        Event::Error {
            id: None,
            code: ErrorCode::BadRequest,
            text: "bad".into(),
        },
        Event::Notice {
            code: 1008,
            text: "too many bad commands".into(),
        },
    ]
}

#[test]
fn events_round_trip() {
    for e in all_events() {
        assert_eq!(
            Event::decode(&e.encode()),
            Ok(Some(e.clone())),
            "{}",
            e.encode()
        );
    }
}

#[test]
fn events_have_the_documented_shape() {
    let encoded: Vec<String> = all_events().iter().map(Event::encode).collect();
    let expected = [
        r#"{"type":"welcome","client":7,"name":"alice","time":1700000000000}"#,
        r#"{"type":"subscribed","id":1,"channel":"news","online":3,"offset":12,"epoch":"abcd1234","recovered":false,"reason":"epoch"}"#,
        r#"{"type":"subscribed","channel":"news","online":1}"#,
        r#"{"type":"unsubscribed","id":"u","channel":"a/b","online":0}"#,
        r#"{"type":"published","id":0,"channel":"news"}"#,
        r#"{"type":"message","channel":"news","from":8,"name":"bob \"the\" <b>","time":5,"text":"héllo\nworld"}"#,
        r#"{"type":"message","channel":"news","from":8,"name":"bob","time":5,"offset":3,"epoch":"abcd1234","data":"AAEC/w=="}"#,
        r#"{"type":"presence","channel":"news","online":2,"joined":[{"id":1,"name":"a"}]}"#,
        r#"{"type":"presence","channel":"news","online":200,"joined_count":150,"left_count":3}"#,
        r#"{"type":"members","id":5,"channel":"news","online":3,"members":[{"id":1,"name":"a"},{"id":9,"name":"b \"c\""}],"truncated":false}"#,
        r#"{"type":"members","channel":"big","online":5000,"members":[],"truncated":true}"#,
        r#"{"type":"pong","id":"p"}"#,
        r#"{"type":"pong"}"#,
        r#"{"type":"error","id":4,"code":"forbidden","text":"no"}"#,
        r#"{"type":"error","code":"bad_request","text":"bad"}"#,
        r#"{"type":"notice","code":1008,"text":"too many bad commands"}"#,
    ];
    assert_eq!(encoded, expected);
}

#[test]
fn error_codes_are_snake_case() {
    use ErrorCode::*;
    for code in ErrorCode::ALL {
        let json = serde_json::to_string(&code).unwrap();
        assert_eq!(json, format!("\"{}\"", code.as_str()));
        assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
    }
    let documented = "bad_json bad_request unknown_type bad_channel not_subscribed \
                      already_subscribed forbidden too_many_channels too_large rate_limited";
    let names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        names.join(" "),
        documented.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    assert_eq!(
        serde_json::to_string(&TooManyChannels).unwrap(),
        "\"too_many_channels\""
    );
    // A newer server's code still decodes.
    assert_eq!(
        Event::decode(r#"{"type":"error","code":"quota_exceeded","text":"t"}"#),
        Ok(Some(Event::Error {
            id: None,
            code: Unknown,
            text: "t".into()
        }))
    );
}

#[test]
fn unknown_events_are_skipped_and_garbage_rejected() {
    assert_eq!(Event::decode(r#"{"type":"typing","who":3}"#), Ok(None));
    assert!(Event::decode(r#"{"type":"message","channel":"a"}"#).is_err());
    assert!(Event::decode(r#"{"type":"pong","id":-1}"#).is_err());
    let long_id = format!(r#"{{"type":"pong","id":"{}"}}"#, "i".repeat(65));
    assert!(Event::decode(&long_id).is_err());
    assert!(Event::decode("not json").is_err());
    assert!(Event::decode("[]").is_err());
    assert!(matches!(
        Event::decode(r#"{"type":"published","id":3,"channel":"c","offset":12}"#),
        Ok(Some(Event::Published {
            id: Some(Id::Num(3)),
            ..
        }))
    ));
    // A `members` answer tolerates unknown fields (in it and in its
    // members) and an older server's missing `truncated`.
    assert_eq!(
        Event::decode(
            r#"{"type":"members","channel":"c","online":2,"members":[{"id":4,"name":"d","since":1}],"cursor":"x"}"#
        ),
        Ok(Some(Event::Members {
            id: None,
            channel: "c".into(),
            online: 2,
            members: vec![Peer {
                id: 4,
                name: "d".into()
            }],
            truncated: false,
        }))
    );
    assert!(Event::decode(r#"{"type":"members","channel":"c","online":2}"#).is_err());
}

#[test]
fn string_ids_are_bounded() {
    assert_eq!(Id::try_from("x".repeat(64)), Ok(Id::Str("x".repeat(64))));
    assert_eq!(
        Id::try_from("x".repeat(65)),
        Err(IdError::TooLong { len: 65 })
    );
    assert_eq!(Id::from(3), Id::Num(3));
}

#[test]
fn close_reasons_fit_and_have_the_documented_codes() {
    assert_eq!(CLOSE_NOT_JSON.code, 1007);
    assert_eq!(CLOSE_BINARY_FRAME.code, 1003);
    assert_eq!(CLOSE_BAD_COMMANDS.code, 1008);
}

proptest! {
    #[test]
    fn the_hot_encoder_writes_what_encode_writes(
        channel in "[a-z0-9_.:@-]{1,12}(/[a-z]{1,5}){0,2}",
        from: u64,
        time: u64,
        name in "(\\PC|[\"\\\\\u{0}-\u{1f}\u{7f}\u{2028}]){0,32}",
        text in "(\\PC|[\"\\\\\u{0}-\u{1f}\u{7f}\u{2028}]){0,64}",
        data: Vec<u8>,
    ) {
        let bodies = [(BodyRef::Text(&text), Body::Text(text.clone())), (BodyRef::Data(&data), Body::Data(data.clone()))];
        for (body_ref, body) in bodies {
            let mut out = Vec::new();
            encode_message_into(&mut out, &channel, from, &name, time, body_ref);
            let event = Event::Message { channel: channel.clone(), from, name: name.clone(), time, offset: None, epoch: None, body };
            prop_assert_eq!(String::from_utf8(out).unwrap(), event.encode());
            prop_assert_eq!(Event::decode(&event.encode()), Ok(Some(event)));
        }
    }

    #[test]
    fn commands_round_trip_over_inputs(
        channel in "[A-Za-z0-9_.:@-]{1,20}(/[a-z]{1,5}){0,2}",
        num: u64,
        s in "\\PC{0,20}",
        text in "(\\PC|[\"\\\\\n])*",
        data: Vec<u8>,
    ) {
        for id in [None, Some(Id::Num(num)), Some(Id::try_from(s.clone()).unwrap())] {
            let commands = [
                Command::Subscribe { channel: channel.clone(), id: id.clone(), since: None, rewind: None },
                Command::Unsubscribe { channel: channel.clone(), id: id.clone() },
                Command::Publish { channel: channel.clone(), id: id.clone(), body: Body::Text(text.clone()) },
                Command::Publish { channel: channel.clone(), id: id.clone(), body: Body::Data(data.clone()) },
                Command::Members { channel: channel.clone(), id: id.clone() },
                Command::Ping { id: id.clone() },
            ];
            for c in commands {
                prop_assert_eq!(Command::decode(&c.encode()), Ok(c));
            }
        }
    }

    #[test]
    fn command_decoder_never_panics(s in ".*") {
        let _ = Command::decode(&s);
    }

    #[test]
    fn command_decoder_never_panics_on_json_like(s in r#"\{"type":"(subscribe|unsubscribe|publish|members|ping|x)"(,"(id|channel|text|data|[a-z]{1,3})":("[a-z0-9 /%*=é]{0,8}"|-?(0|[1-9][0-9]{0,20})(\.[0-9])?|\[\]|null|true))*\}"#) {
        if let Err(e) = Command::decode(&s) {
            prop_assert_ne!(e.code, ErrorCode::BadJson);
            prop_assert!(!e.text.contains('\n'));
        }
    }

    #[test]
    fn event_decoder_never_panics(s in ".*") {
        let _ = Event::decode(&s);
    }
}

#[test]
fn positioned_messages_encode_like_their_events() {
    let mut out = Vec::new();
    let data = [0u8, 1, 2, 255];
    encode_positioned_message_json(
        &mut out,
        "news",
        8,
        "bob",
        5,
        (3, "ab12"),
        BodyRef::Data(&data),
    );
    let event = Event::Message {
        channel: "news".into(),
        from: 8,
        name: "bob".into(),
        time: 5,
        offset: Some(3),
        epoch: Some("ab12".into()),
        body: Body::Data(data.to_vec()),
    };
    assert_eq!(String::from_utf8(out).unwrap(), event.encode());
    let mut out = Vec::new();
    crate::v1::encode_positioned_message_json(
        &mut out,
        8,
        "bob",
        5,
        (3, "ab12"),
        BodyRef::Text("hi"),
    );
    let v1 = crate::v1::ServerEvent::Message {
        from: 8,
        name: "bob".into(),
        time: 5,
        offset: Some(3),
        epoch: Some("ab12".into()),
        body: crate::v1::Body::Text("hi".into()),
    };
    assert_eq!(String::from_utf8(out).unwrap(), v1.encode());
}
