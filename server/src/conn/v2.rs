//! A `broadcast.v2` connection's commands (see `protocol::v2` for the
//! wire format): subscribe and unsubscribe through the shard's
//! `Membership`, publish through the same limits and fan-out credit as
//! any message, members (asked of every shard, see `roster`), ping. A bad
//! command gets an `error` event; only a frame
//! that is not JSON, a binary frame, or too many bad commands in a row
//! close the connection.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use protocol::v2::{self, Body, Command, ErrorCode, Event, Id};

use super::reader::{publish, rate_limit};
use super::{Conn, End, Start};
use crate::access::Grant;
use crate::frame::{frame_message, frame_text, server_header_len};
use crate::roster::{self, Roster};

/// What a v2 connection keeps besides a plain one's state (boxed: other
/// connections pay one pointer).
#[derive(Debug)]
pub(crate) struct V2State {
    /// What its credentials allow.
    pub(crate) grant: Grant,
    /// Commands refused in a row.
    bad: Cell<u32>,
}

impl V2State {
    pub(crate) fn new(grant: Grant) -> Self {
        Self {
            grant,
            bad: Cell::new(0),
        }
    }
}

impl Conn {
    /// Sends `event` to this v2 client alone.
    pub(crate) fn send_event(self: &Rc<Self>, event: &Event) {
        if let Event::Error { code, .. } = event {
            self.ctx.stats.v2_error(*code);
        }
        self.send_own(frame_text(event.encode().as_bytes()));
    }

    fn refuse(self: &Rc<Self>, id: Option<Id>, code: ErrorCode, text: impl Into<String>) {
        self.send_event(&Event::Error {
            id,
            code,
            text: text.into(),
        });
    }
}

/// Handles one message from a v2 client.
pub(super) async fn command(
    conn: &Rc<Conn>,
    raw: Bytes,
    read_at: Instant,
    costs: &mut Vec<u32>,
) -> Result<(), End> {
    let Some(state) = conn.v2.as_deref() else {
        return Ok(());
    };
    if raw[0] & 0x0f != protocol::frame::OpCode::Text as u8 {
        return Err(End::Violation(v2::CLOSE_BINARY_FRAME));
    }
    // Text frames are checked as UTF-8 when read.
    let text = std::str::from_utf8(&raw[server_header_len(&raw)..]).unwrap_or_default();
    let command = match Command::decode(text) {
        Ok(command) => {
            state.bad.set(0);
            command
        }
        Err(refusal) => {
            let code = refusal.code;
            let event = refusal.into_event();
            if code == ErrorCode::BadJson {
                // Ahead of the notice and the close, which drop queued data.
                conn.ctx.stats.v2_error(code);
                conn.send_notice(frame_text(event.encode().as_bytes()));
                return Err(End::Violation(v2::CLOSE_NOT_JSON));
            }
            conn.send_event(&event);
            state.bad.set(state.bad.get() + 1);
            if state.bad.get() >= v2::MAX_BAD_COMMANDS {
                return Err(End::Violation(v2::CLOSE_BAD_COMMANDS));
            }
            return Ok(());
        }
    };
    match command {
        Command::Subscribe {
            channel,
            id,
            since,
            rewind,
        } => {
            let start = match (since, rewind) {
                (Some(p), _) => Start::Since(p),
                (None, Some(n)) => Start::Rewind(n),
                (None, None) => Start::Live,
            };
            subscribe(conn, state, channel, id, start)
        }
        Command::Unsubscribe { channel, id } => match conn.ctx.membership.leave(conn, &channel) {
            Some(left) => conn.send_event(&Event::Unsubscribed {
                id,
                online: left.members() as u64,
                channel,
            }),
            None => conn.refuse(
                id,
                ErrorCode::NotSubscribed,
                format!("not subscribed to {channel:?}"),
            ),
        },
        Command::Publish { channel, id, body } => {
            return publish_command(conn, state, channel, id, body, read_at, costs).await;
        }
        Command::Members { channel, id } => members(conn, state, channel, id).await,
        Command::Ping { id } => conn.send_event(&Event::Pong { id }),
    }
    Ok(())
}

