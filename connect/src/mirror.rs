//! The mirror: copies topics from one cluster to another, where each side is Eventflow
//! (the runner's broker, through the native client) or any Kafka-protocol cluster
//! (through librdkafka).
//!
//! **What is copied.** Every topic of the source whose whole name matches `topics` (a
//! regular expression), except internal ones (names starting with `__`); the source's
//! topic list is read again every `refresh_interval_ms`, so topics created later are
//! picked up. A topic missing on the target is created there with the source's partition
//! count; one that exists with fewer partitions stops the mirror (partition numbers are
//! kept, so the target needs at least as many). Each record keeps its partition number,
//! key, value (a tombstone stays one), headers and timestamp; its offset on the target is
//! the target's own.
//!
//! **Progress and the guarantee: at least once.** The mirror reads the source by
//! assignment (no consumer group: neither side's groups are involved) from the offsets in
//! its state file, `<name>.mirror.json` in the runner's state directory, which it replaces
//! atomically after each step's records were all acknowledged by the target (acks=all) —
//! the way Kafka Connect's standalone mode keeps a source connector's offsets in a local
//! file. A crash between the acknowledgement and the state file, or a failed step (either
//! cluster down: the mirror reconnects with backoff, 200 ms doubling to 5 s, and starts
//! again from its state), sends that step's records again: the target may hold
//! duplicates, never gaps. Within a partition the order is kept (one request in flight
//! per partition on both kinds of producer). Keeping progress on the mirror's side makes
//! both directions the same, and needs no write access to the source.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use eventflow::client::backoff::Backoff;
use eventflow::client::consumer::{Consumer, StartAt};
use eventflow::client::producer::{Producer, ProducerConfig, Record};
use eventflow::client::Client;
use eventflow::protocol::api::offset_spec;
use eventflow::protocol::ErrorCode;
use futures_executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::{Offset, TopicPartitionList};
use regex::Regex;
use serde::Deserialize;

use crate::config::BrokerSettings;
use crate::connector::{Connector, ConnectorContext};
use crate::file_sink::Start;
use crate::state_file;

/// How long a Kafka-side metadata or admin request may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);
/// How often progress is logged.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// The Kafka-side endpoint's prefix.
const KAFKA_SCHEME: &str = "kafka://";

/// `kind = "mirror"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// Where records come from: `eventflow` (the runner's broker) or
    /// `kafka://HOST:PORT[,HOST:PORT…]`.
    pub source: String,
    /// Where they go, the same way.
    pub target: String,
    /// The topics to copy: a regular expression that must match the whole name.
    pub topics: String,
    /// Where partitions without progress start: `earliest` or `latest`.
    #[serde(default)]
    pub start: Start,
    /// How often the source's topics are listed again, in ms.
    #[serde(default = "default_refresh_interval_ms")]
    pub refresh_interval_ms: u64,
    /// Records read from a Kafka-protocol source per step (acknowledged by the target,
    /// then recorded), at most; a step from Eventflow is one fetch, bounded by its bytes.
    #[serde(default = "default_batch_records")]
    pub batch_records: usize,
    /// The replication factor of topics created on a Kafka target (-1: the cluster's
    /// default).
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
}

fn default_refresh_interval_ms() -> u64 {
    30_000
}

fn default_batch_records() -> usize {
    5_000
}

fn default_replication_factor() -> i32 {
    -1
}

/// One side of the mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    /// The runner's broker.
    Eventflow,
    /// A Kafka-protocol cluster: its bootstrap addresses.
    Kafka(String),
}

impl Endpoint {
    fn parse(text: &str) -> anyhow::Result<Endpoint> {
        if text == "eventflow" {
            return Ok(Endpoint::Eventflow);
        }
        match text.strip_prefix(KAFKA_SCHEME) {
            Some(bootstrap) if !bootstrap.is_empty() => Ok(Endpoint::Kafka(bootstrap.into())),
            _ => bail!("`{text}`: expected `eventflow` or `kafka://HOST:PORT[,HOST:PORT…]`"),
        }
    }
}

