//! Several nodes as one broadcast domain, through Redis pub/sub.
//!
//! With `--redis URL`, every node subscribes to one Redis channel
//! (`--redis-channel`) and publishes there each message its own clients
//! send. Redis is the engine; this module only relays:
//!
//! - **Out.** [`Relay::offer`] runs on the shard that received the message,
//!   right where it is published locally. It packs an [`Envelope`] (one
//!   allocation, one copy of the payload) and pushes it on an unbounded
//!   channel whose *bytes* are bounded by [`QUEUE_BYTES`]: when the link is
//!   down or the budget is spent, the message is counted as not relayed
//!   instead (local delivery is unaffected). One task on the server's own
//!   runtime ([`publish_loop`]) takes everything waiting, up to
//!   [`MAX_PIPELINE`] messages, and sends it as one pipeline of `PUBLISH`
//!   commands on one connection, so the link costs one round trip per batch,
//!   not per message.
//! - **In.** A second connection ([`subscribe_loop`]) receives envelopes,
//!   skips those carrying this node's id (the sender's node has already
//!   delivered them locally: no duplicates, no loops), frames each message
//!   once (the raw frame, and the `broadcast.v1` event while v1 clients are
//!   connected) and pushes it to every local shard through the same
//!   [`Fanout`] as local messages. A node never re-publishes what it got from
//!   Redis.
//!
//! **Per-sender order.** A client lives on one shard, so its messages enter
//! the relay channel in the order it sent them; the single publishing task
//! sends them in that order on a single connection and waits for each
//! pipeline before the next; Redis runs one connection's commands in order and
//! delivers a channel's messages to each subscriber in the order it ran the
//! `PUBLISH`es; each receiving node handles its subscription in one task that
//! pushes to every shard's FIFO inbox in that order. Each hop is FIFO, so the
//! order holds end to end.
//!
//! **Faults.** Both connections ping Redis every [`PING_EVERY`] while idle.
//! When either fails, the link is *degraded* (`/healthz`, the
//! `broadcast_cluster_link_up` gauge); this is logged once, as is the
//! recovery. Each side reconnects with exponential backoff and jitter
//! ([`Backoff`]). Messages that were queued, in a failed pipeline, or offered
//! while the publishing side is down are counted as not relayed: at most
//! once, never twice. Redis pub/sub keeps nothing for a subscriber that is
//! away, so what other nodes publish during an outage is not seen here.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use protocol::backoff::Backoff;

use crate::config::ClusterConfig;
use crate::fanout::{Broadcast, ConnId, Fanout, LOBBY};
use crate::stats::Stats;

mod envelope;

use envelope::Envelope;

/// Default of `--redis-channel`.
pub const DEFAULT_CHANNEL: &str = "broadcast-server";

/// Most bytes of envelopes waiting for the publishing task; past it, messages
/// are counted as not relayed. Bounds memory whatever the message size.
const QUEUE_BYTES: usize = 32 << 20;
/// Most `PUBLISH` commands in one pipeline.
const MAX_PIPELINE: usize = 1024;
/// How often an idle connection checks that Redis still answers.
const PING_EVERY: Duration = Duration::from_secs(1);
/// How long a connection attempt, a ping or a pipeline may take.
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// Reconnect delays (`protocol::backoff`, full jitter): the first ceiling,
/// doubling up to the cap, reset once connected.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// How long the start-up check waits for Redis.
const START_TIMEOUT: Duration = Duration::from_secs(3);
/// Why joining the cluster at start failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClusterError {
    /// The `--redis` value is not a Redis URL this build can use.
    BadUrl {
        /// The URL, without its password.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Redis could not be reached or did not answer a `PING`.
    Unreachable {
        /// The URL, without its password.
        url: String,
        /// The client's error.
        reason: String,
    },
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadUrl { url, reason } => write!(f, "invalid --redis URL `{url}`: {reason}"),
            Self::Unreachable { url, reason } => {
                write!(f, "cannot reach Redis at {url}: {reason}")
            }
        }
    }
}

impl std::error::Error for ClusterError {}

