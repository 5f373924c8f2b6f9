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
use crate::conn::{publisher_config, subscriber_config, Target, Ws};
use crate::payload::{self, Header};
use crate::progress::Progress;
use crate::report::{Latency, Report};
use crate::tracker::{Outcome, SeqTracker};

/// File descriptors kept free for the runtime, stdio, the JSON file, etc.
const FD_RESERVE: u64 = 64;
/// Most messages a publisher writes before one flush.
const MAX_BATCH: u64 = 256;
/// Latencies above an hour are recorded as an hour (bounds histogram growth).
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Close code recorded when a connection ends without a close frame.
const ABNORMAL: u16 = 1006;
/// Close code recorded when a close frame carries no code.
const NO_STATUS: u16 = 1005;

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
    publishers: usize,
    stop: watch::Sender<bool>,
    connected: AtomicUsize,
    failed: AtomicUsize,
    /// `--max-rate`: one semaphore per publisher, the in-flight window.
    window: Option<Vec<Semaphore>>,
    ack_claimed: AtomicBool,
    subs: Vec<Live>,
    published: Vec<Live>,
    phase: AtomicU8,
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
}

/// What one subscriber measured.
struct SubStats {
    /// Microseconds from the scheduled send time; u32 counts halve the
    /// memory of 20,000 histograms.
    hist: Histogram<u32>,
    /// Microseconds from the actual write.
    hist_send: Histogram<u32>,
    trackers: Vec<SeqTracker>,
    malformed: u64,
    last_delivery_ns: u64,
    ending: Ending,
}

enum SubResult {
    Failed(String),
    Done(Box<SubStats>),
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

/// Runs the whole test. Publishers (connect, send, close) run on `publishers_rt`,
/// a runtime of their own, so that their schedule does not queue behind
/// thousands of subscriber tasks.
pub(crate) async fn run(args: Args, publishers_rt: Handle) -> Result<Report> {
    let clients = args.clients as usize;
    let publishers = args.publishers as usize;
    let size = args.size as usize;
    ensure_fd_limit((clients + publishers) as u64)?;
    let target = Arc::new(Target::resolve(&args.url, args.source_addrs).await?);

    let (stop, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        origin: Instant::now(),
        publishers,
        stop,
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        window: args.max_rate.then(|| {
            (0..publishers)
                .map(|_| Semaphore::new(args.window as usize))
                .collect()
        }),
        ack_claimed: AtomicBool::new(false),
        subs: (0..clients).map(|_| Live::default()).collect(),
        published: (0..publishers).map(|_| Live::default()).collect(),
        phase: AtomicU8::new(PHASE_CONNECT),
    });
    let progress = Progress::start(Probe(shared.clone()), clients as u64, !args.no_progress);

