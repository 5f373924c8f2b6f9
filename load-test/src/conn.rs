//! Opening WebSocket connections, optionally from several loopback source
//! addresses (each source address has its own ephemeral port range).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::http::header::{
    SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_PROTOCOL,
};
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::rawws::{self, RawWs};

/// A connection's byte stream: plain TCP (`ws://`) or TLS over it (`wss://`).
pub(crate) type Stream = MaybeTlsStream<TcpStream>;
/// A publisher's connection (tokio-tungstenite: it writes).
pub(crate) type Ws = WebSocketStream<Stream>;
/// A subscriber's connection ([`rawws`]: it reads, cheaply).
pub(crate) type SubWs = RawWs<Stream>;

/// How `wss://` connections check the server's certificate.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsOptions {
    /// A PEM file of extra trusted certificates (a private CA, a self-signed
    /// test certificate), besides the system's store and the Mozilla roots.
    pub(crate) ca: Option<std::path::PathBuf>,
}

/// Where to connect, and from which local addresses.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) url: String,
    /// `host[:port]` for the Host header, and the request path (with query).
    pub(crate) host_port: String,
    pub(crate) path: String,
    pub(crate) addr: SocketAddr,
    /// Local addresses to bind round-robin; empty: let the kernel choose.
    pub(crate) sources: Vec<IpAddr>,
    /// Subprotocol every connection offers and requires (`--v1`).
    pub(crate) subprotocol: Option<&'static str>,
    /// `--compression`: subscribers offer permessage-deflate and inflate
    /// (see [`rawws::Deflate`]); publishers offer it unless `Off`.
    pub(crate) deflate: rawws::Deflate,
    /// For `wss://`: the TLS client and the name the certificate must carry.
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl Target {
    /// Parses and resolves `url`; `source_addrs` applies only to an IPv4 loopback target.
    pub(crate) async fn resolve(url: &str, source_addrs: u8, tls: &TlsOptions) -> Result<Self> {
        let req = url
            .into_client_request()
            .with_context(|| format!("invalid WebSocket URL `{url}`"))?;
        let uri = req.uri();
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            other => bail!("unsupported URL scheme {other:?}; use ws:// or wss://"),
        };
        let host = uri
            .host()
            .context("URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let host_port = uri
            .authority()
            .map_or(host.clone(), |a| a.as_str().to_string());
        let path = uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string());
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("cannot resolve `{host}`"))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .with_context(|| format!("`{host}` resolves to no address"))?;
        let sources = match addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => (1..=source_addrs)
                .map(|k| IpAddr::V4(Ipv4Addr::new(127, 0, 0, k)))
                .collect(),
            _ => Vec::new(),
        };
        let tls = if secure {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .with_context(|| format!("`{host}` is not a valid TLS server name"))?;
            let config =
                client_cli::tls_client_config(tls.ca.as_deref()).map_err(anyhow::Error::msg)?;
            Some((config, name))
        } else {
            None
        };
        Ok(Self {
            url: url.to_string(),
            host_port,
            path,
            addr,
            sources,
            subprotocol: None,
            deflate: rawws::Deflate::Off,
            tls,
        })
    }

    /// The same server, channel `name`: the URL's path becomes `/ws/NAME`
    /// (see [`channel_url`]).
    pub(crate) fn with_channel(&self, name: &str) -> Result<Self> {
        let (origin, path) = channel_parts(&self.url, name)?;
        Ok(Self {
            url: origin + &path,
            path,
            ..self.clone()
        })
    }

    /// The same target, resuming from `since` (`?since=EPOCH:OFFSET` added
    /// to the request path).
    pub(crate) fn with_since(&self, since: &protocol::history::Position) -> Self {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        let query = format!("{sep}{}={since}", protocol::history::SINCE_PARAM);
        Self {
            url: format!("{}{query}", self.url),
            path: format!("{}{query}", self.path),
            ..self.clone()
        }
    }

    /// The channel this target's subscribers join (see [`url_channel`]).
    pub(crate) fn channel(&self) -> Result<String> {
        path_channel(&self.path)
    }

    /// Every connection offers `subprotocol` and fails unless the server selects it.
    pub(crate) fn with_subprotocol(mut self, subprotocol: Option<&'static str>) -> Self {
        self.subprotocol = subprotocol;
        self
    }

    /// Every connection offers permessage-deflate unless `deflate` is `Off`.
    pub(crate) fn with_deflate(mut self, deflate: rawws::Deflate) -> Self {
        self.deflate = deflate;
        self
    }

    /// Connection number `n`: TCP connect (from source `n mod sources`), then
    /// the WebSocket handshake, within `timeout`.
    /// `rcvbuf`: SO_RCVBUF to set before connecting (None: the kernel's default).
    pub(crate) async fn connect(
        &self,
        n: usize,
        config: WebSocketConfig,
        timeout: Duration,
        rcvbuf: Option<u32>,
    ) -> Result<Ws> {
        tokio::time::timeout(timeout, self.connect_inner(n, config, rcvbuf))
            .await
            .map_err(|_| anyhow::anyhow!("connect timed out after {timeout:?}"))?
    }

    /// A subscriber's connection: like [`Target::connect`], but the
    /// handshake and reading are done by [`rawws`] (cheaper per message).
    pub(crate) async fn connect_raw(
        &self,
        n: usize,
        timeout: Duration,
        rcvbuf: Option<u32>,
        buf_size: usize,
        max_message: usize,
    ) -> Result<SubWs> {
        tokio::time::timeout(timeout, async {
            let stream = self.stream(n, rcvbuf).await?;
            rawws::handshake(
                stream,
                &self.host_port,
                &self.path,
                self.subprotocol,
                self.deflate,
                buf_size,
                max_message,
            )
            .await
            .context("WebSocket handshake")
        })
        .await
        .map_err(|_| anyhow::anyhow!("connect timed out after {timeout:?}"))?
    }

    async fn connect_inner(
        &self,
        n: usize,
        config: WebSocketConfig,
        rcvbuf: Option<u32>,
    ) -> Result<Ws> {
        let stream = self.stream(n, rcvbuf).await?;
        let mut req = self
            .url
            .as_str()
            .into_client_request()
            .context("WebSocket URL")?;
        if let Some(p) = self.subprotocol {
            req.headers_mut()
                .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
        }
        // Publishers send uncompressed (allowed by RFC 7692) and the
        // caller offers only when nothing will be sent to them compressed:
        // tokio-tungstenite refuses RSV1.
        if self.deflate != rawws::Deflate::Off {
            req.headers_mut().insert(
                SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_static(protocol::deflate::CLIENT_OFFER),
            );
        }
        let (ws, resp) = tokio_tungstenite::client_async_with_config(req, stream, Some(config))
            .await
            .map_err(|e| match (self.subprotocol, &e) {
                // tungstenite refuses an answer without the offered subprotocol.
                (Some(p), WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(_))) => {
                    anyhow::anyhow!(e).context(format!("the server did not select subprotocol {p}"))
                }
                _ => anyhow::anyhow!(e),
            })
            .context("WebSocket handshake")?;
        let selected = resp
            .headers()
            .get(SEC_WEBSOCKET_PROTOCOL)
            .map(|v| v.to_str().unwrap_or("(not text)"));
        rawws::check_subprotocol(self.subprotocol, selected).context("WebSocket handshake")?;
        Ok(ws)
    }

    /// Connection number `n`: TCP, then TLS for `wss://`.
    pub(crate) async fn stream(&self, n: usize, rcvbuf: Option<u32>) -> Result<Stream> {
        let tcp = self.tcp(n, rcvbuf).await?;
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some((config, name)) => Ok(Stream::Rustls(
                tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .context("TLS handshake")?,
            )),
        }
    }

    /// TCP connection number `n` (source address `n mod sources`), TCP_NODELAY on.
    async fn tcp(&self, n: usize, rcvbuf: Option<u32>) -> Result<TcpStream> {
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .context("socket")?;
        if let Some(bytes) = rcvbuf {
            socket.set_recv_buffer_size(bytes).context("SO_RCVBUF")?;
        }
        if !self.sources.is_empty() {
            let src = self.sources[n % self.sources.len()];
            // Lets the kernel reuse local ports still in TIME_WAIT from earlier runs.
            socket.set_reuseaddr(true).context("SO_REUSEADDR")?;
            socket
                .bind(SocketAddr::new(src, 0))
                .with_context(|| format!("bind {src}"))?;
        }
        let stream = socket
            .connect(self.addr)
            .await
            .with_context(|| format!("TCP connect to {}", self.addr))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        Ok(stream)
    }
}

