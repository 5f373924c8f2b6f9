//! Phase 1, and the subscribers' side of every later phase: connecting the
//! subscribers, their read loop (latency, loss, order), the slow
//! subscribers that read only at the end, and closing each connection.

use std::pin::pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use protocol::close::{ABNORMAL, NORMAL, NO_STATUS, PROTOCOL_ERROR};
use protocol::history::{Cursor, Resumed};
use protocol::v1::ServerEvent;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};

use super::shared::{move_to, moves_on, Ending, Shared, Targets};
use crate::cli::{is_slow, slow_count, Args};
use crate::conn::{max_message, subscriber_buffer, SubWs, Target};
use crate::payload;
use crate::rawws::Event;
use crate::series::SubSeries;
use crate::tracker::{Outcome, SeqTracker};
use crate::v1::{self as v1, V1Counts, V1Event};

/// Latencies above an hour are recorded as an hour (bounds histogram growth).
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Slow subscribers, once resumed: stop after this long without data...
const SLOW_QUIET: Duration = Duration::from_secs(1);
/// ...or after this long in all.
const SLOW_READ_MAX: Duration = Duration::from_secs(5);

/// What one slow subscriber saw when it resumed reading.
pub(super) struct SlowEnd {
    /// How long its connect and upgrade took.
    pub(super) connect: Duration,
    /// The close code, 1006 for a dropped connection, None: still open.
    pub(super) close: Option<u16>,
    pub(super) messages: u64,
    pub(super) v1: V1Counts,
}

/// What one subscriber measured.
pub(super) struct SubStats {
    /// How long its connect and upgrade took.
    pub(super) connect: Duration,
    /// Microseconds from the scheduled send time, by class of publisher
    /// ([`Shared::class_of`]: paced, then flood when there are flooders);
    /// u32 counts halve the memory of 20,000 histograms.
    pub(super) hist: Vec<Histogram<u32>>,
    /// Microseconds from the actual write.
    pub(super) hist_send: Histogram<u32>,
    pub(super) trackers: Vec<SeqTracker>,
    pub(super) malformed: u64,
    pub(super) last_delivery_ns: u64,
    pub(super) ending: Ending,
    /// Per-second deliveries and latency, created at the first delivery.
    pub(super) series: Option<SubSeries>,
    /// `--reconnect-every`: its resumes (with several `--url`s and `--v1`:
    /// the outcomes of its moves' resumes too).
    pub(super) resume: Option<ResumeStats>,
    /// Bytes read from its sockets (all its connections), and whether
    /// its (first) connection negotiated permessage-deflate.
    pub(super) read_bytes: u64,
    pub(super) compressed: bool,
    /// Several `--url`s: its moves to another one.
    pub(super) moves: MoveStats,
}

/// One subscriber's moves to another URL after a 1012 or 1001 close.
#[derive(Debug, Default)]
pub(super) struct MoveStats {
    pub(super) moves: u64,
    /// Moves that found no URL to connect to (the subscriber then stops).
    pub(super) failures: u64,
    pub(super) first_error: Option<String>,
    /// Per move: µs from the last message before the close to the first
    /// one after it (replayed or live), the subscriber's delivery gap.
    pub(super) gap_us: Vec<u32>,
    /// Per move: when it connected again, whole seconds since publishing
    /// started (0 for a move before it).
    pub(super) at_s: Vec<u32>,
}

/// How one subscriber's task ended.
pub(super) enum SubResult {
    /// It failed to connect: why, and when.
    Failed(String, Instant),
    Done(Box<SubStats>),
    Slow(SlowEnd),
}

/// The subscribers once phase 1 is over: every one connected or failed.
pub(super) struct Subscribers {
    pub(super) tasks: Vec<JoinHandle<SubResult>>,
    /// Seconds from the first connection attempt until the last settled.
    pub(super) connect_s: f64,
    /// `--slow-fraction`: how many of them are slow.
    pub(super) slow: usize,
}

