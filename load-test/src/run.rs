//! The run: connect subscribers, connect publishers, publish, drain, close,
//! and merge what every task measured into a [`Report`].
//!
//! Latency is measured against the *schedule*, not the actual send time: in
//! rate mode publisher `p` owes message `s` at
//! `start + offset_p + s / (rate / publishers)` and stamps that instant into
//! the payload even when it sends late (a token schedule: everything due is
//! sent at once, in one flush). A stalled publisher or server therefore shows
//! up as latency instead of being hidden (no coordinated omission). In
//! `--max-rate` mode there is no schedule and the stamp is the send time.
//!
//! Slow subscribers (`--slow-fraction`) connect and then do not read at all
//! until the run stops; then they read what is left for up to
//! [`SLOW_READ_MAX`] (ending after [`SLOW_QUIET`] without data) to find how
//! the server ended them: a close frame (1013 from our server), the
//! connection already dropped (1006), or still open.
//!
//! Flood publishers (`--flooders`) write batches of [`MAX_BATCH`] messages
//! back to back, each stamped when its batch is written, so only TCP
//! push-back from the server slows them. They run on a runtime of their own,
//! and every publisher's reader (what the server broadcasts to it: the other
//! publishers' messages, a flood included) runs on the subscribers' runtime,
//! so neither delays a paced publisher's schedule. Loss is counted per
//! publisher against what it flushed into its socket; a write still blocked
//! by push-back at the end of `--duration` gets `--drain` to finish.
//!
//! With `--server-pid`, the server is sampled before the first connection,
//! when all subscribers are connected (after `--settle`), when publishing and
//! draining are over (or, idle, after `--duration`), and `--after-close` after
//! the last connection closed. With `--metrics`, its /metrics page is scraped
//! at the second and third of these moments.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::runtime::Handle;
use tokio::sync::{watch, Semaphore};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::Args;
use crate::cli::{is_slow, slow_count};
use crate::conn::{max_message, publisher_config, subscriber_buffer, Target, TlsOptions, Ws};
use crate::payload::{self, Header};
use crate::procstat::{self, Pid, ServerUsage};
use crate::progress::Progress;
use crate::rawws::{Event, RawWs, NO_STATUS};
use crate::report::{percentile_curve, ClassReport, Latency, Report, SlowReport};
use crate::scrape::{self, ServerMetrics};
use crate::series::{Series, SubSeries};
use crate::tracker::{Outcome, SeqTracker};
use crate::v1::{self as v1, V1Counts, V1Event};
use crate::window::Windows;

/// File descriptors kept free for the runtime, stdio, the JSON file, etc.
const FD_RESERVE: u64 = 64;
/// Most messages a publisher writes before one flush.
const MAX_BATCH: u64 = 256;
/// Latencies above an hour are recorded as an hour (bounds histogram growth).
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Close code recorded when a connection ends without a close frame.
const ABNORMAL: u16 = 1006;
/// Close code recorded for a protocol error in what the server sent.
const PROTOCOL_ERROR: u16 = 1002;
/// Slow subscribers, once resumed: stop after this long without data...
const SLOW_QUIET: Duration = Duration::from_secs(1);
/// ...or after this long in all.
const SLOW_READ_MAX: Duration = Duration::from_secs(5);

/// What one subscriber shares with the driver while it runs: written only by
/// its own task, read by the progress and drain loops (one cache line each).
#[repr(align(64))]
#[derive(Default)]
pub(crate) struct Live {
    unique: AtomicU64,
    ended: AtomicBool,
}

/// State shared by all tasks.
struct Shared {
    origin: Instant,
    /// All publishers: the paced ones are `0..paced`, the flooders after them.
    publishers: usize,
    paced: usize,
    stop: watch::Sender<bool>,
    connected: AtomicUsize,
    failed: AtomicUsize,
    /// `--max-rate`: the publishers' in-flight windows.
    window: Option<Windows>,
    subs: Vec<Live>,
    published: Vec<Live>,
    phase: AtomicU8,
    /// When publishing starts, ns since `origin` (the time series' second 0).
    start_ns: AtomicU64,
    abrupt_close: bool,
    /// Rate mode: payloads carry a send delay worth a second histogram.
    rate_mode: bool,
    /// `--v1`: the server sends JSON events in text frames.
    v1: bool,
}

pub(crate) const PHASE_CONNECT: u8 = 0;
pub(crate) const PHASE_PUBLISH: u8 = 1;
pub(crate) const PHASE_DRAIN: u8 = 2;
pub(crate) const PHASE_CLOSE: u8 = 3;

