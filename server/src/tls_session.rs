//! One TLS connection over buffers the server owns: rustls' unbuffered API
//! does all of TLS (handshake, records, alerts, key updates, close_notify);
//! this type only moves bytes between it and the socket.
//!
//! An idle connection holds no I/O buffer. Ciphertext is read into, and
//! encrypted into, scratch buffers of the shard thread; a connection keeps
//! only what is left over, each in a vector freed once it is empty: the
//! start of a record not fully received, plaintext the reader had no room
//! for, and ciphertext the socket did not take (at most
//! [`crate::tls::TLS_BUFFER`] of it per write, plus the rare records rustls
//! queues itself).
//!
//! The socket is given as closures (`recv`, `send`) that never block, so
//! the same session serves the handshake and HTTP phase (`tls_stream`) and
//! the shard's socket halves (`conn`).

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::sync::Arc;

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedStatus, WriteTraffic,
};

/// Most plaintext put in one record (TLS's largest fragment).
const RECORD: usize = 16 * 1024;

/// Room kept per record for its header, nonce, tag and content type:
/// more than any suite rustls offers adds.
const RECORD_OVERHEAD: usize = 64;

/// Slices shorter than this are gathered with their neighbours into one
/// record (a record per small frame would cost more in overhead and
/// per-record work than the copy); longer ones are encrypted in place.
const GATHER_BELOW: usize = 2 * 1024;

/// Least and most ciphertext asked of the socket per read (the most holds
/// a whole record).
const MIN_READ: usize = 4 * 1024;
const MAX_READ: usize = 32 * 1024;

thread_local! {
    /// Ciphertext received: what a connection kept, then what it read.
    static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Ciphertext encrypted, before the socket takes it.
    static SEALED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Small slices gathered into one record's plaintext.
    static GATHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Bytes waiting to be taken, front first; the vector is freed once all
/// are taken.
#[derive(Debug, Default)]
struct Spill {
    bytes: Vec<u8>,
    taken: usize,
}

impl Spill {
    fn is_empty(&self) -> bool {
        self.taken == self.bytes.len()
    }

    fn pending(&self) -> &[u8] {
        &self.bytes[self.taken..]
    }

    fn take(&mut self, n: usize) {
        self.taken += n;
        if self.is_empty() {
            *self = Spill::default();
        }
    }

    /// `n` more bytes at the end, to be filled; returns where they start.
    fn grow(&mut self, n: usize) -> usize {
        if self.taken > 0 {
            self.bytes.drain(..self.taken);
            self.taken = 0;
        }
        let start = self.bytes.len();
        self.bytes.resize(start + n, 0);
        start
    }

    fn push(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            let start = self.grow(bytes.len());
            self.bytes[start..].copy_from_slice(bytes);
        }
    }

    /// Appends what `fill` writes; rustls says how much room it needs when
    /// given too little, so it is asked with none first.
    fn append(&mut self, mut fill: impl FnMut(&mut [u8]) -> Result<usize, Fill>) -> io::Result<()> {
        let need = match fill(&mut []) {
            Ok(_) => return Ok(()),
            Err(Fill::Short(need)) => need,
            Err(Fill::Failed(e)) => return Err(e),
        };
        let start = self.grow(need);
        let result = fill(&mut self.bytes[start..]);
        let written = *result.as_ref().unwrap_or(&0);
        self.bytes.truncate(start + written);
        if self.is_empty() {
            *self = Spill::default();
        }
        result.map(|_| ()).map_err(|e| match e {
            Fill::Short(need) => io::Error::other(format!("TLS record of {need} bytes")),
            Fill::Failed(e) => e,
        })
    }
}

/// Why rustls wrote nothing into a buffer.
enum Fill {
    /// The buffer must hold this many bytes.
    Short(usize),
    Failed(io::Error),
}

impl From<EncodeError> for Fill {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::InsufficientSize(s) => Fill::Short(s.required_size),
            e => Fill::Failed(io::Error::other(e)),
        }
    }
}

impl From<EncryptError> for Fill {
    fn from(e: EncryptError) -> Self {
        match e {
            EncryptError::InsufficientSize(s) => Fill::Short(s.required_size),
            e => Fill::Failed(io::Error::other(e)),
        }
    }
}

/// What is done with the session once it may send application data.
type OnWrite<'a> =
    &'a mut dyn FnMut(&mut WriteTraffic<'_, ServerConnectionData>, &mut Spill) -> io::Result<usize>;

