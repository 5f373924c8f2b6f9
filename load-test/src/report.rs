//! The summary: what was measured, printed as a table or written as JSON,
//! and the pass/fail decision.
//!
//! Why one file of this size: one summary is written three ways (text, JSON,
//! the HTML report's tables) from the same figures, and keeping them side by
//! side keeps them in step; its tests are in `report_tests.rs`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::procstat::ServerUsage;
use crate::runinfo::RunInfo;
use crate::scrape::ServerMetrics;
use crate::series::{ActivityPoint, SecondPoint};

/// Latency percentiles in milliseconds (histograms record microseconds).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct Latency {
    pub(crate) samples: u64,
    pub(crate) mean_ms: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

impl Latency {
    pub(crate) fn from_histogram_us(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            samples: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// One point of the latency percentile curve.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct PercentilePoint {
    pub(crate) percentile: f64,
    pub(crate) ms: f64,
}

/// Percentile curve points from 0 % to the last "nine" the sample count
/// supports (at most 99.999 %), evenly spaced in -log10(1 - q).
pub(crate) fn percentile_curve(h: &Histogram<u64>) -> Vec<PercentilePoint> {
    if h.is_empty() {
        return Vec::new();
    }
    let max_nines = (h.len() as f64).log10().clamp(1.0, 5.0);
    let steps = (max_nines * 20.0).round() as u32;
    let mut out: Vec<PercentilePoint> = (0..=steps)
        .map(|k| {
            let q = 1.0 - 10f64.powf(-max_nines * f64::from(k) / f64::from(steps));
            PercentilePoint {
                percentile: q * 100.0,
                ms: h.value_at_quantile(q) as f64 / 1000.0,
            }
        })
        .collect();
    out.push(PercentilePoint {
        percentile: 100.0,
        ms: h.max() as f64 / 1000.0,
    });
    out
}

/// Rate mode: why fewer messages were published than the schedule called
/// for. Every scheduled message was due before the end of `--duration`;
/// a publisher stops sending at that deadline.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub(crate) struct Shortfall {
    /// Due within the last timer tick (1 ms, tokio's resolution) of
    /// `--duration`: the publisher was on schedule, waiting for that send,
    /// and the deadline fired in the same tick first.
    pub(crate) last_tick: u64,
    /// Due earlier, but the publisher was behind schedule when `--duration`
    /// ended: its writes were held back (TCP push-back from a server that
    /// paused reading it: flow control; with `--api`, slow answers).
    pub(crate) behind: u64,
    /// Not sent because a send error stopped the publisher.
    pub(crate) after_error: u64,
}

impl Shortfall {
    /// Adds another publisher's.
    pub(crate) fn add(&mut self, o: &Self) {
        self.last_tick += o.last_tick;
        self.behind += o.behind;
        self.after_error += o.after_error;
    }

    fn total(&self) -> u64 {
        self.last_tick + self.behind + self.after_error
    }

    /// Why, in words (empty when nothing is missing).
    pub(crate) fn explain(&self) -> String {
        let mut why = Vec::new();
        if self.last_tick > 0 {
            why.push(format!(
                "{} due in the last ms of --duration (its end fired first in that timer tick)",
                self.last_tick
            ));
        }
        if self.behind > 0 {
            why.push(format!(
                "{} still owed by publishers behind schedule at the end of --duration \
                 (writes held back by the server's flow control / TCP push-back)",
                self.behind
            ));
        }
        if self.after_error > 0 {
            why.push(format!(
                "{} not sent after send errors stopped publishers",
                self.after_error
            ));
        }
        why.join("; ")
    }
}

/// The slow subscribers (`--slow-fraction`): how the run ended for them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct SlowReport {
    /// Slow subscribers configured.
    pub(crate) clients: u64,
    pub(crate) connected: u64,
    /// How the server had closed them, found when they resumed reading at the
    /// end: 1013 (the close frame was still there to read), 1006 (the server
    /// had already dropped the connection), or another code.
    pub(crate) closes: BTreeMap<u16, u64>,
    /// Still open when they resumed reading (no close within the read window).
    pub(crate) still_open: u64,
    /// Data messages they read after resuming (what the server had left queued).
    pub(crate) messages_read_at_end: u64,
}

