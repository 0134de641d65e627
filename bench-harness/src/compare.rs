//! `compare`: the same runs against several targets, alternating targets within each round
//! (A B A B …) so that drift of a shared machine falls on both sides, then a report.
//!
//! A running target that does not answer when the comparison starts is left out, and the
//! report says which and why: one unreachable broker should not cost the user the others'
//! figures. A run that fails once started still ends the comparison, since its target did
//! answer and the failure is a finding to look at, not to hide.
//!
//! A peer the harness starts (`redis`, `nats`, `kafka`) is started once before the runs: one
//! that does not come up (a Kafka that does not answer within its bound, a server that exits
//! at start) is left out and reported the same way. A peer's configuration that cannot work
//! (a `KAFKA_HOME` that is not a Kafka distribution) is an error before anything starts.
//!
//! The brokers the harness starts (`eventflow`, `redis`, `nats`, `kafka`) run fresh, one new
//! server with an empty directory per run, or warm, one server per side for the whole
//! comparison (`--brokers warm`); every side is treated the same way, and the report's
//! broker flags say which.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::broker::{self, LocalBroker};
use crate::ceiling::{Ceiling, Limits};
use crate::peers::kafka::KafkaHome;
use crate::peers::{self, PeerFsync, PeerKind, PeerServer};
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
    /// An `eventflowd` the harness starts with these flags and a fresh data dir.
    Spawned { binary: PathBuf, flags: String },
    /// A peer server the harness starts (`redis-server`, `nats-server -js`; for Kafka,
    /// `binary` is the distribution's directory).
    Peer { kind: PeerKind, binary: PathBuf },
}

/// The binaries and flags of the servers `compare` can start.
#[derive(Debug, Clone)]
pub struct Servers {
    pub eventflowd: PathBuf,
    pub eventflowd_flags: String,
    pub redis_server: PathBuf,
    pub nats_server: PathBuf,
    /// A Kafka distribution (`--kafka-home`, else `KAFKA_HOME`) for the `kafka` target.
    pub kafka_home: Option<PathBuf>,
}

impl Side {
    /// `eventflow`, `redis`, `nats` or `kafka` (started by the harness), or a URL.
    pub fn parse(spec: &str, servers: &Servers) -> Result<Side> {
        match spec {
            "eventflow" => Ok(Side::Spawned {
                binary: servers.eventflowd.clone(),
                flags: servers.eventflowd_flags.clone(),
            }),
            "redis" => Ok(Side::Peer {
                kind: PeerKind::Redis,
                binary: servers.redis_server.clone(),
            }),
            "nats" => Ok(Side::Peer {
                kind: PeerKind::Nats,
                binary: servers.nats_server.clone(),
            }),
            "kafka" => {
                let Some(home) = &servers.kafka_home else {
                    bail!(
                        "target `kafka` needs a Kafka distribution: set KAFKA_HOME or pass \
                         --kafka-home (bench-harness/fetch-kafka.sh fetches one), or name a \
                         running broker as kafka://HOST:PORT"
                    );
                };
                KafkaHome::open(home)?;
                Ok(Side::Peer {
                    kind: PeerKind::Kafka,
                    binary: home.clone(),
                })
            }
            _ => Ok(Side::Running(TargetUrl::parse(spec)?)),
        }
    }

    fn name(&self) -> String {
        match self {
            Side::Running(url) => url.to_string(),
            Side::Spawned { flags, .. } => format!("eventflowd {flags}"),
            Side::Peer { kind, .. } => kind.binary_name().to_string(),
        }
    }
}

/// A server the harness started for one side.
enum Started {
    Eventflowd(LocalBroker),
    Peer(PeerServer),
}

impl Started {
    fn start(c: &Comparison, side: &Side) -> Result<Option<Started>> {
        Ok(match side {
            Side::Running(_) => None,
            Side::Spawned { binary, flags } => Some(Started::Eventflowd(LocalBroker::start(
                binary, flags, &c.scratch,
            )?)),
            Side::Peer { kind, binary } => Some(Started::Peer(PeerServer::start(
                *kind,
                binary,
                &c.scratch,
                c.peer_fsync(),
            )?)),
        })
    }

    fn url(&self) -> TargetUrl {
        match self {
            Started::Eventflowd(b) => TargetUrl::Eventflow(b.addr.clone()),
            Started::Peer(p) => p.url(),
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Started::Eventflowd(b) => b.pid(),
            Started::Peer(p) => p.pid(),
        }
    }

    fn data_dir(&self) -> PathBuf {
        match self {
            Started::Eventflowd(b) => b.data_dir.clone(),
            Started::Peer(p) => p.dir.clone(),
        }
    }

