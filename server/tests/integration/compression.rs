//! permessage-deflate (RFC 7692): the answer to each kind of offer, messages
//! between compressing and plain clients, fragmented and context-taking
//! compressed input, a deflate bomb, invalid compressed data, and Python
//! `websockets` (which offers the extension by default).

use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::util::*;

const BASE: &str = "permessage-deflate; server_no_context_takeover";

/// Compresses `data` as one permessage-deflate message with `z` (which
/// keeps its context between calls unless reset): a sync flush, its tail
/// removed.
fn deflate_with(z: &mut Compress, data: &[u8]) -> Vec<u8> {
    let start = z.total_in();
    let mut out = Vec::with_capacity(data.len() + 64);
    loop {
        out.reserve(1024);
        let done = (z.total_in() - start) as usize;
        z.compress_vec(&data[done..], &mut out, FlushCompress::Sync)
            .expect("compress");
        if (z.total_in() - start) as usize == data.len() && out.len() < out.capacity() {
            break;
        }
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]), "sync flush tail");
    out.truncate(out.len() - 4);
    out
}

fn deflate(data: &[u8]) -> Vec<u8> {
    deflate_with(&mut Compress::new(Compression::default(), false), data)
}

/// Inflates one permessage-deflate message (fresh context).
fn inflate(data: &[u8]) -> Vec<u8> {
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut z = Decompress::new(false);
    let mut out = Vec::with_capacity(data.len() * 8 + 64);
    loop {
        out.reserve(16 * 1024);
        let done = z.total_in() as usize;
        z.decompress_vec(&input[done..], &mut out, FlushDecompress::Sync)
            .expect("the server's compressed frame inflates");
        if z.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
    }
}

/// A JSON document of about `len` bytes that compresses like real data
/// (fields repeat, values vary).
fn json(len: usize) -> String {
    let mut s = String::from("[");
    let mut i = 0u64;
    while s.len() < len {
        let x = i.wrapping_mul(2_654_435_761) % 100_000;
        s.push_str(&format!(
            "{{\"id\":{i},\"user\":\"user-{x}\",\"price\":{}.{:02},\"side\":\"{}\"}},",
            x / 7,
            x % 100,
            if x.is_multiple_of(2) { "buy" } else { "sell" }
        ));
        i += 1;
    }
    s.pop();
    s.push(']');
    s
}

