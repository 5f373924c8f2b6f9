//! A shard's connections, grouped by channel.
//!
//! Each channel keeps a dense `Vec` of members so that fan-out is a linear
//! walk over pointers; each connection remembers its slot so that leaving is
//! O(1) (`swap_remove`). Today every connection is in the lobby; rooms only
//! need connections to name another channel.

use std::collections::HashMap;
use std::rc::Rc;

use crate::conn::Conn;
use crate::fanout::ChannelId;

#[derive(Debug, Default)]
pub(crate) struct Registry {
    channels: HashMap<ChannelId, Vec<Rc<Conn>>>,
    len: usize,
}

impl Registry {
    /// Adds `conn` to its channel.
    pub(crate) fn insert(&mut self, conn: Rc<Conn>) {
        let members = self.channels.entry(conn.channel).or_default();
        conn.slot.set(members.len());
        members.push(conn);
        self.len += 1;
    }

    /// Removes `conn` from its channel; does nothing if it is not there.
    pub(crate) fn remove(&mut self, conn: &Conn) {
        let Some(members) = self.channels.get_mut(&conn.channel) else {
            return;
        };
        let slot = conn.slot.get();
        if members.get(slot).is_some_and(|m| m.id == conn.id) {
            members.swap_remove(slot);
            if let Some(moved) = members.get(slot) {
                moved.slot.set(slot);
            }
            if members.is_empty() {
                self.channels.remove(&conn.channel);
            }
            self.len -= 1;
        }
    }

    /// Every channel with at least one member on this shard.
    pub(crate) fn channels(&self) -> impl Iterator<Item = (ChannelId, &[Rc<Conn>])> {
        self.channels.iter().map(|(c, m)| (*c, m.as_slice()))
    }

    /// Every connection on this shard.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Rc<Conn>> {
        self.channels.values().flatten()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}
