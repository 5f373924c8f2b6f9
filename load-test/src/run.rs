//! The run: connect subscribers, connect publishers, publish, drain, close,
//! and merge what every task measured into a [`Report`]. [`run`] is that
//! sequence; each phase lives in a module of its own (`subscribe`,
//! `publish`, `merge`; `observe` samples the server at the landmarks,
//! `shared` holds the state the tasks share).
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
//! With `--channels N`, subscriber `i` and publisher `p` use channels
//! `lt-{i mod N}` and `lt-{p mod N}` (the URL's path rewritten to
//! `/ws/lt-K`): the drain waits for each subscriber's own channel's
//! messages, `--max-rate` windows wait for the channel's readers, and the
//! report counts loss per channel. With `--api`, publishers post to the
//! HTTP API (`api`) instead of writing to a WebSocket; the payload, and so
//! the measurement, is the same.
//!
//! With `--server-pid`, the server is sampled before the first connection,
//! when all subscribers are connected (after `--settle`), when publishing and
//! draining are over (or, idle, after `--duration`), and `--after-close` after
//! the last connection closed. With `--metrics`, its /metrics page is scraped
//! at the second and third of these moments.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::runtime::Handle;
use tokio::time::{sleep, sleep_until, Instant};

use crate::api::ApiTarget;
use crate::cli::{channel_name, Args};
use crate::conn::{Target, TlsOptions};
use crate::procstat;
use crate::progress::{Phase, Progress};
use crate::report::{Report, StormReport};

mod merge;
mod observe;
mod publish;
mod shared;
mod subscribe;

use observe::Observer;
use shared::{Runtimes, Shared, Targets};

/// File descriptors kept free for the runtime, stdio, the JSON file, etc.
const FD_RESERVE: u64 = 64;

/// Runs the whole test, on the subscribers' runtime. Paced publishers
/// (connect, send, close) run on `publishers_rt`, a runtime of their own, so
/// that their schedule does not queue behind thousands of subscriber tasks;
/// flooders on `flooders_rt`, so that they do not delay that schedule either.
pub(crate) async fn run(args: Args, publishers_rt: Handle, flooders_rt: Handle) -> Result<Report> {
    let clients = args.clients as usize;
    let (paced, flooders) = (args.publisher_count(), args.flooder_count());
    ensure_fd_limit((clients + paced + flooders) as u64)?;
    if let Some(pid) = args.server_pid {
        procstat::check(pid)?;
    }
    let rts = Runtimes {
        readers: Handle::current(),
        publishers: publishers_rt,
        flooders: flooders_rt,
    };
    let targets = resolve(&args).await?;
    let shared = Arc::new(Shared::new(&args, clients, paced, flooders));
    let probe = shared.clone();
    let progress = Progress::start(move || probe.snapshot(), clients as u64, !args.no_progress);
    let mut observer = Observer::before(&args);

    // 1. Subscribers: connected (or failed), then settled.
    let subscribers = subscribe::connect(&args, &targets, &shared).await;
    sleep(args.settle).await;
    observer.connected().await;

    // 2. Publishers: connect all, then start together; wait until they
    //    stopped sending (idle: hold the connections for --duration).
    let storm = tokio::spawn(watch_storm(shared.clone(), args.server_pid));
    let publishers = publish::connect(&args, &targets, &shared, &rts).await?;
    shared.set_phase(Phase::Publish);
    let mut publishing = publishers.start(&args, &shared, &rts);
    let sent = publishing.sent(shared.publishers).await?;
    if args.is_idle() {
        sleep_until(publishing.deadline).await;
    }
    let publish_end = Instant::now();

    // 3. Drain.
    shared.set_phase(Phase::Drain);
    drain(&args, &shared, &sent.by, publish_end).await;
    let drain_used_s = publish_end.elapsed().as_secs_f64();
    observer.done().await;

    // 4. Close: every connection, publishers first.
    shared.set_phase(Phase::Close);
    shared.stop();
    let publisher_endings = publishing.endings().await?;

    // 5. Merge, once every subscriber closed.
    let finished = merge::Finished {
        subscribers,
        failed_publishers: publishing.failed,
        publisher_failed_at: publishing.failed_at,
        publisher_error: publishing.first_connect_error,
        sent,
        publisher_endings,
        start: publishing.start,
        publish_end,
        drain_used_s,
    };
    let mut report = merge::report(&args, &shared, finished).await?;
    observer.finish(&args, &mut report).await;
    storm.abort();
    if let (Some(r), Ok(s)) = (&mut report.resume, storm.await) {
        r.storm = s;
    }
    progress.finish();
    report.finish();
    Ok(report)
}

