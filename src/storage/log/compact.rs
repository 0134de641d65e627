//! Log compaction (`cleanup.policy` with `compact`): sealed segments are rewritten to keep
//! only the newest record of each key, and tombstones (null values) go once they are older
//! than `delete.retention.ms`.
//!
//! A pass runs on the owning shard, like every other job of the log, at the pace the shard
//! hands it ([`CompactionPace`]): each read and write of the pass is followed by a sleep long
//! enough to keep to the configured rate, and every file operation is an `.await` through
//! `disk.rs`, so appends and fetches of the shard go on between them.
//!
//! 1. The offset map: the newest offset of each key (a 16-byte digest of it), built from the
//!    readable log from the first dirty segment (`cleaned_to`) to the high watermark, the
//!    active segment included. It holds at most [`MAX_KEYS`] keys; when full, the pass
//!    cleans only the segments wholly below the offset it reached. Records of the clean
//!    segments before it are compared against it too: those segments already hold one
//!    record per key, so a key the map lacks has its newest record there.
//! 2. Each sealed segment wholly below the map's end is read batch by batch (each batch's
//!    CRC is checked first: compaction never launders a damaged batch under a new CRC) and
//!    written to `<name>.cleaned` files: a record stays if it has no key, is its key's
//!    newest, is younger than `min.compaction.lag.ms`, or is a tombstone younger than
//!    `delete.retention.ms` (by record timestamps). A batch keeps its base offset and last
//!    offset delta, and its kept records their bytes ([`batch::retain_records`]); a batch
//!    left without records goes. Compressed, transactional and control batches are kept
//!    whole, and their keys do not enter the map (so older records of those keys are kept:
//!    safe, only less compact). Records without a key are kept: refusing them at produce
//!    time would mean decoding every record on the zero-copy append path.
//! 3. The swap, for a segment that changed: the cleaned log and both indexes are synced,
//!    then the directory; the cleaned log is renamed over the segment's log (the commit
//!    point), the directory synced, and the cleaned indexes renamed over the old ones. A
//!    crash before the log's rename leaves the old segment whole and the cleaned files are
//!    removed at the next start; after it, the start renames the (synced) cleaned indexes
//!    into place (`recovery::settle_compaction`). Either way a segment is the old one or
//!    the new one, and both hold every key's newest record.
//!
//! Durability: under `--fsync interval` or `never` the pass first syncs the log up to the
//! high watermark it maps, so no record removes an older one before it is durable itself.
//!
//! Idempotent producers: their state survives without their batches. Every roll writes a
//! producer snapshot at the new active segment's base (`commit.rs`), and recovery starts
//! from the newest snapshot and reads only the batches after it, all in the active segment,
//! which compaction never touches.
//!
//! Retention (with `compact,delete`) waits while a pass runs (`compacting`), so no segment
//! is deleted under a swap; a log with fenced batches is not compacted (the fences name
//! byte positions a rewrite would move).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use compio::fs::File;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::state::{sync_dir, PartitionLog};
use crate::protocol::batch::{
    self, BatchHeader, Record, Retained, BATCH_HEADER_LEN, CONTROL_FLAG, TRANSACTIONAL_FLAG,
};
use crate::storage::config::FsyncPolicy;
use crate::storage::disk;
use crate::storage::error::StorageError;
use crate::storage::index::{IndexPlanner, OffsetIndex, TimeIndex};
use crate::storage::recovery::cleaned_path;
use crate::storage::segment::{
    self, RecoveredSegment, Segment, SegmentFiles, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX,
};

/// Most keys the offset map of one pass holds (about 40 bytes each in memory, so about
/// 40 MiB per shard at most).
pub(crate) const MAX_KEYS: usize = 1 << 20;

/// Bytes read or written at once.
const IO_CHUNK: usize = 1 << 20;

