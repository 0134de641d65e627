//! The `kafka://` target: librdkafka through the `rdkafka` crate (cargo feature `kafka`).
//!
//! Topics are made through the Kafka admin API and end offsets come from ListOffsets, so any
//! Kafka-compatible broker is driven the same way. No client here may create a topic by
//! asking for its metadata (`allow.auto.create.topics=false`): on a broker with
//! `auto.create.topics.enable` the wait for a deleted topic to be gone would otherwise bring
//! it straight back, with the broker's default partition count.
//!
//! librdkafka is built from the source rdkafka-sys vendors (see Cargo.toml), not taken from
//! the system: librdkafka before 2.4 stops fetching a partition for a full second once its
//! prefetch queue is full, so a backlog read measured the client's pause. Every property set
//! here is explained, with its source, in [`super::librdkafka`], and the report prints both.
//!
//! The producer calls librdkafka's `rd_kafka_produce` on a topic handle made once, with the
//! record's tag as the delivery opaque itself (a pointer-sized integer, not a box): nothing
//! is allocated per record on our side. (rdkafka's `send` would make a C string of the topic
//! name for every record.) librdkafka copies each record into its queue.

use std::ffi::{c_void, CString};
use std::ptr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_executor::block_on;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, FromClientConfig, FromClientConfigAndContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::{get_rdkafka_version, Timeout};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use rdkafka_sys as rdsys;

use super::{AckSink, ConsumerWorker, ProducerWorker, Target};
use crate::workload::Workload;

/// Bound on each admin request, metadata fetch and watermark query, and on each wait for the
/// cluster to show a topic deleted or created.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a producer flush.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);
/// Between two metadata polls while waiting for a topic to go or to get its leaders.
const METADATA_POLL: Duration = Duration::from_millis(100);
/// How long `send` sleeps before trying again when the client queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_micros(200);
const QUEUE_MESSAGES: u64 = 10_000_000;
/// librdkafka's upper bound for `batch.num.messages`: the byte limit `batch.size` binds first.
const BATCH_MESSAGES: u64 = 1_000_000;
/// librdkafka's default and upper bound for `message.max.bytes`.
const MESSAGE_MAX_BYTES_DEFAULT: usize = 1_000_000;
const MESSAGE_MAX_BYTES_LIMIT: usize = 1_000_000_000;
/// Fetch sizes, the same as the eventflow target's consumer.
const FETCH_BYTES: u32 = 8 << 20;
/// Prefetch: four fetches may wait in the consumer's queue.
const QUEUED_KBYTES: u32 = 4 * FETCH_BYTES / 1024;
/// librdkafka's upper bound for `queued.min.messages`: the byte bound binds first.
const QUEUED_MESSAGES: u32 = 10_000_000;
/// How long a partition whose prefetch queue is full waits before fetching again.
const FETCH_QUEUE_BACKOFF_MS: u32 = 10;
/// librdkafka's RD_KAFKA_PARTITION_UA (rdkafka.h): the partitioner picks the partition.
const PARTITION_UNASSIGNED: i32 = -1;
/// Records one `poll` drains after the first one, at most.
const DRAIN_MAX: usize = 10_000;
/// Consumer group when the workload names none (commits are off, so it only labels us).
const DEFAULT_GROUP: &str = "eventflow-bench";

pub(super) struct Kafka {
    addr: String,
    url: String,
    admin: AdminClient<DefaultClientContext>,
}

impl Kafka {
    pub(super) fn new(addr: &str) -> Result<Kafka> {
        let url = format!("kafka://{addr}");
        let admin = AdminClient::from_config(&client_config(&admin_settings(addr)))
            .with_context(|| format!("admin client for {url}"))?;
        admin
            .inner()
            .fetch_metadata(None, ADMIN_TIMEOUT)
            .with_context(|| format!("{url} does not answer a metadata request"))?;
        Ok(Kafka {
            addr: addr.to_string(),
            url,
            admin,
        })
    }

    /// The topic's partitions as the cluster reports them: `None` while it does not exist.
    fn partitions(&self, topic: &str) -> Result<Option<Vec<PartitionState>>> {
        let metadata = self
            .admin
            .inner()
            .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
            .with_context(|| format!("metadata of topic {topic} from {}", self.url))?;
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        match t.error().map(RDKafkaErrorCode::from) {
            None => {}
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Ok(None),
            // Kafka answers this while a new topic's partitions get their leaders.
            Some(RDKafkaErrorCode::LeaderNotAvailable) => return Ok(Some(Vec::new())),
            Some(e) => bail!("metadata of topic {topic} from {}: {e}", self.url),
        }
        Ok(Some(
            t.partitions()
                .iter()
                .map(|p| PartitionState {
                    id: p.id(),
                    has_leader: p.error().is_none() && p.leader() >= 0,
                })
                .collect(),
        ))
    }

