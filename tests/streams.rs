//! `eventflow::streams` against a real broker: word count end to end, an instance killed
//! mid-run and replaced by two, a second instance joining a running one (partitions and
//! their state move in both), windows with late records, and a stream-table join with its
//! co-partitioning check.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Broker;
use eventflow::client::consumer::{Consumer, ConsumerConfig, StartAt};
use eventflow::client::producer::{Producer, ProducerConfig, Record};
use eventflow::client::{Client, Credentials};
use eventflow::protocol::api::offset_spec;
use eventflow::streams::{
    Serde, Streams, StreamsConfig, StreamsError, StreamsStats, TimeWindows, Windowed,
};

/// Set in a child process of the kill test: `ADDR APP`; [`worker_process`] then runs the
/// word-count application.
const WORKER_ENV: &str = "EVENTFLOW_STREAMS_WORKER";

fn producer(addr: &str) -> Producer {
    producer_as(addr, None)
}

fn producer_as(addr: &str, credentials: Option<&Credentials>) -> Producer {
    Producer::new(ProducerConfig {
        bootstrap: addr.to_string(),
        credentials: credentials.cloned(),
        ..ProducerConfig::default()
    })
    .unwrap()
}

/// Line `i` of the test text: 6 words of a 40-word vocabulary.
fn line(i: u64) -> String {
    (0..6)
        .map(|j| format!("w{}", (i * 7 + j * j * 13 + i / 5) % 40))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Produces lines `0..n` to `topic` (unkeyed) and returns each word's count.
fn produce_lines(addr: &str, topic: &str, n: u64) -> HashMap<String, u64> {
    produce_lines_as(addr, None, topic, n)
}

fn produce_lines_as(
    addr: &str,
    credentials: Option<&Credentials>,
    topic: &str,
    n: u64,
) -> HashMap<String, u64> {
    let producer = producer_as(addr, credentials);
    let mut counts = HashMap::new();
    for i in 0..n {
        let line = line(i);
        for w in line.split_whitespace() {
            *counts.entry(w.to_string()).or_insert(0) += 1;
        }
        producer
            .send(Record {
                topic,
                value: Some(line.as_bytes()),
                ..Record::default()
            })
            .unwrap();
    }
    producer.flush().unwrap();
    counts
}

/// Every record of `topic` from its start to its end, as (key, value) text.
fn read_all(addr: &str, topic: &str) -> Vec<(String, String)> {
    read_all_as(addr, None, topic)
}

fn read_all_as(
    addr: &str,
    credentials: Option<&Credentials>,
    topic: &str,
) -> Vec<(String, String)> {
    let timeout = eventflow::client::DEFAULT_REQUEST_TIMEOUT;
    let mut admin = Client::connect_as(addr, timeout, credentials).unwrap();
    let partitions = admin.describe_topic(topic).unwrap().partitions.len() as u32;
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: addr.to_string(),
        credentials: credentials.cloned(),
        ..ConsumerConfig::default()
    })
    .unwrap();
    let all: Vec<u32> = (0..partitions).collect();
    consumer.assign(topic, &all, StartAt::Earliest).unwrap();
    let ends: Vec<i64> = all
        .iter()
        .map(|p| admin.list_offset(topic, *p, offset_spec::LATEST).unwrap())
        .collect();
    let text =
        |b: Option<bytes::Bytes>| String::from_utf8_lossy(&b.unwrap_or_default()).into_owned();
    let mut out = Vec::new();
    while all
        .iter()
        .any(|p| consumer.position(topic, *p).unwrap() < ends[*p as usize])
    {
        for r in consumer.poll(Duration::from_millis(500)).unwrap() {
            out.push((text(r.key), text(r.value)));
        }
    }
    out
}

/// The last value of each key in `topic`.
fn latest(addr: &str, topic: &str) -> BTreeMap<String, String> {
    read_all(addr, topic).into_iter().collect()
}

fn word_count(config: StreamsConfig, input: &str, output: &str) -> Result<Streams, StreamsError> {
    let (input, output) = (input.to_string(), output.to_string());
    Streams::start(config, move |builder| {
        builder
            .stream::<String, String>(&[&input])
            .flat_map(|_, line| {
                line.split_whitespace()
                    .map(|w| (w.to_string(), String::new()))
                    .collect::<Vec<_>>()
            })
            .group_by_key()
            .count("counts")
            .to(&output);
    })
}

fn bounded(app: &str, addr: &str, idle: Duration) -> StreamsConfig {
    let mut config = StreamsConfig::new(app, addr);
    config.stop_when_idle = Some(idle);
    config.session_timeout = Duration::from_secs(3);
    config.heartbeat_interval = Duration::from_millis(300);
    config
}