    fn flags(&self) -> String {
        match self {
            Started::Eventflowd(b) => b.flags.clone(),
            Started::Peer(p) => p.flags.clone(),
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
    /// How often started peers fsync; `None` follows the eventflowd flags' `--fsync`.
    pub peer_fsync: Option<PeerFsync>,
    /// One started server per side for the whole comparison, instead of one per run.
    pub warm: bool,
    pub progress: bool,
}

impl Comparison {
    fn peer_fsync(&self) -> PeerFsync {
        self.peer_fsync.unwrap_or_else(|| {
            let flags = self.sides.iter().find_map(|s| match s {
                Side::Spawned { flags, .. } => Some(broker::eventflow_durability(flags)),
                _ => None,
            });
            flags.map_or(PeerFsync::Always, |f| PeerFsync::from_eventflowd(&f))
        })
    }
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
    let (sides, mut skipped) = answering(&c.sides);
    for s in &skipped {
        eprintln!("eventflow-bench: skipping {}: {}", s.target, s.reason);
    }
    if sides.is_empty() {
        bail!("no target answers, nothing to compare");
    }
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
    // Every started side's server now: warm, kept to the end; fresh, a started peer is
    // stopped again once it came up, and each run starts its own.
    let mut kept: Vec<&Side> = Vec::new();
    let mut warm: Vec<Option<Started>> = Vec::new();
    for side in sides {
        let server = match side {
            Side::Running(_) => None,
            Side::Spawned { .. } if !c.warm => None,
            Side::Spawned { .. } => Started::start(c, side)?,
            Side::Peer { .. } => match Started::start(c, side) {
                Ok(server) => server.filter(|_| c.warm),
                Err(e) => {
                    let s = Skipped {
                        target: side.name(),
                        reason: format!("{e:#}"),
                    };
                    eprintln!("eventflow-bench: skipping {}: {}", s.target, s.reason);
                    skipped.push(s);
                    continue;
                }
            },
        };
        kept.push(side);
        warm.push(server);
    }
    let sides = kept;
    if sides.is_empty() {
        bail!("no target answers, nothing to compare");
    }
    result::save_skipped(&out, &skipped)?;
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
            for (i, (side, durability)) in sides.iter().zip(&durabilities).enumerate() {
                done += 1;
                eprintln!(
                    "[{done}/{total}] round {round}: {} on {}",
                    planned.workload.label(planned.kind.as_str()),
                    side.name()
                );
                broker::settle();
                let server = warm.get(i).and_then(Option::as_ref);
                let mut r = run_once(c, side, server, durability, planned, round)?;
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
            Side::Spawned { .. } | Side::Peer { .. } => kept.push(side),
        }
    }
    (kept, skipped)
}

fn durability_of(c: &Comparison, side: &Side) -> String {
    match side {
        Side::Spawned { flags, .. } => broker::eventflow_durability(flags),
        Side::Peer { kind, .. } => peers::durability(*kind, c.peer_fsync()),
        Side::Running(TargetUrl::Eventflow(_)) => c
            .eventflow_durability
            .clone()
            .unwrap_or_else(|| "eventflowd (flags not given: pass --eventflow-durability)".into()),
        Side::Running(TargetUrl::Kafka(_)) => c.kafka_durability.clone(),
        Side::Running(url @ (TargetUrl::Redis(_) | TargetUrl::Nats(_))) => {
            format!("{url}: started outside the harness, durability not stated")
        }
    }
}

fn run_once(
    c: &Comparison,
    side: &Side,
    warm: Option<&Started>,
    durability: &str,
    planned: &PlannedRun,
    round: u32,
) -> Result<RunResult> {
    if let Side::Running(url) = side {
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
        return run::run(planned.kind, &planned.workload, &ctx);
    }
    let fresh;
    let (server, lifetime) = match warm {
        Some(server) => (server, "warm: one server for every run"),
        None => {
            fresh = Started::start(c, side)?.expect("a started side");
            (&fresh, "fresh: a new server per run")
        }
    };
    let target = server.url().connect()?;
    let ctx = RunContext {
        target: target.as_ref(),
        broker_pid: server.pid(),
        durability: durability.to_string(),
        broker_flags: Some(format!("{} ({lifetime})", server.flags())),
        data_dir: Some(server.data_dir()),
        round,
        progress: c.progress,
    };
    // A fresh server gets a new port every run: name the side, not the address, so that the
    // report puts its rounds together.
    let mut r = run::run(planned.kind, &planned.workload, &ctx)?;
    r.target = side.name();
    Ok(r)
}
