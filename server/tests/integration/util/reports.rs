//! What the server reports about itself, read and parsed: the `/healthz`
//! JSON document and the `/metrics` text exposition.

use std::time::Duration;

use super::{Server, EVENT_TIMEOUT};

/// The value of top-level `key` in a JSON object such as the /healthz
/// document; `None` if the body is not JSON or has no such key.
pub(crate) fn json_value(body: &str, key: &str) -> Option<serde_json::Value> {
    let mut doc: serde_json::Value = serde_json::from_str(body).ok()?;
    doc.get_mut(key).map(serde_json::Value::take)
}

/// The unsigned integer at top-level `key` (see [`json_value`]).
pub(crate) fn json_number(body: &str, key: &str) -> Option<u64> {
    json_value(body, key)?.as_u64()
}

/// One sample of a Prometheus text exposition: `name{labels} value`.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) name: String,
    /// The text between the braces (empty without labels).
    pub(crate) labels: String,
    pub(crate) value: f64,
}

/// Parses a Prometheus / OpenMetrics text document, asserting that every
/// line that is not a comment is `name{labels} value` or `name value` with
/// a numeric value.
pub(crate) fn parse_metrics(body: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in body.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("metrics line without a value: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("non-numeric value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let labels = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unterminated labels in {line:?}"));
                (name, labels)
            }
            None => (series, ""),
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        samples.push(Sample {
            name: name.to_owned(),
            labels: labels.to_owned(),
            value,
        });
    }
    samples
}

/// The value of the sample `name` whose labels are exactly `labels`.
pub(crate) fn metric(samples: &[Sample], name: &str, labels: &str) -> f64 {
    samples
        .iter()
        .find(|s| s.name == name && s.labels == labels)
        .unwrap_or_else(|| panic!("no sample {name}{{{labels}}} in {samples:#?}"))
        .value
}

impl Server {
    /// Scrapes `/metrics` (asserting 200 and the text content type) and parses it.
    pub(crate) async fn metrics(&self) -> Vec<Sample> {
        let resp = self.http_get("/metrics").await;
        assert_eq!(resp.status, 200, "/metrics: {resp:?}");
        let ct = resp.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("text/plain") || ct.starts_with("application/openmetrics-text"),
            "/metrics content type {ct:?}"
        );
        parse_metrics(&resp.body)
    }

    /// The top-level `key` of the `/healthz` document (asserting 200 and
    /// that the key is there).
    pub(crate) async fn health(&self, key: &str) -> serde_json::Value {
        let resp = self.http_get("/healthz").await;
        assert_eq!(resp.status, 200, "/healthz: {resp:?}");
        json_value(&resp.body, key)
            .unwrap_or_else(|| panic!("no {key} in /healthz body {:?}", resp.body))
    }

    /// A number from `/healthz`.
    pub(crate) async fn health_number(&self, key: &str) -> u64 {
        let value = self.health(key).await;
        value
            .as_u64()
            .unwrap_or_else(|| panic!("/healthz {key} is not a number: {value}"))
    }

    /// The `connections` number from `/healthz`.
    pub(crate) async fn health_connections(&self) -> u64 {
        self.health_number("connections").await
    }

    /// Polls `/healthz` until its `key` is `want` (bounded).
    pub(crate) async fn wait_health(&self, key: &str, want: impl Into<serde_json::Value>) {
        let want = want.into();
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let got = self.health(key).await;
            if got == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server on port {}: /healthz {key} stayed at {got}, expected {want}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `/healthz` until `connections == want` (bounded).
    pub(crate) async fn wait_connections(&self, want: u64) {
        self.wait_health("connections", want).await;
    }
}
