//! Size limits, UTF-8 validation, slow consumers and the connection cap.
//! In each case only the offending connection is closed.

use std::time::Duration;

use futures_util::SinkExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::util::*;

/// The two tungstenite clients still exchange messages, and nothing the
/// offending clients sent was delivered (the next message is the probe).
async fn assert_others_unaffected(c: &mut [Ws], probe: &str) {
    c[0].send(Message::text(probe)).await.unwrap();
    assert_eq!(recv(&mut c[1]).await, Message::text(probe), "observer");
    c[1].send(Message::text(format!("{probe}-reply")))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut c[0]).await,
        Message::text(format!("{probe}-reply")),
        "observer"
    );
}

#[tokio::test]
async fn oversized_message_closes_1009() {
    let server = Server::start(&["--max-message-size", "1024"]).await;
    let mut c = server.connect_many(2, false).await;

    // Exactly at the limit: accepted and delivered.
    let mut raw = RawClient::connect(&server).await;
    let at_limit: Vec<u8> = (0..1024u32).map(|i| i as u8).collect();
    raw.send_raw(&masked(OP_BINARY, &at_limit)).await;
    for ws in c.iter_mut() {
        assert_eq!(recv(ws).await, Message::binary(at_limit.clone()));
    }

    // One byte over, in a single frame.
    raw.send_raw_lenient(&masked(OP_TEXT, "y".repeat(1025).as_bytes()))
        .await;
    let reason = raw.expect_close(1009).await;
    assert_eq!(reason, "message too big");

    // A fragmented message whose fragments are each below the limit.
    let mut raw = RawClient::connect(&server).await;
    for i in 0..3 {
        let op = if i == 0 { OP_BINARY } else { OP_CONT };
        raw.send_raw_lenient(&encode_frame(i == 2, 0, op, &[i as u8; 400], true))
            .await;
    }
    let reason = raw.expect_close(1009).await;
    assert_eq!(reason, "message too big");

    // A fragmented message of exactly the limit is fine.
    let mut raw = RawClient::connect(&server).await;
    for i in 0..4 {
        let op = if i == 0 { OP_BINARY } else { OP_CONT };
        raw.send_raw(&encode_frame(
            i == 3,
            0,
            op,
            &at_limit[i * 256..(i + 1) * 256],
            true,
        ))
        .await;
    }
    for ws in c.iter_mut() {
        assert_eq!(recv(ws).await, Message::binary(at_limit.clone()));
    }

    // A real client library sees the same close.
    let mut t = server.connect().await;
    t.send(Message::binary(vec![1u8; 5000])).await.unwrap();
    assert_eq!(
        expect_ws_close(&mut t).await,
        (1009, "message too big".to_owned())
    );

    assert_others_unaffected(&mut c, "after-too-big").await;
    // The raw client that sent the accepted fragmented message is still up
    // and received both probe messages.
    for want in ["after-too-big", "after-too-big-reply"] {
        let f = raw.read_frame().await;
        assert_eq!((f.opcode, f.payload.as_slice()), (OP_TEXT, want.as_bytes()));
    }
}

#[tokio::test]
async fn invalid_utf8_closes_1007() {
    let server = Server::start(&[]).await;
    let mut c = server.connect_many(2, false).await;

    // Single frame with a byte that never appears in UTF-8.
    let mut raw = RawClient::connect(&server).await;
    raw.send_raw(&masked(OP_TEXT, b"fo\xffo")).await;
    raw.expect_close(1007).await;

    // Single frame, overlong encoding of '/'.
    let mut raw = RawClient::connect(&server).await;
    raw.send_raw(&masked(OP_TEXT, b"a\xc0\xafb")).await;
    raw.expect_close(1007).await;

    // Fragmented: a valid prefix of a 3-byte sequence, then a bad continuation byte.
    let mut raw = RawClient::connect(&server).await;
    raw.send_raw(&encode_frame(false, 0, OP_TEXT, b"abc\xe2\x82", true))
        .await;
    raw.send_raw_lenient(&encode_frame(true, 0, OP_CONT, b"(xyz", true))
        .await;
    raw.expect_close(1007).await;

    // Fragmented: every fragment could be a prefix, but the message ends
    // inside a character.
    let mut raw = RawClient::connect(&server).await;
    raw.send_raw(&encode_frame(false, 0, OP_TEXT, b"ab\xe2", true))
        .await;
    raw.send_raw_lenient(&encode_frame(true, 0, OP_CONT, b"\x82", true))
        .await;
    raw.expect_close(1007).await;

    // Binary messages are not UTF-8 checked.
    let mut raw = RawClient::connect(&server).await;
    raw.send_raw(&masked(OP_BINARY, b"\xff\xfe\xc0")).await;
    for ws in c.iter_mut() {
        assert_eq!(recv(ws).await, Message::binary(&b"\xff\xfe\xc0"[..]));
    }

    assert_others_unaffected(&mut c, "after-bad-utf8").await;
}

