//! `eventflow-connect` driven as a user drives it: a real broker, the runner as a process,
//! files on disk, SIGTERM and kill -9.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use eventflow::client::producer::{Producer, ProducerConfig, Record};
use eventflow::client::{Client, Credentials};
use eventflow::protocol::api::offset_spec;

use common::{append, eventually, lines_of, numbered, workspace_binary, Broker, Runner};

const WAIT: Duration = Duration::from_secs(60);

/// A config with a file source from `source` into `topic` and a file sink from `topic`
/// into `sink`, state in `dir/state`; `extra_source` and `extra_sink` add keys.
fn config(
    broker: &Broker,
    dir: &Path,
    topic: &str,
    (source, extra_source): (&Path, &str),
    (sink, extra_sink): (&Path, &str),
) -> std::path::PathBuf {
    let path = dir.join("connect.toml");
    std::fs::write(
        &path,
        format!(
            r#"
bootstrap = "{addr}"
state_dir = "{state}"

[[connector]]
name = "local-file-source"
kind = "file-source"
file = "{source}"
topic = "{topic}"
{extra_source}

[[connector]]
name = "local-file-sink"
kind = "file-sink"
file = "{sink}"
topics = ["{topic}"]
commit_interval_ms = 300
session_timeout_ms = 1000
{extra_sink}
"#,
            addr = broker.addr,
            state = dir.join("state").display(),
            source = source.display(),
            sink = sink.display(),
        ),
    )
    .unwrap();
    path
}

/// Kafka's quickstart: test.txt → topic → test.sink.txt, lines appended while it runs,
/// SIGTERM ends it with 0; a second run goes on where the first stopped, even with the
/// sink's group deleted meanwhile.
#[test]
fn quickstart_copies_a_file_through_a_topic_into_a_file() {
    let broker = Broker::start();
    broker.create_topic("connect-test", 1);
    let dir = tempfile::tempdir().unwrap();
    let (source, sink) = (
        dir.path().join("test.txt"),
        dir.path().join("test.sink.txt"),
    );
    append(&source, ["foo".to_string(), "bar".to_string()]);
    let config = config(
        &broker,
        dir.path(),
        "connect-test",
        (&source, ""),
        (&sink, ""),
    );
    let log = dir.path().join("connect.log");

    let runner = Runner::start(&config, &log);
    assert!(
        eventually(WAIT, || lines_of(&sink) == ["foo", "bar"]),
        "{}",
        runner.log()
    );
    append(&source, numbered(0..100));
    let mut expected: Vec<String> = ["foo", "bar"].map(String::from).into();
    expected.extend(numbered(0..100));
    assert!(
        eventually(WAIT, || lines_of(&sink).len() >= expected.len()),
        "{}",
        runner.log()
    );
    let status = runner.terminate();
    assert!(
        status.success(),
        "exit {status}: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert_eq!(lines_of(&sink), expected);

    // Records produced while it was down, and lines appended after it is back; the sink's
    // group is gone meanwhile and it would start at the end of the topic: its state says
    // where it was.
    let producer = Producer::new(ProducerConfig {
        bootstrap: broker.addr.clone(),
        ..ProducerConfig::default()
    })
    .unwrap();
    for line in numbered(100..150) {
        producer
            .send(Record {
                topic: "connect-test",
                value: Some(line.as_bytes()),
                ..Record::default()
            })
            .unwrap();
    }
    producer.flush().unwrap();
    broker.client().delete_group("local-file-sink").unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let latest = text.replace(
        "topics = [\"connect-test\"]",
        "topics = [\"connect-test\"]\nstart = \"latest\"",
    );
    std::fs::write(&config, latest).unwrap();
    let runner = Runner::start(&config, &log);
    append(&source, numbered(150..200));
    expected.extend(numbered(100..200));
    assert!(
        eventually(WAIT, || lines_of(&sink).len() >= expected.len()),
        "{}",
        runner.log()
    );
    assert!(runner.terminate().success());
    assert_eq!(lines_of(&sink), expected);
    assert_eq!(broker.values("connect-test"), expected);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("connector local-file-source stopped"), "{log}");
    assert!(log.contains("connector local-file-sink stopped"), "{log}");
}

