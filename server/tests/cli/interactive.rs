//! Interactive mode through a real pseudo-terminal, its screen rendered by
//! vt100: incoming messages must not garble the line being typed.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt;
use nix::sys::termios::LocalFlags;
use portable_pty::{native_pty_system, CommandBuilder, PtySize};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{bin, next_text, raw_client, Server, EVENT_TIMEOUT};

const ROWS: u16 = 24;
const COLS: u16 = 100;

/// `broadcast-server connect ...` on a pty.
pub(crate) struct Term {
    parser: Arc<Mutex<vt100::Parser>>,
    writer: Arc<Mutex<Box<dyn Write + Send>>>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    master: Box<dyn portable_pty::MasterPty + Send>,
    /// The terminal settings before the client ran, as text.
    initial_termios: String,
}

impl Term {
    fn spawn(args: &[&str]) -> Term {
        Self::spawn_sized(args, ROWS)
    }

    /// On a pty of `rows` rows (room for a long transcript).
    pub(crate) fn spawn_sized(args: &[&str], rows: u16) -> Term {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows,
                cols: COLS,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("open a pty");
        let initial_termios = format!("{:?}", pair.master.get_termios());
        let mut cmd = CommandBuilder::new(bin());
        cmd.arg("connect");
        cmd.args(args);
        cmd.env("TERM", "xterm-256color");
        let child = pair.slave.spawn_command(cmd).expect("spawn on the pty");
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().unwrap();
        let writer = Arc::new(Mutex::new(pair.master.take_writer().unwrap()));
        let parser = Arc::new(Mutex::new(vt100::Parser::new(
            std::num::NonZeroU16::new(rows).unwrap(),
            std::num::NonZeroU16::new(COLS).unwrap(),
            0,
        )));
        let (p, w) = (parser.clone(), writer.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                let mut parser = p.lock().unwrap();
                parser.process(&buf[..n]);
                // Answer cursor position queries as a terminal would.
                if buf[..n].windows(4).any(|w| w == b"\x1b[6n") {
                    let (row, col) = parser.screen().cursor_position();
                    let _ = write!(w.lock().unwrap(), "\x1b[{};{}R", row + 1, col + 1);
                }
            }
        });
        Term {
            parser,
            writer,
            child,
            master: pair.master,
            initial_termios,
        }
    }

    /// Types `keys` once the line editor is reading (the terminal in raw
    /// mode). Between two lines rustyline gives the terminal back in its
    /// cooked mode, where the kernel's line discipline would act on keys
    /// typed right then (turn Ctrl+D into an end of file nobody reads, echo
    /// them) before the editor sees them.
    async fn type_keys(&self, keys: &str) {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while self.cooked() {
            assert!(
                Instant::now() < deadline,
                "the line editor never took the terminal (still in cooked mode); screen:\n{}",
                self.screen().0.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut w = self.writer.lock().unwrap();
        w.write_all(keys.as_bytes()).unwrap();
        w.flush().unwrap();
    }

    /// Whether the terminal is in canonical (cooked) mode.
    fn cooked(&self) -> bool {
        self.master
            .get_termios()
            .is_none_or(|t| t.local_flags.contains(LocalFlags::ICANON))
    }

    /// The screen's rows and the cursor's row.
    pub(crate) fn screen(&self) -> (Vec<String>, usize) {
        let parser = self.parser.lock().unwrap();
        let screen = parser.screen();
        let rows = screen
            .rows(0, COLS)
            .map(|r| r.trim_end().to_owned())
            .collect();
        (rows, usize::from(screen.cursor_position().0))
    }

    /// Waits until `ok(rows, cursor_row)` holds.
    pub(crate) async fn wait_for(
        &self,
        what: &str,
        ok: impl Fn(&[String], usize) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let (rows, cursor) = self.screen();
            if ok(&rows, cursor) {
                return rows;
            }
            assert!(
                Instant::now() < deadline,
                "screen never showed {what}; cursor on row {cursor}; screen:\n{}",
                rows.iter()
                    .map(|r| format!("{r:?}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the prompt line (the cursor's row) reads `line`.
    async fn wait_prompt(&self, line: &str) -> Vec<String> {
        self.wait_for(&format!("prompt {line:?}"), |rows, cursor| {
            rows[cursor] == line.trim_end()
        })
        .await
    }

    async fn wait_exit(&mut self) -> portable_pty::ExitStatus {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "client did not exit; screen:\n{}",
                self.screen().0.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Term {
    /// The client put the terminal back as it found it (not in raw mode).
    fn assert_termios_restored(&self) {
        assert_eq!(
            format!("{:?}", self.master.get_termios()),
            self.initial_termios
        );
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// A client offering `broadcast.v1` (its frames are JSON events).
async fn v1_client(url: &str) -> crate::util::Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "broadcast.v1".parse().unwrap());
    let connecting = tokio_tungstenite::connect_async(request);
    let (ws, _) = tokio::time::timeout(EVENT_TIMEOUT, connecting)
        .await
        .expect("connect in time")
        .expect("connect");
    ws
}

#[tokio::test]
async fn typed_text_survives_incoming_messages() {
    let server = Server::start().await;
    let mut peer = raw_client(&server.url()).await;
    server.wait_connections(1).await;
    let port = server.port.to_string();
    let mut term = Term::spawn(&["--host", "127.0.0.1", "--port", &port, "--name", "erin"]);
    term.wait_for("the welcome", |rows, _| {
        rows.iter().any(|r| r.contains("as erin (2 online)"))
    })
    .await;
    term.wait_prompt("erin> ").await;

    // In one write, like a paste: every key must be handled at once.
    term.type_keys("half a li").await;
    term.wait_prompt("erin> half a li").await;
    peer.send(Message::text("incoming!")).await.unwrap();
    let rows = term
        .wait_for("the message above the intact prompt", |rows, cursor| {
            rows[cursor] == "erin> half a li"
                && rows[..cursor]
                    .iter()
                    .any(|r| r.ends_with(": incoming!") && r.starts_with('['))
        })
        .await;
    assert_eq!(
        term.screen().1,
        rows.iter().rposition(|r| r == "erin> half a li").unwrap()
    );

    term.type_keys("ne\r").await;
    assert_eq!(next_text(&mut peer).await, "half a line");
    // Once a later message is shown, the sent line must be on screen once
    // (as typed), not echoed back.
    peer.send(Message::text("later")).await.unwrap();
    let rows = term
        .wait_for("the later message", |rows, cursor| {
            rows[cursor] == "erin>" && rows.iter().any(|r| r.ends_with(": later"))
        })
        .await;
    assert_eq!(
        rows.iter().filter(|r| r.contains("half a line")).count(),
        1,
        "{rows:#?}"
    );
    assert!(rows.iter().any(|r| r == "erin> half a line"), "{rows:#?}");

    term.type_keys("\x04").await; // Ctrl+D on an empty line
    let st = term.wait_exit().await;
    assert!(st.success(), "Ctrl+D exit status {st:?}");
    // The terminal is left on a fresh line.
    term.wait_for("a fresh line after the prompt", |rows, cursor| {
        cursor > 0 && rows[cursor - 1] == "erin>" && rows[cursor].is_empty()
    })
    .await;
}

#[tokio::test]
async fn ctrl_c_leaves_with_exit_0() {
    let server = Server::start().await;
    let port = server.port.to_string();
    let mut term = Term::spawn(&["--host", "127.0.0.1", "--port", &port, "--name", "fay"]);
    term.wait_prompt("fay> ").await;
    server.wait_connections(1).await;
    term.type_keys("never sent").await;
    term.wait_prompt("fay> never sent").await;
    term.type_keys("\x03").await;
    let st = term.wait_exit().await;
    assert!(st.success(), "Ctrl+C exit status {st:?}");
    term.assert_termios_restored();
    server.wait_connections(0).await;
}

/// A drop with `--no-reconnect` ends the client while the line editor is
/// still reading: the reason is shown, the exit code is 1, and the terminal
/// is not left in raw mode.
#[tokio::test]
async fn drop_without_reconnect_restores_the_terminal() {
    let server = Server::start().await;
    let port = server.port.to_string();
    let mut term = Term::spawn(&["--host", "127.0.0.1", "--port", &port, "--no-reconnect"]);
    term.wait_for("the welcome", |rows, _| {
        rows.iter().any(|r| r.contains("(1 online)"))
    })
    .await;
    term.type_keys("unsent").await;
    term.wait_for("the typed text", |rows, cursor| {
        rows[cursor].ends_with("> unsent")
    })
    .await;
    server.terminate().await;
    let st = term.wait_exit().await;
    assert_eq!(st.exit_code(), 1, "{st:?}");
    term.wait_for("the reason", |rows, _| {
        rows.iter().any(|r| {
            r.starts_with(
                "error: connection closed by server: 1001 going away (server shutting down)",
            )
        })
    })
    .await;
    term.assert_termios_restored();
}

/// Slash commands with `--channel`: `/join`, `/switch`, `/who`, `/leave`,
/// `//text`, and a hint for an unknown command; the prompt names the
/// channel typed lines go to.
#[tokio::test]
async fn slash_commands_move_between_channels() {
    let server = Server::start().await;
    // ann (a plain client: a guest, never named by the server's list) is
    // in #a before erin, and so is this v1 client, walt, which waits until
    // the server has reported ann's arrival.
    let mut watcher = v1_client(&format!("{}/a?name=walt", server.url())).await;
    let mut ann = raw_client(&format!("{}/a?name=ann", server.url())).await;
    loop {
        let event = next_text(&mut watcher).await;
        if event.contains(r#""type":"presence""#) && event.contains(r#""name":"ann""#) {
            break;
        }
    }
    let mut ben = raw_client(&format!("{}/b?name=ben", server.url())).await;
    let mut bea = raw_client(&format!("{}/b?name=bea", server.url())).await;
    server.wait_connections(4).await;
    let port = server.port.to_string();
    let mut term = Term::spawn(&[
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--name",
        "erin",
        "--channel",
        "a",
    ]);
    term.wait_for("joining #a", |rows, _| {
        rows.iter().any(|r| r == "joined #a (3 online)")
    })
    .await;
    term.wait_prompt("erin #a> ").await;
    term.type_keys("to a\r").await;
    assert_eq!(next_text(&mut ann).await, "to a");

    // One channel: no tag.
    ann.send(Message::text("hi erin")).await.unwrap();
    term.wait_for("the untagged message", |rows, _| {
        rows.iter()
            .any(|r| r.ends_with("] ann: hi erin") && !r.contains("[#a]"))
    })
    .await;

    term.type_keys("/join b\r").await;
    term.wait_for("joining #b", |rows, _| {
        rows.iter().any(|r| r == "joined #b (3 online)")
    })
    .await;
    term.wait_prompt("erin #b> ").await;
    term.type_keys("//slash for b\r").await;
    assert_eq!(next_text(&mut ben).await, "/slash for b");
    assert_eq!(next_text(&mut bea).await, "/slash for b");

    // Two channels: tagged.
    ann.send(Message::text("tagged now")).await.unwrap();
    term.wait_for("the tagged message", |rows, _| {
        rows.iter().any(|r| r.ends_with("] [#a] ann: tagged now"))
    })
    .await;

    // walt, there before erin, is named by the list erin asked for on
    // joining; carol (v1), who joins after, by presence, and by the list
    // `/who` asks for; ann only counted (the server names no plain client
    // in its list, and the list replaces what presence said).
    let _carol = v1_client(&format!("{}/a?name=carol", server.url())).await;
    term.wait_for("carol's arrival", |rows, _| {
        rows.iter().any(|r| r == "[#a] * carol joined (4 online)")
    })
    .await;
    term.type_keys("/switch a\r").await;
    term.wait_prompt("erin #a> ").await;
    term.type_keys("/who\r").await;
    term.wait_for("the members of #a", |rows, _| {
        rows.iter()
            .any(|r| r.starts_with("#a: 4 online: carol, erin (you), walt, and 1 more unnamed"))
    })
    .await;
    term.type_keys("back in a\r").await;
    assert_eq!(next_text(&mut ann).await, "back in a");

    term.type_keys("/leave b\r").await;
    term.wait_for("leaving #b", |rows, _| rows.iter().any(|r| r == "left #b"))
        .await;
    term.wait_prompt("erin #a> ").await;
    // What #b gets now does not reach erin: bea sees ben's message, and
    // ann's, published after it, reaches erin untagged.
    ben.send(Message::text("not for erin")).await.unwrap();
    assert_eq!(next_text(&mut bea).await, "not for erin");
    ann.send(Message::text("after leaving")).await.unwrap();
    let rows = term
        .wait_for("the message after /leave", |rows, _| {
            rows.iter()
                .any(|r| r.ends_with("] ann: after leaving") && !r.contains("[#a]"))
        })
        .await;
    assert!(
        !rows.iter().any(|r| r.contains("not for erin")),
        "{rows:#?}"
    );

    term.type_keys("/frob\r").await;
    term.wait_for("the hint", |rows, _| {
        rows.iter()
            .any(|r| r == "error: unknown command /frob: /help lists them; //text sends /text")
    })
    .await;
    term.type_keys("/quit\r").await;
    let st = term.wait_exit().await;
    assert!(st.success(), "/quit exit status {st:?}");
    term.assert_termios_restored();
}

/// `/who` names who was in the channel before this client joined (the
/// server's `members` answer), not the plain guest, and `/who NAME` asks
/// about a channel not joined.
#[tokio::test]
async fn who_names_members_who_were_there_first() {
    let server = Server::start().await;
    let mut dora = v1_client(&format!("{}/a?name=dora", server.url())).await;
    assert!(next_text(&mut dora).await.contains(r#""type":"welcome""#));
    let mut gil = raw_client(&format!("{}/a?name=gil", server.url())).await;
    // gil's message reaching dora: both are in #a.
    gil.send(Message::text("gil here")).await.unwrap();
    loop {
        if next_text(&mut dora).await.contains("gil here") {
            break;
        }
    }
    let mut bert = v1_client(&format!("{}/b?name=bert", server.url())).await;
    assert!(next_text(&mut bert).await.contains(r#""type":"welcome""#));
    server.wait_connections(3).await;
    let port = server.port.to_string();
    let mut term = Term::spawn(&[
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--name",
        "erin",
        "--channel",
        "a",
    ]);
    term.wait_for("joining #a", |rows, _| {
        rows.iter().any(|r| r == "joined #a (3 online)")
    })
    .await;
    term.wait_prompt("erin #a> ").await;
    // Nothing happened in #a since erin joined: dora's name comes from the
    // server's list.
    term.type_keys("/who\r").await;
    term.wait_for("the members of #a", |rows, _| {
        rows.iter().any(|r| {
            r == "#a: 3 online: dora, erin (you), and 1 more unnamed (plain clients, or too many to name)"
        })
    })
    .await;
    term.type_keys("/who b\r").await;
    term.wait_for("the members of #b", |rows, _| {
        rows.iter().any(|r| r == "#b: 1 online: bert")
    })
    .await;
    term.type_keys("/quit\r").await;
    let st = term.wait_exit().await;
    assert!(st.success(), "/quit exit status {st:?}");
}

/// Without `--channel`, channel commands say how to get them and send
/// nothing; `//text` still sends `/text`.
#[tokio::test]
async fn channel_commands_need_channel() {
    let server = Server::start().await;
    let mut peer = raw_client(&server.url()).await;
    server.wait_connections(1).await;
    let port = server.port.to_string();
    let mut term = Term::spawn(&["--host", "127.0.0.1", "--port", &port, "--name", "gus"]);
    term.wait_prompt("gus> ").await;
    term.type_keys("/join a\r").await;
    term.wait_for("the hint", |rows, _| {
        rows.iter()
            .any(|r| r == "error: start with --channel to use channels")
    })
    .await;
    term.type_keys("//hi\r").await;
    assert_eq!(next_text(&mut peer).await, "/hi");
    term.type_keys("\x04").await;
    let st = term.wait_exit().await;
    assert!(st.success(), "Ctrl+D exit status {st:?}");
}
