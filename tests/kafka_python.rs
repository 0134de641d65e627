//! kafka-python (3.0.12), a pure-Python client with its own implementation of the protocol,
//! against a real `eventflowd`: its KafkaAdminClient (`tests/kafka_clients/kafka_python_admin.py`)
//! and a consumer group of two KafkaConsumers fed by a KafkaProducer
//! (`tests/kafka_clients/kafka_python_groups.py`). Without python3 and the `kafka-python`
//! package these tests are skipped with a line saying so, or fail when
//! EVENTFLOW_REQUIRE_KAFKA_CLIENTS=1 (as in CI).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Broker;

fn kafka_python_available() -> bool {
    common::python_module_available("kafka", "kafka-python")
}

#[test]
fn kafka_python_admin_client_creates_describes_alters_and_deletes() {
    if !kafka_python_available() {
        return;
    }
    let broker = Broker::start(&["--cores", "2"]);
    let kafka = broker.kafka.expect("the broker serves Kafka").to_string();
    let topic = "kp-admin";
    let steps = common::run_client_script(
        &broker.data_dir,
        "kafka_python_admin.py",
        &[&kafka, topic],
        Duration::from_secs(30),
        |step| {
            if step["step"] != "altered" {
                return None;
            }
            // The change made through kafka-python, seen through the native protocol.
            let described = broker.client().describe_topic(topic).unwrap();
            let retention = described
                .configs
                .iter()
                .find(|(k, _)| k == "retention.ms")
                .map(|(_, v)| v.as_str());
            assert_eq!(retention, Some("3600000"), "{:?}", described.configs);
            assert_eq!(described.partitions.len(), 3, "{described:?}");
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
            "alter-refused",
            "legacy-alter-not-advertised",
            "cluster",
            "partitions-refused",
            "deleted"
        ]
    );
    assert!(broker.client().describe_topic(topic).is_err());
}

/// Two kafka-python members commit after every record: each record is delivered exactly
/// once across B's join and A's leave, the committed offsets end at the end offsets, and
/// while both are in, the native protocol describes the group with the partitions each
/// member holds (read from kafka-python's own assignment encoding).
#[test]
fn kafka_python_group_shares_partitions_without_redelivery() {
    if !kafka_python_available() {
        return;
    }
    let broker = Broker::start(&["--cores", "2", "--group-initial-rebalance-delay-ms", "0"]);
    let kafka = broker.kafka.expect("the broker serves Kafka").to_string();
    let (topic, group) = ("kp-orders", "kp-billing");
    let steps = common::run_client_script(
        &broker.data_dir,
        "kafka_python_groups.py",
        &[&kafka, topic, group],
        Duration::from_secs(60),
        |step| {
            if step["step"] != "both-active" {
                return None;
            }
            let described = broker.client().describe_group(group).unwrap();
            assert_eq!(described.members.len(), 2, "{described:?}");
            assert_eq!(described.strategy, "range", "{described:?}");
            let mut held = BTreeSet::new();
            for member in &described.members {
                assert_eq!(member.topics, vec![topic.to_string()], "{described:?}");
                let said = &step[&member.client_id[member.client_id.len() - 1..]];
                let mine: Vec<u64> = member
                    .assignment
                    .iter()
                    .flat_map(|a| a.partitions.iter().map(|&p| u64::from(p)))
                    .collect();
                assert_eq!(
                    serde_json::json!(mine),
                    *said,
                    "{} holds what the client says: {described:?}",
                    member.client_id
                );
                for p in mine {
                    assert!(held.insert(p), "partition {p} held twice: {described:?}");
                }
            }
            assert_eq!(held, (0..4).collect(), "{described:?}");
            Some("go on".into())
        },
    );
    assert_eq!(
        steps,
        [
            "produced",
            "both-active",
            "consumed",
            "described",
            "offsets",
            "offset-deleted",
            "deleted"
        ]
    );
}
