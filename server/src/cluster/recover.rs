//! History in the cluster: every node's ring of a channel is filled from
//! the messages it receives from Redis, its own included, in the order of
//! the offsets Redis gave them (`relay::APPEND`), and is kept gapless by
//! reading the channel's stream whenever the node starts following it
//! (first member here, a connection about to resume here, or the link back
//! after an outage). See `docs/cluster.md`, "History".

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use protocol::history::Unrecovered;

use super::envelope::Envelope;
use super::link::Link;
use super::subscribe::Node;
use super::{Relay, IO_TIMEOUT};
use crate::channels::Channels;
use crate::fanout::{Broadcast, ConnId};
use crate::history::{History, Log, Older};

/// Reads a channel's position and its stream in one atomic step. `KEYS`:
/// the position hash and the stream; `ARGV`: an epoch to use if the channel
/// has none (then it has no history either: a stale stream goes), the TTL
/// in seconds, the first offset wanted (`-`: the last `ARGV[4]` messages).
/// Returns `{epoch, last offset, entries}`.
const READ: &str = r"
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then
  redis.call('DEL', KEYS[2])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local last = redis.call('HGET', KEYS[1], 'offset') or '0'
local entries
if ARGV[3] == '-' then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[4])
else
  entries = redis.call('XRANGE', KEYS[2], ARGV[3], '+')
end
return {epoch, last, entries}
";

/// [`READ`], sent as `EVALSHA` (loaded again if Redis lost it): built
/// once, for every node's catch-up and `GET /api/history`.
fn read_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(READ))
}

/// A stream's entries: offset and envelope, oldest first.
type Entries = Vec<(u64, Bytes)>;

/// The connection a query runs on.
type Conn = redis::aio::MultiplexedConnection;

/// A connection's claim on a channel it is about to join: while it lasts,
/// the node follows the channel even though it has no member here yet.
#[derive(Debug)]
pub(crate) struct Claim {
    link: Arc<Link>,
    name: Option<Arc<str>>,
    /// Whether the subscribing task looks again once it is dropped (not
    /// for a channel already followed: joined or not, nothing changes).
    wake: bool,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else { return };
        let mut pending = self.link.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = pending.get_mut(&name) {
            *n -= 1;
            if *n == 0 {
                pending.remove(&name);
            }
        }
        drop(pending);
        if self.wake {
            self.link.wake.notify_one();
        }
    }
}

impl Relay {
    /// Before a connection joins channel `name`: waits (at most
    /// [`IO_TIMEOUT`]) until this node follows it, i.e. is subscribed to
    /// its Redis channel and, with history, has read its stream, so that a
    /// member told it joined hears every node's messages sent after that
    /// (and `since` is served from a ring that holds what the stream
    /// holds). Returns at once if it does, or if the link is down (the ring
    /// then serves what it has). Keep the claim until joined.
    pub(crate) async fn follow(&self, name: &str) -> Claim {
        let link = &self.link;
        if !link.stats.cluster.link_up() {
            return self.no_claim();
        }
        let is_followed = || {
            link.followed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(name)
        };
        let claim = {
            // See `subscribe::follow`: checked and claimed under one lock.
            let followed = link.followed.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(name) = followed.get(name) {
                let mut claim = self.register(name.clone());
                claim.wake = false;
                return claim;
            }
            self.register(name.into())
        };
        link.wake.notify_one();
        let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
        loop {
            let added = link.newly_followed.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            if is_followed() {
                break;
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                tracing::debug!(
                    channel = name,
                    "cluster: joining before the node follows it"
                );
                break;
            }
        }
        claim
    }

    fn no_claim(&self) -> Claim {
        Claim {
            link: self.link.clone(),
            name: None,
            wake: false,
        }
    }

    /// Makes the subscribing task follow `name` until the claim is dropped
    /// (it looks once woken).
    fn register(&self, name: Arc<str>) -> Claim {
        *self
            .link
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.clone())
            .or_default() += 1;
        Claim {
            link: self.link.clone(),
            name: Some(name),
            wake: true,
        }
    }
}

