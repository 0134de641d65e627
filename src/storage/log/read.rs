//! Reads: whole batches into a buffer, a file range to splice, the readable-bytes estimate
//! a long-poll waits on, and the lookup by timestamp. Only batch headers are parsed, and
//! nothing at or past the high watermark is returned.
//!
//! An index entry is a hint, never trusted blindly: when a scan starts at one, the batch
//! header at its position (in the bytes the scan reads anyway) must parse as a v2 batch
//! with the entry's offset as its base and end inside the segment ([`entry_problem`]). One that does not (a damaged
//! index file that still looked sane at recovery) is skipped for the entry before it, so
//! reads keep working; the first such entry of a segment logs a warning and removes the
//! index file, so the next start rebuilds it from the log.
//!
//! A fenced batch (`fence.rs`) is never returned: a read of one of its offsets is a
//! [`StorageError::Fenced`], and a read that starts before it ends before it.

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use compio::fs::File;
use tracing::warn;

use super::state::PartitionLog;
use crate::protocol::batch::{BatchHeader, BATCH_HEADER_LEN};
use crate::storage::config::LogWrites;
use crate::storage::direct;
use crate::storage::error::StorageError;
use crate::storage::segment;

/// Batches read from the log.
#[derive(Debug, Clone)]
pub struct ReadOutcome {
    /// Whole stored batches, byte-identical to what was appended (with assigned offsets).
    pub records: Bytes,
    /// The next offset to be assigned, the end of the readable log.
    pub high_watermark: i64,
    /// The first offset still in the log.
    pub log_start_offset: i64,
}

/// A byte range of a segment file, to be sent as it is (see [`PartitionLog::read_range`]).
/// The file handle keeps the segment readable even if retention deletes it meanwhile.
#[derive(Debug, Clone)]
pub struct FileRange {
    /// The segment's log file.
    pub file: File,
    /// First byte.
    pub position: u64,
    /// Bytes to send.
    pub len: usize,
    /// The range's bytes, when the log had them in memory (the active segment's tail
    /// under `--log-writes direct`), as slices of the cached chunks: sent as they are
    /// instead of from the file, one `writev` piece each.
    pub cached: Option<Vec<Bytes>>,
}

impl FileRange {
    /// Reads `len` bytes of the range from its `skip`th byte into memory: for a connection
    /// that cannot splice them (TLS encrypts in user space).
    pub async fn read_part(&self, skip: usize, len: usize) -> Result<BytesMut, StorageError> {
        let len = len.min(self.len.saturating_sub(skip));
        if let Some(cached) = &self.cached {
            return Ok(direct::copy_range(cached, skip, len));
        }
        crate::storage::disk::read_exact_at(
            &self.file,
            Path::new("a segment file"),
            self.position + skip as u64,
            len,
        )
        .await
    }
}

impl PartitionLog {
    /// Reads whole batches from the one containing `offset`, at most `max_bytes` of them
    /// unless the first batch alone is bigger (then it is returned whole). At most one segment
    /// per call; only batches below the high watermark.
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadOutcome, StorageError> {
        self.read_batches(offset, max_bytes, true).await
    }

