//! `--v1`: reading the `broadcast.v1` subprotocol (see `protocol::v1`).
//!
//! A v1 server sends every subscriber text frames with one JSON event each.
//! The load-test payload arrives base64-encoded in the `data` field of a
//! `message` event; everything else (welcome, presence, notice) is counted
//! and skipped.
//!
//! The hot path does not build a [`ServerEvent`]: the server writes
//! `message` events with `type` first and `data` last (serde field order),
//! so [`extract`] finds `"data":"` and decodes the base64 up to the next
//! quote into a reusable buffer (base64 contains no characters JSON
//! escapes, and an unescaped `"data":"` cannot occur inside a JSON string).
//! Anything else goes through [`ServerEvent::decode`]. In release builds
//! this is about 4x faster than the full decode for a 64-byte payload (see
//! the ignored test `extraction_speed`).

use std::collections::BTreeMap;

use base64::Engine as _;
use protocol::v1::{Body, ServerEvent};

/// What one v1 text frame was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum V1Event {
    /// A binary message from another client, decoded into the scratch buffer.
    Data,
    /// A text message from another client (not one of ours).
    Text,
    Welcome,
    Presence,
    /// A notice before a close, with the close code it announces.
    Notice(u16),
    /// A well-formed event of a type this version does not know (skipped).
    Unknown,
}

/// A frame that is not a v1 event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadEvent(pub(crate) String);

const MESSAGE_PREFIX: &[u8] = br#"{"type":"message","#;
const DATA_KEY: &[u8] = br#""data":""#;

/// Classifies the v1 event in `json`; for [`V1Event::Data`] the message
/// bytes are in `scratch` (replacing what it held).
pub(crate) fn extract(json: &[u8], scratch: &mut Vec<u8>) -> Result<V1Event, BadEvent> {
    if let Some(b64) = fast_data(json) {
        scratch.clear();
        return match base64::engine::general_purpose::STANDARD.decode_vec(b64, scratch) {
            Ok(()) => Ok(V1Event::Data),
            Err(e) => Err(BadEvent(format!("bad base64 in `data`: {e}"))),
        };
    }
    let text = std::str::from_utf8(json).map_err(|e| BadEvent(e.to_string()))?;
    match ServerEvent::decode(text) {
        Ok(None) => Ok(V1Event::Unknown),
        Ok(Some(ServerEvent::Message { body, .. })) => match body {
            Body::Data(d) => {
                scratch.clear();
                scratch.extend_from_slice(&d);
                Ok(V1Event::Data)
            }
            Body::Text(_) => Ok(V1Event::Text),
        },
        Ok(Some(ServerEvent::Welcome { .. })) => Ok(V1Event::Welcome),
        Ok(Some(ServerEvent::Presence { .. })) => Ok(V1Event::Presence),
        Ok(Some(ServerEvent::Notice { code, .. })) => Ok(V1Event::Notice(code)),
        Err(e) => Err(BadEvent(e.to_string())),
    }
}

/// The position (`offset`, `epoch`) of a `message` event, when it has one.
/// Like [`extract`]'s fast path, it finds the keys by their quoted names: an
/// unescaped `"offset":` cannot occur inside a JSON string.
pub(crate) fn position(json: &[u8]) -> Option<(u64, &str)> {
    const OFFSET: &[u8] = br#""offset":"#;
    const EPOCH: &[u8] = br#""epoch":""#;
    let rest = json.strip_prefix(MESSAGE_PREFIX)?;
    let at = rest.windows(OFFSET.len()).position(|w| w == OFFSET)? + OFFSET.len();
    let rest = &rest[at..];
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let offset = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(b",")?.strip_prefix(EPOCH)?;
    let end = rest.iter().position(|&b| b == b'"')?;
    Some((offset, std::str::from_utf8(&rest[..end]).ok()?))
}

/// The base64 text of a `message` event's `data` field, when the event has
/// the shape the server writes: `{"type":"message",...,"data":"..."}`.
fn fast_data(json: &[u8]) -> Option<&[u8]> {
    if !json.starts_with(MESSAGE_PREFIX) {
        return None;
    }
    let rest = &json[MESSAGE_PREFIX.len()..];
    let at = rest.windows(DATA_KEY.len()).position(|w| w == DATA_KEY)? + DATA_KEY.len();
    let value = &rest[at..];
    let end = value.iter().position(|&b| b == b'"')?;
    // Only the closing brace (and whitespace) may follow; anything else is
    // left to the full decoder.
    let tail = &value[end + 1..];
    let closed = tail
        .iter()
        .filter(|b| !b.is_ascii_whitespace())
        .eq(b"}".iter());
    closed.then_some(&value[..end])
}

