//! One segment of a partition log: a `.log` file of record batches and its two index files,
//! named after the segment's base offset.
//!
//! Only the owning shard's flush task writes a segment, always at its end (`size`), and only
//! after a write succeeded does `size` move; readers never look past `size`. Files are
//! `compio` handles, cheap to clone, so a read or a sync takes a clone and holds no borrow of
//! the segment across an `.await`.

use std::alloc::Layout;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::BytesMut;
use compio::fs::File;

use super::direct::{align_up, TailCache, DIRECT_ALIGN};
use super::disk;
use super::error::StorageError;
use super::index::{IndexPlanner, OffsetIndex, TimeIndex};
use crate::protocol::batch::{BatchHeader, BATCH_HEADER_LEN};

/// The state of one segment as found on disk, repaired.
#[derive(Debug)]
pub(crate) struct RecoveredSegment {
    /// Offset of the segment's first batch (from its file name).
    pub(crate) base_offset: i64,
    /// Bytes of whole batches in the log.
    pub(crate) size: u64,
    /// Offset after the segment's last batch.
    pub(crate) next_offset: i64,
    /// The offset index, consistent with the log.
    pub(crate) index: OffsetIndex,
    /// The time index, consistent with the log.
    pub(crate) time_index: TimeIndex,
    /// Where index planning continues on the next append.
    pub(crate) planner: IndexPlanner,
}

/// File name suffix of a segment's log.
pub(crate) const LOG_SUFFIX: &str = "log";
/// File name suffix of a segment's offset index.
pub(crate) const INDEX_SUFFIX: &str = "index";
/// File name suffix of a segment's time index.
pub(crate) const TIME_INDEX_SUFFIX: &str = "timeindex";

/// Read size when walking batch headers.
const HEADER_SCAN_CHUNK: usize = 64 << 10;

/// Smallest and largest run of zeros one preallocation writes (see [`preallocate`]).
const PREALLOCATE_MIN: u64 = 64 << 10;
const PREALLOCATE_MAX: u64 = 1 << 20;
/// With paced rounds, a preallocation covers at most this many rounds of the size of the
/// last one (within the bounds above); the next starts when less than two spans are left.
const PREALLOCATE_ROUNDS: u64 = 8;
/// Size of the shared zero buffer preallocation writes from.
const ZEROS_LEN: usize = 1 << 20;

/// The paths of a segment's three files.
#[derive(Debug, Clone)]
pub(crate) struct SegmentFiles {
    pub(crate) log: PathBuf,
    pub(crate) index: PathBuf,
    pub(crate) time_index: PathBuf,
}

impl SegmentFiles {
    /// Paths of the segment with `base_offset` in `dir`.
    pub(crate) fn new(dir: &Path, base_offset: i64) -> SegmentFiles {
        let name = |suffix: &str| dir.join(format!("{base_offset:020}.{suffix}"));
        SegmentFiles {
            log: name(LOG_SUFFIX),
            index: name(INDEX_SUFFIX),
            time_index: name(TIME_INDEX_SUFFIX),
        }
    }
}

