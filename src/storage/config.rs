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

/// How appends reach a log file (`--log-writes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogWrites {
    /// Through the page cache: the kernel copies each append into cached pages and writes
    /// them back later (or at the `fdatasync`).
    #[default]
    Buffered,
    /// With `O_DIRECT` from page-aligned buffers, the active segment's newest bytes kept in
    /// a shard-local cache for reads (`storage::direct`).
    Direct,
}

impl LogWrites {
    /// Parses `buffered` or `direct`.
    pub fn parse(value: &str) -> Result<LogWrites, String> {
        match value {
            "buffered" => Ok(LogWrites::Buffered),
            "direct" => Ok(LogWrites::Direct),
            other => Err(format!(
                "`{other}` is not a write mode; use buffered or direct"
            )),
        }
    }
}

impl std::fmt::Display for LogWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogWrites::Buffered => "buffered",
            LogWrites::Direct => "direct",
        })
    }
}

/// What a log does with its old records (Kafka's `cleanup.policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CleanupPolicy {
    /// Whole segments past `retention.ms` / `retention.bytes` are deleted.
    pub delete: bool,
    /// Sealed segments keep only the newest record of each key; tombstones (records with a
    /// null value) go after `delete.retention.ms`.
    pub compact: bool,
}

impl CleanupPolicy {
    /// `delete`: today's time and size retention, Kafka's default.
    pub const DELETE: CleanupPolicy = CleanupPolicy {
        delete: true,
        compact: false,
    };

    /// Parses Kafka's spelling: `delete`, `compact`, or both separated by a comma (either
    /// order, spaces allowed).
    pub fn parse(value: &str) -> Result<CleanupPolicy, String> {
        let mut policy = CleanupPolicy {
            delete: false,
            compact: false,
        };
        for part in value.split(',').map(str::trim) {
            match part {
                "delete" => policy.delete = true,
                "compact" => policy.compact = true,
                _ => {
                    return Err(format!(
                        "`{part}` is not a policy; use delete, compact or compact,delete"
                    ))
                }
            }
        }
        Ok(policy)
    }
}

impl std::fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match (self.compact, self.delete) {
            (true, true) => "compact,delete",
            (true, false) => "compact",
            // A policy always names one of the two: `parse` never yields neither.
            (false, _) => "delete",
        })
    }
}

/// A share from 0 to 1 (`min.cleanable.dirty.ratio`), kept in millionths so that a
/// [`LogConfig`] stays `Eq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio(u32);

impl Ratio {
    /// One half: Kafka's default `min.cleanable.dirty.ratio`.
    pub const HALF: Ratio = Ratio(500_000);

    /// Parses a decimal from 0 to 1 (`0.5`, `1`, `0`).
    pub fn parse(value: &str) -> Result<Ratio, String> {
        let v: f64 = value
            .trim()
            .parse()
            .map_err(|_| format!("`{value}` is not a number"))?;
        if !(0.0..=1.0).contains(&v) {
            return Err(format!("`{value}` is not between 0 and 1"));
        }
        Ok(Ratio((v * 1e6).round() as u32))
    }

    /// The share as a float.
    pub fn get(self) -> f64 {
        f64::from(self.0) / 1e6
    }
}

impl std::fmt::Display for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.get())
    }
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
    /// Whether old segments are deleted, compacted, or both (`cleanup.policy`). Time and
    /// size retention apply only when `delete` is in the policy.
    pub cleanup: CleanupPolicy,
    /// How long a tombstone survives compaction, in milliseconds (`delete.retention.ms`), so
    /// that a consumer reading behind the head still sees the delete.
    pub delete_retention_ms: u64,
    /// A record is not compacted away until it is at least this old, in milliseconds
    /// (`min.compaction.lag.ms`).
    pub min_compaction_lag_ms: u64,
    /// A compaction pass starts once the sealed bytes not compacted yet are at least this
    /// share of all sealed bytes (`min.cleanable.dirty.ratio`).
    pub min_cleanable_dirty_ratio: Ratio,
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
    /// Least time from the start of one group-commit round to the start of the next
    /// (`--group-commit-interval-us`). Under steady load a round waits out the rest of it and
    /// takes everything that arrived meanwhile, so the disk sees fewer, larger writes and
    /// syncs; a round after a pause at least this long starts at once. Zero: no pacing.
    pub group_commit_interval: std::time::Duration,
    /// How appends reach the file (`--log-writes`). Buffered in [`LogConfig::default`]; the
    /// broker's own default, which it passes in, is direct.
    pub writes: LogWrites,
    /// Under direct writes, how many bytes of the partition's newest log its segments keep in
    /// memory for reads (`--tail-cache-mb`); the newest write's buffer stays even if larger.
    pub tail_cache_bytes: u64,
    /// Under direct writes, how many bytes the tail caches of all the partitions of a shard
    /// keep together (`--tail-cache-shard-mb`), the oldest chunks going first whichever
    /// partition they belong to; never less than `tail_cache_bytes`
    /// ([`LogConfig::shard_tail_cache_budget`]).
    pub shard_tail_cache_bytes: u64,
}

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

impl Default for LogConfig {
    /// Kafka's defaults: 1 GiB segments rolled at least weekly, seven days of retention,
    /// no size limit, the `delete` policy with a day's tombstone retention, an index entry every 4 KiB, and an fsync before every acknowledgement.
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * DAY_MS),
            retention_ms: Some(7 * DAY_MS as i64),
            retention_bytes: None,
            cleanup: CleanupPolicy::DELETE,
            delete_retention_ms: DAY_MS,
            min_compaction_lag_ms: 0,
            min_cleanable_dirty_ratio: Ratio::HALF,
            index_interval_bytes: 4096,
            fsync: FsyncPolicy::Always,
            max_batch_bytes: 1 << 20,
            group_commit: std::time::Duration::ZERO,
            group_commit_interval: std::time::Duration::ZERO,
            writes: LogWrites::Buffered,
            tail_cache_bytes: super::direct::DEFAULT_TAIL_CACHE_BYTES,
            shard_tail_cache_bytes: super::direct::DEFAULT_SHARD_TAIL_CACHE_BYTES,
        }
    }
}

impl LogConfig {
    /// What a shard's tail caches may hold together: the shard's budget, but at least one
    /// partition's, so a single partition always gets its whole `--tail-cache-mb`.
    pub fn shard_tail_cache_budget(&self) -> u64 {
        self.shard_tail_cache_bytes.max(self.tail_cache_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::{CleanupPolicy, Ratio};

    #[test]
    fn cleanup_policy_parses_kafkas_spellings_and_prints_them_back() {
        for (text, shown) in [
            ("delete", "delete"),
            ("compact", "compact"),
            ("compact,delete", "compact,delete"),
            ("delete, compact", "compact,delete"),
        ] {
            assert_eq!(CleanupPolicy::parse(text).unwrap().to_string(), shown);
        }
        for bad in ["", "shred", "compact,", "delete;compact"] {
            assert!(CleanupPolicy::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ratios_parse_from_0_to_1_and_print_back() {
        for (text, shown) in [("0.5", "0.5"), ("0", "0"), ("1", "1"), (" 0.25 ", "0.25")] {
            assert_eq!(Ratio::parse(text).unwrap().to_string(), shown);
        }
        for bad in ["", "half", "-0.1", "1.5", "NaN"] {
            assert!(Ratio::parse(bad).is_err(), "{bad:?}");
        }
    }
}
