//! Fuzzes `protocol::frame::decode_header`, the one decoder of frame headers
//! that every hand-written reader uses, and checks it against RFC 6455 §5.2
//! spelled out independently below:
//!
//! - it never panics, and what it decides depends only on the bytes it
//!   claims to need: every prefix shorter than the header needs more bytes
//!   (`Ok(None)`), every longer one gives the same answer, so it never looks
//!   past `header_len` and `header_len <= input length <= MAX_HEADER`;
//! - a decoded header's fields are the bits of the input (FIN, RSV, opcode,
//!   length in the form the second byte names, mask key), and writing them
//!   back in that form gives the input's header bytes exactly;
//! - errors are the right ones: a reserved opcode, a fragmented or too long
//!   control frame, a 64-bit length with its top bit set;
//! - encode → decode: a header built from fuzz-chosen fields (any length
//!   form, minimal or not, masked or not) decodes to those fields, and
//!   `encode_server_header` output decodes to a final unmasked frame of the
//!   same length in the minimal form.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::frame::{
    decode_header, encode_server_header, Header, HeaderError, OpCode, MAX_HEADER, MAX_SERVER_HEADER,
};
use protocol::MAX_CONTROL_PAYLOAD;

fuzz_target!(|data: &[u8]| {
    check_decode(data);
    check_encode_decode(data);
});

/// The answer for the whole input is the one all long-enough prefixes give,
/// and it is right for the bytes.
fn check_decode(data: &[u8]) {
    let whole = decode_header(data);
    // The first prefix length with a decision; all shorter ones need more.
    let mut decided = None;
    for k in 0..=data.len().min(MAX_HEADER + 2) {
        let r = decode_header(&data[..k]);
        match decided {
            None if r == Ok(None) => {}
            None => {
                assert_eq!(
                    r, whole,
                    "prefix {k} decides differently from the whole input"
                );
                decided = Some(k);
            }
            Some(_) => assert_eq!(r, whole, "prefix {k} changes the decision"),
        }
    }
    match whole {
        Ok(None) => {
            assert!(decided.is_none());
            assert!(
                data.len() < MAX_HEADER,
                "{} bytes are always enough",
                data.len()
            );
            if let Some(needed) = needed_len(data) {
                assert!(data.len() < needed, "a complete header must be decoded");
            }
        }
        Ok(Some(h)) => {
            assert_eq!(
                decided,
                Some(h.header_len),
                "decided after exactly the header"
            );
            assert!(h.header_len <= data.len() && h.header_len <= MAX_HEADER);
            check_fields(&data[..h.header_len], &h);
            assert_eq!(
                encode_in_form(&h),
                &data[..h.header_len],
                "re-encoding the fields in the same length form gives the input back"
            );
        }
        Err(e) => {
            let k = decided.expect("an error needs bytes");
            assert!((2..=MAX_HEADER).contains(&k));
            check_error(&data[..k], e);
        }
    }
}

/// How many bytes a header starting with these bytes needs (2, 4 or 10,
/// plus 4 if masked); None before the second byte.
fn needed_len(data: &[u8]) -> Option<usize> {
    let b1 = *data.get(1)?;
    let len_bytes = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    Some(2 + len_bytes + if b1 & 0x80 != 0 { 4 } else { 0 })
}

/// The length field of a header, in the form its second byte names.
fn length_of(data: &[u8]) -> u64 {
    match data[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([data[2], data[3]])),
        127 => u64::from_be_bytes(data[2..10].try_into().unwrap()),
        n => u64::from(n),
    }
}

/// A successfully decoded header says what its bytes say.
fn check_fields(head: &[u8], h: &Header) {
    assert_eq!(Some(head.len()), needed_len(head));
    assert_eq!(h.fin, head[0] & 0x80 != 0);
    assert_eq!(h.rsv, head[0] & 0x70);
    assert_eq!(h.opcode as u8, head[0] & 0x0f);
    assert_eq!(OpCode::from_u8(head[0] & 0x0f), Some(h.opcode));
    assert_eq!(h.payload_len, length_of(head));
    assert_eq!(h.payload_len >> 63, 0);
    let key = (head[1] & 0x80 != 0).then(|| head[head.len() - 4..].try_into().unwrap());
    assert_eq!(h.mask, key);
    if h.opcode.is_control() {
        assert!(h.fin && h.payload_len <= MAX_CONTROL_PAYLOAD as u64);
    }
}