/// The connection's own bytes, apart from rustls' state.
#[derive(Debug, Default)]
struct Buffers {
    /// Ciphertext received that rustls has not let go of yet: the start of
    /// a record (or of a handshake message spread over records).
    incoming: Vec<u8>,
    /// Plaintext decrypted that the reader had no room for.
    plain: Spill,
    /// Ciphertext the socket has not taken yet.
    outgoing: Spill,
    /// The peer sent close_notify: no more plaintext comes.
    peer_closed: bool,
    /// rustls reported an error: the session is done.
    failed: bool,
}

/// A server-side TLS connection (see the module doc).
pub(crate) struct TlsSession {
    conn: UnbufferedServerConnection,
    io: Buffers,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.conn.is_handshaking())
            .field("io", &self.io)
            .finish_non_exhaustive()
    }
}

/// Turns a rustls error into the I/O error the stream reports.
fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Buffers {
    /// Runs rustls' state machine over `input` (its first `*consumed`
    /// bytes already let go of) until it needs more input, or, with
    /// `on_write`, until it may send application data, which `on_write`
    /// then does. Plaintext goes to `dest` from `*copied` on, the rest to
    /// `plain`; records rustls emits go to `outgoing`.
    ///
    /// Returns what `on_write` returned, `None` if it did not run. After an
    /// error the session is done: the alert rustls queued is collected into
    /// `outgoing`, and every later call fails at once (processing the same
    /// input again would make rustls answer it twice).
    fn drive(
        &mut self,
        conn: &mut UnbufferedServerConnection,
        input: &mut [u8],
        consumed: &mut usize,
        (dest, copied): (&mut [u8], &mut usize),
        mut on_write: Option<OnWrite<'_>>,
    ) -> io::Result<Option<usize>> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the TLS session failed",
            ));
        }
        loop {
            let UnbufferedStatus { mut discard, state } =
                conn.process_tls_records(&mut input[*consumed..]);
            let stop = match state {
                Err(e) => {
                    *consumed += discard;
                    self.failed = true;
                    // Queued records come before any new input is looked at.
                    let UnbufferedStatus { state, .. } =
                        conn.process_tls_records(&mut input[*consumed..]);
                    if let Ok(ConnectionState::EncodeTlsData(mut alert)) = state {
                        let _ = self
                            .outgoing
                            .append(|buf| alert.encode(buf).map_err(Fill::from));
                    }
                    return Err(invalid(e));
                }
                Ok(ConnectionState::ReadTraffic(mut records)) => {
                    while let Some(Ok(record)) = records.next_record() {
                        discard += record.discard;
                        let k = record.payload.len().min(dest.len() - *copied);
                        dest[*copied..*copied + k].copy_from_slice(&record.payload[..k]);
                        *copied += k;
                        self.plain.push(&record.payload[k..]);
                    }
                    None
                }
                Ok(ConnectionState::EncodeTlsData(mut record)) => {
                    self.outgoing
                        .append(|buf| record.encode(buf).map_err(Fill::from))?;
                    None
                }
                // The records are in `outgoing`, which is written in order.
                Ok(ConnectionState::TransmitTlsData(sent)) => {
                    sent.done();
                    None
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    None
                }
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    Some(None)
                }
                Ok(ConnectionState::WriteTraffic(mut traffic)) => match on_write.as_mut() {
                    Some(write) => Some(Some(write(&mut traffic, &mut self.outgoing)?)),
                    None => Some(None),
                },
                Ok(ConnectionState::BlockedHandshake) => Some(None),
                // Early data is off (`max_early_data_size` 0).
                Ok(other) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected TLS state {other:?}"),
                    ))
                }
            };
            *consumed += discard;
            if let Some(done) = stop {
                return Ok(done);
            }
        }
    }
}