/// The same through `eventflow connect`, which runs the eventflow-connect binary next to
/// it; and a clear error where there is none.
#[test]
fn eventflow_connect_runs_the_runner() {
    let help = Command::new(workspace_binary("eventflow"))
        .args(["connect", "--help"])
        .output()
        .unwrap();
    assert!(
        help.status.success(),
        "{} has no connect subcommand: is it an old build? {}",
        workspace_binary("eventflow").display(),
        String::from_utf8_lossy(&help.stderr)
    );
    let broker = Broker::start();
    broker.create_topic("via-cli", 1);
    let dir = tempfile::tempdir().unwrap();
    let (source, sink) = (dir.path().join("in.txt"), dir.path().join("out.txt"));
    append(&source, numbered(0..10));
    let config = config(&broker, dir.path(), "via-cli", (&source, ""), (&sink, ""));
    let runner = Runner::start_command(
        Command::new(workspace_binary("eventflow"))
            .arg("connect")
            .arg(&config),
        &dir.path().join("connect.log"),
    );
    assert!(
        eventually(WAIT, || lines_of(&sink) == numbered(0..10)),
        "{}",
        runner.log()
    );
    let status = runner.terminate();
    assert!(status.success(), "exit {status}");

    // Arguments pass through, and so does the exit status.
    let out = Command::new(workspace_binary("eventflow"))
        .args(["connect", "/nonexistent/connect.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read the config file /nonexistent/connect.toml"),
        "{stderr}"
    );

    // A copy of `eventflow` with no runner beside it nor on PATH.
    let alone = dir.path().join("bin");
    std::fs::create_dir(&alone).unwrap();
    std::fs::copy(workspace_binary("eventflow"), alone.join("eventflow")).unwrap();
    let out = Command::new(alone.join("eventflow"))
        .args(["connect", "x.toml"])
        .env("PATH", &alone)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("eventflow-connect is not installed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("cargo build -p eventflow-connect"),
        "{stderr}"
    );
}

/// kill -9 while a large file is being copied, again and again: in the end the topic
/// holds every line once, and so does the sink's file.
#[test]
fn kill_9_neither_loses_nor_duplicates_a_line() {
    // At least this many crashes, and more (up to MAX_CRASHES) until each connector was
    // caught at least twice with work in flight.
    const CRASHES: usize = 10;
    const MAX_CRASHES: usize = 40;
    const PIECE: usize = 6_000;
    let broker = Broker::start();
    broker.create_topic("crash", 3);
    let dir = tempfile::tempdir().unwrap();
    let (source, sink) = (dir.path().join("big.txt"), dir.path().join("big.sink.txt"));
    // Keys spread the lines over the partitions; small chunks keep one in flight often.
    let keyed = |range: std::ops::Range<usize>| {
        numbered(range)
            .into_iter()
            .map(|l| format!("k{}|{l}", &l[l.len() - 2..]))
    };
    let config = config(
        &broker,
        dir.path(),
        "crash",
        (&source, "key_separator = \"|\"\nbatch_lines = 200"),
        (&sink, ""),
    );
    let log = dir.path().join("connect.log");
    let json = |file: &str| -> serde_json::Value {
        std::fs::read_to_string(dir.path().join("state").join(file))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default()
    };
    let position = || {
        json("local-file-source.source.json")["position"]
            .as_u64()
            .unwrap_or(0)
    };
    // Records in the topic past the source's checkpoint: a chunk not yet checkpointed.
    let mut admin = broker.client();
    let mut chunk_unchecked = || {
        let offsets = &json("local-file-source.source.json")["offsets"];
        (0..3).any(|p: u32| {
            let end = admin.list_offset("crash", p, offset_spec::LATEST).unwrap();
            offsets[p.to_string()]
                .as_i64()
                .is_some_and(|checked| end > checked)
        })
    };
    // Lines in the sink's file past its state: written, not yet committed.
    let sink_uncommitted = || {
        file_len(&sink)
            > json("local-file-sink.sink.json")["length"]
                .as_u64()
                .unwrap_or(0)
    };
    let (mut source_caught, mut sink_caught) = (0, 0);
    let mut crash = 0;
    while crash < CRASHES || ((source_caught < 2 || sink_caught < 2) && crash < MAX_CRASHES) {
        // Each run finds lines waiting, and more arrive while it copies.
        let at = crash * PIECE;
        append(&source, keyed(at..at + PIECE / 2));
        let (from, sunk) = (position(), file_len(&sink));
        let runner = Runner::start(&config, &log);
        append(&source, keyed(at + PIECE / 2..at + PIECE));
        // Crash mid-stream: in even runs while the source has a chunk in the topic that
        // its checkpoint does not cover, in odd ones while the sink has lines in its file
        // that it has not committed.
        let progress = if crash % 2 == 0 {
            eventually_quick(WAIT, || position() > from && chunk_unchecked())
        } else {
            eventually_quick(WAIT, || file_len(&sink) > sunk && sink_uncommitted())
        };
        assert!(progress, "no progress: {}", runner.log());
        runner.kill9();
        // Whether the crash did come before the checkpoint or the commit.
        source_caught += usize::from(chunk_unchecked());
        sink_caught += usize::from(sink_uncommitted());
        crash += 1;
    }
    eprintln!("{crash} crashes: {source_caught} with a source chunk unchecked, {sink_caught} with sink lines uncommitted");
    assert!(
        source_caught >= 2 && sink_caught >= 2,
        "the crashes never caught work in flight"
    );
    let lines = crash * PIECE;
    let runner = Runner::start(&config, &log);
    assert!(
        eventually(WAIT, || lines_of(&sink).len() >= lines),
        "{} of {lines} lines: {}",
        lines_of(&sink).len(),
        runner.log()
    );
    assert!(runner.terminate().success());

    let expected: BTreeMap<String, usize> =
        numbered(0..lines).into_iter().map(|l| (l, 1)).collect();
    let count = |values: Vec<String>| {
        let mut seen = BTreeMap::new();
        for v in values {
            *seen.entry(v).or_insert(0) += 1;
        }
        seen
    };
    let stored = broker.values("crash");
    assert_eq!(stored.len(), lines, "records in the topic");
    assert!(
        count(stored) == expected,
        "the topic lost or duplicated lines"
    );
    let written = lines_of(&sink);
    assert_eq!(written.len(), lines, "lines in the sink's file");
    assert!(
        count(written) == expected,
        "the sink lost or duplicated lines"
    );
    // The restarts saw that work: lines found in the topic past the checkpoint, lines
    // cut from the sink's file.
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("in the topic already: skipped"), "{log}");
    assert!(log.contains("written after the last commit"), "{log}");
}

