//! The binary payload publishers send and subscribers decode.
//!
//! Layout (little endian), exactly `size` bytes, `size >= HEADER_LEN`:
//!
//! | offset | bytes | field                                               |
//! |--------|-------|-----------------------------------------------------|
//! | 0      | 4     | publisher id (u32)                                  |
//! | 4      | 8     | sequence number (u64), per publisher, from 0        |
//! | 12     | 8     | send timestamp: ns since the in-process origin (u64)|
//! | 20     | 4     | send delay: µs the actual write came after the      |
//! |        |       | timestamp (u32, saturating; 0 in `--max-rate` mode) |
//! | 24     | ..    | padding (`0x2e`), up to `size`                      |
//!
//! In rate mode the timestamp is the *scheduled* send time (see `run.rs`), so
//! `timestamp + delay` is when the publisher actually wrote the message.

/// Smallest payload: the header alone.
pub(crate) const HEADER_LEN: usize = 24;
const PAD: u8 = b'.';

/// The decoded header of one payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) publisher: u32,
    pub(crate) seq: u64,
    pub(crate) sent_ns: u64,
    pub(crate) delay_us: u32,
}

/// Why a received message is not one of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    TooShort,
}

/// Writes a full payload of `buf.len()` bytes (must be `>= HEADER_LEN`).
pub(crate) fn encode_into(buf: &mut [u8], h: Header) {
    assert!(buf.len() >= HEADER_LEN, "payload shorter than header");
    write_header(buf, h);
    buf[HEADER_LEN..].fill(PAD);
}

/// Writes only the header; the padding of a reused buffer is already in place.
pub(crate) fn write_header(buf: &mut [u8], h: Header) {
    buf[0..4].copy_from_slice(&h.publisher.to_le_bytes());
    buf[4..12].copy_from_slice(&h.seq.to_le_bytes());
    buf[12..20].copy_from_slice(&h.sent_ns.to_le_bytes());
    buf[20..24].copy_from_slice(&h.delay_us.to_le_bytes());
}

/// Reads the header; the padding is not checked (the server must not touch it,
/// but checking every byte would cost more than the rest of the hot path).
pub(crate) fn decode(buf: &[u8]) -> Result<Header, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::TooShort);
    }
    let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().expect("8 bytes"));
    Ok(Header {
        publisher: u32_at(0),
        seq: u64_at(4),
        sent_ns: u64_at(12),
        delay_us: u32_at(20),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_at_minimum_size() {
        let h = Header {
            publisher: 7,
            seq: u64::MAX - 1,
            sent_ns: 123_456_789_012,
            delay_us: u32::MAX,
        };
        let mut buf = [0u8; HEADER_LEN];
        encode_into(&mut buf, h);
        assert_eq!(decode(&buf), Ok(h));
    }

    #[test]
    fn round_trip_with_padding_and_header_rewrite() {
        let mut buf = vec![0u8; 128];
        encode_into(
            &mut buf,
            Header {
                publisher: 1,
                seq: 0,
                sent_ns: 0,
                delay_us: 0,
            },
        );
        assert!(buf[HEADER_LEN..].iter().all(|&b| b == PAD));
        let h = Header {
            publisher: 3,
            seq: 42,
            sent_ns: 99,
            delay_us: 12,
        };
        write_header(&mut buf, h);
        assert_eq!(buf.len(), 128);
        assert_eq!(decode(&buf), Ok(h));
        assert!(buf[HEADER_LEN..].iter().all(|&b| b == PAD));
    }

    #[test]
    fn layout_is_little_endian() {
        let mut buf = [0u8; HEADER_LEN];
        encode_into(
            &mut buf,
            Header {
                publisher: 0x0102_0304,
                seq: 5,
                sent_ns: 0x0a0b,
                delay_us: 0x0c0d,
            },
        );
        assert_eq!(&buf[0..4], &[4, 3, 2, 1]);
        assert_eq!(buf[4], 5);
        assert_eq!(&buf[12..14], &[0x0b, 0x0a]);
        assert_eq!(&buf[20..22], &[0x0d, 0x0c]);
    }

    #[test]
    fn rejects_short_messages() {
        assert_eq!(decode(&[0u8; HEADER_LEN - 1]), Err(DecodeError::TooShort));
        assert_eq!(decode(b""), Err(DecodeError::TooShort));
    }
}
