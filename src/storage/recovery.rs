//! Bringing a partition directory back to a consistent log after a crash or a clean stop.
//!
//! The log files are the truth and the index files are hints. Invariant after recovery:
//! every segment holds only whole batches with rising offsets from its base offset on (dense
//! in the active segment; a sealed one that compaction rewrote has gaps where whole batches
//! went), the last segment holds only CRC-valid batches, every index entry points at the start
//! of a batch, and no compaction is left half swapped in ([`settle_compaction`]). A torn or corrupt tail is truncated (with a warning saying how much and why) and a
//! damaged index is rebuilt from the log, so a bad batch is never served.
//!
//! This runs once per partition on the owning shard before it serves traffic, so it uses
//! blocking I/O: simpler, and nothing else on the thread is waiting yet. Its reads, writes,
//! truncations and removals of log and index files go through `disk.rs` like the log's own.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

use super::config::LogConfig;
use super::disk;
use super::error::StorageError;
use super::index::{IndexPlanner, OffsetIndex, TimeIndex};
use super::producers::{ProducerBatch, ProducerTable, SNAPSHOT_SUFFIX};
use super::runs::{self, Runs};
use super::segment::{RecoveredSegment, SegmentFiles, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};
use crate::protocol::batch::{self, BatchHeader, BATCH_HEADER_LEN};

/// The file a partition's log leaves in its directory when it closed with everything
/// synced, naming the run it closed in ([`Runs`]). If it names the run just before this one
/// the stop was clean, and only the active segment's batches after its last index entry are
/// CRC-checked (a clean close wrote and synced everything, so the check is a cheap
/// formality); otherwise the stop was unclean (kill -9, crash, power loss) and every batch
/// of the active segment is CRC-checked, since any of them may hold bytes that never
/// reached the disk whole.
pub(crate) const CLEAN_STOP_MARKER: &str = "clean-stop.run";

/// The empty marker of earlier versions, which a start had to remove (and make the removal
/// durable) before anything was written. Still honoured, and removed that way.
pub(crate) const LEGACY_CLEAN_STOP_MARKER: &str = "clean-stop";

/// Read size of the recovery scan.
const SCAN_CHUNK: usize = 1 << 20;

/// Largest batch recovery will load to check its CRC, unless the configured maximum is
/// higher: a corrupt length field must not make recovery allocate a whole segment.
const MIN_RECOVERY_BATCH_LIMIT: usize = 64 << 20;

/// Finds, checks and repairs the segments of the partition in `dir` (created if missing),
/// opened in `runs`. Returns them sorted by base offset; empty if the directory holds no
/// log yet.
pub(crate) fn recover_dir(
    dir: &Path,
    config: &LogConfig,
    runs: Runs,
) -> Result<Vec<RecoveredSegment>, StorageError> {
    fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
    let mut logs = Vec::new();
    let mut index_files = Vec::new();
    let (mut marked, mut legacy_marked) = (false, false);
    for entry in fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))? {
        let entry = entry.map_err(|e| StorageError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == CLEAN_STOP_MARKER {
            marked = true;
            continue;
        }
        if name == LEGACY_CLEAN_STOP_MARKER {
            legacy_marked = true;
            continue;
        }
        let Some((stem, suffix)) = name.split_once('.') else {
            continue;
        };
        let Some(base) = parse_base(stem) else {
            continue;
        };
        match suffix {
            LOG_SUFFIX => logs.push(base),
            INDEX_SUFFIX | TIME_INDEX_SUFFIX => index_files.push((base, entry.path())),
            _ => {}
        }
    }
    logs.sort_unstable();
    // Decided before anything is written (by the repairs below, or by appends).
    let clean_stop = read_clean_stop(dir, marked, legacy_marked, runs)?;
    settle_compaction(dir)?;

    // Index files without their log are leftovers of a deletion cut short by a crash
    // (retention removes the log first).
    for (base, path) in index_files {
        if logs.binary_search(&base).is_err() {
            warn!(path = %path.display(), "removing an index file whose log is gone");
            disk::remove_blocking(&path)?;
        }
    }

    let mut segments: Vec<RecoveredSegment> = Vec::with_capacity(logs.len());
    for (i, &base) in logs.iter().enumerate() {
        let is_last = i + 1 == logs.len();
        let segment = recover_segment(dir, base, is_last, clean_stop, config)?;
        if let Some(prev) = segments.last() {
            if prev.next_offset > base {
                let path = SegmentFiles::new(dir, prev.base_offset).log;
                return Err(StorageError::corrupt(
                    &path,
                    format!(
                        "holds offsets up to {} but the next segment starts at {base}",
                        prev.next_offset - 1
                    ),
                ));
            }
        }
        segments.push(segment);
    }
    Ok(segments)
}

