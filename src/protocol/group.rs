//! Messages of the consumer-group and share-group (queue) APIs. Each type is declared with
//! `message!`, which writes its [`Message`] impl from the struct (an ack range, checked while
//! decoding, implements it by hand); the API table in `api.rs` wires them into
//! `Request` and `Response` (in `api.rs`). Field by field in
//! docs/PROTOCOL.md.

use bytes::Bytes;

use super::error::ErrorCode;
use super::frame::{DecodeError, Decoder, Encoder};
use super::message::{message, Message, TopicEntry};

/// Partitions of one topic: an assignment, or the partitions a request names.
pub type TopicPartitions = TopicEntry<u32>;

message! {
    /// Join (or re-join) a consumer group.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct JoinGroupRequest {
        /// Group name.
        pub group: String,
        /// Empty for a new member; the id the broker gave otherwise.
        pub member_id: String,
        /// Free-form client name, shown by `group describe`.
        pub client_id: String,
        /// Topics to subscribe to.
        pub topics: Vec<String>,
        /// A member not heard from for this long is removed.
        pub session_timeout_ms: u32,
        /// `range`, `roundrobin` or `sticky`; fixed by a group's first member.
        pub strategy: String,
    }
}

message! {
    /// The answer to a join or a heartbeat: the member's id, the group's generation and the
    /// member's partitions in that generation.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MembershipResponse {
        /// The member's id (use it in every later request).
        pub member_id: String,
        /// The group's current generation. Once the member has applied `assignment`
        /// (committing the progress of partitions it lost), its heartbeats carry this
        /// generation, which acknowledges it.
        pub generation: u32,
        /// The member's partitions in this generation: its share, less partitions another
        /// member has not let go of yet (they come in a later answer).
        pub assignment: Vec<TopicPartitions>,
    }
}

message! {
    /// Keep a membership alive, acknowledge the assignment applied, and learn the current
    /// generation and assignment.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct HeartbeatRequest {
        /// Group name.
        pub group: String,
        /// The member.
        pub member_id: String,
        /// The generation whose assignment the member has applied (0: none yet). Partitions
        /// it held before and not in that assignment are let go of.
        pub generation: u32,
    }
}

message! {
    /// Leave a group (its partitions go to the others at once: commit first).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct LeaveGroupRequest {
        /// Group name.
        pub group: String,
        /// The member.
        pub member_id: String,
    }
}

message! {
    /// A group name alone: describe, delete.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct GroupRequest {
        /// Group name.
        pub group: String,
    }
}

message! {
    /// One partition's offset in a commit.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PartitionOffset {
        /// Partition index.
        pub partition: u32,
        /// The next offset to consume.
        pub offset: i64,
    }
}

/// Offsets of one topic's partitions.
pub type TopicOffsets = TopicEntry<PartitionOffset>;

message! {
    /// Store committed offsets for a group.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CommitOffsetsRequest {
        /// Group name.
        pub group: String,
        /// The committing member; empty (with generation -1) for a commit from outside the
        /// group, allowed only while the group has no members (offset resets, manual
        /// assignment).
        pub member_id: String,
        /// The generation the member works in (whose assignment it applied), or -1.
        pub generation: i32,
        /// What to commit.
        pub topics: Vec<TopicOffsets>,
    }
}

message! {
    /// Per-partition outcome of a commit or an ack.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct PartitionResult {
        /// Partition index.
        pub partition: u32,
        /// Outcome.
        pub error: ErrorCode,
        /// Details of an error.
        pub message: String,
    }
}

/// Outcomes of one topic's partitions.
pub type TopicResults = TopicEntry<PartitionResult>;

message! {
    /// Per-partition outcomes (commit, share ack).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ResultsResponse {
        /// Per topic.
        pub topics: Vec<TopicResults>,
    }
}

message! {
    /// Read a group's committed offsets.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct FetchOffsetsRequest {
        /// Group name.
        pub group: String,
        /// Which partitions; empty for every committed one.
        #[wire = "assignment"]
        pub topics: Vec<TopicPartitions>,
    }
}

message! {
    /// Committed offsets; -1 where nothing is committed.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct OffsetsResponse {
        /// Per topic.
        pub topics: Vec<TopicOffsets>,
    }
}

message! {
    /// One group in a listing.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct GroupListing {
        /// Group name.
        pub group: String,
        /// `consumer` or `share`.
        pub kind: String,
        /// Members now.
        pub members: u32,
    }
}

message! {
    /// Every group the broker knows.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ListGroupsResponse {
        /// Groups, sorted by name.
        pub groups: Vec<GroupListing>,
    }
}

message! {
    /// A member as `group describe` shows it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MemberDescription {
        /// Member id.
        pub member_id: String,
        /// Client name.
        pub client_id: String,
        /// Subscribed topics.
        pub topics: Vec<String>,
        /// Its assignment in the current generation (partitions it is letting go of are
        /// left out).
        pub assignment: Vec<TopicPartitions>,
    }
}

message! {
    /// A consumer group: state, members, assignment and committed offsets.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DescribeGroupResponse {
        /// Group name.
        pub group: String,
        /// `empty` (offsets only), `reconciling` (partitions changing owner) or `stable`.
        pub state: String,
        /// Current generation.
        pub generation: u32,
        /// Assignment strategy.
        pub strategy: String,
        /// Members, by id.
        pub members: Vec<MemberDescription>,
        /// Committed offsets.
        #[wire = "topics"]
        pub offsets: Vec<TopicOffsets>,
    }
}

