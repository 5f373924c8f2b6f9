//! Validated server settings, built once from the command line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Everything the server needs to run, already checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Number of worker threads, one connection shard each.
    pub workers: usize,
    /// Largest message a client may send (after reassembly), in bytes.
    pub max_message_size: usize,
    /// Bytes of broadcast data queued for one connection before it is closed
    /// as a slow consumer. Control frames are not counted.
    pub max_backlog: usize,
    /// A connection silent for longer than this is closed; it is pinged after
    /// half of it.
    pub idle_timeout: Duration,
    /// Upgrades beyond this many open WebSocket connections get 503.
    pub max_connections: usize,
    /// How long a graceful shutdown waits for clients to answer the close.
    pub shutdown_timeout: Duration,
    /// Over how long SIGTERM closes the clients one by one (1012) before
    /// stopping; zero: all at once (1001).
    pub drain_period: Duration,
    /// How long a new TCP connection may take to finish its HTTP upgrade.
    pub handshake_timeout: Duration,
    /// Deliver each message back to its sender too.
    pub echo: bool,
    /// Messages per second one connection may send (a token bucket whose
    /// burst is the same number); 0 disables the limit.
    pub max_message_rate: u32,
    /// What happens to a connection over `max_message_rate`.
    pub rate_limit_action: RateLimitAction,
    /// Open WebSocket connections allowed from one client IP address;
    /// 0 disables the limit.
    pub max_connections_per_ip: u32,
    /// New WebSocket upgrades accepted per second, server-wide (a token
    /// bucket whose burst is the same number); 0 disables the limit.
    pub max_new_connections_per_sec: u32,
    /// Origins allowed to upgrade (`*`: any). Empty: only pages from this
    /// server (Origin host = Host); clients that send no Origin are allowed.
    pub allowed_origins: Vec<String>,
    /// When set, upgrades must carry this token (`Authorization: Bearer` or
    /// the `token` query parameter) or get 401.
    pub auth_token: Option<String>,
    /// When set, upgrades may (or, without `auth_token`, must) carry an
    /// HS256 JSON Web Token signed with this secret, passed like the token.
    pub jwt_secret: Option<String>,
    /// When set, the HTTP API (`/api/...`) is served to requests carrying it
    /// as `Authorization: Bearer KEY`; without it the API answers 404.
    pub api_key: Option<String>,
    /// Most channels one `broadcast.v2` connection may be in.
    pub max_channels_per_connection: usize,
    /// Messages of history kept per channel (0: no history, no offsets);
    /// see `docs/history.md`. With `cluster`, positions are assigned in
    /// Redis (`docs/cluster.md`).
    pub history_size: usize,
    /// How long a message of history is kept.
    pub history_ttl: Duration,
    /// Bytes of history kept over all channels; past it the oldest
    /// messages of any channel are evicted.
    pub history_memory: usize,
    /// When set, `GET /metrics` is served on a listener of its own at this
    /// address (see `Server::bind_metrics`), and the main port answers 404.
    pub metrics_addr: Option<SocketAddr>,
    /// When set, every connection speaks TLS (`wss://`, `https://`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Whether permessage-deflate is negotiated (`--compression`).
    pub compression: crate::deflate::CompressionMode,
    /// Messages shorter than this many bytes are sent uncompressed.
    pub compression_min_size: usize,
    /// With `--redis`: the Redis server and channel that join this node to
    /// others as one broadcast domain (see `cluster`). `None`: a lone node.
    pub cluster: Option<ClusterConfig>,
}

/// Default of [`Config::max_message_rate`]: off. Flow control already keeps
/// a fast client from hurting the others (it is slowed to its share of the
/// fan-out); the rate limit is a policy an operator opts into.
pub const DEFAULT_MAX_MESSAGE_RATE: u32 = 0;
/// Default of [`Config::max_connections_per_ip`]: off, so that one host (a
/// load generator, a large NAT) can open as many connections as the file
/// limit allows.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 0;

/// What the server does with a client that sends faster than
/// `--max-message-rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RateLimitAction {
    /// Stop reading from the client until its bucket has a token again:
    /// TCP slows the sender down and nothing is lost.
    #[default]
    Throttle,
    /// Close the client with 1008 "rate limited".
    Close,
}
/// Default of [`Config::max_new_connections_per_sec`] (unlimited).
pub const DEFAULT_MAX_NEW_CONNECTIONS_PER_SEC: u32 = 0;

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], protocol::DEFAULT_PORT)),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_message_size: protocol::DEFAULT_MAX_MESSAGE_SIZE,
            max_backlog: protocol::DEFAULT_MAX_BACKLOG,
            idle_timeout: Duration::from_secs(protocol::DEFAULT_IDLE_TIMEOUT_SECS),
            max_connections: usize::MAX,
            shutdown_timeout: Duration::from_secs(5),
            drain_period: Duration::ZERO,
            handshake_timeout: Duration::from_secs(10),
            echo: false,
            max_message_rate: DEFAULT_MAX_MESSAGE_RATE,
            rate_limit_action: RateLimitAction::Throttle,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            max_new_connections_per_sec: DEFAULT_MAX_NEW_CONNECTIONS_PER_SEC,
            allowed_origins: Vec::new(),
            auth_token: None,
            jwt_secret: None,
            api_key: None,
            max_channels_per_connection: DEFAULT_MAX_CHANNELS_PER_CONNECTION,
            history_size: crate::history::DEFAULT_HISTORY_SIZE,
            history_ttl: crate::history::DEFAULT_HISTORY_TTL,
            history_memory: crate::history::DEFAULT_HISTORY_MEMORY,
            metrics_addr: None,
            tls: None,
            cluster: None,
            compression: crate::deflate::CompressionMode::On,
            compression_min_size: crate::deflate::DEFAULT_COMPRESSION_MIN_SIZE,
        }
    }
}