impl SlowReport {
    /// Slow subscribers the server closed or dropped.
    pub(crate) fn closed(&self) -> u64 {
        self.closes.values().sum()
    }
}

/// `--reconnect-every`: subscribers that dropped their connection and
/// resumed from their last position (`?since=`) while publishing went on.
/// Gaps are the report's `lost` (a resume the history covered leaves
/// none) and duplicates its `duplicates`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct ResumeReport {
    /// `--reconnect-every`, seconds.
    pub(crate) every_s: f64,
    /// `--outage`, seconds.
    pub(crate) outage_s: f64,
    /// `--reconnect-together`: all at the same instants.
    pub(crate) together: bool,
    /// Connections opened again after a drop.
    pub(crate) reconnects: u64,
    /// Reconnects that failed (each stopped its subscriber; counted in `errors`).
    pub(crate) failures: u64,
    pub(crate) first_error: Option<String>,
    /// Messages the server replayed to resuming subscribers (up to each seam).
    pub(crate) recovered: u64,
    /// Resumes the server could not cover (`recovered: false`: history expired).
    pub(crate) unrecovered: u64,
    /// Per resume: from the planned reconnect (drop + outage) until its
    /// replay had arrived. With `--reconnect-together`, `max_ms` is the time
    /// until all had recovered from the slowest wave.
    pub(crate) time_to_recover: Latency,
    /// `--reconnect-together` with `--server-pid`: the first wave.
    pub(crate) storm: Option<StormReport>,
}

/// Several `--url`s: connections the server closed with 1012 (a drain) or
/// 1001 that moved to another URL, subscribers resuming with `?since=`
/// (`--v1`). Gaps are the report's `lost` and duplicates its `duplicates`
/// (both 0 when every resume was covered).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct MovesReport {
    /// `--move-jitter`, seconds.
    pub(crate) jitter_s: f64,
    pub(crate) subscriber_moves: u64,
    pub(crate) publisher_moves: u64,
    /// Moves that found no URL to connect to within --connect-timeout
    /// (counted in `errors`).
    pub(crate) failures: u64,
    pub(crate) first_error: Option<String>,
    /// Messages replayed to subscribers that moved (up to each seam).
    pub(crate) recovered: u64,
    /// Their resumes the new node could not cover (history expired).
    pub(crate) unrecovered: u64,
    /// Per subscriber move: from its last message before the close to its
    /// first after (replayed or live), the longest it went without one.
    pub(crate) gap: Latency,
    /// The worst of them, ms (`gap.max_ms`).
    pub(crate) worst_gap_ms: f64,
    /// Subscriber moves by the second (since publishing started) in which
    /// they connected again: the connection rate the nodes took.
    pub(crate) per_second: Vec<u64>,
    /// The busiest of those seconds.
    pub(crate) peak_per_s: u64,
}

/// The first wave of `--reconnect-together`, seen from the server process:
/// from the planned reconnect (drop + outage) until every subscriber that
/// dropped had its replay.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct StormReport {
    /// Subscribers in the wave.
    pub(crate) subscribers: u64,
    /// Seconds until all had recovered (or gave up: see `complete`).
    pub(crate) all_recovered_s: f64,
    /// Every subscriber of the wave recovered within the 60 s bound.
    pub(crate) complete: bool,
    /// Server CPU seconds over that span, and as % of one core.
    pub(crate) server_cpu_s: f64,
    pub(crate) server_cpu_pct: f64,
    /// The server's peak RSS (VmHWM) at the end of the span, KiB.
    pub(crate) server_rss_peak_kib: u64,
}

/// Publishers of one kind: `paced` (`--publishers`: a rate schedule or a
/// window) or `flood` (`--flooders`: as fast as TCP takes).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct ClassReport {
    /// Publishers of the class that connected.
    pub(crate) publishers: u64,
    /// Paced, rate mode: what the schedule called for, all of them together.
    pub(crate) scheduled: Option<u64>,
    pub(crate) published: u64,
    pub(crate) published_per_s: f64,
    /// Fewest and most messages one publisher of the class sent: with a rate
    /// schedule both are close to `scheduled / publishers` when every
    /// publisher kept its own rate.
    pub(crate) sent_min: u64,
    pub(crate) sent_max: u64,
    pub(crate) expected_deliveries: u64,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    pub(crate) loss_ratio: f64,
    /// From the schedule (paced, rate mode) or the write (flood, max-rate).
    pub(crate) latency: Latency,
}

