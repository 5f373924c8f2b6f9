//! The last phase: merging what every subscriber and publisher measured
//! into one [`Report`] (totals, per-class and per-channel figures, latency,
//! time series).
//!
//! A subscriber expects every message published to its channel and
//! nothing else (publishers are separate connections, so no subscriber is
//! a sender the server skips); what it receives from a publisher of
//! another channel is counted as misrouted, an error.

use std::collections::BTreeMap;

use anyhow::Result;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::publish::Sent;
use super::shared::{Ending, Shared};
use super::subscribe::{SubResult, SubStats, Subscribers};
use crate::cli::channel_name;
use crate::cli::{Args, Compression};
use crate::payload::Body;
use crate::report::{
    percentile_curve, ChannelRow, ChannelsReport, ClassReport, Latency, MovesReport, Report,
    ResumeReport, SlowReport, WireReport,
};
use crate::series::{Activity, Series};
use crate::v1::V1Counts;
use crate::window::Windows;

/// Everything the run's phases leave for the report.
pub(super) struct Finished {
    pub(super) subscribers: Subscribers,
    /// Indices of the publishers that failed to connect, and the first error.
    pub(super) failed_publishers: Vec<usize>,
    pub(super) publisher_failed_at: Vec<Instant>,
    pub(super) publisher_error: Option<String>,
    pub(super) sent: Sent,
    /// How the publishers' connections ended.
    pub(super) publisher_endings: Vec<Ending>,
    /// When publishing started and when every publisher had stopped.
    pub(super) start: Instant,
    pub(super) publish_end: Instant,
    pub(super) drain_used_s: f64,
}

/// Sums over every subscriber (and, for closes, every publisher).
struct Totals {
    hist: Histogram<u64>,
    hist_send: Histogram<u64>,
    /// By class of publisher (see [`Shared::class_of`]).
    class_hist: Vec<Histogram<u64>>,
    classes: Vec<ClassReport>,
    series: Series,
    /// Subscribers' connect and upgrade times (µs).
    connect_hist: Histogram<u64>,
    /// Per second since publishing started (`start`).
    activity: Activity,
    start: Instant,
    server_closes: BTreeMap<u16, u64>,
    v1: V1Counts,
    last_delivery_ns: u64,
    /// By channel (one without `--channels`).
    channels: Vec<ChannelRow>,
    /// `--reconnect-every`: the resumes, and their times to recover (µs).
    resume: Option<(ResumeReport, Histogram<u64>)>,
    /// Several `--url`s: the moves, and their delivery gaps (µs).
    moves: Option<(MovesReport, Histogram<u64>)>,
}

