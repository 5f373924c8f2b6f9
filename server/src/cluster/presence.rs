//! Cluster-wide presence: every node tells the others who joined and left
//! its channels, and holds a lease so that a node that dies without a word
//! is forgotten within the lease time ([`presence_loop`]).
//!
//! Redis keys and channels (`P` is `--redis-channel`; no channel name
//! contains `~`):
//!
//! - `P:~presence`, a pub/sub channel every node subscribes to. Each node
//!   publishes on it, in JSON ([`Wire`]):
//!   - `delta`: its joins and leaves of the last [`PRESENCE_INTERVAL`],
//!     all channels in one message (so 10,000 joins cost one message, not
//!     10,000);
//!   - `snapshot`: all its members, when it starts, when its link comes
//!     back, and when another node says `hello`;
//!   - `hello`: "I (re)joined: send me your snapshots";
//!   - `bye`: it is shutting down; forget it now.
//! - `P:~node:ID`, the lease: set with a time to live of `--cluster-lease`
//!   and refreshed every fifth of it. Every node checks the leases of the
//!   nodes it knows as often, and forgets those whose key is gone: their
//!   members leave every count, list and presence event (a `left`).
//!
//! What a node receives goes into `Channels::remote` and, for channels with
//! local members, into the local presence task as [`Change::Remote`], so
//! that local clients get it in the same coalesced events as local changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use protocol::backoff::Backoff;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::link::Link;
use super::{BACKOFF_CAP, BACKOFF_FIRST, IO_TIMEOUT};
use crate::channels::Channels;
use crate::presence::{Change, PresenceTx, PRESENCE_INTERVAL};
use crate::remote::{LocalChange, Member, Moved, NodeId};

/// Default of `--cluster-lease`.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// A presence message on `P:~presence`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Wire {
    Delta {
        node: NodeId,
        channels: BTreeMap<String, Delta>,
    },
    Snapshot {
        node: NodeId,
        channels: BTreeMap<String, Vec<Member>>,
    },
    Hello {
        node: NodeId,
    },
    Bye {
        node: NodeId,
    },
}

impl Wire {
    /// The node that sent it.
    fn node(&self) -> NodeId {
        match self {
            Wire::Delta { node, .. }
            | Wire::Snapshot { node, .. }
            | Wire::Hello { node }
            | Wire::Bye { node } => *node,
        }
    }
}

/// One channel's changes in a `delta`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Delta {
    #[serde(default)]
    joined: Vec<Member>,
    /// Ids of the members that left.
    #[serde(default)]
    left: Vec<u64>,
}

/// This node's members, and the changes not told yet.
#[derive(Debug, Default)]
struct Local {
    members: HashMap<Arc<str>, HashMap<u64, Member>>,
    /// Per channel and member: joined (`Some`) or left (`None`) since the
    /// last delta; a join and a leave within one interval cancel out.
    pending: HashMap<Arc<str>, HashMap<u64, Option<Member>>>,
}

impl Local {
    fn take(&mut self, change: LocalChange) {
        let LocalChange {
            joined,
            channel,
            member,
        } = change;
        let id = member.id;
        let members = self.members.entry(channel.clone()).or_default();
        let pending = self.pending.entry(channel.clone()).or_default();
        if joined {
            members.insert(id, member.clone());
            pending.insert(id, Some(member));
        } else {
            members.remove(&id);
            if members.is_empty() {
                self.members.remove(&channel);
            }
            match pending.get(&id) {
                // Joined within this interval: the others never knew.
                Some(Some(_)) => {
                    pending.remove(&id);
                }
                _ => {
                    pending.insert(id, None);
                }
            }
        }
    }

    /// The changes since the last call, as one message (`None`: nothing).
    fn delta(&mut self, node: NodeId) -> Option<Wire> {
        let channels: BTreeMap<String, Delta> = self
            .pending
            .drain()
            .filter(|(_, changes)| !changes.is_empty())
            .map(|(name, changes)| {
                let mut delta = Delta::default();
                for (id, change) in changes {
                    match change {
                        Some(member) => delta.joined.push(member),
                        None => delta.left.push(id),
                    }
                }
                (name.to_string(), delta)
            })
            .collect();
        (!channels.is_empty()).then_some(Wire::Delta { node, channels })
    }

    /// Everything, as one message; what was pending is in it.
    fn snapshot(&mut self, node: NodeId) -> Wire {
        self.pending.clear();
        Wire::Snapshot {
            node,
            channels: self
                .members
                .iter()
                .map(|(name, m)| (name.to_string(), m.values().cloned().collect()))
                .collect(),
        }
    }
}

/// What the task needs.
pub(super) struct PresenceTask {
    pub(super) link: Arc<Link>,
    pub(super) node: NodeId,
    pub(super) lease: Duration,
    pub(super) channels: Arc<Channels>,
    /// The local presence task, for the changes of local channels.
    pub(super) presence: PresenceTx,
    /// This node's joins and leaves.
    pub(super) local: mpsc::UnboundedReceiver<LocalChange>,
    /// Shutdown: say `bye`, then answer.
    pub(super) bye: oneshot::Receiver<oneshot::Sender<()>>,
}

