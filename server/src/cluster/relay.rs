//! Out: the shards hand what their clients send to one task that publishes
//! it to Redis in pipelines ([`Relay::offer`], [`publish_loop`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use protocol::backoff::Backoff;

use super::envelope::Envelope;
use super::link::{Link, Side};
use super::{BACKOFF_CAP, BACKOFF_FIRST, IO_TIMEOUT, MAX_PIPELINE, PING_EVERY, QUEUE_BYTES};
use crate::fanout::Broadcast;

/// What waits for the publishing task.
#[derive(Debug)]
pub(super) struct Queued {
    /// The Redis channel.
    topic: String,
    /// With history: the channel's position hash and stream (the message
    /// goes through [`APPEND`] instead of a `PUBLISH`).
    keys: Option<(String, String)>,
    envelope: Bytes,
}

/// The one step that gives a message its position, with history on (see
/// `docs/cluster.md`, "Keys"). `KEYS`: the channel's position hash and
/// stream; `ARGV`: the envelope, an epoch to use if the channel has none,
/// the stream's length, the TTL in seconds, the Redis channel. A new hash
/// (first message, or its history expired or was lost) starts a history:
/// the stream's leftovers go, so that offsets restart at 1 under the new
/// epoch. Publishes `P<epoch>:<offset> <envelope>` and returns the offset.
pub(super) const APPEND: &str = r"
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[2]) == 1 then
  redis.call('DEL', KEYS[2])
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local epoch = redis.call('HGET', KEYS[1], 'epoch')
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], offset .. '-0', 'm', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[5], 'P' .. epoch .. ':' .. offset .. ' ' .. ARGV[1])
return offset
";

/// The shards' end of the relay: cloned into the shared hub, used once per
/// published message.
#[derive(Debug, Clone)]
pub(crate) struct Relay {
    pub(super) node: u64,
    pub(super) tx: mpsc::UnboundedSender<Queued>,
    pub(super) link: Arc<Link>,
}

impl Relay {
    /// Hands a message a local client sent to the publishing task, or
    /// counts it as not relayed. Never blocks, never waits for Redis.
    pub(crate) fn offer(&self, msg: &Broadcast, channel: &str, name: &str) {
        let Some(raw) = &msg.raw else { return };
        self.queue(raw, channel, msg.sender.0, name, false);
    }

    /// With history: hands a message to the publishing task, which gives
    /// it its position in Redis ([`APPEND`]); this node delivers it when it
    /// comes back through the subscription, with `costs` (the credit
    /// reserved for it, held meanwhile). `false` (counted as not relayed,
    /// `costs` not taken) when the link is down or the queue is full.
    pub(crate) fn offer_logged(
        &self,
        raw: &Bytes,
        channel: &str,
        sender: u64,
        name: &str,
        costs: &[u32],
    ) -> bool {
        let hold = costs.iter().any(|&c| c > 0);
        if hold {
            // Before it is queued: it may come back before `queue` returns.
            self.link.hold_credit(channel, costs);
        }
        let queued = self.queue(raw, channel, sender, name, true);
        if hold && !queued {
            if let Some(costs) = self.link.take_credit(channel) {
                self.link.fanout.give_back(&costs);
            }
        }
        queued
    }