/// Waits for every subscriber's result and builds the report, all but the
/// server and tool usage (see `observe`) and the verdict.
pub(super) async fn report(args: &Args, shared: &Shared, f: Finished) -> Result<Report> {
    let mut report = settings_and_counts(args, shared, &f);
    let empty = Histogram::<u64>::new(3).expect("3 significant figures is valid");
    let mut t = Totals {
        connect_hist: empty.clone(),
        activity: Activity::default(),
        start: f.start,
        hist_send: empty.clone(),
        class_hist: vec![empty.clone(); shared.classes()],
        classes: vec![ClassReport::default(); shared.classes()],
        hist: empty,
        series: Series::default(),
        server_closes: BTreeMap::new(),
        v1: V1Counts::default(),
        last_delivery_ns: 0,
        channels: vec![ChannelRow::default(); shared.channels],
        moves: shared.follow.map(|jitter| {
            let report = MovesReport {
                jitter_s: jitter.as_secs_f64(),
                ..MovesReport::default()
            };
            (
                report,
                Histogram::new(3).expect("3 significant figures is valid"),
            )
        }),
        resume: shared.reconnect.map(|plan| {
            let report = ResumeReport {
                every_s: plan.every.as_secs_f64(),
                outage_s: plan.outage.as_secs_f64(),
                together: plan.together,
                ..ResumeReport::default()
            };
            (
                report,
                Histogram::new(3).expect("3 significant figures is valid"),
            )
        }),
    };
    for e in &f.publisher_endings {
        t.add_ending(e);
        if let Some((m, _)) = &mut t.moves {
            m.publisher_moves += e.moves;
            if let Some(err) = &e.move_error {
                m.failures += 1;
                m.first_error
                    .get_or_insert_with(|| format!("publisher: {err}"));
            }
        }
    }
    let mut slow = (f.subscribers.slow > 0).then(|| SlowReport {
        clients: f.subscribers.slow as u64,
        ..SlowReport::default()
    });
    for &at in &f.publisher_failed_at {
        t.activity.at(t.second(at)).connect_errors += 1;
    }
    for &at in &f.sent.errors_at {
        t.activity.at(t.second(at)).send_errors += 1;
    }
    for (s, &n) in f.sent.per_second.iter().enumerate() {
        t.activity.at(s as i64).published += n;
    }
    for (i, task) in f.subscribers.tasks.into_iter().enumerate() {
        match task.await? {
            SubResult::Failed(e, at) => {
                t.activity.at(t.second(at)).connect_errors += 1;
                report.clients_failed += 1;
                if report.first_connect_error.is_none() {
                    report.first_connect_error = Some(format!("subscriber: {e}"));
                }
            }
            SubResult::Slow(end) => {
                report.clients_connected += 1;
                let sl = slow.as_mut().expect("slow subscribers configured");
                sl.connected += 1;
                t.connect(end.connect);
                sl.messages_read_at_end += end.messages;
                t.v1.add(&end.v1);
                match end.close {
                    Some(c) => *sl.closes.entry(c).or_default() += 1,
                    None => sl.still_open += 1,
                }
            }
            SubResult::Done(s) => {
                report.clients_connected += 1;
                t.connect(s.connect);
                t.add_subscriber(i, &s, shared, &f.sent.by, &mut report);
            }
        }
    }
    if let Some(e) = f.publisher_error {
        report.first_connect_error.get_or_insert(e);
    }
    report.slow = slow;
    if shared.channels > 1 {
        report.misrouted = t.channels.iter().map(|c| c.misrouted).sum();
        report.channels = Some(channels_report(
            &mut t,
            shared,
            &f.sent.by,
            &f.failed_publishers,
        ));
    }
    let publish_s = (f.publish_end - f.start).as_secs_f64().max(1e-9);
    add_classes(
        &mut report,
        shared,
        &f.sent,
        &f.failed_publishers,
        &t,
        publish_s,
    );
    report.api_errors = f.sent.api_errors.clone();
    report.first_send_error = f.sent.first_error.clone();
    report.resume = t.resume.map(|(mut r, h)| {
        r.time_to_recover = Latency::from_histogram_us(&h);
        r
    });
    report.moves = t.moves.map(|(mut m, h)| {
        m.gap = Latency::from_histogram_us(&h);
        m.worst_gap_ms = m.gap.max_ms;
        m.peak_per_s = m.per_second.iter().copied().max().unwrap_or(0);
        m
    });
    report.server_closes = t.server_closes;
    report.welcomes = t.v1.welcomes;
    report.presence_events = t.v1.presence;
    report.notices = t.v1.notices;
    report.flooders = (shared.publishers - shared.paced) as u64;
    report.latency = Latency::from_histogram_us(&t.hist);
    report.latency_from_send = if shared.rate_mode {
        Latency::from_histogram_us(&t.hist_send)
    } else {
        // No schedule: stamped at the send, the same figures.
        report.latency.clone()
    };
    report.latency_percentiles = percentile_curve(&t.hist);
    report.connect_latency = Latency::from_histogram_us(&t.connect_hist);
    report.connect_latency_percentiles = percentile_curve(&t.connect_hist);
    report.window_sweeps = shared.window.as_ref().map(Windows::swept);
    report.timeline = t.series.points();
    report.activity = t.activity.points();
    report.delivery_window_s = t.last_delivery_ns.saturating_sub(shared.ns(f.start)) as f64 / 1e9;
    Ok(report)
}

