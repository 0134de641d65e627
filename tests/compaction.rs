//! Log compaction on a real broker: a `cleanup.policy=compact` topic with small segments,
//! keys written over many times and some deleted, read back from the start with our client
//! and with confluent-kafka once compaction ran; and a kill -9 in the middle of a pass.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{eventually, now_ms, read_all, Broker};
use eventflow::protocol::api::Acks;
use eventflow::protocol::batch::{self, BatchBuilder};

/// A record read back: offset, key, value.
type Read = (i64, String, Option<String>);

const KEYS: usize = 20;

/// Each key's newest record: offset and value (`None`: a tombstone).
type Newest = BTreeMap<String, (i64, Option<String>)>;

/// Produces `rounds` rounds of every key (values padded to `pad` bytes), then tombstones
/// for the first five keys, then `filler` rounds of the other keys, so the tombstones land
/// in sealed segments. Returns each key's newest record.
fn produce(broker: &Broker, topic: &str, rounds: usize, pad: usize, filler: usize) -> Newest {
    let mut c = broker.client();
    let mut newest = Newest::new();
    let mut send = |records: Vec<(String, Option<String>)>| {
        let mut b = BatchBuilder::new();
        for (key, value) in &records {
            b.push(
                now_ms(),
                Some(key.as_bytes()),
                value.as_deref().map(str::as_bytes),
                &[],
            );
        }
        let (base, _) = c.produce(topic, 0, b.finish(), Acks::All).unwrap();
        for (i, (key, value)) in records.into_iter().enumerate() {
            newest.insert(key, (base + i as i64, value));
        }
    };
    for round in 0..rounds {
        send(
            (0..KEYS)
                .map(|k| {
                    let mut value = format!("r{round}");
                    value.extend(std::iter::repeat_n('.', pad));
                    (format!("key-{k}"), Some(value))
                })
                .collect(),
        );
    }
    send((0..5).map(|k| (format!("key-{k}"), None)).collect());
    for round in 0..filler {
        send(
            (5..KEYS)
                .map(|k| (format!("key-{k}"), Some(format!("f{round}"))))
                .collect(),
        );
    }
    newest
}

/// Every record of partition 0 from offset 0, through our client: (offset, key, value).
fn records(broker: &Broker, topic: &str) -> Vec<Read> {
    let mut c = broker.client();
    let mut out = Vec::new();
    for one in read_all(&mut c, topic, 0, 0) {
        batch::validate(&one, usize::MAX).expect("a CRC-valid batch");
        for r in batch::records(&one).unwrap() {
            let r = r.unwrap();
            out.push((
                r.offset,
                String::from_utf8(r.key.unwrap().to_vec()).unwrap(),
                r.value.map(|v| String::from_utf8(v.to_vec()).unwrap()),
            ));
        }
    }
    out
}

fn newest_of(records: &[Read]) -> Newest {
    records
        .iter()
        .map(|(o, k, v)| (k.clone(), (*o, v.clone())))
        .collect()
}

fn partition_bytes(broker: &Broker, topic: &str) -> u64 {
    broker.client().describe_topic(topic).unwrap().partitions[0].size_bytes
}