/// Phase 1: connects `--clients` subscribers, paced at `--ramp` per second,
/// or all at once (`--ramp 0`) with at most `--storm-concurrency`
/// connection attempts in flight; returns when each connected or failed.
/// Each task then reads until the run stops.
pub(super) async fn connect(args: &Args, targets: &Targets, shared: &Arc<Shared>) -> Subscribers {
    let clients = args.clients as usize;
    let size = args.size as usize;
    let slow = slow_count(clients, args.slow_fraction);
    let t0 = Instant::now();
    let step = (args.ramp > 0.0).then(|| Duration::from_secs_f64(1.0 / args.ramp));
    let storm = Arc::new(Semaphore::new(args.storm_concurrency as usize));
    let (buf_size, max_msg) = (subscriber_buffer(clients, size), max_message(size));
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let (target, shared, storm) = (targets.of(i), shared.clone(), storm.clone());
        let ring = targets.ring(i);
        let at = step.map(|s| t0 + s.mul_f64(i as f64));
        let timeout = args.connect_timeout;
        let is_slow = is_slow(i, clients, slow);
        let rcvbuf = (is_slow && args.slow_rcvbuf > 0).then_some(args.slow_rcvbuf);
        tasks.push(tokio::spawn(async move {
            // Timed from the attempt: after its ramp slot or storm permit.
            let timed = async {
                let t = Instant::now();
                let conn = target
                    .connect_raw(i, timeout, rcvbuf, buf_size, max_msg)
                    .await;
                (conn, t.elapsed())
            };
            let (conn, took) = match at {
                Some(at) => {
                    sleep_until(at).await;
                    timed.await
                }
                None => {
                    let _permit = storm.acquire().await;
                    timed.await
                }
            };
            match conn {
                Ok(ws) => {
                    shared.connected.fetch_add(1, Relaxed);
                    if is_slow {
                        shared.subs[i].ended.store(true, Relaxed);
                        SubResult::Slow(slow_subscriber(ws, took, &shared).await)
                    } else {
                        let (ring, url) = ring;
                        let redial = Redial {
                            ring,
                            url,
                            timeout,
                            buf_size,
                            max_msg,
                        };
                        let stats = subscriber(ws, took, i, size, &shared, redial).await;
                        SubResult::Done(Box::new(stats))
                    }
                }
                Err(e) => {
                    shared.subs[i].ended.store(true, Relaxed);
                    shared.failed.fetch_add(1, Relaxed);
                    SubResult::Failed(format!("{e:#}"), Instant::now())
                }
            }
        }));
    }
    while shared.connected.load(Relaxed) + shared.failed.load(Relaxed) < clients {
        sleep(Duration::from_millis(2)).await;
    }
    Subscribers {
        tasks,
        connect_s: t0.elapsed().as_secs_f64(),
        slow,
    }
}

/// Where a subscriber connects again (`--reconnect-every`, a move): its
/// target on every URL, and the one it is on.
pub(super) struct Redial {
    ring: Vec<Arc<Target>>,
    url: usize,
    timeout: Duration,
    buf_size: usize,
    max_msg: usize,
}

/// One subscriber's resumes (`--reconnect-every`).
#[derive(Debug, Default)]
pub(super) struct ResumeStats {
    /// Connections opened again after a drop.
    pub(super) reconnects: u64,
    /// Reconnects that failed (the subscriber then stops).
    pub(super) failures: u64,
    pub(super) first_error: Option<String>,
    /// Messages replayed to it on resuming (up to each seam).
    pub(super) recovered: u64,
    /// Resumes the server could not cover (`recovered: false`).
    pub(super) unrecovered: u64,
    /// Per resume: µs from the planned reconnect (the drop plus
    /// `--outage`) until its replay had arrived.
    pub(super) recover_us: Vec<u32>,
    /// The same two counts for the resumes of its moves.
    pub(super) move_recovered: u64,
    pub(super) move_unrecovered: u64,
}

/// A subscriber's place in its channel's history, and the resume under way.
struct Resuming {
    cursor: Cursor,
    stats: ResumeStats,
    /// This connection asked for `since`.
    resumed: bool,
    /// When the current resume was due (ns since the origin), until its
    /// outcome is known.
    due_ns: Option<u64>,
    /// This connection is a move's (its outcome is counted as such).
    moving: bool,
}

impl Resuming {
    /// The v1 welcome of a connection (`json`), read at `now` (ns).
    fn welcome(&mut self, json: &[u8], now: u64, shared: &Shared) {
        let Ok(Some(ServerEvent::Welcome {
            recovered,
            reason,
            position,
            ..
        })) = std::str::from_utf8(json).map(|t| ServerEvent::decode(t).unwrap_or(None))
        else {
            return;
        };
        let resumed = std::mem::take(&mut self.resumed);
        let outcome = self.cursor.joined(resumed, recovered, reason, position);
        self.outcome(outcome, now, shared);
    }