impl ClassReport {
    /// Fills in the class's expected deliveries (`readers` of every message;
    /// None: already counted, by channel) and loss ratio.
    fn finish(&mut self, readers: Option<u64>) {
        if let Some(readers) = readers {
            self.expected_deliveries = self.published * readers;
        }
        self.loss_ratio = if self.expected_deliveries == 0 {
            0.0
        } else {
            self.lost as f64 / self.expected_deliveries as f64
        };
    }
}

/// The smallest and the largest value of a figure over the channels.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub(crate) struct MinMax<T> {
    pub(crate) min: T,
    pub(crate) max: T,
}

impl<T: Copy + PartialOrd> MinMax<T> {
    /// Over `values` (None when there are none).
    fn of(mut values: impl Iterator<Item = T>) -> Option<Self> {
        let first = values.next()?;
        Some(values.fold(
            Self {
                min: first,
                max: first,
            },
            |m, v| Self {
                min: if v < m.min { v } else { m.min },
                max: if v > m.max { v } else { m.max },
            },
        ))
    }
}

impl<T: std::fmt::Display + PartialEq> std::fmt::Display for MinMax<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..{}", self.min, self.max)
        }
    }
}

/// One channel of `--channels`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct ChannelRow {
    /// `lt-K`.
    pub(crate) channel: String,
    /// Reading subscribers (connected, not slow).
    pub(crate) subscribers: u64,
    /// Publishers that connected.
    pub(crate) publishers: u64,
    /// Messages its publishers published.
    pub(crate) published: u64,
    /// `published` times `subscribers`.
    pub(crate) expected: u64,
    /// Distinct messages its subscribers received, from any channel: equal
    /// to `expected` in a clean run (`expected - lost + misrouted`).
    pub(crate) received: u64,
    pub(crate) lost: u64,
    /// Received from publishers of other channels (a server bug).
    pub(crate) misrouted: u64,
    pub(crate) loss_ratio: f64,
}

/// `--channels` > 1: the figures by channel, summarized as min..max over
/// the channels, with the whole table (JSON only).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct ChannelsReport {
    pub(crate) count: u64,
    pub(crate) subscribers: MinMax<u64>,
    pub(crate) publishers: MinMax<u64>,
    pub(crate) expected: MinMax<u64>,
    pub(crate) received: MinMax<u64>,
    pub(crate) loss_ratio: MinMax<f64>,
    /// Channels that lost at least one delivery.
    pub(crate) with_loss: u64,
    /// Deliveries from another channel's publishers, over all channels.
    pub(crate) misrouted: u64,
    /// The channel with the highest loss ratio, when one lost anything.
    pub(crate) worst: Option<String>,
    /// Every channel, by index.
    pub(crate) table: Vec<ChannelRow>,
}

impl ChannelsReport {
    /// Summarizes `table` (each row's counts filled in; its loss ratio is
    /// derived here).
    pub(crate) fn new(mut table: Vec<ChannelRow>) -> Self {
        for r in &mut table {
            r.loss_ratio = ratio(r.lost, r.expected);
        }
        let worst = table
            .iter()
            .filter(|r| r.lost > 0)
            .max_by(|a, b| a.loss_ratio.total_cmp(&b.loss_ratio))
            .map(|r| r.channel.clone());
        let span = |f: fn(&ChannelRow) -> u64| MinMax::of(table.iter().map(f)).unwrap_or_default();
        Self {
            count: table.len() as u64,
            subscribers: span(|r| r.subscribers),
            publishers: span(|r| r.publishers),
            expected: span(|r| r.expected),
            received: span(|r| r.received),
            loss_ratio: MinMax::of(table.iter().map(|r| r.loss_ratio)).unwrap_or_default(),
            with_loss: table.iter().filter(|r| r.lost > 0).count() as u64,
            misrouted: table.iter().map(|r| r.misrouted).sum(),
            worst,
            table,
        }
    }