/// Whether the partition in `dir` stopped cleanly, from the markers its listing found.
/// Of a marker only the removals that a crash from now on could misread are made (and made
/// durable): a legacy one, and one naming this very run (the log closed and opens again
/// within it). A marker naming an older run is left; no later run can take it for its
/// previous one.
fn read_clean_stop(
    dir: &Path,
    marked: bool,
    legacy_marked: bool,
    runs: Runs,
) -> Result<bool, StorageError> {
    let mut clean_stop = false;
    let mut remove = Vec::new();
    if legacy_marked {
        clean_stop = true;
        remove.push(dir.join(LEGACY_CLEAN_STOP_MARKER));
    }
    if marked {
        let path = dir.join(CLEAN_STOP_MARKER);
        let run = read_optional(&path)?.and_then(|bytes| runs::decode(&bytes));
        if run.is_some() && run == runs.previous {
            clean_stop = true;
        } else if run.is_some() && run == runs.current {
            remove.push(path);
        }
    }
    for path in &remove {
        disk::remove_blocking(path)?;
    }
    if !remove.is_empty() {
        disk::sync_dir_blocking(dir)?;
    }
    Ok(clean_stop)
}

/// Removes the partition's clean-stop marker, durably, after an open that failed part-way:
/// a failure to do so is logged, and the next try may trust the marker.
pub(crate) fn forget_clean_stop(dir: &Path) {
    let removed = disk::remove_blocking(&dir.join(CLEAN_STOP_MARKER));
    let synced = match removed {
        Ok(true) => disk::sync_dir_blocking(dir),
        Ok(false) => return,
        Err(e) => Err(e),
    };
    if let Err(e) = synced {
        warn!("cannot remove the clean-stop marker after a failed open: {e}");
    }
}

/// Finishes or undoes a compaction a crash interrupted (`log/compact.rs` writes a segment's
/// cleaned files under [`CLEANED_SUFFIX`] names, syncs them, and renames the log first). A
/// cleaned log still there means its rename never happened: the original log is whole, and
/// every cleaned file of that segment is removed. Cleaned index files without a cleaned log
/// belong to a log already renamed into place: they are complete (synced before that rename)
/// and take their final names. Runs before the segments are listed, so what they list is
/// either the old segment or the new one, never a mix.
fn settle_compaction(dir: &Path) -> Result<(), StorageError> {
    let mut cleaned: Vec<(i64, &'static str)> = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))? {
        let entry = entry.map_err(|e| StorageError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_suffix(CLEANED_SUFFIX) else {
            continue;
        };
        let Some((stem, suffix)) = rest.trim_end_matches('.').split_once('.') else {
            continue;
        };
        let Some(base) = parse_base(stem) else {
            continue;
        };
        for known in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            if suffix == known {
                cleaned.push((base, known));
            }
        }
    }
    if cleaned.is_empty() {
        return Ok(());
    }
    cleaned.sort_unstable();
    for &(base, suffix) in &cleaned {
        let files = SegmentFiles::new(dir, base);
        let from = cleaned_path(&files, suffix);
        let log_cleaned = cleaned.contains(&(base, LOG_SUFFIX));
        if log_cleaned {
            warn!(path = %from.display(), "removing a compaction's output that a stop cut short");
            disk::remove_blocking(&from)?;
        } else {
            let to = match suffix {
                INDEX_SUFFIX => &files.index,
                _ => &files.time_index,
            };
            info!(path = %to.display(), "finishing a compaction that a stop cut short");
            disk::rename_blocking(&from, to)?;
        }
    }
    disk::sync_dir_blocking(dir)
}

/// Where compaction writes the cleaned file of `files` with `suffix` before its rename.
pub(crate) fn cleaned_path(files: &SegmentFiles, suffix: &str) -> PathBuf {
    let path = match suffix {
        LOG_SUFFIX => &files.log,
        INDEX_SUFFIX => &files.index,
        _ => &files.time_index,
    };
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(CLEANED_SUFFIX);
    PathBuf::from(name)
}

/// The suffix compaction adds to the files it writes until they replace a segment's.
pub(crate) const CLEANED_SUFFIX: &str = "cleaned";

