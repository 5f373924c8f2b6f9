//! `--metrics URL`: the server's own view of the run, from its Prometheus
//! `/metrics` page, scraped once before publishing starts and once after the
//! drain. Only the difference between the two scrapes is reported, so a
//! server that has been running for a while still gives figures for this run:
//!
//! - `broadcast_delivery_latency_seconds` (histogram): p50 / p99 of the
//!   observations made during the run, as bucket upper bounds (see
//!   [`bucket_percentile`]);
//! - `broadcast_publisher_paused_seconds_total{cause}`: seconds the server
//!   stopped reading publishers, by cause (flow control), when it has them;
//! - `broadcast_closes_total{reason}`: connections the server ended, by reason,
//!   and `broadcast_aborted_connections_total` (reset after the close timeout);
//! - `broadcast_fanout_backlog_bytes` (gauge): its value at the second scrape.
//!
//! The page is fetched with a minimal HTTP/1.1 GET (plain `http://` only:
//! `--metrics-addr` always serves plain HTTP), so no HTTP client crate is
//! needed for one request per scrape.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One scrape must be answered within this long.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Larger answers are refused (ours is about 5 KB).
const MAX_PAGE: usize = 4 << 20;

const LATENCY: &str = "broadcast_delivery_latency_seconds";
const PAUSED: &str = "broadcast_publisher_paused_seconds_total";
const CLOSES: &str = "broadcast_closes_total";
const ABORTED: &str = "broadcast_aborted_connections_total";
const BACKLOG: &str = "broadcast_fanout_backlog_bytes";

/// One sample line: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// A parsed metrics page (text exposition or OpenMetrics format).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Page {
    samples: Vec<Sample>,
}

impl Page {
    /// Parses the sample lines; comments, blank lines and lines that do not
    /// parse are skipped (a scrape is a measurement aid, not a validator).
    pub(crate) fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(parse_line)
            .collect();
        Self { samples }
    }

    fn label<'a>(s: &'a Sample, key: &str) -> Option<&'a str> {
        s.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of the unlabelled sample `name`.
    fn value(&self, name: &str) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels.is_empty())
            .map(|s| s.value)
    }

    /// `name`'s samples by the value of label `key`.
    fn by_label(&self, name: &str, key: &str) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| Some((Self::label(s, key)?.to_string(), s.value)))
            .collect()
    }

    /// The cumulative buckets of histogram `name`: (upper bound, count),
    /// sorted by bound, `+Inf` last as `f64::INFINITY`.
    fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut out: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|s| s.name == bucket)
            .filter_map(|s| Some((parse_value(Self::label(s, "le")?)?, s.value)))
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

