//! The producer: `send` a record, get a delivery future with its partition and offset.
//!
//! Records go into per-partition batches ([`Accumulator`]) under a lock held for
//! microseconds; one I/O thread takes the batches that are full or have lingered, groups them
//! by owning shard into one produce request per shard, and writes it on that shard's direct
//! port (shard-aware routing: no hop between shards). One reader thread per connection
//! completes the deliveries as responses arrive, so requests are pipelined up to
//! `max_in_flight` per connection.
//!
//! A batch that fails with a retriable error (a lost or silent connection, or the broker's
//! `ShuttingDown`, `Timeout`, `NotEnoughDisk`) is sent again after a backoff (`Backoff`,
//! `retry_backoff` doubling to `retry_backoff_max`, ±20 % jitter) on a new connection, until
//! `delivery_timeout` after it closed; then it fails with the last error. A batch the broker
//! stored before its connection broke is stored again by its retry: without an idempotent
//! producer in the native protocol, a retry can duplicate records (and, with several
//! requests in flight, reorder batches of a partition). Delivery results are futures that need no particular
//! executor (any async runtime can await them) and can also be waited on from plain threads.

use super::Stream;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::accumulator::{Accumulator, AccumulatorConfig, AppendError, ReadyBatch, TopicPartition};
use super::backoff::Backoff;
use super::clock::now_ms;
use super::partitioner::{partition_for_key, StickyPartitioner};
use super::{io_error, read_frame, write_frame, Client, ClientError};
use crate::fasthash::FastMap;
use crate::protocol::api::*;
use crate::protocol::frame::{Decoder, ResponseHeader};
use crate::protocol::{ErrorCode, WireError};

/// Producer settings (Kafka's names in brackets).
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Any broker address; metadata gives the shards' direct ports.
    pub bootstrap: String,
    /// Acknowledgement mode (`acks`).
    pub acks: Acks,
    /// Batch size in bytes (`batch.size`).
    pub batch_bytes: usize,
    /// How long a batch may wait for more records (`linger.ms`).
    pub linger: Duration,
    /// Bytes buffered before `send` blocks or fails (`buffer.memory`).
    pub buffer_bytes: usize,
    /// When the buffer is full: block `send` (true, like `max.block.ms` without limit) or
    /// fail it with `BufferFull`.
    pub block_when_full: bool,
    /// Produce requests in flight per connection
    /// (`max.in.flight.requests.per.connection`).
    pub max_in_flight: usize,
    /// Largest produce request: ready batches for one shard are split across requests of
    /// at most this size (`max.request.size`). Keep it under the broker's
    /// `--max-request-bytes` (16 MiB by default); a single batch larger than it is sent
    /// alone.
    pub max_request_bytes: usize,
    /// Times a batch is sent again after a retriable error (`retries`); the
    /// `delivery_timeout` bounds retries in time whatever this says.
    pub retries: u32,
    /// Pause before the first retry of a batch (`retry.backoff.ms`); it doubles at each
    /// retry up to `retry_backoff_max`, with ±20 % jitter.
    pub retry_backoff: Duration,
    /// Longest pause between retries (`retry.backoff.max.ms`).
    pub retry_backoff_max: Duration,
    /// How long a record may take from `send` to its outcome, retries included
    /// (`delivery.timeout.ms`). A batch still failing with a retriable error when it runs
    /// out fails with that error.
    pub delivery_timeout: Duration,
    /// How long a connection with requests in flight may go without receiving anything
    /// before they fail and the connection is dropped (`request.timeout.ms`): a broker that
    /// stops answering cannot make `send` or `flush` wait forever.
    pub request_timeout: Duration,
    /// Who to log in as on a broker that requires authentication (`None`: anonymous).
    pub credentials: Option<super::Credentials>,
    /// Connect in TLS, trusting these CAs (`None`: plaintext).
    pub tls: Option<super::ClientTls>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        let batching = AccumulatorConfig::default();
        ProducerConfig {
            bootstrap: "127.0.0.1:9292".into(),
            acks: Acks::All,
            batch_bytes: batching.batch_bytes,
            linger: batching.linger,
            buffer_bytes: batching.buffer_bytes,
            block_when_full: true,
            max_in_flight: 5,
            max_request_bytes: 8 << 20,
            retries: u32::MAX,
            retry_backoff: Duration::from_millis(50),
            retry_backoff_max: Duration::from_secs(2),
            delivery_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
            credentials: None,
            tls: None,
        }
    }
}

/// One record to send.
#[derive(Debug, Clone, Copy, Default)]
pub struct Record<'a> {
    /// Topic.
    pub topic: &'a str,
    /// A fixed partition; `None` lets the partitioner choose (murmur2 of the key, or sticky
    /// for unkeyed records).
    pub partition: Option<u32>,
    /// Key.
    pub key: Option<&'a [u8]>,
    /// Value.
    pub value: Option<&'a [u8]>,
    /// Headers.
    pub headers: &'a [(&'a [u8], Option<&'a [u8]>)],
    /// Milliseconds since the epoch; `None`: now.
    pub timestamp: Option<i64>,
}