    fn message(&mut self, position: Option<(u64, &str)>, now: u64, shared: &Shared) {
        let (offset, epoch) = position.unzip();
        let outcome = self.cursor.message(offset, epoch, false);
        self.outcome(outcome, now, shared);
    }

    /// A resume's outcome, once known: counted (and in `shared.resumes`).
    fn outcome(&mut self, outcome: Option<Resumed>, now: u64, shared: &Shared) {
        let Some(outcome) = outcome else { return };
        shared.resumes.fetch_add(1, Relaxed);
        let s = &mut self.stats;
        match (outcome, std::mem::take(&mut self.moving)) {
            (Resumed::Recovered { missed }, false) => s.recovered += missed,
            (Resumed::Unrecovered(_), false) => s.unrecovered += 1,
            (Resumed::Recovered { missed }, true) => s.move_recovered += missed,
            (Resumed::Unrecovered(_), true) => s.move_unrecovered += 1,
        }
        if let Some(due) = self.due_ns.take() {
            let us = now.saturating_sub(due) / 1000;
            self.stats
                .recover_us
                .push(u32::try_from(us).unwrap_or(u32::MAX));
        }
    }
}

/// Why a connection's read loop ended.
enum Exit {
    /// The run stopped: we close.
    Stopped,
    /// The server closed it, or it failed.
    Ended,
    /// `--reconnect-every`: time to drop it and resume (the planned instant).
    Redial(Instant),
}

