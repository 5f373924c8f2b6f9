//! How long to wait before trying to connect again: one exponential backoff
//! for the console client, the browser client and the server's cluster link.
//!
//! # Policy
//!
//! Attempt `n` (1-based, counted since the last [`Backoff::reset`]) has the
//! ceiling `min(cap, first * 2^(n-1))`, and its delay is drawn uniformly
//! from `[0, ceiling]`: "full jitter".
//!
//! Full rather than "equal" jitter (half the ceiling fixed, half random):
//! the point of the jitter is that peers dropped together (a server or
//! Redis restart) do not come back together, and full jitter spreads them
//! over the whole window instead of its upper half, so for the same
//! ceilings the busiest instant sees half as many reconnections. The floor
//! that equal jitter keeps is not needed to protect a server that fails
//! fast: the ceiling still doubles on every failure, and callers reset only
//! after a success (the clients: a connection that stayed up a while), so
//! the mean delay grows just the same.
//!
//! # Planned restarts
//!
//! A server that closes with 1001 (going away: it is shutting down) or 1012
//! (service restart) is expected back soon, and a client waiting out an
//! exponential delay would come back long after it. After such a close the
//! caller says [`Backoff::expect_return`]: the next [`PLANNED_ATTEMPTS`]
//! delays are drawn from a flat window of [`PLANNED_WINDOW`] (full jitter
//! again, so that a crowd dropped by the same restart spreads over the whole
//! second instead of arriving in the same few milliseconds), and a client is
//! back within about that window of the server listening again. If the
//! server is still away after those attempts, the usual doubling schedule
//! takes over from `first`. [`is_planned_close`] says which codes count.
//!
//! # Use
//!
//! Pure: no clock, no runtime, no I/O, so it builds for
//! `wasm32-unknown-unknown`. [`Backoff::next_delay`] returns a delay and the
//! caller sleeps it its own way (tokio, a browser timer).
//!
//! ```
//! use std::time::Duration;
//! use protocol::backoff::Backoff;
//!
//! let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
//! let first = backoff.next_delay(); // failed: sleep `first`, try again
//! assert!(first <= Duration::from_millis(100));
//! assert!(backoff.next_delay() <= Duration::from_millis(200));
//! backoff.reset(); // connected
//! assert_eq!(backoff.attempt(), 0);
//! ```
//!
//! # Randomness
//!
//! Each [`Backoff`] owns a [`fastrand::Rng`]. [`Backoff::new`] seeds it from
//! fastrand's per-thread generator, itself seeded from the clock and the
//! thread on native targets. On `wasm32-unknown-unknown` that generator has
//! no entropy source (we do not pull in `getrandom`'s JavaScript backend),
//! so it starts from a constant: there, seed with [`Backoff::with_seed`]
//! (the browser client uses `Math.random()`).

use std::time::Duration;

/// The window each delay is drawn from after a planned restart.
pub const PLANNED_WINDOW: Duration = Duration::from_secs(1);

/// How many attempts use [`PLANNED_WINDOW`] after a planned restart (about
/// half a minute of retries, at half a second on average).
pub const PLANNED_ATTEMPTS: u32 = 60;

/// Whether a close with `code` means the server left on purpose and is
/// expected back: 1001 (going away) and 1012 (service restart), RFC 6455
/// §7.4.1 and the IANA registry.
pub fn is_planned_close(code: u16) -> bool {
    matches!(code, 1001 | 1012)
}

/// Counts failed attempts and picks the delay before the next one.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    /// Delays handed out since the last reset.
    attempt: u32,
    /// Attempts left in the flat window of a planned restart.
    planned: u32,
    /// Attempts that do not count towards the doubling (those of the
    /// planned window).
    skipped: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// Ceilings from `first`, doubling up to `cap`, with a random seed (see
    /// the [module docs](self) for `wasm32`).
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self::with_seed(first, cap, fastrand::u64(..))
    }

    /// Like [`Backoff::new`], with the jitter drawn from a generator seeded
    /// with `seed` (the same seed gives the same delays).
    pub fn with_seed(first: Duration, cap: Duration, seed: u64) -> Self {
        Self {
            first,
            cap,
            attempt: 0,
            planned: 0,
            skipped: 0,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The largest delay before attempt number `attempt` (1-based; 0 counts
    /// as 1): `min(cap, first * 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.first.saturating_mul(1 << doublings).min(self.cap)
    }

    /// Counts one more attempt and returns how long to wait before it:
    /// uniform in `[0, ceiling(attempt)]`.
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = if self.planned > 0 {
            self.planned -= 1;
            self.skipped = self.skipped.saturating_add(1);
            PLANNED_WINDOW
        } else {
            // Still away after the planned window: the doubling schedule,
            // from its start.
            self.ceiling(self.attempt.saturating_sub(self.skipped))
        };
        full_jitter(ceiling, self.rng.f64())
    }

    /// The server closed with a planned-restart code ([`is_planned_close`]):
    /// the next [`PLANNED_ATTEMPTS`] delays come from [`PLANNED_WINDOW`]
    /// (see the [module docs](self)).
    pub fn expect_return(&mut self) {
        self.skipped = self.attempt;
        self.planned = PLANNED_ATTEMPTS;
    }

    /// The number of the attempt the last [`Backoff::next_delay`] was for
    /// (1 for the first after a reset); 0 right after a reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Forgets the failures, after a success: the next delay is again at
    /// most `first`.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.planned = 0;
        self.skipped = 0;
    }
}

