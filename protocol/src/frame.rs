//! RFC 6455 §5.2 frame headers: the one encoder of server headers (never
//! masked) and the one decoder of any header, masked or not.
//!
//! The server frames each broadcast message exactly once: this header, then
//! the payload, in one shared buffer that every recipient's socket writes.
//! [`decode_header`] is what every hand-written reader (load-test's
//! subscribers, the server's raw test client) parses frames with; it is pure
//! (no I/O, no allocation), so it also builds for wasm32.

/// Largest header a server frame needs: 2 bytes plus an 8-byte length.
pub const MAX_SERVER_HEADER: usize = 10;

/// WebSocket opcodes (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    /// Continuation of a fragmented message.
    Continuation = 0x0,
    /// UTF-8 text.
    Text = 0x1,
    /// Arbitrary bytes.
    Binary = 0x2,
    /// Start of the closing handshake.
    Close = 0x8,
    /// Keepalive request.
    Ping = 0x9,
    /// Keepalive answer.
    Pong = 0xA,
}

impl OpCode {
    /// Whether this is a control opcode (close, ping, pong).
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }

    /// The opcode of a frame's low four bits; None for the reserved ones
    /// (3-7 and 0xB-0xF).
    pub fn from_u8(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }
}

/// Largest header any frame has: 2 bytes, an 8-byte length, a 4-byte mask key.
pub const MAX_HEADER: usize = 14;

/// A decoded frame header (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// FIN: this frame ends its message.
    pub fin: bool,
    /// The RSV1-3 bits as they sit in the first byte (`0x40 | 0x20 | 0x10`);
    /// 0 unless an extension was negotiated, which the caller checks.
    pub rsv: u8,
    /// What the frame carries.
    pub opcode: OpCode,
    /// The masking key: clients must mask, servers must not (the caller
    /// checks which it expects).
    pub mask: Option<[u8; 4]>,
    /// Payload bytes after the header (a u64: it may not fit a wasm32 usize).
    pub payload_len: u64,
    /// Header bytes before the payload: 2, 4 or 10, plus 4 when masked.
    pub header_len: usize,
}

/// Why bytes are not a valid frame header. Policy (reserved bits, masking,
/// size limits) is left to the caller; these break the framing itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// The opcode is one of the reserved values (3-7, 0xB-0xF).
    ReservedOpcode(u8),
    /// A close, ping or pong without FIN (control frames are never fragmented).
    FragmentedControl,
    /// A control frame longer than [`crate::MAX_CONTROL_PAYLOAD`] bytes.
    ControlTooLong(u64),
    /// A 64-bit length with its most significant bit set.
    LengthOverflow,
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            Self::FragmentedControl => f.write_str("fragmented control frame"),
            Self::ControlTooLong(n) => write!(
                f,
                "control frame of {n} bytes (at most {} allowed)",
                crate::MAX_CONTROL_PAYLOAD
            ),
            Self::LengthOverflow => f.write_str("64-bit frame length with its top bit set"),
        }
    }
}

impl std::error::Error for HeaderError {}

