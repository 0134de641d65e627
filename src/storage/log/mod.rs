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
//! Invariants: offsets are dense and never reused (the log start only moves forward by whole
//! segments), readers see only bytes below the high watermark, and the bytes read are exactly
//! the bytes appended (with their assigned base offsets).
//!
//! The jobs live in one file each: `commit.rs` (append and the group-commit flush task),
//! `read.rs` (reads, the readable-bytes estimate, timestamp lookup), `maintain.rs`
//! (retention, sync, close, reconfiguration) and `writer.rs` (the file writes of one
//! group-commit chunk).

mod commit;
mod maintain;
mod read;
mod writer;

use std::cell::{Cell, RefCell, RefMut};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use compio::fs::File;
use tracing::debug;

use super::config::{FsyncPolicy, LogConfig};
use super::error::StorageError;
use super::recovery;
use super::segment::Segment;
use crate::local::Notify;

pub use commit::AppendOutcome;
use commit::PendingAppend;
pub use read::{FileRange, ReadOutcome};

/// One partition's log. Owned by one shard thread, used through `Rc<PartitionLog>`.
pub struct PartitionLog {
    dir: PathBuf,
    config: RefCell<LogConfig>,
    /// Sorted by base offset; never empty while open. The last one is active.
    segments: RefCell<Vec<Segment>>,
    high_watermark: Cell<i64>,
    log_start: Cell<i64>,
    closed: Cell<bool>,
    queue: RefCell<Vec<PendingAppend>>,
    /// A flush task is running.
    flushing: Cell<bool>,
    /// Notified when the flush task exits.
    flush_idle: Notify,
    appended: Notify,
    /// Group-commit rounds run so far.
    flushes: Cell<u64>,
    /// Notified when a preallocation of the active segment ends.
    preallocated: Notify,
    /// Preallocation failed once (say, the file system refuses `O_DIRECT`); not tried again.
    preallocation_off: Cell<bool>,
}

impl std::fmt::Debug for PartitionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLog")
            .field("dir", &self.dir)
            .field("log_start", &self.log_start.get())
            .field("high_watermark", &self.high_watermark.get())
            .field("segments", &self.segments.borrow().len())
            .field("closed", &self.closed.get())
            .finish()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Makes a directory entry change (a new segment file) durable.
async fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    let handle = File::open(dir)
        .await
        .map_err(|e| StorageError::io(dir, e))?;
    handle
        .sync_all()
        .await
        .map_err(|e| StorageError::io(dir, e))
}

impl PartitionLog {
    /// Opens (creating the directory if missing) and recovers the log in `dir`. An empty
    /// directory starts at offset 0.
    pub async fn open(dir: PathBuf, config: LogConfig) -> Result<PartitionLog, StorageError> {
        Self::open_at(dir, config, 0).await
    }

    /// Like [`PartitionLog::open`], but an empty directory starts at `initial_offset`.
    pub async fn open_at(
        dir: PathBuf,
        config: LogConfig,
        initial_offset: i64,
    ) -> Result<PartitionLog, StorageError> {
        let recovered = recovery::recover_dir(&dir, &config)?;
        let now = now_ms();
        let mut segments = Vec::with_capacity(recovered.len().max(1));
        if recovered.is_empty() {
            segments.push(Segment::create(&dir, initial_offset.max(0), now).await?);
            if config.fsync != FsyncPolicy::Never {
                // The new segment's entry, and the entries that make the partition directory
                // and its topic directory reachable (`<data>/<topic>/<partition>`).
                sync_dir(&dir).await?;
                for ancestor in dir.ancestors().skip(1).take(2) {
                    sync_dir(ancestor).await?;
                }
            }
        } else {
            for r in recovered {
                segments.push(Segment::open(&dir, r, now).await?);
            }
        }
        let log_start = segments.first().map_or(0, |s| s.base_offset);
        let high_watermark = segments.last().map_or(0, |s| s.next_offset);
        debug!(
            dir = %dir.display(),
            segments = segments.len(),
            log_start,
            high_watermark,
            "partition log opened"
        );
        Ok(PartitionLog {
            dir,
            config: RefCell::new(config),
            segments: RefCell::new(segments),
            high_watermark: Cell::new(high_watermark),
            log_start: Cell::new(log_start),
            closed: Cell::new(false),
            queue: RefCell::new(Vec::new()),
            flushing: Cell::new(false),
            flush_idle: Notify::new(),
            appended: Notify::new(),
            flushes: Cell::new(0),
            preallocated: Notify::new(),
            preallocation_off: Cell::new(false),
        })
    }

    /// The next offset to be assigned; everything below it is readable.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.get()
    }

    /// The first offset still in the log.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start.get()
    }

    /// Notified every time the high watermark advances.
    pub fn appended(&self) -> &Notify {
        &self.appended
    }

    /// Total bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.borrow().iter().map(|s| s.size).sum()
    }

    /// Group-commit rounds run so far.
    #[cfg(test)]
    pub(crate) fn flush_count(&self) -> u64 {
        self.flushes.get()
    }

    /// The segment that starts at `base`, if the log still has it.
    fn segment_mut(&self, base: i64) -> Option<RefMut<'_, Segment>> {
        RefMut::filter_map(self.segments.borrow_mut(), |segments| {
            segments.iter_mut().find(|s| s.base_offset == base)
        })
        .ok()
    }
}
