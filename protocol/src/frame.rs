//! RFC 6455 §5.2 frame headers as a server writes them (never masked).
//!
//! The server frames each broadcast message exactly once: this header, then
//! the payload, in one shared buffer that every recipient's socket writes.

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

    #[test]
    fn frame_is_header_then_payload() {
        assert_eq!(encode_server_frame(OpCode::Pong, b"hi"), b"\x8a\x02hi");
    }
}