/// Attribute bits of a batch compaction keeps whole: a compression codec, or transaction
/// flags.
const KEPT_WHOLE: i16 = 0x07 | TRANSACTIONAL_FLAG | CONTROL_FLAG;

/// A 16-byte digest of a key: the offset map's key, so its size does not depend on the
/// keys' (a collision between two keys' first 128 bits of SHA-256 is not a practical risk).
type KeyDigest = [u8; 16];

fn digest(key: &[u8]) -> KeyDigest {
    let full = Sha256::digest(key);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// The I/O rate compaction keeps to on one shard (`--compaction-bytes-per-sec`).
#[derive(Debug, Clone, Copy)]
pub struct CompactionPace {
    bytes_per_sec: u64,
}

impl CompactionPace {
    /// At most `bytes_per_sec` bytes read plus written per second; 0: no limit.
    pub fn new(bytes_per_sec: u64) -> CompactionPace {
        CompactionPace { bytes_per_sec }
    }

    /// Waits as long as `bytes` of I/O take at this pace.
    async fn spend(&self, bytes: u64) {
        if self.bytes_per_sec > 0 && bytes > 0 {
            let pause = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
            compio::time::sleep(pause).await;
        }
    }
}

/// What one compaction pass of a log did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompactionStats {
    /// Segments rewritten (a segment with nothing to remove is left as it is).
    pub segments: u64,
    /// Bytes read, for the offset map and the segments.
    pub bytes_read: u64,
    /// Bytes the rewritten segments no longer hold.
    pub bytes_removed: u64,
    /// Records removed.
    pub records_removed: u64,
}

/// The keep-or-drop rule of one pass.
struct Rules<'a> {
    newest: &'a HashMap<KeyDigest, i64>,
    now: i64,
    min_lag_ms: i64,
    delete_retention_ms: i64,
}

/// What the rules decided about one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Keep,
    /// Kept only because it is younger than `min.compaction.lag.ms`, until this time.
    KeepYoung(i64),
    /// A tombstone kept until this time.
    KeepTombstone(i64),
    Remove,
}

impl Rules<'_> {
    fn decide(&self, record: &Record<'_>) -> Decision {
        let Some(key) = record.key else {
            return Decision::Keep;
        };
        let age = self.now.saturating_sub(record.timestamp);
        let newest = self
            .newest
            .get(&digest(key))
            .is_none_or(|&offset| offset <= record.offset);
        if !newest {
            return if age < self.min_lag_ms {
                Decision::KeepYoung(record.timestamp.saturating_add(self.min_lag_ms))
            } else {
                Decision::Remove
            };
        }
        if record.value.is_none() && age >= self.min_lag_ms.max(self.delete_retention_ms) {
            return Decision::Remove;
        }
        if record.value.is_none() {
            let due = record
                .timestamp
                .saturating_add(self.min_lag_ms.max(self.delete_retention_ms));
            return Decision::KeepTombstone(due);
        }
        Decision::Keep
    }
}

/// One segment's cleaned image, as written to its `.cleaned` files.
struct Cleaned {
    size: u64,
    next_offset: i64,
    index: OffsetIndex,
    time_index: TimeIndex,
    planner: IndexPlanner,
    /// Something was removed: the segment is swapped for this.
    changed: bool,
    /// When the first record kept only for `min.compaction.lag.ms` may go, if any was.
    young_due: Option<i64>,
    records_removed: u64,
}

