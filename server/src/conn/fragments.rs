//! Reassembly of fragmented messages, with the total size capped and UTF-8
//! validated as fragments arrive (fail fast); and the inflation of
//! permessage-deflate messages (fragmented or not), capped the same way
//! as the inflated bytes come out.

use bytes::{BufMut, Bytes, BytesMut};
use protocol::close::CloseReason;
use protocol::frame::MAX_SERVER_HEADER;
use protocol::utf8::Utf8Validator;

use crate::deflate::{Inflater, Negotiated};
use crate::frame::seal;

/// A fragmented message being reassembled.
///
/// The buffer starts with [`MAX_SERVER_HEADER`] spare bytes so that the
/// server header can be written in front of the payload when the last
/// fragment arrives, without copying the payload again.
///
/// Every connection's reader holds one for its whole life, so what only a
/// message in progress needs is boxed ([`Partial`]): an idle connection
/// holds a pointer, not the buffer's handle and the validator's state.
#[derive(Debug, Default)]
pub(super) struct Assembly {
    partial: Option<Box<Partial>>,
    /// The message in progress is compressed (RSV1 on its first frame).
    compressed: bool,
    /// The connection's inflate state (permessage-deflate), created at
    /// its first compressed message; see [`Assembly::idle`].
    inflater: Option<Box<Inflater>>,
}

/// A message being assembled.
#[derive(Debug)]
struct Partial {
    buf: BytesMut,
    opcode: protocol::frame::OpCode,
    utf8: Utf8Validator,
}

impl Assembly {
    pub(super) fn in_progress(&self) -> bool {
        self.partial.is_some()
    }

    pub(super) fn start(
        &mut self,
        opcode: protocol::frame::OpCode,
        payload: &[u8],
        max: usize,
    ) -> Result<(), CloseReason> {
        self.begin(opcode, payload.len());
        self.extend(payload, false, max).map(|_| ())
    }

    fn begin(&mut self, opcode: protocol::frame::OpCode, len: usize) {
        let mut buf = BytesMut::with_capacity(MAX_SERVER_HEADER + len.max(256));
        buf.put_bytes(0, MAX_SERVER_HEADER);
        self.partial = Some(Box::new(Partial {
            buf,
            opcode,
            utf8: Utf8Validator::new(),
        }));
    }

    /// Starts a compressed message (its first frame, `fin` if it is the
    /// only one), inflated as `deflate` says; returns the framed message
    /// when it is complete.
    pub(super) fn start_compressed(
        &mut self,
        opcode: protocol::frame::OpCode,
        payload: &[u8],
        fin: bool,
        max: usize,
        deflate: Negotiated,
    ) -> Result<Option<Bytes>, CloseReason> {
        // Inflated JSON is often 3-5 times its compressed size.
        self.begin(opcode, (payload.len() * 4).min(max));
        self.compressed = true;
        self.inflater
            .get_or_insert_with(|| Box::new(Inflater::new(deflate)));
        self.extend(payload, fin, max)
    }

    /// Between bursts of input (the socket read empty): a client that does
    /// not take its context over has its inflate state dropped, so an idle
    /// connection holds none.
    pub(super) fn idle(&mut self, no_context_takeover: bool) {
        if no_context_takeover && !self.in_progress() {
            self.inflater = None;
        }
    }

    /// Appends a fragment; returns the framed message after the last one.
    pub(super) fn extend(
        &mut self,
        payload: &[u8],
        fin: bool,
        max: usize,
    ) -> Result<Option<Bytes>, CloseReason> {
        let partial = self.partial.as_mut().expect("a message is in progress");
        let buf = &mut partial.buf;
        if self.compressed {
            let inflater = self
                .inflater
                .as_mut()
                .expect("a compressed message has one");
            inflater.inflate(payload, fin, buf, MAX_SERVER_HEADER, max)?;
        } else {
            if buf.len() - MAX_SERVER_HEADER + payload.len() > max {
                return Err(CloseReason::MESSAGE_TOO_BIG);
            }
            buf.put_slice(payload);
        }
        let opcode = partial.opcode;
        if opcode == protocol::frame::OpCode::Text
            && partial.utf8.feed(&buf[MAX_SERVER_HEADER..], fin).is_err()
        {
            return Err(CloseReason::INVALID_UTF8);
        }
        if !fin {
            return Ok(None);
        }
        if std::mem::take(&mut self.compressed) {
            if let Some(inflater) = &mut self.inflater {
                inflater.finish_message();
            }
        }
        let partial = self.partial.take().expect("a message is in progress");
        Ok(Some(seal(partial.buf, opcode)))
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
