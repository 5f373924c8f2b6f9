//! TLS on the shard's socket halves: the reader takes plaintext from the
//! connection's session, which reads records from the read half; records
//! the session answers with (an alert, a key update) go out through the
//! writer, and so does the close_notify that ends a TLS connection.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::task::{Context, Poll};

use tokio::io::ReadBuf;
use tokio::net::tcp::OwnedReadHalf;

use super::Conn;
use crate::tls_session::TlsSession;
use crate::tls_stream::poll_plaintext;

/// Reads plaintext from a TLS connection: what the session already holds,
/// else records from the socket. Ready with nothing read means the end of
/// the stream.
pub(super) fn poll_read_tls(
    conn: &Rc<Conn>,
    tls: &RefCell<TlsSession>,
    rd: &OwnedReadHalf,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    poll_plaintext(
        cx,
        buf,
        |dest| {
            let mut session = tls.borrow_mut();
            let result = session.read(dest, |b| rd.try_read(b));
            let reply = session.wants_write();
            drop(session);
            if reply {
                // An alert or a key update's answer, through the writer.
                conn.kick();
            }
            result
        },
        |cx| rd.as_ref().poll_read_ready(cx),
    )
}

impl Conn {
    /// Ends TLS with close_notify before the socket is closed, if the
    /// socket takes it now (best effort: the WebSocket close frames are
    /// what matter). Nothing without TLS.
    pub(super) fn send_close_notify(&self) {
        if let Some(tls) = &self.tls {
            let _ = tls.borrow_mut().close_notify();
            let _ = self.flush_tls();
        }
    }
}
