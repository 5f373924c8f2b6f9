//! Phase 2: connecting the publishers, starting them together, and each
//! publisher's send loop (a rate schedule, `--max-rate` windows, or a flood)
//! with the side task that reads what the server broadcasts to it. With
//! `--api` a publisher posts each message to the HTTP API instead (one
//! request at a time, stamped when it is written) and has nothing to read.
//!
//! Why one file of this size: the three kinds of publisher (paced, flooding,
//! `--max-rate` windowed) share their connection, stamping and accounting
//! code here; the HTTP API publisher is in `api.rs`.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::{Bytes, BytesMut};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::shared::{move_to, moves_on, Ending, Runtimes, Shared, Targets};
use crate::api::{ApiConn, PublishError};
use crate::cli::Args;
use crate::conn::{publisher_config, Target, Ws};
use crate::payload::{self, Header};
use crate::rawws::Deflate;
use crate::report::Shortfall;
use crate::v1::{self as v1, V1Counts};

/// Most messages a publisher writes before one flush.
const MAX_BATCH: u64 = 256;
/// tokio's timer resolution: a send due this close to the end of
/// `--duration` shares its timer tick with the deadline, which wins.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// A publisher's connection: WebSocket, or `--api` (and the channel it
/// posts to).
enum Link {
    Ws(Box<Ws>),
    Api { conn: Box<ApiConn>, channel: String },
}

/// The publishers once connected (phase 2 before the start).
pub(super) struct Publishers {
    /// By publisher index; None: it failed to connect.
    links: Vec<Option<Link>>,
    /// By publisher index: its target on every URL and the one it is on
    /// (where it moves, see [`Mover`]).
    rings: Vec<(Vec<Arc<Target>>, usize)>,
    connect_timeout: Duration,
    size: usize,
    failed: Vec<usize>,
    /// When each of `failed` failed.
    failed_at: Vec<Instant>,
    first_connect_error: Option<String>,
}

/// Connects every publisher (paced, then flooders), each on the runtime
/// that will drive it, and waits for all of them.
pub(super) async fn connect(
    args: &Args,
    targets: &Targets,
    shared: &Shared,
    rts: &Runtimes,
) -> Result<Publishers> {
    let clients = args.clients as usize;
    let pub_cfg = publisher_config(args.size as usize);
    let mut pending = Vec::with_capacity(shared.publishers);
    for p in 0..shared.publishers {
        let mut target = targets.of(p);
        // `--compression`: a publisher that shares its channel would be
        // sent the others' messages compressed, which tokio-tungstenite
        // cannot read: it does not offer the extension.
        let mates =
            (0..shared.publishers).filter(|&q| shared.channel_of(q) == shared.channel_of(p));
        if target.deflate != Deflate::Off && mates.count() > 1 {
            target = Arc::new((*target).clone().with_deflate(Deflate::Off));
        }
        let (api, timeout, n) = (targets.api.clone(), args.connect_timeout, clients + p);
        pending.push(rts.of_publisher(p, shared.paced).spawn(async move {
            let link = async {
                match api {
                    // The channel its WebSocket URL names (validated with the flags).
                    Some(api) => Ok(Link::Api {
                        channel: target.channel()?,
                        conn: Box::new(api.connect(n, timeout).await?),
                    }),
                    None => target
                        .connect(n, pub_cfg, timeout, None)
                        .await
                        .map(|ws| Link::Ws(Box::new(ws))),
                }
            };
            (link.await, Instant::now())
        }));
    }
    let mut out = Publishers {
        links: Vec::with_capacity(shared.publishers),
        rings: (0..shared.publishers).map(|p| targets.ring(p)).collect(),
        connect_timeout: args.connect_timeout,
        size: args.size as usize,
        failed: Vec::new(),
        failed_at: Vec::new(),
        first_connect_error: None,
    };
    for (p, c) in pending.into_iter().enumerate() {
        match c.await? {
            (Ok(link), _) => out.links.push(Some(link)),
            (Err(e), at) => {
                out.failed.push(p);
                out.failed_at.push(at);
                out.first_connect_error
                    .get_or_insert_with(|| format!("publisher: {e:#}"));
                out.links.push(None);
            }
        }
    }
    Ok(out)
}

