//! The `eventflow` command line against a real broker: Kafka's quickstart, redone.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{ok, Broker};
use eventflow::client::partitioner::partition_for_key;

fn eventflow(broker: &Broker, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_eventflow"))
        .args(args)
        .env("EVENTFLOW_BOOTSTRAP", broker.addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run eventflow");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        // A command that fails early may exit before it reads its input.
        if let Err(e) = input.write_all(text.as_bytes()) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        }
    }
    drop(input);
    child.wait_with_output().unwrap()
}

#[test]
fn kafka_quickstart_with_our_tools() {
    let broker = Broker::start(&["--cores", "2"]);
    // Step 1: create a topic, then describe it.
    let out = ok(eventflow(
        &broker,
        &["topic", "create", "quickstart-events", "--partitions", "3"],
        None,
    ));
    assert_eq!(out, "created topic quickstart-events with 3 partitions\n");
    let out = ok(eventflow(
        &broker,
        &["topic", "describe", "quickstart-events"],
        None,
    ));
    assert!(
        out.starts_with("topic quickstart-events  partitions 3\n"),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.ends_with("\t0\t0\t0")).count(),
        3,
        "{out}"
    );
    assert_eq!(
        ok(eventflow(&broker, &["topic", "list"], None)),
        "quickstart-events\t3\n"
    );

    // Step 2: write events, one per line.
    let produced = eventflow(
        &broker,
        &["produce", "quickstart-events", "--partition", "0"],
        Some("This is my first event\nThis is my second event\n"),
    );
    let stderr = String::from_utf8_lossy(&produced.stderr).into_owned();
    ok(produced);
    assert!(stderr.contains("produced 2 of 2 records"), "{stderr}");

    // Step 3: read them back from the beginning.
    let out = ok(eventflow(
        &broker,
        &[
            "consume",
            "quickstart-events",
            "--from-beginning",
            "--timeout-ms",
            "2500",
        ],
        None,
    ));
    assert_eq!(out, "This is my first event\nThis is my second event\n");

    // Keyed lines land on the partition murmur2 says, like Kafka's console producer with
    // parse.key=true.
    let keys = ["alice", "bob", "carol", "dave", "erin", "frank"];
    let lines: String = keys.iter().map(|k| format!("{k}:hello {k}\n")).collect();
    ok(eventflow(
        &broker,
        &[
            "produce",
            "quickstart-events",
            "--key-separator",
            ":",
            "--header",
            "app=cli",
        ],
        Some(&lines),
    ));
    for key in keys {
        let p = partition_for_key(key.as_bytes(), 3);
        let out = ok(eventflow(
            &broker,
            &[
                "consume",
                "quickstart-events",
                "--partition",
                &p.to_string(),
                "--from-beginning",
                "--timeout-ms",
                "2500",
                "--format",
                "%k|%v|%h\\n",
            ],
            None,
        ));
        assert!(
            out.lines()
                .any(|l| l == format!("{key}|hello {key}|app=cli")),
            "{key} not on partition {p}: {out}"
        );
    }

    // --format and --json output, exact.
    let out = ok(eventflow(
        &broker,
        &[
            "consume",
            "quickstart-events",
            "--partition",
            "0",
            "--offset",
            "0",
            "--max-messages",
            "2",
            "--format",
            "%t %p %o [%k] %v\\n",
        ],
        None,
    ));
    assert_eq!(
        out,
        "quickstart-events 0 0 [] This is my first event\nquickstart-events 0 1 [] This is my second event\n"
    );
    let out = ok(eventflow(
        &broker,
        &[
            "consume",
            "quickstart-events",
            "--partition",
            "0",
            "--offset",
            "1",
            "--max-messages",
            "1",
            "--json",
        ],
        None,
    ));
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(json["topic"], "quickstart-events");
    assert_eq!(json["partition"], 0);
    assert_eq!(json["offset"], 1);
    assert_eq!(json["key"], serde_json::Value::Null);
    assert_eq!(json["value"], "This is my second event");
    assert!(json["timestamp"].as_i64().unwrap() > 0);
    assert_eq!(json["headers"], serde_json::json!({}));

    // Alter, then delete.
    ok(eventflow(
        &broker,
        &[
            "topic",
            "alter",
            "quickstart-events",
            "--config",
            "retention.ms=60000",
        ],
        None,
    ));
    let out = ok(eventflow(
        &broker,
        &["topic", "describe", "quickstart-events"],
        None,
    ));
    assert!(out.contains("  retention.ms=60000\n"), "{out}");
    ok(eventflow(
        &broker,
        &["topic", "delete", "quickstart-events"],
        None,
    ));
    assert_eq!(ok(eventflow(&broker, &["topic", "list"], None)), "");
}

