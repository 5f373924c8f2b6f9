//! A minimal WebSocket *client reader* for subscribers, so that the load
//! generator costs less per delivered message than the server it measures.
//!
//! tokio-tungstenite costs several hundred nanoseconds per message (a frame
//! object, a `Bytes` payload, the `Stream` machinery and its waker proxies);
//! with 100 subscribers at millions of deliveries per second that made the
//! tool, not the server, the bottleneck. Here a subscriber reads straight
//! into one large buffer and parses frames in place: a read system call
//! yields dozens of messages, each a slice of the buffer, no allocation.
//!
//! Scope: what a broadcast server sends a client (RFC 6455): unmasked
//! frames, data messages possibly fragmented, ping (answered with a masked
//! pong), pong (ignored) and close. The handshake is a plain HTTP/1.1
//! upgrade, checked with tungstenite's accept-key derivation. Publishers
//! (few connections, they write) keep using tokio-tungstenite. Frame
//! headers are decoded by [`protocol::frame::decode_header`]; this module
//! adds what a client must check on top (no reserved bits, no mask).
//!
//! The connection is generic over its byte stream, so this module depends
//! on no other of load-test's: `conn` opens the stream and hands it here.
//!
//! `--compression`: the upgrade offers permessage-deflate
//! ([`protocol::deflate::CLIENT_OFFER`]); when the server accepts, RSV1 is
//! allowed on the first frame of a data message, and such a message is
//! inflated (whole, or only its first bytes: [`Deflate::Prefix`]) into a
//! buffer of the connection before it is handed out. Without the
//! extension RSV1 stays a protocol error.

use std::io;

use anyhow::{bail, Context, Result};
use protocol::close::NO_STATUS;
use protocol::deflate::{Inflater, CLIENT_OFFER, RSV1};
use protocol::frame::{decode_header, OpCode, MAX_HEADER};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Largest HTTP response head accepted during the handshake.
const MAX_HEAD: usize = 16 * 1024;

/// What a subscriber does about permessage-deflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Deflate {
    /// No offer: RSV1 is a protocol error.
    #[default]
    Off,
    /// Offer it and inflate every compressed message whole.
    Full,
    /// Offer it and inflate only the first `n` bytes of each compressed
    /// message (needs `server_no_context_takeover`, else `Full`): what
    /// the subscriber decodes costs `n` bytes of inflation, whatever the
    /// message's size, and the rest is neither inflated nor checked.
    Prefix(usize),
}

/// A connection's inflation, once the server accepted the extension.
struct Inflating {
    inflater: Inflater,
    /// Inflate only this many bytes of each message (None: all).
    prefix: Option<usize>,
    /// The last inflated message.
    out: Vec<u8>,
}

/// One thing read from the server.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event<'a> {
    /// A complete data message (binary or text), borrowed from the buffer.
    Data { text: bool, payload: &'a [u8] },
    /// The server's close frame: its code (1005 when it has none).
    Close(u16),
}

/// Where a parsed frame's payload is.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// A data message: payload at `buf[start..end]`.
    Data {
        text: bool,
        start: usize,
        end: usize,
    },
    /// A fragmented message completed in `frag`.
    Assembled {
        text: bool,
    },
    /// A compressed message, inflated into `inflating.out`.
    Inflated {
        text: bool,
    },
    /// A frame consumed with nothing to report (pong, non-final fragment, ping).
    Nothing,
    Close(u16),
    /// Not a whole frame in the buffer yet; at least this many bytes are needed.
    Need(usize),
}

/// A subscriber's connection after the handshake, over byte stream `S`.
pub(crate) struct RawWs<S> {
    stream: S,
    buf: Vec<u8>,
    /// Unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    max_message: usize,
    /// A fragmented message being assembled (opcode, bytes, compressed);
    /// the opcode becomes `Continuation` once the whole message was handed
    /// out.
    frag: Option<(OpCode, Vec<u8>, bool)>,
    /// The server accepted permessage-deflate.
    inflating: Option<Inflating>,
    /// Bytes read from the socket after the upgrade's head (the wire bytes
    /// of what the server sent, compressed or not).
    read_bytes: u64,
    /// Pongs (and our close) owed to the server, written by `fill`/`flush`.
    out: Vec<u8>,
    mask_seed: u32,
}

