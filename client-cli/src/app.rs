//! The client's life: connect, run a session, and after an unexpected end
//! reconnect with backoff until the user leaves. With `--channel` a session
//! speaks `broadcast.v2` (subscribing to every joined channel again on each
//! connection), or falls back to the first channel's URL with `broadcast.v1`
//! or raw mode when the server does not offer v2.
//!
//! Resuming: the client remembers the last position (offset, epoch) it
//! received in each channel, and a new connection asks for what came after
//! it (`since` in each v2 `subscribe`, `?since=` on a v1 URL). The server
//! replays the missed messages first; the client prints one line per channel
//! once the replay ends (`resumed: 12 missed messages delivered`), or at
//! once when history could not cover the outage (`history expired: ...`).
//! Nothing is printed when nothing was missed: the reconnect's own lines
//! already say it is back.
//!
//! Why one file of this size: it is the client's event loop, and its parts
//! (connecting, reconnecting, v1/v2 events, slash commands, pipe mode's
//! ending) share one set of state; split by job, each piece would take most
//! of that state as arguments. Rendering, input, channels and sending already
//! have files of their own.

use std::future::pending;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::SplitStream;
use futures_util::StreamExt as _;
use protocol::v1::{Peer, ServerEvent};
use protocol::v2::{Command, Event, Id};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use protocol::backoff::{is_planned_close, Backoff};
use protocol::history::{Cursor, Position, Resumed};

use crate::channels::{Answer, Channels, Sent};
use crate::conn::{connect, Connected, Format, Tls, Ws};
use crate::deflate::Incoming as Inflating;
use crate::input::{self, Input};
use crate::output::Out;
use crate::render::{self, BodyView};
use crate::send::{Line, Outgoing, Step};
use crate::slash::{self, Slash};
use crate::target::Target;

/// The id of the `broadcast.v2` `ping` sent at the end of piped input (the
/// subscribes use ids from 1 up: this one cannot be theirs).
const LAST_PING: u64 = u64::MAX;
/// How long leaving waits for the server's close reply.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// At the end of piped input, how long to wait for the server's close reply
/// while the server reads nothing of ours. It reads in order, and answers the
/// ping slipped in after every 100 lines (see `send`), so even a server that
/// reads slowly (flow control, a rate limit's throttle) shows progress well
/// within this; one that reads nothing for a minute is stuck.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection that lasted this long resets the backoff; shorter ones keep
/// counting, so a server that accepts and at once closes is not hammered.
const STABLE: Duration = Duration::from_secs(10);
/// The reconnection schedule (see `protocol::backoff`): the first retry
/// waits up to half a second, the ceiling doubles up to 30 s.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// How many earlier connection ids a replay recognises as ours.
const PAST_IDS: usize = 16;

/// What `run` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) target: Target,
    /// Prompt and line editor (stdin and stdout are terminals).
    pub(crate) interactive: bool,
    /// Do not read stdin at all.
    pub(crate) listen: bool,
    pub(crate) reconnect: bool,
    /// Offer permessage-deflate (not `--no-compression`).
    pub(crate) compression: bool,
    /// `--channel` names (valid, distinct, in order): speak `broadcast.v2`.
    pub(crate) channels: Vec<String>,
}

/// How a session ended.
enum End {
    /// The user left (Ctrl+C, Ctrl+D, end of stdin, SIGINT/SIGTERM/SIGHUP).
    Quit,
    /// The server closed or the connection broke: what to tell the user.
    Dropped(String),
    /// Pipe mode: stdin has ended but the server did not answer our close,
    /// so lines may be lost: why.
    Unconfirmed(String),
    /// Without a terminal, the server refused to let us join a channel
    /// asked for: why (the client stops rather than run without it).
    Refused(String),
}

/// The reading half of a connection, compressed messages inflated.
type Incoming = Inflating<SplitStream<Ws>>;

/// SIGINT, SIGTERM and SIGHUP: each means "leave cleanly".
struct Signals(Vec<Signal>);

impl Signals {
    fn new() -> Self {
        let kinds = [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::hangup(),
        ];
        Self(kinds.into_iter().filter_map(|k| signal(k).ok()).collect())
    }