/// `url` with its path replaced by `/ws/NAME` (`--channels`): the
/// scheme, authority and query stay; a query that already names a channel
/// (`channel=`) is refused, since the server would see two names.
///
/// # Errors
/// `url` does not parse, has no authority or names a channel in its query.
pub(crate) fn channel_url(url: &str, name: &str) -> Result<String> {
    channel_parts(url, name).map(|(origin, path)| origin + &path)
}

/// [`channel_url`] in two parts: `scheme://authority` and the path with the query.
fn channel_parts(url: &str, name: &str) -> Result<(String, String)> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("invalid URL `{url}`"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        bail!("`{url}` is not an absolute URL");
    };
    let query = match uri.query() {
        Some(q) if protocol::v1::query_param(q, protocol::channel::PARAM).is_some() => {
            bail!("the query names a channel; --channels chooses them (lt-0, lt-1, ...)")
        }
        Some(q) => format!("?{q}"),
        None => String::new(),
    };
    Ok((
        format!("{scheme}://{authority}"),
        format!("{}/{name}{query}", protocol::WS_PATH),
    ))
}

/// The channel a client of `url` joins, as the server reads it
/// (`/ws`: `default`, `/ws/NAME`, `?channel=NAME`).
///
/// # Errors
/// `url` does not parse, is not a `/ws` URL, or names an invalid channel.
pub(crate) fn url_channel(url: &str) -> Result<String> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("invalid URL `{url}`"))?;
    path_channel(uri.path_and_query().map_or("/", |p| p.as_str()))
}

