//! Fuzzes `protocol::v2::Command::decode`, the server's parser of the
//! commands `broadcast.v2` clients send, against an independent reading of
//! the module docs' contract.
//!
//! The input is decoded as text (lossily, if it is not UTF-8). Checked:
//!
//! - decoding never panics, and its answer is the one the docs give, worked
//!   out here from the object's fields (serde_json only as the JSON
//!   grammar): `bad_json` exactly when the text is not JSON, `bad_request`
//!   for a non-object, a bad `id` (an unsigned integer written without
//!   fraction or exponent, at most 2^64-1, or a string of at most 64 bytes),
//!   a missing or mistyped `type`/`channel`/`text`/`data`, both bodies or
//!   neither, or base64 that is not strict; `unknown_type`; `bad_channel` for
//!   a string that is no channel name; checked in that order (id, type,
//!   channel, body). An object that names one of those fields twice is
//!   ambiguous: any answer but a panic will do, as long as an echoed id is
//!   one of its valid ids;
//! - a refusal's `id` is the object's `id` when that is a valid id (none for
//!   a bad one, whose refusal says what it is, or for a frame that is no
//!   object), and its text is one line;
//! - an accepted command round-trips: `decode(encode(c)) == c`, and encoding
//!   is stable;
//! - the other way round, a command object written from the fuzz bytes (any
//!   command, id, channel, body; extra fields of any JSON value; fields in
//!   any order; strings with any escapes; whitespace between tokens) is
//!   accepted as exactly that command when it is valid. Some are written
//!   with a flaw (a bad id, an unknown type, any string as the channel, bad
//!   base64) and judged as above, so every refusal is reached with ids to
//!   echo.

#![no_main]

use base64::Engine as _;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use protocol::channel::MAX_LEN;
use protocol::v2::{Body, Command, ErrorCode, Id, MAX_ID_LEN};
use protocol_fuzz::{base64_decode, is_name, is_one_line, Fields};
use serde_json::value::RawValue;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_decode(&text);
    if let Ok((json, command)) = written_command(&mut Unstructured::new(data)) {
        check_decode(&json);
        if let Some(command) = command {
            assert_eq!(
                Command::decode(&json),
                Ok(command),
                "a valid command: {json}"
            );
        }
    }
});

/// The fields a command is made of; the rest are ignored.
const COMMAND_FIELDS: [&str; 5] = ["id", "type", "channel", "text", "data"];

fn check_decode(text: &str) {
    let decoded = Command::decode(text);
    match &decoded {
        Ok(command) => check_round_trip(command),
        Err(e) => {
            assert!(is_one_line(&e.text), "{:?} for {text:?}", e.text);
            assert!(is_one_line(&e.to_string()));
        }
    }
    if protocol_fuzz::beyond_value(text) {
        return;
    }
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        let e = decoded.expect_err("not JSON");
        assert_eq!((e.code, e.id), (ErrorCode::BadJson, None), "{text:?}");
        return;
    };
    let Some(fields) = Fields::of(text) else {
        let e = decoded.expect_err("not an object");
        assert_eq!(
            (e.code, e.id),
            (ErrorCode::BadRequest, None),
            "{value:?} is not an object: {text:?}"
        );
        return;
    };
    if COMMAND_FIELDS
        .iter()
        .any(|key| fields.all(key).nth(1).is_some())
    {
        // Ambiguous: an echoed id must at least be one of the valid ones.
        if let Err(e) = &decoded {
            assert_ne!(e.code, ErrorCode::BadJson);
            if let Some(id) = &e.id {
                assert!(
                    fields
                        .all("id")
                        .any(|raw| id_of(raw) == Ok(Some(id.clone()))),
                    "{id:?} is none of the ids of {text:?}"
                );
            }
        }
        return;
    }
    match (expected(&fields), decoded) {
        (Ok(want), Ok(got)) => assert_eq!(got, want, "{text:?}"),
        (Err(want), Err(got)) => {
            assert_eq!(
                (got.code, &got.id),
                (want.0, &want.1),
                "{text:?}: {}",
                got.text
            );
            if let Some(says) = fields.all("id").next().and_then(bad_id_says) {
                assert!(got.text.contains(says), "{:?} lacks {says:?}", got.text);
            }
        }
        (want, got) => panic!("expected {want:?}, got {got:?} for {text:?}"),
    }
}

