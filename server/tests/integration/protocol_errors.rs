//! RFC 6455 violations close the offending connection with 1002; control
//! frames (ping, close) are answered correctly.

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::util::*;

/// Sends `frames` on a fresh raw connection and expects Close 1002, then a
/// TCP close; two other clients keep working and got nothing from it.
async fn assert_protocol_error(frames: &[Vec<u8>]) {
    let server = Server::start(&[]).await;
    let mut c = server.connect_many(2, false).await;
    let mut raw = RawClient::connect(&server).await;
    for f in frames {
        raw.send_raw_lenient(f).await;
    }
    raw.expect_close(1002).await;
    // Our side of the TCP connection closes too; the server may wait for it.
    drop(raw);

    c[0].send(Message::text("probe")).await.unwrap();
    assert_eq!(recv(&mut c[1]).await, Message::text("probe"));
    c[1].send(Message::binary(vec![7u8; 10])).await.unwrap();
    assert_eq!(recv(&mut c[0]).await, Message::binary(vec![7u8; 10]));
    server.wait_connections(2).await;
}

#[tokio::test]
async fn unmasked_client_frame_closes_1002() {
    assert_protocol_error(&[encode_frame(true, 0, OP_TEXT, b"hi", false)]).await;
}

#[tokio::test]
async fn reserved_opcode_closes_1002() {
    assert_protocol_error(&[encode_frame(true, 0, 0x3, b"x", true)]).await;
}

#[tokio::test]
async fn reserved_control_opcode_closes_1002() {
    assert_protocol_error(&[encode_frame(true, 0, 0xB, b"", true)]).await;
}

#[tokio::test]
async fn rsv1_bit_closes_1002() {
    assert_protocol_error(&[encode_frame(true, RSV1, OP_TEXT, b"x", true)]).await;
}

#[tokio::test]
async fn rsv2_bit_closes_1002() {
    assert_protocol_error(&[encode_frame(true, RSV2, OP_BINARY, b"x", true)]).await;
}

#[tokio::test]
async fn rsv3_bit_closes_1002() {
    assert_protocol_error(&[encode_frame(true, RSV3, OP_PING, b"x", true)]).await;
}

#[tokio::test]
async fn oversized_ping_closes_1002() {
    assert_protocol_error(&[masked(OP_PING, &[b'p'; 126])]).await;
}

#[tokio::test]
async fn oversized_close_closes_1002() {
    let payload = close_payload(1000, &"r".repeat(124));
    assert_eq!(payload.len(), 126);
    assert_protocol_error(&[masked(OP_CLOSE, &payload)]).await;
}

#[tokio::test]
async fn fragmented_ping_closes_1002() {
    assert_protocol_error(&[
        encode_frame(false, 0, OP_PING, b"half", true),
        encode_frame(true, 0, OP_CONT, b"ping", true),
    ])
    .await;
}

#[tokio::test]
async fn continuation_without_message_closes_1002() {
    assert_protocol_error(&[encode_frame(true, 0, OP_CONT, b"orphan", true)]).await;
}

#[tokio::test]
async fn new_text_during_fragmented_message_closes_1002() {
    assert_protocol_error(&[
        encode_frame(false, 0, OP_TEXT, b"ab", true),
        encode_frame(true, 0, OP_TEXT, b"cd", true),
    ])
    .await;
}

#[tokio::test]
async fn new_binary_during_fragmented_message_closes_1002() {
    assert_protocol_error(&[
        encode_frame(false, 0, OP_BINARY, b"ab", true),
        encode_frame(false, 0, OP_CONT, b"cd", true),
        encode_frame(true, 0, OP_BINARY, b"ef", true),
    ])
    .await;
}

#[tokio::test]
async fn ping_is_answered_with_same_payload() {
    let server = Server::start(&[]).await;
    let mut raw = RawClient::connect(&server).await;
    let max: Vec<u8> = (0..125u8).collect();
    for payload in [&b"hello-ping"[..], &b""[..], &max[..]] {
        raw.send_raw(&masked(OP_PING, payload)).await;
        let f = raw.read_frame().await;
        assert_eq!(f.opcode, OP_PONG, "answer to ping: {f:?}");
        assert!(f.fin);
        assert_eq!(f.payload, payload, "pong payload");
    }
    // An unsolicited pong is allowed and ignored.
    raw.send_raw(&masked(OP_PONG, b"unsolicited")).await;
    raw.send_raw(&masked(OP_PING, b"again")).await;
    let f = raw.read_frame().await;
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_PONG, &b"again"[..]));
}

#[tokio::test]
async fn client_close_gets_close_reply_then_tcp_close() {
    let server = Server::start(&[]).await;
    let mut c = server.connect_many(1, false).await;
    let mut raw = RawClient::connect(&server).await;
    server.wait_connections(2).await;

    raw.send_raw(&masked(OP_CLOSE, &close_payload(1000, "bye")))
        .await;
    let f = raw.read_frame().await;
    assert_eq!(f.opcode, OP_CLOSE, "expected a Close reply, got {f:?}");
    assert!(f.fin);
    if let Some((code, _)) = f.close_code() {
        assert_eq!(code, 1000, "close reply code");
    }
    raw.expect_eof().await;
    server.wait_connections(1).await;

    // The server still serves the remaining client.
    let mut other = server.connect().await;
    let mut pair = vec![c.remove(0), other];
    barrier(&mut pair, false).await;
    other = pair.pop().unwrap();
    other.send(Message::text("still up")).await.unwrap();
    assert_eq!(recv(&mut pair[0]).await, Message::text("still up"));
}
