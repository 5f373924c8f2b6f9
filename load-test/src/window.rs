//! `--max-rate` flow control: each publisher may have `--window` messages in
//! flight, and a message stops being in flight when *every* reading
//! subscriber of its channel (`--channels`) has received it. Publishing therefore runs exactly as fast as
//! the slowest reader keeps up (the server's lossless throughput), instead of
//! as fast as one lucky subscriber, with the others falling behind until the
//! server closes them.
//!
//! Per publisher there is a ring of `window` counters: message `seq` is
//! counted in slot `seq % window` (at most `window` messages are in flight,
//! and a subscriber receives one publisher's messages in order, so a slot is
//! free again when it is reused). The subscriber whose count completes a slot
//! returns the permit. When a subscriber leaves early (the server closed it)
//! the number its channel needs drops, and a publisher that waited [`SWEEP_AFTER`] for a
//! permit sweeps the ring for slots that are complete under the new number.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::AcqRel, Ordering::Acquire};
use std::time::Duration;

use tokio::sync::Semaphore;

/// A publisher waiting this long for a permit sweeps its ring.
pub(crate) const SWEEP_AFTER: Duration = Duration::from_millis(50);

struct PubWindow {
    permits: Semaphore,
    slots: Box<[AtomicU32]>,
}

/// The windows of all publishers.
pub(crate) struct Windows {
    size: u32,
    /// By channel: reading subscribers that must receive a message before
    /// its permit returns. Publisher `p` publishes to channel `p % len`.
    need: Box<[AtomicU32]>,
    pubs: Vec<PubWindow>,
    /// Permits returned by sweeps (a subscriber left with messages in flight).
    swept: AtomicU64,
}

impl Windows {
    /// Windows of `size` for `publishers` spread over `channels` (publisher
    /// `p` in channel `p % channels`, as `--channels` places them).
    pub(crate) fn new(publishers: usize, size: u32, channels: usize) -> Self {
        Self {
            size,
            need: (0..channels.max(1)).map(|_| AtomicU32::new(0)).collect(),
            pubs: (0..publishers)
                .map(|_| PubWindow {
                    permits: Semaphore::new(size as usize),
                    slots: (0..size).map(|_| AtomicU32::new(0)).collect(),
                })
                .collect(),
            swept: AtomicU64::new(0),
        }
    }

    /// The reading subscribers publisher `p`'s messages must reach.
    fn need_of(&self, p: usize) -> &AtomicU32 {
        &self.need[p % self.need.len()]
    }

    /// A reading subscriber of `channel` joins (before publishing starts).
    pub(crate) fn join(&self, channel: usize) {
        self.need[channel].fetch_add(1, AcqRel);
    }

    /// A reading subscriber of `channel` ended before the run stopped.
    pub(crate) fn leave(&self, channel: usize) {
        self.need[channel].fetch_sub(1, AcqRel);
    }

    /// A subscriber of `p`'s channel received message `seq` of publisher
    /// `p` (first time).
    #[inline]
    pub(crate) fn ack(&self, p: usize, seq: u64) {
        let w = &self.pubs[p];
        let slot = &w.slots[(seq % u64::from(self.size)) as usize];
        let count = slot.fetch_add(1, AcqRel) + 1;
        let need = self.need_of(p).load(Acquire);
        if count == need {
            slot.fetch_sub(need, AcqRel);
            w.permits.add_permits(1);
        }
    }

    /// Waits for at least one permit of publisher `p` and takes up to `max`;
    /// None once the window is closed.
    pub(crate) async fn acquire(&self, p: usize, max: u32) -> Option<u32> {
        let w = &self.pubs[p];
        loop {
            match tokio::time::timeout(SWEEP_AFTER, w.permits.acquire()).await {
                Ok(Ok(permit)) => {
                    permit.forget();
                    return Some(1 + w.permits.forget_permits(max as usize - 1) as u32);
                }
                Ok(Err(_)) => return None,
                Err(_) => {
                    self.sweep(p);
                }
            }
        }
    }

    /// Returns the permits of slots complete under the current `need`; with
    /// nobody left to read, returns one permit so that publishing goes on.
    fn sweep(&self, p: usize) -> u32 {
        let w = &self.pubs[p];
        let need = self.need_of(p).load(Acquire);
        let mut released = 0;
        if need == 0 {
            released = 1;
        } else {
            for slot in w.slots.iter() {
                let mut cur = slot.load(Acquire);
                while cur >= need {
                    match slot.compare_exchange(cur, cur - need, AcqRel, Acquire) {
                        Ok(_) => {
                            released += 1;
                            cur -= need;
                        }
                        Err(now) => cur = now,
                    }
                }
            }
        }
        if released > 0 {
            w.permits.add_permits(released as usize);
            self.swept.fetch_add(u64::from(released), AcqRel);
        }
        released
    }

    /// Permits returned by sweeps so far.
    pub(crate) fn swept(&self) -> u64 {
        self.swept.load(Acquire)
    }

    #[cfg(test)]
    fn available(&self, p: usize) -> usize {
        self.pubs[p].permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_permit_returns_when_every_subscriber_has_the_message() {
        let w = Windows::new(2, 4, 1);
        for _ in 0..3 {
            w.join(0);
        }
        assert_eq!(w.acquire(0, 10).await, Some(4)); // the whole window
        assert_eq!(w.available(0), 0);
        for sub in 0..3 {
            w.ack(0, 0);
            // Only the third subscriber's ack returns the permit.
            assert_eq!(w.available(0), usize::from(sub == 2));
        }
        w.ack(0, 1);
        w.ack(0, 1);
        assert_eq!(w.available(0), 1);
        // Publisher 1 is independent.
        assert_eq!(w.available(1), 4);
        assert_eq!(w.acquire(0, 10).await, Some(1));
        // Slot 0 is reused by seq 4 and counts from zero again.
        for _ in 0..3 {
            w.ack(0, 4);
        }
        w.ack(0, 1);
        assert_eq!(w.available(0), 2);
        assert_eq!(w.swept(), 0);
    }

    #[tokio::test]
    async fn a_subscriber_leaving_does_not_stall_the_window() {
        let w = Windows::new(1, 2, 1);
        w.join(0);
        w.join(0);
        assert_eq!(w.acquire(0, 2).await, Some(2));
        // Subscriber A got both messages, then B left without them.
        w.ack(0, 0);
        w.ack(0, 1);
        w.leave(0);
        assert_eq!(w.available(0), 0);
        // The publisher's wait sweeps: both slots are complete for need = 1.
        assert_eq!(w.acquire(0, 2).await, Some(2));
        assert_eq!(w.swept(), 2);
        // Nobody left: permits keep coming, one per sweep.
        w.leave(0);
        assert_eq!(w.acquire(0, 2).await, Some(1));
    }

    #[tokio::test]
    async fn each_channel_needs_its_own_subscribers() {
        // Publishers 0 and 2 in channel 0 (two readers), 1 in channel 1 (one).
        let w = Windows::new(3, 1, 2);
        w.join(0);
        w.join(0);
        w.join(1);
        for p in 0..3 {
            assert_eq!(w.acquire(p, 1).await, Some(1));
        }
        w.ack(1, 0);
        assert_eq!(w.available(1), 1);
        w.ack(0, 0);
        assert_eq!(w.available(0), 0);
        w.ack(0, 0);
        assert_eq!(w.available(0), 1);
        assert_eq!(w.available(2), 0);
    }
}