/// What the refusal of a bad id says it is, from the value's text (`None`
/// for a valid id).
fn bad_id_says(raw: &RawValue) -> Option<&'static str> {
    if id_of(raw).is_ok() {
        return None;
    }
    Some(match raw.get().as_bytes()[0] {
        b'-' => "is a negative number",
        b'0'..=b'9' => "is a number with a fraction, an exponent or over 2^64-1",
        b'"' => "bytes, longer than 64",
        b't' | b'f' => "is a boolean",
        b'[' => "is an array",
        _ => "is an object",
    })
}

/// The id a raw JSON value is, read from its text: `Ok(None)` for `null`,
/// `Err` for anything that is not an id.
fn id_of(raw: &RawValue) -> std::result::Result<Option<Id>, ()> {
    let t = raw.get();
    if t == "null" {
        return Ok(None);
    }
    if t.starts_with('"') {
        let s: String = serde_json::from_str(t).expect("a JSON string");
        return if s.len() <= MAX_ID_LEN {
            Ok(Some(Id::Str(s)))
        } else {
            Err(())
        };
    }
    // JSON's grammar already excludes leading zeros; digits alone are an
    // integer with no sign, fraction or exponent.
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<u64>().map(|n| Some(Id::Num(n))).map_err(|_| ());
    }
    Err(())
}

/// What `decode` must answer for an object without duplicate command fields.
fn expected(fields: &Fields) -> std::result::Result<Command, (ErrorCode, Option<Id>)> {
    let one = |key: &str| fields.values(key).into_iter().next();
    let id = match fields.all("id").next().map(id_of) {
        None => None,
        Some(Ok(id)) => id,
        Some(Err(())) => return Err((ErrorCode::BadRequest, None)),
    };
    let refuse = |code| Err((code, id.clone()));
    let Some(Value::String(kind)) = one("type") else {
        return refuse(ErrorCode::BadRequest);
    };
    if kind == "ping" {
        return Ok(Command::Ping { id });
    }
    if !["subscribe", "unsubscribe", "publish", "members"].contains(&kind.as_str()) {
        return refuse(ErrorCode::UnknownType);
    }
    let channel = match one("channel") {
        Some(Value::String(c)) if is_name(&c) => c,
        Some(Value::String(_)) => return refuse(ErrorCode::BadChannel),
        _ => return refuse(ErrorCode::BadRequest),
    };
    Ok(match kind.as_str() {
        "subscribe" => {
            let since = match one("since") {
                None | Some(Value::Null) => None,
                Some(v) => match serde_json::from_value::<protocol::history::Position>(v) {
                    Ok(p) if (1..=64).contains(&p.epoch.len()) => Some(p),
                    _ => return refuse(ErrorCode::BadRequest),
                },
            };
            let rewind = match one("rewind") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n))
                    if n.as_u64().is_some_and(|n| n <= protocol::history::MAX_REWIND) =>
                {
                    n.as_u64()
                }
                Some(_) => return refuse(ErrorCode::BadRequest),
            };
            if since.is_some() && rewind.is_some() {
                return refuse(ErrorCode::BadRequest);
            }
            Command::Subscribe {
                channel,
                id,
                since,
                rewind,
            }
        }
        "unsubscribe" => Command::Unsubscribe { channel, id },
        "members" => Command::Members { channel, id },
        _ => {
            let body = match (one("text"), one("data")) {
                (Some(Value::String(t)), None) => Body::Text(t),
                (None, Some(Value::String(d))) => match base64_decode(&d) {
                    Some(bytes) => Body::Data(bytes),
                    None => return refuse(ErrorCode::BadRequest),
                },
                _ => return refuse(ErrorCode::BadRequest),
            };
            Command::Publish { channel, id, body }
        }
    })
}