    async fn recv(&mut self) {
        if self.0.is_empty() {
            return pending().await;
        }
        let waits = self.0.iter_mut().map(|s| Box::pin(s.recv()));
        let _ = futures_util::future::select_all(waits).await;
    }
}

struct Client {
    opts: Options,
    out: Out,
    tls: Tls,
    /// Where to connect: the URL, or with `--channel` the first channel's
    /// (which a server without `broadcast.v2` puts us in).
    connect_to: Target,
    signals: Signals,
    /// Lines from the user, once the reader runs (never in `--listen` mode).
    input: Option<mpsc::Receiver<Input>>,
    input_started: bool,
    /// The line editor may be reading the terminal (in raw mode).
    editor_running: bool,
    prompt: Arc<Mutex<String>>,
    backoff: Backoff,
    /// The last connection ended with a planned-restart close (1001, 1012).
    restart_expected: bool,
    /// This connection's id, from the welcome.
    my_id: Option<u64>,
    /// The ids of earlier connections (the last few): a replay skips what
    /// we sent ourselves.
    past_ids: Vec<u64>,
    /// A `broadcast.v1` session's place in its channel's history.
    v1_cursor: Cursor,
    /// This connection's URL asked to resume (`?since=`).
    v1_resume: bool,
    /// The name the server gave us (for the prompt).
    my_name: Option<String>,
    /// What the current (or last) connection speaks.
    format: Format,
    /// The answer to the `ping` sent at the end of piped input came.
    last_pong: bool,
    /// Lines may go out on this connection: on a `broadcast.v2` one, only
    /// after its welcome (which queues the subscribes ahead of them).
    welcomed: bool,
    /// The joined channels (`broadcast.v2`).
    channels: Channels,
    /// A line read from the user that no connection has taken yet (it goes
    /// out on the next one after a drop).
    pending: Option<Line>,
    /// Pipe mode: lines sent on the last connection, and how many of them
    /// the server did not confirm.
    last_session: (u64, u64),
    /// Pipe mode: lines sent that the server never confirmed, over all
    /// connections (they may have been lost).
    unconfirmed: u64,
    /// Pipe mode: lines the server read but refused (v2 `error` events for
    /// publishes, e.g. over its rate limit): not delivered.
    refused: u64,
}

/// Runs the client; returns the process exit code.
pub(crate) async fn run(opts: Options, out: Out, tls: Tls) -> ExitCode {
    let connect_to = match opts.channels.first() {
        Some(first) => opts.target.in_channel(first),
        None => opts.target.clone(),
    };
    let channels = Channels::new(&opts.channels);
    let mut client = Client {
        opts,
        out,
        tls,
        connect_to,
        signals: Signals::new(),
        input: None,
        input_started: false,
        editor_running: false,
        prompt: Arc::new(Mutex::new("> ".to_owned())),
        backoff: Backoff::new(BACKOFF_FIRST, BACKOFF_CAP),
        restart_expected: false,
        my_id: None,
        past_ids: Vec::new(),
        v1_cursor: Cursor::default(),
        v1_resume: false,
        my_name: None,
        format: Format::Raw,
        welcomed: false,
        last_pong: false,
        channels,
        pending: None,
        last_session: (0, 0),
        unconfirmed: 0,
        refused: 0,
    };
    client.main_loop().await
}