impl PartitionLog {
    /// Whether a compaction pass is due: the policy includes `compact`, the log has no
    /// fenced batch, and either the dirty sealed segments hold at least
    /// `min.cleanable.dirty.ratio` of the sealed bytes or a tombstone the last pass kept may
    /// now go.
    pub fn compaction_due(&self, now_ms: i64) -> bool {
        let (compact, min_ratio) = {
            let config = self.config.borrow();
            (
                config.cleanup.compact,
                config.min_cleanable_dirty_ratio.get(),
            )
        };
        if self.closed.get() || !compact {
            return false;
        }
        if !self.fences.borrow().is_empty() {
            return false;
        }
        let segments = self.segments.borrow();
        let sealed = &segments[..segments.len().saturating_sub(1)];
        let total: u64 = sealed.iter().map(|s| s.size).sum();
        let dirty: u64 = sealed
            .iter()
            .filter(|s| s.base_offset >= self.cleaned_to.get())
            .map(|s| s.size)
            .sum();
        // Segments left dirty by records too young to go wait until the first may.
        let waiting = self.young_due.get().is_some_and(|due| now_ms < due);
        let ratio_due = !waiting && dirty > 0 && dirty as f64 >= min_ratio * total as f64;
        ratio_due || self.tombstones_due.get().is_some_and(|due| due <= now_ms)
    }

    /// Runs one compaction pass (see the module docs) at `pace`, whatever the dirty ratio
    /// (a log whose policy lacks `compact` is left alone). One pass at a time per log: a
    /// call while one runs returns at once with nothing done.
    pub async fn compact(
        &self,
        now_ms: i64,
        pace: CompactionPace,
    ) -> Result<CompactionStats, StorageError> {
        if self.closed.get() {
            return Err(StorageError::Closed);
        }
        if !self.config.borrow().cleanup.compact
            || !self.fences.borrow().is_empty()
            || self.compacting.replace(true)
        {
            return Ok(CompactionStats::default());
        }
        let started = Instant::now();
        let result = self.compact_pass(now_ms, pace).await;
        self.compacting.set(false);
        match &result {
            Ok(stats) => info!(
                dir = %self.dir.display(),
                segments = stats.segments,
                bytes_read = stats.bytes_read,
                bytes_removed = stats.bytes_removed,
                records_removed = stats.records_removed,
                millis = started.elapsed().as_millis() as u64,
                "compacted the log"
            ),
            Err(e) => warn!(dir = %self.dir.display(), error = %e, "compaction failed"),
        }
        result
    }

    async fn compact_pass(
        &self,
        now_ms: i64,
        pace: CompactionPace,
    ) -> Result<CompactionStats, StorageError> {
        let mut stats = CompactionStats::default();
        let (newest, map_end) = self.offset_map(pace, &mut stats).await?;
        let config = self.config.borrow().clone();
        let rules = Rules {
            newest: &newest,
            now: now_ms,
            min_lag_ms: i64::try_from(config.min_compaction_lag_ms).unwrap_or(i64::MAX),
            delete_retention_ms: i64::try_from(config.delete_retention_ms).unwrap_or(i64::MAX),
        };
        // Sealed segments whose every offset is below the map's end.
        let cleanable: Vec<(i64, i64)> = {
            let segments = self.segments.borrow();
            segments
                .windows(2)
                .map(|pair| (pair[0].base_offset, pair[1].base_offset))
                .filter(|&(_, next_base)| next_base <= map_end)
                .collect()
        };
        let mut tombstones_due: Option<i64> = None;
        let mut clean_to: Option<i64> = None;
        let mut young_from: Option<i64> = None;
        let mut young_due: Option<i64> = None;
        for &(base, next_base) in &cleanable {
            if self.closed.get() {
                return Err(StorageError::Closed);
            }
            let Some((log, files, size, interval)) = self.sealed_segment(base) else {
                continue;
            };
            let cleaned = self
                .clean_segment(
                    base,
                    &log,
                    &files,
                    size,
                    interval,
                    &rules,
                    pace,
                    &mut stats,
                    &mut tombstones_due,
                )
                .await;
            let cleaned = match cleaned {
                Ok(cleaned) => cleaned,
                Err(e) => {
                    remove_cleaned(&files).await;
                    return Err(e);
                }
            };
            if let Some(due) = cleaned.young_due {
                young_from.get_or_insert(base);
                young_due = Some(young_due.map_or(due, |d| d.min(due)));
            }
            clean_to = Some(next_base);
            if !cleaned.changed {
                remove_cleaned(&files).await;
                continue;
            }
            stats.segments += 1;
            stats.bytes_removed += size - cleaned.size;
            stats.records_removed += cleaned.records_removed;
            self.swap_in(base, &files, cleaned).await?;
        }
        if let Some(to) = young_from.or(clean_to) {
            self.cleaned_to.set(to);
        }
        if clean_to.is_some() {
            self.tombstones_due.set(tombstones_due);
            self.young_due.set(young_due);
        }
        if cleanable.is_empty() && newest.len() >= MAX_KEYS {
            warn!(
                dir = %self.dir.display(),
                keys = MAX_KEYS,
                "compaction's offset map filled before the end of the first dirty segment; \
                 nothing compacted"
            );
        }
        Ok(stats)
    }