message! {
    /// Settings of a share group, sent with every share fetch (the latest wins).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ShareSettings {
        /// How long an acquired record stays locked to its consumer.
        pub lock_ms: u32,
        /// Deliveries after which a record goes to the dead-letter topic.
        pub max_deliveries: u16,
        /// Where records past `max_deliveries` (or rejected) are copied; empty: nowhere
        /// (they are archived only).
        pub dead_letter_topic: String,
    }
}

message! {
    /// Take records from partitions shared by any number of consumers.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ShareFetchRequest {
        /// Share group name.
        pub group: String,
        /// The consumer (any stable id of the client's choosing).
        pub member_id: String,
        /// Partitions to take from.
        #[wire = "assignment"]
        pub topics: Vec<TopicPartitions>,
        /// At most this many records per partition.
        pub max_records: u32,
        /// Wait up to this long when nothing is available.
        pub max_wait_ms: u32,
        /// Group settings.
        pub settings: ShareSettings,
    }
}

message! {
    /// Offsets `first..=last`, acquired together, delivered for the `delivery`-th time.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct AcquiredRange {
        /// First offset.
        pub first: i64,
        /// Last offset (inclusive).
        pub last: i64,
        /// Delivery count, 1 for the first delivery.
        pub delivery: u16,
    }
}

message! {
    /// One partition of a share fetch: the acquired ranges and the batches holding them
    /// (whole batches: records outside the ranges are not the consumer's to process).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ShareFetchPartition {
        /// Partition index.
        pub partition: u32,
        /// Outcome.
        pub error: ErrorCode,
        /// Details of an error.
        pub message: String,
        /// What this consumer now holds.
        pub acquired: Vec<AcquiredRange>,
        /// RecordBatch v2 bytes covering the acquired ranges.
        pub records: Bytes,
    }
}

/// Share fetch results of one topic.
pub type ShareFetchTopic = TopicEntry<ShareFetchPartition>;

message! {
    /// The records a share fetch acquired.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ShareFetchResponse {
        /// Per topic.
        pub topics: Vec<ShareFetchTopic>,
    }
}

/// What a consumer says about records it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckType {
    /// Processed: never deliver again.
    Accept,
    /// Give back now: deliver again (to anyone) at once.
    Release,
    /// Could not process: deliver again after `delay_ms`.
    Nack,
    /// Never deliver again; copy to the dead-letter topic.
    Reject,
}

impl AckType {
    fn as_u8(self) -> u8 {
        match self {
            AckType::Accept => 0,
            AckType::Release => 1,
            AckType::Nack => 2,
            AckType::Reject => 3,
        }
    }

    fn from_u8(v: u8) -> Result<AckType, DecodeError> {
        match v {
            0 => Ok(AckType::Accept),
            1 => Ok(AckType::Release),
            2 => Ok(AckType::Nack),
            3 => Ok(AckType::Reject),
            other => Err(DecodeError::InvalidValue {
                field: "ack_type",
                value: i64::from(other),
            }),
        }
    }
}

/// An acknowledgement of offsets `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckRange {
    /// First offset.
    pub first: i64,
    /// Last offset (inclusive).
    pub last: i64,
    /// What happened to them.
    pub kind: AckType,
    /// For [`AckType::Nack`]: how long to wait before delivering again.
    pub delay_ms: u32,
}

impl Message for AckRange {
    const MIN_BYTES: usize = 21;

    fn encode(&self, e: &mut Encoder) {
        e.put_i64(self.first);
        e.put_i64(self.last);
        e.put_u8(self.kind.as_u8());
        e.put_u32(self.delay_ms);
    }

    /// Refuses a range that starts below 0 or ends before it starts.
    fn decode(d: &mut Decoder) -> Result<Self, DecodeError> {
        let first = d.i64("first")?;
        let last = d.i64("last")?;
        if first < 0 || last < first {
            return Err(DecodeError::InvalidValue {
                field: "last",
                value: last,
            });
        }
        Ok(AckRange {
            first,
            last,
            kind: AckType::from_u8(d.u8("ack_type")?)?,
            delay_ms: d.u32("delay_ms")?,
        })
    }
}

message! {
    /// Acknowledgements for one partition.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct PartitionAcks {
        /// Partition index.
        pub partition: u32,
        /// Ranges, in any order.
        pub ranges: Vec<AckRange>,
    }
}

/// Acknowledgements for one topic.
pub type TopicAcks = TopicEntry<PartitionAcks>;

message! {
    /// Accept, release, nack or reject records a share fetch handed out.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ShareAckRequest {
        /// Share group name.
        pub group: String,
        /// The consumer that holds the records.
        pub member_id: String,
        /// Per topic.
        pub topics: Vec<TopicAcks>,
    }
}

message! {
    /// The queue state of one partition of a share group.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct SharePartitionState {
        /// Topic name.
        pub topic: String,
        /// Partition index.
        pub partition: u32,
        /// Every record below this offset is done.
        pub start: i64,
        /// The first offset never handed out.
        pub next_offset: i64,
        /// The partition's log end.
        pub log_end: i64,
        /// Records locked to a consumer now.
        pub acquired: u64,
        /// Records waiting to be delivered again (released, nacked, lock expired).
        pub available_again: u64,
        /// Records done between `start` and `next_offset`.
        pub done: u64,
        /// Records copied to the dead-letter topic since the broker started.
        pub dead_lettered: u64,
    }
}

message! {
    /// A share group: its settings and the state of every partition it has taken from.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DescribeQueueResponse {
        /// Group name.
        pub group: String,
        /// Consumers seen recently (their last fetch or ack within the lock duration).
        pub members: Vec<String>,
        /// Per partition.
        pub partitions: Vec<SharePartitionState>,
    }
}
