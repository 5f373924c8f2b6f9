//! A shard's connections, and its members of each channel.
//!
//! Every connection is in the shard's list (for keepalive and shutdown);
//! each channel with members on the shard keeps a dense `Vec` of them, so
//! that delivering a batch to a channel is a linear walk over pointers and
//! never visits a connection of another channel. Each connection remembers
//! its slot in the list and, per subscription, in the channel's `Vec`, so
//! leaving is O(1) (`swap_remove`).

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::channels::{Channel, ChannelId};
use crate::conn::{Conn, Subscription};
use crate::fanout::ConnId;

#[derive(Debug, Default)]
pub(crate) struct Registry {
    conns: Vec<Rc<Conn>>,
    channels: HashMap<ChannelId, Vec<Rc<Conn>>>,
}

impl Registry {
    /// Adds `conn` to the shard's list.
    pub(crate) fn insert(&mut self, conn: Rc<Conn>) {
        conn.slot.set(self.conns.len());
        self.conns.push(conn);
    }

    /// Removes `conn` from the list and from every channel it is in, and
    /// returns those channels; does nothing if it is not here.
    pub(crate) fn remove(&mut self, conn: &Conn) -> Vec<Arc<Channel>> {
        let slot = conn.slot.get();
        if !self.conns.get(slot).is_some_and(|c| c.id == conn.id) {
            return Vec::new();
        }
        self.conns.swap_remove(slot);
        if let Some(moved) = self.conns.get(slot) {
            moved.slot.set(slot);
        }
        let subs = std::mem::take(&mut *conn.subs.borrow_mut());
        subs.into_iter()
            .map(|sub| {
                self.take_member(conn.id, &sub);
                sub.channel
            })
            .collect()
    }

    /// Adds `conn` to the members of `channel` (which it must not be in).
    pub(crate) fn subscribe(&mut self, conn: &Rc<Conn>, channel: Arc<Channel>, now: Instant) {
        let members = self.channels.entry(channel.id).or_default();
        conn.subs.borrow_mut().push(Subscription {
            channel,
            slot: Cell::new(members.len()),
            joined_at: now,
            announced: Cell::new(false),
            after: Cell::new(0),
        });
        members.push(conn.clone());
    }

    /// Removes `conn` from the members of channel `id`; returns the channel
    /// if it was in it.
    pub(crate) fn unsubscribe(&mut self, conn: &Conn, id: ChannelId) -> Option<Arc<Channel>> {
        let sub = {
            let mut subs = conn.subs.borrow_mut();
            let at = subs.iter().position(|s| s.channel.id == id)?;
            subs.remove(at)
        };
        self.take_member(conn.id, &sub);
        Some(sub.channel)
    }

    /// Takes connection `conn` out of the member list of its subscription
    /// `sub`.
    fn take_member(&mut self, conn: ConnId, sub: &Subscription) {
        let id = sub.channel.id;
        let Some(members) = self.channels.get_mut(&id) else {
            return;
        };
        let slot = sub.slot.get();
        if !members.get(slot).is_some_and(|m| m.id == conn) {
            return;
        }
        members.swap_remove(slot);
        if let Some(moved) = members.get(slot) {
            if let Some(s) = moved.subs.borrow().iter().find(|s| s.channel.id == id) {
                s.slot.set(slot);
            }
        }
        if members.is_empty() {
            self.channels.remove(&id);
        }
    }

    /// This shard's members of channel `id`.
    pub(crate) fn members(&self, id: ChannelId) -> &[Rc<Conn>] {
        self.channels.get(&id).map_or(&[], Vec::as_slice)
    }

    /// Every connection on this shard.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Rc<Conn>> {
        self.conns.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }
}