/// Whether `json` looks like a `message` event (cheap, for counting).
pub(crate) fn is_message(json: &[u8]) -> bool {
    json.starts_with(MESSAGE_PREFIX)
}

/// Non-message events one connection received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct V1Counts {
    pub(crate) welcomes: u64,
    pub(crate) presence: u64,
    /// Notices by the close code they announce.
    pub(crate) notices: BTreeMap<u16, u64>,
}

impl V1Counts {
    /// Counts a non-data event; returns false for anything else.
    pub(crate) fn count(&mut self, e: V1Event) -> bool {
        match e {
            V1Event::Welcome => self.welcomes += 1,
            V1Event::Presence => self.presence += 1,
            V1Event::Notice(code) => *self.notices.entry(code).or_default() += 1,
            V1Event::Unknown => {}
            V1Event::Data | V1Event::Text => return false,
        }
        true
    }

    pub(crate) fn add(&mut self, other: &V1Counts) {
        self.welcomes += other.welcomes;
        self.presence += other.presence;
        for (c, n) in &other.notices {
            *self.notices.entry(*c).or_default() += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{self, Header};
    use protocol::v1::{encode_message_into, BodyRef, Peer};

    fn payload_bytes(size: usize, seq: u64) -> Vec<u8> {
        let mut b = vec![0u8; size];
        payload::encode_into(
            &mut b,
            Header {
                publisher: 1,
                seq,
                sent_ns: 123_456_789,
                delay_us: 7,
            },
        );
        b
    }

    fn server_message(from: u64, name: &str, data: &[u8]) -> Vec<u8> {
        let mut json = Vec::new();
        encode_message_into(
            &mut json,
            from,
            name,
            1_700_000_000_000,
            BodyRef::Data(data),
        );
        json
    }

    #[test]
    fn message_events_give_back_the_payload() {
        let mut scratch = Vec::new();
        for size in [24, 25, 26, 64, 1000, 70_000] {
            let p = payload_bytes(size, size as u64);
            let json = server_message(42, "guest-42", &p);
            assert!(fast_data(&json).is_some(), "fast path for size {size}");
            assert_eq!(extract(&json, &mut scratch), Ok(V1Event::Data));
            assert_eq!(scratch, p);
            let h = payload::decode(&scratch).unwrap();
            assert_eq!((h.publisher, h.seq, h.delay_us), (1, size as u64, 7));
            assert!(is_message(&json));
        }
    }

    #[test]
    fn names_that_look_like_fields_do_not_fool_the_fast_path() {
        let mut scratch = Vec::new();
        let p = payload_bytes(64, 3);
        for name in [r#"x","data":"AAAA"#, r#""data":""#, "a\"}", "é🦀\\"] {
            let json = server_message(1, name, &p);
            assert_eq!(extract(&json, &mut scratch), Ok(V1Event::Data), "{name}");
            assert_eq!(scratch, p, "{name}");
        }
    }

    #[test]
    fn other_shapes_use_the_full_decoder() {
        let mut scratch = Vec::new();
        // Fields in another order, extra fields, whitespace.
        let json = br#"{ "type" : "message", "data": "AAEC/w==", "from": 1, "name": "n", "time": 5, "x": [1] }"#;
        assert!(fast_data(json).is_none());
        assert_eq!(extract(json, &mut scratch), Ok(V1Event::Data));
        assert_eq!(scratch, [0, 1, 2, 255]);
        let json = br#"{"type":"message","from":1,"name":"n","time":5,"data":"AQ==","extra":"y"}"#;
        assert_eq!(extract(json, &mut scratch), Ok(V1Event::Data));
        assert_eq!(scratch, [1]);
    }

    #[test]
    fn other_events_are_classified() {
        let mut scratch = vec![9];
        let cases: [(ServerEvent, V1Event); 5] = [
            (
                ServerEvent::Welcome {
                    id: 1,
                    name: "guest-1".into(),
                    online: 3,
                    time: 1,
                    position: None,
                    reason: None,
                    recovered: None,
                },
                V1Event::Welcome,
            ),
            (
                ServerEvent::Presence {
                    online: 2,
                    joined: vec![Peer {
                        id: 2,
                        name: "b".into(),
                    }],
                    left: vec![],
                    joined_count: None,
                    left_count: None,
                },
                V1Event::Presence,
            ),
            (
                ServerEvent::Presence {
                    online: 500,
                    joined: vec![],
                    left: vec![],
                    joined_count: Some(480),
                    left_count: Some(1),
                },
                V1Event::Presence,
            ),
            (
                ServerEvent::Notice {
                    code: 1013,
                    text: "too slow".into(),
                },
                V1Event::Notice(1013),
            ),
            (
                ServerEvent::Message {
                    from: 1,
                    name: "a".into(),
                    time: 1,
                    body: Body::Text(r#"has "data":"AAAA" in it"#.into()),
                    epoch: None,
                    offset: None,
                },
                V1Event::Text,
            ),
        ];
        for (event, want) in cases {
            let json = event.encode();
            assert_eq!(extract(json.as_bytes(), &mut scratch), Ok(want), "{json}");
        }
        assert_eq!(
            extract(br#"{"type":"typing","who":3}"#, &mut scratch),
            Ok(V1Event::Unknown)
        );
        // Nothing of that touched the scratch buffer.
        assert_eq!(scratch, [9]);
    }

    #[test]
    fn positions_are_read_from_message_events() {
        let mut e = ServerEvent::Message {
            from: 3,
            name: "\"offset\":9,".into(),
            time: 5,
            offset: Some(42),
            epoch: Some("Ab3".into()),
            body: Body::Data(b"x".to_vec()),
        };
        assert_eq!(position(e.encode().as_bytes()), Some((42, "Ab3")));
        if let ServerEvent::Message { offset, epoch, .. } = &mut e {
            (*offset, *epoch) = (None, None);
        }
        assert_eq!(position(e.encode().as_bytes()), None);
        assert_eq!(
            position(br#"{"type":"welcome","offset":1,"epoch":"a"}"#),
            None
        );
    }

    #[test]
    fn garbage_is_an_error() {
        let mut scratch = Vec::new();
        for bad in [
            &br#"{"type":"message","from":1,"name":"n","time":5,"data":"!!"}"#[..],
            br#"{"type":"message","from":1,"name":"n","time":5,"data":"AQ"#,
            br#"{"type":"message"}"#,
            b"not json",
            b"[]",
            b"\xff\xfe",
        ] {
            assert!(
                extract(bad, &mut scratch).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn counts_add_up() {
        let mut a = V1Counts::default();
        for e in [
            V1Event::Welcome,
            V1Event::Presence,
            V1Event::Presence,
            V1Event::Notice(1001),
            V1Event::Unknown,
        ] {
            assert!(a.count(e));
        }
        assert!(!a.count(V1Event::Data));
        assert!(!a.count(V1Event::Text));
        let mut total = V1Counts::default();
        total.add(&a);
        total.add(&a);
        assert_eq!(total.welcomes, 2);
        assert_eq!(total.presence, 4);
        assert_eq!(total.notices, BTreeMap::from([(1001, 2)]));
    }

    /// `cargo test --release -p load-test -- --ignored extraction_speed --nocapture`
    #[test]
    #[ignore = "timing, run by hand in release"]
    fn extraction_speed() {
        let p = payload_bytes(64, 1);
        let json = server_message(12345, "guest-12345", &p);
        let text = std::str::from_utf8(&json).unwrap();
        let n = 1_000_000u32;
        let mut scratch = Vec::new();
        let t = std::time::Instant::now();
        for _ in 0..n {
            let e = extract(std::hint::black_box(&json), &mut scratch);
            std::hint::black_box((&e, &scratch));
        }
        let fast = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            let e = ServerEvent::decode(std::hint::black_box(text));
            std::hint::black_box(&e);
        }
        let full = t.elapsed() / n;
        println!("64 B payload: extract {fast:?}/event, ServerEvent::decode {full:?}/event");
    }
}
