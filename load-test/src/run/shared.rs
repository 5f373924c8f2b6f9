//! What the run's phases and tasks share: where to connect, which runtime
//! drives what, and the [`Shared`] state every task updates while it runs.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::api::ApiTarget;
use crate::cli::Args;
use crate::conn::Target;
use crate::progress::{Phase, Snapshot};
use crate::v1::V1Counts;
use crate::window::Windows;

/// `--reconnect-every`: when subscribers drop and resume.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reconnect {
    pub(super) every: std::time::Duration,
    pub(super) outage: std::time::Duration,
    /// All at the same instants (`--reconnect-together`).
    pub(super) together: bool,
}

/// What one connection shares with the driver while it runs: written only by
/// its own task, read by the progress and drain loops (one cache line each).
#[repr(align(64))]
#[derive(Default)]
pub(super) struct Live {
    /// Subscriber: distinct messages received; publisher: messages flushed.
    pub(super) unique: AtomicU64,
    /// The subscriber stopped reading (failed, slow, or closed by the server).
    pub(super) ended: AtomicBool,
}

/// State shared by all tasks.
pub(super) struct Shared {
    pub(super) origin: Instant,
    /// All publishers: the paced ones are `0..paced`, the flooders after them.
    pub(super) publishers: usize,
    pub(super) paced: usize,
    /// Set once publishing and draining are over: every connection closes.
    pub(super) stop: watch::Sender<bool>,
    pub(super) connected: AtomicUsize,
    pub(super) failed: AtomicUsize,
    /// `--max-rate`: the publishers' in-flight windows.
    pub(super) window: Option<Windows>,
    pub(super) subs: Vec<Live>,
    pub(super) published: Vec<Live>,
    /// A [`Phase`] as u8, for the progress display.
    phase: AtomicU8,
    /// When publishing starts, ns since `origin` (the time series' second 0).
    pub(super) start_ns: AtomicU64,
    pub(super) abrupt_close: bool,
    /// Rate mode: payloads carry a send delay worth a second histogram.
    pub(super) rate_mode: bool,
    /// `--v1`: the server sends JSON events in text frames.
    pub(super) v1: bool,
    /// `--channels`: subscriber `i` and publisher `p` are in channels
    /// `i % channels` and `p % channels` (see [`Shared::channel_of`]).
    pub(super) channels: usize,
    /// `--reconnect-every`.
    pub(super) reconnect: Option<Reconnect>,
    /// Several `--url`s (and no `--no-move`): a connection the server
    /// closes with 1012 or 1001 moves to the next URL after a random pause
    /// of up to this long (`--move-jitter`).
    pub(super) follow: Option<std::time::Duration>,
    /// `--reconnect-every`: resumes whose outcome is known, over all
    /// subscribers.
    pub(super) resumes: AtomicUsize,
    /// When publishing starts and ends, once it is scheduled.
    pub(super) publishing: watch::Sender<Option<(Instant, Instant)>>,
    /// `--payload`: what follows each payload's header.
    pub(super) body: crate::payload::Body,
}

impl Shared {
    /// The state of a run of `args` with `clients` subscribers and `paced`
    /// plus `flooders` publishers.
    pub(super) fn new(args: &Args, clients: usize, paced: usize, flooders: usize) -> Self {
        let publishers = paced + flooders;
        Self {
            origin: Instant::now(),
            publishers,
            paced,
            stop: watch::channel(false).0,
            connected: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            window: (args.max_rate && paced > 0)
                .then(|| Windows::new(paced, args.window, args.channels as usize)),
            subs: (0..clients).map(|_| Live::default()).collect(),
            published: (0..publishers).map(|_| Live::default()).collect(),
            phase: AtomicU8::new(Phase::Connect as u8),
            start_ns: AtomicU64::new(0),
            abrupt_close: args.abrupt_close,
            rate_mode: !args.max_rate && paced > 0,
            v1: args.v1,
            channels: args.channels as usize,
            reconnect: args.reconnect_every.map(|every| Reconnect {
                every,
                outage: args.outage,
                together: args.reconnect_together,
            }),
            follow: (args.urls.len() > 1 && !args.no_move).then_some(args.move_jitter),
            publishing: watch::channel(None).0,
            resumes: AtomicUsize::new(0),
            body: args.payload,
        }
    }

    /// `--reconnect-every`: when subscriber `i` drops its connection for
    /// the `k`-th time (from 0), once publishing is scheduled; `None`: not
    /// at all (no reconnects, or that would be after publishing ends). The
    /// first drops are spread over the first period (all at its end with
    /// `--reconnect-together`).
    pub(super) async fn drop_due(&self, i: usize, k: u32) -> Option<Instant> {
        let plan = self.reconnect?;
        let mut rx = self.publishing.subscribe();
        let (start, end) = (*rx.wait_for(Option::is_some).await.ok()?)?;
        let first = if plan.together {
            plan.every
        } else {
            plan.every
                .mul_f64((i + 1) as f64 / self.subs.len().max(1) as f64)
        };
        let at = start + first + plan.every * k;
        (at < end).then_some(at)
    }

    /// The channel (0-based, `lt-K` with `--channels`) of subscriber `i`,
    /// or of publisher `i`.
    pub(super) fn channel_of(&self, i: usize) -> usize {
        i % self.channels
    }

