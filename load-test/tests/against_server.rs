//! Runs the load-test binary against the real broadcast-server binary.
//!
//! Why one file of this size: every test here runs the real load-test binary
//! against the real server with the same few helpers; the tests are
//! independent of each other and read one by one.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const LOAD_TEST: &str = env!("CARGO_BIN_EXE_load-test");
const BASELINE: &str = env!("CARGO_BIN_EXE_baseline-server");

/// Kills the server when the test ends, whatever happens.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds `broadcast-server` with the profile this test was built with (a
/// no-op when it is up to date) and returns its path next to `load-test`.
fn server_binary() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let profile_dir = Path::new(LOAD_TEST).parent().expect("target profile dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "-p", "server", "--bin", "broadcast-server"]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build -p server");
    assert!(status.success(), "cargo build -p server failed: {status}");
    let exe = profile_dir.join(format!("broadcast-server{}", std::env::consts::EXE_SUFFIX));
    assert!(exe.exists(), "{} missing after build", exe.display());
    exe
}

/// broadcast-server with its abuse limits off: the load generator's
/// publishers send thousands of messages per second and its clients open
/// connections as fast as they can, which is load, not abuse.
fn start_server() -> Server {
    spawn_server(Command::new(server_binary()).args([
        "start",
        "--max-message-rate",
        "0",
        "--max-connections-per-ip",
        "0",
        "--max-new-connections-per-sec",
        "0",
    ]))
}

/// The baseline server (tokio + tokio-tungstenite + one broadcast channel).
fn start_baseline() -> Server {
    spawn_server(&mut Command::new(BASELINE))
}

