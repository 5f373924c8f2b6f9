//! Operations: JSON logs (`--log-format json`) and metrics on their own
//! listener (`--metrics-addr`).

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::util::*;

#[tokio::test]
async fn json_logs_are_one_object_per_line_on_stderr() {
    let mut server = Server::start(&["--log-format", "json"]).await;
    let mut ws = server.connect().await;
    ws.close(None).await.unwrap();
    server.signal("TERM");
    assert!(server.wait_exit(EVENT_TIMEOUT).await.success());
    let stderr = server.stderr_to_end().await;
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    let messages: Vec<&str> = events
        .iter()
        .map(|e| {
            assert!(e["level"].is_string() && e["timestamp"].is_string(), "{e}");
            e["fields"]["message"].as_str().unwrap_or_default()
        })
        .collect();
    for want in ["listening", "shutting down", "stopped"] {
        assert!(messages.contains(&want), "no {want:?} event in {stderr}");
    }
    let listening = &events[messages.iter().position(|m| *m == "listening").unwrap()];
    assert_eq!(listening["level"], "INFO");
    assert_eq!(
        listening["fields"]["local"],
        format!("127.0.0.1:{}", server.port)
    );
}

/// `--metrics-addr 127.0.0.1:0`: the server says where, after the
/// listening line.
async fn start_with_metrics_port(args: &[&str]) -> (Server, String) {
    let mut full = vec!["--metrics-addr", "127.0.0.1:0"];
    full.extend_from_slice(args);
    let mut server = Server::start(&full).await;
    let line = server.stdout_line().await;
    let addr = line
        .strip_prefix("broadcast-server metrics on http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("bad metrics line {line:?}"))
        .to_owned();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{line}"
    );
    (server, addr)
}

async fn scrape(addr: &str) -> Vec<Sample> {
    let resp = http_get(addr, "/metrics").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(
        resp.header("content-type")
            .is_some_and(|ct| ct.starts_with("application/openmetrics-text")),
        "{resp:?}"
    );
    parse_metrics(&resp.body)
}

#[tokio::test]
async fn metrics_addr_serves_metrics_there_only_and_they_move() {
    let (server, metrics) = start_with_metrics_port(&[]).await;
    assert_eq!(server.http_get("/metrics").await.status, 404);
    assert_eq!(server.http_get("/healthz").await.status, 200);
    assert_eq!(http_get(&metrics, "/").await.status, 404);
    assert_eq!(http_get(&metrics, "/healthz").await.status, 404);

    let mut c = server.connect_many(2, false).await;
    let before = scrape(&metrics).await;
    for i in 0..3 {
        c[0].send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for i in 0..3 {
        assert_eq!(recv(&mut c[1]).await, Message::text(format!("m{i}")));
    }
    let after = scrape(&metrics).await;
    let delta = |name: &str| metric(&after, name, "") - metric(&before, name, "");
    assert_eq!(delta("broadcast_messages_in_total"), 3.0);
    assert!(delta("broadcast_deliveries_total") >= 3.0);
    assert_eq!(metric(&after, "broadcast_connections_open", ""), 2.0);
}

#[tokio::test]
async fn a_taken_metrics_port_fails_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let run = run_start(&["--metrics-addr", &addr], &[]).await;
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert_eq!(run.stdout, "", "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(
        matches!(&lines[..], [l] if l.starts_with(&format!("error: cannot listen on {addr}: "))),
        "{run:?}"
    );
    drop(taken);
}
