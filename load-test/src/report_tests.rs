//! Tests of `report` (kept apart so the module reads as its code).

use super::*;
use crate::runinfo::RunInfo;

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
fn percentile_curve_spans_the_nines() {
    let mut h = Histogram::<u64>::new(3).unwrap();
    for us in 1..=100_000u64 {
        h.record(us).unwrap();
    }
    let c = percentile_curve(&h);
    // 10^5 samples: up to 99.999 %, 20 points per nine, plus the max.
    assert_eq!(c.len(), 5 * 20 + 2);
    assert_eq!(c[0].percentile, 0.0);
    assert!((c[20].percentile - 90.0).abs() < 1e-9);
    assert!((c[20].ms - 90.0).abs() < 0.1, "{:?}", c[20]);
    assert!((c[40].ms - 99.0).abs() < 0.1, "{:?}", c[40]);
    assert_eq!(c.last().unwrap().percentile, 100.0);
    assert!((c.last().unwrap().ms - 100.0).abs() < 0.1);
    assert!(c
        .windows(2)
        .all(|w| w[0].ms <= w[1].ms && w[0].percentile <= w[1].percentile));
    assert!(percentile_curve(&Histogram::<u64>::new(3).unwrap()).is_empty());
}

#[test]
fn slow_subscribers_are_not_expected_to_receive() {
    let mut r = base();
    r.clients_connected = 12;
    r.slow = Some(SlowReport {
        clients: 2,
        connected: 2,
        closes: BTreeMap::from([(1013, 1), (1006, 1)]),
        ..SlowReport::default()
    });
    r.finish();
    // 10 fast ones x 100 published; the slow ones' closes are not errors.
    assert_eq!(r.expected_deliveries, 1000);
    assert_eq!(r.errors, 0);
    assert!(r.passed, "{:?}", r.failures);
    let t = r.table();
    assert!(t.contains("closed by server 2 (1006: 1, 1013: 1)"), "{t}");
}

