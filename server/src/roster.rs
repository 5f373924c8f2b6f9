//! Who is in a channel: on this node, plus (with `--redis`) the other
//! nodes' members as `remote` knows them ([`with_remote`]). Each shard knows only its own
//! connections, so [`gather`] asks every shard ([`ShardMsg::Members`] with a
//! [`Query`]) and merges their answers. The HTTP API's
//! `GET /api/channels/NAME` and the `broadcast.v2` `members` command both
//! ask this way.
//!
//! Only named members are listed: `broadcast.v1` and `broadcast.v2`
//! connections. A plain client's guest name is shown to nobody (it is
//! still counted in the channel's members).
//!
//! A list may be capped: each shard then sends its `limit + 1` lowest ids,
//! so the merge knows whether more were named than it keeps, and the
//! answer is the `limit` lowest ids of the node. A shard that does not
//! answer (it is stopping) is waited for at most [`WAIT`]; the list is then
//! what the others said, so a caller (a connection's reader) never hangs.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use protocol::v1::Peer;
use tokio::sync::oneshot;

use crate::channels::ChannelId;
use crate::conn::Conn;
use crate::fanout::{Format, ShardHandle, ShardMsg};

/// Longest wait for the shards' answers. A running shard answers between
/// two dispatch rounds; only one that is stopping may never.
pub(crate) const WAIT: Duration = Duration::from_secs(2);

/// A question to one shard: its named members of `channel`, the lowest
/// `limit + 1` ids (saturating) in any order.
#[derive(Debug)]
pub(crate) struct Query {
    pub(crate) channel: ChannelId,
    limit: usize,
    reply: oneshot::Sender<Vec<Peer>>,
}

impl Query {
    /// Answers with the named ones among `conns` (the shard's members of
    /// the channel).
    pub(crate) fn answer(self, conns: &[Rc<Conn>]) {
        let named = conns
            .iter()
            .filter(|c| c.format != Format::Raw)
            .map(|c| c.peer())
            .collect();
        // The asker may have stopped waiting.
        let _ = self.reply.send(lowest(named, self.limit.saturating_add(1)));
    }
}

/// The `keep` lowest ids of `named`, in any order (no full sort: a shard
/// may hold many more members than are listed).
fn lowest(mut named: Vec<Peer>, keep: usize) -> Vec<Peer> {
    if keep == 0 {
        named.clear();
    } else if named.len() > keep {
        named.select_nth_unstable_by_key(keep - 1, |p| p.id);
        named.truncate(keep);
    }
    named
}

/// The named members of a channel, by id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Roster {
    /// At most the `limit` given to [`gather`].
    pub(crate) members: Vec<Peer>,
    /// More were named than `members` holds.
    pub(crate) truncated: bool,
}

/// Asks every shard in `shards` for its named members of `channel` and
/// merges the answers: the `limit` lowest ids, sorted. Waits at most
/// [`WAIT`] in all; a shard that has stopped or not answered by then adds
/// nobody.
pub(crate) async fn gather(
    shards: &[Arc<ShardHandle>],
    channel: ChannelId,
    limit: usize,
) -> Roster {
    gather_within(shards, channel, limit, WAIT).await
}

/// [`gather`], waiting at most `wait`.
async fn gather_within(
    shards: &[Arc<ShardHandle>],
    channel: ChannelId,
    limit: usize,
    wait: Duration,
) -> Roster {
    let mut replies = Vec::with_capacity(shards.len());
    for shard in shards {
        let (reply, rx) = oneshot::channel();
        let query = Query {
            channel,
            limit,
            reply,
        };
        if shard.send(ShardMsg::Members(query)) {
            replies.push(rx);
        }
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut members = Vec::new();
    for rx in replies {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(some)) => members.extend(some),
            // Dropped unanswered: that shard has stopped.
            Ok(Err(_)) => {}
            Err(_) => {
                tracing::debug!(channel, "a shard did not list its members in time");
                break;
            }
        }
    }
    members.sort_unstable_by_key(|p| p.id);
    let truncated = members.len() > limit;
    members.truncate(limit);
    Roster { members, truncated }
}

/// Adds the other nodes' named members (`remote`, sorted by id) to a
/// node's roster: the `limit` lowest ids of both, sorted.
pub(crate) fn with_remote(mut roster: Roster, remote: Vec<Peer>, limit: usize) -> Roster {
    if remote.is_empty() {
        return roster;
    }
    roster.members.extend(remote);
    roster.members.sort_unstable_by_key(|p| p.id);
    roster.truncated |= roster.members.len() > limit;
    roster.members.truncate(limit);
    roster
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

    /// A shard handle whose inbox answers every query with `peers` (capped
    /// as a shard caps them), or, with `None`, takes queries and never
    /// answers them.
    fn shard(peers: Option<Vec<Peer>>) -> Arc<ShardHandle> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut unanswered = Vec::new();
            while let Some(msg) = rx.recv().await {
                let ShardMsg::Members(q) = msg else { continue };
                match &peers {
                    Some(peers) => {
                        let _ = q
                            .reply
                            .send(lowest(peers.clone(), q.limit.saturating_add(1)));
                    }
                    None => unanswered.push(q),
                }
            }
        });
        Arc::new(ShardHandle::new(tx))
    }

    #[test]
    fn a_shard_keeps_its_lowest_ids() {
        let named: Vec<Peer> = [9, 4, 7, 1, 8].into_iter().map(peer).collect();
        let mut kept: Vec<u64> = lowest(named.clone(), 3).iter().map(|p| p.id).collect();
        kept.sort_unstable();
        assert_eq!(kept, [1, 4, 7]);
        assert_eq!(lowest(named.clone(), 5).len(), 5);
        assert_eq!(lowest(named.clone(), usize::MAX).len(), 5);
        assert!(lowest(named, 0).is_empty());
    }

    #[tokio::test]
    async fn answers_are_merged_by_id_and_capped() {
        let shards = [
            shard(Some(vec![peer(5), peer(1)])),
            shard(Some(vec![peer(3), peer(8)])),
        ];
        let all = gather(&shards, 1, usize::MAX).await;
        let ids: Vec<u64> = all.members.iter().map(|p| p.id).collect();
        assert_eq!((ids, all.truncated), (vec![1, 3, 5, 8], false));
        let capped = gather(&shards, 1, 3).await;
        let ids: Vec<u64> = capped.members.iter().map(|p| p.id).collect();
        assert_eq!((ids, capped.truncated), (vec![1, 3, 5], true));
        let exact = gather(&shards, 1, 4).await;
        assert_eq!((exact.members.len(), exact.truncated), (4, false));
    }

    #[tokio::test]
    async fn a_shard_that_never_answers_costs_the_wait_not_the_answer() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // A stopped shard: its inbox is closed.
        drop(rx);
        let stopped = Arc::new(ShardHandle::new(tx));
        let shards = [shard(Some(vec![peer(2)])), shard(None), stopped];
        // Without its deadline this would wait forever.
        let wait = Duration::from_millis(50);
        let got = tokio::time::timeout(WAIT, gather_within(&shards, 1, 10, wait))
            .await
            .expect("gather gives up on a silent shard");
        assert_eq!(got.members, vec![peer(2)]);
        assert!(!got.truncated);
    }
}
