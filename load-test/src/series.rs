//! Per-second time series of deliveries and latency, cheap enough for the
//! subscriber hot path: every subscriber owns a [`SubSeries`] (no sharing, no
//! locks) with one small log-bucketed histogram per second, allocated only for
//! the seconds in which it received something; they are merged at the end.

use std::collections::BTreeMap;

use serde::Serialize;

/// Sub-buckets per power of two: bucket widths are 1/8 of an octave (≤ 12.5 %
/// of the value, midpoints within ~6 %), plenty for a plot.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Values below `SUB` get a bucket each; then `SUB` buckets per octave up to 2^32.
pub(crate) const BUCKETS: usize = (SUB + (32 - SUB_BITS as u64) * SUB) as usize;

/// Bucket of a value (µs); values of 2^32 and more share the last bucket.
#[inline]
pub(crate) fn bucket(v: u64) -> usize {
    let v = v.min(u64::from(u32::MAX));
    if v < SUB {
        return v as usize;
    }
    let octave = 63 - v.leading_zeros(); // >= SUB_BITS
    let sub = (v >> (octave - SUB_BITS)) & (SUB - 1);
    (SUB + u64::from(octave - SUB_BITS) * SUB + sub) as usize
}

/// Lowest value and width of bucket `i`.
pub(crate) fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, 1);
    }
    let octave = (i - SUB) / SUB + u64::from(SUB_BITS);
    let sub = (i - SUB) % SUB;
    let width = 1u64 << (octave - u64::from(SUB_BITS));
    ((SUB + sub) * width, width)
}

/// A value representing bucket `i` (its midpoint).
fn bucket_mid(i: usize) -> f64 {
    let (low, width) = bucket_range(i);
    low as f64 + (width as f64 - 1.0) / 2.0
}

type Counts = [u32; BUCKETS];

/// One subscriber's per-second histograms, indexed by whole seconds since `origin_ns`.
#[derive(Debug, Default)]
pub(crate) struct SubSeries {
    origin_ns: u64,
    seconds: Vec<Option<Box<Counts>>>,
}

impl SubSeries {
    pub(crate) fn new(origin_ns: u64) -> Self {
        Self {
            origin_ns,
            seconds: Vec::new(),
        }
    }

    /// Records one delivery at `now_ns` with latency `us`.
    #[inline]
    pub(crate) fn record(&mut self, now_ns: u64, us: u64) {
        let sec = (now_ns.saturating_sub(self.origin_ns) / 1_000_000_000) as usize;
        if sec >= self.seconds.len() {
            self.seconds.resize_with(sec + 1, || None);
        }
        let counts = self.seconds[sec].get_or_insert_with(|| Box::new([0; BUCKETS]));
        let b = &mut counts[bucket(us)];
        *b = b.saturating_add(1);
    }
}

/// All subscribers' series merged.
#[derive(Debug, Default)]
pub(crate) struct Series {
    seconds: Vec<[u64; BUCKETS]>,
}

impl Series {
    pub(crate) fn merge(&mut self, s: &SubSeries) {
        if s.seconds.len() > self.seconds.len() {
            self.seconds.resize(s.seconds.len(), [0; BUCKETS]);
        }
        for (total, counts) in self.seconds.iter_mut().zip(&s.seconds) {
            if let Some(c) = counts {
                for (t, &n) in total.iter_mut().zip(c.iter()) {
                    *t += u64::from(n);
                }
            }
        }
    }

    /// One point per second (from the origin to the last second with a delivery).
    pub(crate) fn points(&self) -> Vec<SecondPoint> {
        self.seconds
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let n: u64 = c.iter().sum();
                SecondPoint {
                    t_s: i as u32,
                    delivered: n,
                    p50_ms: quantile(c, n, 0.50) / 1000.0,
                    p99_ms: quantile(c, n, 0.99) / 1000.0,
                    max_ms: c
                        .iter()
                        .rposition(|&x| x > 0)
                        .map_or(0.0, |i| bucket_mid(i) / 1000.0),
                }
            })
            .collect()
    }
}

/// The value (µs, bucket midpoint) at quantile `q` of `n` counted values.
fn quantile(c: &[u64; BUCKETS], n: u64, q: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    // Rank of the q-quantile, 1-based, as HdrHistogram counts it.
    let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
    let mut seen = 0;
    for (i, &k) in c.iter().enumerate() {
        seen += k;
        if seen >= rank {
            return bucket_mid(i);
        }
    }
    0.0
}

/// Deliveries and latency in one second of the run (from publishing start).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct SecondPoint {
    /// Second `t_s .. t_s + 1` after publishing started.
    pub(crate) t_s: u32,
    pub(crate) delivered: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

/// Messages published and errors in one second of the run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct ActivityPoint {
    /// Second `t_s .. t_s + 1` relative to the start of publishing
    /// (negative: the connect phase).
    pub(crate) t_s: i64,
    pub(crate) published: u64,
    /// Subscribers and publishers that failed to connect.
    pub(crate) connect_errors: u64,
    /// Publishers stopped by a send error.
    pub(crate) send_errors: u64,
    /// Connections (reading subscribers and publishers) the server closed
    /// or dropped before the tool did.
    pub(crate) server_closes: u64,
}