/// The channel of a request path with its query (see [`url_channel`]).
fn path_channel(path_and_query: &str) -> Result<String> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    match protocol::channel::from_request(path, query) {
        Some(Ok(name)) => Ok(name),
        Some(Err(e)) => bail!("{e:?}"),
        None => bail!(
            "the path `{path}` is not {} or below it, so its channel is unknown",
            protocol::WS_PATH
        ),
    }
}

/// Read buffer of one subscriber: 64 KiB (a read returns many messages), less
/// with many subscribers (about 256 MiB in all, at least 16 KiB), and always
/// room for one whole message.
pub(crate) fn subscriber_buffer(clients: usize, size: usize) -> usize {
    ((256 << 20) / clients.max(1))
        .clamp(16 << 10, 64 << 10)
        .max(size + 14)
}

/// Largest message a subscriber accepts.
pub(crate) fn max_message(size: usize) -> usize {
    size.max(64 * 1024) * 2
}

/// Config for publishers: writes are batched by the caller and flushed explicitly.
pub(crate) fn publisher_config(size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(64 * 1024)
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(size.max(64 * 1024) * 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_targets_get_source_addresses() {
        let t = Target::resolve("ws://127.0.0.1:9/ws", 3, &TlsOptions::default())
            .await
            .unwrap();
        assert_eq!(t.addr, "127.0.0.1:9".parse().unwrap());
        assert_eq!(
            t.sources,
            vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([127, 0, 0, 2]),
                IpAddr::from([127, 0, 0, 3])
            ]
        );
        let t6 = Target::resolve("ws://[::1]:9/ws", 3, &TlsOptions::default())
            .await
            .unwrap();
        assert!(t6.sources.is_empty());
        let none = TlsOptions::default();
        let tls = Target::resolve("wss://127.0.0.1:9/ws", 1, &none)
            .await
            .unwrap();
        assert!(tls.tls.is_some());
        assert!(Target::resolve("ws://127.0.0.1:9/ws", 1, &none)
            .await
            .unwrap()
            .tls
            .is_none());
        assert!(Target::resolve("http://127.0.0.1:9/ws", 1, &none)
            .await
            .is_err());
        let bad_ca = TlsOptions {
            ca: Some("/nonexistent/ca.pem".into()),
        };
        assert!(Target::resolve("wss://127.0.0.1:9/ws", 1, &bad_ca)
            .await
            .is_err());
        let t = Target::resolve("ws://localhost:9/a/b?x=1", 1, &TlsOptions::default())
            .await
            .unwrap();
        assert_eq!(
            (t.host_port.as_str(), t.path.as_str()),
            ("localhost:9", "/a/b?x=1")
        );
    }

    #[test]
    fn channel_urls_replace_the_path_and_keep_the_query() {
        let at = |url: &str| channel_url(url, "lt-3").unwrap();
        assert_eq!(at("ws://h:1/ws"), "ws://h:1/ws/lt-3");
        assert_eq!(at("ws://h:1/ws/other"), "ws://h:1/ws/lt-3");
        assert_eq!(at("wss://h/ws?token=abc"), "wss://h/ws/lt-3?token=abc");
        assert_eq!(at("ws://h:1/"), "ws://h:1/ws/lt-3");
        assert_eq!(at("ws://[::1]:9/proxy/ws"), "ws://[::1]:9/ws/lt-3");
        assert_eq!(at("wss://ws/ws/x"), "wss://ws/ws/lt-3");
        assert!(channel_url("ws://h/ws?channel=x", "lt-0").is_err());
        assert!(channel_url("ws://h/ws?a=1&channel=x", "lt-0").is_err());
        assert!(channel_url("/ws", "lt-0").is_err());
        assert_eq!(url_channel("ws://h/ws").unwrap(), "default");
        assert_eq!(url_channel("ws://h/ws/a/b").unwrap(), "a/b");
        assert_eq!(url_channel("ws://h/ws?x=1&channel=a%3Ab").unwrap(), "a:b");
        assert!(url_channel("ws://h/metrics").is_err());
        assert!(url_channel("ws://h/ws/a//b").is_err());
        assert!(url_channel("ws://h/ws/a?channel=b").is_err());
    }

    #[tokio::test]
    async fn channel_targets_rewrite_url_and_path() {
        let t = Target::resolve("ws://127.0.0.1:9/ws?k=v", 1, &TlsOptions::default())
            .await
            .unwrap();
        assert_eq!(t.channel().unwrap(), "default");
        let c = t.with_channel("lt-7").unwrap();
        assert_eq!(c.url, "ws://127.0.0.1:9/ws/lt-7?k=v");
        assert_eq!(c.path, "/ws/lt-7?k=v");
        assert_eq!((c.addr, c.host_port.as_str()), (t.addr, "127.0.0.1:9"));
        assert_eq!(c.channel().unwrap(), "lt-7");
    }

    #[test]
    fn buffers() {
        assert_eq!(subscriber_buffer(100, 64), 64 << 10);
        assert_eq!(subscriber_buffer(10_000, 64), 26_843);
        assert_eq!(subscriber_buffer(100_000, 64), 16 << 10);
        assert_eq!(subscriber_buffer(100, 1 << 20), (1 << 20) + 14);
    }
}
