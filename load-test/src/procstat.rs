//! CPU time and memory of a process, read from Linux's `/proc` (no crate):
//! `utime + stime` from `/proc/PID/stat` and `VmRSS` / `VmHWM` from
//! `/proc/PID/status`. Used for `--server-pid` and for the tool's own CPU.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// Which process: a pid, or this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pid {
    Id(u32),
    Myself,
}

impl Pid {
    fn dir(self) -> PathBuf {
        match self {
            Pid::Id(p) => PathBuf::from(format!("/proc/{p}")),
            Pid::Myself => PathBuf::from("/proc/self"),
        }
    }
}

/// One reading.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) at: Instant,
    /// User + system CPU time, seconds.
    pub(crate) cpu_s: f64,
    /// The system (kernel) part of `cpu_s`, seconds.
    pub(crate) sys_s: f64,
    /// Resident memory now, KiB.
    pub(crate) rss_kib: u64,
    /// Peak resident memory so far (high-water mark), KiB.
    pub(crate) hwm_kib: u64,
}

/// Clock ticks per second (`getconf CLK_TCK`, asked once; 100 if that fails).
fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|&t| t > 0.0)
            .unwrap_or(100.0)
    })
}

/// Reads the process's CPU time and memory now.
pub(crate) fn sample(pid: Pid) -> Result<Sample> {
    let dir = pid.dir();
    let stat = std::fs::read_to_string(dir.join("stat"))
        .with_context(|| format!("read {}/stat", dir.display()))?;
    let status = std::fs::read_to_string(dir.join("status"))
        .with_context(|| format!("read {}/status", dir.display()))?;
    let (user, sys) = cpu_ticks(&stat).with_context(|| format!("parse {}/stat", dir.display()))?;
    Ok(Sample {
        at: Instant::now(),
        cpu_s: (user + sys) as f64 / clk_tck(),
        sys_s: sys as f64 / clk_tck(),
        rss_kib: status_kib(&status, "VmRSS").unwrap_or(0),
        hwm_kib: status_kib(&status, "VmHWM").unwrap_or(0),
    })
}

/// Checks that `pid` exists and can be read, before the run starts.
pub(crate) fn check(pid: u32) -> Result<()> {
    match sample(Pid::Id(pid)) {
        Ok(_) => Ok(()),
        Err(e) => bail!("--server-pid {pid}: {e:#}"),
    }
}

/// `(utime, stime)` (fields 14 and 15) of a `/proc/PID/stat` line. The command
/// name (field 2) is in parentheses and may contain spaces or `)`, so fields
/// are counted after the *last* `)`.
pub(crate) fn cpu_ticks(stat: &str) -> Result<(u64, u64)> {
    let rest = &stat[stat.rfind(')').context("no `)` after the command name")? + 1..];
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .context("too few fields")?
            .parse::<u64>()
            .with_context(|| format!("field {n} is not a number"))
    };
    Ok((field(14)?, field(15)?))
}

/// A `Key:   1234 kB` line of `/proc/PID/status`, in KiB.
pub(crate) fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// The server's resources over the run, in the summary and the JSON.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct ServerUsage {
    pub(crate) pid: u32,
    /// CPU seconds while subscribers connected (before -> idle).
    pub(crate) cpu_connect_s: f64,
    /// CPU seconds from publishing start to the end of the drain (idle -> end);
    /// in idle mode, while holding the connections.
    pub(crate) cpu_run_s: f64,
    /// `cpu_run_s` as a percentage of one core over that wall time.
    pub(crate) cpu_run_pct: f64,
    /// Share of `cpu_run_s` spent in the kernel (system time), percent:
    /// how much of the server's cost is socket I/O rather than its code.
    pub(crate) cpu_run_kernel_pct: f64,
    /// Wall time of that span.
    pub(crate) run_wall_s: f64,
    pub(crate) rss_before_kib: u64,
    /// After all subscribers connected, before publishing.
    pub(crate) rss_idle_kib: u64,
    /// At the end of the drain (before closing).
    pub(crate) rss_end_kib: u64,
    /// High-water mark (VmHWM) at the end: the peak over the process's life.
    pub(crate) rss_peak_kib: u64,
    /// After every connection closed and a pause (memory returned?).
    pub(crate) rss_after_close_kib: Option<u64>,
    /// (idle - before) / subscribers connected, bytes.
    pub(crate) rss_per_connection_b: f64,
}

