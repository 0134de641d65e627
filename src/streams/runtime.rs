//! Running a topology: one thread per application instance, over the client's group
//! consumer and producer.
//!
//! **At-least-once.** The loop is: poll a batch of records, process each (outputs,
//! repartition records and changelog updates are sent as they appear), flush the producer
//! and wait until every record sent is acknowledged, and only then commit the consumed
//! offsets. A crash anywhere before the commit leaves the batch to be processed again: its
//! outputs may appear twice, nothing is lost, and the stores' marks keep a replayed record
//! from being applied to the state twice (see `store.rs`).
//!
//! **Rebalances.** The consumer calls the rebalance listener inside `poll`; the listener
//! only queues the change and the loop applies it after `poll` returns, before it
//! processes any record. A revoked partition's store is dropped: everything it produced
//! was flushed and committed at the end of the previous batch (the loop commits after every
//! batch, so a revocation never finds unflushed work). An assigned partition's store is
//! restored first: its changelog partition (same number) is read from its start to the end
//! offset taken at the time, and tables joined by the partition's stream are read the same
//! way from their own topic, then followed.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::client::consumer::{Consumer, ConsumerConfig, ConsumerRecord, StartAt};
use crate::client::group::{GroupConfig, OffsetReset, RebalanceListener};
use crate::client::partitioner::partition_for_key;
use crate::client::producer::{DeliveryFuture, Producer, ProducerConfig, Record};
use crate::client::{Client, ClientTls, Credentials};
use crate::protocol::api::offset_spec;
use crate::protocol::ErrorCode;

use super::dsl::StreamsBuilder;
use super::error::StreamsError;
use super::store::{KeyValueStore, TableStore};
use super::topology::{Output, Registry, ORIGIN_HEADER};

/// Settings of one application instance.
#[derive(Debug, Clone)]
pub struct StreamsConfig {
    /// Names the consumer group and prefixes the internal topics
    /// (`<application_id>-<name>-repartition`, `<application_id>-<store>-changelog`).
    /// Every instance of one application uses the same id.
    pub application_id: String,
    /// Any broker address.
    pub bootstrap: String,
    /// Longest wait for records in one round of the loop.
    pub poll_timeout: Duration,
    /// Bytes one fetch may bring (per shard connection): the size of a processing batch,
    /// hence how much work is done again after a crash and how often offsets are
    /// committed.
    pub fetch_max_bytes: u32,
    /// How long the group waits for a silent instance before its partitions move.
    pub session_timeout: Duration,
    /// How often the instance heartbeats (and learns of rebalances).
    pub heartbeat_interval: Duration,
    /// Who to log in as on a broker that requires authentication (`None`: anonymous).
    pub credentials: Option<Credentials>,
    /// Connect in TLS, trusting these CAs (`None`: plaintext).
    pub tls: Option<ClientTls>,
    /// Stop by itself after this long without records (bounded runs: examples, tests);
    /// `None`: run until [`Streams::stop`].
    pub stop_when_idle: Option<Duration>,
}

impl StreamsConfig {
    /// An application `application_id` on the broker at `bootstrap`: 100 ms polls,
    /// 256 KiB fetches, a 10 s session, 1 s heartbeats, no idle stop.
    pub fn new(application_id: &str, bootstrap: &str) -> StreamsConfig {
        StreamsConfig {
            application_id: application_id.to_string(),
            bootstrap: bootstrap.to_string(),
            poll_timeout: Duration::from_millis(100),
            fetch_max_bytes: 256 << 10,
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            credentials: None,
            tls: None,
            stop_when_idle: None,
        }
    }
}

/// Counters of a running instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamsStats {
    /// Input records processed (a record processed again after a rebalance counts again).
    pub records: u64,
    /// Records written: outputs, repartition records and changelog updates.
    pub written: u64,
    /// Records dropped from at least one window because it had closed.
    pub late_records: u64,
    /// Store and table records read back while restoring partitions.
    pub restored: u64,
    /// Commits of consumed offsets that the group accepted.
    pub commits: u64,
}