/// The subscriber read loop, then a clean close once told to stop. With
/// `--reconnect-every` it drops the connection when due and resumes on a
/// new one (see [`Redial`]), keeping its counts.
///
/// Messages are taken from the read buffer in batches (everything one read
/// returned) and timestamped once per read: they were all there when the
/// read returned. The stop signal is checked between reads.
async fn subscriber(
    mut ws: SubWs,
    connect: Duration,
    idx: usize,
    size: usize,
    shared: &Shared,
    redial: Redial,
) -> SubStats {
    let live = &shared.subs[idx];
    let channel = shared.channel_of(idx);
    let acks = shared.window.as_ref();
    if let Some(w) = acks {
        w.join(channel);
    }
    let mut st = SubStats {
        connect,
        hist: (0..shared.classes())
            .map(|_| Histogram::new(3).expect("3 significant figures is valid"))
            .collect(),
        hist_send: Histogram::new(3).expect("3 significant figures is valid"),
        trackers: vec![SeqTracker::default(); shared.publishers],
        malformed: 0,
        last_delivery_ns: 0,
        ending: Ending::default(),
        series: None,
        resume: None,
        read_bytes: 0,
        compressed: ws.compressed(),
        moves: MoveStats::default(),
    };
    // `--compression header`: compressed messages arrive cut to their header.
    let mut cut = ws.cuts_messages();
    let mut unique = 0u64;
    let mut stop = pin!(shared.stopped());
    let mut now = shared.ns(Instant::now());
    let v1_mode = shared.v1;
    // `--v1`: the payload decoded from a message event's base64.
    let mut decoded = Vec::with_capacity(if v1_mode { size } else { 0 });
    // A v1 subscriber keeps its position to resume from, when it drops
    // (`--reconnect-every`) or moves (several `--url`s).
    let keeps_position = shared.reconnect.is_some() || (v1_mode && shared.follow.is_some());
    let mut resume = keeps_position.then(|| Resuming {
        cursor: Cursor::default(),
        stats: ResumeStats::default(),
        resumed: false,
        due_ns: None,
        moving: false,
    });
    let mut redial = redial;
    // After a move: when its last message before the close arrived (ns),
    // until the next one does.
    let mut gap_from: Option<u64> = None;
    let mut drops = 0u32;
    let stopped_by_us = 'conn: loop {
        let k = drops;
        let mut due = pin!(async move {
            match shared.drop_due(idx, k).await {
                Some(at) => {
                    sleep_until(at).await;
                    at
                }
                None => std::future::pending().await,
            }
        });
        let exit = 'read: loop {
            loop {
                let b = match ws.try_next() {
                    Ok(None) => break,
                    Ok(Some(Event::Data { text, payload })) if text == v1_mode => {
                        if !v1_mode {
                            payload
                        } else {
                            match v1::extract(payload, &mut decoded) {
                                Ok(V1Event::Data) => {
                                    if let Some(r) = &mut resume {
                                        r.message(v1::position(payload), now, shared);
                                    }
                                    &decoded[..]
                                }
                                Ok(V1Event::Welcome) if resume.is_some() => {
                                    if let Some(r) = &mut resume {
                                        r.welcome(payload, now, shared);
                                    }
                                    st.ending.v1.count(V1Event::Welcome);
                                    continue;
                                }
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
                        break 'read Exit::Ended;
                    }
                    Err(_) => {
                        st.ending.server_close = Some(PROTOCOL_ERROR);
                        break 'read Exit::Ended;
                    }
                };
                match payload::decode(b) {
                    Ok(h)
                        if (b.len() == size || (cut && b.len() == payload::HEADER_LEN))
                            && (h.publisher as usize) < st.trackers.len() =>
                    {
                        if let Some(from) = gap_from.take() {
                            let us = now.saturating_sub(from) / 1000;
                            st.moves.gap_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                        }
                        let p = h.publisher as usize;
                        if st.trackers[p].observe(h.seq) == Outcome::Duplicate {
                            continue;
                        }
                        // Auto-resizing, so this only fails past u32 counts.
                        let us = (now.saturating_sub(h.sent_ns) / 1000).min(MAX_LATENCY_US);
                        let _ = st.hist[shared.class_of(p)].record(us);
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
                        // A message from another channel (a server bug, counted
                        // as misrouted by `merge`) must not free a window slot.
                        if let (Some(w), true) = (acks, p < shared.paced) {
                            if shared.channel_of(p) == channel {
                                w.ack(p, h.seq);
                            }
                        }
                    }
                    _ => st.malformed += 1,
                }
            }
            live.unique.store(unique, Relaxed);
            let more = tokio::select! {
                biased;
                _ = &mut stop => break Exit::Stopped,
                at = &mut due => break Exit::Redial(at),
                more = ws.fill() => more,
            };
            now = shared.ns(Instant::now());
            if !matches!(more, Ok(true)) {
                st.ending.server_close = Some(ABNORMAL);
                break Exit::Ended;
            }
        };
        let at = match exit {
            Exit::Stopped => break 'conn true,
            Exit::Ended if shared.follow.is_some() && moves_on(st.ending.server_close) => {
                let code = st.ending.server_close.take();
                // Answered on the side: the node is not kept waiting, and
                // neither is the move.
                tokio::spawn(end_connection(ws, Close::After(code), false));
                let closed_ns = shared.ns(Instant::now());
                let last = if st.last_delivery_ns > 0 {
                    st.last_delivery_ns
                } else {
                    closed_ns
                };
                match move_subscriber(idx, shared, &mut redial, &mut resume, &mut stop).await {
                    Some(Ok(new)) => {
                        ws = new;
                        cut = ws.cuts_messages();
                        // What the handshake read already is timed now.
                        now = shared.ns(Instant::now());
                        gap_from = Some(last);
                        st.moves.moves += 1;
                        let since_start = shared
                            .ns(Instant::now())
                            .saturating_sub(shared.start_ns.load(Relaxed));
                        st.moves.at_s.push((since_start / 1_000_000_000) as u32);
                        continue 'conn;
                    }
                    Some(Err(e)) => {
                        st.moves.failures += 1;
                        st.moves.first_error.get_or_insert(e);
                        st.ending.server_close = code;
                        st.ending.closed_at = Some(Instant::now());
                    }
                    // Stopped meanwhile.
                    None => {}
                }
                live.ended.store(true, Relaxed);
                st.resume = resume.map(|r| r.stats);
                return st;
            }
            Exit::Ended => break 'conn false,
            Exit::Redial(at) => at,
        };
        // A real cut: the TCP connection dropped, no close handshake.
        st.read_bytes += ws.read_bytes();
        drop(ws);
        drops += 1;
        let r = resume.as_mut().expect("redial only with --reconnect-every");
        let due_at = at + shared.reconnect.map_or(Duration::ZERO, |p| p.outage);
        tokio::select! {
            biased;
            _ = &mut stop => {
                live.ended.store(true, Relaxed);
                st.resume = resume.map(|r| r.stats);
                return st;
            }
            () = sleep_until(due_at) => {}
        }
        let on = &redial.ring[redial.url];
        let target = match r.cursor.since() {
            Some(since) => on.with_since(since),
            None => (**on).clone(),
        };
        r.resumed = r.cursor.since().is_some();
        r.due_ns = Some(shared.ns(due_at));
        match target
            .connect_raw(idx, redial.timeout, None, redial.buf_size, redial.max_msg)
            .await
        {
            Ok(new) => {
                ws = new;
                cut = ws.cuts_messages();
                now = shared.ns(Instant::now());
                r.stats.reconnects += 1;
            }
            Err(e) => {
                r.stats.failures += 1;
                r.stats.first_error.get_or_insert(format!("{e:#}"));
                live.ended.store(true, Relaxed);
                st.ending.server_close = Some(ABNORMAL);
                st.ending.closed_at = Some(Instant::now());
                st.resume = resume.map(|r| r.stats);
                return st;
            }
        }
    };
    live.ended.store(true, Relaxed);
    st.resume = resume.map(|r| r.stats);
    st.read_bytes += ws.read_bytes();
    if st.ending.server_close.is_some() {
        st.ending.closed_at = Some(Instant::now());
    }
    if let (Some(w), false) = (acks, stopped_by_us) {
        w.leave(channel);
    }
    let how = if stopped_by_us {
        Close::Ours
    } else {
        Close::After(st.ending.server_close)
    };
    end_connection(ws, how, shared.abrupt_close).await;
    st
}