/// Where the cluster's Redis is and which channel this deployment uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host[:port][/db]`.
    pub url: String,
    /// The Redis pub/sub channel all nodes of one deployment share.
    pub channel: String,
    /// How long a node that stopped refreshing its presence lease (it died
    /// without a word) still counts: its members then leave every node's
    /// counts and lists.
    pub lease: std::time::Duration,
}

/// A token bucket: `rate` tokens per second, at most `rate` banked.
///
/// Not synchronised: a connection's bucket lives in its `Cell`s, the
/// server-wide one behind a mutex taken once per upgrade. Hand-written
/// rather than `governor`: a connection's bucket must be able to be
/// [forgiven](TokenBucket::forgive) the time the server itself kept the
/// client waiting, which a GCRA cell does not model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenBucket {
    tokens: f64,
    at: std::time::Instant,
}

impl TokenBucket {
    /// A full bucket for `rate` per second.
    pub(crate) fn full(rate: u32, now: std::time::Instant) -> Self {
        Self {
            tokens: f64::from(rate),
            at: now,
        }
    }

    /// Refills for the time since the last call and takes one token if
    /// there is one; returns whether it did.
    ///
    /// Refilling never banks more than `rate` tokens, but tokens already
    /// above it (see [`TokenBucket::forgive`]) are kept.
    pub(crate) fn take(&mut self, rate: u32, now: std::time::Instant) -> bool {
        let rate = f64::from(rate);
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * rate).min(rate.max(self.tokens));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until the next token.
    pub(crate) fn shortfall(&self, rate: u32) -> std::time::Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        std::time::Duration::from_secs_f64(missing / f64::from(rate.max(1)))
    }

    /// Credits the tokens `rate` would have added during `waited`, beyond
    /// the burst: the time the server kept this client waiting (its
    /// messages piled up in the kernel meanwhile) is not held against it.
    pub(crate) fn forgive(&mut self, rate: u32, waited: std::time::Duration) {
        self.tokens += waited.as_secs_f64() * f64::from(rate);
    }

    /// Drops forgiven tokens above the burst (the backlog they were for is
    /// read).
    pub(crate) fn settle(&mut self, rate: u32) {
        self.tokens = self.tokens.min(f64::from(rate));
    }
}

/// How long the server waits for a peer to answer a close frame it sent
/// (outside of shutdown, whose deadline is [`Config::shutdown_timeout`]).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Default of `--max-channels-per-connection`.
pub const DEFAULT_MAX_CHANNELS_PER_CONNECTION: usize = 128;

/// `url` with the password of its user part (`scheme://user:PASSWORD@host`)
/// replaced by `mask`, for messages, logs and `--check-config`. A value that
/// is not such a URL is returned as it is.
#[must_use]
pub fn mask_url_password(url: &str, mask: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:{mask}{}", &rest[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn token_bucket_allows_burst_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(3, t0);
        assert!(b.take(3, t0) && b.take(3, t0) && b.take(3, t0));
        assert!(!b.take(3, t0));
        // A third of a second refills one token.
        let t1 = t0 + Duration::from_millis(340);
        assert!(b.take(3, t1));
        assert!(!b.take(3, t1));
        // Never more than the burst.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.take(3, t2));
        }
        assert!(!b.take(3, t2));
    }

    #[test]
    fn token_bucket_forgives_server_delays_until_settled() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(10, t0);
        for _ in 0..10 {
            assert!(b.take(10, t0));
        }
        assert!(!b.take(10, t0));
        assert_eq!(b.shortfall(10), Duration::from_millis(100));
        // The server kept the client waiting 2 s: 20 more tokens, above the burst.
        b.forgive(10, Duration::from_secs(2));
        for _ in 0..20 {
            assert!(b.take(10, t0));
        }
        assert!(!b.take(10, t0));
        b.forgive(10, Duration::from_secs(2));
        b.settle(10);
        for _ in 0..10 {
            assert!(b.take(10, t0));
        }
        assert!(!b.take(10, t0));
    }
}
