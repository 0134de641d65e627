//! The harness against a real broker on loopback: bounded produce, consume and end-to-end
//! runs whose counts must add up, and the command line's JSON, report and compare outputs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use eventflow::config::BrokerConfig;
use eventflow::server::{self, BrokerHandle};
use eventflow_bench::result::{self, series};
use eventflow_bench::run::{self, Kind, RunContext};
use eventflow_bench::target::TargetUrl;
use eventflow_bench::workload::{Backlog, Workload};

/// An in-process broker with a temporary data directory.
struct Broker {
    handle: Option<BrokerHandle>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        Broker::start_with(|_| {})
    }

    /// A broker with `change` made to its default config.
    fn start_with(change: impl FnOnce(&mut BrokerConfig)) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut config = BrokerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
        config.pin = false;
        config.direct_port_base = None;
        change(&mut config);
        let handle = server::start(config).expect("broker starts");
        Broker {
            addr: handle.addr(),
            handle: Some(handle),
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("eventflow://{}", self.addr)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // While a failed assertion unwinds, waking compio's shard threads aborts the whole
        // test binary (compio's scheduler guards against panics that way) and hides the
        // failure message: leave the broker running then; the process ends soon anyway.
        if std::thread::panicking() {
            std::mem::forget(self.handle.take());
            return;
        }
        if let Some(h) = self.handle.take() {
            let _ = h.shutdown();
        }
    }
}

fn workload(topic: &str) -> Workload {
    Workload {
        topic: topic.into(),
        create_topic: true,
        partitions: 2,
        ..Workload::default()
    }
}

fn run(broker: &Broker, kind: Kind, w: &Workload) -> eventflow_bench::result::RunResult {
    let target = TargetUrl::parse(&broker.url()).unwrap().connect().unwrap();
    let ctx = RunContext {
        target: target.as_ref(),
        broker_pid: Some(std::process::id()),
        durability: "eventflowd --fsync always".into(),
        broker_flags: None,
        data_dir: None,
        round: 0,
        progress: false,
    };
    run::run(kind, w, &ctx).expect("run succeeds")
}

#[test]
fn produce_sends_exactly_the_budget_and_the_broker_stores_it() {
    let broker = Broker::start();
    let w = Workload {
        messages: Some(20_000),
        producers: 2,
        ..workload("produce")
    };
    let r = run(&broker, Kind::Produce, &w);
    let produced = r.produced.unwrap();
    assert_eq!(produced.messages, 20_000);
    assert_eq!(produced.bytes, 20_000 * 100);
    assert_eq!(r.errors, 0);
    assert_eq!(r.latency[series::PUBLISH].count, 20_000);
    // Max rate: no schedule, so no intended-time series.
    assert!(!r.latency.contains_key(series::PUBLISH_DELAY));
    assert!(r.broker.is_some());
    let target = TargetUrl::parse(&broker.url()).unwrap().connect().unwrap();
    let stored: i64 = target
        .watermarks(&w)
        .unwrap()
        .iter()
        .map(|(_, high)| high)
        .sum();
    assert_eq!(stored, 20_000);

    // What the produce run left is a backlog for `consume --backlog existing`.
    let read = Workload {
        create_topic: false,
        backlog: Backlog::Existing,
        consumers: 2,
        ..w.clone()
    };
    let r = run(&broker, Kind::Consume, &read);
    assert_eq!(r.consumed.unwrap().messages, 20_000);
    assert_eq!((r.missing, r.errors), (0, 0));
    // Asking for more than is stored reads what is there and reports the rest missing.
    let more = Workload {
        messages: Some(25_000),
        ..read
    };
    let r = run(&broker, Kind::Consume, &more);
    assert_eq!(r.consumed.unwrap().messages, 20_000);
    assert_eq!(r.missing, 0, "at most what is stored is wanted");
}

#[test]
fn consume_reads_the_whole_backlog_once() {
    let broker = Broker::start();
    let w = Workload {
        messages: Some(30_000),
        consumers: 2,
        message_size: 64,
        ..workload("consume")
    };
    let r = run(&broker, Kind::Consume, &w);
    let consumed = r.consumed.unwrap();
    assert_eq!(consumed.messages, 30_000);
    assert_eq!(consumed.bytes, 30_000 * 64);
    assert_eq!((r.missing, r.duplicates, r.errors), (0, 0, 0));
}