impl Client {
    async fn main_loop(&mut self) -> ExitCode {
        // The first attempt: failing it ends the client (the URL is likely
        // wrong or the server not started; looping would hide that).
        let first = tokio::select! {
            r = connect(&self.connect_to.request, &self.tls, self.offer_v2(), self.opts.compression) => r,
            () = self.signals.recv() => return self.exit(ExitCode::SUCCESS, None),
        };
        let mut conn = match first {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot connect to {}: {e}", self.connect_to.display);
                return self.exit(ExitCode::from(1), Some(&msg));
            }
        };
        let mut again = false;
        loop {
            let started = Instant::now();
            let end = self.session(conn, again).await;
            if started.elapsed() >= STABLE {
                self.backoff.reset();
            }
            if std::mem::take(&mut self.restart_expected) {
                // 1001/1012: the server is expected back soon.
                self.backoff.expect_return();
            }
            let loss = self.count_loss();
            match end {
                End::Quit => return self.leave(),
                End::Unconfirmed(why) | End::Refused(why) => {
                    self.out.error(&why);
                    return self.exit(ExitCode::from(1), loss.as_deref());
                }
                End::Dropped(why) => {
                    if !self.opts.reconnect {
                        return match loss {
                            None => self.exit(ExitCode::from(1), Some(&why)),
                            Some(loss) => {
                                self.out.error(&why);
                                self.exit(ExitCode::from(1), Some(&loss))
                            }
                        };
                    }
                    self.out.status(&why);
                    if let Some(loss) = loss {
                        self.out.error(&loss);
                    }
                }
            }
            match self.reconnect().await {
                Some(c) => conn = c,
                None => return self.leave(),
            }
            again = true;
        }
    }

    /// Adds the last connection's unconfirmed lines to the total; the line
    /// that says so, if there were any.
    fn count_loss(&mut self) -> Option<String> {
        let (sent, unconfirmed) = std::mem::take(&mut self.last_session);
        if unconfirmed == 0 {
            return None;
        }
        self.unconfirmed += unconfirmed;
        Some(format!(
            "{unconfirmed} of the {sent} lines sent on this connection may not have been delivered (the server did not confirm reading them)"
        ))
    }

    /// The user left or the input ended: 0, unless lines may have been lost
    /// on a connection that dropped, or the server refused some.
    fn leave(&self) -> ExitCode {
        let mut lost = Vec::new();
        if self.unconfirmed > 0 {
            let n = self.unconfirmed;
            lost.push(format!("{n} lines sent may not have been delivered"));
        }
        if self.refused > 0 {
            let n = self.refused;
            lost.push(format!("{n} lines sent were refused by the server"));
        }
        if lost.is_empty() {
            return self.exit(ExitCode::SUCCESS, None);
        }
        let line = format!("exit status 1: {}", lost.join("; "));
        self.exit(ExitCode::from(1), Some(&line))
    }

    /// Connections offer `broadcast.v2` (`--channel`).
    fn offer_v2(&self) -> bool {
        !self.opts.channels.is_empty()
    }

    fn exit(&self, code: ExitCode, last: Option<&str>) -> ExitCode {
        self.out.finish(self.editor_running, last);
        code
    }

    /// Starts reading the user's lines, once connected.
    fn start_input(&mut self) {
        if self.input_started || self.opts.listen {
            return;
        }
        self.input_started = true;
        let (tx, rx) = mpsc::channel(input::QUEUE);
        if self.opts.interactive {
            match input::spawn_editor(tx, self.prompt.clone()) {
                Ok(printer) => {
                    self.out.attach(printer);
                    self.editor_running = true;
                }
                Err(e) => {
                    self.out
                        .error(&format!("cannot start the line editor: {e}"));
                    return;
                }
            }
        } else {
            input::spawn_plain(tx);
        }
        self.input = Some(rx);
    }

    /// Waits with backoff and connects again. `None`: the user left meanwhile.
    async fn reconnect(&mut self) -> Option<Connected> {
        // One line per attempt: the first says when, each failure says why
        // and when the next is.
        let mut failed: Option<String> = None;
        loop {
            let delay = self.backoff.next_delay();
            let attempt = self.backoff.attempt();
            let when = format!("in {} (attempt {attempt})", format_delay(delay));
            self.out.status(&match failed.take() {
                None => format!("reconnecting {when}..."),
                Some(why) => format!("{why}; retrying {when}..."),
            });
            let deadline = Instant::now() + delay;
            loop {
                tokio::select! {
                    () = sleep_until(deadline) => break,
                    () = self.signals.recv() => return None,
                    () = self.out.stdout_gone.notified() => return None,
                    input = next_input(&mut self.input), if self.opts.interactive => match input {
                        Some(Input::Line(l)) if l.trim().is_empty() => {}
                        Some(Input::Line(_)) => self.out.error("not connected: message not sent"),
                        Some(Input::Command(line, _handled)) => {
                            if self.command(&line, None) == Flow::Quit {
                                return None;
                            }
                        }
                        Some(Input::Quit) | None => {
                            self.editor_running = false;
                            return None;
                        }
                    },
                }
            }
            let url = self.resume_url();
            let attempt = tokio::select! {
                r = connect(&url, &self.tls, self.offer_v2(), self.opts.compression) => r,
                () = self.signals.recv() => return None,
            };
            match attempt {
                Ok(c) => return Some(c),
                Err(e) => {
                    failed = Some(format!(
                        "cannot connect to {}: {e}",
                        self.connect_to.display
                    ))
                }
            }
        }
    }

    /// The URL to connect to again: a `broadcast.v1` session that has a
    /// position asks to resume from it (`?since=EPOCH:OFFSET`). Not with
    /// `--channel`: a v2 client resumes by command, and the server refuses
    /// `?since=` from one.
    fn resume_url(&mut self) -> String {
        let request = &self.connect_to.request;
        let since = match self.v1_cursor.since() {
            Some(since) if self.format == Format::V1 && !self.offer_v2() => since,
            _ => {
                self.v1_resume = false;
                return request.clone();
            }
        };
        self.v1_resume = true;
        let sep = if request.contains('?') { '&' } else { '?' };
        format!("{request}{sep}{}={since}", protocol::history::SINCE_PARAM)
    }

    /// Pipe mode: stdin is read and sent until its end, and the exit status
    /// says whether the server confirmed every line.
    fn pipe(&self) -> bool {
        !self.opts.interactive && !self.opts.listen
    }

    async fn session(&mut self, conn: Connected, again: bool) -> End {
        let Connected {
            ws,
            format,
            inbound,
        } = conn;
        self.format = format;
        let (sink, stream) = ws.split();
        let mut stream = Inflating::new(stream, inbound);
        let mut out = Outgoing::new(sink, self.pipe());
        if let (Some(first), true) = (self.opts.channels.first(), format != Format::V2) {
            let others = self.opts.channels.len() - 1;
            self.out.status(&render::without_v2(first, others));
        }
        if format == Format::Raw {
            self.out
                .status(&render::raw_connected(&self.connect_to.display, again));
            self.start_input();
        }
        // A line typed for another kind of connection: publish it on the
        // current channel (v2), or send it as it is.
        if let Some(line) = &mut self.pending {
            line.channel = match format {
                Format::V2 => line
                    .channel
                    .take()
                    .or_else(|| self.channels.current().map(str::to_owned)),
                Format::V1 | Format::Raw => None,
            };
        }
        if let Some(id) = self.my_id.take() {
            if self.past_ids.len() == PAST_IDS {
                self.past_ids.remove(0);
            }
            self.past_ids.push(id);
        }
        // A v2 line must follow the subscribes, which the welcome sends.
        self.welcomed = format != Format::V2;
        let end = self.converse(&mut out, &mut stream, again).await;
        if self.pipe() {
            self.last_session = (out.sent, out.unconfirmed());
        }
        end
    }

    /// Reads the server and sends the user's lines until one of them ends.
    async fn converse(&mut self, out: &mut Outgoing, stream: &mut Incoming, again: bool) -> End {
        let mut notice: Option<String> = None;
        // Stands in for `pending` until lines may go out.
        let mut held = None;
        loop {
            // Biased: what the server sends is read first (it must not pile
            // up while we send), and the next line is taken before a flush,
            // so lines that are already waiting go out in one write.
            tokio::select! {
                biased;
                () = self.signals.recv() => {
                    let _ = self.close(out, stream, CloseWait::Leaving).await;
                    return End::Quit;
                }
                () = self.out.stdout_gone.notified() => {
                    let _ = self.close(out, stream, CloseWait::Leaving).await;
                    return End::Quit;
                }
                msg = stream.next() => match msg {
                    Some(Ok(Message::Close(frame))) => {
                        drain(stream).await;
                        let (code, reason) = frame
                            .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                            .unwrap_or((None, String::new()));
                        self.restart_expected = code.is_some_and(is_planned_close);
                        return End::Dropped(render::closed_by_server(code, &reason, notice.as_deref()));
                    }
                    Some(Ok(Message::Pong(payload))) => out.on_pong(&payload),
                    Some(Ok(msg)) => {
                        if let Some(why) = self.show(msg, out, again, &mut notice) {
                            let _ = self.close(out, stream, CloseWait::Leaving).await;
                            return End::Refused(why);
                        }
                    }
                    Some(Err(e)) => return End::Dropped(render::lost(&e.to_string(), notice.as_deref())),
                    None => return End::Dropped(render::lost("the connection ended", notice.as_deref())),
                },
                input = next_input(&mut self.input), if self.pending.is_none() => match input {
                    Some(Input::Line(line)) => self.take_line(line),
                    Some(Input::Command(line, _handled)) => {
                        if self.command(&line, Some(out)) == Flow::Quit {
                            let _ = self.close(out, stream, CloseWait::Leaving).await;
                            return End::Quit;
                        }
                    }
                    Some(Input::Quit) | None => {
                        self.editor_running = false;
                        self.input = None;
                        if !self.pipe() {
                            let _ = self.close(out, stream, CloseWait::Leaving).await;
                            return End::Quit;
                        }
                        return match self.close(out, stream, CloseWait::Confirming).await {
                            Ok(()) => End::Quit,
                            Err(why) => End::Unconfirmed(why),
                        };
                    }
                },
                r = out.step(if self.welcomed { &mut self.pending } else { &mut held }),
                    if (self.welcomed && self.pending.is_some()) || out.busy() => {
                    if let Err(e) = r {
                        return End::Dropped(render::lost(&e.to_string(), notice.as_deref()));
                    }
                }
            }
        }
    }

    /// A line from the user to send (not a command): it waits in `pending`
    /// for the connection. In interactive mode `//text` sends `/text`.
    fn take_line(&mut self, line: String) {
        if line.trim().is_empty() {
            return;
        }
        let text = if self.opts.interactive {
            slash::unescape(&line).to_owned()
        } else {
            line
        };
        let channel = match (self.format, self.channels.current()) {
            (Format::V2, Some(c)) => Some(c.to_owned()),
            (Format::V2, None) => {
                self.out
                    .error("not in any channel: /join NAME first (message not sent)");
                return;
            }
            (Format::V1 | Format::Raw, _) => None,
        };
        self.pending = Some(Line { text, channel });
    }

    /// Runs a slash command typed in interactive mode; `out`: the
    /// connection, if there is one (a `/join` while disconnected takes
    /// effect on the next connection, which subscribes to every channel).
    fn command(&mut self, line: &str, out: Option<&mut Outgoing>) -> Flow {
        let command = slash::parse(line);
        let channel_command = matches!(
            command,
            Slash::Join(_) | Slash::Leave(_) | Slash::Who(_) | Slash::Switch(_)
        );
        // In step with the editor: `Input::Command` only for commands.
        debug_assert!(slash::is_command(line));
        if channel_command && self.format != Format::V2 {
            match self.opts.channels.first() {
                None => self.out.error("start with --channel to use channels"),
                Some(first) => self.out.error(&render::without_v2(first, 0)),
            }
            return Flow::Continue;
        }
        match command {
            // Not a command after all (the editor decides the same way).
            Slash::Send(_) => {}
            Slash::Quit => return Flow::Quit,
            Slash::Help => {
                for line in slash::HELP {
                    self.out.status(line);
                }
            }
            Slash::Usage(usage) => self.out.error(&format!("usage: {usage}")),
            Slash::Unknown(word) => self.out.error(&format!(
                "unknown command {word}: /help lists them; //text sends /text"
            )),
            Slash::Join(name) => {
                if let Err(e) = protocol::channel::validate(name) {
                    self.out.error(&format!(
                        "bad channel name {:?}: {e}",
                        render::sanitize(name)
                    ));
                } else if self.channels.switch(name) {
                    self.out
                        .status(&format!("already in #{name}: writing there now"));
                } else {
                    let subscribe = self.channels.join(name);
                    match out {
                        Some(out) => out.command(&subscribe),
                        None => self.out.status(&format!(
                            "not connected: will join #{name} once reconnected"
                        )),
                    }
                }
            }
            Slash::Leave(name) => match name.or(self.channels.current()).map(str::to_owned) {
                None => self.out.error("not in any channel"),
                Some(name) if !self.channels.is_joined(&name) => {
                    self.out.error(&format!("not in #{name}"));
                }
                Some(name) => {
                    let unsubscribe = self.channels.leave(&name);
                    match out {
                        Some(out) => out.command(&unsubscribe),
                        None => self.out.status(&format!("left #{name}")),
                    }
                }
            },
            Slash::Switch(name) => {
                if !self.channels.switch(name) {
                    self.out
                        .error(&format!("not in #{name}: /join {name} first"));
                }
            }
            // Asked of the server when connected: the answer prints it.
            Slash::Who(name) => match (name.or(self.channels.current()).map(str::to_owned), out) {
                (None, _) => self.out.error("not in any channel"),
                (Some(name), Some(out)) if self.channels.may_ask(&name) => {
                    out.command(&self.channels.ask(&name, true));
                }
                (Some(name), _) => self.out.status(&self.channels.who(&name)),
            },
        }
        self.update_prompt();
        Flow::Continue
    }

    /// `erin> `, or `erin #news> ` on a `broadcast.v2` connection.
    fn update_prompt(&self) {
        let Some(name) = &self.my_name else {
            return;
        };
        let name = render::sanitize(name);
        let prompt = match (self.format, self.channels.current()) {
            (Format::V2, Some(channel)) => format!("{name} #{channel}> "),
            _ => format!("{name}> "),
        };
        if let Ok(mut p) = self.prompt.lock() {
            *p = prompt;
        }
    }

    /// Prints one data frame (or event). `Some`: why the client stops (see
    /// [`End::Refused`]).
    fn show(
        &mut self,
        msg: Message,
        out: &mut Outgoing,
        again: bool,
        notice: &mut Option<String>,
    ) -> Option<String> {
        let r = &self.out.render;
        match (msg, self.format) {
            (Message::Text(text), Format::V1) => self.show_v1(&text, again, notice),
            (Message::Text(text), Format::V2) => return self.show_v2(&text, out, again, notice),
            (Message::Text(text), Format::Raw) => {
                self.out
                    .chat(r.message(now_ms(), None, BodyView::Text(&text)))
            }
            (Message::Binary(data), _) => {
                self.out
                    .chat(r.message(now_ms(), None, BodyView::Binary(data.len())));
            }
            (Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_), _) => {}
        }
        None
    }

    /// A `broadcast.v1` event.
    fn show_v1(&mut self, text: &str, again: bool, notice: &mut Option<String>) {
        match ServerEvent::decode(text) {
            Ok(Some(ServerEvent::Welcome {
                id,
                name,
                online,
                recovered,
                reason,
                position,
                ..
            })) => {
                self.my_id = Some(id);
                let line = render::welcome(&self.connect_to.display, &name, online, again);
                self.my_name = Some(name);
                self.update_prompt();
                self.out.status(&line);
                let resume = std::mem::take(&mut self.v1_resume);
                let resumed = self.v1_cursor.joined(resume, recovered, reason, position);
                self.show_resumed(None, resumed);
                self.start_input();
            }
            Ok(Some(ServerEvent::Message {
                from,
                name,
                time,
                offset,
                epoch,
                body,
            })) => {
                let own = self.v1_cursor.replaying() && self.past_ids.contains(&from);
                if !own {
                    let r = &self.out.render;
                    self.out.chat(r.message(time, Some(&name), (&body).into()));
                }
                let resumed = self.v1_cursor.message(offset, epoch.as_deref(), own);
                self.show_resumed(None, resumed);
                self.start_input();
            }
            Ok(Some(ServerEvent::Presence {
                online,
                joined,
                left,
                joined_count,
                left_count,
            })) => {
                self.show_presence(None, online, joined, &left, joined_count, left_count);
                self.start_input();
            }
            Ok(Some(ServerEvent::Notice { text, .. })) => *notice = Some(text),
            Ok(None) => {}
            Err(e) => self.out.error(&e.to_string()),
        }
    }

    /// A `broadcast.v2` event. `Some`: why the client stops.
    fn show_v2(
        &mut self,
        text: &str,
        out: &mut Outgoing,
        again: bool,
        notice: &mut Option<String>,
    ) -> Option<String> {
        let event = match Event::decode(text) {
            Ok(Some(event)) => event,
            Ok(None) => return None,
            Err(e) => {
                self.out.error(&e.to_string());
                return None;
            }
        };
        match event {
            Event::Welcome { client, name, .. } => {
                self.my_id = Some(client);
                self.welcomed = true;
                let line = render::welcome_v2(&self.opts.target.display, &name, again);
                self.out.status(&line);
                for subscribe in self.channels.connected((client, name.clone()), again) {
                    out.command(&subscribe);
                }
                self.my_name = Some(name);
                self.update_prompt();
                // Pipe mode waits for the first `subscribed` instead.
                if self.opts.interactive {
                    self.start_input();
                }
            }
            Event::Subscribed {
                id,
                channel,
                online,
                offset,
                epoch,
                recovered,
                reason,
            } => {
                let answer = Answer {
                    recovered,
                    reason,
                    position: offset
                        .zip(epoch)
                        .map(|(offset, epoch)| Position { offset, epoch }),
                };
                let (rejoined, resumed) =
                    self.channels
                        .subscribed(id.as_ref(), &channel, online, answer);
                self.out.status(&render::joined(&channel, online, rejoined));
                self.show_resumed(self.channels.tag(&channel), resumed);
                // Who was there before us (presence names only later
                // arrivals); only `/who` shows it, so pipe mode skips it.
                if self.opts.interactive {
                    out.command(&self.channels.ask(&channel, false));
                }
                self.start_input();
            }
            Event::Members {
                id,
                channel,
                online,
                members,
                ..
            } => {
                if let Some(line) = self
                    .channels
                    .members(id.as_ref(), &channel, online, &members)
                {
                    self.out.status(&line);
                }
            }
            Event::Unsubscribed { id, channel, .. } => {
                self.channels.unsubscribed(id.as_ref());
                self.out.status(&format!("left #{channel}"));
            }
            Event::Message {
                channel,
                from,
                name,
                time,
                offset,
                epoch,
                body,
            } => {
                let own = self.channels.replaying(&channel) && self.past_ids.contains(&from);
                let tag = self.channels.tag(&channel);
                if !own {
                    let r = &self.out.render;
                    self.out
                        .chat(r.message_in(tag, time, Some(&name), (&body).into()));
                }
                let resumed = self
                    .channels
                    .message(&channel, offset, epoch.as_deref(), own);
                self.show_resumed(tag, resumed);
            }
            Event::Presence {
                channel,
                online,
                joined,
                left,
                joined_count,
                left_count,
            } => {
                self.channels
                    .presence(&channel, online, &joined, &left, left_count);
                let tag = self.channels.tag(&channel);
                self.show_presence(tag, online, joined, &left, joined_count, left_count);
            }
            Event::Error { id, code, text } => {
                self.out.refusal(code.as_str(), &text);
                match self.channels.refused(id.as_ref()) {
                    Some(Sent::Subscribe { channel, .. }) => {
                        self.update_prompt();
                        if !self.opts.interactive {
                            return Some(format!("cannot join #{channel} ({code})"));
                        }
                    }
                    Some(Sent::Unsubscribe(_) | Sent::Members { .. }) => {}
                    // Our publishes carry no id: one was refused.
                    None if self.pipe() => self.refused += 1,
                    None => {}
                }
            }
            Event::Notice { text, .. } => *notice = Some(text),
            Event::Pong {
                id: Some(Id::Num(LAST_PING)),
            } => self.last_pong = true,
            Event::Published { .. } | Event::Pong { .. } => {}
        }
        None
    }

    /// The line that says how a resume went, if it says something.
    fn show_resumed(&self, tag: Option<&str>, resumed: Option<Resumed>) {
        if let Some(line) = resumed.and_then(render::resumed) {
            self.out.status(&self.out.render.presence_in(tag, line));
        }
    }

    /// `* bob joined (3 online)`, unless it only says we arrived (the
    /// welcome or `joined` line did).
    fn show_presence(
        &self,
        tag: Option<&str>,
        online: u64,
        mut joined: Vec<Peer>,
        left: &[Peer],
        joined_count: Option<u64>,
        left_count: Option<u64>,
    ) {
        let had_names = !joined.is_empty() || !left.is_empty();
        joined.retain(|p| Some(p.id) != self.my_id);
        let counts = joined_count.is_some() || left_count.is_some();
        if !had_names || !joined.is_empty() || !left.is_empty() || counts {
            let r = &self.out.render;
            let line = r.presence(online, &joined, left, joined_count, left_count);
            self.out.chat(r.presence_in(tag, line));
        }
    }

    /// Sends close 1000 after what is queued and waits for the server's
    /// reply, printing what still arrives before it. `Ok` once the reply is
    /// in: the server has read everything sent before. `Err`: why not.
    async fn close(
        &mut self,
        out: &mut Outgoing,
        stream: &mut Incoming,
        wait: CloseWait,
    ) -> Result<(), String> {
        // The server drops what it has not started to send when it answers
        // a close, so on a v2 connection the `error`s for the last lines
        // could be lost: at the end of piped input a last `ping` first,
        // whose `pong` follows every earlier answer, and then the close.
        self.last_pong = false;
        if wait == CloseWait::Confirming && self.format == Format::V2 {
            out.command(&Command::Ping {
                id: Some(Id::Num(LAST_PING)),
            });
        } else {
            out.want_close();
        }
        let mut notice = None;
        let mut deadline = Instant::now() + wait.bound();
        let mut close_written = false;
        let mut no_line = None;
        loop {
            tokio::select! {
                biased;
                () = self.signals.recv() => {
                    return Err("interrupted while waiting for the server's close reply".to_owned());
                }
                msg = stream.next() => match msg {
                    Some(Ok(Message::Close(frame))) => {
                        drain(stream).await;
                        let code = frame.as_ref().map(|f| u16::from(f.code));
                        if code == Some(u16::from(CloseCode::Normal)) && close_written {
                            out.on_close_reply();
                            return Ok(());
                        }
                        let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                        return Err(render::closed_by_server(code, &reason, notice.as_deref()));
                    }
                    Some(Ok(Message::Pong(payload))) => {
                        let before = out.confirmed;
                        out.on_pong(&payload);
                        if out.confirmed > before && wait == CloseWait::Confirming {
                            deadline = Instant::now() + wait.bound();
                        }
                    }
                    Some(Ok(msg)) => {
                        // Leaving anyway: a refusal changes nothing.
                        let _ = self.show(msg, out, true, &mut notice);
                        if std::mem::take(&mut self.last_pong) {
                            out.want_close();
                        }
                    }
                    Some(Err(e)) => return Err(render::lost(&e.to_string(), notice.as_deref())),
                    None => {
                        let why = "the connection ended before the server answered our close";
                        return Err(render::lost(why, notice.as_deref()));
                    }
                },
                r = out.step(&mut no_line), if out.busy() => match r {
                    Ok(Step::Flushed) if out.close_queued() && !close_written => {
                        close_written = true;
                        if wait == CloseWait::Confirming {
                            deadline = Instant::now() + wait.bound();
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Err(render::lost(&e.to_string(), notice.as_deref())),
                },
                () = sleep_until(deadline) => return Err(wait.gave_up()),
            }
        }
    }
}

/// Whether the client goes on after a slash command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Quit,
}