    /// [`PartitionLog::read`], counting the bytes returned in the shard's metrics by where
    /// they were read (`eventflow_log_read_bytes_total`) if `counted`: reads for clients are,
    /// the broker's own passes over a log (compaction, the replay of an internal log at
    /// start) are not.
    pub(crate) async fn read_batches(
        &self,
        offset: i64,
        max_bytes: usize,
        counted: bool,
    ) -> Result<ReadOutcome, StorageError> {
        if self.closed.get() {
            return Err(StorageError::Closed);
        }
        let high_watermark = self.high_watermark.get();
        let log_start = self.log_start.get();
        let outcome = |records: Bytes| ReadOutcome {
            records,
            high_watermark,
            log_start_offset: log_start,
        };
        if offset < log_start || offset > high_watermark {
            return Err(StorageError::OffsetOutOfRange {
                requested: offset,
                log_start,
                high_watermark,
            });
        }
        if offset == high_watermark {
            return Ok(outcome(Bytes::new()));
        }
        if let Some(fenced) = self.fenced_offset(offset) {
            return Err(fenced);
        }
        let interval = u64::from(self.config.borrow().index_interval_bytes);
        let mut after_base: Option<i64> = None;
        loop {
            // The segment to look in: the one holding `offset`, or the next one if an
            // earlier attempt found nothing.
            let Some(SegmentStart {
                log,
                path,
                mut position,
                end,
                base,
                mut entry,
            }) = self.segment_from(offset, after_base)
            else {
                return Ok(outcome(Bytes::new()));
            };
            after_base = Some(base);
            let mut at_least = 0u64;
            while position + BATCH_HEADER_LEN as u64 <= end {
                let want = (max_bytes as u64)
                    .saturating_add(interval)
                    .max(at_least)
                    .max(BATCH_HEADER_LEN as u64)
                    .min(end - position);
                let (mut buf, from_memory) = self
                    .read_log(base, &log, &path, position, want as usize)
                    .await?;
                if let Some(claimed) = entry.take() {
                    if let Some(problem) = entry_problem(&buf, position, claimed, end) {
                        self.index_entry_damaged(base, claimed, position, &problem)
                            .await;
                        position = self
                            .start_position(&log, &path, base, end, claimed - 1)
                            .await?;
                        continue;
                    }
                }
                let (at, first) = find_batch(&buf, &path, position, offset)?;
                let Some(first) = first else {
                    position += at as u64;
                    continue;
                };
                if first.base_offset >= high_watermark {
                    return Ok(outcome(Bytes::new()));
                }
                if let Some(fenced) = self.fenced_byte(base, position + at as u64) {
                    return Err(fenced);
                }
                if position + (at + first.total_len()) as u64 > end {
                    return Err(StorageError::corrupt(
                        &path,
                        format!(
                            "the batch at byte {} runs past the segment end {end}",
                            position + at as u64
                        ),
                    ));
                }
                if at + first.total_len() > buf.len() {
                    // The first batch is not all in the buffer: read again from its start.
                    position += at as u64;
                    at_least = first.total_len() as u64;
                    continue;
                }
                let mut stop = at + first.total_len();
                // Never into a fenced batch: the read ends before it.
                let fence = self
                    .fence_limit(base, position + at as u64)
                    .map_or(usize::MAX, |limit| (limit - position) as usize);
                while stop + BATCH_HEADER_LEN <= buf.len() && stop < fence {
                    let Ok(header) = BatchHeader::parse(&buf[stop..]) else {
                        break;
                    };
                    let next_stop = stop + header.total_len();
                    if header.base_offset >= high_watermark
                        || next_stop > buf.len()
                        || next_stop - at > max_bytes
                    {
                        break;
                    }
                    stop = next_stop;
                }
                buf.truncate(stop);
                let _skipped = buf.split_to(at);
                if counted {
                    crate::metrics::shard::log_range_read(buf.len() as u64, from_memory);
                }
                return Ok(outcome(buf));
            }
        }
    }

    /// `len` bytes at `position` of segment `base`: from its tail cache if they are there
    /// (`--log-writes direct`), else from the file; and whether they came from the cache.
    async fn read_log(
        &self,
        base: i64,
        log: &File,
        path: &Path,
        position: u64,
        len: usize,
    ) -> Result<(Bytes, bool), StorageError> {
        if let Some(pieces) = self.cached(base, position, len) {
            return Ok((direct::concat(pieces), true));
        }
        self.prefetch(base, position + len as u64);
        let read = segment::read_exact(log, path, position, len).await?;
        Ok((read.freeze(), false))
    }

    /// Under `--log-writes direct`, after a read of segment `base` up to `end` that the tail
    /// cache did not serve: asks the kernel to read the next [`direct::PREFETCH_BYTES`] of the
    /// log into the page cache, unless an earlier request already covers half of that.
    fn prefetch(&self, base: i64, end: u64) {
        if self.config.borrow().writes != LogWrites::Direct {
            return;
        }
        let mut segments = self.segments.borrow_mut();
        let i = segments.partition_point(|s| s.base_offset < base);
        let Some(segment) = segments.get_mut(i).filter(|s| s.base_offset == base) else {
            return;
        };
        if segment.read_ahead_to >= end + direct::PREFETCH_BYTES / 2 {
            return;
        }
        let from = segment.read_ahead_to.max(end);
        // Never the block the next append rewrites: the tail cache serves it.
        let to = (end + direct::PREFETCH_BYTES).min(direct::align_down(segment.size));
        if from < to {
            segment.read_ahead_to = to;
            segment::read_ahead(&segment.files.log, from, to);
        }
    }