/// Parses a 20-digit base offset file stem.
fn parse_base(stem: &str) -> Option<i64> {
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Reads a whole file, `None` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io(path, e)),
    }
}

/// Checks and repairs one segment. The last (active) segment has every batch CRC-checked
/// after an unclean stop, and every batch after its last index entry after a clean one;
/// older ones are trusted if their index is sane (they were synced when they were sealed),
/// and only their tail headers are read (for the offset range and the newest timestamp).
/// After an unclean stop the active segment is synced as recovered, so that everything a
/// reader can see from now on survives a power loss.
///
/// A bad batch in the middle of the active segment cuts the log there: everything from it
/// on is dropped, with a warning. Under `--fsync always` a batch is acknowledged only after
/// the sync that covers it, so a batch damaged by the crash lies after the last completed
/// sync, and so does everything after it: nothing acknowledged is dropped. Under `interval`
/// or `never` unsynced batches were never promised to survive a crash.
fn recover_segment(
    dir: &Path,
    base: i64,
    is_last: bool,
    clean_stop: bool,
    config: &LogConfig,
) -> Result<RecoveredSegment, StorageError> {
    let files = SegmentFiles::new(dir, base);
    let log = disk::open_blocking(&files.log)?;
    let log_len = log
        .metadata()
        .map_err(|e| StorageError::io(&files.log, e))?
        .len();
    let index_on_disk = read_optional(&files.index)?;
    let time_on_disk = read_optional(&files.time_index)?;

    // Decide what of the indexes can be used.
    let mut rebuild: Option<String> = None;
    let mut index = match &index_on_disk {
        None => {
            rebuild = Some("the offset index is missing".into());
            OffsetIndex::default()
        }
        Some(bytes) if is_last => match OffsetIndex::decode(bytes, u64::MAX) {
            // Entries past the end of the active segment are expected after a crash: the
            // index write reached the disk, the log write did not.
            Ok(mut index) => {
                index.truncate_to_position(log_len);
                index
            }
            Err(reason) => {
                rebuild = Some(format!("the offset index is damaged: {reason}"));
                OffsetIndex::default()
            }
        },
        Some(bytes) => OffsetIndex::decode(bytes, log_len).unwrap_or_else(|reason| {
            rebuild = Some(format!("the offset index is damaged: {reason}"));
            OffsetIndex::default()
        }),
    };
    let mut time_index = match &time_on_disk {
        None if rebuild.is_none() => {
            rebuild = Some("the time index is missing".into());
            TimeIndex::default()
        }
        None => TimeIndex::default(),
        Some(bytes) => TimeIndex::decode(bytes).unwrap_or_else(|reason| {
            if rebuild.is_none() {
                rebuild = Some(format!("the time index is damaged: {reason}"));
            }
            TimeIndex::default()
        }),
    };
    if rebuild.is_some() {
        index = OffsetIndex::default();
        time_index = TimeIndex::default();
    }
    // Time entries are written with offset entries; ones beyond the last offset entry lost
    // their partner and are derived again by the scan.
    match index.last() {
        Some(last) => time_index.truncate_after_offset(last.relative_offset),
        None => time_index = TimeIndex::default(),
    }

    let verify = is_last;
    let batch_limit = config.max_batch_bytes.max(MIN_RECOVERY_BATCH_LIMIT);
    let interval = config.index_interval_bytes;
    let mut scan = LogScan {
        file: &log,
        path: &files.log,
        log_len,
        base,
        verify,
        gaps: !is_last,
        batch_limit,
        interval,
    };
    let mut planner = IndexPlanner::resume(
        index.last(),
        time_index.last(),
        time_index.last().map_or(i64::MIN, |t| t.timestamp),
    );
    let (start, expected) = match index.last() {
        Some(e) if !is_last || clean_stop => {
            (u64::from(e.position), base + i64::from(e.relative_offset))
        }
        // After an unclean stop the whole active segment is checked, and its index entries
        // derived again on the way.
        Some(_) => {
            index = OffsetIndex::default();
            time_index = TimeIndex::default();
            planner = IndexPlanner::new();
            (0, base)
        }
        None => (0, base),
    };
    let mut end = scan.run(start, expected, &mut planner, &mut index, &mut time_index)?;
    if end.problem.is_some() && end.valid_end == start && (start, expected) != (0, base) {
        // The newest index entry does not point at the batch it claims (even one at byte 0
        // that claims another offset than the base: found by fuzzing): distrust the index.
        rebuild = Some(format!(
            "its last entry points at a bad batch ({})",
            end.problem.as_deref().unwrap_or_default()
        ));
        index = OffsetIndex::default();
        time_index = TimeIndex::default();
        planner = IndexPlanner::new();
        end = scan.run(0, base, &mut planner, &mut index, &mut time_index)?;
    }
    if let Some(reason) = &rebuild {
        warn!(
            path = %files.index.display(),
            entries = index.len(),
            "rebuilt the segment's indexes from its log because {reason}"
        );
    }

    if let Some(problem) = &end.problem {
        let dropped = log_len - end.valid_end;
        if all_zero(&log, &files.log, end.valid_end, log_len)? {
            // Zeros written ahead of the appends under `--fsync always`
            // (`segment::preallocate`), or padding up to a block after the last `O_DIRECT`
            // write (`storage::direct`), left by a crash or kill: expected, nothing lost.
            info!(
                path = %files.log.display(),
                trimmed_bytes = dropped,
                kept_bytes = end.valid_end,
                next_offset = end.next_offset,
                "trimming preallocated space after the last batch"
            );
        } else {
            warn!(
                path = %files.log.display(),
                dropped_bytes = dropped,
                kept_bytes = end.valid_end,
                next_offset = end.next_offset,
                "truncating the log tail: {problem}"
            );
        }
        disk::truncate_blocking(&log, &files.log, end.valid_end)?;
        disk::log_reset(&files.log, end.valid_end);
        index.truncate_to_position(end.valid_end);
        let cut = end.next_offset - base;
        match u32::try_from(cut) {
            Ok(cut) if cut > 0 => time_index.truncate_after_offset(cut - 1),
            _ => time_index = TimeIndex::default(),
        }
    } else if is_last && log_len > 0 {
        if !clean_stop {
            // What a killed process wrote may still be only in the page cache, and nothing
            // marks the segment as needing a sync: under `interval` or `never` the next
            // `sync` would skip it and a power loss could take batches this start already
            // served. Make what recovery accepted durable now (the truncating branch above
            // syncs too).
            disk::sync_blocking(&log, &files.log)?;
            disk::log_reset(&files.log, log_len);
            info!(
                path = %files.log.display(),
                bytes = log_len,
                next_offset = end.next_offset,
                "recovered the active segment after an unclean stop"
            );
        } else {
            // After a clean stop this is routine: one line per partition would bury the
            // start's log under a thousand of them.
            debug!(
                path = %files.log.display(),
                bytes = log_len,
                next_offset = end.next_offset,
                "recovered the active segment"
            );
        }
    }

    // Write back indexes that differ from the files.
    rewrite_if_changed(&files.index, index_on_disk.as_deref(), &index.encode())?;
    rewrite_if_changed(
        &files.time_index,
        time_on_disk.as_deref(),
        &time_index.encode(),
    )?;

    Ok(RecoveredSegment {
        base_offset: base,
        size: end.valid_end,
        next_offset: end.next_offset,
        index,
        time_index,
        planner,
    })
}

