//! A real Kafka client against a real broker: `kcat` (Debian's package, librdkafka 2.0.2)
//! talks to `eventflowd`'s Kafka listener. Without kcat installed these tests are skipped
//! with a line saying so, or fail when EVENTFLOW_REQUIRE_KAFKA_CLIENTS=1 (as in CI).

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Broker;

/// Whether kcat can run (see [`common::kafka_client_available`]).
fn kcat_available() -> bool {
    let ran = Command::new("kcat")
        .arg("-V")
        .output()
        .is_ok_and(|out| out.status.success());
    common::kafka_client_available("kcat", ran, "apt-get install kcat")
}

/// Runs kcat against the broker's Kafka listener with `stdin`, killing it after `limit`.
fn kcat(broker: &Broker, args: &[&str], stdin: &str, limit: Duration) -> Output {
    let kafka = broker.kafka.expect("the broker serves Kafka");
    let mut child = Command::new("kcat")
        .arg("-b")
        .arg(kafka.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kcat");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "kcat {args:?} did not finish within {limit:?}; stdout:\n{}\nstderr:\n{}\nbroker log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                broker.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Like [`kcat`], and the run must succeed; returns stdout.
fn kcat_ok(broker: &Broker, args: &[&str], stdin: &str) -> String {
    let out = kcat(broker, args, stdin, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "kcat {args:?} failed: {}\nbroker log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        broker.log()
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn kcat_lists_topics_created_with_our_client() {
    if !kcat_available() {
        return;
    }
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("orders", 3, &[]).unwrap();
    broker.client().create_topic("audit", 1, &[]).unwrap();
    let kafka = broker.kafka.unwrap();
    let listing = kcat_ok(&broker, &["-L"], "");
    assert!(
        listing.contains(&format!("broker 0 at {kafka}")),
        "one broker, the Kafka listener:\n{listing}"
    );
    assert!(
        listing.contains("topic \"orders\" with 3 partitions"),
        "{listing}"
    );
    assert!(
        listing.contains("topic \"audit\" with 1 partitions"),
        "{listing}"
    );
    for p in 0..3 {
        assert!(
            listing.contains(&format!("partition {p}, leader 0, replicas: 0, isrs: 0")),
            "{listing}"
        );
    }
    let one = kcat_ok(&broker, &["-L", "-t", "audit"], "");
    assert!(one.contains("topic \"audit\" with 1 partitions"), "{one}");
    assert!(!one.contains("orders"), "{one}");
}

#[test]
fn no_kafka_turns_the_listener_off() {
    let broker = Broker::start(&["--cores", "1", "--no-kafka"]);
    assert_eq!(broker.kafka, None);
    broker.client().create_topic("t", 1, &[]).unwrap();
}

/// Every record of a partition read with our native client: (offset, key, value, headers).
#[allow(clippy::type_complexity)]
fn native_records(
    broker: &Broker,
    topic: &str,
    partition: u32,
) -> Vec<(i64, String, String, Vec<(String, String)>)> {
    let mut client = broker.client();
    let mut out = Vec::new();
    for b in common::read_all(&mut client, topic, partition, 0) {
        for r in eventflow::protocol::batch::records(&b).expect("uncompressed records") {
            let r = r.unwrap();
            let text =
                |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
            out.push((
                r.offset,
                text(r.key),
                text(r.value),
                r.headers
                    .iter()
                    .map(|(k, v)| (text(Some(k)), text(*v)))
                    .collect(),
            ));
        }
    }
    out
}

#[test]
fn kcat_produces_and_consumes_keys_values_and_headers() {
    if !kcat_available() {
        return;
    }
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("events", 2, &[]).unwrap();
    // kcat's own partitioner is not Kafka's murmur2: name the partition.
    for partition in ["0", "1"] {
        kcat_ok(
            &broker,
            &[
                "-P",
                "-t",
                "events",
                "-p",
                partition,
                "-K:",
                "-H",
                "source=kcat",
                "-H",
                "n=1",
            ],
            "k1:first\nk2:second\nk3:third\n",
        );
    }
    let expected: Vec<_> = [("k1", "first"), ("k2", "second"), ("k3", "third")]
        .iter()
        .enumerate()
        .map(|(i, (k, v))| {
            (
                i as i64,
                k.to_string(),
                v.to_string(),
                vec![
                    ("source".to_string(), "kcat".to_string()),
                    ("n".to_string(), "1".to_string()),
                ],
            )
        })
        .collect();
    // Our native client reads what kcat wrote (both partitions live on different shards).
    for partition in 0..2 {
        assert_eq!(
            native_records(&broker, "events", partition),
            expected,
            "partition {partition}"
        );
    }
    // And kcat reads it back, from the beginning to the end of each partition.
    let consumed = kcat_ok(
        &broker,
        &[
            "-C",
            "-t",
            "events",
            "-e",
            "-o",
            "beginning",
            "-f",
            "%p|%o|%k|%s|%h\n",
        ],
        "",
    );
    let mut lines: Vec<&str> = consumed.lines().collect();
    lines.sort();
    let mut want = Vec::new();
    for p in 0..2 {
        for (o, _, k, v) in expected.iter().map(|(o, k, v, h)| (o, h, k, v)) {
            want.push(format!("{p}|{o}|{k}|{v}|source=kcat,n=1"));
        }
    }
    assert_eq!(lines, want);
}

#[test]
fn records_cross_between_kcat_and_our_client() {
    if !kcat_available() {
        return;
    }
    let broker = Broker::start(&["--cores", "2"]);
    let mut client = broker.client();
    client.create_topic("mixed", 1, &[]).unwrap();
    client
        .produce(
            "mixed",
            0,
            common::batch("native", 3, 0, common::now_ms()),
            eventflow::protocol::api::Acks::All,
        )
        .unwrap();
    kcat_ok(
        &broker,
        &["-P", "-t", "mixed", "-p", "0"],
        "from-kcat-0\nfrom-kcat-1\n",
    );
    let consumed = kcat_ok(
        &broker,
        &[
            "-C",
            "-t",
            "mixed",
            "-e",
            "-o",
            "beginning",
            "-f",
            "%o %k %s\n",
        ],
        "",
    );
    assert_eq!(
        consumed.lines().collect::<Vec<_>>(),
        vec![
            "0 k0 native-0",
            "1 k1 native-1",
            "2 k2 native-2",
            "3  from-kcat-0",
            "4  from-kcat-1"
        ]
    );
    let values: Vec<String> = native_records(&broker, "mixed", 0)
        .into_iter()
        .map(|(o, _, v, _)| format!("{o} {v}"))
        .collect();
    assert_eq!(
        values,
        vec![
            "0 native-0",
            "1 native-1",
            "2 native-2",
            "3 from-kcat-0",
            "4 from-kcat-1"
        ]
    );
}

#[test]
fn kcat_waits_at_the_end_of_the_log_until_records_arrive() {
    if !kcat_available() {
        return;
    }
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("later", 1, &[]).unwrap();
    let kafka = broker.kafka.unwrap().to_string();
    // An empty log: the consumer's position is its end. kcat exits after one record.
    let consumer = std::process::Command::new("kcat")
        .args([
            "-b",
            &kafka,
            "-C",
            "-t",
            "later",
            "-o",
            "beginning",
            "-c",
            "1",
        ])
        .args(["-f", "%o %s\n"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Whenever the record lands, before or while kcat's fetch waits at the end of the
    // log, kcat must receive it (tests/kafka_protocol.rs pins the wait itself).
    broker
        .client()
        .produce(
            "later",
            0,
            common::batch("late", 1, 0, common::now_ms()),
            eventflow::protocol::api::Acks::All,
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut consumer = consumer;
    while consumer.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "kcat never received the record");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = consumer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0 late-0\n");
}

#[test]
fn compressed_batches_are_stored_as_they_came() {
    if !kcat_available() {
        return;
    }
    let broker = Broker::start(&["--cores", "1"]);
    broker.client().create_topic("zipped", 1, &[]).unwrap();
    // librdkafka sends a batch uncompressed when gzip would not make it smaller: values
    // that compress well, and a linger that gathers them, keep every batch compressed.
    let padding = "x".repeat(200);
    let lines: String = (0..200)
        .map(|i| format!("record number {i} of many {padding}\n"))
        .collect();
    kcat_ok(
        &broker,
        &[
            "-P",
            "-t",
            "zipped",
            "-p",
            "0",
            "-z",
            "gzip",
            "-X",
            "linger.ms=50",
        ],
        &lines,
    );
    let mut client = broker.client();
    let batches = common::read_all(&mut client, "zipped", 0, 0);
    assert!(!batches.is_empty());
    let mut count = 0;
    for b in &batches {
        let header = eventflow::protocol::batch::BatchHeader::parse(b).unwrap();
        assert_eq!(header.attributes & 7, 1, "gzip, never decompressed");
        count += header.records_count;
    }
    assert_eq!(count, 200);
}