fn check_round_trip(command: &Command) {
    let json = command.encode();
    let again = Command::decode(&json);
    assert_eq!(again.as_ref(), Ok(command), "{json}");
    assert_eq!(again.unwrap().encode(), json, "encoding is stable");
    if let Some(channel) = command.channel() {
        assert!(is_name(channel), "{channel:?} accepted");
    }
    if let Some(Id::Str(s)) = command.id() {
        assert!(s.len() <= MAX_ID_LEN);
    }
}

/// A command object written from the fuzz bytes, and the command it is
/// (`None` when it was written with a flaw).
fn written_command(u: &mut Unstructured<'_>) -> Result<(String, Option<Command>)> {
    // One time in eight a part is written with a flaw.
    let mut flawed = false;
    let mut flaw = |u: &mut Unstructured<'_>| -> Result<bool> {
        let f = u.ratio(1, 8)?;
        flawed |= f;
        Ok(f)
    };
    let mut fields: Vec<(String, String)> = Vec::new();
    if flaw(u)? {
        let bad = match u.int_in_range(0..=4)? {
            0 => format!("-{}", u.int_in_range(1..=u64::MAX)?),
            1 => format!("{}.0", u.arbitrary::<u32>()?),
            2 => format!("{}e{}", u.arbitrary::<u32>()?, u.int_in_range(0..=9)?),
            3 => {
                let long = "i".repeat(u.int_in_range(MAX_ID_LEN + 1..=200)?);
                json_string(u, &long)?
            }
            _ => json_value(u, 0)?,
        };
        fields.push(("id".into(), bad));
    }
    let id = match u.int_in_range(0..=3)? {
        0 => None,
        1 => Some(None),
        2 => Some(Some(Id::Num(u.arbitrary()?))),
        _ => {
            let s: String = u.arbitrary()?;
            let mut cut = 0;
            for (i, c) in s.char_indices() {
                if i + c.len_utf8() > MAX_ID_LEN {
                    break;
                }
                cut = i + c.len_utf8();
            }
            Some(Some(Id::Str(s[..cut].to_owned())))
        }
    };
    if let (Some(id), true) = (&id, fields.is_empty()) {
        let value = match id {
            None => "null".to_owned(),
            Some(Id::Num(n)) => n.to_string(),
            Some(Id::Str(s)) => json_string(u, s)?,
        };
        fields.push(("id".into(), value));
    }
    let id = id.flatten();
    let kind = u.int_in_range(0..=4)?;
    let (name, command) = match kind {
        0..=3 => {
            let mut channel = channel_name(u)?;
            if flaw(u)? {
                channel = near_miss(u, channel)?;
            }
            fields.push(("channel".into(), json_string(u, &channel)?));
            match kind {
                0 => (
                    "subscribe",
                    Command::Subscribe {
                        channel,
                        id,
                        since: None,
                        rewind: None,
                    },
                ),
                1 => ("unsubscribe", Command::Unsubscribe { channel, id }),
                2 => ("members", Command::Members { channel, id }),
                _ => {
                    let body = if u.arbitrary()? {
                        let t: String = u.arbitrary()?;
                        fields.push(("text".into(), json_string(u, &t)?));
                        Body::Text(t)
                    } else {
                        let d: Vec<u8> = u.arbitrary()?;
                        let mut b64 = base64::engine::general_purpose::STANDARD.encode(&d);
                        if flaw(u)? {
                            b64 = u.arbitrary()?;
                        }
                        fields.push(("data".into(), json_string(u, &b64)?));
                        Body::Data(d)
                    };
                    ("publish", Command::Publish { channel, id, body })
                }
            }
        }
        _ => ("ping", Command::Ping { id }),
    };
    let name = if flaw(u)? { u.arbitrary()? } else { name };
    fields.push(("type".into(), json_string(u, name)?));
    // Unknown fields (for ping even `channel`, `text`, `data`): ignored.
    for _ in 0..u.int_in_range(0..=3)? {
        let key: String = u.arbitrary()?;
        let used = ["id", "type"].contains(&key.as_str())
            || (name == "publish" && ["text", "data"].contains(&key.as_str()))
            || fields.iter().any(|(k, _)| *k == key);
        if used {
            continue;
        }
        let value = json_value(u, 0)?;
        fields.push((key, value));
    }
    for i in (1..fields.len()).rev() {
        let j = u.int_in_range(0..=i)?;
        fields.swap(i, j);
    }
    let mut out = whitespace(u)?;
    out.push('{');
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out += &whitespace(u)?;
        out += &json_string(u, key)?;
        out += &whitespace(u)?;
        out.push(':');
        out += &whitespace(u)?;
        out += value;
        out += &whitespace(u)?;
    }
    out.push('}');
    out += &whitespace(u)?;
    Ok((out, (!flawed).then_some(command)))
}

