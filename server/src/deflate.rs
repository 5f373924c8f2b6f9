//! permessage-deflate (RFC 7692): the negotiation in the upgrade, the one
//! compression of each outbound message that every compressing recipient
//! shares, and the bounded inflation of compressed client messages.
//!
//! See `docs/compression.md` for the design: the server always uses
//! `server_no_context_takeover` (each outbound message is compressed from a
//! fresh state, so one compressed frame serves every recipient), and one
//! encoding per window size in use: normally just the 32 KiB window. A
//! client that limits the server's window (`server_max_window_bits=N`)
//! gets that encoding too for messages of at most 2^N bytes, where no match
//! can reach further back than its window; for longer ones the shard also
//! compresses an N-bit encoding, once, shared by every client that asked
//! for N. So compression runs once per message and window size in use,
//! never per recipient.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use protocol::close::CloseReason;
use protocol::frame::MAX_SERVER_HEADER;

use crate::frame::server_header_len;

/// The extension's name in `Sec-WebSocket-Extensions`.
pub(crate) const EXTENSION: &str = "permessage-deflate";

/// The RSV1 bit of a frame's first byte: set on the first frame of a
/// compressed message.
pub(crate) const RSV1: u8 = 0x40;

/// The tail a sync flush ends with, removed by the sender and appended
/// again before inflating (RFC 7692 §7.2.1, §7.2.2).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// How a connection that sent invalid compressed data is closed: the
/// message is not what its frames claim (1007, like invalid UTF-8).
pub(crate) const INVALID_DATA: CloseReason =
    CloseReason::new(protocol::close::INVALID_PAYLOAD, "invalid compressed data");

/// The largest window (2^15 bytes), what the server compresses with.
pub(crate) const MAX_WINDOW_BITS: u8 = 15;

/// zlib level for outbound messages. 1 (zlib-rs's fast strategy): the
/// publishing shard pays for every message; measured on Autobahn 12.2.16
/// (1000 x 128 KiB) the server spent 2.9 s of CPU at level 1 against 4.5 s
/// at level 6, and JSON still shrinks 3-5 times.
const LEVEL: u32 = 1;

/// Whether the server offers permessage-deflate (`--compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CompressionMode {
    /// Never negotiate the extension.
    Off,
    /// Accept a client's permessage-deflate offer.
    #[default]
    On,
}

/// Default of `--compression-min-size`: messages shorter than this go
/// uncompressed (deflate of a few dozen bytes grows them, for nothing).
pub const DEFAULT_COMPRESSION_MIN_SIZE: usize = 256;

/// What a connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Negotiated {
    /// The client's `server_max_window_bits` (15 when it set none): the
    /// largest message it is sent compressed is 2^this bytes.
    pub(crate) server_window_bits: u8,
    /// Window the client compresses with (what the inflater needs).
    pub(crate) client_window_bits: u8,
    /// The client starts every message from a fresh state: its inflater
    /// can be dropped between messages.
    pub(crate) client_no_context_takeover: bool,
}

impl Negotiated {
    /// The window (bits) of the encoding this client is sent of a message
    /// whose plain frame is `frame`: the common 15-bit one when its own
    /// window covers the whole payload (no match can reach further back).
    pub(crate) fn encoding(&self, frame: &[u8]) -> u8 {
        if window_covers(self.server_window_bits, frame) {
            MAX_WINDOW_BITS
        } else {
            self.server_window_bits
        }
    }
}

/// Whether a `bits` window covers the whole payload of `frame`.
pub(crate) fn window_covers(bits: u8, frame: &[u8]) -> bool {
    bits >= MAX_WINDOW_BITS || frame.len() - server_header_len(frame) <= 1 << bits
}

/// Smallest window the server compresses with: zlib's raw deflate has no
/// 8-bit window, so an offer asking for `server_max_window_bits=8` is
/// declined.
pub(crate) const MIN_WINDOW_BITS: u8 = 9;

/// One offer's parameters, before deciding.
#[derive(Debug, Default)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value.
    client_max_window_bits: Option<Option<u8>>,
}

