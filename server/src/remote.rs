//! Who is in each channel on the other nodes of the cluster (`--redis`), as
//! their presence messages said (see `cluster::presence`). Added to this
//! node's own members, it makes the cluster-wide presence: online counts,
//! presence events, member lists.
//!
//! Written by the cluster's presence task; read when a client joins or asks
//! who is there, and by the HTTP API. Never touched on the message path.
//! Without `--redis` it stays empty.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use protocol::v1::Peer;
use serde::{Deserialize, Serialize};

/// A node's id (random per process start, see `cluster`).
pub(crate) type NodeId = u64;

/// One member of a channel on another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Member {
    /// Its connection id (unique in the cluster: see `shard`'s id source).
    pub(crate) id: u64,
    pub(crate) name: String,
    /// A `broadcast.v1` or `broadcast.v2` client: listed by name. A plain
    /// client is only counted (as on its own node).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) named: bool,
}

impl Member {
    pub(crate) fn peer(&self) -> Peer {
        Peer {
            id: self.id,
            name: self.name.clone(),
        }
    }
}

/// A join or leave on this node, for the other nodes (`presence` hands
/// every one to the cluster's presence task, which coalesces them).
#[derive(Debug)]
pub(crate) struct LocalChange {
    pub(crate) joined: bool,
    pub(crate) channel: std::sync::Arc<str>,
    pub(crate) member: Member,
}

/// Where `presence` sends [`LocalChange`]s (with `--redis`).
pub(crate) type LocalTx = tokio::sync::mpsc::UnboundedSender<LocalChange>;

/// What changed in one channel: for presence events.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Moved {
    pub(crate) joined: Vec<Peer>,
    pub(crate) left: Vec<Peer>,
}

/// Members per channel of one node, by id.
type NodeMembers = HashMap<String, HashMap<u64, Member>>;

/// The other nodes' members.
#[derive(Debug, Default)]
pub(crate) struct RemoteMembers {
    nodes: Mutex<HashMap<NodeId, NodeMembers>>,
}

impl RemoteMembers {
    fn nodes(&self) -> MutexGuard<'_, HashMap<NodeId, NodeMembers>> {
        // Every change below leaves the maps whole before it can panic.
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Members of `channel` on the other nodes.
    pub(crate) fn count(&self, channel: &str) -> usize {
        self.nodes()
            .values()
            .filter_map(|n| n.get(channel))
            .map(HashMap::len)
            .sum()
    }

    /// The named members of `channel` on the other nodes, by id.
    pub(crate) fn named(&self, channel: &str) -> Vec<Peer> {
        let mut all: Vec<Peer> = self
            .nodes()
            .values()
            .filter_map(|n| n.get(channel))
            .flat_map(|m| m.values().filter(|m| m.named).map(Member::peer))
            .collect();
        all.sort_unstable_by_key(|p| p.id);
        all
    }

    /// Every channel with members on another node, with their count.
    pub(crate) fn channels(&self) -> BTreeMap<String, usize> {
        let mut all = BTreeMap::new();
        for node in self.nodes().values() {
            for (name, members) in node {
                *all.entry(name.clone()).or_insert(0) += members.len();
            }
        }
        all
    }

    /// The nodes heard from.
    pub(crate) fn known(&self) -> Vec<NodeId> {
        self.nodes().keys().copied().collect()
    }

    /// How many nodes have been heard from.
    pub(crate) fn node_count(&self) -> usize {
        self.nodes().len()
    }

    /// Whether `node` has been heard from (and not forgotten since).
    pub(crate) fn knows(&self, node: NodeId) -> bool {
        self.nodes().contains_key(&node)
    }

    /// Applies a node's changes to `channel`: who joined, and the ids of
    /// who left. Returns what actually changed.
    pub(crate) fn apply(
        &self,
        node: NodeId,
        channel: &str,
        joined: Vec<Member>,
        left: &[u64],
    ) -> Moved {
        let mut nodes = self.nodes();
        let members = nodes.entry(node).or_default();
        let here = members.entry(channel.to_owned()).or_default();
        let mut moved = Moved::default();
        for id in left {
            if let Some(m) = here.remove(id) {
                moved.left.push(m.peer());
            }
        }
        for m in joined {
            moved.joined.push(m.peer());
            here.insert(m.id, m);
        }
        if here.is_empty() {
            members.remove(channel);
        }
        moved
    }

