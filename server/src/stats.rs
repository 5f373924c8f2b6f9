//! Process-wide counters, read by `/healthz` and the logs.
//!
//! Counters are updated per connection or per message, never per delivery,
//! so the shared cache lines stay cold on the fan-out path.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// TLS handshakes that failed or timed out (with `--tls-cert`).
    pub(crate) tls_failures: AtomicU64,
    /// The Redis relay's link state and counters (`--redis`).
    pub(crate) cluster: crate::cluster::ClusterStats,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            connections: AtomicUsize::new(0),
            v1_connections: AtomicUsize::new(0),
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
            tls_failures: AtomicU64::new(0),
            cluster: crate::cluster::ClusterStats::default(),
        }
    }

    /// Time since the server started.
    pub(crate) fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// The `/healthz` document.
    pub(crate) fn health_json(&self, workers: usize) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            concat!(
                "{{\"status\":\"{}\",\"connections\":{},\"uptime_secs\":{},\"workers\":{},\"v1_connections\":{},",
                "\"connections_total\":{},\"messages_in\":{},\"slow_consumer_closes\":{},",
                "\"protocol_closes\":{},\"idle_closes\":{},\"refused\":{},\"rate_limited_closes\":{},",
                "\"refused_per_ip\":{},\"refused_new_connection_rate\":{}{}}}"
            ),
            self.cluster.status(),
            self.connections.load(Ordering::Relaxed),
            self.started.elapsed().as_secs(),
            workers,
            self.v1_connections.load(Ordering::Relaxed),
            get(&self.connections_total),
            get(&self.messages_in),
            get(&self.slow_consumer_closes),
            get(&self.protocol_closes),
            get(&self.idle_closes),
            get(&self.refused),
            get(&self.rate_limited_closes),
            get(&self.refused_per_ip),
            get(&self.refused_rate),
            self.cluster.health_fields(),
        )
    }
}
