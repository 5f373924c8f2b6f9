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

/// What waits for the publishing task: a Redis channel and an envelope.
pub(super) type Queued = (String, Bytes);

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
        let stats = &self.link.stats.cluster;
        if !stats.out_up.load(Ordering::Relaxed) {
            stats.not_relayed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let envelope = Envelope::encode(
            self.node,
            raw,
            channel,
            msg.sender.0,
            name,
            crate::frame::unix_millis(),
        );
        let len = envelope.len();
        if self.link.queued.fetch_add(len, Ordering::Relaxed) + len > QUEUE_BYTES
            || self.tx.send((self.link.topic(channel), envelope)).is_err()
        {
            self.link.queued.fetch_sub(len, Ordering::Relaxed);
            stats.not_relayed.fetch_add(1, Ordering::Relaxed);
        }
    }
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
                    let mut pipe = redis::pipe();
                    for (topic, envelope) in &batch {
                        pipe.cmd("PUBLISH").arg(topic).arg(&envelope[..]).ignore();
                    }
                    let result = pipe.exec_async(&mut conn).await;
                    let bytes: usize = batch.iter().map(|(_, e)| e.len()).sum();
                    batch.clear();
                    link.queued.fetch_sub(bytes, Ordering::Relaxed);
                    match result {
                        Ok(()) => stats.relayed_out.fetch_add(n as u64, Ordering::Relaxed),
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
        // What was queued before the failure is stale by the time a new
        // connection is up: count it as not relayed rather than send it late.
        let mut dropped = 0u64;
        while let Ok((_, envelope)) = rx.try_recv() {
            link.queued.fetch_sub(envelope.len(), Ordering::Relaxed);
            dropped += 1;
        }
        stats.not_relayed.fetch_add(dropped, Ordering::Relaxed);
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
