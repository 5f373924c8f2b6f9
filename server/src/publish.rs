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

use std::time::Instant;

use bytes::Bytes;

use crate::channels::{Channel, Channels};
use crate::cluster::Relay;
use crate::fanout::{Broadcast, ConnId, Fanout};
use crate::frame::Wanted;
use crate::history::History;
use crate::stats::Stats;

/// A shard's publishing handle (shard-local: `Cell`, no lock).
#[derive(Debug)]
pub(crate) struct Publisher {
    fanout: Fanout,
    stats: Arc<Stats>,
    relay: Option<Relay>,
    /// Set when shutdown starts: messages read after it are discarded.
    draining: Cell<bool>,
    /// The channel table, with the history when it is on.
    channels: Option<Arc<Channels>>,
}

/// A message to append to its channel's history and publish
/// ([`Publisher::publish_logged`]).
#[derive(Debug)]
pub(crate) struct Logged<'a> {
    /// Its frame for raw clients.
    pub(crate) raw: Bytes,
    pub(crate) sender: ConnId,
    /// The sender's display name.
    pub(crate) from_name: &'a str,
    /// The channel's name.
    pub(crate) channel_name: &'a str,
    /// Its entry, if this node had members of it when the message was read.
    pub(crate) channel: Option<&'a Channel>,
    pub(crate) framed_at: Instant,
    pub(crate) wanted: Wanted,
}

impl Publisher {
    pub(crate) fn new(fanout: Fanout, stats: Arc<Stats>, relay: Option<Relay>) -> Self {
        Self {
            fanout,
            stats,
            relay,
            draining: Cell::new(false),
            channels: None,
        }
    }

    /// This node's shards (to ask them who is in a channel, see `roster`).
    pub(crate) fn shards(&self) -> Vec<Arc<crate::fanout::ShardHandle>> {
        self.fanout.shards()
    }

    /// Publishes through `channels`' history when it has one.
    pub(crate) fn with_channels(mut self, channels: Arc<Channels>) -> Self {
        self.channels = Some(channels);
        self
    }

    /// The relay to the other nodes (`--redis`).
    pub(crate) fn relay(&self) -> Option<&Relay> {
        self.relay.as_ref()
    }

    /// The history messages are appended to (`None`: off).
    pub(crate) fn history(&self) -> Option<&Arc<History>> {
        self.channels.as_ref()?.history()
    }

    /// With history: under the channel's log lock, gives `msg` its offset,
    /// frames its events, appends it and pushes it to every shard with
    /// members of the channel, those that gained some since `costs` was
    /// reserved included (see `history` for why all of it under one lock).
    /// A channel that lost its last member meanwhile is looked up again by
    /// name: a member that joined since (under the same lock) gets it.
    pub(crate) fn publish_logged(&self, msg: Logged<'_>, costs: &[u32]) {
        let (Some(channels), false) = (&self.channels, self.draining.get()) else {
            self.fanout.give_back(costs);
            return;
        };
        let Some(history) = channels.history() else {
            self.fanout.give_back(costs);
            return;
        };
        self.stats.messages_in.fetch_add(1, Ordering::Relaxed);
        if let Some(relay) = &self.relay {
            return self.relay_logged(relay, msg, costs);
        }
        let found;
        let log = match msg.channel.and_then(|c| c.log.as_ref()) {
            Some(log) => log,
            None => {
                found = history.log(msg.channel_name);
                &found
            }
        };
        let mut locked = history.lock(log);
        let (offset, v1, v2) = locked.append(&msg.raw, msg.sender.0, msg.from_name, msg.wanted);
        let current;
        let channel = match msg.channel {
            Some(c) if c.members() > 0 => Some(c),
            _ => {
                current = channels.get(msg.channel_name);
                current.as_deref()
            }
        };
        match channel {
            Some(channel) => self.fanout.publish_logged(
                Broadcast {
                    raw: Some(msg.raw),
                    v1,
                    v2,
                    sender: msg.sender,
                    channel: channel.id,
                    framed_at: msg.framed_at,
                    cost: 0,
                    offset,
                    deflated: None,
                },
                costs,
                channel,
            ),
            None => self.fanout.give_back(costs),
        }
        drop(locked);
        history.trim();
    }

    /// With `--redis`: Redis gives the message its position and this node
    /// delivers it when it comes back through the subscription (see
    /// `cluster::recover`). While this node does not follow the channel
    /// (its link is down, or coming back), the message goes to the local
    /// members at once and to the other nodes as without history, with no
    /// position (it is in no history).
    fn relay_logged(&self, relay: &Relay, msg: Logged<'_>, costs: &[u32]) {
        // No member here, or followed: only the subscription delivers.
        let followed = msg
            .channel
            .is_none_or(|c| c.log.as_ref().is_none_or(|l| l.following()));
        if followed {
            let costs = if msg.channel.is_some() { costs } else { &[] };
            if relay.offer_logged(
                &msg.raw,
                msg.channel_name,
                msg.sender.0,
                msg.from_name,
                costs,
            ) {
                return;
            }
        }
        let Some(channel) = msg.channel else {
            self.fanout.give_back(costs);
            return;
        };
        let (raw, sender, from_name) = (msg.raw, msg.sender.0, msg.from_name);
        let time = crate::frame::unix_millis();
        let v1 = msg
            .wanted
            .v1
            .then(|| crate::frame::v1_message(&raw, sender, msg.from_name, time, None));
        let v2 = msg.wanted.v2.then(|| {
            crate::frame::v2_message(&raw, &channel.name, sender, msg.from_name, time, None)
        });
        let msg = Broadcast {
            raw: Some(raw),
            v1,
            v2,
            sender: msg.sender,
            channel: channel.id,
            framed_at: msg.framed_at,
            cost: 0,
            offset: 0,
            deflated: None,
        };
        relay.offer(&msg, &channel.name, from_name);
        self.fanout.publish(msg, costs);
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