    /// The newest offset of each key from the first dirty offset up to the high
    /// watermark, or up to the offset returned if the map filled first.
    async fn offset_map(
        &self,
        pace: CompactionPace,
        stats: &mut CompactionStats,
    ) -> Result<(HashMap<KeyDigest, i64>, i64), StorageError> {
        let mut newest: HashMap<KeyDigest, i64> = HashMap::new();
        let high_watermark = self.high_watermark.get();
        if self.config.borrow().fsync != FsyncPolicy::Always {
            // A record may remove older ones only once it is durable itself: else a power
            // loss could take the newer record after the older one was compacted away.
            // Everything below the high watermark is written; this makes it durable.
            self.sync_dirty().await?;
        }
        let mut offset = self.cleaned_to.get().max(self.log_start.get());
        while offset < high_watermark {
            if self.closed.get() {
                return Err(StorageError::Closed);
            }
            let read = self.read_batches(offset, IO_CHUNK, false).await?;
            if read.records.is_empty() {
                break;
            }
            stats.bytes_read += read.records.len() as u64;
            for item in batch::batches(&read.records) {
                let (at, header) = item.map_err(|e| self.corrupt_read(offset, &e))?;
                if header.base_offset >= high_watermark {
                    return Ok((newest, high_watermark));
                }
                let count = usize::try_from(header.records_count).unwrap_or(usize::MAX);
                if newest.len().saturating_add(count) > MAX_KEYS {
                    return Ok((newest, header.base_offset));
                }
                let bytes = &read.records[at..at + header.total_len()];
                // A key damaged on its way from the disk could name another key's records
                // as superseded: only CRC-valid batches enter the map.
                batch::validate(bytes, usize::MAX).map_err(|e| self.corrupt_read(offset, &e))?;
                if header.attributes & KEPT_WHOLE == 0 {
                    let records =
                        batch::records(bytes).map_err(|e| self.corrupt_read(offset, &e))?;
                    for record in records {
                        let record = record.map_err(|e| self.corrupt_read(offset, &e))?;
                        if let Some(key) = record.key {
                            newest.insert(digest(key), record.offset);
                        }
                    }
                }
                offset = header.last_offset() + 1;
            }
            pace.spend(read.records.len() as u64).await;
        }
        Ok((newest, offset.min(high_watermark)))
    }

    fn corrupt_read(&self, offset: i64, e: &batch::BatchError) -> StorageError {
        StorageError::corrupt(
            &self.dir,
            format!("compaction read a bad batch near offset {offset}: {e}"),
        )
    }

    /// The log file, paths, size and index interval of the sealed segment `base`.
    fn sealed_segment(&self, base: i64) -> Option<(File, SegmentFiles, u64, u32)> {
        let interval = self.config.borrow().index_interval_bytes;
        let segments = self.segments.borrow();
        let last = segments.len().checked_sub(1)?;
        segments[..last]
            .iter()
            .find(|s| s.base_offset == base)
            .map(|s| (s.log.clone(), s.files.clone(), s.size, interval))
    }