fn spawn_server(cmd: &mut Command) -> Server {
    let mut child = cmd
        .args(["--host", "127.0.0.1", "--port", "0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn broadcast-server");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut url = None;
    for line in lines.by_ref() {
        let line = line.expect("server stdout");
        if let Some(i) = line.find("wss://").or_else(|| line.find("ws://")) {
            url = Some(line[i..].trim().to_string());
            break;
        }
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let url = url.expect("server printed no `listening on ws://...` line");
    Server { child, url }
}

fn load_test(args: &[&str]) -> Output {
    Command::new(LOAD_TEST)
        .args(args)
        .arg("--no-progress")
        .stdin(Stdio::null())
        .output()
        .expect("run load-test")
}

fn u(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` missing or not an integer in {v}"))
}

#[test]
fn few_hundred_clients_lose_nothing() {
    let server = start_server();
    let json = std::env::temp_dir().join(format!("load-test-it-{}.json", std::process::id()));
    let out = load_test(&[
        "--url",
        &server.url,
        "--clients",
        "300",
        "--publishers",
        "2",
        "--rate",
        "200",
        "--size",
        "64",
        "--duration",
        "3s",
        "--drain",
        "10s",
        "--ramp",
        "1000",
        "--json",
        json.to_str().expect("utf-8 temp path"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "load-test failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("delivered"), "no summary table:\n{stdout}");

    let text = std::fs::read_to_string(&json).expect("--json file written");
    let _ = std::fs::remove_file(&json);
    let r: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(u(&r, "clients_connected"), 300, "{r}");
    assert_eq!(u(&r, "clients_failed"), 0, "{r}");
    assert_eq!(u(&r, "publishers_connected"), 2, "{r}");
    let published = u(&r, "published");
    let scheduled = u(&r, "scheduled");
    // 200 msg/s for 3 s; the schedule is fixed, sending may fall slightly behind.
    assert!((590..=602).contains(&scheduled), "scheduled {scheduled}");
    assert!(
        published > 0 && published <= scheduled,
        "published {published}"
    );
    assert_eq!(u(&r, "expected_deliveries"), published * 300, "{r}");
    assert_eq!(u(&r, "delivered"), published * 300, "{r}");
    assert_eq!(u(&r, "lost"), 0, "{r}");
    assert_eq!(r["loss_ratio"].as_f64(), Some(0.0), "{r}");
    assert_eq!(u(&r, "duplicates"), 0, "{r}");
    assert_eq!(u(&r, "reordered"), 0, "{r}");
    assert_eq!(u(&r, "malformed"), 0, "{r}");
    assert_eq!(u(&r, "errors"), 0, "{r}");
    assert_eq!(r["server_closes"], serde_json::json!({}), "{r}");
    assert_eq!(u(&r["latency"], "samples"), published * 300, "{r}");
    assert_eq!(r["passed"], true, "{r}");

    // How the run was made.
    let run = &r["run"];
    let started = run["started_at"].as_str().expect("started_at");
    assert!(started.len() == 20 && started.ends_with('Z'), "{run}");
    let command = run["command"].as_str().expect("command");
    assert!(command.contains("--clients 300 --publishers 2"), "{run}");
    assert!(command.contains(&format!("--url {}", server.url)), "{run}");
    assert_eq!(run["version"], env!("CARGO_PKG_VERSION"), "{run}");
    assert!(
        !run["git_revision"].as_str().unwrap_or("").is_empty(),
        "{run}"
    );
    assert!(u(run, "cores") >= 1, "{run}");
    assert!(!run["kernel"].as_str().unwrap_or("").is_empty(), "{run}");
    assert!(
        stdout.contains(&format!("  run: {started} | load-test ")),
        "{stdout}"
    );
    // Every subscriber's connect was timed.
    let c = &r["connect_latency"];
    assert_eq!(u(c, "samples"), 300, "{c}");
    let (p50, max) = (c["p50_ms"].as_f64().unwrap(), c["max_ms"].as_f64().unwrap());
    assert!(p50 > 0.0 && p50 <= max, "{c}");
    assert!(stdout.contains("connect latency ms"), "{stdout}");
    // Published per second adds up; no errors in any second.
    let activity = r["activity"].as_array().expect("activity");
    let per_s: u64 = activity.iter().map(|p| u(p, "published")).sum();
    assert_eq!(per_s, published, "{r}");
    for p in activity {
        let errors = u(p, "connect_errors") + u(p, "send_errors") + u(p, "server_closes");
        assert_eq!(errors, 0, "{p}");
    }
    // What the schedule called for and was not published is accounted for.
    let s = &r["shortfall"];
    let short = u(s, "last_tick") + u(s, "behind") + u(s, "after_error");
    assert_eq!(short, scheduled - published, "{r}");
    assert_eq!(u(s, "after_error"), 0, "{r}");
}

#[test]
fn wss_run_loses_nothing() {
    // A self-signed certificate for 127.0.0.1, trusted through --ca.
    let dir = std::env::temp_dir().join(format!("load-test-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    let server = spawn_server(Command::new(server_binary()).args([
        "start",
        "--max-message-rate",
        "0",
        "--tls-cert",
        cert_path.to_str().expect("utf-8"),
        "--tls-key",
        key_path.to_str().expect("utf-8"),
    ]));
    assert!(server.url.starts_with("wss://"), "{}", server.url);
    let (out, r) = run_json(
        &[
            "--url",
            &server.url,
            "--ca",
            cert_path.to_str().expect("utf-8"),
            "--clients",
            "50",
            "--publishers",
            "2",
            "--rate",
            "100",
            "--duration",
            "2s",
        ],
        "wss",
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert_eq!(u(&r, "clients_connected"), 50, "{r}");
    let published = u(&r, "published");
    assert!(published > 0, "{r}");
    assert_eq!(u(&r, "delivered"), published * 50, "{r}");
    assert_eq!(u(&r, "lost"), 0, "{r}");
    assert_eq!(u(&r, "errors"), 0, "{r}");

    // Without --ca the self-signed certificate is refused: connect errors.
    let out = load_test(&["--url", &server.url, "--clients", "2", "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("certificate"), "{stdout}");
}

#[test]
fn nothing_listening_fails_with_exit_1() {
    // Bind then drop a listener: its port is very likely closed now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let out = load_test(&[
        "--url",
        &url,
        "--clients",
        "3",
        "--duration",
        "200ms",
        "--drain",
        "200ms",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("failed 3"), "{stdout}");
    assert!(stderr.contains("--max-errors"), "{stderr}");
}

#[test]
fn bad_flags_exit_2() {
    let out = load_test(&["--size", "10"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--size"));
    let out = load_test(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}

fn run_json(args: &[&str], name: &str) -> (Output, serde_json::Value) {
    let json =
        std::env::temp_dir().join(format!("load-test-it-{name}-{}.json", std::process::id()));
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(&["--json", json.to_str().expect("utf-8 temp path")]);
    let out = load_test(&all);
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "--json file not written ({e})\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let _ = std::fs::remove_file(&json);
    (out, serde_json::from_str(&text).expect("valid JSON"))
}

#[test]
fn slow_subscribers_do_not_cost_the_others_anything() {
    let server = start_server();
    let (out, r) = run_json(
        &[
            "--url",
            &server.url,
            "--clients",
            "40",
            "--slow-fraction",
            "0.25",
            "--rate",
            "100",
            "--size",
            "1024",
            "--duration",
            "2s",
            "--drain",
            "5s",
            "--ramp",
            "1000",
        ],
        "slow",
    );
    assert_eq!(out.status.code(), Some(0), "{r}");
    let slow = &r["slow"];
    assert_eq!(u(slow, "clients"), 10, "{r}");
    assert_eq!(u(slow, "connected"), 10, "{r}");
    let closed: u64 = slow["closes"]
        .as_object()
        .expect("closes map")
        .values()
        .map(|v| v.as_u64().expect("count"))
        .sum();
    assert_eq!(closed + u(slow, "still_open"), 10, "{r}");
    // Loss and deliveries are over the 30 fast subscribers only.
    let published = u(&r, "published");
    assert!(published > 0, "{r}");
    assert_eq!(u(&r, "clients_connected"), 40, "{r}");
    assert_eq!(u(&r, "expected_deliveries"), published * 30, "{r}");
    assert_eq!(u(&r, "delivered"), published * 30, "{r}");
    assert_eq!(u(&r, "lost"), 0, "{r}");
    assert_eq!(u(&r, "errors"), 0, "{r}");
}

#[test]
fn report_page_has_the_plots() {
    let server = start_server();
    let html = std::env::temp_dir().join(format!("load-test-it-{}.html", std::process::id()));
    let out = load_test(&[
        "--url",
        &server.url,
        "--clients",
        "50",
        "--rate",
        "200",
        "--size",
        "64",
        "--duration",
        "2s",
        "--report",
        html.to_str().expect("utf-8 temp path"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&html).expect("--report file written");
    let _ = std::fs::remove_file(&html);
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert_eq!(page.matches("<svg").count(), 5, "{page}");
    assert!(page.contains("Latency per second"));
    assert!(page.contains("Connect latency"));
    assert!(page.contains("Messages published and errors per second"));
    assert!(page.contains("load-test summary"));
    assert!(page.contains("<table class=\"run\">"), "{page}");
    assert!(page.contains("<tr><th>Command</th><td><code>"), "{page}");
}

#[test]
fn idle_storm_measures_the_server_process() {
    let server = start_server();
    let pid = server.child.id().to_string();
    let (out, r) = run_json(
        &[
            "--url",
            &server.url,
            "--clients",
            "300",
            "--idle",
            "--ramp",
            "0",
            "--duration",
            "500ms",
            "--after-close",
            "200ms",
            "--server-pid",
            &pid,
        ],
        "idle",
    );
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert_eq!(r["mode"], "idle", "{r}");
    assert_eq!(u(&r, "clients_connected"), 300, "{r}");
    assert_eq!(u(&r, "published"), 0, "{r}");
    assert!(r["connect_rate_per_s"].as_f64().unwrap() > 0.0, "{r}");
    let s = &r["server"];
    assert_eq!(s["pid"].as_u64(), Some(u64::from(server.child.id())), "{r}");
    assert!(u(s, "rss_before_kib") > 0, "{r}");
    assert!(u(s, "rss_peak_kib") >= u(s, "rss_idle_kib"), "{r}");
    assert!(s["rss_after_close_kib"].as_u64().is_some(), "{r}");
    assert!(s["rss_per_connection_b"].as_f64().is_some(), "{r}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("server RSS/connection"), "{stdout}");
}

#[test]
fn baseline_server_loses_nothing_at_a_gentle_rate() {
    let server = start_baseline();
    let (out, r) = run_json(
        &[
            "--url",
            &server.url,
            "--clients",
            "200",
            "--publishers",
            "2",
            "--rate",
            "100",
            "--size",
            "64",
            "--duration",
            "2s",
            "--drain",
            "5s",
            "--ramp",
            "1000",
        ],
        "baseline",
    );
    assert_eq!(out.status.code(), Some(0), "{r}");
    let published = u(&r, "published");
    assert!(published > 0, "{r}");
    assert_eq!(u(&r, "delivered"), published * 200, "{r}");
    assert_eq!(u(&r, "lost"), 0, "{r}");
    assert_eq!(u(&r, "errors"), 0, "{r}");
}

#[test]
fn max_rate_window_waits_for_every_subscriber() {
    let server = start_baseline();
    let (out, r) = run_json(
        &[
            "--url",
            &server.url,
            "--clients",
            "20",
            "--publishers",
            "2",
            "--max-rate",
            "--window",
            "16",
            "--size",
            "256",
            "--duration",
            "1s",
            "--ramp",
            "1000",
        ],
        "maxrate",
    );
    // The window (32 in flight) is far below the channel's capacity (1024),
    // so even the lossy baseline delivers everything.
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert_eq!(r["mode"], "max-rate", "{r}");
    assert_eq!(u(&r, "lost"), 0, "{r}");
    assert_eq!(u(&r, "window_sweeps"), 0, "{r}");
    assert!(u(&r, "published") > 100, "{r}");
}

#[test]
fn v1_subscribers_decode_message_events_and_lose_nothing() {
    let server = start_server();
    let (out, r) = run_json(
        &[
            "--url",
            &server.url,
            "--v1",
            "--clients",
            "100",
            "--publishers",
            "2",
            "--rate",
            "100",
            "--size",
            "64",
            "--duration",
            "2s",
            "--drain",
            "5s",
            "--ramp",
            "1000",
        ],
        "v1",
    );
    assert_eq!(out.status.code(), Some(0), "{r}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| broadcast.v1 |"), "{stdout}");
    assert_eq!(r["protocol"], "broadcast.v1", "{r}");
    assert_eq!(u(&r, "clients_connected"), 100, "{r}");
    assert_eq!(u(&r, "publishers_connected"), 2, "{r}");
    let published = u(&r, "published");
    assert!(published > 0, "{r}");
    assert_eq!(u(&r, "delivered"), published * 100, "{r}");
    assert_eq!(u(&r, "lost"), 0, "{r}");
    assert_eq!(u(&r, "duplicates"), 0, "{r}");
    assert_eq!(u(&r, "reordered"), 0, "{r}");
    assert_eq!(u(&r, "malformed"), 0, "{r}");
    assert_eq!(u(&r, "errors"), 0, "{r}");
    assert_eq!(u(&r["latency"], "samples"), published * 100, "{r}");
    // One welcome per connection; presence updates as the others joined.
    assert_eq!(u(&r, "welcomes"), 102, "{r}");
    assert!(u(&r, "presence_events") > 0, "{r}");
}

#[test]
fn v1_against_a_plain_server_fails_to_connect() {
    let server = start_baseline();
    let (out, r) = run_json(
        &[
            "--url",
            &server.url,
            "--v1",
            "--clients",
            "3",
            "--duration",
            "200ms",
            "--drain",
            "200ms",
        ],
        "v1-plain",
    );
    assert_eq!(out.status.code(), Some(1), "{r}");
    assert_eq!(u(&r, "clients_failed"), 3, "{r}");
    let e = r["first_connect_error"].as_str().unwrap_or_default();
    assert!(e.contains("did not select subprotocol broadcast.v1"), "{r}");
}

#[test]
fn flooder_and_paced_publishers_are_reported_apart_with_server_metrics() {
    let server = start_server();
    let metrics = server
        .url
        .replace("ws://", "http://")
        .replace("/ws", "/metrics");
    let pid = server.child.id().to_string();
    let (out, r) = run_json(
        &[
            "--url",
            &server.url,
            "--clients",
            "20",
            "--publishers",
            "2",
            "--rate",
            "100",
            "--flooders",
            "1",
            "--size",
            "64",
            "--duration",
            "1s",
            "--drain",
            "20s",
            "--server-pid",
            &pid,
            "--after-close",
            "200ms",
            "--metrics",
            &metrics,
        ],
        "flood",
    );
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert_eq!(u(&r, "flooders"), 1, "{r}");
    assert_eq!(u(&r, "publishers_connected"), 3, "{r}");
    let (paced, flood) = (&r["classes"]["paced"], &r["classes"]["flood"]);
    assert_eq!(u(paced, "publishers"), 2, "{r}");
    assert_eq!(u(flood, "publishers"), 1, "{r}");
    // 100 msg/s over two paced publishers: each owes 50 in the second.
    assert_eq!(u(paced, "scheduled"), 100, "{r}");
    assert!(
        u(paced, "sent_min") > 0 && u(paced, "sent_max") <= 50,
        "{r}"
    );
    assert_eq!(flood["scheduled"], serde_json::Value::Null, "{r}");
    // The flooder writes whole batches of 256, at least one.
    let flooded = u(flood, "published");
    assert!(flooded >= 256 && flooded.is_multiple_of(256), "{r}");
    assert_eq!(u(paced, "published") + flooded, u(&r, "published"), "{r}");
    for class in [paced, flood] {
        let published = u(class, "published");
        assert_eq!(u(class, "expected_deliveries"), published * 20, "{r}");
        assert_eq!(u(class, "delivered"), published * 20, "{r}");
        assert_eq!(u(class, "lost"), 0, "{r}");
        assert_eq!(u(&class["latency"], "samples"), published * 20, "{r}");
    }
    assert_eq!(u(&r, "lost"), 0, "{r}");
    assert_eq!(u(&r, "errors"), 0, "{r}");
    assert_eq!(r["metrics_error"], serde_json::Value::Null, "{r}");
    let m = &r["server_metrics"];
    assert!(u(m, "latency_observations") > 0, "{r}");
    assert!(
        m["latency_p50_ms"].as_f64().is_some() || m["latency_over_ms"].as_f64().is_some(),
        "{r}"
    );
    // Nobody was closed while publishing.
    assert_eq!(m["closes"], serde_json::json!({}), "{r}");
    let s = &r["server"];
    assert!(u(s, "rss_peak_kib") >= u(s, "rss_before_kib"), "{r}");
    assert!(s["rss_after_close_kib"].as_u64().is_some(), "{r}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("flood latency ms"), "{stdout}");
    assert!(stdout.contains("server latency ms"), "{stdout}");
}

#[test]
fn failed_metrics_scrape_is_reported_not_fatal() {
    let server = start_server();
    // Port 9 (discard) is not a metrics page: refused on loopback.
    let (out, r) = run_json(
        &[
            "--url",
            &server.url,
            "--clients",
            "5",
            "--idle",
            "--duration",
            "200ms",
            "--metrics",
            "http://127.0.0.1:9/metrics",
        ],
        "metrics-error",
    );
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert_eq!(r["server_metrics"], serde_json::Value::Null, "{r}");
    let e = r["metrics_error"].as_str().expect("metrics_error set");
    assert!(e.contains("127.0.0.1:9"), "{e}");
}

/// The channel rows of a `--channels` report, checked for a clean run:
/// every subscriber received exactly its channel's messages. Returns them.
fn clean_channel_rows(r: &serde_json::Value, channels: u64) -> Vec<serde_json::Value> {
    let ch = &r["channels"];
    assert_eq!(u(ch, "count"), channels, "{r}");
    let rows = ch["table"].as_array().expect("channels.table").clone();
    assert_eq!(rows.len() as u64, channels, "{r}");
    for (k, row) in rows.iter().enumerate() {
        assert_eq!(row["channel"], format!("lt-{k}"), "{r}");
        let expected = u(row, "published") * u(row, "subscribers");
        assert_eq!(u(row, "expected"), expected, "{row}");
        // A message leaked from another channel would make this larger.
        assert_eq!(u(row, "received"), expected, "{row}");
        assert_eq!(u(row, "lost"), 0, "{row}");
        assert_eq!(u(row, "misrouted"), 0, "{row}");
    }
    let sum = |key: &str| rows.iter().map(|row| u(row, key)).sum::<u64>();
    assert_eq!(sum("published"), u(r, "published"), "{r}");
    assert_eq!(sum("expected"), u(r, "expected_deliveries"), "{r}");
    assert_eq!(u(r, "delivered"), u(r, "expected_deliveries"), "{r}");
    assert_eq!(u(r, "misrouted"), 0, "{r}");
    assert_eq!(u(r, "lost"), 0, "{r}");
    assert_eq!(u(r, "errors"), 0, "{r}");
    rows
}

#[test]
fn channels_keep_their_messages_apart() {
    // Default server flags: channels need none.
    let server = spawn_server(Command::new(server_binary()).arg("start"));
    // 7 subscribers over 3 channels: 3, 2 and 2, one publisher each; a
    // message leaked between channels would show in `received`.
    let (out, r) = run_json(
        &[
            "--url",
            &server.url,
            "--channels",
            "3",
            "--clients",
            "7",
            "--publishers",
            "3",
            "--rate",
            "150",
            "--size",
            "64",
            "--duration",
            "2s",
            "--drain",
            "10s",
            "--ramp",
            "1000",
        ],
        "channels",
    );
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert_eq!(u(&r, "clients_connected"), 7, "{r}");
    let rows = clean_channel_rows(&r, 3);
    let subscribers: Vec<u64> = rows.iter().map(|row| u(row, "subscribers")).collect();
    assert_eq!(subscribers, [3, 2, 2], "{r}");
    for row in &rows {
        assert_eq!(u(row, "publishers"), 1, "{row}");
        assert!(u(row, "published") > 0, "{row}");
    }
    // Not every subscriber got everything: each got a third.
    assert!(u(&r, "expected_deliveries") < u(&r, "published") * 7, "{r}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("3 (lt-0 .. lt-2)"), "{stdout}");
    assert!(stdout.contains("misrouted 0"), "{stdout}");
}

/// The server with its HTTP API on, and the API's base URL.
fn start_api_server(key: &str) -> (Server, String) {
    let server = spawn_server(Command::new(server_binary()).args(["start", "--api-key", key]));
    let base = server
        .url
        .replace("ws://", "http://")
        .trim_end_matches("/ws")
        .to_string();
    (server, base)
}

#[test]
fn api_publishers_lose_nothing() {
    let key = "load-test-api-key-0123456789";
    let (server, api) = start_api_server(key);
    let (out, r) = run_json(
        &[
            "--url",
            &server.url,
            "--api",
            &api,
            "--api-key",
            key,
            "--clients",
            "50",
            "--publishers",
            "2",
            "--rate",
            "200",
            "--size",
            "64",
            "--duration",
            "2s",
            "--drain",
            "10s",
            "--ramp",
            "1000",
        ],
        "api",
    );
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert_eq!(r["api"], api.as_str(), "{r}");
    assert_eq!(u(&r, "publishers_connected"), 2, "{r}");
    let published = u(&r, "published");
    assert!(published > 0, "{r}");
    assert_eq!(u(&r, "expected_deliveries"), published * 50, "{r}");
    assert_eq!(u(&r, "delivered"), published * 50, "{r}");
    assert_eq!(u(&r["latency"], "samples"), published * 50, "{r}");
    assert_eq!(u(&r, "lost"), 0, "{r}");
    assert_eq!(u(&r, "duplicates"), 0, "{r}");
    assert_eq!(u(&r, "malformed"), 0, "{r}");
    assert_eq!(u(&r, "errors"), 0, "{r}");
    assert_eq!(r["api_errors"], serde_json::json!({}), "{r}");

    // Through the API into channels.
    let (out, r) = run_json(
        &[
            "--url",
            &server.url,
            "--api",
            &api,
            "--api-key",
            key,
            "--channels",
            "2",
            "--clients",
            "10",
            "--publishers",
            "4",
            "--rate",
            "200",
            "--size",
            "64",
            "--duration",
            "1s",
            "--drain",
            "10s",
        ],
        "api-channels",
    );
    assert_eq!(out.status.code(), Some(0), "{r}");
    for row in clean_channel_rows(&r, 2) {
        assert_eq!(
            (u(&row, "subscribers"), u(&row, "publishers")),
            (5, 2),
            "{row}"
        );
    }

    // A wrong key: every publisher stops at its first answer, a 401.
    let (out, r) = run_json(
        &[
            "--url",
            &server.url,
            "--api",
            &api,
            "--api-key",
            "wrong",
            "--clients",
            "3",
            "--publishers",
            "2",
            "--duration",
            "500ms",
            "--drain",
            "500ms",
        ],
        "api-401",
    );
    assert_eq!(out.status.code(), Some(1), "{r}");
    assert_eq!(u(&r, "published"), 0, "{r}");
    assert_eq!(r["api_errors"], serde_json::json!({"401": 2}), "{r}");
    assert_eq!(u(&r, "send_errors"), 2, "{r}");
    assert_eq!(u(&r, "errors"), 2, "{r}");
}

/// `--reconnect-every` against a server on its default flags (history on:
/// 100 messages per channel): every subscriber drops its TCP connection
/// each second, stays away 100 ms (about 20 messages at 200/s) and resumes
/// with `?since=`; every message arrives once, in order.
#[test]
fn reconnecting_subscribers_resume_without_gaps() {
    let server = spawn_server(Command::new(server_binary()).arg("start"));
    let (out, r) = run_json(
        &[
            "--url",
            &server.url,
            "--v1",
            "--clients",
            "50",
            "--publishers",
            "2",
            "--rate",
            "200",
            "--size",
            "64",
            "--duration",
            "3s",
            "--drain",
            "10s",
            "--reconnect-every",
            "1s",
            "--outage",
            "100ms",
        ],
        "reconnect",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{r}");
    assert!(stdout.contains("resumes"), "{stdout}");
    let published = u(&r, "published");
    assert!(published > 0, "{r}");
    assert_eq!(u(&r, "delivered"), published * 50, "{r}");
    assert_eq!(u(&r, "lost"), 0, "{r}");
    assert_eq!(u(&r, "duplicates"), 0, "{r}");
    assert_eq!(u(&r, "reordered"), 0, "{r}");
    assert_eq!(u(&r, "errors"), 0, "{r}");
    let resume = &r["resume"];
    // Subscriber i drops at (i + 1) / 50 s + k s after publishing starts,
    // while that is before its end (3 s): 50 + 50 + 49.
    assert_eq!(u(resume, "reconnects"), 149, "{r}");
    assert_eq!(u(resume, "failures"), 0, "{r}");
    assert_eq!(u(resume, "unrecovered"), 0, "{r}");
    assert!(u(resume, "recovered") > 0, "{r}");
    assert_eq!(u(&resume["time_to_recover"], "samples"), 149, "{r}");
    // One welcome per connection, resumed ones included.
    assert_eq!(u(&r, "welcomes"), 52 + 149, "{r}");
}

/// With history too short for the outage, the resumes are reported as not
/// covered, the gaps as loss, and the run fails.
#[test]
fn resumes_history_cannot_cover_are_counted_and_fail_the_run() {
    let server = spawn_server(Command::new(server_binary()).args(["start", "--history-size", "5"]));
    let (out, r) = run_json(
        &[
            "--url",
            &server.url,
            "--v1",
            "--clients",
            "10",
            "--rate",
            "200",
            "--size",
            "64",
            "--duration",
            "2s",
            "--reconnect-every",
            "1s",
            "--outage",
            "200ms",
        ],
        "reconnect-expired",
    );
    assert_eq!(out.status.code(), Some(1), "{r}");
    let resume = &r["resume"];
    assert_eq!(u(resume, "reconnects"), 19, "{r}");
    assert_eq!(u(resume, "unrecovered"), 19, "{r}");
    assert!(u(&r, "lost") > 0, "{r}");
    assert_eq!(u(&r, "duplicates"), 0, "{r}");
}

/// `broadcast_deflate_messages_total` from the server's /metrics page.
fn deflate_messages(ws_url: &str) -> u64 {
    let (status, page) = http_get(ws_url, "/metrics");
    assert_eq!(status, 200, "GET /metrics: {page}");
    page.lines()
        .find_map(|l| l.strip_prefix("broadcast_deflate_messages_total "))
        .unwrap_or_else(|| panic!("no broadcast_deflate_messages_total in\n{page}"))
        .trim()
        .parse()
        .expect("a count")
}

#[test]
fn compressing_subscribers_lose_nothing_on_default_server_flags() {
    for how in ["header", "full"] {
        // Default flags: --compression on, --compression-min-size 256.
        let server = spawn_server(Command::new(server_binary()).arg("start"));
        assert_eq!(deflate_messages(&server.url), 0);
        let (out, r) = run_json(
            &[
                "--url",
                &server.url,
                "--clients",
                "20",
                // Two publishers share the channel: they do not offer it
                // (tokio-tungstenite cannot inflate what they would get).
                "--publishers",
                "2",
                "--rate",
                "100",
                "--size",
                "1024",
                "--payload",
                "json",
                "--compression",
                how,
                "--duration",
                "1s",
                "--drain",
                "10s",
            ],
            &format!("deflate-{how}"),
        );
        assert_eq!(out.status.code(), Some(0), "{how}: {r}");
        let published = u(&r, "published");
        assert!(published > 0, "{r}");
        assert_eq!(u(&r, "delivered"), published * 20, "{how}: {r}");
        assert_eq!(u(&r, "lost"), 0, "{how}: {r}");
        assert_eq!(u(&r, "malformed"), 0, "{how}: {r}");
        assert_eq!(u(&r, "errors"), 0, "{how}: {r}");
        let w = &r["wire"];
        assert_eq!(w["compression"], how, "{r}");
        assert_eq!(u(w, "negotiated"), 20, "{r}");
        // JSON compresses: well under the 1,024 + 4 bytes of a plain frame.
        let per = w["bytes_per_delivery"]
            .as_f64()
            .expect("bytes_per_delivery");
        assert!(per > 0.0 && per < 600.0, "{how}: {per} bytes per delivery");
        // The server compressed each message once, not once per recipient.
        assert_eq!(deflate_messages(&server.url), published, "{how}: {r}");
    }
}

#[test]
fn without_compression_the_wire_carries_whole_frames() {
    let server = start_server();
    let (out, r) = run_json(
        &[
            "--url",
            &server.url,
            "--clients",
            "5",
            "--publishers",
            "1",
            "--rate",
            "50",
            "--size",
            "1024",
            "--duration",
            "1s",
        ],
        "no-deflate",
    );
    assert_eq!(out.status.code(), Some(0), "{r}");
    let w = &r["wire"];
    assert_eq!(
        (w["compression"].as_str(), u(w, "negotiated")),
        (Some("off"), 0)
    );
    // Every delivery is a 1,024-byte binary frame with a 4-byte header.
    assert_eq!(u(w, "socket_bytes"), u(&r, "delivered") * 1028, "{r}");
    assert_eq!(deflate_messages(&server.url), 0);
}

/// A redis-server on a free loopback port, killed when the test ends.
struct Redis {
    child: Child,
    port: u16,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn redis-server (apt-get install redis-server)");
        let redis = Redis { child, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// `GET path` on the server of `ws_url`: the status and the body.
fn http_get(ws_url: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let host = ws_url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .expect("host:port");
    let Ok(mut tcp) = std::net::TcpStream::connect(host) else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut resp = String::new();
    if tcp.write_all(req.as_bytes()).is_err() || tcp.read_to_string(&mut resp).is_err() {
        return (0, String::new());
    }
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// A rolling restart's drain with two `--url`s: node A (`--drain-period
/// 1`) closes its subscribers and its publisher with 1012; each answers,
/// moves to node B (joined through one redis-server) and goes on there,
/// the subscribers resuming with `?since=`, the publisher with its next
/// message: every message arrives once, in order.
#[test]
fn drained_connections_move_to_the_other_url_and_lose_nothing() {
    let redis = Redis::start();
    let node = |extra: &[&str]| {
        let mut cmd = Command::new(server_binary());
        cmd.args(["start", "--redis", &redis.url()]).args(extra);
        spawn_server(&mut cmd)
    };
    let a = node(&["--drain-period", "1"]);
    let b = node(&[]);
    for n in [&a, &b] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while http_get(&n.url, "/readyz").0 != 200 {
            assert!(std::time::Instant::now() < deadline, "{} not ready", n.url);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let json = std::env::temp_dir().join(format!("load-test-it-move-{}.json", std::process::id()));
    // 20 subscribers and 2 publishers, alternating: 10 and one on each node.
    let run = Command::new(LOAD_TEST)
        .args(["--url", &a.url, "--url", &b.url, "--v1", "--clients", "20"])
        .args(["--publishers", "2", "--rate", "100", "--size", "64"])
        .args(["--duration", "6s", "--drain", "10s", "--no-progress"])
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run load-test");
    // Once A holds its 10 subscribers and its publisher, SIGTERM it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, body) = http_get(&a.url, "/healthz");
        let health: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if health["connections"].as_u64() == Some(11) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "A has {health}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let killed = Command::new("kill")
        .args(["-TERM", &a.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let out = run.wait_with_output().expect("load-test ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("{e}\n{stdout}"));
    let _ = std::fs::remove_file(&json);
    let r: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("moves"), "{stdout}");
    let moves = &r["moves"];
    assert_eq!(u(moves, "subscriber_moves"), 10, "{r}");
    assert_eq!(u(moves, "publisher_moves"), 1, "{r}");
    assert_eq!(u(moves, "failures"), 0, "{r}");
    assert_eq!(u(moves, "unrecovered"), 0, "{r}");
    assert_eq!(u(&moves["gap"], "samples"), 10, "{r}");
    let published = u(&r, "published");
    assert!(published > 0, "{r}");
    assert_eq!(u(&r, "delivered"), published * 20, "{r}");
    assert_eq!(u(&r, "lost"), 0, "{r}");
    assert_eq!(u(&r, "duplicates"), 0, "{r}");
    assert_eq!(u(&r, "errors"), 0, "{r}");
}
