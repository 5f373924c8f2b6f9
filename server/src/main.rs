//! The `broadcast-server` command: `start` runs the server, `connect` the
//! console client.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use server::{Config, Server};

mod settings;

/// jemalloc instead of glibc malloc. A broadcast frame is allocated on the
/// shard that read it and freed on the shard that wrote it last, and the
/// per-message allocations churn; glibc's arenas showed 13 % of server CPU
/// in malloc/free under many small rooms. Measured on bench scenario 8
/// (server CPU per delivery 0.30-0.33 -> 0.24-0.26 us) and 10,000 idle
/// connections (1,820 -> 1,680 B each); one room of 100 unchanged.
#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// With `--features dhat-heap` (bench/heap.sh): dhat-rs records every
/// allocation and its call stack instead.
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// A WebSocket broadcast server: every message a client sends reaches every
/// other connected client.
#[derive(Debug, Parser)]
#[command(name = "broadcast-server", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of `StartArgs` costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (WebSocket endpoint at /ws, health at /healthz, Prometheus metrics at /metrics).
    #[command(
        after_help = "Every flag can also be set in the --config TOML file (keys: the long flag names, e.g. \
                      max-message-size = 1048576) or in BROADCAST_<FLAG> (e.g. BROADCAST_MAX_MESSAGE_SIZE; \
                      lists comma-separated). Command line > environment > file > default."
    )]
    Start(StartArgs),
    /// Connect to a server as an interactive console client.
    Connect(client_cli::ConnectArgs),
}

