//! The channels of this process: each name a client joins is interned once
//! into a [`Channel`] that says how many members it has on each shard.
//!
//! The table is touched when a connection joins or leaves a channel, when
//! the HTTP API looks a channel up, and when a message arrives from another
//! node; it takes a lock then. Publishing a client's message never does: the
//! connection holds its channels' `Arc<Channel>`, and [`Channel::on_shard`]
//! is one relaxed atomic load per shard. That count is also what keeps a
//! message away from shards that have no member of its channel (they are
//! not woken, see `fanout`), and what the message's fan-out credit is
//! computed from on each shard.
//!
//! A channel lives while it has members: the last one to leave removes it
//! from the table. A connection that joins it again gets a new
//! [`ChannelId`], so a message still in flight for the old one reaches
//! nobody, as it would have before the join.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::history::{History, Log};
use crate::remote::RemoteMembers;
use crate::stats::Stats;

/// A channel's id: unique for the life of the process (never reused).
pub(crate) type ChannelId = u64;

/// One channel and where its members are.
#[derive(Debug)]
pub(crate) struct Channel {
    pub(crate) id: ChannelId,
    pub(crate) name: Arc<str>,
    /// Members per shard, by shard index (changed under the table's lock,
    /// read without it).
    members: Box<[AtomicU32]>,
    /// Its history (`None`: history is off). Outlives the channel: a
    /// channel created again under the same name gets the same log while
    /// it is kept.
    pub(crate) log: Option<Arc<Log>>,
}

impl Channel {
    /// This channel's members on shard `shard`.
    pub(crate) fn on_shard(&self, shard: usize) -> usize {
        self.members
            .get(shard)
            .map_or(0, |n| n.load(Ordering::Relaxed) as usize)
    }

    /// All its members on this node.
    pub(crate) fn members(&self) -> usize {
        self.members
            .iter()
            .map(|n| n.load(Ordering::Relaxed) as usize)
            .sum()
    }
}

/// The channel table.
#[derive(Debug)]
pub(crate) struct Channels {
    table: Mutex<HashMap<Arc<str>, Arc<Channel>>>,
    next_id: AtomicU64,
    shards: usize,
    stats: Arc<Stats>,
    /// The channels' history, when it is on.
    history: Option<Arc<History>>,
    /// Signalled when a channel is created or removed (the cluster link
    /// then changes its Redis subscriptions).
    changed: tokio::sync::Notify,
    /// The members of each channel on the other nodes (`--redis`; empty
    /// otherwise).
    pub(crate) remote: RemoteMembers,
}

impl Channels {
    /// An empty table for a server of `shards` shards.
    pub(crate) fn new(shards: usize, stats: Arc<Stats>) -> Self {
        Self {
            table: Mutex::default(),
            next_id: AtomicU64::new(1),
            shards,
            stats,
            history: None,
            changed: tokio::sync::Notify::new(),
            remote: RemoteMembers::default(),
        }
    }

    /// Keeps each channel's history in `history` (`None`: off).
    pub(crate) fn with_history(mut self, history: Option<Arc<History>>) -> Self {
        self.history = history;
        self
    }

    /// The channels' history, when it is on.
    pub(crate) fn history(&self) -> Option<&Arc<History>> {
        self.history.as_ref()
    }

    fn table(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Channel>>> {
        // A panic while holding it cannot leave the map half-changed.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one more member of channel `name` on shard `shard`, creating
    /// the channel if it has none; `name` must be valid
    /// (`protocol::channel::validate`).
    pub(crate) fn join(&self, name: &str, shard: usize) -> Arc<Channel> {
        let mut table = self.table();
        let channel = match table.get(name) {
            Some(channel) => channel.clone(),
            None => {
                let name: Arc<str> = name.into();
                let channel = Arc::new(Channel {
                    id: self.next_id.fetch_add(1, Ordering::Relaxed),
                    name: name.clone(),
                    members: (0..self.shards).map(|_| AtomicU32::new(0)).collect(),
                    log: self.history.as_ref().map(|h| h.log(&name)),
                });
                table.insert(name, channel.clone());
                self.stats.channels.store(table.len(), Ordering::Relaxed);
                self.changed.notify_one();
                channel
            }
        };
        if let Some(n) = channel.members.get(shard) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        channel
    }

    /// Counts one member fewer of `channel` on `shard`; the last member's
    /// leaving removes the channel from the table.
    pub(crate) fn leave(&self, channel: &Channel, shard: usize) {
        let mut table = self.table();
        if let Some(n) = channel.members.get(shard) {
            n.fetch_sub(1, Ordering::Relaxed);
        }
        let same = table
            .get(&*channel.name)
            .is_some_and(|c| c.id == channel.id);
        if same && channel.members() == 0 {
            table.remove(&*channel.name);
            self.stats.channels.store(table.len(), Ordering::Relaxed);
            self.changed.notify_one();
        }
    }

    /// The channel named `name`, if it has members on this node.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Channel>> {
        self.table().get(name).cloned()
    }

    /// Members of `channel` in the whole cluster: this node's and, with
    /// `--redis`, the other nodes' (as their presence messages said).
    pub(crate) fn online(&self, channel: &Channel) -> usize {
        channel.members() + self.remote.count(&channel.name)
    }

    /// The names of the channels with members on this node.
    pub(crate) fn names(&self) -> Vec<Arc<str>> {
        self.table().keys().cloned().collect()
    }

    /// Resolves once a channel was created or removed since the last call
    /// (one waiter: the cluster's subscribing task).
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Every channel with members on this node, by name.
    pub(crate) fn list(&self) -> Vec<Arc<Channel>> {
        let mut all: Vec<Arc<Channel>> = self.table().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_counted_per_shard_and_the_last_leave_removes_the_channel() {
        let channels = Channels::new(2, Arc::new(Stats::new()));
        let a0 = channels.join("a", 0);
        let a1 = channels.join("a", 1);
        let b = channels.join("b", 1);
        assert_eq!(a0.id, a1.id);
        assert_ne!(a0.id, b.id);
        assert_eq!((a0.on_shard(0), a0.on_shard(1), a0.members()), (1, 1, 2));
        assert_eq!(b.on_shard(0), 0);
        assert_eq!(channels.stats.channels.load(Ordering::Relaxed), 2);
        let names: Vec<_> = channels.list().iter().map(|c| c.name.clone()).collect();
        assert_eq!(names, [Arc::from("a"), Arc::from("b")]);

        channels.leave(&a0, 0);
        assert_eq!(a1.members(), 1);
        assert!(channels.get("a").is_some());
        channels.leave(&a1, 1);
        assert!(channels.get("a").is_none());
        // Joining again makes a new channel: old in-flight messages miss it.
        let again = channels.join("a", 0);
        assert_ne!(again.id, a0.id);
    }
}
