//! Several nodes as one broadcast domain, through Redis pub/sub.
//!
//! With `--redis URL`, each of our channels is a Redis channel named
//! `PREFIX:NAME` (`PREFIX` is `--redis-channel`). A node publishes there
//! each message its own clients (or its HTTP API) send to NAME, and is
//! subscribed to it exactly while it has local members of NAME: a node
//! with nobody in a channel receives none of its traffic. Redis is the
//! engine; this module only relays:
//!
//! - **Out.** [`Relay::offer`] runs on the shard that received the message,
//!   right where it is published locally. It packs an [`Envelope`] (one
//!   allocation, one copy of the payload) and pushes it on an unbounded
//!   channel whose *bytes* are bounded by [`QUEUE_BYTES`]: when the link is
//!   down or the budget is spent, the message is counted as not relayed
//!   instead (local delivery is unaffected). One task on the server's own
//!   runtime ([`relay::publish_loop`]) takes everything waiting, up to
//!   [`MAX_PIPELINE`] messages, and sends it as one pipeline of `PUBLISH`
//!   commands on one connection, so the link costs one round trip per batch,
//!   not per message.
//! - **In.** A second connection ([`subscribe::subscribe_loop`]) follows
//!   the local channel table: when channels come or go it sends one
//!   `SUBSCRIBE` for all the new ones and one `UNSUBSCRIBE` for all the gone
//!   ones (and subscribes to all of them again after a reconnect). A
//!   member who joins a channel no one else here is in hears other nodes'
//!   messages once that `SUBSCRIBE` is done, a round trip later: its join
//!   waits for it ([`Relay::follow`]). It receives envelopes,
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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::channels::Channels;
use crate::config::ClusterConfig;
use crate::fanout::Fanout;
use crate::stats::Stats;

mod envelope;
mod link;
mod presence;
mod recover;
mod relay;
mod subscribe;

use link::{Link, LinkLog};
pub use presence::DEFAULT_LEASE;
pub(crate) use recover::Claim;
pub(crate) use relay::Relay;

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
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The `--redis` value is not a Redis URL this build can use.
    #[error("invalid --redis URL `{url}`: {reason}")]
    BadUrl {
        /// The URL, without its password.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Redis could not be reached or did not answer a `PING`.
    #[error("cannot reach Redis at {url}: {reason}")]
    Unreachable {
        /// The URL, without its password.
        url: String,
        /// The client's error.
        reason: String,
    },
}

/// The URL with any password replaced by `***`, for messages and logs.
fn redact(url: &str) -> String {
    crate::config::mask_url_password(url, "***")
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

/// The running relay: its shard-side handle, and its tasks.
#[derive(Debug)]
pub(crate) struct Cluster {
    link: Arc<Link>,
    tasks: Vec<JoinHandle<()>>,
    /// Tells the presence task to say goodbye (see `presence`).
    bye: oneshot::Sender<oneshot::Sender<()>>,
    node: u64,
}

/// What the cluster's presence needs from the rest of the node.
#[derive(Debug)]
pub(crate) struct PresenceLinks {
    /// This node's joins and leaves (from `crate::presence`).
    pub(crate) local: mpsc::UnboundedReceiver<crate::remote::LocalChange>,
    /// The local presence task, for the other nodes' changes.
    pub(crate) presence: crate::presence::PresenceTx,
}

/// The high 20 bits of a node's connection ids (never 0), so that ids are
/// unique in the cluster: see `shard`'s id source.
pub(crate) fn id_prefix(node: u64) -> u64 {
    ((node >> 44) & 0xF_FFFF).max(1)
}

/// Starts the relay tasks on the current runtime and returns the handle the
/// shards publish through.
pub(crate) fn start(
    config: &ClusterConfig,
    fanout: Fanout,
    channels: Arc<Channels>,
    stats: Arc<Stats>,
    links: PresenceLinks,
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
        history: channels.history().map(|h| h.limits()),
        pending: Mutex::default(),
        wake: tokio::sync::Notify::new(),
        followed: Mutex::default(),
        newly_followed: tokio::sync::Notify::new(),
        credit: Mutex::default(),
        fanout: fanout.clone(),
        runtime: tokio::runtime::Handle::current(),
        reader: Mutex::default(),
    });
    // Random per start (fastrand, seeded per process): a restarted node must
    // not be mistaken for its previous life (whose messages may still be in
    // flight).
    let node = fastrand::u64(..);
    let (tx, rx) = mpsc::unbounded_channel();
    let (bye, bye_rx) = oneshot::channel();
    let tasks = vec![
        tokio::spawn(presence::presence_loop(presence::PresenceTask {
            link: link.clone(),
            node,
            lease: config.lease,
            channels: channels.clone(),
            presence: links.presence,
            local: links.local,
            bye: bye_rx,
        })),
        tokio::spawn(relay::publish_loop(link.clone(), rx)),
        tokio::spawn(subscribe::subscribe_loop(
            link.clone(),
            node,
            fanout,
            channels,
        )),
    ];
    tracing::debug!(node = format_args!("{node:016x}"), "cluster node id");
    let relay = Relay {
        node,
        tx,
        link: link.clone(),
    };
    Ok((
        Cluster {
            link,
            tasks,
            bye,
            node,
        },
        relay,
    ))
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
        // The other nodes forget this one's members now, not at its lease's end.
        let (said, done) = oneshot::channel();
        if self.bye.send(said).is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(500), done).await;
        }
        for task in &self.tasks {
            task.abort();
        }
    }

    /// This node's id.
    pub(crate) fn node(&self) -> u64 {
        self.node
    }
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