    /// `len` bytes at `position` of segment `base`, if its tail cache holds them: slices of
    /// the cached chunks the range spans.
    fn cached(&self, base: i64, position: u64, len: usize) -> Option<Vec<Bytes>> {
        let segments = self.segments.borrow();
        let i = segments.partition_point(|s| s.base_offset < base);
        segments
            .get(i)
            .filter(|s| s.base_offset == base)?
            .tail
            .get_chunks(position, len)
    }

    /// The segment to read `offset` from: the one holding it, or (`after_base` set) the
    /// segment after the one with that base, when the earlier one had nothing more. Returns
    /// its log file, path, the position to start scanning at, its size, its base, and the
    /// offset of the index entry that position comes from (`None`: byte 0, no entry), which
    /// the caller checks against the header it reads there ([`entry_problem`]).
    fn segment_from(&self, offset: i64, after_base: Option<i64>) -> Option<SegmentStart> {
        let segments = self.segments.borrow();
        let index = match after_base {
            None => segments
                .partition_point(|s| s.base_offset <= offset)
                .saturating_sub(1),
            Some(base) => segments.partition_point(|s| s.base_offset <= base),
        };
        let segment = segments.get(index)?;
        let relative = offset - segment.base_offset;
        let entry = if relative > 0 {
            segment
                .index
                .lookup(u32::try_from(relative).unwrap_or(u32::MAX))
        } else {
            None
        };
        Some(SegmentStart {
            log: segment.log.clone(),
            path: segment.files.log.clone(),
            position: entry.map_or(0, |e| u64::from(e.position)),
            end: segment.size,
            base: segment.base_offset,
            entry: entry.map(|e| segment.base_offset + i64::from(e.relative_offset)),
        })
    }

    /// Where to start scanning segment `base` (whose batches end at `end`) for `offset`: the
    /// position of the nearest index entry at or below it whose batch header agrees with
    /// it, or 0. Each damaged entry met costs one header read and sends the lookup to the
    /// entry before it.
    pub(super) async fn start_position(
        &self,
        log: &File,
        path: &Path,
        base: i64,
        end: u64,
        offset: i64,
    ) -> Result<u64, StorageError> {
        let mut at_most = offset;
        loop {
            let entry = {
                let segments = self.segments.borrow();
                let i = segments.partition_point(|s| s.base_offset < base);
                let relative = at_most - base;
                match segments.get(i) {
                    Some(s) if s.base_offset == base && relative > 0 => {
                        s.index.lookup(u32::try_from(relative).unwrap_or(u32::MAX))
                    }
                    _ => None,
                }
            };
            let Some(entry) = entry else {
                return Ok(0);
            };
            let position = u64::from(entry.position);
            let claimed = base + i64::from(entry.relative_offset);
            let Some(problem) = check_entry(log, path, position, claimed, end).await? else {
                return Ok(position);
            };
            self.index_entry_damaged(base, claimed, position, &problem)
                .await;
            at_most = claimed - 1;
        }
    }

    /// Logs a damaged index entry of segment `base` and removes its index file, once per
    /// segment: the next start finds the index missing and rebuilds it from the log. (The
    /// segment's open handle keeps taking appends to the removed file, which is harmless.)
    async fn index_entry_damaged(&self, base: i64, claimed: i64, position: u64, problem: &str) {
        let index_path = {
            let mut segments = self.segments.borrow_mut();
            let i = segments.partition_point(|s| s.base_offset < base);
            match segments.get_mut(i) {
                Some(s) if s.base_offset == base && !s.index_damaged => {
                    s.index_damaged = true;
                    s.files.index.clone()
                }
                _ => return,
            }
        };
        warn!(
            path = %index_path.display(),
            entry_offset = claimed,
            entry_position = position,
            "offset index entry does not point at its batch ({problem}); reading by scanning \
             from an earlier entry, and the index will be rebuilt from the log at the next start"
        );
        match crate::storage::disk::remove(&index_path).await {
            Ok(()) => {}
            Err(e) => warn!(
                path = %index_path.display(),
                "cannot remove the damaged offset index: {e}"
            ),
        }
    }