/// Read-only view the progress display polls.
pub(crate) struct Snapshot {
    pub(crate) phase: u8,
    pub(crate) connected: u64,
    pub(crate) failed: u64,
    pub(crate) delivered: u64,
    pub(crate) published: u64,
}

#[derive(Clone)]
pub(crate) struct Probe(Arc<Shared>);

impl Probe {
    pub(crate) fn snapshot(&self) -> Snapshot {
        let s = &self.0;
        Snapshot {
            phase: s.phase.load(Relaxed),
            connected: s.connected.load(Relaxed) as u64,
            failed: s.failed.load(Relaxed) as u64,
            delivered: s.subs.iter().map(|l| l.unique.load(Relaxed)).sum(),
            published: s.published.iter().map(|l| l.unique.load(Relaxed)).sum(),
        }
    }
}

impl Shared {
    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_nanos() as u64
    }
}

/// How a connection ended.
#[derive(Debug, Default)]
struct Ending {
    /// The server closed (or dropped) it before we asked: the code.
    server_close: Option<u16>,
    /// `--v1`: the events other than messages it received.
    v1: V1Counts,
}

/// What one slow subscriber saw when it resumed reading.
struct SlowEnd {
    /// The close code, 1006 for a dropped connection, None: still open.
    close: Option<u16>,
    messages: u64,
    v1: V1Counts,
}

/// What one subscriber measured.
struct SubStats {
    /// Microseconds from the scheduled send time, by class of publisher
    /// ([`class_of`]: paced, then flood when there are flooders); u32 counts
    /// halve the memory of 20,000 histograms.
    hist: Vec<Histogram<u32>>,
    /// Microseconds from the actual write.
    hist_send: Histogram<u32>,
    trackers: Vec<SeqTracker>,
    malformed: u64,
    last_delivery_ns: u64,
    ending: Ending,
    /// Per-second deliveries and latency, created at the first delivery.
    series: Option<SubSeries>,
}

enum SubResult {
    Failed(String),
    Done(Box<SubStats>),
    Slow(SlowEnd),
}

/// Class index of publisher `p`: 0 paced, 1 flood.
fn class_of(shared: &Shared, p: usize) -> usize {
    usize::from(p >= shared.paced)
}

/// What a publisher reports when it stops sending (before it closes).
struct PubStats {
    sent: u64,
    scheduled: u64,
    send_error: bool,
}

/// Raises RLIMIT_NOFILE to the hard limit and checks the connections fit.
fn ensure_fd_limit(connections: u64) -> Result<u64> {
    let limit = rlimit::increase_nofile_limit(u64::MAX)?;
    let need = connections + FD_RESERVE;
    if need > limit {
        bail!(
            "{connections} connections need about {need} file descriptors (incl. {FD_RESERVE} reserve) \
             but RLIMIT_NOFILE is {limit} even after raising the soft limit to the hard limit; \
             lower --clients/--publishers to at most {} in total or raise the hard limit",
            limit.saturating_sub(FD_RESERVE)
        );
    }
    Ok(limit)
}

