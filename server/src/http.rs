//! The HTTP/1.1 side of a connection: routing, `/healthz`, `/metrics`, the
//! upgrade limits, and the WebSocket
//! upgrade (hyper + fastwebsockets' `upgrade`).
//!
//! After the upgrade the socket leaves hyper: it is downcast back to the
//! `TcpStream` (or the TLS stream, split into socket and rustls session),
//! keeping any bytes hyper read ahead, and adopted by the shard.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, SEC_WEBSOCKET_PROTOCOL, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::fanout::Format;
use crate::shard::Shard;

/// Whether the client offers `broadcast.v1` among its subprotocols.
fn offers_v1<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == protocol::v1::SUBPROTOCOL)
}

/// Longest a plain HTTP connection may live (the upgrade is bounded by the
/// handshake timeout; this bounds slow bodies and keep-alive sessions).
const HTTP_CONNECTION_LIMIT: Duration = Duration::from_secs(120);

/// Serves HTTP on an accepted connection until it closes or upgrades; with
/// `--tls-cert` the TLS handshake comes first (bounded by the handshake
/// timeout, like the HTTP request).
pub(crate) async fn serve(shard: Rc<Shard>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let Some(tls) = shard.config().tls.clone() else {
        return serve_http(shard, stream, peer).await;
    };
    let handshake_timeout = shard.config().handshake_timeout;
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
    match tokio::time::timeout(handshake_timeout, accept).await {
        Ok(Ok(stream)) => serve_http(shard, stream, peer).await,
        Ok(Err(e)) => {
            tracing::debug!(%peer, cause = %e, "TLS handshake failed");
            shard.stats().tls_failures.fetch_add(1, Ordering::Relaxed);
            shard.http_done();
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            shard.stats().tls_failures.fetch_add(1, Ordering::Relaxed);
            shard.http_done();
        }
    }
}

