//! load-test: drives simulated WebSocket clients against a broadcast server.
//!
//! Many subscribers (read only) and a few publishers; publishers send binary
//! payloads carrying their id, a sequence number and a send timestamp, and
//! every subscriber accounts latency, loss, duplicates and reordering. See
//! `load-test --help` and `run.rs` for how latency is measured.

mod api;
mod cli;
mod conn;
mod payload;
mod plot;
mod procstat;
mod progress;
mod rawws;
mod report;
mod run;
mod runinfo;
mod scrape;
mod series;
mod tracker;
mod v1;
mod window;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

fn main() -> ExitCode {
    let started = std::time::SystemTime::now();
    let args = cli::Args::parse();
    if let Err(msg) = args.validate() {
        cli::Args::command()
            .error(clap::error::ErrorKind::ArgumentConflict, msg)
            .exit();
    }
    // Subscribers: one worker per core. Publishers: one thread of their own;
    // flooders another (idle unless --flooders).
    let one_thread = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
    };
    let runtimes = tokio::runtime::Builder::new_multi_thread()
        .thread_name("subscribers")
        .enable_all()
        .build()
        .and_then(|subs| Ok((subs, one_thread("publishers")?, one_thread("flooders")?)));
    let (rt, pub_rt, flood_rt) = match runtimes {
        Ok(r) => r,
        Err(e) => {
            eprintln!("load-test: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = args.json.clone();
    let html = args.report.clone();
    let handles = (pub_rt.handle().clone(), flood_rt.handle().clone());
    let mut report = match rt.block_on(run::run(args, handles.0, handles.1)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("load-test: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // Tasks still closing connections are dropped with the runtime.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    report.run = runinfo::RunInfo::collect(
        started,
        std::env::args_os().map(|a| a.to_string_lossy().into_owned()),
    );
    pub_rt.shutdown_timeout(std::time::Duration::from_secs(1));
    flood_rt.shutdown_timeout(std::time::Duration::from_secs(1));
    print!("{}", report.table());
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report).expect("report serializes");
        if let Err(e) = std::fs::write(&path, text + "\n") {
            eprintln!("load-test: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if let Some(path) = html {
        if let Err(e) = plot::write(&report, &path) {
            eprintln!("load-test: cannot write the report: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    if report.passed {
        ExitCode::SUCCESS
    } else {
        for f in &report.failures {
            eprintln!("load-test: FAIL: {f}");
        }
        ExitCode::FAILURE
    }
}
