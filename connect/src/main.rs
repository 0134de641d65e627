//! `eventflow-connect CONFIG.toml`: runs the connectors of a config file until SIGINT or
//! SIGTERM (docs/CONNECT.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use eventflow_connect::config::RunnerConfig;
use eventflow_connect::runner;

/// Runs connectors: a file source follows a file into a topic, a file sink writes topics
/// to a file, a postgres-sink upserts records into a table, and a mirror copies topics to
/// or from a Kafka-protocol cluster.
#[derive(Parser, Debug)]
#[command(name = "eventflow-connect", version)]
struct Args {
    /// The config file (TOML): the broker, the state directory and the [[connector]] tables.
    config: PathBuf,
}

/// Set by SIGINT and SIGTERM.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match RunnerConfig::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("eventflow-connect: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    match runner::run(&config, &SIGNALLED) {
        Ok(report) if report.failed.is_empty() => ExitCode::SUCCESS,
        Ok(report) => {
            let names: Vec<&str> = report.failed.iter().map(|(n, _)| n.as_str()).collect();
            eprintln!("eventflow-connect: failed connectors: {}", names.join(", "));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("eventflow-connect: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