/// The URL with any password replaced by `***`, for messages and logs.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// Parses the URL: `redis://` or `redis+unix://` (no TLS in this build).
fn client(url: &str) -> Result<redis::Client, ClusterError> {
    let bad = |reason: String| ClusterError::BadUrl {
        url: redact(url),
        reason,
    };
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some("redis" | "redis+unix" | "unix") => {}
        Some("rediss") => return Err(bad("TLS (rediss://) is not supported; use redis://".into())),
        _ => return Err(bad("expected redis://HOST[:PORT][/DB]".into())),
    }
    redis::Client::open(url).map_err(|e| bad(e.to_string()))
}

/// The start-up check: the URL parses and Redis answers a `PING` within
/// [`START_TIMEOUT`]. A node that cannot reach its broker at start is most
/// likely misconfigured (a typo in the host or port), and running it alone
/// would silently split the broadcast domain, so the binary exits 1 instead.
/// Once running, a lost link is a fault the node rides out (see the module
/// docs).
///
/// # Errors
/// [`ClusterError::BadUrl`] or [`ClusterError::Unreachable`].
pub fn check(config: &ClusterConfig) -> Result<(), ClusterError> {
    let client = client(&config.url)?;
    let unreachable = |e: redis::RedisError| ClusterError::Unreachable {
        url: redact(&config.url),
        reason: e.to_string(),
    };
    let mut conn = client
        .get_connection_with_timeout(START_TIMEOUT)
        .map_err(unreachable)?;
    conn.set_read_timeout(Some(START_TIMEOUT))
        .map_err(unreachable)?;
    redis::cmd("PING")
        .query::<redis::Value>(&mut conn)
        .map_err(unreachable)?;
    Ok(())
}

/// The shards' end of the relay: cloned into the shared hub, used once per
/// published message.
#[derive(Debug, Clone)]
pub(crate) struct Relay {
    node: u64,
    tx: mpsc::UnboundedSender<Bytes>,
    link: Arc<Link>,
}