impl MirrorConfig {
    /// Checks the values serde cannot.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        let source = Endpoint::parse(&self.source).context("source")?;
        let target = Endpoint::parse(&self.target).context("target")?;
        if source == target {
            bail!("source and target are the same cluster: the mirror would copy into itself");
        }
        self.pattern()?;
        if self.refresh_interval_ms == 0 {
            bail!("refresh_interval_ms must be at least 1");
        }
        if !(1..=1_000_000).contains(&self.batch_records) {
            bail!("batch_records must be between 1 and 1000000");
        }
        if self.replication_factor == 0 || self.replication_factor < -1 {
            bail!("replication_factor must be -1 (the cluster's default) or at least 1");
        }
        Ok(())
    }

    /// `topics`, anchored to match whole names.
    fn pattern(&self) -> anyhow::Result<Regex> {
        Regex::new(&format!("^(?:{})$", self.topics)).map_err(|e| anyhow!("topics: {e}"))
    }
}

/// A record on its way: everything the target gets, and the source offset it came from.
#[derive(Debug, Clone)]
struct MirrorRecord {
    topic: String,
    partition: u32,
    offset: i64,
    /// Milliseconds since the epoch (`None`: the source had none).
    timestamp: Option<i64>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// An error the mirror cannot get past by trying again.
#[derive(Debug)]
struct Fatal(String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// The cluster records are read from.
trait Source {
    /// Every topic and its partition count.
    fn topics(&mut self) -> anyhow::Result<Vec<(String, u32)>>;
    /// The offset `start` names in this partition now.
    fn resolve(&mut self, topic: &str, partition: u32, start: Start) -> anyhow::Result<i64>;
    /// Reads these partitions from these offsets: those already read go on where they
    /// are, which is the same place since the mirror has copied all it was given.
    fn assign(&mut self, positions: &BTreeMap<(String, u32), i64>) -> anyhow::Result<()>;
    /// The next records (a bounded step); waits up to `timeout` for the first.
    fn poll(&mut self, timeout: Duration) -> anyhow::Result<Vec<MirrorRecord>>;
}

/// The cluster records are written to.
trait Target {
    /// Every topic and its partition count.
    fn topics(&mut self) -> anyhow::Result<HashMap<String, u32>>;
    /// Creates `topic` with `partitions` partitions, ready to take records.
    fn create_topic(&mut self, topic: &str, partitions: u32) -> anyhow::Result<()>;
    /// Sends `records` and returns once the target acknowledged every one.
    fn send(&mut self, records: &[MirrorRecord]) -> anyhow::Result<()>;
}

/// Reading Eventflow with the native consumer, by assignment.
struct EventflowSource {
    admin: Client,
    consumer: Consumer,
    assigned: BTreeSet<(String, u32)>,
}

impl EventflowSource {
    fn connect(broker: &BrokerSettings) -> anyhow::Result<EventflowSource> {
        Ok(EventflowSource {
            admin: broker.client()?,
            consumer: Consumer::new(broker.consumer())?,
            assigned: BTreeSet::new(),
        })
    }

    /// Moves every partition whose position the source no longer stores (retention
    /// deleted those records) to its first stored offset, as librdkafka's
    /// `auto.offset.reset = earliest` does on the Kafka side.
    fn skip_to_log_start(&mut self) -> anyhow::Result<()> {
        for (topic, partition) in &self.assigned {
            let start = self
                .admin
                .list_offset(topic, *partition, offset_spec::EARLIEST)?;
            let position = self.consumer.position(topic, *partition);
            if position.is_some_and(|p| p < start) {
                tracing::warn!(
                    "{topic}/{partition}: records from {} to {start} were deleted before \
                     they were copied; going on from {start}",
                    position.unwrap_or_default()
                );
                self.consumer.seek(topic, *partition, start)?;
            }
        }
        Ok(())
    }
}

impl Source for EventflowSource {
    fn topics(&mut self) -> anyhow::Result<Vec<(String, u32)>> {
        Ok(self
            .admin
            .list_topics()?
            .into_iter()
            .map(|t| (t.name, t.partitions))
            .collect())
    }

    fn resolve(&mut self, topic: &str, partition: u32, start: Start) -> anyhow::Result<i64> {
        let spec = match start {
            Start::Earliest => offset_spec::EARLIEST,
            Start::Latest => offset_spec::LATEST,
        };
        Ok(self.admin.list_offset(topic, partition, spec)?)
    }

    fn assign(&mut self, positions: &BTreeMap<(String, u32), i64>) -> anyhow::Result<()> {
        for ((topic, partition), offset) in positions {
            if self.assigned.insert((topic.clone(), *partition)) {
                self.consumer
                    .assign(topic, &[*partition], StartAt::Offset(*offset))?;
            }
        }
        Ok(())
    }

    fn poll(&mut self, timeout: Duration) -> anyhow::Result<Vec<MirrorRecord>> {
        // One poll is one step, bounded by the consumer's fetch size; never splitting it
        // keeps the consumer's position where the mirror's progress says.
        let records = match self.consumer.poll(timeout) {
            Ok(records) => records,
            Err(e) if e.code() == Some(ErrorCode::OffsetOutOfRange) => {
                self.skip_to_log_start()?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        Ok(records
            .into_iter()
            .map(|r| MirrorRecord {
                topic: r.topic.to_string(),
                partition: r.partition,
                offset: r.offset,
                timestamp: Some(r.timestamp),
                key: r.key.map(|k| k.to_vec()),
                value: r.value.map(|v| v.to_vec()),
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.to_vec(), v.map(|v| v.to_vec())))
                    .collect(),
            })
            .collect())
    }
}

/// Writing Eventflow with the native producer.
struct EventflowTarget {
    admin: Client,
    producer: Producer,
}

impl EventflowTarget {
    fn connect(broker: &BrokerSettings) -> anyhow::Result<EventflowTarget> {
        Ok(EventflowTarget {
            admin: broker.client()?,
            // One request in flight: a retried batch cannot land behind a later one.
            producer: Producer::new(ProducerConfig {
                max_in_flight: 1,
                ..broker.producer()
            })?,
        })
    }
}

impl Target for EventflowTarget {
    fn topics(&mut self) -> anyhow::Result<HashMap<String, u32>> {
        Ok(self
            .admin
            .list_topics()?
            .into_iter()
            .map(|t| (t.name, t.partitions))
            .collect())
    }

    fn create_topic(&mut self, topic: &str, partitions: u32) -> anyhow::Result<()> {
        match self.admin.create_topic(topic, partitions, &[]) {
            Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => Ok(()),
            other => Ok(other?),
        }
    }

    fn send(&mut self, records: &[MirrorRecord]) -> anyhow::Result<()> {
        let mut deliveries = Vec::with_capacity(records.len());
        for r in records {
            let headers: Vec<(&[u8], Option<&[u8]>)> = r
                .headers
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_deref()))
                .collect();
            deliveries.push(self.producer.send(Record {
                topic: &r.topic,
                partition: Some(r.partition),
                key: r.key.as_deref(),
                value: r.value.as_deref(),
                headers: &headers,
                timestamp: r.timestamp,
            })?);
        }
        for delivery in deliveries {
            delivery.wait()?;
        }
        Ok(())
    }
}