#[test]
fn server_usage_is_in_table_and_json() {
    let mut r = base();
    r.connect_s = 2.0;
    r.server = Some(ServerUsage {
        pid: 1,
        rss_before_kib: 1024,
        rss_idle_kib: 2048,
        rss_per_connection_b: 1536.0,
        cpu_run_pct: 42.0,
        ..ServerUsage::default()
    });
    r.finish();
    assert_eq!(r.connect_rate_per_s, 5.0);
    let t = r.table();
    assert!(t.contains("1536 B"), "{t}");
    assert!(t.contains("42% of one core"), "{t}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["server"]["rss_per_connection_b"], 1536.0);
    assert_eq!(json["slow"], serde_json::Value::Null);
}

#[test]
fn v1_mode_is_in_header_table_and_json() {
    let mut r = base();
    r.protocol = "raw";
    r.finish();
    let t = r.table();
    assert!(t.starts_with("load-test summary:  | raw |"), "{t}");
    assert!(!t.contains("v1 events"), "{t}");
    r.protocol = protocol::v1::SUBPROTOCOL;
    r.welcomes = 11;
    r.presence_events = 30;
    r.notices.insert(1001, 2);
    let t = r.table();
    assert!(t.contains("| broadcast.v1 |"), "{t}");
    assert!(
        t.contains("welcome 11, presence 30, notices 1001: 2"),
        "{t}"
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["protocol"], "broadcast.v1");
    assert_eq!(json["presence_events"], 30);
    assert_eq!(json["notices"]["1001"], 2);
}

#[test]
fn channels_give_expected_totals_and_a_summary() {
    let row = |k: u64, subscribers: u64, published: u64, received: u64, misrouted: u64| {
        let expected = published * subscribers;
        ChannelRow {
            channel: format!("lt-{k}"),
            subscribers,
            publishers: 1,
            published,
            expected,
            received,
            lost: expected + misrouted - received,
            misrouted,
            ..ChannelRow::default()
        }
    };
    let mut r = base();
    // 10 subscribers over 3 channels (4, 3, 3), 100 messages over them.
    let table = vec![
        row(0, 4, 40, 160, 0),
        row(1, 3, 30, 85, 0),
        row(2, 3, 30, 92, 2),
    ];
    r.delivered = 160 + 85 + 90;
    r.lost = 5;
    r.misrouted = 2;
    r.channels = Some(ChannelsReport::new(table));
    r.finish();
    assert_eq!(r.expected_deliveries, 160 + 90 + 90);
    assert_eq!(r.errors, 2, "misrouted deliveries are errors");
    let ch = r.channels.as_ref().unwrap();
    assert_eq!(ch.count, 3);
    assert_eq!(ch.subscribers, MinMax { min: 3, max: 4 });
    assert_eq!(ch.expected, MinMax { min: 90, max: 160 });
    assert_eq!(ch.received, MinMax { min: 85, max: 160 });
    assert_eq!((ch.with_loss, ch.misrouted), (1, 2));
    assert_eq!(ch.worst.as_deref(), Some("lt-1"));
    let t = r.table();
    assert!(
        t.contains("3 (lt-0 .. lt-2); per channel: 3..4 subscribers, 1 publishers"),
        "{t}"
    );
    assert!(
        t.contains("expected 90..160, received 85..160, loss 0.0000%..5.5556%"),
        "{t}"
    );
    assert!(t.contains("1 lost some, worst lt-1; misrouted 2"), "{t}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["channels"]["table"][1]["lost"], 5);
    assert_eq!(json["channels"]["expected"]["max"], 160);
    // One channel: no breakdown.
    let mut r = base();
    r.finish();
    assert!(!r.table().contains("per channel"));
    assert_eq!(
        serde_json::to_value(&r).unwrap()["channels"],
        serde_json::Value::Null
    );
}

#[test]
fn api_errors_are_send_errors_by_status() {
    let mut r = base();
    r.api = Some("http://h:1".into());
    r.send_errors = 2;
    r.api_errors = BTreeMap::from([(401, 2)]);
    r.finish();
    assert_eq!(r.errors, 2);
    assert!(!r.passed);
    let t = r.table();
    assert!(t.contains("(publishing via http://h:1/api/publish)"), "{t}");
    assert!(t.contains(" 2 (HTTP 401: 2)\n"), "{t}");
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

#[test]
fn run_metadata_is_one_json_object_and_one_summary_line() {
    let mut r = base();
    r.run = RunInfo {
        started_at: "2026-12-01T14:51:18Z".into(),
        command: "load-test --clients 10 --url 'ws://h/ws?a=1&b=2'".into(),
        version: "0.1.0".into(),
        git_revision: "e8f075d1a2b3-dirty".into(),
        cores: 2,
        kernel: "6.1.0-18-amd64".into(),
    };
    r.finish();
    let json = serde_json::to_value(&r).unwrap();
    let run = &json["run"];
    assert_eq!(run["started_at"], "2026-12-01T14:51:18Z");
    assert_eq!(
        run["command"],
        "load-test --clients 10 --url 'ws://h/ws?a=1&b=2'"
    );
    assert_eq!(run["version"], "0.1.0");
    assert_eq!(run["git_revision"], "e8f075d1a2b3-dirty");
    assert_eq!(run["cores"], 2);
    assert_eq!(run["kernel"], "6.1.0-18-amd64");
    let t = r.table();
    let lines: Vec<&str> = t.lines().filter(|l| l.contains("2026-12-01")).collect();
    assert_eq!(
        lines,
        [
            "  run: 2026-12-01T14:51:18Z | load-test 0.1.0 (e8f075d1a2b3-dirty) | 2 cores, \
          kernel 6.1.0-18-amd64 | load-test --clients 10 --url 'ws://h/ws?a=1&b=2'"
        ],
        "{t}"
    );
}

#[test]
fn connect_latency_is_in_summary_and_json() {
    let mut h = Histogram::<u64>::new(3).unwrap();
    for us in 1..=1000u64 {
        h.record(us * 10).unwrap(); // 10 µs .. 10 ms
    }
    let mut r = base();
    assert!(
        !r.table().contains("connect latency"),
        "none without samples"
    );
    r.connect_latency = Latency::from_histogram_us(&h);
    r.connect_latency_percentiles = percentile_curve(&h);
    r.finish();
    let t = r.table();
    assert!(
        t.contains(
            "connect latency ms     p50 5.003  p99 9.903  max 10.007  (connect + upgrade, n=1000)"
        ),
        "{t}"
    );
    let json = serde_json::to_value(&r).unwrap();
    let c = &json["connect_latency"];
    assert_eq!(c["samples"], 1000);
    for k in ["p50_ms", "p99_ms", "max_ms"] {
        assert!(c[k].as_f64().unwrap() > 0.0, "{k}: {c}");
    }
    assert!(
        json["connect_latency_percentiles"]
            .as_array()
            .unwrap()
            .len()
            > 2
    );
}

#[test]
fn fewer_published_than_scheduled_is_explained() {
    let mut r = base();
    r.scheduled = Some(20_000);
    r.published = 19_997;
    r.shortfall = Some(Shortfall {
        last_tick: 3,
        ..Shortfall::default()
    });
    r.finish();
    let t = r.table();
    assert!(t.contains("19997 (scheduled 20000)"), "{t}");
    assert!(
        t.contains(
            "    not published        3 due in the last ms of --duration (its end fired first in that timer tick)\n"
        ),
        "{t}"
    );
    // Held back and stopped publishers are named too, each with its count.
    r.published = 18_000;
    r.shortfall = Some(Shortfall {
        last_tick: 3,
        behind: 1_500,
        after_error: 497,
    });
    let t = r.table();
    assert!(t.contains("3 due in the last ms"), "{t}");
    assert!(
        t.contains("; 1500 still owed by publishers behind schedule at the end of --duration (writes held back by the server's flow control / TCP push-back)"),
        "{t}"
    );
    assert!(
        t.contains("; 497 not sent after send errors stopped publishers"),
        "{t}"
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["shortfall"]["behind"], 1500);
    // All published: no note.
    r.published = 20_000;
    r.shortfall = Some(Shortfall::default());
    assert!(!r.table().contains("not published"), "{}", r.table());
}
