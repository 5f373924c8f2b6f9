//! Every counter of the server, defined once: the process-wide [`Stats`]
//! (with the cluster's [`ClusterStats`]) and each shard's own
//! [`ShardMetrics`]. `/healthz` and `/metrics` only read them.
//!
//! Process-wide counters are updated per connection or per message, never
//! per delivery, so the shared cache lines stay cold on the fan-out path;
//! per-shard counters are written only by their own shard.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// Counters shared by all shards.
#[derive(Debug)]
pub(crate) struct Stats {
    started: Instant,
    /// Open WebSocket connections.
    pub(crate) connections: AtomicUsize,
    /// Open connections speaking `broadcast.v1` (messages are encoded for
    /// them only while there are some).
    pub(crate) v1_connections: AtomicUsize,
    /// Open connections speaking `broadcast.v2` (likewise).
    pub(crate) v2_connections: AtomicUsize,
    /// `error` events sent to v2 clients, by code (`protocol::v2::ErrorCode::ALL` order).
    pub(crate) v2_errors: [AtomicU64; protocol::v2::ErrorCode::ALL.len()],
    /// WebSocket connections accepted since start.
    pub(crate) connections_total: AtomicU64,
    /// Messages received from clients and published.
    pub(crate) messages_in: AtomicU64,
    /// Connections closed with 1013 because their backlog overflowed.
    pub(crate) slow_consumer_closes: AtomicU64,
    /// Connections closed for a protocol violation, bad UTF-8 or an oversized message.
    pub(crate) protocol_closes: AtomicU64,
    /// Connections closed because they stayed silent past the idle timeout.
    pub(crate) idle_closes: AtomicU64,
    /// Upgrades refused because of `--max-connections`.
    pub(crate) refused: AtomicU64,
    /// Connections closed with 1008 for exceeding `--max-message-rate`.
    pub(crate) rate_limited_closes: AtomicU64,
    /// Connections the peer closed with a close frame while they were open.
    pub(crate) peer_closes: AtomicU64,
    /// Connections whose socket ended (EOF or error) without a closing handshake.
    pub(crate) dropped_closes: AtomicU64,
    /// Connections closed with 1001 by a graceful shutdown.
    pub(crate) shutdown_closes: AtomicU64,
    /// Upgrades refused because of `--max-connections-per-ip`.
    pub(crate) refused_per_ip: AtomicU64,
    /// Upgrades refused because of `--max-new-connections-per-sec`.
    pub(crate) refused_rate: AtomicU64,
    /// Upgrades refused because the server is shutting down.
    pub(crate) refused_draining: AtomicU64,
    /// Upgrades refused with 403: a browser `Origin` not allowed.
    pub(crate) refused_origin: AtomicU64,
    /// Upgrades refused with 401: missing or wrong credentials.
    pub(crate) refused_auth: AtomicU64,
    /// Upgrades refused with 403: the credentials do not allow the channel.
    pub(crate) refused_channel: AtomicU64,
    /// HTTP API requests answered, and those refused (bad key or request).
    pub(crate) api_requests: AtomicU64,
    pub(crate) api_errors: AtomicU64,
    /// Messages published through `POST /api/publish` (one per channel).
    pub(crate) api_messages: AtomicU64,
    /// Channels with members on this node.
    pub(crate) channels: AtomicUsize,
    /// TLS handshakes that failed or timed out (with `--tls-cert`).
    pub(crate) tls_failures: AtomicU64,
    /// The Redis relay's link state and counters (`--redis`).
    pub(crate) cluster: ClusterStats,
    /// permessage-deflate: who negotiated it, what was compressed.
    pub(crate) deflate: DeflateStats,
    /// The channels' history: what it holds and drops, how resumes went
    /// (shared with `history::History`, which updates it).
    pub(crate) history: Arc<HistoryStats>,
}

