//! Keeping a shard's connections honest: pings for the silent, closes for
//! the gone (`--idle-timeout`), and the shutdown closes.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use protocol::CloseReason;

use super::Shard;
use crate::config::CLOSE_TIMEOUT;
use crate::conn::Conn;

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
        let deadline = tokio::time::Instant::now() + self.config.shutdown_timeout;
        let all_gone = async {
            loop {
                let departed = self.departed.notified();
                if self.membership.registry().len() == 0 {
                    return;
                }
                departed.await;
            }
        };
        if tokio::time::timeout_at(deadline, all_gone).await.is_err() {
            tracing::warn!(
                shard = self.index,
                remaining = self.membership.registry().len(),
                "shutdown timeout: dropping connections that did not close"
            );
        }
    }
}
