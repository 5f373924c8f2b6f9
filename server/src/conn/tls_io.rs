//! TLS record plumbing: rustls reads and writes records through these
//! non-blocking adapters over the socket halves, and the reader takes
//! plaintext from the session.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use tokio::io::ReadBuf;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::Conn;

/// Encrypts the bytes of `iov` after the first `skip` into the session's
/// buffer, as far as its limit allows; returns how many it took.
pub(super) fn encrypt(
    session: &mut rustls::ServerConnection,
    iov: &[IoSlice<'_>],
    mut skip: usize,
) -> io::Result<usize> {
    let mut taken = 0;
    for slice in iov {
        if skip >= slice.len() {
            skip -= slice.len();
            continue;
        }
        let part = &slice[skip..];
        skip = 0;
        let n = io::Write::write(&mut session.writer(), part)?;
        taken += n;
        if n < part.len() {
            break;
        }
    }
    Ok(taken)
}

/// `std::io::Write` over the socket's write half, never blocking (what
/// rustls writes its records to).
pub(super) struct SocketWriter<'a>(pub(super) &'a OwnedWriteHalf);

impl io::Write for SocketWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `std::io::Read` over the socket's read half, never blocking (what rustls
/// reads records from).
pub(super) struct SocketReader<'a>(pub(super) &'a OwnedReadHalf);

impl io::Read for SocketReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

/// Reads plaintext from a TLS connection: what the session already holds,
/// else records from the socket. Ready with nothing read means the end of
/// the stream.
pub(super) fn poll_read_tls(
    conn: &Rc<Conn>,
    tls: &RefCell<rustls::ServerConnection>,
    rd: &OwnedReadHalf,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    loop {
        let mut session = tls.borrow_mut();
        match io::Read::read(&mut session.reader(), buf.initialize_unfilled()) {
            Ok(n) => {
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // The peer closed TCP without TLS close_notify: an end, too.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(())),
            Err(e) => return Poll::Ready(Err(e)),
        }
        match session.read_tls(&mut SocketReader(rd)) {
            Ok(0) => return Poll::Ready(Ok(())),
            Ok(_) => {
                let processed = session.process_new_packets();
                // An alert to send, or an answer to a key update.
                let reply = session.wants_write();
                drop(session);
                if reply {
                    conn.kick();
                }
                if let Err(e) = processed {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                drop(session);
                ready!(rd.as_ref().poll_read_ready(cx))?;
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}