/// An open segment and its in-memory indexes.
pub(crate) struct Segment {
    pub(crate) base_offset: i64,
    pub(crate) files: SegmentFiles,
    pub(crate) log: File,
    pub(crate) index_file: File,
    pub(crate) time_index_file: File,
    /// Bytes of whole batches written to the log.
    pub(crate) size: u64,
    /// Offset after the last batch written.
    pub(crate) next_offset: i64,
    pub(crate) index: OffsetIndex,
    pub(crate) time_index: TimeIndex,
    pub(crate) planner: IndexPlanner,
    /// Wall-clock milliseconds when this process created or opened the segment (for
    /// `segment_ms`).
    pub(crate) created_ms: i64,
    /// Bytes were written since the last `fdatasync`.
    pub(crate) dirty: bool,
    /// Entries of `index` already in the index file; the rest wait for the next index
    /// write (the flush task writes them in batches, and at a roll or close).
    pub(crate) index_on_disk: usize,
    /// Entries of `time_index` already in the time index file.
    pub(crate) time_on_disk: usize,
    /// The log file holds written, synced blocks (zeros past `size`) up to here, so an append
    /// below it changes no file metadata and its `fdatasync` flushes data alone. See
    /// [`preallocate`].
    pub(crate) preallocated: u64,
    /// A preallocation is writing zeros from this position on.
    pub(crate) preallocating: Option<u64>,
    /// A read found an offset index entry that does not point at the batch it names: the
    /// index file was removed (the next start rebuilds it from the log) and the warning
    /// logged, once.
    pub(crate) index_damaged: bool,
    /// The log opened with `O_DIRECT`, under `--log-writes direct`: opened on the segment's
    /// first append.
    pub(crate) direct: Option<File>,
    /// The newest bytes appended with `O_DIRECT`, which reads take from memory
    /// (`storage::direct`). Empty under buffered writes; a sealed segment keeps what the
    /// partition's `--tail-cache-mb` and the shard's `--tail-cache-shard-mb` still hold of
    /// it.
    pub(crate) tail: TailCache,
    /// Under `--log-writes direct`, reads have asked the kernel to read the log ahead into
    /// the page cache up to here (`PartitionLog::prefetch`).
    pub(crate) read_ahead_to: u64,
}

impl Segment {
    /// Creates the empty segment `base_offset` in `dir` (replacing stale files of that name).
    pub(crate) async fn create(
        dir: &Path,
        base_offset: i64,
        now_ms: i64,
    ) -> Result<Segment, StorageError> {
        let files = SegmentFiles::new(dir, base_offset);
        // Indexes first: a crash in between leaves orphan indexes, which recovery removes.
        let index_file = disk::open(&files.index, true).await?;
        let time_index_file = disk::open(&files.time_index, true).await?;
        let log = disk::open(&files.log, true).await?;
        disk::log_reset(&files.log, 0);
        Ok(Segment {
            base_offset,
            files,
            log,
            index_file,
            time_index_file,
            size: 0,
            next_offset: base_offset,
            index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            planner: IndexPlanner::new(),
            created_ms: now_ms,
            dirty: false,
            index_on_disk: 0,
            time_on_disk: 0,
            preallocated: 0,
            preallocating: None,
            index_damaged: false,
            direct: None,
            tail: TailCache::default(),
            read_ahead_to: 0,
        })
    }

    /// Opens a segment that recovery has checked.
    pub(crate) async fn open(
        dir: &Path,
        recovered: RecoveredSegment,
        now_ms: i64,
    ) -> Result<Segment, StorageError> {
        let files = SegmentFiles::new(dir, recovered.base_offset);
        // Recovery rewrote both index files to match its indexes.
        let (index_on_disk, time_on_disk) = (recovered.index.len(), recovered.time_index.len());
        let log = disk::open(&files.log, false).await?;
        let index_file = disk::open(&files.index, false).await?;
        let time_index_file = disk::open(&files.time_index, false).await?;
        Ok(Segment {
            base_offset: recovered.base_offset,
            files,
            log,
            index_file,
            time_index_file,
            size: recovered.size,
            next_offset: recovered.next_offset,
            index: recovered.index,
            time_index: recovered.time_index,
            index_on_disk,
            time_on_disk,
            planner: recovered.planner,
            created_ms: now_ms,
            dirty: false,
            // Recovery trimmed the file to its batches.
            preallocated: recovered.size,
            preallocating: None,
            index_damaged: false,
            direct: None,
            tail: TailCache::default(),
            read_ahead_to: 0,
        })
    }

    /// Largest batch timestamp in the segment, `i64::MIN` if it is empty.
    pub(crate) fn max_timestamp(&self) -> i64 {
        self.planner.max_timestamp()
    }

    /// Position to start scanning from to find the batch holding `offset` (no later than it).
    pub(crate) fn position_for(&self, offset: i64) -> u64 {
        let relative = offset - self.base_offset;
        if relative <= 0 {
            return 0;
        }
        let relative = u32::try_from(relative).unwrap_or(u32::MAX);
        self.index
            .lookup(relative)
            .map_or(0, |e| u64::from(e.position))
    }

