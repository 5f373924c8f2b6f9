//! The console client: `broadcast-server connect`.

use std::process::ExitCode;

/// `broadcast-server connect` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Server host name or address.
    #[arg(long, default_value = "localhost", conflicts_with = "url")]
    pub host: String,
    /// Server port.
    #[arg(long, default_value_t = protocol::DEFAULT_PORT, conflicts_with = "url")]
    pub port: u16,
    /// Full server URL instead of --host/--port (ws://... or wss://...).
    #[arg(long)]
    pub url: Option<String>,
    /// Display name to ask for.
    #[arg(long)]
    pub name: Option<String>,
    /// Do not reconnect after the connection drops.
    #[arg(long)]
    pub no_reconnect: bool,
}

/// Runs the console client until the user leaves.
pub fn run(args: ConnectArgs) -> ExitCode {
    let _ = args;
    eprintln!("error: connect is not implemented yet");
    ExitCode::from(1)
}
