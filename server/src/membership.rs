//! Joining and leaving channels on one shard: the shard's [`Registry`],
//! the process-wide channel table, and the presence reports, kept in step.
//!
//! The shard uses it when it adopts and forgets connections, and when it
//! delivers (through [`Membership::registry`]); a `broadcast.v2`
//! connection uses it for its `subscribe` and `unsubscribe` commands. Both
//! run on the shard's thread, so the registry is a `RefCell`.

use std::cell::{Ref, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::channels::{Channel, Channels};
use crate::conn::{Conn, Subscriptions};
use crate::fanout::Format;
use crate::presence::{Change, PresenceTx};
use crate::registry::Registry;

#[derive(Debug)]
pub(crate) struct Membership {
    /// This shard's index (its slot in each channel's per-shard counts).
    shard: usize,
    channels: Arc<Channels>,
    presence: PresenceTx,
    registry: RefCell<Registry>,
}

impl Membership {
    pub(crate) fn new(shard: usize, channels: Arc<Channels>, presence: PresenceTx) -> Self {
        Self {
            shard,
            channels,
            presence,
            registry: RefCell::default(),
        }
    }

    /// The shard's connections and channel members (never held across an
    /// `.await`).
    pub(crate) fn registry(&self) -> Ref<'_, Registry> {
        self.registry.borrow()
    }

    /// Adds a connection to the shard (in no channel yet).
    pub(crate) fn add(&self, conn: &Rc<Conn>) {
        self.registry.borrow_mut().insert(conn.clone());
    }

    /// Forgets a connection that ended, leaving every channel it was in.
    pub(crate) fn remove(&self, conn: &Conn) {
        let channels = self.registry.borrow_mut().remove(conn);
        for channel in channels {
            self.left(conn, channel);
        }
    }

    fn left(&self, conn: &Conn, channel: Arc<Channel>) {
        self.channels.leave(&channel, self.shard);
        let named = conn.format != Format::Raw;
        let _ = self
            .presence
            .send(Change::Left(conn.peer(), channel, named));
    }
}

impl Subscriptions for Membership {
    /// Puts `conn` in channel `name` (a valid name it is not in yet) and
    /// reports the join; returns the channel.
    fn join(&self, conn: &Rc<Conn>, name: &str) -> Arc<Channel> {
        let channel = self.channels.join(name, self.shard);
        self.registry
            .borrow_mut()
            .subscribe(conn, channel.clone(), Instant::now());
        let named = conn.format != Format::Raw;
        let _ = self
            .presence
            .send(Change::Joined(conn.peer(), channel.clone(), named));
        channel
    }

    /// Takes `conn` out of channel `name`; returns the channel if it was in.
    fn leave(&self, conn: &Conn, name: &str) -> Option<Arc<Channel>> {
        let id = conn.subscription(name)?;
        let channel = self.registry.borrow_mut().unsubscribe(conn, id)?;
        self.left(conn, channel.clone());
        Some(channel)
    }

    /// Channel `name`, if this node has members of it.
    fn lookup(&self, name: &str) -> Option<Arc<Channel>> {
        self.channels.get(name)
    }

    fn online(&self, channel: &Channel) -> u64 {
        self.channels.online(channel) as u64
    }

    fn remote(&self, name: &str) -> (u64, Vec<protocol::v1::Peer>) {
        let remote = &self.channels.remote;
        (remote.count(name) as u64, remote.named(name))
    }

    fn announce(&self, channel: &Channel) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A stopped presence task drops `tx`: the receiver resolves at once.
        let _ = self.presence.send(Change::Flush(channel.id, tx));
        rx
    }
}