    /// Expected deliveries over every channel.
    fn expected_total(&self) -> u64 {
        self.table.iter().map(|r| r.expected).sum()
    }
}

/// `part / whole`, 0 when `whole` is.
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// What subscribers read from their sockets: compressed or not, the cost
/// on the wire of a delivery.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct WireReport {
    /// `--compression`: `off`, `header` or `full`.
    pub(crate) compression: &'static str,
    /// `--payload`: `dots` or `json`.
    pub(crate) payload: &'static str,
    /// Reading subscribers whose connection negotiated permessage-deflate.
    pub(crate) negotiated: u64,
    /// Bytes the reading subscribers read from their sockets after the
    /// upgrade (frame headers included; TLS: the decrypted bytes).
    pub(crate) socket_bytes: u64,
    /// `socket_bytes / delivered` (0 without deliveries).
    pub(crate) bytes_per_delivery: f64,
}

/// Everything the run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Report {
    /// How the run was made: when, the command, the tool, the machine.
    pub(crate) run: RunInfo,
    pub(crate) url: String,
    /// `--api`: the publishers posted to this base URL instead.
    pub(crate) api: Option<String>,
    /// `rate`, `max-rate` or `idle`.
    pub(crate) mode: &'static str,
    /// What the connections speak: `raw`, or `broadcast.v1` (`--v1`).
    pub(crate) protocol: &'static str,
    pub(crate) rate: Option<f64>,
    pub(crate) window: Option<u32>,
    /// `--max-rate`: window permits returned by sweeps because a subscriber
    /// left with messages in flight (0 in a clean run).
    pub(crate) window_sweeps: Option<u64>,
    pub(crate) size: u32,
    pub(crate) duration_s: f64,
    pub(crate) drain_s: f64,
    /// How long the drain took: from the end of publishing until every
    /// message had arrived (or --drain / --drain-quiet gave up).
    pub(crate) drain_used_s: f64,

    pub(crate) clients: u64,
    pub(crate) clients_connected: u64,
    pub(crate) clients_failed: u64,
    pub(crate) publishers: u64,
    pub(crate) publishers_connected: u64,
    pub(crate) publishers_failed: u64,
    pub(crate) connect_s: f64,
    /// Subscribers connected per second of `connect_s` (with `--ramp 0`, the storm's rate).
    pub(crate) connect_rate_per_s: f64,
    /// Each subscriber's connect and upgrade (TCP, TLS, HTTP upgrade), from
    /// its attempt (after its ramp slot or storm permit) until it was open.
    pub(crate) connect_latency: Latency,
    /// The connect latency distribution, for plotting.
    pub(crate) connect_latency_percentiles: Vec<PercentilePoint>,
    /// `--ramp` (0: storm).
    pub(crate) ramp: f64,
    pub(crate) first_connect_error: Option<String>,
    /// `--slow-fraction` > 0: the slow subscribers. Everything else in the
    /// report (deliveries, loss, latency, server closes) is about the others.
    pub(crate) slow: Option<SlowReport>,

    /// Messages the rate schedule called for (rate mode), for comparison with `published`.
    pub(crate) scheduled: Option<u64>,
    /// Rate mode: why `scheduled - published` messages were not published.
    pub(crate) shortfall: Option<Shortfall>,
    pub(crate) published: u64,
    pub(crate) published_per_s: f64,
    pub(crate) expected_deliveries: u64,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    pub(crate) loss_ratio: f64,
    pub(crate) duplicates: u64,
    pub(crate) reordered: u64,
    pub(crate) malformed: u64,
    /// Bytes on the subscribers' sockets (`--compression`).
    pub(crate) wire: WireReport,
    /// Publishing start until the last delivery.
    pub(crate) delivery_window_s: f64,
    pub(crate) deliveries_per_s: f64,
    /// From the scheduled send time (rate mode) or the send time (max-rate).
    pub(crate) latency: Latency,
    /// From the moment the publisher actually wrote the message.
    pub(crate) latency_from_send: Latency,
    /// `--flooders`: extra publishers writing as fast as TCP takes.
    pub(crate) flooders: u64,
    /// The same figures by kind of publisher, `paced` and `flood` (only the
    /// kinds the run had).
    pub(crate) classes: BTreeMap<&'static str, ClassReport>,
    /// `--channels` > 1: the figures by channel (then `expected_deliveries`
    /// is their sum: each subscriber expects its own channel's messages).
    pub(crate) channels: Option<ChannelsReport>,
    /// Deliveries from a publisher of another channel than the
    /// subscriber's (an error; not in `delivered`).
    pub(crate) misrouted: u64,
    /// `--api`: answers other than 200, by status (each stopped its
    /// publisher and counts in `send_errors`).
    pub(crate) api_errors: BTreeMap<u16, u64>,
    /// `--api`: the first request that got no answer, and why.
    pub(crate) first_send_error: Option<String>,

    /// `--v1`: welcome events received (one per connection that got through
    /// the upgrade, subscribers and publishers).
    pub(crate) welcomes: u64,
    /// `--v1`: presence events received by all connections.
    pub(crate) presence_events: u64,
    /// `--v1`: notices received (before a server close), by the code they announce.
    pub(crate) notices: BTreeMap<u16, u64>,

    /// `--reconnect-every`: the resumes.
    pub(crate) resume: Option<ResumeReport>,
    /// Several `--url`s: the moves after a 1012 or 1001 close.
    pub(crate) moves: Option<MovesReport>,

    /// Connections the server closed (or dropped: 1006) before the tool did, by code.
    pub(crate) server_closes: BTreeMap<u16, u64>,
    pub(crate) send_errors: u64,
    pub(crate) errors: u64,

    /// With `--server-pid`: the server's CPU and memory.
    pub(crate) server: Option<ServerUsage>,
    /// With `--metrics`: what the server's /metrics say about the run.
    pub(crate) server_metrics: Option<ServerMetrics>,
    /// With `--metrics`: why a scrape failed (the run itself goes on).
    pub(crate) metrics_error: Option<String>,
    /// This tool's CPU over the same span as `server.cpu_run_s` (% of one core).
    pub(crate) tool_cpu_run_pct: f64,
    /// Per second since publishing started: deliveries and latency (fast subscribers).
    pub(crate) timeline: Vec<SecondPoint>,
    /// The latency distribution (from the schedule), for plotting.
    pub(crate) latency_percentiles: Vec<PercentilePoint>,
    /// Per second relative to the start of publishing (negative: while
    /// connecting): messages published, and errors as they happened.
    pub(crate) activity: Vec<ActivityPoint>,

    pub(crate) max_loss: f64,
    pub(crate) max_errors: u64,
    pub(crate) passed: bool,
    pub(crate) failures: Vec<String>,
}

