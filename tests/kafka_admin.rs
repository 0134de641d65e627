//! Kafka admin operations the way users run them: Python's confluent-kafka AdminClient
//! (`tests/kafka_clients/admin.py`) against a real `eventflowd`. Without python3 and the
//! `confluent-kafka` package this test is skipped with a line saying so, or fails when
//! EVENTFLOW_REQUIRE_KAFKA_CLIENTS=1 (as in CI).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Broker;

/// Whether python3 with confluent_kafka can run (see
/// [`common::kafka_client_available`]).
fn confluent_kafka_available() -> bool {
    let ran = Command::new("python3")
        .args(["-c", "import confluent_kafka"])
        .output()
        .is_ok_and(|out| out.status.success());
    common::kafka_client_available(
        "python3 with confluent-kafka",
        ran,
        "python3 -m pip install confluent-kafka",
    )
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
