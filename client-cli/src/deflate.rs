//! permessage-deflate (RFC 7692) on the console client's receiving side,
//! under tokio-tungstenite, which has no extension support: it fails the
//! connection on any frame with RSV1 set, and would check compressed text
//! as UTF-8.
//!
//! [`Shim`] sits between the socket (TLS included: it wraps the
//! `MaybeTlsStream`) and tungstenite, and follows the frame headers in the
//! bytes the server sends. On the first frame of a compressed data message
//! it clears RSV1 and turns a Text opcode into Binary before tungstenite
//! reads the byte, and it notes, for every data message in order, whether
//! it was compressed and whether it was text ([`Mark`]). [`Incoming`], the
//! reading half the client uses, takes one mark back for every Text or
//! Binary message tungstenite yields, and inflates and checks what was
//! compressed. Control and continuation frames keep their RSV bits, so
//! RSV1 there is still tungstenite's protocol error.
//!
//! Why a shim and not a frame reader of our own: tungstenite keeps every
//! other check (masking, control frames, fragmentation order, sizes, close
//! handshake) and stays the writer; the shim only needs the header
//! decoder every hand-written reader of ours uses
//! ([`protocol::frame::decode_header`]).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use futures_util::Stream;
use protocol::deflate::{Accepted, InflateError, Inflater, RSV1};
use protocol::frame::{decode_header, OpCode, MAX_HEADER};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::Message;

/// What the shim saw of one data message from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    /// RSV1 clear: tungstenite's message is the message.
    Plain,
    /// RSV1 set on its first frame; `text`: its opcode was Text (the shim
    /// made it Binary).
    Compressed { text: bool },
}

/// The marks of the data messages the shim has seen and [`Incoming`] has
/// not yet taken, oldest first. Pushed by the shim inside tungstenite's
/// read, popped by the reading half after it: a std mutex, never held
/// across an await.
pub(crate) type Marks = Arc<Mutex<VecDeque<Mark>>>;

/// Where the shim is in the byte stream from the server.
#[derive(Debug)]
enum State {
    /// Not tracking (the extension was not offered): bytes pass untouched.
    Off,
    /// Still in the HTTP response: how much of a blank line has been seen
    /// (0: none, 1: `\n`, 2: `\n\r`); frames start after it.
    Http(u8),
    /// Reading a frame header: its bytes so far (the first one as it was
    /// passed on, RSV1 possibly cleared).
    Header { bytes: [u8; MAX_HEADER], len: usize },
    /// Inside a payload: how many bytes are left.
    Payload(u64),
    /// A header that does not decode: tungstenite fails the connection on
    /// that frame, so nothing after it is looked at.
    Broken,
}

/// The stream under tungstenite: passes bytes both ways, and rewrites the
/// first byte of each compressed data message the server sends (see the
/// module docs).
#[derive(Debug)]
pub(crate) struct Shim<S> {
    inner: S,
    state: State,
    /// Where the marks go; unused when `state` is `Off`.
    marks: Marks,
}

impl<S> Shim<S> {
    /// A shim for a connection that starts with the HTTP upgrade; `track`:
    /// the extension is offered, so the server's frames are followed from
    /// the end of its response (before the client has read the answer:
    /// frames may arrive with it). Without `track` the shim does nothing.
    pub(crate) fn new(inner: S, track: bool) -> Self {
        Self::with_state(inner, if track { State::Http(0) } else { State::Off })
    }

    fn with_state(inner: S, state: State) -> Self {
        Self {
            inner,
            state,
            marks: Marks::default(),
        }
    }

    /// The marks this shim pushes.
    pub(crate) fn marks(&self) -> Marks {
        self.marks.clone()
    }