/// A subscriber's move after the server closed it with 1012 or 1001: a
/// random pause of up to `--move-jitter`, then the next URL that takes it
/// (see [`move_to`]), resuming from its position (`?since=`) if it has
/// one. None: the run stopped meanwhile.
async fn move_subscriber(
    idx: usize,
    shared: &Shared,
    redial: &mut Redial,
    resume: &mut Option<Resuming>,
    stop: &mut (impl std::future::Future<Output = ()> + Unpin),
) -> Option<Result<SubWs, String>> {
    let jitter = shared.follow.unwrap_or_default().mul_f64(fastrand::f64());
    tokio::select! {
        biased;
        () = &mut *stop => return None,
        () = sleep(jitter) => {}
    }
    let since = resume.as_ref().and_then(|r| r.cursor.since().cloned());
    let give_up = Instant::now() + redial.timeout;
    let (timeout, buf, max) = (redial.timeout, redial.buf_size, redial.max_msg);
    let moved = move_to(&redial.ring, redial.url, give_up, |target| {
        let target = match &since {
            Some(since) => Arc::new(target.with_since(since)),
            None => target,
        };
        async move { target.connect_raw(idx, timeout, None, buf, max).await }
    });
    let moved = tokio::select! {
        biased;
        () = &mut *stop => return None,
        moved = moved => moved,
    };
    Some(moved.map(|(url, ws)| {
        redial.url = url;
        if let Some(r) = resume {
            r.resumed = since.is_some();
            r.moving = true;
        }
        ws
    }))
}

/// A slow subscriber: reads nothing until the run stops, then reads what the
/// server left for it to see how the server ended it (see the module docs
/// of [`super`]).
async fn slow_subscriber(mut ws: SubWs, connect: Duration, shared: &Shared) -> SlowEnd {
    shared.stopped().await;
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
        connect,
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

async fn end_connection(mut ws: SubWs, how: Close, abrupt: bool) {
    const LINGER: Duration = Duration::from_secs(2);
    match how {
        Close::Ours if abrupt => drop(ws),
        Close::Ours => {
            if ws.send_close(NORMAL).await.is_ok() {
                ws.finish(LINGER).await;
            }
        }
        Close::After(Some(ABNORMAL | PROTOCOL_ERROR) | None) => drop(ws),
        Close::After(Some(code)) => {
            // Echo the code (RFC 6455 §5.5.1); 1005 may not be sent.
            let echo = if code == NO_STATUS { NORMAL } else { code };
            if ws.send_close(echo).await.is_ok() {
                ws.finish(LINGER).await;
            }
        }
    }
}
