//! Watching from outside the connections: samples of the server process
//! (`--server-pid`) and of this tool at the run's landmarks, and scrapes of
//! the server's /metrics page (`--metrics`), turned into report fields.

use tokio::time::sleep;

use crate::cli::Args;
use crate::procstat::{self, Pid, Sample, ServerUsage};
use crate::report::Report;
use crate::scrape::{self, Page, ServerMetrics};

/// The samples taken so far; each landmark fills its own.
pub(super) struct Observer {
    pid: Option<u32>,
    metrics_url: Option<String>,
    server_before: Option<Sample>,
    server_idle: Option<Sample>,
    server_end: Option<Sample>,
    tool_idle: Option<Sample>,
    tool_end: Option<Sample>,
    metrics_before: Option<Page>,
    server_metrics: Option<ServerMetrics>,
    metrics_error: Option<String>,
}

impl Observer {
    /// Before the first connection: samples the server.
    pub(super) fn before(args: &Args) -> Self {
        let mut o = Self {
            pid: args.server_pid,
            metrics_url: args.metrics.clone(),
            server_before: None,
            server_idle: None,
            server_end: None,
            tool_idle: None,
            tool_end: None,
            metrics_before: None,
            server_metrics: None,
            metrics_error: None,
        };
        o.server_before = o.sample_server();
        o
    }

    fn sample_server(&self) -> Option<Sample> {
        self.pid.and_then(|p| procstat::sample(Pid::Id(p)).ok())
    }

    /// Every subscriber connected (and `--settle` passed): samples both
    /// processes, scrapes /metrics.
    pub(super) async fn connected(&mut self) {
        self.server_idle = self.sample_server();
        self.tool_idle = procstat::sample(Pid::Myself).ok();
        if let Some(url) = &self.metrics_url {
            match scrape::scrape(url).await {
                Ok(page) => self.metrics_before = Some(page),
                Err(e) => self.metrics_error = Some(format!("{e:#}")),
            }
        }
    }

    /// Publishing and draining are over: samples both processes, scrapes
    /// /metrics again and keeps the difference.
    pub(super) async fn done(&mut self) {
        self.server_end = self.sample_server();
        self.tool_end = procstat::sample(Pid::Myself).ok();
        if let (Some(url), Some(before)) = (&self.metrics_url, &self.metrics_before) {
            match scrape::scrape(url).await {
                Ok(after) => {
                    self.server_metrics = Some(ServerMetrics::between(url, before, &after))
                }
                Err(e) => {
                    self.metrics_error.get_or_insert(format!("{e:#}"));
                }
            }
        }
    }

    /// Fills the report's server usage, tool CPU and metrics fields. With
    /// every server sample taken, first waits `--after-close` (the
    /// connections are closed) for a last server sample.
    pub(super) async fn finish(self, args: &Args, report: &mut Report) {
        if let (Some(pid), Some(b), Some(i), Some(e)) = (
            self.pid,
            &self.server_before,
            &self.server_idle,
            &self.server_end,
        ) {
            let mut usage = ServerUsage::from_samples(pid, b, i, e, report.clients_connected);
            sleep(args.after_close).await;
            if let Some(after) = self.sample_server() {
                usage.rss_after_close_kib = Some(after.rss_kib);
                // The high-water mark again, in case closing raised it.
                usage.rss_peak_kib = usage.rss_peak_kib.max(after.hwm_kib);
            }
            report.server = Some(usage);
        }
        if let (Some(a), Some(b)) = (self.tool_idle, self.tool_end) {
            let wall = b.at.saturating_duration_since(a.at).as_secs_f64();
            if wall > 0.0 {
                report.tool_cpu_run_pct = 100.0 * (b.cpu_s - a.cpu_s).max(0.0) / wall;
            }
        }
        report.server_metrics = self.server_metrics;
        report.metrics_error = self.metrics_error;
    }
}
