//! Opening WebSocket connections, optionally from several loopback source
//! addresses (each source address has its own ephemeral port range).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Where to connect, and from which local addresses.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) addr: SocketAddr,
    /// Local addresses to bind round-robin; empty: let the kernel choose.
    pub(crate) sources: Vec<IpAddr>,
}

impl Target {
    /// Parses and resolves `url`; `source_addrs` applies only to an IPv4 loopback target.
    pub(crate) async fn resolve(url: &str, source_addrs: u8) -> Result<Self> {
        let req = url
            .into_client_request()
            .with_context(|| format!("invalid WebSocket URL `{url}`"))?;
        let uri = req.uri();
        match uri.scheme_str() {
            Some("ws") => {}
            Some("wss") => bail!("wss:// is not supported (no TLS); use ws://"),
            other => bail!("unsupported URL scheme {other:?}; use ws://"),
        }
        let host = uri
            .host()
            .context("URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(80);
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
        Ok(Self {
            url: url.to_string(),
            addr,
            sources,
        })
    }

    /// Connection number `n`: TCP connect (from source `n mod sources`), then
    /// the WebSocket handshake, within `timeout`.
    pub(crate) async fn connect(
        &self,
        n: usize,
        config: WebSocketConfig,
        timeout: Duration,
    ) -> Result<Ws> {
        tokio::time::timeout(timeout, self.connect_inner(n, config))
            .await
            .map_err(|_| anyhow::anyhow!("connect timed out after {timeout:?}"))?
    }

    async fn connect_inner(&self, n: usize, config: WebSocketConfig) -> Result<Ws> {
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .context("socket")?;
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
        let (ws, _resp) =
            tokio_tungstenite::client_async_with_config(self.url.as_str(), stream, Some(config))
                .await
                .context("WebSocket handshake")?;
        Ok(ws)
    }
}

/// Config for subscribers: a modest read buffer (there may be 20,000 of them).
pub(crate) fn subscriber_config(size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size((16 * 1024).max(size + 16))
        .write_buffer_size(0)
        .max_message_size(Some(size.max(64 * 1024) * 2))
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
        let t = Target::resolve("ws://127.0.0.1:9/ws", 3).await.unwrap();
        assert_eq!(t.addr, "127.0.0.1:9".parse().unwrap());
        assert_eq!(
            t.sources,
            vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([127, 0, 0, 2]),
                IpAddr::from([127, 0, 0, 3])
            ]
        );
        let t6 = Target::resolve("ws://[::1]:9/ws", 3).await.unwrap();
        assert!(t6.sources.is_empty());
        assert!(Target::resolve("wss://127.0.0.1:9/ws", 1).await.is_err());
        assert!(Target::resolve("http://127.0.0.1:9/ws", 1).await.is_err());
    }
}
