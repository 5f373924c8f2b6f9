//! Fuzzes `protocol::v2::Event::decode`, the parser of the `broadcast.v2`
//! JSON events a client receives from a server, and the encoders.
//!
//! The input is decoded as text (lossily, if it is not UTF-8). Checked:
//!
//! - decoding never panics, and its answer follows its contract, judged
//!   with serde_json's generic `Value`: an event (`Ok(Some)`) comes only from
//!   a JSON object whose `type` is that event's type; a skipped one
//!   (`Ok(None)`) only from an object whose `type` is a string this version
//!   does not know; every such object is skipped, never an error (an
//!   object naming its `type` twice may go either way). A decoded string
//!   id is at most 64 bytes;
//! - anything decoded round-trips: `decode(encode(e)) == e`, the encoding is
//!   stable, and for a `message` the server's allocation-free
//!   `encode_message_into` writes that same text;
//! - the other way round, an event built from the fuzz bytes (every type,
//!   any ids, channels, names, texts, binary bodies, presence lists, error
//!   codes) survives encode → decode.

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use protocol::v2::{encode_message_into, Body, BodyRef, ErrorCode, Event, Id, Peer, MAX_ID_LEN};
use protocol_fuzz::Fields;
use serde_json::Value;

const KNOWN_TYPES: [&str; 10] = [
    "welcome",
    "subscribed",
    "unsubscribed",
    "published",
    "message",
    "presence",
    "members",
    "pong",
    "error",
    "notice",
];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_decode(&text);
    if let Ok(event) = event_from(&mut Unstructured::new(data)) {
        check_round_trip(&event);
    }
});

fn check_decode(text: &str) {
    let decoded = Event::decode(text);
    if let Ok(Some(event)) = &decoded {
        check_round_trip(event);
    }
    // The `type` of a JSON object, if the text is one.
    let Some(fields) = Fields::of(text) else {
        assert!(
            decoded.is_err(),
            "{decoded:?} from something else than an object: {text:?}"
        );
        return;
    };
    let types = fields.values("type");
    if types.len() > 1 {
        // Ambiguous: any answer but a panic, and an event of one of them.
        if let Ok(Some(event)) = &decoded {
            assert!(types.contains(&Value::from(type_name(event))), "{text:?}");
        }
        return;
    }
    let kind = match types.first() {
        Some(Value::String(kind)) => Some(kind.as_str()),
        _ => None,
    };
    match &decoded {
        Ok(Some(event)) => assert_eq!(kind, Some(type_name(event)), "{text:?}"),
        Ok(None) => assert!(
            kind.is_some_and(|k| !KNOWN_TYPES.contains(&k)),
            "skipped as an unknown event but not an object with an unknown string type: {text:?}"
        ),
        Err(_) => assert!(
            kind.is_none_or(|k| KNOWN_TYPES.contains(&k)),
            "an object of unknown type {kind:?} must be skipped, not refused: {text:?}"
        ),
    }
}

fn type_name(event: &Event) -> &'static str {
    match event {
        Event::Welcome { .. } => "welcome",
        Event::Subscribed { .. } => "subscribed",
        Event::Unsubscribed { .. } => "unsubscribed",
        Event::Published { .. } => "published",
        Event::Message { .. } => "message",
        Event::Presence { .. } => "presence",
        Event::Members { .. } => "members",
        Event::Pong { .. } => "pong",
        Event::Error { .. } => "error",
        Event::Notice { .. } => "notice",
    }
}

fn id_of(event: &Event) -> Option<&Id> {
    match event {
        Event::Subscribed { id, .. }
        | Event::Unsubscribed { id, .. }
        | Event::Published { id, .. }
        | Event::Members { id, .. }
        | Event::Pong { id }
        | Event::Error { id, .. } => id.as_ref(),
        _ => None,
    }
}

fn check_round_trip(event: &Event) {
    if let Some(Id::Str(s)) = id_of(event) {
        assert!(s.len() <= MAX_ID_LEN, "an id of {} bytes", s.len());
    }
    let json = event.encode();
    let again = Event::decode(&json);
    assert_eq!(again.as_ref(), Ok(&Some(event.clone())), "{json}");
    assert_eq!(again.unwrap().unwrap().encode(), json, "encoding is stable");
    if let Event::Message {
        channel,
        from,
        name,
        time,
        offset: None,
        body,
        ..
    } = event
    {
        let body = match body {
            Body::Text(t) => BodyRef::Text(t),
            Body::Data(d) => BodyRef::Data(d),
        };
        let mut out = Vec::new();
        encode_message_into(&mut out, channel, *from, name, *time, body);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            json,
            "the server's message encoder"
        );
    }
}

/// An arbitrary valid id, or none.
fn id_from(u: &mut Unstructured<'_>) -> Result<Option<Id>> {
    Ok(match u.int_in_range(0..=2)? {
        0 => None,
        1 => Some(Id::Num(u.arbitrary()?)),
        _ => {
            let s: String = u.arbitrary()?;
            let mut cut = s.len().min(MAX_ID_LEN);
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            Some(Id::Str(s[..cut].to_owned()))
        }
    })
}

/// An arbitrary event (channels are any strings: clients do not check them).
fn event_from(u: &mut Unstructured<'_>) -> Result<Event> {
    let peers = |u: &mut Unstructured<'_>| -> Result<Vec<Peer>> {
        let n = u.int_in_range(0..=4)?;
        (0..n)
            .map(|_| {
                Ok(Peer {
                    id: u.arbitrary()?,
                    name: u.arbitrary()?,
                })
            })
            .collect()
    };
    Ok(match u.int_in_range(0..=9)? {
        0 => Event::Welcome {
            client: u.arbitrary()?,
            name: u.arbitrary()?,
            time: u.arbitrary()?,
        },
        1 => Event::Subscribed {
            id: id_from(u)?,
            channel: u.arbitrary()?,
            online: u.arbitrary()?,
            offset: None,
            epoch: None,
            recovered: None,
            reason: None,
        },
        2 => Event::Unsubscribed {
            id: id_from(u)?,
            channel: u.arbitrary()?,
            online: u.arbitrary()?,
        },
        3 => Event::Published {
            id: id_from(u)?,
            channel: u.arbitrary()?,
        },
        4 => Event::Message {
            channel: u.arbitrary()?,
            from: u.arbitrary()?,
            name: u.arbitrary()?,
            time: u.arbitrary()?,
            offset: None,
            epoch: None,
            body: if u.arbitrary()? {
                Body::Text(u.arbitrary()?)
            } else {
                Body::Data(u.arbitrary()?)
            },
        },
        5 => Event::Presence {
            channel: u.arbitrary()?,
            online: u.arbitrary()?,
            joined: peers(u)?,
            left: peers(u)?,
            joined_count: u.arbitrary()?,
            left_count: u.arbitrary()?,
        },
        6 => Event::Pong { id: id_from(u)? },
        8 => Event::Members {
            id: id_from(u)?,
            channel: u.arbitrary()?,
            online: u.arbitrary()?,
            members: peers(u)?,
            truncated: u.arbitrary()?,
        },
        7 => {
            let mut codes = ErrorCode::ALL.to_vec();
            codes.push(ErrorCode::Unknown);
            Event::Error {
                id: id_from(u)?,
                code: *u.choose(&codes)?,
                text: u.arbitrary()?,
            }
        }
        _ => Event::Notice {
            code: u.arbitrary()?,
            text: u.arbitrary()?,
        },
    })
}
