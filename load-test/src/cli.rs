//! Command-line flags.

use std::time::Duration;

use clap::Parser;

/// `--compression`: what subscribers offer and inflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Compression {
    /// No offer (the default).
    Off,
    /// Offer it; inflate only the 24-byte header of each message.
    Header,
    /// Offer it; inflate every message whole.
    Full,
}

impl Compression {
    /// What a subscriber's connection does; `--v1` (the header is inside
    /// a JSON event's base64) inflates whole.
    pub(crate) fn deflate(self, v1: bool) -> crate::rawws::Deflate {
        match self {
            Self::Off => crate::rawws::Deflate::Off,
            Self::Header if v1 => crate::rawws::Deflate::Full,
            Self::Header => crate::rawws::Deflate::Prefix(crate::payload::HEADER_LEN),
            Self::Full => crate::rawws::Deflate::Full,
        }
    }
}

/// Load generator for broadcast-server.
///
/// Opens `--clients` subscribers (read only), then `--publishers` publishers
/// that send binary messages of `--size` bytes at a fixed total `--rate` (or as
/// fast as a bounded window allows with `--max-rate`) for `--duration`; then
/// drains, closes everything and prints a summary. Exit code 0 when loss and
/// errors are within `--max-loss` / `--max-errors`, 1 otherwise, 2 on bad flags.
///
/// Variants: `--idle` (no publishers: hold the subscribers for `--duration`),
/// `--ramp 0` (connection storm: everyone at once, at most `--storm-concurrency`
/// handshakes in flight), `--slow-fraction` (some subscribers never read),
/// `--flooders` (extra publishers that send as fast as TCP takes),
/// `--server-pid` (server CPU and memory from /proc), `--metrics` (the
/// server's own latency histogram and flow-control counters) and `--report`
/// (plots).
#[derive(Debug, Clone, Parser)]
#[command(name = "load-test", version, about, long_about)]
pub(crate) struct Args {
    /// WebSocket URL of the server (ws:// or wss://). Repeat it for the nodes of
    /// a cluster: subscriber i connects to URL i mod N and publisher p to URL
    /// p mod N (both round-robin, in the order given).
    #[arg(
        long = "url",
        value_name = "URL",
        default_value = "ws://127.0.0.1:8080/ws"
    )]
    pub(crate) urls: Vec<String>,

    /// Subscriber connections (they only read).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) clients: u32,

    /// Publisher connections (separate from the subscribers); 0 is --idle.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub(crate) publishers: u32,

    /// Flood publishers, besides the --publishers ("paced" ones): each writes
    /// messages back to back for --duration with no rate and no window, so
    /// only TCP push-back from the server slows it. Their messages are
    /// stamped when written; the summary and the JSON report latency and loss
    /// separately for the "paced" and the "flood" publishers. They run on a
    /// thread of their own, so they do not delay the paced ones' schedule.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub(crate) flooders: u32,

    /// Idle mode: no publishers; subscribers connect, stay idle for
    /// --duration, then close (same as --publishers 0).
    #[arg(long)]
    pub(crate) idle: bool,

    /// Total messages per second over all (paced) publishers, each sending
    /// rate / publishers (ignored with --max-rate; not used by --flooders).
    #[arg(long, default_value_t = 1000.0, value_parser = parse_positive_f64)]
    pub(crate) rate: f64,

    /// Payload size in bytes (header is 24 bytes).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(24..=16 * 1024 * 1024))]
    pub(crate) size: u32,

    /// How long publishers send, e.g. 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,

    /// Send as fast as the in-flight window allows instead of at --rate.
    #[arg(long)]
    pub(crate) max_rate: bool,

    /// With --max-rate: messages in flight per publisher; one stops being in
    /// flight when every reading subscriber has received it.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) window: u32,

    /// Subscriber connections opened per second; 0: a connection storm, all at
    /// once with at most --storm-concurrency handshakes in flight.
    #[arg(long, default_value_t = 2000.0, value_parser = parse_non_negative_f64)]
    pub(crate) ramp: f64,

    /// With --ramp 0: most connection attempts in flight at once.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) storm_concurrency: u32,

    /// Fraction (0..1) of subscribers that stop reading once connected (slow
    /// consumers). They are spread evenly over the subscribers, excluded from
    /// latency and loss, and resume reading when the run ends to see how the
    /// server closed them (see the summary's "slow subscribers" line).
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    pub(crate) slow_fraction: f64,

    /// SO_RCVBUF of the slow subscribers' sockets, bytes (0: the kernel's
    /// default). Small, so that little of what they leave unread hides in
    /// their own kernel buffer (the server's send buffer may still hold
    /// megabytes before its own queue starts to fill).
    #[arg(long, default_value_t = 16 * 1024, value_name = "BYTES")]
    pub(crate) slow_rcvbuf: u32,

    /// Speak the `broadcast.v1` subprotocol: every connection offers it
    /// (failing if the server does not select it), subscribers decode the
    /// payload from `message` events' base64 `data` and count the welcome,
    /// presence and notice events. Publishers still send binary frames.
    #[arg(long)]
    pub(crate) v1: bool,

    /// Offer permessage-deflate (RFC 7692, `client_no_context_takeover`)
    /// and inflate what the server sends compressed. Off by default, so
    /// that runs without it stay comparable with earlier ones (and with
    /// servers that compress: the server then compresses nothing).
    /// `--compression` alone is `header`: a compressed message is inflated
    /// only as far as its 24-byte header (what the subscriber decodes),
    /// which needs the server's `server_no_context_takeover` (otherwise
    /// whole); the rest is neither inflated nor checked, and the message
    /// length is not compared with `--size` (with `--v1`, whose payload is
    /// inside the event's base64, messages are inflated whole). Inflating
    /// every message whole
    /// (`full`) made this tool, not the server, the bottleneck at
    /// saturation (docs/compression.md). Publishers offer it too, except
    /// when they share a channel with other publishers (they read with
    /// tokio-tungstenite, which cannot inflate); they always send
    /// uncompressed (RFC 7692 allows it). The report counts the bytes
    /// subscribers read from their sockets either way.
    #[arg(
        long,
        value_enum,
        default_value_t = Compression::Off,
        num_args = 0..=1,
        default_missing_value = "header",
        value_name = "HOW"
    )]
    pub(crate) compression: Compression,

    /// What fills a payload after its 24-byte binary header: `dots`
    /// (`.` repeated, as always) or `json` (an array of realistic records:
    /// ids, names, prices, timestamps, nested objects and arrays, from a
    /// fixed seed; it compresses about as JSON does, see --help of
    /// --compression). The binary header stays, so subscribers decode
    /// the same fixed offsets either way.
    #[arg(long, value_enum, default_value_t = crate::payload::Body::Dots, value_name = "KIND")]
    pub(crate) payload: crate::payload::Body,

    /// Spread subscribers and publishers over N channels `lt-0` ..
    /// `lt-{N-1}`: subscriber i joins `lt-{i mod N}`, publisher p (paced,
    /// then flooders) publishes to `lt-{p mod N}`. Each `--url`'s path is
    /// replaced by `/ws/lt-K` (its query is kept, and must not name a
    /// channel). Loss is counted per channel; the summary adds a
    /// per-channel breakdown (the full table in --json). 1: every
    /// connection uses `--url` as given (one channel, no rewriting).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CHANNELS)))]
    pub(crate) channels: u32,

    /// Publish through the server's HTTP API instead of WebSocket
    /// connections: `POST URL/api/publish` with the payload base64 in
    /// `"data"`, one keep-alive HTTP/1.1 connection per publisher (paced
    /// and flooders), one request in flight on each. A publisher stops at
    /// its first answer other than 200 (counted as a publish error, by
    /// status). e.g. http://127.0.0.1:8080 (https:// with --ca as for wss).
    #[arg(long, value_name = "URL", requires = "api_key")]
    pub(crate) api: Option<String>,

    /// The server's `--api-key`, sent as `Authorization: Bearer KEY` (with --api).
    #[arg(long, value_name = "KEY", requires = "api")]
    pub(crate) api_key: Option<String>,

    /// Resume test: every subscriber (not slow) drops its TCP connection
    /// every D, without a close handshake, and connects again at once (after
    /// --outage) with `?since=` its last position, so the server replays
    /// what it missed; publishing goes on meanwhile. Needs --v1 (positions
    /// come in v1 events). The first drops are spread evenly over the first
    /// D after publishing starts (all at once with --reconnect-together).
    /// The summary counts reconnects, messages recovered, resumes the
    /// server could not cover, gaps and duplicates.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub(crate) reconnect_every: Option<Duration>,

    /// With --reconnect-every: every subscriber drops at the same instants
    /// (D after publishing starts, then every D) and all reconnect at once:
    /// a recovery storm. The summary's "time to recover" is then how long
    /// the slowest took.
    #[arg(long, requires = "reconnect_every")]
    pub(crate) reconnect_together: bool,

    /// With --reconnect-every: how long a subscriber stays away before it
    /// connects again (at --rate, about rate x outage messages behind).
    #[arg(long, default_value = "0s", value_parser = parse_duration, requires = "reconnect_every")]
    pub(crate) outage: Duration,

    /// With several --url (the nodes of a cluster): a subscriber or
    /// publisher the server closes with 1012 (restarting: a drain) or 1001
    /// (going away) answers the close, waits a random pause of up to this
    /// long, and connects to the next URL (then the one after, every 100 ms,
    /// for up to --connect-timeout), a subscriber resuming with `?since=`
    /// its last position (--v1), a publisher going on with its sequence.
    /// The summary's "moves" line counts them, the messages recovered, and
    /// the longest time a subscriber went without a message around a move.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub(crate) move_jitter: Duration,

    /// With several --url: a connection the server closes ends there, as
    /// with one URL (no moves).
    #[arg(long)]
    pub(crate) no_move: bool,

    /// Subscribers end by dropping the TCP connection instead of a close handshake.
    #[arg(long)]
    pub(crate) abrupt_close: bool,

    /// PID of the server (on this machine): sample its CPU time and memory
    /// (/proc/PID/stat, /proc/PID/status) before connecting, when idle, at the
    /// end and after everything closed.
    #[arg(long, value_name = "PID")]
    pub(crate) server_pid: Option<u32>,

    /// With --server-pid: pause after all connections closed before sampling
    /// the memory the server kept ("after close"; e.g. 10s to see what it
    /// returns once idle again).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub(crate) after_close: Duration,

    /// The server's Prometheus page (http://HOST:PORT/metrics): scraped once
    /// when publishing starts and once after the drain; the summary gives the
    /// difference: p50/p99 of `broadcast_delivery_latency_seconds` over the
    /// run (as bucket upper bounds), `broadcast_publisher_paused_seconds_total`
    /// by cause, and `broadcast_closes_total` by reason. A failed scrape is
    /// reported, not fatal.
    #[arg(long, value_name = "URL")]
    pub(crate) metrics: Option<String>,

    /// Write plots (latency per second, latency percentiles, deliveries per
    /// second) with the summary: a self-contained .html page, or one .svg.
    #[arg(long, value_name = "FILE.html|FILE.svg")]
    pub(crate) report: Option<std::path::PathBuf>,

    /// For wss:// URLs: also trust the certificates in this PEM file (a
    /// private CA or a self-signed server certificate), besides the system's
    /// certificate store and the Mozilla roots.
    #[arg(long, value_name = "FILE")]
    pub(crate) ca: Option<std::path::PathBuf>,

    /// For a loopback target: bind connections round-robin to 127.0.0.1..=127.0.0.N.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub(crate) source_addrs: u8,

    /// After publishing stops, how long subscribers may still wait for
    /// messages. A publisher's last write blocked by TCP push-back at the end
    /// of --duration also gets this long to finish (then it counts as a send
    /// error).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) drain: Duration,

    /// End the drain early once no subscriber has received anything for
    /// this long (0: wait for everything or the whole --drain). For long
    /// drains against a server that may lose messages.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub(crate) drain_quiet: Duration,

    /// Pause between the last subscriber connecting and publishing start.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub(crate) settle: Duration,

    /// Timeout of one connection attempt (TCP connect + WebSocket handshake).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) connect_timeout: Duration,

    /// Write the summary as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<std::path::PathBuf>,

    /// Highest loss ratio (0.0..=1.0, lost / expected) that still passes.
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    pub(crate) max_loss: f64,

    /// Highest number of errors (failed connections, server closes, send
    /// errors, malformed messages) that still passes.
    #[arg(long, default_value_t = 0)]
    pub(crate) max_errors: u64,

    /// Do not draw progress bars (they are drawn only on a terminal anyway).
    #[arg(long)]
    pub(crate) no_progress: bool,
}