/// What the publishers flushed, once they all stopped sending.
pub(super) struct Sent {
    /// Messages flushed, by publisher index (0 for one that failed to connect).
    pub(super) by: Vec<u64>,
    /// Rate mode: messages the schedules owed.
    pub(super) scheduled: u64,
    /// Rate mode: why `scheduled` exceeds what was published.
    pub(super) shortfall: Shortfall,
    /// Messages flushed in each second since the start, all publishers.
    pub(super) per_second: Vec<u64>,
    /// When each publisher that stopped on a send error stopped.
    pub(super) errors_at: Vec<Instant>,
    /// Publishers that stopped on a send error (or a write blocked past
    /// `--drain`, or, with `--api`, an answer other than 200).
    pub(super) send_errors: u64,
    /// `--api`: the statuses other than 200 that stopped publishers.
    pub(super) api_errors: BTreeMap<u16, u64>,
    /// `--api`: the first failed request's error, when it had no answer.
    pub(super) first_error: Option<String>,
}

impl Sent {
    pub(super) fn total(&self) -> u64 {
        self.by.iter().sum()
    }
}

/// The publishers while they run.
pub(super) struct Publishing {
    /// When they start sending, and when they stop.
    pub(super) start: Instant,
    pub(super) deadline: Instant,
    /// Indices of the publishers that failed to connect, and when.
    pub(super) failed: Vec<usize>,
    pub(super) failed_at: Vec<Instant>,
    /// The first publisher's connect error.
    pub(super) first_connect_error: Option<String>,
    tasks: Vec<JoinHandle<Ending>>,
    counts: Vec<(usize, oneshot::Receiver<PubStats>)>,
}

impl Publishers {
    /// Starts every connected publisher together, 5 ms from now, to send for
    /// `--duration` (flushes blocked longer than `--drain` past it fail).
    pub(super) fn start(self, args: &Args, shared: &Arc<Shared>, rts: &Runtimes) -> Publishing {
        let paced = shared.paced;
        let start = Instant::now() + Duration::from_millis(5);
        let deadline = start + args.duration;
        shared.start_ns.store(shared.ns(start), Relaxed);
        shared.publishing.send_replace(Some((start, deadline)));
        let per_pub_rate = args.rate / paced.max(1) as f64;
        let times = Times {
            start,
            deadline,
            give_up: deadline + args.drain,
        };
        let mut tasks = Vec::with_capacity(self.links.len());
        let mut counts = Vec::with_capacity(self.links.len());
        let mut rings = self.rings.into_iter();
        for (p, link) in self.links.into_iter().enumerate() {
            let ring = rings.next();
            let Some(link) = link else { continue };
            // Only WebSocket publishers move (`--api` posts to one URL).
            let mover = match (shared.follow, ring, &link) {
                (Some(jitter), Some((ring, url)), Link::Ws(_)) => Some(Mover {
                    ring,
                    url,
                    n: args.clients as usize + p,
                    config: publisher_config(self.size),
                    timeout: self.connect_timeout,
                    jitter,
                }),
                _ => None,
            };
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
            let (tx, rx) = oneshot::channel();
            let size = args.size as usize;
            let task = publisher(
                (link, mover),
                p,
                shared.clone(),
                plan,
                size,
                times,
                rts.readers.clone(),
                tx,
            );
            tasks.push(rts.of_publisher(p, paced).spawn(task));
            counts.push((p, rx));
        }
        Publishing {
            start,
            deadline,
            failed: self.failed,
            failed_at: self.failed_at,
            first_connect_error: self.first_connect_error,
            tasks,
            counts,
        }
    }
}

impl Publishing {
    /// Waits until every publisher stopped sending; what they flushed.
    pub(super) async fn sent(&mut self, publishers: usize) -> Result<Sent> {
        let mut sent = Sent {
            by: vec![0; publishers],
            scheduled: 0,
            shortfall: Shortfall::default(),
            per_second: Vec::new(),
            errors_at: Vec::new(),
            send_errors: 0,
            api_errors: BTreeMap::new(),
            first_error: None,
        };
        for (p, rx) in self.counts.drain(..) {
            let st = rx.await?;
            sent.by[p] = st.sent;
            sent.scheduled += st.scheduled;
            sent.shortfall.add(&st.shortfall);
            if st.per_second.len() > sent.per_second.len() {
                sent.per_second.resize(st.per_second.len(), 0);
            }
            for (t, n) in sent.per_second.iter_mut().zip(&st.per_second) {
                *t += n;
            }
            sent.errors_at.extend(st.stopped_at);
            sent.send_errors += u64::from(st.send_error);
            if let Some(status) = st.status {
                *sent.api_errors.entry(status).or_default() += 1;
            }
            if sent.first_error.is_none() {
                sent.first_error = st.error;
            }
        }
        Ok(sent)
    }

