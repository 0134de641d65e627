//! A shard's state and its side of the mesh: the partitions it owns, the requests it has
//! sent to other shards and awaits answers for, and the operations other shards ask of it.
//!
//! Everything here lives on one thread behind `Rc`; `RefCell` borrows are never held across
//! an `.await`. Work for a partition owned elsewhere becomes a [`ShardOp`] in a ring to the
//! owner, which runs it with [`ShardContext::execute`] and answers with a [`ShardReply`] in
//! the ring back. Work for a partition owned here runs the same `execute` inline.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::{select, Either};

use super::groups::{Coordinator, GroupOp};
use super::queues::{Acquired, Shares};
use crate::config::BrokerConfig;
use crate::local::{oneshot, yield_now, Budget, Notify, OneshotSender};
use crate::protocol::api::{
    offset_spec, AckRange, PartitionDescription, Response, ShardEndpoint, SharePartitionState,
    ShareSettings,
};
use crate::protocol::batch::ValidBatch;
use crate::protocol::frame;
use crate::protocol::{ErrorCode, WireError};
use crate::shard::mesh::{InboxWaiter, ShardLinks};
use crate::shard::{owner_of, ShardId};
use crate::storage::catalog::{CatalogStore, TopicMeta};
use crate::storage::{
    AppendOutcome, FileRange, LogConfig, PartitionLog, ReadOutcome, StorageError,
};

/// State shared by every shard of one broker (atomics only; nothing here is on the data
/// path except the connection counter at accept time).
pub(crate) struct Global {
    /// Set once when the broker is asked to stop.
    pub(crate) shutdown: AtomicBool,
    /// Shards that have closed all their connections.
    pub(crate) quiesced: AtomicUsize,
    /// Open client connections, across shards.
    pub(crate) connections: AtomicUsize,
}

impl Global {
    pub(crate) fn new() -> Self {
        Global {
            shutdown: AtomicBool::new(false),
            quiesced: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
        }
    }
}

/// What travels in the rings.
pub(crate) enum Envelope {
    /// Run `op` and answer with the same token.
    Request { token: u64, op: ShardOp },
    /// The answer to an earlier request of ours.
    Reply { token: u64, reply: ShardReply },
}

/// Identifies one partition of one incarnation of a topic.
#[derive(Clone)]
pub(crate) struct PartitionRef {
    pub(crate) topic: Arc<TopicMeta>,
    pub(crate) partition: u32,
}

/// Work a shard does for a partition (or topic) it owns.
pub(crate) enum ShardOp {
    /// Append validated batches.
    Append {
        at: PartitionRef,
        batches: Vec<ValidBatch>,
    },
    /// Read whole batches from `offset`.
    Read {
        at: PartitionRef,
        offset: i64,
        max_bytes: usize,
    },
    /// Answer as soon as more than `seen` bytes are readable from `offset` (or the offset
    /// is no longer valid), or at `deadline`. `seen` is what the last read found readable.
    WaitForData {
        at: PartitionRef,
        offset: i64,
        seen: u64,
        deadline: Instant,
    },
    /// Earliest, latest or by-timestamp offset.
    ListOffset { at: PartitionRef, timestamp: i64 },
    /// Offsets and size.
    Describe { at: PartitionRef },
    /// Open (create) every partition of the topic this shard owns.
    OpenTopic { topic: Arc<TopicMeta> },
    /// Close every partition of this incarnation of the topic.
    DropTopic { topic: Arc<TopicMeta> },
    /// Apply the topic's current configs to its open partitions.
    Reconfigure { topic: Arc<TopicMeta> },
    /// A consumer-group request, for the group's coordinator.
    Group(GroupOp),
    /// Acquire records of a share group on a partition.
    ShareAcquire {
        at: PartitionRef,
        group: String,
        member: String,
        max_records: u32,
        max_bytes: usize,
        settings: ShareSettings,
    },
    /// Acknowledge records of a share group on a partition.
    ShareAck {
        at: PartitionRef,
        group: String,
        member: String,
        ranges: Vec<AckRange>,
    },
    /// The state of a share group on this shard's partitions.
    ShareDescribe { group: String },
    /// The share groups with state on this shard.
    ShareGroups,
    /// A share consumer's connection closed: release the records it holds here.
    ShareRelease { group: String, member: String },
}