impl TlsSession {
    pub(crate) fn new(config: Arc<rustls::ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(Self {
            conn: UnbufferedServerConnection::new(config)?,
            io: Buffers::default(),
        })
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Records are waiting for the socket.
    pub(crate) fn wants_write(&self) -> bool {
        !self.io.outgoing.is_empty()
    }

    /// A read would return at once: plaintext is held, or the peer closed.
    pub(crate) fn has_input(&self) -> bool {
        !self.io.plain.is_empty() || self.io.peer_closed
    }

    /// Reads from the socket once and processes what came; `None` at the
    /// end of the TCP stream.
    fn pull(
        &mut self,
        dest: &mut [u8],
        recv: &mut impl FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<Option<usize>> {
        INPUT.with_borrow_mut(|input| {
            let kept = self.io.incoming.len();
            let end = kept + dest.len().clamp(MIN_READ, MAX_READ);
            if input.len() < end {
                input.resize(end, 0);
            }
            input[..kept].copy_from_slice(&self.io.incoming);
            let n = recv(&mut input[kept..end])?;
            if n == 0 {
                return Ok(None);
            }
            let (mut consumed, mut copied) = (0, 0);
            let input = &mut input[..kept + n];
            let result = self.io.drive(
                &mut self.conn,
                input,
                &mut consumed,
                (dest, &mut copied),
                None,
            );
            let rest = &input[consumed..];
            if rest.is_empty() {
                self.io.incoming = Vec::new();
            } else {
                self.io.incoming.clear();
                self.io.incoming.extend_from_slice(rest);
            }
            result.map(|_| Some(copied))
        })
    }

    /// Takes the handshake one socket read further; true once it is
    /// complete. The records it produced wait in [`Self::flush`]'s queue.
    pub(crate) fn handshake(
        &mut self,
        mut recv: impl FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<bool> {
        if self.is_handshaking() && self.pull(&mut [], &mut recv)?.is_none() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(!self.is_handshaking())
    }

    /// Reads plaintext into `dest`: what the session holds, else records
    /// from the socket. `Ok(0)` is the end (close_notify, or TCP closed
    /// without it); `WouldBlock` means nothing has come yet. Records rustls
    /// answers with (an alert, a key update) wait for [`Self::flush`].
    pub(crate) fn read(
        &mut self,
        dest: &mut [u8],
        mut recv: impl FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if dest.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.io.plain.is_empty() {
                let held = self.io.plain.pending();
                let n = held.len().min(dest.len());
                dest[..n].copy_from_slice(&held[..n]);
                self.io.plain.take(n);
                return Ok(n);
            }
            if self.io.peer_closed {
                return Ok(0);
            }
            match self.pull(dest, &mut recv)? {
                None => return Ok(0),
                Some(0) => {}
                Some(n) => return Ok(n),
            }
        }
    }

    /// Writes the ciphertext waiting for the socket; true once none is left.
    pub(crate) fn flush(
        &mut self,
        send: &mut impl FnMut(&[u8]) -> io::Result<usize>,
    ) -> io::Result<bool> {
        while !self.io.outgoing.is_empty() {
            match send(self.io.outgoing.pending()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.io.outgoing.take(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Runs the session until it may send application data, then
    /// `on_write`; an error if it never may (the handshake is not done, or
    /// the connection is closed).
    fn with_traffic(&mut self, on_write: OnWrite<'_>) -> io::Result<usize> {
        let mut input = std::mem::take(&mut self.io.incoming);
        let (mut consumed, mut copied) = (0, 0);
        let result = self.io.drive(
            &mut self.conn,
            &mut input,
            &mut consumed,
            (&mut [], &mut copied),
            Some(on_write),
        );
        input.drain(..consumed);
        if !input.is_empty() {
            self.io.incoming = input;
        }
        result?.ok_or_else(|| io::ErrorKind::NotConnected.into())
    }

    /// Encrypts the bytes of `iov` and writes them with `send`, after the
    /// records already waiting, until the socket is full or all are taken;
    /// returns how many plaintext bytes were taken (`WouldBlock` if none).
    /// Each turn encrypts at most [`crate::tls::TLS_BUFFER`] of ciphertext,
    /// and keeps what the socket did not take for [`Self::flush`].
    pub(crate) fn write(
        &mut self,
        iov: &[IoSlice<'_>],
        mut send: impl FnMut(&[u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let total: usize = iov.iter().map(|s| s.len()).sum();
        let mut taken = 0;
        while taken < total && self.flush(&mut send)? {
            let n = SEALED.with_borrow_mut(|sealed| {
                sealed.resize(crate::tls::TLS_BUFFER, 0);
                let mut len = 0;
                let n = self.with_traffic(&mut |traffic, _| {
                    seal(traffic, Cursor::new(iov, taken), sealed, &mut len)
                })?;
                let sealed = &sealed[..len];
                // Records rustls queued on the way (a ticket, a key
                // update) go first.
                let sent = if self.io.outgoing.is_empty() {
                    match send(sealed) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                        Err(e) => return Err(e),
                    }
                } else {
                    0
                };
                self.io.outgoing.push(&sealed[sent..]);
                Ok(n)
            })?;
            if n == 0 {
                break;
            }
            taken += n;
        }
        if taken == 0 && total > 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// Queues a close_notify alert for [`Self::flush`] (after any records
    /// already waiting).
    pub(crate) fn close_notify(&mut self) -> io::Result<()> {
        self.with_traffic(&mut |traffic, outgoing| {
            outgoing.append(|buf| traffic.queue_close_notify(buf).map_err(Fill::from))?;
            Ok(0)
        })
        .map(|_| ())
    }
}

/// Encrypts what `at` points to into `sealed` from `*len` on, one record
/// of at most [`RECORD`] bytes at a time, while room is left; returns the
/// plaintext bytes taken.
fn seal(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    mut at: Cursor<'_, '_>,
    sealed: &mut [u8],
    len: &mut usize,
) -> io::Result<usize> {
    GATHER.with_borrow_mut(|gather| {
        let mut taken = 0;
        loop {
            let room = (sealed.len() - *len).saturating_sub(RECORD_OVERHEAD);
            let chunk = at.chunk(room.min(RECORD), gather);
            if chunk.is_empty() {
                return Ok(taken);
            }
            match traffic.encrypt(chunk, &mut sealed[*len..]) {
                Ok(n) => *len += n,
                Err(EncryptError::InsufficientSize(_)) => return Ok(taken),
                Err(e) => return Err(io::Error::other(e)),
            }
            let k = chunk.len();
            at.advance(k);
            taken += k;
        }
    })
}

/// A position in a list of slices.
struct Cursor<'s, 'a> {
    iov: &'s [IoSlice<'a>],
    slice: usize,
    offset: usize,
}

impl<'s, 'a> Cursor<'s, 'a> {
    /// The position `skip` bytes in.
    fn new(iov: &'s [IoSlice<'a>], skip: usize) -> Self {
        let mut cursor = Cursor {
            iov,
            slice: 0,
            offset: 0,
        };
        cursor.advance(skip);
        cursor
    }

    fn advance(&mut self, mut n: usize) {
        while let Some(slice) = self.iov.get(self.slice) {
            let rest = slice.len() - self.offset;
            if n < rest {
                self.offset += n;
                return;
            }
            n -= rest;
            self.slice += 1;
            self.offset = 0;
        }
    }

    /// The next record's plaintext, at most `max` bytes: the rest of the
    /// current slice, or small slices gathered into `gather`.
    fn chunk<'g>(&self, max: usize, gather: &'g mut Vec<u8>) -> &'g [u8]
    where
        's: 'g,
    {
        let mut rest = self.iov[self.slice.min(self.iov.len())..]
            .iter()
            .enumerate()
            .map(|(i, s)| if i == 0 { &s[self.offset..] } else { &s[..] })
            .filter(|s| !s.is_empty());
        let Some(first) = rest.next() else {
            return &[];
        };
        if first.len() >= GATHER_BELOW || first.len() >= max {
            return &first[..first.len().min(max)];
        }
        gather.clear();
        gather.extend_from_slice(first);
        for s in rest {
            if gather.len() == max || s.len() >= GATHER_BELOW {
                break;
            }
            let k = s.len().min(max - gather.len());
            gather.extend_from_slice(&s[..k]);
        }
        gather
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io::{Read, Write};

    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::{ClientConnection, SupportedProtocolVersion};

    use super::*;

    fn configs(
        version: &'static SupportedProtocolVersion,
    ) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let der = key.cert.der().clone();
        let pkcs8 = PrivatePkcs8KeyDer::from(key.signing_key.serialize_der());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], PrivateKeyDer::Pkcs8(pkcs8))
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// Both directions of a connection in memory, and how many bytes the
    /// server's socket gives per read and takes per write.
    struct Wire {
        server: TlsSession,
        client: ClientConnection,
        to_server: Vec<u8>,
        to_client: Vec<u8>,
        read_max: usize,
        write_max: Cell<usize>,
        /// Plaintext the client received.
        client_got: Vec<u8>,
    }

    fn would_block<T>() -> io::Result<T> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    impl Wire {
        fn connect(version: &'static SupportedProtocolVersion, read_max: usize) -> Wire {
            let (server, client) = configs(version);
            let name = ServerName::try_from("localhost").unwrap();
            let mut wire = Wire {
                server: TlsSession::new(server).unwrap(),
                client: ClientConnection::new(client, name).unwrap(),
                to_server: Vec::new(),
                to_client: Vec::new(),
                read_max,
                write_max: Cell::new(usize::MAX),
                client_got: Vec::new(),
            };
            for _ in 0..10_000 {
                if !wire.server.is_handshaking() && !wire.client.is_handshaking() {
                    wire.client_pump();
                    return wire;
                }
                wire.client_pump();
                let Wire {
                    server, to_server, ..
                } = &mut wire;
                match server.handshake(|buf| Self::take(to_server, read_max, buf)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("handshake: {e}"),
                }
                wire.server_flush();
            }
            panic!("the handshake did not complete");
        }

        fn take(from: &mut Vec<u8>, max: usize, buf: &mut [u8]) -> io::Result<usize> {
            if from.is_empty() {
                return would_block();
            }
            let n = from.len().min(buf.len()).min(max);
            buf[..n].copy_from_slice(&from[..n]);
            from.drain(..n);
            Ok(n)
        }

        /// What the server's socket sends, at most `write_max` per call.
        fn sender<'a>(
            to_client: &'a mut Vec<u8>,
            max: &'a Cell<usize>,
        ) -> impl FnMut(&[u8]) -> io::Result<usize> + 'a {
            move |buf| {
                let n = buf.len().min(max.get());
                if n == 0 {
                    return would_block();
                }
                to_client.extend_from_slice(&buf[..n]);
                Ok(n)
            }
        }

        fn server_flush(&mut self) -> bool {
            let mut send = Self::sender(&mut self.to_client, &self.write_max);
            self.server.flush(&mut send).unwrap()
        }

        fn server_read(&mut self, dest: &mut [u8]) -> io::Result<usize> {
            let Wire {
                server,
                to_server,
                read_max,
                ..
            } = self;
            server.read(dest, |buf| Self::take(to_server, *read_max, buf))
        }

        fn server_write(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
            let send = Self::sender(&mut self.to_client, &self.write_max);
            self.server.write(iov, send)
        }

        /// The client sends what it has and takes in what came.
        fn client_pump(&mut self) {
            while self.client.wants_write() {
                self.client.write_tls(&mut self.to_server).unwrap();
            }
            let mut came = &self.to_client[..];
            while !came.is_empty() {
                self.client.read_tls(&mut came).unwrap();
                self.client.process_new_packets().unwrap();
                match self.client.reader().read_to_end(&mut self.client_got) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("client read: {e}"),
                }
            }
            self.to_client.clear();
        }

        /// Everything the server has for its reader now, `chunk` at a time.
        fn server_read_all(&mut self, chunk: usize) -> Vec<u8> {
            let mut got = Vec::new();
            let mut buf = vec![0; chunk];
            loop {
                match self.server_read(&mut buf) {
                    Ok(0) => return got,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return got,
                    Err(e) => panic!("server read: {e}"),
                }
            }
        }

        fn client_read_all(&mut self) -> Vec<u8> {
            self.client_pump();
            std::mem::take(&mut self.client_got)
        }

        /// The session holds no buffer of its own.
        fn assert_idle(&self) {
            let io = &self.server.io;
            assert_eq!(io.incoming.capacity(), 0, "incoming kept");
            assert_eq!(io.plain.bytes.capacity(), 0, "plaintext kept");
            assert_eq!(io.outgoing.bytes.capacity(), 0, "ciphertext kept");
        }
    }

    fn pattern(n: usize, seed: usize) -> Vec<u8> {
        (0..n).map(|i| ((i * 7 + seed) % 251) as u8).collect()
    }

    #[test]
    fn data_flows_both_ways_over_tls12_and_tls13_however_the_socket_splits_it() {
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            for read_max in [1, 7, 5000, usize::MAX] {
                let mut wire = Wire::connect(version, read_max);
                wire.assert_idle();
                // Larger than a record, then many small writes.
                let mut sent = pattern(40_000, 1);
                wire.client.writer().write_all(&sent).unwrap();
                for i in 0..100 {
                    let small = pattern(i % 13 + 1, i);
                    wire.client.writer().write_all(&small).unwrap();
                    sent.extend_from_slice(&small);
                }
                wire.client_pump();
                assert!(wire.server_read_all(1000) == sent, "{version:?} {read_max}");
                wire.assert_idle();

                // A large slice, tiny ones (gathered), a middling one; the
                // socket takes 3000 bytes per write.
                let big = pattern(50_000, 2);
                let tiny: Vec<Vec<u8>> = (0..50).map(|i| pattern(i % 5 + 1, i)).collect();
                let mid = pattern(3_000, 3);
                let mut iov = vec![IoSlice::new(&big)];
                iov.extend(tiny.iter().map(|t| IoSlice::new(t)));
                iov.push(IoSlice::new(&mid));
                let expected: Vec<u8> = iov.iter().flat_map(|s| s.iter().copied()).collect();
                wire.write_max.set(3000);
                let mut taken = 0;
                let mut got = Vec::new();
                while taken < expected.len() {
                    // The unwritten rest, as the outbox would hand it over.
                    let rest = &expected[taken..];
                    match wire.server_write(&[IoSlice::new(rest)]) {
                        Ok(n) => taken += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("server write: {e}"),
                    }
                    while !wire.server_flush() {}
                    got.extend(wire.client_read_all());
                }
                got.extend(wire.client_read_all());
                assert!(got == expected, "{version:?} {read_max}: server to client");
                // The slices as given (with gathering) arrive the same.
                wire.write_max.set(usize::MAX);
                assert_eq!(wire.server_write(&iov).unwrap(), expected.len());
                assert!(wire.client_read_all() == expected, "{version:?} gathered");
                wire.assert_idle();
            }
        }
    }

    #[test]
    fn ciphertext_held_for_a_full_socket_is_bounded() {
        let mut wire = Wire::connect(&rustls::version::TLS13, usize::MAX);
        wire.write_max.set(0);
        let data = pattern(1 << 20, 4);
        let taken = wire.server_write(&[IoSlice::new(&data)]).unwrap();
        assert!(taken > 0 && taken <= crate::tls::TLS_BUFFER, "{taken}");
        let held = wire.server.io.outgoing.pending().len();
        assert!(held <= crate::tls::TLS_BUFFER, "{held}");
        let again = wire.server_write(&[IoSlice::new(&data[taken..])]);
        assert_eq!(again.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        wire.write_max.set(usize::MAX);
        assert!(wire.server_flush());
        assert!(wire.client_read_all() == data[..taken]);
        wire.assert_idle();
    }

    /// rustls asks for the peer's update along with its own; the server
    /// answers ahead of its next record (rustls' choice, in both APIs).
    #[test]
    fn a_key_update_from_the_client_is_answered() {
        let mut wire = Wire::connect(&rustls::version::TLS13, usize::MAX);
        wire.client.refresh_traffic_keys().unwrap();
        wire.client.writer().write_all(b"after the update").unwrap();
        wire.client_pump();
        assert_eq!(wire.server_read_all(100), b"after the update");
        assert_eq!(wire.server_write(&[IoSlice::new(b"reply")]).unwrap(), 5);
        // Two records of 27 bytes: the key update (5 bytes of handshake
        // message) and the reply.
        assert_eq!(wire.to_client.len(), 54, "no key update before the reply");
        assert_eq!(wire.client_read_all(), b"reply");
        wire.client.writer().write_all(b"and again").unwrap();
        wire.client_pump();
        assert_eq!(wire.server_read_all(100), b"and again");
        wire.assert_idle();
    }

    #[test]
    fn close_notify_goes_both_ways() {
        let mut wire = Wire::connect(&rustls::version::TLS13, usize::MAX);
        wire.server.close_notify().unwrap();
        assert!(wire.server_flush());
        wire.client_pump();
        let mut rest = Vec::new();
        // A clean end: Ok, not UnexpectedEof.
        wire.client.reader().read_to_end(&mut rest).unwrap();
        wire.client.send_close_notify();
        wire.client_pump();
        assert!(!wire.server.has_input());
        assert_eq!(wire.server_read(&mut [0; 10]).unwrap(), 0);
        assert!(wire.server.has_input());
        wire.assert_idle();
    }

    #[test]
    fn a_bad_record_fails_the_session_with_an_alert() {
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let mut wire = Wire::connect(version, usize::MAX);
            wire.to_server
                .extend_from_slice(&[23, 3, 3, 0, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
            wire.to_server
                .extend_from_slice(&[12, 13, 14, 15, 16, 17, 18, 19, 20]);
            let e = wire.server_read(&mut [0; 100]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{version:?}");
            assert!(wire.server.wants_write(), "{version:?}: no alert");
            assert!(wire.server_flush());
            // Later calls fail at once.
            let e = wire.server_write(&[IoSlice::new(b"x")]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(wire.server.close_notify().is_err());
        }
    }
}