/// Parses a window-bits value (RFC 7692 §7.1.2.1: 8 to 15, no leading
/// zero, optionally quoted).
fn window_bits(value: &str) -> Option<u8> {
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    if value.len() > 2 || value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|b| (8..=15).contains(b))
}

/// Parses the parameters of one permessage-deflate offer; `None` when it
/// has one we do not know, one twice, or a bad value (such an offer is
/// declined, RFC 7692 §7.1).
fn parse_offer<'a>(params: impl Iterator<Item = &'a str>) -> Option<Offer> {
    let mut offer = Offer::default();
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (param.trim(), None),
        };
        match (name.to_ascii_lowercase().as_str(), value) {
            ("server_no_context_takeover", None) if !offer.server_no_context_takeover => {
                offer.server_no_context_takeover = true;
            }
            ("client_no_context_takeover", None) if !offer.client_no_context_takeover => {
                offer.client_no_context_takeover = true;
            }
            ("server_max_window_bits", Some(v)) if offer.server_max_window_bits.is_none() => {
                let bits = window_bits(v)?;
                if bits < MIN_WINDOW_BITS {
                    return None;
                }
                offer.server_max_window_bits = Some(bits);
            }
            ("client_max_window_bits", v) if offer.client_max_window_bits.is_none() => {
                let bits = match v {
                    None => None,
                    Some(v) => Some(window_bits(v)?),
                };
                offer.client_max_window_bits = Some(bits);
            }
            _ => return None,
        }
    }
    Some(offer)
}

/// Chooses among a client's `Sec-WebSocket-Extensions` values: the first
/// permessage-deflate offer the server can accept, and the response
/// header value for it. `None`: no acceptable offer (the upgrade goes on
/// without the extension).
pub(crate) fn negotiate<'a>(
    headers: impl Iterator<Item = &'a str>,
) -> Option<(Negotiated, String)> {
    for offer in headers.flat_map(|h| h.split(',')) {
        let mut parts = offer.split(';');
        let name = parts.next().unwrap_or_default().trim();
        if !name.eq_ignore_ascii_case(EXTENSION) {
            continue;
        }
        let Some(offer) = parse_offer(parts.filter(|p| !p.trim().is_empty())) else {
            continue;
        };
        // Always: every outbound message from a fresh state (§7.1.1.1
        // lets the server answer it unasked).
        let mut answer = format!("{EXTENSION}; server_no_context_takeover");
        if offer.client_no_context_takeover {
            answer.push_str("; client_no_context_takeover");
        }
        let server_window_bits = match offer.server_max_window_bits {
            Some(bits) => {
                answer.push_str(&format!("; server_max_window_bits={bits}"));
                bits
            }
            None => MAX_WINDOW_BITS,
        };
        // With a value the client tells the window it will use at most;
        // answering it lets the inflater allocate no more (§7.1.2.2).
        let client_window_bits = match offer.client_max_window_bits {
            Some(Some(bits)) => {
                answer.push_str(&format!("; client_max_window_bits={bits}"));
                bits
            }
            _ => MAX_WINDOW_BITS,
        };
        let negotiated = Negotiated {
            server_window_bits,
            // flate2 inflates with 9 bits at least, which reads 8-bit streams.
            client_window_bits: client_window_bits.max(9),
            client_no_context_takeover: offer.client_no_context_takeover,
        };
        return Some((negotiated, answer));
    }
    None
}

thread_local! {
    /// The shard's compressors, one per window size (9 to 15 bits) used,
    /// each reset before every message.
    static COMPRESSORS: RefCell<[Option<Box<Compress>>; 7]> = RefCell::default();
}

