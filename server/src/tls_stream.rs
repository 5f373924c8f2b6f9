//! A TLS connection as a tokio stream, for the handshake ([`accept`]) and
//! the HTTP phase (hyper reads and writes it through `TokioIo`); after the
//! WebSocket upgrade [`TlsStream::into_parts`] gives the socket and the
//! session back for the shard, whose reader shares this stream's read
//! loop ([`poll_plaintext`]).

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tls_session::TlsSession;

/// A [`TlsSession`] over its socket.
#[derive(Debug)]
pub(crate) struct TlsStream {
    tcp: TcpStream,
    session: Box<TlsSession>,
    /// close_notify is queued (by `poll_shutdown`).
    closing: bool,
}

/// Runs the server side of the TLS handshake on `tcp`. The caller bounds
/// it in time; on failure the alert rustls chose is sent if the socket
/// takes it at once.
pub(crate) async fn accept(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
) -> io::Result<TlsStream> {
    let session = TlsSession::new(config).map_err(io::Error::other)?;
    let mut stream = TlsStream {
        tcp,
        session: Box::new(session),
        closing: false,
    };
    loop {
        poll_fn(|cx| stream.poll_flush_records(cx)).await?;
        let TlsStream { tcp, session, .. } = &mut stream;
        match session.handshake(|buf| tcp.try_read(buf)) {
            Ok(true) => {
                // The session tickets, if any.
                poll_fn(|cx| stream.poll_flush_records(cx)).await?;
                return Ok(stream);
            }
            Ok(false) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.readable().await?,
            Err(e) => {
                let _ = session.flush(&mut |buf| tcp.try_write(buf));
                return Err(e);
            }
        }
    }
}

impl TlsStream {
    /// The socket and the session, for the shard to drive.
    pub(crate) fn into_parts(self) -> (TcpStream, Box<TlsSession>) {
        (self.tcp, self.session)
    }

    /// Writes the records waiting in the session.
    fn poll_flush_records(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let TlsStream { tcp, session, .. } = self;
        while !session.flush(&mut |buf| tcp.try_write(buf))? {
            ready!(tcp.poll_write_ready(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_write_iov(
        &mut self,
        cx: &mut Context<'_>,
        iov: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let TlsStream { tcp, session, .. } = self;
        loop {
            match session.write(iov, |buf| tcp.try_write(buf)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(tcp.poll_write_ready(cx))?;
                }
                result => return Poll::Ready(result),
            }
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let TlsStream { tcp, session, .. } = self.get_mut();
        poll_plaintext(
            cx,
            buf,
            |dest| {
                let result = session.read(dest, |b| tcp.try_read(b));
                if session.wants_write() {
                    // An alert or a key update's answer: sent now if the
                    // socket takes it, else before the next write.
                    let _ = session.flush(&mut |b| tcp.try_write(b));
                }
                result
            },
            |cx| tcp.poll_read_ready(cx),
        )
    }
}

/// [`TlsSession::read`] as `AsyncRead::poll_read` needs it, for this
/// stream and for the shard's socket halves (`conn`): `read` reads the
/// session once (and sees to what it then wants to send), `readable`
/// waits for the socket. Ready with nothing read is the end of the stream.
pub(crate) fn poll_plaintext(
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
    mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
    mut readable: impl FnMut(&mut Context<'_>) -> Poll<io::Result<()>>,
) -> Poll<io::Result<()>> {
    loop {
        match read(buf.initialize_unfilled()) {
            Ok(n) => {
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(readable(cx))?,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_iov(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_iov(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_records(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.closing = true;
            // Best effort: a session already closed has nothing to add.
            let _ = this.session.close_notify();
        }
        ready!(this.poll_flush_records(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}
