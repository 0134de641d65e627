//! `eventflow-bench`: load generator for Eventflow and Kafka. See `--help` of each
//! subcommand, the README's harness section and `tuning/`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use eventflow_bench::broker;
use eventflow_bench::ceiling::{Ceiling, Limits};
use eventflow_bench::compare::{self, Comparison, Servers, Side};
use eventflow_bench::peers::PeerFsync;
use eventflow_bench::plan;
use eventflow_bench::report;
use eventflow_bench::result;
use eventflow_bench::run::{self, Kind, RunContext};
use eventflow_bench::sweep::{self, Sweep};
use eventflow_bench::target::TargetUrl;
use eventflow_bench::workload::Workload;

#[derive(Parser)]
#[command(
    name = "eventflow-bench",
    version,
    about = "Load generator for Eventflow and Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Producers only: acknowledged records/s and publish latency.
    Produce(RunArgs),
    /// Fill a backlog of --messages records, then measure consumers reading it.
    Consume(RunArgs),
    /// Producers and consumers at once: end-to-end latency from the send time in each record.
    E2e(RunArgs),
    /// The same runs against several targets, alternating, with a report and charts.
    Compare(CompareArgs),
    /// Vary knobs and broker flags from a TOML file against fresh eventflowd brokers.
    Sweep(SweepArgs),
    /// Redraw the report and charts from saved results.
    Report(ReportArgs),
    /// Measure this machine's ceilings: loopback TCP, page-cache write and read, O_DIRECT
    /// write and read, fdatasync latency (a few seconds; its files are removed).
    Ceiling(CeilingArgs),
    /// Check saved results against the performance targets in docs/PERFORMANCE.md
    /// (bench-harness/targets.sh runs the comparisons they read).
    Targets(TargetsArgs),
}

#[derive(Args)]
struct CeilingArgs {
    /// A directory on the filesystem to measure (the brokers' data directory's).
    #[arg(long, default_value = "target/bench-data")]
    dir: PathBuf,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// How long the loopback stream runs.
    #[arg(long, value_parser = eventflow_bench::workload::parse_duration, default_value = "1s")]
    loopback_time: std::time::Duration,
    /// MiB written and read back through the page cache.
    #[arg(long, default_value_t = 256)]
    cache_mib: u64,
    /// MiB written with O_DIRECT, then read back with O_DIRECT.
    #[arg(long, default_value_t = 128)]
    direct_mib: u64,
    /// Rounds of a 4 KiB append and fdatasync.
    #[arg(long, default_value_t = 300)]
    sync_rounds: u32,
}

