//! The log of one partition: an ordered list of segments, of which only the last (active) one
//! is appended to, with group commit.
//!
//! Ownership: a [`PartitionLog`] lives on the shard thread that owns the partition and is
//! shared between that shard's tasks through `Rc`. State is in `Cell`/`RefCell` and no borrow
//! is ever held across an `.await`, so any task may call in at any time.
//!
//! Group commit: [`PartitionLog::append`] queues the caller's batches and waits. One flush
//! task at a time takes everything queued, assigns offsets, writes all of it with one gathered
//! write (split only at a segment roll or at the kernel's iovec limit), records the index
//! entries (written to their files 64 at a time), and under [`FsyncPolicy::Always`] issues
//! one `fdatasync`, into space preallocated ahead of the appends (see
//! `segment::preallocate`). Only then does the high watermark move and every caller of that
//! round complete; batches queued meanwhile form the next round. The flush task is spawned (detached) rather than run inside one caller's future,
//! so a producer that gives up waiting cannot cancel a write other producers depend on.
//!
//! Invariants: offsets are assigned densely and never reused (the log start only moves
//! forward by whole segments; compaction leaves gaps in sealed segments but never moves or
//! renumbers a batch), readers see only bytes below the high watermark, and the bytes read are exactly
//! the bytes appended (with their assigned base offsets).
//!
//! Idempotent producers: the flush task checks their batches' sequence numbers and epochs
//! in the pass that assigns offsets, and keeps the producer table in step with what is
//! written; snapshots of the table bound what recovery replays (`storage::producers` holds
//! the rules).
//!
//! The jobs live in one file each: `state.rs` (the struct, opening, accessors), `commit.rs`
//! (append, the producer checks and the group-commit flush task), `read.rs` (reads, the
//! readable-bytes estimate, timestamp lookup), `maintain.rs` (retention, sync, close,
//! reconfiguration), `compact.rs` (log compaction of sealed segments), `producers.rs` (producer-table snapshots and expiry), `scrub.rs` (the
//! background CRC check of sealed segments), `fence.rs` (the corrupt batches it found,
//! which reads refuse to return) and `writer.rs` (the file writes of one
//! group-commit chunk).

mod commit;
mod compact;
mod fence;
mod maintain;
mod producers;
mod read;
mod scrub;
mod state;
mod writer;

pub use compact::{CompactionPace, CompactionStats};
pub use read::{FileRange, ReadOutcome};
pub use scrub::{CorruptBatch, ScrubStep};
pub use state::{AppendOutcome, PartitionLog};
