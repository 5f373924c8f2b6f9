//! Tests of `cli` (kept apart so the module reads as its code).

use super::*;

#[test]
fn durations() {
    assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
    assert!(parse_duration("ten").is_err());
    assert!(parse_duration("10x").is_err());
    assert!(parse_duration("").is_err());
}

#[test]
fn flags_parse_and_validate() {
    let a = Args::try_parse_from([
        "load-test",
        "--clients",
        "10",
        "--max-rate",
        "--duration",
        "2s",
    ])
    .unwrap();
    assert_eq!(a.clients, 10);
    assert!(a.max_rate);
    assert_eq!(a.duration, Duration::from_secs(2));
    assert_eq!(a.urls, ["ws://127.0.0.1:8080/ws"]);
    assert!(!a.v1);
    let a =
        Args::try_parse_from(["load-test", "--url", "ws://a/ws", "--url", "ws://b/ws"]).unwrap();
    assert_eq!(a.urls, ["ws://a/ws", "ws://b/ws"]);
    assert!(Args::try_parse_from(["load-test", "--v1"]).unwrap().v1);
    assert!(Args::try_parse_from(["load-test", "--size", "23"]).is_err());
    assert!(Args::try_parse_from(["load-test", "--clients", "0"]).is_err());
    assert!(Args::try_parse_from(["load-test", "--rate", "-1"]).is_err());
    assert!(Args::try_parse_from(["load-test", "--max-loss", "2"]).is_err());
    assert!(Args::try_parse_from(["load-test", "--slow-fraction", "1.5"]).is_err());
    assert!(Args::try_parse_from(["load-test", "--ramp", "-1"]).is_err());
}

#[test]
fn idle_storm_and_report_flags() {
    let a = Args::try_parse_from(["load-test", "--publishers", "0", "--ramp", "0"]).unwrap();
    assert!(a.is_idle());
    assert_eq!(a.publisher_count(), 0);
    assert_eq!(a.ramp, 0.0);
    let a = Args::try_parse_from(["load-test", "--idle", "--publishers", "3"]).unwrap();
    assert!(a.is_idle() && a.publisher_count() == 0);
    let a = Args::try_parse_from(["load-test", "--publishers", "3"]).unwrap();
    assert_eq!(a.publisher_count(), 3);
    assert_eq!(a.flooder_count(), 0);
    // Flooders only: not idle.
    let a = Args::try_parse_from(["load-test", "--publishers", "0", "--flooders", "2"]).unwrap();
    assert!(!a.is_idle());
    assert_eq!((a.publisher_count(), a.flooder_count()), (0, 2));
    let a = Args::try_parse_from(["load-test", "--idle", "--flooders", "2"]).unwrap();
    assert_eq!(a.flooder_count(), 0);
    let ok = |extra: &[&str]| {
        let mut v = vec!["load-test"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).unwrap().validate()
    };
    assert!(ok(&["--report", "x.html"]).is_ok());
    assert!(ok(&["--report", "x.SVG"]).is_ok());
    assert!(ok(&["--report", "x.png"]).is_err());
    assert!(ok(&["--max-rate", "--slow-fraction", "1", "--clients", "4"]).is_err());
    assert!(ok(&["--max-rate", "--slow-fraction", "0.5", "--clients", "4"]).is_ok());
    assert!(ok(&["--metrics", "http://127.0.0.1:9/metrics"]).is_ok());
    assert!(ok(&["--metrics", "https://127.0.0.1:9/metrics"]).is_err());
}

#[test]
fn channels_and_api_flags() {
    let parse = |extra: &[&str]| {
        let mut v = vec!["load-test"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v)
    };
    let a = parse(&[]).unwrap();
    assert_eq!((a.channels, a.api.as_deref()), (1, None));
    assert_eq!(parse(&["--channels", "3"]).unwrap().channels, 3);
    assert!(parse(&["--channels", "0"]).is_err());
    assert!(parse(&["--channels", "100001"]).is_err());
    // --api and --api-key go together.
    assert!(parse(&["--api", "http://h:1"]).is_err());
    assert!(parse(&["--api-key", "k"]).is_err());
    let a = parse(&["--api", "http://h:1", "--api-key", "k"]).unwrap();
    assert!(a.validate().is_ok());
    let invalid = |extra: &[&str]| parse(extra).unwrap().validate().unwrap_err();
    let e = invalid(&["--api", "ws://h:1", "--api-key", "k"]);
    assert!(e.contains("--api ws://h:1"), "{e}");
    // --channels rewrites the path; a channel in the query would clash.
    let e = invalid(&["--channels", "2", "--url", "ws://h/ws?channel=x"]);
    assert!(e.contains("names a channel"), "{e}");
    assert!(parse(&["--channels", "2", "--url", "ws://h/other?t=1"])
        .unwrap()
        .validate()
        .is_ok());
    // Without --channels, API publishers post to the URL's channel.
    let e = invalid(&["--url", "ws://h/x", "--api", "http://h", "--api-key", "k"]);
    assert!(e.contains("channel is unknown"), "{e}");
    // --max-rate: every channel with a publisher needs a reader.
    let max_rate = ["--max-rate", "--clients", "4", "--publishers", "3"];
    assert!(parse(&[&max_rate[..], &["--channels", "3"]].concat())
        .unwrap()
        .validate()
        .is_ok());
    let e = invalid(&[
        "--max-rate",
        "--clients",
        "2",
        "--publishers",
        "3",
        "--channels",
        "3",
    ]);
    assert!(e.contains("lt-2 has none"), "{e}");
    // Channels beyond the publishers' need no reader.
    assert!(parse(&[
        "--max-rate",
        "--clients",
        "2",
        "--publishers",
        "2",
        "--channels",
        "6"
    ])
    .unwrap()
    .validate()
    .is_ok());
}

#[test]
fn slow_subscribers_are_spread_evenly() {
    assert_eq!(slow_count(1000, 0.1), 100);
    assert_eq!(slow_count(10, 0.0), 0);
    assert_eq!(slow_count(10, 1.0), 10);
    assert_eq!(slow_count(3, 0.5), 2);
    for (n, f) in [
        (1000, 0.1),
        (7, 0.3),
        (10, 1.0),
        (10, 0.0),
        (1, 1.0),
        (999, 0.33),
    ] {
        let k = slow_count(n, f);
        let slow: Vec<usize> = (0..n).filter(|&i| is_slow(i, n, k)).collect();
        assert_eq!(slow.len(), k, "n={n} f={f}");
    }
    // 10 %: every tenth.
    let slow: Vec<usize> = (0..30).filter(|&i| is_slow(i, 30, 3)).collect();
    assert_eq!(slow, vec![9, 19, 29]);
}
