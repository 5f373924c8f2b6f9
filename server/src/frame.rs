//! Framing, done once per message: the server frame of a message as its
//! sender sent it (raw clients), the `broadcast.v1` and `broadcast.v2`
//! events for it, and the events the server itself sends (welcome,
//! notices).
//! Every recipient of a format gets the same bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use protocol::close::CloseReason;
use protocol::frame::{encode_server_header, MAX_SERVER_HEADER};
use protocol::v1::BodyRef;

/// Frames a `broadcast.v1` event (a text frame).
pub(crate) fn frame_text(json: &[u8]) -> Bytes {
    frame_message(protocol::frame::OpCode::Text, json)
}

/// The `broadcast.v1` notice a v1 client gets before the server closes it
/// with `reason`, framed.
pub(crate) fn notice(reason: CloseReason) -> Bytes {
    let event = protocol::v1::ServerEvent::Notice {
        code: reason.code,
        text: notice_text(reason).to_owned(),
    };
    frame_text(event.encode().as_bytes())
}

/// What a v1 client is told before the server closes it.
fn notice_text(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::SHUTTING_DOWN => "the server is shutting down",
        CloseReason::RESTARTING => {
            "the server is restarting: reconnect now (you will reach another server if there is one)"
        }
        CloseReason::IDLE_TIMEOUT => "closing the connection after a long silence",
        CloseReason::SLOW_CONSUMER => {
            "you are not reading fast enough: too much was waiting to be sent to you"
        }
        CloseReason::MESSAGE_TOO_BIG => "your message is larger than the server accepts",
        CloseReason::INVALID_UTF8 => "your text message was not valid UTF-8",
        CloseReason::RATE_LIMITED => "you are sending messages faster than the server allows",
        other => other.reason,
    }
}

/// Length of the header of a frame made by [`frame_message`].
pub(crate) fn server_header_len(frame: &[u8]) -> usize {
    match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Frames a complete single-frame message: the one copy a message gets.
pub(crate) fn frame_message(opcode: protocol::frame::OpCode, payload: &[u8]) -> Bytes {
    let mut head = [0u8; MAX_SERVER_HEADER];
    let n = encode_server_header(opcode, payload.len(), &mut head);
    let mut frame = BytesMut::with_capacity(n + payload.len());
    frame.put_slice(&head[..n]);
    frame.put_slice(payload);
    frame.freeze()
}

/// The body of `raw` (a server frame of a text or binary message).
fn body_of(raw: &[u8]) -> BodyRef<'_> {
    let payload = &raw[server_header_len(raw)..];
    if raw[0] & 0x0f == protocol::frame::OpCode::Text as u8 {
        // Validated as UTF-8 when it was read.
        BodyRef::Text(std::str::from_utf8(payload).unwrap_or_default())
    } else {
        BodyRef::Data(payload)
    }
}

/// Writes a JSON event with `write` after [`MAX_SERVER_HEADER`] spare bytes
/// and frames it in place.
fn frame_json(size_hint: usize, write: impl FnOnce(&mut bytes::buf::Writer<BytesMut>)) -> Bytes {
    let mut json = BytesMut::with_capacity(MAX_SERVER_HEADER + size_hint + 96);
    json.put_bytes(0, MAX_SERVER_HEADER);
    let mut writer = json.writer();
    write(&mut writer);
    seal(writer.into_inner(), protocol::frame::OpCode::Text)
}

/// The `broadcast.v1` message event for `raw` (a server frame of a text or
/// binary message), framed: what every v1 client gets for it; with its
/// history position (`offset`, `epoch`) when it has one.
pub(crate) fn v1_message(
    raw: &[u8],
    from: u64,
    name: &str,
    time: u64,
    position: Option<(u64, &str)>,
) -> Bytes {
    frame_json(raw.len() + 40, |w| {
        let body = body_of(raw);
        match position {
            None => protocol::v1::encode_message_json(w, from, name, time, body),
            Some(p) => protocol::v1::encode_positioned_message_json(w, from, name, time, p, body),
        }
    })
}

/// The `broadcast.v2` message event for `raw` published on `channel`,
/// framed: what every v2 subscriber of the channel gets for it; with its
/// history position when it has one.
pub(crate) fn v2_message(
    raw: &[u8],
    channel: &str,
    from: u64,
    name: &str,
    time: u64,
    position: Option<(u64, &str)>,
) -> Bytes {
    frame_json(raw.len() + channel.len() + 40, |w| {
        let body = body_of(raw);
        match position {
            None => protocol::v2::encode_message_json(w, channel, from, name, time, body),
            Some(p) => {
                protocol::v2::encode_positioned_message_json(w, channel, from, name, time, p, body);
            }
        }
    })
}

/// Which encodings a message needs besides the raw frame: those some
/// connected client speaks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wanted {
    pub(crate) v1: bool,
    pub(crate) v2: bool,
}

/// Every encoding of one message that its recipients may need, each built
/// once: the raw frame, and the v1 and v2 events while such clients are
/// connected.
pub(crate) fn encodings(
    raw: Bytes,
    channel: &str,
    from: u64,
    name: &str,
    wanted: Wanted,
) -> (Bytes, Option<Bytes>, Option<Bytes>) {
    // Read the clock only for the events that show it.
    let time = if wanted.v1 || wanted.v2 {
        unix_millis()
    } else {
        0
    };
    let v1 = wanted.v1.then(|| v1_message(&raw, from, name, time, None));
    let v2 = wanted
        .v2
        .then(|| v2_message(&raw, channel, from, name, time, None));
    (raw, v1, v2)
}

/// Writes the server header into the [`MAX_SERVER_HEADER`] spare bytes at
/// the front of `buf` (which holds the payload after them) and returns the
/// frame, without moving the payload.
pub(crate) fn seal(mut buf: BytesMut, opcode: protocol::frame::OpCode) -> Bytes {
    let len = buf.len() - MAX_SERVER_HEADER;
    let mut head = [0u8; MAX_SERVER_HEADER];
    let n = encode_server_header(opcode, len, &mut head);
    buf[MAX_SERVER_HEADER - n..MAX_SERVER_HEADER].copy_from_slice(&head[..n]);
    buf.advance(MAX_SERVER_HEADER - n);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastwebsockets::Frame;
    use protocol::frame::OpCode as Op;

    #[test]
    fn server_header_matches_fastwebsockets() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 1 << 20] {
            let payload = vec![0u8; len];
            let mut theirs = Frame::binary(fastwebsockets::Payload::Borrowed(&payload));
            let mut head = [0u8; 14];
            let n = theirs.fmt_head(&mut head);
            let ours = frame_message(Op::Binary, &payload);
            assert_eq!(&ours[..n], &head[..n], "len {len}");
            assert_eq!(ours.len(), n + len);
        }
    }
}