/// `name{k="v",...} value [timestamp] [# exemplar]`.
fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(r)?;
        labels = parsed;
        rest = after;
    }
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Labels after the `{`: the pairs and what follows the closing `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        let mut chars = s[eq + 1..].trim_start().strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        let quoted = s[eq + 1..].trim_start();
        s = &quoted[1 + end + 1..];
        labels.push((key, value));
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// The `q` quantile (0..=1) of a histogram given as cumulative buckets
/// `(upper bound, count)` sorted by bound: the upper bound of the first bucket
/// whose cumulative count reaches `ceil(q * total)` (at least 1), where the
/// total is the last bucket's count (`+Inf`). `f64::INFINITY` when that is the
/// `+Inf` bucket; None without observations. Counts may be deltas of two
/// scrapes (they stay cumulative).
pub(crate) fn bucket_percentile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = (q * total).ceil().max(1.0);
    buckets.iter().find(|b| b.1 >= rank).map(|b| b.0)
}

/// Cumulative buckets of `after` minus those of `before` (same bounds; a
/// bound missing before counts from 0).
fn bucket_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, n)| {
            let was = before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
            (le, (n - was).max(0.0))
        })
        .collect()
}

/// Deltas of labelled counters, keeping the non-zero ones.
fn counter_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, &v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

/// What the server's metrics say about the run (second scrape minus first).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct ServerMetrics {
    pub(crate) url: String,
    /// Observations of `broadcast_delivery_latency_seconds` during the run
    /// (one per batch per shard for broadcast-server); 0 when the server has
    /// no such histogram.
    pub(crate) latency_observations: u64,
    /// Its p50 and p99, milliseconds, as the upper bound of the bucket the
    /// percentile falls in (null: no observations, or the `+Inf` bucket,
    /// then see `latency_over_ms`).
    pub(crate) latency_p50_ms: Option<f64>,
    pub(crate) latency_p99_ms: Option<f64>,
    /// The largest finite bucket bound, ms: a null percentile with
    /// observations is above it.
    pub(crate) latency_over_ms: Option<f64>,
    /// `broadcast_publisher_paused_seconds_total` deltas by `cause`
    /// (`fanout`, `rate_limit`); empty when the server has none.
    pub(crate) publisher_paused_s: BTreeMap<String, f64>,
    /// `broadcast_closes_total` deltas by `reason`, non-zero ones.
    pub(crate) closes: BTreeMap<String, f64>,
    /// `broadcast_aborted_connections_total` delta, if the server has it.
    pub(crate) aborted: Option<f64>,
    /// `broadcast_fanout_backlog_bytes` at the second scrape, if present.
    pub(crate) fanout_backlog_bytes_end: Option<f64>,
}

impl ServerMetrics {
    /// The figures of the run between scrapes `before` and `after`.
    pub(crate) fn between(url: &str, before: &Page, after: &Page) -> Self {
        let lat = bucket_delta(&before.buckets(LATENCY), &after.buckets(LATENCY));
        let ms = |s: Option<f64>| s.filter(|v| v.is_finite()).map(|v| v * 1e3);
        Self {
            url: url.to_string(),
            latency_observations: lat.last().map_or(0, |b| b.1 as u64),
            latency_p50_ms: ms(bucket_percentile(&lat, 0.50)),
            latency_p99_ms: ms(bucket_percentile(&lat, 0.99)),
            latency_over_ms: ms(lat.iter().rev().map(|b| b.0).find(|b| b.is_finite())),
            publisher_paused_s: counter_delta(
                &before.by_label(PAUSED, "cause"),
                &after.by_label(PAUSED, "cause"),
            ),
            closes: counter_delta(
                &before.by_label(CLOSES, "reason"),
                &after.by_label(CLOSES, "reason"),
            ),
            aborted: after
                .value(ABORTED)
                .map(|a| a - before.value(ABORTED).unwrap_or(0.0)),
            fanout_backlog_bytes_end: after.value(BACKLOG),
        }
    }

    /// A percentile for the summary table: `12.5`, `> 2500` or `-`.
    pub(crate) fn show(&self, p: Option<f64>) -> String {
        match (p, self.latency_observations, self.latency_over_ms) {
            (Some(v), _, _) => format!("{v}"),
            (None, n, Some(over)) if n > 0 => format!("> {over}"),
            _ => "-".to_string(),
        }
    }
}

/// `http://host:port/path` → (`host:port`, `/path`).
fn split_url(url: &str) -> Result<(&str, &str)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!(
            "--metrics {url}: only http:// URLs are supported (the metrics listener is plain HTTP)"
        );
    };
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    if authority.is_empty() {
        bail!("--metrics {url}: no host");
    }
    Ok((authority, path))
}

/// Checks the URL's form before the run (no request).
pub(crate) fn check_url(url: &str) -> Result<()> {
    split_url(url).map(|_| ())
}

/// GETs the metrics page and parses it.
pub(crate) async fn scrape(url: &str) -> Result<Page> {
    let text = tokio::time::timeout(SCRAPE_TIMEOUT, get(url))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {SCRAPE_TIMEOUT:?}"))
        .and_then(|r| r)
        .with_context(|| format!("scrape {url}"))?;
    Ok(Page::parse(&text))
}

async fn get(url: &str) -> Result<String> {
    let (authority, path) = split_url(url)?;
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut tcp = TcpStream::connect(&addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes())
        .await
        .context("send request")?;
    let mut raw = Vec::new();
    (&mut tcp)
        .take(MAX_PAGE as u64 + 1)
        .read_to_end(&mut raw)
        .await
        .context("read answer")?;
    if raw.len() > MAX_PAGE {
        bail!("answer larger than {MAX_PAGE} bytes");
    }
    body_of(&raw)
}

/// The body of a complete HTTP/1.1 answer (status 200 required; a chunked
/// body is decoded).
fn body_of(raw: &[u8]) -> Result<String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("incomplete HTTP answer")?;
    let head = std::str::from_utf8(&raw[..head_end]).context("HTTP head is not UTF-8")?;
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("HTTP status `{status}`, expected 200");
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = &raw[head_end + 4..];
    let bytes = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    String::from_utf8(bytes).context("metrics page is not UTF-8")
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size_text = std::str::from_utf8(&body[..eol]).context("bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).context("bad chunk size")?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[cfg(test)]
#[path = "scrape_tests.rs"]
mod tests;