impl ServerUsage {
    /// Figures from the samples taken before connecting, when idle, and at the end.
    pub(crate) fn from_samples(
        pid: u32,
        before: &Sample,
        idle: &Sample,
        end: &Sample,
        connections: u64,
    ) -> Self {
        let run_wall_s = end.at.saturating_duration_since(idle.at).as_secs_f64();
        let cpu_run_s = (end.cpu_s - idle.cpu_s).max(0.0);
        Self {
            pid,
            cpu_connect_s: (idle.cpu_s - before.cpu_s).max(0.0),
            cpu_run_s,
            cpu_run_pct: if run_wall_s > 0.0 {
                100.0 * cpu_run_s / run_wall_s
            } else {
                0.0
            },
            cpu_run_kernel_pct: if cpu_run_s > 0.0 {
                100.0 * (end.sys_s - idle.sys_s).max(0.0) / cpu_run_s
            } else {
                0.0
            },
            run_wall_s,
            rss_before_kib: before.rss_kib,
            rss_idle_kib: idle.rss_kib,
            rss_end_kib: end.rss_kib,
            rss_peak_kib: end.hwm_kib.max(end.rss_kib).max(idle.rss_kib),
            rss_after_close_kib: None,
            rss_per_connection_b: if connections == 0 {
                0.0
            } else {
                idle.rss_kib.saturating_sub(before.rss_kib) as f64 * 1024.0 / connections as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stat_fields_after_a_tricky_command_name() {
        // Field 2 contains spaces and a `)`; utime = 1234, stime = 56.
        let stat = "4242 (evil) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 3 0 77 1000 200 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(cpu_ticks(stat).unwrap(), (1234, 56));
        assert!(cpu_ticks("1 (x) S 1 2").is_err());
        assert!(cpu_ticks("no parens").is_err());
    }

    #[test]
    fn status_lines() {
        let status =
            "Name:\tbroadcast-serve\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t3\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(status_kib(status, "VmSwap"), None);
        assert_eq!(status_kib(status, "Vm"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let s = sample(Pid::Myself).unwrap();
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib, "{s:?}");
        assert!(s.cpu_s >= 0.0);
        assert!(check(u32::MAX).is_err());
    }

    #[test]
    fn usage_from_samples() {
        let t = Instant::now();
        let s = |secs: u64, cpu_s: f64, rss_kib: u64, hwm_kib: u64| Sample {
            sys_s: cpu_s / 2.0,
            at: t + Duration::from_secs(secs),
            cpu_s,
            rss_kib,
            hwm_kib,
        };
        let u = ServerUsage::from_samples(
            7,
            &s(0, 1.0, 10_000, 10_000),
            &s(5, 1.5, 25_000, 25_000),
            &s(15, 6.5, 30_000, 40_000),
            10_000,
        );
        assert_eq!(u.pid, 7);
        assert!((u.cpu_connect_s - 0.5).abs() < 1e-9);
        assert!((u.cpu_run_s - 5.0).abs() < 1e-9);
        assert!((u.cpu_run_pct - 50.0).abs() < 1e-9);
        // Half of each sample's CPU is system time: 2.5 s of the 5 s.
        assert!((u.cpu_run_kernel_pct - 50.0).abs() < 1e-9);
        assert!((u.run_wall_s - 10.0).abs() < 1e-9);
        assert_eq!(u.rss_peak_kib, 40_000);
        // 15,000 KiB over 10,000 connections = 1536 bytes each.
        assert!((u.rss_per_connection_b - 1536.0).abs() < 1e-9);
    }
}