/// Where a record was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Partition.
    pub partition: u32,
    /// Offset (-1 with `acks = 0`).
    pub offset: i64,
}

type DeliveryResult = Result<Delivery, ClientError>;

/// Where a record's result lands: read by its future (waker) or a waiting thread.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    done: Condvar,
}

#[derive(Default)]
struct SlotState {
    result: Option<DeliveryResult>,
    waker: Option<Waker>,
    /// A thread sleeps in `wait`; only then is the condvar signalled (a signal is a
    /// syscall, and most results are read without anyone blocked).
    waiting: bool,
}

impl Slot {
    fn complete(&self, result: DeliveryResult) {
        let mut state = lock(&self.state);
        state.result = Some(result);
        let waker = state.waker.take();
        let waiting = state.waiting;
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        if waiting {
            self.done.notify_all();
        }
    }
}

/// Called once per record sent with [`Producer::send_tagged`], on a producer thread, with
/// the record's tag and its outcome. It should return quickly: the next responses wait.
pub type DeliveryCallback = Arc<dyn Fn(u64, &DeliveryResult) + Send + Sync>;

/// Called with the outcomes of records sent with [`Producer::send_tagged`] a run at a time,
/// on a producer thread: the tags of consecutive records of one batch, in the order they
/// were sent, and the outcome of the first. On success record `i` of the run was stored in
/// the same partition at the first's offset plus `i` (with acks=0 every offset is -1); on
/// failure each failed with that error. One call per batch when every record of it was
/// tagged: the per-record work of [`DeliveryCallback`] (a call, and whatever the callee
/// reads or locks for it) is then paid once per batch.
pub type BatchDeliveryCallback = Arc<dyn Fn(&[u64], &DeliveryResult) + Send + Sync>;

/// Where the outcomes of tagged records go.
enum Callback {
    PerRecord(DeliveryCallback),
    PerRun(BatchDeliveryCallback),
}

/// How a record's outcome is reported: through its future, or to the producer's callback
/// with the caller's tag (no allocation per record).
enum Token {
    Future(Arc<Slot>),
    Tagged(u64),
}

/// The outcome of one `send`: a future, or [`DeliveryFuture::wait`] from a thread.
pub struct DeliveryFuture {
    slot: Arc<Slot>,
}

