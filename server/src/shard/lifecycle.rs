//! A connection's life on its shard: serving HTTP on an accepted socket,
//! adopting it once it upgrades (its id, name, welcome and first channel),
//! and forgetting it when it ends, with every count given back.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;

use super::{Shard, NEXT_CONN_ID};
use crate::conn::{self, Conn, Subscriptions, V2State};
use crate::fanout::{ConnId, Format, Placement};
use crate::http::{self, Upgraded};

impl Shard {
    /// Serves HTTP on a connection the acceptor handed over, and adopts it
    /// if it upgrades.
    pub(super) fn accept(
        self: &Rc<Self>,
        stream: std::net::TcpStream,
        peer: std::net::SocketAddr,
        placement: Placement,
    ) {
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(cause = %e, "cannot register accepted connection");
                return;
            }
        };
        let shard = self.clone();
        tokio::task::spawn_local(async move {
            if let Some(upgraded) = http::serve(shard.http.clone(), stream, peer).await {
                shard.adopt(upgraded, placement).await;
            }
        });
    }

    /// Takes over a connection that completed the WebSocket upgrade, with
    /// its admission ticket (given back when the connection is dropped) and
    /// its place in this shard's load (given back when its task ends).
    pub(super) async fn adopt(self: &Rc<Self>, upgraded: Upgraded, placement: Placement) {
        let Upgraded {
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
        } = upgraded;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(cause = %e, "set_nodelay failed");
        }
        // Keep a backlog in the outbox (measured, bounded, seen by the
        // audience gate) instead of megabytes of kernel send buffer.
        if let Err(e) =
            socket2::SockRef::from(&stream).set_tcp_notsent_lowat(crate::flow::NOTSENT_LOWAT)
        {
            tracing::debug!(cause = %e, "TCP_NOTSENT_LOWAT failed");
        }
        let (reader, writer) = stream.into_split();
        let id = ConnId(NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed));
        // The low bits: the counter, without the cluster prefix (see `shard`).
        // Guests' names are unique by the id and kept by nobody (`names`).
        let name = match name {
            Some(wanted) => self.hub.names.claim(&wanted),
            None => protocol::v1::guest_name(id.0 & 0xFFFF_FFFF),
        };
        let mut conn = Conn::new(id, format, name, (writer, tls), self.ctx.clone(), ticket);
        if format == Format::V2 {
            conn.v2 = Some(Box::new(V2State::new(grant)));
        }
        conn.deflate = deflate;
        let conn = Rc::new(conn);
        self.ctx.audience.joined();
        let stats = &self.hub.stats;
        if let Some(deflate) = deflate {
            stats.deflate.count(format, deflate, true);
        }
        stats.connections_total.fetch_add(1, Ordering::Relaxed);
        self.membership.add(&conn);
        let time = crate::frame::unix_millis();
        match format {
            // A v2 client subscribes with commands.
            Format::V2 => {
                stats.v2_connections.fetch_add(1, Ordering::Relaxed);
                conn.send_event(&protocol::v2::Event::Welcome {
                    client: id.0,
                    name: conn.name.to_string(),
                    time,
                });
            }
            Format::V1 => {
                stats.v1_connections.fetch_add(1, Ordering::Relaxed);
                let ready = conn.follow(&channel, &start).await;
                let joined = conn.join_at(&channel, start, ready);
                let welcome = protocol::v1::ServerEvent::Welcome {
                    id: id.0,
                    name: conn.name.to_string(),
                    online: self.membership.online(&joined.channel),
                    time,
                    recovered: joined.outcome.map(|o| o.is_ok()),
                    reason: joined.outcome.and_then(Result::err),
                    position: joined.position,
                };
                conn.send_own(crate::frame::frame_text(welcome.encode().as_bytes()));
                conn.send_replay(joined.replay);
            }
            Format::Raw => {
                // A plain client cannot be told the outcome: it gets what
                // is kept.
                let ready = conn.follow(&channel, &start).await;
                let joined = conn.join_at(&channel, start, ready);
                conn.send_replay(joined.replay);
            }
        }
        tracing::trace!(conn = id.0, shard = self.index, "connected");
        if self.is_draining() {
            self.close_for_shutdown(&conn);
        }
        // An empty slice may still hold hyper's whole read buffer alive.
        let prefix = (!prefix.is_empty()).then(|| Box::new(prefix));
        let shard = self.clone();
        // No wrapper future: one would keep its own copy of everything it
        // moves into `serve`, and the task's allocation takes the next size
        // class (see `conn::serve`).
        tokio::task::spawn_local(conn::serve(conn, reader, prefix, move |conn| {
            shard.unregister(conn);
            drop(placement);
        }));
    }

    /// Forgets a connection whose task is ending.
    pub(crate) fn unregister(&self, conn: &Conn) {
        self.membership.remove(conn);
        conn.leave_audience();
        self.ctx.audience.left();
        let stats = &self.hub.stats;
        match conn.format {
            Format::V1 => stats.v1_connections.fetch_sub(1, Ordering::Relaxed),
            Format::V2 => stats.v2_connections.fetch_sub(1, Ordering::Relaxed),
            Format::Raw => 0,
        };
        if let Some(deflate) = conn.deflate {
            stats.deflate.count(conn.format, deflate, false);
        }
        self.hub.names.release(&conn.name);
        tracing::trace!(conn = conn.id.0, "disconnected");
        self.departed.notify_waiters();
    }
}
