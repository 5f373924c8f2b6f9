//! The state both relay connections share: the Redis client, the link's
//! up/down flags, and logging each change of state once.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;

use crate::stats::Stats;

/// What both relay tasks share.
#[derive(Debug)]
pub(super) struct Link {
    pub(super) client: redis::Client,
    pub(super) channel: String,
    pub(super) url: String,
    pub(super) stats: Arc<Stats>,
    /// Bytes of envelopes in the channel or in the pipeline being sent.
    pub(super) queued: AtomicUsize,
    /// Serialises link-state changes so that each is logged once.
    pub(super) state: Mutex<LinkLog>,
    /// Signalled when the subscription fails: the publishing connection
    /// pings at once. Without traffic it would notice a dead socket only at
    /// its next ping, and could report the link restored in between.
    pub(super) check_out: tokio::sync::Notify,
    /// The history's limits, when it is on.
    pub(super) history: Option<crate::history::Limits>,
    /// Channels a connection is about to join, waiting for this node to
    /// follow them ([`super::Relay::follow`]), with how many wait.
    pub(super) pending: Mutex<std::collections::HashMap<Arc<str>, usize>>,
    /// Signalled when `pending` changes.
    pub(super) wake: tokio::sync::Notify,
    /// The channels this node follows now: subscribed to and, with
    /// history, caught up from their stream (see [`super::Relay::follow`]).
    pub(super) followed: Mutex<std::collections::HashSet<Arc<str>>>,
    /// Signalled when channels are added to `followed`.
    pub(super) newly_followed: tokio::sync::Notify,
    /// With history: the fan-out credit this node's clients reserved for
    /// their messages still on their way through Redis, per channel, in the
    /// order they were offered. Each is used for the message's delivery
    /// when it comes back (so a fast sender is paced by its local
    /// recipients, as without Redis), or given back.
    pub(super) credit:
        Mutex<std::collections::HashMap<Arc<str>, std::collections::VecDeque<Vec<u32>>>>,
    pub(super) fanout: crate::fanout::Fanout,
    /// The server's runtime (connections on shard threads read streams
    /// through it) and the connection they read with, made when first
    /// needed.
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) reader: Mutex<Option<redis::aio::MultiplexedConnection>>,
}

#[derive(Debug, Default)]
pub(super) struct LinkLog {
    /// The link has been fully up at least once.
    ever_up: bool,
    /// A "link lost" line was logged and no "restored" line since.
    lost_logged: bool,
}

/// Which connection changed state.
#[derive(Debug, Clone, Copy)]
pub(super) enum Side {
    Out,
    In,
}

impl Link {
    /// The Redis channel of our channel `name`: `--redis-channel`, a colon,
    /// the name.
    pub(super) fn topic(&self, name: &str) -> String {
        format!("{}:{name}", self.channel)
    }

    /// The Redis keys of our channel `name`'s history: its position hash
    /// (`epoch`, `offset`) and its stream.
    pub(super) fn keys(&self, name: &str) -> (String, String) {
        (
            format!("{}:position:{name}", self.channel),
            format!("{}:stream:{name}", self.channel),
        )
    }

    /// Holds `costs` for the next own message of `channel` to come back.
    pub(super) fn hold_credit(&self, channel: &str, costs: &[u32]) {
        let mut credit = self.credit.lock().unwrap_or_else(|e| e.into_inner());
        match credit.get_mut(channel) {
            Some(queue) => queue.push_back(costs.to_vec()),
            None => {
                credit.insert(channel.into(), [costs.to_vec()].into());
            }
        }
    }

    /// The credit held for the oldest own message of `channel`.
    pub(super) fn take_credit(&self, channel: &str) -> Option<Vec<u32>> {
        let mut credit = self.credit.lock().unwrap_or_else(|e| e.into_inner());
        let queue = credit.get_mut(channel)?;
        let costs = queue.pop_front();
        if queue.is_empty() {
            credit.remove(channel);
        }
        costs
    }

    /// Gives back the credit held for `channel` (`None`: every channel):
    /// those messages will not come back (unsubscribed, or a connection
    /// failed). One that still does is delivered with credit of its own.
    pub(super) fn release_credit(&self, channel: Option<&str>) {
        let released: Vec<Vec<u32>> = {
            let mut credit = self.credit.lock().unwrap_or_else(|e| e.into_inner());
            match channel {
                Some(name) => credit.remove(name).map(Vec::from).unwrap_or_default(),
                None => credit.drain().flat_map(|(_, q)| q).collect(),
            }
        };
        for costs in released {
            self.fanout.give_back(&costs);
        }
    }

    fn flag(&self, side: Side) -> &AtomicBool {
        match side {
            Side::Out => &self.stats.cluster.out_up,
            Side::In => &self.stats.cluster.in_up,
        }
    }

    /// Records that `side` is up; logs once when the whole link is.
    pub(super) fn up(&self, side: Side) {
        let mut log = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.flag(side).store(true, Ordering::Relaxed);
        if !self.stats.cluster.link_up() {
            return;
        }
        if !log.ever_up {
            log.ever_up = true;
            tracing::info!(url = %self.url, channel = %self.channel, "cluster: connected to Redis");
        } else if log.lost_logged {
            log.lost_logged = false;
            tracing::warn!(url = %self.url, "cluster: Redis link restored; relaying again");
        }
    }

    /// Records that `side` failed; logs once per outage (further failures,
    /// including every reconnect attempt, only at debug level).
    pub(super) fn down(&self, side: Side, cause: &dyn fmt::Display) {
        let mut log = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.flag(side).store(false, Ordering::Relaxed);
        if matches!(side, Side::In) {
            self.check_out.notify_one();
        }
        if log.ever_up && !log.lost_logged {
            log.lost_logged = true;
            tracing::error!(url = %self.url, cause = %cause,
                "cluster: Redis link lost; serving local clients only, reconnecting");
        } else {
            tracing::debug!(?side, cause = %cause, "cluster: Redis connection failed");
        }
    }
}
