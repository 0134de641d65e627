//! What one shard hands over for a scrape: plain data, built on the shard's own thread.

use super::histogram::HistogramSnapshot;
use super::labels::{ApiId, Listener, Outcome};

/// One shard's state at a scrape.
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    /// The shard.
    pub shard: u16,
    /// What the shard counted (its thread-local counters).
    pub traffic: ShardTraffic,
    /// The partitions the shard owns.
    pub partitions: Vec<PartitionState>,
    /// The committed offsets of the consumer groups the shard coordinates.
    pub committed: Vec<CommittedOffset>,
    /// Share-group state of the partitions the shard owns.
    pub shares: Vec<ShareState>,
    /// Bytes of requests the shard holds against `--max-queued-bytes`.
    pub queued_bytes: u64,
    /// The shard's request budget (`--max-queued-bytes`).
    pub queued_limit: u64,
    /// Calls waiting in the rings towards this shard, over all senders.
    pub ring_queued: u64,
    /// Slots of the rings towards this shard, over all senders.
    pub ring_capacity: u64,
    /// Memory the tail caches of the shard's partitions hold (`--log-writes direct`).
    pub tail_cache_bytes: u64,
    /// What they may hold together (`--tail-cache-shard-mb`), beyond which only each active
    /// segment's newest write stays.
    pub tail_cache_limit: u64,
}

/// A shard's counters.
#[derive(Debug, Clone)]
pub struct ShardTraffic {
    /// Per topic (partition `None`) and, with partition labels, per partition.
    pub topics: Vec<TopicTraffic>,
    /// Requests per API and outcome.
    pub requests: Vec<RequestCount>,
    /// Request latency per API, in nanoseconds.
    pub latency: Vec<RequestLatency>,
    /// Batches per group-commit round.
    pub round_batches: HistogramSnapshot,
    /// Bytes per group-commit round.
    pub round_bytes: HistogramSnapshot,
    /// fdatasync latency of logs, in nanoseconds.
    pub fdatasync: HistogramSnapshot,
    /// Throttle times of clients over a quota, in nanoseconds.
    pub quota_throttle: HistogramSnapshot,
    /// Connections per listener kind.
    pub connections: Vec<ListenerCounts>,
    /// Corrupt batches the scrubber found.
    pub scrub_corrupt_batches: u64,
    /// Compaction passes run.
    pub compactions: u64,
    /// Bytes compaction removed from segments.
    pub compaction_bytes_removed: u64,
    /// Bytes of log ranges read for fetches from the tail cache.
    pub log_read_memory_bytes: u64,
    /// Bytes of log ranges read for fetches from segment files.
    pub log_read_file_bytes: u64,
}

/// Record traffic of a topic or one of its partitions.
#[derive(Debug, Clone)]
pub struct TopicTraffic {
    /// The topic.
    pub topic: String,
    /// The partition, or `None` for the whole topic.
    pub partition: Option<u32>,
    /// Records acknowledged to producers.
    pub produced_records: u64,
    /// Bytes of record batches acknowledged to producers.
    pub produced_bytes: u64,
    /// Bytes of record batches sent to consumers (fetches and share fetches).
    pub fetched_bytes: u64,
}

/// Requests of one API that ended one way.
#[derive(Debug, Clone, Copy)]
pub struct RequestCount {
    /// The API.
    pub api: ApiId,
    /// How they ended.
    pub outcome: Outcome,
    /// How many.
    pub count: u64,
}

/// The latency of one API's requests.
#[derive(Debug, Clone)]
pub struct RequestLatency {
    /// The API.
    pub api: ApiId,
    /// From decoded to answered, in nanoseconds.
    pub seconds: HistogramSnapshot,
}

/// Connections of one listener kind.
#[derive(Debug, Clone, Copy)]
pub struct ListenerCounts {
    /// The listener kind.
    pub listener: Listener,
    /// Accepted since start.
    pub accepted: u64,
    /// Refused (over a connection limit) since start.
    pub refused: u64,
    /// Open now.
    pub open: u64,
}

/// One partition's log.
#[derive(Debug, Clone)]
pub struct PartitionState {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The first offset still in the log.
    pub log_start: i64,
    /// The next offset to be written (the high watermark).
    pub log_end: i64,
    /// Bytes of its segments.
    pub size_bytes: u64,
    /// Segment files.
    pub segments: u64,
}

/// A consumer group's committed offset on one partition.
#[derive(Debug, Clone)]
pub struct CommittedOffset {
    /// The group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The next offset the group will consume.
    pub offset: i64,
}

/// A share group's state on one partition.
#[derive(Debug, Clone)]
pub struct ShareState {
    /// The group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// Records from the share-partition start to the log end that are not done yet
    /// (available, locked or waiting out a delay).
    pub backlog: u64,
    /// Records locked to a consumer now.
    pub locked: u64,
    /// Records moved to the dead-letter topic since the broker started.
    pub dead_lettered: u64,
}