impl PresenceTask {
    fn topic(&self) -> String {
        format!("{}:~presence", self.link.channel)
    }

    fn lease_key(&self, node: NodeId) -> String {
        format!("{}:~node:{node:016x}", self.link.channel)
    }

    /// Hands what changed in local channels to the local presence task.
    fn tell_local(&self, changes: Vec<(String, Moved)>) {
        for (name, moved) in changes {
            if moved.joined.is_empty() && moved.left.is_empty() {
                continue;
            }
            if let Some(channel) = self.channels.get(&name) {
                let _ = self.presence.send(Change::Remote(channel, moved));
            }
        }
    }

    /// Takes a message another node published.
    fn receive(&self, bytes: &[u8], hello_due: &mut bool, snapshot_due: &mut bool) {
        let Ok(wire) = serde_json::from_slice::<Wire>(bytes) else {
            tracing::debug!(
                len = bytes.len(),
                "cluster: ignoring a malformed presence message"
            );
            return;
        };
        let remote = &self.channels.remote;
        if wire.node() == self.node {
            return; // ours, back from Redis
        }
        let stats = &self.link.stats.cluster;
        stats.presence_in.fetch_add(1, Ordering::Relaxed);
        match wire {
            Wire::Delta { node, channels } => {
                if !remote.knows(node) {
                    // Forgotten (its lease lapsed) or missed: ask for all.
                    *hello_due = true;
                }
                let changes = channels
                    .into_iter()
                    .map(|(name, d)| {
                        let moved = remote.apply(node, &name, d.joined, &d.left);
                        (name, moved)
                    })
                    .collect();
                self.tell_local(changes);
            }
            Wire::Snapshot { node, channels } => self.tell_local(remote.replace(node, channels)),
            Wire::Hello { .. } => *snapshot_due = true,
            Wire::Bye { node } => self.tell_local(remote.forget(node)),
        }
        stats.nodes.store(remote.node_count(), Ordering::Relaxed);
    }
}

/// Runs cluster presence until shutdown: reconnects with backoff, and on
/// every (re)connection subscribes, takes the lease, says `hello` and
/// publishes a snapshot.
pub(super) async fn presence_loop(mut task: PresenceTask) {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(IO_TIMEOUT))
        .set_response_timeout(Some(IO_TIMEOUT));
    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_CAP);
    let mut local = Local::default();
    let lease_ms = u64::try_from(task.lease.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let refresh = (task.lease / 5).max(Duration::from_millis(100));
    let mut local_open = true;
    loop {
        let connected = async {
            let conn = task
                .link
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let mut pubsub = task.link.client.get_async_pubsub().await?;
            pubsub.subscribe(task.topic()).await?;
            Ok::<_, redis::RedisError>((conn, pubsub))
        };
        let failed = match tokio::time::timeout(IO_TIMEOUT, connected).await {
            Ok(Ok(pair)) => Ok(pair),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connect timed out".to_owned()),
        };
        let (mut conn, pubsub) = match failed {
            Ok(pair) => pair,
            Err(cause) => {
                tracing::debug!(%cause, "cluster presence: cannot connect");
                if wait_or_bye(&mut task, &mut local, &mut local_open, backoff.next_delay()).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        let (_sink, mut stream) = pubsub.split();
        let topic = task.topic();
        let lease_key = task.lease_key(task.node);
        let mut hello_due = true;
        let mut snapshot_due = true;
        let mut flush = tokio::time::interval(PRESENCE_INTERVAL);
        let mut leases = tokio::time::interval(refresh);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        leases.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let failure: String = loop {
            tokio::select! {
                change = task.local.recv(), if local_open => match change {
                    Some(change) => local.take(change),
                    // The local presence task stopped (shutdown): the
                    // goodbye is still to come.
                    None => local_open = false,
                },
                msg = stream.next() => match msg {
                    Some(msg) => task.receive(msg.get_payload_bytes(), &mut hello_due, &mut snapshot_due),
                    None => break "presence subscription closed".into(),
                },
                _ = flush.tick() => {
                    let mut out = Vec::new();
                    if std::mem::take(&mut hello_due) {
                        out.push(Wire::Hello { node: task.node });
                    }
                    if std::mem::take(&mut snapshot_due) {
                        out.push(local.snapshot(task.node));
                    } else if let Some(delta) = local.delta(task.node) {
                        out.push(delta);
                    }
                    if let Err(e) = publish(&mut conn, &topic, &out).await {
                        break e;
                    }
                    let sent = &task.link.stats.cluster.presence_out;
                    sent.fetch_add(out.len() as u64, Ordering::Relaxed);
                }
                _ = leases.tick() => {
                    if let Err(e) = keep_leases(&task, &mut conn, &lease_key, lease_ms).await {
                        break e;
                    }
                }
                reply = &mut task.bye => {
                    let bye = Wire::Bye { node: task.node };
                    let _ = publish(&mut conn, &topic, &[bye]).await;
                    let _ = redis::cmd("DEL").arg(&lease_key).exec_async(&mut conn).await;
                    if let Ok(reply) = reply {
                        let _ = reply.send(());
                    }
                    return;
                }
            }
        };
        tracing::debug!(cause = %failure, "cluster presence: Redis connection lost");
        if wait_or_bye(&mut task, &mut local, &mut local_open, backoff.next_delay()).await {
            return;
        }
    }
}

/// Sleeps `delay` between connection attempts, still taking local changes
/// (into the next snapshot). True when shutdown came meanwhile.
async fn wait_or_bye(
    task: &mut PresenceTask,
    local: &mut Local,
    local_open: &mut bool,
    delay: Duration,
) -> bool {
    let until = tokio::time::Instant::now() + delay;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until) => return false,
            change = task.local.recv(), if *local_open => match change {
                Some(change) => local.take(change),
                None => *local_open = false,
            },
            reply = &mut task.bye => {
                if let Ok(reply) = reply {
                    let _ = reply.send(());
                }
                return true;
            }
        }
    }
}

