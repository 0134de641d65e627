//! One segment of a partition log: a `.log` file of record batches and its two index files,
//! named after the segment's base offset.
//!
//! Only the owning shard's flush task writes a segment, always at its end (`size`), and only
//! after a write succeeded does `size` move; readers never look past `size`. Files are
//! `compio` handles, cheap to clone, so a read or a sync takes a clone and holds no borrow of
//! the segment across an `.await`.

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use compio::buf::{BufResult, IntoInner, IoBuf};
use compio::fs::{File, OpenOptions};
use compio::io::AsyncReadAtExt;

use super::error::StorageError;
use super::index::{IndexPlanner, OffsetIndex, TimeIndex};
use super::recovery::RecoveredSegment;
use crate::protocol::batch::{BatchHeader, BATCH_HEADER_LEN};

/// File name suffix of a segment's log.
pub(crate) const LOG_SUFFIX: &str = "log";
/// File name suffix of a segment's offset index.
pub(crate) const INDEX_SUFFIX: &str = "index";
/// File name suffix of a segment's time index.
pub(crate) const TIME_INDEX_SUFFIX: &str = "timeindex";

/// Read size when walking batch headers.
const HEADER_SCAN_CHUNK: usize = 64 << 10;

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
}

async fn open_rw(path: &Path, create_new: bool) -> Result<File, StorageError> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if create_new {
        options.create(true).truncate(true);
    }
    options
        .open(path)
        .await
        .map_err(|e| StorageError::io(path, e))
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
        let index_file = open_rw(&files.index, true).await?;
        let time_index_file = open_rw(&files.time_index, true).await?;
        let log = open_rw(&files.log, true).await?;
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
        })
    }

    /// Opens a segment that recovery has checked.
    pub(crate) async fn open(
        dir: &Path,
        recovered: RecoveredSegment,
        now_ms: i64,
    ) -> Result<Segment, StorageError> {
        let files = SegmentFiles::new(dir, recovered.base_offset);
        let log = open_rw(&files.log, false).await?;
        let index_file = open_rw(&files.index, false).await?;
        let time_index_file = open_rw(&files.time_index, false).await?;
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
            planner: recovered.planner,
            created_ms: now_ms,
            dirty: false,
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

    /// Syncs the log data, then both indexes.
    pub(crate) async fn sync_files(
        log: &File,
        index: &File,
        time_index: &File,
        files: &SegmentFiles,
    ) -> Result<(), StorageError> {
        log.sync_data()
            .await
            .map_err(|e| StorageError::io(&files.log, e))?;
        index
            .sync_data()
            .await
            .map_err(|e| StorageError::io(&files.index, e))?;
        time_index
            .sync_data()
            .await
            .map_err(|e| StorageError::io(&files.time_index, e))
    }

    /// Removes the segment's files: the log first, so a crash in between leaves only orphan
    /// indexes, which recovery removes.
    pub(crate) async fn delete_files(files: &SegmentFiles) -> Result<(), StorageError> {
        for path in [&files.log, &files.index, &files.time_index] {
            match compio::fs::remove_file(path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io(path, e)),
            }
        }
        Ok(())
    }
}

/// Reads exactly `len` bytes at `pos`, which the caller knows are written.
pub(crate) async fn read_exact(
    file: &File,
    path: &Path,
    pos: u64,
    len: usize,
) -> Result<BytesMut, StorageError> {
    let buf = BytesMut::with_capacity(len).slice(..len);
    let BufResult(result, buf) = file.read_exact_at(buf, pos).await;
    result.map_err(|e| StorageError::io(path, e))?;
    let mut buf = buf.into_inner();
    // The read fills the slice; the buffer's own capacity may be larger.
    buf.truncate(len);
    Ok(buf)
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
