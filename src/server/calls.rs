//! The typed calls of the data path, the group coordinator and the share groups: what one
//! shard asks of the shard that owns a partition or a group. Each call is a struct with its
//! reply type (see [`super::rpc`]); topic lifecycle calls are in [`super::topics`].

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::select;

use super::context::ShardContext;
use super::group_coordinator::{GroupListed, GroupOp, GroupView, KafkaGroupError};
use super::partitions::{storage_error, PartitionCall, PartitionRef};
use super::rpc::ShardCall;
use super::share_coordinator::{ShareFetched, ShareHost};
use super::topics;
use crate::groups::classic::{ClassicError, JoinRequest, JoinResult, SyncResult};
use crate::protocol::api::{
    offset_spec, AckRange, Response, SharePartitionState, ShareSettings, TopicOffsets,
    TopicPartitions, TopicResults,
};
use crate::protocol::batch::ValidBatch;
use crate::protocol::{ErrorCode, WireError};
use crate::shard::ShardId;
use crate::storage::{AppendOutcome, FileRange, PartitionLog, ReadOutcome};

/// Appends validated batches.
pub(crate) struct Append {
    pub(crate) at: PartitionRef,
    pub(crate) batches: Vec<ValidBatch>,
}

impl ShardCall<ShardContext> for Append {
    type Reply = Result<AppendOutcome, WireError>;

    async fn run(self, shard: Rc<ShardContext>) -> Self::Reply {
        let log = shard.log(&self.at).await?;
        log.append(self.batches).await.map_err(storage_error)
    }
}

/// Reads whole batches from `offset` into a buffer (for a fetch through another shard).
pub(crate) struct Read {
    pub(crate) at: PartitionRef,
    pub(crate) offset: i64,
    pub(crate) max_bytes: usize,
}

/// Batches read, and the bytes that were readable from the offset when they were.
pub(crate) type ReadReply = Result<(ReadOutcome, u64), WireError>;

impl ShardCall<ShardContext> for Read {
    type Reply = ReadReply;

    async fn run(self, shard: Rc<ShardContext>) -> ReadReply {
        let log = shard.log(&self.at).await?;
        let available = log.bytes_available_from(self.offset);
        let read = log
            .read(self.offset, self.max_bytes)
            .await
            .map_err(storage_error)?;
        Ok((read, available))
    }
}

/// Locates the bytes of a fetch from a partition this shard owns (see
/// [`PartitionLog::read_range`]), with the readable-bytes estimate a long-poll needs: the
/// range, the high watermark, the log start and the bytes readable from `offset`.
pub(crate) async fn read_range(
    shard: &ShardContext,
    at: &PartitionRef,
    offset: i64,
    max_bytes: usize,
) -> Result<(Option<FileRange>, i64, i64, u64), WireError> {
    let log = shard.log(at).await?;
    let available = log.bytes_available_from(offset);
    let (range, hwm, start) = log
        .read_range(offset, max_bytes)
        .await
        .map_err(storage_error)?;
    Ok((range, hwm, start, available))
}

/// Answers once more than `seen` bytes are readable from `offset` (or the offset is no
/// longer valid), or at `deadline`, or when the broker starts stopping. `seen` is what the
/// caller's last read found readable. A caller that goes away cancels the wait.
pub(crate) struct WaitForData {
    pub(crate) at: PartitionRef,
    pub(crate) offset: i64,
    pub(crate) seen: u64,
    pub(crate) deadline: Instant,
}

impl ShardCall<ShardContext> for WaitForData {
    type Reply = ();

    async fn run(self, shard: Rc<ShardContext>) {
        let Ok(log) = shard.log(&self.at).await else {
            return; // the caller's next read reports the error
        };
        loop {
            if self.offset < log.log_start_offset()
                || self.offset > log.high_watermark()
                || log.bytes_available_from(self.offset) > self.seen
            {
                return;
            }
            if shard.is_shutting_down() || Instant::now() >= self.deadline {
                return;
            }
            let appended = log.appended().notified();
            let stop = shard.shutdown.notified();
            let timer = compio::time::sleep_until(self.deadline);
            futures_util::pin_mut!(appended, stop, timer);
            let _ = select(appended, select(stop, timer)).await;
        }
    }
}