/// The owner's answer to a [`ShardOp`].
pub(crate) enum ShardReply {
    Appended(Result<AppendOutcome, WireError>),
    /// The batches read, and the bytes that were readable from the offset.
    Read(Result<(ReadOutcome, u64), WireError>),
    DataReady,
    Offset(Result<i64, WireError>),
    Described(Result<PartitionDescription, WireError>),
    Done(Result<(), WireError>),
    Group(Result<Response, WireError>),
    ShareAcquired(Result<Acquired, WireError>),
    ShareDescribed(Vec<String>, Vec<SharePartitionState>),
    ShareGroups(BTreeMap<String, usize>),
}

enum Slot {
    /// Being opened (recovery may take a while); wait on the notify and look again.
    Opening(Rc<Notify>),
    Open(Rc<PartitionLog>),
}

struct OwnedTopic {
    id: u64,
    partitions: HashMap<u32, Slot>,
}

/// The claim of the task opening a partition (its `Slot::Opening`), withdrawn if that task
/// is dropped before it finishes.
struct OpeningClaim<'a> {
    ctx: &'a ShardContext,
    at: &'a PartitionRef,
    armed: bool,
}

impl OpeningClaim<'_> {
    /// The open finished: the opener settles the slot itself.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for OpeningClaim<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let slot = self
            .ctx
            .topics
            .borrow_mut()
            .get_mut(&self.at.topic.name)
            .filter(|t| t.id == self.at.topic.id)
            .and_then(|t| match t.partitions.get(&self.at.partition) {
                Some(Slot::Opening(_)) => t.partitions.remove(&self.at.partition),
                _ => None,
            });
        if let Some(Slot::Opening(notify)) = slot {
            notify.notify_all();
        }
    }
}

/// One shard's state.
pub(crate) struct ShardContext {
    pub(crate) id: ShardId,
    pub(crate) shard_count: u16,
    pub(crate) config: Arc<BrokerConfig>,
    pub(crate) log_defaults: LogConfig,
    pub(crate) catalog: Arc<CatalogStore>,
    pub(crate) endpoints: Arc<Vec<ShardEndpoint>>,
    pub(crate) global: Arc<Global>,
    links: RefCell<ShardLinks<Envelope>>,
    waiter: InboxWaiter<Envelope>,
    /// Envelopes for shard `j` that found its ring full, oldest first. Sending goes through
    /// here whenever it is non-empty, so messages to one shard keep their order (a produce
    /// pipelined behind a blocked one cannot overtake it). Its size is bounded by the
    /// connections' in-flight limits: a connection with that many unanswered requests is not
    /// read.
    overflow: RefCell<Vec<VecDeque<Envelope>>>,
    pending: RefCell<HashMap<u64, OneshotSender<ShardReply>>>,
    next_token: Cell<u64>,
    topics: RefCell<HashMap<String, OwnedTopic>>,
    /// Notified once when the broker starts shutting down.
    pub(crate) shutdown: Notify,
    shutting_down: Cell<bool>,
    /// Connections this shard serves; `connection_closed` fires as each one ends.
    pub(crate) connections: Cell<usize>,
    pub(crate) connection_closed: Notify,
    /// The consumer groups this shard coordinates.
    pub(crate) coordinator: Coordinator,
    /// Share-group state of the partitions this shard owns.
    pub(crate) shares: Shares,
    /// Bytes of request frames this shard's connections may hold at once.
    pub(crate) request_budget: Budget,
}