/// A file's length (0 if it does not exist).
fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// [`eventually`], looking every millisecond: to act right after a state is reached.
fn eventually_quick(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    f()
}

/// The file renamed away and a new one created at its path: the old one is finished
/// through its handle (lines written to it after the rename included), then the new one
/// is followed. The file did not exist when the runner started.
#[test]
fn rotation_finishes_the_old_file_then_follows_the_new_one() {
    let broker = Broker::start();
    broker.create_topic("rotate", 1);
    let dir = tempfile::tempdir().unwrap();
    let (source, sink) = (dir.path().join("app.log"), dir.path().join("app.sink.txt"));
    let config = config(&broker, dir.path(), "rotate", (&source, ""), (&sink, ""));
    let runner = Runner::start(&config, &dir.path().join("connect.log"));
    assert!(
        eventually(WAIT, || runner.log().contains("waiting for")),
        "{}",
        runner.log()
    );
    append(&source, numbered(0..100));
    assert!(
        eventually(WAIT, || lines_of(&sink).len() == 100),
        "{}",
        runner.log()
    );

    append(&source, numbered(100..150));
    let rotated = dir.path().join("app.log.1");
    std::fs::rename(&source, &rotated).unwrap();
    // Still written by a writer that has not reopened its file, and an unfinished last line.
    append(&rotated, numbered(150..160));
    std::fs::OpenOptions::new()
        .append(true)
        .open(&rotated)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"no newline"))
        .unwrap();
    append(&source, numbered(160..200));
    let mut expected = numbered(0..160);
    expected.push("no newline".into());
    expected.extend(numbered(160..200));
    assert!(
        eventually(WAIT, || lines_of(&sink).len() >= expected.len()),
        "{}",
        runner.log()
    );
    assert!(runner.log().contains("was rotated"), "{}", runner.log());

    // Truncated in place: it starts over.
    std::fs::write(&source, "").unwrap();
    append(&source, numbered(200..210));
    expected.extend(numbered(200..210));
    assert!(
        eventually(WAIT, || lines_of(&sink).len() >= expected.len()),
        "{}",
        runner.log()
    );
    assert!(runner.terminate().success());
    assert_eq!(lines_of(&sink), expected);
    assert_eq!(broker.values("rotate"), expected);
}

/// Lines over the limit are dropped with a warning, other bytes are sent as they are.
#[test]
fn long_lines_are_dropped_and_bytes_kept() {
    let broker = Broker::start();
    broker.create_topic("bytes", 1);
    let dir = tempfile::tempdir().unwrap();
    let (source, sink) = (dir.path().join("in.bin"), dir.path().join("out.bin"));
    let mut input = b"short\n".to_vec();
    input.extend(vec![b'x'; 100]);
    input.extend(b"\n\xff\xfe not utf-8\nk=v\n");
    std::fs::write(&source, &input).unwrap();
    let config = config(
        &broker,
        dir.path(),
        "bytes",
        (&source, "max_line_bytes = 64\nkey_separator = \"=\""),
        (&sink, "format = \"%k|%v\\\\n\""),
    );
    let runner = Runner::start(&config, &dir.path().join("connect.log"));
    let expected = b"|short\n|\xff\xfe not utf-8\nk|v\n".to_vec();
    assert!(
        eventually(WAIT, || std::fs::read(&sink).unwrap_or_default()
            == expected),
        "{}",
        runner.log()
    );
    let log = runner.log();
    assert!(runner.terminate().success());
    assert!(log.contains("dropped the line at byte 6"), "{log}");
    assert!(log.contains("100 bytes, over max_line_bytes (64)"), "{log}");
}

