//! Kafka consumers the way users run them, against a real `eventflowd`: Python's
//! confluent-kafka (librdkafka, which fetches without sessions) and kafka-python (which
//! fetches in incremental fetch sessions) read a three-partition topic with assign() while
//! it is being produced to (`tests/kafka_clients/consume.py`), and must get every record
//! exactly once and in order per partition. Without python3 and the client's package a
//! test is skipped with a line saying so, or fails when EVENTFLOW_REQUIRE_KAFKA_CLIENTS=1
//! (as in CI).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Broker;
use eventflow::protocol::api::Acks;

const PARTITIONS: u32 = 3;
/// Rounds of one batch per partition; the first is produced before the consumer starts.
const ROUNDS: usize = 30;
const PER_BATCH: usize = 10;

/// Whether python3 can import `module` (see [`common::kafka_client_available`]).
fn python_module_available(module: &str, package: &str) -> bool {
    let ran = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|out| out.status.success());
    common::kafka_client_available(
        &format!("python3 with {package}"),
        ran,
        &format!("python3 -m pip install {package}"),
    )
}

fn produce_round(broker: &Broker, topic: &str, round: usize) {
    let mut client = broker.client();
    for p in 0..PARTITIONS {
        client
            .produce(
                topic,
                p,
                common::batch(&format!("p{p}-r{round}"), PER_BATCH, 0, common::now_ms()),
                Acks::All,
            )
            .unwrap();
    }
}

/// Runs consume.py with `client` on a fresh topic while producing to it; checks that every
/// partition's records arrived once each, in order.
fn consume_while_producing(broker: &Broker, client: &str, topic: &str) {
    broker
        .client()
        .create_topic(topic, PARTITIONS, &[])
        .unwrap();
    produce_round(broker, topic, 0);
    let kafka = broker.kafka.expect("the broker serves Kafka");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka_clients/consume.py");
    let total = ROUNDS * PER_BATCH;
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(client)
        .arg(kafka.to_string())
        .arg(topic)
        .arg(PARTITIONS.to_string())
        .arg(total.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
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
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut done = None;
    let mut steps = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let step: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                match step["step"].as_str() {
                    Some("assigned") => {
                        // The consumer is fetching: the rest is produced while it does.
                        for round in 1..ROUNDS {
                            produce_round(broker, topic, round);
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    Some("done") => done = Some(step["partitions"].clone()),
                    _ => {}
                }
                steps.push(step["step"].as_str().unwrap_or_default().to_string());
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                child.kill().unwrap();
                break;
            }
        }
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let Some(partitions) = done.filter(|_| out.status.success()) else {
        panic!(
            "consume.py {client} failed ({:?}) after steps {steps:?}:\n{stderr}\nbroker log:\n{}",
            out.status,
            broker.log()
        );
    };
    for p in 0..PARTITIONS {
        let received: Vec<(i64, String)> = partitions[p.to_string()]
            .as_array()
            .unwrap_or_else(|| panic!("partition {p} missing: {partitions}"))
            .iter()
            .map(|r| (r[0].as_i64().unwrap(), r[1].as_str().unwrap().to_string()))
            .collect();
        let expected: Vec<(i64, String)> = (0..ROUNDS)
            .flat_map(|round| (0..PER_BATCH).map(move |i| format!("p{p}-r{round}-{i}")))
            .enumerate()
            .map(|(offset, value)| (offset as i64, value))
            .collect();
        assert_eq!(
            received.len(),
            expected.len(),
            "{client}: partition {p} got {} records, {} expected (duplicates or losses)",
            received.len(),
            expected.len()
        );
        assert_eq!(received, expected, "{client}: partition {p}");
    }
}

#[test]
fn confluent_kafka_consumer_reads_every_record_once_in_order() {
    if !python_module_available("confluent_kafka", "confluent-kafka") {
        return;
    }
    let broker = Broker::start(&["--cores", "2"]);
    consume_while_producing(&broker, "confluent", "consume-confluent");
}

#[test]
fn kafka_python_consumer_reads_in_fetch_sessions() {
    if !python_module_available("kafka", "kafka-python") {
        return;
    }
    let broker = Broker::start_logging(
        &["--cores", "2"],
        "info,eventflow::server::kafka::fetch=debug",
    );
    consume_while_producing(&broker, "kafka-python", "consume-sessions");
    // The consumer opened a session and went on incrementally, without a session error.
    let created = broker.log_count("fetch session created");
    let incremental = broker.log_count("incremental fetch");
    eprintln!("kafka-python: {created} fetch sessions, {incremental} incremental fetches");
    assert!(
        created >= 1 && incremental >= 2,
        "{created} sessions created, {incremental} incremental fetches; log:\n{}",
        broker.log()
    );
    for error in [
        "fetch session not found",
        "fetch session of another shard",
        "fetch session epoch mismatch",
    ] {
        assert_eq!(
            broker.log_count(error),
            0,
            "{error}; log:\n{}",
            broker.log()
        );
    }
}
