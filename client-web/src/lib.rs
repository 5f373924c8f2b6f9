//! The browser client of broadcast-server, compiled to WebAssembly and served
//! by the server at `/`.
//!
//! Everything that is not DOM plumbing lives in modules that build and test
//! natively (`cargo test -p client-web`):
//! - [`model`]: the client's state machine. User actions and socket events go
//!   in; status text, online count, log lines and the commands to send (the
//!   view model) come out. Its reconnection delays come from
//!   `protocol::backoff`.
//! - [`channels`]: the joined channels, their unread counts, members and
//!   bounded histories, and the unread list.
//! - [`endpoint`]: the WebSocket URL, and the channel the page's location
//!   names.
//! - [`clock`]: how times are shown.
//!
//! The DOM layer (`dom`, only in the `wasm32` build) wires those to the page
//! with `wasm-bindgen` and `web-sys`. It only ever inserts user data as text
//! nodes, never as markup.

pub mod channels;
pub mod clock;
pub mod endpoint;
pub mod model;

#[cfg(target_arch = "wasm32")]
mod dom;