/// A valid channel name of up to four segments of name bytes.
fn channel_name(u: &mut Unstructured<'_>) -> Result<String> {
    const BYTES: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:@";
    let mut name = String::new();
    for i in 0..u.int_in_range(1..=4)? {
        let mut segment = String::new();
        for _ in 0..u.int_in_range(1..=48)? {
            segment.push(char::from(*u.choose(BYTES)?));
        }
        if name.len() + usize::from(i > 0) + segment.len() > MAX_LEN {
            break;
        }
        if i > 0 {
            name.push('/');
        }
        name += &segment;
    }
    Ok(name)
}

/// A valid channel name changed into a near miss (which may still be valid).
fn near_miss(u: &mut Unstructured<'_>, mut name: String) -> Result<String> {
    // Every byte of a valid name is ASCII: any index is a char boundary.
    let at = u.int_in_range(0..=name.len())?;
    match u.int_in_range(0..=5)? {
        0 => return u.arbitrary(),
        1 => name.push('/'),
        2 => name.insert(0, '/'),
        3 => name.insert(at, '/'),
        4 => name.insert(at, u.arbitrary()?),
        _ => name += &"x".repeat(MAX_LEN + 1 - name.len()),
    }
    Ok(name)
}

/// JSON insignificant whitespace, maybe none.
fn whitespace(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(u.choose(&["", "", " ", "\n", "\t", "\r\n  "])?.to_string())
}

/// `s` as a JSON string, each character written as itself, a short escape
/// or `\uXXXX` (a surrogate pair beyond the BMP), as the fuzz bytes choose.
fn json_string(u: &mut Unstructured<'_>, s: &str) -> Result<String> {
    let mut out = String::from('"');
    for c in s.chars() {
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '/' => Some("\\/"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            _ => None,
        };
        let must_escape = c == '"' || c == '\\' || c < ' ';
        match u.int_in_range(0..=3)? {
            0 | 1 if !must_escape => out.push(c),
            2 if short.is_some() => out += short.unwrap(),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out += &format!("\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
    Ok(out)
}

/// Some JSON value (numbers within f64's range: serde_json refuses others).
fn json_value(u: &mut Unstructured<'_>, depth: u32) -> Result<String> {
    let pick = u.int_in_range(0..=if depth < 3 { 7 } else { 5 })?;
    Ok(match pick {
        0 => "null".into(),
        1 => u.choose(&["true", "false"])?.to_string(),
        2 => u.arbitrary::<i64>()?.to_string(),
        3 => format!(
            "{}.{}e{}",
            u.arbitrary::<i32>()?,
            u.arbitrary::<u16>()?,
            u.int_in_range(-300..=290)?
        ),
        4 | 5 => {
            let s: String = u.arbitrary()?;
            json_string(u, &s)?
        }
        6 => {
            let items = (0..u.int_in_range(0..=3)?)
                .map(|_| json_value(u, depth + 1))
                .collect::<Result<Vec<_>>>()?;
            format!("[{}]", items.join(","))
        }
        _ => {
            let mut members = Vec::new();
            for _ in 0..u.int_in_range(0..=3)? {
                let key: String = u.arbitrary()?;
                members.push(format!(
                    "{}:{}",
                    json_string(u, &key)?,
                    json_value(u, depth + 1)?
                ));
            }
            format!("{{{}}}", members.join(","))
        }
    })
}
