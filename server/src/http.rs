//! The HTTP/1.1 side of a connection: routing, `/healthz`, the `/livez` and
//! `/readyz` probes, `/metrics`, the page's assets, and the WebSocket upgrade (hyper + fastwebsockets'
//! `upgrade`), after [`Admission`] has let the client in.
//!
//! After the upgrade the socket leaves hyper: it is downcast back to the
//! `TcpStream` (or the TLS stream, split into socket and TLS session),
//! keeping any bytes hyper read ahead, and [`serve`] returns it as an
//! [`Upgraded`] to the shard, which owns what happens next. This module
//! knows nothing of shards.

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_TYPE, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_PROTOCOL,
    UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::access::Grant;
use crate::admission::{self, Admission, Refusal, Ticket};
use crate::channels::Channels;
use crate::config::Config;
use crate::conn::ConnCtx;
use crate::conn::Start;
use crate::fanout::{Fanout, Format};
use crate::stats::Stats;

/// What the HTTP layer needs: the settings, the counters, the admission
/// checks, the shards (for `/metrics`) and whether the shard is draining.
#[derive(Debug)]
pub(crate) struct HttpCtx {
    pub(crate) config: Arc<Config>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) admission: Arc<Admission>,
    pub(crate) fanout: Fanout,
    /// The channels with members on this node (for the API).
    pub(crate) channels: Arc<Channels>,
    /// The shard's connection context (its publisher knows if it drains).
    pub(crate) conn: Rc<ConnCtx>,
}

impl HttpCtx {
    /// Shutting down, or closing its clients in a paced drain: no new ones.
    fn is_draining(&self) -> bool {
        self.conn.publisher.is_draining() || self.admission.is_draining()
    }
}

/// A connection that completed the WebSocket upgrade, handed back to the
/// shard: the socket (and TLS session), the bytes hyper read past the
/// request, what the client asked for, and its admission ticket.
#[derive(Debug)]
pub(crate) struct Upgraded {
    pub(crate) stream: TcpStream,
    pub(crate) tls: Option<Box<crate::tls_session::TlsSession>>,
    pub(crate) prefix: Bytes,
    pub(crate) format: Format,
    /// The validated name the client asked for, if any.
    pub(crate) name: Option<String>,
    /// The channel its URL named (`protocol::channel::DEFAULT` if none).
    pub(crate) channel: String,
    /// Where a plain or v1 client starts in that channel's history
    /// (`?since=`, `?rewind=`).
    pub(crate) start: Start,
    /// What its credentials allow (v2 clients choose channels later).
    pub(crate) grant: Grant,
    pub(crate) ticket: Ticket,
    /// What it negotiated of permessage-deflate, if anything.
    pub(crate) deflate: Option<crate::deflate::Negotiated>,
}

/// An upgrade the service accepted, completed once hyper lets go of the
/// connection.
struct Pending {
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    format: Format,
    name: Option<String>,
    channel: String,
    start: Start,
    grant: Grant,
    ticket: Ticket,
    deflate: Option<crate::deflate::Negotiated>,
}

/// The format a client's `Sec-WebSocket-Protocol` offer chooses:
/// `broadcast.v2` if offered, else `broadcast.v1` if offered, else raw.
fn offered_format<B>(req: &Request<B>) -> Format {
    let offers = || {
        req.headers()
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
    };
    if offers().any(|p| p == protocol::v2::SUBPROTOCOL) {
        Format::V2
    } else if offers().any(|p| p == protocol::v1::SUBPROTOCOL) {
        Format::V1
    } else {
        Format::Raw
    }
}

/// Longest a plain HTTP connection may live (the upgrade is bounded by the
/// handshake timeout; this bounds slow bodies and keep-alive sessions).
const HTTP_CONNECTION_LIMIT: Duration = Duration::from_secs(120);