impl ShardContext {
    pub(crate) fn new(
        links: ShardLinks<Envelope>,
        config: Arc<BrokerConfig>,
        catalog: Arc<CatalogStore>,
        endpoints: Arc<Vec<ShardEndpoint>>,
        global: Arc<Global>,
    ) -> Rc<Self> {
        let log_defaults = log_defaults(&config);
        let links_count = links.shard_count() as usize;
        let config_budget = config
            .max_queued_request_bytes
            .max(config.max_request_bytes + frame::LENGTH_PREFIX);
        Rc::new(ShardContext {
            id: links.id(),
            shard_count: links.shard_count(),
            config,
            log_defaults,
            catalog,
            endpoints,
            global,
            waiter: links.waiter(),
            links: RefCell::new(links),
            overflow: RefCell::new((0..links_count).map(|_| VecDeque::new()).collect()),
            pending: RefCell::new(HashMap::new()),
            next_token: Cell::new(0),
            topics: RefCell::new(HashMap::new()),
            shutdown: Notify::new(),
            shutting_down: Cell::new(false),
            connections: Cell::new(0),
            connection_closed: Notify::new(),
            coordinator: Coordinator::new(),
            shares: Shares::new(),
            request_budget: Budget::new(config_budget),
        })
    }

    /// Whether the broker is stopping.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// The owner of a partition.
    pub(crate) fn owner(&self, topic: &str, partition: u32) -> ShardId {
        owner_of(topic, partition, self.shard_count)
    }

    /// Runs `op` on the shard owning it: inline if that is us, else through the rings.
    pub(crate) async fn call(self: &Rc<Self>, owner: ShardId, op: ShardOp) -> ShardReply {
        if owner == self.id {
            return self.execute(op).await;
        }
        let token = self.next_token.get();
        self.next_token.set(token.wrapping_add(1));
        let (tx, rx) = oneshot();
        self.pending.borrow_mut().insert(token, tx);
        self.send(owner, Envelope::Request { token, op });
        match rx.await {
            Ok(reply) => reply,
            Err(_) => ShardReply::Done(Err(WireError::new(
                ErrorCode::Unknown,
                "the owning shard dropped the request",
            ))),
        }
    }

    /// Pushes into the ring to `to`, or behind the envelopes already waiting for room in it.
    fn send(&self, to: ShardId, envelope: Envelope) {
        let mut overflow = self.overflow.borrow_mut();
        let queue = &mut overflow[to as usize];
        if !queue.is_empty() {
            queue.push_back(envelope);
        } else if let Err(back) = self.links.borrow_mut().try_send(to, envelope) {
            queue.push_back(back);
        }
    }

    /// Moves waiting envelopes into rings that have room again, in order.
    fn flush_overflow(&self) {
        let mut overflow = self.overflow.borrow_mut();
        let mut links = self.links.borrow_mut();
        for (to, queue) in overflow.iter_mut().enumerate() {
            while let Some(envelope) = queue.pop_front() {
                if let Err(back) = links.try_send(to as ShardId, envelope) {
                    // Still full: the consumer signals us when it frees room.
                    queue.push_front(back);
                    break;
                }
            }
        }
    }

    /// The shard's ring-draining loop: runs requests from other shards, completes our own
    /// requests' replies, and notices shutdown. Runs until `stop` is set.
    pub(crate) async fn run_mesh(self: Rc<Self>, stop: Rc<Cell<bool>>) {
        const BUDGET: usize = 256;
        loop {
            let handled = self
                .links
                .borrow_mut()
                .drain(BUDGET, |from, envelope| self.dispatch(from, envelope));
            self.flush_overflow();
            if self.global.shutdown.load(Ordering::SeqCst) && !self.shutting_down.get() {
                self.shutting_down.set(true);
                self.shutdown.notify_all();
            }
            if stop.get() {
                return;
            }
            if handled == BUDGET {
                // More may be waiting, but let connection tasks run first.
                yield_now().await;
            } else {
                self.waiter.wait(&self.links).await;
            }
        }
    }

    fn dispatch(self: &Rc<Self>, from: ShardId, envelope: Envelope) {
        match envelope {
            Envelope::Reply { token, reply } => {
                if let Some(tx) = self.pending.borrow_mut().remove(&token) {
                    tx.send(reply);
                }
            }
            Envelope::Request { token, op } => {
                let ctx = self.clone();
                compio::runtime::spawn(async move {
                    let reply = ctx.execute(op).await;
                    ctx.send(from, Envelope::Reply { token, reply });
                })
                .detach();
            }
        }
    }

    /// Wakes every shard (used to start shutdown or to report quiescence).
    pub(crate) fn signal_all(&self) {
        self.links.borrow().signal_all();
    }