    fn queue(&self, raw: &[u8], channel: &str, sender: u64, name: &str, logged: bool) -> bool {
        let stats = &self.link.stats.cluster;
        if !stats.out_up.load(Ordering::Relaxed) {
            stats.not_relayed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let envelope = Envelope::encode(
            self.node,
            raw,
            channel,
            sender,
            name,
            crate::frame::unix_millis(),
        );
        let len = envelope.len();
        let queued = Queued {
            topic: self.link.topic(channel),
            keys: logged.then(|| self.link.keys(channel)),
            envelope,
        };
        if self.link.queued.fetch_add(len, Ordering::Relaxed) + len > QUEUE_BYTES
            || self.tx.send(queued).is_err()
        {
            self.link.queued.fetch_sub(len, Ordering::Relaxed);
            stats.not_relayed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// Sends `batch` as one pipeline; returns how many Redis ran and the
/// indices of those it refused with `NOSCRIPT` (its script cache was
/// flushed: they did nothing and can be sent again).
async fn send(
    conn: &mut redis::aio::MultiplexedConnection,
    link: &Link,
    sha: &str,
    batch: &[Queued],
) -> redis::RedisResult<(u64, Vec<usize>)> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let limits = link.history.unwrap_or(crate::history::Limits {
        size: 0,
        ttl: std::time::Duration::ZERO,
        memory: 0,
    });
    let epoch = crate::history::new_epoch();
    for q in batch {
        match &q.keys {
            None => pipe.cmd("PUBLISH").arg(&q.topic).arg(&q.envelope[..]),
            Some((position, stream)) => pipe
                .cmd("EVALSHA")
                .arg(sha)
                .arg(2)
                .arg(position)
                .arg(stream)
                .arg(&q.envelope[..])
                .arg(&epoch)
                .arg(limits.size)
                .arg(limits.ttl.as_secs().max(1))
                .arg(&q.topic),
        };
    }
    let results: Vec<redis::RedisResult<redis::Value>> = pipe.query_async(conn).await?;
    let mut ran = 0;
    let mut again = Vec::new();
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(_) => ran += 1,
            Err(e) if e.code() == Some("NOSCRIPT") => again.push(i),
            Err(e) => tracing::debug!(cause = %e, "cluster: Redis refused a message"),
        }
    }
    Ok((ran, again))
}

/// Loads [`APPEND`] into Redis's script cache; returns its SHA1.
async fn load(conn: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<String> {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(APPEND)
        .query_async(conn)
        .await
}

/// The publishing side: one connection, one pipeline at a time.
pub(super) async fn publish_loop(link: Arc<Link>, mut rx: mpsc::UnboundedReceiver<Queued>) {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(IO_TIMEOUT))
        .set_response_timeout(Some(IO_TIMEOUT));
    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_CAP);
    let mut batch: Vec<Queued> = Vec::with_capacity(MAX_PIPELINE);
    let stats = &link.stats.cluster;
    loop {
        let mut conn = match link
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => conn,
            Err(e) => {
                link.down(Side::Out, &e);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        let sha = match load(&mut conn).await {
            Ok(sha) => sha,
            Err(e) => {
                link.down(Side::Out, &e);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        link.up(Side::Out);
        backoff.reset();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let failure = loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, MAX_PIPELINE) => {
                    if n == 0 {
                        return; // every sender is gone: the server stopped
                    }
                    let mut result = send(&mut conn, &link, &sha, &batch).await;
                    if let Ok((ran, again)) = &result {
                        if !again.is_empty() {
                            // Redis lost its script cache (SCRIPT FLUSH):
                            // those did nothing; load it and send them again.
                            let (retry, done): (Vec<_>, Vec<_>) = batch
                                .drain(..)
                                .enumerate()
                                .partition(|(i, _)| again.binary_search(i).is_ok());
                            batch.extend(done.into_iter().map(|(_, q)| q));
                            let retry: Vec<Queued> = retry.into_iter().map(|(_, q)| q).collect();
                            let ran = *ran;
                            result = match load(&mut conn).await {
                                Ok(_) => send(&mut conn, &link, &sha, &retry).await
                                    .map(|(more, _)| (ran + more, Vec::new())),
                                Err(e) => Err(e),
                            };
                            batch.extend(retry);
                        }
                    }
                    let bytes: usize = batch.iter().map(|q| q.envelope.len()).sum();
                    batch.clear();
                    link.queued.fetch_sub(bytes, Ordering::Relaxed);
                    match result {
                        Ok((ran, _)) => {
                            stats.relayed_out.fetch_add(ran, Ordering::Relaxed);
                            stats.not_relayed.fetch_add(n as u64 - ran, Ordering::Relaxed);
                        }
                        Err(e) => {
                            // Redis may have run some of them: count none as
                            // relayed and never resend (at most once).
                            stats.not_relayed.fetch_add(n as u64, Ordering::Relaxed);
                            break e;
                        }
                    };
                    ping.reset();
                }
                _ = ping.tick() => {
                    if let Err(e) = redis::cmd("PING").exec_async(&mut conn).await {
                        break e;
                    }
                }
                () = link.check_out.notified() => {
                    if let Err(e) = redis::cmd("PING").exec_async(&mut conn).await {
                        break e;
                    }
                    ping.reset();
                }
            }
        };
        link.down(Side::Out, &failure);
        link.release_credit(None);
        // What was queued before the failure is stale by the time a new
        // connection is up: count it as not relayed rather than send it late.
        let mut dropped = 0u64;
        while let Ok(queued) = rx.try_recv() {
            link.queued
                .fetch_sub(queued.envelope.len(), Ordering::Relaxed);
            dropped += 1;
        }
        stats.not_relayed.fetch_add(dropped, Ordering::Relaxed);
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