/// Serves HTTP on an accepted connection until it closes or upgrades; with
/// `--tls-cert` the TLS handshake comes first (bounded by the handshake
/// timeout, like the HTTP request). Returns the connection if it upgraded.
pub(crate) async fn serve(
    ctx: Rc<HttpCtx>,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<Upgraded> {
    let _ = stream.set_nodelay(true);
    let Some(tls) = ctx.config.tls.clone() else {
        return serve_http(ctx, stream, peer).await;
    };
    let handshake_timeout = ctx.config.handshake_timeout;
    let accept = crate::tls_stream::accept(stream, tls);
    match tokio::time::timeout(handshake_timeout, accept).await {
        Ok(Ok(stream)) => return serve_http(ctx, stream, peer).await,
        Ok(Err(e)) => tracing::debug!(%peer, cause = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
    ctx.stats.tls_failures.fetch_add(1, Ordering::Relaxed);
    None
}

async fn serve_http<S>(ctx: Rc<HttpCtx>, stream: S, peer: SocketAddr) -> Option<Upgraded>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let handshake_timeout = ctx.config.handshake_timeout;
    let pending: Rc<RefCell<Option<Pending>>> = Rc::default();
    let (service_ctx, slot) = (ctx.clone(), pending.clone());
    let service = hyper::service::service_fn(move |req| {
        let (ctx, slot) = (service_ctx.clone(), slot.clone());
        async move { Ok::<_, Infallible>(route(&ctx, &slot, req, peer).await) }
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
    let pending = pending.borrow_mut().take()?;
    complete_upgrade(pending).await
}

/// Takes the socket back from hyper: plain, or TLS with its session, plus what hyper had already read past the request.
async fn complete_upgrade(pending: Pending) -> Option<Upgraded> {
    let Pending {
        upgrade,
        format,
        name,
        channel,
        start,
        grant,
        ticket,
        deflate,
    } = pending;
    let upgraded = match upgrade.await {
        Ok(ws) => ws.into_inner().into_inner(),
        Err(e) => {
            tracing::debug!(cause = %e, "upgrade failed");
            return None;
        }
    };
    let adopted = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => Ok((parts.io.into_inner(), None, parts.read_buf)),
        Err(upgraded) => upgraded
            .downcast::<TokioIo<crate::tls_stream::TlsStream>>()
            .map(|parts| {
                let (tcp, session) = parts.io.into_inner().into_parts();
                (tcp, Some(session), parts.read_buf)
            }),
    };
    match adopted {
        Ok((stream, tls, prefix)) => Some(Upgraded {
            stream,
            tls,
            prefix,
            format,
            name,
            channel,
            start,
            grant,
            ticket,
            deflate,
        }),
        Err(_) => {
            tracing::error!("upgraded connection is neither TCP nor TLS over TCP");
            None
        }
    }
}

type Body = Full<Bytes>;

/// Where the Prometheus metrics are served.
const METRICS_PATH: &str = "/metrics";

/// Liveness probe: 200 while the process serves HTTP at all.
const LIVE_PATH: &str = "/livez";

/// Readiness probe: 200 while this node should be sent new clients, 503
/// with the reason otherwise (see [`not_ready`]).
const READY_PATH: &str = "/readyz";

/// Why this node should not be sent new clients now, if it should not:
/// it is shutting down, its `--redis` link is down (its clients would not
/// reach the other nodes'), or it is at `--max-connections`.
fn not_ready(ctx: &HttpCtx) -> Option<String> {
    let stats = &ctx.stats;
    if ctx.is_draining() {
        return Some("draining: the server is shutting down".into());
    }
    if stats.cluster.enabled.load(Ordering::Relaxed) && !stats.cluster.link_up() {
        return Some("cluster link down: Redis is unreachable".into());
    }
    let max = ctx.config.max_connections;
    if max != usize::MAX && stats.connections.load(Ordering::Relaxed) >= max {
        return Some(format!("full: at --max-connections ({max})"));
    }
    None
}

/// Like [`respond`], for a live view that must never be cached (health,
/// probes, metrics).
fn respond_fresh(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut res = respond(status, content_type, body);
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The answer to a probe: `status` with a small JSON document, never cached.
fn probe(status: StatusCode, json: String) -> Response<Body> {
    respond_fresh(status, "application/json", json)
}

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

async fn route(
    ctx: &HttpCtx,
    slot: &RefCell<Option<Pending>>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let path = req.uri().path();
    if let Some(channel) = protocol::channel::from_request(path, req.uri().query()) {
        return match channel {
            Ok(channel) => upgrade(ctx, slot, req, peer, channel),
            Err(e) => respond(
                StatusCode::BAD_REQUEST,
                "text/plain; charset=utf-8",
                format!("{e}\n"),
            ),
        };
    }
    if path.starts_with(crate::api::PREFIX) {
        let api = crate::api::ApiCtx {
            config: &ctx.config,
            stats: &ctx.stats,
            channels: &ctx.channels,
            fanout: &ctx.fanout,
            publisher: &ctx.conn.publisher,
        };
        return crate::api::handle(api, req).await;
    }
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    if path == LIVE_PATH || path == READY_PATH {
        if !get {
            return method_not_allowed();
        }
        if path == LIVE_PATH {
            return probe(StatusCode::OK, "{\"live\":true}".into());
        }
        return match not_ready(ctx) {
            None => probe(StatusCode::OK, "{\"ready\":true}".into()),
            Some(reason) => probe(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"ready": false, "reason": reason}).to_string(),
            ),
        };
    }
    if path == protocol::HEALTH_PATH {
        if !get {
            return method_not_allowed();
        }
        return probe(StatusCode::OK, ctx.stats.health_json(ctx.config.workers));
    }
    // With --metrics-addr the metrics are served there only (404 here).
    if path == METRICS_PATH && ctx.config.metrics_addr.is_none() {
        if !get {
            return method_not_allowed();
        }
        return respond_fresh(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            crate::metrics::render(&ctx.stats, &ctx.fanout.shards(), ctx.config.workers),
        );
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

/// The answer to a refused upgrade.
fn refused(refusal: Refusal) -> Response<Body> {
    let text = "text/plain; charset=utf-8";
    match refusal {
        Refusal::Origin => respond(StatusCode::FORBIDDEN, text, "origin not allowed\n"),
        Refusal::Unauthorized => {
            let mut res = respond(StatusCode::UNAUTHORIZED, text, "missing or wrong token\n");
            res.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            res
        }
        Refusal::Channel => respond(
            StatusCode::FORBIDDEN,
            text,
            "your token does not allow this channel\n",
        ),
        Refusal::Draining => unavailable("server shutting down\n"),
        Refusal::NewConnectionRate => unavailable("too many new connections, retry later\n"),
        Refusal::MaxConnections => unavailable("too many connections\n"),
        Refusal::PerIp(limit) => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            text,
            format!(
                "too many connections from your address: the limit is {limit} (--max-connections-per-ip)\n"
            ),
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

/// Where a plain or v1 client asks to start in its channel's history:
/// `?since=EPOCH:OFFSET` or `?rewind=N` (not both). A v2 client resumes
/// with its `subscribe` commands; the parameters are refused for it.
fn start_of(query: Option<&str>, format: Format) -> Result<Start, String> {
    use protocol::history::{parse_rewind, Position, REWIND_PARAM, SINCE_PARAM};
    let param = |key| {
        query
            .and_then(|q| protocol::v1::query_param(q, key))
            .map(|v| v.ok_or_else(|| format!("{key}: bad percent-encoding or not UTF-8")))
            .transpose()
    };
    let (since, rewind) = (param(SINCE_PARAM)?, param(REWIND_PARAM)?);
    if format == Format::V2 && (since.is_some() || rewind.is_some()) {
        return Err("a broadcast.v2 client resumes with subscribe's \"since\", not the URL".into());
    }
    match (since, rewind) {
        (Some(_), Some(_)) => Err("give since or rewind, not both".into()),
        (Some(since), None) => Position::parse(&since).map(Start::Since),
        (None, Some(n)) => parse_rewind(&n).map(Start::Rewind),
        (None, None) => Ok(Start::Live),
    }
}

fn upgrade(
    ctx: &HttpCtx,
    slot: &RefCell<Option<Pending>>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    channel: String,
) -> Response<Body> {
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
    let query_token = req
        .uri()
        .query()
        .and_then(|q| protocol::v1::query_param(q, "token"))
        .flatten();
    let format = offered_format(&req);
    let request = admission::Request {
        peer: peer.ip().to_canonical(),
        origin: text(hyper::header::ORIGIN),
        host: text(hyper::header::HOST),
        authorization: text(hyper::header::AUTHORIZATION),
        query_token: query_token.as_deref(),
        // A v2 client's channels are checked as it subscribes.
        channel: (format != Format::V2).then_some(channel.as_str()),
        draining: ctx.is_draining(),
    };
    let grant = match ctx.admission.authorize(&request) {
        Ok(grant) => grant,
        Err(refusal) => return refused(refusal),
    };
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
    let start = match start_of(req.uri().query(), format) {
        Ok(start) => start,
        Err(e) => {
            return respond(
                StatusCode::BAD_REQUEST,
                "text/plain; charset=utf-8",
                format!("{e}\n"),
            );
        }
    };
    let ticket = match ctx.admission.admit(&request) {
        Ok(ticket) => ticket,
        Err(refusal) => return refused(refusal),
    };
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(parts) => parts,
        Err(e) => {
            return respond(
                StatusCode::BAD_REQUEST,
                "text/plain; charset=utf-8",
                format!("bad upgrade request: {e}\n"),
            );
        }
    };
    let deflate = match ctx.config.compression {
        crate::deflate::CompressionMode::Off => None,
        crate::deflate::CompressionMode::On => crate::deflate::negotiate(
            req.headers()
                .get_all(SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        ),
    };
    let (deflate, extensions) = deflate.unzip();
    // Completed by `serve_http` once hyper has written the 101 and lets go.
    *slot.borrow_mut() = Some(Pending {
        upgrade,
        format,
        name: wanted_name,
        channel,
        start,
        grant,
        ticket,
        deflate,
    });
    let (mut parts, _empty) = response.into_parts();
    parts
        .headers
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(value) = extensions.and_then(|v| HeaderValue::try_from(v).ok()) {
        parts.headers.insert(SEC_WEBSOCKET_EXTENSIONS, value);
    }
    let subprotocol = match format {
        Format::V1 => Some(protocol::v1::SUBPROTOCOL),
        Format::V2 => Some(protocol::v2::SUBPROTOCOL),
        Format::Raw => None,
    };
    if let Some(name) = subprotocol {
        parts
            .headers
            .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(name));
    }
    Response::from_parts(parts, Full::new(Bytes::new()))
}