impl Report {
    /// Derives the totals (loss ratio, rates, errors) and the verdict from the raw counts.
    pub(crate) fn finish(&mut self) {
        let slow_connected = self.slow.as_ref().map_or(0, |s| s.connected);
        let readers = self.clients_connected.saturating_sub(slow_connected);
        // By channel, subscribers expect only their channel's messages.
        let readers = match &self.channels {
            None => {
                self.expected_deliveries = self.published * readers;
                Some(readers)
            }
            Some(ch) => {
                self.expected_deliveries = ch.expected_total();
                None
            }
        };
        for c in self.classes.values_mut() {
            c.finish(readers);
        }
        self.connect_rate_per_s = if self.connect_s > 0.0 {
            self.clients_connected as f64 / self.connect_s
        } else {
            0.0
        };
        self.loss_ratio = if self.expected_deliveries == 0 {
            0.0
        } else {
            self.lost as f64 / self.expected_deliveries as f64
        };
        self.wire.bytes_per_delivery = if self.delivered == 0 {
            0.0
        } else {
            self.wire.socket_bytes as f64 / self.delivered as f64
        };
        self.deliveries_per_s = if self.delivery_window_s > 0.0 {
            self.delivered as f64 / self.delivery_window_s
        } else {
            0.0
        };
        self.errors = self.clients_failed
            + self.publishers_failed
            + self.server_closes.values().sum::<u64>()
            + self.send_errors
            + self.malformed
            + self.misrouted
            + self.resume.as_ref().map_or(0, |r| r.failures)
            + self.moves.as_ref().map_or(0, |m| m.failures);
        self.failures.clear();
        if self.loss_ratio > self.max_loss {
            self.failures.push(format!(
                "loss ratio {:.6} ({} of {}) exceeds --max-loss {}",
                self.loss_ratio, self.lost, self.expected_deliveries, self.max_loss
            ));
        }
        if self.errors > self.max_errors {
            self.failures.push(format!(
                "{} errors exceed --max-errors {}",
                self.errors, self.max_errors
            ));
        }
        self.passed = self.failures.is_empty();
    }

