//! Flow control: what bounds the work queued between a publisher's socket and
//! its recipients' sockets, and how publishers are slowed down instead of
//! anyone being dropped.
//!
//! A reader takes a frame from its socket in one parse; delivering it costs
//! one write per recipient. Without a brake between the two, readers outrun
//! the fan-out, queues grow without bound and readers get cut as "slow
//! consumers" although they read as fast as they can. Two rules close the
//! loop, and both end at the same place: the publisher's reader stops
//! polling its socket, so TCP slows the sender down and nothing is lost.
//!
//! 1. **Credit per shard** ([`Credit`]). Each shard has a budget of
//!    [`SHARD_BUDGET`] "delivery bytes": a message waiting in its inbox costs
//!    `recipients on that shard x (frame bytes + PER_DELIVERY)`, which is
//!    roughly the time the shard will spend writing it (the per-delivery
//!    part is calibrated from measured delivery times). A publisher reserves
//!    that cost on every shard before it publishes; the shard gives it back
//!    once it has written (or queued) the message to its sockets, one
//!    release per dispatch batch. So what is queued between shards is
//!    bounded in memory (at most the budget's worth of frames per shard) and
//!    in time (at saturation a budget is a few milliseconds of writing),
//!    whatever the input rate. The cost scales with the audience so that a
//!    room of 1,000 queues fewer messages than a room of 10: the delay, not
//!    the message count, is what is bounded. A message costing more than the
//!    whole budget takes all of it (it then goes alone).
//!
//!    The budget is a `tokio::sync::Semaphore` per shard. Its waiters are
//!    served first come, first served, and a reader asks for one message at
//!    a time, so when the budget is short the publishers take turns message
//!    by message: a flooding client gets one share, and a client sending
//!    50 msg/s waits behind at most one message of each other publisher,
//!    not behind the flood. The fast path (credit available) is one atomic
//!    compare-and-swap per shard; only waiting and the per-batch release
//!    take the semaphore's internal lock.
//!
//! 2. **The audience gate** ([`Audience`]). A shard whose sockets do not
//!    take what it writes keeps the rest in per-connection outboxes. When
//!    more than half of a shard's connections have a non-empty outbox, the
//!    publishers are outpacing the audience as a whole: the dispatcher stops
//!    taking messages from its inbox until enough outboxes have drained.
//!    Its credit is then not returned, and rule 1 stops the publishers.
//!    Cutting the audience would only hide that the input is too fast.
//!    When only a few connections are behind while the rest keep up, the
//!    gate stays open and those few are stragglers: their outbox grows
//!    until `--max-backlog`, and they are closed with 1013 as before.
//!    A connection whose outbox has made no progress for [`STALL_AFTER`]
//!    (it does not read at all) stops counting as "behind": a crowd of
//!    clients that never read cannot hold everyone else back for longer
//!    than that; they become stragglers and are closed.
//!
//!    Sockets are asked to keep at most [`NOTSENT_LOWAT`] unsent bytes in
//!    the kernel (`TCP_NOTSENT_LOWAT`), so a backlog sits in the outbox,
//!    where the gate and the 1013 rule can see it, rather than in
//!    megabytes of kernel send buffer, where it is only latency.
//!
//! The gate looks at one shard; connections are spread evenly over shards,
//! so each shard's audience is a sample of the whole.

use std::cell::Cell;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

/// Bytes of one unit of credit.
const UNIT: usize = 64;

/// Fixed cost of one delivery (the per-socket part of a write), counted
/// like this many frame bytes. Measured here: a delivery costs about 110 ns
/// at 64 B and 830 ns at 4 KiB, i.e. ~0.18 ns per byte plus ~100 ns, the
/// time of ~550 bytes.
const PER_DELIVERY: usize = 512;

/// Delivery bytes a shard may have queued in its inbox (see the module docs).
/// At this machine's saturation rate (several million deliveries per second)
/// this is a few milliseconds of writing per shard.
pub(crate) const SHARD_BUDGET: usize = 16 << 20;