impl DeliveryFuture {
    /// Blocks the calling thread until the record is acknowledged or failed.
    pub fn wait(self) -> DeliveryResult {
        let mut state = lock(&self.slot.state);
        loop {
            if let Some(result) = state.result.take() {
                return result;
            }
            state.waiting = true;
            state = self
                .slot
                .done
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

impl Future for DeliveryFuture {
    type Output = DeliveryResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<DeliveryResult> {
        let mut state = lock(&self.slot.state);
        match state.result.take() {
            Some(result) => Poll::Ready(result),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Records [`Producer::send_tagged_many`] appends under one taking of the lock and one
/// reading of the clock. At 100 bytes a record that is a few µs of appends: long enough
/// to spread the lock's cost over many records, short enough that the I/O thread, which
/// takes the lock to send closed batches, never waits long for it.
pub const SEND_MANY_CHUNK: usize = 64;

/// [`Producer::send_tagged_many`] stopped at a record it could not queue.
#[derive(Debug, thiserror::Error)]
#[error("{error} (the {queued} records before it were queued)")]
pub struct SendManyError {
    /// Records queued before the one that failed; their outcomes reach the callback.
    pub queued: usize,
    /// Why the next record was not queued.
    pub error: ClientError,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct TopicInfo {
    owners: Vec<u16>,
}

struct State {
    batches: Accumulator<Token>,
    sticky: StickyPartitioner,
    topics: FastMap<String, Arc<TopicInfo>>,
    /// The topic sent to last, its partition count (`None`: look it up in `topics`) and its
    /// index in `batches`, checked first: a producer usually sends to one topic many times
    /// in a row. This is the one comparison of the topic's name a record costs; the
    /// accumulator and the partitioner are handed the index.
    last_topic: String,
    last_partitions: Option<u32>,
    last_index: usize,
    /// How many times `last_topic` has been set: a caller that saw this count when it
    /// appended to a topic knows the name is still `last_topic` while the count stands.
    last_topic_changes: u64,
    endpoints: Vec<ShardEndpoint>,
    /// Records handed to `send` and not yet completed.
    pending: usize,
    /// Flushes waiting: send everything now.
    flushing: usize,
    /// Batches to send now (closed full) or again after a retriable error (not before
    /// their instant).
    retry: Vec<(Outgoing, Instant)>,
    closed: bool,
    /// The I/O thread is waiting on `work` (set and cleared under this lock). `send` wakes
    /// it only then: a `notify_one` is a futex syscall even when nobody waits, and an I/O
    /// thread that is awake sees the new batches before it waits again.
    io_waiting: bool,
    /// Threads waiting on `progress` (for buffer space or a flush), counted under this
    /// lock: a completed batch wakes them only if there are any, for the same reason.
    progress_waiters: usize,
}

struct Shared {
    config: ProducerConfig,
    /// Receives the outcomes of tagged records.
    callback: Option<Callback>,
    state: Mutex<State>,
    /// The I/O thread waits here for work.
    work: Condvar,
    /// `send` (buffer full) and `flush` wait here.
    progress: Condvar,
    /// For metadata requests from `send`; `None` after a connection error (the next
    /// request connects again).
    admin: Mutex<Option<Client>>,
}

/// A producer. Cheap to share between threads (`&Producer` is enough to send).
pub struct Producer {
    shared: Arc<Shared>,
    io: Option<JoinHandle<()>>,
}

impl Producer {
    /// Connects to the bootstrap broker and starts the I/O thread.
    pub fn new(config: ProducerConfig) -> Result<Producer, ClientError> {
        Producer::start(config, None)
    }

    /// Like [`Producer::new`], with a callback that receives the outcome of every record
    /// sent with [`Producer::send_tagged`] (librdkafka's delivery report callback).
    pub fn with_callback(
        config: ProducerConfig,
        callback: DeliveryCallback,
    ) -> Result<Producer, ClientError> {
        Producer::start(config, Some(Callback::PerRecord(callback)))
    }

    /// Like [`Producer::with_callback`], with the outcomes of tagged records delivered a run
    /// of a batch at a time ([`BatchDeliveryCallback`]).
    pub fn with_batch_callback(
        config: ProducerConfig,
        callback: BatchDeliveryCallback,
    ) -> Result<Producer, ClientError> {
        Producer::start(config, Some(Callback::PerRun(callback)))
    }

    fn start(config: ProducerConfig, callback: Option<Callback>) -> Result<Producer, ClientError> {
        let mut admin = Client::connect_secure(
            config.bootstrap.as_str(),
            config.request_timeout,
            config.credentials.as_ref(),
            config.tls.as_ref(),
        )?;
        let endpoints = admin.metadata(&[])?.shards;
        let batching = AccumulatorConfig {
            batch_bytes: config.batch_bytes.max(64),
            linger: config.linger,
            buffer_bytes: config.buffer_bytes.max(1024),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                batches: Accumulator::new(batching),
                sticky: StickyPartitioner::new(),
                topics: FastMap::default(),
                last_topic: String::new(),
                last_partitions: None,
                last_index: 0,
                last_topic_changes: 0,
                endpoints,
                pending: 0,
                flushing: 0,
                retry: Vec::new(),
                closed: false,
                io_waiting: false,
                progress_waiters: 0,
            }),
            config,
            callback,
            work: Condvar::new(),
            progress: Condvar::new(),
            admin: Mutex::new(Some(admin)),
        });
        let io_shared = shared.clone();
        let io = std::thread::Builder::new()
            .name("eventflow-producer".into())
            .spawn(move || io_loop(io_shared))
            .map_err(|source| ClientError::Io {
                addr: "producer thread".into(),
                source,
            })?;
        Ok(Producer {
            shared,
            io: Some(io),
        })
    }

    /// Queues a record. Errors now for an unknown topic or partition, a full buffer (when
    /// not blocking) or a closed producer; everything else arrives through the future.
    pub fn send(&self, record: Record<'_>) -> Result<DeliveryFuture, ClientError> {
        let slot = Arc::new(Slot::default());
        self.enqueue(record, Token::Future(slot.clone()))?;
        Ok(DeliveryFuture { slot })
    }

    /// Queues a record whose outcome goes to the producer's callback with `tag`. Errors
    /// like [`Producer::send`], and also when the producer was made without a callback.
    pub fn send_tagged(&self, record: Record<'_>, tag: u64) -> Result<(), ClientError> {
        if self.shared.callback.is_none() {
            return Err(ClientError::Unexpected(
                "send_tagged needs a producer made with Producer::with_callback".into(),
            ));
        }
        self.enqueue(record, Token::Tagged(tag))
    }

    /// Queues records whose outcomes go to the producer's callback, each with its tag, as
    /// [`Producer::send_tagged`] does for one, but taking the producer's lock and reading
    /// the clock once per [`SEND_MANY_CHUNK`] records instead of once per record (records
    /// without a timestamp of their own share the chunk's). This is for a thread that
    /// produces as fast as it can, as librdkafka's `rd_kafka_produce_batch` is: the lock
    /// and the clock were the largest costs of `send_tagged` beyond building the batch in
    /// its profile (docs/PERFORMANCE.md). The lock is let go between chunks, so the I/O thread is never
    /// held off longer than one chunk's appends, however many records come.
    ///
    /// On an error the records before the failing one are queued (their outcomes reach the
    /// callback) and it and the rest are not: [`SendManyError::queued`] says how many.
    pub fn send_tagged_many<'r>(
        &self,
        records: impl IntoIterator<Item = (Record<'r>, u64)>,
    ) -> Result<(), SendManyError> {
        if self.shared.callback.is_none() {
            return Err(SendManyError {
                queued: 0,
                error: ClientError::Unexpected(
                    "send_tagged_many needs a producer made with Producer::with_callback".into(),
                ),
            });
        }
        let mut records = records.into_iter().peekable();
        let mut queued = 0;
        // The topic of the record appended last in this call, as the address and length of
        // its name, and the producer's count of topic changes just after. A record whose
        // topic is the same string slice skips the comparison of the name while the count
        // stands: the slice is borrowed for `'r`, past this call, so its bytes cannot have
        // changed, and an unchanged count means no other send moved `last_topic` off it.
        let mut previous: Option<(usize, usize, u64)> = None;
        while records.peek().is_some() {
            let now = now_ms();
            let mut state = lock(&self.shared.state);
            let mut wake = false;
            for (record, tag) in records.by_ref().take(SEND_MANY_CHUNK) {
                let timestamp = record.timestamp.unwrap_or(now);
                let name = (record.topic.as_ptr() as usize, record.topic.len());
                let mut seen = previous
                    .filter(|&(address, len, _)| (address, len) == name)
                    .map(|(_, _, changes)| changes);
                let outcome;
                (state, outcome) =
                    self.append_locked(state, &record, &mut seen, timestamp, Token::Tagged(tag));
                previous = seen.map(|changes| (name.0, name.1, changes));
                match outcome {
                    Ok(new_work) => wake |= new_work,
                    Err(error) => {
                        self.wake_io(&state, wake);
                        return Err(SendManyError { queued, error });
                    }
                }
                queued += 1;
            }
            self.wake_io(&state, wake);
        }
        Ok(())
    }

    fn enqueue(&self, record: Record<'_>, token: Token) -> Result<(), ClientError> {
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        let state = lock(&self.shared.state);
        let (state, outcome) = self.append_locked(state, &record, &mut None, timestamp, token);
        self.wake_io(&state, outcome?);
        Ok(())
    }

    /// Wakes the I/O thread if it has something new to do and is waiting for it.
    fn wake_io(&self, state: &State, new_work: bool) {
        if new_work && state.io_waiting {
            self.shared.work.notify_one();
        }
    }

    /// Appends one record under the state's lock and hands the lock back: taken again if
    /// it was let go, to ask the broker about a new topic or to wait for buffer space. The
    /// outcome says whether the I/O thread has new work: a closed batch to send, or a new
    /// batch whose linger deadline it must watch.
    ///
    /// `seen`, on the way in: the producer's count of topic changes
    /// (`State::last_topic_changes`) that this call gave back for an earlier record whose
    /// topic name the caller knows to be this record's, if it knows one; while the count
    /// stands, the name is not compared again. On the way out: the count with this record's
    /// topic as `last_topic`, taken before the lock could be let go for buffer space (`None`
    /// if the topic was not resolved).
    fn append_locked<'s>(
        &'s self,
        mut state: MutexGuard<'s, State>,
        record: &Record<'_>,
        seen: &mut Option<u64>,
        timestamp: i64,
        mut token: Token,
    ) -> (MutexGuard<'s, State>, Result<bool, ClientError>) {
        let known = *seen == Some(state.last_topic_changes);
        *seen = None;
        let (partitions, index) = match state.last_partitions {
            Some(partitions) if known || state.last_topic == record.topic => {
                (partitions, state.last_index)
            }
            _ => {
                let partitions = match state.topics.get(record.topic) {
                    Some(info) => info.owners.len() as u32,
                    None => {
                        // First record of this topic: ask the broker, without holding the
                        // lock.
                        drop(state);
                        let topic = self.topic(record.topic);
                        state = lock(&self.shared.state);
                        match topic {
                            Ok(info) => info.owners.len() as u32,
                            Err(e) => return (state, Err(e)),
                        }
                    }
                };
                record.topic.clone_into(&mut state.last_topic);
                state.last_topic_changes += 1;
                state.last_partitions = Some(partitions);
                state.last_index = state.batches.topic_index(record.topic);
                (partitions, state.last_index)
            }
        };
        *seen = Some(state.last_topic_changes);
        let partition = match (record.partition, record.key) {
            (Some(p), _) if p < partitions => p,
            (Some(p), _) => {
                let unknown = WireError::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("topic `{}` has no partition {p}", record.topic),
                );
                return (state, Err(unknown.into()));
            }
            (None, Some(key)) => partition_for_key(key, partitions),
            (None, None) => state.sticky.partition_of(index, record.topic, partitions),
        };
        loop {
            if state.closed {
                return (state, Err(closed()));
            }
            // The clock is read only for a new batch (its linger starts now).
            let mut opens_batch = false;
            let appended = state.batches.append_at(
                index,
                partition,
                timestamp,
                record.key,
                record.value,
                record.headers,
                token,
                || {
                    opens_batch = true;
                    Instant::now()
                },
            );
            match appended {
                Ok(closed_batches) => {
                    state.pending += 1;
                    let new_work = opens_batch || !closed_batches.is_empty();
                    if !closed_batches.is_empty() {
                        if record.key.is_none() && record.partition.is_none() {
                            state
                                .sticky
                                .batch_closed(record.topic, partition, partitions);
                        }
                        // Full batches are picked up by the I/O thread at once.
                        let now = Instant::now();
                        for b in closed_batches {
                            state.retry.push((Outgoing::new(b), now));
                        }
                    }
                    return (state, Ok(new_work));
                }
                Err((AppendError::BufferFull { .. }, back))
                    if self.shared.config.block_when_full =>
                {
                    token = back;
                    self.shared.work.notify_one();
                    state = self.wait_for_progress(state);
                }
                Err((e, _)) => {
                    return (state, Err(ClientError::Unexpected(e.to_string())));
                }
            }
        }
    }

    /// Sends everything queued and waits until every record sent so far is acknowledged
    /// or failed.
    pub fn flush(&self) -> Result<(), ClientError> {
        let mut state = lock(&self.shared.state);
        state.flushing += 1;
        self.shared.work.notify_one();
        while state.pending > 0 && !state.closed {
            state = self.wait_for_progress(state);
        }
        state.flushing -= 1;
        Ok(())
    }

    /// Waits until a batch completes (its records' bytes are released and counted off
    /// `pending`).
    fn wait_for_progress<'s>(&'s self, mut state: MutexGuard<'s, State>) -> MutexGuard<'s, State> {
        state.progress_waiters += 1;
        let mut state = self
            .shared
            .progress
            .wait(state)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.progress_waiters -= 1;
        state
    }

    /// Partition count of a topic (from metadata, fetched on first use).
    pub fn partitions(&self, topic: &str) -> Result<u32, ClientError> {
        Ok(self.topic(topic)?.owners.len() as u32)
    }

    fn topic(&self, topic: &str) -> Result<Arc<TopicInfo>, ClientError> {
        if let Some(info) = lock(&self.shared.state).topics.get(topic) {
            return Ok(info.clone());
        }
        let metadata = {
            let mut admin = lock(&self.shared.admin);
            let client = match admin.as_mut() {
                Some(client) => client,
                None => admin.insert(Client::connect_secure(
                    self.shared.config.bootstrap.as_str(),
                    self.shared.config.request_timeout,
                    self.shared.config.credentials.as_ref(),
                    self.shared.config.tls.as_ref(),
                )?),
            };
            let metadata = client.metadata(&[topic]);
            if metadata
                .as_ref()
                .is_err_and(ClientError::is_connection_error)
            {
                *admin = None;
            }
            metadata?
        };
        let t = metadata
            .topics
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Unexpected("empty metadata response".into()))?;
        if t.error != ErrorCode::None || t.owners.is_empty() {
            return Err(WireError::new(
                ErrorCode::UnknownTopicOrPartition,
                format!("topic `{topic}` does not exist"),
            )
            .into());
        }
        let info = Arc::new(TopicInfo { owners: t.owners });
        let mut state = lock(&self.shared.state);
        state.endpoints = metadata.shards;
        state.topics.insert(topic.to_string(), info.clone());
        state.last_partitions = None;
        Ok(info)
    }
}

impl Drop for Producer {
    /// Flushes what is queued, then stops the I/O thread.
    fn drop(&mut self) {
        let _ = self.flush();
        lock(&self.shared.state).closed = true;
        self.shared.work.notify_all();
        if let Some(io) = self.io.take() {
            let _ = io.join();
        }
    }
}

fn closed() -> ClientError {
    ClientError::Unexpected("the producer is closed".into())
}

/// A closed batch on its way: its bytes (kept for retries), its records' futures and the
/// attempts made so far.
struct Outgoing {
    to: TopicPartition,
    bytes: Bytes,
    tokens: Vec<Token>,
    accounted: usize,
    attempt: u32,
    /// When the batch closed: its delivery timeout counts from here.
    created: Instant,
    /// Pauses between its retries (made at the first retry).
    backoff: Option<Backoff>,
}

impl Outgoing {
    fn new(mut batch: ReadyBatch<Token>) -> Outgoing {
        Outgoing {
            bytes: std::mem::take(&mut batch.records).freeze(),
            to: batch.to,
            tokens: batch.tokens,
            accounted: batch.accounted,
            attempt: 0,
            created: Instant::now(),
            backoff: None,
        }
    }
}

/// Requests in flight on one connection, by correlation id.
struct InFlight {
    batches: Mutex<HashMap<u32, Vec<Outgoing>>>,
    changed: Condvar,
    broken: AtomicBool,
    /// Why it broke (set before `broken`): batches that reach a broken connection fail
    /// over with this error, so they are never left where no reader will answer them.
    failure: Mutex<Option<ClientError>>,
}

struct Connection {
    stream: Stream,
    addr: String,
    in_flight: Arc<InFlight>,
    next_id: u32,
}

fn io_loop(shared: Arc<Shared>) {
    let mut connections: HashMap<u16, Connection> = HashMap::new();
    loop {
        let (batches, endpoints, owners) = {
            let mut state = lock(&shared.state);
            loop {
                let now = Instant::now();
                let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut state.retry)
                    .into_iter()
                    .partition(|r| r.1 <= now);
                state.retry = later;
                let mut batches: Vec<Outgoing> = due.into_iter().map(|(o, _)| o).collect();
                let fresh = if state.flushing > 0 || state.closed {
                    state.batches.drain()
                } else {
                    state.batches.ready(now)
                };
                batches.extend(fresh.into_iter().map(Outgoing::new));
                if !batches.is_empty() {
                    let owners: HashMap<String, Vec<u16>> = state
                        .topics
                        .iter()
                        .map(|(k, v)| (k.clone(), v.owners.clone()))
                        .collect();
                    break (batches, state.endpoints.clone(), owners);
                }
                if state.closed && state.pending == 0 {
                    return;
                }
                let deadline = [
                    state.batches.next_deadline(),
                    state.retry.iter().map(|r| r.1).min(),
                ]
                .into_iter()
                .flatten()
                .min();
                state.io_waiting = true;
                state = match deadline {
                    Some(d) => {
                        shared
                            .work
                            .wait_timeout(state, d.saturating_duration_since(now))
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .0
                    }
                    None => shared
                        .work
                        .wait(state)
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                };
                state.io_waiting = false;
            }
        };
        // One request per owning shard, holding all its batches.
        let mut by_shard: HashMap<u16, Vec<Outgoing>> = HashMap::new();
        for batch in batches {
            let owner = owners
                .get(&batch.to.topic)
                .and_then(|o| o.get(batch.to.partition as usize))
                .copied()
                .unwrap_or(0);
            by_shard.entry(owner).or_default().push(batch);
        }
        let limit = shared.config.max_request_bytes;
        for (shard, batches) in by_shard
            .into_iter()
            .flat_map(|(shard, batches)| requests(batches, limit).map(move |b| (shard, b)))
        {
            let connection = match connections.get(&shard) {
                Some(c) if !c.in_flight.broken.load(Ordering::SeqCst) => {
                    connections.get_mut(&shard)
                }
                _ => {
                    let addr = endpoints
                        .iter()
                        .find(|e| e.shard == shard && e.port != 0)
                        .map_or_else(
                            || shared.config.bootstrap.clone(),
                            |e| format!("{}:{}", e.host, e.port),
                        );
                    match connect(&shared, addr) {
                        Ok(c) => {
                            connections.insert(shard, c);
                            connections.get_mut(&shard)
                        }
                        Err(e) => {
                            tracing::debug!("producer cannot connect: {e}");
                            // A restarted broker may listen on other direct ports: the
                            // retries go through the bootstrap address, which forwards.
                            lock(&shared.state).endpoints.retain(|e| e.shard != shard);
                            for batch in batches {
                                retry_or_fail(&shared, batch, replicate(&e));
                            }
                            continue;
                        }
                    }
                }
            };
            let connection = connection.expect("inserted above");
            if let Err(e) = send_batches(&shared, connection, batches) {
                tracing::debug!("produce write failed: {e}");
            }
        }
    }
}