#[derive(Debug, Args)]
struct StartArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = protocol::DEFAULT_PORT)]
    port: u16,
    /// Worker threads, each serving its own shard of connections [default: number of cores].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// Largest message a client may send, in bytes (after joining fragments); larger closes with 1009.
    #[arg(long, value_name = "BYTES", default_value_t = protocol::DEFAULT_MAX_MESSAGE_SIZE,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=(1 << 30)))]
    max_message_size: usize,
    /// Bytes queued for one client before it is closed as a slow consumer (1013).
    #[arg(long, value_name = "BYTES", default_value_t = protocol::DEFAULT_MAX_BACKLOG,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=(1 << 40)))]
    max_backlog: usize,
    /// Seconds a client may stay silent before it is closed (it is pinged after half); 0 disables.
    #[arg(long, value_name = "SECS", default_value_t = protocol::DEFAULT_IDLE_TIMEOUT_SECS)]
    idle_timeout: u64,
    /// Most open WebSocket connections; further upgrades get 503 (0: limited only by file descriptors).
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_connections: usize,
    /// Seconds a graceful shutdown waits for clients to answer the close.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    shutdown_timeout: u64,
    /// Seconds over which SIGTERM closes the clients gradually (1012: reconnect, elsewhere if possible) before stopping; 0: all at once (1001). A second SIGTERM, or Ctrl+C, stops at once.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    drain_period: u64,
    /// Seconds a new connection may take to send its HTTP request (upgrade).
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    handshake_timeout: u64,
    /// Also deliver each message back to its sender.
    #[arg(long)]
    echo: bool,
    /// Messages per second one client may send (burst: the same number); see --rate-limit-action for what happens over it. 0 (the default) disables.
    #[arg(long, value_name = "N", default_value_t = server::DEFAULT_MAX_MESSAGE_RATE)]
    max_message_rate: u32,
    /// Over --max-message-rate: `throttle` stops reading from the client until it is within the rate (nothing is lost); `close` closes it with 1008 "rate limited".
    #[arg(long, value_name = "ACTION", value_enum, default_value_t = server::RateLimitAction::Throttle)]
    rate_limit_action: server::RateLimitAction,
    /// Open WebSocket connections allowed from one client IP address; further upgrades get 503. 0 (the default) disables.
    #[arg(long, value_name = "N", default_value_t = server::DEFAULT_MAX_CONNECTIONS_PER_IP)]
    max_connections_per_ip: u32,
    /// New WebSocket connections accepted per second, server-wide (burst: the same number); excess upgrades get 503. 0 disables.
    #[arg(long, value_name = "N", default_value_t = server::DEFAULT_MAX_NEW_CONNECTIONS_PER_SEC)]
    max_new_connections_per_sec: u32,
    /// Origin allowed to upgrade from a browser (repeatable; `*` allows any). Default: only pages served by this server; clients sending no Origin are always allowed.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// Require this shared secret on upgrade (`Authorization: Bearer TOKEN` or `?token=TOKEN`); otherwise 401.
    #[arg(long, value_name = "TOKEN", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    auth_token: Option<String>,
    /// PEM certificate chain (leaf first): serve `wss://` and `https://` with rustls. Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Join other nodes through this Redis server (`redis://HOST[:PORT][/DB]`): a message sent to any node reaches the clients of all of them.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Redis pub/sub channel the nodes of one deployment share (with --redis).
    #[arg(long, value_name = "NAME", default_value = server::DEFAULT_CHANNEL, requires = "redis",
          value_parser = clap::builder::NonEmptyStringValueParser::new())]
    redis_channel: String,
    /// Seconds a node's presence lease lasts (with --redis): the members of a node that died without a word leave every other node's counts, lists and presence events within this time (plus a fifth of it).
    #[arg(long, value_name = "SECS", default_value_t = server::DEFAULT_LEASE.as_secs(), requires = "redis",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    cluster_lease: u64,
    /// Accept HS256 JSON Web Tokens signed with this secret, passed like --auth-token; `exp` is required. With --auth-token, either is accepted.
    #[arg(long, value_name = "SECRET", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    jwt_secret: Option<String>,
    /// Serve the HTTP API for backends (POST /api/publish, GET /api/channels) to requests with `Authorization: Bearer KEY`; without it the API answers 404.
    #[arg(long, value_name = "KEY", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    api_key: Option<String>,
    /// Most channels one broadcast.v2 connection may subscribe to at once.
    #[arg(long, value_name = "N", default_value_t = server::DEFAULT_MAX_CHANNELS_PER_CONNECTION, value_parser = clap::value_parser!(usize))]
    max_channels_per_connection: usize,
    /// Messages kept per channel so that reconnecting clients can resume (`since`, `?rewind=`); 0 turns history (and message offsets) off. With --redis, positions are assigned in Redis and kept in Redis streams too (docs/cluster.md).
    #[arg(long, value_name = "N", default_value_t = server::DEFAULT_HISTORY_SIZE,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1_000_000))]
    history_size: usize,
    /// Seconds a message of history is kept.
    #[arg(long, value_name = "SECS", default_value_t = server::DEFAULT_HISTORY_TTL.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400 * 30))]
    history_ttl: u64,
    /// Bytes of history kept over all channels; past it the oldest messages of any channel are evicted first.
    #[arg(long, value_name = "BYTES", default_value_t = server::DEFAULT_HISTORY_MEMORY,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=(1 << 40)))]
    history_memory: usize,
    /// permessage-deflate (RFC 7692): `on` accepts a client's offer (each message is compressed once for all such clients), `off` never negotiates it.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = server::CompressionMode::On)]
    compression: server::CompressionMode,
    /// Messages shorter than this many bytes are sent uncompressed even to clients that negotiated compression.
    #[arg(long, value_name = "BYTES", default_value_t = server::DEFAULT_COMPRESSION_MIN_SIZE,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=(1 << 30)))]
    compression_min_size: usize,
    /// Serve GET /metrics on this address only (e.g. 127.0.0.1:9100); the main port's /metrics then answers 404.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Log format on standard error (RUST_LOG filters either).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Read settings from this TOML file (keys: the long flag names); flags and BROADCAST_* variables win over it [env: BROADCAST_CONFIG].
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    config: Option<std::path::PathBuf>,
    /// Check the settings (flags, environment, config file, files they name), print the effective ones and exit, without listening.
    #[arg(long)]
    check_config: bool,
}

/// How log events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (tracing-subscriber's JSON formatter).
    Json,
}