/// History counters (see `history` and `conn::resume`).
#[derive(Debug, Default)]
pub(crate) struct HistoryStats {
    /// Bytes its entries hold, counted at their allocator size class: what
    /// `--history-memory` bounds.
    pub(crate) bytes: AtomicUsize,
    /// Messages kept, over all channels.
    pub(crate) messages: AtomicUsize,
    /// Messages dropped before their time to stay within `--history-memory`.
    pub(crate) evicted: AtomicU64,
    /// Joins with a `since` position, by outcome ([`RESUME_OUTCOMES`] order).
    resumes: [AtomicU64; RESUME_OUTCOMES.len()],
    /// Joins with `rewind`.
    pub(crate) rewinds: AtomicU64,
    /// Messages written from history to resuming or rewinding clients.
    pub(crate) replayed: AtomicU64,
    /// With `--redis`: reads of a channel's stream for a resume older than
    /// the node's ring.
    pub(crate) stream_reads: AtomicU64,
}

/// The outcomes a resume is counted by: everything missed was replayed,
/// or not because the epoch differs, the messages are gone, or history is off.
pub(crate) const RESUME_OUTCOMES: [&str; 4] = ["recovered", "epoch", "expired", "disabled"];

impl HistoryStats {
    /// Counts a join that asked for history: a resume (`since`) with its
    /// outcome, or a rewind; and the `replayed` messages it was sent.
    pub(crate) fn joined(
        &self,
        rewind: bool,
        outcome: Result<(), protocol::history::Unrecovered>,
        replayed: usize,
    ) {
        use protocol::history::Unrecovered;
        if rewind {
            self.rewinds.fetch_add(1, Ordering::Relaxed);
        } else {
            let i = match outcome {
                Ok(()) => 0,
                Err(Unrecovered::Epoch) => 1,
                Err(Unrecovered::Expired) => 2,
                Err(Unrecovered::Disabled) => 3,
            };
            self.resumes[i].fetch_add(1, Ordering::Relaxed);
        }
        self.replayed.fetch_add(replayed as u64, Ordering::Relaxed);
    }

    /// Resumes by outcome, in [`RESUME_OUTCOMES`] order.
    pub(crate) fn resumes(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        RESUME_OUTCOMES
            .into_iter()
            .zip(&self.resumes)
            .map(|(name, n)| (name, n.load(Ordering::Relaxed)))
    }
}

/// permessage-deflate counters (see `deflate`).
#[derive(Debug, Default)]
pub(crate) struct DeflateStats {
    /// Open connections that negotiated the extension, by format (raw, v1,
    /// v2): a format's encoding is compressed only while this is non-zero.
    pub(crate) clients: [AtomicUsize; 3],
    /// Encodings compressed (once per message and format, on the shard
    /// that received the message).
    pub(crate) messages: AtomicU64,
    /// Payload bytes of those encodings before compression.
    pub(crate) bytes_before: AtomicU64,
    /// Payload bytes of those encodings after compression.
    pub(crate) bytes_after: AtomicU64,
    /// Of `clients`, those that limited the server's window, by format and
    /// window bits (9 to 14).
    windows: [[AtomicUsize; 6]; 3],
}

impl DeflateStats {
    /// The counter of open deflate connections of `format`.
    pub(crate) fn clients_of(&self, format: crate::fanout::Format) -> &AtomicUsize {
        &self.clients[format as usize]
    }