    /// Whether the run spoke `broadcast.v1`.
    pub(crate) fn is_v1(&self) -> bool {
        self.protocol == protocol::v1::SUBPROTOCOL
    }

    fn protocol_name(&self) -> &'static str {
        if self.protocol.is_empty() {
            "raw"
        } else {
            self.protocol
        }
    }

    /// The human summary table.
    pub(crate) fn table(&self) -> String {
        let mut s = String::new();
        let mode = match (self.rate, self.window) {
            _ if self.mode == "idle" => "idle (no publishers)".to_string(),
            (Some(r), _) => format!("rate {r} msg/s"),
            (None, Some(w)) => format!("max-rate, window {w}"),
            _ => self.mode.to_string(),
        };
        let mode = if self.flooders > 0 {
            format!("{mode} + {} flooder(s)", self.flooders)
        } else {
            mode
        };
        let url = match &self.api {
            Some(api) => format!("{} (publishing via {api}/api/publish)", self.url),
            None => self.url.clone(),
        };
        let _ = writeln!(
            s,
            "load-test summary: {url} | {} | {mode} | {} B | {:.1} s + drain {:.1} s",
            self.protocol_name(),
            self.size,
            self.duration_s,
            self.drain_s
        );
        let run = &self.run;
        let _ = writeln!(
            s,
            "  run: {} | {} | {} | {}",
            run.started_at,
            run.tool(),
            run.machine(),
            run.command
        );
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "  {k:<22} {v}");
        };
        let how = if self.ramp == 0.0 {
            "storm".to_string()
        } else {
            format!("ramp {}/s", self.ramp)
        };
        row(
            "clients connected",
            format!(
                "{} / {} (failed {}) in {:.2} s, {:.0}/s ({how})",
                self.clients_connected,
                self.clients,
                self.clients_failed,
                self.connect_s,
                self.connect_rate_per_s
            ),
        );
        let c = &self.connect_latency;
        if c.samples > 0 {
            row(
                "connect latency ms",
                format!(
                    "p50 {:.3}  p99 {:.3}  max {:.3}  (connect + upgrade, n={})",
                    c.p50_ms, c.p99_ms, c.max_ms, c.samples
                ),
            );
        }
        if let Some(sl) = &self.slow {
            let closes = join_or(sl.closes.iter().map(|(c, n)| format!("{c}: {n}")), "-");
            row(
                "slow subscribers",
                format!(
                    "{} connected of {}; closed by server {} ({}), still open {}, read {} msgs at end",
                    sl.connected,
                    sl.clients,
                    sl.closed(),
                    closes,
                    sl.still_open,
                    sl.messages_read_at_end
                ),
            );
            row("(below: fast ones only)", String::new());
        }
        row(
            "publishers connected",
            format!(
                "{} / {} (failed {})",
                self.publishers_connected, self.publishers, self.publishers_failed
            ),
        );
        if let Some(e) = &self.first_connect_error {
            row("first connect error", e.clone());
        }
        let sched = self
            .scheduled
            .map(|n| format!(" (scheduled {n})"))
            .unwrap_or_default();
        row(
            "messages published",
            format!(
                "{}{sched}, {:.0} msg/s",
                self.published, self.published_per_s
            ),
        );
        if let Some(why) = self.shortfall.filter(|w| w.total() > 0) {
            row("  not published", why.explain());
        }
        row("expected deliveries", self.expected_deliveries.to_string());
        row("delivered", self.delivered.to_string());
        row(
            "lost",
            format!("{} ({:.4}%)", self.lost, self.loss_ratio * 100.0),
        );
        row("duplicates", self.duplicates.to_string());
        row("reordered", self.reordered.to_string());
        if let Some(r) = &self.resume {
            let how = if r.together { "all at once" } else { "spread" };
            row(
                "resumes",
                format!(
                    "{} reconnects (every {:.1} s, {how}, outage {:.3} s), failed {}; recovered {} msgs; not covered {}; gaps {}; duplicates {}",
                    r.reconnects,
                    r.every_s,
                    r.outage_s,
                    r.failures,
                    r.recovered,
                    r.unrecovered,
                    self.lost,
                    self.duplicates
                ),
            );
            let t = &r.time_to_recover;
            if t.samples > 0 {
                row(
                    "time to recover ms",
                    format!(
                        "p50 {:.3}  p99 {:.3}  max {:.3}  (drop + outage until replayed, n={})",
                        t.p50_ms, t.p99_ms, t.max_ms, t.samples
                    ),
                );
            }
            if let Some(e) = &r.first_error {
                row("first reconnect error", e.clone());
            }
            if let Some(st) = &r.storm {
                row(
                    "recovery storm",
                    format!(
                        "{} subscribers recovered{} in {:.3} s; server CPU {:.2} s ({:.0}% of a core), peak RSS {:.1} MiB",
                        st.subscribers,
                        if st.complete { "" } else { " (NOT all)" },
                        st.all_recovered_s,
                        st.server_cpu_s,
                        st.server_cpu_pct,
                        st.server_rss_peak_kib as f64 / 1024.0
                    ),
                );
            }
        }
        if let Some(m) = &self.moves {
            row(
                "moves",
                format!(
                    "{} subscribers, {} publishers moved (1012/1001, jitter {:.3} s), failed {}; recovered {} msgs; not covered {}; gaps {}; duplicates {}",
                    m.subscriber_moves,
                    m.publisher_moves,
                    m.jitter_s,
                    m.failures,
                    m.recovered,
                    m.unrecovered,
                    self.lost,
                    self.duplicates
                ),
            );
            if m.gap.samples > 0 {
                row(
                    "move gap ms",
                    format!(
                        "p50 {:.1}  p99 {:.1}  max {:.1}  (last message before the close to the first after, n={}); peak {} moves/s",
                        m.gap.p50_ms, m.gap.p99_ms, m.worst_gap_ms, m.gap.samples, m.peak_per_s
                    ),
                );
            }
            if let Some(e) = &m.first_error {
                row("first move error", e.clone());
            }
        }
        row("malformed", self.malformed.to_string());
        let w = &self.wire;
        row(
            "wire bytes",
            format!(
                "{} read by subscribers, {:.1} per delivery (compression {}, negotiated by {}; payload {})",
                w.socket_bytes, w.bytes_per_delivery, w.compression, w.negotiated, w.payload
            ),
        );
        if let Some(ch) = &self.channels {
            let (first, last) = (
                ch.table.first().map_or("", |r| r.channel.as_str()),
                ch.table.last().map_or("", |r| r.channel.as_str()),
            );
            row(
                "channels",
                format!(
                    "{} ({first} .. {last}); per channel: {} subscribers, {} publishers",
                    ch.count, ch.subscribers, ch.publishers
                ),
            );
            let worst = ch
                .worst
                .as_ref()
                .map(|w| format!(", worst {w}"))
                .unwrap_or_default();
            row(
                "  per channel",
                format!(
                    "expected {}, received {}, loss {:.4}%..{:.4}%; {} lost some{worst}; misrouted {}",
                    ch.expected,
                    ch.received,
                    ch.loss_ratio.min * 100.0,
                    ch.loss_ratio.max * 100.0,
                    ch.with_loss,
                    ch.misrouted
                ),
            );
        }
        row("drain took", format!("{:.2} s", self.drain_used_s));
        row(
            "deliveries/s",
            format!(
                "{:.0} (over {:.2} s)",
                self.deliveries_per_s, self.delivery_window_s
            ),
        );
        let l = &self.latency;
        row(
            "latency ms (schedule)",
            format!(
                "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3}, n={})",
                l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms, l.samples
            ),
        );
        let l = &self.latency_from_send;
        row(
            "  from actual send",
            format!(
                "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3})",
                l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms
            ),
        );
        if self.flooders > 0 {
            for (name, c) in &self.classes {
                let sched = c
                    .scheduled
                    .map(|n| format!(" (scheduled {n})"))
                    .unwrap_or_default();
                row(
                    &format!("{name} publishers"),
                    format!(
                        "{}: published {}{sched}, {:.0} msg/s (per publisher {}..{}); lost {} ({:.4}%)",
                        c.publishers,
                        c.published,
                        c.published_per_s,
                        c.sent_min,
                        c.sent_max,
                        c.lost,
                        c.loss_ratio * 100.0
                    ),
                );
                let l = &c.latency;
                row(
                    &format!("  {name} latency ms"),
                    format!(
                        "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (n={})",
                        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.samples
                    ),
                );
            }
        }
        let closes = join_or(
            self.server_closes
                .iter()
                .map(|(c, n)| format!("{c} ({}): {n}", protocol::close::describe(*c))),
            "none",
        );
        row("server closes", closes);
        if self.is_v1() {
            let notices = join_or(
                self.notices.iter().map(|(c, n)| format!("{c}: {n}")),
                "none",
            );
            row(
                "v1 events",
                format!(
                    "welcome {}, presence {}, notices {notices}",
                    self.welcomes, self.presence_events
                ),
            );
        }
        let api_errors = if self.api_errors.is_empty() {
            String::new()
        } else {
            let by = self
                .api_errors
                .iter()
                .map(|(c, n)| format!("HTTP {c}: {n}"));
            format!(" ({})", join_or(by, ""))
        };
        row("send errors", format!("{}{api_errors}", self.send_errors));
        if let Some(e) = &self.first_send_error {
            row("first send error", e.clone());
        }
        row("errors", self.errors.to_string());
        if let Some(sv) = &self.server {
            let mib = |k: u64| k as f64 / 1024.0;
            row(
                "server CPU",
                format!(
                    "{:.2} s over {:.1} s = {:.0}% of one core, {:.0}% of it in the kernel (connecting: {:.2} s); load-test {:.0}%",
                    sv.cpu_run_s, sv.run_wall_s, sv.cpu_run_pct, sv.cpu_run_kernel_pct, sv.cpu_connect_s, self.tool_cpu_run_pct
                ),
            );
            let after = sv
                .rss_after_close_kib
                .map(|k| format!(", after close {:.1}", mib(k)))
                .unwrap_or_default();
            row(
                "server RSS MiB",
                format!(
                    "before {:.1}, idle {:.1}, end {:.1}, peak {:.1}{after}",
                    mib(sv.rss_before_kib),
                    mib(sv.rss_idle_kib),
                    mib(sv.rss_end_kib),
                    mib(sv.rss_peak_kib)
                ),
            );
            row(
                "server RSS/connection",
                format!(
                    "{:.0} B ((idle - before) / subscribers)",
                    sv.rss_per_connection_b
                ),
            );
        }
        if let Some(m) = &self.server_metrics {
            let paused = join_or(
                m.publisher_paused_s
                    .iter()
                    .map(|(c, v)| format!("{c} {v:.2} s")),
                "-",
            );
            row(
                "server latency ms",
                format!(
                    "p50 {}  p99 {}  (/metrics histogram, bucket bounds, n={})",
                    m.show(m.latency_p50_ms),
                    m.show(m.latency_p99_ms),
                    m.latency_observations
                ),
            );
            let closes = join_or(m.closes.iter().map(|(r, v)| format!("{r} {v}")), "none");
            let aborted = m
                .aborted
                .map(|a| format!(", aborted {a}"))
                .unwrap_or_default();
            row(
                "server paused readers",
                format!("{paused}; server-side closes: {closes}{aborted}"),
            );
        }
        if let Some(e) = &self.metrics_error {
            row("metrics error", e.clone());
        }
        let verdict = if self.passed {
            "PASS".to_string()
        } else {
            format!("FAIL: {}", self.failures.join("; "))
        };
        row("result", verdict);
        s
    }
}

/// The items joined with ", ", or `empty` when there are none.
fn join_or(items: impl Iterator<Item = String>, empty: &str) -> String {
    let joined = items.collect::<Vec<_>>().join(", ");
    if joined.is_empty() {
        empty.to_string()
    } else {
        joined
    }
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