    /// `t` in ns since `origin` (the clock payload stamps use).
    pub(super) fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_nanos() as u64
    }

    pub(super) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Relaxed);
    }

    /// Tells every connection to close.
    pub(super) fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Resolves once [`Shared::stop`] was called.
    pub(super) async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|&s| s).await;
    }

    /// Class index of publisher `p`: 0 paced, 1 flood.
    pub(super) fn class_of(&self, p: usize) -> usize {
        usize::from(p >= self.paced)
    }

    /// Classes of publishers in this run: paced, and flood if there are flooders.
    pub(super) fn classes(&self) -> usize {
        if self.publishers > self.paced {
            2
        } else {
            1
        }
    }

    /// What the progress display shows.
    pub(super) fn snapshot(&self) -> Snapshot {
        Snapshot {
            phase: Phase::from_u8(self.phase.load(Relaxed)),
            connected: self.connected.load(Relaxed) as u64,
            failed: self.failed.load(Relaxed) as u64,
            delivered: self.delivered(),
            published: self.published.iter().map(|l| l.unique.load(Relaxed)).sum(),
        }
    }

    /// Distinct messages the subscribers have received so far.
    pub(super) fn delivered(&self) -> u64 {
        self.subs.iter().map(|l| l.unique.load(Relaxed)).sum()
    }
}

/// The servers to connect to (several URLs: the nodes of a cluster);
/// connections round-robin over them, and over the channels.
pub(super) struct Targets {
    /// By URL, then by channel (one, the URL as given, without `--channels`).
    by_url: Vec<Vec<Arc<Target>>>,
    /// `--api`: where API publishers post.
    pub(super) api: Option<Arc<ApiTarget>>,
}

impl Targets {
    /// `by_url[u][k]`: URL `u` rewritten for channel `k`; every URL has
    /// the same number of channels.
    pub(super) fn new(by_url: Vec<Vec<Arc<Target>>>, api: Option<Arc<ApiTarget>>) -> Self {
        debug_assert!(by_url.iter().all(|c| c.len() == by_url[0].len()));
        Self { by_url, api }
    }

    /// Where connection `i` (subscriber `i`, or publisher `i`) goes: URL
    /// `i mod URLs`, channel `i mod channels`.
    pub(super) fn of(&self, i: usize) -> Arc<Target> {
        let channels = &self.by_url[i % self.by_url.len()];
        channels[i % channels.len()].clone()
    }

    /// Connection `i`'s target on every URL (its channel), and the index of
    /// the one [`Targets::of`] gives: where it can move.
    pub(super) fn ring(&self, i: usize) -> (Vec<Arc<Target>>, usize) {
        let ring = self.by_url.iter().map(|c| c[i % c.len()].clone()).collect();
        (ring, i % self.by_url.len())
    }
}

/// Close codes a connection moves on (`--url` given several times): the
/// server is restarting (1012, a drain) or going away (1001).
pub(super) fn moves_on(code: Option<u16>) -> bool {
    matches!(
        code,
        Some(protocol::close::SERVICE_RESTART | protocol::close::GOING_AWAY)
    )
}

/// A moving connection's next home: tries the URLs of `ring` after `from`
/// in turn (a node still draining turns it away, a restarting one is not
/// listening), pausing [`MOVE_RETRY`] after each, until `connect` succeeds
/// or `give_up`; the index it connected to, or the last error.
pub(super) async fn move_to<T, F, Fut>(
    ring: &[Arc<Target>],
    from: usize,
    give_up: Instant,
    mut connect: F,
) -> Result<(usize, T), String>
where
    F: FnMut(Arc<Target>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut at = from;
    loop {
        at = (at + 1) % ring.len();
        match connect(ring[at].clone()).await {
            Ok(conn) => return Ok((at, conn)),
            Err(e) if Instant::now() + MOVE_RETRY >= give_up => return Err(format!("{e:#}")),
            Err(_) => tokio::time::sleep(MOVE_RETRY).await,
        }
    }
}

/// Pause between two attempts of a moving connection.
const MOVE_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// The runtimes tasks are spawned on (see `run`).
#[derive(Clone)]
pub(super) struct Runtimes {
    /// Subscribers and every publisher's reader.
    pub(super) readers: Handle,
    /// Paced publishers.
    pub(super) publishers: Handle,
    /// Flood publishers.
    pub(super) flooders: Handle,
}

impl Runtimes {
    /// The runtime that drives publisher `p` (its connect and its sends).
    pub(super) fn of_publisher(&self, p: usize, paced: usize) -> &Handle {
        if p < paced {
            &self.publishers
        } else {
            &self.flooders
        }
    }
}

/// How a connection ended.
#[derive(Debug, Default)]
pub(super) struct Ending {
    /// The server closed (or dropped) it before we asked: the code, and
    /// when we saw it.
    pub(super) server_close: Option<u16>,
    pub(super) closed_at: Option<Instant>,
    /// `--v1`: the events other than messages it received.
    pub(super) v1: V1Counts,
    /// A publisher's moves to another URL (1012, 1001), and why the last
    /// one failed if it did.
    pub(super) moves: u64,
    pub(super) move_error: Option<String>,
}
