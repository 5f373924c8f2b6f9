//! Opening a connection: TCP, TLS for `wss://`, the WebSocket handshake
//! (offering `broadcast.v1`, or `broadcast.v2` then `broadcast.v1` with
//! `--channel`, and permessage-deflate unless `--no-compression`), and
//! turning failures into one readable cause.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{
    Error as WsError, ProtocolError, SubProtocolError, TlsError, UrlError,
};
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::deflate::{Inbound, Shim};
use crate::render::sanitize;

/// A client WebSocket: tungstenite over the deflate shim over the socket
/// (TLS or not).
pub(crate) type Ws = WebSocketStream<Shim<MaybeTlsStream<TcpStream>>>;

/// The TLS settings of `wss://` connections (see [`tls_client_config`]).
pub(crate) type Tls = Arc<rustls::ClientConfig>;

/// The largest message inflated when a limit is not known from
/// tungstenite's configuration (it has one, 64 MiB, by default).
const MAX_INFLATED: usize = protocol::DEFAULT_MAX_MESSAGE_SIZE * 1024;

/// Bound on one attempt: TCP connect, TLS and the upgrade together.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server speaks on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// No subprotocol: frames are the messages themselves.
    Raw,
    /// `broadcast.v1`: every frame the server sends is a JSON event.
    V1,
    /// `broadcast.v2`: JSON commands and events, channels chosen by command.
    V2,
}

/// An open connection.
pub(crate) struct Connected {
    pub(crate) ws: Ws,
    pub(crate) format: Format,
    /// What its reading half needs to restore compressed messages.
    pub(crate) inbound: Inbound,
}

/// Why a connection attempt failed, in words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConnectError(String);

/// The TLS settings every `wss://` connection of the console client uses
/// (see [`tls_client_config`]).
pub(crate) fn tls_connector(ca: Option<&Path>) -> Result<Tls, ConnectError> {
    tls_client_config(ca).map_err(ConnectError)
}

/// TLS client settings for `wss://`: rustls (no OpenSSL) trusting the
/// system's certificate store (`/etc/ssl/certs` and the like, so a CA the
/// administrator installed works), the Mozilla roots built in (so a machine
/// without a store still reaches public servers), and the certificates of
/// `ca` (a PEM file: a private CA or a self-signed server certificate).
/// Shared by the console client and `load-test`.
///
/// # Errors
/// `ca` cannot be read, holds no certificate, or holds an unusable one
/// (one line naming the file).
pub fn tls_client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    // Unreadable or unparsable system certificates are skipped: the
    // built-in roots and --ca still apply.
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    if let Some(ca) = ca {
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "--ca {}: no PEM certificate in the file",
                ca.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Connects to `url`, offering `broadcast.v2` then `broadcast.v1` when
/// `v2`, else `broadcast.v1` alone; the server's answer says which it
/// speaks. A server that answers with no subprotocol makes tungstenite fail
/// the handshake (as RFC 6455 says a client must), so the client then
/// connects again without offering any: raw mode. With `deflate` each
/// attempt also offers permessage-deflate; a server that does not answer
/// it is spoken to without, and an answer that breaks RFC 7692 fails the
/// connection.
pub(crate) async fn connect(
    url: &str,
    tls: &Tls,
    v2: bool,
    deflate: bool,
) -> Result<Connected, ConnectError> {
    let offer = if v2 {
        OFFER_V2
    } else {
        protocol::v1::SUBPROTOCOL
    };
    let (handshake, format) = match attempt(url, tls, Some(offer), deflate).await {
        Ok(handshake) => {
            let format = if handshake.protocol.as_deref() == Some(protocol::v2::SUBPROTOCOL) {
                Format::V2
            } else {
                Format::V1
            };
            (handshake, format)
        }
        Err(WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(
            SubProtocolError::NoSubProtocol,
        ))) => match attempt(url, tls, None, deflate).await {
            Ok(handshake) => (handshake, Format::Raw),
            Err(e) => return Err(describe(e)),
        },
        Err(e) => return Err(describe(e)),
    };
    let Handshake {
        ws,
        extensions,
        protocol: _,
    } = handshake;
    let answers = extensions.iter().map(String::as_str);
    let accepted = if deflate {
        protocol::deflate::accepted(answers)
    } else {
        // Nothing offered: any extension in the answer is one too many.
        match answers.map(str::trim).find(|a| !a.is_empty()) {
            Some(a) => Err(protocol::deflate::BadAnswer(format!(
                "extension {a:?} was not offered"
            ))),
            None => Ok(None),
        }
    }
    .map_err(|e| ConnectError(sanitize(&e.to_string()).into_owned()))?;
    let marks = deflate.then(|| ws.get_ref().marks());
    let max = ws.get_config().max_message_size.unwrap_or(MAX_INFLATED);
    Ok(Connected {
        ws,
        format,
        inbound: Inbound::new(marks, accepted, max),
    })
}

