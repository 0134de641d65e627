//! The `kafka://` target against real Kafka-protocol brokers: Tansu 0.6, a single binary
//! with in-memory storage, and eventflowd's own Kafka listener. Tansu comes from `TANSU_BIN`
//! or `tansu` on PATH; without it that test is skipped, unless
//! `EVENTFLOW_BENCH_REQUIRE_KAFKA=1` (CI) makes that a failure.
//!
//! Also `compare --targets kafka` starting Kafka from `KAFKA_HOME` itself, against a
//! stand-in distribution (no Java Kafka is installed here): its `bin/kafka-storage.sh`
//! records its calls and formats as the real one does, and its `bin/kafka-server-start.sh`
//! reads the properties it is given and `exec`s eventflowd's Kafka listener on the port they
//! name.
#![cfg(feature = "kafka")]

use std::collections::HashMap;
use std::env;
use std::fmt;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use eventflow_bench::target::{AckSink, ConsumerWorker, TargetUrl};
use eventflow_bench::workload::Workload;

/// Records sent in bulk, then one more per partition (see the test).
const RECORDS: u64 = 2000;
const SENT: u64 = RECORDS + 2;
/// Tags are not record numbers: the sink must get back what `send` was given.
const TAG_BASE: u64 = 1 << 40;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
const CONSUME_TIMEOUT: Duration = Duration::from_secs(60);

/// The workspace's `eventflowd` on ephemeral loopback ports with a fresh data directory,
/// killed on drop; `native` and `kafka` are its listeners, read from its ready line.
struct Eventflowd {
    child: Child,
    native: SocketAddr,
    kafka: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Eventflowd {
    fn start() -> Result<Eventflowd> {
        let bin = env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("test binary outside target/")?
            .join("eventflowd");
        if !bin.exists() {
            bail!(
                "{} not built: run `cargo build --bin eventflowd` (`cargo test --workspace` \
                 builds it too)",
                bin.display()
            );
        }
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(&bin)
            .args(["--listen", "127.0.0.1:0", "--cores", "2", "--data-dir"])
            .arg(dir.path().join("data"))
            .stdout(Stdio::piped())
            .stderr(File::create(dir.path().join("broker.log"))?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().context("no stdout")?),
            &mut line,
        )?;
        let field = |name: &str| -> Result<SocketAddr> {
            Ok(line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .with_context(|| format!("no {name} in the ready line {line:?}"))?
                .parse()?)
        };
        let (native, kafka) = (field("listen=")?, field("kafka=")?);
        Ok(Eventflowd {
            child,
            native,
            kafka,
            _dir: dir,
        })
    }
}

