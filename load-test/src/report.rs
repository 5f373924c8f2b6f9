//! The summary: what was measured, printed as a table or written as JSON,
//! and the pass/fail decision.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in milliseconds (histograms record microseconds).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct Latency {
    pub(crate) samples: u64,
    pub(crate) mean_ms: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

impl Latency {
    pub(crate) fn from_histogram_us(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            samples: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Everything the run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Report {
    pub(crate) url: String,
    pub(crate) mode: &'static str,
    pub(crate) rate: Option<f64>,
    pub(crate) window: Option<u32>,
    pub(crate) size: u32,
    pub(crate) duration_s: f64,
    pub(crate) drain_s: f64,

    pub(crate) clients: u64,
    pub(crate) clients_connected: u64,
    pub(crate) clients_failed: u64,
    pub(crate) publishers: u64,
    pub(crate) publishers_connected: u64,
    pub(crate) publishers_failed: u64,
    pub(crate) connect_s: f64,
    pub(crate) first_connect_error: Option<String>,

    /// Messages the rate schedule called for (rate mode), for comparison with `published`.
    pub(crate) scheduled: Option<u64>,
    pub(crate) published: u64,
    pub(crate) published_per_s: f64,
    pub(crate) expected_deliveries: u64,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    pub(crate) loss_ratio: f64,
    pub(crate) duplicates: u64,
    pub(crate) reordered: u64,
    pub(crate) malformed: u64,
    /// Publishing start until the last delivery.
    pub(crate) delivery_window_s: f64,
    pub(crate) deliveries_per_s: f64,
    /// From the scheduled send time (rate mode) or the send time (max-rate).
    pub(crate) latency: Latency,
    /// From the moment the publisher actually wrote the message.
    pub(crate) latency_from_send: Latency,

    /// Connections the server closed (or dropped: 1006) before the tool did, by code.
    pub(crate) server_closes: BTreeMap<u16, u64>,
    pub(crate) send_errors: u64,
    pub(crate) errors: u64,

    pub(crate) max_loss: f64,
    pub(crate) max_errors: u64,
    pub(crate) passed: bool,
    pub(crate) failures: Vec<String>,
}

impl Report {
    /// Derives the totals (loss ratio, rates, errors) and the verdict from the raw counts.
    pub(crate) fn finish(&mut self) {
        self.expected_deliveries = self.published * self.clients_connected;
        self.loss_ratio = if self.expected_deliveries == 0 {
            0.0
        } else {
            self.lost as f64 / self.expected_deliveries as f64
        };
        self.deliveries_per_s = if self.delivery_window_s > 0.0 {
            self.delivered as f64 / self.delivery_window_s
        } else {
            0.0
        };
        self.errors = self.clients_failed
            + self.publishers_failed
            + self.server_closes.values().sum::<u64>()
            + self.send_errors
            + self.malformed;
        self.failures.clear();
        if self.loss_ratio > self.max_loss {
            self.failures.push(format!(
                "loss ratio {:.6} ({} of {}) exceeds --max-loss {}",
                self.loss_ratio, self.lost, self.expected_deliveries, self.max_loss
            ));
        }
        if self.errors > self.max_errors {
            self.failures.push(format!(
                "{} errors exceed --max-errors {}",
                self.errors, self.max_errors
            ));
        }
        self.passed = self.failures.is_empty();
    }

    /// The human summary table.
    pub(crate) fn table(&self) -> String {
        let mut s = String::new();
        let mode = match (self.rate, self.window) {
            (Some(r), _) => format!("rate {r} msg/s"),
            (None, Some(w)) => format!("max-rate, window {w}"),
            _ => self.mode.to_string(),
        };
        let _ = writeln!(
            s,
            "load-test summary: {} | {mode} | {} B | {:.1} s + drain {:.1} s",
            self.url, self.size, self.duration_s, self.drain_s
        );
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "  {k:<22} {v}");
        };
        row(
            "clients connected",
            format!(
                "{} / {} (failed {}) in {:.2} s",
                self.clients_connected, self.clients, self.clients_failed, self.connect_s
            ),
        );
        row(
            "publishers connected",
            format!(
                "{} / {} (failed {})",
                self.publishers_connected, self.publishers, self.publishers_failed
            ),
        );
        if let Some(e) = &self.first_connect_error {
            row("first connect error", e.clone());
        }
        let sched = self
            .scheduled
            .map(|n| format!(" (scheduled {n})"))
            .unwrap_or_default();
        row(
            "messages published",
            format!(
                "{}{sched}, {:.0} msg/s",
                self.published, self.published_per_s
            ),
        );
        row("expected deliveries", self.expected_deliveries.to_string());
        row("delivered", self.delivered.to_string());
        row(
            "lost",
            format!("{} ({:.4}%)", self.lost, self.loss_ratio * 100.0),
        );
        row("duplicates", self.duplicates.to_string());
        row("reordered", self.reordered.to_string());
        row("malformed", self.malformed.to_string());
        row(
            "deliveries/s",
            format!(
                "{:.0} (over {:.2} s)",
                self.deliveries_per_s, self.delivery_window_s
            ),
        );
        let l = &self.latency;
        row(
            "latency ms (schedule)",
            format!(
                "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3}, n={})",
                l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms, l.samples
            ),
        );
        let l = &self.latency_from_send;
        row(
            "  from actual send",
            format!(
                "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3})",
                l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms
            ),
        );
        let closes = if self.server_closes.is_empty() {
            "none".to_string()
        } else {
            self.server_closes
                .iter()
                .map(|(c, n)| format!("{c} ({}): {n}", protocol::close::describe(*c)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        row("server closes", closes);
        row("send errors", self.send_errors.to_string());
        row("errors", self.errors.to_string());
        let verdict = if self.passed {
            "PASS".to_string()
        } else {
            format!("FAIL: {}", self.failures.join("; "))
        };
        row("result", verdict);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_from_a_uniform_histogram() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for us in 1..=10_000u64 {
            h.record(us).unwrap();
        }
        let l = Latency::from_histogram_us(&h);
        assert_eq!(l.samples, 10_000);
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 1e-9;
        assert!(close(l.p50_ms, 5.0), "{l:?}");
        assert!(close(l.p90_ms, 9.0), "{l:?}");
        assert!(close(l.p99_ms, 9.9), "{l:?}");
        assert!(close(l.p999_ms, 9.99), "{l:?}");
        assert!(close(l.max_ms, 10.0), "{l:?}");
        assert!(close(l.mean_ms, 5.0005), "{l:?}");
    }

    #[test]
    fn merged_histograms_give_combined_percentiles() {
        let mut a = Histogram::<u64>::new(3).unwrap();
        let mut b = Histogram::<u64>::new(3).unwrap();
        a.record_n(100, 900).unwrap(); // 0.1 ms
        b.record_n(50_000, 100).unwrap(); // 50 ms, auto-resizes
        a.add(&b).unwrap();
        let l = Latency::from_histogram_us(&a);
        assert_eq!(l.samples, 1000);
        assert!((l.p50_ms - 0.1).abs() < 1e-9);
        assert!((l.p90_ms - 0.1).abs() < 1e-9);
        assert!((l.p99_ms - 50.0).abs() < 0.05);
        assert!((l.max_ms - 50.0).abs() < 0.05);
    }

    #[test]
    fn empty_histogram_is_zero() {
        let h = Histogram::<u64>::new(3).unwrap();
        assert_eq!(Latency::from_histogram_us(&h), Latency::default());
    }

    fn base() -> Report {
        Report {
            clients: 10,
            clients_connected: 10,
            publishers: 1,
            publishers_connected: 1,
            published: 100,
            delivered: 1000,
            delivery_window_s: 2.0,
            ..Report::default()
        }
    }

    #[test]
    fn clean_run_passes() {
        let mut r = base();
        r.finish();
        assert_eq!(r.expected_deliveries, 1000);
        assert_eq!(r.loss_ratio, 0.0);
        assert_eq!(r.deliveries_per_s, 500.0);
        assert!(r.passed, "{:?}", r.failures);
        assert!(r.table().contains("PASS"));
    }

    #[test]
    fn loss_over_threshold_fails() {
        let mut r = base();
        r.lost = 10;
        r.delivered = 990;
        r.max_loss = 0.001;
        r.finish();
        assert!((r.loss_ratio - 0.01).abs() < 1e-12);
        assert!(!r.passed);
        assert!(r.failures[0].contains("--max-loss"), "{:?}", r.failures);
        r.max_loss = 0.01;
        r.finish();
        assert!(r.passed);
    }

    #[test]
    fn errors_add_up_and_fail() {
        let mut r = base();
        r.clients_failed = 1;
        r.server_closes.insert(1013, 2);
        r.malformed = 1;
        r.max_errors = 3;
        r.finish();
        assert_eq!(r.errors, 4);
        assert!(!r.passed);
        assert!(r.failures[0].contains("--max-errors"));
        assert!(r.table().contains("1013 (try again later): 2"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["server_closes"]["1013"], 2);
        assert_eq!(json["errors"], 4);
    }
}