/// Most channels `--channels` spreads the connections over.
pub(crate) const MAX_CHANNELS: u32 = 100_000;

/// The name of channel `k` of `--channels`.
pub(crate) fn channel_name(k: usize) -> String {
    format!("lt-{k}")
}

fn parse_positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a positive number")),
    }
}

fn parse_non_negative_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a non-negative number")),
    }
}

impl Args {
    /// Idle mode: no publishers of either kind.
    pub(crate) fn is_idle(&self) -> bool {
        self.idle || self.publishers + self.flooders == 0
    }

    /// Paced publishers (rate or window) actually started.
    pub(crate) fn publisher_count(&self) -> usize {
        if self.is_idle() {
            0
        } else {
            self.publishers as usize
        }
    }

    /// Flood publishers actually started.
    pub(crate) fn flooder_count(&self) -> usize {
        if self.is_idle() {
            0
        } else {
            self.flooders as usize
        }
    }

    /// Checks combinations clap cannot express.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if let Some(r) = &self.report {
            let ext = r.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !ext.eq_ignore_ascii_case("html")
                && !ext.eq_ignore_ascii_case("htm")
                && !ext.eq_ignore_ascii_case("svg")
            {
                return Err(format!(
                    "--report {}: the file name must end in .html or .svg",
                    r.display()
                ));
            }
        }
        if let Some(url) = &self.metrics {
            crate::scrape::check_url(url).map_err(|e| e.to_string())?;
        }
        for url in &self.urls {
            let checked = if self.channels > 1 {
                crate::conn::channel_url(url, &channel_name(0)).map(drop)
            } else if self.api.is_some() {
                // The API publishers publish to the channel the URL names.
                crate::conn::url_channel(url).map(drop)
            } else {
                Ok(())
            };
            checked.map_err(|e| format!("--url {url}: {e:#}"))?;
        }
        if let Some(every) = self.reconnect_every {
            if !self.v1 {
                return Err(
                    "--reconnect-every needs --v1: raw messages carry no position to resume from"
                        .into(),
                );
            }
            if self.max_rate {
                return Err("--reconnect-every works with --rate, not --max-rate".into());
            }
            if every.is_zero() || every <= self.outage {
                return Err("--reconnect-every must be longer than --outage".into());
            }
        }
        if let Some(url) = &self.api {
            crate::api::check_url(url).map_err(|e| format!("--api {url}: {e:#}"))?;
        }
        if self.max_rate && self.publisher_count() > 0 {
            if let Some(k) = self.channel_without_reader() {
                return Err(if self.channels == 1 {
                    "--max-rate needs at least one subscriber that is not slow (lower --slow-fraction)"
                        .into()
                } else {
                    format!(
                        "--max-rate needs a subscriber that is not slow in every channel with a \
                         publisher; lt-{k} has none (more --clients, fewer --channels or a lower \
                         --slow-fraction)"
                    )
                });
            }
        }
        Ok(())
    }

    /// The first channel with a paced publisher but no reading (not slow)
    /// subscriber: the `--max-rate` windows of its publishers could never
    /// be acknowledged.
    fn channel_without_reader(&self) -> Option<usize> {
        let (clients, n) = (self.clients as usize, self.channels as usize);
        let slow = slow_count(clients, self.slow_fraction);
        let mut has_reader = vec![false; n];
        for i in (0..clients).filter(|&i| !is_slow(i, clients, slow)) {
            has_reader[i % n] = true;
        }
        (0..self.publisher_count().min(n)).find(|&k| !has_reader[k])
    }
}

/// How many of `clients` subscribers are slow with `fraction`.
pub(crate) fn slow_count(clients: usize, fraction: f64) -> usize {
    ((clients as f64 * fraction).round() as usize).min(clients)
}

/// Whether subscriber `i` of `clients` is one of the `slow` ones (spread evenly).
pub(crate) fn is_slow(i: usize, clients: usize, slow: usize) -> bool {
    clients > 0 && (i + 1) * slow / clients > i * slow / clients
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a ratio between 0 and 1")),
    }
}

/// Parses `500ms`, `10s`, `2m`, `1h`, `1.5s` or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("`{s}`: {e}"))
}

#[cfg(test)]
#[path = "cli_tests.rs"]
mod tests;
