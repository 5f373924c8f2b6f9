//! Opening a connection: the WebSocket handshake (offering `broadcast.v1`,
//! or `broadcast.v2` then `broadcast.v1` with `--channel`), TLS for
//! `wss://`, and turning failures into one readable cause.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError, SubProtocolError};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::render::sanitize;

/// A client WebSocket.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

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
}

/// Why a connection attempt failed, in words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConnectError(String);

/// The connector every `wss://` connection of the console client uses
/// (see [`tls_client_config`]).
pub(crate) fn tls_connector(ca: Option<&Path>) -> Result<Connector, ConnectError> {
    tls_client_config(ca)
        .map(Connector::Rustls)
        .map_err(ConnectError)
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
/// connects again without offering any: raw mode.
pub(crate) async fn connect(
    url: &str,
    tls: &Connector,
    v2: bool,
) -> Result<Connected, ConnectError> {
    let offer = if v2 {
        OFFER_V2
    } else {
        protocol::v1::SUBPROTOCOL
    };
    match attempt(url, tls, Some(offer)).await {
        Ok((ws, answer)) => {
            let format = if answer.as_deref() == Some(protocol::v2::SUBPROTOCOL) {
                Format::V2
            } else {
                Format::V1
            };
            Ok(Connected { ws, format })
        }
        Err(WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(
            SubProtocolError::NoSubProtocol,
        ))) => match attempt(url, tls, None).await {
            Ok((ws, _)) => Ok(Connected {
                ws,
                format: Format::Raw,
            }),
            Err(e) => Err(describe(e)),
        },
        Err(e) => Err(describe(e)),
    }
}

/// What a client with channels offers: v2, and v1 for older servers.
const OFFER_V2: &str = "broadcast.v2, broadcast.v1";

/// One handshake offering `offer`; the subprotocol the server answered.
async fn attempt(
    url: &str,
    tls: &Connector,
    offer: Option<&'static str>,
) -> Result<(Ws, Option<String>), WsError> {
    let mut request = url.into_client_request()?;
    if let Some(offer) = offer {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(offer));
    }
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(tls.clone()));
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(result) => result.map(|(ws, response)| {
            let answer = response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_owned());
            (ws, answer)
        }),
        Err(_) => Err(WsError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
        ))),
    }
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
        assert!(matches!(tls_connector(None), Ok(Connector::Rustls(_))));
    }
}
