//! `--api`: publishing through the server's HTTP API (`POST /api/publish`)
//! instead of a WebSocket connection.
//!
//! Each publisher holds one HTTP/1.1 keep-alive connection and has one
//! request in flight: the server answers once the message is queued for
//! the channel's subscribers and makes the request wait while its shards
//! are behind (flow control), so waiting for the answer is the API's
//! push-back, as a blocked write is a WebSocket publisher's. The body is
//! `{"channel": C, "data": BASE64}` with the same binary payload a
//! WebSocket publisher sends (`payload`), so subscribers measure latency
//! and loss the same way.
//!
//! The client is written here over the connection `conn` opens (TCP, TLS
//! for `https://`, the loopback source addresses) instead of taking an
//! HTTP client crate: it sends one kind of request and reads answers that
//! always carry a `Content-Length` (the server's JSON), which `httparse`
//! (already built for the server's hyper) parses.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::http::Uri;

use crate::conn::{Stream, Target, TlsOptions};

/// Where the API publishes, below the base URL.
const PUBLISH_PATH: &str = "/api/publish";
/// Largest answer head and body accepted (ours are about 100 bytes).
const MAX_ANSWER: usize = 64 * 1024;
/// Headers parsed in an answer (ours has four or five).
const MAX_HEADERS: usize = 32;

/// Checks that `url` is an `http://` or `https://` base URL without a query.
///
/// # Errors
/// It does not parse, has another scheme, no host, or a query.
pub(crate) fn check_url(url: &str) -> Result<()> {
    split_url(url).map(drop)
}

/// `url` as the WebSocket URL of the same server (so that `conn` opens the
/// connection) and the path of the publish endpoint.
fn split_url(url: &str) -> Result<(String, String)> {
    let uri: Uri = url.parse().context("invalid URL")?;
    let scheme = match uri.scheme_str() {
        Some("http") => "ws",
        Some("https") => "wss",
        other => bail!("unsupported scheme {other:?}; use http:// or https://"),
    };
    let authority = uri.authority().context("the URL has no host")?;
    if uri.query().is_some() {
        bail!("the API base URL takes no query");
    }
    let base = uri.path().trim_end_matches('/');
    Ok((
        format!("{scheme}://{authority}/"),
        format!("{base}{PUBLISH_PATH}"),
    ))
}

/// The API endpoint every API publisher posts to.
#[derive(Debug)]
pub(crate) struct ApiTarget {
    /// The server's address, TLS and source addresses.
    target: Target,
    /// The request line's path (`/api/publish`, below the base URL's path).
    path: String,
    /// `Authorization` header value.
    auth: String,
}

impl ApiTarget {
    /// Parses and resolves `url` (see [`check_url`]); requests carry `key`.
    pub(crate) async fn resolve(
        url: &str,
        key: &str,
        source_addrs: u8,
        tls: &TlsOptions,
    ) -> Result<Self> {
        let (ws_url, path) = split_url(url).with_context(|| format!("--api {url}"))?;
        Ok(Self {
            target: Target::resolve(&ws_url, source_addrs, tls).await?,
            path,
            auth: format!("Bearer {key}"),
        })
    }

    /// Publisher connection number `n`, connected within `timeout`.
    pub(crate) async fn connect(self: &Arc<Self>, n: usize, timeout: Duration) -> Result<ApiConn> {
        let mut conn = ApiConn {
            target: self.clone(),
            n,
            timeout,
            stream: None,
            served: 0,
            req: Vec::new(),
            body: String::new(),
            buf: Vec::new(),
        };
        conn.reconnect().await?;
        Ok(conn)
    }
}

/// Why a publish request failed.
#[derive(Debug)]
pub(crate) enum PublishError {
    /// The server answered with this status instead of 200.
    Status(u16),
    /// No answer: the connection failed.
    Io(anyhow::Error),
}

/// One publisher's keep-alive connection to the API.
pub(crate) struct ApiConn {
    target: Arc<ApiTarget>,
    /// Connection number (picks the source address).
    n: usize,
    timeout: Duration,
    /// None after the server announced `Connection: close`, or a failure.
    stream: Option<Stream>,
    /// Requests answered on `stream`.
    served: u64,
    /// The request being sent, and its body, reused from one to the next.
    req: Vec<u8>,
    body: String,
    /// The answer being read.
    buf: Vec<u8>,
}

impl ApiConn {
    async fn reconnect(&mut self) -> Result<()> {
        self.stream = None;
        self.served = 0;
        let open = self.target.target.stream(self.n, None);
        let stream = tokio::time::timeout(self.timeout, open)
            .await
            .map_err(|_| anyhow::anyhow!("connect timed out after {:?}", self.timeout))??;
        self.stream = Some(stream);
        Ok(())
    }

    /// Publishes `payload` (binary) to `channel` and waits for the answer.
    ///
    /// A kept-alive connection that the server closed meanwhile (its idle
    /// timeout) fails before any byte of the answer arrives; then the
    /// request is sent once more on a new connection.
    ///
    /// # Errors
    /// A status other than 200, or a connection that failed.
    pub(crate) async fn publish(
        &mut self,
        channel: &str,
        payload: &[u8],
    ) -> Result<(), PublishError> {
        self.build_request(channel, payload);
        loop {
            if self.stream.is_none() {
                self.reconnect().await.map_err(PublishError::Io)?;
            }
            let reused = self.served > 0;
            match self.exchange().await {
                Ok(answer) => {
                    self.served += 1;
                    if answer.close {
                        self.stream = None;
                    }
                    return match answer.status {
                        200 => Ok(()),
                        status => Err(PublishError::Status(status)),
                    };
                }
                Err(Failed { answered, error }) => {
                    self.stream = None;
                    if !reused || answered {
                        return Err(PublishError::Io(error));
                    }
                }
            }
        }
    }

