//! The client's life: connect, run a session, and after an unexpected end
//! reconnect with backoff until the user leaves.

use std::future::pending;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::SplitStream;
use futures_util::StreamExt as _;
use protocol::v1::ServerEvent;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;

use protocol::backoff::Backoff;

use crate::conn::{connect, Connected, Ws};
use crate::input::{self, Input};
use crate::output::Out;
use crate::render::{self, BodyView};
use crate::send::{Outgoing, Step};
use crate::target::Target;

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

/// What `run` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) target: Target,
    /// Prompt and line editor (stdin and stdout are terminals).
    pub(crate) interactive: bool,
    /// Do not read stdin at all.
    pub(crate) listen: bool,
    pub(crate) reconnect: bool,
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
}

/// The reading half of a connection.
type Incoming = SplitStream<Ws>;

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
    tls: Connector,
    signals: Signals,
    /// Lines from the user, once the reader runs (never in `--listen` mode).
    input: Option<mpsc::Receiver<Input>>,
    input_started: bool,
    /// The line editor may be reading the terminal (in raw mode).
    editor_running: bool,
    prompt: Arc<Mutex<String>>,
    backoff: Backoff,
    /// This connection's id, from the v1 welcome.
    my_id: Option<u64>,
    /// A line read from the user that no connection has taken yet (it goes
    /// out on the next one after a drop).
    pending: Option<String>,
    /// Pipe mode: lines sent on the last connection, and how many of them
    /// the server did not confirm.
    last_session: (u64, u64),
    /// Pipe mode: lines sent that the server never confirmed, over all
    /// connections (they may have been lost).
    unconfirmed: u64,
}

/// Runs the client; returns the process exit code.
pub(crate) async fn run(opts: Options, out: Out, tls: Connector) -> ExitCode {
    let mut client = Client {
        opts,
        out,
        tls,
        signals: Signals::new(),
        input: None,
        input_started: false,
        editor_running: false,
        prompt: Arc::new(Mutex::new("> ".to_owned())),
        backoff: Backoff::new(BACKOFF_FIRST, BACKOFF_CAP),
        my_id: None,
        pending: None,
        last_session: (0, 0),
        unconfirmed: 0,
    };
    client.main_loop().await
}