    /// Counts a connection that negotiated `deflate` (`opened`), or one
    /// that ended.
    pub(crate) fn count(
        &self,
        format: crate::fanout::Format,
        deflate: crate::deflate::Negotiated,
        opened: bool,
    ) {
        let window = self.windows[format as usize].get(usize::from(deflate.server_window_bits) - 9);
        for counter in std::iter::once(self.clients_of(format)).chain(window) {
            if opened {
                counter.fetch_add(1, Ordering::Relaxed);
            } else {
                counter.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Whether a connection of `format` limited the server's window to
    /// `bits` (below 15).
    pub(crate) fn with_window(&self, format: crate::fanout::Format, bits: u8) -> bool {
        self.windows[format as usize]
            .get(usize::from(bits) - 9)
            .is_some_and(|c| c.load(Ordering::Relaxed) > 0)
    }
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            connections: AtomicUsize::new(0),
            v1_connections: AtomicUsize::new(0),
            v2_connections: AtomicUsize::new(0),
            v2_errors: Default::default(),
            connections_total: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            slow_consumer_closes: AtomicU64::new(0),
            protocol_closes: AtomicU64::new(0),
            idle_closes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            rate_limited_closes: AtomicU64::new(0),
            peer_closes: AtomicU64::new(0),
            dropped_closes: AtomicU64::new(0),
            shutdown_closes: AtomicU64::new(0),
            refused_per_ip: AtomicU64::new(0),
            refused_rate: AtomicU64::new(0),
            refused_draining: AtomicU64::new(0),
            refused_origin: AtomicU64::new(0),
            refused_auth: AtomicU64::new(0),
            refused_channel: AtomicU64::new(0),
            api_requests: AtomicU64::new(0),
            api_errors: AtomicU64::new(0),
            api_messages: AtomicU64::new(0),
            channels: AtomicUsize::new(0),
            tls_failures: AtomicU64::new(0),
            cluster: ClusterStats::default(),
            deflate: DeflateStats::default(),
            history: Arc::default(),
        }
    }

    /// Which encodings a message needs now (see `frame::Wanted`).
    pub(crate) fn wanted(&self) -> crate::frame::Wanted {
        crate::frame::Wanted {
            v1: self.v1_connections.load(Ordering::Relaxed) > 0,
            v2: self.v2_connections.load(Ordering::Relaxed) > 0,
        }
    }

    /// Counts an `error` event of `code` sent to a v2 client.
    pub(crate) fn v2_error(&self, code: protocol::v2::ErrorCode) {
        if let Some(i) = protocol::v2::ErrorCode::ALL.iter().position(|&c| c == code) {
            self.v2_errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Time since the server started.
    pub(crate) fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// The `/healthz` document.
    pub(crate) fn health_json(&self, workers: usize) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.cluster;
        let health = Health {
            status: c.status(),
            connections: self.connections.load(Ordering::Relaxed),
            uptime_secs: self.started.elapsed().as_secs(),
            workers,
            v1_connections: self.v1_connections.load(Ordering::Relaxed),
            connections_total: get(&self.connections_total),
            messages_in: get(&self.messages_in),
            slow_consumer_closes: get(&self.slow_consumer_closes),
            protocol_closes: get(&self.protocol_closes),
            idle_closes: get(&self.idle_closes),
            refused: get(&self.refused),
            rate_limited_closes: get(&self.rate_limited_closes),
            refused_per_ip: get(&self.refused_per_ip),
            refused_new_connection_rate: get(&self.refused_rate),
            cluster: c.state(),
            channels: self.channels.load(Ordering::Relaxed),
            v2_connections: self.v2_connections.load(Ordering::Relaxed),
            cluster_subscriptions: c.subscriptions.load(Ordering::Relaxed),
            relayed_out: get(&c.relayed_out),
            relayed_in: get(&c.relayed_in),
            not_relayed: get(&c.not_relayed),
        };
        serde_json::to_string(&health).unwrap_or_default()
    }
}

/// The `/healthz` view of the counters (the field names are the document's
/// keys).
#[derive(Debug, serde::Serialize)]
struct Health {
    status: &'static str,
    connections: usize,
    uptime_secs: u64,
    workers: usize,
    v1_connections: usize,
    connections_total: u64,
    messages_in: u64,
    slow_consumer_closes: u64,
    protocol_closes: u64,
    idle_closes: u64,
    refused: u64,
    rate_limited_closes: u64,
    refused_per_ip: u64,
    refused_new_connection_rate: u64,
    /// `off`, `up` or `degraded`.
    cluster: &'static str,
    channels: usize,
    v2_connections: usize,
    cluster_subscriptions: usize,
    relayed_out: u64,
    relayed_in: u64,
    not_relayed: u64,
}

/// Cluster counters and link state, part of [`Stats`]; read by `/healthz`
/// and `/metrics`. Written per pipeline or per received message by the relay
/// tasks, and by shards only when a message cannot be relayed.
#[derive(Debug, Default)]
pub(crate) struct ClusterStats {
    /// `--redis` was given.
    pub(crate) enabled: AtomicBool,
    /// The publishing connection is up (checked per offered message).
    pub(crate) out_up: AtomicBool,
    /// The subscribing connection is up and subscribed.
    pub(crate) in_up: AtomicBool,
    /// Messages of local clients published to Redis.
    pub(crate) relayed_out: AtomicU64,
    /// Messages from other nodes received and delivered locally.
    pub(crate) relayed_in: AtomicU64,
    /// Messages of local clients that could not be published (link down,
    /// queue full, or a failed pipeline).
    pub(crate) not_relayed: AtomicU64,
    /// Redis channels subscribed to: one per local channel.
    pub(crate) subscriptions: AtomicUsize,
    /// Presence messages published (deltas, snapshots, hellos, goodbyes).
    pub(crate) presence_out: AtomicU64,
    /// Presence messages received from other nodes.
    pub(crate) presence_in: AtomicU64,
    /// Other nodes whose members are counted here.
    pub(crate) nodes: AtomicUsize,
}

impl ClusterStats {
    /// Both connections are up.
    pub(crate) fn link_up(&self) -> bool {
        self.out_up.load(Ordering::Relaxed) && self.in_up.load(Ordering::Relaxed)
    }

    /// `"ok"`, or `"degraded"` while a `--redis` link is down (the node
    /// still serves its own clients).
    pub(crate) fn status(&self) -> &'static str {
        if self.enabled.load(Ordering::Relaxed) && !self.link_up() {
            "degraded"
        } else {
            "ok"
        }
    }

    /// `off` (no `--redis`), `up` or `degraded`.
    pub(crate) fn state(&self) -> &'static str {
        match (self.enabled.load(Ordering::Relaxed), self.link_up()) {
            (false, _) => "off",
            (true, true) => "up",
            (true, false) => "degraded",
        }
    }
}

