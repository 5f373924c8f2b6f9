//! Command-line flags.

use std::time::Duration;

use clap::Parser;

/// Load generator for broadcast-server.
///
/// Opens `--clients` subscribers (read only), then `--publishers` publishers
/// that send binary messages of `--size` bytes at a fixed total `--rate` (or as
/// fast as a bounded window allows with `--max-rate`) for `--duration`; then
/// drains, closes everything and prints a summary. Exit code 0 when loss and
/// errors are within `--max-loss` / `--max-errors`, 1 otherwise, 2 on bad flags.
#[derive(Debug, Clone, Parser)]
#[command(name = "load-test", version, about, long_about)]
pub(crate) struct Args {
    /// WebSocket URL of the server (ws:// only).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub(crate) url: String,

    /// Subscriber connections (they only read).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) clients: u32,

    /// Publisher connections (separate from the subscribers).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) publishers: u32,

    /// Total messages per second over all publishers (ignored with --max-rate).
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

    /// With --max-rate: messages in flight per publisher (acknowledged by one
    /// designated subscriber when it receives them).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) window: u32,

    /// Subscriber connections opened per second.
    #[arg(long, default_value_t = 2000.0, value_parser = parse_positive_f64)]
    pub(crate) ramp: f64,

    /// For a loopback target: bind connections round-robin to 127.0.0.1..=127.0.0.N.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub(crate) source_addrs: u8,

    /// After publishing stops, how long subscribers may still wait for messages.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) drain: Duration,

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

fn parse_positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a positive number")),
    }
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
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn flags_parse_and_validate() {
        let a = Args::try_parse_from([
            "load-test",
            "--clients",
            "10",
            "--max-rate",
            "--duration",
            "2s",
        ])
        .unwrap();
        assert_eq!(a.clients, 10);
        assert!(a.max_rate);
        assert_eq!(a.duration, Duration::from_secs(2));
        assert!(Args::try_parse_from(["load-test", "--size", "23"]).is_err());
        assert!(Args::try_parse_from(["load-test", "--clients", "0"]).is_err());
        assert!(Args::try_parse_from(["load-test", "--rate", "-1"]).is_err());
        assert!(Args::try_parse_from(["load-test", "--max-loss", "2"]).is_err());
    }
}