    // 1. Subscribers, paced at --ramp per second.
    let t0 = Instant::now();
    let step = Duration::from_secs_f64(1.0 / args.ramp);
    let sub_cfg = subscriber_config(size);
    let mut sub_tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let (target, shared) = (target.clone(), shared.clone());
        let at = t0 + step.mul_f64(i as f64);
        let timeout = args.connect_timeout;
        sub_tasks.push(tokio::spawn(async move {
            sleep_until(at).await;
            match target.connect(i, sub_cfg, timeout).await {
                Ok(ws) => {
                    shared.connected.fetch_add(1, Relaxed);
                    SubResult::Done(Box::new(subscriber(ws, i, size, &shared).await))
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
        sleep(Duration::from_millis(10)).await;
    }
    let connect_s = t0.elapsed().as_secs_f64();
    sleep(args.settle).await;

    // 2. Publishers: connect all, then start together.
    let pub_cfg = publisher_config(size);
    let mut pub_conns = Vec::with_capacity(publishers);
    for p in 0..publishers {
        let target = target.clone();
        let timeout = args.connect_timeout;
        pub_conns.push(
            publishers_rt.spawn(async move { target.connect(clients + p, pub_cfg, timeout).await }),
        );
    }
    let mut first_connect_error = None;
    let mut publishers_failed = 0u64;
    let mut pub_ws = Vec::with_capacity(publishers);
    for c in pub_conns {
        match c.await? {
            Ok(ws) => pub_ws.push(Some(ws)),
            Err(e) => {
                publishers_failed += 1;
                first_connect_error.get_or_insert_with(|| format!("publisher: {e:#}"));
                pub_ws.push(None);
            }
        }
    }
    let start = Instant::now() + Duration::from_millis(5);
    let deadline = start + args.duration;
    shared.phase.store(PHASE_PUBLISH, Relaxed);
    let per_pub_rate = args.rate / publishers as f64;
    let mut pub_tasks = Vec::with_capacity(publishers);
    let mut pub_counts = Vec::with_capacity(publishers);
    for (p, ws) in pub_ws.into_iter().enumerate() {
        let Some(ws) = ws else { continue };
        let shared = shared.clone();
        let plan = if args.max_rate {
            Plan::MaxRate
        } else {
            Plan::Rate {
                per_pub_rate,
                offset: Duration::from_secs_f64(p as f64 / args.rate),
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        pub_tasks
            .push(publishers_rt.spawn(publisher(ws, p, shared, plan, size, start, deadline, tx)));
        pub_counts.push((p, rx));
    }
    let mut published_by = vec![0u64; publishers];
    let mut scheduled = 0u64;
    let mut send_errors = 0u64;
    let mut server_closes: BTreeMap<u16, u64> = BTreeMap::new();
    for (p, rx) in pub_counts {
        let st = rx.await?;
        published_by[p] = st.sent;
        scheduled += st.scheduled;
        send_errors += u64::from(st.send_error);
    }
    let publish_end = Instant::now();
    let published: u64 = published_by.iter().sum();

    // 3. Drain: until every live subscriber has everything, or --drain passes.
    shared.phase.store(PHASE_DRAIN, Relaxed);
    let drain_deadline = publish_end + args.drain;
    loop {
        let done = shared
            .subs
            .iter()
            .all(|l| l.ended.load(Relaxed) || l.unique.load(Relaxed) >= published);
        if done || Instant::now() >= drain_deadline {
            break;
        }
        sleep(Duration::from_millis(5)).await;
    }
    shared.phase.store(PHASE_CLOSE, Relaxed);
    shared.stop.send_replace(true);
    for t in pub_tasks {
        if let Some(c) = t.await?.server_close {
            *server_closes.entry(c).or_default() += 1;
        }
    }

    // 4. Merge.
    let mut hist = Histogram::<u64>::new(3).expect("3 significant figures is valid");
    let mut hist_send = hist.clone();
    let mut report = Report {
        url: args.url.clone(),
        mode: if args.max_rate { "max-rate" } else { "rate" },
        rate: (!args.max_rate).then_some(args.rate),
        window: args.max_rate.then_some(args.window),
        size: args.size,
        duration_s: args.duration.as_secs_f64(),
        drain_s: args.drain.as_secs_f64(),
        clients: clients as u64,
        publishers: publishers as u64,
        publishers_connected: publishers as u64 - publishers_failed,
        publishers_failed,
        connect_s,
        scheduled: (!args.max_rate).then_some(scheduled),
        published,
        published_per_s: published as f64 / (publish_end - start).as_secs_f64(),
        send_errors,
        max_loss: args.max_loss,
        max_errors: args.max_errors,
        ..Report::default()
    };
    let mut last_delivery_ns = 0;
    for t in sub_tasks {
        match t.await? {
            SubResult::Failed(e) => {
                report.clients_failed += 1;
                if report.first_connect_error.is_none() {
                    report.first_connect_error = Some(format!("subscriber: {e}"));
                }
            }
            SubResult::Done(s) => {
                report.clients_connected += 1;
                merge(&mut hist, &s.hist);
                merge(&mut hist_send, &s.hist_send);
                for (p, tr) in s.trackers.iter().enumerate() {
                    report.delivered += tr.unique();
                    report.duplicates += tr.duplicates();
                    report.reordered += tr.reordered();
                    report.lost += tr.lost(published_by[p]);
                }
                report.malformed += s.malformed;
                last_delivery_ns = last_delivery_ns.max(s.last_delivery_ns);
                if let Some(c) = s.ending.server_close {
                    *server_closes.entry(c).or_default() += 1;
                }
            }
        }
    }
    if let Some(e) = first_connect_error {
        report.first_connect_error.get_or_insert(e);
    }
    progress.finish();
    report.server_closes = server_closes;
    report.latency = Latency::from_histogram_us(&hist);
    report.latency_from_send = Latency::from_histogram_us(&hist_send);
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
async fn subscriber(mut ws: Ws, idx: usize, size: usize, shared: &Shared) -> SubStats {
    let live = &shared.subs[idx];
    let acks = match &shared.window {
        Some(w) if !shared.ack_claimed.swap(true, Relaxed) => Some(w),
        _ => None,
    };
    let mut st = SubStats {
        hist: Histogram::new(3).expect("3 significant figures is valid"),
        hist_send: Histogram::new(3).expect("3 significant figures is valid"),
        trackers: vec![SeqTracker::default(); shared.publishers],
        malformed: 0,
        last_delivery_ns: 0,
        ending: Ending::default(),
    };
    let mut unique = 0u64;
    let mut stop_rx = shared.stop.subscribe();
    let mut stop = pin!(async move {
        let _ = stop_rx.wait_for(|&s| s).await;
    });
    let stopped_by_us = loop {
        let msg = tokio::select! {
            biased;
            _ = &mut stop => break true,
            m = ws.next() => m,
        };
        match msg {
            Some(Ok(Message::Binary(b))) => {
                let now = shared.ns(Instant::now());
                match payload::decode(&b) {
                    Ok(h) if b.len() == size && (h.publisher as usize) < st.trackers.len() => {
                        let p = h.publisher as usize;
                        if st.trackers[p].observe(h.seq) == Outcome::Duplicate {
                            continue;
                        }
                        // Auto-resizing, so this only fails past u32 counts.
                        let us = (now.saturating_sub(h.sent_ns) / 1000).min(MAX_LATENCY_US);
                        let _ = st.hist.record(us);
                        let _ = st
                            .hist_send
                            .record(us.saturating_sub(u64::from(h.delay_us)));
                        st.last_delivery_ns = now;
                        unique += 1;
                        live.unique.store(unique, Relaxed);
                        if let Some(w) = acks {
                            w[p].add_permits(1);
                        }
                    }
                    _ => st.malformed += 1,
                }
            }
            Some(Ok(Message::Text(_))) => st.malformed += 1,
            Some(Ok(Message::Close(f))) => {
                st.ending.server_close = Some(close_code(f.as_ref()));
                break false;
            }
            Some(Ok(_)) => {} // ping/pong: tungstenite answers pings itself
            Some(Err(_)) | None => {
                st.ending.server_close = Some(ABNORMAL);
                break false;
            }
        }
    };
    live.ended.store(true, Relaxed);
    finish_close(ws, stopped_by_us).await;
    st
}

/// Sends our Close 1000 (if we are the one closing) and waits briefly for
/// the close handshake to complete.
async fn finish_close(mut ws: Ws, send_close: bool) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if send_close {
            let _ = ws.send(normal_close()).await;
        }
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

enum Plan {
    /// Token schedule at `per_pub_rate` msg/s, shifted by `offset`.
    Rate { per_pub_rate: f64, offset: Duration },
    /// As fast as the window semaphore allows.
    MaxRate,
}

/// One publisher: sends on its schedule until `deadline`, while a side task
/// drains what the server broadcasts to it (other publishers' messages).
/// Reports its counts on `counts` when it stops sending, then closes once the
/// run stops.
#[allow(clippy::too_many_arguments)]
async fn publisher(
    ws: Ws,
    id: usize,
    shared: Arc<Shared>,
    plan: Plan,
    size: usize,
    start: Instant,
    deadline: Instant,
    counts: tokio::sync::oneshot::Sender<PubStats>,
) -> Ending {
    let (mut sink, mut stream) = ws.split();
    let (done_tx, mut done_rx) = watch::channel(false);
    let reader = tokio::spawn(async move {
        let mut done = pin!(async move {
            let _ = done_rx.wait_for(|&d| d).await;
        });
        loop {
            tokio::select! {
                biased;
                _ = &mut done => {
                    // We sent Close: read until the server's Close reply.
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Some(Ok(_)) = stream.next().await {}
                    })
                    .await;
                    return None;
                }
                m = stream.next() => match m {
                    Some(Ok(Message::Close(f))) => return Some(close_code(f.as_ref())),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Some(ABNORMAL),
                },
            }
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
                let mut ok = true;
                let now_ns = shared.ns(Instant::now());
                for s in seq..end {
                    let stamp = shared.ns(due_at(s));
                    let delay =
                        u32::try_from(now_ns.saturating_sub(stamp) / 1000).unwrap_or(u32::MAX);
                    if sink
                        .feed(Message::Binary(next_msg(s, stamp, delay)))
                        .await
                        .is_err()
                    {
                        ok = false;
                        break;
                    }
                }
                if !ok || sink.flush().await.is_err() {
                    send_error = true;
                    break;
                }
                seq = end;
                live.unique.store(seq, Relaxed);
            }
        }
        Plan::MaxRate => {
            let sem = &shared.window.as_ref().expect("window in max-rate mode")[id];
            sleep_until(start).await;
            loop {
                tokio::select! {
                    biased;
                    _ = &mut deadline_sleep => break,
                    p = sem.acquire() => match p {
                        Ok(p) => p.forget(),
                        Err(_) => break,
                    },
                }
                let n = 1 + sem.forget_permits(MAX_BATCH as usize - 1) as u64;
                let mut ok = true;
                for s in seq..seq + n {
                    let stamp = shared.ns(Instant::now());
                    if sink
                        .feed(Message::Binary(next_msg(s, stamp, 0)))
                        .await
                        .is_err()
                    {
                        ok = false;
                        break;
                    }
                }
                if !ok || sink.flush().await.is_err() {
                    send_error = true;
                    break;
                }
                seq += n;
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
    Ending {
        server_close: reader.await.ok().flatten(),
    }
}
