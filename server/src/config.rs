//! Validated server settings, built once from the command line.

use std::net::SocketAddr;
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
    /// How long a new TCP connection may take to finish its HTTP upgrade.
    pub handshake_timeout: Duration,
    /// Deliver each message back to its sender too.
    pub echo: bool,
}

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
            handshake_timeout: Duration::from_secs(10),
            echo: false,
        }
    }
}

/// How long the server waits for a peer to answer a close frame it sent
/// (outside of shutdown, whose deadline is [`Config::shutdown_timeout`]).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
