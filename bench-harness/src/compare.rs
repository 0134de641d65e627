//! `compare`: the same runs against several targets, alternating targets within each round
//! (A B A B …) so that drift of a shared machine falls on both sides, then a report.
//!
//! A running target that does not answer when the comparison starts is left out, and the
//! report says which and why: one unreachable broker should not cost the user the others'
//! figures. A run that fails once started still ends the comparison, since its target did
//! answer and the failure is a finding to look at, not to hide.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::broker::{self, LocalBroker};
use crate::ceiling::{Ceiling, Limits};
use crate::plan::PlannedRun;
use crate::result::{self, RunResult, Skipped};
use crate::run::{self, RunContext};
use crate::target::TargetUrl;

/// Kafka's out-of-the-box durability (Apache Kafka 4.0 broker defaults).
pub const KAFKA_DEFAULT_DURABILITY: &str =
    "Kafka default: no fsync before the ack (log.flush.interval.messages and log.flush.interval.ms unset; the OS writes back)";

/// One side of a comparison.
#[derive(Debug, Clone)]
pub enum Side {
    /// A broker already running at this address.
    Running(TargetUrl),
    /// An `eventflowd` the harness starts for every run with these flags and a fresh data dir.
    Spawned { binary: PathBuf, flags: String },
}

impl Side {
    /// `eventflow` (spawned) or a URL.
    pub fn parse(spec: &str, binary: &Path, flags: &str) -> Result<Side> {
        if spec == "eventflow" {
            return Ok(Side::Spawned {
                binary: binary.to_path_buf(),
                flags: flags.to_string(),
            });
        }
        Ok(Side::Running(TargetUrl::parse(spec)?))
    }

    fn name(&self) -> String {
        match self {
            Side::Running(url) => url.to_string(),
            Side::Spawned { flags, .. } => format!("eventflowd {flags}"),
        }
    }
}

/// Settings of a comparison.
pub struct Comparison {
    pub name: String,
    pub sides: Vec<Side>,
    pub runs: Vec<PlannedRun>,
    pub rounds: u32,
    /// Durability of the running targets that are not spawned Eventflow brokers, in words.
    pub kafka_durability: String,
    pub eventflow_durability: Option<String>,
    /// PID of a running broker, for CPU and RSS (one running target only).
    pub broker_pid: Option<u32>,
    /// `bench-harness/results`: the report goes to `<results>/<name>/`.
    pub results_dir: PathBuf,
    /// Where spawned brokers keep their data; the ceilings are measured there too.
    pub scratch: PathBuf,
    /// Measure the machine's ceilings first (`eventflow-bench ceiling`) and attach them to
    /// every result.
    pub measure_ceiling: bool,
    pub progress: bool,
}

/// Runs the comparison and writes `results.json` and the report. Returns the report path.
pub fn compare(c: &Comparison) -> Result<PathBuf> {
    if c.sides.is_empty() {
        bail!("--targets names no target");
    }
    if c.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let out = c.results_dir.join(&c.name);
    let (sides, skipped) = answering(&c.sides);
    for s in &skipped {
        eprintln!("eventflow-bench: skipping {}: {}", s.target, s.reason);
    }
    if sides.is_empty() {
        bail!("no target answers, nothing to compare");
    }
    result::save_skipped(&out, &skipped)?;
    let ceiling = if c.measure_ceiling {
        eprintln!(
            "measuring the machine's ceilings in {}",
            c.scratch.display()
        );
        let ceiling = Ceiling::measure(&Limits::new(&c.scratch))?;
        eprintln!("{}", ceiling.table());
        Some(ceiling)
    } else {
        None
    };
    let durabilities: Vec<String> = sides.iter().map(|s| durability_of(c, s)).collect();
    let fsyncs: Vec<bool> = durabilities
        .iter()
        .map(|d| broker::fsyncs_before_ack(d))
        .collect();
    if fsyncs.iter().any(|&f| f != fsyncs[0]) {
        eprintln!(
            "eventflow-bench: the targets promise different durability; the report says so:\n  {}",
            durabilities.join("\n  ")
        );
    }
    let mut results: Vec<RunResult> = Vec::new();
    let total = c.runs.len() as u32 * c.rounds * sides.len() as u32;
    let mut done = 0;
    for planned in &c.runs {
        for round in 1..=c.rounds {
            for (side, durability) in sides.iter().zip(&durabilities) {
                done += 1;
                eprintln!(
                    "[{done}/{total}] round {round}: {} on {}",
                    planned.workload.label(planned.kind.as_str()),
                    side.name()
                );
                broker::settle();
                let mut r = run_once(c, side, durability, planned, round)?;
                r.ceiling.clone_from(&ceiling);
                eprintln!("{}", crate::report::terminal_summary(&r));
                results.push(r);
                // Saved after every run, so that an interrupted comparison keeps its data.
                result::save(&out.join("results.json"), &results)?;
            }
        }
    }
    crate::report::write_report_with(&out, &c.name, &results, &skipped)
}

/// The sides that answer, and a [`Skipped`] for each running target that does not (a
/// started `eventflowd` is the harness's own and is not probed).
fn answering(sides: &[Side]) -> (Vec<&Side>, Vec<Skipped>) {
    let mut kept = Vec::new();
    let mut skipped = Vec::new();
    for side in sides {
        match side {
            Side::Running(url) => match url.connect() {
                Ok(_) => kept.push(side),
                Err(e) => skipped.push(Skipped {
                    target: url.to_string(),
                    reason: format!("{e:#}"),
                }),
            },
            Side::Spawned { .. } => kept.push(side),
        }
    }
    (kept, skipped)
}

fn durability_of(c: &Comparison, side: &Side) -> String {
    match side {
        Side::Spawned { flags, .. } => broker::eventflow_durability(flags),
        Side::Running(TargetUrl::Eventflow(_)) => c
            .eventflow_durability
            .clone()
            .unwrap_or_else(|| "eventflowd (flags not given: pass --eventflow-durability)".into()),
        Side::Running(TargetUrl::Kafka(_)) => c.kafka_durability.clone(),
    }
}

fn run_once(
    c: &Comparison,
    side: &Side,
    durability: &str,
    planned: &PlannedRun,
    round: u32,
) -> Result<RunResult> {
    match side {
        Side::Running(url) => {
            let target = url.connect()?;
            let ctx = RunContext {
                target: target.as_ref(),
                broker_pid: c.broker_pid,
                durability: durability.to_string(),
                broker_flags: None,
                data_dir: None,
                round,
                progress: c.progress,
            };
            run::run(planned.kind, &planned.workload, &ctx)
        }
        Side::Spawned { binary, flags } => {
            let broker = LocalBroker::start(binary, flags, &c.scratch)?;
            let target = TargetUrl::Eventflow(broker.addr.clone()).connect()?;
            let ctx = RunContext {
                target: target.as_ref(),
                broker_pid: broker.pid(),
                durability: durability.to_string(),
                broker_flags: Some(flags.clone()),
                data_dir: Some(broker.data_dir.clone()),
                round,
                progress: c.progress,
            };
            // Every run gets a new broker on a new port: name the side, not the address,
            // so that the report puts its rounds together.
            let mut r = run::run(planned.kind, &planned.workload, &ctx)?;
            r.target = side.name();
            Ok(r)
        }
    }
}