impl Drop for Eventflowd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Tansu broker on a free loopback port, killed on drop.
struct Tansu {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Tansu {
    fn start(bin: &Path) -> Result<Tansu> {
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let dir = tempfile::tempdir()?;
        let log_path = dir.path().join("tansu.log");
        let log = File::create(&log_path)?;
        let child = Command::new(bin)
            .arg("broker")
            .args(["--listener-url", &format!("tcp://{addr}")])
            .args(["--advertised-listener-url", &format!("tcp://{addr}")])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut tansu = Tansu {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(status) = tansu.child.try_wait()? {
                bail!("tansu exited with {status} before listening:\n{}", log());
            }
            if Instant::now() >= deadline {
                bail!(
                    "tansu not listening on {addr} after {STARTUP_TIMEOUT:?}:\n{}",
                    log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(tansu)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `TANSU_BIN`, else `tansu` on PATH.
fn tansu_bin() -> Option<PathBuf> {
    if let Some(bin) = env::var_os("TANSU_BIN") {
        return Some(PathBuf::from(bin));
    }
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join("tansu"))
        .find(|p| p.is_file())
}

/// Counts outcomes per tag, and keeps the first error.
#[derive(Default)]
struct Acks {
    ok: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    per_tag: Mutex<HashMap<u64, u32>>,
}

impl AckSink for Acks {
    fn acked(&self, tag: u64, error: Option<&dyn fmt::Display>) {
        match error {
            None => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Some(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_error
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| e.to_string());
            }
        }
        *self.per_tag.lock().unwrap().entry(tag).or_default() += 1;
    }
}

/// Record `i`'s value: its number in text, padded to a varying length.
fn value(i: u64) -> Vec<u8> {
    let mut v = format!("record-{i:06}|").into_bytes();
    v.resize(40 + (i % 61) as usize, b'x');
    v
}

/// Polls until `n` records came (bounded), then once more to catch any extra.
fn consume(consumer: &mut dyn ConsumerWorker, n: u64) -> Result<HashMap<Vec<u8>, u32>> {
    let mut seen: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut on_value = |v: &[u8]| *seen.entry(v.to_vec()).or_default() += 1;
    let deadline = Instant::now() + CONSUME_TIMEOUT;
    let mut total = 0u64;
    while total < n {
        if Instant::now() >= deadline {
            bail!("consumed {total} of {n} records in {CONSUME_TIMEOUT:?}");
        }
        total += consumer.poll(Duration::from_millis(500), &mut on_value)? as u64;
    }
    total += consumer.poll(Duration::from_millis(300), &mut on_value)? as u64;
    assert_eq!(total, n, "records beyond the {n} sent");
    Ok(seen)
}

/// Every value sent arrived exactly once.
fn check_values(seen: &HashMap<Vec<u8>, u32>) {
    assert_eq!(seen.len() as u64, SENT);
    assert!((0..SENT).all(|i| seen.get(&value(i)) == Some(&1)));
}

#[test]
fn produce_then_consume_through_librdkafka() -> Result<()> {
    let Some(bin) = tansu_bin() else {
        if env::var("EVENTFLOW_BENCH_REQUIRE_KAFKA").as_deref() == Ok("1") {
            panic!(
                "EVENTFLOW_BENCH_REQUIRE_KAFKA=1 but no tansu broker found: set TANSU_BIN or \
                 put `tansu` on PATH"
            );
        }
        eprintln!("skipped: no tansu broker (set TANSU_BIN or put `tansu` on PATH)");
        return Ok(());
    };
    let tansu = Tansu::start(&bin)?;
    produce_then_consume(tansu.addr, true)
}

/// The same workload against eventflowd's own Kafka listener: the harness's librdkafka
/// client, unchanged, pointed at Eventflow. (Consumer groups are not served on the Kafka
/// listener yet, so the group part is left out.)
#[test]
fn produce_then_consume_through_librdkafka_against_eventflowd() -> Result<()> {
    let broker = Eventflowd::start()?;
    produce_then_consume(broker.kafka, false)
}

/// Produces through the `kafka://` target, checks every acknowledgement and the end
/// offsets, consumes everything back assigned (and, with `group`, subscribed), then
/// recreates the topic.
fn produce_then_consume(addr: SocketAddr, group: bool) -> Result<()> {
    let target = TargetUrl::parse(&format!("kafka://{addr}"))?.connect()?;
    assert_eq!(target.kind(), "kafka");
    assert_eq!(target.url(), format!("kafka://{addr}"));

    let w = Workload {
        topic: "kafka-target-test".into(),
        partitions: 2,
        create_topic: true,
        consumers: 1,
        batch_bytes: 16 * 1024,
        linger_us: 500,
        ..Workload::default()
    };
    target.prepare_topic(&w)?;
    let settings = target.client_settings(&w);
    let client = &settings.iter().find(|(n, _)| n == "client").unwrap().1;
    assert!(client.starts_with("librdkafka "), "{client}");
    assert!(settings.contains(&("linger.ms".into(), "0.5".into())));

    // Without --create-topic the topic must already have the partitions.
    let existing = Workload {
        create_topic: false,
        ..w.clone()
    };
    target.prepare_topic(&existing)?;
    let too_many = Workload {
        partitions: 3,
        ..existing.clone()
    };
    assert!(target.prepare_topic(&too_many).is_err());
    let missing = Workload {
        topic: "no-such-topic".into(),
        ..existing.clone()
    };
    assert!(target.prepare_topic(&missing).is_err());

    let start = end_offsets(target.as_ref(), &w)?;
    assert_eq!(start.len(), 2);

    let acks = Arc::new(Acks::default());
    let mut producer = target.producer(&w, acks.clone())?;
    for i in 0..RECORDS {
        // Mix explicit partitions with the partitioner's choice, keyed and not.
        let partition = (i % 3 != 0).then_some((i % 2) as u32);
        let key = i.to_be_bytes();
        let key = (i % 2 == 0).then_some(&key[..]);
        producer.send(partition, key, &value(i), TAG_BASE + i)?;
    }
    producer.flush()?;
    // Then one record per partition in a batch of its own. Tansu 0.6 (memory storage)
    // answers ListOffsets(latest) with the last batch's base offset + 1, as if every batch
    // held one record; after a one-record batch that is the true end offset.
    for p in 0..2 {
        let i = RECORDS + u64::from(p);
        producer.send(Some(p), None, &value(i), TAG_BASE + i)?;
        producer.flush()?;
    }
    assert_eq!(
        acks.failed.load(Ordering::Relaxed),
        0,
        "first error: {:?}",
        acks.first_error.lock().unwrap()
    );
    assert_eq!(acks.ok.load(Ordering::Relaxed), SENT);
    {
        let per_tag = acks.per_tag.lock().unwrap();
        assert_eq!(per_tag.len() as u64, SENT);
        assert!((0..SENT).all(|i| per_tag.get(&(TAG_BASE + i)) == Some(&1)));
    }
    let end = end_offsets(target.as_ref(), &w)?;
    let produced: i64 = end.iter().zip(&start).map(|(e, s)| e - s).sum();
    assert_eq!(produced, SENT as i64, "start {start:?} end {end:?}");

    // Assigned from the offsets taken before producing.
    let mut consumer = target.consumer(&w, 0, &start)?;
    check_values(&consume(consumer.as_mut(), SENT)?);
    drop(consumer);

    // Subscribed as a group with no committed offsets: from the earliest. Tansu answers a
    // new member's JoinGroup only after half of `session.timeout.ms` (45 s in librdkafka),
    // so this part takes about 23 s.
    if group {
        let grouped = Workload {
            consumer_group: Some("kafka-target-test-group".into()),
            ..w.clone()
        };
        let mut consumer = target.consumer(&grouped, 0, &start)?;
        check_values(&consume(consumer.as_mut(), SENT)?);
        drop(consumer);
    }

    // Creating again deletes the old topic first: it starts empty.
    drop(producer);
    target.prepare_topic(&w)?;
    assert_eq!(end_offsets(target.as_ref(), &w)?, vec![0, 0]);
    Ok(())
}

fn end_offsets(target: &dyn eventflow_bench::target::Target, w: &Workload) -> Result<Vec<i64>> {
    Ok(target
        .watermarks(w)?
        .into_iter()
        .map(|(_, high)| high)
        .collect())
}

/// `compare` with a `kafka://` target that does not answer (a closed loopback port) and one
/// that does: the first is skipped with a line in the report, the second's results are there.
#[test]
fn compare_skips_a_kafka_target_that_does_not_answer() -> Result<()> {
    let broker = Eventflowd::start()?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dead = format!("kafka://127.0.0.1:{port}");
    let alive = format!("eventflow://{}", broker.native);
    let dir = tempfile::tempdir()?;
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "[defaults]\ncreate_topic = true\n[[run]]\nkind = \"produce\"\nmessages = 2000\n",
    )?;
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_eventflow-bench"))
        .args(["compare", "--name", "skip", "--rounds", "1", "--quiet"])
        .args(["--targets", &format!("{dead},{alive}")])
        .args(["--plan", plan.to_str().unwrap()])
        .args(["--results-dir", dir.path().to_str().unwrap()])
        .args(["--scratch", dir.path().join("scratch").to_str().unwrap()])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The metadata request's own bound (10 s), plus the one short run.
    assert!(started.elapsed() < Duration::from_secs(60), "{stderr}");
    let results = eventflow_bench::result::load(&dir.path().join("skip/results.json"))?;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].target, alive);
    assert_eq!(results[0].produced.map(|t| t.messages), Some(2000));
    let report = std::fs::read_to_string(dir.path().join("skip/report.md"))?;
    assert!(
        report.contains(&format!("**Skipped:** `{dead}` did not answer")),
        "{report}"
    );
    Ok(())
}

/// The stand-in's storage tool: records its arguments; `random-uuid` prints a cluster id,
/// `format -t ID -c FILE` needs FILE and writes `meta.properties` into its `log.dirs`,
/// refusing one already formatted (as Kafka's does without `--ignore-formatted`).
const STAND_IN_STORAGE: &str = r#"#!/bin/sh
set -eu
home=$(cd "$(dirname "$0")/.." && pwd)
echo "$*" >> "$home/storage-calls"
case "$1" in
random-uuid)
    echo "stand-in: a JVM would log here" >&2
    echo "q1Sh-9_ISia_zwGINzRvyQ"
    ;;