/// The path of the producer-table snapshot taken at `offset` in `dir`.
pub(crate) fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{offset:020}.{SNAPSHOT_SUFFIX}"))
}

/// Rebuilds the idempotent producers' state of the partition in `dir`, whose segments
/// recovery returned as `segments`: the newest snapshot at or below the log end, then the
/// producer fields of every batch header after it. Snapshots past the log end (taken of
/// batches a crash lost) and damaged ones are deleted. Without a usable snapshot only the
/// last two segments are read, so a log written before snapshots existed costs at most two
/// segments' headers; producers known only from older batches are then unknown, which
/// the checks accept at any sequence. Returns the table and the offsets of the snapshots
/// kept, oldest first.
pub(crate) fn recover_producers(
    dir: &Path,
    segments: &[RecoveredSegment],
    now_ms: i64,
) -> Result<(ProducerTable, Vec<i64>), StorageError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))? {
        let entry = entry.map_err(|e| StorageError::io(dir, e))?;
        let name = entry.file_name();
        let Some((stem, suffix)) = name.to_str().and_then(|n| n.split_once('.')) else {
            continue;
        };
        if suffix == SNAPSHOT_SUFFIX {
            if let Some(offset) = parse_base(stem) {
                found.push(offset);
            }
        }
    }
    found.sort_unstable();
    let log_end = segments.last().map(|s| s.next_offset);
    let remove = |offset: i64, why: &str| -> Result<(), StorageError> {
        let path = snapshot_path(dir, offset);
        warn!(path = %path.display(), "removing a producer snapshot: {why}");
        disk::remove_blocking(&path).map(drop)
    };
    let mut kept = Vec::new();
    let mut chosen: Option<(i64, ProducerTable)> = None;
    for &offset in found.iter().rev() {
        if log_end.is_none_or(|end| offset > end) {
            remove(offset, "it is ahead of the log end")?;
            continue;
        }
        if chosen.is_some() {
            kept.push(offset);
            continue;
        }
        let path = snapshot_path(dir, offset);
        let bytes = fs::read(&path).map_err(|e| StorageError::io(&path, e))?;
        match ProducerTable::decode_snapshot(&bytes) {
            Ok((at, table)) if at == offset => {
                kept.push(offset);
                chosen = Some((offset, table));
            }
            Ok((at, _)) => remove(offset, &format!("it says it was taken at offset {at}"))?,
            Err(reason) => remove(offset, &reason)?,
        }
    }
    kept.reverse();
    let (from, mut table) = match chosen {
        Some((offset, table)) => (offset, table),
        None => {
            let from = segments
                .len()
                .checked_sub(2)
                .map_or(0, |i| segments[i].base_offset);
            (from, ProducerTable::default())
        }
    };
    let mut replayed = 0u64;
    for segment in segments.iter().filter(|s| s.next_offset > from) {
        replayed += replay_producers(dir, segment, from, now_ms, &mut table)?;
    }
    if table.len() > 0 {
        info!(
            dir = %dir.display(),
            snapshot = kept.last().copied(),
            replayed_batches = replayed,
            producers = table.len(),
            "recovered the idempotent producers' state"
        );
    }
    Ok((table, kept))
}