/// librdkafka's settings for a client of `bootstrap`.
fn kafka_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "eventflow-connect-mirror");
    config
}

/// The topics and partition counts of a Kafka-protocol cluster, internal ones included.
fn kafka_topics<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
) -> anyhow::Result<Vec<(String, u32)>> {
    let metadata = client
        .fetch_metadata(None, KAFKA_TIMEOUT)
        .context("listing the topics")?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| (t.name().to_string(), t.partitions().len() as u32))
        .collect())
}

/// Reading a Kafka-protocol cluster with librdkafka's consumer, by assignment.
struct KafkaSource {
    consumer: BaseConsumer,
    /// Records per step, at most.
    max: usize,
    assigned: BTreeSet<(String, u32)>,
}

impl KafkaSource {
    fn connect(bootstrap: &str, group: &str, max: usize) -> anyhow::Result<KafkaSource> {
        let consumer: BaseConsumer = kafka_config(bootstrap)
            // Names the client only: it neither subscribes nor commits.
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // An offset the source no longer has (retention) restarts at its first record.
            .set("auto.offset.reset", "earliest")
            .create()
            .with_context(|| format!("a consumer of {KAFKA_SCHEME}{bootstrap}"))?;
        Ok(KafkaSource {
            consumer,
            max,
            assigned: BTreeSet::new(),
        })
    }
}

