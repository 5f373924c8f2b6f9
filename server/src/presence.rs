//! Presence for `broadcast.v1` and `broadcast.v2` clients: who joined and
//! left each channel, coalesced; with `--redis`, on every node of the
//! cluster (this node's changes go to `cluster::presence`, the other
//! nodes' come back from it as [`Change::Remote`]).
//!
//! Shards report joins and leaves; one task gathers them and, at most every
//! [`PRESENCE_INTERVAL`], encodes one presence event per channel that
//! changed and publishes it like any message (framed once, sent to the
//! shards with members of that channel).
//! However fast connections churn, a client gets at most a few presence
//! updates per second, and past [`PRESENCE_NAME_LIMIT`] changes they carry
//! counts instead of names.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use protocol::v1::{Peer, ServerEvent, PRESENCE_NAME_LIMIT};
use tokio::sync::{mpsc, oneshot};

use crate::channels::{Channel, ChannelId, Channels};
use crate::fanout::{Broadcast, ConnId, Fanout};
use crate::remote::{LocalChange, LocalTx, Member, Moved};
use crate::stats::Stats;

/// Shortest time between two presence updates.
pub(crate) const PRESENCE_INTERVAL: Duration = Duration::from_millis(500);

/// A join or leave, as a shard reports it (`named`: a `broadcast.v1` or
/// `broadcast.v2` client), or as another node's presence said.
#[derive(Debug)]
pub(crate) enum Change {
    Joined(Peer, Arc<Channel>, bool),
    Left(Peer, Arc<Channel>, bool),
    /// Members of the channel on other nodes came or went (`--redis`).
    Remote(Arc<Channel>, Moved),
    /// A newcomer is about to publish to the channel: what is gathered for
    /// it goes out now, so that its join reaches every shard before its
    /// message does; the sender is answered once it has.
    Flush(ChannelId, oneshot::Sender<()>),
}

/// The reporting end, one per process, cloned into every shard.
pub(crate) type PresenceTx = mpsc::UnboundedSender<Change>;

/// What a presence event says of the changes: names, or counts past
/// [`PRESENCE_NAME_LIMIT`] (the same fields in v1 and v2).
#[derive(Debug)]
struct Shown {
    joined: Vec<Peer>,
    left: Vec<Peer>,
    joined_count: Option<u64>,
    left_count: Option<u64>,
}

/// Changes gathered since the last update.
#[derive(Debug, Default)]
struct Pending {
    joined: Vec<Peer>,
    left: Vec<Peer>,
}

