//! Reconnection delays: exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;

/// First ceiling: the first retry waits up to this long.
pub(crate) const INITIAL: Duration = Duration::from_millis(500);
/// The ceiling stops doubling here.
pub(crate) const MAX: Duration = Duration::from_secs(30);

/// Counts reconnection attempts and picks each delay uniformly in
/// `[0, min(MAX, INITIAL * 2^(attempt-1))]` ("full jitter"), so many clients
/// dropped together by a server restart do not come back in lockstep.
#[derive(Debug, Clone, Default)]
pub(crate) struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The largest delay before attempt number `attempt` (1-based).
    pub(crate) fn ceiling(attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(16);
        INITIAL.saturating_mul(1 << doublings).min(MAX)
    }

    /// The next attempt's number and how long to wait before it.
    pub(crate) fn next_delay(&mut self, rng: &mut impl Rng) -> (u32, Duration) {
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = Self::ceiling(self.attempt).as_secs_f64();
        let delay = Duration::from_secs_f64(rng.random_range(0.0..=ceiling));
        (self.attempt, delay)
    }

    /// Forgets the failures (after a successful connection).
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// `1.3 s`: a delay as the user reads it.
pub(crate) fn format_delay(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn ceiling_doubles_from_half_a_second_to_thirty() {
        let secs: Vec<f64> = (1..=9).map(|a| Backoff::ceiling(a).as_secs_f64()).collect();
        assert_eq!(secs, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]);
        assert_eq!(Backoff::ceiling(u32::MAX), MAX);
    }

    #[test]
    fn delays_are_jittered_below_the_ceiling_and_reset() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::default();
        let mut seen = Vec::new();
        for want in 1..=12 {
            let (attempt, d) = b.next_delay(&mut rng);
            assert_eq!(attempt, want);
            assert!(d <= Backoff::ceiling(attempt), "{d:?} at attempt {attempt}");
            seen.push(d);
        }
        // Full jitter: the delays are not just the ceilings.
        assert!(seen.iter().zip(1..).any(|(d, a)| *d < Backoff::ceiling(a)));
        b.reset();
        assert_eq!(b.next_delay(&mut rng).0, 1);
    }

    #[test]
    fn delay_format() {
        assert_eq!(format_delay(Duration::from_millis(1349)), "1.3 s");
        assert_eq!(format_delay(Duration::ZERO), "0.0 s");
        assert_eq!(format_delay(Duration::from_secs(30)), "30.0 s");
    }
}
