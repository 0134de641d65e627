//! Per-partition log settings: segment rolling, retention, indexing and durability.
//!
//! A [`LogConfig`] is plain data. The shard builds one per partition from the broker defaults
//! and the topic's overrides, and can replace it at run time
//! (`PartitionLog::set_config`); new values apply from the next append or
//! retention pass, never retroactively to bytes already written.

use std::time::Duration;

/// When appended batches are forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// One `fdatasync` per group commit, before any producer is acknowledged.
    Always,
    /// Never forced by the log; the kernel writes pages back when it likes.
    Never,
    /// Forced by a timer of the owning shard calling
    /// `PartitionLog::sync` at this period.
    Interval(Duration),
}

/// Settings of one partition log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A new segment is started when the active one would grow beyond this many bytes.
    pub segment_bytes: u64,
    /// A new segment is started when the active one is older than this (milliseconds).
    pub segment_ms: Option<u64>,
    /// Segments whose newest batch is older than this (milliseconds) are deleted.
    pub retention_ms: Option<i64>,
    /// Oldest segments are deleted while the log would still hold at least this many bytes
    /// without them.
    pub retention_bytes: Option<u64>,
    /// Roughly how many log bytes lie between two entries of the sparse offset index.
    pub index_interval_bytes: u32,
    /// Durability of appends.
    pub fsync: FsyncPolicy,
    /// Largest batch accepted, in bytes (header included).
    pub max_batch_bytes: usize,
    /// Extra time a flush waits before taking the queue, so that more producers' batches
    /// share its write and its fdatasync (`--group-commit-us`). Zero: flush at once; batches
    /// that arrive while a flush is running still wait for, and share, the next one.
    pub group_commit: std::time::Duration,
}

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

impl Default for LogConfig {
    /// Kafka's defaults: 1 GiB segments rolled at least weekly, seven days of retention,
    /// no size limit, an index entry every 4 KiB, and an fsync before every acknowledgement.
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * DAY_MS),
            retention_ms: Some(7 * DAY_MS as i64),
            retention_bytes: None,
            index_interval_bytes: 4096,
            fsync: FsyncPolicy::Always,
            max_batch_bytes: 1 << 20,
            group_commit: std::time::Duration::ZERO,
        }
    }
}
