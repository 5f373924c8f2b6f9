//! The client's side of permessage-deflate (RFC 7692): the offer a client
//! sends, the check of the server's answer, and the inflation of the
//! compressed messages it receives.
//!
//! Our clients offer the extension so that a server may send them
//! compressed messages; they never compress what they send (an endpoint
//! may always send a message uncompressed, §6), so they can promise
//! `client_no_context_takeover`, which lets the server keep no inflate
//! state for them between messages. Behind the `deflate` feature (flate2
//! over zlib-rs, pure Rust): the browser client does not need it, its
//! browser negotiates the extension itself.

use flate2::{Decompress, FlushDecompress, Status};

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";

/// What our clients offer: the extension, with the promise never to take
/// a compression context over (they send uncompressed messages).
pub const CLIENT_OFFER: &str = "permessage-deflate; client_no_context_takeover";

/// The RSV1 bit of a frame's first byte: set on the first frame of a
/// compressed message.
pub const RSV1: u8 = 0x40;

/// The tail a sync flush ends with, removed by the sender and appended
/// again before inflating (§7.2.2).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What the server accepted, from its `Sec-WebSocket-Extensions` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Each message the server sends starts from a fresh state: a message
    /// inflates on its own, and the inflater keeps nothing between them.
    pub server_no_context_takeover: bool,
    /// The window (bits) the server compresses with: 15 unless it said less.
    pub server_window_bits: u8,
}

/// Why a server's answer is refused: the client must fail the connection
/// (§7.1): it names an extension or a parameter not offered, or repeats one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAnswer(pub String);

impl std::fmt::Display for BadAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad Sec-WebSocket-Extensions answer: {}", self.0)
    }
}

impl std::error::Error for BadAnswer {}

/// Reads the server's `Sec-WebSocket-Extensions` values (`None` or empty:
/// the extension was not accepted). Only permessage-deflate was offered,
/// so any other extension, or a parameter our offer does not allow, is a
/// [`BadAnswer`].
pub fn accepted<'a>(
    answers: impl IntoIterator<Item = &'a str>,
) -> Result<Option<Accepted>, BadAnswer> {
    let mut found = None;
    for ext in answers.into_iter().flat_map(|h| h.split(',')) {
        let mut parts = ext.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        if name.is_empty() {
            continue;
        }
        if !name.eq_ignore_ascii_case(EXTENSION) {
            return Err(BadAnswer(format!("extension {name:?} was not offered")));
        }
        if found.is_some() {
            return Err(BadAnswer(format!("{EXTENSION} accepted twice")));
        }
        let mut ok = Accepted {
            server_no_context_takeover: false,
            server_window_bits: 15,
        };
        let (mut seen_server_nct, mut seen_client_nct, mut seen_bits) = (false, false, false);
        for param in parts.filter(|p| !p.is_empty()) {
            let (key, value) = match param.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
                None => (param, None),
            };
            let repeated = match (key.to_ascii_lowercase().as_str(), value) {
                ("server_no_context_takeover", None) => {
                    ok.server_no_context_takeover = true;
                    std::mem::replace(&mut seen_server_nct, true)
                }
                // We offered it: the server may repeat it back.
                ("client_no_context_takeover", None) => {
                    std::mem::replace(&mut seen_client_nct, true)
                }
                ("server_max_window_bits", Some(v)) => {
                    ok.server_window_bits = v
                        .parse()
                        .ok()
                        .filter(|b| (8..=15).contains(b) && !v.starts_with('0'))
                        .ok_or_else(|| BadAnswer(format!("server_max_window_bits={v}")))?;
                    std::mem::replace(&mut seen_bits, true)
                }
                // Not offered: the server must not send it (§7.1.2.2).
                _ => return Err(BadAnswer(format!("parameter {param:?} was not offered"))),
            };
            if repeated {
                return Err(BadAnswer(format!("parameter {key:?} repeated")));
            }
        }
        found = Some(ok);
    }
    Ok(found)
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit (a client closes with 1009).
    TooBig,
    /// It is not a valid deflate stream (a client closes with 1007).
    Invalid,
}

impl std::fmt::Display for InflateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TooBig => "compressed message inflates past the size limit",
            Self::Invalid => "invalid compressed data",
        })
    }
}

impl std::error::Error for InflateError {}

