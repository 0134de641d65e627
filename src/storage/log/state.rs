//! The log's state and its opening: the struct every job works on, and what a caller of
//! `append` waits in. The jobs (commit, read, maintain) add their methods in their own
//! files and import this one; it imports none of them.

use std::cell::{Cell, RefCell, RefMut};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tracing::debug;

use crate::local::{Notify, OneshotSender};
use crate::protocol::batch::ValidBatch;
use crate::storage::config::{FsyncPolicy, LogConfig};
use crate::storage::disk;
use crate::storage::error::StorageError;
use crate::storage::fence_file::{self, Fence};
use crate::storage::producers::ProducerTable;
use crate::storage::recovery;
use crate::storage::runs::Runs;
use crate::storage::segment::Segment;

/// Where a successful append put the caller's batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Offset of the first record of the call's first batch.
    pub base_offset: i64,
    /// Offset of the last record of the call's last batch.
    pub last_offset: i64,
}

/// A caller waiting in the group-commit queue.
pub(super) struct PendingAppend {
    pub(super) batches: Vec<ValidBatch>,
    pub(super) reply: OneshotSender<Result<AppendOutcome, StorageError>>,
}

/// One partition's log. Owned by one shard thread, used through `Rc<PartitionLog>`.
pub struct PartitionLog {
    pub(super) dir: PathBuf,
    pub(super) config: RefCell<LogConfig>,
    /// Sorted by base offset; never empty while open. The last one is active.
    pub(super) segments: RefCell<Vec<Segment>>,
    pub(super) high_watermark: Cell<i64>,
    pub(super) log_start: Cell<i64>,
    pub(super) closed: Cell<bool>,
    pub(super) queue: RefCell<Vec<PendingAppend>>,
    /// A flush task is running.
    pub(super) flushing: Cell<bool>,
    /// Notified when the flush task exits.
    pub(super) flush_idle: Notify,
    pub(super) appended: Notify,
    /// Group-commit rounds run so far.
    pub(super) flushes: Cell<u64>,
    /// When the last group-commit round started: the next one starts no sooner than
    /// [`LogConfig::group_commit_interval`] after it.
    pub(super) last_round: Cell<Option<Instant>>,
    /// Notified when a preallocation of the active segment ends.
    pub(super) preallocated: Notify,
    /// Preallocation failed once (say, the file system refuses `O_DIRECT`); not tried again.
    pub(super) preallocation_off: Cell<bool>,
    /// The log file could not be opened with `O_DIRECT` (a file system without it): appends are
    /// buffered whatever `--log-writes` says; not tried again.
    pub(super) direct_off: Cell<bool>,
    /// The idempotent producers' state as of the high watermark: every batch written is
    /// recorded, none queued or being written is (the flush task records a chunk's batches
    /// once it is written; `commit.rs`).
    pub(super) producers: RefCell<ProducerTable>,
    /// Offsets of the producer snapshots on disk, oldest first (`producers.rs`).
    pub(super) snapshots: RefCell<Vec<i64>>,
    /// Log bytes written since the last producer snapshot.
    pub(super) unsnapshotted: Cell<u64>,
    /// The partition directory's device and inode at open: a deleted topic's directory is
    /// renamed away, and a topic created again under its name gets a new one at the old
    /// path, which a late snapshot must not land in (`producers.rs`).
    pub(super) dir_id: (u64, u64),
    /// The run this log was opened in, which its clean-stop marker names (none for a log
    /// opened outside a broker: it leaves no marker).
    pub(super) run: Option<u64>,
    /// Where the scrubber goes on: the first sealed segment whose base offset is at least
    /// the first field, at the byte position in the second if it is that segment,
    /// and the offset the batch there should start at (`scrub.rs`).
    pub(super) scrub_at: Cell<(i64, u64, i64)>,
    /// Corrupt batches reads refuse to return, in log order (`fence.rs`).
    pub(super) fences: RefCell<Vec<Fence>>,
    /// Sealed segments below this base offset hold at most one record per key, as of the
    /// last compaction (`compact.rs`); the ones from it on are dirty. Not stored: after a
    /// start the whole log counts as dirty once.
    pub(super) cleaned_to: Cell<i64>,
    /// When the oldest tombstone the last compaction kept may go (`delete.retention.ms`).
    pub(super) tombstones_due: Cell<Option<i64>>,
    /// When the oldest record the last compaction kept only for `min.compaction.lag.ms`
    /// may go: until then a pass would find the same segments dirty again.
    pub(super) young_due: Cell<Option<i64>>,
    /// A compaction is running: retention leaves the segments alone meanwhile.
    pub(super) compacting: Cell<bool>,
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

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Makes a directory entry change (a new segment file) durable.
pub(super) async fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    disk::sync_dir(dir).await
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
        Self::open_in_run(dir, config, initial_offset, Runs::default()).await
    }

    /// Like [`PartitionLog::open_at`], in a broker's run: a clean-stop marker the previous
    /// run left spares recovery most of its checks, and a clean close leaves one naming this
    /// run (`storage::runs`).
    pub async fn open_in_run(
        dir: PathBuf,
        config: LogConfig,
        initial_offset: i64,
        runs: Runs,
    ) -> Result<PartitionLog, StorageError> {
        let opened = Self::recover_and_open(dir.clone(), config, initial_offset, runs).await;
        if opened.is_err() {
            // Recovery may have written before it failed, and the next try in this run
            // would trust the marker all the same.
            recovery::forget_clean_stop(&dir);
        }
        opened
    }

    async fn recover_and_open(
        dir: PathBuf,
        config: LogConfig,
        initial_offset: i64,
        runs: Runs,
    ) -> Result<PartitionLog, StorageError> {
        let recovered = recovery::recover_dir(&dir, &config, runs)?;
        let now = now_ms();
        let (producers, snapshots) = recovery::recover_producers(&dir, &recovered, now)?;
        let dir_id = std::fs::metadata(&dir)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| StorageError::io(&dir, e))?;
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
        let fences = fence_file::load(&dir, &segments);
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
            last_round: Cell::new(None),
            preallocated: Notify::new(),
            preallocation_off: Cell::new(false),
            direct_off: Cell::new(false),
            producers: RefCell::new(producers),
            snapshots: RefCell::new(snapshots),
            unsnapshotted: Cell::new(0),
            dir_id,
            run: runs.current,
            scrub_at: Cell::new((i64::MIN, 0, 0)),
            fences: RefCell::new(fences),
            cleaned_to: Cell::new(i64::MIN),
            tombstones_due: Cell::new(None),
            young_due: Cell::new(None),
            compacting: Cell::new(false),
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

    /// Segment files (the active one included).
    pub fn segment_count(&self) -> usize {
        self.segments.borrow().len()
    }

    /// Group-commit rounds run so far.
    #[cfg(test)]
    pub(crate) fn flush_count(&self) -> u64 {
        self.flushes.get()
    }

    /// The segment that starts at `base`, if the log still has it.
    pub(super) fn segment_mut(&self, base: i64) -> Option<RefMut<'_, Segment>> {
        RefMut::filter_map(self.segments.borrow_mut(), |segments| {
            segments.iter_mut().find(|s| s.base_offset == base)
        })
        .ok()
    }
}
