//! The file writes of one group-commit chunk: the batches in one gathered write, the index
//! entries alongside, the `fdatasync`, and the cut-back of every file when any of it fails.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use compio::fs::File;
use tracing::warn;

use crate::storage::direct::AlignedChunk;
use crate::storage::disk;
use crate::storage::error::StorageError;
use crate::storage::index::{
    IndexPlanner, OffsetEntry, TimeEntry, OFFSET_ENTRY_LEN, TIME_ENTRY_LEN,
};
use crate::storage::segment::{Segment, SegmentFiles};

/// The active segment as the flush task writes one chunk to it.
pub(super) struct ChunkTarget {
    pub(super) base_offset: i64,
    pub(super) files: SegmentFiles,
    pub(super) log: File,
    pub(super) index: File,
    pub(super) time_index: File,
    pub(super) planner: IndexPlanner,
    /// Set under `--log-writes direct`.
    pub(super) direct: Option<DirectTarget>,
}

/// What an `O_DIRECT` write of a chunk needs besides the chunk.
pub(super) struct DirectTarget {
    /// The log opened with `O_DIRECT`.
    pub(super) file: File,
    /// The bytes of the log from the block boundary before the chunk's position up to it,
    /// which the write repeats (`storage::direct`). `None` when the tail cache does not
    /// hold them (after a start): that chunk is written through the page cache instead,
    /// and cached, so the next one has them. They are never read back from the disk, where
    /// a bad read would be written back over acknowledged bytes.
    pub(super) head: Option<Bytes>,
}

/// Index entries to write with a chunk: the file images from the entries on disk on.
pub(super) struct IndexWrites {
    pub(super) index: Vec<u8>,
    /// Entries already in the index file.
    pub(super) index_at: usize,
    pub(super) time: Vec<u8>,
    /// Entries already in the time index file.
    pub(super) time_at: usize,
}

impl IndexWrites {
    /// The entries of `segment` not yet in its files, then `entries` and `time_entries` (a
    /// round's, not yet in its in-memory indexes).
    pub(super) fn pending(
        segment: &Segment,
        entries: &[OffsetEntry],
        time_entries: &[TimeEntry],
    ) -> Self {
        let mut index = segment.index.encode_from(segment.index_on_disk);
        index.extend(entries.iter().flat_map(OffsetEntry::encode));
        let mut time = segment.time_index.encode_from(segment.time_on_disk);
        time.extend(time_entries.iter().flat_map(TimeEntry::encode));
        IndexWrites {
            index,
            index_at: segment.index_on_disk,
            time,
            time_at: segment.time_on_disk,
        }
    }

    pub(super) fn none(index_at: usize, time_at: usize) -> IndexWrites {
        IndexWrites {
            index: Vec::new(),
            index_at,
            time: Vec::new(),
            time_at,
        }
    }
}

impl ChunkTarget {
    /// Writes `chunk` at `position` in one gathered write (one `O_DIRECT` write of an aligned
    /// copy, under `--log-writes direct`), then the index entries alongside (if `sync`) one
    /// `fdatasync` of the log. On failure, cuts every file back. Returns the chunk's bytes
    /// under `--log-writes direct`, for the segment's tail cache: pieces, each with its file
    /// position and the memory it holds.
    pub(super) async fn write(
        &self,
        chunk: Vec<BytesMut>,
        position: u64,
        index: IndexWrites,
        sync: bool,
    ) -> Result<Option<Vec<(u64, Bytes, u64)>>, StorageError> {
        let index_at = (index.index_at * OFFSET_ENTRY_LEN) as u64;
        let time_at = (index.time_at * TIME_ENTRY_LEN) as u64;
        let len = chunk.iter().map(BytesMut::len).sum::<usize>();
        let end = position + len as u64;
        let result = async {
            let written = match &self.direct {
                None => {
                    disk::write_log(&self.log, &self.files.log, chunk, position).await?;
                    None
                }
                Some(DirectTarget { head: None, .. }) => {
                    let chunk =
                        disk::write_log(&self.log, &self.files.log, chunk, position).await?;
                    // A copy: the batches are slices of whole request buffers, which the
                    // cache must not keep alive.
                    let mut bytes = BytesMut::with_capacity(len);
                    for batch in &chunk {
                        bytes.extend_from_slice(batch);
                    }
                    Some(vec![(position, bytes.freeze(), len as u64)])
                }
                Some(DirectTarget {
                    file,
                    head: Some(head_bytes),
                }) => {
                    let at = position - head_bytes.len() as u64;
                    let mut copy = AlignedChunk::with_capacity(head_bytes.len() + len);
                    copy.extend(head_bytes);
                    for batch in chunk {
                        copy.extend(&batch);
                    }
                    copy.pad();
                    let copy = disk::write_log_direct(file, &self.files.log, copy, at).await?;
                    Some(copy.into_cached(at, position, end))
                }
            };
            // The index files are not synced per round, so their writes need not wait for
            // the log's sync, nor it for them.
            let IndexWrites { index, time, .. } = index;
            let indexes = async {
                write_at(&self.index, &self.files.index, index, index_at).await?;
                write_at(&self.time_index, &self.files.time_index, time, time_at).await
            };
            let log_sync = async {
                if sync {
                    disk::sync_log(&self.log, &self.files.log, end).await?;
                }
                Ok(())
            };
            let (indexes, log_sync) = futures_util::future::join(indexes, log_sync).await;
            indexes.and(log_sync).map(|()| written)
        }
        .await;
        if result.is_err() {
            for (file, len, path) in [
                (&self.log, position, &self.files.log),
                (&self.index, index_at, &self.files.index),
                (&self.time_index, time_at, &self.files.time_index),
            ] {
                if let Err(e) = disk::set_len(file, path, len).await {
                    warn!(path = %path.display(), error = %e, "could not cut back a failed write");
                }
            }
        }
        result
    }
}

/// Writes `bytes` (if any) at `at` of `file`.
pub(super) async fn write_at(
    file: &File,
    path: &Path,
    bytes: Vec<u8>,
    at: u64,
) -> Result<(), StorageError> {
    if bytes.is_empty() {
        return Ok(());
    }
    disk::write_at(file, path, bytes, at).await
}