    /// After [`Shared::stop`]: waits until every publisher closed; how
    /// their connections ended.
    pub(super) async fn endings(&mut self) -> Result<Vec<Ending>> {
        let mut out = Vec::with_capacity(self.tasks.len());
        for t in self.tasks.drain(..) {
            out.push(t.await?);
        }
        Ok(out)
    }
}

/// What a publisher reports when it stops sending (before it closes).
struct PubStats {
    sent: u64,
    scheduled: u64,
    /// Rate mode: why `scheduled - sent` were not sent.
    shortfall: Shortfall,
    /// Messages flushed in each second since the start.
    per_second: Vec<u64>,
    /// When a send error stopped it.
    stopped_at: Option<Instant>,
    send_error: bool,
    /// `--api`: the status other than 200 that stopped it.
    status: Option<u16>,
    /// `--api`: why a request got no answer.
    error: Option<String>,
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
/// publishers' messages; `--api`: nothing to read). Reports its counts on
/// `counts` when it stops sending, then closes once the run stops.
#[allow(clippy::too_many_arguments)]
async fn publisher(
    (link, mover): (Link, Option<Mover>),
    id: usize,
    shared: Arc<Shared>,
    plan: Plan,
    size: usize,
    times: Times,
    readers: Handle,
    counts: oneshot::Sender<PubStats>,
) -> Ending {
    let mut out = match link {
        Link::Ws(ws) => Out::Ws(Box::new(WsOut::new(*ws, &readers, shared.v1, mover))),
        Link::Api { conn, channel } => Out::Api { conn, channel },
    };
    // One request at a time: each message is stamped when it is written,
    // not once per batch (a batch of requests takes many round trips).
    let per_message = matches!(out, Out::Api { .. });
    let write_ns = |batch_ns: u64| {
        if per_message {
            shared.ns(Instant::now())
        } else {
            batch_ns
        }
    };
    let mut framer = Framer::new(id, size, shared.body);
    let mut next_msg = |seq: u64, sent_ns: u64, delay_us: u32| framer.next(seq, sent_ns, delay_us);
    let live = &shared.published[id];
    let mut seq = 0u64;
    let mut scheduled = 0u64;
    let mut shortfall = Shortfall::default();
    let mut per_second = PerSecond::new(times.start);
    let mut stopped: Option<Stop> = None;
    let Times {
        start,
        deadline,
        give_up,
    } = times;
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
                let batch_ns = shared.ns(Instant::now());
                let batch = (seq..end).map(|s| {
                    let stamp = shared.ns(due_at(s));
                    let delay = u32::try_from(write_ns(batch_ns).saturating_sub(stamp) / 1000)
                        .unwrap_or(u32::MAX);
                    next_msg(s, stamp, delay)
                });
                if let Err(stop) = out.send_all(batch, give_up).await {
                    seq += stop.published;
                    per_second.count(stop.published);
                    stopped = Some(stop);
                    break;
                }
                per_second.count(end - seq);
                seq = end;
                live.unique.store(seq, Relaxed);
            }
            shortfall = self::shortfall(seq, total, stopped.is_some(), |s| {
                due_at(s) + TIMER_TICK >= deadline
            });
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
                if let Err(stop) = out.send_all(batch, give_up).await {
                    seq += stop.published;
                    per_second.count(stop.published);
                    stopped = Some(stop);
                    break;
                }
                per_second.count(n);
                seq += n;
                live.unique.store(seq, Relaxed);
            }
        }
        Plan::Flood => {
            sleep_until(start).await;
            // No select on the deadline: a batch blocked by push-back is
            // finished (or abandoned at `give_up`), never half-counted.
            // API requests go one by one, so that the last ends near the deadline.
            let batch_len = if per_message { 1 } else { MAX_BATCH };
            while Instant::now() < deadline {
                let batch_ns = shared.ns(Instant::now());
                let batch = (seq..seq + batch_len).map(|s| next_msg(s, write_ns(batch_ns), 0));
                if let Err(stop) = out.send_all(batch, give_up).await {
                    seq += stop.published;
                    per_second.count(stop.published);
                    stopped = Some(stop);
                    break;
                }
                per_second.count(batch_len);
                seq += batch_len;
                live.unique.store(seq, Relaxed);
            }
        }
    }
    live.unique.store(seq, Relaxed);
    // WebSocket: messages written but not flushed on error are not counted
    // (`seq` only advances after a successful flush). API: those answered
    // 200 before the failure are.
    let _ = counts.send(PubStats {
        sent: seq,
        scheduled,
        shortfall,
        per_second: per_second.counts,
        stopped_at: stopped.is_some().then(Instant::now),
        send_error: stopped.is_some(),
        status: stopped.as_ref().and_then(|s| s.status),
        error: stopped.and_then(|s| s.error),
    });

    // Close once the subscribers are told to stop.
    shared.stopped().await;
    let Out::Ws(ws) = out else {
        // An API connection just closes.
        return Ending::default();
    };
    ws.close().await
}

