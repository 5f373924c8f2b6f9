//! A hand-rolled WebSocket client for what a well-behaved library refuses
//! to do: writing any frame byte by byte (reserved opcodes and bits,
//! unmasked, fragmented control frames) and checking every frame the server
//! sends back.

use std::time::Duration;

use protocol::frame::{decode_header, OpCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use super::{Server, EVENT_TIMEOUT};

// Opcodes as raw bytes (tests also write reserved ones), from `protocol`.
pub(crate) const OP_CONT: u8 = OpCode::Continuation as u8;
pub(crate) const OP_TEXT: u8 = OpCode::Text as u8;
pub(crate) const OP_BINARY: u8 = OpCode::Binary as u8;
pub(crate) const OP_CLOSE: u8 = OpCode::Close as u8;
pub(crate) const OP_PING: u8 = OpCode::Ping as u8;
pub(crate) const OP_PONG: u8 = OpCode::Pong as u8;

pub(crate) const RSV1: u8 = 0x40;
pub(crate) const RSV2: u8 = 0x20;
pub(crate) const RSV3: u8 = 0x10;

const MASK_KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// Sec-WebSocket-Accept for [`WS_KEY`] (RFC 6455 §1.3).
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Encodes one frame. `mask: true` masks it like a client must.
pub(crate) fn encode_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | rsv | opcode);
    let mask_bit = if mask { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if mask {
        out.extend_from_slice(&MASK_KEY);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK_KEY[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A masked, final frame.
pub(crate) fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(true, 0, opcode, payload, true)
}

/// Close frame payload: code then reason.
pub(crate) fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) fin: bool,
    pub(crate) rsv: u8,
    pub(crate) opcode: u8,
    pub(crate) payload: Vec<u8>,
}

impl Frame {
    /// Code and reason of a close frame (None for an empty close payload).
    pub(crate) fn close_code(&self) -> Option<(u16, String)> {
        assert_eq!(self.opcode, OP_CLOSE, "not a close frame: {self:?}");
        if self.payload.is_empty() {
            return None;
        }
        assert!(self.payload.len() >= 2, "1-byte close payload: {self:?}");
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        let reason = String::from_utf8(self.payload[2..].to_vec())
            .unwrap_or_else(|_| panic!("close reason is not UTF-8: {self:?}"));
        Some((code, reason))
    }
}

/// What reading a frame from the raw socket produced.
#[derive(Debug)]
pub(crate) enum Read {
    Frame(Frame),
    /// The server closed the TCP connection (EOF, or reset).
    Eof,
}

/// A WebSocket client that writes and parses frames by hand.
pub(crate) struct RawClient {
    pub(crate) stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    /// Connects and completes the upgrade handshake.
    pub(crate) async fn connect(server: &Server) -> RawClient {
        let stream = TcpStream::connect(server.addr())
            .await
            .expect("tcp connect");
        Self::handshake(stream, server.port).await
    }

    /// Connects offering `extensions` (a `Sec-WebSocket-Extensions`
    /// value); returns the client and the server's answer to it, if any.
    pub(crate) async fn connect_offering(
        server: &Server,
        extensions: &str,
    ) -> (RawClient, Option<String>) {
        let stream = TcpStream::connect(server.addr())
            .await
            .expect("tcp connect");
        let extra = format!("Sec-WebSocket-Extensions: {extensions}\r\n");
        let (client, head) = Self::handshake_with(stream, server.port, &extra, &[]).await;
        let answer = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-extensions"))
            .map(|(_, v)| v.trim().to_owned());
        (client, answer)
    }

    /// Like [`RawClient::connect`] but with a small receive buffer, so the
    /// kernel holds little on this side for a client that never reads.
    pub(crate) async fn connect_small_rcvbuf(server: &Server, size: u32) -> RawClient {
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(size).unwrap();
        let stream = sock
            .connect(server.addr().parse().unwrap())
            .await
            .expect("tcp connect");
        Self::handshake(stream, server.port).await
    }

    /// Connects and sends `frames` in the same write as the upgrade
    /// request, as a client that does not wait for the answer may.
    pub(crate) async fn connect_sending(server: &Server, frames: &[u8]) -> RawClient {
        let stream = TcpStream::connect(server.addr())
            .await
            .expect("tcp connect");
        Self::handshake_with(stream, server.port, "", frames)
            .await
            .0
    }

    async fn handshake(stream: TcpStream, port: u16) -> RawClient {
        Self::handshake_with(stream, port, "", &[]).await.0
    }

