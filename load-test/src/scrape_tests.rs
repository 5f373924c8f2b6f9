//! Tests of `scrape` (kept apart so the module reads as its code).

use super::*;

const PAGE: &str = r#"# HELP broadcast_closes WebSocket connections ended, by reason
# TYPE broadcast_closes counter
broadcast_closes_total{reason="normal"} 10
broadcast_closes_total{reason="aborted"} 0
broadcast_connections_open 5
broadcast_publisher_paused_seconds_total{cause="fanout"} 1.5
broadcast_publisher_paused_seconds_total{cause="rate_limit"} 0
broadcast_fanout_backlog_bytes 0
broadcast_aborted_connections_total 3
# TYPE broadcast_delivery_latency_seconds histogram
broadcast_delivery_latency_seconds_bucket{le="0.001"} 10
broadcast_delivery_latency_seconds_bucket{le="0.01"} 20
broadcast_delivery_latency_seconds_bucket{le="0.1"} 20
broadcast_delivery_latency_seconds_bucket{le="+Inf"} 20
broadcast_delivery_latency_seconds_sum 0.05
broadcast_delivery_latency_seconds_count 20
# EOF
"#;

#[test]
fn lines_and_labels_parse() {
    let p = Page::parse(PAGE);
    assert_eq!(p.value("broadcast_connections_open"), Some(5.0));
    assert_eq!(p.value("broadcast_closes_total"), None); // labelled only
    let closes = p.by_label(CLOSES, "reason");
    assert_eq!(closes["normal"], 10.0);
    assert_eq!(closes["aborted"], 0.0);
    let b = p.buckets(LATENCY);
    assert_eq!(
        b,
        vec![
            (0.001, 10.0),
            (0.01, 20.0),
            (0.1, 20.0),
            (f64::INFINITY, 20.0)
        ]
    );
    // Escapes, spaces, a timestamp and an exemplar.
    let s = parse_line(r#"x_total{a="q\"uo\\te", b = "2"} 3 1700000000 # {id="e"} 1"#).unwrap();
    assert_eq!(s.name, "x_total");
    assert_eq!(
        s.labels,
        vec![("a".into(), "q\"uo\\te".into()), ("b".into(), "2".into())]
    );
    assert_eq!(s.value, 3.0);
    assert!(parse_line("novalue").is_none());
    assert!(parse_line(r#"x{a="unterminated} 1"#).is_none());
}

#[test]
fn percentile_is_the_bucket_bound_where_the_count_crosses() {
    let inf = f64::INFINITY;
    // 100 observations: 50 <= 1, 40 in (1, 5], 9 in (5, 10], 1 above 10.
    let b = [(1.0, 50.0), (5.0, 90.0), (10.0, 99.0), (inf, 100.0)];
    assert_eq!(bucket_percentile(&b, 0.50), Some(1.0)); // rank 50: exactly the first
    assert_eq!(bucket_percentile(&b, 0.51), Some(5.0));
    assert_eq!(bucket_percentile(&b, 0.90), Some(5.0));
    assert_eq!(bucket_percentile(&b, 0.99), Some(10.0));
    assert_eq!(bucket_percentile(&b, 0.995), Some(inf));
    assert_eq!(bucket_percentile(&b, 0.0), Some(1.0)); // rank at least 1
                                                       // One observation: every percentile is its bucket.
    let one = [(1.0, 0.0), (5.0, 1.0), (inf, 1.0)];
    assert_eq!(bucket_percentile(&one, 0.5), Some(5.0));
    assert_eq!(bucket_percentile(&one, 0.99), Some(5.0));
    // Empty buckets at the start are skipped.
    let late = [(1.0, 0.0), (2.0, 0.0), (4.0, 3.0), (inf, 3.0)];
    assert_eq!(bucket_percentile(&late, 0.01), Some(4.0));
    assert_eq!(bucket_percentile(&[(1.0, 0.0), (inf, 0.0)], 0.5), None);
    assert_eq!(bucket_percentile(&[], 0.5), None);
}

#[test]
fn run_figures_are_deltas_of_two_scrapes() {
    let before = Page::parse(PAGE);
    let after = Page::parse(
        &PAGE
            .replace(r#"reason="normal"} 10"#, r#"reason="normal"} 12"#)
            .replace(r#"reason="aborted"} 0"#, r#"reason="aborted"} 1"#)
            .replace(r#"cause="fanout"} 1.5"#, r#"cause="fanout"} 4"#)
            .replace("backlog_bytes 0", "backlog_bytes 77")
            .replace("aborted_connections_total 3", "aborted_connections_total 4")
            // 100 more: 90 under 1 ms, 9 under 10 ms, 1 over 100 ms.
            .replace(r#"le="0.001"} 10"#, r#"le="0.001"} 100"#)
            .replace(r#"le="0.01"} 20"#, r#"le="0.01"} 119"#)
            .replace(r#"le="0.1"} 20"#, r#"le="0.1"} 119"#)
            .replace(r#"le="+Inf"} 20"#, r#"le="+Inf"} 120"#),
    );
    let m = ServerMetrics::between("u", &before, &after);
    assert_eq!(m.latency_observations, 100);
    assert_eq!(m.latency_p50_ms, Some(1.0));
    assert_eq!(m.latency_p99_ms, Some(10.0));
    assert_eq!(m.latency_over_ms, Some(100.0));
    assert_eq!(m.show(m.latency_p99_ms), "10");
    assert_eq!(
        m.publisher_paused_s,
        BTreeMap::from([("fanout".to_string(), 2.5)])
    );
    assert_eq!(
        m.closes,
        BTreeMap::from([("aborted".to_string(), 1.0), ("normal".to_string(), 2.0)])
    );
    assert_eq!(m.fanout_backlog_bytes_end, Some(77.0));
    assert_eq!(m.aborted, Some(1.0));
    // A p99 in the +Inf bucket.
    let worse = Page::parse(&after.samples.iter().fold(String::new(), |mut s, x| {
        let v = if x.name.ends_with("_bucket") && x.labels[0].1 == "+Inf" {
            x.value + 50.0
        } else {
            x.value
        };
        let labels: Vec<String> = x
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        s += &format!("{}{{{}}} {v}\n", x.name, labels.join(","));
        s
    }));
    let m = ServerMetrics::between("u", &before, &worse);
    assert_eq!(m.latency_observations, 150);
    assert_eq!(m.latency_p99_ms, None);
    assert_eq!(m.show(m.latency_p99_ms), "> 100");
    // A server without these metrics.
    let none = ServerMetrics::between("u", &Page::default(), &Page::default());
    assert_eq!(none.latency_observations, 0);
    assert_eq!(none.show(none.latency_p50_ms), "-");
    assert!(none.publisher_paused_s.is_empty());
    assert_eq!(none.aborted, None);
}

#[test]
fn urls_and_http_answers() {
    assert_eq!(
        split_url("http://127.0.0.1:9/metrics").unwrap(),
        ("127.0.0.1:9", "/metrics")
    );
    assert_eq!(split_url("http://h:1").unwrap(), ("h:1", "/"));
    assert!(split_url("https://h/metrics").is_err());
    assert!(split_url("http:///x").is_err());
    let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\na 1";
    assert_eq!(body_of(plain).unwrap(), "a 1");
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\na 1\r\n2;x=y\r\n\n\n\r\n0\r\n\r\n";
    assert_eq!(body_of(chunked).unwrap(), "a 1\n\n");
    assert!(body_of(b"HTTP/1.1 404 Not Found\r\n\r\n").is_err());
    assert!(body_of(b"HTTP/1.1 200 OK\r\n").is_err());
}