/// Rate mode: the messages `sent..total` of a schedule not sent, after a
/// send error (`failed`) or at the deadline; `in_last_tick(s)`: message
/// `s` was due within the last timer tick (true from some `s` on).
fn shortfall(sent: u64, total: u64, failed: bool, in_last_tick: impl Fn(u64) -> bool) -> Shortfall {
    let unsent = total.saturating_sub(sent);
    if failed {
        return Shortfall {
            after_error: unsent,
            ..Shortfall::default()
        };
    }
    let last_tick = (sent..total).rev().take_while(|&s| in_last_tick(s)).count() as u64;
    Shortfall {
        last_tick,
        behind: unsent - last_tick,
        after_error: 0,
    }
}

/// Messages a publisher flushed, by the second (since the start) in which
/// each flush completed.
struct PerSecond {
    start: Instant,
    counts: Vec<u64>,
}

impl PerSecond {
    fn new(start: Instant) -> Self {
        Self {
            start,
            counts: Vec::new(),
        }
    }

    fn count(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        let sec = Instant::now()
            .saturating_duration_since(self.start)
            .as_secs() as usize;
        if sec >= self.counts.len() {
            self.counts.resize(sec + 1, 0);
        }
        self.counts[sec] += n;
    }
}

/// Where a publisher writes: its WebSocket, or the API.
enum Out {
    Ws(Box<WsOut>),
    Api { conn: Box<ApiConn>, channel: String },
}

/// A publisher's WebSocket: the sending half, the task reading the other
/// half, and where it moves when the server closes it with 1012 or 1001.
struct WsOut {
    sink: SplitSink<Ws, Message>,
    /// Tells the reader we sent our Close (read until the answer).
    done: watch::Sender<bool>,
    reader: JoinHandle<Ending>,
    /// How the last connection ended, once the reader's result was taken.
    ended: Option<Ending>,
    readers: Handle,
    v1: bool,
    mover: Option<Mover>,
    moves: u64,
    move_error: Option<String>,
    /// What the readers of the connections it moved away from counted.
    earlier: V1Counts,
}

/// Where a publisher's connection moves (several `--url`s): its target
/// on every URL, the one it is on, and how it connects.
struct Mover {
    ring: Vec<Arc<Target>>,
    url: usize,
    /// Its connection number (for the source address).
    n: usize,
    config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
    timeout: Duration,
    /// `--move-jitter`.
    jitter: Duration,
}

/// Longest a publisher waits for its reader to tell how the server
/// closed the connection, after a failed send.
const CLOSE_SEEN: Duration = Duration::from_secs(2);

impl WsOut {
    fn new(ws: Ws, readers: &Handle, v1: bool, mover: Option<Mover>) -> Self {
        let (done, done_rx) = watch::channel(false);
        let (sink, stream) = ws.split();
        Self {
            sink,
            done,
            reader: readers.spawn(read_broadcasts(stream, done_rx, v1)),
            ended: None,
            readers: readers.clone(),
            v1,
            mover,
            moves: 0,
            move_error: None,
            earlier: V1Counts::default(),
        }
    }