    /// Polls metadata until `done` holds for the topic's partitions, for [`ADMIN_TIMEOUT`].
    fn wait_for(
        &self,
        topic: &str,
        what: &str,
        done: impl Fn(&Option<Vec<PartitionState>>) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        loop {
            if done(&self.partitions(topic)?) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "topic {topic} on {}: still not {what} after {ADMIN_TIMEOUT:?}",
                    self.url
                );
            }
            thread::sleep(METADATA_POLL);
        }
    }

    fn delete_topic(&self, topic: &str) -> Result<()> {
        let results = block_on(self.admin.delete_topics(&[topic], &admin_options()))
            .with_context(|| format!("deleting topic {topic} on {}", self.url))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((_, e)) => bail!("deleting topic {topic} on {}: {e}", self.url),
            }
        }
        self.wait_for(topic, "deleted", std::option::Option::is_none)
    }

    fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        let count = i32::try_from(partitions).context("partition count")?;
        let new_topic = NewTopic::new(topic, count, TopicReplication::Fixed(1));
        // A deletion can still be finishing on the controller after metadata stopped showing
        // the topic; creating it meanwhile fails with TopicAlreadyExists, so try again.
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        loop {
            let results = block_on(self.admin.create_topics([&new_topic], &admin_options()))
                .with_context(|| format!("creating topic {topic} on {}", self.url))?;
            match results.into_iter().find_map(Result::err) {
                None => break,
                Some((_, RDKafkaErrorCode::TopicAlreadyExists)) if Instant::now() < deadline => {
                    thread::sleep(METADATA_POLL);
                }
                Some((_, e)) => bail!("creating topic {topic} on {}: {e}", self.url),
            }
        }
        self.wait_for(topic, "ready with a leader for every partition", |parts| {
            parts.as_ref().is_some_and(|parts| {
                (0..count).all(|id| parts.iter().any(|p| p.id == id && p.has_leader))
            })
        })
    }
}

/// One partition in a metadata answer.
struct PartitionState {
    id: i32,
    has_leader: bool,
}

fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(ADMIN_TIMEOUT))
        .operation_timeout(Some(ADMIN_TIMEOUT))
}

/// Settings as (name, value) pairs: what the clients get and what the report shows.
type Settings = Vec<(&'static str, String)>;

fn client_config(settings: &Settings) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (name, value) in settings {
        config.set(*name, value);
    }
    config
}

fn admin_settings(addr: &str) -> Settings {
    vec![
        ("bootstrap.servers", addr.to_string()),
        ("allow.auto.create.topics", "false".into()),
    ]
}

/// `linger.ms` is a float in librdkafka (it keeps µs), so the workload's µs map exactly:
/// 1500 µs is `1.5`, 1000 µs is `1`.
fn linger_ms(us: u64) -> String {
    let (ms, rest) = (us / 1000, us % 1000);
    if rest == 0 {
        return ms.to_string();
    }
    format!("{ms}.{rest:03}").trim_end_matches('0').to_string()
}

fn producer_settings(addr: &str, w: &Workload) -> Settings {
    // librdkafka caps a batch at the smaller of batch.size and message.max.bytes, and
    // rejects a single record above message.max.bytes: raise it so batch.size binds.
    let message_max = MESSAGE_MAX_BYTES_DEFAULT
        .max(w.batch_bytes)
        .max(w.message_size + 1024)
        .min(MESSAGE_MAX_BYTES_LIMIT);
    vec![
        ("bootstrap.servers", addr.to_string()),
        ("socket.nagle.disable", "true".into()),
        ("acks", w.acks.as_str().into()),
        ("batch.size", w.batch_bytes.to_string()),
        ("linger.ms", linger_ms(w.linger_us)),
        ("batch.num.messages", BATCH_MESSAGES.to_string()),
        ("message.max.bytes", message_max.to_string()),
        (
            "queue.buffering.max.kbytes",
            (super::producer_buffer_bytes(w) / 1024).to_string(),
        ),
        ("queue.buffering.max.messages", QUEUE_MESSAGES.to_string()),
        ("partitioner", "murmur2_random".into()),
        ("compression.type", "none".into()),
        ("enable.idempotence", "false".into()),
    ]
}

