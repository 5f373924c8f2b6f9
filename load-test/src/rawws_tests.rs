//! Tests of `rawws` (kept apart so the module reads as its code).

use super::*;
use tokio::net::{TcpListener, TcpStream};

/// A connected pair: our RawWs (after a fake handshake) and the server side.
async fn pair(max_message: usize) -> (RawWs<TcpStream>, TcpStream) {
    pair_with(max_message, Deflate::Off, None).await.unwrap()
}

/// [`pair`], offering `deflate`; the server answers `extensions`.
async fn pair_with(
    max_message: usize,
    deflate: Deflate,
    extensions: Option<&'static str>,
) -> Result<(RawWs<TcpStream>, TcpStream)> {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1024];
        while find(&head, b"\r\n\r\n").is_none() {
            let n = s.read(&mut b).await.unwrap();
            head.extend_from_slice(&b[..n]);
        }
        let text = String::from_utf8(head).unwrap();
        assert!(text.starts_with("GET /ws HTTP/1.1\r\n"), "{text}");
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        let offered = text.contains(&format!("Sec-WebSocket-Extensions: {CLIENT_OFFER}\r\n"));
        assert_eq!(offered, deflate != Deflate::Off, "{text}");
        let answer = extensions
            .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
            .unwrap_or_default();
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             SEC-WEBSOCKET-ACCEPT: {}\r\n{answer}\r\n",
            derive_accept_key(key.trim().as_bytes())
        );
        // A frame right behind the head must not be lost.
        let mut all = resp.into_bytes();
        all.extend_from_slice(&[0x82, 3, b'a', b'b', b'c']);
        s.write_all(&all).await.unwrap();
        s
    });
    let c = TcpStream::connect(addr).await.unwrap();
    let ws = handshake(c, &addr.to_string(), "/ws", None, deflate, 64, max_message).await;
    let s = server.await.unwrap();
    Ok((ws?, s))
}