    /// Sends `batch` (see [`send_all`]); when the server closed the
    /// connection with 1012 or 1001 meanwhile, moves to the next URL and
    /// sends there what the old one did not take.
    async fn send(&mut self, batch: &[Bytes], give_up: Instant) -> Result<(), ()> {
        let mut from = 0;
        loop {
            match send_all(&mut self.sink, batch[from..].iter().cloned(), give_up).await {
                Ok(()) => return Ok(()),
                // The last one fed waited in the split sink's slot: it is
                // the one tungstenite refused (see `send_all`).
                Err(fed) => from += fed.saturating_sub(1),
            }
            if !self.try_move(give_up).await {
                return Err(());
            }
        }
    }

    /// After a failed send: if the reader saw a 1012 or 1001 close, a
    /// random pause of up to `--move-jitter`, then a connection to the next
    /// URL that takes it (see [`move_to`]). False: no move.
    async fn try_move(&mut self, give_up: Instant) -> bool {
        if self.mover.is_none() || self.ended.is_some() {
            return false;
        }
        let ending = match tokio::time::timeout(CLOSE_SEEN, &mut self.reader).await {
            Ok(Ok(ending)) => ending,
            Ok(Err(_)) => Ending::default(),
            Err(_) => return false,
        };
        if !moves_on(ending.server_close) {
            self.ended = Some(ending);
            return false;
        }
        // Our answer to the close, queued by tungstenite when the reader
        // read it, goes out behind what was queued before.
        let _ = self.sink.flush().await;
        let Some(m) = &mut self.mover else {
            return false;
        };
        tokio::time::sleep(m.jitter.mul_f64(fastrand::f64())).await;
        let (n, config, timeout) = (m.n, m.config, m.timeout);
        let deadline = (Instant::now() + timeout).min(give_up);
        let moved = move_to(&m.ring, m.url, deadline, |target| async move {
            target.connect(n, config, timeout, None).await
        })
        .await;
        match moved {
            Ok((url, ws)) => {
                m.url = url;
                let earlier = std::mem::take(&mut self.earlier);
                let next = Self::new(ws, &self.readers, self.v1, self.mover.take());
                let moves = self.moves + 1;
                *self = Self {
                    moves,
                    earlier,
                    ..next
                };
                self.earlier.add(&ending.v1);
                true
            }
            Err(e) => {
                self.move_error = Some(e);
                self.ended = Some(ending);
                false
            }
        }
    }

    /// Closes (once the run stops) and returns how the connection ended,
    /// with its moves.
    async fn close(mut self) -> Ending {
        let mut ending = match self.ended.take() {
            Some(ending) => ending,
            None => {
                if !self.reader.is_finished() {
                    let _ = self.sink.send(normal_close()).await;
                    let _ = self.done.send(true);
                }
                (&mut self.reader).await.unwrap_or_default()
            }
        };
        ending.v1.add(&self.earlier);
        ending.moves = self.moves;
        ending.move_error = self.move_error;
        ending
    }
}

/// Why [`Out::send_all`] stopped before the end of its batch.
struct Stop {
    /// Messages of the batch that were published all the same (API: the
    /// ones answered 200 before the failure; WebSocket: none is counted).
    published: u64,
    /// `--api`: the status other than 200 that stopped it.
    status: Option<u16>,
    /// `--api`: why a request got no answer.
    error: Option<String>,
}