#[test]
fn e2e_follows_the_schedule_and_receives_every_record() {
    let broker = Broker::start();
    let w = Workload {
        rate: 4_000,
        duration: Some(Duration::from_secs(1)),
        warmup: Duration::from_millis(250),
        keys: eventflow_bench::workload::Keys::Seq,
        ..workload("e2e")
    };
    let r = run(&broker, Kind::E2e, &w);
    // Exactly the records due inside the one-second window count: 4,000.
    assert_eq!(r.produced.unwrap().messages, 4_000);
    assert_eq!(r.consumed.unwrap().messages, 4_000);
    assert_eq!((r.missing, r.duplicates, r.errors), (0, 0, 0));
    for s in [series::E2E, series::E2E_ACTUAL] {
        assert_eq!(r.latency[s].count, 4_000, "{s}");
    }
    for s in [
        series::PUBLISH,
        series::PUBLISH_INTENDED,
        series::PUBLISH_DELAY,
    ] {
        assert_eq!(r.latency[s].count, 4_000, "{s}");
    }
    // From the intended time is never shorter than from the actual send.
    assert!(r.latency[series::E2E].p50_us >= r.latency[series::E2E_ACTUAL].p50_us);
    let timeline_total: f64 = r.timeline.iter().map(|s| s.produced_per_s).sum();
    assert!(timeline_total > 0.0);
}

#[test]
fn bad_workloads_are_refused_before_sending() {
    let broker = Broker::start();
    let target = TargetUrl::parse(&broker.url()).unwrap().connect().unwrap();
    let ctx = RunContext {
        target: target.as_ref(),
        broker_pid: None,
        durability: String::new(),
        broker_flags: None,
        data_dir: None,
        round: 0,
        progress: false,
    };
    let missing_topic = Workload {
        topic: "absent".into(),
        ..Workload::default()
    };
    let err = format!(
        "{:#}",
        run::run(Kind::Produce, &missing_topic, &ctx).unwrap_err()
    );
    assert!(err.contains("absent"), "{err}");
    let tiny = Workload {
        message_size: 8,
        ..workload("tiny")
    };
    let err = format!("{:#}", run::run(Kind::Produce, &tiny, &ctx).unwrap_err());
    assert!(err.contains("at least 24"), "{err}");
}

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_eventflow-bench"))
}

fn output_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("eventflow-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_command_line_writes_json_and_reports() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("e2e/results.json");
    let stdout = output_ok(bench().args([
        "e2e",
        "--target",
        &broker.url(),
        "--topic",
        "cli",
        "--create-topic",
        "--rate",
        "2000",
        "--duration",
        "1s",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]));
    assert!(stdout.contains("e2e"), "{stdout}");
    let saved = result::load(&json).unwrap();
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].consumed.unwrap().messages, 2_000);
    output_ok(bench().args(["report", json.parent().unwrap().to_str().unwrap()]));
    let report = std::fs::read_to_string(dir.path().join("e2e/report.md")).unwrap();
    assert!(report.contains("e2e 100B"), "{report}");

    // Wrong flags are refused with a message, not a panic.
    let out = bench()
        .args(["produce", "--target", "http://x:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scheme"));
}

#[test]
fn an_eventflow_target_that_requires_authentication_is_driven_with_credentials() {
    let broker = Broker::start_with(|c| {
        c.auth.native.required = true;
        c.auth.authorizer = true;
        c.auth.bootstrap_user = Some(("bench".into(), "bench-password".into()));
        c.auth.superusers = vec!["bench".into()];
    });
    let produce = |login: bool| {
        let mut cmd = bench();
        cmd.args([
            "e2e",
            "--target",
            &broker.url(),
            "--topic",
            "secured",
            "--create-topic",
            "--rate",
            "1000",
            "--duration",
            "500ms",
            "--quiet",
        ])
        .env_remove("EVENTFLOW_BENCH_SASL_USER");
        if login {
            cmd.env("EVENTFLOW_BENCH_SASL_USER", "bench")
                .env("EVENTFLOW_BENCH_SASL_PASSWORD", "bench-password");
        }
        cmd
    };
    let out = produce(false).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("authentication required"), "{stderr}");
    let stdout = output_ok(&mut produce(true));
    assert!(stdout.contains("e2e"), "{stdout}");
}