/// Records in `table` the producer fields of the batches of `segment` from offset `from`
/// on. Returns how many batches were read. A producer last heard from in the future (a
/// producer's clock ahead of ours) counts as heard from now.
fn replay_producers(
    dir: &Path,
    segment: &RecoveredSegment,
    from: i64,
    now_ms: i64,
    table: &mut ProducerTable,
) -> Result<u64, StorageError> {
    let path = SegmentFiles::new(dir, segment.base_offset).log;
    let file = disk::open_blocking(&path)?;
    let relative = u32::try_from(from - segment.base_offset).unwrap_or(0);
    let mut pos = if from > segment.base_offset {
        segment
            .index
            .lookup(relative)
            .map_or(0, |e| u64::from(e.position))
    } else {
        0
    };
    let mut window = Window::default();
    let mut read = 0;
    while pos + BATCH_HEADER_LEN as u64 <= segment.size {
        let head = window.get(&file, &path, segment.size, pos, BATCH_HEADER_LEN)?;
        // Recovery checked every batch's framing up to `size`.
        let Ok(header) = BatchHeader::parse(head) else {
            warn!(path = %path.display(), pos, "a batch header no longer parses");
            break;
        };
        pos += header.total_len() as u64;
        if header.base_offset < from {
            continue;
        }
        read += 1;
        // Batches a producer check would refuse are not in a log this broker wrote.
        if let Ok(Some(batch)) = ProducerBatch::of(&header) {
            let seen = match header.max_timestamp {
                -1 => now_ms,
                ts => ts.min(now_ms),
            };
            table.record(&batch, header.base_offset, header.last_offset(), seen);
        }
    }
    Ok(read)
}

/// Whether bytes `[from, to)` of the log are all zero.
fn all_zero(file: &fs::File, path: &Path, from: u64, to: u64) -> Result<bool, StorageError> {
    let mut buf = vec![0u8; SCAN_CHUNK];
    let mut at = from;
    while at < to {
        let len = (to - at).min(SCAN_CHUNK as u64) as usize;
        disk::read_at_blocking(file, path, at, &mut buf[..len])?;
        if buf[..len].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += len as u64;
    }
    Ok(true)
}

fn rewrite_if_changed(path: &Path, old: Option<&[u8]>, new: &[u8]) -> Result<(), StorageError> {
    if old == Some(new) {
        return Ok(());
    }
    disk::write_file_blocking(path, new, true)
}

/// Where a scan stopped.
#[derive(Debug)]
struct ScanEnd {
    /// End of the last good batch.
    valid_end: u64,
    /// Offset after the last good batch.
    next_offset: i64,
    /// Why the scan stopped before the end of the file, if it did.
    problem: Option<String>,
}

