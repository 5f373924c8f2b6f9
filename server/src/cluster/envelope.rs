//! The envelope: one relayed message as a compact binary record, the only
//! thing nodes say to each other through Redis.

use bytes::{BufMut, Bytes, BytesMut};
use protocol::frame::OpCode;

/// Envelope format version (first byte).
const VERSION: u8 = 2;
/// Bytes of an envelope before the sender's name.
const HEAD: usize = 1 + 8 + 1 + 8 + 8 + 1 + 1;

/// One relayed message as it travels through Redis (a compact binary
/// record, not JSON: it is never parsed by anything but this module).
///
/// ```text
/// version u8 | node u64 | opcode u8 | sender u64 | time_ms u64
///   | name_len u8 | channel_len u8 | name | channel | payload
/// ```
/// Integers are little-endian. `channel` is the channel's name (at most
/// 128 bytes, `protocol::channel`). `sender`, `name` and `time` are what the
/// `broadcast.v1` event shows (the sender's id and name on its node, the
/// receive time there), so every node shows the same values.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Envelope<'a> {
    pub(super) node: u64,
    pub(super) opcode: OpCode,
    pub(super) sender: u64,
    pub(super) time: u64,
    pub(super) name: &'a str,
    pub(super) channel: &'a str,
    pub(super) payload: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Packs an envelope for `raw`, a complete server frame of a text or
    /// binary message.
    pub(super) fn encode(
        node: u64,
        raw: &[u8],
        channel: &str,
        sender: u64,
        name: &str,
        time: u64,
    ) -> Bytes {
        let payload = &raw[crate::frame::server_header_len(raw)..];
        // Names are at most 32 characters (checked at upgrade), channel
        // names 128 ASCII bytes; the cuts only guard the one-byte lengths.
        let cut = |s: &str| {
            let mut len = s.len().min(255);
            while !s.is_char_boundary(len) {
                len -= 1;
            }
            len
        };
        let (name_len, channel_len) = (cut(name), cut(channel));
        let mut out = BytesMut::with_capacity(HEAD + name_len + channel_len + payload.len());
        out.put_u8(VERSION);
        out.put_u64_le(node);
        out.put_u8(raw[0] & 0x0f);
        out.put_u64_le(sender);
        out.put_u64_le(time);
        out.put_u8(name_len as u8);
        out.put_u8(channel_len as u8);
        out.put_slice(&name.as_bytes()[..name_len]);
        out.put_slice(&channel.as_bytes()[..channel_len]);
        out.put_slice(payload);
        out.freeze()
    }

    /// Unpacks an envelope; `None` for anything malformed (another
    /// program's message on the same channel, or a future version).
    pub(super) fn decode(bytes: &'a [u8]) -> Option<Self> {
        if bytes.len() < HEAD || bytes[0] != VERSION {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let opcode = match bytes[9] {
            1 => OpCode::Text,
            2 => OpCode::Binary,
            _ => return None,
        };
        let name_len = usize::from(bytes[HEAD - 2]);
        let channel_len = usize::from(bytes[HEAD - 1]);
        let name = bytes.get(HEAD..HEAD + name_len)?;
        let channel = bytes.get(HEAD + name_len..HEAD + name_len + channel_len)?;
        let payload = &bytes[HEAD + name_len + channel_len..];
        if opcode == OpCode::Text && std::str::from_utf8(payload).is_err() {
            return None;
        }
        Some(Self {
            node: u64_at(1),
            opcode,
            sender: u64_at(10),
            time: u64_at(18),
            name: std::str::from_utf8(name).ok()?,
            channel: std::str::from_utf8(channel).ok()?,
            payload,
        })
    }
}

/// What the history's script publishes: `P<epoch>:<offset> <envelope>`
/// (see `relay::APPEND`). Returns the offset, the epoch and the envelope;
/// `None` for a plain envelope (history off on the sending node).
pub(super) fn positioned(bytes: &[u8]) -> Option<(u64, &str, &[u8])> {
    let rest = bytes.strip_prefix(b"P")?;
    let space = rest.iter().position(|&b| b == b' ')?;
    let head = std::str::from_utf8(&rest[..space]).ok()?;
    let (epoch, offset) = head.split_once(':')?;
    Some((offset.parse().ok()?, epoch, &rest[space + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_read_from_what_the_script_publishes() {
        let raw = crate::frame::frame_message(OpCode::Text, b"hi");
        let envelope = Envelope::encode(1, &raw, "c", 2, "bob", 3);
        let mut published = b"PXk3v9QaB:42 ".to_vec();
        published.extend_from_slice(&envelope);
        let (offset, epoch, rest) = positioned(&published).unwrap();
        assert_eq!((offset, epoch, rest), (42, "Xk3v9QaB", &envelope[..]));
        assert_eq!(positioned(&envelope), None);
        assert_eq!(positioned(b"Pabc 1"), None);
    }

    #[test]
    fn envelope_round_trip() {
        for (op, payload) in [
            (OpCode::Text, "héllo".as_bytes().to_vec()),
            (OpCode::Binary, vec![0u8, 255, 7]),
            (OpCode::Binary, vec![9u8; 70_000]),
            (OpCode::Text, Vec::new()),
        ] {
            let raw = crate::frame::frame_message(op, &payload);
            let bytes = Envelope::encode(42, &raw, "team/a", 7, "alice", 1_700_000_000_000);
            assert_eq!(bytes.len(), HEAD + 5 + 6 + payload.len());
            assert_eq!(
                Envelope::decode(&bytes),
                Some(Envelope {
                    node: 42,
                    opcode: op,
                    sender: 7,
                    time: 1_700_000_000_000,
                    name: "alice",
                    channel: "team/a",
                    payload: &payload,
                })
            );
        }
    }

    #[test]
    fn malformed_envelopes_are_rejected() {
        let raw = crate::frame::frame_message(OpCode::Text, b"hi");
        let good = Envelope::encode(1, &raw, "c", 2, "bob", 3);
        assert!(Envelope::decode(&good).is_some());
        for cut in 0..HEAD + 4 {
            assert!(Envelope::decode(&good[..cut]).is_none(), "cut at {cut}");
        }
        let mut bad_version = good.to_vec();
        bad_version[0] = VERSION + 1;
        assert!(Envelope::decode(&bad_version).is_none());
        let mut bad_op = good.to_vec();
        bad_op[9] = 9;
        assert!(Envelope::decode(&bad_op).is_none());
        let mut bad_utf8 = good.to_vec();
        bad_utf8.push(0xff);
        assert!(Envelope::decode(&bad_utf8).is_none());
        assert!(Envelope::decode(b"some other program's message").is_none());
    }
}