    /// Position to start scanning from to find the first batch whose max timestamp is at
    /// least `timestamp`.
    pub(crate) fn position_for_timestamp(&self, timestamp: i64) -> u64 {
        match self.time_index.lookup_below(timestamp) {
            Some(entry) => self.position_for(self.base_offset + i64::from(entry.relative_offset)),
            None => 0,
        }
    }

    /// Syncs the log data, whose batches end at `log_len`, then both indexes.
    pub(crate) async fn sync_files(
        log: &File,
        log_len: u64,
        index: &File,
        time_index: &File,
        files: &SegmentFiles,
    ) -> Result<(), StorageError> {
        disk::sync_log(log, &files.log, log_len).await?;
        disk::sync_data(index, &files.index).await?;
        disk::sync_data(time_index, &files.time_index).await
    }

    /// Removes the segment's files: the log first, so a crash in between leaves only orphan
    /// indexes, which recovery removes.
    pub(crate) async fn delete_files(files: &SegmentFiles) -> Result<(), StorageError> {
        for path in [&files.log, &files.index, &files.time_index] {
            disk::remove(path).await?;
        }
        Ok(())
    }
}

/// How much to keep preallocated past the end `end` of a segment's batches: the segment's
/// own size, between 64 KiB and 1 MiB, so a cold partition costs little disk and a busy one
/// seldom reaches the end of its preallocation.
///
/// When rounds are paced (`--group-commit-interval-us`), `paced_round` is the size of the
/// round just written, and the span is at most [`PREALLOCATE_ROUNDS`] such rounds: the
/// device flush after a span also writes its zeros back, and on the VMs here a 1 MiB span
/// made the next round's fdatasync take 1.1–1.4 ms instead of about 80 µs; paced rounds
/// leave the device the time for the more frequent small spans. Unpaced, small spans cost
/// more than they save: each one's sync commits the file's new size, and at the rate of
/// unpaced rounds those commits held the rounds up (docs/PERFORMANCE.md, "Why the durable
/// latency target is not met here").
pub(crate) fn preallocate_span(end: u64, paced_round: Option<u64>) -> u64 {
    let rounds = paced_round.map_or(u64::MAX, |r| r.saturating_mul(PREALLOCATE_ROUNDS));
    align_up(end.min(rounds).clamp(PREALLOCATE_MIN, PREALLOCATE_MAX))
}

/// A page-aligned buffer of zeros, allocated once per process.
fn zeros() -> &'static [u8] {
    static ZEROS: OnceLock<&'static [u8]> = OnceLock::new();
    ZEROS.get_or_init(|| {
        let layout = Layout::from_size_align(ZEROS_LEN, DIRECT_ALIGN as usize)
            .expect("constant layout is valid");
        // SAFETY: the layout has a non-zero size; the zeroed allocation is valid for
        // `ZEROS_LEN` bytes and is leaked, so it lives for the rest of the process.
        unsafe {
            let ptr = std::alloc::alloc_zeroed(layout);
            if ptr.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            std::slice::from_raw_parts(ptr, ZEROS_LEN)
        }
    })
}

/// Writes zeros to `[from, to)` of the log at `path` (both `O_DIRECT`-aligned) and syncs
/// them.
///
/// Under `--fsync always` each group-commit round ends in an `fdatasync`. When the round
/// grew the file, ext4 must also commit the new size and block allocation to its journal;
/// when the round overwrote blocks that are already allocated and written, the flush is data
/// only. On this machine that is about 170 µs against 90–120 µs at the median per 4 KiB
/// append (`tuning/fdatasync.py`, docs/PERFORMANCE.md). So the flush task keeps zeros
/// written ahead of the appends. They are written with `O_DIRECT`: buffered zeros would be
/// dirty pages that the appends' own `fdatasync` would then have to write out.
/// (`fallocate` is no help: it leaves unwritten extents, whose conversion on the first write
/// costs the same journal commit.)
pub(crate) async fn preallocate(path: &Path, from: u64, to: u64) -> Result<(), StorageError> {
    debug_assert!(from.is_multiple_of(DIRECT_ALIGN) && to.is_multiple_of(DIRECT_ALIGN));
    let file = disk::open_direct(path).await?;
    let mut at = from;
    while at < to {
        let len = (to - at).min(ZEROS_LEN as u64) as usize;
        disk::write_at(&file, path, &zeros()[..len], at).await?;
        at += len as u64;
    }
    disk::sync_data(&file, path).await
}