/// How long [`Client::close`] waits for the server's close reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseWait {
    /// The user is leaving: a short, fixed bound.
    Leaving,
    /// The end of piped input: as long as the server keeps reading (each of
    /// its pongs, and our close frame reaching the socket, restart the
    /// bound), so a server that reads a large backlog slowly is not cut off.
    Confirming,
}

impl CloseWait {
    fn bound(self) -> Duration {
        match self {
            Self::Leaving => CLOSE_TIMEOUT,
            Self::Confirming => CONFIRM_TIMEOUT,
        }
    }

    fn gave_up(self) -> String {
        match self {
            Self::Leaving => format!(
                "no close reply from the server within {} s",
                CLOSE_TIMEOUT.as_secs()
            ),
            Self::Confirming => format!(
                "gave up waiting for the server's close reply: it read nothing of ours for {} s",
                CONFIRM_TIMEOUT.as_secs()
            ),
        }
    }
}

/// After the server's close frame: lets tungstenite send the reply.
async fn drain(stream: &mut Incoming) {
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    while let Ok(Some(Ok(_))) = timeout_at(deadline, stream.next()).await {}
}

async fn next_input(input: &mut Option<mpsc::Receiver<Input>>) -> Option<Input> {
    match input {
        Some(rx) => rx.recv().await,
        None => pending().await,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `1.3 s`: a delay as the user reads it.
fn format_delay(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_format() {
        assert_eq!(format_delay(Duration::from_millis(1349)), "1.3 s");
        assert_eq!(format_delay(Duration::ZERO), "0.0 s");
        assert_eq!(format_delay(Duration::from_secs(30)), "30.0 s");
    }
}