/// Decodes the frame header at the start of `bytes`.
///
/// Returns `Ok(None)` when `bytes` holds only part of a header (read more
/// and call again; at most [`MAX_HEADER`] bytes are ever needed). The
/// payload is not looked at: it follows at `header_len`, masked with `mask`
/// if there is one. Non-minimal length encodings are accepted.
///
/// # Errors
///
/// A [`HeaderError`] when the header cannot start a valid frame.
pub fn decode_header(bytes: &[u8]) -> Result<Option<Header>, HeaderError> {
    let [b0, b1, rest @ ..] = bytes else {
        return Ok(None);
    };
    let (fin, rsv, bits) = (b0 & 0x80 != 0, b0 & 0x70, b0 & 0x0f);
    let opcode = OpCode::from_u8(bits).ok_or(HeaderError::ReservedOpcode(bits))?;
    let masked = b1 & 0x80 != 0;
    let (payload_len, len_bytes) = match b1 & 0x7f {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 2),
            _ => return Ok(None),
        },
        127 => match rest.first_chunk::<8>() {
            Some(l) => (u64::from_be_bytes(*l), 8),
            None => return Ok(None),
        },
        n => (u64::from(n), 0),
    };
    if payload_len >> 63 != 0 {
        return Err(HeaderError::LengthOverflow);
    }
    if opcode.is_control() {
        if !fin {
            return Err(HeaderError::FragmentedControl);
        }
        if payload_len > crate::MAX_CONTROL_PAYLOAD as u64 {
            return Err(HeaderError::ControlTooLong(payload_len));
        }
    }
    let mask = if masked {
        match rest[len_bytes..].first_chunk::<4>() {
            Some(k) => Some(*k),
            None => return Ok(None),
        }
    } else {
        None
    };
    Ok(Some(Header {
        fin,
        rsv,
        opcode,
        mask,
        payload_len,
        header_len: 2 + len_bytes + if masked { 4 } else { 0 },
    }))
}

/// Writes the header of a final, unmasked frame carrying `payload_len` bytes
/// into `out` and returns how many bytes it used (2, 4 or 10).
pub fn encode_server_header(
    opcode: OpCode,
    payload_len: usize,
    out: &mut [u8; MAX_SERVER_HEADER],
) -> usize {
    out[0] = 0x80 | opcode as u8;
    if payload_len < 126 {
        out[1] = payload_len as u8;
        2
    } else if payload_len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    }
}

