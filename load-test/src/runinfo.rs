//! How a run was made, recorded in the JSON (`run`), the HTML report's
//! first table and one line of the summary, so a result can be
//! reproduced: when it started, the command line, this tool's version
//! and git revision (from `build.rs`), and the machine.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The run's provenance.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct RunInfo {
    /// Start time, UTC, RFC 3339 (`2026-12-01T14:51:18Z`).
    pub(crate) started_at: String,
    /// The command line: argv joined by spaces, each argument shell-quoted
    /// where it needs it, so it can be pasted back into a shell.
    pub(crate) command: String,
    /// This tool's version (`CARGO_PKG_VERSION`).
    pub(crate) version: String,
    /// `git rev-parse --short=12 HEAD` at build time, `-dirty` when the tree
    /// had changes; `unknown` when built without git or a repository.
    pub(crate) git_revision: String,
    /// Logical cores (`std::thread::available_parallelism`; 0: unknown).
    pub(crate) cores: u64,
    /// `/proc/sys/kernel/osrelease` (`unknown` where it cannot be read).
    pub(crate) kernel: String,
}

impl RunInfo {
    /// This process's run, started at `started` with arguments `argv`.
    pub(crate) fn collect(started: SystemTime, argv: impl IntoIterator<Item = String>) -> Self {
        Self {
            started_at: rfc3339(started),
            command: command_line(argv),
            version: env!("CARGO_PKG_VERSION").to_string(),
            git_revision: env!("LOAD_TEST_GIT_REV").to_string(),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get() as u64),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "unknown".to_string()),
        }
    }

    /// `load-test 0.1.0 (e8f075d1a2b3)`.
    pub(crate) fn tool(&self) -> String {
        format!("load-test {} ({})", self.version, self.git_revision)
    }

    /// `2 cores, kernel 6.1.0-18-amd64`.
    pub(crate) fn machine(&self) -> String {
        let cores = match self.cores {
            0 => "? cores".to_string(),
            1 => "1 core".to_string(),
            n => format!("{n} cores"),
        };
        format!("{cores}, kernel {}", self.kernel)
    }
}

/// The arguments joined by spaces, each quoted for a POSIX shell if needed.
pub(crate) fn command_line(argv: impl IntoIterator<Item = String>) -> String {
    argv.into_iter()
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `arg` as a POSIX shell reads it back: unchanged when it has only
/// characters no shell treats specially, otherwise in single quotes (a
/// single quote inside becomes `'\''`).
pub(crate) fn shell_quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        return arg.to_string();
    }
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// `t` as UTC RFC 3339 to the second; the epoch for times before it.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`: eras of 400 years, years starting in March so the
/// leap day comes last).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn plain_arguments_stay_and_others_are_single_quoted() {
        assert_eq!(shell_quote("--url"), "--url");
        assert_eq!(
            shell_quote("ws://127.0.0.1:8080/ws"),
            "ws://127.0.0.1:8080/ws"
        );
        assert_eq!(shell_quote("0.5"), "0.5");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("ws://h/ws?a=1&b=2"), "'ws://h/ws?a=1&b=2'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(shell_quote("*"), "'*'");
        assert_eq!(shell_quote("é"), "'é'");
    }

    #[test]
    fn command_line_reads_back_as_the_same_arguments() {
        let argv = [
            "target/release/load-test",
            "--url",
            "ws://h/ws?x=1&y=2",
            "--key",
            "a 'b'",
            "",
        ];
        let line = command_line(argv.iter().map(|s| s.to_string()));
        assert_eq!(
            line,
            r"target/release/load-test --url 'ws://h/ws?x=1&y=2' --key 'a '\''b'\''' ''"
        );
        // A real shell splits it back into the same argv.
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("printf '%s\\n' {line}")])
            .output()
            .expect("sh runs");
        let back = String::from_utf8(out.stdout).unwrap();
        assert_eq!(back, argv.join("\n") + "\n");
    }

    #[test]
    fn rfc3339_utc() {
        let at = |s: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z"); // a 400-year leap day
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(at(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z"); // 2100 is no leap year
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn collect_describes_this_build_and_machine() {
        let r = RunInfo::collect(
            UNIX_EPOCH + Duration::from_secs(86_400),
            ["load-test".to_string(), "--idle".to_string()],
        );
        assert_eq!(r.started_at, "1970-01-02T00:00:00Z");
        assert_eq!(r.command, "load-test --idle");
        assert_eq!(r.version, env!("CARGO_PKG_VERSION"));
        assert!(r.cores >= 1, "{r:?}");
        assert!(!r.kernel.is_empty() && !r.kernel.contains('\n'), "{r:?}");
        // 12 hex digits, maybe -dirty, or unknown without git.
        let rev = r.git_revision.trim_end_matches("-dirty");
        assert!(
            rev == "unknown" || (rev.len() == 12 && rev.chars().all(|c| c.is_ascii_hexdigit())),
            "{r:?}"
        );
        assert_eq!(
            r.tool(),
            format!("load-test {} ({})", r.version, r.git_revision)
        );
        assert!(r.machine().contains("kernel "), "{}", r.machine());
    }
}
