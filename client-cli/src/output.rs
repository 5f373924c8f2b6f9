//! Where lines go. Plain mode: messages and presence on stdout (one per
//! line, for logs and pipes), status and errors on stderr. Interactive mode:
//! everything through rustyline's external printer, which prints above the
//! prompt and redraws the line being typed.

use std::io::Write as _;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Local;
use tokio::sync::Notify;

use crate::render::Render;

/// A boxed rustyline external printer.
pub(crate) type Printer = Box<dyn rustyline::ExternalPrinter + Send>;

enum Job {
    Line(String),
    Flush(std_mpsc::Sender<()>),
}

/// The client's output.
pub(crate) struct Out {
    pub(crate) render: Render<Local>,
    interactive: bool,
    /// The printer thread, once the line editor runs.
    printer: Mutex<Option<std_mpsc::Sender<Job>>>,
    /// Notified when stdout cannot be written any more (a closed pipe).
    pub(crate) stdout_gone: Arc<Notify>,
    /// Terminal settings from before the line editor started.
    #[cfg(unix)]
    saved_termios: Option<nix::sys::termios::Termios>,
}

impl Out {
    pub(crate) fn new(interactive: bool, colour: bool) -> Self {
        Self {
            render: Render { tz: Local, colour },
            interactive,
            printer: Mutex::new(None),
            stdout_gone: Arc::new(Notify::new()),
            #[cfg(unix)]
            saved_termios: if interactive {
                nix::sys::termios::tcgetattr(std::io::stdin()).ok()
            } else {
                None
            },
        }
    }

    /// Sends every later line through `printer` (on its own thread: the
    /// printer may block until the editor's loop takes the line).
    pub(crate) fn attach(&self, mut printer: Printer) {
        let (tx, rx) = std_mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("printer".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Line(line) => {
                            if printer.print(format!("{line}\n")).is_err() {
                                println!("{line}");
                            }
                        }
                        Job::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            });
        if spawned.is_ok() {
            *self.lock() = Some(tx);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<std_mpsc::Sender<Job>>> {
        self.printer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn to_printer(&self, line: String) -> Result<(), String> {
        match self.lock().as_ref() {
            Some(tx) => tx.send(Job::Line(line)).map_err(|e| match e.0 {
                Job::Line(l) => l,
                Job::Flush(_) => String::new(),
            }),
            None => Err(line),
        }
    }

    /// A message or presence line: the transcript.
    pub(crate) fn chat(&self, line: String) {
        if let Err(line) = self.to_printer(line) {
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                self.stdout_gone.notify_one();
            }
        }
    }

    /// A status line (connected, closed, reconnecting).
    pub(crate) fn status(&self, text: &str) {
        let line = self.render.status(text);
        if self.interactive {
            self.chat(line);
        } else {
            eprintln!("{line}");
        }
    }

    /// An error that does not end the client.
    pub(crate) fn error(&self, text: &str) {
        let line = self.render.error(text);
        if self.interactive {
            self.chat(line);
        } else {
            eprintln!("{line}");
        }
    }

    /// A command the server refused (a `broadcast.v2` `error`): where errors go.
    pub(crate) fn refusal(&self, code: &str, text: &str) {
        let line = self.render.refusal(code, text);
        if self.interactive {
            self.chat(line);
        } else {
            eprintln!("{line}");
        }
    }

    /// Called right before the process exits: lets queued lines out, puts the
    /// terminal back as it was if the line editor may still be reading, and
    /// prints `last` (an error) on stderr.
    pub(crate) fn finish(&self, editor_running: bool, last: Option<&str>) {
        if let Some(tx) = self.lock().take() {
            let (done_tx, done_rx) = std_mpsc::channel();
            if tx.send(Job::Flush(done_tx)).is_ok() {
                let _ = done_rx.recv_timeout(Duration::from_millis(300));
            }
        }
        if editor_running {
            self.restore_terminal();
        }
        if let Some(last) = last {
            eprintln!("{}", self.render.error(last));
        }
    }

    fn restore_terminal(&self) {
        #[cfg(unix)]
        if let Some(saved) = &self.saved_termios {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSADRAIN,
                saved,
            );
        }
        // Bracketed paste off, and a fresh line instead of the prompt.
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\x1b[?2004l\r\x1b[K");
        let _ = out.flush();
    }
}
