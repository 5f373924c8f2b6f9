//! A progress line on stderr (only when stderr is a terminal): a bar while
//! subscribers connect, then live published/delivered counts and rates.
//!
//! It knows nothing of the run: it polls a function for a [`Snapshot`].

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    Connect,
    Publish,
    Drain,
    Close,
}

impl Phase {
    /// The phase stored as `phase as u8` (anything past the last: Close).
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Connect,
            1 => Self::Publish,
            2 => Self::Drain,
            _ => Self::Close,
        }
    }
}

/// What the display shows, polled four times a second.
pub(crate) struct Snapshot {
    pub(crate) phase: Phase,
    pub(crate) connected: u64,
    pub(crate) failed: u64,
    pub(crate) delivered: u64,
    pub(crate) published: u64,
}

/// The display's bar and the task that updates it.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts the display for `clients` subscribers, polling `probe`; does
    /// nothing unless `enabled` and stderr is a terminal.
    pub(crate) fn start(
        probe: impl Fn() -> Snapshot + Send + 'static,
        clients: u64,
        enabled: bool,
    ) -> Self {
        if !enabled || !std::io::stderr().is_terminal() {
            return Self {
                bar: None,
                task: None,
            };
        }
        let bar = ProgressBar::new(clients).with_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] connecting [{bar:40}] {pos}/{len} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        let b = bar.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut last: Option<(Instant, u64, u64)> = None;
            let mut styled = false;
            loop {
                tick.tick().await;
                let s = probe();
                if s.phase == Phase::Connect {
                    b.set_position(s.connected + s.failed);
                    if s.failed > 0 {
                        b.set_message(format!("{} failed", s.failed));
                    }
                    continue;
                }
                if !styled {
                    styled = true;
                    b.set_style(
                        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                            .expect("valid template"),
                    );
                }
                let now = Instant::now();
                let (pub_rate, del_rate) = match last {
                    Some((t, p, d)) => {
                        let dt = (now - t).as_secs_f64().max(1e-3);
                        (
                            s.published.saturating_sub(p) as f64 / dt,
                            s.delivered.saturating_sub(d) as f64 / dt,
                        )
                    }
                    None => (0.0, 0.0),
                };
                last = Some((now, s.published, s.delivered));
                let phase = match s.phase {
                    Phase::Publish => "publishing",
                    Phase::Drain => "draining",
                    Phase::Close => "closing",
                    Phase::Connect => "",
                };
                b.set_message(format!(
                    "{phase}: {} subscribers, published {} ({pub_rate:.0}/s), delivered {} ({del_rate:.0}/s)",
                    s.connected, s.published, s.delivered
                ));
                b.tick();
            }
        });
        Self {
            bar: Some(bar),
            task: Some(task),
        }
    }

    /// Stops and clears the display.
    pub(crate) fn finish(self) {
        if let Some(t) = self.task {
            t.abort();
        }
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}