/// Runs the whole test, on the subscribers' runtime. Paced publishers
/// (connect, send, close) run on `publishers_rt`, a runtime of their own, so
/// that their schedule does not queue behind thousands of subscriber tasks;
/// flooders on `flooders_rt`, so that they do not delay that schedule either.
pub(crate) async fn run(args: Args, publishers_rt: Handle, flooders_rt: Handle) -> Result<Report> {
    let clients = args.clients as usize;
    let paced = args.publisher_count();
    let flooders = args.flooder_count();
    let publishers = paced + flooders;
    let idle = args.is_idle();
    let size = args.size as usize;
    let slow = slow_count(clients, args.slow_fraction);
    ensure_fd_limit((clients + publishers) as u64)?;
    let readers_rt = Handle::current();
    if let Some(pid) = args.server_pid {
        procstat::check(pid)?;
    }
    // Several URLs (the nodes of a cluster): connections round-robin over them.
    let mut targets = Vec::with_capacity(args.urls.len());
    let tls = TlsOptions {
        ca: args.ca.clone(),
    };
    for url in &args.urls {
        targets.push(Arc::new(
            Target::resolve(url, args.source_addrs, &tls)
                .await?
                .with_subprotocol(args.v1.then_some(protocol::v1::SUBPROTOCOL)),
        ));
    }
    let target_for = |i: usize| targets[i % targets.len()].clone();
    let sample_server = |pid: Option<u32>| pid.and_then(|p| procstat::sample(Pid::Id(p)).ok());

    let (stop, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        origin: Instant::now(),
        publishers,
        paced,
        stop,
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        window: (args.max_rate && paced > 0).then(|| Windows::new(paced, args.window)),
        subs: (0..clients).map(|_| Live::default()).collect(),
        published: (0..publishers).map(|_| Live::default()).collect(),
        phase: AtomicU8::new(PHASE_CONNECT),
        start_ns: AtomicU64::new(0),
        abrupt_close: args.abrupt_close,
        rate_mode: !args.max_rate && paced > 0,
        v1: args.v1,
    });
    let progress = Progress::start(Probe(shared.clone()), clients as u64, !args.no_progress);
    let server_before = sample_server(args.server_pid);

    // 1. Subscribers, paced at --ramp per second, or all at once (--ramp 0)
    //    with at most --storm-concurrency connection attempts in flight.
    let t0 = Instant::now();
    let step = (args.ramp > 0.0).then(|| Duration::from_secs_f64(1.0 / args.ramp));
    let storm = Arc::new(Semaphore::new(args.storm_concurrency as usize));
    let (buf_size, max_msg) = (subscriber_buffer(clients, size), max_message(size));
    let mut sub_tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let (target, shared, storm) = (target_for(i), shared.clone(), storm.clone());
        let at = step.map(|s| t0 + s.mul_f64(i as f64));
        let timeout = args.connect_timeout;
        let is_slow = is_slow(i, clients, slow);
        let rcvbuf = (is_slow && args.slow_rcvbuf > 0).then_some(args.slow_rcvbuf);
        sub_tasks.push(tokio::spawn(async move {
            let conn = match at {
                Some(at) => {
                    sleep_until(at).await;
                    target
                        .connect_raw(i, timeout, rcvbuf, buf_size, max_msg)
                        .await
                }
                None => {
                    let _permit = storm.acquire().await;
                    target
                        .connect_raw(i, timeout, rcvbuf, buf_size, max_msg)
                        .await
                }
            };
            match conn {
                Ok(ws) => {
                    shared.connected.fetch_add(1, Relaxed);
                    if is_slow {
                        shared.subs[i].ended.store(true, Relaxed);
                        SubResult::Slow(slow_subscriber(ws, &shared).await)
                    } else {
                        SubResult::Done(Box::new(subscriber(ws, i, size, &shared).await))
                    }
                }
                Err(e) => {
                    shared.subs[i].ended.store(true, Relaxed);
                    shared.failed.fetch_add(1, Relaxed);
                    SubResult::Failed(format!("{e:#}"))
                }
            }
        }));
    }
    while shared.connected.load(Relaxed) + shared.failed.load(Relaxed) < clients {
        sleep(Duration::from_millis(2)).await;
    }
    let connect_s = t0.elapsed().as_secs_f64();
    sleep(args.settle).await;
    let server_idle = sample_server(args.server_pid);
    let tool_idle = procstat::sample(Pid::Myself).ok();
    let mut metrics_error = None;
    let metrics_before = match &args.metrics {
        Some(url) => scrape::scrape(url)
            .await
            .map_err(|e| metrics_error = Some(format!("{e:#}")))
            .ok(),
        None => None,
    };

    // 2. Publishers: connect all, then start together.
    let pub_cfg = publisher_config(size);
    let mut pub_conns = Vec::with_capacity(publishers);
    // Each publisher is connected on the runtime that will drive it.
    let rt_of = |p: usize| {
        if p < paced {
            &publishers_rt
        } else {
            &flooders_rt
        }
    };
    for p in 0..publishers {
        let target = target_for(p);
        let timeout = args.connect_timeout;
        pub_conns.push(
            rt_of(p)
                .spawn(async move { target.connect(clients + p, pub_cfg, timeout, None).await }),
        );
    }
    let mut first_connect_error = None;
    let mut publishers_failed = 0u64;
    let mut pub_ws = Vec::with_capacity(publishers);
    let mut failed_pubs = Vec::new();
    for (p, c) in pub_conns.into_iter().enumerate() {
        match c.await? {
            Ok(ws) => pub_ws.push(Some(ws)),
            Err(e) => {
                publishers_failed += 1;
                failed_pubs.push(p);
                first_connect_error.get_or_insert_with(|| format!("publisher: {e:#}"));
                pub_ws.push(None);
            }
        }
    }
    let start = Instant::now() + Duration::from_millis(5);
    let deadline = start + args.duration;
    shared.start_ns.store(shared.ns(start), Relaxed);
    shared.phase.store(PHASE_PUBLISH, Relaxed);
    let per_pub_rate = args.rate / paced.max(1) as f64;
    let give_up = deadline + args.drain;
    let mut pub_tasks = Vec::with_capacity(publishers);
    let mut pub_counts = Vec::with_capacity(publishers);
    for (p, ws) in pub_ws.into_iter().enumerate() {
        let Some(ws) = ws else { continue };
        let shared = shared.clone();
        let plan = if p >= paced {
            Plan::Flood
        } else if args.max_rate {
            Plan::MaxRate
        } else {
            Plan::Rate {
                per_pub_rate,
                offset: Duration::from_secs_f64(p as f64 / args.rate),
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let times = Times {
            start,
            deadline,
            give_up,
        };
        let readers = readers_rt.clone();
        pub_tasks.push(rt_of(p).spawn(publisher(ws, p, shared, plan, size, times, readers, tx)));
        pub_counts.push((p, rx));
    }
    let mut published_by = vec![0u64; publishers];
    let mut scheduled = 0u64;
    let mut send_errors = 0u64;
    let mut server_closes: BTreeMap<u16, u64> = BTreeMap::new();
    let mut v1_counts = V1Counts::default();
    for (p, rx) in pub_counts {
        let st = rx.await?;
        published_by[p] = st.sent;
        scheduled += st.scheduled;
        send_errors += u64::from(st.send_error);
    }
    if idle {
        // Hold the idle connections.
        sleep_until(deadline).await;
    }
    let publish_end = Instant::now();
    let published: u64 = published_by.iter().sum();

    // 3. Drain: until every live subscriber has everything, or --drain passes.
    shared.phase.store(PHASE_DRAIN, Relaxed);
    // With --drain-quiet, also stop once nothing has arrived for that long
    // (a server that lost messages would otherwise hold the whole --drain).
    let drain_deadline = publish_end + args.drain;
    let (mut last_total, mut last_progress) = (u64::MAX, Instant::now());
    loop {
        let done = shared
            .subs
            .iter()
            .all(|l| l.ended.load(Relaxed) || l.unique.load(Relaxed) >= published);
        let now = Instant::now();
        if done || now >= drain_deadline {
            break;
        }
        if !args.drain_quiet.is_zero() {
            let total: u64 = shared.subs.iter().map(|l| l.unique.load(Relaxed)).sum();
            if total != last_total {
                (last_total, last_progress) = (total, now);
            } else if now - last_progress >= args.drain_quiet {
                break;
            }
        }
        sleep(Duration::from_millis(5)).await;
    }
    let drain_used_s = publish_end.elapsed().as_secs_f64();
    let server_end = sample_server(args.server_pid);
    let tool_end = procstat::sample(Pid::Myself).ok();
    let server_metrics = match (&args.metrics, &metrics_before) {
        (Some(url), Some(before)) => match scrape::scrape(url).await {
            Ok(after) => Some(ServerMetrics::between(url, before, &after)),
            Err(e) => {
                metrics_error.get_or_insert(format!("{e:#}"));
                None
            }
        },
        _ => None,
    };
    shared.phase.store(PHASE_CLOSE, Relaxed);
    shared.stop.send_replace(true);
    for t in pub_tasks {
        let ending = t.await?;
        if let Some(c) = ending.server_close {
            *server_closes.entry(c).or_default() += 1;
        }
        v1_counts.add(&ending.v1);
    }

    // 4. Merge.
    let mut hist = Histogram::<u64>::new(3).expect("3 significant figures is valid");
    let mut hist_send = hist.clone();
    let class_count = if flooders > 0 { 2 } else { 1 };
    let mut class_hist = vec![hist.clone(); class_count];
    let mut classes = vec![ClassReport::default(); class_count];
    let mut series = Series::default();
    let mut report = Report {
        url: args.urls.join(" "),
        mode: if idle {
            "idle"
        } else if paced == 0 {
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
        drain_used_s,
        clients: clients as u64,
        publishers: publishers as u64,
        publishers_connected: publishers as u64 - publishers_failed,
        publishers_failed,
        connect_s,
        ramp: args.ramp,
        scheduled: shared.rate_mode.then_some(scheduled),
        published,
        published_per_s: published as f64 / (publish_end - start).as_secs_f64().max(1e-9),
        send_errors,
        max_loss: args.max_loss,
        max_errors: args.max_errors,
        ..Report::default()
    };
    let mut slow_report = (slow > 0).then(|| SlowReport {
        clients: slow as u64,
        ..SlowReport::default()
    });
    let mut last_delivery_ns = 0;
    for t in sub_tasks {
        match t.await? {
            SubResult::Failed(e) => {
                report.clients_failed += 1;
                if report.first_connect_error.is_none() {
                    report.first_connect_error = Some(format!("subscriber: {e}"));
                }
            }
            SubResult::Slow(end) => {
                report.clients_connected += 1;
                let sl = slow_report.as_mut().expect("slow subscribers configured");
                sl.connected += 1;
                sl.messages_read_at_end += end.messages;
                v1_counts.add(&end.v1);
                match end.close {
                    Some(c) => *sl.closes.entry(c).or_default() += 1,
                    None => sl.still_open += 1,
                }
            }
            SubResult::Done(s) => {
                report.clients_connected += 1;
                for (c, h) in s.hist.iter().enumerate() {
                    merge(&mut hist, h);
                    merge(&mut class_hist[c], h);
                }
                merge(&mut hist_send, &s.hist_send);
                if let Some(ss) = &s.series {
                    series.merge(ss);
                }
                for (p, tr) in s.trackers.iter().enumerate() {
                    let lost = tr.lost(published_by[p]);
                    report.delivered += tr.unique();
                    report.duplicates += tr.duplicates();
                    report.reordered += tr.reordered();
                    report.lost += lost;
                    let c = &mut classes[class_of(&shared, p)];
                    c.delivered += tr.unique();
                    c.lost += lost;
                }
                report.malformed += s.malformed;
                last_delivery_ns = last_delivery_ns.max(s.last_delivery_ns);
                if let Some(c) = s.ending.server_close {
                    *server_closes.entry(c).or_default() += 1;
                }
                v1_counts.add(&s.ending.v1);
            }
        }
    }
    if let Some(e) = first_connect_error {
        report.first_connect_error.get_or_insert(e);
    }
    if let (Some(pid), Some(b), Some(i), Some(e)) =
        (args.server_pid, &server_before, &server_idle, &server_end)
    {
        let mut usage = ServerUsage::from_samples(pid, b, i, e, report.clients_connected);
        sleep(args.after_close).await;
        if let Some(after) = sample_server(Some(pid)) {
            usage.rss_after_close_kib = Some(after.rss_kib);
            // The high-water mark again, in case closing raised it.
            usage.rss_peak_kib = usage.rss_peak_kib.max(after.hwm_kib);
        }
        report.server = Some(usage);
    }
    if let (Some(a), Some(b)) = (tool_idle, tool_end) {
        let wall = b.at.saturating_duration_since(a.at).as_secs_f64();
        if wall > 0.0 {
            report.tool_cpu_run_pct = 100.0 * (b.cpu_s - a.cpu_s).max(0.0) / wall;
        }
    }
    progress.finish();
    report.slow = slow_report;
    report.server_closes = server_closes;
    report.welcomes = v1_counts.welcomes;
    report.presence_events = v1_counts.presence;
    report.notices = v1_counts.notices;
    let publish_s = (publish_end - start).as_secs_f64().max(1e-9);
    for (c, (mut class, h)) in classes.into_iter().zip(&class_hist).enumerate() {
        let range = if c == 0 { 0..paced } else { paced..publishers };
        if range.is_empty() {
            continue;
        }
        let sent = &published_by[range.clone()];
        class.publishers = (range.len() as u64)
            .saturating_sub(range.clone().filter(|&p| failed_pubs.contains(&p)).count() as u64);
        class.published = sent.iter().sum();
        class.published_per_s = class.published as f64 / publish_s;
        class.sent_min = sent.iter().copied().min().unwrap_or(0);
        class.sent_max = sent.iter().copied().max().unwrap_or(0);
        class.scheduled = (c == 0 && shared.rate_mode).then_some(scheduled);
        class.latency = Latency::from_histogram_us(h);
        report
            .classes
            .insert(if c == 0 { "paced" } else { "flood" }, class);
    }
    report.flooders = flooders as u64;
    report.server_metrics = server_metrics;
    report.metrics_error = metrics_error;
    report.latency = Latency::from_histogram_us(&hist);
    report.latency_from_send = if shared.rate_mode {
        Latency::from_histogram_us(&hist_send)
    } else {
        // No schedule: stamped at the send, the same figures.
        report.latency.clone()
    };
    report.latency_percentiles = percentile_curve(&hist);
    report.window_sweeps = shared.window.as_ref().map(Windows::swept);
    report.timeline = series.points();
    report.delivery_window_s = last_delivery_ns.saturating_sub(shared.ns(start)) as f64 / 1e9;
    report.finish();
    Ok(report)
}

/// Adds a subscriber's u32-count histogram into the u64-count total.
fn merge(total: &mut Histogram<u64>, h: &Histogram<u32>) {
    for v in h.iter_recorded() {
        let _ = total.record_n(v.value_iterated_to(), u64::from(v.count_at_value()));
    }
}

/// Code of a received close frame.
fn close_code(frame: Option<&CloseFrame>) -> u16 {
    frame.map_or(NO_STATUS, |f| u16::from(f.code))
}

fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

/// The subscriber read loop, then a clean close once told to stop.
///
/// Messages are taken from the read buffer in batches (everything one read
/// returned) and timestamped once per read: they were all there when the
/// read returned. The stop signal is checked between reads.
async fn subscriber(mut ws: RawWs, idx: usize, size: usize, shared: &Shared) -> SubStats {
    let live = &shared.subs[idx];
    let acks = shared.window.as_ref();
    if let Some(w) = acks {
        w.join();
    }
    let classes = if shared.publishers > shared.paced {
        2
    } else {
        1
    };
    let mut st = SubStats {
        hist: (0..classes)
            .map(|_| Histogram::new(3).expect("3 significant figures is valid"))
            .collect(),
        hist_send: Histogram::new(3).expect("3 significant figures is valid"),
        trackers: vec![SeqTracker::default(); shared.publishers],
        malformed: 0,
        last_delivery_ns: 0,
        ending: Ending::default(),
        series: None,
    };
    let mut unique = 0u64;
    let mut stop_rx = shared.stop.subscribe();
    let mut stop = pin!(async move {
        let _ = stop_rx.wait_for(|&s| s).await;
    });
    let mut now = shared.ns(Instant::now());
    let v1_mode = shared.v1;
    // `--v1`: the payload decoded from a message event's base64.
    let mut decoded = Vec::with_capacity(if v1_mode { size } else { 0 });
    let stopped_by_us = 'read: loop {
        loop {
            let b = match ws.try_next() {
                Ok(None) => break,
                Ok(Some(Event::Data { text, payload })) if text == v1_mode => {
                    if !v1_mode {
                        payload
                    } else {
                        match v1::extract(payload, &mut decoded) {
                            Ok(V1Event::Data) => &decoded[..],
                            Ok(e) if st.ending.v1.count(e) => continue,
                            // Text messages and garbage.
                            _ => {
                                st.malformed += 1;
                                continue;
                            }
                        }
                    }
                }
                // A binary frame in v1 mode, a text frame in raw mode.
                Ok(Some(Event::Data { .. })) => {
                    st.malformed += 1;
                    continue;
                }
                Ok(Some(Event::Close(code))) => {
                    st.ending.server_close = Some(code);
                    break 'read false;
                }
                Err(_) => {
                    st.ending.server_close = Some(PROTOCOL_ERROR);
                    break 'read false;
                }
            };
            match payload::decode(b) {
                Ok(h) if b.len() == size && (h.publisher as usize) < st.trackers.len() => {
                    let p = h.publisher as usize;
                    if st.trackers[p].observe(h.seq) == Outcome::Duplicate {
                        continue;
                    }
                    // Auto-resizing, so this only fails past u32 counts.
                    let us = (now.saturating_sub(h.sent_ns) / 1000).min(MAX_LATENCY_US);
                    let _ = st.hist[class_of(shared, p)].record(us);
                    if shared.rate_mode {
                        let _ = st
                            .hist_send
                            .record(us.saturating_sub(u64::from(h.delay_us)));
                    }
                    st.series
                        .get_or_insert_with(|| SubSeries::new(shared.start_ns.load(Relaxed)))
                        .record(now, us);
                    st.last_delivery_ns = now;
                    unique += 1;
                    if let (Some(w), true) = (acks, p < shared.paced) {
                        w.ack(p, h.seq);
                    }
                }
                _ => st.malformed += 1,
            }
        }
        live.unique.store(unique, Relaxed);
        let more = tokio::select! {
            biased;
            _ = &mut stop => break true,
            more = ws.fill() => more,
        };
        now = shared.ns(Instant::now());
        if !matches!(more, Ok(true)) {
            st.ending.server_close = Some(ABNORMAL);
            break false;
        }
    };
    live.ended.store(true, Relaxed);
    if let (Some(w), false) = (acks, stopped_by_us) {
        w.leave();
    }
    let how = if stopped_by_us {
        Close::Ours
    } else {
        Close::After(st.ending.server_close)
    };
    end_connection(ws, how, shared.abrupt_close).await;
    st
}

/// A slow subscriber: reads nothing until the run stops, then reads what the
/// server left for it to see how the server ended it (see the module docs).
async fn slow_subscriber(mut ws: RawWs, shared: &Shared) -> SlowEnd {
    let mut stop_rx = shared.stop.subscribe();
    let _ = stop_rx.wait_for(|&s| s).await;
    let give_up = Instant::now() + SLOW_READ_MAX;
    let mut messages = 0u64;
    let mut v1_counts = V1Counts::default();
    let close = 'read: loop {
        loop {
            match ws.try_next() {
                Ok(None) => break,
                Ok(Some(Event::Data { text, payload })) if text && shared.v1 => {
                    if v1::is_message(payload) {
                        messages += 1;
                    } else if let Ok(e) = v1::extract(payload, &mut Vec::new()) {
                        v1_counts.count(e);
                    }
                }
                Ok(Some(Event::Data { .. })) => messages += 1,
                Ok(Some(Event::Close(code))) => break 'read Some(code),
                Err(_) => break 'read Some(PROTOCOL_ERROR),
            }
        }
        let quiet = (Instant::now() + SLOW_QUIET).min(give_up);
        match tokio::time::timeout_at(quiet, ws.fill()).await {
            Err(_) => break None,
            Ok(Ok(true)) => {}
            Ok(Ok(false) | Err(_)) => break Some(ABNORMAL),
        }
    };
    let how = match close {
        None => Close::Ours,
        c => Close::After(c),
    };
    end_connection(ws, how, shared.abrupt_close).await;
    SlowEnd {
        close,
        messages,
        v1: v1_counts,
    }
}