impl StartArgs {
    /// The server settings; the error is one line (a TLS file at fault).
    fn into_config(self) -> Result<Config, server::TlsError> {
        let defaults = Config::default();
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(server::tls_config(cert, key)?),
            _ => None,
        };
        Ok(Config {
            addr: SocketAddr::new(self.host, self.port),
            workers: self.workers.map_or(defaults.workers, usize::from),
            max_message_size: self.max_message_size,
            max_backlog: self.max_backlog,
            idle_timeout: Duration::from_secs(self.idle_timeout),
            max_connections: match self.max_connections {
                0 => usize::MAX,
                n => n,
            },
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout),
            drain_period: Duration::from_secs(self.drain_period),
            handshake_timeout: Duration::from_secs(self.handshake_timeout),
            echo: self.echo,
            max_message_rate: self.max_message_rate,
            rate_limit_action: self.rate_limit_action,
            max_connections_per_ip: self.max_connections_per_ip,
            max_new_connections_per_sec: self.max_new_connections_per_sec,
            allowed_origins: self.allowed_origins,
            auth_token: self.auth_token,
            cluster: self.redis.map(|url| server::ClusterConfig {
                url,
                channel: self.redis_channel,
                lease: Duration::from_secs(self.cluster_lease),
            }),
            jwt_secret: self.jwt_secret,
            api_key: self.api_key,
            max_channels_per_connection: self.max_channels_per_connection,
            history_size: self.history_size,
            history_ttl: Duration::from_secs(self.history_ttl),
            history_memory: self.history_memory,
            metrics_addr: self.metrics_addr,
            compression: self.compression,
            compression_min_size: self.compression_min_size,
            tls,
        })
    }
}