    /// Locates what [`PartitionLog::read`] would return without reading it: the file and
    /// byte range to send, starting at the batch that contains `offset`. Only the batch
    /// headers between the nearest index entry and that batch are read (about one index
    /// interval). The range covers at most `max_bytes` — or the whole first batch if that is
    /// larger — within one segment, and may end inside a batch: a consumer drops a partial
    /// last batch and fetches it again from its offset, as Kafka consumers do. `None`
    /// means nothing to send (`offset` is the high watermark).
    pub async fn read_range(
        &self,
        offset: i64,
        max_bytes: usize,
    ) -> Result<(Option<FileRange>, i64, i64), StorageError> {
        if self.closed.get() {
            return Err(StorageError::Closed);
        }
        let high_watermark = self.high_watermark.get();
        let log_start = self.log_start.get();
        if offset < log_start || offset > high_watermark {
            return Err(StorageError::OffsetOutOfRange {
                requested: offset,
                log_start,
                high_watermark,
            });
        }
        let done = |range| Ok((range, high_watermark, log_start));
        if offset == high_watermark {
            return done(None);
        }
        if let Some(fenced) = self.fenced_offset(offset) {
            return Err(fenced);
        }
        let interval = u64::from(self.config.borrow().index_interval_bytes);
        let mut after_base: Option<i64> = None;
        loop {
            let Some(SegmentStart {
                log,
                path,
                mut position,
                end,
                base,
                mut entry,
            }) = self.segment_from(offset, after_base)
            else {
                return done(None);
            };
            after_base = Some(base);
            while position + BATCH_HEADER_LEN as u64 <= end {
                // Headers only: a window of one index interval holds the target's header
                // or lets us skip ahead by whole batches.
                let want = (interval + BATCH_HEADER_LEN as u64).min(end - position);
                let (buf, _) = self
                    .read_log(base, &log, &path, position, want as usize)
                    .await?;
                if let Some(claimed) = entry.take() {
                    if let Some(problem) = entry_problem(&buf, position, claimed, end) {
                        self.index_entry_damaged(base, claimed, position, &problem)
                            .await;
                        position = self
                            .start_position(&log, &path, base, end, claimed - 1)
                            .await?;
                        continue;
                    }
                }
                let (at, first) = find_batch(&buf, &path, position, offset)?;
                let Some(first) = first else {
                    position += at as u64;
                    continue;
                };
                if first.base_offset >= high_watermark {
                    return done(None);
                }
                let start = position + at as u64;
                if let Some(fenced) = self.fenced_byte(base, start) {
                    return Err(fenced);
                }
                let first_len = first.total_len() as u64;
                if start + first_len > end {
                    return Err(StorageError::corrupt(
                        &path,
                        format!("the batch at byte {start} runs past the segment end {end}"),
                    ));
                }
                // Never into a fenced batch: the range ends before it.
                let before_fence = self
                    .fence_limit(base, start)
                    .map_or(end, |limit| limit.min(end));
                let len = (max_bytes as u64).min(before_fence - start).max(first_len);
                let cached = self.cached(base, start, len as usize);
                if cached.is_none() {
                    self.prefetch(base, start + len);
                }
                crate::metrics::shard::log_range_read(len, cached.is_some());
                return done(Some(FileRange {
                    file: log,
                    position: start,
                    len: len as usize,
                    cached,
                }));
            }
        }
    }

    /// Estimated bytes readable from `offset` up to the high watermark (it may count up to an
    /// index interval before `offset`).
    pub fn bytes_available_from(&self, offset: i64) -> u64 {
        if offset >= self.high_watermark.get() {
            return 0;
        }
        let offset = offset.max(self.log_start.get());
        let segments = self.segments.borrow();
        let index = segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        segments
            .iter()
            .enumerate()
            .skip(index)
            .map(|(i, s)| {
                if i == index {
                    s.size.saturating_sub(s.position_for(offset))
                } else {
                    s.size
                }
            })
            .sum()
    }