/// Splits one shard's batches into requests of at most `limit` record bytes each, keeping
/// their order (a batch over the limit goes alone).
fn requests(batches: Vec<Outgoing>, limit: usize) -> impl Iterator<Item = Vec<Outgoing>> {
    let mut requests: Vec<Vec<Outgoing>> = Vec::new();
    let mut size = 0;
    for batch in batches {
        let len = batch.bytes.len();
        match requests.last_mut() {
            Some(current) if size + len <= limit => current.push(batch),
            _ => {
                requests.push(vec![batch]);
                size = 0;
            }
        }
        size += len;
    }
    requests.into_iter()
}

fn connect(shared: &Arc<Shared>, addr: String) -> Result<Connection, ClientError> {
    let timeout = shared.config.request_timeout.max(Duration::from_millis(1));
    let io_err = |source| io_error(addr.clone(), timeout, source);
    // Opened (and logged in) as any client connection, then driven by this module's own
    // writer and reader.
    let stream = Client::connect_secure(
        addr.as_str(),
        timeout,
        shared.config.credentials.as_ref(),
        shared.config.tls.as_ref(),
    )?
    .into_stream();
    stream.set_nodelay(true).map_err(io_err)?;
    // A stopped broker stops reading: a write blocked that long fails the connection.
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let reader = stream.try_clone().map_err(io_err)?;
    reader
        .set_read_timeout(Some(
            shared.config.request_timeout.max(Duration::from_millis(1)),
        ))
        .map_err(io_err)?;
    let in_flight = Arc::new(InFlight {
        batches: Mutex::new(HashMap::new()),
        changed: Condvar::new(),
        broken: AtomicBool::new(false),
        failure: Mutex::new(None),
    });
    let (reader_shared, reader_in_flight, reader_addr) =
        (shared.clone(), in_flight.clone(), addr.clone());
    std::thread::Builder::new()
        .name("eventflow-producer-reader".into())
        .spawn(move || read_loop(reader_shared, reader, reader_in_flight, reader_addr))
        .map_err(io_err)?;
    Ok(Connection {
        stream,
        addr,
        in_flight,
        next_id: 1,
    })
}