    /// Writes the cleaned image of one sealed segment to its `.cleaned` files and syncs
    /// them (when anything changed).
    #[allow(clippy::too_many_arguments)]
    async fn clean_segment(
        &self,
        base: i64,
        log: &File,
        files: &SegmentFiles,
        size: u64,
        interval: u32,
        rules: &Rules<'_>,
        pace: CompactionPace,
        stats: &mut CompactionStats,
        tombstones_due: &mut Option<i64>,
    ) -> Result<Cleaned, StorageError> {
        let out_path = cleaned_path(files, LOG_SUFFIX);
        let out = disk::open(&out_path, true).await?;
        let mut cleaned = Cleaned {
            size: 0,
            next_offset: base,
            index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            planner: IndexPlanner::new(),
            changed: false,
            young_due: None,
            records_removed: 0,
        };
        let mut pending = BytesMut::new();
        let mut written = 0u64;
        let mut pos = 0u64;
        while pos + BATCH_HEADER_LEN as u64 <= size {
            let want = (size - pos).min(IO_CHUNK as u64) as usize;
            let mut buf = segment::read_exact(log, &files.log, pos, want).await?;
            stats.bytes_read += buf.len() as u64;
            let header = parse_header(&buf, &files.log, pos)?;
            if header.total_len() > buf.len() {
                if pos + header.total_len() as u64 > size {
                    return Err(StorageError::corrupt(
                        &files.log,
                        format!("the batch at byte {pos} runs past the segment end {size}"),
                    ));
                }
                // A batch bigger than a chunk: read it whole.
                buf = segment::read_exact(log, &files.log, pos, header.total_len()).await?;
                stats.bytes_read += buf.len() as u64;
            }
            let mut at = 0usize;
            while at + BATCH_HEADER_LEN <= buf.len() {
                let header = parse_header(&buf[at..], &files.log, pos + at as u64)?;
                let end = at + header.total_len();
                if end > buf.len() {
                    break;
                }
                let bytes = &buf[at..end];
                batch::validate(bytes, usize::MAX).map_err(|e| {
                    StorageError::corrupt(
                        &files.log,
                        format!(
                            "compaction found a bad batch at byte {}: {e}",
                            pos + at as u64
                        ),
                    )
                })?;
                let retained = if header.attributes & KEPT_WHOLE != 0 {
                    Retained::All
                } else {
                    let mut removed = 0u64;
                    let retained =
                        batch::retain_records(bytes, |record| match rules.decide(record) {
                            Decision::Keep => true,
                            Decision::KeepYoung(due) => {
                                cleaned.young_due =
                                    Some(cleaned.young_due.map_or(due, |d| d.min(due)));
                                true
                            }
                            Decision::KeepTombstone(due) => {
                                *tombstones_due = Some(tombstones_due.map_or(due, |d| d.min(due)));
                                true
                            }
                            Decision::Remove => {
                                removed += 1;
                                false
                            }
                        })
                        .map_err(|e| {
                            StorageError::corrupt(
                                &files.log,
                                format!(
                                    "compaction cannot read the batch at byte {}: {e}",
                                    pos + at as u64
                                ),
                            )
                        })?;
                    cleaned.records_removed += removed;
                    retained
                };
                let kept: Option<&[u8]> = match &retained {
                    Retained::All => Some(bytes),
                    Retained::Some(rewritten) => Some(rewritten),
                    Retained::None => None,
                };
                cleaned.changed |= !matches!(retained, Retained::All);
                if let Some(kept) = kept {
                    let position = cleaned.size;
                    let relative = (header.base_offset - base) as u32;
                    let (entry, time_entry) = cleaned.planner.observe(
                        interval,
                        position,
                        kept.len() as u64,
                        relative,
                        header.max_timestamp,
                    );
                    if let Some(entry) = entry {
                        cleaned.index.push(entry);
                    }
                    if let Some(entry) = time_entry {
                        cleaned.time_index.push(entry);
                    }
                    cleaned.size += kept.len() as u64;
                    cleaned.next_offset = header.last_offset() + 1;
                    pending.extend_from_slice(kept);
                }
                at = end;
            }
            pos += at as u64;
            if pending.len() >= IO_CHUNK {
                let len = pending.len() as u64;
                disk::write_at(&out, &out_path, pending.split().freeze(), written).await?;
                written += len;
                pace.spend(len).await;
            }
            pace.spend(at as u64).await;
            if self.closed.get() {
                return Err(StorageError::Closed);
            }
        }
        if !cleaned.changed {
            return Ok(cleaned);
        }
        if !pending.is_empty() {
            let len = pending.len() as u64;
            disk::write_at(&out, &out_path, pending.split().freeze(), written).await?;
            pace.spend(len).await;
        }
        disk::sync_data(&out, &out_path).await?;
        for (suffix, image) in [
            (INDEX_SUFFIX, cleaned.index.encode()),
            (TIME_INDEX_SUFFIX, cleaned.time_index.encode()),
        ] {
            let path = cleaned_path(files, suffix);
            let file = disk::open(&path, true).await?;
            if !image.is_empty() {
                disk::write_at(&file, &path, image, 0).await?;
            }
            disk::sync_data(&file, &path).await?;
        }
        sync_dir(&self.dir).await?;
        Ok(cleaned)
    }