impl Relay {
    /// Hands a message a local client sent to the publishing task, or
    /// counts it as not relayed. Never blocks, never waits for Redis.
    pub(crate) fn offer(&self, msg: &Broadcast, name: &str) {
        let Some(raw) = &msg.raw else { return };
        let stats = &self.link.stats.cluster;
        if !stats.out_up.load(Ordering::Relaxed) {
            stats.not_relayed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let envelope = Envelope::encode(
            self.node,
            raw,
            msg.sender.0,
            name,
            crate::frame::unix_millis(),
        );
        let len = envelope.len();
        if self.link.queued.fetch_add(len, Ordering::Relaxed) + len > QUEUE_BYTES
            || self.tx.send(envelope).is_err()
        {
            self.link.queued.fetch_sub(len, Ordering::Relaxed);
            stats.not_relayed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What both relay tasks share.
#[derive(Debug)]
struct Link {
    client: redis::Client,
    channel: String,
    url: String,
    stats: Arc<Stats>,
    /// Bytes of envelopes in the channel or in the pipeline being sent.
    queued: AtomicUsize,
    /// Serialises link-state changes so that each is logged once.
    state: Mutex<LinkLog>,
    /// Signalled when the subscription fails: the publishing connection
    /// pings at once. Without traffic it would notice a dead socket only at
    /// its next ping, and could report the link restored in between.
    check_out: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct LinkLog {
    /// The link has been fully up at least once.
    ever_up: bool,
    /// A "link lost" line was logged and no "restored" line since.
    lost_logged: bool,
}

/// Which connection changed state.
#[derive(Debug, Clone, Copy)]
enum Side {
    Out,
    In,
}

impl Link {
    fn flag(&self, side: Side) -> &AtomicBool {
        match side {
            Side::Out => &self.stats.cluster.out_up,
            Side::In => &self.stats.cluster.in_up,
        }
    }

    /// Records that `side` is up; logs once when the whole link is.
    fn up(&self, side: Side) {
        let mut log = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.flag(side).store(true, Ordering::Relaxed);
        if !self.stats.cluster.link_up() {
            return;
        }
        if !log.ever_up {
            log.ever_up = true;
            tracing::info!(url = %self.url, channel = %self.channel, "cluster: connected to Redis");
        } else if log.lost_logged {
            log.lost_logged = false;
            tracing::warn!(url = %self.url, "cluster: Redis link restored; relaying again");
        }
    }

    /// Records that `side` failed; logs once per outage (further failures,
    /// including every reconnect attempt, only at debug level).
    fn down(&self, side: Side, cause: &dyn fmt::Display) {
        let mut log = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.flag(side).store(false, Ordering::Relaxed);
        if matches!(side, Side::In) {
            self.check_out.notify_one();
        }
        if log.ever_up && !log.lost_logged {
            log.lost_logged = true;
            tracing::error!(url = %self.url, cause = %cause,
                "cluster: Redis link lost; serving local clients only, reconnecting");
        } else {
            tracing::debug!(?side, cause = %cause, "cluster: Redis connection failed");
        }
    }
}

/// The running relay: its shard-side handle, and its tasks.
#[derive(Debug)]
pub(crate) struct Cluster {
    link: Arc<Link>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts the relay tasks on the current runtime and returns the handle the
/// shards publish through.
pub(crate) fn start(
    config: &ClusterConfig,
    fanout: Fanout,
    stats: Arc<Stats>,
) -> std::io::Result<(Cluster, Relay)> {
    let client = client(&config.url).map_err(std::io::Error::other)?;
    stats.cluster.enabled.store(true, Ordering::Relaxed);
    let link = Arc::new(Link {
        client,
        channel: config.channel.clone(),
        url: redact(&config.url),
        stats,
        queued: AtomicUsize::new(0),
        state: Mutex::new(LinkLog::default()),
        check_out: tokio::sync::Notify::new(),
    });
    // Random per start (fastrand, seeded per process): a restarted node must
    // not be mistaken for its previous life (whose messages may still be in
    // flight).
    let node = fastrand::u64(..);
    let (tx, rx) = mpsc::unbounded_channel();
    let tasks = vec![
        tokio::spawn(publish_loop(link.clone(), rx)),
        tokio::spawn(subscribe_loop(link.clone(), node, fanout)),
    ];
    tracing::debug!(node = format_args!("{node:016x}"), "cluster node id");
    let relay = Relay {
        node,
        tx,
        link: link.clone(),
    };
    Ok((Cluster { link, tasks }, relay))
}

impl Cluster {
    /// Waits until both connections are up, at most `limit` (so that a node
    /// that just started relays its first messages).
    pub(crate) async fn wait_up(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.link.stats.cluster.link_up() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Shutdown, once no shard publishes any more: gives the publishing task
    /// up to `limit` to send what is queued, then stops both tasks.
    pub(crate) async fn stop(self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.link.queued.load(Ordering::Relaxed) > 0
            && self.link.stats.cluster.out_up.load(Ordering::Relaxed)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The publishing side: one connection, one pipeline at a time.
async fn publish_loop(link: Arc<Link>, mut rx: mpsc::UnboundedReceiver<Bytes>) {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(IO_TIMEOUT))
        .set_response_timeout(Some(IO_TIMEOUT));
    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_CAP);
    let mut batch: Vec<Bytes> = Vec::with_capacity(MAX_PIPELINE);
    let stats = &link.stats.cluster;
    loop {
        let mut conn = match link
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => conn,
            Err(e) => {
                link.down(Side::Out, &e);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        link.up(Side::Out);
        backoff.reset();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let failure = loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, MAX_PIPELINE) => {
                    if n == 0 {
                        return; // every sender is gone: the server stopped
                    }
                    let mut pipe = redis::pipe();
                    for envelope in &batch {
                        pipe.cmd("PUBLISH").arg(&link.channel).arg(&envelope[..]).ignore();
                    }
                    let result = pipe.exec_async(&mut conn).await;
                    let bytes: usize = batch.iter().map(Bytes::len).sum();
                    batch.clear();
                    link.queued.fetch_sub(bytes, Ordering::Relaxed);
                    match result {
                        Ok(()) => stats.relayed_out.fetch_add(n as u64, Ordering::Relaxed),
                        Err(e) => {
                            // Redis may have run some of them: count none as
                            // relayed and never resend (at most once).
                            stats.not_relayed.fetch_add(n as u64, Ordering::Relaxed);
                            break e;
                        }
                    };
                    ping.reset();
                }
                _ = ping.tick() => {
                    if let Err(e) = redis::cmd("PING").exec_async(&mut conn).await {
                        break e;
                    }
                }
                () = link.check_out.notified() => {
                    if let Err(e) = redis::cmd("PING").exec_async(&mut conn).await {
                        break e;
                    }
                    ping.reset();
                }
            }
        };
        link.down(Side::Out, &failure);
        // What was queued before the failure is stale by the time a new
        // connection is up: count it as not relayed rather than send it late.
        let mut dropped = 0u64;
        while let Ok(envelope) = rx.try_recv() {
            link.queued.fetch_sub(envelope.len(), Ordering::Relaxed);
            dropped += 1;
        }
        stats.not_relayed.fetch_add(dropped, Ordering::Relaxed);
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// The subscribing side: receives envelopes and delivers other nodes'
/// messages to the local shards.
async fn subscribe_loop(link: Arc<Link>, node: u64, fanout: Fanout) {
    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_CAP);
    loop {
        let connected = async {
            let mut pubsub = link.client.get_async_pubsub().await?;
            pubsub.subscribe(&link.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(IO_TIMEOUT, connected).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => {
                link.down(Side::In, &e);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            Err(_) => {
                link.down(Side::In, &"connect timed out");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        link.up(Side::In);
        backoff.reset();
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut costs = Vec::new();
        let failure: String = loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => {
                        deliver(&link.stats, &fanout, node, msg.get_payload_bytes(), &mut costs)
                            .await;
                    }
                    None => break "connection closed".into(),
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(IO_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break e.to_string(),
                        Err(_) => break "ping timed out".into(),
                    }
                }
            }
        };
        link.down(Side::In, &failure);
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Frames a message from another node once per format and hands it to every
/// local shard, like a message from a local client: through the same fan-out
/// credit, so a busy node stops reading its Redis subscription (Redis then
/// buffers, up to its `client-output-buffer-limit` for pub/sub clients).
async fn deliver(stats: &Stats, fanout: &Fanout, node: u64, bytes: &[u8], costs: &mut Vec<u32>) {
    let Some(envelope) = Envelope::decode(bytes) else {
        tracing::debug!(len = bytes.len(), "cluster: ignoring a malformed message");
        return;
    };
    if envelope.node == node {
        return; // ours: already delivered locally when it was received
    }
    let raw = crate::frame::frame_message(envelope.opcode, envelope.payload);
    let v1 = (stats.v1_connections.load(Ordering::Relaxed) > 0)
        .then(|| crate::frame::v1_message(&raw, envelope.sender, envelope.name, envelope.time));
    stats.cluster.relayed_in.fetch_add(1, Ordering::Relaxed);
    let framed_at = Instant::now();
    let len = raw.len() + v1.as_ref().map_or(0, Bytes::len);
    fanout.reserve(len, costs).await;
    fanout.publish(
        Broadcast {
            raw: Some(raw),
            v1,
            // Not a local connection (ids start at 1), so no local client is
            // skipped as its sender.
            sender: ConnId(0),
            channel: LOBBY,
            framed_at,
            cost: 0,
        },
        costs,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_redacted() {
        assert!(client("redis://127.0.0.1:6379").is_ok());
        assert!(client("redis://h:6379/2").is_ok());
        for bad in [
            "",
            "localhost:6379",
            "http://h",
            "rediss://h",
            "redis://h:notaport",
        ] {
            let e = client(bad).expect_err(bad);
            assert!(matches!(e, ClusterError::BadUrl { .. }), "{bad}: {e}");
        }
        assert_eq!(
            redact("redis://user:secret@h:1/0"),
            "redis://user:***@h:1/0"
        );
        assert_eq!(redact("redis://:secret@h"), "redis://:***@h");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