/// The earliest, latest or by-timestamp offset of a partition.
pub(crate) struct ListOffset {
    pub(crate) at: PartitionRef,
    pub(crate) timestamp: i64,
}

impl ShardCall<ShardContext> for ListOffset {
    type Reply = Result<i64, WireError>;

    async fn run(self, shard: Rc<ShardContext>) -> Self::Reply {
        let log = shard.log(&self.at).await?;
        match self.timestamp {
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
        }
    }
}

/// A consumer-group request, run by the group's coordinator.
pub(crate) struct GroupCall(pub(crate) GroupOp);

impl ShardCall<ShardContext> for GroupCall {
    type Reply = Result<Response, WireError>;

    async fn run(self, shard: Rc<ShardContext>) -> Self::Reply {
        shard.groups.run(self.0).await
    }
}

/// Kafka JoinGroup, run on the group's coordinator; answers when the group's join barrier
/// completes.
pub(crate) struct KafkaJoin {
    pub(crate) group: String,
    pub(crate) request: JoinRequest,
}

impl ShardCall<ShardContext> for KafkaJoin {
    type Reply = Result<JoinResult, ClassicError>;

    async fn run(self, shard: Rc<ShardContext>) -> Self::Reply {
        shard.groups.kafka_join(&self.group, self.request).await
    }
}

/// Kafka SyncGroup: the leader's assignments in, each member's assignment out.
pub(crate) struct KafkaSync {
    pub(crate) group: String,
    pub(crate) member_id: String,
    pub(crate) generation: i32,
    /// The protocol type and name the member expects (SyncGroup v5+).
    pub(crate) protocol: Option<(String, String)>,
    pub(crate) assignments: Vec<(String, Bytes)>,
}

impl ShardCall<ShardContext> for KafkaSync {
    type Reply = Result<SyncResult, ClassicError>;

    async fn run(self, shard: Rc<ShardContext>) -> Self::Reply {
        let protocol = self
            .protocol
            .as_ref()
            .map(|(kind, name)| (kind.as_str(), name.as_str()));
        shard
            .groups
            .kafka_sync(
                &self.group,
                &self.member_id,
                self.generation,
                protocol,
                self.assignments,
            )
            .await
    }
}

/// Kafka Heartbeat.
pub(crate) struct KafkaHeartbeat {
    pub(crate) group: String,
    pub(crate) member_id: String,
    pub(crate) generation: i32,
}

impl ShardCall<ShardContext> for KafkaHeartbeat {
    type Reply = Result<(), ClassicError>;

    async fn run(self, shard: Rc<ShardContext>) -> Self::Reply {
        shard
            .groups
            .kafka_heartbeat(&self.group, &self.member_id, self.generation)
    }
}

/// Kafka LeaveGroup, for each member named.
pub(crate) struct KafkaLeave {
    pub(crate) group: String,
    pub(crate) members: Vec<String>,
}

impl ShardCall<ShardContext> for KafkaLeave {
    type Reply = Vec<Result<(), ClassicError>>;

    async fn run(self, shard: Rc<ShardContext>) -> Self::Reply {
        shard.groups.kafka_leave(&self.group, &self.members)
    }
}

/// Kafka OffsetCommit.
pub(crate) struct KafkaCommit {
    pub(crate) group: String,
    pub(crate) member_id: String,
    pub(crate) generation: i32,
    pub(crate) topics: Vec<TopicOffsets>,
}

impl ShardCall<ShardContext> for KafkaCommit {
    type Reply = Result<Vec<TopicResults>, KafkaGroupError>;

    async fn run(self, shard: Rc<ShardContext>) -> Self::Reply {
        shard
            .groups
            .kafka_commit(&self.group, &self.member_id, self.generation, self.topics)
            .await
    }
}

/// Kafka OffsetFetch: the committed offsets of the partitions named, or of every partition
/// the group committed (`None`).
pub(crate) struct KafkaOffsets {
    pub(crate) group: String,
    pub(crate) topics: Option<Vec<TopicPartitions>>,
}

