//! Kafka admin operations the way users run them: Python's confluent-kafka AdminClient
//! (`tests/kafka_clients/admin.py`) against a real `eventflowd`. Without python3 and the
//! `confluent-kafka` package this test is skipped with a line saying so, or fails when
//! EVENTFLOW_REQUIRE_KAFKA_CLIENTS=1 (as in CI).

mod common;

use std::time::Duration;

use common::Broker;

#[test]
fn confluent_admin_client_describes_alters_and_is_refused_clearly() {
    if !common::confluent_kafka_available() {
        return;
    }
    let broker = Broker::start(&["--cores", "2"]);
    let kafka = broker.kafka.expect("the broker serves Kafka");
    let steps = common::run_client_script(
        &broker.data_dir,
        "admin.py",
        &[&kafka.to_string(), "admin-orders"],
        Duration::from_secs(20),
        |step| {
            if step["step"] != "altered" {
                return None;
            }
            // The change made through Kafka, seen through the native protocol.
            let described = broker.client().describe_topic("admin-orders").unwrap();
            let retention = described
                .configs
                .iter()
                .find(|(k, _)| k == "retention.ms")
                .map(|(_, v)| v.as_str());
            assert_eq!(retention, Some("3600000"), "{:?}", described.configs);
            Some("go on".into())
        },
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
