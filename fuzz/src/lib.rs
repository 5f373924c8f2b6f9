//! Oracles the fuzz targets share: small checkers written independently of
//! the `protocol` code they judge (a channel-name rule, a strict base64
//! decoder, a JSON object's fields with duplicates kept, the one-line rule
//! of error texts).

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

/// Whether `text` is JSON that `serde_json::Value` cannot hold: valid
/// syntax (RFC 8259 puts no limit on a number's size) with a number out of
/// an `f64`'s range, such as `1e400`. The oracles are built on `Value`, so
/// they cannot judge such a text; the targets still run the decoders on it.
#[must_use]
pub fn beyond_value(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
        && serde_json::from_str::<Value>(text).is_err()
}

/// Whether `b` may appear in a channel name, `/` aside.
#[must_use]
pub fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.:@".contains(&b)
}

/// The channel-name rule of `protocol::channel`'s docs, by splitting: 1 to
/// 128 bytes, `/`-separated segments of name bytes, none empty.
#[must_use]
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= protocol::channel::MAX_LEN
        && s.split('/')
            .all(|seg| !seg.is_empty() && seg.bytes().all(name_byte))
}

/// Strict standard base64 (RFC 4648 §4): padded to a multiple of 4, `=`
/// only at the end, unused trailing bits zero. `None` for anything else.
#[must_use]
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    for (i, quad) in b.chunks(4).enumerate() {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && (i + 1) * 4 != b.len()) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = n << 6 | sextet(c)?;
        }
        let bytes = (n << (6 * pad)).to_be_bytes();
        let keep = 3 - pad;
        if bytes[1 + keep..].iter().any(|&x| x != 0) {
            return None;
        }
        out.extend_from_slice(&bytes[1..=keep]);
    }
    Some(out)
}

/// Whether an error text is one line: not empty, and no control character
/// or Unicode line/paragraph separator (a log line or an HTTP body stays
/// one line).
#[must_use]
pub fn is_one_line(text: &str) -> bool {
    !text.is_empty()
        && !text
            .chars()
            .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
}

/// Every top-level field of a JSON object, in order, duplicates kept (what
/// serde_json's own `Value` cannot show: it keeps one of them), each value
/// as its raw text.
pub struct Fields(pub Vec<(String, Box<RawValue>)>);

impl Fields {
    /// The fields of `text` if it is a JSON object, `None` otherwise.
    #[must_use]
    pub fn of(text: &str) -> Option<Self> {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(_)) => Some(serde_json::from_str(text).expect("an object is a map")),
            _ => None,
        }
    }

    /// The raw values of every field named `key`.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a RawValue> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| &**v)
    }

    /// The values of every field named `key`, parsed.
    #[must_use]
    pub fn values(&self, key: &str) -> Vec<Value> {
        self.all(key)
            .map(|v| serde_json::from_str(v.get()).expect("a field value is JSON"))
            .collect()
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    fields.push((key, map.next_value()?));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(FieldsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_strict() {
        assert_eq!(base64_decode(""), Some(vec![]));
        assert_eq!(base64_decode("/w=="), Some(vec![0xff]));
        assert_eq!(base64_decode("AAEC/w=="), Some(vec![0, 1, 2, 255]));
        assert_eq!(base64_decode("AAE="), Some(vec![0, 1]));
        for bad in [
            "AA", "/x==", "AAF=", "A===", "====", "AA=A", "AA==AAAA", "A A=",
        ] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }
}
