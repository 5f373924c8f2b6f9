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
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP broadcast_closes WebSocket connections ended, by reason
# TYPE broadcast_closes counter
broadcast_closes_total{reason="normal"} 10
broadcast_closes_total{reason="aborted"} 0
broadcast_connections_open 5
broadcast_publisher_paused_seconds_total{cause="fanout"} 1.5
broadcast_publisher_paused_seconds_total{cause="rate_limit"} 0
broadcast_fanout_backlog_bytes 0
broadcast_aborted_connections_total 3
# TYPE broadcast_delivery_latency_seconds histogram
broadcast_delivery_latency_seconds_bucket{le="0.001"} 10
broadcast_delivery_latency_seconds_bucket{le="0.01"} 20
broadcast_delivery_latency_seconds_bucket{le="0.1"} 20
broadcast_delivery_latency_seconds_bucket{le="+Inf"} 20
broadcast_delivery_latency_seconds_sum 0.05
broadcast_delivery_latency_seconds_count 20
# EOF
"#;

    #[test]
    fn lines_and_labels_parse() {
        let p = Page::parse(PAGE);
        assert_eq!(p.value("broadcast_connections_open"), Some(5.0));
        assert_eq!(p.value("broadcast_closes_total"), None); // labelled only
        let closes = p.by_label(CLOSES, "reason");
        assert_eq!(closes["normal"], 10.0);
        assert_eq!(closes["aborted"], 0.0);
        let b = p.buckets(LATENCY);
        assert_eq!(
            b,
            vec![
                (0.001, 10.0),
                (0.01, 20.0),
                (0.1, 20.0),
                (f64::INFINITY, 20.0)
            ]
        );
        // Escapes, spaces, a timestamp and an exemplar.
        let s = parse_line(r#"x_total{a="q\"uo\\te", b = "2"} 3 1700000000 # {id="e"} 1"#).unwrap();
        assert_eq!(s.name, "x_total");
        assert_eq!(
            s.labels,
            vec![("a".into(), "q\"uo\\te".into()), ("b".into(), "2".into())]
        );
        assert_eq!(s.value, 3.0);
        assert!(parse_line("novalue").is_none());
        assert!(parse_line(r#"x{a="unterminated} 1"#).is_none());
    }

    #[test]
    fn percentile_is_the_bucket_bound_where_the_count_crosses() {
        let inf = f64::INFINITY;
        // 100 observations: 50 <= 1, 40 in (1, 5], 9 in (5, 10], 1 above 10.
        let b = [(1.0, 50.0), (5.0, 90.0), (10.0, 99.0), (inf, 100.0)];
        assert_eq!(bucket_percentile(&b, 0.50), Some(1.0)); // rank 50: exactly the first
        assert_eq!(bucket_percentile(&b, 0.51), Some(5.0));
        assert_eq!(bucket_percentile(&b, 0.90), Some(5.0));
        assert_eq!(bucket_percentile(&b, 0.99), Some(10.0));
        assert_eq!(bucket_percentile(&b, 0.995), Some(inf));
        assert_eq!(bucket_percentile(&b, 0.0), Some(1.0)); // rank at least 1
                                                           // One observation: every percentile is its bucket.
        let one = [(1.0, 0.0), (5.0, 1.0), (inf, 1.0)];
        assert_eq!(bucket_percentile(&one, 0.5), Some(5.0));
        assert_eq!(bucket_percentile(&one, 0.99), Some(5.0));
        // Empty buckets at the start are skipped.
        let late = [(1.0, 0.0), (2.0, 0.0), (4.0, 3.0), (inf, 3.0)];
        assert_eq!(bucket_percentile(&late, 0.01), Some(4.0));
        assert_eq!(bucket_percentile(&[(1.0, 0.0), (inf, 0.0)], 0.5), None);
        assert_eq!(bucket_percentile(&[], 0.5), None);
    }

    #[test]
    fn run_figures_are_deltas_of_two_scrapes() {
        let before = Page::parse(PAGE);
        let after = Page::parse(
            &PAGE
                .replace(r#"reason="normal"} 10"#, r#"reason="normal"} 12"#)
                .replace(r#"reason="aborted"} 0"#, r#"reason="aborted"} 1"#)
                .replace(r#"cause="fanout"} 1.5"#, r#"cause="fanout"} 4"#)
                .replace("backlog_bytes 0", "backlog_bytes 77")
                .replace("aborted_connections_total 3", "aborted_connections_total 4")
                // 100 more: 90 under 1 ms, 9 under 10 ms, 1 over 100 ms.
                .replace(r#"le="0.001"} 10"#, r#"le="0.001"} 100"#)
                .replace(r#"le="0.01"} 20"#, r#"le="0.01"} 119"#)
                .replace(r#"le="0.1"} 20"#, r#"le="0.1"} 119"#)
                .replace(r#"le="+Inf"} 20"#, r#"le="+Inf"} 120"#),
        );
        let m = ServerMetrics::between("u", &before, &after);
        assert_eq!(m.latency_observations, 100);
        assert_eq!(m.latency_p50_ms, Some(1.0));
        assert_eq!(m.latency_p99_ms, Some(10.0));
        assert_eq!(m.latency_over_ms, Some(100.0));
        assert_eq!(m.show(m.latency_p99_ms), "10");
        assert_eq!(
            m.publisher_paused_s,
            BTreeMap::from([("fanout".to_string(), 2.5)])
        );
        assert_eq!(
            m.closes,
            BTreeMap::from([("aborted".to_string(), 1.0), ("normal".to_string(), 2.0)])
        );
        assert_eq!(m.fanout_backlog_bytes_end, Some(77.0));
        assert_eq!(m.aborted, Some(1.0));
        // A p99 in the +Inf bucket.
        let worse = Page::parse(&after.samples.iter().fold(String::new(), |mut s, x| {
            let v = if x.name.ends_with("_bucket") && x.labels[0].1 == "+Inf" {
                x.value + 50.0
            } else {
                x.value
            };
            let labels: Vec<String> = x
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            s += &format!("{}{{{}}} {v}\n", x.name, labels.join(","));
            s
        }));
        let m = ServerMetrics::between("u", &before, &worse);
        assert_eq!(m.latency_observations, 150);
        assert_eq!(m.latency_p99_ms, None);
        assert_eq!(m.show(m.latency_p99_ms), "> 100");
        // A server without these metrics.
        let none = ServerMetrics::between("u", &Page::default(), &Page::default());
        assert_eq!(none.latency_observations, 0);
        assert_eq!(none.show(none.latency_p50_ms), "-");
        assert!(none.publisher_paused_s.is_empty());
        assert_eq!(none.aborted, None);
    }

    #[test]
    fn urls_and_http_answers() {
        assert_eq!(
            split_url("http://127.0.0.1:9/metrics").unwrap(),
            ("127.0.0.1:9", "/metrics")
        );
        assert_eq!(split_url("http://h:1").unwrap(), ("h:1", "/"));
        assert!(split_url("https://h/metrics").is_err());
        assert!(split_url("http:///x").is_err());
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\na 1";
        assert_eq!(body_of(plain).unwrap(), "a 1");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\na 1\r\n2;x=y\r\n\n\n\r\n0\r\n\r\n";
        assert_eq!(body_of(chunked).unwrap(), "a 1\n\n");
        assert!(body_of(b"HTTP/1.1 404 Not Found\r\n\r\n").is_err());
        assert!(body_of(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