const SLOW_MSGS: u32 = 120;
const SLOW_MSG_LEN: usize = 60 * 1024;

fn slow_payload(i: u32) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; SLOW_MSG_LEN];
    v[..4].copy_from_slice(&i.to_be_bytes());
    let n = v.len();
    v[n - 4..].copy_from_slice(&i.to_be_bytes());
    v
}

/// Spawns a task per client that reads `n` messages and checks each is
/// `slow_payload(i)`, reporting progress on a watch channel.
fn spawn_checked_readers(
    clients: Vec<Ws>,
    n: u32,
) -> (Vec<watch::Receiver<u32>>, Vec<JoinHandle<Ws>>) {
    let mut progress = Vec::new();
    let mut readers = Vec::new();
    for (r, mut ws) in clients.into_iter().enumerate() {
        let (tx, rx) = watch::channel(0u32);
        progress.push(rx);
        readers.push(tokio::spawn(async move {
            for i in 0..n {
                let m = recv(&mut ws).await;
                match &m {
                    Message::Binary(b) => {
                        assert_eq!(b.len(), SLOW_MSG_LEN, "reader {r}: message {i} length");
                        assert!(
                            b[..] == slow_payload(i)[..],
                            "reader {r}: expected message {i}, got one starting {:?}",
                            &b[..4]
                        );
                    }
                    other => panic!("reader {r}: expected message {i}, got {other:?}"),
                }
                tx.send(i + 1).unwrap();
            }
            ws
        }));
    }
    (progress, readers)
}

/// Publishes `slow_payload(0..n)`, keeping at most 2 messages in flight
/// towards the checked readers, so they can never legitimately be slow
/// consumers themselves.
async fn publish_paced(publisher: &mut Ws, progress: &mut [watch::Receiver<u32>], n: u32) {
    let publish = async {
        for i in 0..n {
            publisher
                .send(Message::binary(slow_payload(i)))
                .await
                .unwrap();
            let floor = i.saturating_sub(1);
            for rx in progress.iter_mut() {
                rx.wait_for(|&got| got >= floor)
                    .await
                    .expect("a reader stopped early");
            }
        }
    };
    timeout(Duration::from_secs(30), publish)
        .await
        .expect("readers fell behind: publishing timed out");
}