/// Makes sure every raw client in `raws` is registered: `sender` sends
/// markers until each has received one, then a last one each reads up to.
async fn raw_barrier(sender: &mut Ws, raws: &mut [&mut RawClient]) {
    let mut pending: Vec<usize> = (0..raws.len()).collect();
    for round in 0..40 {
        sender
            .send(Message::text(format!("sync-{round}")))
            .await
            .unwrap();
        let mut still = Vec::new();
        for &i in &pending {
            match tokio::time::timeout(Duration::from_millis(1000), raws[i].read_frame()).await {
                Ok(f) => assert!(f.payload.starts_with(b"sync-"), "{f:?}"),
                Err(_) => still.push(i),
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
    }
    assert!(pending.is_empty(), "raw clients {pending:?} got nothing");
    sender.send(Message::text("sync-done")).await.unwrap();
    for raw in raws.iter_mut() {
        while raw.read_frame().await.payload != b"sync-done" {}
    }
}

#[tokio::test]
async fn each_offer_gets_the_answer_the_rfc_allows() {
    let server = Server::start(&[]).await;
    let cases: &[(&str, Option<String>)] = &[
        ("permessage-deflate", Some(BASE.into())),
        ("permessage-deflate; client_max_window_bits", Some(BASE.into())),
        ("permessage-deflate; server_no_context_takeover", Some(BASE.into())),
        (
            "permessage-deflate; client_no_context_takeover",
            Some(format!("{BASE}; client_no_context_takeover")),
        ),
        (
            "permessage-deflate; server_max_window_bits=10",
            Some(format!("{BASE}; server_max_window_bits=10")),
        ),
        (
            "permessage-deflate; client_max_window_bits=\"12\"",
            Some(format!("{BASE}; client_max_window_bits=12")),
        ),
        (
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=9; client_max_window_bits=8",
            Some(format!(
                "{BASE}; client_no_context_takeover; server_max_window_bits=9; client_max_window_bits=8"
            )),
        ),
        // zlib has no raw 8-bit window: that offer is declined, the next taken.
        ("permessage-deflate; server_max_window_bits=8", None),
        (
            "permessage-deflate; server_max_window_bits=8, permessage-deflate",
            Some(BASE.into()),
        ),
        ("permessage-deflate; server_max_window_bits=16", None),
        ("permessage-deflate; server_max_window_bits", None),
        ("permessage-deflate; client_max_window_bits=09", None),
        ("permessage-deflate; server_no_context_takeover=1", None),
        ("permessage-deflate; client_no_context_takeover; client_no_context_takeover", None),
        ("permessage-deflate; mystery", None),
        ("x-webkit-deflate-frame", None),
        ("x-webkit-deflate-frame, permessage-deflate", Some(BASE.into())),
    ];
    for (offer, want) in cases {
        let (mut raw, answer) = RawClient::connect_offering(&server, offer).await;
        assert_eq!(&answer, want, "offer {offer:?}");
        // Either way the connection works: a ping is answered.
        raw.send_raw(&masked(OP_PING, b"alive")).await;
        assert_eq!(raw.read_until(OP_PONG).await.payload, b"alive");
    }
    let off = Server::start(&["--compression", "off"]).await;
    let (_, answer) = RawClient::connect_offering(&off, "permessage-deflate").await;
    assert_eq!(answer, None, "--compression off");
}

#[tokio::test]
async fn compressed_once_for_every_deflate_client_and_plain_for_the_others() {
    let server = Server::start(&["--workers", "2"]).await;
    let (mut sender, _) = RawClient::connect_offering(&server, "permessage-deflate").await;
    let (mut a, _) = RawClient::connect_offering(&server, "permessage-deflate").await;
    let (mut b, _) = RawClient::connect_offering(&server, "permessage-deflate").await;
    let mut plain = server.connect().await;
    raw_barrier(&mut plain, &mut [&mut sender, &mut a, &mut b]).await;

    // A compressed text message from a deflate client.
    let doc = json(4096);
    sender
        .send_raw(&encode_frame(
            true,
            RSV1,
            OP_TEXT,
            &deflate(doc.as_bytes()),
            true,
        ))
        .await;
    for (who, raw) in [("a", &mut a), ("b", &mut b)] {
        let f = raw.read_frame().await;
        assert_eq!((f.opcode, f.rsv, f.fin), (OP_TEXT, RSV1, true), "{who}");
        assert!(
            f.payload.len() < doc.len() / 2,
            "{who}: {} bytes",
            f.payload.len()
        );
        assert_eq!(inflate(&f.payload), doc.as_bytes(), "{who}");
    }
    assert_eq!(next_data(&mut plain).await, Message::text(doc.clone()));
    // Compressed once, for the two recipients (on both shards).
    let samples = server.metrics().await;
    assert_eq!(
        metric(&samples, "broadcast_deflate_messages_total", ""),
        1.0
    );
    assert_eq!(
        metric(&samples, "broadcast_deflate_bytes_before_total", ""),
        doc.len() as f64
    );
    assert_eq!(
        metric(&samples, "broadcast_deflate_connections_open", ""),
        3.0
    );

    // From the plain client: compressed for the deflate ones.
    let bytes: Vec<u8> = doc.bytes().rev().collect();
    plain.send(Message::binary(bytes.clone())).await.unwrap();
    for raw in [&mut sender, &mut a, &mut b] {
        let f = raw.read_frame().await;
        assert_eq!((f.opcode, f.rsv), (OP_BINARY, RSV1));
        assert_eq!(inflate(&f.payload), bytes);
    }
    // Under --compression-min-size (256): plain, RSV1 clear.
    plain.send(Message::text("short")).await.unwrap();
    let f = a.read_frame().await;
    assert_eq!(
        (f.opcode, f.rsv, &f.payload[..]),
        (OP_TEXT, 0, &b"short"[..])
    );
}

#[tokio::test]
async fn fragmented_and_context_taking_input_is_inflated() {
    let server = Server::start(&[]).await;
    let (mut sender, answer) = RawClient::connect_offering(&server, "permessage-deflate").await;
    assert_eq!(answer.as_deref(), Some(BASE));
    let mut plain = server.connect().await;
    raw_barrier(&mut plain, &mut [&mut sender]).await;

    // One compressed message in three fragments: RSV1 on the first only.
    let doc = json(3000);
    let z = deflate(doc.as_bytes());
    let (p1, rest) = z.split_at(z.len() / 3);
    let (p2, p3) = rest.split_at(rest.len() / 2);
    sender
        .send_raw(&encode_frame(false, RSV1, OP_TEXT, p1, true))
        .await;
    sender
        .send_raw(&encode_frame(false, 0, OP_CONT, p2, true))
        .await;
    sender.send_raw(&masked(OP_PING, b"mid")).await;
    sender
        .send_raw(&encode_frame(true, 0, OP_CONT, p3, true))
        .await;
    assert_eq!(next_data(&mut plain).await, Message::text(doc.clone()));

    // Context takeover: the second message refers back into the first.
    let mut z = Compress::new(Compression::default(), false);
    let first = deflate_with(&mut z, doc.as_bytes());
    let second = deflate_with(&mut z, doc.as_bytes());
    assert!(second.len() < first.len() / 4, "the second refers back");
    for payload in [first, second] {
        sender
            .send_raw(&encode_frame(true, RSV1, OP_TEXT, &payload, true))
            .await;
        assert_eq!(next_data(&mut plain).await, Message::text(doc.clone()));
    }
    // An uncompressed message on the same connection still goes through.
    sender.send_raw(&masked(OP_TEXT, b"plain one")).await;
    assert_eq!(next_data(&mut plain).await, Message::text("plain one"));
}

/// Peak resident memory of a process, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[tokio::test]
async fn a_deflate_bomb_closes_with_1009_before_it_is_inflated() {
    let server = Server::start(&["--max-message-size", "65536"]).await;
    let (mut raw, _) = RawClient::connect_offering(&server, "permessage-deflate").await;
    // 256 MiB of zeros compress to about 256 KiB: sent as 8 fragments of
    // 32 KiB, each under the frame limit.
    let mut z = Compress::new(Compression::best(), false);
    let zeros = vec![0u8; 1 << 20];
    let mut bomb = Vec::new();
    for _ in 0..256 {
        bomb.extend(deflate_with(&mut z, &zeros));
    }
    assert!(bomb.len() < 512 * 1024, "{} bytes", bomb.len());
    let before = peak_rss_kib(server.pid());
    let chunks: Vec<&[u8]> = bomb.chunks(32 * 1024).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let (rsv, op) = if i == 0 {
            (RSV1, OP_BINARY)
        } else {
            (0, OP_CONT)
        };
        raw.send_raw_lenient(&encode_frame(i + 1 == chunks.len(), rsv, op, chunk, true))
            .await;
    }
    let reason = raw.expect_close(1009).await;
    assert_eq!(reason, "message too big");
    let grown = peak_rss_kib(server.pid()).saturating_sub(before);
    assert!(
        grown < 32 * 1024,
        "peak RSS grew by {grown} KiB inflating a bomb"
    );
    // The server is fine.
    let mut c = server.connect_many(2, false).await;
    c[0].send(Message::text("after")).await.unwrap();
    assert_eq!(next_data(&mut c[1]).await, Message::text("after"));
}

#[tokio::test]
async fn invalid_compressed_data_and_misplaced_rsv1_close_the_connection() {
    let server = Server::start(&[]).await;
    // Not a DEFLATE stream (block type 3 is reserved): 1007.
    let (mut raw, _) = RawClient::connect_offering(&server, "permessage-deflate").await;
    raw.send_raw(&encode_frame(true, RSV1, OP_BINARY, &[0xff; 16], true))
        .await;
    assert_eq!(raw.expect_close(1007).await, "invalid compressed data");
    // Compressed text that inflates to invalid UTF-8: 1007.
    let (mut raw, _) = RawClient::connect_offering(&server, "permessage-deflate").await;
    raw.send_raw(&encode_frame(
        true,
        RSV1,
        OP_TEXT,
        &deflate(b"ok \xc0\xaf no"),
        true,
    ))
    .await;
    assert_eq!(raw.expect_close(1007).await, "invalid UTF-8");
    // RSV1 on a continuation frame, on a control frame: 1002.
    let (mut raw, _) = RawClient::connect_offering(&server, "permessage-deflate").await;
    raw.send_raw(&encode_frame(false, 0, OP_TEXT, b"part", true))
        .await;
    raw.send_raw(&encode_frame(true, RSV1, OP_CONT, b"more", true))
        .await;
    raw.expect_close(1002).await;
    let (mut raw, _) = RawClient::connect_offering(&server, "permessage-deflate").await;
    raw.send_raw(&encode_frame(true, RSV1, OP_PING, b"", true))
        .await;
    raw.expect_close(1002).await;
    // RSV1 without the extension negotiated: 1002.
    let mut raw = RawClient::connect(&server).await;
    raw.send_raw(&encode_frame(true, RSV1, OP_TEXT, &deflate(b"hello"), true))
        .await;
    raw.expect_close(1002).await;
}

/// The Python interpreter with `websockets` installed (`.ci/test.sh`'s
/// setup makes it).
fn websockets_python() -> String {
    if let Ok(python) = std::env::var("BROADCAST_WEBSOCKETS_PYTHON") {
        return python;
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let python = format!("{home}/.cache/broadcast-server/websockets-15.0.1/bin/python");
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} not found: run .ci/test.sh (its setup installs websockets==15.0.1 there), \
         or set BROADCAST_WEBSOCKETS_PYTHON"
    );
    python
}

