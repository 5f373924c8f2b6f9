//! The console client: `broadcast-server connect`.
//!
//! * Interactive (stdin and stdout are terminals): a rustyline prompt; what
//!   others send is printed above it without disturbing the line being typed.
//! * Plain (otherwise): each stdin line is sent as a message; messages and
//!   presence are printed one per line on stdout, status on stderr. At the
//!   end of stdin the client sends a close frame and waits for the server's
//!   reply, which means the server has read every line (see `send`).
//!   `--listen` ignores stdin and records until SIGINT/SIGTERM.
//!
//! The client offers the `broadcast.v1` subprotocol (names, presence,
//! server time) and falls back to raw mode with a plain broadcast server.
//! With `--channel` it offers `broadcast.v2` first and subscribes to each
//! channel over one connection; interactive mode then has slash commands
//! (`/join`, `/leave`, `/switch`, `/who`; see `slash`).
//!
//! It offers permessage-deflate (unless `--no-compression`), so a server
//! may send it messages compressed; it sends its own uncompressed (see
//! `deflate`).

use std::io::IsTerminal as _;
use std::process::ExitCode;

mod app;
mod channels;
mod conn;
mod deflate;
mod input;
mod output;
mod render;
mod send;
mod slash;
mod target;

pub use conn::tls_client_config;

/// `broadcast-server connect` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Server host name or address.
    #[arg(long, default_value = "localhost", conflicts_with = "url")]
    pub host: String,
    /// Server port.
    #[arg(long, default_value_t = protocol::DEFAULT_PORT, conflicts_with = "url")]
    pub port: u16,
    /// Full server URL instead of --host/--port (ws://... or wss://...; /ws is added when it has no path).
    #[arg(long)]
    pub url: Option<String>,
    /// Display name to ask for (the server may add a suffix if it is taken).
    #[arg(long)]
    pub name: Option<String>,
    /// Do not reconnect after the connection drops (exit 1 instead).
    #[arg(long)]
    pub no_reconnect: bool,
    /// Do not offer permessage-deflate: the server then sends every message
    /// uncompressed (by default the client offers it, and a server that
    /// does not support it answers without).
    #[arg(long)]
    pub no_compression: bool,
    /// Shared secret for a server started with `--auth-token` (sent as the
    /// `token` query parameter; never printed).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Use TLS (`wss://`) with --host/--port.
    #[arg(long, conflicts_with = "url")]
    pub tls: bool,
    /// Also trust the certificates in this PEM file for `wss://` (a private
    /// CA or a self-signed server certificate).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
    /// Only receive: do not read stdin; run until Ctrl+C, SIGINT or SIGTERM.
    #[arg(long, short = 'l')]
    pub listen: bool,
    /// Join channel NAME (repeatable; speaks broadcast.v2). Typed or piped
    /// lines go to the first one; `/switch` changes that interactively.
    #[arg(long = "channel", value_name = "NAME")]
    pub channels: Vec<String>,
}

/// Runs the console client until the user leaves. Exit codes:
///
/// * 0: the user left (Ctrl+C, Ctrl+D, end of stdin, SIGINT/SIGTERM). With
///   piped stdin, only if the server also confirmed every line sent (its
///   close reply, or its pongs to the numbered pings between lines).
/// * 1: the first connection failed; with `--no-reconnect`, the connection
///   dropped; with piped stdin, some lines sent were never confirmed (a
///   connection ended first, or the server read nothing for 60 s after the
///   end of stdin), so they may be lost: stderr says how many.
/// * 2: a bad flag value.
///
/// With `--channel`, a channel the server refuses to let us join ends a
/// client without a terminal with exit status 1, and so does a piped line
/// the server refused (a `broadcast.v2` `error` event).
pub fn run(args: ConnectArgs) -> ExitCode {
    let mut channels: Vec<String> = Vec::new();
    for name in &args.channels {
        if let Err(e) = protocol::channel::validate(name) {
            eprintln!("error: invalid --channel {name:?}: {e}");
            return ExitCode::from(2);
        }
        if !channels.contains(name) {
            channels.push(name.clone());
        }
    }
    let mut target = match target::build(
        &args.host,
        args.port,
        args.url.as_deref(),
        args.name.as_deref(),
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.tls {
        target.display = target.display.replacen("ws://", "wss://", 1);
        target.request = target.request.replacen("ws://", "wss://", 1);
    }
    if let Some(token) = &args.token {
        // Only the requested URL carries it: what is shown stays secret-free.
        let sep = if target.request.contains('?') {
            '&'
        } else {
            '?'
        };
        target.request = format!(
            "{}{sep}token={}",
            target.request,
            protocol::v1::encode_query_value(token)
        );
    }
    let interactive =
        !args.listen && std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let colour = interactive
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").map_or(true, |t| t != "dumb");
    let tls = match conn::tls_connector(args.ca.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let opts = app::Options {
        target,
        interactive,
        listen: args.listen,
        reconnect: !args.no_reconnect,
        compression: !args.no_compression,
        channels,
    };
    let out = output::Out::new(interactive, colour);
    let code = runtime.block_on(app::run(opts, out, tls));
    // Reader threads may still block on stdin: do not wait for them.
    runtime.shutdown_background();
    code
}