    /// Follows `bytes`, just read from the server, rewriting the first
    /// byte of each compressed data message in place.
    fn track(&mut self, mut bytes: &mut [u8]) {
        while let [first, ..] = bytes {
            let used = match &mut self.state {
                State::Off | State::Broken => return,
                State::Http(seen) => {
                    let blank_line = matches!((*seen, *first), (1 | 2, b'\n'));
                    *seen = match (*seen, *first) {
                        (_, b'\n') => 1,
                        (1, b'\r') => 2,
                        _ => 0,
                    };
                    if blank_line {
                        self.state = State::header();
                    }
                    1
                }
                State::Payload(left) => {
                    let skip = usize::try_from(*left).map_or(bytes.len(), |l| l.min(bytes.len()));
                    *left -= skip as u64;
                    if *left == 0 {
                        self.state = State::header();
                    }
                    skip
                }
                State::Header { bytes: header, len } => {
                    if *len == 0 {
                        if let Some(mark) = first_byte(first) {
                            if let Ok(mut marks) = self.marks.lock() {
                                marks.push_back(mark);
                            }
                        }
                    }
                    header[*len] = *first;
                    *len += 1;
                    match decode_header(&header[..*len]) {
                        Ok(None) => {}
                        Ok(Some(h)) if h.payload_len > 0 => {
                            self.state = State::Payload(h.payload_len)
                        }
                        Ok(Some(_)) => self.state = State::header(),
                        Err(_) => self.state = State::Broken,
                    }
                    1
                }
            };
            bytes = &mut std::mem::take(&mut bytes)[used..];
        }
    }
}

impl State {
    /// Before the first byte of a frame.
    fn header() -> Self {
        Self::Header {
            bytes: [0; MAX_HEADER],
            len: 0,
        }
    }
}

/// The mark of a frame whose first byte is `b`, if it starts a data
/// message; a compressed one has RSV1 cleared and Text made Binary.
fn first_byte(b: &mut u8) -> Option<Mark> {
    let text = match OpCode::from_u8(*b & 0x0f) {
        Some(OpCode::Text) => true,
        Some(OpCode::Binary) => false,
        _ => return None,
    };
    if *b & RSV1 == 0 {
        return Some(Mark::Plain);
    }
    *b = (*b & !(RSV1 | 0x0f)) | OpCode::Binary as u8;
    Some(Mark::Compressed { text })
}