    /// Puts a segment's cleaned files in place of its own (the order the module docs give)
    /// and the cleaned segment in place of the old one in memory.
    async fn swap_in(
        &self,
        base: i64,
        files: &SegmentFiles,
        cleaned: Cleaned,
    ) -> Result<(), StorageError> {
        if self.closed.get() {
            remove_cleaned(files).await;
            return Err(StorageError::Closed);
        }
        disk::rename(&cleaned_path(files, LOG_SUFFIX), &files.log).await?;
        disk::log_reset(&files.log, cleaned.size);
        sync_dir(&self.dir).await?;
        disk::rename(&cleaned_path(files, INDEX_SUFFIX), &files.index).await?;
        disk::rename(&cleaned_path(files, TIME_INDEX_SUFFIX), &files.time_index).await?;
        sync_dir(&self.dir).await?;
        let created_ms = self
            .segments
            .borrow()
            .iter()
            .find(|s| s.base_offset == base)
            .map_or(0, |s| s.created_ms);
        let recovered = RecoveredSegment {
            base_offset: base,
            size: cleaned.size,
            next_offset: cleaned.next_offset,
            index: cleaned.index,
            time_index: cleaned.time_index,
            planner: cleaned.planner,
        };
        let segment = Segment::open(&self.dir, recovered, created_ms).await?;
        {
            let mut segments = self.segments.borrow_mut();
            if let Some(at) = segments.iter().position(|s| s.base_offset == base) {
                // Reads that hold the old log's handle go on reading the old file.
                segments[at] = segment;
                // The new segment's tail cache is empty; the older ones' chunks go too
                // (they would be the next to go anyway), so the segments that hold chunks
                // stay the newest ones, which is all the appends' trim looks at.
                for older in &mut segments[..at] {
                    older.tail.clear();
                }
            }
        }
        if self.scrub_at.get().0 == base {
            self.scrub_at.set((base, 0, base));
        }
        Ok(())
    }
}

fn parse_header(buf: &[u8], path: &std::path::Path, pos: u64) -> Result<BatchHeader, StorageError> {
    BatchHeader::parse(buf)
        .map_err(|e| StorageError::corrupt(path, format!("bad batch header at byte {pos}: {e}")))
}

/// Removes a segment's `.cleaned` files (an abandoned or pointless rewrite); a failure is
/// logged and left to the next start's recovery.
async fn remove_cleaned(files: &SegmentFiles) {
    for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
        let path = cleaned_path(files, suffix);
        if let Err(e) = disk::remove(&path).await {
            warn!(path = %path.display(), error = %e, "cannot remove a compaction's output");
        }
    }
}
