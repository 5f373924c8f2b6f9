//! Interactive mode through a real pseudo-terminal, its screen rendered by
//! vt100: incoming messages must not garble the line being typed.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt;
use portable_pty::{native_pty_system, CommandBuilder, PtySize};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{bin, next_text, raw_client, Server, EVENT_TIMEOUT};

const ROWS: u16 = 24;
const COLS: u16 = 100;

/// `broadcast-server connect ...` on a pty.
struct Term {
    parser: Arc<Mutex<vt100::Parser>>,
    writer: Arc<Mutex<Box<dyn Write + Send>>>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    master: Box<dyn portable_pty::MasterPty + Send>,
    /// The terminal settings before the client ran, as text.
    initial_termios: String,
}

impl Term {
    fn spawn(args: &[&str]) -> Term {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: ROWS,
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
            std::num::NonZeroU16::new(ROWS).unwrap(),
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

    fn type_keys(&self, keys: &str) {
        let mut w = self.writer.lock().unwrap();
        w.write_all(keys.as_bytes()).unwrap();
        w.flush().unwrap();
    }

    /// The screen's rows and the cursor's row.
    fn screen(&self) -> (Vec<String>, usize) {
        let parser = self.parser.lock().unwrap();
        let screen = parser.screen();
        let rows = screen
            .rows(0, COLS)
            .map(|r| r.trim_end().to_owned())
            .collect();
        (rows, usize::from(screen.cursor_position().0))
    }

    /// Waits until `ok(rows, cursor_row)` holds.
    async fn wait_for(&self, what: &str, ok: impl Fn(&[String], usize) -> bool) -> Vec<String> {
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
    term.type_keys("half a li");
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

    term.type_keys("ne\r");
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

    term.type_keys("\x04"); // Ctrl+D on an empty line
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
    term.type_keys("never sent");
    term.wait_prompt("fay> never sent").await;
    term.type_keys("\x03");
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
    term.type_keys("unsent");
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