/// A forward scan of one segment's log.
struct LogScan<'a> {
    file: &'a fs::File,
    path: &'a Path,
    log_len: u64,
    base: i64,
    /// Check each batch's CRC and header fully, not just its framing.
    verify: bool,
    /// A batch may start past the offset after the previous one: a sealed segment that
    /// compaction rewrote lost whole batches (`log/compact.rs`). The active segment is never
    /// compacted, so there a gap means a bad batch.
    gaps: bool,
    batch_limit: usize,
    interval: u32,
}

impl LogScan<'_> {
    /// Walks batches from `start` (where the batch with base offset `expected` must begin) to
    /// the end of the log or the first bad batch, adding the index entries they earn.
    fn run(
        &mut self,
        start: u64,
        expected: i64,
        planner: &mut IndexPlanner,
        index: &mut OffsetIndex,
        time_index: &mut TimeIndex,
    ) -> Result<ScanEnd, StorageError> {
        let mut window = Window::default();
        let mut pos = start;
        let mut next = expected;
        let stop = |pos: u64, next: i64, problem: String| ScanEnd {
            valid_end: pos,
            next_offset: next,
            problem: Some(problem),
        };
        while pos < self.log_len {
            let remaining = self.log_len - pos;
            if remaining < BATCH_HEADER_LEN as u64 {
                return Ok(stop(
                    pos,
                    next,
                    format!("only {remaining} bytes after the last batch, a torn header"),
                ));
            }
            let head = window.get(self.file, self.path, self.log_len, pos, BATCH_HEADER_LEN)?;
            let header = match BatchHeader::parse(head) {
                Ok(header) => header,
                Err(e) => return Ok(stop(pos, next, format!("bad header at byte {pos}: {e}"))),
            };
            let total = header.total_len() as u64;
            if total > remaining {
                return Ok(stop(
                    pos,
                    next,
                    format!(
                        "the batch at byte {pos} needs {total} bytes but only {remaining} \
                         remain, a torn write"
                    ),
                ));
            }
            if header.base_offset < next || (header.base_offset > next && !self.gaps) {
                return Ok(stop(
                    pos,
                    next,
                    format!(
                        "the batch at byte {pos} has base offset {}, expected {next}",
                        header.base_offset
                    ),
                ));
            }
            if header.last_offset_delta < 0 {
                return Ok(stop(
                    pos,
                    next,
                    format!("the batch at byte {pos} has a negative last offset delta"),
                ));
            }
            let relative_last = header.last_offset() - self.base;
            if header.last_offset() < header.base_offset || relative_last > i64::from(u32::MAX) {
                return Ok(stop(
                    pos,
                    next,
                    format!("the batch at byte {pos} overflows the segment's offset range"),
                ));
            }
            if self.verify {
                if total as usize > self.batch_limit {
                    return Ok(stop(
                        pos,
                        next,
                        format!("the batch at byte {pos} claims an implausible {total} bytes"),
                    ));
                }
                let bytes = window.get(self.file, self.path, self.log_len, pos, total as usize)?;
                if let Err(e) = batch::validate(bytes, self.batch_limit) {
                    return Ok(stop(pos, next, format!("the batch at byte {pos}: {e}")));
                }
            }
            let relative = (header.base_offset - self.base) as u32;
            let (entry, time_entry) =
                planner.observe(self.interval, pos, total, relative, header.max_timestamp);
            if let Some(entry) = entry {
                index.push(entry);
            }
            if let Some(entry) = time_entry {
                time_index.push(entry);
            }
            pos += total;
            next = header.last_offset() + 1;
        }
        Ok(ScanEnd {
            valid_end: pos,
            next_offset: next,
            problem: None,
        })
    }
}

/// A read buffer over the log file.
#[derive(Default)]
struct Window {
    start: u64,
    bytes: Vec<u8>,
}

impl Window {
    /// `len` bytes at `pos` of `file` (`path`, `log_len` bytes long), which the caller knows
    /// are inside the file.
    fn get(
        &mut self,
        file: &fs::File,
        path: &Path,
        log_len: u64,
        pos: u64,
        len: usize,
    ) -> Result<&[u8], StorageError> {
        let have = pos >= self.start && pos + len as u64 <= self.start + self.bytes.len() as u64;
        if !have {
            let want = (len.max(SCAN_CHUNK) as u64).min(log_len - pos) as usize;
            self.bytes.resize(want, 0);
            self.start = pos;
            disk::read_at_blocking(file, path, pos, &mut self.bytes)?;
        }
        let at = (pos - self.start) as usize;
        Ok(&self.bytes[at..at + len])
    }
}
