//! The `redis://` and `nats://` targets against real servers the harness starts itself
//! (Debian's redis-server 7.0 and nats-server 2.9): bounded produce, consume and end-to-end
//! runs whose counts must add up. Without the server binary a test is skipped with a line
//! saying so, unless `EVENTFLOW_BENCH_REQUIRE_PEERS=1` (CI) makes that a failure.

use std::path::Path;
use std::process::Command;

use eventflow_bench::peers::{find_binary, PeerFsync, PeerKind, PeerServer};
use eventflow_bench::run::{self, Kind, RunContext};
use eventflow_bench::workload::Workload;

/// The peer's server, started in `scratch`; `None` (the test skips) when it is not
/// installed and CI does not require it.
fn start(kind: PeerKind, scratch: &Path, fsync: PeerFsync) -> Option<PeerServer> {
    let name = kind.binary_name();
    if find_binary(Path::new(name)).is_none() {
        if std::env::var("EVENTFLOW_BENCH_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("EVENTFLOW_BENCH_REQUIRE_PEERS=1 but {name} is not installed (apt-get install {name})");
        }
        eprintln!("skipped: {name} is not installed (apt-get install {name})");
        return None;
    }
    Some(PeerServer::start(kind, Path::new(name), scratch, fsync).expect("the server starts"))
}

fn run(server: &PeerServer, kind: Kind, w: &Workload) -> eventflow_bench::result::RunResult {
    let target = server.connect().expect("the target connects");
    let ctx = RunContext {
        target: target.as_ref(),
        broker_pid: server.pid(),
        durability: server.durability.clone(),
        broker_flags: Some(server.flags.clone()),
        data_dir: Some(server.dir.clone()),
        round: 0,
        progress: false,
    };
    run::run(kind, w, &ctx).expect("run succeeds")
}

/// Produce, consume (assigned and as a group) and end-to-end runs, every record checked.
fn produce_consume_e2e(kind: PeerKind, fsync: PeerFsync) {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = start(kind, dir.path(), fsync) else {
        return;
    };
    let base = Workload {
        topic: "peer-test".into(),
        partitions: 2,
        create_topic: true,
        batch_bytes: 16 * 1024,
        linger_us: 500,
        messages: Some(20_000),
        ..Workload::default()
    };

    let r = run(&server, Kind::Produce, &base);
    assert_eq!(r.produced.unwrap().messages, 20_000);
    assert_eq!((r.errors, r.missing, r.duplicates), (0, 0, 0));
    assert!(r.broker.is_some(), "the server's CPU is read");
    assert_eq!(r.target_kind, kind.as_str());
    // Every record is stored: the partitions' high marks add up.
    let target = server.connect().unwrap();
    let marks = target.watermarks(&base).unwrap();
    assert_eq!(marks.iter().map(|(l, h)| h - l).sum::<i64>(), 20_000);

    // A backlog, read by two consumers that split the partitions, then by a group of two.
    let two = Workload {
        consumers: 2,
        ..base.clone()
    };
    let r = run(&server, Kind::Consume, &two);
    assert_eq!(r.consumed.unwrap().messages, 20_000);
    assert_eq!((r.errors, r.missing, r.duplicates), (0, 0, 0));
    let grouped = Workload {
        consumer_group: Some("peer-group".into()),
        keys: eventflow_bench::workload::Keys::Random,
        ..two
    };
    let r = run(&server, Kind::Consume, &grouped);
    assert_eq!(r.consumed.unwrap().messages, 20_000);
    assert_eq!((r.errors, r.missing, r.duplicates), (0, 0, 0));

    // Open loop, at a rate, with no linger: every record's end-to-end latency recorded.
    let e2e = Workload {
        rate: 10_000,
        messages: Some(5_000),
        linger_us: 0,
        ..base
    };
    let r = run(&server, Kind::E2e, &e2e);
    assert_eq!(r.consumed.unwrap().messages, 5_000);
    assert_eq!((r.errors, r.missing, r.duplicates), (0, 0, 0));
    assert_eq!(r.latency["e2e"].count, 5_000);
}

#[test]
fn redis_streams_durable() {
    produce_consume_e2e(PeerKind::Redis, PeerFsync::Always);
}

#[test]
fn nats_jetstream() {
    produce_consume_e2e(PeerKind::Nats, PeerFsync::Always);
}

/// Without --create-topic a topic must exist with enough partitions, on both targets.
#[test]
fn existing_topics_are_checked() {
    for kind in [PeerKind::Redis, PeerKind::Nats] {
        let dir = tempfile::tempdir().unwrap();
        let Some(server) = start(kind, dir.path(), PeerFsync::Never) else {
            continue;
        };
        let target = server.connect().unwrap();
        let w = Workload {
            topic: "existing".into(),
            partitions: 2,
            create_topic: true,
            ..Workload::default()
        };
        target.prepare_topic(&w).unwrap();
        let existing = Workload {
            create_topic: false,
            ..w.clone()
        };
        target.prepare_topic(&existing).unwrap();
        let more = Workload {
            partitions: 3,
            ..existing.clone()
        };
        assert!(target.prepare_topic(&more).is_err(), "{kind:?}");
        let missing = Workload {
            topic: "missing".into(),
            ..existing
        };
        assert!(target.prepare_topic(&missing).is_err(), "{kind:?}");
    }
}

/// `compare` starts both servers itself, and the report names each side's durability.
#[test]
fn compare_starts_the_peers() {
    for kind in [PeerKind::Redis, PeerKind::Nats] {
        if find_binary(Path::new(kind.binary_name())).is_none() {
            // `start` decides between skipping and failing.
            let dir = tempfile::tempdir().unwrap();
            assert!(start(kind, dir.path(), PeerFsync::Never).is_none());
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "[defaults]\ncreate_topic = true\n[[run]]\nkind = \"produce\"\nmessages = 3000\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_eventflow-bench"))
        .args(["compare", "--name", "peers", "--rounds", "2", "--quiet"])
        .args([
            "--no-ceiling",
            "--targets",
            "redis,nats",
            "--brokers",
            "warm",
        ])
        .args(["--eventflowd-flags", "--fsync never"])
        .args(["--plan", plan.to_str().unwrap()])
        .args(["--results-dir", dir.path().to_str().unwrap()])
        .args(["--scratch", dir.path().join("scratch").to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let results = eventflow_bench::result::load(&dir.path().join("peers/results.json")).unwrap();
    assert_eq!(results.len(), 4);
    for r in &results {
        assert_eq!(r.produced.map(|t| t.messages), Some(3000));
        assert_eq!(r.errors, 0);
    }
    let report = std::fs::read_to_string(dir.path().join("peers/report.md")).unwrap();
    assert!(report.contains("appendfsync no"), "{report}");
    assert!(report.contains("nats-server 2.9 JetStream"), "{report}");
    assert!(report.contains("warm"), "{report}");
    // The scratch directories are gone with the servers.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("scratch"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}