/// Upper bounds of the broadcast latency histogram buckets, in seconds.
pub(crate) const LATENCY_BOUNDS: [f64; 15] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// A fixed-bucket histogram of durations, lock-free (one relaxed atomic add
/// per bucket hit plus one for the sum). Written by one shard, read by scrapes.
#[derive(Debug, Default)]
pub(crate) struct LatencyHistogram {
    /// Non-cumulative counts; the last one is `+Inf`.
    pub(crate) buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    pub(crate) sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// Records `n` observations of `d`.
    pub(crate) fn observe(&self, d: Duration, n: u64) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[i].fetch_add(n, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos
            .fetch_add(nanos.saturating_mul(n), Ordering::Relaxed);
    }
}

/// Counters one shard keeps for itself.
#[derive(Debug, Default)]
pub(crate) struct ShardMetrics {
    /// Frames handed to this shard's sockets (written or queued).
    pub(crate) deliveries: AtomicU64,
    /// Bytes of those frames.
    pub(crate) bytes_out: AtomicU64,
    /// Bytes read from this shard's WebSocket connections.
    pub(crate) bytes_in: AtomicU64,
    /// From the server reading a message to writing it to a client
    /// socket: one observation per batch written to a socket (at once by
    /// the dispatcher, or later by the socket's flush task), measured from
    /// the batch's oldest message.
    pub(crate) latency: LatencyHistogram,
    /// Time publishers on this shard waited for fan-out credit, in ns.
    pub(crate) paused_fanout_nanos: AtomicU64,
    /// Time publishers on this shard waited for a rate-limit token, in ns.
    pub(crate) paused_rate_nanos: AtomicU64,
    /// Connections reset because they did not take our close frame in time.
    pub(crate) aborted: AtomicU64,
}