/// How a subscriber's connection ends.
enum Close {
    /// We close it (the run stopped): Close 1000, or a dropped TCP
    /// connection with --abrupt-close.
    Ours,
    /// The server closed it with this code (answered, if it can be), or
    /// it failed (1006, 1002: nothing to answer).
    After(Option<u16>),
}

async fn end_connection(mut ws: RawWs, how: Close, abrupt: bool) {
    const LINGER: Duration = Duration::from_secs(2);
    match how {
        Close::Ours if abrupt => drop(ws),
        Close::Ours => {
            if ws.send_close(1000).await.is_ok() {
                ws.finish(LINGER).await;
            }
        }
        Close::After(Some(ABNORMAL | PROTOCOL_ERROR) | None) => drop(ws),
        Close::After(Some(code)) => {
            // Echo the code (RFC 6455 §5.5.1); 1005 may not be sent.
            let echo = if code == NO_STATUS { 1000 } else { code };
            if ws.send_close(echo).await.is_ok() {
                ws.finish(LINGER).await;
            }
        }
    }
}

enum Plan {
    /// Token schedule at `per_pub_rate` msg/s, shifted by `offset`.
    Rate { per_pub_rate: f64, offset: Duration },
    /// As fast as the window semaphore allows.
    MaxRate,
    /// `--flooders`: batches back to back, as fast as the socket takes them.
    Flood,
}