format)
    if [ "$#" -ne 5 ] || [ "$2" != "-t" ] || [ "$4" != "-c" ]; then
        echo "usage: format -t CLUSTER_ID -c FILE" >&2
        exit 2
    fi
    [ -f "$5" ] || { echo "no properties file $5" >&2; exit 1; }
    logdir=$(sed -n 's/^log\.dirs=//p' "$5")
    [ ! -e "$logdir/meta.properties" ] || { echo "$logdir is already formatted" >&2; exit 1; }
    mkdir -p "$logdir"
    printf 'cluster.id=%s\nnode.id=1\nversion=1\n' "$3" > "$logdir/meta.properties"
    ;;
*)
    echo "unknown command $1" >&2
    exit 2
    ;;
esac
"#;

/// The stand-in's server script: keeps a copy of the properties and its pid, refuses an
/// unformatted log directory (as Kafka does), then becomes eventflowd serving Kafka on the
/// PLAINTEXT listener, with `--fsync always` when every message is to be flushed.
const STAND_IN_START: &str = r#"#!/bin/sh
set -eu
home=$(cd "$(dirname "$0")/.." && pwd)
config=$1
if [ -f "$home/refuse" ]; then
    echo "stand-in told to refuse to start" >&2
    exit 1
fi
cp "$config" "$home/started.properties"
echo "${LOG_DIR:-}" > "$home/started.log_dir"
logdir=$(sed -n 's/^log\.dirs=//p' "$config")
[ -f "$logdir/meta.properties" ] || { echo "$logdir is not formatted" >&2; exit 1; }
listener=$(sed -n 's/^listeners=PLAINTEXT:\/\/\([^,]*\),.*/\1/p' "$config")
fsync=never
if grep -qx 'log.flush.interval.messages=1' "$config"; then fsync=always; fi
echo $$ >> "$home/started.pids"
exec "$EVENTFLOWD" --listen 127.0.0.1:0 --kafka-listen "$listener" --no-metrics --no-http \
    --cores 1 --fsync "$fsync" --data-dir "$logdir/eventflow"
