//! Compact instants for state every connection keeps: milliseconds since
//! the process's first use of this clock, in a `u32` (4 bytes against an
//! `Instant`'s 16). They wrap after 49.7 days, so only differences are
//! meaningful, and only for intervals shorter than that; every use here is
//! about seconds (the idle timeout, a stalled outbox).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// `at` as wrapping milliseconds (an instant before the epoch reads as 0).
pub(crate) fn millis(at: Instant) -> u32 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    // Truncated on purpose: the value wraps.
    at.saturating_duration_since(epoch).as_millis() as u32
}

/// How long after `earlier` (from [`millis`]) `now` is.
pub(crate) fn since(now: Instant, earlier: u32) -> Duration {
    Duration::from_millis(u64::from(millis(now).wrapping_sub(earlier)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_survive_the_wrap() {
        // After the epoch (an instant before it reads as 0).
        millis(Instant::now());
        let start = Instant::now();
        let a = millis(start);
        let b = millis(start + Duration::from_millis(1500));
        assert_eq!(b.wrapping_sub(a), 1500);
        assert_eq!(
            since(start + Duration::from_secs(2), a),
            Duration::from_secs(2)
        );
        // Across the wrap, the difference is still right.
        let before_wrap = u32::MAX - 10;
        assert_eq!(before_wrap.wrapping_add(30).wrapping_sub(before_wrap), 30);
    }
}
