//! The client's life: connect, run a session, and after an unexpected end
//! reconnect with backoff until the user leaves.

use std::future::pending;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt as _, StreamExt as _};
use protocol::v1::ServerEvent;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;

use crate::backoff::{format_delay, Backoff};
use crate::conn::{connect, Connected, Ws};
use crate::input::{self, Input};
use crate::output::Out;
use crate::render::{self, BodyView};
use crate::target::Target;

/// How long a clean close waits for the server's close reply.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection that lasted this long resets the backoff; shorter ones keep
/// counting, so a server that accepts and at once closes is not hammered.
const STABLE: Duration = Duration::from_secs(10);

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
}

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
        backoff: Backoff::default(),
        my_id: None,
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
            match end {
                End::Quit => return self.exit(ExitCode::SUCCESS, None),
                End::Dropped(why) => {
                    if !self.opts.reconnect {
                        return self.exit(ExitCode::from(1), Some(&why));
                    }
                    self.out.status(&why);
                }
            }
            match self.reconnect().await {
                Some(c) => conn = c,
                None => return self.exit(ExitCode::SUCCESS, None),
            }
            again = true;
        }
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
        let mut rng = rand::rng();
        loop {
            let (attempt, delay) = self.backoff.next_delay(&mut rng);
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

    async fn session(&mut self, conn: Connected, again: bool) -> End {
        let Connected { mut ws, v1 } = conn;
        if !v1 {
            self.out
                .status(&render::raw_connected(&self.opts.target.display, again));
            self.start_input();
        }
        let mut notice: Option<String> = None;
        self.my_id = None;
        loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Close(frame))) => {
                        drain(&mut ws).await;
                        let (code, reason) = frame
                            .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                            .unwrap_or((None, String::new()));
                        return End::Dropped(render::closed_by_server(code, &reason, notice.as_deref()));
                    }
                    Some(Ok(msg)) => self.show(msg, v1, again, &mut notice),
                    Some(Err(e)) => return End::Dropped(render::lost(&e.to_string(), notice.as_deref())),
                    None => return End::Dropped(render::lost("the connection ended", notice.as_deref())),
                },
                input = next_input(&mut self.input) => match input {
                    Some(Input::Line(line)) => {
                        if line.trim().is_empty() {
                            continue;
                        }
                        if let Err(e) = ws.send(Message::text(line)).await {
                            return End::Dropped(render::lost(&e.to_string(), notice.as_deref()));
                        }
                    }
                    Some(Input::Quit) | None => {
                        self.editor_running = false;
                        self.input = None;
                        self.close(&mut ws, v1).await;
                        return End::Quit;
                    }
                },
                () = self.signals.recv() => {
                    self.close(&mut ws, v1).await;
                    return End::Quit;
                }
                () = self.out.stdout_gone.notified() => {
                    self.close(&mut ws, v1).await;
                    return End::Quit;
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

    /// Sends close 1000 and waits (bounded) for the server's reply, printing
    /// what still arrives before it: once the reply is in, the server has
    /// read everything sent before.
    async fn close(&mut self, ws: &mut Ws, v1: bool) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        if ws.close(Some(frame)).await.is_err() {
            return;
        }
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        let mut notice = None;
        while let Ok(Some(Ok(msg))) = timeout_at(deadline, ws.next()).await {
            if !matches!(msg, Message::Close(_)) {
                self.show(msg, v1, true, &mut notice);
            }
        }
    }
}

/// After the server's close frame: lets tungstenite send the reply.
async fn drain(ws: &mut Ws) {
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    while let Ok(Some(Ok(_))) = timeout_at(deadline, ws.next()).await {}
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