const TINY_PLAN: &str = r#"
[defaults]
create_topic = true
partitions = 2
[[run]]
kind = "produce"
messages = 5000
[[run]]
kind = "e2e"
rate = 2000
duration = "500ms"
"#;

fn compare_in(dir: &Path, targets: &str, extra: &[&str]) -> PathBuf {
    compare_plan(
        dir,
        TINY_PLAN,
        targets,
        &[&["--rounds", "2"], extra].concat(),
    )
}

/// `compare --name tiny` of the plan `plan` into `dir`; returns its results directory.
fn compare_plan(dir: &Path, plan: &str, targets: &str, extra: &[&str]) -> PathBuf {
    let plan_text = plan;
    let plan = dir.join("plan.toml");
    std::fs::write(&plan, plan_text).unwrap();
    let mut cmd = bench();
    cmd.args([
        "compare",
        "--name",
        "tiny",
        "--targets",
        targets,
        "--plan",
        plan.to_str().unwrap(),
        "--quiet",
        "--results-dir",
        dir.to_str().unwrap(),
        "--scratch",
        dir.join("scratch").to_str().unwrap(),
    ]);
    cmd.args(extra);
    output_ok(&mut cmd);
    dir.join("tiny")
}

#[test]
fn compare_alternates_targets_and_writes_a_report() {
    let a = Broker::start();
    let b = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let out = compare_in(dir.path(), &format!("{},{}", a.url(), b.url()), &[]);
    let results = result::load(&out.join("results.json")).unwrap();
    // 2 runs × 2 rounds × 2 targets, alternating targets within each round.
    assert_eq!(results.len(), 8);
    let order: Vec<(u32, &str)> = results
        .iter()
        .take(4)
        .map(|r| (r.round, r.target.as_str()))
        .collect();
    assert_eq!(
        order,
        vec![
            (1, a.url().as_str()),
            (1, b.url().as_str()),
            (2, a.url().as_str()),
            (2, b.url().as_str())
        ]
    );
    assert!(results.iter().all(|r| r.missing == 0 && r.errors == 0));
    // The ceilings were measured first and every result carries them; the report gives
    // each row as a fraction of its ceiling.
    let ceiling = results[0]
        .ceiling
        .clone()
        .expect("compare measures the ceilings");
    assert!(results.iter().all(|r| r.ceiling.as_ref() == Some(&ceiling)));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## This machine's ceilings"), "{report}");
    // These brokers run the default `--log-writes direct`: their produce rows are read
    // against the O_DIRECT write ceiling (or loopback where it is lower), never the page
    // cache they do not write through.
    assert!(
        report.contains("% of O_DIRECT write") || report.contains("% of loopback"),
        "{report}"
    );
    assert!(!report.contains("% of page-cache write"), "{report}");
}

