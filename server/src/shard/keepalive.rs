//! Keeping a shard's connections honest: pings for the silent, closes for
//! the gone (`--idle-timeout`), and the shutdown closes, at once or paced
//! (`--drain-period`).

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use protocol::CloseReason;

use tokio::sync::oneshot;

use super::Shard;
use crate::config::CLOSE_TIMEOUT;
use crate::conn::Conn;

/// The slowest a paced drain closes clients, per shard: a node with few
/// clients does not wait out the whole period for nothing, and this many
/// reconnections a second are nothing for the nodes that take them.
const DRAIN_MIN_RATE: u32 = 20;

/// How long a client closed by a paced drain has to take its close frame
/// and answer it (at most `--shutdown-timeout`), before its connection is
/// dropped. Short, so that the drain ends within about its period plus
/// this: a client that moves to another node at once without answering
/// (tungstenite sends its reply only on its next read or write) would
/// otherwise hold the node for the whole shutdown timeout after the last
/// close (measured: `--drain-period 4` ended after 9 s). It loses nothing
/// by it: whatever it did not take, it resumes from history.
const DRAIN_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

impl Shard {
    /// Pings connections silent for half the idle timeout and closes those
    /// silent for all of it.
    pub(super) async fn keepalive(self: Rc<Self>) {
        let idle = self.config.idle_timeout;
        if idle.is_zero() {
            return;
        }
        let period = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let mut expired = Vec::new();
            let registry = self.membership.registry();
            for conn in registry.all() {
                if !conn.is_open() {
                    continue;
                }
                let (silent, pinged) = conn.silence(now);
                if silent >= idle {
                    expired.push(conn.clone());
                } else if silent >= idle / 2 && !pinged {
                    conn.queue_ping();
                }
            }
            drop(registry);
            for conn in expired {
                self.hub.stats.idle_closes.fetch_add(1, Ordering::Relaxed);
                conn.close_with(CloseReason::IDLE_TIMEOUT, false, CLOSE_TIMEOUT);
            }
        }
    }

    /// Closes `conn` with 1001 after its queued data (counted if it was
    /// open), giving it the shutdown timeout to answer.
    pub(super) fn close_for_shutdown(&self, conn: &Rc<Conn>) {
        if conn.is_open() {
            self.hub
                .stats
                .shutdown_closes
                .fetch_add(1, Ordering::Relaxed);
        }
        conn.close_with(
            CloseReason::SHUTTING_DOWN,
            false,
            self.config.shutdown_timeout,
        );
    }

    /// A paced drain: closes this shard's clients with 1012 (after their
    /// queued data) one at a time in random order, spread evenly over
    /// `period` with jitter, but at least [`DRAIN_MIN_RATE`] a second; the
    /// others are served as usual meanwhile. Each has
    /// [`DRAIN_CLOSE_TIMEOUT`] to answer. Answers `done` once all have gone,
    /// or that timeout after the last close.
    pub(super) async fn drain_clients(self: Rc<Self>, period: Duration, done: oneshot::Sender<()>) {
        let mut conns: Vec<Rc<Conn>> = self.membership.registry().all().cloned().collect();
        fastrand::shuffle(&mut conns);
        let n = u32::try_from(conns.len()).unwrap_or(u32::MAX).max(1);
        let step = (period / n).min(Duration::from_secs(1) / DRAIN_MIN_RATE);
        let answer = DRAIN_CLOSE_TIMEOUT.min(self.config.shutdown_timeout);
        let mut slot = tokio::time::Instant::now();
        for conn in conns {
            tokio::time::sleep_until(slot + step.mul_f64(fastrand::f64())).await;
            slot += step;
            if conn.is_open() {
                self.hub
                    .stats
                    .shutdown_closes
                    .fetch_add(1, Ordering::Relaxed);
                conn.close_with(CloseReason::RESTARTING, false, answer);
            }
        }
        self.wait_all_gone(answer).await;
        let _ = done.send(());
    }

    /// Waits until this shard has no connection left, at most `limit`;
    /// false if some are still there.
    async fn wait_all_gone(&self, limit: Duration) -> bool {
        let all_gone = async {
            loop {
                let departed = self.departed.notified();
                if self.membership.registry().len() == 0 {
                    return;
                }
                departed.await;
            }
        };
        tokio::time::timeout(limit, all_gone).await.is_ok()
    }

    /// Shutdown: everything queued before it has been handed to the sockets;
    /// now send 1001 to everyone after their queued data and wait for the
    /// closes, up to the shutdown timeout.
    pub(super) async fn close_all(&self) {
        self.ctx.publisher.drain();
        let conns: Vec<Rc<Conn>> = self.membership.registry().all().cloned().collect();
        for conn in &conns {
            self.close_for_shutdown(conn);
        }
        drop(conns);
        if !self.wait_all_gone(self.config.shutdown_timeout).await {
            tracing::warn!(
                shard = self.index,
                remaining = self.membership.registry().len(),
                "shutdown timeout: dropping connections that did not close"
            );
        }
    }
}
