//! The HTTP API for backends, served under `/api/` when `--api-key` is set
//! (404 otherwise): publish to channels, list channels, and see who is in
//! one. Every answer is JSON; an error is `{"error": "..."}` with a 4xx.
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /api/publish` `{"channel": C, "text": T}` (or `"data"`: base64; or `"channels": [...]`; optional `"name"`) | `{"subscribers": N, "channels": [{"channel": C, "subscribers": n}]}` |
//! | `GET /api/channels` | `{"channels": [{"channel": C, "subscribers": n}]}` |
//! | `GET /api/channels/NAME` | `{"channel": C, "subscribers": n, "members": [{"id", "name"}]}` |
//! | `GET /api/history?channel=C&since=OFFSET&limit=N` (`since` default 0, `limit` default and most 1000) | `{"channel": C, "epoch": E, "offset": last, "messages": [{"offset", "from", "name", "time", "text" or "data"}]}`; 404 with history off |
//!
//! A published message takes the path of a client's message: framed once,
//! through the fan-out credit (the request waits while the shards are
//! behind), to the local members of each channel and, with `--redis`, to
//! the other nodes. Its sender id is 0 (no client), so every member gets it.

use std::sync::atomic::Ordering;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::channels::Channels;
use crate::config::Config;
use crate::fanout::{Broadcast, ConnId, Fanout};
use crate::publish::Publisher;
use crate::stats::Stats;

/// What the API needs: the settings, the counters, the channel table, the
/// shards (to ask for members) and the shard's publisher.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ApiCtx<'a> {
    pub(crate) config: &'a Config,
    pub(crate) stats: &'a Stats,
    pub(crate) channels: &'a Channels,
    pub(crate) fanout: &'a Fanout,
    pub(crate) publisher: &'a Publisher,
}

/// Where the API lives.
pub(crate) const PREFIX: &str = "/api/";
/// Most channels one publish request may name.
pub(crate) const MAX_BATCH: usize = 100;
/// The display name of API messages that give none.
const DEFAULT_NAME: &str = "api";
/// Room in a request body besides the payload (JSON keys, channel names;
/// base64 makes binary payloads 4/3 larger).
const BODY_OVERHEAD: usize = 64 * 1024;

type Body = Full<Bytes>;

/// An API failure: its status and reason.
#[derive(Debug)]
struct Failure(StatusCode, String);

impl Failure {
    fn bad(reason: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, reason.into())
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    let text = serde_json::to_vec(body).unwrap_or_default();
    let mut res = Response::new(Full::new(Bytes::from(text)));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

impl From<Failure> for Response<Body> {
    fn from(Failure(status, reason): Failure) -> Self {
        let mut res = json(status, &ErrorBody { error: &reason });
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

/// Answers a request whose path starts with [`PREFIX`].
pub(crate) async fn handle(ctx: ApiCtx<'_>, req: Request<Incoming>) -> Response<Body> {
    let stats = ctx.stats;
    if ctx.config.api_key.is_none() {
        return Failure(
            StatusCode::NOT_FOUND,
            "the HTTP API is off (--api-key)".into(),
        )
        .into();
    }
    let answer = route(ctx, req).await;
    stats.api_requests.fetch_add(1, Ordering::Relaxed);
    answer.unwrap_or_else(|failure| {
        stats.api_errors.fetch_add(1, Ordering::Relaxed);
        failure.into()
    })
}

async fn route(ctx: ApiCtx<'_>, req: Request<Incoming>) -> Result<Response<Body>, Failure> {
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !crate::access::api_key_ok(ctx.config, authorization) {
        return Err(Failure(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API key (Authorization: Bearer KEY)".into(),
        ));
    }
    let path = req.uri().path().to_owned();
    let rest = &path[PREFIX.len()..];
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match rest {
        "publish" if req.method() == Method::POST => publish(ctx, req).await,
        "channels" if get => Ok(json(StatusCode::OK, &list(ctx))),
        "history" if get => history(ctx, req.uri().query()).await,
        "publish" | "channels" | "history" => Err(method_not_allowed()),
        _ => match rest.strip_prefix("channels/") {
            Some(name) if get => channel(ctx, name).await,
            Some(_) => Err(method_not_allowed()),
            None => Err(Failure(StatusCode::NOT_FOUND, format!("no API at {path}"))),
        },
    }
}

fn method_not_allowed() -> Failure {
    Failure(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed: POST /api/publish, GET /api/channels[/NAME], GET /api/history".into(),
    )
}

/// One channel's count, as lists show it.
#[derive(Serialize)]
struct Count<'a> {
    channel: &'a str,
    subscribers: usize,
}

#[derive(Serialize)]
struct ChannelList<'a> {
    channels: Vec<Count<'a>>,
}

fn list(ctx: ApiCtx<'_>) -> serde_json::Value {
    // This node's channels, plus (`--redis`) those with members elsewhere.
    let mut counts = ctx.channels.remote.channels();
    for c in ctx.channels.list() {
        *counts.entry(c.name.to_string()).or_insert(0) += c.members();
    }
    let body = ChannelList {
        channels: counts
            .iter()
            .map(|(name, &subscribers)| Count {
                channel: name,
                subscribers,
            })
            .collect(),
    };
    serde_json::to_value(body).unwrap_or_default()
}

#[derive(Serialize)]
struct ChannelInfo<'a> {
    channel: &'a str,
    subscribers: usize,
    /// The named members (`broadcast.v1` and `broadcast.v2` clients), by id.
    members: Vec<protocol::v1::Peer>,
}

async fn channel(ctx: ApiCtx<'_>, name: &str) -> Result<Response<Body>, Failure> {
    protocol::channel::validate(name).map_err(|e| Failure::bad(e.to_string()))?;
    // Every named member (no cap: a backend asked), on every node.
    let (local, roster) = match ctx.channels.get(name) {
        Some(channel) => {
            let shards = ctx.fanout.shards();
            let roster = crate::roster::gather(&shards, channel.id, usize::MAX).await;
            (channel.members(), roster)
        }
        None => (0, crate::roster::Roster::default()),
    };
    let remote = &ctx.channels.remote;
    let roster = crate::roster::with_remote(roster, remote.named(name), usize::MAX);
    let info = ChannelInfo {
        channel: name,
        subscribers: local + remote.count(name),
        members: roster.members,
    };
    Ok(json(StatusCode::OK, &info))
}

/// Most messages one `GET /api/history` lists (and its default).
const MAX_HISTORY_LIMIT: usize = 1000;

#[derive(Serialize)]
struct HistoryPage<'a> {
    channel: &'a str,
    epoch: &'a str,
    /// The channel's last offset.
    offset: u64,
    messages: Vec<HistoryMessage>,
}

#[derive(Serialize)]
struct HistoryMessage {
    offset: u64,
    from: u64,
    name: String,
    time: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    /// Base64 of a binary message.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
}

/// `GET /api/history?channel=NAME&since=OFFSET&limit=N`.
async fn history(ctx: ApiCtx<'_>, query: Option<&str>) -> Result<Response<Body>, Failure> {
    let Some(history) = ctx.channels.history() else {
        return Err(Failure(
            StatusCode::NOT_FOUND,
            "history is off (--history-size 0)".into(),
        ));
    };
    let param = |key: &str| -> Result<Option<String>, Failure> {
        match query.and_then(|q| protocol::v1::query_param(q, key)) {
            None => Ok(None),
            Some(Some(v)) => Ok(Some(v)),
            Some(None) => Err(Failure::bad(format!("{key}: bad percent-encoding"))),
        }
    };
    let name = param("channel")?.ok_or_else(|| Failure::bad("give ?channel=NAME"))?;
    protocol::channel::validate(&name).map_err(|e| Failure::bad(e.to_string()))?;
    let number = |key: &str, default: u64| -> Result<u64, Failure> {
        param(key)?.map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| Failure::bad(format!("{key} is a whole number")))
        })
    };
    let since = number("since", 0)?;
    let limit = usize::try_from(number("limit", MAX_HISTORY_LIMIT as u64)?).unwrap_or(usize::MAX);
    if limit == 0 || limit > MAX_HISTORY_LIMIT {
        return Err(Failure::bad(format!(
            "limit is from 1 to {MAX_HISTORY_LIMIT}"
        )));
    }
    let (offset, epoch, kept) = match ctx.publisher.relay() {
        // In a cluster, what every node agrees on: Redis's.
        Some(relay) => {
            let (epoch, last, older) = relay.read_page(&name, since).await.ok_or_else(|| {
                Failure(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the cluster's Redis cannot be reached to read the history".into(),
                )
            })?;
            let kept = older
                .into_iter()
                .filter(|o| o.offset > since)
                .take(limit)
                .map(|o| crate::history::Kept {
                    offset: o.offset,
                    from: o.from,
                    name: o.name.into(),
                    time: o.time,
                    raw: o.raw,
                })
                .collect();
            (last, epoch, kept)
        }
        None => {
            let log = history.log(&name);
            let locked = history.lock(&log);
            (
                locked.last(),
                locked.epoch().to_owned(),
                locked.list(since, limit),
            )
        }
    };
    let messages = kept
        .into_iter()
        .map(|k| {
            let payload = &k.raw[crate::frame::server_header_len(&k.raw)..];
            let text = k.raw[0] & 0x0f == protocol::frame::OpCode::Text as u8;
            HistoryMessage {
                offset: k.offset,
                from: k.from,
                name: k.name,
                time: k.time,
                text: text.then(|| String::from_utf8_lossy(payload).into_owned()),
                data: (!text).then(|| base64::engine::general_purpose::STANDARD.encode(payload)),
            }
        })
        .collect();
    let page = HistoryPage {
        channel: &name,
        epoch: &epoch,
        offset,
        messages,
    };
    Ok(json(StatusCode::OK, &page))
}

/// The body of `POST /api/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    channel: Option<String>,
    channels: Option<Vec<String>>,
    text: Option<String>,
    /// Base64 (standard alphabet, padded) of a binary message.
    data: Option<String>,
    /// The display name `broadcast.v1` clients see (default `api`).
    name: Option<String>,
}