fn assert_counts(got: &BTreeMap<String, String>, expected: &HashMap<String, u64>) {
    assert_eq!(got.len(), expected.len(), "words: {got:?}");
    for (word, n) in expected {
        assert_eq!(got.get(word), Some(&n.to_string()), "count of {word}");
    }
}

#[test]
fn word_count_end_to_end() {
    let broker = Broker::start(&[]);
    let addr = broker.addr.to_string();
    let mut admin = Client::connect(addr.as_str()).unwrap();
    admin.create_topic("lines", 3, &[]).unwrap();
    admin.create_topic("word-counts", 3, &[]).unwrap();
    let expected = produce_lines(&addr, "lines", 2_000);

    let config = bounded("wc", &addr, Duration::from_secs(2));
    let stats = word_count(config, "lines", "word-counts")
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(stats.records, 2_000 + 12_000, "{stats:?}");
    assert_counts(&latest(&addr, "word-counts"), &expected);

    // The internal topics: the repartition topic and the compacted changelog, with the
    // source's partition count.
    let changelog = admin.describe_topic("wc-counts-changelog").unwrap();
    assert_eq!(changelog.partitions.len(), 3);
    assert!(changelog
        .configs
        .contains(&("cleanup.policy".to_string(), "compact".to_string())));
    assert_eq!(
        admin
            .describe_topic("wc-counts-repartition")
            .unwrap()
            .partitions
            .len(),
        3
    );
    // The changelog holds each word's final count (with its marks before it).
    let stored: BTreeMap<String, String> = latest(&addr, "wc-counts-changelog");
    assert_eq!(stored.len(), expected.len());
    for (word, n) in &expected {
        assert!(stored[word].ends_with(&n.to_string()), "{word}");
    }

    // A second run of the same application: everything is committed, nothing to redo.
    let again = word_count(
        bounded("wc", &addr, Duration::from_secs(1)),
        "lines",
        "word-counts",
    )
    .unwrap()
    .wait()
    .unwrap();
    assert_eq!(again.records, 0, "{again:?}");
    assert_eq!(again.restored as usize, {
        // Restored: every changelog record written by the first run, compacted or not.
        let n = read_all(&addr, "wc-counts-changelog").len();
        assert!(n >= expected.len());
        n
    });
}

/// The word-count application as a child process of [`an_instance_killed_mid_run_…`]:
/// does nothing unless [`WORKER_ENV`] is set.
///
/// [`an_instance_killed_mid_run_…`]: an_instance_killed_mid_run_is_replaced_and_counts_stay_exact
#[test]
fn worker_process() {
    let Ok(spec) = std::env::var(WORKER_ENV) else {
        return;
    };
    let (addr, app) = spec.split_once(' ').expect("ADDR APP");
    let mut config = bounded(app, addr, Duration::from_secs(8));
    // Small batches: many commits, so the kill lands between two of them.
    config.fetch_max_bytes = 16 << 10;
    let stats = word_count(config, "lines", "word-counts")
        .unwrap()
        .wait()
        .unwrap();
    println!("WORKER-STATS {} {}", stats.records, stats.restored);
}

