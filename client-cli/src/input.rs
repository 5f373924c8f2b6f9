//! Reading what the user types: rustyline in interactive mode, plain lines
//! from stdin otherwise. Each runs on its own thread (both block) and hands
//! lines to the async side over a bounded channel, which also holds stdin
//! back while the client is not connected.

use std::io::BufRead as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustyline::error::ReadlineError;
use tokio::sync::mpsc;

use crate::output::Printer;

/// What the user did.
#[derive(Debug)]
pub(crate) enum Input {
    /// A line to send.
    Line(String),
    /// A slash command typed in the line editor (see `slash::is_command`).
    Command(String, Handled),
    /// Ctrl+C, Ctrl+D, or the end of stdin: leave.
    Quit,
}

/// Dropped once a [`Input::Command`] is handled: the line editor waits for
/// that before it reads the prompt again, since the command may change it
/// (`/switch`).
#[derive(Debug)]
pub(crate) struct Handled {
    _done: std::sync::mpsc::Sender<()>,
}

/// How long the line editor waits for a command to be handled.
const COMMAND_WAIT: Duration = Duration::from_secs(2);

/// Lines queued between the reader thread and the connection.
pub(crate) const QUEUE: usize = 64;

/// Reads stdin line by line until its end.
pub(crate) fn spawn_plain(tx: mpsc::Sender<Input>) {
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match stdin.read_until(b'\n', &mut buf) {
                    Ok(0) => break,
                    Ok(_) => {
                        let line = strip_line_end(&buf);
                        if tx.blocking_send(Input::Line(line)).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        eprintln!("error: reading stdin: {e}");
                        break;
                    }
                }
            }
            let _ = tx.blocking_send(Input::Quit);
        });
    if spawned.is_err() {
        eprintln!("error: cannot start the stdin reader");
    }
}

/// One line of input without its `\n` or `\r\n`, invalid UTF-8 replaced.
pub(crate) fn strip_line_end(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    String::from_utf8_lossy(raw).into_owned()
}

/// Starts the line editor with prompt `prompt` (read again before each
/// line, so it can change) and returns its external printer.
pub(crate) fn spawn_editor(
    tx: mpsc::Sender<Input>,
    prompt: Arc<Mutex<String>>,
) -> Result<Printer, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Printer, String>>();
    std::thread::Builder::new()
        .name("editor".into())
        .spawn(move || {
            let config = rustyline::Config::builder()
                .auto_add_history(true)
                .max_history_size(1000)
                .map(rustyline::config::Builder::build);
            let editor = config.and_then(rustyline::DefaultEditor::with_config);
            let mut editor = match editor {
                Ok(e) => e,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            match editor.create_external_printer() {
                Ok(p) => {
                    let _ = ready_tx.send(Ok(Box::new(p)));
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            }
            loop {
                let p = prompt.lock().map(|p| p.clone()).unwrap_or_default();
                match editor.readline(&p) {
                    Ok(line) if crate::slash::is_command(&line) => {
                        let (done, handled) = std::sync::mpsc::channel();
                        let command = Input::Command(line, Handled { _done: done });
                        if tx.blocking_send(command).is_err() {
                            return;
                        }
                        let _ = handled.recv_timeout(COMMAND_WAIT);
                    }
                    Ok(line) => {
                        if tx.blocking_send(Input::Line(line)).is_err() {
                            return;
                        }
                    }
                    Err(ReadlineError::Interrupted | ReadlineError::Eof) => break,
                    Err(e) => {
                        eprintln!("error: reading the terminal: {e}");
                        break;
                    }
                }
            }
            let _ = tx.blocking_send(Input::Quit);
        })
        .map_err(|e| e.to_string())?;
    ready_rx
        .recv()
        .map_err(|_| "the line editor did not start".to_owned())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ends_are_stripped() {
        assert_eq!(strip_line_end(b"hi\n"), "hi");
        assert_eq!(strip_line_end(b"hi\r\n"), "hi");
        assert_eq!(strip_line_end(b"last"), "last");
        assert_eq!(strip_line_end(b"a\rb\n"), "a\rb");
        assert_eq!(strip_line_end(b"\xff\n"), "\u{fffd}");
    }
}
