//! A tiny raw HTTP/1.1 client: one request a connection (`Connection:
//! close`), the response read to its end and parsed, chunked bodies
//! included.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::{Server, EVENT_TIMEOUT};

#[derive(Debug)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    /// Lower-cased header names with their values.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl HttpResponse {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` with `Connection: close`, read to EOF and parsed.
pub(crate) async fn http_get(addr: &str, path: &str) -> HttpResponse {
    http_raw(addr, get_request(addr, path).as_bytes()).await
}

/// The bytes of `GET path` to `host` with `Connection: close`.
pub(crate) fn get_request(host: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

/// Sends `request` as is and parses the response.
pub(crate) async fn http_raw(addr: &str, request: &[u8]) -> HttpResponse {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("tcp connect");
        s.write_all(request).await.expect("write request");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read response");
        raw
    };
    let raw = timeout(EVENT_TIMEOUT, fut)
        .await
        .expect("HTTP response not complete (connection not closed) in time");
    parse_http(&raw)
}

pub(crate) fn parse_http(raw: &[u8]) -> HttpResponse {
    let pos = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..pos]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or("");
    assert!(
        version.starts_with("HTTP/1."),
        "bad status line {status_line:?}"
    );
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[pos + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_str = String::from_utf8_lossy(&data[..eol]);
        let size_str = size_str.split(';').next().unwrap().trim().to_owned();
        let size = usize::from_str_radix(&size_str, 16).expect("chunk size");
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

impl Server {
    /// `GET path` over raw HTTP/1.1.
    pub(crate) async fn http_get(&self, path: &str) -> HttpResponse {
        http_get(&self.addr(), path).await
    }
}
