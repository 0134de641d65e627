//! Kafka consumer groups the way users run them: confluent-kafka consumers
//! (`tests/kafka_clients/groups.py`) and kcat (`-G`) joining, splitting, rebalancing and
//! committing against a real `eventflowd`, and the same group seen through the native
//! protocol. Without the clients these tests are skipped with a line saying so, or fail when
//! EVENTFLOW_REQUIRE_KAFKA_CLIENTS=1 (as in CI).

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Broker;
use eventflow::client::consumer::{Consumer, ConsumerConfig};
use eventflow::client::group::{GroupConfig, OffsetReset};

/// Two confluent-kafka members with `assignor`: every record delivered exactly once across
/// a join and a leave, and the group as the native protocol describes it while both are in.
fn two_members_share_without_redelivery(assignor: &str) {
    if !common::confluent_kafka_available() {
        return;
    }
    let broker = Broker::start(&["--cores", "2", "--group-initial-rebalance-delay-ms", "0"]);
    let kafka = broker.kafka.expect("the broker serves Kafka").to_string();
    let (topic, group) = (format!("orders-{assignor}"), format!("billing-{assignor}"));
    let steps = common::run_client_script(
        &broker.data_dir,
        "groups.py",
        &[&kafka, &topic, &group, assignor],
        Duration::from_secs(90),
        |step| {
            if step["step"] != "both-active" {
                return None;
            }
            // Kafka members, described by eventflow's own protocol: one group, two members
            // whose partitions (read from the Kafka assignment) are the ones they hold.
            let described = broker.client().describe_group(&group).unwrap();
            assert_eq!(described.members.len(), 2, "{described:?}");
            let mut held = BTreeSet::new();
            for member in &described.members {
                assert_eq!(member.topics, vec![topic.clone()], "{described:?}");
                for a in &member.assignment {
                    assert_eq!(a.topic, topic);
                    for p in &a.partitions {
                        assert!(held.insert(*p), "partition {p} held twice: {described:?}");
                    }
                }
            }
            assert_eq!(held, (0..4).collect(), "{described:?}");
            assert_eq!(described.strategy, assignor);
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
            "deleted"
        ]
    );
}

#[test]
fn confluent_kafka_group_with_the_range_assignor() {
    two_members_share_without_redelivery("range");
}

#[test]
fn confluent_kafka_group_with_the_cooperative_sticky_assignor() {
    two_members_share_without_redelivery("cooperative-sticky");
}

/// Two `kcat -G` members started together split the partitions, and a third run of the
/// group resumes from the committed offsets: it reads only what was produced since.
#[test]
fn kcat_group_members_split_partitions_and_resume_from_commits() {
    let ran = Command::new("kcat")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !common::kafka_client_available("kcat", ran, "apt-get install kcat") {
        return;
    }
    // The first rebalance waits for members that start together (Kafka's default is 3 s).
    let broker = Broker::start(&["--cores", "2", "--group-initial-rebalance-delay-ms", "1500"]);
    let kafka = broker.kafka.unwrap().to_string();
    broker.client().create_topic("clicks", 4, &[]).unwrap();
    let produce = |from: usize, to: usize| {
        for p in 0..4 {
            let lines: String = (from..to)
                .filter(|i| i % 4 == p)
                .map(|i| format!("k{i}:v{i}\n"))
                .collect();
            let mut child = Command::new("kcat")
                .args([
                    "-b",
                    &kafka,
                    "-P",
                    "-t",
                    "clicks",
                    "-K:",
                    "-p",
                    &p.to_string(),
                ])
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(lines.as_bytes())
                .unwrap();
            assert!(child.wait().unwrap().success());
        }
    };
    produce(0, 400);
    let member = || {
        Command::new("timeout")
            .args(["30", "kcat", "-b", &kafka, "-G", "clickers", "clicks"])
            .args([
                "-X",
                "auto.offset.reset=earliest",
                "-e",
                "-q",
                "-f",
                "%p %o %k\n",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = member();
    std::thread::sleep(Duration::from_millis(200));
    let second = member();
    let read = |child: std::process::Child| -> Vec<String> {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kcat -G failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };
    let (a, b) = (read(first), read(second));
    let partitions = |lines: &[String]| -> BTreeSet<String> {
        lines
            .iter()
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect()
    };
    assert!(
        !a.is_empty() && !b.is_empty(),
        "a: {}, b: {}",
        a.len(),
        b.len()
    );
    assert!(
        partitions(&a).is_disjoint(&partitions(&b)),
        "a partition went to both members: {:?} {:?}",
        partitions(&a),
        partitions(&b)
    );
    let all: BTreeSet<&String> = a.iter().chain(&b).collect();
    assert_eq!(all.len(), 400);
    assert_eq!(a.len() + b.len(), 400);

    // kcat commits what it consumed; the next run reads only the new records.
    produce(400, 440);
    let again = read(member());
    assert_eq!(again.len(), 40, "{again:?}");
    assert!(again.iter().all(|l| {
        let key: usize = l.rsplit('k').next().unwrap().parse().unwrap();
        key >= 400
    }));
}

/// A group that eventflow's native consumers hold is one group for Kafka clients too: the
/// AdminClient describes its members and their partitions, and a Kafka consumer cannot join
/// it (INCONSISTENT_GROUP_PROTOCOL) while they are in.
#[test]
fn native_members_are_visible_to_kafka_and_keep_the_group() {
    if !common::confluent_kafka_available() {
        return;
    }
    let broker = Broker::start(&["--cores", "2"]);
    let kafka = broker.kafka.unwrap().to_string();
    broker.client().create_topic("jobs", 2, &[]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let addr = broker.addr.to_string();
    let flag = stop.clone();
    let native = std::thread::spawn(move || {
        let mut c = Consumer::new(ConsumerConfig {
            bootstrap: addr,
            max_wait: Duration::from_millis(100),
            ..ConsumerConfig::default()
        })
        .unwrap();
        let config = GroupConfig {
            client_id: "native-worker".into(),
            session_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_millis(200),
            reset: OffsetReset::Earliest,
            ..GroupConfig::default()
        };
        c.subscribe("workers", &["jobs"], config).unwrap();
        while !flag.load(Ordering::SeqCst) {
            c.poll(Duration::from_millis(100)).unwrap();
        }
        c.close().unwrap();
    });
    assert!(common::eventually(Duration::from_secs(10), || broker
        .client()
        .describe_group("workers")
        .is_ok_and(|d| d.members.len() == 1)));
    let mut described = None;
    let mut refused = None;
    common::run_client_script(
        &broker.data_dir,
        "group_view.py",
        &[&kafka, "workers", "jobs"],
        Duration::from_secs(40),
        |step| {
            match step["step"].as_str() {
                Some("described") => described = Some(step.clone()),
                Some("join-refused") => refused = Some(step.clone()),
                _ => {}
            }
            None
        },
    );
    stop.store(true, Ordering::SeqCst);
    native.join().unwrap();
    let described = described.expect("described");
    assert_eq!(described["state"], "STABLE", "{described}");
    assert_eq!(described["members"][0]["client_id"], "native-worker");
    assert_eq!(
        described["members"][0]["partitions"],
        serde_json::json!([0, 1])
    );
    let refused = refused.expect("join refused");
    assert_eq!(refused["inconsistent"], true, "{refused}");
}