impl Relay {
    /// Messages `from..=to` of channel `name` from its Redis stream (those
    /// older than the TTL left out), for a resume from before the ring's
    /// first message; empty if Redis cannot say (the resume is then told
    /// `expired`). Runs on the server's runtime.
    pub(crate) async fn read_stream(&self, name: &str, from: u64, to: u64) -> Vec<Older> {
        let (_, stream) = self.link.keys(name);
        let mut xrange = redis::cmd("XRANGE");
        xrange.arg(&stream).arg(from).arg(to);
        let ask = |mut conn: Conn| async move { xrange.query_async(&mut conn).await };
        let entries = match self.query(ask).await {
            Some(redis::Value::Array(entries)) => parse_entries(&entries),
            _ => None,
        };
        self.older(entries.unwrap_or_default())
    }

    /// `GET /api/history` in a cluster: channel `name`'s epoch, last
    /// offset and the messages after `since` (those older than the TTL
    /// left out), from Redis, where every node's agree (this node's ring
    /// holds them only while it follows the channel). Like a node starting
    /// to follow it, the read gives a channel without a history its epoch.
    /// `None`: Redis could not be asked.
    pub(crate) async fn read_page(
        &self,
        name: &str,
        since: u64,
    ) -> Option<(String, u64, Vec<Older>)> {
        let (position, stream) = self.link.keys(name);
        let ttl = self.link.history.map_or(1, |l| l.ttl.as_secs().max(1));
        let ask = move |mut conn: Conn| async move {
            let mut read = read_script().prepare_invoke();
            read.key(position)
                .key(stream)
                .arg(crate::history::new_epoch())
                .arg(ttl)
                .arg(since.saturating_add(1))
                .arg(0);
            read.invoke_async(&mut conn).await
        };
        let (epoch, last, entries) = parse(self.query(ask).await?)?;
        Some((epoch, last, self.older(entries)))
    }

    /// Runs `ask` on the connection that reads streams (opened on first
    /// use, dropped after a failure), on the server's runtime; `None` when
    /// Redis cannot be reached or refused it.
    async fn query<F, R>(&self, ask: F) -> Option<redis::Value>
    where
        F: FnOnce(Conn) -> R + Send + 'static,
        R: std::future::Future<Output = redis::RedisResult<redis::Value>> + Send,
    {
        let link = self.link.clone();
        let asked = self.link.runtime.spawn(async move {
            let cached = link
                .reader
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let conn = match cached {
                Some(conn) => conn,
                None => {
                    let config = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(IO_TIMEOUT))
                        .set_response_timeout(Some(IO_TIMEOUT));
                    let conn = link
                        .client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .ok()?;
                    *link.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
                    conn
                }
            };
            let reply = ask(conn).await;
            if reply.is_err() {
                link.reader.lock().unwrap_or_else(|e| e.into_inner()).take();
            }
            reply.ok()
        });
        asked.await.ok().flatten()
    }

    /// The messages of stream `entries` still within the history's TTL.
    fn older(&self, entries: Entries) -> Vec<Older> {
        let ttl = self.link.history.map_or(0, |l| l.ttl.as_millis() as u64);
        let oldest = crate::frame::unix_millis().saturating_sub(ttl);
        entries
            .iter()
            .filter_map(|(offset, bytes)| {
                let e = Envelope::decode(bytes)?;
                (e.time >= oldest).then(|| Older {
                    offset: *offset,
                    raw: crate::frame::frame_message(e.opcode, e.payload),
                    from: e.sender,
                    name: e.name.into(),
                    time: e.time,
                })
            })
            .collect()
    }
}

/// The log a message of channel `name` goes to: the channel's while it has
/// members here, else the history's.
fn log_of(channels: &Channels, history: &History, name: &str) -> Arc<Log> {
    channels
        .get(name)
        .and_then(|c| c.log.clone())
        .unwrap_or_else(|| history.log(name))
}

