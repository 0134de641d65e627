//! The partition log on disk: segments of record batches, sparse offset and time indexes,
//! crash recovery and retention. Only the shard that owns a partition touches its files.
//!
//! - [`PartitionLog`] (`log/`): append with group commit, read, retention, sync.
//! - `segment.rs`: one segment's `.log`, `.index` and `.timeindex` files.
//! - `index.rs`: the sparse offset and time indexes as pure data (encoding, lookups, which
//!   batches get entries).
//! - `recovery.rs`: the scan on open that truncates a torn tail and rebuilds damaged indexes,
//!   and rebuilds the idempotent producers' state from a snapshot and the batch headers.
//! - `producers.rs`: what a partition knows of its idempotent producers, and the sequence
//!   and epoch checks of their batches (pure data).
//! - `direct.rs`: the aligned buffers and the tail cache of `--log-writes direct`.
//! - `disk.rs`: every file operation of the log (writes, reads, syncs, length changes,
//!   opens, removals), the seam where tests inject faults, and the sync journal durability
//!   tests read ([`init_sync_journal`]).
//! - `fault.rs` (tests only): the simulated disk that tears, loses and flips bytes from a
//!   seed; `sim.rs` (tests only): the deterministic simulation of partition logs on it.
//! - `fence_file.rs`: the corrupt batches a partition's reads refuse to return ([`Fence`]),
//!   as stored in its `fenced` file.
//! - [`catalog`]: the durable list of topics and their configs, shared by all shards.
//! - [`ProducerIds`] (`producer_ids.rs`): the durable producer-id counter, shared by all
//!   shards.
//! - [`AclStore`] (`acls.rs`): the durable ACLs, shared by all shards.
//! - [`QuotaStore`] (`quotas.rs`): the durable client quotas, shared by all shards.
//! - [`Users`] (`users.rs`): the durable SCRAM credentials of the broker's users, shared
//!   by all shards.
//! - `meta_file.rs`: metadata files replaced whole and durably.
//! - [`LogConfig`], [`StorageError`].

mod acls;
pub mod catalog;
mod config;
mod direct;
mod disk;
mod error;
#[cfg(test)]
mod fault;
mod fence_file;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz_targets;
mod index;
mod log;
mod meta_file;
mod producer_ids;
mod producers;
mod quotas;
mod recovery;
mod runs;
mod segment;
#[cfg(test)]
mod sim;
mod users;

pub use acls::{AclError, AclStore};
pub use config::{FsyncPolicy, LogConfig, LogWrites, Ratio};
pub(crate) use direct::{
    shard_tail_cache_bytes, DEFAULT_SHARD_TAIL_CACHE_BYTES, DEFAULT_TAIL_CACHE_BYTES,
};
pub use disk::{init_sync_journal, SYNC_JOURNAL_ENV};
pub use error::StorageError;
pub use fence_file::Fence;
pub use log::{
    AppendOutcome, CompactionPace, CompactionStats, CorruptBatch, FileRange, PartitionLog,
    ReadOutcome, ScrubStep,
};
pub use producer_ids::ProducerIds;
pub use producers::ProducerError;
pub use quotas::{QuotaChange, QuotaError, QuotaStore};
pub use runs::Runs;
pub use users::{UserError, UserTable, Users};

#[cfg(test)]
mod compaction_tests;
#[cfg(test)]
mod tests;