impl Pending {
    fn add(&mut self, joined: bool, peer: Peer) {
        match joined {
            true => self.joined.push(peer),
            false => {
                // Joined and left within one interval: nobody needs to know.
                if let Some(i) = self.joined.iter().position(|p| p.id == peer.id) {
                    self.joined.swap_remove(i);
                } else {
                    self.left.push(peer);
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.left.is_empty()
    }

    /// Who joined and left (names, or counts past the name limit), leaving
    /// `self` empty.
    fn take(&mut self) -> Shown {
        let mut joined = std::mem::take(&mut self.joined);
        let mut left = std::mem::take(&mut self.left);
        if joined.len() + left.len() > PRESENCE_NAME_LIMIT {
            Shown {
                joined: Vec::new(),
                left: Vec::new(),
                joined_count: Some(joined.len() as u64),
                left_count: Some(left.len() as u64),
            }
        } else {
            joined.sort_by_key(|p| p.id);
            left.sort_by_key(|p| p.id);
            Shown {
                joined,
                left,
                joined_count: None,
                left_count: None,
            }
        }
    }

    /// The v1 event for these changes, leaving `self` empty.
    #[cfg(test)]
    fn take_event(&mut self, online: u64) -> ServerEvent {
        let Shown {
            joined,
            left,
            joined_count,
            left_count,
        } = self.take();
        ServerEvent::Presence {
            online,
            joined,
            left,
            joined_count,
            left_count,
        }
    }
}

/// Changes per channel since the last update.
#[derive(Debug, Default)]
struct Gathered(HashMap<ChannelId, (Arc<Channel>, Pending)>);

impl Gathered {
    /// Adds a join or leave (`Flush` is handled by [`run`]).
    fn add(&mut self, joined: bool, peer: Peer, channel: Arc<Channel>) {
        let (_, pending) = self
            .0
            .entry(channel.id)
            .or_insert_with(|| (channel, Pending::default()));
        pending.add(joined, peer);
    }

    /// Takes one change: gathers a join or leave (and tells the other
    /// nodes of this node's own); publishes a flushed channel's changes at
    /// once and answers.
    fn take(&mut self, change: Change, to: &Targets) {
        match change {
            Change::Joined(peer, channel, named) => {
                to.tell_cluster(true, &peer, &channel, named);
                self.add(true, peer, channel);
            }
            Change::Left(peer, channel, named) => {
                to.tell_cluster(false, &peer, &channel, named);
                self.add(false, peer, channel);
            }
            Change::Remote(channel, moved) => {
                for peer in moved.joined {
                    self.add(true, peer, channel.clone());
                }
                for peer in moved.left {
                    self.add(false, peer, channel.clone());
                }
            }
            Change::Flush(id, done) => {
                if let Some((channel, pending)) = self.0.remove(&id) {
                    publish(&channel, pending, to);
                }
                let _ = done.send(());
            }
        }
    }
}

/// Where presence updates go: the local shards and, with `--redis`, the
/// cluster's presence task.
#[derive(Debug)]
pub(crate) struct Targets {
    pub(crate) fanout: Fanout,
    pub(crate) stats: Arc<Stats>,
    /// For the cluster-wide online counts.
    pub(crate) channels: Arc<Channels>,
    pub(crate) cluster: Option<LocalTx>,
}

impl Targets {
    fn tell_cluster(&self, joined: bool, peer: &Peer, channel: &Channel, named: bool) {
        if let Some(tx) = &self.cluster {
            let _ = tx.send(LocalChange {
                joined,
                channel: channel.name.clone(),
                member: Member {
                    id: peer.id,
                    name: peer.name.clone(),
                    named,
                },
            });
        }
    }
}

/// Gathers changes and publishes presence updates until the channel closes:
/// a window opens with the first change and, [`PRESENCE_INTERVAL`] later,
/// one update per channel that changed goes out. A `Flush` publishes its
/// channel's part early; the rest of the window is unchanged.
pub(crate) async fn run(mut changes: mpsc::UnboundedReceiver<Change>, to: Targets) {
    let mut gathered = Gathered::default();
    loop {
        let Some(first) = changes.recv().await else {
            return;
        };
        gathered.take(first, &to);
        if gathered.0.is_empty() {
            // Only a flush of a channel with nothing gathered.
            continue;
        }
        let end = tokio::time::Instant::now() + PRESENCE_INTERVAL;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(end) => break,
                change = changes.recv() => match change {
                    Some(change) => gathered.take(change, &to),
                    None => break,
                },
            }
        }
        for (_, (channel, pending)) in std::mem::take(&mut gathered.0) {
            publish(&channel, pending, &to);
        }
    }
}

/// Publishes one presence update for `channel`'s gathered changes (none if
/// there are none, or no v1 or v2 client is connected to see it).
fn publish(channel: &Arc<Channel>, mut pending: Pending, to: &Targets) {
    let wanted = to.stats.wanted();
    if pending.is_empty() || (!wanted.v1 && !wanted.v2) {
        return;
    }
    let online = to.channels.online(channel) as u64;
    let Shown {
        joined,
        left,
        joined_count,
        left_count,
    } = pending.take();
    let v2 = wanted.v2.then(|| {
        let event = protocol::v2::Event::Presence {
            channel: channel.name.to_string(),
            online,
            joined: joined.clone(),
            left: left.clone(),
            joined_count,
            left_count,
        };
        crate::frame::frame_text(event.encode().as_bytes())
    });
    let v1 = wanted.v1.then(|| {
        let event = ServerEvent::Presence {
            online,
            joined,
            left,
            joined_count,
            left_count,
        };
        crate::frame::frame_text(event.encode().as_bytes())
    });
    let msg = Broadcast {
        raw: None,
        v1,
        v2,
        sender: ConnId(0),
        channel: channel.id,
        framed_at: std::time::Instant::now(),
        cost: 0,
        offset: 0,
        deflated: None,
    };
    to.fanout.publish_free(msg, channel);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64) -> Peer {
        Peer {
            id,
            name: format!("p{id}"),
        }
    }

    #[test]
    fn join_then_leave_cancels_out() {
        let mut p = Pending::default();
        p.add(true, peer(1));
        p.add(true, peer(2));
        p.add(false, peer(1));
        p.add(false, peer(9));
        let ServerEvent::Presence {
            joined,
            left,
            online,
            ..
        } = p.take_event(5)
        else {
            panic!("not presence")
        };
        assert_eq!((joined, left, online), (vec![peer(2)], vec![peer(9)], 5));
        assert!(p.is_empty());
    }

    #[test]
    fn many_changes_become_counts() {
        let mut p = Pending::default();
        for id in 0..30 {
            p.add(true, peer(id));
        }
        p.add(false, peer(100));
        let event = p.take_event(40);
        assert_eq!(
            event,
            ServerEvent::Presence {
                online: 40,
                joined: vec![],
                left: vec![],
                joined_count: Some(30),
                left_count: Some(1),
            }
        );
    }
}
