//! Joining a channel where its history says: live only, after a position
//! (`since`), or with its last N messages (`rewind`).
//!
//! The seam between replay and live: the join (registry and channel
//! counts), the reading of the replay and of the channel's last offset
//! (`after`) all happen under the channel's log lock, which publishers hold
//! while they give a message its offset and push it to the shards. So a
//! message is either in the replay (offset up to `after`) or published
//! after the join, to this shard, to this member. The replay is queued
//! right away, on the shard's thread, before the dispatcher can write it
//! anything live; live copies of offsets up to `after` are skipped
//! (`dispatch::pick`). Nothing lost, nothing doubled.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use protocol::history::{Position, Unrecovered};

use super::Conn;
use crate::channels::Channel;

/// Where a joining connection starts in the channel's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Start {
    /// Live messages only.
    Live,
    /// Every kept message after this position first.
    Since(Position),
    /// The last N kept messages first.
    Rewind(u64),
}

/// What [`Conn::follow`] prepared for a join.
#[derive(Debug, Default)]
pub(crate) struct Ready {
    /// Keeps the node following the channel until the join is done.
    _claim: Option<crate::cluster::Claim>,
    /// Messages before the ring's first, from the Redis stream.
    older: Vec<crate::history::Older>,
}

/// What joining found.
#[derive(Debug)]
pub(crate) struct Joined {
    pub(crate) channel: Arc<Channel>,
    /// The channel's position when joined (`None`: history is off).
    pub(crate) position: Option<Position>,
    /// With `since` or `rewind`: `Ok` when everything asked for is in
    /// `replay`, else why not (`None` for a live join).
    pub(crate) outcome: Option<Result<(), Unrecovered>>,
    /// The frames to write before anything live, in this connection's
    /// format.
    pub(crate) replay: Vec<Bytes>,
}

impl Conn {
    /// Puts this connection in channel `name` (valid, not joined yet),
    /// starting at `start`. The caller writes its answer (`subscribed`,
    /// `welcome`), then [`Joined::replay`], before returning to the shard.
    pub(crate) fn join_at(self: &Rc<Self>, name: &str, start: Start, ready: Ready) -> Joined {
        let membership = &self.ctx.membership;
        let Some(history) = self.ctx.publisher.history() else {
            let outcome = (start != Start::Live).then_some(Err(Unrecovered::Disabled));
            if let Some(outcome) = outcome {
                let rewind = matches!(start, Start::Rewind(_));
                self.ctx.stats.history.joined(rewind, outcome, 0);
            }
            return Joined {
                channel: membership.join(self, name),
                position: None,
                outcome,
                replay: Vec::new(),
            };
        };
        let log = history.log(name);
        let mut locked = history.lock(&log);
        let channel = membership.join(self, name);
        let (replay, outcome) = match &start {
            Start::Live => (Default::default(), None),
            Start::Since(p) => {
                let r = locked.since_with(p.offset, &p.epoch, self.format, ready.older);
                let lost = r.lost;
                (r, Some(lost.map_or(Ok(()), Err)))
            }
            Start::Rewind(n) => {
                let r = locked.rewind(*n, self.format);
                let lost = r.lost;
                (r, Some(lost.map_or(Ok(()), Err)))
            }
        };
        let position = Position {
            offset: locked.last(),
            epoch: locked.epoch().to_owned(),
        };
        drop(locked);
        if let Some(outcome) = outcome {
            let rewind = matches!(start, Start::Rewind(_));
            self.ctx
                .stats
                .history
                .joined(rewind, outcome, replay.frames.len());
        }
        if replay.after > 0 {
            let subs = self.subs.borrow();
            if let Some(sub) = subs.iter().find(|s| s.channel.id == channel.id) {
                sub.after.set(replay.after);
            }
        }
        Joined {
            channel,
            position: Some(position),
            outcome,
            replay: replay.frames,
        }
    }

    /// Before [`Conn::join_at`], with `--redis`: waits until this node
    /// follows channel `name` (see `cluster::Relay::follow`), and with
    /// history, for a `since` older than the ring's first message reads the
    /// messages in between from the channel's Redis stream.
    pub(crate) async fn follow(self: &Rc<Self>, name: &str, start: &Start) -> Ready {
        let publisher = &self.ctx.publisher;
        let Some(relay) = publisher.relay() else {
            return Ready::default();
        };
        let claim = relay.follow(name).await;
        let mut older = Vec::new();
        if let (Some(history), Start::Since(p)) = (publisher.history(), start) {
            let log = history.log(name);
            let (epoch, first, last) = {
                let locked = history.lock(&log);
                (locked.epoch().to_owned(), locked.first(), locked.last())
            };
            if p.epoch == epoch && p.offset + 1 < first && p.offset < last {
                self.ctx
                    .stats
                    .history
                    .stream_reads
                    .fetch_add(1, Ordering::Relaxed);
                older = relay.read_stream(name, p.offset + 1, first - 1).await;
            }
        }
        Ready {
            _claim: Some(claim),
            older,
        }
    }
}