    /// Runs an operation for a partition or topic this shard owns.
    pub(crate) async fn execute(self: &Rc<Self>, op: ShardOp) -> ShardReply {
        match op {
            ShardOp::Append { at, batches } => ShardReply::Appended(match self.log(&at).await {
                Ok(log) => log.append(batches).await.map_err(storage_error),
                Err(e) => Err(e),
            }),
            ShardOp::Read {
                at,
                offset,
                max_bytes,
            } => ShardReply::Read(match self.log(&at).await {
                Ok(log) => {
                    let available = log.bytes_available_from(offset);
                    log.read(offset, max_bytes)
                        .await
                        .map(|o| (o, available))
                        .map_err(storage_error)
                }
                Err(e) => Err(e),
            }),
            ShardOp::WaitForData {
                at,
                offset,
                seen,
                deadline,
            } => {
                self.wait_for_data(&at, offset, seen, deadline).await;
                ShardReply::DataReady
            }
            ShardOp::ListOffset { at, timestamp } => {
                ShardReply::Offset(match self.log(&at).await {
                    Ok(log) => match timestamp {
                        offset_spec::LATEST => Ok(log.high_watermark()),
                        offset_spec::EARLIEST => Ok(log.log_start_offset()),
                        ts if ts >= 0 => log
                            .offset_for_timestamp(ts)
                            .await
                            .map(|o| o.unwrap_or(-1))
                            .map_err(storage_error),
                        other => Err(WireError::new(
                            ErrorCode::InvalidRequest,
                            format!("timestamp {other} is neither -1, -2 nor a time in ms"),
                        )),
                    },
                    Err(e) => Err(e),
                })
            }
            ShardOp::Describe { at } => ShardReply::Described(match self.log(&at).await {
                Ok(log) => Ok(PartitionDescription {
                    partition: at.partition,
                    shard: self.id,
                    log_start_offset: log.log_start_offset(),
                    high_watermark: log.high_watermark(),
                    size_bytes: log.size_bytes(),
                }),
                Err(e) => Err(e),
            }),
            ShardOp::OpenTopic { topic } => ShardReply::Done(self.open_topic(&topic).await),
            ShardOp::DropTopic { topic } => {
                let logs = self.remove_topic(&topic);
                for log in logs {
                    if let Err(e) = log.close().await {
                        tracing::warn!(topic = %topic.name, "closing a deleted partition: {e}");
                    }
                }
                self.shares.drop_topic(self, &topic).await;
                ShardReply::Done(Ok(()))
            }
            ShardOp::Group(op) => ShardReply::Group(self.coordinator.run(self, op).await),
            ShardOp::ShareAcquire {
                at,
                group,
                member,
                max_records,
                max_bytes,
                settings,
            } => ShardReply::ShareAcquired(
                self.shares
                    .acquire(
                        self,
                        &at,
                        &group,
                        &member,
                        max_records,
                        max_bytes,
                        &settings,
                    )
                    .await,
            ),
            ShardOp::ShareAck {
                at,
                group,
                member,
                ranges,
            } => ShardReply::Done(
                self.shares
                    .acknowledge(self, &at, &group, &member, &ranges)
                    .await,
            ),
            ShardOp::ShareDescribe { group } => {
                let logs = |topic: &str, partition: u32| self.log_end(topic, partition);
                let (members, partitions) = self.shares.describe(&group, &logs);
                ShardReply::ShareDescribed(members, partitions)
            }
            ShardOp::ShareGroups => ShardReply::ShareGroups(self.shares.groups()),
            ShardOp::ShareRelease { group, member } => {
                self.shares.release_member(&group, &member);
                ShardReply::Done(Ok(()))
            }
            ShardOp::Reconfigure { topic } => {
                let config = topic.log_config(&self.log_defaults);
                for log in self.open_logs_of(&topic.name, topic.id) {
                    log.set_config(config.clone());
                }
                ShardReply::Done(Ok(()))
            }
        }
    }