/// Publishes `messages` in one pipeline.
async fn publish(
    conn: &mut redis::aio::MultiplexedConnection,
    topic: &str,
    messages: &[Wire],
) -> Result<(), String> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for m in messages {
        let json = serde_json::to_vec(m).map_err(|e| e.to_string())?;
        pipe.cmd("PUBLISH").arg(topic).arg(json).ignore();
    }
    pipe.exec_async(conn).await.map_err(|e| e.to_string())
}

/// Refreshes this node's lease and forgets the known nodes whose lease is
/// gone, in one pipeline.
async fn keep_leases(
    task: &PresenceTask,
    conn: &mut redis::aio::MultiplexedConnection,
    lease_key: &str,
    lease_ms: u64,
) -> Result<(), String> {
    let known = task.channels.remote.known();
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(lease_key)
        .arg(1)
        .arg("PX")
        .arg(lease_ms)
        .ignore();
    for node in &known {
        pipe.cmd("EXISTS").arg(task.lease_key(*node));
    }
    let alive: Vec<bool> = pipe.query_async(conn).await.map_err(|e| e.to_string())?;
    for (node, alive) in known.into_iter().zip(alive) {
        if !alive {
            tracing::info!(
                node = format_args!("{node:016x}"),
                "cluster: a node's lease expired; its members are gone"
            );
            task.tell_local(task.channels.remote.forget(node));
        }
    }
    let nodes = task.channels.remote.known().len();
    task.link
        .stats
        .cluster
        .nodes
        .store(nodes, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(joined: bool, channel: &str, id: u64) -> LocalChange {
        LocalChange {
            joined,
            channel: channel.into(),
            member: Member {
                id,
                name: format!("m{id}"),
                named: true,
            },
        }
    }

    #[test]
    fn local_changes_coalesce_into_one_delta_and_a_snapshot_holds_everyone() {
        let mut local = Local::default();
        for id in 0..1000 {
            local.take(change(true, "a", id));
        }
        local.take(change(true, "b", 5000));
        local.take(change(false, "b", 5000)); // in and out: never told
        let Some(Wire::Delta { channels, .. }) = local.delta(1) else {
            panic!("a delta")
        };
        assert_eq!(channels.len(), 1);
        assert_eq!(
            (channels["a"].joined.len(), channels["a"].left.len()),
            (1000, 0)
        );
        assert!(local.delta(1).is_none(), "told once");

        local.take(change(false, "a", 7));
        let Some(Wire::Delta { channels, .. }) = local.delta(1) else {
            panic!("a delta")
        };
        assert_eq!(channels["a"].left, [7]);
        let Wire::Snapshot { channels, .. } = local.snapshot(1) else {
            panic!("a snapshot")
        };
        assert_eq!(channels["a"].len(), 999);
        assert!(!channels.contains_key("b"));
    }

    #[test]
    fn wire_messages_round_trip() {
        let mut channels = BTreeMap::new();
        channels.insert(
            "room".to_owned(),
            Delta {
                joined: vec![Member {
                    id: 3,
                    name: "ann".into(),
                    named: true,
                }],
                left: vec![4],
            },
        );
        let json = serde_json::to_string(&Wire::Delta { node: 9, channels }).unwrap();
        assert_eq!(
            json,
            r#"{"type":"delta","node":9,"channels":{"room":{"joined":[{"id":3,"name":"ann","named":true}],"left":[4]}}}"#
        );
        let back: Wire = serde_json::from_str(&json).unwrap();
        assert!(matches!(back, Wire::Delta { node: 9, .. }));
        let bye: Wire = serde_json::from_str(r#"{"type":"bye","node":1}"#).unwrap();
        assert!(matches!(bye, Wire::Bye { node: 1 }));
    }
}
