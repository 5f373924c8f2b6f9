//! The JSON both `broadcast.v1` and `broadcast.v2` write and read the same
//! way: the hot-path `message` writer and the event decoder that skips
//! unknown types.

use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::v1::BodyRef;

/// Writes a `message` event: `type`, then `channel` when given (v2 only),
/// `from`, `name`, `time`, `offset` and `epoch` when given, and `text` or `data`, the order in which the
/// serde derives of both versions' `Message` variants write them.
pub(crate) fn write_message(
    out: impl std::io::Write,
    channel: Option<&str>,
    from: u64,
    name: &str,
    time: u64,
    position: Option<(u64, &str)>,
    body: BodyRef<'_>,
) {
    #[derive(Serialize)]
    struct Msg<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        from: u64,
        name: &'a str,
        time: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<String>,
    }
    let (text, data) = match body {
        BodyRef::Text(t) => (Some(t), None),
        BodyRef::Data(d) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(d)),
        ),
    };
    let msg = Msg {
        kind: "message",
        channel,
        from,
        name,
        time,
        offset: position.map(|p| p.0),
        epoch: position.map(|p| p.1),
        text,
        data,
    };
    serde_json::to_writer(out, &msg).expect("writing to memory cannot fail");
}

/// Parses one event, or `Ok(None)` for a well-formed object whose `type` is
/// not in `known` (a newer server's event, to be skipped). The error is
/// serde's, for the version's own `DecodeError`.
pub(crate) fn decode_event<T: DeserializeOwned>(
    text: &str,
    known: &[&str],
) -> Result<Option<T>, String> {
    // serde's derived structs and tagged enums also accept a JSON array of
    // the values in field order (`["notice",1000,"bye"]`): that is not the
    // wire format, so only an object is an event (or a skipped one).
    // Leading whitespace is what serde_json skips too.
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Err("not a JSON object".into());
    }
    match serde_json::from_str::<T>(text) {
        Ok(event) => Ok(Some(event)),
        Err(e) => {
            #[derive(Deserialize)]
            struct Tagged {
                #[serde(rename = "type")]
                kind: String,
            }
            match serde_json::from_str::<Tagged>(text) {
                Ok(t) if !known.contains(&t.kind.as_str()) => Ok(None),
                _ => Err(e.to_string()),
            }
        }
    }
}