/// A connection whose outbox has not moved for this long does not hold the
/// audience gate closed.
pub(crate) const STALL_AFTER: Duration = Duration::from_secs(1);

/// Most unsent bytes a socket keeps in the kernel (`TCP_NOTSENT_LOWAT`).
pub(crate) const NOTSENT_LOWAT: u32 = 32 * 1024;

/// One shard's fan-out budget (rule 1 of the module docs).
#[derive(Debug)]
pub(crate) struct Credit {
    units: Semaphore,
}

impl Default for Credit {
    fn default() -> Self {
        Self {
            units: Semaphore::new(Self::BUDGET_UNITS as usize),
        }
    }
}

impl Credit {
    const BUDGET_UNITS: u32 = (SHARD_BUDGET / UNIT) as u32;

    /// The credit a message of `frame_len` bytes takes on a shard with
    /// `recipients` connections (at least one delivery's worth, so that
    /// even a shard nobody listens on has a bounded inbox).
    pub(crate) fn cost(frame_len: usize, recipients: usize) -> u32 {
        let bytes = recipients
            .max(1)
            .saturating_mul(frame_len.saturating_add(PER_DELIVERY));
        let units = bytes.div_ceil(UNIT);
        u32::try_from(units).map_or(Self::BUDGET_UNITS, |u| u.min(Self::BUDGET_UNITS))
    }