fn spawn_worker(addr: &str, app: &str, capture: bool) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "worker_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WORKER_ENV, format!("{addr} {app}"))
        .stdout(if capture {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// (records, restored) a worker printed.
fn worker_stats(child: Child) -> StreamsStats {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "worker failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    // The test harness prints `test worker_process ... ` before the worker's line.
    let line = text
        .split("WORKER-STATS ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| panic!("no stats in {text}"));
    let mut numbers = line.split(' ').map(|n| n.parse::<u64>().unwrap());
    StreamsStats {
        records: numbers.next().unwrap(),
        restored: numbers.next().unwrap(),
        ..StreamsStats::default()
    }
}

#[test]
fn an_instance_killed_mid_run_is_replaced_and_counts_stay_exact() {
    let broker = Broker::start(&["--fsync", "always"]);
    let addr = broker.addr.to_string();
    let mut admin = Client::connect(addr.as_str()).unwrap();
    admin.create_topic("lines", 4, &[]).unwrap();
    admin.create_topic("word-counts", 4, &[]).unwrap();
    let lines = 30_000;
    let expected = produce_lines(&addr, "lines", lines);

    // One instance, killed once it has committed some lines and written some counts
    // (so its state is in the changelog), before it has done all of it.
    let mut first = spawn_worker(&addr, "kill", false);
    let inputs: Vec<(&str, u32)> = (0..4).map(|p| ("lines", p)).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let committed: i64 = admin
            .fetch_offsets("kill", &inputs)
            .unwrap()
            .iter()
            .map(|(_, _, o)| (*o).max(0))
            .sum();
        let counted: i64 = (0..4)
            .map(|p| {
                admin
                    .list_offset("kill-counts-changelog", p, offset_spec::LATEST)
                    .unwrap_or(0)
            })
            .sum();
        if committed > 0 && counted > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first instance made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let committed: i64 = admin
        .fetch_offsets("kill", &inputs)
        .unwrap()
        .iter()
        .map(|(_, _, o)| (*o).max(0))
        .sum();
    assert!(
        committed < lines as i64,
        "killed after it finished: {committed} lines committed"
    );

    // Two new instances share the partitions once the dead one's session ends: the
    // stores move with them, restored from the changelog.
    let second = spawn_worker(&addr, "kill", true);
    let third = spawn_worker(&addr, "kill", true);
    let (a, b) = (worker_stats(second), worker_stats(third));
    assert!(a.restored + b.restored > 0, "{a:?} {b:?}");
    assert!(a.records + b.records > 0, "{a:?} {b:?}");

    // At-least-once: counts may have been written twice, but the last count of every
    // word is exact, as after one uninterrupted run.
    assert_counts(&latest(&addr, "word-counts"), &expected);
    let committed: i64 = admin
        .fetch_offsets("kill", &inputs)
        .unwrap()
        .iter()
        .map(|(_, _, o)| *o)
        .sum();
    assert_eq!(committed, lines as i64);
}

#[test]
fn a_second_instance_takes_partitions_and_their_state_while_the_first_runs() {
    let broker = Broker::start(&[]);
    let addr = broker.addr.to_string();
    let mut admin = Client::connect(addr.as_str()).unwrap();
    admin.create_topic("lines", 4, &[]).unwrap();
    admin.create_topic("word-counts", 4, &[]).unwrap();
    let expected = produce_lines(&addr, "lines", 40_000);

    let instance = || {
        let mut config = bounded("scale", &addr, Duration::from_secs(4));
        config.fetch_max_bytes = 16 << 10;
        word_count(config, "lines", "word-counts").unwrap()
    };
    let first = instance();
    // Wait until the first instance has state in every store partition: its first
    // commits can cover only lines (whose words are still on their way through the
    // repartition topic), and a partition that moves before its changelog has a record
    // has nothing to restore. On a loaded machine the group can also move every
    // partition to the second instance, so each one must have state to carry.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = (0..4)
            .filter(|p| {
                admin
                    .list_offset("scale-counts-changelog", *p, offset_spec::LATEST)
                    .unwrap_or(0)
                    > 0
            })
            .count();
        if first.stats().commits > 0 && stored == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first instance made no progress"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The group moves half of the partitions: the first instance lets them go (its
    // batches are flushed and committed), the second restores their stores.
    let second = instance();
    let (a, b) = (first.wait().unwrap(), second.wait().unwrap());
    assert!(b.records > 0 && b.restored > 0, "{a:?} {b:?}");
    assert_counts(&latest(&addr, "word-counts"), &expected);
}

#[test]
fn an_application_logs_in_to_a_broker_that_requires_it() {
    let (broker, _secrets) = common::start_secured(&["--native-require-auth"]);
    let addr = broker.addr.to_string();
    let admin_login = Credentials::scram("admin", common::ADMIN_PASSWORD);
    let timeout = eventflow::client::DEFAULT_REQUEST_TIMEOUT;
    let mut admin = Client::connect_as(addr.as_str(), timeout, Some(&admin_login)).unwrap();
    admin.create_topic("lines", 2, &[]).unwrap();
    admin.create_topic("word-counts", 2, &[]).unwrap();
    let expected = produce_lines_as(&addr, Some(&admin_login), "lines", 300);

    let anonymous = word_count(
        bounded("secured", &addr, Duration::from_secs(1)),
        "lines",
        "word-counts",
    );
    assert!(anonymous.is_err(), "an anonymous application is refused");

    let mut config = bounded("secured", &addr, Duration::from_secs(2));
    config.credentials = Some(admin_login.clone());
    let stats = word_count(config, "lines", "word-counts")
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(stats.records, 300 * 7, "{stats:?}");
    let counts: BTreeMap<String, String> = read_all_as(&addr, Some(&admin_login), "word-counts")
        .into_iter()
        .collect();
    assert_counts(&counts, &expected);
}

#[test]
fn windows_count_per_minute_and_drop_late_records() {
    let broker = Broker::start(&[]);
    let addr = broker.addr.to_string();
    let mut admin = Client::connect(addr.as_str()).unwrap();
    admin.create_topic("clicks", 2, &[]).unwrap();
    admin.create_topic("per-minute", 2, &[]).unwrap();
    let base: i64 = 1_700_000_040_000;
    let minute = 60_000;
    let producer = producer(&addr);
    let click = |user: &str, at: i64| {
        producer
            .send(Record {
                topic: "clicks",
                key: Some(user.as_bytes()),
                value: Some(b"."),
                timestamp: Some(at),
                ..Record::default()
            })
            .unwrap();
    };
    click("ada", base + 1_000);
    click("ada", base + 50_000);
    click("ada", base + minute + 5_000); // stream time 1:05: minute 0 open until 1:10
    click("ada", base + 20_000); // late, within grace: counted
    click("ada", base + minute + 15_000); // stream time 1:15: minute 0 closed
    click("ada", base + 30_000); // too late: dropped
    click("bob", base + 2_000);
    click("bob", base + 3 * minute);
    click("bob", base + 4_000); // too late for bob (his partition's stream time)
    producer.flush().unwrap();

    let stats = Streams::start(bounded("windows", &addr, Duration::from_secs(2)), |b| {
        b.stream::<String, String>(&["clicks"])
            .group_by_key()
            .windowed_by(
                TimeWindows::tumbling(Duration::from_secs(60)).grace(Duration::from_secs(10)),
            )
            .count("per-minute")
            .to("per-minute");
    })
    .unwrap()
    .wait()
    .unwrap();
    assert_eq!(stats.late_records, 2, "{stats:?}");
    let counts: BTreeMap<(String, i64), String> = latest(&addr, "per-minute")
        .into_iter()
        .map(|(k, v)| {
            let w = Windowed::<String>::from_bytes(k.as_bytes()).unwrap();
            ((w.key, (w.start - base) / minute), v)
        })
        .collect();
    let expected: BTreeMap<(String, i64), String> = [
        (("ada", 0), "3"),
        (("ada", 1), "2"),
        (("bob", 0), "1"),
        (("bob", 3), "1"),
    ]
    .into_iter()
    .map(|((k, m), v)| ((k.to_string(), m), v.to_string()))
    .collect();
    assert_eq!(counts, expected);
}

#[test]
fn a_stream_table_join_enriches_records_of_co_partitioned_topics() {
    let broker = Broker::start(&[]);
    let addr = broker.addr.to_string();
    let mut admin = Client::connect(addr.as_str()).unwrap();
    for topic in ["customers", "orders", "enriched"] {
        admin.create_topic(topic, 3, &[]).unwrap();
    }
    admin.create_topic("customers-2", 2, &[]).unwrap();
    let producer = producer(&addr);
    let send = |topic: &str, key: &str, value: &str| {
        producer
            .send(Record {
                topic,
                key: Some(key.as_bytes()),
                value: Some(value.as_bytes()),
                ..Record::default()
            })
            .unwrap();
    };
    for i in 0..20 {
        send("customers", &format!("c{i}"), &format!("name-{i}"));
    }
    send("customers", "c3", "renamed-3");
    for i in 0..25 {
        send("orders", &format!("c{i}"), &format!("order-{i}"));
    }
    producer.flush().unwrap();

    let stats = Streams::start(bounded("join", &addr, Duration::from_secs(2)), |b| {
        let customers = b.table::<String, String>("customers");
        b.stream::<String, String>(&["orders"])
            .join(&customers, |_, order, name| format!("{order} for {name}"))
            .to("enriched");
    })
    .unwrap()
    .wait()
    .unwrap();
    assert_eq!(stats.records, 25);
    assert_eq!(stats.restored, 21);
    let out = latest(&addr, "enriched");
    assert_eq!(out.len(), 20, "orders of unknown customers are dropped");
    assert_eq!(out["c3"], "order-3 for renamed-3");
    assert_eq!(out["c19"], "order-19 for name-19");

    // A table of another partition count cannot be joined: refused at start.
    let refused = Streams::start(bounded("join-2", &addr, Duration::from_secs(1)), |b| {
        let customers = b.table::<String, String>("customers-2");
        b.stream::<String, String>(&["orders"])
            .join(&customers, |_, o, n| format!("{o}{n}"))
            .to("enriched");
    });
    let err = refused.err().expect("refused").to_string();
    assert!(err.contains("co-partitioned"), "{err}");
}