    /// Locates the bytes of a fetch from a partition this shard owns (see
    /// [`PartitionLog::read_range`]), with the readable-bytes estimate a long-poll needs.
    pub(crate) async fn read_range(
        &self,
        at: &PartitionRef,
        offset: i64,
        max_bytes: usize,
    ) -> Result<(Option<FileRange>, i64, i64, u64), WireError> {
        let log = self.log(at).await?;
        let available = log.bytes_available_from(offset);
        let (range, hwm, start) = log
            .read_range(offset, max_bytes)
            .await
            .map_err(storage_error)?;
        Ok((range, hwm, start, available))
    }

    async fn wait_for_data(
        &self,
        at: &PartitionRef,
        offset: i64,
        seen: u64,
        deadline: Instant,
    ) -> bool {
        let Ok(log) = self.log(at).await else {
            return true; // the caller's re-read reports the error
        };
        loop {
            if offset < log.log_start_offset()
                || offset > log.high_watermark()
                || log.bytes_available_from(offset) > seen
            {
                return true;
            }
            if self.shutting_down.get() || Instant::now() >= deadline {
                return false;
            }
            let appended = log.appended().notified();
            let stop = self.shutdown.notified();
            let timer = compio::time::sleep_until(deadline);
            futures_util::pin_mut!(appended, stop, timer);
            let _ = select(appended, select(stop, timer)).await;
        }
    }

    /// Opens every partition of `topic` this shard owns.
    pub(crate) async fn open_topic(
        self: &Rc<Self>,
        topic: &Arc<TopicMeta>,
    ) -> Result<(), WireError> {
        for partition in 0..topic.partitions {
            if self.owner(&topic.name, partition) == self.id {
                let at = PartitionRef {
                    topic: topic.clone(),
                    partition,
                };
                self.log(&at).await?;
            }
        }
        Ok(())
    }

    fn remove_topic(&self, topic: &TopicMeta) -> Vec<Rc<PartitionLog>> {
        let mut topics = self.topics.borrow_mut();
        match topics.get(&topic.name) {
            Some(owned) if owned.id == topic.id => {}
            _ => return Vec::new(),
        }
        let owned = topics.remove(&topic.name).expect("checked above");
        owned
            .partitions
            .into_values()
            .filter_map(|slot| match slot {
                Slot::Open(log) => Some(log),
                Slot::Opening(_) => None,
            })
            .collect()
    }

