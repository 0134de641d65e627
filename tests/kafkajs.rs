//! kafkajs (2.2.4), a JavaScript client with its own implementation of the protocol, against
//! a real `eventflowd` (`tests/kafka_clients/js/groups.js`): it creates a topic, produces
//! keyed records with headers, consumes them in a group of two members that rebalances as
//! one joins and the other leaves, and checks the group and its offsets with its admin
//! client. kafkajs speaks older versions than the other clients (Produce v7, Fetch v11,
//! JoinGroup v5, OffsetCommit v5, Metadata v6, ListOffsets v3). Without node and the
//! package installed by `npm ci` in `tests/kafka_clients/js` the test is skipped with a line
//! saying so, or fails when EVENTFLOW_REQUIRE_KAFKA_CLIENTS=1 (as in CI).

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::Broker;
use eventflow::protocol::batch;

/// Records groups.js produces (a multiple of its batch, 100).
const RECORDS: usize = 1000;

/// Whether node can load kafkajs from `tests/kafka_clients/js/node_modules`.
fn kafkajs_available() -> bool {
    let dir = common::client_scripts_dir().join("js");
    let ran = Command::new("node")
        .args(["-e", "require('kafkajs')"])
        .current_dir(&dir)
        .output()
        .is_ok_and(|out| out.status.success());
    common::kafka_client_available(
        "node with kafkajs",
        ran,
        "apt-get install nodejs npm, then npm ci in tests/kafka_clients/js",
    )
}

/// What kafkajs produced, read back through the native protocol: record `i` is `k{i}` =
/// `v{i}` with the headers `index: i` and `source: kafkajs`, each exactly once.
fn every_record_has_its_key_and_headers(broker: &Broker, topic: &str) {
    let mut client = broker.client();
    let mut seen = BTreeSet::new();
    for partition in 0..4 {
        for b in common::read_all(&mut client, topic, partition, 0) {
            for r in batch::records(&b).expect("records") {
                let r = r.expect("record");
                let text =
                    |b: Option<&[u8]>| String::from_utf8(b.expect("not null").to_vec()).unwrap();
                let value = text(r.value);
                let i: usize = value
                    .strip_prefix('v')
                    .and_then(|i| i.parse().ok())
                    .unwrap();
                assert_eq!(
                    text(r.key),
                    format!("k{i}"),
                    "partition {partition} offset {}",
                    r.offset
                );
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|(k, v)| (String::from_utf8(k.to_vec()).unwrap(), text(*v)))
                    .collect();
                assert_eq!(
                    headers,
                    [
                        ("index".into(), i.to_string()),
                        ("source".into(), "kafkajs".into())
                    ],
                    "record {i}"
                );
                assert!(seen.insert(i), "record {i} stored twice");
            }
        }
    }
    assert_eq!(seen, (0..RECORDS).collect(), "every record stored once");
}

#[test]
fn kafkajs_produces_and_consumes_in_a_group_without_redelivery() {
    if !kafkajs_available() {
        return;
    }
    let broker = Broker::start(&["--cores", "2", "--group-initial-rebalance-delay-ms", "0"]);
    let kafka = broker.kafka.expect("the broker serves Kafka").to_string();
    let (topic, group) = ("js-orders", "js-billing");
    let script = common::client_scripts_dir().join("js/groups.js");
    let steps = common::run_client_program(
        &broker.data_dir,
        "node",
        &script,
        &[&kafka, topic, group, &RECORDS.to_string()],
        Duration::from_secs(60),
        |step| {
            if step["step"] == "produced" {
                every_record_has_its_key_and_headers(&broker, topic);
                return None;
            }
            if step["step"] != "both-active" {
                return None;
            }
            // kafkajs members seen through the native protocol: kafkajs's own assignor,
            // and the partitions each member holds, decoded from its assignment.
            let described = broker.client().describe_group(group).unwrap();
            assert_eq!(described.members.len(), 2, "{described:?}");
            assert_eq!(described.strategy, "RoundRobinAssigner", "{described:?}");
            let mut held = BTreeSet::new();
            for member in &described.members {
                assert_eq!(member.topics, vec![topic.to_string()], "{described:?}");
                for a in &member.assignment {
                    assert_eq!(a.topic, topic);
                    for p in &a.partitions {
                        assert!(held.insert(*p), "partition {p} held twice: {described:?}");
                    }
                }
            }
            assert_eq!(held, (0..4).collect(), "{described:?}");
            Some("go on".into())
        },
    );
    assert_eq!(
        steps,
        [
            "created",
            "produced",
            "both-active",
            "consumed",
            "described",
            "offsets",
            "reset",
            "deleted"
        ]
    );
}