/// What a compressing server sends: raw deflate at level 1, sync flushed,
/// its 4-byte tail removed (RFC 7692 §7.2.1).
fn compress(payload: &[u8]) -> Vec<u8> {
    let mut z = flate2::Compress::new(flate2::Compression::new(1), false);
    let mut out = Vec::with_capacity(payload.len() + 64);
    z.compress_vec(payload, &mut out, flate2::FlushCompress::Sync)
        .unwrap();
    assert!(
        out.capacity() > out.len(),
        "room left: the flush is complete"
    );
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A server frame: first byte `b0`, then the payload with its length.
fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![b0];
    match payload.len() {
        n @ 0..=125 => f.push(n as u8),
        n @ 126..=0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// Reads until the connection fails; the error.
async fn error_of(ws: &mut RawWs<TcpStream>) -> io::Error {
    loop {
        match ws.try_next() {
            Ok(Some(e)) => panic!("unexpected {e:?}"),
            Ok(None) => assert!(ws.fill().await.unwrap(), "EOF before an error"),
            Err(e) => break e,
        }
    }
}

const SERVER_ANSWER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Reads events until one is there.
async fn next(ws: &mut RawWs<TcpStream>) -> (bool, Vec<u8>, Option<u16>) {
    loop {
        match ws.try_next().unwrap() {
            Some(Event::Data { text, payload }) => return (text, payload.to_vec(), None),
            Some(Event::Close(c)) => return (false, Vec::new(), Some(c)),
            None => assert!(ws.fill().await.unwrap(), "unexpected EOF"),
        }
    }
}

#[tokio::test]
async fn frames_of_every_length_form_and_fragments() {
    let (mut ws, mut s) = pair(1 << 20).await;
    assert_eq!(next(&mut ws).await, (false, b"abc".to_vec(), None));

    let mut bytes = Vec::new();
    // 16-bit length (300 bytes, bigger than the 64-byte buffer: it grows).
    bytes.extend_from_slice(&[0x82, 126, 0x01, 0x2c]);
    bytes.extend(std::iter::repeat_n(7u8, 300));
    // 64-bit length (70,000 bytes).
    bytes.extend_from_slice(&[0x82, 127, 0, 0, 0, 0, 0, 0x01, 0x11, 0x70]);
    bytes.extend(std::iter::repeat_n(9u8, 70_000));
    // A ping in the middle of a fragmented text message.
    bytes.extend_from_slice(&[0x01, 2, b'h', b'e']);
    bytes.extend_from_slice(&[0x89, 1, b'p']);
    bytes.extend_from_slice(&[0x00, 1, b'l']);
    bytes.extend_from_slice(&[0x80, 2, b'l', b'o']);
    // A pong (ignored), then close 1013 "x".
    bytes.extend_from_slice(&[0x8a, 0]);
    bytes.extend_from_slice(&[0x88, 3, 0x03, 0xf5, b'x']);
    s.write_all(&bytes).await.unwrap();

    assert_eq!(next(&mut ws).await, (false, vec![7u8; 300], None));
    assert_eq!(next(&mut ws).await, (false, vec![9u8; 70_000], None));
    assert_eq!(next(&mut ws).await, (true, b"hello".to_vec(), None));
    assert_eq!(next(&mut ws).await.2, Some(1013));

    // The ping was answered with a masked pong carrying "p".
    ws.send_close(1000).await.unwrap();
    let mut got = [0u8; 7 + 8];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(got[0], 0x8a);
    assert_eq!(got[1], 0x80 | 1);
    assert_eq!(got[6] ^ got[2], b'p');
    assert_eq!(got[7], 0x88);
    assert_eq!(got[8], 0x80 | 2);
    assert_eq!([got[13] ^ got[9], got[14] ^ got[10]], 1000u16.to_be_bytes());
    drop(s);
    ws.finish(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn protocol_errors_and_limits() {
    for bad in [
        vec![0x82 | 0x40, 0],         // RSV1 without an extension
        vec![0x82, 0x80, 0, 0, 0, 0], // masked from the server
        vec![0x09, 0],                // fragmented ping
        vec![0x83, 0],                // unknown opcode
        vec![0x80, 0],                // continuation without a message
        vec![0x82, 126, 0x10, 0],     // 4096 bytes > limit 1000
    ] {
        let (mut ws, mut s) = pair(1000).await;
        assert_eq!(next(&mut ws).await.1, b"abc");
        s.write_all(&bad).await.unwrap();
        let err = loop {
            match ws.try_next() {
                Ok(Some(e)) => panic!("{bad:?}: unexpected {e:?}"),
                Ok(None) => assert!(ws.fill().await.unwrap()),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
    }
}

#[tokio::test]
async fn compressed_messages_are_inflated_whole_or_cut_to_their_header() {
    let big: Vec<u8> = b"{\"id\":1,\"name\":\"x\"}"
        .iter()
        .copied()
        .cycle()
        .take(5000)
        .collect();
    for (deflate, want) in [(Deflate::Full, big.len()), (Deflate::Prefix(24), 24)] {
        let (mut ws, mut s) = pair_with(1 << 20, deflate, Some(SERVER_ANSWER))
            .await
            .unwrap();
        assert!(ws.compressed());
        assert_eq!(ws.cuts_messages(), want == 24);
        assert_eq!(next(&mut ws).await.1, b"abc", "uncompressed still read");
        let z = compress(&big);
        let mut bytes = frame(0x82 | RSV1, &z);
        // Fragmented: RSV1 on the first frame only; a text message.
        let (a, b) = z.split_at(z.len() / 2);
        bytes.extend(frame(0x01 | RSV1, a));
        bytes.extend(frame(0x89, b"p"));
        bytes.extend(frame(0x80, b));
        // A short message sent uncompressed between compressed ones.
        bytes.extend(frame(0x82, b"plain"));
        bytes.extend(frame(0x82 | RSV1, &compress(b"tiny")));
        s.write_all(&bytes).await.unwrap();
        let before = ws.read_bytes();
        assert_eq!(next(&mut ws).await, (false, big[..want].to_vec(), None));
        assert_eq!(next(&mut ws).await, (true, big[..want].to_vec(), None));
        assert_eq!(next(&mut ws).await.1, b"plain");
        assert_eq!(next(&mut ws).await.1, b"tiny");
        assert_eq!(
            ws.read_bytes() - before,
            bytes.len() as u64,
            "wire bytes counted"
        );
        assert!(ws.read_bytes() < big.len() as u64, "compressed on the wire");
    }
}

#[tokio::test]
async fn rsv1_needs_the_extension_and_invalid_data_fails_the_connection() {
    // Not offered, or offered and not accepted: RSV1 is a protocol error.
    for deflate in [Deflate::Off, Deflate::Full] {
        let (mut ws, mut s) = pair_with(1000, deflate, None).await.unwrap();
        assert!(!ws.compressed());
        assert_eq!(next(&mut ws).await.1, b"abc");
        s.write_all(&frame(0x82 | RSV1, &compress(b"hello")))
            .await
            .unwrap();
        let e = error_of(&mut ws).await;
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("no extension was negotiated"), "{e}");
    }
    // An answer the offer did not allow fails the upgrade.
    for (deflate, answer) in [
        (Deflate::Off, SERVER_ANSWER),
        (
            Deflate::Full,
            "permessage-deflate; client_max_window_bits=10",
        ),
        (Deflate::Full, "x-webkit-deflate-frame"),
    ] {
        assert!(
            pair_with(1000, deflate, Some(answer)).await.is_err(),
            "{answer}"
        );
    }
    for deflate in [Deflate::Full, Deflate::Prefix(24)] {
        for bad in [
            frame(0x82 | RSV1, &[0xff, 0xff, 0xff, 0xff]), // not deflate
            [frame(0x02 | RSV1, b""), frame(0x80 | RSV1, b"")].concat(), // RSV1 on a continuation
            frame(0x89 | RSV1, b""),                       // on a ping
            frame(0x82 | 0x20, b""),                       // RSV2
        ] {
            let (mut ws, mut s) = pair_with(1000, deflate, Some(SERVER_ANSWER)).await.unwrap();
            assert_eq!(next(&mut ws).await.1, b"abc");
            s.write_all(&bad).await.unwrap();
            assert_eq!(
                error_of(&mut ws).await.kind(),
                io::ErrorKind::InvalidData,
                "{bad:?}"
            );
        }
    }
    // Full inflation keeps to the message limit (a deflate bomb).
    let (mut ws, mut s) = pair_with(1000, Deflate::Full, Some(SERVER_ANSWER))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await.1, b"abc");
    s.write_all(&frame(0x82 | RSV1, &compress(&[b'a'; 100_000])))
        .await
        .unwrap();
    let e = error_of(&mut ws).await;
    assert!(e.to_string().contains("size limit"), "{e}");
}

#[test]
fn responses_are_checked() {
    let ok = "HTTP/1.1 101 Switching Protocols\r\nsec-websocket-accept: abc\r\n\r\n";
    assert_eq!(check_response(ok.as_bytes(), "abc").unwrap(), (None, None));
    let v1 = "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Protocol: broadcast.v1\r\n\
              sec-websocket-accept: abc\r\n\r\n";
    assert_eq!(
        check_response(v1.as_bytes(), "abc").unwrap().0.as_deref(),
        Some("broadcast.v1")
    );
    assert!(check_response(ok.as_bytes(), "abd").is_err());
    let nf = "HTTP/1.1 404 Not Found\r\n\r\n";
    assert!(check_response(nf.as_bytes(), "abc")
        .unwrap_err()
        .to_string()
        .contains("404"));
    let none = "HTTP/1.1 101 Switching Protocols\r\n\r\n";
    assert!(check_response(none.as_bytes(), "abc").is_err());
}

#[test]
fn subprotocol_must_be_the_one_offered() {
    let v1 = Some("broadcast.v1");
    assert!(check_subprotocol(None, None).is_ok());
    assert!(check_subprotocol(v1, v1).is_ok());
    let e = check_subprotocol(v1, None).unwrap_err().to_string();
    assert!(e.contains("did not select subprotocol broadcast.v1"), "{e}");
    assert!(check_subprotocol(v1, Some("chat")).is_err());
    assert!(check_subprotocol(None, v1).is_err());
}
