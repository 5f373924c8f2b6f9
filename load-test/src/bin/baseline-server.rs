//! baseline-server: the broadcast server a typical Rust user writes, as the
//! yardstick for `bench/run.sh`.
//!
//! tokio's multi-thread runtime, tokio-tungstenite, one `tokio::sync::broadcast`
//! channel for everyone, and per connection the two tasks of the well-known
//! chat examples: one reads the socket and publishes into the channel, one
//! forwards from its broadcast receiver to the socket (skipping the messages
//! it published itself, by connection id). A receiver that falls more than
//! `--capacity` messages behind skips the oldest ones (`RecvError::Lagged`),
//! as such code does; lags are counted and printed at exit. Nothing here is
//! tuned down (or up): default WebSocket settings, TCP_NODELAY on, one
//! `send` (write + flush) per message.
//!
//! `baseline-server --host 127.0.0.1 --port 0` prints
//! `baseline-server listening on ws://HOST:PORT/ws`; SIGTERM or Ctrl-C stop it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

/// A plain tokio + tokio-tungstenite broadcast server (benchmark baseline).
#[derive(Debug, Parser)]
#[command(name = "baseline-server", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Capacity of the broadcast channel (messages a receiver may fall behind).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    capacity: u32,
}

#[derive(Default)]
struct Stats {
    connections: AtomicU64,
    lagged: AtomicU64,
    skipped: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Like anyone who tried 10,000 connections once: lift the soft fd limit.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let listener = TcpListener::bind(SocketAddr::new(args.host, args.port)).await?;
    println!(
        "baseline-server listening on ws://{}/ws",
        listener.local_addr()?
    );
    let (tx, _) = broadcast::channel::<(u64, Message)>(args.capacity as usize);
    let stats = Arc::new(Stats::default());
    let mut term = signal(SignalKind::terminate())?;
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    next_id += 1;
                    tokio::spawn(connection(stream, next_id, tx.clone(), stats.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, usually: wait a little.
                    eprintln!("baseline-server: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    eprintln!(
        "baseline-server: {} connections; receivers lagged {} times, skipping {} messages",
        stats.connections.load(Relaxed),
        stats.lagged.load(Relaxed),
        stats.skipped.load(Relaxed)
    );
    Ok(())
}

/// Accepts `/ws` only.
#[allow(clippy::result_large_err)] // the signature tungstenite's callback has
fn only_ws(req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() == "/ws" {
        Ok(resp)
    } else {
        let mut not_found = ErrorResponse::new(Some("not found\n".into()));
        *not_found.status_mut() = StatusCode::NOT_FOUND;
        Err(not_found)
    }
}

async fn connection(
    stream: TcpStream,
    id: u64,
    tx: broadcast::Sender<(u64, Message)>,
    stats: Arc<Stats>,
) {
    let _ = stream.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, only_ws).await else {
        return;
    };
    stats.connections.fetch_add(1, Relaxed);
    let (mut sink, mut source) = ws.split();
    let mut rx = tx.subscribe();

    let forward_stats = stats.clone();
    let mut send_task = tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok((from, _)) if from == id => {}
                Ok((_, msg)) => {
                    if sink.send(msg).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    forward_stats.lagged.fetch_add(1, Relaxed);
                    forward_stats.skipped.fetch_add(n, Relaxed);
                }
                Err(RecvError::Closed) => break,
            }
        }
    });
    let mut recv_task = tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            match msg {
                Message::Text(_) | Message::Binary(_) => {
                    let _ = tx.send((id, msg));
                }
                Message::Close(_) => break,
                _ => {} // tungstenite answers pings itself
            }
        }
    });
    tokio::select! {
        _ = &mut send_task => recv_task.abort(),
        _ = &mut recv_task => send_task.abort(),
    }
}