/// Reads `[from, to)` of the log at `path` into the page cache, in the background.
///
/// [`preallocate`]'s zeros bypass the page cache. An append that ends inside a page that the
/// file holds but the cache does not makes the kernel read that page first (about 35 µs per
/// round here), so the zeros are read ahead once they are written. Reads of a log written
/// with `O_DIRECT` ask for the bytes after them the same way (`storage::direct`). This is
/// only advice to the kernel: nothing waits for it, and a failure changes nothing.
pub(crate) fn read_ahead(path: &Path, from: u64, to: u64) {
    if !disk::real() {
        return;
    }
    let path = path.to_path_buf();
    // Detached: dropping compio's handle would cancel the task before it ran.
    compio::runtime::spawn_blocking(move || {
        if let Ok(file) = std::fs::File::open(&path) {
            // SAFETY: a plain syscall on a descriptor this closure owns.
            unsafe {
                libc::posix_fadvise(
                    file.as_raw_fd(),
                    from as libc::off_t,
                    (to - from) as libc::off_t,
                    libc::POSIX_FADV_WILLNEED,
                );
            }
        }
    })
    .detach();
}

/// Reads exactly `len` bytes at `pos`, which the caller knows are written.
pub(crate) async fn read_exact(
    file: &File,
    path: &Path,
    pos: u64,
    len: usize,
) -> Result<BytesMut, StorageError> {
    disk::read_exact_at(file, path, pos, len).await
}

/// Walks the batch headers of `file` from `start` (a batch start) to `end`, reading only
/// around headers, and calls `visit(position, header)` until it returns `true`.
pub(crate) async fn scan_headers(
    file: &File,
    path: &Path,
    start: u64,
    end: u64,
    mut visit: impl FnMut(u64, &BatchHeader) -> bool,
) -> Result<(), StorageError> {
    let mut pos = start;
    while pos + BATCH_HEADER_LEN as u64 <= end {
        let len = (end - pos).min(HEADER_SCAN_CHUNK as u64) as usize;
        let buf = read_exact(file, path, pos, len).await?;
        let mut at = 0usize;
        while at + BATCH_HEADER_LEN <= buf.len() {
            let header = BatchHeader::parse(&buf[at..]).map_err(|e| {
                StorageError::corrupt(
                    path,
                    format!("bad batch header at byte {}: {e}", pos + at as u64),
                )
            })?;
            if visit(pos + at as u64, &header) {
                return Ok(());
            }
            at += header.total_len();
        }
        pos += at as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preallocation_span_follows_the_segment_and_paced_rounds_within_bounds() {
        // A young segment: its own size, at least 64 KiB.
        assert_eq!(preallocate_span(10_000, None), 64 << 10);
        assert_eq!(preallocate_span(300 << 10, None), 300 << 10);
        assert_eq!(preallocate_span(300 << 10, Some(1 << 20)), 300 << 10);
        // A large segment: 1 MiB unpaced; eight rounds when paced, in whole blocks.
        assert_eq!(preallocate_span(100 << 20, None), 1 << 20);
        assert_eq!(preallocate_span(100 << 20, Some(20_000)), align_up(160_000));
        assert_eq!(preallocate_span(100 << 20, Some(1_000)), 64 << 10);
        // Large paced rounds: at most 1 MiB.
        assert_eq!(preallocate_span(100 << 20, Some(1 << 20)), 1 << 20);
        assert_eq!(preallocate_span(u64::MAX / 2, Some(u64::MAX)), 1 << 20);
    }
}