/// `targets` reads a comparison's results the way a user checks a machine: the goal whose
/// run is there is judged, the others say they were not measured, and `--strict` fails
/// only on a goal measured and missed.
#[test]
fn targets_judges_the_goals_a_comparison_measured() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let plan = r#"
[defaults]
create_topic = true
message_size = 100
[[run]]
kind = "consume"
partitions = 1
consumers = 1
messages = 20000
"#;
    let out = compare_plan(dir.path(), plan, &broker.url(), &["--rounds", "1"]);
    let table = dir.path().join("targets.md");
    let stdout = output_ok(bench().args([
        "targets",
        out.to_str().unwrap(),
        "--out",
        table.to_str().unwrap(),
    ]));
    assert_eq!(std::fs::read_to_string(&table).unwrap(), stdout);
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("| eventflow |"))
        .collect();
    assert_eq!(rows.len(), 5, "{stdout}");
    // 20,000 records are read far below 10 M records/s, against a ceiling of this run.
    let consume = rows
        .iter()
        .find(|r| r.contains("consume 100 B"))
        .expect("a consume row");
    assert!(
        consume.ends_with("| no |") && consume.contains("% of "),
        "{consume}"
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r.ends_with("| not measured |"))
            .count(),
        4,
        "{stdout}"
    );

    let strict = bench()
        .args(["targets", out.to_str().unwrap(), "--strict"])
        .output()
        .unwrap();
    assert!(!strict.status.success());
    let stderr = String::from_utf8_lossy(&strict.stderr);
    assert!(
        stderr.contains("1 of the measured goals not met"),
        "{stderr}"
    );

    // A directory without results is named, not a panic.
    let missing = bench()
        .args(["targets", dir.path().join("nothing").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("nothing"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

/// `ceiling` with small sizes: every figure positive, the JSON parses, no file left behind.
#[test]
fn ceiling_measures_every_figure_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let stdout = output_ok(bench().args([
        "ceiling",
        "--json",
        "--dir",
        data.to_str().unwrap(),
        "--loopback-time",
        "200ms",
        "--cache-mib",
        "8",
        "--direct-mib",
        "8",
        "--sync-rounds",
        "20",
    ]));
    let c: eventflow_bench::ceiling::Ceiling = serde_json::from_str(&stdout).unwrap();
    for (name, v) in [
        ("loopback", c.loopback_mb_per_s),
        ("page-cache write", c.page_cache_write_mb_per_s),
        ("page-cache read", c.page_cache_read_mb_per_s),
        ("O_DIRECT write", c.direct_write_mb_per_s),
        ("O_DIRECT read", c.direct_read_mb_per_s),
        ("fdatasync p50", c.fdatasync_p50_us),
        ("fdatasync p99", c.fdatasync_p99_us),
    ] {
        assert!(v.is_finite() && v > 0.0, "{name}: {v}");
    }
    assert!(c.fdatasync_p50_us <= c.fdatasync_p99_us);
    assert_ne!(c.filesystem, "unknown");
    let left: Vec<_> = std::fs::read_dir(&data).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    // Without --json: the table.
    let table = output_ok(bench().args([
        "ceiling",
        "--dir",
        data.to_str().unwrap(),
        "--loopback-time",
        "100ms",
        "--cache-mib",
        "4",
        "--direct-mib",
        "4",
        "--sync-rounds",
        "5",
    ]));
    assert!(table.contains("fdatasync after 4 KiB, p99"), "{table}");
}

/// A loopback port that nothing listens on (bound, then let go).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A target that does not answer is skipped with a line in the report; the others run.
#[test]
fn compare_skips_a_target_that_does_not_answer() {
    let a = Broker::start();
    let dead = format!("eventflow://127.0.0.1:{}", closed_port());
    let dir = tempfile::tempdir().unwrap();
    let out = compare_in(dir.path(), &format!("{dead},{}", a.url()), &[]);
    let results = result::load(&out.join("results.json")).unwrap();
    assert_eq!(results.len(), 4);
    assert!(results
        .iter()
        .all(|r| r.target == a.url() && r.missing == 0));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let line = format!("**Skipped:** `{dead}` did not answer");
    assert!(report.contains(&line), "{report}");
    assert!(report.contains("### produce"), "{report}");
    // Redrawn from the saved results, the report still says so.
    std::fs::remove_file(out.join("report.md")).unwrap();
    output_ok(bench().args(["report", out.to_str().unwrap()]));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains(&line), "{report}");

    // With no target answering there is nothing to compare: an error that says so.
    let plan = dir.path().join("plan.toml");
    let failed = bench()
        .args(["compare", "--name", "none", "--quiet", "--targets", &dead])
        .args(["--plan", plan.to_str().unwrap()])
        .args(["--results-dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("no target answers"));
}

/// Set to 1, a test that needs the workspace's `eventflowd` and finds it not built is
/// skipped instead of failing.
const SKIP_BROKER_TESTS: &str = "EVENTFLOW_BENCH_SKIP_BROKER_TESTS";

/// The workspace's own `eventflowd`: in the directory above this test binary's `deps/`,
/// where cargo puts the workspace's binaries. `cargo test --workspace` builds it before it
/// runs any test; `cargo test -p eventflow-bench` does not. Not built, the test fails
/// saying how to build it, unless [`SKIP_BROKER_TESTS`] is 1: then it prints that it is
/// skipped and this returns `None`.
fn eventflowd() -> Option<PathBuf> {
    let binary = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("eventflowd");
    if binary.exists() {
        return Some(binary);
    }
    if std::env::var(SKIP_BROKER_TESTS).as_deref() == Ok("1") {
        eprintln!(
            "skipped: {} not built (run cargo build --bin eventflowd)",
            binary.display()
        );
        return None;
    }
    panic!(
        "{} not built: run `cargo build --bin eventflowd` (`cargo test --workspace` builds \
         it too), or set {SKIP_BROKER_TESTS}=1 to skip the tests that need it",
        binary.display()
    );
}

/// `eventflow` as a target: the harness starts eventflowd itself, once per run, with a
/// fresh data directory. The binary is the workspace's own build.
#[test]
fn compare_can_start_eventflowd_itself() {
    let Some(binary) = eventflowd() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = compare_in(
        dir.path(),
        "eventflow",
        &[
            "--eventflowd",
            binary.to_str().unwrap(),
            "--eventflowd-flags",
            "--cores 1 --no-pin --fsync never",
        ],
    );
    let results = result::load(&out.join("results.json")).unwrap();
    assert_eq!(results.len(), 4);
    for r in &results {
        assert_eq!(r.durability, "eventflowd --fsync never");
        // One name for the side, whatever port each run's broker had.
        assert_eq!(r.target, "eventflowd --cores 1 --no-pin --fsync never");
        assert_eq!(
            r.broker_flags.as_deref(),
            Some("--cores 1 --no-pin --fsync never (fresh: a new server per run)")
        );
        assert!(r.broker.unwrap().rss_peak_kib > 0);
    }
    // Every broker stopped and its data directory is gone.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("scratch"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `sweep`: one experiment, two points, two rounds each, a fresh eventflowd per run.
#[test]
fn sweep_runs_every_point_and_summarizes_medians() {
    let Some(binary) = eventflowd() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sweep.toml");
    std::fs::write(
        &file,
        r#"
kind = "produce"
broker_flags = "--cores 1 --no-pin --fsync always"
rounds = 2
[base]
create_topic = true
messages = 3000
[[experiment]]
name = "fsync"
vary_broker.fsync = ["never", "always"]
"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    output_ok(bench().args([
        "sweep",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--eventflowd",
        binary.to_str().unwrap(),
        "--scratch",
        dir.path().join("scratch").to_str().unwrap(),
        "--quiet",
    ]));
    let csv = std::fs::read_to_string(out.join("sweep.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4, "{csv}");
    assert!(csv.contains("--cores 1 --no-pin --fsync never"), "{csv}");
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    // One row per point in the summary, whatever the rounds.
    assert_eq!(md.matches("| fsync=").count(), 2, "{md}");
    assert!(std::fs::read_to_string(out.join("sweep-fsync.svg"))
        .unwrap()
        .starts_with("<svg"));
    assert_eq!(result::load(&out.join("results.json")).unwrap().len(), 4);
}

/// `--consumer-group`: the consumers subscribe instead of assigning partitions; the group
/// starts at the run's start offsets and loses nothing.
#[test]
fn e2e_through_a_consumer_group() {
    let broker = Broker::start();
    let w = Workload {
        rate: 2_000,
        duration: Some(Duration::from_secs(1)),
        consumers: 2,
        consumer_group: Some("bench-group".into()),
        ..workload("grouped")
    };
    let r = run(&broker, Kind::E2e, &w);
    assert_eq!(r.produced.unwrap().messages, 2_000);
    assert_eq!((r.missing, r.errors), (0, 0), "{:?}", r.first_error);
    // A partition that moves while the second member joins may be read twice.
    assert!(r.consumed.unwrap().messages >= 2_000);
}
