//! The runner: one thread per connector, a lock on the state directory, and a clean stop.
//!
//! A connector that fails is reported FAILED with its name and error, and the others go
//! on (as Kafka Connect keeps a worker's other tasks running): a sink whose disk is full
//! should not stop a source that still works. The runner ends when asked to stop
//! (SIGINT, SIGTERM: every connector finishes its step, makes what it acknowledged
//! durable and returns) or when no connector is left running.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::config::RunnerConfig;
use crate::connector::ConnectorContext;

/// How a run ended.
#[derive(Debug, Default)]
pub struct RunReport {
    /// The connectors that failed, with their errors.
    pub failed: Vec<(String, String)>,
}

/// A running connector's thread.
struct Running {
    name: String,
    thread: JoinHandle<anyhow::Result<()>>,
}

/// Runs every connector of `config` until `signalled` is set or none is left running.
pub fn run(config: &RunnerConfig, signalled: &AtomicBool) -> anyhow::Result<RunReport> {
    let _lock = lock_state_dir(config)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut running = Vec::with_capacity(config.connectors.len());
    for connector in &config.connectors {
        let ctx = ConnectorContext::new(
            connector.name.clone(),
            config.broker.clone(),
            config.state_dir.clone(),
            stop.clone(),
        );
        let mut task = connector.settings.build();
        tracing::info!(
            "connector {} ({}) starting",
            connector.name,
            connector.settings.kind()
        );
        let thread = std::thread::Builder::new()
            .name(format!("connect-{}", connector.name))
            .spawn(move || task.run(&ctx))
            .context("cannot start a connector's thread")?;
        running.push(Running {
            name: connector.name.clone(),
            thread,
        });
    }
    let mut report = RunReport::default();
    while !running.is_empty() && !signalled.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        let (ended, still): (Vec<_>, Vec<_>) =
            running.into_iter().partition(|r| r.thread.is_finished());
        running = still;
        for r in ended {
            finish(r, &mut report);
        }
    }
    if !running.is_empty() {
        tracing::info!("stopping {} connectors", running.len());
        stop.store(true, Ordering::SeqCst);
        for r in running {
            finish(r, &mut report);
        }
    }
    Ok(report)
}

/// Joins a connector's thread and reports how it ended.
fn finish(r: Running, report: &mut RunReport) {
    let error = match r.thread.join() {
        Ok(Ok(())) => {
            tracing::info!("connector {} stopped", r.name);
            return;
        }
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => "its thread panicked".to_string(),
    };
    tracing::error!("connector {} FAILED: {error}", r.name);
    report.failed.push((r.name, error));
}

/// Creates the state directory and takes its lock: two runners sharing one would both
/// write the connectors' state files.
fn lock_state_dir(config: &RunnerConfig) -> anyhow::Result<File> {
    let dir = &config.state_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    let path = dir.join("runner.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor this File owns; the lock goes with the File.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "the state directory {} is in use by another eventflow-connect",
            dir.display()
        );
    }
    Ok(lock)
}
