//! A progress line on stderr (only when stderr is a terminal): a bar while
//! subscribers connect, then live published/delivered counts and rates.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::run::{Probe, PHASE_CLOSE, PHASE_CONNECT, PHASE_DRAIN, PHASE_PUBLISH};

pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    pub(crate) fn start(probe: Probe, clients: u64, enabled: bool) -> Self {
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
                let s = probe.snapshot();
                if s.phase == PHASE_CONNECT {
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
                    PHASE_PUBLISH => "publishing",
                    PHASE_DRAIN => "draining",
                    PHASE_CLOSE => "closing",
                    _ => "",
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

    pub(crate) fn finish(self) {
        if let Some(t) = self.task {
            t.abort();
        }
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}