/// An error is the one the bytes that decided it prove.
fn check_error(head: &[u8], e: HeaderError) {
    let (fin, bits) = (head[0] & 0x80 != 0, head[0] & 0x0f);
    let control = bits & 0x8 != 0;
    match e {
        HeaderError::ReservedOpcode(op) => {
            assert_eq!(op, bits);
            assert!(OpCode::from_u8(op).is_none());
            assert_eq!(
                head.len(),
                2,
                "a reserved opcode is known from the second byte on"
            );
        }
        HeaderError::FragmentedControl => assert!(control && !fin),
        HeaderError::ControlTooLong(n) => {
            assert!(control && fin);
            assert_eq!(n, length_of(head));
            assert!(n > MAX_CONTROL_PAYLOAD as u64);
        }
        HeaderError::LengthOverflow => {
            assert_eq!(head[1] & 0x7f, 127);
            assert_ne!(length_of(head) >> 63, 0);
        }
        other => panic!("unexpected error {other:?}"),
    }
    // The other errors are reported as soon as the length is there: a mask
    // key still missing never delays them.
    if !matches!(e, HeaderError::ReservedOpcode(_)) {
        let len_end = needed_len(head).unwrap() - if head[1] & 0x80 != 0 { 4 } else { 0 };
        assert_eq!(head.len(), len_end);
    }
}

/// A tiny independent encoder: the header's fields in the length form its
/// `header_len` implies (so non-minimal forms are kept), mask key last.
fn encode_in_form(h: &Header) -> Vec<u8> {
    let masked = h.mask.is_some();
    let len_bytes = h.header_len - 2 - if masked { 4 } else { 0 };
    let m = if masked { 0x80 } else { 0 };
    let mut out = vec![if h.fin { 0x80 } else { 0 } | h.rsv | h.opcode as u8, 0];
    match len_bytes {
        0 => out[1] = m | u8::try_from(h.payload_len).unwrap(),
        2 => {
            out[1] = m | 126;
            out.extend(u16::try_from(h.payload_len).unwrap().to_be_bytes());
        }
        8 => {
            out[1] = m | 127;
            out.extend(h.payload_len.to_be_bytes());
        }
        n => panic!("impossible length form of {n} bytes"),
    }
    out.extend(h.mask.into_iter().flatten());
    out
}

/// Reads fields from the fuzz input, builds the header they describe and
/// checks what the decoder makes of it.
fn check_encode_decode(data: &[u8]) {
    let Some((&[flags, op_pick], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let opcodes = [
        OpCode::Continuation,
        OpCode::Text,
        OpCode::Binary,
        OpCode::Close,
        OpCode::Ping,
        OpCode::Pong,
    ];
    let opcode = opcodes[usize::from(op_pick) % opcodes.len()];
    let mut raw = [0u8; 12];
    let n = rest.len().min(12);
    raw[..n].copy_from_slice(&rest[..n]);
    let key: [u8; 4] = raw[8..12].try_into().unwrap();
    let value = u64::from_be_bytes(raw[..8].try_into().unwrap());

    // The server encoder: any length a real payload can have (a slice is
    // at most isize::MAX bytes).
    let len = (value >> 1) as usize;
    let mut head = [0u8; MAX_SERVER_HEADER];
    let written = encode_server_header(opcode, len, &mut head);
    let minimal = match len {
        0..=125 => 2,
        126..=0xffff => 4,
        _ => 10,
    };
    assert_eq!(
        written, minimal,
        "the server encoder uses the minimal length form"
    );
    let d = decode_header(&head[..written]);
    if opcode.is_control() && len > MAX_CONTROL_PAYLOAD {
        assert_eq!(d, Err(HeaderError::ControlTooLong(len as u64)));
    } else {
        let expected = Header {
            fin: true,
            rsv: 0,
            opcode,
            mask: None,
            payload_len: len as u64,
            header_len: written,
        };
        assert_eq!(d, Ok(Some(expected)));
    }

    // Any header, in any length form that holds its length.
    let form = [0usize, 2, 8][usize::from(flags & 0x03) % 3];
    let payload_len = match form {
        0 => value % 126,
        2 => value % 0x1_0000,
        _ => value >> 1,
    };
    let mask = (flags & 0x04 != 0).then_some(key);
    let h = Header {
        fin: flags & 0x80 != 0,
        rsv: flags & 0x70,
        opcode,
        mask,
        payload_len,
        header_len: 2 + form + if mask.is_some() { 4 } else { 0 },
    };
    let bytes = encode_in_form(&h);
    let got = decode_header(&[&bytes[..], rest].concat());
    if opcode.is_control() && !h.fin {
        assert_eq!(got, Err(HeaderError::FragmentedControl));
    } else if opcode.is_control() && payload_len > MAX_CONTROL_PAYLOAD as u64 {
        assert_eq!(got, Err(HeaderError::ControlTooLong(payload_len)));
    } else {
        assert_eq!(got, Ok(Some(h)), "decode(encode(h)) == h for {bytes:?}");
    }
}