/// Accepts Go-style single-dash long flags (`-port 9000`, `-host=x`) by
/// rewriting them to `--port 9000`: any `-word` of two or more characters
/// starting with a letter. Short flags (`-h`) and negative numbers are kept.
fn go_style(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    args.enumerate()
        .map(|(i, arg)| {
            let Some(s) = arg.to_str() else { return arg };
            let long_single_dash = i > 0
                && s.len() > 2
                && s.starts_with('-')
                && !s.starts_with("--")
                && s.as_bytes()[1].is_ascii_alphabetic();
            if long_single_dash {
                format!("-{s}").into()
            } else {
                arg
            }
        })
        .collect()
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let argv = go_style(std::env::args_os());
    let mut cmd = Cli::command();
    let matches = cmd
        .try_get_matches_from_mut(&argv)
        .unwrap_or_else(|e| usage_error(e, None));
    match Cli::from_arg_matches(&matches) {
        Ok(Cli {
            command: Command::Connect(args),
        }) => return client_cli::run(args),
        Ok(_) => {}
        Err(e) => usage_error(e, None),
    }
    // The flags the command line left out, from the environment and the
    // config file, are appended as flags and everything is parsed again.
    let Some(start_cmd) = cmd.find_subcommand("start").cloned() else {
        unreachable!("start is a subcommand");
    };
    let layers = matches
        .subcommand_matches("start")
        .map(|cli| settings::gather(&start_cmd, cli, &|var| std::env::var_os(var)))
        .transpose()
        .unwrap_or_else(|e| settings_error(e))
        .unwrap_or_default();
    let mut full = argv;
    full.extend(layers.words.iter().cloned());
    let matches = cmd.try_get_matches_from_mut(&full).unwrap_or_else(|e| {
        let note = layers.note_for(&start_cmd, &e);
        usage_error(e, note)
    });
    let args = match Cli::from_arg_matches(&matches) {
        Ok(Cli {
            command: Command::Start(args),
        }) => args,
        Ok(_) => unreachable!("the same command line parsed as start before"),
        Err(e) => usage_error(e, None),
    };
    if args.check_config {
        let report = matches
            .subcommand_matches("start")
            .map(|m| settings::check(&start_cmd, m, &layers))
            .transpose()
            .unwrap_or_else(|e| settings_error(e))
            .unwrap_or_default();
        // Loading the TLS files also checks that they are a usable pair.
        if let Err(e) = args.into_config() {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        print!("{report}");
        return ExitCode::SUCCESS;
    }
    init_logging(args.log_format);
    // Written to dhat-heap.json when `main` returns (after a SIGTERM).
    #[cfg(feature = "dhat-heap")]
    let _profile = dhat::Profiler::new_heap();
    purge_in_the_background();
    match args.into_config() {
        Ok(config) => start(config),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Starts jemalloc's background thread, which returns freed memory to the
/// system on jemalloc's decay schedule (10 s). Without it, purging happens
/// only inside allocation calls, so a server that goes quiet after a crowd
/// left keeps the crowd's memory: measured with 19,000 connections at once,
/// then all gone (`bench/idle.sh` scenario i2), RSS stayed at 37-44 MiB
/// against 7.5 MiB before they came; with the thread it is back to
/// 11.6-12.7 MiB. `_RJEM_MALLOC_CONF=background_thread:false` turns it off.
fn purge_in_the_background() {
    if std::env::var_os("_RJEM_MALLOC_CONF").is_some() {
        return; // the operator chose jemalloc's options
    }
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::debug!(cause = %e, "jemalloc's background thread did not start");
    }
}

/// Installs the log subscriber: `RUST_LOG` filters (default `info`), events
/// go to standard error as text (coloured on a terminal) or JSON lines.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The usage of subcommand `sub` (or of the whole command).
fn usage(sub: Option<&str>) -> clap::builder::StyledStr {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    cmd.build();
    match sub.and_then(|s| cmd.find_subcommand_mut(s)) {
        Some(sub) => sub.render_usage(),
        None => cmd.render_usage(),
    }
}

/// Prints a command-line error with the usage (clap leaves the usage out of
/// some errors, such as a bad value) and exits: 2 for errors, 0 for `--help`.
/// `note` (which flags came from the environment or the file) goes before
/// the usage.
fn usage_error(e: clap::Error, note: Option<String>) -> ! {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
        || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    {
        e.exit();
    }
    let mut text = e.render().to_string();
    if !text.contains("Usage:") {
        // Show the usage of the subcommand that was given, if any.
        let sub = std::env::args().skip(1).find(|a| !a.starts_with('-'));
        text = format!(
            "{}\n\n{}\n\nFor more information, try '--help'.\n",
            text.trim_end()
                .trim_end_matches("For more information, try '--help'.")
                .trim_end(),
            usage(sub.as_deref())
        );
    }
    if let Some(note) = note {
        let at = text.find("\n\nUsage:").unwrap_or(text.len());
        text.insert_str(at, &format!("\n{note}"));
    }
    eprint!("{text}");
    std::process::exit(2);
}

/// Prints a settings error (with `start`'s usage when a key or value is
/// wrong) and exits with 2.
fn settings_error(e: settings::SettingsError) -> ! {
    match e {
        settings::SettingsError::Flag(message) => eprint!(
            "error: {message}\n\n{}\n\nFor more information, try '--help'.\n",
            usage(Some("start"))
        ),
        settings::SettingsError::File(message) => eprintln!("error: {message}"),
    }
    std::process::exit(2);
}

fn start(config: Config) -> ExitCode {
    // Each connection is a file descriptor: allow as many as the hard limit.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => tracing::warn!(cause = %e, "cannot raise the open files limit"),
    }
    if let Some(cluster) = &config.cluster {
        if let Err(e) = server::check_cluster(cluster) {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    }
    let addr = config.addr;
    let workers = config.workers;
    let metrics_addr = config.metrics_addr;
    let scheme = if config.tls.is_some() { "wss" } else { "ws" };
    let mut server = match Server::bind(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    // Bound before anything is printed, so a taken metrics port fails the
    // start like a taken main port.
    let metrics_local = match server.bind_metrics() {
        Ok(local) => local,
        Err(e) => {
            let at = metrics_addr.map(|a| a.to_string()).unwrap_or_default();
            eprintln!("error: cannot listen on {at}: {e}");
            return ExitCode::from(1);
        }
    };
    let local = server.local_addr().unwrap_or(addr);
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
    let result = runtime.block_on(async {
        let (drain, now) = shutdown_signals();
        let (listening, page) = listening_lines(scheme, local);
        println!("{listening}");
        if let Some(metrics) = metrics_local {
            println!("broadcast-server metrics on http://{metrics}/metrics");
        }
        println!("{page}");
        let _ = std::io::stdout().flush();
        tracing::info!(%local, workers, "listening");
        server.run_with_drain(drain, now).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The two stops the signals ask for: SIGTERM a paced drain (immediate
/// with `--drain-period 0`), Ctrl+C (SIGINT) or a second SIGTERM a stop at
/// once. Must be called within the runtime.
fn shutdown_signals() -> (
    impl std::future::Future<Output = ()>,
    impl std::future::Future<Output = ()>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let (now_tx, now_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut drain_tx = Some(drain_tx);
        match signal(SignalKind::terminate()) {
            Ok(mut term) => loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => match drain_tx.take() {
                        Some(tx) => {
                            let _ = tx.send(());
                        }
                        None => break,
                    },
                }
            },
            Err(e) => {
                tracing::warn!(cause = %e, "cannot listen for SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        let _ = now_tx.send(());
    });
    // A sender dropped without sending means "never".
    let resolved = |rx: tokio::sync::oneshot::Receiver<()>| async move {
        if rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    (resolved(drain_rx), resolved(now_rx))
}

/// What the server prints once it listens: the WebSocket URL, and the
/// page's URL (printed last). Bound to every interface (`0.0.0.0`, `::`),
/// the first says so and the page is given as `localhost`, a URL that
/// opens on this machine.
fn listening_lines(scheme: &str, local: SocketAddr) -> (String, String) {
    let http = if scheme == "wss" { "https" } else { "http" };
    if local.ip().is_unspecified() {
        let port = local.port();
        (
            format!("broadcast-server listening on {scheme}://{local}/ws (every interface)"),
            format!(
                "browser client: {http}://localhost:{port}/ (from other machines: this machine's address)"
            ),
        )
    } else {
        (
            format!("broadcast-server listening on {scheme}://{local}/ws"),
            format!("browser client: {http}://{local}/"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(args: &[&str]) -> Vec<String> {
        go_style(args.iter().map(std::ffi::OsString::from))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn go_style_flags_become_long_flags() {
        assert_eq!(
            rewrite(&[
                "bs",
                "start",
                "-port",
                "9000",
                "-host=::1",
                "--echo",
                "-h",
                "-5"
            ]),
            [
                "bs",
                "start",
                "--port",
                "9000",
                "--host=::1",
                "--echo",
                "-h",
                "-5"
            ]
        );
    }

    #[test]
    fn listening_lines_give_urls_a_user_can_open() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let (ws, page) = listening_lines("ws", any);
        assert_eq!(
            ws,
            "broadcast-server listening on ws://0.0.0.0:8080/ws (every interface)"
        );
        assert!(
            page.starts_with("browser client: http://localhost:8080/ "),
            "{page}"
        );
        let any6: SocketAddr = "[::]:8443".parse().unwrap();
        assert!(listening_lines("wss", any6)
            .1
            .starts_with("browser client: https://localhost:8443/"));
        let local: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(
            listening_lines("ws", local),
            (
                "broadcast-server listening on ws://127.0.0.1:9000/ws".to_owned(),
                "browser client: http://127.0.0.1:9000/".to_owned()
            )
        );
    }

    /// Every flag of `start` and `connect` is documented: named in
    /// backticks (`--flag`) in the README or a page of docs/, so the docs
    /// cannot fall behind the command line.
    #[test]
    fn docs_name_every_flag() {
        use clap::CommandFactory;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut docs = std::fs::read_to_string(root.join("README.md")).unwrap();
        for entry in std::fs::read_dir(root.join("docs")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                docs.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
        let cli = Cli::command();
        let (mut missing, mut checked) = (Vec::new(), 0);
        for sub in ["start", "connect"] {
            let command = cli.find_subcommand(sub).unwrap();
            for arg in command.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if long == "help" || long == "version" {
                    continue;
                }
                checked += 1;
                if !docs.contains(&format!("`--{long}")) {
                    missing.push(format!("{sub} --{long}"));
                }
            }
        }
        assert!(checked > 30, "only {checked} flags found");
        assert!(
            missing.is_empty(),
            "flags missing from README.md and docs/: {missing:?}"
        );
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