    /// The request for `payload` on `channel`, into `self.req`.
    fn build_request(&mut self, channel: &str, payload: &[u8]) {
        // Channel names are made of bytes that need no JSON escaping.
        debug_assert!(protocol::channel::validate(channel).is_ok(), "{channel}");
        self.body.clear();
        self.body.push_str("{\"channel\":\"");
        self.body.push_str(channel);
        self.body.push_str("\",\"data\":\"");
        base64::engine::general_purpose::STANDARD.encode_string(payload, &mut self.body);
        self.body.push_str("\"}");
        self.req.clear();
        let t = &self.target;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            t.path,
            t.target.host_port,
            t.auth,
            self.body.len()
        );
        self.req.extend_from_slice(head.as_bytes());
        self.req.extend_from_slice(self.body.as_bytes());
    }

    /// Writes `self.req` and reads the whole answer.
    async fn exchange(&mut self) -> Result<Answer, Failed> {
        let stream = self.stream.as_mut().expect("connected");
        let failed = |answered: bool| move |e: std::io::Error| Failed::new(answered, e.into());
        stream.write_all(&self.req).await.map_err(failed(false))?;
        stream.flush().await.map_err(failed(false))?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((head_len, answer)) =
                parse_head(&self.buf).map_err(|e| Failed::new(true, e))?
            {
                // The body (an error's reason, or the counts) is not needed.
                while self.buf.len() < head_len + answer.body_len {
                    let n = stream.read(&mut chunk).await.map_err(failed(true))?;
                    if n == 0 {
                        return Err(Failed::new(true, anyhow::anyhow!("answer cut short")));
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                return Ok(answer);
            }
            if self.buf.len() > MAX_ANSWER {
                return Err(Failed::new(true, anyhow::anyhow!("answer head too large")));
            }
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(failed(!self.buf.is_empty()))?;
            if n == 0 {
                let answered = !self.buf.is_empty();
                return Err(Failed::new(
                    answered,
                    anyhow::anyhow!("the server closed the connection before answering"),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A failed exchange, and whether any of the answer had arrived (then
/// the server saw the request: it is not sent again).
struct Failed {
    answered: bool,
    error: anyhow::Error,
}

impl Failed {
    fn new(answered: bool, error: anyhow::Error) -> Self {
        Self { answered, error }
    }
}

/// What an answer's head says.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    body_len: usize,
    /// The server closes the connection after this answer.
    close: bool,
}

/// Parses the answer head at the start of `buf`: None while incomplete,
/// else its length and what it says.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Answer)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let head_len = match res.parse(buf).context("invalid HTTP answer")? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(n) => n,
    };
    let status = res.code.context("HTTP answer without a status")?;
    let mut body_len = None;
    let mut close = res.version == Some(0);
    for h in res.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            body_len = Some(value.parse::<usize>().context("bad Content-Length")?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("chunked HTTP answers are not supported (the API sends Content-Length)");
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let body_len = body_len.context("HTTP answer without Content-Length")?;
    if body_len > MAX_ANSWER {
        bail!("HTTP answer body of {body_len} bytes, more than {MAX_ANSWER}");
    }
    Ok(Some((
        head_len,
        Answer {
            status,
            body_len,
            close,
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(
            split_url("http://127.0.0.1:8080").unwrap(),
            ("ws://127.0.0.1:8080/".into(), "/api/publish".into())
        );
        assert_eq!(
            split_url("https://h/prefix/").unwrap(),
            ("wss://h/".into(), "/prefix/api/publish".into())
        );
        assert!(check_url("ws://h").is_err());
        assert!(check_url("http://h/?a=1").is_err());
        assert!(check_url("/api").is_err());
    }

    #[test]
    fn answer_heads() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}";
        let (n, a) = parse_head(ok).unwrap().unwrap();
        assert_eq!(&ok[n..], b"{\"a\":1}");
        assert_eq!(
            a,
            Answer {
                status: 200,
                body_len: 7,
                close: false
            }
        );
        assert_eq!(parse_head(&ok[..20]).unwrap(), None);
        let closing =
            b"HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        let (_, a) = parse_head(closing).unwrap().unwrap();
        assert_eq!((a.status, a.close), (401, true));
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(parse_head(old).unwrap().unwrap().1.close);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn requests_carry_the_payload_in_base64() {
        let target = ApiTarget::resolve("http://127.0.0.1:9/x", "k3y", 1, &TlsOptions::default())
            .await
            .unwrap();
        let mut conn = ApiConn {
            target: Arc::new(target),
            n: 0,
            timeout: Duration::from_secs(1),
            stream: None,
            served: 0,
            req: Vec::new(),
            body: String::new(),
            buf: Vec::new(),
        };
        conn.build_request("lt-1", &[0, 1, 2, 255]);
        let req = String::from_utf8(conn.req.clone()).unwrap();
        let body = r#"{"channel":"lt-1","data":"AAEC/w=="}"#;
        assert_eq!(
            req,
            format!(
                "POST /x/api/publish HTTP/1.1\r\nHost: 127.0.0.1:9\r\nAuthorization: Bearer k3y\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["channel"], "lt-1");
    }
}