impl Client {
    async fn main_loop(&mut self) -> ExitCode {
        // The first attempt: failing it ends the client (the URL is likely
        // wrong or the server not started; looping would hide that).
        let first = tokio::select! {
            r = connect(&self.opts.target.request, &self.tls) => r,
            () = self.signals.recv() => return self.exit(ExitCode::SUCCESS, None),
        };
        let mut conn = match first {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot connect to {}: {e}", self.opts.target.display);
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
            let loss = self.count_loss();
            match end {
                End::Quit => return self.leave(),
                End::Unconfirmed(why) => {
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
    /// on a connection that dropped.
    fn leave(&self) -> ExitCode {
        if self.unconfirmed == 0 {
            return self.exit(ExitCode::SUCCESS, None);
        }
        let n = self.unconfirmed;
        let line = format!("exit status 1: {n} lines sent may not have been delivered");
        self.exit(ExitCode::from(1), Some(&line))
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
        loop {
            let delay = self.backoff.next_delay();
            let attempt = self.backoff.attempt();
            self.out.status(&format!(
                "reconnecting in {} (attempt {attempt})...",
                format_delay(delay)
            ));
            let deadline = Instant::now() + delay;
            loop {
                tokio::select! {
                    () = sleep_until(deadline) => break,
                    () = self.signals.recv() => return None,
                    () = self.out.stdout_gone.notified() => return None,
                    input = next_input(&mut self.input), if self.opts.interactive => match input {
                        Some(Input::Line(l)) if l.trim().is_empty() => {}
                        Some(Input::Line(_)) => self.out.error("not connected: message not sent"),
                        Some(Input::Quit) | None => {
                            self.editor_running = false;
                            return None;
                        }
                    },
                }
            }
            let attempt = tokio::select! {
                r = connect(&self.opts.target.request, &self.tls) => r,
                () = self.signals.recv() => return None,
            };
            match attempt {
                Ok(c) => return Some(c),
                Err(e) => self.out.status(&format!(
                    "cannot connect to {}: {e}",
                    self.opts.target.display
                )),
            }
        }
    }

    /// Pipe mode: stdin is read and sent until its end, and the exit status
    /// says whether the server confirmed every line.
    fn pipe(&self) -> bool {
        !self.opts.interactive && !self.opts.listen
    }

    async fn session(&mut self, conn: Connected, again: bool) -> End {
        let Connected { ws, v1 } = conn;
        let (sink, mut stream) = ws.split();
        let mut out = Outgoing::new(sink, self.pipe());
        if !v1 {
            self.out
                .status(&render::raw_connected(&self.opts.target.display, again));
            self.start_input();
        }
        self.my_id = None;
        let end = self.converse(&mut out, &mut stream, v1, again).await;
        if self.pipe() {
            self.last_session = (out.sent, out.unconfirmed());
        }
        end
    }

    /// Reads the server and sends the user's lines until one of them ends.
    async fn converse(
        &mut self,
        out: &mut Outgoing,
        stream: &mut Incoming,
        v1: bool,
        again: bool,
    ) -> End {
        let mut notice: Option<String> = None;
        loop {
            // Biased: what the server sends is read first (it must not pile
            // up while we send), and the next line is taken before a flush,
            // so lines that are already waiting go out in one write.
            tokio::select! {
                biased;
                () = self.signals.recv() => {
                    let _ = self.close(out, stream, v1, CloseWait::Leaving).await;
                    return End::Quit;
                }
                () = self.out.stdout_gone.notified() => {
                    let _ = self.close(out, stream, v1, CloseWait::Leaving).await;
                    return End::Quit;
                }
                msg = stream.next() => match msg {
                    Some(Ok(Message::Close(frame))) => {
                        drain(stream).await;
                        let (code, reason) = frame
                            .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                            .unwrap_or((None, String::new()));
                        return End::Dropped(render::closed_by_server(code, &reason, notice.as_deref()));
                    }
                    Some(Ok(Message::Pong(payload))) => out.on_pong(&payload),
                    Some(Ok(msg)) => self.show(msg, v1, again, &mut notice),
                    Some(Err(e)) => return End::Dropped(render::lost(&e.to_string(), notice.as_deref())),
                    None => return End::Dropped(render::lost("the connection ended", notice.as_deref())),
                },
                input = next_input(&mut self.input), if self.pending.is_none() => match input {
                    Some(Input::Line(line)) => {
                        if !line.trim().is_empty() {
                            self.pending = Some(line);
                        }
                    }
                    Some(Input::Quit) | None => {
                        self.editor_running = false;
                        self.input = None;
                        if !self.pipe() {
                            let _ = self.close(out, stream, v1, CloseWait::Leaving).await;
                            return End::Quit;
                        }
                        return match self.close(out, stream, v1, CloseWait::Confirming).await {
                            Ok(()) => End::Quit,
                            Err(why) => End::Unconfirmed(why),
                        };
                    }
                },
                r = out.step(&mut self.pending), if self.pending.is_some() || out.busy() => {
                    if let Err(e) = r {
                        return End::Dropped(render::lost(&e.to_string(), notice.as_deref()));
                    }
                }
            }
        }
    }

    /// Prints one data frame (or v1 event).
    fn show(&mut self, msg: Message, v1: bool, again: bool, notice: &mut Option<String>) {
        let r = &self.out.render;
        match msg {
            Message::Text(text) if v1 => match ServerEvent::decode(&text) {
                Ok(Some(ServerEvent::Welcome {
                    id, name, online, ..
                })) => {
                    self.my_id = Some(id);
                    let line = render::welcome(&self.opts.target.display, &name, online, again);
                    if let Ok(mut p) = self.prompt.lock() {
                        *p = format!("{}> ", render::sanitize(&name));
                    }
                    self.out.status(&line);
                    self.start_input();
                }
                Ok(Some(ServerEvent::Message {
                    name, time, body, ..
                })) => {
                    self.out.chat(r.message(time, Some(&name), (&body).into()));
                    self.start_input();
                }
                Ok(Some(ServerEvent::Presence {
                    online,
                    mut joined,
                    left,
                    joined_count,
                    left_count,
                })) => {
                    // Our own arrival was already shown by the welcome line.
                    let had_names = !joined.is_empty() || !left.is_empty();
                    joined.retain(|p| Some(p.id) != self.my_id);
                    let counts = joined_count.is_some() || left_count.is_some();
                    if !had_names || !joined.is_empty() || !left.is_empty() || counts {
                        self.out
                            .chat(r.presence(online, &joined, &left, joined_count, left_count));
                    }
                    self.start_input();
                }
                Ok(Some(ServerEvent::Notice { text, .. })) => *notice = Some(text),
                Ok(None) => {}
                Err(e) => self.out.error(&e.to_string()),
            },
            Message::Text(text) => self
                .out
                .chat(r.message(now_ms(), None, BodyView::Text(&text))),
            Message::Binary(data) => {
                self.out
                    .chat(r.message(now_ms(), None, BodyView::Binary(data.len())));
            }
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {}
        }
    }

    /// Sends close 1000 after what is queued and waits for the server's
    /// reply, printing what still arrives before it. `Ok` once the reply is
    /// in: the server has read everything sent before. `Err`: why not.
    async fn close(
        &mut self,
        out: &mut Outgoing,
        stream: &mut Incoming,
        v1: bool,
        wait: CloseWait,
    ) -> Result<(), String> {
        out.want_close();
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
                    Some(Ok(msg)) => self.show(msg, v1, true, &mut notice),
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