fn consumer_settings(addr: &str, w: &Workload) -> Settings {
    let group = w.consumer_group.as_deref().unwrap_or(DEFAULT_GROUP);
    vec![
        ("bootstrap.servers", addr.to_string()),
        ("socket.nagle.disable", "true".into()),
        ("group.id", group.to_string()),
        ("enable.auto.commit", "false".into()),
        ("enable.partition.eof", "false".into()),
        ("auto.offset.reset", "earliest".into()),
        ("allow.auto.create.topics", "false".into()),
        ("fetch.wait.max.ms", "100".into()),
        ("check.crcs", w.check_crcs.to_string()),
        ("fetch.min.bytes", "1".into()),
        ("fetch.max.bytes", FETCH_BYTES.to_string()),
        ("max.partition.fetch.bytes", FETCH_BYTES.to_string()),
        ("queued.max.messages.kbytes", QUEUED_KBYTES.to_string()),
        ("queued.min.messages", QUEUED_MESSAGES.to_string()),
        ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS.to_string()),
    ]
}

impl Target for Kafka {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn url(&self) -> &str {
        &self.url
    }

    fn prepare_topic(&self, w: &Workload) -> Result<()> {
        if w.create_topic {
            self.delete_topic(&w.topic)?;
            return self.create_topic(&w.topic, w.partitions);
        }
        let Some(parts) = self.partitions(&w.topic)? else {
            bail!(
                "topic {} does not exist on {} (use --create-topic to create it)",
                w.topic,
                self.url
            );
        };
        super::check_partitions(w, parts.len())
    }

    fn watermarks(&self, w: &Workload) -> Result<Vec<(i64, i64)>> {
        (0..w.partitions)
            .map(|p| {
                self.admin
                    .inner()
                    .fetch_watermarks(&w.topic, p as i32, ADMIN_TIMEOUT)
                    .with_context(|| format!("offsets of {}/{p}", w.topic))
            })
            .collect()
    }

    fn producer(&self, w: &Workload, sink: Arc<dyn AckSink>) -> Result<Box<dyn ProducerWorker>> {
        let config = client_config(&producer_settings(&self.addr, w));
        let producer = ThreadedProducer::from_config_and_context(&config, AckContext { sink })
            .with_context(|| format!("producer for {}", self.url))?;
        let name = CString::new(w.topic.as_str()).context("the topic name holds a NUL byte")?;
        // SAFETY: the client pointer is valid while `producer` lives, and the handle is
        // released before it (see `KafkaProducer`). A null configuration gives the topic the
        // producer's own topic-level settings (acks, partitioner).
        let handle = unsafe {
            rdsys::rd_kafka_topic_new(
                producer.client().native_ptr(),
                name.as_ptr(),
                ptr::null_mut(),
            )
        };
        if handle.is_null() {
            // SAFETY: reads this thread's last librdkafka error; no pointer involved.
            let e = RDKafkaErrorCode::from(unsafe { rdsys::rd_kafka_last_error() });
            bail!("topic handle for {} on {}: {e}", w.topic, self.url);
        }
        Ok(Box::new(KafkaProducer {
            topic: TopicHandle(handle),
            producer,
            name: w.topic.clone(),
        }))
    }

    fn consumer(&self, w: &Workload, index: u32, start: &[i64]) -> Result<Box<dyn ConsumerWorker>> {
        let config = client_config(&consumer_settings(&self.addr, w));
        let consumer: BaseConsumer = BaseConsumer::from_config(&config)
            .with_context(|| format!("consumer for {}", self.url))?;
        if w.consumer_group.is_some() {
            consumer
                .subscribe(&[&w.topic])
                .with_context(|| format!("subscribing to {}", w.topic))?;
        } else {
            let mut assignment = TopicPartitionList::new();
            for p in w.consumer_partitions(index) {
                let at = start.get(p as usize).copied().unwrap_or(0);
                assignment
                    .add_partition_offset(&w.topic, p as i32, Offset::Offset(at))
                    .with_context(|| format!("assigning {}/{p}", w.topic))?;
            }
            consumer
                .assign(&assignment)
                .with_context(|| format!("assigning partitions of {}", w.topic))?;
        }
        Ok(Box::new(KafkaConsumer { consumer }))
    }

    fn client_settings(&self, w: &Workload) -> Vec<(String, String)> {
        let (_, version) = get_rdkafka_version();
        let mut settings = vec![(
            "client".to_string(),
            format!("librdkafka {version} via rdkafka 0.38.0 (built from source)"),
        )];
        let all = producer_settings(&self.addr, w)
            .into_iter()
            .chain(consumer_settings(&self.addr, w));
        for (name, value) in all {
            if !settings.iter().any(|(n, _)| n == name) {
                settings.push((name.to_string(), value));
            }
        }
        settings
    }
}