    /// Replaces everything known of `node` with `snapshot` (its members
    /// per channel). Returns what changed, per channel.
    pub(crate) fn replace(
        &self,
        node: NodeId,
        snapshot: BTreeMap<String, Vec<Member>>,
    ) -> Vec<(String, Moved)> {
        let mut nodes = self.nodes();
        let old = nodes.remove(&node).unwrap_or_default();
        let new: NodeMembers = snapshot
            .into_iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(name, m)| (name, m.into_iter().map(|m| (m.id, m)).collect()))
            .collect();
        let mut changes = Vec::new();
        for (name, now) in &new {
            let before = old.get(name);
            let moved = Moved {
                joined: now
                    .values()
                    .filter(|m| before.is_none_or(|b| !b.contains_key(&m.id)))
                    .map(Member::peer)
                    .collect(),
                left: before
                    .into_iter()
                    .flat_map(|b| b.values())
                    .filter(|m| !now.contains_key(&m.id))
                    .map(Member::peer)
                    .collect(),
            };
            changes.push((name.clone(), moved));
        }
        for (name, before) in old {
            if !new.contains_key(&name) {
                let left = before.values().map(Member::peer).collect();
                changes.push((
                    name,
                    Moved {
                        joined: Vec::new(),
                        left,
                    },
                ));
            }
        }
        nodes.insert(node, new);
        changes.retain(|(_, m)| !m.joined.is_empty() || !m.left.is_empty());
        changes
    }

    /// Forgets `node` (it said goodbye, or its lease expired). Returns who
    /// left, per channel.
    pub(crate) fn forget(&self, node: NodeId) -> Vec<(String, Moved)> {
        let Some(gone) = self.nodes().remove(&node) else {
            return Vec::new();
        };
        gone.into_iter()
            .map(|(name, members)| {
                let left = members.values().map(Member::peer).collect();
                (
                    name,
                    Moved {
                        joined: Vec::new(),
                        left,
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, named: bool) -> Member {
        Member {
            id,
            name: format!("m{id}"),
            named,
        }
    }

    fn ids(peers: &[Peer]) -> Vec<u64> {
        let mut ids: Vec<u64> = peers.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn changes_counts_and_names_add_up_over_nodes() {
        let r = RemoteMembers::default();
        let moved = r.apply(1, "a", vec![member(10, true), member(11, false)], &[]);
        assert_eq!(ids(&moved.joined), [10, 11]);
        r.apply(2, "a", vec![member(20, true)], &[]);
        r.apply(2, "b", vec![member(21, true)], &[]);
        assert_eq!((r.count("a"), r.count("b"), r.count("c")), (3, 1, 0));
        // Plain clients are counted, not listed.
        assert_eq!(ids(&r.named("a")), [10, 20]);
        assert_eq!(
            r.channels().into_iter().collect::<Vec<_>>(),
            [("a".to_owned(), 3), ("b".to_owned(), 1)]
        );
        // Leaving someone unknown changes nothing.
        let moved = r.apply(1, "a", vec![], &[11, 99]);
        assert_eq!((ids(&moved.left), moved.joined.len()), (vec![11], 0));
        assert_eq!(r.count("a"), 2);
        let mut known = r.known();
        known.sort_unstable();
        assert_eq!(known, [1, 2]);
    }

    #[test]
    fn a_snapshot_replaces_a_node_and_says_what_changed() {
        let r = RemoteMembers::default();
        r.apply(1, "a", vec![member(1, true), member(2, true)], &[]);
        r.apply(1, "gone", vec![member(3, true)], &[]);
        let mut snapshot = BTreeMap::new();
        snapshot.insert("a".to_owned(), vec![member(2, true), member(4, true)]);
        snapshot.insert("new".to_owned(), vec![member(5, true)]);
        let mut changes = r.replace(1, snapshot);
        changes.sort_by(|x, y| x.0.cmp(&y.0));
        let summary: Vec<(&str, Vec<u64>, Vec<u64>)> = changes
            .iter()
            .map(|(n, m)| (n.as_str(), ids(&m.joined), ids(&m.left)))
            .collect();
        assert_eq!(
            summary,
            [
                ("a", vec![4], vec![1]),
                ("gone", vec![], vec![3]),
                ("new", vec![5], vec![]),
            ]
        );
        assert_eq!((r.count("a"), r.count("gone"), r.count("new")), (2, 0, 1));
    }

    #[test]
    fn a_forgotten_node_leaves_every_channel() {
        let r = RemoteMembers::default();
        r.apply(7, "a", vec![member(1, true)], &[]);
        r.apply(7, "b", vec![member(2, false)], &[]);
        r.apply(8, "a", vec![member(3, true)], &[]);
        let mut left = r.forget(7);
        left.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(left.len(), 2);
        assert_eq!(ids(&left[0].1.left), [1]);
        assert_eq!((r.count("a"), r.count("b")), (1, 0));
        assert!(!r.knows(7) && r.knows(8));
        assert!(r.forget(7).is_empty());
    }
}