#[derive(Args)]
struct RunArgs {
    /// eventflow://HOST:PORT or kafka://HOST:PORT.
    #[arg(long, default_value = "eventflow://127.0.0.1:9292")]
    target: String,
    #[command(flatten)]
    workload: Workload,
    /// Sample this broker process's CPU time and RSS from /proc.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// The broker's durability setting in words, for the result (e.g. "--fsync always").
    #[arg(long)]
    durability: Option<String>,
    /// Write the result (settings, machine, histograms) as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct CompareArgs {
    /// Results go to <results-dir>/<name>/.
    #[arg(long)]
    name: String,
    /// Comma-separated targets: `eventflow` (the harness starts eventflowd with
    /// --eventflowd-flags and a fresh data dir), `redis` (redis-server), `nats`
    /// (nats-server -js) and `kafka` (one KRaft node from --kafka-home), started the same
    /// way, or running brokers: eventflow://HOST:PORT, kafka://HOST:PORT, redis://HOST:PORT,
    /// nats://HOST:PORT.
    #[arg(long, value_delimiter = ',', required = true)]
    targets: Vec<String>,
    /// A plan file ([defaults] and [[run]] tables), or `default` for the built-in matrix.
    #[arg(long, default_value = "default")]
    plan: String,
    /// Rounds; each round runs every target once per workload.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// The eventflowd binary for the `eventflow` target (default: next to this binary).
    #[arg(long)]
    eventflowd: Option<PathBuf>,
    /// Flags for a started eventflowd.
    #[arg(long, default_value = "--fsync always", allow_hyphen_values = true)]
    eventflowd_flags: String,
    /// The redis-server for the `redis` target (PATH, then /usr/sbin).
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
    /// The nats-server for the `nats` target (PATH, then /usr/sbin).
    #[arg(long, default_value = "nats-server")]
    nats_server: PathBuf,
    /// A Kafka distribution for the `kafka` target (bench-harness/fetch-kafka.sh fetches
    /// one); default: the KAFKA_HOME environment variable. Its bin/kafka-storage.sh formats a
    /// fresh log directory and bin/kafka-server-start.sh runs the node.
    #[arg(long)]
    kafka_home: Option<PathBuf>,
    /// How often started peers fsync: always (Redis appendfsync always, Kafka
    /// log.flush.interval.messages=1), interval (Redis everysec; Kafka's default, no forced
    /// flush) or never (Redis no; Kafka's default); default: as --eventflowd-flags' --fsync.
    /// NATS 2.9 has no such setting (the report says so).
    #[arg(long, value_parser = PeerFsync::parse)]
    peer_fsync: Option<PeerFsync>,
    /// Started brokers: `fresh` (a new server and directory per run) or `warm` (one per
    /// target for the whole comparison).
    #[arg(long, default_value = "fresh", value_parser = ["fresh", "warm"])]
    brokers: String,
    /// Durability of kafka:// targets, in words, for the report.
    #[arg(long, default_value = compare::KAFKA_DEFAULT_DURABILITY)]
    kafka_durability: String,
    /// Durability of running eventflow:// targets, in words (e.g. "eventflowd --fsync always").
    #[arg(long)]
    eventflow_durability: Option<String>,
    /// PID of the one running (not started) broker, for CPU and RSS.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Parent directory of the results.
    #[arg(long, default_value = "bench-harness/results")]
    results_dir: PathBuf,
    /// Where started brokers keep their data (deleted after each run).
    #[arg(long, default_value = "target/bench-data")]
    scratch: PathBuf,
    /// Override the plan's knobs for every run: `--set duration=2s --set warmup=0s`.
    #[arg(long = "set", value_name = "KNOB=VALUE")]
    set: Vec<String>,
    /// Do not measure the machine's ceilings before the runs.
    #[arg(long)]
    no_ceiling: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct SweepArgs {
    /// The sweep file.
    file: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// The eventflowd binary (default: next to this binary).
    #[arg(long)]
    eventflowd: Option<PathBuf>,
    /// Where brokers keep their data (deleted after each point).
    #[arg(long, default_value = "target/bench-data")]
    scratch: PathBuf,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct ReportArgs {
    /// A results.json, or a directory holding one.
    results: PathBuf,
    /// Where to write report.md and the charts (default: next to the results).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Report title (default: the directory name).
    #[arg(long)]
    title: Option<String>,
}

#[derive(Args)]
struct TargetsArgs {
    /// results.json files, or directories holding one (what `compare` writes).
    #[arg(required = true)]
    results: Vec<PathBuf>,
    /// Also write the table to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Exit with status 1 when a goal that was measured is not met.
    #[arg(long)]
    strict: bool,
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eventflow-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    match Cli::parse().command {
        Command::Produce(args) => single(Kind::Produce, args),
        Command::Consume(args) => single(Kind::Consume, args),
        Command::E2e(args) => single(Kind::E2e, args),
        Command::Compare(args) => compare_cmd(args),
        Command::Sweep(args) => sweep_cmd(args),
        Command::Report(args) => report_cmd(args),
        Command::Ceiling(args) => ceiling_cmd(&args),
        Command::Targets(args) => targets_cmd(&args),
    }
}

fn single(kind: Kind, args: RunArgs) -> Result<()> {
    let url = TargetUrl::parse(&args.target)?;
    let target = url.connect()?;
    let durability = args.durability.unwrap_or_else(|| match url {
        TargetUrl::Kafka(_) => compare::KAFKA_DEFAULT_DURABILITY.to_string(),
        TargetUrl::Eventflow(_) | TargetUrl::Redis(_) | TargetUrl::Nats(_) => {
            "not stated (pass --durability)".to_string()
        }
    });
    let ctx = RunContext {
        target: target.as_ref(),
        broker_pid: args.broker_pid,
        durability,
        broker_flags: None,
        data_dir: None,
        round: 0,
        progress: !args.quiet,
    };
    let r = run::run(kind, &args.workload, &ctx)?;
    println!("{}", report::terminal_summary(&r));
    if let Some(path) = &args.json {
        result::save(path, std::slice::from_ref(&r))?;
        println!("result written to {}", path.display());
    }
    if r.missing > 0 || r.duplicates > 0 {
        bail!(
            "{} records missing and {} duplicated",
            r.missing,
            r.duplicates
        );
    }
    Ok(())
}

fn compare_cmd(args: CompareArgs) -> Result<()> {
    let servers = Servers {
        eventflowd: args
            .eventflowd
            .clone()
            .unwrap_or_else(broker::default_binary),
        eventflowd_flags: args.eventflowd_flags.clone(),
        redis_server: args.redis_server.clone(),
        nats_server: args.nats_server.clone(),
        kafka_home: args
            .kafka_home
            .clone()
            .or_else(|| std::env::var_os("KAFKA_HOME").map(PathBuf::from)),
    };
    let sides = args
        .targets
        .iter()
        .map(|t| Side::parse(t.trim(), &servers))
        .collect::<Result<Vec<_>>>()?;
    let mut runs = plan::load(&args.plan)?;
    for set in &args.set {
        let (key, value) = set
            .split_once('=')
            .with_context(|| format!("--set {set}: expected KNOB=VALUE"))?;
        for r in &mut runs {
            r.workload = override_knob(r.kind, &r.workload, key, value)?;
        }
    }
    let path = compare::compare(&Comparison {
        name: args.name,
        sides,
        runs,
        rounds: args.rounds,
        kafka_durability: args.kafka_durability,
        eventflow_durability: args.eventflow_durability,
        broker_pid: args.broker_pid,
        results_dir: args.results_dir,
        scratch: args.scratch,
        measure_ceiling: !args.no_ceiling,
        peer_fsync: Some(args.peer_fsync.unwrap_or_else(|| {
            PeerFsync::from_eventflowd(&broker::eventflow_durability(&args.eventflowd_flags))
        })),
        warm: args.brokers == "warm",
        progress: !args.quiet,
    })?;
    println!("report written to {}", path.display());
    Ok(())
}

/// A `kind` run's workload with one knob set from `KNOB=VALUE` text (TOML value syntax, bare
/// strings allowed: `duration=2s`).
fn override_knob(kind: Kind, w: &Workload, key: &str, value: &str) -> Result<Workload> {
    let mut table = toml::Table::try_from(w).context("workload as TOML")?;
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    table.insert(key.replace('-', "_"), parsed);
    let w = plan::workload_from(table).with_context(|| format!("--set {key}={value}"))?;
    w.validate(kind)?;
    Ok(w)
}

fn sweep_cmd(args: SweepArgs) -> Result<()> {
    let sweep = Sweep::load(&args.file)?;
    let binary = args.eventflowd.unwrap_or_else(broker::default_binary);
    std::fs::create_dir_all(&args.out)?;
    let path = sweep::run_sweep(&sweep, &binary, &args.out, &args.scratch, !args.quiet)?;
    println!("sweep written to {}", path.display());
    Ok(())
}

fn targets_cmd(args: &TargetsArgs) -> Result<()> {
    let mut results = Vec::new();
    for given in &args.results {
        results.extend(result::load(&results_path(given).0)?);
    }
    let checks = report::targets::check(&results);
    let table = report::targets::markdown(&checks);
    print!("{table}");
    if let Some(out) = &args.out {
        std::fs::write(out, &table).with_context(|| format!("writing {}", out.display()))?;
    }
    let missed = checks
        .iter()
        .filter(|c| c.verdict == report::targets::Verdict::NotMet)
        .count();
    if args.strict && missed > 0 {
        bail!("{missed} of the measured goals not met");
    }
    Ok(())
}

fn ceiling_cmd(args: &CeilingArgs) -> Result<()> {
    let limits = Limits {
        loopback_time: args.loopback_time,
        cache_bytes: args.cache_mib << 20,
        direct_bytes: args.direct_mib << 20,
        sync_rounds: args.sync_rounds,
        ..Limits::new(&args.dir)
    };
    let ceiling = Ceiling::measure(&limits)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&ceiling)?);
    } else {
        print!("{}", ceiling.table());
    }
    Ok(())
}

/// A results.json and its directory, from either.
fn results_path(given: &Path) -> (PathBuf, PathBuf) {
    if given.is_dir() {
        (given.join("results.json"), given.to_path_buf())
    } else {
        let dir = given
            .parent()
            .map_or_else(|| PathBuf::from("."), PathBuf::from);
        (given.to_path_buf(), dir)
    }
}

fn report_cmd(args: ReportArgs) -> Result<()> {
    let (json, dir) = results_path(&args.results);
    let results = result::load(&json)?;
    let skipped = result::load_skipped(&dir)?;
    let out = args.out.unwrap_or(dir);
    let title = args.title.unwrap_or_else(|| {
        out.file_name()
            .map_or_else(|| "results".into(), |n| n.to_string_lossy().into_owned())
    });
    let path = report::write_report_with(&out, &title, &results, &skipped)?;
    println!("report written to {}", path.display());
    Ok(())
}