/// A complete final, unmasked frame: header followed by `payload`.
pub fn encode_server_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut head = [0u8; MAX_SERVER_HEADER];
    let n = encode_server_header(opcode, payload.len(), &mut head);
    let mut v = Vec::with_capacity(n + payload.len());
    v.extend_from_slice(&head[..n]);
    v.extend_from_slice(payload);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decoder_never_panics_and_stays_in_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            if let Ok(Some(h)) = decode_header(&bytes) {
                prop_assert!(h.header_len <= bytes.len() && h.header_len <= MAX_HEADER);
            }
        }
    }

    #[test]
    fn length_forms_switch_at_rfc_boundaries() {
        let mut h = [0u8; MAX_SERVER_HEADER];
        assert_eq!(encode_server_header(OpCode::Text, 0, &mut h), 2);
        assert_eq!(&h[..2], &[0x81, 0]);
        assert_eq!(encode_server_header(OpCode::Binary, 125, &mut h), 2);
        assert_eq!(&h[..2], &[0x82, 125]);
        assert_eq!(encode_server_header(OpCode::Text, 126, &mut h), 4);
        assert_eq!(&h[..4], &[0x81, 126, 0, 126]);
        assert_eq!(encode_server_header(OpCode::Text, 65535, &mut h), 4);
        assert_eq!(&h[..4], &[0x81, 126, 0xff, 0xff]);
        assert_eq!(encode_server_header(OpCode::Text, 65536, &mut h), 10);
        assert_eq!(&h[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn control_opcodes() {
        assert!(
            OpCode::Close.is_control() && OpCode::Ping.is_control() && OpCode::Pong.is_control()
        );
        assert!(!OpCode::Text.is_control() && !OpCode::Binary.is_control());
        assert!(!OpCode::Continuation.is_control());
    }

    /// A header with `len` encoded in `form` length bytes (0, 2 or 8).
    fn header(b0: u8, mask: Option<[u8; 4]>, len: u64, form: usize) -> Vec<u8> {
        let m = if mask.is_some() { 0x80 } else { 0 };
        let mut h = match form {
            0 => vec![b0, m | len as u8],
            2 => [vec![b0, m | 126], (len as u16).to_be_bytes().to_vec()].concat(),
            _ => [vec![b0, m | 127], len.to_be_bytes().to_vec()].concat(),
        };
        h.extend(mask.into_iter().flatten());
        h
    }

    #[test]
    fn decodes_every_length_form_masked_or_not() {
        let key = [1, 2, 3, 4];
        for (len, form) in [
            (0, 0),
            (125, 0),
            (126, 2),
            (65_535, 2),
            (65_536, 8),
            (1 << 40, 8),
            (u64::MAX >> 1, 8),
            // Non-minimal encodings are accepted.
            (5, 2),
            (5, 8),
        ] {
            for mask in [None, Some(key)] {
                let bytes = header(0x82, mask, len, form);
                let h = decode_header(&bytes).unwrap().unwrap();
                assert_eq!(
                    h,
                    Header {
                        fin: true,
                        rsv: 0,
                        opcode: OpCode::Binary,
                        mask,
                        payload_len: len,
                        header_len: bytes.len(),
                    },
                    "{bytes:?}"
                );
                // Bytes after the header (the payload) do not matter.
                let more = [&bytes[..], b"payload"].concat();
                assert_eq!(decode_header(&more), Ok(Some(h)));
                // Every proper prefix needs more bytes.
                for cut in 0..bytes.len() {
                    assert_eq!(decode_header(&bytes[..cut]), Ok(None), "{cut} of {bytes:?}");
                }
            }
        }
    }

    #[test]
    fn decodes_fin_rsv_and_opcodes() {
        let h = decode_header(&[0x70 | 0x01, 3]).unwrap().unwrap();
        assert_eq!((h.fin, h.rsv, h.opcode), (false, 0x70, OpCode::Text));
        let h = decode_header(&[0xc0, 0]).unwrap().unwrap();
        assert_eq!((h.fin, h.rsv, h.opcode), (true, 0x40, OpCode::Continuation));
        for op in [0x0, 0x1, 0x2, 0x8, 0x9, 0xA] {
            let h = decode_header(&[0x80 | op, 0]).unwrap().unwrap();
            assert_eq!(h.opcode as u8, op);
            assert_eq!(OpCode::from_u8(op), Some(h.opcode));
        }
        for op in [0x3, 0x7, 0xB, 0xF] {
            assert_eq!(
                decode_header(&[0x80 | op, 0]),
                Err(HeaderError::ReservedOpcode(op))
            );
            assert_eq!(OpCode::from_u8(op), None);
        }
    }

    #[test]
    fn rejects_broken_framing() {
        assert_eq!(
            decode_header(&[0x09, 0]),
            Err(HeaderError::FragmentedControl)
        );
        assert_eq!(
            decode_header(&[0x88, 126, 0, 126]),
            Err(HeaderError::ControlTooLong(126))
        );
        assert!(decode_header(&[0x8a, 125]).unwrap().is_some());
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(decode_header(&huge), Err(HeaderError::LengthOverflow));
        // Errors are reported as soon as the bytes that prove them are there.
        assert_eq!(decode_header(&[0x83]), Ok(None), "one byte is never enough");
        assert_eq!(
            decode_header(&[0x83, 0x80]),
            Err(HeaderError::ReservedOpcode(3))
        );
    }

    #[test]
    fn decodes_what_the_encoder_writes() {
        let mut h = [0u8; MAX_SERVER_HEADER];
        for len in [0, 1, 125, 126, 65_535, 65_536, 1 << 33] {
            let n = encode_server_header(OpCode::Ping, 0, &mut h);
            assert!(decode_header(&h[..n]).unwrap().is_some());
            let n = encode_server_header(OpCode::Text, len, &mut h);
            let d = decode_header(&h[..n]).unwrap().unwrap();
            assert_eq!((d.payload_len, d.header_len), (len as u64, n));
            assert_eq!(
                (d.fin, d.rsv, d.opcode, d.mask),
                (true, 0, OpCode::Text, None)
            );
        }
    }

    #[test]
    fn frame_is_header_then_payload() {
        assert_eq!(encode_server_frame(OpCode::Pong, b"hi"), b"\x8a\x02hi");
    }
}