/// The compressed frame of `frame` (a complete single-frame server message,
/// text or binary) with RSV1 set, with a window of `bits` (9 to 15), if its
/// payload is at least `min_size` bytes.
pub(crate) fn compress_frame(frame: &[u8], min_size: usize, bits: u8) -> Option<Bytes> {
    let head = server_header_len(frame);
    let payload = &frame[head..];
    if payload.len() < min_size {
        return None;
    }
    let opcode = match frame[0] & 0x0f {
        1 => protocol::frame::OpCode::Text,
        2 => protocol::frame::OpCode::Binary,
        _ => return None,
    };
    let mut out = Vec::with_capacity(MAX_SERVER_HEADER + payload.len() / 2 + 64);
    out.resize(MAX_SERVER_HEADER, 0);
    COMPRESSORS.with_borrow_mut(|all| -> Option<()> {
        let bits = bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
        let z = all[usize::from(bits - MIN_WINDOW_BITS)].get_or_insert_with(|| {
            Box::new(Compress::new_with_window_bits(
                Compression::new(LEVEL),
                false,
                bits,
            ))
        });
        z.reset();
        loop {
            let consumed = z.total_in() as usize;
            out.reserve(64.max(payload.len() / 4));
            z.compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
                .ok()?;
            // Done once all input is in and the flush left room to spare.
            if z.total_in() as usize == payload.len() && out.len() < out.capacity() {
                return Some(());
            }
        }
    })?;
    if !out.ends_with(&SYNC_TAIL) {
        return None;
    }
    out.truncate(out.len() - SYNC_TAIL.len());
    // Sent compressed even if it grew: past the minimum size only
    // incompressible data does, by a few bytes (stored blocks).
    let len = out.len() - MAX_SERVER_HEADER;
    let mut head = [0u8; MAX_SERVER_HEADER];
    let n = protocol::frame::encode_server_header(opcode, len, &mut head);
    head[0] |= RSV1;
    out[MAX_SERVER_HEADER - n..MAX_SERVER_HEADER].copy_from_slice(&head[..n]);
    Some(Bytes::from(out).slice(MAX_SERVER_HEADER - n..))
}

/// Inflates the compressed messages of one connection, within the size
/// limit. Created at a connection's first compressed message; dropped
/// between messages when the client does not take its context over.
pub(crate) struct Inflater {
    z: Decompress,
    /// The stream reached a final block: the rest of the message is ignored.
    ended: bool,
    /// The context is forgotten after each message.
    no_context_takeover: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("ended", &self.ended)
            .finish()
    }
}

/// Output is inflated in steps of at most this many bytes, into a buffer
/// never grown past the limit (plus one byte, which proves a bomb).
const INFLATE_STEP: usize = 16 * 1024;

impl Inflater {
    pub(crate) fn new(deflate: Negotiated) -> Self {
        Self {
            z: Decompress::new_with_window_bits(false, deflate.client_window_bits),
            ended: false,
            no_context_takeover: deflate.client_no_context_takeover,
        }
    }

    /// Inflates `input` (part of a compressed message) onto `out`, whose
    /// first `skip` bytes are not payload; with `last`, the sync tail too.
    /// Fails with 1009 as soon as the payload would pass `max` bytes, and
    /// with 1007 on invalid data.
    pub(crate) fn inflate(
        &mut self,
        input: &[u8],
        last: bool,
        out: &mut BytesMut,
        skip: usize,
        max: usize,
    ) -> Result<(), CloseReason> {
        self.feed(input, out, skip, max)?;
        if last {
            self.feed(&SYNC_TAIL, out, skip, max)?;
        }
        Ok(())
    }

    fn feed(
        &mut self,
        input: &[u8],
        out: &mut BytesMut,
        skip: usize,
        max: usize,
    ) -> Result<(), CloseReason> {
        let mut at = 0;
        while at < input.len() && !self.ended {
            let produced = out.len() - skip;
            // Room for one byte past the limit: producing it proves the
            // message too big.
            let room = (max + 1 - produced.min(max + 1)).min(INFLATE_STEP);
            if room == 0 {
                return Err(CloseReason::MESSAGE_TOO_BIG);
            }
            let start = out.len();
            if out.capacity() - start < room {
                // Grow by doubling, but never past the limit (which
                // `reserve` could: it doubles whatever the need).
                let want = (out.capacity() * 2).clamp(start + room, skip + max + 1);
                let mut grown = BytesMut::with_capacity(want);
                grown.extend_from_slice(out);
                *out = grown;
            }
            out.resize(start + room, 0);
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let status = self
                .z
                .decompress(&input[at..], &mut out[start..], FlushDecompress::None);
            let read = (self.z.total_in() - in0) as usize;
            let wrote = (self.z.total_out() - out0) as usize;
            out.truncate(start + wrote);
            at += read;
            match status {
                Err(_) => return Err(INVALID_DATA),
                Ok(Status::StreamEnd) => self.ended = true,
                Ok(_) => {}
            }
            if out.len() - skip > max {
                return Err(CloseReason::MESSAGE_TOO_BIG);
            }
            if read == 0 && wrote < room {
                // Needs more input than this frame had.
                break;
            }
        }
        Ok(())
    }