impl Source for KafkaSource {
    fn topics(&mut self) -> anyhow::Result<Vec<(String, u32)>> {
        kafka_topics(self.consumer.client())
    }

    fn resolve(&mut self, topic: &str, partition: u32, start: Start) -> anyhow::Result<i64> {
        let (low, high) = self
            .consumer
            .fetch_watermarks(topic, partition as i32, KAFKA_TIMEOUT)
            .with_context(|| format!("the offsets of {topic}/{partition}"))?;
        Ok(match start {
            Start::Earliest => low,
            Start::Latest => high,
        })
    }

    fn assign(&mut self, positions: &BTreeMap<(String, u32), i64>) -> anyhow::Result<()> {
        // Only the new partitions: assigning a partition again would drop what librdkafka
        // fetched ahead for it and start its fetching over.
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in positions {
            if !self.assigned.contains(&(topic.clone(), *partition)) {
                list.add_partition_offset(topic, *partition as i32, Offset::Offset(*offset))?;
            }
        }
        if list.count() > 0 {
            self.consumer.incremental_assign(&list)?;
            self.assigned.extend(positions.keys().cloned());
        }
        Ok(())
    }

    fn poll(&mut self, timeout: Duration) -> anyhow::Result<Vec<MirrorRecord>> {
        let mut records = Vec::new();
        let mut wait = timeout;
        while records.len() < self.max {
            let Some(message) = self.consumer.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            let message = match message {
                Ok(message) => message,
                // librdkafka reconnects by itself; its errors here are reports.
                Err(e) if records.is_empty() => return Err(e.into()),
                Err(_) => break,
            };
            let headers = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| (h.key.as_bytes().to_vec(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default();
            records.push(MirrorRecord {
                topic: message.topic().to_string(),
                partition: message.partition() as u32,
                offset: message.offset(),
                timestamp: message.timestamp().to_millis(),
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
        Ok(records)
    }
}

/// Counts the target's acknowledgements, and keeps the first refusal.
#[derive(Default)]
struct Deliveries {
    acked: AtomicU64,
    refused: AtomicU64,
    first_refusal: Mutex<Option<String>>,
}

/// Reports librdkafka's delivery results into [`Deliveries`].
struct DeliveryContext(Arc<Deliveries>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
        match result {
            Ok(_) => self.0.acked.fetch_add(1, Ordering::SeqCst),
            Err((e, _)) => {
                let mut first = self
                    .0
                    .first_refusal
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                first.get_or_insert_with(|| e.to_string());
                self.0.refused.fetch_add(1, Ordering::SeqCst)
            }
        };
    }
}

/// Writing a Kafka-protocol cluster with librdkafka's producer.
struct KafkaTarget {
    producer: ThreadedProducer<DeliveryContext>,
    deliveries: Arc<Deliveries>,
    admin: AdminClient<DefaultClientContext>,
    bootstrap: String,
    replication_factor: i32,
}

impl KafkaTarget {
    fn connect(bootstrap: &str, replication_factor: i32) -> anyhow::Result<KafkaTarget> {
        let url = format!("{KAFKA_SCHEME}{bootstrap}");
        let deliveries = Arc::new(Deliveries::default());
        let producer: ThreadedProducer<DeliveryContext> = kafka_config(bootstrap)
            .set("acks", "all")
            // One request in flight per broker: a retry cannot reorder a partition.
            .set("max.in.flight.requests.per.connection", "1")
            .set("linger.ms", "5")
            .create_with_context(DeliveryContext(deliveries.clone()))
            .with_context(|| format!("a producer to {url}"))?;
        let admin: AdminClient<DefaultClientContext> = kafka_config(bootstrap)
            .create()
            .with_context(|| format!("an admin client of {url}"))?;
        Ok(KafkaTarget {
            producer,
            deliveries,
            admin,
            bootstrap: bootstrap.into(),
            replication_factor,
        })
    }
}

impl Target for KafkaTarget {
    fn topics(&mut self) -> anyhow::Result<HashMap<String, u32>> {
        Ok(kafka_topics(self.admin.inner())?.into_iter().collect())
    }

    fn create_topic(&mut self, topic: &str, partitions: u32) -> anyhow::Result<()> {
        let replication = TopicReplication::Fixed(self.replication_factor);
        let new_topic = NewTopic::new(topic, partitions as i32, replication);
        let options = AdminOptions::new()
            .request_timeout(Some(KAFKA_TIMEOUT))
            .operation_timeout(Some(KAFKA_TIMEOUT));
        let results = block_on(self.admin.create_topics([&new_topic], &options))?;
        match results.into_iter().find_map(Result::err) {
            None | Some((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Some((_, e)) => bail!("cannot create topic {topic}: {e}"),
        }
        // Creation completes on the controller first: wait until metadata shows every
        // partition, so the first records do not meet an unknown partition.
        let deadline = Instant::now() + KAFKA_TIMEOUT;
        while self.topics()?.get(topic).copied().unwrap_or(0) < partitions {
            if Instant::now() >= deadline {
                bail!(
                    "topic {topic} on {KAFKA_SCHEME}{}: not ready after {KAFKA_TIMEOUT:?}",
                    self.bootstrap
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn send(&mut self, records: &[MirrorRecord]) -> anyhow::Result<()> {
        let acked_before = self.deliveries.acked.load(Ordering::SeqCst);
        for r in records {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (key, value) in &r.headers {
                // Kafka's header keys are strings.
                let key = String::from_utf8_lossy(key);
                headers = headers.insert(Header {
                    key: &key,
                    value: value.as_deref(),
                });
            }
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&r.topic)
                .partition(r.partition as i32)
                .headers(headers);
            if let Some(key) = &r.key {
                record = record.key(key.as_slice());
            }
            if let Some(value) = &r.value {
                record = record.payload(value.as_slice());
            }
            if let Some(timestamp) = r.timestamp {
                record = record.timestamp(timestamp);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The local queue drains as the cluster acknowledges.
                        record = back;
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => return Err(e).context("cannot queue a record"),
                }
            }
        }
        // Every record is acknowledged or refused once flush returns (librdkafka gives up
        // on a record after its message.timeout.ms, 300 s).
        self.producer
            .flush(Duration::from_secs(330))
            .context("waiting for the target's acknowledgements")?;
        if self.deliveries.refused.swap(0, Ordering::SeqCst) > 0 {
            let first = self
                .deliveries
                .first_refusal
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            bail!("the target refused records: {}", first.unwrap_or_default());
        }
        let acked = self.deliveries.acked.load(Ordering::SeqCst) - acked_before;
        if acked != records.len() as u64 {
            bail!(
                "the target acknowledged {acked} of {} records",
                records.len()
            );
        }
        Ok(())
    }
}

/// What the mirror has copied, in the state file `<name>.mirror.json`: per topic and
/// partition, the source offset of the next record to copy.
type Progress = BTreeMap<String, BTreeMap<u32, i64>>;

/// The mirror connector.
pub struct Mirror {
    config: MirrorConfig,
    pattern: Regex,
}

impl Mirror {
    /// A mirror with these settings (checked: the pattern compiles).
    pub fn new(config: MirrorConfig) -> Mirror {
        let pattern = config.pattern().expect("checked when the config was read");
        Mirror { config, pattern }
    }

    fn source(&self, ctx: &ConnectorContext) -> anyhow::Result<Box<dyn Source>> {
        Ok(match Endpoint::parse(&self.config.source)? {
            Endpoint::Eventflow => Box::new(EventflowSource::connect(&ctx.broker)?),
            Endpoint::Kafka(bootstrap) => Box::new(KafkaSource::connect(
                &bootstrap,
                &ctx.name,
                self.config.batch_records,
            )?),
        })
    }

    fn target(&self, ctx: &ConnectorContext) -> anyhow::Result<Box<dyn Target>> {
        Ok(match Endpoint::parse(&self.config.target)? {
            Endpoint::Eventflow => Box::new(EventflowTarget::connect(&ctx.broker)?),
            Endpoint::Kafka(bootstrap) => Box::new(KafkaTarget::connect(
                &bootstrap,
                self.config.replication_factor,
            )?),
        })
    }

    /// Lists the source's topics, creates the matching ones missing on the target, and
    /// assigns every partition of them from its progress (new ones from `start`).
    fn refresh(
        &self,
        ctx: &ConnectorContext,
        source: &mut dyn Source,
        target: &mut dyn Target,
        progress: &mut Progress,
    ) -> anyhow::Result<()> {
        let mut matching: Vec<(String, u32)> = source
            .topics()?
            .into_iter()
            .filter(|(topic, _)| !topic.starts_with("__") && self.pattern.is_match(topic))
            .collect();
        matching.sort();
        let existing = target.topics()?;
        let mut new_partitions = false;
        for (topic, partitions) in &matching {
            match existing.get(topic) {
                None => {
                    target.create_topic(topic, *partitions)?;
                    tracing::info!(
                        "{}: created topic {topic} ({partitions} partitions) on the target",
                        ctx.name
                    );
                }
                Some(&have) if have < *partitions => {
                    return Err(anyhow::Error::new(Fatal(format!(
                        "topic {topic} has {have} partitions on the target and {partitions} \
                         on the source: the mirror keeps partition numbers, so the target \
                         needs at least {partitions} (add partitions there, then restart)"
                    ))));
                }
                Some(_) => {}
            }
            let known = progress.entry(topic.clone()).or_default();
            for partition in 0..*partitions {
                if let std::collections::btree_map::Entry::Vacant(entry) = known.entry(partition) {
                    entry.insert(source.resolve(topic, partition, self.config.start)?);
                    new_partitions = true;
                }
            }
        }
        if new_partitions {
            // Recorded before copying, so that a restart starts a `latest` partition at
            // the same offset.
            state_file::save(&ctx.state_file("mirror.json"), progress)?;
        }
        let positions = matching
            .iter()
            .flat_map(|(topic, partitions)| {
                let known = &progress[topic];
                (0..*partitions).map(move |p| ((topic.clone(), p), known[&p]))
            })
            .collect();
        source.assign(&positions)
    }

    /// Copies until told to stop (`Ok`) or until an error (the caller tries again from
    /// the progress, or stops on a [`Fatal`] one).
    fn copy(&self, ctx: &ConnectorContext, progress: &mut Progress) -> anyhow::Result<()> {
        let mut source = self.source(ctx).context("source")?;
        let mut target = self.target(ctx).context("target")?;
        let refresh_every = Duration::from_millis(self.config.refresh_interval_ms);
        let mut next_refresh = Instant::now();
        let mut copied = 0u64;
        let mut last_report = Instant::now();
        while !ctx.stopping() {
            if Instant::now() >= next_refresh {
                self.refresh(ctx, source.as_mut(), target.as_mut(), progress)?;
                next_refresh = Instant::now() + refresh_every;
            }
            let records = source.poll(Duration::from_millis(200)).context("source")?;
            if records.is_empty() {
                continue;
            }
            target.send(&records).context("target")?;
            for r in &records {
                progress
                    .entry(r.topic.clone())
                    .or_default()
                    .insert(r.partition, r.offset + 1);
            }
            state_file::save(&ctx.state_file("mirror.json"), progress)?;
            copied += records.len() as u64;
            if last_report.elapsed() >= REPORT_EVERY {
                tracing::info!(
                    "{}: copied {copied} records in the last {} s",
                    ctx.name,
                    last_report.elapsed().as_secs()
                );
                copied = 0;
                last_report = Instant::now();
            }
        }
        Ok(())
    }
}

impl Connector for Mirror {
    fn run(&mut self, ctx: &ConnectorContext) -> anyhow::Result<()> {
        let state = ctx.state_file("mirror.json");
        let mut progress: Progress = state_file::load(&state)?.unwrap_or_default();
        tracing::info!(
            "{}: mirroring topics matching `{}` from {} to {} ({} partitions with progress)",
            ctx.name,
            self.config.topics,
            self.config.source,
            self.config.target,
            progress.values().map(BTreeMap::len).sum::<usize>()
        );
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let started = Instant::now();
            match self.copy(ctx, &mut progress) {
                Ok(()) => return Ok(()),
                Err(e) if e.downcast_ref::<Fatal>().is_some() => return Err(e),
                Err(e) => {
                    if started.elapsed() > Duration::from_secs(60) {
                        backoff.reset();
                    }
                    tracing::warn!(
                        "{}: {e:#}; starting again from the last recorded progress",
                        ctx.name
                    );
                    if !ctx.sleep(backoff.next_delay()) {
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> anyhow::Result<MirrorConfig> {
        let config: MirrorConfig = toml::from_str(&format!(
            "source = \"kafka://127.0.0.1:9092\"\ntarget = \"eventflow\"\ntopics = \"orders|pay.*\"\n{extra}"
        ))?;
        config.check()?;
        Ok(config)
    }

    #[test]
    fn the_pattern_matches_whole_names() {
        let pattern = config("").unwrap().pattern().unwrap();
        assert!(pattern.is_match("orders"));
        assert!(pattern.is_match("payments"));
        assert!(!pattern.is_match("orders-archive"));
        assert!(!pattern.is_match("old-payments"));
    }

    #[test]
    fn bad_settings_are_refused() {
        let error = |extra: &str| format!("{:#}", config(extra).unwrap_err());
        assert!(error("source = \"x\"").contains("duplicate key"));
        let same: MirrorConfig =
            toml::from_str("source = \"eventflow\"\ntarget = \"eventflow\"\ntopics = \"t\"")
                .unwrap();
        assert!(format!("{:#}", same.check().unwrap_err()).contains("the same cluster"));
        let bad_endpoint: MirrorConfig =
            toml::from_str("source = \"kafka://\"\ntarget = \"eventflow\"\ntopics = \"t\"")
                .unwrap();
        assert!(format!("{:#}", bad_endpoint.check().unwrap_err()).contains("source"));
        let bad_pattern: MirrorConfig =
            toml::from_str("source = \"kafka://h:1\"\ntarget = \"eventflow\"\ntopics = \"(\"")
                .unwrap();
        assert!(format!("{:#}", bad_pattern.check().unwrap_err()).contains("topics"));
        assert!(error("replication_factor = 0").contains("replication_factor"));
        assert!(error("batch_records = 0").contains("batch_records"));
    }
}