impl ShardCall<ShardContext> for KafkaOffsets {
    type Reply = Result<Vec<TopicOffsets>, WireError>;

    async fn run(self, shard: Rc<ShardContext>) -> Self::Reply {
        shard.groups.kafka_offsets(self.group, self.topics).await
    }
}

/// Kafka DescribeGroups, for one group.
pub(crate) struct KafkaDescribeGroup(pub(crate) String);

impl ShardCall<ShardContext> for KafkaDescribeGroup {
    type Reply = Result<GroupView, WireError>;

    async fn run(self, shard: Rc<ShardContext>) -> Self::Reply {
        shard.groups.kafka_describe(&self.0).await
    }
}

/// Kafka ListGroups, on one coordinator shard.
pub(crate) struct KafkaListGroups;

impl ShardCall<ShardContext> for KafkaListGroups {
    type Reply = Result<Vec<GroupListed>, WireError>;

    async fn run(self, shard: Rc<ShardContext>) -> Self::Reply {
        shard.groups.kafka_list().await
    }
}

/// Kafka DeleteGroups, for one group: refused while it has members.
pub(crate) struct KafkaDeleteGroup(pub(crate) String);

impl ShardCall<ShardContext> for KafkaDeleteGroup {
    type Reply = Result<(), KafkaGroupError>;

    async fn run(self, shard: Rc<ShardContext>) -> Self::Reply {
        shard.groups.delete_any(&self.0).await
    }
}

/// Kafka OffsetDelete: forgets committed offsets of topics no member subscribes to.
pub(crate) struct KafkaOffsetDelete {
    pub(crate) group: String,
    pub(crate) topics: Vec<TopicPartitions>,
}

impl ShardCall<ShardContext> for KafkaOffsetDelete {
    type Reply = Result<Vec<TopicResults>, KafkaGroupError>;

    async fn run(self, shard: Rc<ShardContext>) -> Self::Reply {
        shard.groups.delete_offsets(&self.group, self.topics).await
    }
}

/// Acquires records of a share group on a partition.
pub(crate) struct ShareAcquire {
    pub(crate) at: PartitionRef,
    pub(crate) group: String,
    pub(crate) member: String,
    pub(crate) max_records: u32,
    pub(crate) max_bytes: usize,
    pub(crate) settings: ShareSettings,
}

impl ShardCall<ShardContext> for ShareAcquire {
    type Reply = Result<ShareFetched, WireError>;

    async fn run(self, shard: Rc<ShardContext>) -> Self::Reply {
        shard
            .shares
            .acquire(
                &shard,
                &self.at,
                &self.group,
                &self.member,
                self.max_records,
                self.max_bytes,
                &self.settings,
            )
            .await
    }
}

/// Acknowledges records of a share group on a partition.
pub(crate) struct ShareAck {
    pub(crate) at: PartitionRef,
    pub(crate) group: String,
    pub(crate) member: String,
    pub(crate) ranges: Vec<AckRange>,
}

impl ShardCall<ShardContext> for ShareAck {
    type Reply = Result<(), WireError>;

    async fn run(self, shard: Rc<ShardContext>) -> Self::Reply {
        shard
            .shares
            .acknowledge(&shard, &self.at, &self.group, &self.member, &self.ranges)
            .await
    }
}

/// The members and partition states of a share group on the shard.
pub(crate) struct ShareDescribe {
    pub(crate) group: String,
}

impl ShardCall<ShardContext> for ShareDescribe {
    type Reply = (Vec<String>, Vec<SharePartitionState>);

    async fn run(self, shard: Rc<ShardContext>) -> Self::Reply {
        let logs = |topic: &str, partition: u32| shard.partitions.log_end(topic, partition);
        shard.shares.describe(&self.group, &logs)
    }
}

/// The share groups with state on the shard, with their member counts.
pub(crate) struct ShareGroups;

impl ShardCall<ShardContext> for ShareGroups {
    type Reply = BTreeMap<String, usize>;

