//! The contract between broadcast-server and its clients.
//!
//! Everything a client and the server must agree on lives here: the
//! WebSocket endpoint path, default limits, the close codes and reasons the
//! server uses, the RFC 6455 server-frame encoding the server applies once
//! per message, the one frame-header decoder every hand-written reader
//! uses, channel names (and the token patterns that grant them), the
//! `broadcast.v1` events, the `broadcast.v2` commands and events, the
//! reconnection backoff, and (feature `deflate`) the client's side of
//! permessage-deflate.
//!
//! Its dependencies are few and runtime-free: serde and serde_json (the
//! `broadcast.v1` and `broadcast.v2` JSON), base64 (binary bodies in it) and fastrand (the
//! backoff's jitter). No tokio, no I/O, no clock, so the browser client
//! built for `wasm32-unknown-unknown` uses it as is.

#![warn(missing_docs)]

pub mod backoff;
pub mod channel;
pub mod close;
#[cfg(feature = "deflate")]
pub mod deflate;
pub mod frame;
pub mod history;
mod json;
pub mod utf8;
pub mod v1;
pub mod v2;

pub use close::CloseReason;

/// Path of the WebSocket endpoint.
pub const WS_PATH: &str = "/ws";
/// Path of the health endpoint (`GET` answers a small JSON document).
pub const HEALTH_PATH: &str = "/healthz";
/// Port the server listens on and clients connect to by default.
pub const DEFAULT_PORT: u16 = 8080;
/// Default largest message (after reassembly of fragments) a client may send, in bytes.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;
/// Default bound on the bytes queued for one connection before it is closed as a slow consumer.
pub const DEFAULT_MAX_BACKLOG: usize = 1024 * 1024;
/// Default number of seconds a connection may stay silent before it is closed.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
/// Largest payload of a control frame (ping, pong, close), RFC 6455 §5.5.
pub const MAX_CONTROL_PAYLOAD: usize = 125;