/// Inflates the compressed messages one connection receives, in order.
pub struct Inflater {
    z: Decompress,
    /// The server starts each message afresh: reset after every message.
    reset_each: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("reset_each", &self.reset_each)
            .finish()
    }
}

impl Inflater {
    /// An inflater for what the server `accepted`.
    pub fn new(accepted: Accepted) -> Self {
        Self {
            // flate2 inflates with 9 bits at least, which reads 8-bit streams.
            z: Decompress::new_with_window_bits(false, accepted.server_window_bits.max(9)),
            reset_each: accepted.server_no_context_takeover,
        }
    }

    /// Appends the payload of one whole compressed message (its frames'
    /// payloads joined, RSV1 having been set on the first) to `out`,
    /// failing once it would pass `max` bytes.
    pub fn inflate(
        &mut self,
        compressed: &[u8],
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), InflateError> {
        let start = out.len();
        let result = self.feed(compressed, start, max, out).and_then(|ended| {
            if ended {
                Ok(true)
            } else {
                self.feed(&SYNC_TAIL, start, max, out)
            }
        });
        match result {
            Ok(ended) => {
                if self.reset_each || ended {
                    self.z.reset(false);
                }
                Ok(())
            }
            Err(e) => {
                // The context is lost; a caller closes the connection.
                self.z.reset(false);
                Err(e)
            }
        }
    }

    /// Appends only the first `n` bytes of one compressed message's payload
    /// (fewer if it is shorter) to `out`, and drops the rest: the cost is
    /// that of inflating `n` bytes, not the message. Only for a server that
    /// said `server_no_context_takeover`, whose messages each inflate on
    /// their own; the rest of the message is not checked.
    ///
    /// # Errors
    /// [`InflateError::Invalid`] when the first bytes are not valid deflate
    /// data, or when the server takes its context over (a later message
    /// could refer to the part not inflated).
    pub fn inflate_prefix(
        &mut self,
        compressed: &[u8],
        n: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), InflateError> {
        if !self.reset_each {
            return Err(InflateError::Invalid);
        }
        let start = out.len();
        out.resize(start + n, 0);
        let mut done = start;
        for input in [compressed, &SYNC_TAIL[..]] {
            let mut at = 0;
            while done < start + n {
                let (in0, out0) = (self.z.total_in(), self.z.total_out());
                let status =
                    self.z
                        .decompress(&input[at..], &mut out[done..], FlushDecompress::None);
                let read = (self.z.total_in() - in0) as usize;
                let wrote = (self.z.total_out() - out0) as usize;
                at += read;
                done += wrote;
                match status {
                    Err(_) => {
                        out.truncate(start);
                        self.z.reset(false);
                        return Err(InflateError::Invalid);
                    }
                    Ok(Status::StreamEnd) => break,
                    Ok(_) if read == 0 && wrote == 0 => break,
                    Ok(_) => {}
                }
            }
        }
        out.truncate(done);
        self.z.reset(false);
        Ok(())
    }