    async fn run(self, shard: Rc<ShardContext>) -> Self::Reply {
        shard.shares.groups()
    }
}

/// Releases what a share-group member holds on the shard (its connection closed).
pub(crate) struct ShareRelease {
    pub(crate) group: String,
    pub(crate) member: String,
}

impl ShardCall<ShardContext> for ShareRelease {
    type Reply = ();

    async fn run(self, shard: Rc<ShardContext>) {
        shard.shares.release_member(&self.group, &self.member);
    }
}

/// The calls about one partition, which `call_owner` routes by their `at`.
macro_rules! partition_calls {
    ($($call:ty),*) => {
        $(impl PartitionCall for $call {
            fn partition(&self) -> &PartitionRef {
                &self.at
            }
        })*
    };
}

partition_calls!(
    Append,
    Read,
    WaitForData,
    ListOffset,
    ShareAcquire,
    ShareAck
);

/// The calls of a request's partition entries, each to its partition's owner, and the
/// entries refused before any call (unknown partition, bad batch), in entry order.
pub(crate) struct Routed<C> {
    pub(crate) calls: Vec<(ShardId, C)>,
    pub(crate) early: Vec<Option<WireError>>,
}

impl<C> Default for Routed<C> {
    fn default() -> Self {
        Routed {
            calls: Vec::new(),
            early: Vec::new(),
        }
    }
}

impl<C: PartitionCall> Routed<C> {
    /// Adds the next entry: its call, or why it has none.
    pub(crate) fn push(
        &mut self,
        ctx: &ShardContext,
        make: impl FnOnce(&ShardContext) -> Result<C, WireError>,
    ) {
        match make(ctx) {
            Ok(call) => {
                self.calls.push((ctx.owner_of(call.partition()), call));
                self.early.push(None);
            }
            Err(e) => self.early.push(Some(e)),
        }
    }
}

/// Each entry's outcome, in entry order: its early error, or the next reply.
pub(crate) struct Outcomes<T> {
    early: std::vec::IntoIter<Option<WireError>>,
    replies: std::vec::IntoIter<Result<Result<T, WireError>, WireError>>,
}

impl<T> Outcomes<T> {
    pub(crate) fn new(
        early: Vec<Option<WireError>>,
        replies: Vec<Result<Result<T, WireError>, WireError>>,
    ) -> Self {
        Outcomes {
            early: early.into_iter(),
            replies: replies.into_iter(),
        }
    }

    pub(crate) fn next(&mut self) -> Result<T, WireError> {
        match self.early.next().flatten() {
            Some(e) => Err(e),
            None => self
                .replies
                .next()
                .unwrap_or_else(|| Ok(Err(missing_reply())))
                .and_then(|r| r),
        }
    }
}

/// A reply missing from a grouped call's answer: cannot happen, since the replies come
/// back one per call; logged if it ever does.
fn missing_reply() -> WireError {
    tracing::error!("a grouped call answered fewer replies than it had calls");
    WireError::new(ErrorCode::Unknown, "internal error: a reply went missing")
}

impl ShareHost for Rc<ShardContext> {
    async fn partition_log(&self, at: &PartitionRef) -> Result<Rc<PartitionLog>, WireError> {
        self.log(at).await
    }

    async fn dead_letter_partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<PartitionRef, WireError> {
        let meta = match self.catalog.get(topic) {
            Some(meta) => meta,
            None => match topics::create(self, topic, 1, &[]).await {
                Ok(meta) => meta,
                // Another consumer's dead letters created it meanwhile.
                Err(e) if e.code == ErrorCode::TopicAlreadyExists => self
                    .catalog
                    .get(topic)
                    .ok_or_else(|| WireError::new(ErrorCode::UnknownTopicOrPartition, topic))?,
                Err(e) => return Err(e),
            },
        };
        Ok(PartitionRef {
            partition: partition % meta.partitions,
            topic: meta,
        })
    }

    async fn append(&self, at: PartitionRef, batch: ValidBatch) -> Result<(), WireError> {
        self.call_owner(Append {
            at,
            batches: vec![batch],
        })
        .await?
        .map(drop)
    }
}