/// The report's settings (from `args`) and the publishers' counts.
fn settings_and_counts(args: &Args, shared: &Shared, f: &Finished) -> Report {
    let publishers = shared.publishers as u64;
    let publishers_failed = f.failed_publishers.len() as u64;
    let published = f.sent.total();
    Report {
        url: args.urls.join(" "),
        api: args.api.clone(),
        mode: if args.is_idle() {
            "idle"
        } else if shared.paced == 0 {
            "flood"
        } else if args.max_rate {
            "max-rate"
        } else {
            "rate"
        },
        protocol: if args.v1 {
            protocol::v1::SUBPROTOCOL
        } else {
            "raw"
        },
        rate: shared.rate_mode.then_some(args.rate),
        window: shared.window.is_some().then_some(args.window),
        size: args.size,
        duration_s: args.duration.as_secs_f64(),
        drain_s: args.drain.as_secs_f64(),
        drain_used_s: f.drain_used_s,
        clients: shared.subs.len() as u64,
        publishers,
        publishers_connected: publishers - publishers_failed,
        publishers_failed,
        connect_s: f.subscribers.connect_s,
        ramp: args.ramp,
        scheduled: shared.rate_mode.then_some(f.sent.scheduled),
        shortfall: shared.rate_mode.then_some(f.sent.shortfall),
        published,
        published_per_s: published as f64 / (f.publish_end - f.start).as_secs_f64().max(1e-9),
        send_errors: f.sent.send_errors,
        wire: WireReport {
            compression: match args.compression {
                Compression::Off => "off",
                Compression::Header => "header",
                Compression::Full => "full",
            },
            payload: match args.payload {
                Body::Dots => "dots",
                Body::Json => "json",
            },
            ..WireReport::default()
        },
        max_loss: args.max_loss,
        max_errors: args.max_errors,
        ..Report::default()
    }
}

impl Totals {
    /// The second of `at`, relative to the start of publishing.
    fn second(&self, at: Instant) -> i64 {
        second_of(at, self.start)
    }

    /// Records one subscriber's connect time.
    fn connect(&mut self, took: std::time::Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self.connect_hist.record(us);
    }

    fn add_ending(&mut self, e: &Ending) {
        if let Some(c) = e.server_close {
            *self.server_closes.entry(c).or_default() += 1;
            let at = e.closed_at.unwrap_or(self.start);
            self.activity.at(self.second(at)).server_closes += 1;
        }
        self.v1.add(&e.v1);
    }

    /// Adds subscriber `i`'s histograms, series and counts (loss is
    /// counted against what each publisher of its channel flushed,
    /// `sent_by`; from the others it should get nothing).
    fn add_subscriber(
        &mut self,
        i: usize,
        s: &SubStats,
        shared: &Shared,
        sent_by: &[u64],
        r: &mut Report,
    ) {
        let channel = shared.channel_of(i);
        let row = &mut self.channels[channel];
        row.subscribers += 1;
        for (c, h) in s.hist.iter().enumerate() {
            merge(&mut self.hist, h);
            merge(&mut self.class_hist[c], h);
        }
        merge(&mut self.hist_send, &s.hist_send);
        if let Some(ss) = &s.series {
            self.series.merge(ss);
        }
        for (p, tr) in s.trackers.iter().enumerate() {
            row.received += tr.unique();
            if shared.channel_of(p) != channel {
                row.misrouted += tr.unique();
                continue;
            }
            let lost = tr.lost(sent_by[p]);
            row.lost += lost;
            r.delivered += tr.unique();
            r.duplicates += tr.duplicates();
            r.reordered += tr.reordered();
            r.lost += lost;
            let c = &mut self.classes[shared.class_of(p)];
            c.delivered += tr.unique();
            c.lost += lost;
        }
        r.malformed += s.malformed;
        r.wire.socket_bytes += s.read_bytes;
        r.wire.negotiated += u64::from(s.compressed);
        if let Some((total, hist)) = &mut self.moves {
            let one = &s.moves;
            total.subscriber_moves += one.moves;
            total.failures += one.failures;
            if total.first_error.is_none() {
                total.first_error.clone_from(&one.first_error);
            }
            if let Some(r) = &s.resume {
                total.recovered += r.move_recovered;
                total.unrecovered += r.move_unrecovered;
            }
            for &us in &one.gap_us {
                let _ = hist.record(u64::from(us).max(1));
            }
            for &sec in &one.at_s {
                let sec = sec as usize;
                if sec >= total.per_second.len() {
                    total.per_second.resize(sec + 1, 0);
                }
                total.per_second[sec] += 1;
            }
        }
        if let (Some((total, hist)), Some(one)) = (&mut self.resume, &s.resume) {
            total.reconnects += one.reconnects;
            total.failures += one.failures;
            total.recovered += one.recovered;
            total.unrecovered += one.unrecovered;
            if total.first_error.is_none() {
                total.first_error.clone_from(&one.first_error);
            }
            for &us in &one.recover_us {
                let _ = hist.record(u64::from(us).max(1));
            }
        }
        self.last_delivery_ns = self.last_delivery_ns.max(s.last_delivery_ns);
        self.add_ending(&s.ending);
    }
}