/// Answers `members`: who is in `channel` on this node, subscribed or not.
/// The reader waits for the shards' lists (at most `roster::WAIT`), so
/// the answer keeps its place among this connection's replies.
async fn members(conn: &Rc<Conn>, state: &V2State, channel: String, id: Option<Id>) {
    if !state.grant.allows(&channel) {
        return conn.refuse(
            id,
            ErrorCode::Forbidden,
            format!("your token does not allow channel {channel:?}"),
        );
    }
    let (online, roster) = match conn.ctx.membership.lookup(&channel) {
        None => (0, Roster::default()),
        Some(entry) => {
            let shards = conn.ctx.publisher.shards();
            let roster = roster::gather(&shards, entry.id, v2::MAX_MEMBERS_LISTED).await;
            // Counted after the lists came, so that it is not older than they are.
            (entry.members() as u64, roster)
        }
    };
    conn.send_event(&Event::Members {
        id,
        channel,
        online,
        members: roster.members,
        truncated: roster.truncated,
    });
}

fn subscribe(conn: &Rc<Conn>, state: &V2State, channel: String, id: Option<Id>, start: Start) {
    if !state.grant.allows(&channel) {
        return conn.refuse(
            id,
            ErrorCode::Forbidden,
            format!("your token does not allow channel {channel:?}"),
        );
    }
    if conn.subscription(&channel).is_some() {
        return conn.refuse(
            id,
            ErrorCode::AlreadySubscribed,
            format!("already subscribed to {channel:?}"),
        );
    }
    let limit = conn.ctx.config.max_channels_per_connection;
    if conn.subs.borrow().len() >= limit {
        return conn.refuse(
            id,
            ErrorCode::TooManyChannels,
            format!(
                "a connection may be in at most {limit} channels (--max-channels-per-connection)"
            ),
        );
    }
    let joined = conn.join_at(&channel, start);
    let (offset, epoch) = joined
        .position
        .map_or((None, None), |p| (Some(p.offset), Some(p.epoch)));
    conn.send_event(&Event::Subscribed {
        id,
        online: joined.channel.members() as u64,
        channel,
        offset,
        epoch,
        recovered: joined.outcome.map(|o| o.is_ok()),
        reason: joined.outcome.and_then(Result::err),
    });
    conn.send_replay(joined.replay);
}

async fn publish_command(
    conn: &Rc<Conn>,
    state: &V2State,
    channel: String,
    id: Option<Id>,
    body: Body,
    read_at: Instant,
    costs: &mut Vec<u32>,
) -> Result<(), End> {
    // Beyond its own channels, a client publishes only where a credential
    // it presented says it may.
    let may = conn.subscription(&channel).is_some()
        || (state.grant.is_explicit() && state.grant.allows(&channel));
    if !may {
        let code = if state.grant.allows(&channel) {
            ErrorCode::NotSubscribed
        } else {
            ErrorCode::Forbidden
        };
        conn.refuse(
            id,
            code,
            format!("publish to {channel:?}: subscribe to it first"),
        );
        return Ok(());
    }
    if !rate_limit(conn).await? {
        conn.refuse(
            id,
            ErrorCode::RateLimited,
            "over --max-message-rate: the message was dropped",
        );
        return Ok(());
    }
    let raw = match &body {
        Body::Text(text) => frame_message(protocol::frame::OpCode::Text, text.as_bytes()),
        Body::Data(data) => frame_message(protocol::frame::OpCode::Binary, data),
    };
    // The entry, if this node has members of the channel (this connection
    // among them when subscribed).
    let entry = conn
        .subs
        .borrow()
        .iter()
        .find(|s| *s.channel.name == *channel)
        .map(|s| s.channel.clone())
        .or_else(|| conn.ctx.membership.lookup(&channel));
    publish(conn, entry.as_ref(), &channel, raw, read_at, costs).await;
    if id.is_some() {
        conn.send_event(&Event::Published { id, channel });
    }
    Ok(())
}