/// What a client with channels offers: v2, and v1 for older servers.
const OFFER_V2: &str = "broadcast.v2, broadcast.v1";

/// An upgraded connection and the parts of the server's answer we read.
struct Handshake {
    ws: Ws,
    /// `Sec-WebSocket-Protocol`.
    protocol: Option<String>,
    /// Every `Sec-WebSocket-Extensions` value.
    extensions: Vec<String>,
}

/// One handshake offering `offer` (and permessage-deflate if `deflate`),
/// TCP and TLS included, within [`CONNECT_TIMEOUT`].
async fn attempt(
    url: &str,
    tls: &Tls,
    offer: Option<&'static str>,
    deflate: bool,
) -> Result<Handshake, WsError> {
    let mut request = url.into_client_request()?;
    let headers = request.headers_mut();
    if let Some(offer) = offer {
        headers.insert("Sec-WebSocket-Protocol", HeaderValue::from_static(offer));
    }
    if deflate {
        headers.insert(
            "Sec-WebSocket-Extensions",
            HeaderValue::from_static(protocol::deflate::CLIENT_OFFER),
        );
    }
    let connecting = async {
        let stream = open(&request, tls).await?;
        tokio_tungstenite::client_async_with_config(request, Shim::new(stream, deflate), None).await
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(result) => result.map(|(ws, response)| {
            let headers = response.headers();
            let protocol = headers
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_owned());
            let extensions = headers
                .get_all("Sec-WebSocket-Extensions")
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            Handshake {
                ws,
                protocol,
                extensions,
            }
        }),
        Err(_) => Err(WsError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
        ))),
    }
}

/// The socket under the WebSocket: TCP to the request's host and port
/// (Nagle off: lines go out as typed), with TLS for `wss://`. What
/// tokio-tungstenite's `connect_async` does, done here so that the shim can
/// sit above TLS and below tungstenite.
async fn open(request: &Request, tls: &Tls) -> Result<MaybeTlsStream<TcpStream>, WsError> {
    let uri = request.uri();
    let secure = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err(WsError::Url(UrlError::UnsupportedUrlScheme)),
    };
    let host = uri
        .host()
        .ok_or(WsError::Url(UrlError::NoHostName))?
        // An IPv6 literal comes bracketed.
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    if !secure {
        return Ok(MaybeTlsStream::Plain(tcp));
    }
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| WsError::Tls(TlsError::InvalidDnsName))?;
    let tls = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await?;
    Ok(MaybeTlsStream::Rustls(tls))
}

/// One line for a failed attempt: the OS error, or the HTTP status and the
/// text of the body when the server refused the upgrade.
fn describe(e: WsError) -> ConnectError {
    ConnectError(match e {
        WsError::Io(e) => e.to_string(),
        WsError::Http(response) => {
            let status = response.status();
            let mut line = format!(
                "server refused the upgrade: HTTP {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )
            .trim_end()
            .to_owned();
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let body = body.trim();
            if !body.is_empty() {
                let body: String = body.chars().take(300).collect();
                line.push_str(": ");
                line.push_str(&sanitize(&body));
            }
            line
        }
        WsError::Tls(e) => format!("TLS error: {e}"),
        WsError::Url(e) => format!("bad URL: {e}"),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::http::Response;

    #[test]
    fn refused_upgrade_shows_status_and_body() {
        let resp = Response::builder()
            .status(400)
            .body(Some(b"invalid name: the name is empty\n".to_vec()))
            .unwrap();
        assert_eq!(
            describe(WsError::Http(resp)).to_string(),
            "server refused the upgrade: HTTP 400 Bad Request: invalid name: the name is empty"
        );
        let resp = Response::builder().status(503).body(None).unwrap();
        assert_eq!(
            describe(WsError::Http(resp)).to_string(),
            "server refused the upgrade: HTTP 503 Service Unavailable"
        );
    }

    #[test]
    fn io_errors_read_as_the_os_says() {
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(describe(WsError::Io(e)).to_string().contains("refused"));
    }

    #[test]
    fn tls_connector_builds() {
        assert!(tls_connector(None).is_ok());
    }
}