    /// The base offset of the first batch whose max timestamp is at least `ts`, or `None`
    /// if there is none below the high watermark.
    pub async fn offset_for_timestamp(&self, ts: i64) -> Result<Option<i64>, StorageError> {
        if self.closed.get() {
            return Err(StorageError::Closed);
        }
        let high_watermark = self.high_watermark.get();
        let mut after_base: Option<i64> = None;
        loop {
            let (log, path, start, end, base, entry_offset) = {
                let segments = self.segments.borrow();
                let from = after_base.map_or(0, |base| {
                    segments.partition_point(|s| s.base_offset <= base)
                });
                let Some(segment) = segments[from.min(segments.len())..]
                    .iter()
                    .find(|s| s.max_timestamp() >= ts)
                else {
                    return Ok(None);
                };
                after_base = Some(segment.base_offset);
                let entry_offset = segment
                    .time_index
                    .lookup_below(ts)
                    .map(|e| segment.base_offset + i64::from(e.relative_offset));
                (
                    segment.log.clone(),
                    segment.files.log.clone(),
                    segment.position_for_timestamp(ts),
                    segment.size,
                    segment.base_offset,
                    entry_offset,
                )
            };
            let start = match entry_offset {
                Some(offset) if start > 0 => {
                    self.start_position(&log, &path, base, end, offset).await?
                }
                _ => start,
            };
            let mut found = None;
            let mut past_end = false;
            segment::scan_headers(&log, &path, start, end, |_, header| {
                if header.base_offset >= high_watermark {
                    past_end = true;
                } else if header.max_timestamp >= ts {
                    found = Some(header.base_offset);
                }
                past_end || found.is_some()
            })
            .await?;
            if found.is_some() || past_end {
                return Ok(found);
            }
        }
    }
}

/// What is wrong with an index entry that says the batch with base offset `claimed` starts
/// at `position` of a segment whose batches end at `end`, given the bytes read there
/// (at least a header's worth, unless the segment ends sooner); `None` if nothing. A read
/// checks the entry it starts at with the bytes it reads anyway, so a sound index costs no
/// extra I/O.
fn entry_problem(buf: &[u8], position: u64, claimed: i64, end: u64) -> Option<String> {
    if position + BATCH_HEADER_LEN as u64 > end {
        return Some(format!("byte {position} is past the segment's batches"));
    }
    match BatchHeader::parse(buf) {
        Err(e) => Some(format!("no batch header at byte {position}: {e}")),
        Ok(h) if h.base_offset != claimed => Some(format!(
            "the batch at byte {position} has base offset {}, the entry says {claimed}",
            h.base_offset
        )),
        Ok(h) if position + h.total_len() as u64 > end => Some(format!(
            "the batch at byte {position} runs past the segment's batches"
        )),
        Ok(_) => None,
    }
}

/// [`entry_problem`] for an entry not yet read: reads its header first.
async fn check_entry(
    log: &File,
    path: &Path,
    position: u64,
    claimed: i64,
    end: u64,
) -> Result<Option<String>, StorageError> {
    if position + BATCH_HEADER_LEN as u64 > end {
        return Ok(entry_problem(&[], position, claimed, end));
    }
    let buf = segment::read_exact(log, path, position, BATCH_HEADER_LEN).await?;
    Ok(entry_problem(&buf, position, claimed, end))
}

/// Where a read starts in a segment ([`PartitionLog::segment_from`]).
struct SegmentStart {
    log: File,
    path: PathBuf,
    /// First byte to scan from.
    position: u64,
    /// End of the segment's batches.
    end: u64,
    /// The segment's base offset.
    base: i64,
    /// The offset of the index entry `position` comes from, not yet checked.
    entry: Option<i64>,
}

/// Walks the batch headers in `buf` (read from file `position`) to the batch holding
/// `offset`. Returns where the walk stopped and that batch's header, or `None` if it lies
/// beyond `buf` (continue reading at the returned position).
fn find_batch(
    buf: &[u8],
    path: &Path,
    position: u64,
    offset: i64,
) -> Result<(usize, Option<BatchHeader>), StorageError> {
    let mut at = 0usize;
    while at + BATCH_HEADER_LEN <= buf.len() {
        let header = parse_stored(&buf[at..], path, position + at as u64)?;
        if header.last_offset() >= offset {
            return Ok((at, Some(header)));
        }
        at += header.total_len();
    }
    Ok((at, None))
}

/// Parses the header of a batch the log already holds.
fn parse_stored(buf: &[u8], path: &Path, position: u64) -> Result<BatchHeader, StorageError> {
    BatchHeader::parse(buf).map_err(|e| {
        StorageError::corrupt(path, format!("bad batch header at byte {position}: {e}"))
    })
}