/// `--channels`: each channel's publishers, expected deliveries and loss
/// (the subscriber counts were added by [`Totals::add_subscriber`]); each
/// class's expected deliveries, which depend on the channels' audiences.
fn channels_report(
    t: &mut Totals,
    shared: &Shared,
    sent_by: &[u64],
    failed: &[usize],
) -> ChannelsReport {
    let rows = &mut t.channels;
    for (k, row) in rows.iter_mut().enumerate() {
        row.channel = channel_name(k);
    }
    for (p, &sent) in sent_by.iter().enumerate() {
        let row = &mut rows[shared.channel_of(p)];
        if !failed.contains(&p) {
            row.publishers += 1;
        }
        row.published += sent;
        row.expected += sent * row.subscribers;
        t.classes[shared.class_of(p)].expected_deliveries += sent * row.subscribers;
    }
    ChannelsReport::new(std::mem::take(rows))
}

/// Per-class figures: paced publishers, and flooders when there are any.
fn add_classes(
    report: &mut Report,
    shared: &Shared,
    sent: &Sent,
    failed: &[usize],
    t: &Totals,
    publish_s: f64,
) {
    let (paced, publishers) = (shared.paced, shared.publishers);
    for (c, (class, h)) in t.classes.iter().zip(&t.class_hist).enumerate() {
        let range = if c == 0 { 0..paced } else { paced..publishers };
        if range.is_empty() {
            continue;
        }
        let mut class = class.clone();
        let by = &sent.by[range.clone()];
        class.publishers = (range.len() as u64)
            .saturating_sub(range.clone().filter(|p| failed.contains(p)).count() as u64);
        class.published = by.iter().sum();
        class.published_per_s = class.published as f64 / publish_s;
        class.sent_min = by.iter().copied().min().unwrap_or(0);
        class.sent_max = by.iter().copied().max().unwrap_or(0);
        class.scheduled = (c == 0 && shared.rate_mode).then_some(sent.scheduled);
        class.latency = Latency::from_histogram_us(h);
        report
            .classes
            .insert(if c == 0 { "paced" } else { "flood" }, class);
    }
}

/// The whole second of `at` relative to `start`, counted down from -1
/// before it: `start - 0.2 s` is in second -1, `start + 0.2 s` in 0.
fn second_of(at: Instant, start: Instant) -> i64 {
    if at >= start {
        (at - start).as_secs() as i64
    } else {
        -((start - at).as_secs_f64().ceil() as i64).max(1)
    }
}

/// Adds a subscriber's u32-count histogram into the u64-count total.
fn merge(total: &mut Histogram<u64>, h: &Histogram<u32>) {
    for v in h.iter_recorded() {
        let _ = total.record_n(v.value_iterated_to(), u64::from(v.count_at_value()));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn seconds_before_the_start_are_negative() {
        let start = Instant::now() + Duration::from_secs(10);
        let at = |ms: i64| {
            let d = Duration::from_millis(ms.unsigned_abs());
            second_of(if ms < 0 { start - d } else { start + d }, start)
        };
        assert_eq!(at(0), 0);
        assert_eq!(at(999), 0);
        assert_eq!(at(1000), 1);
        assert_eq!(at(-1), -1);
        assert_eq!(at(-1000), -1);
        assert_eq!(at(-1001), -2);
    }
}