/// Sends the upgrade request for `host_port` and `path` on `stream` and
/// checks the `101` answer; returns the connection with any bytes read past
/// the response head already buffered. With `subprotocol`, offers it in
/// `Sec-WebSocket-Protocol` and fails unless the server selects it. Unless
/// `deflate` is `Off`, offers permessage-deflate and fails on an answer
/// the offer does not allow (RFC 7692 §7.1).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host_port: &str,
    path: &str,
    subprotocol: Option<&str>,
    deflate: Deflate,
    buf_size: usize,
    max_message: usize,
) -> Result<RawWs<S>> {
    let key = generate_key();
    let mut offer = subprotocol
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    if deflate != Deflate::Off {
        offer += &format!("Sec-WebSocket-Extensions: {CLIENT_OFFER}\r\n");
    }
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .context("send upgrade request")?;
    let mut buf = vec![0u8; buf_size.max(MAX_HEAD)];
    let mut end = 0;
    let head_len = loop {
        if let Some(i) = find(&buf[..end], b"\r\n\r\n") {
            break i + 4;
        }
        if end == MAX_HEAD {
            bail!("WebSocket handshake: response head longer than {MAX_HEAD} bytes");
        }
        let n = stream
            .read(&mut buf[end..MAX_HEAD])
            .await
            .context("read upgrade response")?;
        if n == 0 {
            bail!("WebSocket handshake: connection closed before the response");
        }
        end += n;
    };
    let (selected, extensions) =
        check_response(&buf[..head_len], &derive_accept_key(key.as_bytes()))?;
    check_subprotocol(subprotocol, selected.as_deref())?;
    let inflating = match (deflate, extensions) {
        (Deflate::Off, Some(e)) if !e.trim().is_empty() => {
            bail!("the server answered extensions `{e}`, none was offered")
        }
        (Deflate::Off, _) => None,
        (_, e) => protocol::deflate::accepted(e.as_deref())?.map(|accepted| Inflating {
            inflater: Inflater::new(accepted),
            prefix: match deflate {
                Deflate::Prefix(n) if accepted.server_no_context_takeover => Some(n),
                _ => None,
            },
            out: Vec::new(),
        }),
    };
    buf.truncate(buf_size.max(end));
    Ok(RawWs {
        stream,
        buf,
        start: head_len,
        end,
        max_message,
        frag: None,
        inflating,
        read_bytes: (end - head_len) as u64,
        out: Vec::new(),
        mask_seed: key.bytes().fold(0x9e37_79b9, |h, b| {
            h.rotate_left(5) ^ u32::from(b).wrapping_mul(0x0100_0193)
        }),
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Checks a `101 Switching Protocols` head with the expected accept key;
/// returns the `Sec-WebSocket-Protocol` the server selected and its
/// `Sec-WebSocket-Extensions` answer, if any.
fn check_response(head: &[u8], accept: &str) -> Result<(Option<String>, Option<String>)> {
    let head = std::str::from_utf8(head).context("WebSocket handshake: response is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if code != "101" {
        bail!("WebSocket handshake: server answered `{status}`");
    }
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    };
    let selected = header("sec-websocket-protocol").map(str::to_string);
    let extensions = header("sec-websocket-extensions").map(str::to_string);
    match header("sec-websocket-accept") {
        Some(v) if v == accept => Ok((selected, extensions)),
        Some(v) => bail!("WebSocket handshake: wrong Sec-WebSocket-Accept `{v}`"),
        None => bail!("WebSocket handshake: no Sec-WebSocket-Accept header"),
    }
}

/// Fails unless the server selected what we offered (and nothing when we
/// offered nothing).
pub(crate) fn check_subprotocol(offered: Option<&str>, selected: Option<&str>) -> Result<()> {
    match (offered, selected) {
        (Some(o), Some(s)) if o == s => Ok(()),
        (Some(o), None) => bail!(
            "the server did not select subprotocol {o} (no Sec-WebSocket-Protocol in its answer: \
             a plain broadcast server?)"
        ),
        (Some(o), Some(s)) => bail!("the server selected subprotocol `{s}` instead of {o}"),
        (None, Some(s)) => bail!("the server selected subprotocol `{s}`, which was not offered"),
        (None, None) => Ok(()),
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A server frame's header at the start of `b`, read as a frame header:
/// fin, opcode, header length, payload length, and whether RSV1 is set.
struct Head {
    fin: bool,
    opcode: OpCode,
    hlen: usize,
    len: usize,
    compressed: bool,
}

/// The frame header at the start of `b`, or Err(bytes needed, at most)
/// when it is not all there. Beyond the framing, checks what a client
/// requires of a server's frame: RSV1 only with `deflate` (the extension
/// was negotiated) and only on a message's first frame (§6.1), no other
/// reserved bit, no mask.
fn frame_header(b: &[u8], deflate: bool) -> io::Result<Result<Head, usize>> {
    let Some(h) = decode_header(b).map_err(|e| invalid(e.to_string()))? else {
        return Ok(Err(MAX_HEADER));
    };
    let rsv1 = h.rsv == RSV1;
    let first_of_message = matches!(h.opcode, OpCode::Text | OpCode::Binary);
    if h.rsv != 0 && !(rsv1 && deflate && first_of_message) {
        return Err(invalid(if deflate {
            "reserved bits set (RSV1 is only for a message's first frame)"
        } else {
            "reserved bits set (no extension was negotiated)"
        }));
    }
    if h.mask.is_some() {
        return Err(invalid("masked frame from the server"));
    }
    let len = usize::try_from(h.payload_len).map_err(|_| invalid("frame too long"))?;
    Ok(Ok(Head {
        fin: h.fin,
        opcode: h.opcode,
        hlen: h.header_len,
        len,
        compressed: rsv1,
    }))
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawWs<S> {
    /// The next event already in the buffer, without reading; None when more
    /// bytes are needed (then call [`RawWs::fill`]).
    pub(crate) fn try_next(&mut self) -> io::Result<Option<Event<'_>>> {
        loop {
            match self.parse()? {
                Parsed::Need(_) => return Ok(None),
                Parsed::Nothing => continue,
                Parsed::Data { text, start, end } => {
                    return Ok(Some(Event::Data {
                        text,
                        payload: &self.buf[start..end],
                    }))
                }
                Parsed::Assembled { text } => {
                    let payload = self.frag.as_ref().map_or(&[][..], |(_, v, _)| v.as_slice());
                    return Ok(Some(Event::Data { text, payload }));
                }
                Parsed::Inflated { text } => {
                    let payload = self
                        .inflating
                        .as_ref()
                        .map_or(&[][..], |i| i.out.as_slice());
                    return Ok(Some(Event::Data { text, payload }));
                }
                Parsed::Close(code) => return Ok(Some(Event::Close(code))),
            }
        }
    }

    fn parse(&mut self) -> io::Result<Parsed> {
        if matches!(self.frag, Some((OpCode::Continuation, ..))) {
            // The previous event was an assembled message: release it.
            self.frag = None;
        }
        let avail = &self.buf[self.start..self.end];
        let Head {
            fin,
            opcode,
            hlen,
            len,
            compressed,
        } = match frame_header(avail, self.inflating.is_some())? {
            Ok(h) => h,
            Err(need) => return Ok(Parsed::Need(need)),
        };
        if len > self.max_message {
            return Err(invalid(format!(
                "frame of {len} bytes exceeds the limit of {}",
                self.max_message
            )));
        }
        if avail.len() < hlen + len {
            return Ok(Parsed::Need(hlen + len));
        }
        let (start, end) = (self.start + hlen, self.start + hlen + len);
        self.start = end;
        match opcode {
            OpCode::Text | OpCode::Binary if self.frag.is_some() => {
                Err(invalid("new message inside a fragmented one"))
            }
            OpCode::Text | OpCode::Binary if fin && compressed => {
                let text = opcode == OpCode::Text;
                self.inflate(start, end, None)?;
                Ok(Parsed::Inflated { text })
            }
            OpCode::Text | OpCode::Binary if fin => Ok(Parsed::Data {
                text: opcode == OpCode::Text,
                start,
                end,
            }),
            OpCode::Text | OpCode::Binary => {
                self.frag = Some((opcode, self.buf[start..end].to_vec(), compressed));
                Ok(Parsed::Nothing)
            }
            OpCode::Continuation => {
                let Some((op, data, compressed)) = self.frag.as_mut() else {
                    return Err(invalid("continuation frame without a message"));
                };
                if data.len() + len > self.max_message {
                    return Err(invalid("fragmented message exceeds the limit"));
                }
                data.extend_from_slice(&self.buf[start..end]);
                if !fin {
                    return Ok(Parsed::Nothing);
                }
                let text = *op == OpCode::Text;
                // Marks the message as handed out; the next parse drops it.
                *op = OpCode::Continuation;
                if *compressed {
                    let data = std::mem::take(data);
                    self.inflate(0, data.len(), Some(&data))?;
                    return Ok(Parsed::Inflated { text });
                }
                Ok(Parsed::Assembled { text })
            }
            OpCode::Ping => {
                let payload = self.buf[start..end].to_vec();
                self.queue(OpCode::Pong, &payload);
                Ok(Parsed::Nothing)
            }
            OpCode::Pong => Ok(Parsed::Nothing),
            OpCode::Close => match len {
                0 => Ok(Parsed::Close(NO_STATUS)),
                1 => Err(invalid("close frame with a 1-byte payload")),
                _ => Ok(Parsed::Close(u16::from_be_bytes([
                    self.buf[start],
                    self.buf[start + 1],
                ]))),
            },
        }
    }

    /// Inflates one compressed message, `buf[start..end]` (or `from`, an
    /// assembled one), into `inflating.out`; a message that does not
    /// inflate within the limit is an error of the connection.
    fn inflate(&mut self, start: usize, end: usize, from: Option<&[u8]>) -> io::Result<()> {
        let Some(z) = self.inflating.as_mut() else {
            return Err(invalid("compressed message without the extension"));
        };
        let compressed = from.unwrap_or(&self.buf[start..end]);
        z.out.clear();
        match z.prefix {
            Some(n) => z.inflater.inflate_prefix(compressed, n, &mut z.out),
            None => z.inflater.inflate(compressed, self.max_message, &mut z.out),
        }
        .map_err(|e| invalid(e.to_string()))
    }

    /// Whether the server accepted permessage-deflate.
    pub(crate) fn compressed(&self) -> bool {
        self.inflating.is_some()
    }

    /// Whether compressed messages are handed out cut to their first bytes
    /// ([`Deflate::Prefix`], accepted with `server_no_context_takeover`):
    /// their length is then not the message's.
    pub(crate) fn cuts_messages(&self) -> bool {
        self.inflating.as_ref().is_some_and(|i| i.prefix.is_some())
    }

    /// Bytes read from the socket since the upgrade (frames as sent).
    pub(crate) fn read_bytes(&self) -> u64 {
        self.read_bytes
    }

    /// Writes owed frames (pongs), then reads more bytes; Ok(false) at EOF.
    pub(crate) async fn fill(&mut self) -> io::Result<bool> {
        self.flush().await?;
        let need = self.parse_need()?;
        // Make room: move the unparsed tail to the front, grow for a big frame.
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        if self.end == self.buf.len() {
            let double = self.buf.len() * 2;
            self.buf.resize(double, 0);
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        self.read_bytes += n as u64;
        Ok(n > 0)
    }

    /// Bytes the frame at the front needs in all (capped at the message limit).
    fn parse_need(&self) -> io::Result<usize> {
        let avail = &self.buf[self.start..self.end];
        Ok(match frame_header(avail, self.inflating.is_some())? {
            Ok(h) => h.hlen + h.len.min(self.max_message),
            Err(n) => n,
        })
    }

    /// Writes what is owed to the server.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Queues a masked client frame.
    fn queue(&mut self, opcode: OpCode, payload: &[u8]) {
        self.mask_seed ^= self.mask_seed << 13;
        self.mask_seed ^= self.mask_seed >> 17;
        self.mask_seed ^= self.mask_seed << 5;
        let mask = self.mask_seed.to_be_bytes();
        self.out.push(0x80 | opcode as u8);
        // Control frames only: payload <= 125 bytes.
        let len = payload.len().min(protocol::MAX_CONTROL_PAYLOAD);
        self.out.push(0x80 | len as u8);
        self.out.extend_from_slice(&mask);
        self.out.extend(
            payload
                .iter()
                .take(len)
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4]),
        );
    }

    /// Sends our close frame with `code` (flushing pongs first).
    pub(crate) async fn send_close(&mut self, code: u16) -> io::Result<()> {
        self.queue(OpCode::Close, &code.to_be_bytes());
        self.flush().await
    }

    /// After a close was sent or received: reads (and discards) until the
    /// server ends the connection, or `limit` passes.
    pub(crate) async fn finish(mut self, limit: std::time::Duration) {
        let _ = tokio::time::timeout(limit, async {
            let _ = self.flush().await;
            self.start = 0;
            self.end = 0;
            while let Ok(n) = self.stream.read(&mut self.buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
#[path = "rawws_tests.rs"]
mod tests;