fn send_batches(
    shared: &Arc<Shared>,
    connection: &mut Connection,
    batches: Vec<Outgoing>,
) -> io::Result<()> {
    let acks = shared.config.acks;
    let id = connection.next_id;
    connection.next_id = connection.next_id.wrapping_add(1).max(1);
    // One entry per batch, grouped by topic (order of first appearance), in send order
    // within a topic. The broker appends the entries in this order and answers each one
    // separately, so a bad batch fails alone, as with Kafka. `batches` is put in the same
    // order so that responses match by position. The bytes are shared, not copied.
    let mut batches = batches;
    let mut topic_order: Vec<&str> = Vec::new();
    for b in &batches {
        if !topic_order.contains(&b.to.topic.as_str()) {
            topic_order.push(&b.to.topic);
        }
    }
    let rank: Vec<usize> = batches
        .iter()
        .map(|b| {
            topic_order
                .iter()
                .position(|t| *t == b.to.topic)
                .unwrap_or(0)
        })
        .collect();
    let mut order: Vec<usize> = (0..batches.len()).collect();
    order.sort_by_key(|i| rank[*i]);
    let mut slots: Vec<Option<Outgoing>> = batches.drain(..).map(Some).collect();
    let batches: Vec<Outgoing> = order.iter().filter_map(|i| slots[*i].take()).collect();
    let mut topics: Vec<ProduceTopicBatches> = Vec::new();
    for batch in &batches {
        let entry = (batch.to.partition, batch.bytes.clone());
        match topics.last_mut() {
            Some((topic, partitions)) if *topic == batch.to.topic => partitions.push(entry),
            _ => topics.push((batch.to.topic.clone(), vec![entry])),
        }
    }
    let chunks = encode_produce_request(id, acks, 30_000, &topics);
    if acks == Acks::None {
        // No response will come: the records are done once written.
        let written = write_frame(&mut connection.stream, &chunks);
        for batch in batches {
            let partition = batch.to.partition;
            let result = match &written {
                Ok(()) => Ok(Delivery {
                    partition,
                    offset: -1,
                }),
                Err(e) => Err(ClientError::Io {
                    addr: connection.addr.clone(),
                    source: io::Error::new(e.kind(), e.to_string()),
                }),
            };
            finish(shared, batch, result);
        }
        return written;
    }
    // Backpressure: at most max_in_flight unanswered requests on this connection.
    let mut map = lock(&connection.in_flight.batches);
    while map.len() >= shared.config.max_in_flight.max(1)
        && !connection.in_flight.broken.load(Ordering::SeqCst)
    {
        map = connection
            .in_flight
            .changed
            .wait(map)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
    if connection.in_flight.broken.load(Ordering::SeqCst) {
        // The reader has already failed everything in flight and stopped: nobody would
        // answer these. They go again on a new connection, or fail with its reason.
        drop(map);
        let failure = lock(&connection.in_flight.failure).as_ref().map(replicate);
        for batch in batches {
            let error = failure.as_ref().map_or_else(
                || ClientError::Unexpected("the connection broke".into()),
                replicate,
            );
            retry_or_fail(shared, batch, error);
        }
        return Ok(());
    }
    map.insert(id, batches);
    drop(map);
    write_frame(&mut connection.stream, &chunks)
        .inspect_err(|e| fail_all(shared, &connection.in_flight, &connection.addr, e))
}

/// Completes every record of a batch: offsets `base + index` on success.
fn finish(shared: &Arc<Shared>, batch: Outgoing, result: Result<Delivery, ClientError>) {
    let n = batch.tokens.len();
    let outcome_at = |i: usize| match &result {
        Ok(d) if d.offset >= 0 => Ok(Delivery {
            partition: d.partition,
            offset: d.offset + i as i64,
        }),
        Ok(d) => Ok(*d),
        Err(e) => Err(replicate(e)),
    };
    // A run of tagged records goes to a per-run callback when a future or the end of the
    // batch ends it.
    let mut run: Vec<u64> = Vec::new();
    let mut run_start = 0;
    let end_run = |run: &mut Vec<u64>, start: usize| {
        if let (Some(Callback::PerRun(callback)), false) = (&shared.callback, run.is_empty()) {
            callback(run, &outcome_at(start));
            run.clear();
        }
    };
    for (i, token) in batch.tokens.into_iter().enumerate() {
        match token {
            Token::Future(slot) => {
                end_run(&mut run, run_start);
                slot.complete(outcome_at(i));
            }
            Token::Tagged(tag) => match &shared.callback {
                Some(Callback::PerRecord(callback)) => callback(tag, &outcome_at(i)),
                Some(Callback::PerRun(_)) => {
                    if run.is_empty() {
                        run_start = i;
                        run.reserve(n - i);
                    }
                    run.push(tag);
                }
                None => {}
            },
        }
    }
    end_run(&mut run, run_start);
    let mut state = lock(&shared.state);
    state.batches.release(batch.accounted);
    state.pending = state.pending.saturating_sub(n);
    if state.progress_waiters > 0 {
        shared.progress.notify_all();
    }
}

/// A copy of an error for each record of a batch (`io::Error` is not `Clone`).
fn replicate(e: &ClientError) -> ClientError {
    match e {
        ClientError::Io { addr, source } => ClientError::Io {
            addr: addr.clone(),
            source: io::Error::new(source.kind(), source.to_string()),
        },
        ClientError::Timeout { addr, after } => ClientError::Timeout {
            addr: addr.clone(),
            after: *after,
        },
        ClientError::Broker(w) => ClientError::Broker(w.clone()),
        ClientError::Decode(d) => ClientError::Decode(d.clone()),
        ClientError::Unexpected(s) => ClientError::Unexpected(s.clone()),
        ClientError::CorruptBatch {
            topic,
            partition,
            offset,
            next_offset,
            reason,
        } => ClientError::CorruptBatch {
            topic: topic.clone(),
            partition: *partition,
            offset: *offset,
            next_offset: *next_offset,
            reason: reason.clone(),
        },
    }
}

/// Sends a batch again after its backoff if `error` is retriable and its retries and
/// delivery timeout allow; otherwise completes it with `error`. A batch resent after a
/// lost connection or a timeout may have been stored already: its records can then be
/// stored twice (the native protocol has no idempotent producer).
fn retry_or_fail(shared: &Arc<Shared>, mut batch: Outgoing, error: ClientError) {
    let config = &shared.config;
    let backoff = batch
        .backoff
        .get_or_insert_with(|| Backoff::new(config.retry_backoff, config.retry_backoff_max));
    let at = Instant::now() + backoff.next_delay();
    let in_time = at < batch.created + config.delivery_timeout;
    if error.is_retriable() && batch.attempt < config.retries && in_time {
        batch.attempt += 1;
        tracing::debug!(
            "retrying a batch for {}/{} (attempt {}): {error}",
            batch.to.topic,
            batch.to.partition,
            batch.attempt
        );
        lock(&shared.state).retry.push((batch, at));
        shared.work.notify_one();
        return;
    }
    if error.code() == Some(ErrorCode::UnknownTopicOrPartition) {
        // The topic changed: look it up again on the next send.
        let mut state = lock(&shared.state);
        state.topics.remove(&batch.to.topic);
        state.last_partitions = None;
    }
    finish(shared, batch, Err(error));
}

/// Marks a connection broken and retries (or fails) everything in flight on it.
fn fail_all(shared: &Arc<Shared>, in_flight: &InFlight, addr: &str, e: &io::Error) {
    let timeout = shared.config.request_timeout;
    fail_all_with(shared, in_flight, || {
        io_error(
            addr.to_string(),
            timeout,
            io::Error::new(e.kind(), e.to_string()),
        )
    });
}

/// Marks a connection broken and retries (or fails) everything in flight on it with the
/// error `error()` makes.
fn fail_all_with(shared: &Arc<Shared>, in_flight: &InFlight, error: impl Fn() -> ClientError) {
    lock(&in_flight.failure).get_or_insert_with(&error);
    in_flight.broken.store(true, Ordering::SeqCst);
    let all: Vec<_> = lock(&in_flight.batches).drain().collect();
    in_flight.changed.notify_all();
    for (_, batches) in all {
        for batch in batches {
            retry_or_fail(shared, batch, error());
        }
    }
}

fn read_loop(shared: Arc<Shared>, mut stream: Stream, in_flight: Arc<InFlight>, addr: String) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let payload = match read_frame(&mut stream, &mut buf) {
            Ok(p) => p,
            // Nothing received for a whole request timeout: fine while nothing is asked.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) && lock(&in_flight.batches).is_empty() =>
            {
                continue;
            }
            Err(e) => {
                fail_all(&shared, &in_flight, &addr, &e);
                return;
            }
        };
        let mut d = Decoder::new(payload);
        let Ok(header) = ResponseHeader::decode(&mut d) else {
            fail_all(
                &shared,
                &in_flight,
                &addr,
                &io::Error::new(io::ErrorKind::InvalidData, "bad response header"),
            );
            return;
        };
        if header.correlation_id == 0 && header.error != ErrorCode::None {
            // An error that answers no request: the broker refused the connection (too many
            // connections) and closes it. Its batches go again, or fail with this reason.
            let refusal = WireError::new(header.error, header.message);
            fail_all_with(&shared, &in_flight, || refusal.clone().into());
            return;
        }
        let Some(batches) = lock(&in_flight.batches).remove(&header.correlation_id) else {
            continue;
        };
        in_flight.changed.notify_all();
        // One outcome per entry, in request order, which is the order of `batches`.
        let outcomes: Vec<(ErrorCode, String, i64)> = if header.error != ErrorCode::None {
            batches
                .iter()
                .map(|_| (header.error, header.message.clone(), -1))
                .collect()
        } else {
            match decode_response(ApiKey::Produce, &mut d) {
                Ok(Response::Produce(r)) => r
                    .topics
                    .into_iter()
                    .flat_map(|t| t.partitions)
                    .map(|p| (p.error, p.message, p.base_offset))
                    .collect(),
                _ => Vec::new(),
            }
        };
        let mut outcomes = outcomes.into_iter();
        for batch in batches {
            let (code, message, base) = outcomes.next().unwrap_or((
                ErrorCode::Unknown,
                "no outcome for this batch".into(),
                -1,
            ));
            if code == ErrorCode::None {
                let partition = batch.to.partition;
                let first = base;
                finish(
                    &shared,
                    batch,
                    Ok(Delivery {
                        partition,
                        offset: first,
                    }),
                );
            } else {
                retry_or_fail(&shared, batch, WireError::new(code, message).into());
            }
        }
    }
}
