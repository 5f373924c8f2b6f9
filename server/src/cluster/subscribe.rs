//! In: one subscription to Redis; other nodes' messages are framed once and
//! handed to the local shards like a local client's ([`subscribe_loop`]).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;

use protocol::backoff::Backoff;

use super::envelope::Envelope;
use super::link::{Link, Side};
use super::recover;
use super::{BACKOFF_CAP, BACKOFF_FIRST, IO_TIMEOUT, PING_EVERY};
use crate::channels::Channels;
use crate::fanout::{Broadcast, ConnId, Fanout};

/// The subscribing side: receives envelopes and delivers other nodes'
/// messages to the local shards.
pub(super) async fn subscribe_loop(
    link: Arc<Link>,
    node: u64,
    fanout: Fanout,
    channels: Arc<Channels>,
) {
    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_CAP);
    loop {
        let connected = link.client.get_async_pubsub();
        let pubsub = match tokio::time::timeout(IO_TIMEOUT, connected).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => {
                link.down(Side::In, &e);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            Err(_) => {
                link.down(Side::In, &"connect timed out");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        // With history, a second connection reads the streams.
        let mut data = None;
        if channels.history().is_some() {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(IO_TIMEOUT))
                .set_response_timeout(Some(IO_TIMEOUT));
            match link
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(conn) => data = Some(conn),
                Err(e) => {
                    link.down(Side::In, &e);
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            }
        }
        link.up(Side::In);
        backoff.reset();
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut costs = Vec::new();
        // A new connection has no subscriptions: take every local channel's.
        let mut subscribed = HashSet::new();
        link.stats.cluster.subscriptions.store(0, Ordering::Relaxed);
        link.followed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let mut resync = true;
        let failure: String = loop {
            if std::mem::take(&mut resync) {
                let added = match follow(&link, &channels, &mut sink, &mut subscribed).await {
                    Ok(added) => added,
                    Err(e) => break e,
                };
                if let (Some(data), false) = (&mut data, added.is_empty()) {
                    let mut failed = None;
                    for name in &added {
                        let at = Node {
                            link: &link,
                            fanout: &fanout,
                            channels: &channels,
                            node,
                        };
                        if let Err(e) = recover::catch_up(&at, data, name, &mut costs).await {
                            failed = Some(e);
                            break;
                        }
                    }
                    if let Some(e) = failed {
                        break e;
                    }
                }
                // Followed now: the joins waiting for them go on.
                if !added.is_empty() {
                    link.followed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(added);
                    link.newly_followed.notify_waiters();
                }
            }
            tokio::select! {
                () = channels.changed() => resync = true,
                () = link.wake.notified() => resync = true,
                msg = stream.next() => match msg {
                    Some(msg) => {
                        let at = Node { link: &link, fanout: &fanout, channels: &channels, node };
                        deliver(&at, msg.get_payload_bytes(), &mut costs).await;
                    }
                    None => break "connection closed".into(),
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(IO_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break e.to_string(),
                        Err(_) => break "ping timed out".into(),
                    }
                }
            }
        };
        link.down(Side::In, &failure);
        recover::unfollow(&link, &channels, subscribed.iter());
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Subscribes to the Redis channel of every local channel not yet
/// subscribed to (and of those a connection is about to join), and
/// unsubscribes from those of channels gone: at most one `SUBSCRIBE` and
/// one `UNSUBSCRIBE`, however many channels changed. Returns the names
/// subscribed to.
///
/// What is wanted is read, and the channels gone are taken out of
/// `Link::followed`, under that set's lock, which a joining connection
/// holds while it checks the set and registers its claim (`Relay::follow`):
/// either the claim is seen here and the channel stays, or the join finds
/// it gone and waits until it is followed again. The caller adds the names
/// returned to that set once they are followed (with history, after their
/// catch-up).
async fn follow(
    link: &Link,
    channels: &Channels,
    sink: &mut redis::aio::PubSubSink,
    subscribed: &mut HashSet<Arc<str>>,
) -> Result<Vec<Arc<str>>, String> {
    let (wanted, added, gone) = {
        let mut followed = link.followed.lock().unwrap_or_else(|e| e.into_inner());
        let mut wanted: HashSet<Arc<str>> = channels.names().into_iter().collect();
        wanted.extend(
            link.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned(),
        );
        let added: Vec<Arc<str>> = wanted.difference(subscribed).cloned().collect();
        let gone: Vec<Arc<str>> = subscribed.difference(&wanted).cloned().collect();
        for name in &gone {
            followed.remove(name);
        }
        (wanted, added, gone)
    };
    recover::unfollow(link, channels, gone.iter());
    let add: Vec<String> = added.iter().map(|name| link.topic(name)).collect();
    let drop: Vec<String> = gone.iter().map(|name| link.topic(name)).collect();
    let io = |e: redis::RedisError| e.to_string();
    let timed_out = |_| "subscription change timed out".to_owned();
    if !add.is_empty() {
        tokio::time::timeout(IO_TIMEOUT, sink.subscribe(&add))
            .await
            .map_err(timed_out)?
            .map_err(io)?;
    }
    if !drop.is_empty() {
        tokio::time::timeout(IO_TIMEOUT, sink.unsubscribe(&drop))
            .await
            .map_err(timed_out)?
            .map_err(io)?;
    }
    *subscribed = wanted;
    link.stats
        .cluster
        .subscriptions
        .store(subscribed.len(), Ordering::Relaxed);
    Ok(added)
}

/// What delivering a message from Redis needs.
pub(super) struct Node<'a> {
    pub(super) link: &'a Link,
    pub(super) fanout: &'a Fanout,
    pub(super) channels: &'a Channels,
    /// This node's id.
    pub(super) node: u64,
}

/// Frames a message from another node once per format and hands it to every
/// local shard, like a message from a local client: through the same fan-out
/// credit, so a busy node stops reading its Redis subscription (Redis then
/// buffers, up to its `client-output-buffer-limit` for pub/sub clients).
async fn deliver(at: &Node<'_>, bytes: &[u8], costs: &mut Vec<u32>) {
    let (stats, fanout, channels, node) = (&at.link.stats, at.fanout, at.channels, at.node);
    let bytes = match super::envelope::positioned(bytes) {
        Some((offset, epoch, envelope)) if channels.history().is_some() => {
            recover::deliver_logged(at, offset, epoch, envelope, true, costs).await;
            return;
        }
        // History is off here but not on the sender's node.
        Some((_, _, envelope)) => envelope,
        None => bytes,
    };
    let Some(envelope) = Envelope::decode(bytes) else {
        tracing::debug!(len = bytes.len(), "cluster: ignoring a malformed message");
        return;
    };
    if envelope.node == node {
        return; // ours: already delivered locally when it was received
    }
    stats.cluster.relayed_in.fetch_add(1, Ordering::Relaxed);
    let Some(channel) = channels.get(envelope.channel) else {
        return; // nobody here is in that channel
    };
    let raw = crate::frame::frame_message(envelope.opcode, envelope.payload);
    let wanted = stats.wanted();
    let (sender, name, time) = (envelope.sender, envelope.name, envelope.time);
    let v1 = wanted
        .v1
        .then(|| crate::frame::v1_message(&raw, sender, name, time, None));
    let v2 = wanted
        .v2
        .then(|| crate::frame::v2_message(&raw, envelope.channel, sender, name, time, None));
    let framed_at = Instant::now();
    let len = raw.len() + v1.as_ref().map_or(0, Bytes::len) + v2.as_ref().map_or(0, Bytes::len);
    fanout.reserve(&channel, len, costs).await;
    fanout.publish(
        Broadcast {
            raw: Some(raw),
            v1,
            v2,
            // Not a local connection (ids start at 1), so no local client is
            // skipped as its sender.
            sender: ConnId(0),
            channel: channel.id,
            framed_at,
            cost: 0,
            offset: 0,
            deflated: None,
        },
        costs,
    );
}
