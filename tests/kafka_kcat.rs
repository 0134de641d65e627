//! A real Kafka client against a real broker: `kcat` (Debian's package, librdkafka 2.0.2)
//! talks to `eventflowd`'s Kafka listener. Without kcat installed these tests fail with a
//! message saying so, unless EVENTFLOW_SKIP_KAFKA_CLIENTS=1.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Broker;

/// Whether kcat can run; panics with instructions when it cannot and skipping was not
/// asked for.
fn kcat_available() -> bool {
    match Command::new("kcat").arg("-V").output() {
        Ok(out) if out.status.success() => true,
        _ if std::env::var("EVENTFLOW_SKIP_KAFKA_CLIENTS").as_deref() == Ok("1") => {
            eprintln!("kcat is not installed: skipped (EVENTFLOW_SKIP_KAFKA_CLIENTS=1)");
            false
        }
        other => panic!(
            "kcat is needed by this test and could not run ({other:?}): install Debian's `kcat` \
             package (apt-get install kcat), or set EVENTFLOW_SKIP_KAFKA_CLIENTS=1 to skip"
        ),
    }
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