    /// Takes `units` if they are available now.
    pub(crate) fn try_take(&self, units: u32) -> bool {
        match self.units.try_acquire_many(units) {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// Waits (first come, first served) until `units` are available, and
    /// takes them.
    pub(crate) async fn take(&self, units: u32) {
        // The semaphore is never closed.
        if let Ok(permit) = self.units.acquire_many(units).await {
            permit.forget();
        }
    }

    /// Returns credit taken with [`Credit::try_take`] or [`Credit::take`].
    pub(crate) fn give_back(&self, units: u64) {
        if units > 0 {
            self.units.add_permits(units as usize);
        }
    }

    /// Delivery bytes currently reserved (queued in the shard's inbox).
    pub(crate) fn in_use_bytes(&self) -> u64 {
        let free = self.units.available_permits() as u64;
        u64::from(Self::BUDGET_UNITS).saturating_sub(free) * UNIT as u64
    }

    /// The whole budget, in delivery bytes.
    pub(crate) fn budget_bytes() -> u64 {
        u64::from(Self::BUDGET_UNITS) * UNIT as u64
    }
}

/// How far one shard's connections are behind (rule 2 of the module docs).
/// Shard-local: `Cell`s, touched only on that shard's thread.
#[derive(Debug, Default)]
pub(crate) struct Audience {
    /// Connections registered on the shard.
    members: Cell<usize>,
    /// Of those, connections with a non-empty outbox.
    behind: Cell<usize>,
    /// Of the behind ones, those whose outbox has not moved for [`STALL_AFTER`].
    stalled: Cell<usize>,
    /// Signalled when an outbox empties or a connection leaves.
    progress: Notify,
}

impl Audience {
    pub(crate) fn joined(&self) {
        self.members.set(self.members.get() + 1);
    }

    pub(crate) fn left(&self) {
        self.members.set(self.members.get() - 1);
        self.progress.notify_one();
    }

    /// Whether the publishers are outpacing most of this shard's audience.
    pub(crate) fn congested(&self) -> bool {
        let waiting_for = self.behind.get() - self.stalled.get();
        waiting_for * 2 > self.members.get()
    }

    /// Resolves when the audience may have caught up (an outbox emptied or
    /// a connection left), or when it is time to look for stalled ones.
    pub(crate) async fn progress(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.progress.notified()).await;
    }
}

/// A connection's place in its shard's [`Audience`].
#[derive(Debug)]
pub(crate) struct Lag {
    behind: Cell<bool>,
    stalled: Cell<bool>,
    /// When the outbox last moved (or became non-empty), in
    /// [`crate::clock::millis`] (4 bytes in every connection, not 16).
    moved: Cell<u32>,
}

impl Lag {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            behind: Cell::new(false),
            stalled: Cell::new(false),
            moved: Cell::new(crate::clock::millis(now)),
        }
    }

    /// The outbox became non-empty.
    pub(crate) fn fell_behind(&self, audience: &Audience) {
        if !self.behind.replace(true) {
            audience.behind.set(audience.behind.get() + 1);
            self.moved.set(crate::clock::millis(Instant::now()));
        }
    }

    /// Bytes left the outbox.
    pub(crate) fn moved(&self, audience: &Audience, now: Instant) {
        self.moved.set(crate::clock::millis(now));
        if self.stalled.replace(false) {
            audience.stalled.set(audience.stalled.get() - 1);
        }
    }

    /// The outbox is empty again (or the connection is leaving).
    pub(crate) fn caught_up(&self, audience: &Audience) {
        if self.stalled.replace(false) {
            audience.stalled.set(audience.stalled.get() - 1);
        }
        if self.behind.replace(false) {
            audience.behind.set(audience.behind.get() - 1);
            audience.progress.notify_one();
        }
    }

    /// Marks the connection stalled if its outbox has not moved for
    /// [`STALL_AFTER`]; returns whether it did.
    pub(crate) fn check_stall(&self, audience: &Audience, now: Instant) -> bool {
        if self.behind.get()
            && !self.stalled.get()
            && crate::clock::since(now, self.moved.get()) >= STALL_AFTER
        {
            self.stalled.set(true);
            audience.stalled.set(audience.stalled.get() + 1);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_scales_with_audience_and_is_capped() {
        assert_eq!(Credit::cost(64, 0), 9);
        assert_eq!(Credit::cost(64, 1), 9);
        assert_eq!(Credit::cost(64, 100), 900);
        assert_eq!(Credit::cost(1 << 20, 100_000), Credit::BUDGET_UNITS);
        assert_eq!(Credit::cost(usize::MAX, usize::MAX), Credit::BUDGET_UNITS);
    }

    #[test]
    fn credit_is_taken_and_given_back() {
        let c = Credit::default();
        assert!(c.try_take(Credit::BUDGET_UNITS - 1));
        assert!(!c.try_take(2));
        assert_eq!(c.in_use_bytes(), Credit::budget_bytes() - UNIT as u64);
        c.give_back(u64::from(Credit::BUDGET_UNITS - 1));
        assert_eq!(c.in_use_bytes(), 0);
        assert!(c.try_take(2));
    }

    #[test]
    fn gate_closes_when_most_are_behind_and_ignores_stalled() {
        let a = Audience::default();
        let t0 = Instant::now();
        let lags: Vec<Lag> = (0..4).map(|_| Lag::new(t0)).collect();
        for _ in &lags {
            a.joined();
        }
        lags[0].fell_behind(&a);
        lags[1].fell_behind(&a);
        assert!(!a.congested(), "half behind: stragglers, gate open");
        lags[2].fell_behind(&a);
        assert!(a.congested(), "three of four behind");
        // Two of them never move: after STALL_AFTER they stop counting.
        let later = Instant::now() + STALL_AFTER;
        lags[1].moved(&a, later);
        assert!(lags[0].check_stall(&a, later));
        assert!(!lags[1].check_stall(&a, later));
        assert!(lags[2].check_stall(&a, later));
        assert!(!a.congested());
        // Progress un-stalls; catching up leaves the counts clean.
        lags[2].moved(&a, later);
        assert!(!a.congested());
        for lag in &lags {
            lag.caught_up(&a);
        }
        assert_eq!((a.behind.get(), a.stalled.get()), (0, 0));
    }
}
