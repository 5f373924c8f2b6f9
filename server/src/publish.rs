//! Where a message a client sent goes: through the fan-out credit to every
//! local shard and, with `--redis`, to the relay for the other nodes.
//!
//! One [`Publisher`] per shard, handed to that shard's connections inside
//! their context: a connection publishes without knowing about shards,
//! registries or the cluster.

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::channels::Channel;
use crate::cluster::Relay;
use crate::fanout::{Broadcast, Fanout};
use crate::stats::Stats;

/// A shard's publishing handle (shard-local: `Cell`, no lock).
#[derive(Debug)]
pub(crate) struct Publisher {
    fanout: Fanout,
    stats: Arc<Stats>,
    relay: Option<Relay>,
    /// Set when shutdown starts: messages read after it are discarded.
    draining: Cell<bool>,
}

impl Publisher {
    pub(crate) fn new(fanout: Fanout, stats: Arc<Stats>, relay: Option<Relay>) -> Self {
        Self {
            fanout,
            stats,
            relay,
            draining: Cell::new(false),
        }
    }

    /// This node's shards (to ask them who is in a channel, see `roster`).
    pub(crate) fn shards(&self) -> Vec<Arc<crate::fanout::ShardHandle>> {
        self.fanout.shards()
    }

    /// Stops publishing (shutdown).
    pub(crate) fn drain(&self) {
        self.draining.set(true);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Reserves the fan-out credit of a message of `frame_len` bytes to
    /// `channel` (see [`Fanout::reserve`]); returns how long it waited.
    pub(crate) async fn reserve(
        &self,
        channel: &Channel,
        frame_len: usize,
        costs: &mut Vec<u32>,
    ) -> Duration {
        self.fanout.reserve(channel, frame_len, costs).await
    }

    /// Returns credit reserved for a message that is not published after all.
    pub(crate) fn give_back(&self, costs: &[u32]) {
        self.fanout.give_back(costs);
    }

    /// Publishes a message to `channel` (from the client named `name`) on
    /// every shard with members of it, and to the other nodes with
    /// `--redis`; `costs` is the credit reserved for it. While draining, the
    /// message is discarded.
    pub(crate) fn publish(&self, msg: Broadcast, channel: &Channel, name: &str, costs: &[u32]) {
        if self.draining.get() {
            self.fanout.give_back(costs);
            return;
        }
        self.stats.messages_in.fetch_add(1, Ordering::Relaxed);
        if let Some(relay) = &self.relay {
            relay.offer(&msg, &channel.name, name);
        }
        self.fanout.publish(msg, costs);
    }

    /// A message to a channel with no member on this node: only the other
    /// nodes may have some (`--redis`).
    pub(crate) fn relay_only(&self, msg: &Broadcast, channel: &str, name: &str) {
        if self.draining.get() {
            return;
        }
        self.stats.messages_in.fetch_add(1, Ordering::Relaxed);
        if let Some(relay) = &self.relay {
            relay.offer(msg, channel, name);
        }
    }
}