    /// After a message: forgets the context when the client does not take
    /// it over, or when the message ended the stream (a final block).
    pub(crate) fn finish_message(&mut self) {
        if self.no_context_takeover || self.ended {
            self.z.reset(false);
            self.ended = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::frame::{encode_server_frame, OpCode};

    #[test]
    fn window_bits_values_follow_the_rfc_grammar() {
        for (v, want) in [
            ("8", Some(8)),
            ("15", Some(15)),
            ("\"10\"", Some(10)),
            ("16", None),
        ] {
            assert_eq!(window_bits(v), want, "{v}");
        }
        for v in ["", "08", "7", "1x", "\"9", "150"] {
            assert_eq!(window_bits(v), None, "{v}");
        }
    }

    #[test]
    fn the_first_acceptable_offer_wins() {
        let (n, answer) = negotiate(
            ["x-webkit-deflate-frame", "permessage-deflate; foo, permessage-deflate; client_no_context_takeover; server_max_window_bits=12"]
                .into_iter(),
        )
        .unwrap();
        assert_eq!(
            answer,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12"
        );
        assert_eq!((n.server_window_bits, n.client_window_bits), (12, 15));
        assert!(n.client_no_context_takeover);
        assert_eq!(
            negotiate(["permessage-deflate; server_max_window_bits=8"].into_iter()),
            None
        );
        assert_eq!(negotiate(std::iter::empty()), None);
    }

    fn round_trip(payload: &[u8], bits: u8) -> Vec<u8> {
        let frame = encode_server_frame(OpCode::Binary, payload);
        let z = compress_frame(&frame, 0, bits).expect("compressed");
        assert_eq!(z[0], 0x80 | RSV1 | OpCode::Binary as u8);
        let body = &z[server_header_len(&z)..];
        let mut inflater = Inflater::new(Negotiated {
            server_window_bits: 15,
            client_window_bits: bits,
            client_no_context_takeover: true,
        });
        let mut out = BytesMut::new();
        inflater
            .inflate(body, true, &mut out, 0, usize::MAX >> 1)
            .unwrap();
        inflater.finish_message();
        out.to_vec()
    }

    #[test]
    fn compressed_frames_inflate_to_the_payload_at_every_window() {
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("{{\"n\":{}}}", i % 977).into_bytes())
            .collect();
        for bits in [9, 12, 15] {
            assert_eq!(round_trip(&text, bits), text, "{bits} bits");
        }
        assert_eq!(round_trip(b"", 15), b"");
        // Below the minimum size: not compressed.
        let small = encode_server_frame(OpCode::Text, b"hi");
        assert!(compress_frame(&small, 3, 15).is_none());
    }

    #[test]
    fn inflating_stops_at_the_limit() {
        let zeros = vec![0u8; 1 << 22];
        let frame = encode_server_frame(OpCode::Binary, &zeros);
        let z = compress_frame(&frame, 0, 15).unwrap();
        let body = &z[server_header_len(&z)..];
        let mut inflater = Inflater::new(Negotiated {
            server_window_bits: 15,
            client_window_bits: 15,
            client_no_context_takeover: false,
        });
        let mut out = BytesMut::new();
        let limit = 100_000;
        assert_eq!(
            inflater.inflate(body, true, &mut out, 0, limit),
            Err(CloseReason::MESSAGE_TOO_BIG)
        );
        assert!(
            out.capacity() <= limit + 2 * INFLATE_STEP,
            "{}",
            out.capacity()
        );
        let mut fresh = Inflater::new(Negotiated {
            server_window_bits: 15,
            client_window_bits: 15,
            client_no_context_takeover: false,
        });
        assert_eq!(
            fresh.inflate(&[0xff; 8], true, &mut BytesMut::new(), 0, limit),
            Err(INVALID_DATA)
        );
    }
}
