//! Fuzzes the server's parsing of the upgrade request's query string
//! (`/ws?name=...&token=...`): `protocol::v1::query_param`,
//! `decode_query_value` and `validate_name`.
//!
//! The input's first byte picks the key looked up (`name`, `token`, or a
//! one-letter one), the rest is the query (lossily UTF-8). Checked:
//!
//! - percent-decoding equals an independent decoder of the form: `+` is a
//!   space, `%` must be followed by two hex digits, and the bytes must make
//!   UTF-8; anything else is `None`;
//! - `query_param` returns the first pair with exactly that key, decoded;
//! - encoding round-trips: `decode(encode(s)) == s`, and the encoding is
//!   only unreserved characters and `%XX` escapes;
//! - a name that `validate_name` accepts is trimmed, non-empty, at most
//!   `MAX_NAME_CHARS` characters, has no control character, and is accepted
//!   unchanged again; each refusal has its stated reason (a non-printable
//!   one names a character that is refused on its own too).

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::v1::{
    decode_query_value, encode_query_value, query_param, validate_name, NameError, MAX_NAME_CHARS,
};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let query = String::from_utf8_lossy(rest);
    let key = match pick % 4 {
        0 => "name",
        1 => "token",
        2 => "",
        _ => "n",
    };

    let found = query_param(&query, key);
    let expected = query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| reference_decode(v));
    assert_eq!(found, expected, "query_param({query:?}, {key:?})");

    for value in query.split('&').flat_map(|pair| pair.split('=')) {
        let decoded = decode_query_value(value);
        assert_eq!(
            decoded,
            reference_decode(value),
            "decode_query_value({value:?})"
        );
        if let Some(d) = &decoded {
            check_name(d);
        }
    }
    check_encoding(&query);
    check_name(&query);
});

/// Percent-decoding as the form encoding defines it.
fn reference_decode(v: &str) -> Option<String> {
    let mut out = Vec::new();
    let mut bytes = v.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                (hi * 16 + lo) as u8
            }
            b => b,
        });
    }
    String::from_utf8(out).ok()
}

fn check_encoding(s: &str) {
    let e = encode_query_value(s);
    assert_eq!(decode_query_value(&e).as_deref(), Some(s), "{e:?}");
    let b = e.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            assert!(b.len() >= i + 3, "{e:?}");
            assert!(b[i + 1..i + 3]
                .iter()
                .all(|c| matches!(c, b'0'..=b'9' | b'A'..=b'F')));
            i += 3;
        } else {
            assert!(
                b[i].is_ascii_alphanumeric() || b"-_.~".contains(&b[i]),
                "{e:?}"
            );
            i += 1;
        }
    }
}

fn check_name(requested: &str) {
    match validate_name(requested) {
        Ok(name) => {
            assert_eq!(name, requested.trim());
            assert!(!name.is_empty());
            assert!(name.chars().count() <= MAX_NAME_CHARS);
            assert!(!name.chars().any(char::is_control), "{name:?}");
            assert_eq!(
                validate_name(&name).as_ref(),
                Ok(&name),
                "accepted names stay accepted"
            );
            for c in name.chars() {
                assert_ne!(
                    validate_name(&format!("a{c}b")),
                    Err(NameError::NotPrintable)
                );
            }
        }
        Err(NameError::Empty) => assert!(requested.trim().is_empty()),
        Err(NameError::TooLong) => assert!(requested.trim().chars().count() > MAX_NAME_CHARS),
        Err(NameError::NotPrintable) => assert!(
            requested
                .chars()
                .any(|c| validate_name(&format!("a{c}b")) == Err(NameError::NotPrintable)),
            "refused for a character that is fine on its own: {requested:?}"
        ),
    }
}