async fn serve_http<S>(shard: Rc<Shard>, stream: S, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let handshake_timeout = shard.config().handshake_timeout;
    let service_shard = shard.clone();
    let service = hyper::service::service_fn(move |req| {
        let shard = service_shard.clone();
        async move { Ok::<_, Infallible>(route(&shard, req, peer)) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    match tokio::time::timeout(HTTP_CONNECTION_LIMIT, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::trace!(%peer, cause = %e, "http connection ended"),
        Err(_) => tracing::debug!(%peer, "http connection hit its time limit"),
    }
    shard.http_done();
}

type Body = Full<Bytes>;

/// Where the Prometheus metrics are served.
const METRICS_PATH: &str = "/metrics";

fn unavailable(text: &'static str) -> Response<Body> {
    respond(
        StatusCode::SERVICE_UNAVAILABLE,
        "text/plain; charset=utf-8",
        text,
    )
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

fn route(shard: &Rc<Shard>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path();
    if path == protocol::WS_PATH {
        return upgrade(shard, req, peer);
    }
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    if path == protocol::HEALTH_PATH {
        if !get {
            return method_not_allowed();
        }
        let mut res = respond(
            StatusCode::OK,
            "application/json",
            shard.stats().health_json(shard.config().workers),
        );
        res.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return res;
    }
    // With --metrics-addr the metrics are served there only (404 here).
    if path == METRICS_PATH && shard.config().metrics_addr.is_none() {
        if !get {
            return method_not_allowed();
        }
        let mut res = respond(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            shard.metrics_text(),
        );
        res.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return res;
    }
    match crate::assets::lookup(path) {
        Some(_) if !get => method_not_allowed(),
        Some(asset) => {
            let mut res = respond(
                StatusCode::OK,
                asset.content_type,
                Bytes::from_static(asset.body),
            );
            res.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static(asset.cache_control));
            res
        }
        None => respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n",
        ),
    }
}

fn method_not_allowed() -> Response<Body> {
    respond(
        StatusCode::METHOD_NOT_ALLOWED,
        "text/plain; charset=utf-8",
        "method not allowed\n",
    )
}

fn upgrade(shard: &Rc<Shard>, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        let mut res = respond(
            StatusCode::UPGRADE_REQUIRED,
            "text/plain; charset=utf-8",
            "this endpoint speaks WebSocket: send an upgrade request\n",
        );
        res.headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        return res;
    }
    if req.method() != Method::GET {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "upgrade with GET\n",
        );
    }
    let headers = req.headers();
    let text = |name: hyper::header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if !crate::access::origin_allowed(
        &shard.config().allowed_origins,
        text(hyper::header::ORIGIN),
        text(hyper::header::HOST),
    ) {
        shard.stats().refused_origin.fetch_add(1, Ordering::Relaxed);
        return respond(
            StatusCode::FORBIDDEN,
            "text/plain; charset=utf-8",
            "origin not allowed\n",
        );
    }
    let query_token = req
        .uri()
        .query()
        .and_then(|q| protocol::v1::query_param(q, "token"))
        .flatten();
    if !crate::access::authorized(
        shard.config(),
        text(hyper::header::AUTHORIZATION),
        query_token.as_deref(),
    ) {
        shard.stats().refused_auth.fetch_add(1, Ordering::Relaxed);
        let mut res = respond(
            StatusCode::UNAUTHORIZED,
            "text/plain; charset=utf-8",
            "missing or wrong token\n",
        );
        res.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
        return res;
    }
    let wanted_name = match req
        .uri()
        .query()
        .and_then(|q| protocol::v1::query_param(q, protocol::v1::NAME_PARAM))
    {
        None => None,
        Some(raw) => match raw.as_deref().map(protocol::v1::validate_name) {
            Some(Ok(name)) => Some(name),
            Some(Err(e)) => {
                return respond(
                    StatusCode::BAD_REQUEST,
                    "text/plain; charset=utf-8",
                    format!("invalid name: {e}\n"),
                );
            }
            None => {
                return respond(
                    StatusCode::BAD_REQUEST,
                    "text/plain; charset=utf-8",
                    "invalid name: bad percent-encoding or not UTF-8\n",
                );
            }
        },
    };
    let format = if offers_v1(&req) {
        Format::V1
    } else {
        Format::Raw
    };
    let stats = shard.stats();
    if shard.is_draining() {
        stats.refused_draining.fetch_add(1, Ordering::Relaxed);
        return unavailable("server shutting down\n");
    }
    if !shard.admit_new_connection() {
        stats.refused_rate.fetch_add(1, Ordering::Relaxed);
        return unavailable("too many new connections, retry later\n");
    }
    if stats.connections.fetch_add(1, Ordering::Relaxed) >= shard.config().max_connections {
        stats.connections.fetch_sub(1, Ordering::Relaxed);
        stats.refused.fetch_add(1, Ordering::Relaxed);
        return unavailable("too many connections\n");
    }
    let Ok(ip) = shard.admit_ip(peer.ip().to_canonical()) else {
        stats.connections.fetch_sub(1, Ordering::Relaxed);
        stats.refused_per_ip.fetch_add(1, Ordering::Relaxed);
        let limit = shard.config().max_connections_per_ip;
        return respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            format!(
                "too many connections from your address: the limit is {limit} (--max-connections-per-ip)\n"
            ),
        );
    };
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(parts) => parts,
        Err(e) => {
            stats.connections.fetch_sub(1, Ordering::Relaxed);
            shard.release_ip(ip);
            return respond(
                StatusCode::BAD_REQUEST,
                "text/plain; charset=utf-8",
                format!("bad upgrade request: {e}\n"),
            );
        }
    };
    let shard = shard.clone();
    tokio::task::spawn_local(async move {
        let upgraded = match upgrade.await {
            Ok(ws) => ws.into_inner().into_inner(),
            Err(e) => {
                shard.stats().connections.fetch_sub(1, Ordering::Relaxed);
                shard.release_ip(ip);
                tracing::debug!(cause = %e, "upgrade failed");
                return;
            }
        };
        // The socket leaves hyper (and tokio-rustls): plain, or TLS with
        // its session, plus what hyper had already read past the request.
        let adopted = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => Ok((parts.io.into_inner(), None, parts.read_buf)),
            Err(upgraded) => upgraded
                .downcast::<TokioIo<tokio_rustls::server::TlsStream<TcpStream>>>()
                .map(|parts| {
                    let (tcp, session) = parts.io.into_inner().into_inner();
                    (tcp, Some(Box::new(session)), parts.read_buf)
                }),
        };
        match adopted {
            Ok((stream, tls, read_ahead)) => {
                shard.adopt(stream, tls, read_ahead, format, wanted_name, ip);
            }
            Err(_) => {
                shard.stats().connections.fetch_sub(1, Ordering::Relaxed);
                shard.release_ip(ip);
                tracing::error!("upgraded connection is neither TCP nor TLS over TCP");
            }
        }
    });
    let (mut parts, _empty) = response.into_parts();
    parts
        .headers
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if format == Format::V1 {
        parts.headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol::v1::SUBPROTOCOL),
        );
    }
    Response::from_parts(parts, Full::new(Bytes::new()))
}
