//! The partition log on disk: segments of record batches, sparse offset and time indexes,
//! crash recovery and retention. Only the shard that owns a partition touches its files.
//!
//! - [`PartitionLog`] (`log/`): append with group commit, read, retention, sync.
//! - `segment.rs`: one segment's `.log`, `.index` and `.timeindex` files.
//! - `index.rs`: the sparse offset and time indexes as pure data (encoding, lookups, which
//!   batches get entries).
//! - `recovery.rs`: the scan on open that truncates a torn tail and rebuilds damaged indexes.
//! - [`catalog`]: the durable list of topics and their configs, shared by all shards.
//! - [`LogConfig`], [`StorageError`].

pub mod catalog;
mod config;
mod error;
mod index;
mod log;
mod recovery;
mod segment;

pub use config::{FsyncPolicy, LogConfig};
pub use error::StorageError;
pub use log::{AppendOutcome, FileRange, PartitionLog, ReadOutcome};

#[cfg(test)]
mod tests;
