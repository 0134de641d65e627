//! Kafka admin operations the way users run them: Python's confluent-kafka AdminClient
//! (`tests/kafka_clients/admin.py`) against a real `eventflowd`. Without python3 and the
//! `confluent-kafka` package this test fails with a message saying so, unless
//! EVENTFLOW_SKIP_KAFKA_CLIENTS=1.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Broker;

/// Whether python3 with confluent_kafka can run; panics with instructions when it cannot
/// and skipping was not asked for.
fn confluent_kafka_available() -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import confluent_kafka"])
        .output();
    match probe {
        Ok(out) if out.status.success() => true,
        _ if std::env::var("EVENTFLOW_SKIP_KAFKA_CLIENTS").as_deref() == Ok("1") => {
            eprintln!("python3 with confluent-kafka is not installed: skipped (EVENTFLOW_SKIP_KAFKA_CLIENTS=1)");
            false
        }
        other => panic!(
            "python3 with the confluent-kafka package is needed by this test and could not run \
             ({other:?}): install it (python3 -m pip install confluent-kafka), or set \
             EVENTFLOW_SKIP_KAFKA_CLIENTS=1 to skip"
        ),
    }
}

#[test]
fn confluent_admin_client_describes_alters_and_is_refused_clearly() {
    if !confluent_kafka_available() {
        return;
    }
    let broker = Broker::start(&["--cores", "2"]);
    let kafka = broker.kafka.expect("the broker serves Kafka");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka_clients/admin.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(kafka.to_string())
        .arg("admin-orders")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    // Lines arrive through a channel so that a stuck script cannot hang the test.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut steps = Vec::new();
    let mut stuck = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let step: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                let name = step["step"].as_str().unwrap_or_default().to_string();
                if name == "altered" {
                    // The change made through Kafka, seen through the native protocol.
                    let described = broker.client().describe_topic("admin-orders").unwrap();
                    let retention = described
                        .configs
                        .iter()
                        .find(|(k, _)| k == "retention.ms")
                        .map(|(_, v)| v.as_str());
                    assert_eq!(retention, Some("3600000"), "{:?}", described.configs);
                    stdin.write_all(b"go on\n").unwrap();
                    stdin.flush().unwrap();
                }
                steps.push(name);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                stuck = true;
                child.kill().unwrap();
                break;
            }
        }
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stuck && out.status.success(),
        "admin.py failed (stuck: {stuck}, {:?}) after steps {steps:?}:\n{stderr}\nbroker log:\n{}",
        out.status,
        broker.log()
    );
    assert_eq!(
        steps,
        [
            "created",
            "described",
            "broker",
            "unknown-topic",
            "altered",
            "reset",
            "compact-refused",
            "append-and-unknown-refused",
            "cluster",
            "partitions-refused",
            "deleted"
        ]
    );
    assert!(broker.client().describe_topic("admin-orders").is_err());
}