#[derive(Serialize)]
struct Published<'a> {
    subscribers: usize,
    channels: Vec<Count<'a>>,
}

/// Reads the body, at most `limit` bytes.
async fn body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Failure> {
    let too_large = || {
        Failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request is larger than --max-message-size allows".into(),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(Failure::bad(format!("cannot read the body: {e}"))),
    }
}

async fn publish(ctx: ApiCtx<'_>, req: Request<Incoming>) -> Result<Response<Body>, Failure> {
    let max = ctx.config.max_message_size;
    let limit = max.saturating_mul(4) / 3 + BODY_OVERHEAD;
    let bytes = body(req, limit).await?;
    let request: PublishRequest = serde_json::from_slice(&bytes)
        .map_err(|e| Failure::bad(format!("invalid JSON body: {e}")))?;
    let names = match (request.channel, request.channels) {
        (Some(one), None) => vec![one],
        (None, Some(many)) if !many.is_empty() && many.len() <= MAX_BATCH => many,
        (None, Some(_)) => {
            return Err(Failure::bad(format!(
                "\"channels\" must name 1 to {MAX_BATCH} channels"
            )))
        }
        _ => {
            return Err(Failure::bad(
                "give either \"channel\" or \"channels\", not both",
            ))
        }
    };
    for name in &names {
        protocol::channel::validate(name)
            .map_err(|e| Failure::bad(format!("channel {name:?}: {e}")))?;
    }
    let (opcode, payload) = match (request.text, request.data) {
        (Some(text), None) => (protocol::frame::OpCode::Text, text.into_bytes()),
        (None, Some(data)) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(data.as_bytes())
                .map_err(|e| Failure::bad(format!("\"data\" is not base64: {e}")))?;
            (protocol::frame::OpCode::Binary, decoded)
        }
        _ => return Err(Failure::bad("give either \"text\" or \"data\", not both")),
    };
    if payload.len() > max {
        return Err(Failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the message is {} bytes; --max-message-size is {max}",
                payload.len()
            ),
        ));
    }
    let name = match request.name {
        None => DEFAULT_NAME.to_owned(),
        Some(wanted) => protocol::v1::validate_name(&wanted)
            .map_err(|e| Failure::bad(format!("invalid name: {e}")))?,
    };
    let publisher = ctx.publisher;
    let raw = crate::frame::frame_message(opcode, &payload);
    let read_at = std::time::Instant::now();
    let time = crate::frame::unix_millis();
    let wanted = ctx.stats.wanted();
    let v1 = wanted
        .v1
        .then(|| crate::frame::v1_message(&raw, 0, &name, time, None));
    let mut counts = Vec::with_capacity(names.len());
    let mut costs = Vec::new();
    for channel_name in &names {
        let v2 = wanted
            .v2
            .then(|| crate::frame::v2_message(&raw, channel_name, 0, &name, time, None));
        let msg = |channel| Broadcast {
            raw: Some(raw.clone()),
            v1: v1.clone(),
            v2: v2.clone(),
            // No client sent it: nobody is skipped as its sender.
            sender: ConnId(0),
            channel,
            framed_at: read_at,
            cost: 0,
            offset: 0,
            deflated: None,
        };
        let len = raw.len() + v1.as_ref().map_or(0, Bytes::len) + v2.as_ref().map_or(0, Bytes::len);
        if publisher.history().is_some() {
            let channel = ctx.channels.get(channel_name);
            costs.clear();
            if let Some(channel) = &channel {
                // An estimate: the events are framed with their offset.
                publisher.reserve(channel, 2 * len + 256, &mut costs).await;
            }
            publisher.publish_logged(
                crate::publish::Logged {
                    raw: raw.clone(),
                    sender: ConnId(0),
                    from_name: &name,
                    channel_name,
                    channel: channel.as_deref(),
                    framed_at: read_at,
                    wanted,
                },
                &costs,
            );
            ctx.stats.api_messages.fetch_add(1, Ordering::Relaxed);
            counts.push(Count {
                channel: channel_name,
                subscribers: channel.map_or(0, |c| c.members()),
            });
            continue;
        }
        let subscribers = match ctx.channels.get(channel_name) {
            Some(channel) => {
                publisher.reserve(&channel, len, &mut costs).await;
                publisher.publish(msg(channel.id), &channel, &name, &costs);
                channel.members()
            }
            None => {
                publisher.relay_only(&msg(0), channel_name, &name);
                0
            }
        };
        ctx.stats.api_messages.fetch_add(1, Ordering::Relaxed);
        counts.push(Count {
            channel: channel_name,
            subscribers,
        });
    }
    let answer = Published {
        subscribers: counts.iter().map(|c| c.subscribers).sum(),
        channels: counts,
    };
    Ok(json(StatusCode::OK, &answer))
}