"#;

/// A stand-in Kafka distribution in a new temporary directory.
fn stand_in_kafka_home() -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let eventflowd = env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .context("test binary outside target/")?
        .join("eventflowd");
    if !eventflowd.exists() {
        bail!(
            "{} not built: run `cargo build --bin eventflowd`",
            eventflowd.display()
        );
    }
    let home = tempfile::tempdir()?;
    std::fs::create_dir_all(home.path().join("bin"))?;
    std::fs::create_dir_all(home.path().join("libs"))?;
    std::fs::write(home.path().join("libs/kafka_2.13-3.9.1.jar"), "")?;
    std::fs::write(home.path().join("libs/kafka_2.13-3.9.1-test.jar"), "")?;
    let start = STAND_IN_START.replace("\"$EVENTFLOWD\"", &format!("'{}'", eventflowd.display()));
    for (name, text) in [
        ("kafka-storage.sh", STAND_IN_STORAGE),
        ("kafka-server-start.sh", start.as_str()),
    ] {
        let path = home.path().join("bin").join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(home)
}

/// `eventflow-bench compare` with `args` and a tiny plan, KAFKA_HOME set to `kafka_home`.
fn compare(
    dir: &Path,
    name: &str,
    kafka_home: Option<&Path>,
    args: &[&str],
) -> Result<std::process::Output> {
    let plan = dir.join("plan.toml");
    std::fs::write(
        &plan,
        "[defaults]\ncreate_topic = true\npartitions = 2\n\
         [[run]]\nkind = \"produce\"\nmessages = 3000\n\
         [[run]]\nkind = \"consume\"\nmessages = 3000\n",
    )?;
    let mut command = Command::new(env!("CARGO_BIN_EXE_eventflow-bench"));
    match kafka_home {
        Some(home) => command.env("KAFKA_HOME", home),
        None => command.env_remove("KAFKA_HOME"),
    };
    Ok(command
        .args(["compare", "--name", name, "--rounds", "1", "--quiet"])
        .args([
            "--no-ceiling",
            "--eventflowd-flags",
            "--fsync always --cores 1",
        ])
        .args(["--plan", plan.to_str().unwrap()])
        .args(["--results-dir", dir.to_str().unwrap()])
        .args(["--scratch", dir.join("scratch").to_str().unwrap()])
        .args(args)
        .output()?)
}