/// A metric without labels, from the broker's /metrics.
fn metric(broker: &Broker, name: &str) -> u64 {
    let text = common::http::get(broker.metrics.expect("a metrics listener"), "/metrics").text();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

fn create(broker: &Broker, topic: &str, extra: &[(&str, &str)]) {
    let mut configs = vec![("cleanup.policy", "compact"), ("segment.bytes", "4096")];
    configs.extend_from_slice(extra);
    broker.client().create_topic(topic, 1, &configs).unwrap();
}

#[test]
fn a_compacted_topic_keeps_each_keys_newest_value_for_both_protocols() {
    let broker = Broker::start(&["--cores", "1", "--retention-check-secs", "1"]);
    create(&broker, "compacted", &[("delete.retention.ms", "3000")]);
    let expected = produce(&broker, "compacted", 40, 60, 12);
    let before = records(&broker, "compacted");
    let size_before = partition_bytes(&broker, "compacted");

    assert!(
        eventually(Duration::from_secs(30), || partition_bytes(
            &broker,
            "compacted"
        ) < size_before / 2),
        "compaction did not run: {} bytes",
        partition_bytes(&broker, "compacted")
    );
    // The pass logs once it has swapped in every segment it cleaned.
    broker.wait_for_log("compacted the log", 1);
    assert!(metric(&broker, "eventflow_compaction_runs_total") >= 1);
    assert!(metric(&broker, "eventflow_compaction_bytes_removed_total") >= size_before / 2);
    // Past delete.retention.ms the tombstones (all in sealed segments) go too.
    assert!(
        eventually(Duration::from_secs(30), || records(&broker, "compacted")
            .iter()
            .all(|r| r.2.is_some())),
        "tombstones outlived delete.retention.ms"
    );
    let after = records(&broker, "compacted");
    assert!(
        after.len() < before.len() / 4,
        "{} of {}",
        after.len(),
        before.len()
    );
    for (key, (offset, value)) in &expected {
        match value {
            // A deleted key has no record left.
            None => assert!(after.iter().all(|r| &r.1 != key), "{key} still there"),
            // Every other key's newest value, at its original offset.
            Some(v) => assert!(
                after.contains(&(*offset, key.clone(), Some(v.clone()))),
                "{key}: newest value missing"
            ),
        }
    }
    let live: Newest = expected
        .iter()
        .filter(|(_, (_, v))| v.is_some())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(newest_of(&after), live);
    // Overwritten values are gone from the sealed segments: at most one record per key
    // outside the active segment.
    let active_base: i64 = broker
        .segment_files("compacted", 0, "log")
        .last()
        .and_then(|p| p.file_stem()?.to_str()?.parse().ok())
        .unwrap();
    let sealed: Vec<_> = after.iter().filter(|r| r.0 < active_base).collect();
    let mut keys: Vec<&String> = sealed.iter().map(|r| &r.1).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), sealed.len(), "a key twice in sealed segments");

    // A consumer resuming at an offset compaction removed (offset 1: key-1's first value)
    // gets the next record there is, and goes on to the end.
    let resumed: Vec<i64> = read_all(&mut broker.client(), "compacted", 0, 1)
        .iter()
        .flat_map(|b| {
            batch::records(b)
                .unwrap()
                .map(|r| r.unwrap().offset)
                .collect::<Vec<_>>()
        })
        .collect();
    let from_one: Vec<i64> = after.iter().map(|r| r.0).filter(|&o| o >= 1).collect();
    assert_eq!(resumed, from_one);

    // confluent-kafka reads the same records at the same offsets.
    if !common::confluent_kafka_available() {
        return;
    }
    let kafka = broker.kafka.expect("the broker serves Kafka").to_string();
    let end = before.last().unwrap().0 + 1;
    let mut got = None;
    common::run_client_script(
        &broker.data_dir,
        "compacted.py",
        &[&kafka, "compacted", &end.to_string()],
        Duration::from_secs(90),
        |step| {
            if step["step"] == "done" {
                got = Some(step["records"].clone());
            }
            None
        },
    );
    let got: Vec<Read> = got
        .expect("compacted.py said nothing")
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_i64().unwrap(),
                r[1].as_str().unwrap().to_string(),
                r[2].as_str().map(str::to_string),
            )
        })
        .collect();
    assert_eq!(got, after);
}

#[test]
fn a_kill_during_compaction_loses_no_keys_newest_value() {
    // A slow pass (10 KiB/s), so the kill lands inside it.
    let mut broker = Broker::start(&[
        "--cores",
        "1",
        "--retention-check-secs",
        "1",
        "--compaction-bytes-per-sec",
        "10000",
    ]);
    create(&broker, "killed", &[("min.cleanable.dirty.ratio", "0.2")]);
    let expected = produce(&broker, "killed", 30, 60, 10);
    let dir = broker.store_dir().join("killed").join("0");
    let cleaning = || {
        std::fs::read_dir(&dir).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".cleaned")
        })
    };
    assert!(
        eventually(Duration::from_secs(60), cleaning),
        "compaction never started writing"
    );
    broker.kill9();
    broker.restart();
    assert_eq!(newest_of(&records(&broker, "killed")), expected);
    assert!(!cleaning(), "the restart left a compaction's files");
    // The next pass completes, and still every key's newest value is there.
    let size = partition_bytes(&broker, "killed");
    assert!(eventually(Duration::from_secs(120), || partition_bytes(
        &broker, "killed"
    ) < size));
    let after = newest_of(&records(&broker, "killed"));
    for (key, newest) in &expected {
        if newest.1.is_some() {
            assert_eq!(after.get(key), Some(newest), "{key}");
        }
    }
}