/// Collects [`ActivityPoint`]s by second, in any order.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    seconds: BTreeMap<i64, ActivityPoint>,
}

impl Activity {
    /// The point of second `t_s`, to add counts to.
    pub(crate) fn at(&mut self, t_s: i64) -> &mut ActivityPoint {
        self.seconds.entry(t_s).or_insert_with(|| ActivityPoint {
            t_s,
            ..ActivityPoint::default()
        })
    }

    /// Every second from the earliest (at most 0) to the latest with
    /// anything in it, empty seconds included; none when nothing happened.
    pub(crate) fn points(mut self) -> Vec<ActivityPoint> {
        let (Some(&first), Some(&last)) = (self.seconds.keys().next(), self.seconds.keys().last())
        else {
            return Vec::new();
        };
        (first.min(0)..=last).map(|t| self.at(t).clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_fills_every_second_from_the_connect_phase() {
        assert!(Activity::default().points().is_empty());
        let mut a = Activity::default();
        a.at(3).published += 10;
        a.at(-2).connect_errors += 1;
        a.at(3).send_errors += 1;
        a.at(1).server_closes += 2;
        let p = a.points();
        assert_eq!(
            p.iter().map(|p| p.t_s).collect::<Vec<_>>(),
            [-2, -1, 0, 1, 2, 3]
        );
        assert_eq!(p[0].connect_errors, 1);
        assert_eq!((p[5].published, p[5].send_errors), (10, 1));
        assert_eq!(p[3].server_closes, 2);
        assert_eq!(
            p[1],
            ActivityPoint {
                t_s: -1,
                ..ActivityPoint::default()
            }
        );
        // Publishing only: starts at second 0.
        let mut a = Activity::default();
        a.at(2).published = 5;
        assert_eq!(a.points().len(), 3);
    }

    #[test]
    fn buckets_are_contiguous_and_contain_their_values() {
        assert_eq!(BUCKETS, 240);
        let mut next = 0u64;
        for i in 0..BUCKETS {
            let (low, width) = bucket_range(i);
            assert_eq!(low, next, "bucket {i} starts where {} ended", i as i64 - 1);
            assert_eq!(bucket(low), i);
            assert_eq!(bucket(low + width - 1), i);
            // Relative width at most 1/8 above the small exact ones.
            if i >= SUB as usize {
                assert!(width * 8 <= low, "bucket {i}: {low} + {width}");
            }
            next = low + width;
        }
        assert_eq!(next, 1 << 32);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(7), 7);
        assert_eq!(bucket(8), 8);
        assert_eq!(bucket(16), 16);
    }

    #[test]
    fn per_second_series_merge_and_quantiles() {
        let s = 1_000_000_000u64;
        let origin = 5 * s;
        let mut a = SubSeries::new(origin);
        let mut b = SubSeries::new(origin);
        // Second 0: 99 deliveries at 1000 µs and one at 50,000 µs (from two subscribers).
        for k in 0..99 {
            a.record(origin + k * 1000, 1000);
        }
        b.record(origin + s - 1, 50_000);
        // Nothing in second 1; second 2: 10 at 200 µs.
        for _ in 0..10 {
            b.record(origin + 2 * s + 7, 200);
        }
        // Before the origin counts as second 0.
        a.record(origin - 10, 1000);
        assert!(a.seconds[0].is_some() && a.seconds.len() == 1);
        assert!(b.seconds[1].is_none());

        let mut total = Series::default();
        total.merge(&a);
        total.merge(&b);
        let p = total.points();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].t_s, 0);
        assert_eq!(p[0].delivered, 101);
        let near = |x: f64, want: f64| (x - want).abs() <= want * 0.07;
        assert!(near(p[0].p50_ms, 1.0), "{:?}", p[0]);
        assert!(near(p[0].p99_ms, 1.0), "{:?}", p[0]); // rank 100 of 101
        assert!(near(p[0].max_ms, 50.0), "{:?}", p[0]);
        assert_eq!(p[1].delivered, 0);
        assert_eq!((p[1].p50_ms, p[1].p99_ms, p[1].max_ms), (0.0, 0.0, 0.0));
        assert_eq!(p[2].delivered, 10);
        assert!(near(p[2].p99_ms, 0.2), "{:?}", p[2]);
    }

    #[test]
    fn quantile_ranks() {
        let mut c = [0u64; BUCKETS];
        c[bucket(1)] = 50;
        c[bucket(3)] = 49;
        c[bucket(5)] = 1;
        assert_eq!(quantile(&c, 100, 0.5), 1.0);
        assert_eq!(quantile(&c, 100, 0.51), 3.0);
        assert_eq!(quantile(&c, 100, 0.99), 3.0);
        assert_eq!(quantile(&c, 100, 1.0), 5.0);
        assert_eq!(quantile(&c, 0, 0.5), 0.0);
    }
}
