//! `GET /metrics`: the server's counters in the Prometheus / OpenMetrics
//! text format, encoded with `prometheus-client`.
//!
//! Nothing here is on the message path. The counters themselves are the
//! plain atomics of [`Stats`] and of each shard's [`ShardMetrics`]; a scrape
//! reads them into a snapshot and encodes that. Per-shard counters are
//! written only by their own shard (deliveries and bytes out once per
//! dispatch batch, the latency histogram once per batch), so their cache
//! lines are never contended by other shards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::fanout::ShardHandle;
use crate::stats::{ShardMetrics, Stats, LATENCY_BOUNDS};

/// The Content-Type of `/metrics` (what `prometheus-client`'s text encoder writes).
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything a scrape reports, read once from the atomics.
#[derive(Debug)]
struct Snapshot {
    workers: usize,
    counters: Vec<(&'static str, &'static str, u64)>,
    gauges: Vec<(&'static str, &'static str, u64)>,
    closes: Vec<(&'static str, u64)>,
    refused: Vec<(&'static str, u64)>,
    v2_errors: Vec<(&'static str, u64)>,
    resumes: Vec<(&'static str, u64)>,
    shard_connections: Vec<u64>,
    shard_deliveries: Vec<u64>,
    paused: Vec<(&'static str, f64)>,
    latency_sum: f64,
    latency_buckets: Vec<(f64, u64)>,
}

impl Snapshot {
    fn take(stats: &Stats, shards: &[Arc<ShardHandle>], workers: usize) -> Self {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let sum_shards = |f: fn(&ShardMetrics) -> &AtomicU64| -> u64 {
            shards.iter().map(|s| get(f(&s.metrics))).sum()
        };
        let mut latency_buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .iter()
            .chain(std::iter::once(&f64::INFINITY))
            .map(|&b| (b, 0))
            .collect();
        let mut sum_nanos = 0u64;
        for shard in shards {
            let h = &shard.metrics.latency;
            for (slot, count) in latency_buckets.iter_mut().zip(&h.buckets) {
                slot.1 += get(count);
            }
            sum_nanos = sum_nanos.wrapping_add(get(&h.sum_nanos));
        }
        Self {
            workers,
            counters: vec![
                (
                    "broadcast_connections",
                    "WebSocket connections accepted since start",
                    get(&stats.connections_total),
                ),
                (
                    "broadcast_messages_in",
                    "Messages received from clients and published",
                    get(&stats.messages_in),
                ),
                (
                    "broadcast_deliveries",
                    "Message frames handed to client sockets (written or queued)",
                    sum_shards(|m| &m.deliveries),
                ),
                (
                    "broadcast_bytes_in",
                    "Bytes read from WebSocket connections",
                    sum_shards(|m| &m.bytes_in),
                ),
                (
                    "broadcast_bytes_out",
                    "Bytes of broadcast frames handed to client sockets",
                    sum_shards(|m| &m.bytes_out),
                ),
                (
                    "broadcast_slow_consumer_closes",
                    "Connections closed with 1013 because their backlog overflowed",
                    get(&stats.slow_consumer_closes),
                ),
                (
                    "broadcast_rate_limited_closes",
                    "Connections closed with 1008 for exceeding --max-message-rate",
                    get(&stats.rate_limited_closes),
                ),
                (
                    "broadcast_aborted_connections",
                    "Connections reset (SO_LINGER 0) because the peer did not take the close frame within the close timeout",
                    sum_shards(|m| &m.aborted),
                ),
                (
                    "broadcast_tls_handshake_failures",
                    "TLS handshakes that failed or timed out",
                    get(&stats.tls_failures),
                ),
                (
                    "broadcast_api_requests",
                    "HTTP API requests answered (--api-key)",
                    get(&stats.api_requests),
                ),
                (
                    "broadcast_api_errors",
                    "HTTP API requests refused (bad key, bad request, too large)",
                    get(&stats.api_errors),
                ),
                (
                    "broadcast_api_messages",
                    "Messages published through POST /api/publish (one per channel)",
                    get(&stats.api_messages),
                ),
                (
                    "broadcast_history_evicted",
                    "History messages dropped before their time to stay within --history-memory",
                    get(&stats.history.evicted),
                ),
                (
                    "broadcast_history_rewinds",
                    "Joins that asked for the last N messages (rewind)",
                    get(&stats.history.rewinds),
                ),
                (
                    "broadcast_history_replayed",
                    "Messages written from history to resuming or rewinding clients",
                    get(&stats.history.replayed),
                ),
                (
                    "broadcast_history_stream_reads",
                    "With --redis: reads of a channel's Redis stream for a resume older than the node's ring",
                    get(&stats.history.stream_reads),
                ),
                (
                    "broadcast_deflate_messages",
                    "Message encodings compressed for permessage-deflate clients (once per message and format, whatever the number of recipients)",
                    get(&stats.deflate.messages),
                ),
                (
                    "broadcast_deflate_bytes_before",
                    "Payload bytes of those encodings before compression",
                    get(&stats.deflate.bytes_before),
                ),
                (
                    "broadcast_deflate_bytes_after",
                    "Payload bytes of those encodings after compression",
                    get(&stats.deflate.bytes_after),
                ),
                (
                    "broadcast_cluster_relayed_out",
                    "Messages of local clients published to Redis (--redis)",
                    get(&stats.cluster.relayed_out),
                ),
                (
                    "broadcast_cluster_relayed_in",
                    "Messages from other nodes received through Redis and delivered locally",
                    get(&stats.cluster.relayed_in),
                ),
                (
                    "broadcast_cluster_not_relayed",
                    "Messages of local clients not published to Redis (link down, queue full or failed pipeline)",
                    get(&stats.cluster.not_relayed),
                ),
                (
                    "broadcast_cluster_presence_out",
                    "Presence messages published to the other nodes (coalesced: at most a few per second; --redis)",
                    get(&stats.cluster.presence_out),
                ),
                (
                    "broadcast_cluster_presence_in",
                    "Presence messages received from the other nodes (--redis)",
                    get(&stats.cluster.presence_in),
                ),
            ],
            gauges: vec![
                (
                    "broadcast_connections_open",
                    "Open WebSocket connections",
                    stats.connections.load(Ordering::Relaxed) as u64,
                ),
                (
                    "broadcast_v1_connections_open",
                    "Open WebSocket connections speaking broadcast.v1",
                    stats.v1_connections.load(Ordering::Relaxed) as u64,
                ),
                (
                    "broadcast_v2_connections_open",
                    "Open WebSocket connections speaking broadcast.v2",
                    stats.v2_connections.load(Ordering::Relaxed) as u64,
                ),
                (
                    "broadcast_deflate_connections_open",
                    "Open WebSocket connections that negotiated permessage-deflate",
                    stats.deflate.clients.iter().map(|c| c.load(Ordering::Relaxed) as u64).sum(),
                ),
                (
                    "broadcast_channels",
                    "Channels with at least one member on this node",
                    stats.channels.load(Ordering::Relaxed) as u64,
                ),
                (
                    "broadcast_cluster_subscriptions",
                    "Redis channels this node subscribes to (one per channel with local members; --redis)",
                    stats.cluster.subscriptions.load(Ordering::Relaxed) as u64,
                ),
                (
                    "broadcast_cluster_nodes",
                    "Other nodes whose members this node counts (their presence lease holds; --redis)",
                    stats.cluster.nodes.load(Ordering::Relaxed) as u64,
                ),
                (
                    "broadcast_cluster_link_up",
                    "1 while both Redis connections are up (always 0 without --redis)",
                    u64::from(stats.cluster.link_up()),
                ),
                (
                    "broadcast_fanout_backlog_bytes",
                    "Delivery bytes (frame bytes x recipients) published but not yet written by the shards, over all shards",
                    shards.iter().map(|s| s.credit.in_use_bytes()).sum(),
                ),
                (
                    "broadcast_fanout_budget_bytes",
                    "The fan-out backlog at which publishers are paused, over all shards",
                    crate::flow::Credit::budget_bytes() * shards.len() as u64,
                ),
                (
                    "broadcast_uptime_seconds",
                    "Seconds since the server started",
                    stats.uptime().as_secs(),
                ),
                (
                    "broadcast_history_bytes",
                    "Bytes the channels' history holds (at allocator size classes), what --history-memory bounds",
                    stats.history.bytes.load(Ordering::Relaxed) as u64,
                ),
                (
                    "broadcast_history_messages",
                    "Messages the channels' history holds, over all channels",
                    stats.history.messages.load(Ordering::Relaxed) as u64,
                ),
            ],
            closes: vec![
                ("normal", get(&stats.peer_closes)),
                ("dropped", get(&stats.dropped_closes)),
                ("slow_consumer", get(&stats.slow_consumer_closes)),
                ("protocol", get(&stats.protocol_closes)),
                ("idle", get(&stats.idle_closes)),
                ("rate_limited", get(&stats.rate_limited_closes)),
                ("shutdown", get(&stats.shutdown_closes)),
            ],
            refused: vec![
                ("max_connections", get(&stats.refused)),
                ("max_connections_per_ip", get(&stats.refused_per_ip)),
                ("new_connection_rate", get(&stats.refused_rate)),
                ("shutting_down", get(&stats.refused_draining)),
                ("origin", get(&stats.refused_origin)),
                ("unauthorized", get(&stats.refused_auth)),
                ("channel_forbidden", get(&stats.refused_channel)),
            ],
            v2_errors: protocol::v2::ErrorCode::ALL
                .iter()
                .zip(&stats.v2_errors)
                .map(|(code, n)| (code.as_str(), get(n)))
                .collect(),
            resumes: stats.history.resumes().collect(),
            shard_connections: shards
                .iter()
                .map(|s| s.load.load(Ordering::Relaxed) as u64)
                .collect(),
            shard_deliveries: shards.iter().map(|s| get(&s.metrics.deliveries)).collect(),
            paused: vec![
                (
                    "fanout",
                    sum_shards(|m| &m.paused_fanout_nanos) as f64 / 1e9,
                ),
                (
                    "rate_limit",
                    sum_shards(|m| &m.paused_rate_nanos) as f64 / 1e9,
                ),
            ],
            latency_sum: sum_nanos as f64 / 1e9,
            latency_buckets,
        }
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for &(name, help, v) in &self.counters {
            encoder
                .encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        for &(name, help, v) in &self.gauges {
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&v)?;
        }
        encoder
            .encode_descriptor(
                "broadcast_workers",
                "Worker threads (shards)",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&(self.workers as u64))?;
        let mut closes = encoder.encode_descriptor(
            "broadcast_closes",
            "WebSocket connections ended, by reason",
            None,
            MetricType::Counter,
        )?;
        for &(reason, v) in &self.closes {
            closes
                .encode_family(&[("reason", reason)])?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        let mut refused = encoder.encode_descriptor(
            "broadcast_upgrades_refused",
            "WebSocket upgrades refused, by reason (503 for limits and shutdown, 403 origin, 401 unauthorized)",
            None,
            MetricType::Counter,
        )?;
        for &(reason, v) in &self.refused {
            refused
                .encode_family(&[("reason", reason)])?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        let mut v2_errors = encoder.encode_descriptor(
            "broadcast_v2_errors",
            "error events sent to broadcast.v2 clients, by code (refused commands; limits such as too_many_channels)",
            None,
            MetricType::Counter,
        )?;
        for &(code, v) in &self.v2_errors {
            v2_errors
                .encode_family(&[("code", code)])?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        let mut resumes = encoder.encode_descriptor(
            "broadcast_history_resumes",
            "Joins that resumed from a position (since), by outcome: recovered (everything missed replayed), epoch (another history), expired (no longer kept), disabled (no history)",
            None,
            MetricType::Counter,
        )?;
        for &(outcome, v) in &self.resumes {
            resumes
                .encode_family(&[("outcome", outcome)])?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        let mut conns = encoder.encode_descriptor(
            "broadcast_shard_connections",
            "Open connections (HTTP and WebSocket) per shard",
            None,
            MetricType::Gauge,
        )?;
        for (i, v) in self.shard_connections.iter().enumerate() {
            conns
                .encode_family(&[("shard", i.to_string())])?
                .encode_gauge(v)?;
        }
        let mut deliveries = encoder.encode_descriptor(
            "broadcast_shard_deliveries",
            "Message frames handed to client sockets, per shard",
            None,
            MetricType::Counter,
        )?;
        for (i, v) in self.shard_deliveries.iter().enumerate() {
            deliveries
                .encode_family(&[("shard", i.to_string())])?
                .encode_counter::<NoLabelSet, _, u64>(v, None)?;
        }
        let mut paused = encoder.encode_descriptor(
            "broadcast_publisher_paused_seconds",
            "Time publishers were not read from, by cause: fanout (waiting for the fan-out backlog to drain) or rate_limit (--max-message-rate)",
            None,
            MetricType::Counter,
        )?;
        for &(cause, v) in &self.paused {
            paused
                .encode_family(&[("cause", cause)])?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        let count = self.latency_buckets.iter().map(|b| b.1).sum();
        encoder
            .encode_descriptor(
                "broadcast_delivery_latency_seconds",
                "From the server reading a message to writing it to a client socket (one observation per batch written to a socket, from the batch's oldest message)",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(self.latency_sum, count, &self.latency_buckets, None)?;
        Ok(())
    }
}

/// The `/metrics` document.
pub(crate) fn render(stats: &Stats, shards: &[Arc<ShardHandle>], workers: usize) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot::take(stats, shards, workers)));
    let mut out = String::with_capacity(4096);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!(cause = %e, "cannot encode metrics");
    }
    out
}

/// How long a metrics connection may take to send its request head.
const SCRAPE_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a metrics connection may stay open (scrapers keep them alive).
const SCRAPE_CONNECTION_LIMIT: Duration = Duration::from_secs(300);

/// Serves `GET /metrics` (anything else: 404) on the `--metrics-addr`
/// listener until the task is aborted. Runs on the acceptor's runtime,
/// away from the shards: a scrape never delays client traffic.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    stats: Arc<Stats>,
    shards: Vec<Arc<ShardHandle>>,
    workers: usize,
) {
    use hyper::{Method, Response, StatusCode};
    let state = Arc::new((stats, shards));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                tracing::debug!(cause = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
            let state = state.clone();
            async move {
                let (status, content_type, body) = match (req.method(), req.uri().path()) {
                    (&Method::GET | &Method::HEAD, "/metrics") => (
                        StatusCode::OK,
                        CONTENT_TYPE,
                        render(&state.0, &state.1, workers),
                    ),
                    _ => (
                        StatusCode::NOT_FOUND,
                        "text/plain; charset=utf-8",
                        "not found\n".to_owned(),
                    ),
                };
                Response::builder()
                    .status(status)
                    .header(hyper::header::CONTENT_TYPE, content_type)
                    .header(hyper::header::CACHE_CONTROL, "no-store")
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(SCRAPE_HEADER_TIMEOUT)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        tokio::spawn(async move {
            if let Ok(Err(e)) = tokio::time::timeout(SCRAPE_CONNECTION_LIMIT, connection).await {
                tracing::trace!(cause = %e, "metrics connection ended");
            }
        });
    }
}