/// A publisher's clock: it sends from `start` until `deadline`; a write
/// still blocked (TCP push-back) at `give_up` is abandoned as a send error.
#[derive(Debug, Clone, Copy)]
struct Times {
    start: Instant,
    deadline: Instant,
    give_up: Instant,
}

/// One publisher: sends on its plan until `times.deadline`, while a side
/// task on `readers` drains what the server broadcasts to it (other
/// publishers' messages). Reports its counts on `counts` when it stops
/// sending, then closes once the run stops.
#[allow(clippy::too_many_arguments)]
async fn publisher(
    ws: Ws,
    id: usize,
    shared: Arc<Shared>,
    plan: Plan,
    size: usize,
    times: Times,
    readers: Handle,
    counts: tokio::sync::oneshot::Sender<PubStats>,
) -> Ending {
    let Times {
        start,
        deadline,
        give_up,
    } = times;
    let (mut sink, mut stream) = ws.split();
    let (done_tx, mut done_rx) = watch::channel(false);
    let v1_mode = shared.v1;
    let reader = readers.spawn(async move {
        let mut done = pin!(async move {
            let _ = done_rx.wait_for(|&d| d).await;
        });
        let mut counts = V1Counts::default();
        let mut count = |m: &Message| {
            if let (true, Message::Text(t)) = (v1_mode, m) {
                if !v1::is_message(t.as_bytes()) {
                    if let Ok(e) = v1::extract(t.as_bytes(), &mut Vec::new()) {
                        counts.count(e);
                    }
                }
            }
        };
        let close = loop {
            tokio::select! {
                biased;
                _ = &mut done => {
                    // We sent Close: read until the server's Close reply.
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Some(Ok(m)) = stream.next().await {
                            count(&m);
                        }
                    })
                    .await;
                    break None;
                }
                m = stream.next() => match m {
                    Some(Ok(Message::Close(f))) => break Some(close_code(f.as_ref())),
                    Some(Ok(m)) => count(&m),
                    Some(Err(_)) | None => break Some(ABNORMAL),
                },
            }
        };
        Ending {
            server_close: close,
            v1: counts,
        }
    });

    let mut template = vec![0u8; size];
    payload::encode_into(
        &mut template,
        Header {
            publisher: id as u32,
            seq: 0,
            sent_ns: 0,
            delay_us: 0,
        },
    );
    let mut buf = BytesMut::new();
    let mut next_msg = |seq: u64, sent_ns: u64, delay_us: u32| -> Bytes {
        if buf.capacity() < size {
            buf.reserve(size * MAX_BATCH as usize);
        }
        buf.extend_from_slice(&template);
        payload::write_header(
            &mut buf,
            Header {
                publisher: id as u32,
                seq,
                sent_ns,
                delay_us,
            },
        );
        buf.split().freeze()
    };
    let live = &shared.published[id];
    let mut seq = 0u64;
    let mut scheduled = 0u64;
    let mut send_error = false;
    let mut deadline_sleep = pin!(sleep_until(deadline));
    match plan {
        Plan::Rate {
            per_pub_rate,
            offset,
        } => {
            let first = start + offset;
            let period_ns = 1e9 / per_pub_rate;
            let span = deadline.saturating_duration_since(first).as_nanos() as f64;
            // Messages owed in [first, deadline): s * period < span.
            let total = (span / period_ns).ceil() as u64;
            scheduled = total;
            let due_at = |s: u64| first + Duration::from_nanos((s as f64 * period_ns) as u64);
            while seq < total {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let elapsed = now.saturating_duration_since(first).as_nanos() as f64;
                let due = if now < first {
                    0
                } else {
                    ((elapsed / period_ns).floor() as u64 + 1).min(total)
                };
                if due <= seq {
                    tokio::select! {
                        biased;
                        _ = &mut deadline_sleep => break,
                        _ = sleep_until(due_at(seq)) => continue,
                    }
                }
                let end = due.min(seq + MAX_BATCH);
                let now_ns = shared.ns(Instant::now());
                let batch = (seq..end).map(|s| {
                    let stamp = shared.ns(due_at(s));
                    let delay =
                        u32::try_from(now_ns.saturating_sub(stamp) / 1000).unwrap_or(u32::MAX);
                    next_msg(s, stamp, delay)
                });
                if send_all(&mut sink, batch, give_up).await.is_err() {
                    send_error = true;
                    break;
                }
                seq = end;
                live.unique.store(seq, Relaxed);
            }
        }
        Plan::MaxRate => {
            let window = shared.window.as_ref().expect("window in max-rate mode");
            sleep_until(start).await;
            loop {
                let n = tokio::select! {
                    biased;
                    _ = &mut deadline_sleep => break,
                    n = window.acquire(id, MAX_BATCH as u32) => match n {
                        Some(n) => u64::from(n),
                        None => break,
                    },
                };
                let batch = (seq..seq + n).map(|s| next_msg(s, shared.ns(Instant::now()), 0));
                if send_all(&mut sink, batch, give_up).await.is_err() {
                    send_error = true;
                    break;
                }
                seq += n;
                live.unique.store(seq, Relaxed);
            }
        }
        Plan::Flood => {
            sleep_until(start).await;
            // No select on the deadline: a batch blocked by push-back is
            // finished (or abandoned at `give_up`), never half-counted.
            while Instant::now() < deadline {
                let now_ns = shared.ns(Instant::now());
                let batch = (seq..seq + MAX_BATCH).map(|s| next_msg(s, now_ns, 0));
                if send_all(&mut sink, batch, give_up).await.is_err() {
                    send_error = true;
                    break;
                }
                seq += MAX_BATCH;
                live.unique.store(seq, Relaxed);
            }
        }
    }
    // Messages written but not flushed on error are not counted: `seq` only
    // advances after a successful flush.
    let _ = counts.send(PubStats {
        sent: seq,
        scheduled,
        send_error,
    });

    // Close once the subscribers are told to stop.
    let mut stop_rx = shared.stop.subscribe();
    let _ = stop_rx.wait_for(|&s| s).await.is_ok();
    if !reader.is_finished() {
        let _ = sink.send(normal_close()).await;
        let _ = done_tx.send(true);
    }
    reader.await.unwrap_or_default()
}

/// Queues every payload of `batch` as a binary message, then flushes once;
/// fails when that is not done by `give_up` (the server stopped reading).
async fn send_all<S>(
    sink: &mut S,
    batch: impl Iterator<Item = Bytes>,
    give_up: Instant,
) -> Result<(), ()>
where
    S: futures_util::Sink<Message> + Unpin,
{
    use futures_util::SinkExt;
    let send = async {
        for payload in batch {
            sink.feed(Message::Binary(payload)).await?;
        }
        sink.flush().await
    };
    match tokio::time::timeout_at(give_up, send).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(()),
    }
}