/// The jitter policy: the point `unit` of the way from zero to `ceiling`.
/// `unit` is a random number in `[0, 1]`; values outside are clamped, and a
/// NaN counts as one half.
pub fn full_jitter(ceiling: Duration, unit: f64) -> Duration {
    let unit = if unit.is_nan() {
        0.5
    } else {
        unit.clamp(0.0, 1.0)
    };
    // Not `mul_f64`, which panics where rounding overshoots `Duration::MAX`.
    Duration::try_from_secs_f64(ceiling.as_secs_f64() * unit).map_or(ceiling, |d| d.min(ceiling))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceilings_double_from_first_to_cap() {
        // The console client's schedule.
        let b = Backoff::new(500 * MS, Duration::from_secs(30));
        let secs: Vec<f64> = (1..=9).map(|a| b.ceiling(a).as_secs_f64()).collect();
        assert_eq!(secs, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]);
        assert_eq!(b.ceiling(0), 500 * MS);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
        // The cluster link's.
        let b = Backoff::new(100 * MS, Duration::from_secs(5));
        let ms: Vec<u128> = (1..=8).map(|a| b.ceiling(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000]);
        // Never past the cap, even when the first is.
        let b = Backoff::new(Duration::from_secs(9), Duration::from_secs(5));
        assert_eq!(b.ceiling(1), Duration::from_secs(5));
        let b = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(b.ceiling(40), Duration::MAX);
    }

    #[test]
    fn delays_are_jittered_below_the_ceiling_and_reset() {
        let mut b = Backoff::with_seed(100 * MS, Duration::from_secs(5), 7);
        let mut seen = Vec::new();
        for want in 1..=20 {
            let d = b.next_delay();
            assert_eq!(b.attempt(), want);
            assert!(d <= b.ceiling(want), "{d:?} at attempt {want}");
            seen.push(d);
        }
        // Full jitter: the delays are not just the ceilings, and some fall
        // in the lower half of their window (equal jitter never would).
        assert!(seen.iter().zip(1..).any(|(d, a)| *d < b.ceiling(a) / 2));
        assert!(seen.windows(2).any(|w| w[0] != w[1]));
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert!(b.next_delay() <= 100 * MS);
        assert_eq!(b.attempt(), 1);
    }

    #[test]
    fn the_seed_decides_the_delays() {
        let delays = |seed| {
            let mut b = Backoff::with_seed(MS, Duration::from_secs(1), seed);
            (0..10).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(delays(1), delays(1));
        assert_ne!(delays(1), delays(2));
        // Unseeded ones differ from each other too.
        let mut a = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let a: Vec<_> = (0..10).map(|_| a.next_delay()).collect();
        let b: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn a_planned_restart_retries_within_a_flat_window_then_doubles() {
        let mut b = Backoff::with_seed(500 * MS, Duration::from_secs(30), 3);
        for _ in 0..5 {
            b.next_delay();
        }
        b.expect_return();
        let planned: Vec<Duration> = (0..PLANNED_ATTEMPTS).map(|_| b.next_delay()).collect();
        assert!(planned.iter().all(|d| *d <= PLANNED_WINDOW), "{planned:?}");
        // Spread over the window, not bunched at one end of it.
        assert!(planned.iter().any(|d| *d < PLANNED_WINDOW / 4));
        assert!(planned.iter().any(|d| *d > PLANNED_WINDOW * 3 / 4));
        // Then the usual schedule, from its first ceiling; the attempts
        // are still counted from the first failure.
        assert_eq!(b.attempt(), 5 + PLANNED_ATTEMPTS);
        let after: Vec<Duration> = (0..3).map(|_| b.next_delay()).collect();
        assert!(
            after[0] <= 500 * MS && after[1] <= Duration::from_secs(1),
            "{after:?}"
        );
        assert!(after[2] <= Duration::from_secs(2), "{after:?}");
        // A success ends the planned window early.
        b.expect_return();
        b.reset();
        for want in 1..=3 {
            b.next_delay();
            assert_eq!(b.attempt(), want);
        }
        assert_eq!(b.ceiling(3), Duration::from_secs(2));
    }

    #[test]
    fn planned_codes_are_going_away_and_restart() {
        assert!(is_planned_close(1001) && is_planned_close(1012));
        for code in [1000, 1006, 1008, 1011, 1013, 4000] {
            assert!(!is_planned_close(code), "{code}");
        }
    }

    #[test]
    fn jitter_stays_in_the_window() {
        let c = Duration::from_secs(4);
        assert_eq!(full_jitter(c, 0.0), Duration::ZERO);
        assert_eq!(full_jitter(c, 1.0), c);
        assert_eq!(full_jitter(c, 0.25), Duration::from_secs(1));
        assert_eq!(full_jitter(c, -3.0), Duration::ZERO);
        assert_eq!(full_jitter(c, 7.0), c);
        assert_eq!(full_jitter(c, f64::NAN), Duration::from_secs(2));
        assert_eq!(full_jitter(c, f64::INFINITY), c);
        assert_eq!(full_jitter(Duration::ZERO, 0.5), Duration::ZERO);
        assert_eq!(full_jitter(Duration::MAX, 1.0), Duration::MAX);
        assert!(full_jitter(Duration::MAX, 0.5) < Duration::MAX);
    }
}