    /// Feeds `input`; `Ok(true)` when the stream reached its final block.
    fn feed(
        &mut self,
        input: &[u8],
        start: usize,
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, InflateError> {
        let mut at = 0;
        loop {
            let produced = out.len() - start;
            if produced > max {
                return Err(InflateError::TooBig);
            }
            // Room for one byte past the limit: producing it proves the
            // message too big. Steps of about 4 times what is left to read
            // (at least 4 KiB, at most 64 KiB): the room is zeroed first,
            // which for a message of a few KiB would cost more than
            // inflating it if every step were 64 KiB.
            let step = (input.len() - at).saturating_mul(4).clamp(4096, 64 * 1024);
            let room = (max + 1 - produced).min(step);
            let len = out.len();
            out.resize(len + room, 0);
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let status = self
                .z
                .decompress(&input[at..], &mut out[len..], FlushDecompress::None);
            let read = (self.z.total_in() - in0) as usize;
            let wrote = (self.z.total_out() - out0) as usize;
            out.truncate(len + wrote);
            at += read;
            match status {
                Err(_) => return Err(InflateError::Invalid),
                Ok(Status::StreamEnd) => {
                    return if out.len() - start > max {
                        Err(InflateError::TooBig)
                    } else {
                        Ok(true)
                    };
                }
                Ok(_) => {}
            }
            if out.len() - start > max {
                return Err(InflateError::TooBig);
            }
            if at == input.len() && wrote < room {
                return Ok(false);
            }
            if read == 0 && wrote == 0 {
                return Err(InflateError::Invalid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// What a server sends: raw deflate, sync flushed, the tail removed.
    fn compress(payload: &[u8]) -> Vec<u8> {
        let mut z = Compress::new(Compression::new(1), false);
        let mut out = Vec::with_capacity(payload.len() + 64);
        z.compress_vec(payload, &mut out, FlushCompress::Sync)
            .unwrap();
        while out.capacity() == out.len() {
            out.reserve(64);
            z.compress_vec(&[], &mut out, FlushCompress::Sync).unwrap();
        }
        assert!(out.ends_with(&SYNC_TAIL));
        out.truncate(out.len() - 4);
        out
    }

    fn fresh() -> Inflater {
        Inflater::new(Accepted {
            server_no_context_takeover: true,
            server_window_bits: 15,
        })
    }

    #[test]
    fn answers_are_read_as_the_rfc_says() {
        assert_eq!(accepted([]), Ok(None));
        assert_eq!(accepted([""]), Ok(None));
        assert_eq!(
            accepted([
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
            ]),
            Ok(Some(Accepted {
                server_no_context_takeover: true,
                server_window_bits: 15
            }))
        );
        assert_eq!(
            accepted(["permessage-deflate;server_max_window_bits=\"10\""]),
            Ok(Some(Accepted {
                server_no_context_takeover: false,
                server_window_bits: 10
            }))
        );
        for bad in [
            "x-webkit-deflate-frame",
            "permessage-deflate; client_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate, permessage-deflate",
            "permessage-deflate; mystery",
        ] {
            assert!(accepted([bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn messages_inflate_one_after_another() {
        let mut inflater = fresh();
        for n in [0usize, 1, 300, 100_000] {
            let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8 ^ (i / 7) as u8).collect();
            let mut out = b"kept".to_vec();
            inflater
                .inflate(&compress(&payload), 1 << 20, &mut out)
                .unwrap();
            assert_eq!(&out[..4], b"kept");
            assert_eq!(&out[4..], &payload[..], "{n} bytes");
        }
    }

    #[test]
    fn a_prefix_inflates_alone_and_messages_stay_independent() {
        let mut inflater = fresh();
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 13) as u8 + b'a').collect();
        for (payload, n) in [(&big[..], 24), (b"short".as_slice(), 24), (&big[..], 0)] {
            let mut out = b"kept".to_vec();
            inflater
                .inflate_prefix(&compress(payload), n, &mut out)
                .unwrap();
            assert_eq!(&out[4..], &payload[..n.min(payload.len())]);
        }
        // A whole message afterwards still inflates from a fresh state.
        let mut out = Vec::new();
        inflater
            .inflate(&compress(&big), 1 << 20, &mut out)
            .unwrap();
        assert_eq!(out, big);
        assert_eq!(
            inflater.inflate_prefix(&[0xff, 0xff, 0xff, 0xff], 24, &mut Vec::new()),
            Err(InflateError::Invalid)
        );
        // A server that takes its context over: prefixes would lose it.
        let mut takes_over = Inflater::new(Accepted {
            server_no_context_takeover: false,
            server_window_bits: 15,
        });
        assert_eq!(
            takes_over.inflate_prefix(&compress(b"abc"), 2, &mut Vec::new()),
            Err(InflateError::Invalid)
        );
    }

    #[test]
    fn a_bomb_stops_at_the_limit_and_garbage_is_invalid() {
        let bomb = compress(&vec![b'a'; 10 << 20]);
        let mut out = Vec::new();
        assert_eq!(
            fresh().inflate(&bomb, 64 * 1024, &mut out),
            Err(InflateError::TooBig)
        );
        assert!(out.len() <= 64 * 1024 + 1, "{}", out.len());
        let mut inflater = fresh();
        assert_eq!(
            inflater.inflate(&[0xff, 0xff, 0xff, 0xff], 1024, &mut Vec::new()),
            Err(InflateError::Invalid)
        );
        // The inflater is usable again afterwards.
        let mut out = Vec::new();
        inflater
            .inflate(&compress(b"after"), 1024, &mut out)
            .unwrap();
        assert_eq!(out, b"after");
    }
}