#[test]
fn errors_are_one_line_with_a_non_zero_exit() {
    let broker = Broker::start(&["--cores", "2"]);
    for (args, needle) in [
        (vec!["topic", "describe", "missing"], "unknown topic"),
        (vec!["topic", "create", "bad/name"], "invalid topic"),
        (vec!["produce", "missing"], "does not exist"),
        (
            vec!["consume", "missing", "--timeout-ms", "100"],
            "unknown topic",
        ),
        (
            vec!["topic", "create", "x", "--config", "nonsense"],
            "KEY=VALUE",
        ),
    ] {
        let out = eventflow(&broker, &args, Some("a line\n"));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.starts_with("eventflow: error: "),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_eventflow"))
        .args(["--bootstrap", "127.0.0.1:1", "topic", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the broker"));
}

#[test]
fn produce_from_a_file_and_failed_records_exit_non_zero() {
    let broker = Broker::start(&["--cores", "2", "--max-batch-bytes", "2048"]);
    ok(eventflow(
        &broker,
        &["topic", "create", "files", "--partitions", "1"],
        None,
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lines.txt");
    std::fs::write(&path, "one\ntwo\nthree\n").unwrap();
    let out = eventflow(
        &broker,
        &[
            "produce",
            "files",
            "--file",
            path.to_str().unwrap(),
            "--acks",
            "1",
        ],
        None,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("produced 3 of 3"));
    ok(out);
    let out = ok(eventflow(
        &broker,
        &[
            "consume",
            "files",
            "--from-beginning",
            "--max-messages",
            "3",
        ],
        None,
    ));
    assert_eq!(out, "one\ntwo\nthree\n");
    // A line longer than the broker's batch limit fails (small batches keep it apart
    // from its neighbour, which lands); exit code 1.
    let long = "x".repeat(5000);
    let out = eventflow(
        &broker,
        &["produce", "files", "--batch-size", "100"],
        Some(&format!("ok\n{long}\n")),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("produced 1 of 2"), "{stderr}");
    assert!(stderr.contains("batch too large"), "{stderr}");
}

#[test]
fn ctrl_c_stops_a_consumer_and_prints_the_count() {
    let broker = Broker::start(&["--cores", "2"]);
    ok(eventflow(
        &broker,
        &["topic", "create", "live", "--partitions", "2"],
        None,
    ));
    ok(eventflow(&broker, &["produce", "live"], Some("a\nb\nc\n")));
    let mut child = Command::new(env!("CARGO_BIN_EXE_eventflow"))
        .args(["consume", "live", "--from-beginning"])
        .env("EVENTFLOW_BOOTSTRAP", broker.addr.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the three records are out (a consumer left alone runs forever).
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let got: Vec<String> = (0..3).map(|_| lines.next().unwrap().unwrap()).collect();
    assert_eq!(got.len(), 3);
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert!(lines.next().is_none(), "nothing after the interrupt");
    assert!(String::from_utf8_lossy(&out.stderr).contains("consumed 3 records"));
}

#[test]
fn consumer_groups_from_the_command_line() {
    let broker = Broker::start(&["--cores", "2"]);
    ok(eventflow(
        &broker,
        &["topic", "create", "t", "--partitions", "2"],
        None,
    ));
    let lines: String = (0..10).map(|i| format!("line-{i}\n")).collect();
    ok(eventflow(&broker, &["produce", "t"], Some(&lines)));
    let group_read = |extra: &[&str]| {
        let mut args = vec!["consume", "t", "--group", "g", "--timeout-ms", "1500"];
        args.extend_from_slice(extra);
        ok(eventflow(&broker, &args, None))
    };
    // A new group reads from the beginning and commits as it leaves.
    let out = group_read(&["--from-beginning", "--max-messages", "10"]);
    assert_eq!(out.lines().count(), 10, "{out}");
    let described = ok(eventflow(&broker, &["group", "describe", "g"], None));
    assert!(described.starts_with("group g  state empty"), "{described}");
    let rows: Vec<&str> = described.lines().filter(|l| l.starts_with("t\t")).collect();
    assert_eq!(rows.len(), 2, "{described}");
    for row in rows {
        let fields: Vec<&str> = row.split('\t').collect();
        assert_eq!(fields[2], fields[3], "committed is the log end: {row}");
        assert_eq!(fields[4], "0", "no lag: {row}");
    }
    // Nothing left for the group; a reset brings it all back.
    assert_eq!(group_read(&["--from-beginning"]).lines().count(), 0);
    let reset = ok(eventflow(
        &broker,
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to",
            "earliest",
        ],
        None,
    ));
    assert_eq!(reset.lines().count(), 2, "{reset}");
    assert_eq!(group_read(&["--max-messages", "10"]).lines().count(), 10);
    let listed = ok(eventflow(&broker, &["group", "list"], None));
    assert!(listed.contains("g\tconsumer\t0 members"), "{listed}");
    assert_eq!(
        ok(eventflow(&broker, &["group", "delete", "g"], None)),
        "deleted group g\n"
    );
    let gone = eventflow(&broker, &["group", "describe", "g"], None);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("unknown group"));
    // Flags that make no sense with --group are refused.
    let bad = eventflow(
        &broker,
        &["consume", "t", "--group", "g", "--partition", "0"],
        None,
    );
    assert!(!bad.status.success());
}

#[test]
fn queues_from_the_command_line() {
    let broker = Broker::start(&["--cores", "2"]);
    ok(eventflow(
        &broker,
        &["topic", "create", "jobs", "--partitions", "2"],
        None,
    ));
    let lines: String = (0..10).map(|i| format!("job-{i}\n")).collect();
    ok(eventflow(&broker, &["produce", "jobs"], Some(&lines)));
    let take = |extra: &[&str]| {
        let mut args = vec![
            "queue",
            "consume",
            "jobs",
            "--group",
            "q",
            "--timeout-ms",
            "1000",
        ];
        args.extend_from_slice(extra);
        ok(eventflow(&broker, &args, None))
    };
    // Four are taken and accepted; the rest of what was taken goes back at once.
    let first = take(&["--max-messages", "4"]);
    assert_eq!(first.lines().count(), 4, "{first}");
    let rest = take(&["--ack", "manual"]);
    assert_eq!(rest.lines().count(), 6, "{rest}");
    let mut all: Vec<&str> = first.lines().chain(rest.lines()).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 10);
    let described = ok(eventflow(&broker, &["queue", "describe", "q"], None));
    assert!(described.starts_with("share group q"), "{described}");
    let rows: Vec<&str> = described
        .lines()
        .filter(|l| l.starts_with("jobs\t"))
        .collect();
    assert_eq!(rows.len(), 2, "{described}");
    for row in rows {
        let fields: Vec<&str> = row.split('\t').collect();
        assert_eq!(fields[5], "0", "backlog drained: {row}");
    }
    let bad = eventflow(
        &broker,
        &["queue", "consume", "jobs", "--group", "q", "--ack", "later"],
        None,
    );
    assert!(!bad.status.success());
}

#[test]
fn kafkas_spellings_and_small_counts_read_right() {
    let broker = Broker::start(&["--cores", "1"]);
    let out = ok(eventflow(
        &broker,
        &["topic", "create", "one", "--partitions", "1"],
        None,
    ));
    assert_eq!(out, "created topic one with 1 partition\n");
    // `--acks -1` is Kafka's spelling of all.
    ok(eventflow(
        &broker,
        &["produce", "one", "--acks", "-1"],
        Some("only\n"),
    ));
    let output = eventflow(
        &broker,
        &["consume", "one", "--from-beginning", "--timeout-ms", "1000"],
        None,
    );
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(ok(output), "only\n");
    assert!(stderr.contains("consumed 1 record\n"), "{stderr}");
    // An unknown --format directive is an error, not text.
    let output = eventflow(
        &broker,
        &["consume", "one", "--from-beginning", "--format", "%v %z"],
        None,
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown directive %z"), "{stderr}");
}