/// Longest a recovery storm is watched.
const STORM_MAX: Duration = Duration::from_secs(60);

/// `--reconnect-together` with `--server-pid`: the first wave, from its
/// planned reconnect until every subscriber that dropped had its replay,
/// with the server's CPU and peak RSS over that span.
async fn watch_storm(shared: Arc<Shared>, pid: Option<u32>) -> Option<StormReport> {
    let (plan, pid) = (shared.reconnect?, pid?);
    if !plan.together {
        return None;
    }
    let due = shared.drop_due(0, 0).await? + plan.outage;
    // The live subscribers drop at the wave; slow and failed ones do not.
    let wave = shared
        .subs
        .iter()
        .filter(|l| !l.ended.load(Relaxed))
        .count();
    sleep_until(due).await;
    let before = procstat::sample(procstat::Pid::Id(pid)).ok()?;
    let give_up = due + STORM_MAX;
    let mut complete = false;
    while Instant::now() < give_up {
        if shared.resumes.load(Relaxed) >= wave {
            complete = true;
            break;
        }
        sleep(Duration::from_millis(2)).await;
    }
    let all_recovered_s = due.elapsed().as_secs_f64();
    let after = procstat::sample(procstat::Pid::Id(pid)).ok()?;
    let server_cpu_s = after.cpu_s - before.cpu_s;
    let wall = (after.at - before.at).as_secs_f64().max(1e-9);
    Some(StormReport {
        subscribers: wave as u64,
        all_recovered_s,
        complete,
        server_cpu_s,
        server_cpu_pct: 100.0 * server_cpu_s / wall,
        server_rss_peak_kib: after.hwm_kib,
    })
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

/// Resolves every `--url` (with `--v1`, each connection offers the
/// subprotocol), once per channel with `--channels`, and `--api`.
async fn resolve(args: &Args) -> Result<Targets> {
    let tls = TlsOptions {
        ca: args.ca.clone(),
    };
    let mut targets = Vec::with_capacity(args.urls.len());
    for url in &args.urls {
        let target = Target::resolve(url, args.source_addrs, &tls)
            .await?
            .with_subprotocol(args.v1.then_some(protocol::v1::SUBPROTOCOL))
            .with_deflate(args.compression.deflate(args.v1));
        let by_channel = if args.channels == 1 {
            vec![Arc::new(target)]
        } else {
            (0..args.channels as usize)
                .map(|k| target.with_channel(&channel_name(k)).map(Arc::new))
                .collect::<Result<_>>()?
        };
        targets.push(by_channel);
    }
    let api = match (&args.api, &args.api_key) {
        (Some(url), Some(key)) => Some(Arc::new(
            ApiTarget::resolve(url, key, args.source_addrs, &tls).await?,
        )),
        _ => None,
    };
    Ok(Targets::new(targets, api))
}

/// Phase 3: waits until every live subscriber has all the messages
/// published to its channel (`sent_by` publisher), or `--drain` passed
/// since `publish_end`; with `--drain-quiet`, also stops once nothing has
/// arrived for that long (a server that lost messages would otherwise hold
/// the whole `--drain`).
async fn drain(args: &Args, shared: &Shared, sent_by: &[u64], publish_end: Instant) {
    let mut published = vec![0u64; shared.channels];
    for (p, n) in sent_by.iter().enumerate() {
        published[shared.channel_of(p)] += n;
    }
    let deadline = publish_end + args.drain;
    let (mut last_total, mut last_progress) = (u64::MAX, Instant::now());
    loop {
        let done = shared.subs.iter().enumerate().all(|(i, l)| {
            l.ended.load(Relaxed) || l.unique.load(Relaxed) >= published[shared.channel_of(i)]
        });
        let now = Instant::now();
        if done || now >= deadline {
            break;
        }
        if !args.drain_quiet.is_zero() {
            let total = shared.delivered();
            if total != last_total {
                (last_total, last_progress) = (total, now);
            } else if now - last_progress >= args.drain_quiet {
                break;
            }
        }
        sleep(Duration::from_millis(5)).await;
    }
}
