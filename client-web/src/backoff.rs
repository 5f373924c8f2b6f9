//! When to try again after a connection drops or fails: exponential backoff
//! with jitter, so that clients dropped together (a server restart) do not all
//! come back in the same instant.

/// Delay before the first retry, before jitter, in milliseconds.
pub const BASE_MS: f64 = 1_000.0;
/// Longest delay between two attempts, before jitter, in milliseconds.
pub const MAX_MS: f64 = 30_000.0;
/// A connection that stayed up this long resets the schedule: the next drop
/// is retried quickly again. A server that accepts and then closes at once
/// keeps growing the delay instead.
pub const STABLE_MS: f64 = 10_000.0;

/// The delay before retry number `failures` (0 for the first retry after a
/// drop), in milliseconds. `jitter` in `[0, 1]` (a random number) picks a
/// point in the upper half of the window ("equal jitter"): the delay for
/// attempt `n` lies in `[d/2, d]` with `d = min(BASE_MS * 2^n, MAX_MS)`.
pub fn delay_ms(failures: u32, jitter: f64) -> f64 {
    let window = (BASE_MS * 2f64.powi(failures.min(30) as i32)).min(MAX_MS);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.5
    };
    window / 2.0 + window / 2.0 * jitter
}

/// Whole seconds left until `at`, rounded up, for "reconnecting in N s…".
/// Never less than 1 while waiting.
pub fn seconds_left(now_ms: f64, at_ms: f64) -> u64 {
    let left = ((at_ms - now_ms) / 1_000.0).ceil();
    if left.is_finite() && left >= 1.0 {
        left as u64
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let lows: Vec<f64> = (0..8).map(|n| delay_ms(n, 0.0)).collect();
        let highs: Vec<f64> = (0..8).map(|n| delay_ms(n, 1.0)).collect();
        assert_eq!(
            lows,
            [500.0, 1_000.0, 2_000.0, 4_000.0, 8_000.0, 15_000.0, 15_000.0, 15_000.0]
        );
        assert_eq!(
            highs,
            [1_000.0, 2_000.0, 4_000.0, 8_000.0, 16_000.0, 30_000.0, 30_000.0, 30_000.0]
        );
        assert_eq!(delay_ms(u32::MAX, 1.0), MAX_MS);
    }

    #[test]
    fn jitter_stays_in_the_window() {
        for n in 0..40 {
            for j in [0.0, 0.1, 0.5, 0.99, 1.0, -3.0, 7.0, f64::NAN] {
                let d = delay_ms(n, j);
                let window = (BASE_MS * 2f64.powi(n.min(30) as i32)).min(MAX_MS);
                assert!(d >= window / 2.0 && d <= window, "n={n} j={j} d={d}");
            }
        }
        assert_eq!(delay_ms(2, 0.5), 3_000.0);
    }

    #[test]
    fn countdown_rounds_up() {
        assert_eq!(seconds_left(0.0, 3_000.0), 3);
        assert_eq!(seconds_left(0.0, 2_001.0), 3);
        assert_eq!(seconds_left(0.0, 2_000.0), 2);
        assert_eq!(seconds_left(0.0, 10.0), 1);
        assert_eq!(seconds_left(5_000.0, 10.0), 1);
        assert_eq!(seconds_left(0.0, f64::NAN), 1);
    }
}