/// The logs of `names` no longer follow their channel (unsubscribed, or
/// the subscription was lost).
pub(super) fn unfollow<'a>(
    link: &Link,
    channels: &Channels,
    names: impl Iterator<Item = &'a Arc<str>>,
) {
    let Some(history) = channels.history() else {
        return;
    };
    for name in names {
        link.release_credit(Some(name));
        log_of(channels, history, name).set_following(false);
    }
}

/// Right after subscribing to channel `name`: reads its stream from the
/// last offset this node has (or its last messages, if none), delivers what
/// local members missed (the link was down), or tells them with a
/// `recovered: false` notice if Redis no longer has it, and marks the log
/// as following.
pub(super) async fn catch_up(
    at: &Node<'_>,
    data: &mut redis::aio::MultiplexedConnection,
    name: &str,
    costs: &mut Vec<u32>,
) -> Result<(), String> {
    let Some(history) = at.channels.history() else {
        return Ok(());
    };
    let limits = history.limits();
    let log = log_of(at.channels, history, name);
    let (epoch, last) = {
        let locked = history.lock(&log);
        (locked.epoch().to_owned(), locked.last())
    };
    let from = if last > 0 {
        (last + 1).to_string()
    } else {
        "-".into()
    };
    let (position, stream) = at.link.keys(name);
    let mut read = read_script().prepare_invoke();
    read.key(&position)
        .key(&stream)
        .arg(crate::history::new_epoch())
        .arg(limits.ttl.as_secs().max(1))
        .arg(&from)
        .arg(limits.size);
    let read = read.invoke_async::<redis::Value>(data);
    let reply = match tokio::time::timeout(IO_TIMEOUT, read).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("reading a stream timed out".into()),
    };
    let (now_epoch, now_last, mut entries) =
        parse(reply).ok_or_else(|| format!("unexpected answer reading {stream}"))?;
    if from == "-" {
        entries.reverse();
    }
    let continues = last > 0 && now_epoch == epoch;
    let first = entries.first().map(|(offset, _)| *offset);
    let lost = if !continues {
        (last > 0).then_some(Unrecovered::Epoch)
    } else if now_last > last && first != Some(last + 1) {
        Some(Unrecovered::Expired)
    } else {
        None
    };
    if !continues || lost.is_some() {
        let base = first.map_or(now_last, |offset| offset - 1);
        history.lock(&log).reset(&now_epoch, base);
        if let Some(reason) = lost {
            notice(at, name, reason, &now_epoch, base);
        }
    }
    // Members here were following: what came meanwhile is theirs.
    let missed = last > 0;
    for (offset, envelope) in &entries {
        deliver_logged(at, *offset, &now_epoch, envelope, missed, costs).await;
    }
    log.set_following(true);
    if lost.is_some() || (missed && !entries.is_empty()) {
        tracing::info!(channel = name, missed = entries.len(), lost = ?lost,
            "cluster: caught up from the stream");
    }
    Ok(())
}

/// `{epoch, last, [[id, [field, value, ...]], ...]}`.
fn parse(reply: redis::Value) -> Option<(String, u64, Entries)> {
    use redis::Value;
    let text = |v: &Value| match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    };
    let Value::Array(parts) = reply else {
        return None;
    };
    let [epoch, last, Value::Array(raw)] = &parts[..] else {
        return None;
    };
    let (epoch, last) = (text(epoch)?, text(last)?.parse().ok()?);
    Some((epoch, last, parse_entries(raw)?))
}

/// A stream's entries: `[[id, [field, value, ...]], ...]`, the id
/// `<offset>-0`, the value of field `m` the envelope.
fn parse_entries(raw: &[redis::Value]) -> Option<Entries> {
    use redis::Value;
    let text = |v: &Value| match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let mut entries = Vec::with_capacity(raw.len());
    for entry in raw {
        let Value::Array(entry) = entry else {
            return None;
        };
        let [id, Value::Array(fields)] = &entry[..] else {
            return None;
        };
        let id = text(id)?;
        let offset = id.split_once('-').map_or(&*id, |(o, _)| o).parse().ok()?;
        let Some(Value::BulkString(envelope)) = fields.get(1) else {
            return None;
        };
        entries.push((offset, Bytes::copy_from_slice(envelope)));
    }
    Some(entries)
}