/// Reports each delivery to the harness's sink, on librdkafka's polling thread.
struct AckContext {
    sink: Arc<dyn AckSink>,
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = usize;

    // Tags travel as `usize`: exact on the 64-bit machines the harness runs on.
    fn delivery(&self, result: &DeliveryResult<'_>, tag: usize) {
        match result {
            Ok(_) => self.sink.acked(tag as u64, None),
            Err((e, _)) => self.sink.acked(tag as u64, Some(e)),
        }
    }
}

/// A librdkafka topic handle, released on drop.
struct TopicHandle(*mut rdsys::rd_kafka_topic_t);

// SAFETY: librdkafka's topic handles are reference-counted and may be used and released from
// any thread.
unsafe impl Send for TopicHandle {}

impl Drop for TopicHandle {
    fn drop(&mut self) {
        // SAFETY: made by rd_kafka_topic_new and released once, here; records still queued
        // hold their own references to the topic.
        unsafe { rdsys::rd_kafka_topic_destroy(self.0) }
    }
}

struct KafkaProducer {
    /// Declared before `producer`, so released before the client it belongs to.
    topic: TopicHandle,
    producer: ThreadedProducer<AckContext>,
    name: String,
}

impl ProducerWorker for KafkaProducer {
    fn send(
        &mut self,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: &[u8],
        tag: u64,
    ) -> Result<()> {
        let partition = partition.map_or(PARTITION_UNASSIGNED, |p| p as i32);
        let (key_ptr, key_len) = key.map_or((ptr::null(), 0), |k| (k.as_ptr(), k.len()));
        loop {
            // SAFETY: the topic handle lives as long as `self`; with RD_KAFKA_MSG_F_COPY
            // librdkafka copies value and key before it returns and never writes through
            // the payload pointer. The opaque is the tag as an integer, never dereferenced:
            // rdkafka's delivery callback hands it back to `AckContext::delivery` as `usize`.
            let rc = unsafe {
                rdsys::rd_kafka_produce(
                    self.topic.0,
                    partition,
                    rdsys::RD_KAFKA_MSG_F_COPY,
                    value.as_ptr().cast_mut().cast::<c_void>(),
                    value.len(),
                    key_ptr.cast::<c_void>(),
                    key_len,
                    tag as usize as *mut c_void,
                )
            };
            if rc == 0 {
                return Ok(());
            }
            // SAFETY: reads this thread's last librdkafka error; no pointer involved.
            match RDKafkaErrorCode::from(unsafe { rdsys::rd_kafka_last_error() }) {
                RDKafkaErrorCode::QueueFull => {
                    // The producer's polling thread frees space as it serves delivery
                    // reports; polling here instead would call the sink on the sending
                    // thread. The wait counts as publish delay.
                    thread::sleep(QUEUE_FULL_WAIT);
                }
                e => {
                    return Err(KafkaError::MessageProduction(e))
                        .with_context(|| format!("sending to {}", self.name))
                }
            }
        }
    }

    fn flush(&mut self) -> Result<()> {
        self.producer
            .flush(Timeout::After(FLUSH_TIMEOUT))
            .with_context(|| format!("flushing the producer for {}", self.name))
    }
}

struct KafkaConsumer {
    consumer: BaseConsumer,
}

impl ConsumerWorker for KafkaConsumer {
    fn poll(&mut self, timeout: Duration, on_value: &mut dyn FnMut(&[u8])) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        while seen < DRAIN_MAX {
            // Wait for the first record only; after that take what is already here.
            let wait = if seen == 0 {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(wait) {
                None => break,
                Some(Ok(m)) => {
                    on_value(m.payload().unwrap_or_default());
                    seen += 1;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    if wait.is_zero() {
                        break;
                    }
                }
                Some(Err(e)) => return Err(e).context("consuming"),
            }
        }
        Ok(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linger_keeps_microseconds() {
        assert_eq!(linger_ms(0), "0");
        assert_eq!(linger_ms(1000), "1");
        assert_eq!(linger_ms(1500), "1.5");
        assert_eq!(linger_ms(250), "0.25");
        assert_eq!(linger_ms(5), "0.005");
    }

    #[test]
    fn batch_size_binds() {
        let w = Workload {
            batch_bytes: 4 << 20,
            ..Workload::default()
        };
        let settings = producer_settings("h:1", &w);
        let get = |name: &str| settings.iter().find(|(n, _)| *n == name).unwrap().1.clone();
        assert_eq!(get("batch.size"), (4u32 << 20).to_string());
        assert_eq!(get("message.max.bytes"), (4u32 << 20).to_string());
        assert_eq!(get("acks"), "all");
    }
}
