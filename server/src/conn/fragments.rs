//! Reassembly of fragmented messages, with the total size capped and UTF-8
//! validated as fragments arrive (fail fast).

use bytes::{BufMut, Bytes, BytesMut};
use protocol::close::CloseReason;
use protocol::frame::MAX_SERVER_HEADER;
use protocol::utf8::Utf8Validator;

use crate::frame::seal;

/// A fragmented message being reassembled.
///
/// The buffer starts with [`MAX_SERVER_HEADER`] spare bytes so that the
/// server header can be written in front of the payload when the last
/// fragment arrives, without copying the payload again.
#[derive(Debug, Default)]
pub(super) struct Assembly {
    pub(super) buf: Option<BytesMut>,
    pub(super) opcode: Option<protocol::frame::OpCode>,
    utf8: Utf8Validator,
}

impl Assembly {
    pub(super) fn in_progress(&self) -> bool {
        self.buf.is_some()
    }

    pub(super) fn start(
        &mut self,
        opcode: protocol::frame::OpCode,
        payload: &[u8],
        max: usize,
    ) -> Result<(), CloseReason> {
        let mut buf = BytesMut::with_capacity(MAX_SERVER_HEADER + payload.len().max(256));
        buf.put_bytes(0, MAX_SERVER_HEADER);
        self.buf = Some(buf);
        self.opcode = Some(opcode);
        self.utf8 = Utf8Validator::new();
        self.extend(payload, false, max).map(|_| ())
    }

    /// Appends a fragment; returns the framed message after the last one.
    pub(super) fn extend(
        &mut self,
        payload: &[u8],
        fin: bool,
        max: usize,
    ) -> Result<Option<Bytes>, CloseReason> {
        let buf = self.buf.as_mut().expect("a message is in progress");
        if buf.len() - MAX_SERVER_HEADER + payload.len() > max {
            return Err(CloseReason::MESSAGE_TOO_BIG);
        }
        buf.put_slice(payload);
        let opcode = self.opcode.expect("a message is in progress");
        if opcode == protocol::frame::OpCode::Text
            && self.utf8.feed(&buf[MAX_SERVER_HEADER..], fin).is_err()
        {
            return Err(CloseReason::INVALID_UTF8);
        }
        if !fin {
            return Ok(None);
        }
        let buf = self.buf.take().expect("a message is in progress");
        Ok(Some(seal(buf, opcode)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::frame::{encode_server_frame, OpCode as Op};

    #[test]
    fn assembly_frames_fragments_in_place() {
        let mut a = Assembly::default();
        a.start(Op::Text, b"hel", 100).unwrap();
        assert!(a.extend(b"lo ", false, 100).unwrap().is_none());
        let whole = a.extend("wörld".as_bytes(), true, 100).unwrap().unwrap();
        assert_eq!(
            &whole[..],
            &encode_server_frame(Op::Text, "hello wörld".as_bytes())[..]
        );
        assert!(!a.in_progress());
    }

    #[test]
    fn assembly_caps_total_size() {
        let mut a = Assembly::default();
        a.start(Op::Binary, &[0; 60], 100).unwrap();
        assert_eq!(
            a.extend(&[0; 41], false, 100),
            Err(CloseReason::MESSAGE_TOO_BIG)
        );
    }

    #[test]
    fn assembly_rejects_bad_utf8_early() {
        let mut a = Assembly::default();
        assert_eq!(
            a.start(Op::Text, b"ok\xc0\xaf", 100),
            Err(CloseReason::INVALID_UTF8)
        );
    }

    #[test]
    fn large_frames_use_the_64_bit_length() {
        let payload = vec![7u8; 70_000];
        let mut a = Assembly::default();
        a.start(Op::Binary, &payload[..1], 100_000).unwrap();
        let whole = a.extend(&payload[1..], true, 100_000).unwrap().unwrap();
        assert_eq!(&whole[..], &encode_server_frame(Op::Binary, &payload)[..]);
    }
}
