//! Fan-out: every message reaches every other client, unchanged and in order.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::util::*;

#[tokio::test]
async fn two_clients_exchange() {
    let server = Server::start(&[]).await;
    let mut c = server.connect_many(2, false).await;

    c[0].send(Message::text("hello from a")).await.unwrap();
    assert_eq!(recv(&mut c[1]).await, Message::text("hello from a"));

    c[1].send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(recv(&mut c[0]).await, Message::binary(vec![1u8, 2, 3]));

    // Neither got its own message back.
    assert_quiet(&mut c[0], "client a").await;
    assert_quiet(&mut c[1], "client b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_clients_receive_every_message() {
    const N: usize = 100;
    let server = Server::start(&[]).await;
    let mut clients = server.connect_many(N, false).await;
    server.wait_connections(N as u64).await;

    // Every client publishes one message; each must receive the other 99.
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(Message::text(format!("msg-{i}"))).await.unwrap();
    }
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut seen = [false; N];
            for _ in 0..N - 1 {
                let m = recv(&mut c).await;
                let Message::Text(t) = &m else {
                    panic!("client {i} got {m:?}")
                };
                let from: usize = t
                    .strip_prefix("msg-")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("client {i} got unexpected {t:?}"));
                assert_ne!(from, i, "client {i} received its own message");
                assert!(!seen[from], "client {i} got msg-{from} twice");
                seen[from] = true;
            }
            assert_quiet(&mut c, "client after all 99 messages").await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_sender_order_over_ten_thousand_messages() {
    const PER_SENDER: u64 = 5_000;
    // The senders go as fast as they can, far above the default
    // --max-message-rate: this test is about ordering, not abuse limits.
    let server = Server::start(&["--max-message-rate", "0"]).await;
    // Clients 0 and 1 send; 2 and 3 only receive. The senders also receive
    // each other's stream and check it.
    let clients = server.connect_many(4, false).await;
    let mut sinks = Vec::new();
    let mut readers = Vec::new();
    for (idx, ws) in clients.into_iter().enumerate() {
        let (sink, mut stream) = ws.split();
        sinks.push(sink);
        let expect_from: Vec<u64> = match idx {
            0 => vec![1],
            1 => vec![0],
            _ => vec![0, 1],
        };
        let total = PER_SENDER * expect_from.len() as u64;
        readers.push(tokio::spawn(async move {
            let mut next: HashMap<u64, u64> = expect_from.iter().map(|&s| (s, 0)).collect();
            let read = async {
                for _ in 0..total {
                    let m = loop {
                        match stream.next().await {
                            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                            Some(Ok(m)) => break m,
                            other => panic!("receiver {idx}: stream ended: {other:?}"),
                        }
                    };
                    let Message::Text(t) = &m else {
                        panic!("receiver {idx} got {m:?}")
                    };
                    let (s, n) = t.split_once(':').expect("sender:seq");
                    let (s, n): (u64, u64) = (s.parse().unwrap(), n.parse().unwrap());
                    let want = next
                        .get_mut(&s)
                        .unwrap_or_else(|| panic!("receiver {idx} got a message from {s}"));
                    assert_eq!(n, *want, "receiver {idx}: sender {s} out of order");
                    *want += 1;
                }
            };
            if timeout(Duration::from_secs(40), read).await.is_err() {
                panic!("receiver {idx}: timed out; progress {next:?}");
            }
            for (s, n) in &next {
                assert_eq!(*n, PER_SENDER, "receiver {idx}: count from sender {s}");
            }
        }));
    }
    let mut senders = Vec::new();
    for (s, mut sink) in sinks.drain(..2).enumerate() {
        senders.push(tokio::spawn(async move {
            for n in 0..PER_SENDER {
                sink.feed(Message::text(format!("{s}:{n}"))).await.unwrap();
                if n % 64 == 63 {
                    sink.flush().await.unwrap();
                }
            }
            sink.flush().await.unwrap();
            sink
        }));
    }
    let mut keep = Vec::new();
    for s in senders {
        keep.push(s.await.unwrap());
    }
    for r in readers {
        r.await.unwrap();
    }
    drop((keep, sinks));
}

#[tokio::test]
async fn text_and_binary_preserved_exactly() {
    let server = Server::start(&[]).await;
    let mut c = server.connect_many(2, false).await;
    let big: Vec<u8> = (0..60 * 1024).map(|i| (i * 7 + i / 256) as u8).collect();
    let msgs = vec![
        Message::text(""),
        Message::text("plain ascii"),
        Message::text("héllo wörld ✓ 日本語 🦀"),
        Message::binary(Bytes::new()),
        Message::binary((0..=255u8).collect::<Vec<u8>>()),
        Message::binary(big),
        Message::text("x".repeat(200)),
        Message::binary(vec![0u8; 126]),
    ];
    for m in &msgs {
        c[0].send(m.clone()).await.unwrap();
    }
    for (i, want) in msgs.iter().enumerate() {
        let got = recv(&mut c[1]).await;
        assert!(
            got == *want,
            "message {i} changed: got {} {} bytes, want {} {} bytes",
            if got.is_text() {
                "text"
            } else {
                "binary/other"
            },
            got.len(),
            if want.is_text() { "text" } else { "binary" },
            want.len()
        );
    }
    assert_quiet(&mut c[1], "receiver").await;
}