async fn join_readers(readers: Vec<JoinHandle<Ws>>) -> Vec<Ws> {
    let mut good = Vec::new();
    for r in readers {
        good.push(
            timeout(EVENT_TIMEOUT, r)
                .await
                .expect("reader did not finish")
                .unwrap(),
        );
    }
    good
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_reading_client_is_cut_off_and_others_get_everything() {
    let server = Server::start(&["--max-backlog", "262144"]).await;
    // 0 publishes, 1 and 2 read everything.
    let c = server.connect_many(3, false).await;
    let mut slow = RawClient::connect_small_rcvbuf(&server, 4096).await;
    server.wait_connections(4).await;

    let mut c = c.into_iter();
    let mut publisher = c.next().unwrap();
    let (mut progress, readers) = spawn_checked_readers(c.collect(), SLOW_MSGS);
    // ~7 MB: far more than the kernel buffers plus the 256 KiB backlog.
    publish_paced(&mut publisher, &mut progress, SLOW_MSGS).await;

    // Drain the slow client right away: whole, in-order messages (a frame
    // the server had started writing is finished), then Close 1013 or at
    // least EOF.
    let mut got = 0u32;
    let mut close = None;
    loop {
        match slow.read_within(EVENT_TIMEOUT).await {
            Read::Eof => break,
            Read::Frame(f) => match f.opcode {
                OP_BINARY => {
                    assert!(f.fin);
                    assert!(
                        f.payload == slow_payload(got),
                        "slow client: message {got} wrong or out of order: len {}, starts {:?}",
                        f.payload.len(),
                        &f.payload[..8.min(f.payload.len())]
                    );
                    got += 1;
                }
                OP_PING => {}
                OP_CLOSE => {
                    close = f.close_code();
                    slow.finish_close().await;
                    break;
                }
                _ => panic!("slow client: unexpected frame {f:?}"),
            },
        }
    }
    assert!(
        got < SLOW_MSGS,
        "the slow client received all {got} messages: it was never cut off"
    );
    if let Some((code, reason)) = &close {
        assert_eq!(
            (*code, reason.as_str()),
            (1013, "slow consumer"),
            "close sent to the slow consumer"
        );
    }
    // The server forgot it.
    drop(slow);
    server.wait_connections(3).await;

    // The healthy clients are still connected and working.
    let mut good = join_readers(readers).await.into_iter();
    let (mut a, mut b) = (good.next().unwrap(), good.next().unwrap());
    publisher.send(Message::text("after")).await.unwrap();
    assert_eq!(recv(&mut a).await, Message::text("after"));
    assert_eq!(recv(&mut b).await, Message::text("after"));
    a.send(Message::text("reply")).await.unwrap();
    assert_eq!(recv(&mut publisher).await, Message::text("reply"));
}

#[tokio::test]
async fn max_connections_refuses_with_503() {
    let server = Server::start(&["--max-connections", "2"]).await;
    let mut c = server.connect_many(2, false).await;

    match timeout(
        EVENT_TIMEOUT,
        tokio_tungstenite::connect_async(server.ws_url()),
    )
    .await
    {
        Ok(Err(WsError::Http(resp))) => assert_eq!(resp.status().as_u16(), 503),
        Ok(Err(e)) => panic!("third connection: expected HTTP 503, got error {e}"),
        Ok(Ok(_)) => panic!("third connection was accepted despite --max-connections 2"),
        Err(_) => panic!("third connection: no answer"),
    }
    // The refused attempt did not disturb the others.
    c[0].send(Message::text("still here")).await.unwrap();
    assert_eq!(recv(&mut c[1]).await, Message::text("still here"));

    // Freeing a slot lets a new client in.
    let mut gone = c.remove(0);
    gone.close(None).await.unwrap();
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    let mut fresh = loop {
        match tokio_tungstenite::connect_async(server.ws_url()).await {
            Ok((ws, _)) => break ws,
            Err(WsError::Http(resp)) if resp.status().as_u16() == 503 => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "slot never freed after a client closed"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("reconnect: {e}"),
        }
    };
    let mut pair = vec![c.remove(0), fresh];
    barrier(&mut pair, false).await;
    fresh = pair.pop().unwrap();
    fresh.send(Message::text("new")).await.unwrap();
    assert_eq!(recv(&mut pair[0]).await, Message::text("new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_reader_within_backlog_gets_every_message_intact() {
    // A reader that stops reading for a while, but whose backlog stays
    // within --max-backlog, must later receive every byte exactly once.
    const N: u32 = 100;
    let server = Server::start(&["--max-backlog", "33554432"]).await;
    let c = server.connect_many(3, false).await;
    let mut paused = RawClient::connect_small_rcvbuf(&server, 4096).await;
    server.wait_connections(4).await;

    let mut c = c.into_iter();
    let mut publisher = c.next().unwrap();
    let (mut progress, readers) = spawn_checked_readers(c.collect(), N);
    // ~6 MB: more than the kernel buffers hold, so the server queues the
    // rest while new messages keep arriving.
    publish_paced(&mut publisher, &mut progress, N).await;
    let _readers = join_readers(readers).await;

    for i in 0..N {
        let f = paused.read_frame().await;
        assert_eq!(
            (f.fin, f.opcode),
            (true, OP_BINARY),
            "paused reader: frame {i}"
        );
        assert!(
            f.payload == slow_payload(i),
            "paused reader: message {i} corrupted or out of order: len {}, starts {:?}",
            f.payload.len(),
            &f.payload[..8.min(f.payload.len())]
        );
    }
    assert_eq!(server.health_connections().await, 4);
}