/// Appends a message Redis positioned to its channel's log and, if
/// `deliver` and the channel has members here, pushes it to their shards
/// under the log's lock (as `publish::Publisher::publish_logged` does for
/// a lone node). This node's own messages keep their sender's id, so that
/// the sender is skipped (unless `--echo`).
pub(super) async fn deliver_logged(
    at: &Node<'_>,
    offset: u64,
    epoch: &str,
    bytes: &[u8],
    deliver: bool,
    costs: &mut Vec<u32>,
) {
    let Some(history) = at.channels.history() else {
        return;
    };
    let Some(envelope) = Envelope::decode(bytes) else {
        tracing::debug!(len = bytes.len(), "cluster: ignoring a malformed message");
        return;
    };
    if envelope.node != at.node {
        at.link
            .stats
            .cluster
            .relayed_in
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let raw = crate::frame::frame_message(envelope.opcode, envelope.payload);
    let wanted = at.link.stats.wanted();
    let channel = at.channels.get(envelope.channel).filter(|_| deliver);
    costs.clear();
    let own = envelope.node == at.node;
    let held = own.then(|| at.link.take_credit(envelope.channel)).flatten();
    if let Some(held) = held {
        // Reserved by its sender here when it was offered.
        if channel.is_some() {
            *costs = held;
        } else {
            at.fanout.give_back(&held);
        }
    } else if let Some(channel) = &channel {
        let events = usize::from(wanted.v1) + usize::from(wanted.v2);
        let event_len = raw.len() * 4 / 3 + envelope.name.len() + envelope.channel.len() + 160;
        at.fanout
            .reserve(channel, raw.len() + events * event_len, costs)
            .await;
    }
    let framed_at = Instant::now();
    let sender = if envelope.node == at.node {
        ConnId(envelope.sender)
    } else {
        // Not a local connection (ids start at 1): no local client is
        // skipped as its sender.
        ConnId(0)
    };
    let log = log_of(at.channels, history, envelope.channel);
    let mut locked = history.lock(&log);
    let appended = locked.append_at(
        offset,
        epoch,
        &raw,
        envelope.sender,
        envelope.name,
        envelope.time,
        wanted,
    );
    // A member may have joined since `channel` was looked up.
    let current = deliver.then(|| at.channels.get(envelope.channel)).flatten();
    match (appended, current) {
        (Some((v1, v2)), Some(channel)) => at.fanout.publish_logged(
            Broadcast {
                raw: Some(raw),
                v1,
                v2,
                sender,
                channel: channel.id,
                framed_at,
                cost: 0,
                offset,
                deflated: None,
            },
            costs,
            &channel,
        ),
        _ => at.fanout.give_back(costs),
    }
    drop(locked);
    history.trim();
}

/// Tells channel `name`'s `broadcast.v2` members here that messages were
/// lost during the outage: an unsolicited `subscribed` (no `id`) with
/// `recovered: false`, the reason and the position to resume from. A
/// `broadcast.v1` client has no such event after its `welcome`; raw
/// clients cannot be told.
fn notice(at: &Node<'_>, name: &str, reason: Unrecovered, epoch: &str, offset: u64) {
    let Some(channel) = at.channels.get(name) else {
        return;
    };
    let event = protocol::v2::Event::Subscribed {
        id: None,
        channel: name.to_owned(),
        online: channel.members() as u64,
        offset: Some(offset),
        epoch: Some(epoch.to_owned()),
        recovered: Some(false),
        reason: Some(reason),
    };
    at.fanout.publish_free(
        Broadcast {
            raw: None,
            v1: None,
            v2: Some(crate::frame::frame_text(event.encode().as_bytes())),
            sender: ConnId(0),
            channel: channel.id,
            framed_at: Instant::now(),
            cost: 0,
            offset: 0,
            deflated: None,
        },
        &channel,
    );
}