#[tokio::test]
async fn python_websockets_negotiates_and_interoperates() {
    let server = Server::start(&[]).await;
    let mut plain = server.connect_many(2, false).await.pop().unwrap();
    let script = r#"
import asyncio, sys, websockets
async def main(url):
    async with websockets.connect(url, max_size=2**22) as ws:
        print("EXT", ws.response.headers.get("Sec-WebSocket-Extensions"), flush=True)
        doc = sys.stdin.readline().strip()
        await ws.send(doc)
        got = await ws.recv()
        print("GOT", len(got), got == doc[::-1], flush=True)
asyncio.run(main(sys.argv[1]))
"#;
    let doc = json(8000);
    let mut child = tokio::process::Command::new(websockets_python())
        .args(["-c", script, &server.ws_url()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run python");
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(EVENT_TIMEOUT, lines.next_line())
        .await
        .expect("python connected")
        .unwrap()
        .unwrap_or_default();
    assert_eq!(line, format!("EXT {BASE}"));
    stdin
        .write_all(format!("{doc}\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(next_data(&mut plain).await, Message::text(doc.clone()));
    let reversed: String = doc.chars().rev().collect();
    plain.send(Message::text(reversed)).await.unwrap();
    let line = tokio::time::timeout(EVENT_TIMEOUT, lines.next_line())
        .await
        .expect("python answered")
        .unwrap()
        .unwrap_or_default();
    assert_eq!(line, format!("GOT {} True", doc.len()));
    // Both messages were compressed (once each): the fan-out compresses a
    // format while any client of it negotiated the extension, its sender
    // included.
    let samples = server.metrics().await;
    assert_eq!(
        metric(&samples, "broadcast_deflate_messages_total", ""),
        2.0
    );
    let status = tokio::time::timeout(EVENT_TIMEOUT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}