#[tokio::test]
async fn sender_excluded_by_default() {
    let server = Server::start(&[]).await;
    let mut c = server.connect_many(2, false).await;
    c[0].send(Message::text("from a")).await.unwrap();
    assert_eq!(recv(&mut c[1]).await, Message::text("from a"));
    c[1].send(Message::text("from b")).await.unwrap();
    // If a had been echoed its own message, it would come first.
    assert_eq!(recv(&mut c[0]).await, Message::text("from b"));
    assert_quiet(&mut c[0], "sender a").await;
    assert_quiet(&mut c[1], "sender b").await;
}

#[tokio::test]
async fn echo_flag_includes_sender() {
    let server = Server::start(&["--echo"]).await;
    let mut c = server.connect_many(2, true).await;
    c[0].send(Message::text("echoed")).await.unwrap();
    c[0].send(Message::binary(vec![9u8; 300])).await.unwrap();
    for (i, ws) in c.iter_mut().enumerate() {
        assert_eq!(recv(ws).await, Message::text("echoed"), "client {i}");
        assert_eq!(
            recv(ws).await,
            Message::binary(vec![9u8; 300]),
            "client {i}"
        );
    }
    assert_quiet(&mut c[0], "sender").await;
}

/// Sends `parts` as one fragmented message with pings interleaved and
/// checks the pongs.
pub(crate) async fn send_fragmented(raw: &mut RawClient, opcode: u8, parts: &[&[u8]]) {
    for (i, part) in parts.iter().enumerate() {
        let op = if i == 0 { opcode } else { OP_CONT };
        let fin = i + 1 == parts.len();
        raw.send_raw(&encode_frame(fin, 0, op, part, true)).await;
        if !fin {
            let ping = format!("ping-{i}");
            raw.send_raw(&masked(OP_PING, ping.as_bytes())).await;
            let pong = raw.read_frame().await;
            assert_eq!(
                pong.opcode, OP_PONG,
                "answer to a ping mid-message: {pong:?}"
            );
            assert_eq!(pong.payload, ping.as_bytes(), "pong payload");
        }
    }
}

#[tokio::test]
async fn fragmented_messages_are_reassembled() {
    let server = Server::start(&[]).await;
    let mut c = server.connect_many(2, false).await;
    let mut raw = RawClient::connect(&server).await;

    // Text split inside multi-byte characters ("✓" is e2 9c 93).
    let text = "héllo ✓ wörld ✓ done";
    let b = text.as_bytes();
    let cut1 = text.find('✓').unwrap() + 1;
    let cut2 = text.rfind('✓').unwrap() + 2;
    send_fragmented(&mut raw, OP_TEXT, &[&b[..cut1], &b[cut1..cut2], &b[cut2..]]).await;
    for ws in c.iter_mut() {
        assert_eq!(recv(ws).await, Message::text(text));
    }

    // Binary in 4 fragments, one of them empty.
    let bin: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    send_fragmented(
        &mut raw,
        OP_BINARY,
        &[
            &bin[..1000],
            &bin[1000..1000],
            &bin[1000..2500],
            &bin[2500..],
        ],
    )
    .await;
    for ws in c.iter_mut() {
        assert_eq!(recv(ws).await, Message::binary(bin.clone()));
    }

    // And the reverse direction still works for the raw client.
    c[0].send(Message::text("back")).await.unwrap();
    let f = raw.read_frame().await;
    assert_eq!(
        (f.fin, f.opcode, f.payload.as_slice()),
        (true, OP_TEXT, &b"back"[..])
    );
    assert_eq!(recv(&mut c[1]).await, Message::text("back"));
    assert_quiet(&mut c[0], "sender of back").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_crosses_worker_shards() {
    const N: usize = 8;
    let server = Server::start(&["--workers", "3"]).await;
    let mut clients = server.connect_many(N, false).await;
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(Message::binary(vec![i as u8; 3])).await.unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let mut from = Vec::new();
        for _ in 0..N - 1 {
            match recv(c).await {
                Message::Binary(b) if b.len() == 3 && b[0] == b[1] && b[1] == b[2] => {
                    from.push(b[0] as usize)
                }
                other => panic!("client {i} got {other:?}"),
            }
        }
        from.sort_unstable();
        let want: Vec<usize> = (0..N).filter(|&j| j != i).collect();
        assert_eq!(from, want, "client {i} senders");
    }
}

/// Frames a client sends in the same write as its upgrade request (it did
/// not wait for the answer) are read and delivered in order: whole,
/// fragmented, binary, and one of 30,000 bytes, larger than the HTTP
/// layer's first read (8 KiB): part of it comes with the request, the rest
/// from the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_with_the_upgrade_request_are_delivered() {
    let server = Server::start(&[]).await;
    let mut clients = vec![server.connect().await, server.connect().await];
    barrier(&mut clients, false).await;
    let big = "b".repeat(30_000);
    let mut frames = masked(1, b"one");
    frames.extend(encode_frame(false, 0, 1, b"tw", true));
    frames.extend(encode_frame(true, 0, 0, b"o", true));
    frames.extend(masked(2, &[1, 2, 3]));
    frames.extend(masked(1, big.as_bytes()));
    let _sender = RawClient::connect_sending(&server, &frames).await;
    for ws in &mut clients {
        assert_eq!(recv(ws).await, Message::text("one"));
        assert_eq!(recv(ws).await, Message::text("two"));
        assert_eq!(recv(ws).await, Message::binary(vec![1, 2, 3]));
        assert_eq!(recv(ws).await, Message::text(big.clone()));
    }
}