/// A running application instance: its thread, and the means to stop it.
pub struct Streams {
    thread: Option<JoinHandle<Result<(), StreamsError>>>,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<StreamsStats>>,
}

impl Streams {
    /// Builds the topology with `build` on a new thread, creates the internal topics,
    /// joins the application's group and starts processing. Returns once the instance
    /// runs, or with the reason it could not start (a bad topology, missing or
    /// mismatched topics, an unreachable broker).
    pub fn start(
        config: StreamsConfig,
        build: impl FnOnce(&mut StreamsBuilder) + Send + 'static,
    ) -> Result<Streams, StreamsError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(StreamsStats::default()));
        let (ready_tx, ready) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("streams-{}", config.application_id))
            .spawn({
                let (stop, stats) = (stop.clone(), stats.clone());
                move || {
                    let instance = match Instance::start(config, build, stats) {
                        Ok(instance) => instance,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return Ok(());
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    instance.run(&stop)
                }
            })
            .map_err(|e| StreamsError::Thread(format!("cannot spawn: {e}")))?;
        match ready.recv() {
            Ok(Ok(())) => Ok(Streams {
                thread: Some(thread),
                stop,
                stats,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(join(thread)
                .err()
                .unwrap_or_else(|| StreamsError::Thread("ended before it started".into()))),
        }
    }

    /// The instance's counters so far.
    pub fn stats(&self) -> StreamsStats {
        *self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops after the batch in hand (flushed and committed), leaves the group and
    /// returns the final counters.
    pub fn stop(mut self) -> Result<StreamsStats, StreamsError> {
        self.stop.store(true, Ordering::Relaxed);
        self.finish()
    }

    /// Waits for the instance to end (with [`StreamsConfig::stop_when_idle`], or on an
    /// error) and returns the final counters.
    pub fn wait(mut self) -> Result<StreamsStats, StreamsError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<StreamsStats, StreamsError> {
        self.thread.take().map_or(Ok(()), join)?;
        Ok(self.stats())
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if let Err(e) = join(thread) {
                tracing::warn!("streams instance: {e}");
            }
        }
    }
}

fn join(thread: JoinHandle<Result<(), StreamsError>>) -> Result<(), StreamsError> {
    thread
        .join()
        .unwrap_or_else(|_| Err(StreamsError::Thread("panicked".into())))
}

/// A change of the group assignment, queued by the listener for the loop.
enum Rebalance {
    Revoked(Vec<(String, u32)>),
    Assigned(Vec<(String, u32)>),
}

struct QueueRebalances(Arc<Mutex<Vec<Rebalance>>>);

impl RebalanceListener for QueueRebalances {
    fn on_revoked(&mut self, partitions: &[(String, u32)]) {
        lock(&self.0).push(Rebalance::Revoked(partitions.to_vec()));
    }

    fn on_assigned(&mut self, partitions: &[(String, u32)]) {
        lock(&self.0).push(Rebalance::Assigned(partitions.to_vec()));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The state of the instance's thread.
struct Instance {
    config: StreamsConfig,
    registry: Rc<RefCell<Registry>>,
    /// The partition count of every source and internal topic.
    partitions: u32,
    admin: Client,
    consumer: Consumer,
    producer: Producer,
    rebalances: Arc<Mutex<Vec<Rebalance>>>,
    /// Reads changelog partitions back (assigned only while restoring).
    restorer: Consumer,
    /// Reads and follows the partitions of the tables (when there are tables).
    tables: Option<Consumer>,
    stats: Arc<Mutex<StreamsStats>>,
}

impl Instance {
    fn start(
        config: StreamsConfig,
        build: impl FnOnce(&mut StreamsBuilder),
        stats: Arc<Mutex<StreamsStats>>,
    ) -> Result<Instance, StreamsError> {
        let mut builder = StreamsBuilder::new(&config.application_id);
        build(&mut builder);
        let registry = builder.into_registry();
        let (topics, partitions, admin) = {
            let mut r = registry.borrow_mut();
            if let Some(e) = r.build_error.take() {
                return Err(e);
            }
            if r.user_topics.is_empty() {
                return Err(StreamsError::Topology("the topology reads no topic".into()));
            }
            let mut admin = Client::connect_secure(
                config.bootstrap.as_str(),
                crate::client::DEFAULT_REQUEST_TIMEOUT,
                config.credentials.as_ref(),
                config.tls.as_ref(),
            )
            .map_err(StreamsError::client(format!(
                "connecting to {}",
                config.bootstrap
            )))?;
            let partitions = source_partitions(&mut admin, &r.user_topics)?;
            for table in &r.tables {
                check_co_partitioned(&mut admin, &table.borrow(), partitions)?;
            }
            for topic in &r.repartition_topics {
                ensure_topic(&mut admin, topic, partitions, &[])?;
            }
            for store in &r.stores {
                let changelog = store.borrow().changelog.to_string();
                ensure_topic(
                    &mut admin,
                    &changelog,
                    partitions,
                    &[("cleanup.policy", "compact")],
                )?;
            }
            (r.subscribed_topics(), partitions, admin)
        };
        let consumer_config = ConsumerConfig {
            bootstrap: config.bootstrap.clone(),
            max_wait: config.poll_timeout,
            max_bytes: config.fetch_max_bytes,
            credentials: config.credentials.clone(),
            tls: config.tls.clone(),
            ..ConsumerConfig::default()
        };
        let connecting = |what: &str| {
            StreamsError::client(format!("{what}: connecting to {}", config.bootstrap))
        };
        let producer = Producer::new(ProducerConfig {
            bootstrap: config.bootstrap.clone(),
            linger: Duration::from_millis(2),
            credentials: config.credentials.clone(),
            tls: config.tls.clone(),
            ..ProducerConfig::default()
        })
        .map_err(connecting("producer"))?;
        let restorer =
            Consumer::new(consumer_config.clone()).map_err(connecting("restore consumer"))?;
        let tables = if registry.borrow().tables.is_empty() {
            None
        } else {
            Some(Consumer::new(consumer_config.clone()).map_err(connecting("table consumer"))?)
        };
        let mut consumer = Consumer::new(consumer_config).map_err(connecting("consumer"))?;
        let rebalances = Arc::new(Mutex::new(Vec::new()));
        consumer.set_rebalance_listener(QueueRebalances(rebalances.clone()));
        let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(
                &config.application_id,
                &topic_refs,
                GroupConfig {
                    session_timeout: config.session_timeout,
                    heartbeat_interval: config.heartbeat_interval,
                    // Range gives every member the same partition numbers of every topic
                    // (they all have the same count), so the partitions of one number stay
                    // together, as a store fed by several topics needs.
                    strategy: "range".into(),
                    auto_commit: None,
                    reset: OffsetReset::Earliest,
                    client_id: config.application_id.clone(),
                },
            )
            .map_err(StreamsError::client(format!(
                "joining group {}",
                config.application_id
            )))?;
        tracing::info!(
            application = %config.application_id,
            topics = ?topics,
            partitions,
            "streams instance started"
        );
        Ok(Instance {
            config,
            registry,
            partitions,
            admin,
            consumer,
            producer,
            rebalances,
            restorer,
            tables,
            stats,
        })
    }

    fn run(mut self, stop: &AtomicBool) -> Result<(), StreamsError> {
        let mut last_record = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let records = self
                .consumer
                .poll(self.config.poll_timeout)
                .map_err(StreamsError::client("polling the source topics"))?;
            self.apply_rebalances()?;
            self.follow_tables()?;
            if records.is_empty() {
                if self
                    .config
                    .stop_when_idle
                    .is_some_and(|idle| last_record.elapsed() >= idle)
                {
                    break;
                }
                continue;
            }
            last_record = Instant::now();
            self.process(&records)?;
        }
        tracing::info!(application = %self.config.application_id, stats = ?*lock(&self.stats), "streams instance stopping");
        // Every processed batch is committed already; leaving hands the partitions on now.
        self.consumer
            .close()
            .map_err(StreamsError::client("leaving the group"))
    }

    /// Processes a batch, writes everything it caused, waits for the acknowledgements,
    /// then commits.
    fn process(&mut self, records: &[ConsumerRecord]) -> Result<(), StreamsError> {
        let mut deliveries: Vec<(Arc<str>, DeliveryFuture)> = Vec::new();
        let mut late = 0;
        for record in records {
            let ctx = self
                .registry
                .borrow_mut()
                .process(record, self.partitions)?;
            late += ctx.late;
            for output in ctx.outputs {
                deliveries.push((output.topic.clone(), self.send(&output)?));
            }
        }
        self.producer
            .flush()
            .map_err(StreamsError::client("flushing"))?;
        let written = deliveries.len() as u64;
        for (topic, delivery) in deliveries {
            delivery.wait().map_err(|source| StreamsError::Produce {
                topic: topic.to_string(),
                source,
            })?;
        }
        let committed = match self.consumer.commit() {
            Ok(()) => true,
            Err(e)
                if matches!(
                    e.code(),
                    Some(ErrorCode::StaleGeneration | ErrorCode::UnknownMember)
                ) =>
            {
                tracing::warn!(
                    "commit refused ({e}): the partitions' next owner processes this batch again"
                );
                false
            }
            // Positions only grow: the next batch's commit covers this one's.
            Err(e) if e.is_retriable() => {
                tracing::warn!("commit failed ({e}): the next batch's commit covers it");
                false
            }
            Err(e) => return Err(StreamsError::client("committing offsets")(e)),
        };
        let mut stats = lock(&self.stats);
        stats.records += records.len() as u64;
        stats.written += written;
        stats.commits += u64::from(committed);
        let before = stats.late_records;
        stats.late_records += late;
        // Logged at the 1st, 10th, 100th… late record, so a flood cannot flood the log.
        if late > 0 && before.checked_ilog10() != stats.late_records.checked_ilog10() {
            tracing::warn!(
                application = %self.config.application_id,
                total = stats.late_records,
                "records dropped from windows closed by their grace period"
            );
        }
        Ok(())
    }

    fn send(&self, output: &Output) -> Result<DeliveryFuture, StreamsError> {
        let origin;
        let headers: &[(&[u8], Option<&[u8]>)] = match &output.origin {
            Some(bytes) => {
                origin = [(ORIGIN_HEADER, Some(bytes.as_slice()))];
                &origin
            }
            None => &[],
        };
        self.producer
            .send(Record {
                topic: &output.topic,
                partition: output.partition,
                key: output.key.as_deref(),
                value: output.value.as_deref(),
                headers,
                timestamp: Some(output.timestamp),
            })
            .map_err(|source| StreamsError::Produce {
                topic: output.topic.to_string(),
                source,
            })
    }

    /// Drops the stores of revoked partitions and restores those of assigned ones.
    fn apply_rebalances(&mut self) -> Result<(), StreamsError> {
        let changes = std::mem::take(&mut *lock(&self.rebalances));
        let (stores, tables) = {
            let r = self.registry.borrow();
            (r.stores.clone(), r.tables.clone())
        };
        for change in changes {
            match change {
                Rebalance::Revoked(partitions) => {
                    for (topic, partition) in &partitions {
                        for store in &stores {
                            let mut store = store.borrow_mut();
                            if store.inputs.contains(topic) {
                                store.drop_partition(*partition);
                            }
                        }
                        for table in &tables {
                            let mut table = table.borrow_mut();
                            if table.joined_by.contains(topic) {
                                table.drop_partition(*partition);
                                if let Some(consumer) = self.tables.as_mut() {
                                    consumer.unassign(&table.topic, &[*partition]);
                                }
                            }
                        }
                    }
                    tracing::info!(?partitions, "partitions revoked: their stores dropped");
                }
                Rebalance::Assigned(partitions) => {
                    for (topic, partition) in &partitions {
                        for store in &stores {
                            let follows = store.borrow().inputs.contains(topic);
                            if follows && !store.borrow().holds(*partition) {
                                self.restore_store(&mut store.borrow_mut(), *partition)?;
                            }
                        }
                        for table in &tables {
                            let joined = table.borrow().joined_by.contains(topic);
                            if joined && !table.borrow().holds(*partition) {
                                self.restore_table(&tables, table, *partition)?;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads store partition `partition` back from its changelog, start to end.
    fn restore_store(
        &mut self,
        store: &mut KeyValueStore,
        partition: u32,
    ) -> Result<(), StreamsError> {
        let topic = store.changelog.to_string();
        store.partition(partition);
        let end = self.end_offset(&topic, partition)?;
        let read = read_to(&mut self.restorer, &topic, partition, end, |record| {
            store
                .partition(partition)
                .restore(
                    record.key.as_deref().unwrap_or_default(),
                    record.value.as_deref(),
                )
                .map_err(|e| {
                    StreamsError::Corrupt(format!(
                        "changelog record {topic}/{partition}@{}: {e}",
                        record.offset
                    ))
                })
        })?;
        self.restorer.unassign(&topic, &[partition]);
        lock(&self.stats).restored += read;
        let keys = store.partition(partition).len();
        tracing::info!(
            store = %store.name,
            partition,
            keys,
            records = read,
            "store restored from {topic}"
        );
        Ok(())
    }

    /// Reads table partition `partition` from its topic's start to its end, then keeps
    /// following it.
    fn restore_table(
        &mut self,
        tables: &[Rc<RefCell<TableStore>>],
        table: &Rc<RefCell<TableStore>>,
        partition: u32,
    ) -> Result<(), StreamsError> {
        let topic = table.borrow().topic.clone();
        table.borrow_mut().open_partition(partition);
        let end = self.end_offset(&topic, partition)?;
        let partitions = self.partitions;
        let Some(consumer) = self.tables.as_mut() else {
            return Ok(());
        };
        // Other table partitions followed meanwhile get their records applied too.
        let read = read_to(consumer, &topic, partition, end, |record| {
            apply_table_record(tables, record, partitions)
        })?;
        lock(&self.stats).restored += read;
        tracing::info!(table = %topic, partition, records = read, "table partition read");
        Ok(())
    }

    /// Applies the table records that arrived since the last round.
    fn follow_tables(&mut self) -> Result<(), StreamsError> {
        let Some(consumer) = self.tables.as_mut() else {
            return Ok(());
        };
        let records = consumer
            .poll(Duration::ZERO)
            .map_err(StreamsError::client("following the tables"))?;
        let tables = self.registry.borrow().tables.clone();
        for record in &records {
            apply_table_record(&tables, record, self.partitions)?;
        }
        Ok(())
    }

    fn end_offset(&mut self, topic: &str, partition: u32) -> Result<i64, StreamsError> {
        self.admin
            .list_offset(topic, partition, offset_spec::LATEST)
            .map_err(StreamsError::client(format!(
                "end offset of {topic}/{partition}"
            )))
    }
}

/// Assigns `topic/partition` to `consumer` from its start and hands every record below
/// `end` (and any other records the consumer returns) to `apply`; returns how many records
/// of `topic/partition` were read.
fn read_to(
    consumer: &mut Consumer,
    topic: &str,
    partition: u32,
    end: i64,
    mut apply: impl FnMut(&ConsumerRecord) -> Result<(), StreamsError>,
) -> Result<u64, StreamsError> {
    let reading = format!("reading {topic}/{partition}");
    consumer
        .assign(topic, &[partition], StartAt::Earliest)
        .map_err(StreamsError::client(reading.clone()))?;
    let mut read = 0;
    while consumer.position(topic, partition).is_some_and(|p| p < end) {
        for record in consumer
            .poll(Duration::from_millis(500))
            .map_err(StreamsError::client(reading.clone()))?
        {
            if *record.topic == *topic && record.partition == partition {
                read += 1;
            }
            apply(&record)?;
        }
    }
    Ok(read)
}

/// Applies one record of a table topic to the tables read from it, after checking that
/// its key belongs to its partition (co-partitioning).
fn apply_table_record(
    tables: &[Rc<RefCell<TableStore>>],
    record: &ConsumerRecord,
    partitions: u32,
) -> Result<(), StreamsError> {
    let at = || format!("{}/{}@{}", record.topic, record.partition, record.offset);
    let Some(key) = record.key.as_deref() else {
        tracing::warn!("table record {} has no key: skipped", at());
        return Ok(());
    };
    let home = partition_for_key(key, partitions);
    if home != record.partition {
        return Err(StreamsError::Topology(format!(
            "table record {}: its key belongs to partition {home} under the default \
             partitioner (murmur2 of the key): a joined table must be produced with keys \
             and the default partitioner, like its streams",
            at()
        )));
    }
    for table in tables {
        let mut table = table.borrow_mut();
        if table.topic == *record.topic && table.holds(record.partition) {
            table.apply(record.partition, key, record.value.as_deref());
        }
    }
    Ok(())
}

/// The partition count shared by every source topic.
fn source_partitions(admin: &mut Client, topics: &[String]) -> Result<u32, StreamsError> {
    let mut counts = Vec::new();
    for topic in topics {
        counts.push((
            topic,
            partition_count(admin, topic)?.ok_or_else(|| {
                StreamsError::Topology(format!("source topic {topic} does not exist"))
            })?,
        ));
    }
    let first = counts[0].1;
    if counts.iter().any(|(_, n)| *n != first) {
        return Err(StreamsError::Topology(format!(
            "the source topics need one partition count (stores and internal topics have \
             it), they have {counts:?}"
        )));
    }
    Ok(first)
}

fn check_co_partitioned(
    admin: &mut Client,
    table: &TableStore,
    partitions: u32,
) -> Result<(), StreamsError> {
    let topic = &table.topic;
    match partition_count(admin, topic)? {
        None => Err(StreamsError::Topology(format!(
            "table topic {topic} does not exist"
        ))),
        Some(n) if n != partitions => Err(StreamsError::Topology(format!(
            "table topic {topic} has {n} partitions and the streams joining it {partitions}: \
             a join needs co-partitioned topics (the same partition count, records placed \
             by the default partitioner)"
        ))),
        Some(_) => Ok(()),
    }
}

/// The partition count of `topic`, `None` if it does not exist.
fn partition_count(admin: &mut Client, topic: &str) -> Result<Option<u32>, StreamsError> {
    let metadata = admin
        .metadata(&[topic])
        .map_err(StreamsError::client(format!("metadata of {topic}")))?;
    Ok(metadata
        .topics
        .into_iter()
        .find(|t| t.name == topic && t.error == ErrorCode::None)
        .map(|t| t.owners.len() as u32))
}

/// Creates an internal topic, or checks that the one there has `partitions`.
fn ensure_topic(
    admin: &mut Client,
    topic: &str,
    partitions: u32,
    configs: &[(&str, &str)],
) -> Result<(), StreamsError> {
    match admin.create_topic(topic, partitions, configs) {
        Ok(()) => {
            tracing::info!(topic, partitions, ?configs, "internal topic created");
            Ok(())
        }
        Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {
            match partition_count(admin, topic)? {
                Some(n) if n == partitions => Ok(()),
                found => Err(StreamsError::Topology(format!(
                    "internal topic {topic} has {found:?} partitions, the sources {partitions}: \
                     delete it (and reset the group) to start the application afresh"
                ))),
            }
        }
        Err(e) => Err(StreamsError::client(format!("creating {topic}"))(e)),
    }
}