    /// The upgrade with `extra` header lines, and `after` right behind the
    /// request; returns the response head too.
    async fn handshake_with(
        mut stream: TcpStream,
        port: u16,
        extra: &str,
        after: &[u8],
    ) -> (RawClient, String) {
        let mut req = format!(
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
        .into_bytes();
        req.extend_from_slice(after);
        stream.write_all(&req).await.unwrap();
        let mut client = RawClient {
            stream,
            buf: Vec::new(),
        };
        let head = timeout(EVENT_TIMEOUT, client.read_http_head())
            .await
            .expect("timed out waiting for the upgrade response");
        let status_line = head.lines().next().unwrap_or("");
        assert!(
            status_line.starts_with("HTTP/1.1 101"),
            "upgrade refused: {head:?}"
        );
        let accept = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-accept"))
            .map(|(_, v)| v.trim().to_owned());
        assert_eq!(accept.as_deref(), Some(WS_ACCEPT), "bad accept in {head:?}");
        (client, head)
    }

    /// Reads the HTTP response head; leaves any bytes after it in `buf`.
    async fn read_http_head(&mut self) -> String {
        loop {
            if let Some(pos) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 4);
                return head;
            }
            let mut chunk = [0u8; 1024];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .expect("read upgrade response");
            assert!(n > 0, "EOF during the upgrade response: {:?}", self.buf);
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write frame");
    }

    /// Like [`RawClient::send_raw`] but tolerates the server having closed
    /// already (it may reject a frame before we finish writing it).
    pub(crate) async fn send_raw_lenient(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    async fn fill(&mut self, want: usize) -> bool {
        while self.buf.len() < want {
            let mut chunk = vec![0u8; 64 * 1024];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    }

    /// Reads one frame (no timeout). Asserts server frames are unmasked
    /// and well formed ([`decode_header`]). A truncated frame followed by
    /// EOF fails the test.
    async fn read_frame_untimed(&mut self) -> Read {
        let header = loop {
            match decode_header(&self.buf) {
                Ok(Some(h)) => break h,
                Ok(None) => {
                    if !self.fill(self.buf.len() + 1).await {
                        assert!(
                            self.buf.is_empty(),
                            "EOF inside a frame header: {:?}",
                            self.buf
                        );
                        return Read::Eof;
                    }
                }
                Err(e) => panic!(
                    "invalid frame header from the server ({e}): {:x?}",
                    &self.buf[..self.buf.len().min(16)]
                ),
            }
        };
        assert_eq!(header.mask, None, "server frame is masked");
        let hdr = header.header_len;
        let len = usize::try_from(header.payload_len).expect("frame length fits usize");
        assert!(
            self.fill(hdr + len).await,
            "EOF inside a frame payload (opcode {:?}, len {len}, have {})",
            header.opcode,
            self.buf.len() - hdr
        );
        let payload = self.buf[hdr..hdr + len].to_vec();
        self.buf.drain(..hdr + len);
        Read::Frame(Frame {
            fin: header.fin,
            rsv: header.rsv,
            opcode: header.opcode as u8,
            payload,
        })
    }

    /// Reads one frame within `limit`.
    pub(crate) async fn read_within(&mut self, limit: Duration) -> Read {
        timeout(limit, self.read_frame_untimed())
            .await
            .unwrap_or_else(|_| panic!("no frame or EOF from the server within {limit:?}"))
    }

    /// Reads one frame within [`EVENT_TIMEOUT`]; EOF fails the test.
    pub(crate) async fn read_frame(&mut self) -> Frame {
        match self.read_within(EVENT_TIMEOUT).await {
            Read::Frame(f) => f,
            Read::Eof => panic!("server closed the connection, expected a frame"),
        }
    }

    /// Reads frames, skipping any others, until one with `opcode`; fails the
    /// test if none comes within [`EVENT_TIMEOUT`] in all.
    pub(crate) async fn read_until(&mut self, opcode: u8) -> Frame {
        let wanted = async {
            loop {
                let f = self.read_frame().await;
                if f.opcode == opcode {
                    break f;
                }
            }
        };
        timeout(EVENT_TIMEOUT, wanted)
            .await
            .unwrap_or_else(|_| panic!("no frame with opcode {opcode:#x} in time"))
    }

    /// Reads frames (skipping server pings) until a Close; asserts its code,
    /// answers it and asserts the server then closes the TCP connection.
    /// Returns the close reason.
    pub(crate) async fn expect_close(&mut self, code: u16) -> String {
        let frame = loop {
            let f = self.read_frame().await;
            match f.opcode {
                OP_PING => continue,
                OP_CLOSE => break f,
                _ => panic!("expected Close {code}, got {f:?}"),
            }
        };
        assert!(frame.fin, "close frame must be final");
        let (got, reason) = frame
            .close_code()
            .unwrap_or_else(|| panic!("expected Close {code}, got a close without a code"));
        assert_eq!(got, code, "close code (reason {reason:?})");
        self.finish_close().await;
        reason
    }

    /// Answers a server Close and asserts the server closes the TCP connection.
    pub(crate) async fn finish_close(&mut self) {
        self.send_raw_lenient(&masked(
            OP_CLOSE,
            &close_payload(protocol::close::NORMAL, ""),
        ))
        .await;
        self.expect_eof().await;
    }

    /// Asserts the server closes the TCP connection without sending more frames.
    pub(crate) async fn expect_eof(&mut self) {
        match self.read_within(EVENT_TIMEOUT).await {
            Read::Eof => {}
            Read::Frame(f) => panic!("expected the TCP connection to close, got {f:?}"),
        }
    }
}