impl<S: AsyncRead + Unpin> AsyncRead for Shim<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let start = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.track(&mut buf.filled_mut()[start..]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Shim<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// What the receiving side of one connection knows of the extension.
#[derive(Debug)]
pub(crate) struct Inbound {
    /// The shim's marks; `None`: not offered, nothing is tracked.
    marks: Option<Marks>,
    /// Some when the server accepted the extension.
    inflater: Option<Inflater>,
    /// The largest inflated message.
    max: usize,
}

impl Inbound {
    /// For a connection whose shim pushes to `marks` (`None`: the
    /// extension was not offered), on which the server `accepted` it or
    /// not; messages inflate to at most `max` bytes.
    pub(crate) fn new(marks: Option<Marks>, accepted: Option<Accepted>, max: usize) -> Self {
        Self {
            marks,
            inflater: accepted.map(Inflater::new),
            max,
        }
    }

    /// `msg` as the server meant it: a compressed message inflated (and,
    /// if it was text, checked as UTF-8); anything else as it is.
    fn restore(&mut self, msg: Message) -> Result<Message, Unrestorable> {
        let Some(marks) = &self.marks else {
            return Ok(msg);
        };
        if !matches!(msg, Message::Text(_) | Message::Binary(_)) {
            return Ok(msg);
        }
        let mark = marks.lock().ok().and_then(|mut m| m.pop_front());
        let text = match (mark, &msg) {
            (Some(Mark::Compressed { text }), Message::Binary(_)) => text,
            (Some(_), _) => return Ok(msg),
            (None, _) => return Err(Unrestorable::Untracked),
        };
        let inflater = self.inflater.as_mut().ok_or(Unrestorable::NotNegotiated)?;
        let mut out = Vec::new();
        inflater
            .inflate(&msg.into_data(), self.max, &mut out)
            .map_err(Unrestorable::Inflate)?;
        if text {
            let text = String::from_utf8(out).map_err(|e| Unrestorable::Utf8(e.utf8_error()))?;
            Ok(Message::text(text))
        } else {
            Ok(Message::binary(out))
        }
    }
}

/// Why a message from the server cannot be restored: each fails the
/// connection (as the tungstenite error it becomes).
#[derive(Debug)]
enum Unrestorable {
    /// RSV1 set although the server did not accept the extension.
    NotNegotiated,
    /// Too big once inflated, or not deflate data.
    Inflate(InflateError),
    /// Inflated text that is not UTF-8.
    Utf8(std::str::Utf8Error),
    /// A message the shim saw no first frame of (a bug of ours).
    Untracked,
}

impl From<Unrestorable> for WsError {
    fn from(e: Unrestorable) -> Self {
        match e {
            // What tungstenite itself says of RSV1 without an extension.
            Unrestorable::NotNegotiated => WsError::Protocol(ProtocolError::NonZeroReservedBits),
            Unrestorable::Inflate(e) => WsError::Io(io::Error::new(io::ErrorKind::InvalidData, e)),
            Unrestorable::Utf8(e) => WsError::Utf8(e.to_string()),
            Unrestorable::Untracked => WsError::Io(io::Error::other(
                "internal error: a message the frame tracker did not see",
            )),
        }
    }
}

/// The reading half of a connection: the messages tungstenite yields,
/// compressed ones inflated.
pub(crate) struct Incoming<S> {
    stream: S,
    inbound: Inbound,
}

impl<S> Incoming<S> {
    pub(crate) fn new(stream: S, inbound: Inbound) -> Self {
        Self { stream, inbound }
    }
}

impl<S> Stream for Incoming<S>
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        Poll::Ready(match ready!(Pin::new(&mut this.stream).poll_next(cx)) {
            Some(Ok(msg)) => Some(this.inbound.restore(msg).map_err(WsError::from)),
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};
    use futures_util::StreamExt as _;
    use protocol::frame::encode_server_frame;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::WebSocketStream;

    const RESPONSE: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n";

    /// Reads `chunks` one per read (EOF after them); writes are dropped.
    struct Chunks(VecDeque<Vec<u8>>);

    impl Chunks {
        /// `bytes` cut every `step` bytes.
        fn cut(bytes: &[u8], step: usize) -> Self {
            Self(bytes.chunks(step).map(<[u8]>::to_vec).collect())
        }
    }

    impl AsyncRead for Chunks {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if let Some(mut chunk) = this.0.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    this.0.push_front(chunk.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Chunks {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// What our server sends: raw deflate from a fresh state, sync
    /// flushed, the 4-byte tail removed.
    fn deflate(payload: &[u8]) -> Vec<u8> {
        let mut z = Compress::new(Compression::new(1), false);
        let mut out = Vec::with_capacity(payload.len() + 64);
        loop {
            let at = z.total_in() as usize;
            z.compress_vec(&payload[at..], &mut out, FlushCompress::Sync)
                .unwrap();
            if z.total_in() as usize == payload.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity());
        }
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        out
    }

    /// An unmasked frame with the given first byte.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = encode_server_frame(OpCode::Binary, payload);
        f[0] = first;
        f
    }

    const FIN: u8 = 0x80;
    const TEXT: u8 = OpCode::Text as u8;
    const BINARY: u8 = OpCode::Binary as u8;
    const CONT: u8 = OpCode::Continuation as u8;
    const PING: u8 = OpCode::Ping as u8;

    fn long_text() -> String {
        (0..3000).map(|i| format!("{i} ")).collect()
    }

    /// A stream exercising everything: plain and compressed messages, one
    /// fragmented with pings between its frames, one 64 KiB.
    fn conversation() -> (Vec<u8>, Vec<Message>) {
        let text = long_text();
        let binary: Vec<u8> = (0..70_000u32)
            .map(|i| (i % 253) as u8 ^ (i >> 9) as u8)
            .collect();
        let squeezed = deflate(text.as_bytes());
        let (a, b) = squeezed.split_at(squeezed.len() / 3);
        let mut wire = Vec::new();
        let mut want = Vec::new();
        wire.extend(frame(FIN | TEXT, b"short"));
        want.push(Message::text("short"));
        wire.extend(frame(FIN | RSV1 | TEXT, &squeezed));
        want.push(Message::text(text.clone()));
        // Fragmented: RSV1 on the first frame only, pings in between.
        wire.extend(frame(RSV1 | TEXT, a));
        wire.extend(frame(FIN | PING, b"p1"));
        want.push(Message::Ping(b"p1".to_vec().into()));
        wire.extend(frame(CONT, &b[..10]));
        wire.extend(frame(FIN | PING, b""));
        want.push(Message::Ping(Vec::new().into()));
        wire.extend(frame(FIN | CONT, &b[10..]));
        want.push(Message::text(text.clone()));
        wire.extend(frame(FIN | RSV1 | BINARY, &deflate(&binary)));
        want.push(Message::binary(binary.clone()));
        // A fragmented plain message, and an empty compressed one.
        wire.extend(frame(BINARY, &binary[..100]));
        wire.extend(frame(FIN | CONT, &binary[100..300]));
        want.push(Message::binary(binary[..300].to_vec()));
        wire.extend(frame(FIN | RSV1 | TEXT, &deflate(b"")));
        want.push(Message::text(""));
        wire.extend(frame(FIN | TEXT, text.as_bytes()));
        want.push(Message::text(text));
        (wire, want)
    }

    fn inbound(marks: Marks, negotiated: bool) -> Inbound {
        let accepted = Accepted {
            server_no_context_takeover: true,
            server_window_bits: 15,
        };
        Inbound::new(Some(marks), negotiated.then_some(accepted), 1 << 20)
    }

    /// A client over `wire` (after the HTTP response), cut every `step`.
    async fn client(
        wire: &[u8],
        step: usize,
        negotiated: bool,
    ) -> Incoming<WebSocketStream<Shim<Chunks>>> {
        let shim = Shim::with_state(Chunks::cut(wire, step), State::header());
        let marks = shim.marks();
        let ws = WebSocketStream::from_raw_socket(shim, Role::Client, None).await;
        Incoming::new(ws, inbound(marks, negotiated))
    }

    async fn read_all(
        mut incoming: impl Stream<Item = Result<Message, WsError>> + Unpin,
    ) -> Vec<Result<Message, String>> {
        let mut got = Vec::new();
        while let Some(r) = incoming.next().await {
            let end = r.is_err();
            got.push(r.map_err(|e| e.to_string()));
            if end {
                break;
            }
        }
        got
    }

    #[tokio::test]
    async fn messages_arrive_whole_however_the_bytes_are_cut() {
        let (wire, want) = conversation();
        // 1 and 2 split every header; 7 and 13 split headers and payloads
        // at many places; 4096 puts several frames in one read.
        for step in [1, 2, 3, 7, 13, 100, 4096, wire.len()] {
            let got = read_all(client(&wire, step, true).await).await;
            let (msgs, end) = got.split_at(want.len());
            let msgs: Vec<Message> = msgs.iter().map(|r| r.clone().unwrap()).collect();
            assert_eq!(msgs, want, "cut every {step} bytes");
            // Then the end of the bytes, without a close.
            assert_eq!(end.len(), 1, "{end:?}");
            assert!(
                end[0].as_ref().unwrap_err().contains("closing handshake"),
                "{end:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_http_response_is_passed_then_frames_are_followed() {
        let (frames, _) = conversation();
        let mut wire = RESPONSE.to_vec();
        wire.extend(&frames);
        for step in [1, 5, RESPONSE.len() + 3, wire.len()] {
            let mut shim = Shim::new(Chunks::cut(&wire, step), true);
            let mut seen = Vec::new();
            while let Ok(n) = tokio::io::AsyncReadExt::read_buf(&mut shim, &mut seen).await {
                if n == 0 {
                    break;
                }
            }
            assert_eq!(
                &seen[..RESPONSE.len()],
                RESPONSE,
                "the response is untouched"
            );
            // Every first byte of a compressed message rewritten, no other.
            let mut expect = frames.clone();
            let mut at = 0;
            while at < expect.len() {
                let h = decode_header(&expect[at..]).unwrap().unwrap();
                if h.rsv & RSV1 != 0 && matches!(h.opcode, OpCode::Text | OpCode::Binary) {
                    expect[at] = (FIN & expect[at]) | BINARY;
                }
                at += h.header_len + h.payload_len as usize;
            }
            assert_eq!(&seen[RESPONSE.len()..], &expect[..], "cut every {step}");
            let marks: Vec<Mark> = shim.marks().lock().unwrap().drain(..).collect();
            let compressed = Mark::Compressed { text: true };
            assert_eq!(
                marks,
                [
                    Mark::Plain,
                    compressed,
                    compressed,
                    Mark::Compressed { text: false },
                    Mark::Plain,
                    compressed,
                    Mark::Plain,
                ]
            );
        }
        // Not offered: nothing is changed or noted.
        let mut shim = Shim::new(Chunks::cut(&wire, 9), false);
        let mut seen = Vec::new();
        while tokio::io::AsyncReadExt::read_buf(&mut shim, &mut seen)
            .await
            .unwrap()
            > 0
        {}
        assert_eq!(seen, wire);
        assert!(shim.marks().lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn rsv1_where_it_has_no_meaning_is_a_protocol_error() {
        let squeezed = deflate(long_text().as_bytes());
        let cases: [(&str, Vec<u8>, bool); 5] = [
            ("on a ping", frame(FIN | RSV1 | PING, b"x"), true),
            (
                "on a continuation",
                [frame(TEXT, b"a"), frame(FIN | RSV1 | CONT, b"b")].concat(),
                true,
            ),
            ("on RSV2", frame(FIN | 0x20 | TEXT, b"x"), true),
            (
                "without negotiation",
                frame(FIN | RSV1 | TEXT, &squeezed),
                false,
            ),
            (
                "without negotiation, binary",
                frame(FIN | RSV1 | BINARY, &squeezed),
                false,
            ),
        ];
        for (what, wire, negotiated) in cases {
            let got = read_all(client(&wire, 3, negotiated).await).await;
            assert_eq!(got.len(), 1, "{what}: {got:?}");
            let err = got[0].as_ref().unwrap_err();
            assert!(err.contains("Reserved bits are non-zero"), "{what}: {err}");
        }
    }

    #[tokio::test]
    async fn bad_compressed_data_fails_the_connection() {
        let bomb = deflate(&vec![b'a'; 4 << 20]);
        let mut bad_utf8 = b"caf".to_vec();
        bad_utf8.push(0xe9);
        let cases = [
            (
                "past the limit",
                frame(FIN | RSV1 | BINARY, &bomb),
                "size limit",
            ),
            (
                "not deflate",
                frame(FIN | RSV1 | BINARY, &[0xff; 8]),
                "invalid compressed",
            ),
            (
                "not UTF-8",
                frame(FIN | RSV1 | TEXT, &deflate(&bad_utf8)),
                "utf-8",
            ),
        ];
        for (what, wire, needle) in cases {
            let got = read_all(client(&wire, 1000, true).await).await;
            let err = got[0].as_ref().unwrap_err().to_lowercase();
            assert!(err.contains(needle), "{what}: {err}");
        }
    }
}