fn scratch_left(dir: &Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(dir.join("scratch"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

/// `compare --targets eventflow,kafka --kafka-home STAND_IN`: for each run a fresh directory,
/// its properties, a formatted log directory and a node on the ports they name; the runs
/// produce and consume every record, the report names Kafka's settings, and nothing of the
/// node is left afterwards.
#[test]
fn compare_starts_kafka_from_kafka_home() -> Result<()> {
    let home = stand_in_kafka_home()?;
    let dir = tempfile::tempdir()?;
    let out = compare(
        dir.path(),
        "kafka-home",
        None,
        &[
            "--targets",
            "eventflow,kafka",
            "--kafka-home",
            home.path().to_str().unwrap(),
        ],
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    // Both runs (and the check that the node comes up) formatted a fresh directory (the
    // stand-in refuses a formatted one): random-uuid, then format with that id and the
    // properties the server got.
    let calls = std::fs::read_to_string(home.path().join("storage-calls"))?;
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 6, "{calls:?}");
    let scratch = dir.path().join("scratch").canonicalize()?;
    let mut configs: Vec<String> = Vec::new();
    for pair in calls.chunks(2) {
        assert_eq!(pair[0], "random-uuid");
        let config = pair[1]
            .strip_prefix("format -t q1Sh-9_ISia_zwGINzRvyQ -c ")
            .with_context(|| format!("format call {:?}", pair[1]))?;
        assert!(Path::new(config).starts_with(&scratch), "{config}");
        configs.push(config.to_string());
    }

    // The last node's properties: its two loopback ports, its log directory beside them,
    // and every append flushed, as eventflowd's --fsync always.
    let properties = std::fs::read_to_string(home.path().join("started.properties"))?;
    let get = |key: &str| -> String {
        properties
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in {properties}"))
            .to_string()
    };
    let config_dir = Path::new(configs.last().unwrap()).parent().unwrap();
    assert_eq!(get("process.roles"), "broker,controller");
    assert_eq!(get("node.id"), "1");
    assert_eq!(
        PathBuf::from(get("log.dirs")),
        config_dir.join("kafka-logs")
    );
    assert_eq!(get("log.flush.interval.messages"), "1");
    assert_eq!(get("offsets.topic.replication.factor"), "1");
    assert_eq!(get("group.initial.rebalance.delay.ms"), "0");
    let listeners = get("listeners");
    let (plaintext, controller) = listeners
        .strip_prefix("PLAINTEXT://127.0.0.1:")
        .and_then(|rest| rest.split_once(",CONTROLLER://127.0.0.1:"))
        .with_context(|| format!("listeners={listeners}"))?;
    assert_ne!(plaintext, controller);
    assert_eq!(
        get("advertised.listeners"),
        format!("PLAINTEXT://127.0.0.1:{plaintext}")
    );
    assert_eq!(
        get("controller.quorum.voters"),
        format!("1@127.0.0.1:{controller}")
    );
    let log_dir = std::fs::read_to_string(home.path().join("started.log_dir"))?;
    assert_eq!(Path::new(log_dir.trim()), config_dir.join("logs"));

    // Every record produced and consumed on both sides.
    let results = eventflow_bench::result::load(&dir.path().join("kafka-home/results.json"))?;
    assert_eq!(results.len(), 4);
    for r in &results {
        assert_eq!(
            (r.errors, r.missing, r.duplicates),
            (0, 0, 0),
            "{}",
            r.target
        );
        let n = r.produced.or(r.consumed).map(|t| t.messages);
        assert_eq!(n, Some(3000), "{}", r.target);
    }
    let kafka: Vec<_> = results
        .iter()
        .filter(|r| r.target_kind == "kafka")
        .collect();
    assert_eq!(kafka.len(), 2);
    assert!(kafka.iter().all(|r| r.target == "kafka-server-start.sh"));
    assert!(
        kafka.iter().all(|r| r.broker.is_some()),
        "the node's CPU is read"
    );

    // The report names Kafka's version, the properties and the matched durability.
    let report = std::fs::read_to_string(dir.path().join("kafka-home/report.md"))?;
    for needle in [
        "Kafka 3.9.1",
        "process.roles=broker,controller",
        "listeners=PLAINTEXT://127.0.0.1:PORT,CONTROLLER://127.0.0.1:CONTROLLER_PORT",
        "log.dirs=SCRATCH/kafka-logs",
        "Kafka log.flush.interval.messages=1 (every append fsynced",
        "fresh: a new server per run",
    ] {
        assert!(report.contains(needle), "no {needle:?} in:\n{report}");
    }

    // Every node the stand-in became has exited, and its directory is gone.
    let pids = std::fs::read_to_string(home.path().join("started.pids"))?;
    assert_eq!(pids.lines().count(), 3, "{pids}");
    for pid in pids.lines() {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still runs"
        );
    }
    assert!(
        scratch_left(dir.path()).is_empty(),
        "{:?}",
        scratch_left(dir.path())
    );
    Ok(())
}

/// A Kafka that does not come up is left out with a line in the report, and the other
/// side's runs go on; its directory is removed all the same.
#[test]
fn compare_skips_a_kafka_that_does_not_come_up() -> Result<()> {
    let home = stand_in_kafka_home()?;
    std::fs::write(home.path().join("refuse"), "")?;
    let dir = tempfile::tempdir()?;
    // KAFKA_HOME instead of the flag, this time, and warm brokers.
    let out = compare(
        dir.path(),
        "kafka-refuses",
        Some(home.path()),
        &["--targets", "eventflow,kafka", "--brokers", "warm"],
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let results = eventflow_bench::result::load(&dir.path().join("kafka-refuses/results.json"))?;
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| r.target_kind == "eventflow"));
    let report = std::fs::read_to_string(dir.path().join("kafka-refuses/report.md"))?;
    assert!(
        report.contains("**Skipped:** `kafka-server-start.sh` did not answer"),
        "{report}"
    );
    assert!(
        report.contains("stand-in told to refuse to start"),
        "{report}"
    );
    assert!(!home.path().join("started.pids").exists());
    assert!(
        scratch_left(dir.path()).is_empty(),
        "{:?}",
        scratch_left(dir.path())
    );
    Ok(())
}

/// A `kafka` target without a distribution, or with a directory that is not one, is an error
/// that names what is missing, before anything starts.
#[test]
fn compare_names_what_a_kafka_home_lacks() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = compare(dir.path(), "no-home", None, &["--targets", "kafka"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("set KAFKA_HOME or pass --kafka-home"),
        "{stderr}"
    );

    let empty = tempfile::tempdir()?;
    std::fs::create_dir(empty.path().join("bin"))?;
    std::fs::write(empty.path().join("bin/kafka-server-start.sh"), "")?;
    let out = compare(
        dir.path(),
        "bad-home",
        None,
        &[
            "--targets",
            "kafka",
            "--kafka-home",
            empty.path().to_str().unwrap(),
        ],
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for needle in [
        "is not a Kafka distribution",
        "no bin/kafka-storage.sh",
        "bin/kafka-server-start.sh (not executable)",
        "no libs/kafka_<scala>-<version>.jar",
        "fetch-kafka.sh",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} in {stderr}");
    }
    assert!(scratch_left(dir.path()).is_empty());
    Ok(())
}

/// `fetch-kafka.sh` with every mirror unreachable (a closed loopback port: no traffic leaves
/// the machine) fails with a line that says where it tried, and leaves nothing behind.
#[test]
fn fetch_kafka_fails_cleanly_offline() -> Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fetch-kafka.sh");
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let closed = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir()?;
    let target = dir.path().join("kafka");
    let out = Command::new(&script)
        .arg(&target)
        .env("KAFKA_MIRROR", &closed)
        .env("KAFKA_ARCHIVE", &closed)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty(), "no KAFKA_HOME is printed");
    assert!(
        stderr.contains(&format!(
            "could not download Kafka 3.9.1 from any of: {closed}/3.9.1/kafka_2.13-3.9.1.tgz"
        )),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&target)?.flatten().collect();
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}