impl Out {
    /// Sends every payload of `batch`, failing when that is not done by
    /// `give_up` (the server stopped reading) or the server refuses one.
    async fn send_all(
        &mut self,
        batch: impl Iterator<Item = Bytes>,
        give_up: Instant,
    ) -> Result<(), Stop> {
        match self {
            Out::Ws(ws) => {
                let batch: Vec<Bytes> = batch.collect();
                ws.send(&batch, give_up).await.map_err(|()| Stop {
                    published: 0,
                    status: None,
                    error: None,
                })
            }
            Out::Api { conn, channel } => {
                let mut published = 0;
                for payload in batch {
                    let stop = |status, error| Stop {
                        published,
                        status,
                        error,
                    };
                    match tokio::time::timeout_at(give_up, conn.publish(channel, &payload)).await {
                        Ok(Ok(())) => published += 1,
                        Ok(Err(PublishError::Status(code))) => return Err(stop(Some(code), None)),
                        Ok(Err(PublishError::Io(e))) => {
                            return Err(stop(None, Some(format!("publisher: {e:#}"))))
                        }
                        Err(_) => {
                            let e = "publisher: no answer before the end of --drain";
                            return Err(stop(None, Some(e.into())));
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// A publisher's reader: drains what the server broadcasts to it until the
/// server closes, or (once `done`: we sent Close) until its Close reply.
async fn read_broadcasts(
    mut stream: futures_util::stream::SplitStream<Ws>,
    mut done_rx: watch::Receiver<bool>,
    v1_mode: bool,
) -> Ending {
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
                Some(Err(_)) | None => break Some(protocol::close::ABNORMAL),
            },
        }
    };
    Ending {
        server_close: close,
        closed_at: close.map(|_| Instant::now()),
        v1: counts,
        ..Ending::default()
    }
}

/// Builds one publisher's payloads: a template of `size` bytes with the
/// header rewritten per message, cut from a buffer reserved for a batch.
struct Framer {
    id: u32,
    size: usize,
    template: Vec<u8>,
    buf: BytesMut,
}

impl Framer {
    fn new(id: usize, size: usize, body: payload::Body) -> Self {
        let mut template = vec![0u8; size];
        payload::encode_body_into(
            &mut template,
            Header {
                publisher: id as u32,
                seq: 0,
                sent_ns: 0,
                delay_us: 0,
            },
            body,
        );
        Self {
            id: id as u32,
            size,
            template,
            buf: BytesMut::new(),
        }
    }

    fn next(&mut self, seq: u64, sent_ns: u64, delay_us: u32) -> Bytes {
        if self.buf.capacity() < self.size {
            self.buf.reserve(self.size * MAX_BATCH as usize);
        }
        self.buf.extend_from_slice(&self.template);
        payload::write_header(
            &mut self.buf,
            Header {
                publisher: self.id,
                seq,
                sent_ns,
                delay_us,
            },
        );
        self.buf.split().freeze()
    }
}

/// Queues every payload of `batch` as a binary message, then flushes once;
/// fails when that is not done by `give_up` (the server stopped reading),
/// with how many payloads were fed before the failure. All but the last
/// of those precede our answer to a close from the server on the wire
/// (tungstenite queues the answer behind them and refuses later ones), so
/// a server that takes messages until the answer (a drain's 1012) has
/// them; the last one waited in the [`SplitSink`]'s slot, and tungstenite
/// refused it when the sink passed it on.
async fn send_all<S>(
    sink: &mut S,
    batch: impl Iterator<Item = Bytes>,
    give_up: Instant,
) -> Result<(), usize>
where
    S: futures_util::Sink<Message> + Unpin,
{
    let mut fed = 0;
    let send = async {
        for payload in batch {
            sink.feed(Message::Binary(payload)).await?;
            fed += 1;
        }
        sink.flush().await
    };
    let sent = tokio::time::timeout_at(give_up, send).await;
    match sent {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(fed),
    }
}

/// Code of a received close frame.
fn close_code(frame: Option<&CloseFrame>) -> u16 {
    frame.map_or(protocol::close::NO_STATUS, |f| u16::from(f.code))
}

fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(protocol::close::NORMAL),
        reason: "".into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortfall_tells_the_last_tick_from_falling_behind() {
        // 100 scheduled, 1 per ms; the last 2 were due in the last tick.
        let last_tick = |s: u64| s >= 98;
        let on_time = shortfall(98, 100, false, last_tick);
        assert_eq!(
            (on_time.last_tick, on_time.behind, on_time.after_error),
            (2, 0, 0)
        );
        // Behind schedule: 40 more were due earlier.
        let behind = shortfall(58, 100, false, last_tick);
        assert_eq!((behind.last_tick, behind.behind), (2, 40));
        // Stopped by a send error: all of the rest.
        let failed = shortfall(58, 100, true, last_tick);
        assert_eq!(
            (failed.after_error, failed.last_tick, failed.behind),
            (42, 0, 0)
        );
        assert_eq!(shortfall(100, 100, false, last_tick), Shortfall::default());
        let mut sum = on_time;
        sum.add(&behind);
        sum.add(&failed);
        assert_eq!((sum.last_tick, sum.behind, sum.after_error), (4, 40, 42));
    }
}
