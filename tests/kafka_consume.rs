//! Kafka consumers the way users run them, against a real `eventflowd`: Python's
//! confluent-kafka (librdkafka, which fetches without sessions) and kafka-python (which
//! fetches in incremental fetch sessions) read a three-partition topic with assign() while
//! it is being produced to (`tests/kafka_clients/consume.py`), and must get every record
//! exactly once and in order per partition. Without python3 and the client's package a
//! test is skipped with a line saying so, or fails when EVENTFLOW_REQUIRE_KAFKA_CLIENTS=1
//! (as in CI).

mod common;

use std::time::Duration;

use common::Broker;
use eventflow::protocol::api::Acks;

const PARTITIONS: u32 = 3;
/// Rounds of one batch per partition; the first is produced before the consumer starts.
const ROUNDS: usize = 30;
const PER_BATCH: usize = 10;

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
    let total = ROUNDS * PER_BATCH;
    let mut done = None;
    common::run_client_script(
        &broker.data_dir,
        "consume.py",
        &[
            client,
            &kafka.to_string(),
            topic,
            &PARTITIONS.to_string(),
            &total.to_string(),
        ],
        Duration::from_secs(90),
        |step| {
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
            None
        },
    );
    let partitions = done.unwrap_or_else(|| panic!("consume.py {client} said nothing at the end"));
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
    if !common::python_module_available("confluent_kafka", "confluent-kafka") {
        return;
    }
    let broker = Broker::start(&["--cores", "2"]);
    consume_while_producing(&broker, "confluent", "consume-confluent");
}

#[test]
fn kafka_python_consumer_reads_in_fetch_sessions() {
    if !common::python_module_available("kafka", "kafka-python") {
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