/// A connector that fails is reported FAILED with its name, the others go on, and the
/// runner's exit status says that one failed.
#[test]
fn a_failed_connector_does_not_stop_the_others() {
    let broker = Broker::start();
    broker.create_topic("works", 1);
    let dir = tempfile::tempdir().unwrap();
    let (source, sink) = (dir.path().join("in.txt"), dir.path().join("out.txt"));
    append(&source, numbered(0..10));
    let path = config(&broker, dir.path(), "works", (&source, ""), (&sink, ""));
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "\n[[connector]]\nname = \"orphan\"\nkind = \"file-source\"\nfile = \"{}\"\ntopic = \"no-such-topic\"\n",
        source.display()
    ));
    std::fs::write(&path, text).unwrap();
    let runner = Runner::start(&path, &dir.path().join("connect.log"));
    assert!(
        eventually(WAIT, || runner.log().contains("connector orphan FAILED")),
        "{}",
        runner.log()
    );
    assert!(
        eventually(WAIT, || lines_of(&sink) == numbered(0..10)),
        "{}",
        runner.log()
    );
    let log = runner.log();
    assert!(log.contains("topic no-such-topic"), "{log}");
    let status = runner.terminate();
    assert_eq!(status.code(), Some(1));
}

/// On a broker that requires a login, the connectors log in as the config's user with
/// the password from EVENTFLOW_SASL_PASSWORD, as the CLI does.
#[test]
fn connectors_log_in_like_the_cli() {
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("admin.password");
    std::fs::write(&password_file, "s3cret-pass\n").unwrap();
    let broker = Broker::start_with(&[
        "--native-require-auth",
        "--bootstrap-superuser",
        "admin",
        "--bootstrap-superuser-password-file",
        password_file.to_str().unwrap(),
    ]);
    let login = Credentials::scram("admin", "s3cret-pass");
    Client::connect_as(broker.addr.as_str(), Duration::from_secs(30), Some(&login))
        .unwrap()
        .create_topic("secured", 1, &[])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (source, sink) = (dir.path().join("in.txt"), dir.path().join("out.txt"));
    append(&source, numbered(0..20));
    let config = config(&broker, dir.path(), "secured", (&source, ""), (&sink, ""));
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("sasl_user = \"admin\"\n{text}")).unwrap();
    let runner = Runner::start_command(
        Command::new(env!("CARGO_BIN_EXE_eventflow-connect"))
            .arg(&config)
            .env("EVENTFLOW_SASL_PASSWORD", "s3cret-pass"),
        &dir.path().join("connect.log"),
    );
    assert!(
        eventually(WAIT, || lines_of(&sink) == numbered(0..20)),
        "{}",
        runner.log()
    );
    assert!(runner.terminate().success());

    // Without the login, the broker refuses both: they fail, and so does the run.
    std::fs::write(&config, text).unwrap();
    let runner = Runner::start(&config, &dir.path().join("anonymous.log"));
    let status = runner.wait();
    let log = std::fs::read_to_string(dir.path().join("anonymous.log")).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("connector local-file-source FAILED"), "{log}");
    assert!(log.contains("connector local-file-sink FAILED"), "{log}");
}

/// Bad configs are refused before anything runs, naming the connector and the key.
#[test]
fn bad_configs_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |body: &str, needle: &str| {
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            format!("state_dir = \"{}\"\n{body}", dir.path().display()),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_eventflow-connect"))
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{body}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{body}: expected {needle:?} in {stderr}"
        );
    };
    let source = "[[connector]]\nname = \"src\"\nkind = \"file-source\"\ntopic = \"t\"\n";
    refused(
        &source.replace("file-source", "ftp-source"),
        "connector `src` (kind ftp-source): unknown kind `ftp-source` (known: file-source, file-sink, postgres-sink, mirror)",
    );
    refused(
        &format!("{source}file = \"a\"\nbatch_size = 3\n"),
        "connector `src` (kind file-source): unknown field `batch_size`",
    );
    refused(
        source,
        "connector `src` (kind file-source): missing field `file`",
    );
    refused(
        &format!("{source}file = \"a\"\npoll_interval_ms = -1\n"),
        "poll_interval_ms",
    );
    refused(
        "[[connector]]\nname = \"out\"\nkind = \"file-sink\"\nfile = \"o\"\ntopics = [\"t\"]\nformat = \"%q\"\n",
        "connector `out` (kind file-sink): format: unknown directive %q",
    );
    refused("", "no [[connector]] table");
    refused(
        &format!("{source}file = \"a\"\n[broker]\n"),
        "unknown field `broker`",
    );
    // No config at all: usage.
    let out = Command::new(env!("CARGO_BIN_EXE_eventflow-connect"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}
