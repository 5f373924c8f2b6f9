//! Fuzzes `protocol::v1::ServerEvent::decode`, the parser of the
//! `broadcast.v1` JSON events a client receives, and the encoders.
//!
//! The input is decoded as text (lossily, if it is not UTF-8). Checked:
//!
//! - decoding never panics, and its answer follows its contract, judged
//!   with serde_json's generic `Value`: an event (`Ok(Some)`) comes only from
//!   a JSON object whose `type` is that event's type; a skipped one
//!   (`Ok(None)`) only from an object whose `type` is a string this version
//!   does not know; every such object is skipped, never an error (an
//!   object naming its `type` twice may go either way);
//! - anything decoded round-trips: `decode(encode(e)) == e`, the encoding is
//!   stable (encoding again gives the same text), and for a `message` the
//!   server's allocation-free `encode_message_into` writes that same text;
//! - the other way round, an event built from the fuzz bytes (any ids,
//!   names, texts, binary bodies, presence lists) survives encode → decode.

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use protocol::v1::{encode_message_into, Body, BodyRef, Peer, ServerEvent};
use protocol_fuzz::Fields;
use serde_json::Value;

const KNOWN_TYPES: [&str; 4] = ["welcome", "message", "presence", "notice"];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_decode(&text);
    if let Ok(event) = event_from(&mut Unstructured::new(data)) {
        check_round_trip(&event);
    }
});

fn check_decode(text: &str) {
    let decoded = ServerEvent::decode(text);
    if protocol_fuzz::beyond_value(text) {
        return;
    }
    // The `type` of a JSON object, if the text is one. An object that names
    // its type twice is ambiguous: any answer but a panic will do.
    let kind = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(_)) => {
            let types = Fields::of(text).expect("an object").values("type");
            if types.len() > 1 {
                if let Ok(Some(event)) = &decoded {
                    assert!(types.contains(&Value::from(type_name(event))), "{text:?}");
                    check_round_trip(event);
                }
                return;
            }
            Some(types.into_iter().next())
        }
        _ => None,
    };
    match &decoded {
        Ok(Some(event)) => {
            let Some(Some(Value::String(kind))) = &kind else {
                panic!("{event:?} decoded from something else than an object with a string type: {text:?}");
            };
            assert_eq!(kind, type_name(event), "{text:?}");
            check_round_trip(event);
        }
        Ok(None) => match &kind {
            Some(Some(Value::String(kind))) => {
                assert!(!KNOWN_TYPES.contains(&kind.as_str()), "{text:?}")
            }
            _ => {
                panic!("skipped as an unknown event but not an object with a string type: {text:?}")
            }
        },
        Err(_) => {
            if let Some(Some(Value::String(kind))) = &kind {
                assert!(
                    KNOWN_TYPES.contains(&kind.as_str()),
                    "an object of unknown type {kind:?} must be skipped, not refused: {text:?}"
                );
            }
        }
    }
}

fn type_name(event: &ServerEvent) -> &'static str {
    match event {
        ServerEvent::Welcome { .. } => "welcome",
        ServerEvent::Message { .. } => "message",
        ServerEvent::Presence { .. } => "presence",
        ServerEvent::Notice { .. } => "notice",
    }
}

fn check_round_trip(event: &ServerEvent) {
    let json = event.encode();
    let again = ServerEvent::decode(&json);
    assert_eq!(again.as_ref(), Ok(&Some(event.clone())), "{json}");
    assert_eq!(again.unwrap().unwrap().encode(), json, "encoding is stable");
    if let ServerEvent::Message {
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
        encode_message_into(&mut out, *from, name, *time, body);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            json,
            "the server's message encoder"
        );
    }
}

/// An arbitrary event.
fn event_from(u: &mut Unstructured<'_>) -> Result<ServerEvent> {
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
    Ok(match u.int_in_range(0..=3)? {
        0 => ServerEvent::Welcome {
            id: u.arbitrary()?,
            name: u.arbitrary()?,
            online: u.arbitrary()?,
            time: u.arbitrary()?,
            recovered: None,
            reason: None,
            position: None,
        },
        1 => ServerEvent::Message {
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
        2 => ServerEvent::Presence {
            online: u.arbitrary()?,
            joined: peers(u)?,
            left: peers(u)?,
            joined_count: u.arbitrary()?,
            left_count: u.arbitrary()?,
        },
        _ => ServerEvent::Notice {
            code: u.arbitrary()?,
            text: u.arbitrary()?,
        },
    })
}