    fn open_logs_of(&self, name: &str, id: u64) -> Vec<Rc<PartitionLog>> {
        match self.topics.borrow().get(name) {
            Some(owned) if owned.id == id => owned
                .partitions
                .values()
                .filter_map(|slot| match slot {
                    Slot::Open(log) => Some(log.clone()),
                    Slot::Opening(_) => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Every open log (for timers and shutdown).
    pub(crate) fn all_logs(&self) -> Vec<Rc<PartitionLog>> {
        self.topics
            .borrow()
            .values()
            .flat_map(|t| t.partitions.values())
            .filter_map(|slot| match slot {
                Slot::Open(log) => Some(log.clone()),
                Slot::Opening(_) => None,
            })
            .collect()
    }

    /// The log of a partition this shard owns (opened on first use).
    pub(crate) async fn partition_log(
        &self,
        at: &PartitionRef,
    ) -> Result<Rc<PartitionLog>, WireError> {
        self.log(at).await
    }

    /// The log end of an open partition this shard owns.
    fn log_end(&self, topic: &str, partition: u32) -> Option<i64> {
        match self
            .topics
            .borrow()
            .get(topic)?
            .partitions
            .get(&partition)?
        {
            Slot::Open(log) => Some(log.high_watermark()),
            Slot::Opening(_) => None,
        }
    }

    /// The log of a partition this shard owns, opening (and recovering) it on first use.
    async fn log(&self, at: &PartitionRef) -> Result<Rc<PartitionLog>, WireError> {
        let name = &at.topic.name;
        loop {
            let waiting = {
                let mut topics = self.topics.borrow_mut();
                let owned = topics.entry(name.clone()).or_insert_with(|| OwnedTopic {
                    id: at.topic.id,
                    partitions: HashMap::new(),
                });
                if owned.id != at.topic.id {
                    if owned.id > at.topic.id {
                        // A request for an incarnation that has been deleted since.
                        return Err(unknown_partition(name, at.partition));
                    }
                    // A newer incarnation than what we hold: the old one is gone.
                    *owned = OwnedTopic {
                        id: at.topic.id,
                        partitions: HashMap::new(),
                    };
                }
                match owned.partitions.get(&at.partition) {
                    Some(Slot::Open(log)) => return Ok(log.clone()),
                    Some(Slot::Opening(notify)) => Some(notify.clone()),
                    None => {
                        if at.partition >= at.topic.partitions
                            || self.owner(name, at.partition) != self.id
                        {
                            return Err(unknown_partition(name, at.partition));
                        }
                        owned
                            .partitions
                            .insert(at.partition, Slot::Opening(Rc::new(Notify::new())));
                        None
                    }
                }
            };
            if let Some(notify) = waiting {
                let opened = notify.notified();
                // The opener may have finished between our lookup and now.
                let still_opening = matches!(
                    self.topics
                        .borrow()
                        .get(name)
                        .and_then(|t| t.partitions.get(&at.partition)),
                    Some(Slot::Opening(_))
                );
                if still_opening {
                    opened.await;
                }
                continue;
            }
            // We are the opener. If this future is dropped while opening (a produce that
            // timed out), the guard takes our claim back and wakes the waiters, one of which
            // then opens.
            let claim = OpeningClaim {
                ctx: self,
                at,
                armed: true,
            };
            let dir = self.partition_dir(name, at.partition);
            let config = at.topic.log_config(&self.log_defaults);
            let result = PartitionLog::open(dir, config).await;
            claim.disarm();
            let mut topics = self.topics.borrow_mut();
            let owned = topics.get_mut(name);
            let slot = owned
                .filter(|t| t.id == at.topic.id)
                .and_then(|t| t.partitions.remove(&at.partition));
            let notify = match slot {
                Some(Slot::Opening(n)) => Some(n),
                _ => None,
            };
            let out = match result {
                Ok(log) => {
                    let log = Rc::new(log);
                    if let Some(t) = topics.get_mut(name).filter(|t| t.id == at.topic.id) {
                        t.partitions.insert(at.partition, Slot::Open(log.clone()));
                    }
                    Ok(log)
                }
                Err(e) => {
                    tracing::error!(topic = %name, partition = at.partition, "cannot open partition: {e}");
                    Err(storage_error(e))
                }
            };
            drop(topics);
            if let Some(n) = notify {
                n.notify_all();
            }
            return out;
        }
    }

    pub(crate) fn partition_dir(&self, topic: &str, partition: u32) -> PathBuf {
        self.config.data_dir.join(topic).join(partition.to_string())
    }
}

/// The broker-wide defaults for new topics, as a log config.
pub(crate) fn log_defaults(config: &BrokerConfig) -> LogConfig {
    LogConfig {
        segment_bytes: config.segment_bytes,
        segment_ms: config.segment_ms,
        retention_ms: config.retention_ms,
        retention_bytes: config.retention_bytes,
        fsync: config.fsync,
        max_batch_bytes: config.max_batch_bytes,
        group_commit: config.group_commit,
        ..LogConfig::default()
    }
}

pub(crate) fn unknown_partition(topic: &str, partition: u32) -> WireError {
    WireError::new(
        ErrorCode::UnknownTopicOrPartition,
        format!("topic `{topic}` has no partition {partition}"),
    )
}

/// Maps a storage error to its wire code.
pub(crate) fn storage_error(e: StorageError) -> WireError {
    let code = match &e {
        StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        StorageError::NoSpace => ErrorCode::NotEnoughDisk,
        StorageError::Closed => ErrorCode::UnknownTopicOrPartition,
        _ => ErrorCode::StorageError,
    };
    WireError::new(code, e.to_string())
}

/// Waits for whichever comes first; the loser is dropped.
pub(crate) async fn first<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> Either<A::Output, B::Output> {
    futures_util::pin_mut!(a, b);
    match select(a, b).await {
        Either::Left((x, _)) => Either::Left(x),
        Either::Right((y, _)) => Either::Right(y),
    }
}
