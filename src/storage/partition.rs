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
//! [`segment::preallocate`]). Only then does the high
//! watermark move and every caller of that round complete; batches queued meanwhile form the
//! next round. The flush task is spawned (detached) rather than run inside one caller's future,
//! so a producer that gives up waiting cannot cancel a write other producers depend on.
//!
//! Invariants: offsets are dense and never reused (the log start only moves forward by whole
//! segments), readers see only bytes below the high watermark, and the bytes read are exactly
//! the bytes appended (with their assigned base offsets).

use std::cell::{Cell, RefCell, RefMut};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use compio::buf::BufResult;
use compio::fs::File;
use compio::io::AsyncWriteAtExt;
use tracing::{debug, info, warn};

use super::config::{FsyncPolicy, LogConfig};
use super::error::StorageError;
use super::index::{IndexPlanner, OffsetEntry, TimeEntry, OFFSET_ENTRY_LEN, TIME_ENTRY_LEN};
use super::recovery;
use super::segment::{self, Segment, SegmentFiles};
use crate::local::{oneshot, Notify, OneshotSender};
use crate::protocol::batch::{self, BatchHeader, BATCH_HEADER_LEN};

/// Most buffers one `writev` accepts (Linux's `IOV_MAX`).
const MAX_IOVECS: usize = 1024;

/// The flush task writes index entries to the index files once this many are pending, and
/// at a roll or close: the files are hints that recovery checks and completes from the log,
/// so after a crash the cost is a scan of at most this many index intervals (256 KiB at the
/// default 4 KiB), while most rounds write the log alone.
const INDEX_WRITE_ENTRIES: usize = 64;

/// Where a successful append put the caller's batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Offset of the first record of the call's first batch.
    pub base_offset: i64,
    /// Offset of the last record of the call's last batch.
    pub last_offset: i64,
}

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
}

/// A caller waiting in the group-commit queue.
struct PendingAppend {
    batches: Vec<BytesMut>,
    reply: OneshotSender<Result<AppendOutcome, StorageError>>,
}

/// What the flush needs to know of each batch it writes.
#[derive(Debug, Clone, Copy)]
struct BatchMeta {
    base_offset: i64,
    last_offset: i64,
    max_timestamp: i64,
    len: u64,
}

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

/// Checks that each buffer holds one batch whose header agrees with its length.
fn batch_headers(batches: &[BytesMut]) -> Result<Vec<BatchHeader>, StorageError> {
    if batches.is_empty() {
        return Err(StorageError::InvalidBatch("no batches to append".into()));
    }
    batches
        .iter()
        .map(|b| {
            let header =
                BatchHeader::parse(b).map_err(|e| StorageError::InvalidBatch(e.to_string()))?;
            if header.total_len() != b.len() {
                return Err(StorageError::InvalidBatch(format!(
                    "buffer of {} bytes holds a batch of {}",
                    b.len(),
                    header.total_len()
                )));
            }
            if header.last_offset_delta < 0 {
                return Err(StorageError::InvalidBatch(
                    "last offset delta is negative".into(),
                ));
            }
            Ok(header)
        })
        .collect()
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

    /// Appends already-validated batches (one batch per buffer), assigning dense offsets in
    /// call order, and resolves once they are written (and synced, under
    /// [`FsyncPolicy::Always`]). Concurrent calls share one write and one sync.
    pub async fn append(
        self: &Rc<Self>,
        batches: Vec<BytesMut>,
    ) -> Result<AppendOutcome, StorageError> {
        if self.closed.get() {
            return Err(StorageError::Closed);
        }
        let (reply, done) = oneshot();
        self.queue
            .borrow_mut()
            .push(PendingAppend { batches, reply });
        if !self.flushing.replace(true) {
            let log = Rc::clone(self);
            compio::runtime::spawn(async move { log.run_flusher().await }).detach();
        }
        done.await.unwrap_or(Err(StorageError::Closed))
    }

    /// The flush task: group-commit rounds until the queue is empty.
    async fn run_flusher(self: Rc<Self>) {
        loop {
            let window = self.config.borrow().group_commit;
            if !window.is_zero() {
                compio::time::sleep(window).await;
            }
            let work = std::mem::take(&mut *self.queue.borrow_mut());
            if work.is_empty() {
                break;
            }
            self.flushes.set(self.flushes.get() + 1);
            self.commit_round(work).await;
        }
        self.flushing.set(false);
        self.flush_idle.notify_all();
    }

    /// One group-commit round.
    async fn commit_round(self: &Rc<Self>, work: Vec<PendingAppend>) {
        struct Caller {
            reply: OneshotSender<Result<AppendOutcome, StorageError>>,
            outcome: AppendOutcome,
        }
        let mut callers = Vec::with_capacity(work.len());
        let mut buffers = Vec::new();
        let mut metas = Vec::new();
        let mut next = self.high_watermark.get();
        for pending in work {
            let headers = match batch_headers(&pending.batches) {
                Ok(headers) => headers,
                Err(e) => {
                    pending.reply.send(Err(e));
                    continue;
                }
            };
            let base_offset = next;
            for (mut buffer, header) in pending.batches.into_iter().zip(headers) {
                batch::set_base_offset(&mut buffer, next);
                let last_offset = next + i64::from(header.last_offset_delta);
                metas.push(BatchMeta {
                    base_offset: next,
                    last_offset,
                    max_timestamp: header.max_timestamp,
                    len: buffer.len() as u64,
                });
                buffers.push(buffer);
                next = last_offset + 1;
            }
            callers.push(Caller {
                reply: pending.reply,
                outcome: AppendOutcome {
                    base_offset,
                    last_offset: next - 1,
                },
            });
        }
        if metas.is_empty() {
            return;
        }

        let (committed, error) = self.write_batches(buffers, &metas).await;
        if committed > self.high_watermark.get() {
            self.high_watermark.set(committed);
            self.appended.notify_all();
        }
        for caller in callers {
            let result = if caller.outcome.last_offset < committed {
                Ok(caller.outcome)
            } else {
                Err(error
                    .as_ref()
                    .map_or(StorageError::Closed, StorageError::replicate))
            };
            caller.reply.send(result);
        }
        if let Some(e) = error {
            warn!(dir = %self.dir.display(), error = %e, "append failed");
        }
    }

    /// Writes the round's batches at the end of the log, rolling segments as needed. Returns
    /// the offset after the last batch made durable, and the error that stopped it, if any.
    async fn write_batches(
        self: &Rc<Self>,
        buffers: Vec<BytesMut>,
        metas: &[BatchMeta],
    ) -> (i64, Option<StorageError>) {
        let mut buffers = buffers.into_iter();
        let mut committed = self.high_watermark.get();
        let mut i = 0;
        while i < metas.len() {
            let config = self.config.borrow().clone();
            let now = now_ms();
            if self.roll_due(&config, &metas[i], now) {
                if let Err(e) = self.roll(committed, &config, now).await {
                    return (committed, Some(e));
                }
            }

            // Take a snapshot of the active segment; the flush task is its only writer.
            let (target, position, index_len, time_len, index_on_disk, time_on_disk) = {
                let segments = self.segments.borrow();
                let Some(active) = segments.last() else {
                    return (committed, Some(StorageError::Closed));
                };
                (
                    ChunkTarget {
                        base_offset: active.base_offset,
                        files: active.files.clone(),
                        log: active.log.clone(),
                        index: active.index_file.clone(),
                        time_index: active.time_index_file.clone(),
                        planner: active.planner,
                    },
                    active.size,
                    active.index.len(),
                    active.time_index.len(),
                    active.index_on_disk,
                    active.time_on_disk,
                )
            };

            // The chunk: as many batches as fit the segment, at least one.
            let mut end = position;
            let mut j = i;
            while j < metas.len() && j - i < MAX_IOVECS {
                let meta = &metas[j];
                let fits = end + meta.len <= config.segment_bytes
                    && end <= u64::from(u32::MAX)
                    && meta.last_offset - target.base_offset <= i64::from(u32::MAX);
                if j > i && !fits {
                    break;
                }
                end += meta.len;
                j += 1;
            }
            let mut planner = target.planner;
            let mut entries = Vec::new();
            let mut time_entries = Vec::new();
            let mut at = position;
            for meta in &metas[i..j] {
                let relative = (meta.base_offset - target.base_offset) as u32;
                let (entry, time_entry) = planner.observe(
                    config.index_interval_bytes,
                    at,
                    meta.len,
                    relative,
                    meta.max_timestamp,
                );
                entries.extend(entry);
                time_entries.extend(time_entry);
                at += meta.len;
            }
            // Index entries go to their files in batches (see INDEX_WRITE_ENTRIES).
            let write_index = index_len - index_on_disk + entries.len() >= INDEX_WRITE_ENTRIES
                || time_len - time_on_disk + time_entries.len() >= INDEX_WRITE_ENTRIES;
            let index_writes = if write_index {
                let segments = self.segments.borrow();
                let Some(active) = segments.last() else {
                    return (committed, Some(StorageError::Closed));
                };
                IndexWrites::pending(active, &entries, &time_entries)
            } else {
                IndexWrites::none(index_on_disk, time_on_disk)
            };

            // Also when the policy is no longer `always`: a preallocation started under it
            // may still be running.
            self.wait_for_preallocation_below(end).await;
            let always = config.fsync == FsyncPolicy::Always;
            let chunk: Vec<BytesMut> = buffers.by_ref().take(j - i).collect();
            let written = target.write(chunk, position, index_writes, always).await;
            if let Err(e) = written {
                if let Some(active) = self.segments.borrow_mut().last_mut() {
                    // The cut-back shortened the file below any preallocation.
                    active.preallocated = active.preallocated.min(position);
                }
                return (committed, Some(e));
            }
            if always {
                self.start_preallocation(end);
            }

            let last_offset = metas[j - 1].last_offset;
            {
                let mut segments = self.segments.borrow_mut();
                match segments.last_mut() {
                    Some(active) if active.base_offset == target.base_offset => {
                        active.size = end;
                        active.next_offset = last_offset + 1;
                        active.planner = planner;
                        for entry in entries {
                            active.index.push(entry);
                        }
                        for entry in time_entries {
                            active.time_index.push(entry);
                        }
                        if write_index {
                            active.index_on_disk = active.index.len();
                            active.time_on_disk = active.time_index.len();
                        }
                        // Index files are never synced per append, so there is always
                        // something for the next sync().
                        active.dirty = true;
                    }
                    _ => return (committed, Some(StorageError::Closed)),
                }
            }
            committed = last_offset + 1;
            i = j;
        }
        (committed, None)
    }

    /// Whether the batch `next` must start a new segment. An empty segment never rolls.
    fn roll_due(&self, config: &LogConfig, next: &BatchMeta, now: i64) -> bool {
        let segments = self.segments.borrow();
        let Some(active) = segments.last() else {
            return false;
        };
        if active.size == 0 {
            return false;
        }
        let full = active.size.saturating_add(next.len) > config.segment_bytes
            || active.size > u64::from(u32::MAX);
        let offsets_exhausted = next.last_offset - active.base_offset > i64::from(u32::MAX);
        let old = config
            .segment_ms
            .is_some_and(|ms| now.saturating_sub(active.created_ms) >= ms as i64);
        full || offsets_exhausted || old
    }

    /// Starts a new active segment at `base_offset`.
    async fn roll(
        &self,
        base_offset: i64,
        config: &LogConfig,
        now: i64,
    ) -> Result<(), StorageError> {
        self.finish_active().await?;
        let segment = Segment::create(&self.dir, base_offset, now).await?;
        if config.fsync != FsyncPolicy::Never {
            sync_dir(&self.dir).await?;
        }
        debug!(dir = %self.dir.display(), base_offset, "rolled a new segment");
        self.segments.borrow_mut().push(segment);
        Ok(())
    }

    /// The segment that starts at `base`, if the log still has it.
    fn segment_mut(&self, base: i64) -> Option<RefMut<'_, Segment>> {
        RefMut::filter_map(self.segments.borrow_mut(), |segments| {
            segments.iter_mut().find(|s| s.base_offset == base)
        })
        .ok()
    }

    /// Completes the active segment's files before it stops being written to (a roll) or
    /// the log closes: waits out its preallocation, writes its pending index entries, and
    /// trims the preallocated zeros from the log file. The flush task or `close` calls it,
    /// so nothing else writes the segment meanwhile.
    async fn finish_active(&self) -> Result<(), StorageError> {
        self.wait_for_preallocation_below(u64::MAX).await;
        let (files, log, index_file, time_index_file, writes, size) = {
            let segments = self.segments.borrow();
            let Some(active) = segments.last() else {
                return Ok(());
            };
            (
                active.files.clone(),
                active.log.clone(),
                active.index_file.clone(),
                active.time_index_file.clone(),
                IndexWrites::pending(active, &[], &[]),
                active.size,
            )
        };
        let (index_len, time_len) = (
            (writes.index_at * OFFSET_ENTRY_LEN) as u64,
            (writes.time_at * TIME_ENTRY_LEN) as u64,
        );
        write_at(&index_file, &files.index, writes.index, index_len).await?;
        write_at(&time_index_file, &files.time_index, writes.time, time_len).await?;
        let file_len = log
            .metadata()
            .await
            .map_err(|e| StorageError::io(&files.log, e))?
            .len();
        if file_len > size {
            log.set_len(size)
                .await
                .map_err(|e| StorageError::io(&files.log, e))?;
        }
        if let Some(active) = self.segments.borrow_mut().last_mut() {
            active.index_on_disk = active.index.len();
            active.time_on_disk = active.time_index.len();
            active.preallocated = size;
            // The trim and the index writes still need a sync.
            active.dirty = true;
        }
        Ok(())
    }

    /// Waits while a preallocation of the active segment is writing zeros anywhere below
    /// `end`: an append must never share blocks with one.
    async fn wait_for_preallocation_below(&self, end: u64) {
        let mut waited_since: Option<std::time::Instant> = None;
        loop {
            let busy = self
                .segments
                .borrow()
                .last()
                .and_then(|s| s.preallocating)
                .is_some_and(|from| from < end);
            if !busy {
                if let Some(since) = waited_since.filter(|_| end != u64::MAX) {
                    debug!(
                        dir = %self.dir.display(),
                        waited_us = since.elapsed().as_micros() as u64,
                        "an append waited for the preallocation ahead of it"
                    );
                }
                return;
            }
            waited_since.get_or_insert_with(std::time::Instant::now);
            self.preallocated.notified().await;
        }
    }

    /// Under `--fsync always`, starts writing a span of zeros ahead of the active segment's
    /// end `end` when less than two spans are left (see [`segment::preallocate`]). The zeros
    /// continue where the last preallocation ended; if the appends came within half a span of
    /// that (or overtook it), they start a span past the end instead, leaving a hole that
    /// appends fill the slow way. Either way the appends wait for a preallocation only if
    /// they outrun it by half a span or more.
    fn start_preallocation(self: &Rc<Self>, end: u64) {
        if self.preallocation_off.get() {
            return;
        }
        let (path, base, from, to) = {
            let mut segments = self.segments.borrow_mut();
            let Some(active) = segments.last_mut() else {
                return;
            };
            let span = segment::preallocate_span(end);
            if active.preallocating.is_some() || active.preallocated >= end + 2 * span {
                return;
            }
            let from = if active.preallocated >= end + span / 2 {
                segment::align_up(active.preallocated)
            } else {
                segment::align_up(end + span)
            };
            active.preallocating = Some(from);
            (
                active.files.log.clone(),
                active.base_offset,
                from,
                from + span,
            )
        };
        let log = Rc::clone(self);
        compio::runtime::spawn(async move {
            let result = segment::preallocate(&path, from, to).await;
            if let Some(mut segment) = log.segment_mut(base) {
                segment.preallocating = None;
                if result.is_ok() {
                    segment.preallocated = segment.preallocated.max(to);
                    segment::read_ahead(&path, from, to);
                }
            }
            if let Err(e) = result {
                log.preallocation_off.set(true);
                warn!(
                    dir = %log.dir.display(),
                    error = %e,
                    "cannot preallocate the log; appends under --fsync always will also sync the file size"
                );
            }
            log.preallocated.notify_all();
        })
        .detach();
    }

    /// Reads whole batches from the one containing `offset`, at most `max_bytes` of them
    /// unless the first batch alone is bigger (then it is returned whole). At most one segment
    /// per call; only batches below the high watermark.
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadOutcome, StorageError> {
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
        let interval = u64::from(self.config.borrow().index_interval_bytes);
        let mut after_base: Option<i64> = None;
        loop {
            // The segment to look in: the one holding `offset`, or the next one if an
            // earlier attempt found nothing.
            let Some((log, path, mut position, end, base)) = self.segment_from(offset, after_base)
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
                let mut buf = segment::read_exact(&log, &path, position, want as usize).await?;
                let (at, first) = find_batch(&buf, &path, position, offset)?;
                let Some(first) = first else {
                    position += at as u64;
                    continue;
                };
                if first.base_offset >= high_watermark {
                    return Ok(outcome(Bytes::new()));
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
                while stop + BATCH_HEADER_LEN <= buf.len() {
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
                return Ok(outcome(buf.freeze()));
            }
        }
    }

    /// The segment to read `offset` from: the one holding it, or (`after_base` set) the
    /// segment after the one with that base, when the earlier one had nothing more. Returns
    /// its log file, path, the index position to start scanning at, its size and its base.
    fn segment_from(
        &self,
        offset: i64,
        after_base: Option<i64>,
    ) -> Option<(File, PathBuf, u64, u64, i64)> {
        let segments = self.segments.borrow();
        let index = match after_base {
            None => segments
                .partition_point(|s| s.base_offset <= offset)
                .saturating_sub(1),
            Some(base) => segments.partition_point(|s| s.base_offset <= base),
        };
        let segment = segments.get(index)?;
        Some((
            segment.log.clone(),
            segment.files.log.clone(),
            segment.position_for(offset),
            segment.size,
            segment.base_offset,
        ))
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
        let interval = u64::from(self.config.borrow().index_interval_bytes);
        let mut after_base: Option<i64> = None;
        loop {
            let Some((log, path, mut position, end, base)) = self.segment_from(offset, after_base)
            else {
                return done(None);
            };
            after_base = Some(base);
            while position + BATCH_HEADER_LEN as u64 <= end {
                // Headers only: a window of one index interval holds the target's header
                // or lets us skip ahead by whole batches.
                let want = (interval + BATCH_HEADER_LEN as u64).min(end - position);
                let buf = segment::read_exact(&log, &path, position, want as usize).await?;
                let (at, first) = find_batch(&buf, &path, position, offset)?;
                let Some(first) = first else {
                    position += at as u64;
                    continue;
                };
                if first.base_offset >= high_watermark {
                    return done(None);
                }
                let start = position + at as u64;
                let first_len = first.total_len() as u64;
                if start + first_len > end {
                    return Err(StorageError::corrupt(
                        &path,
                        format!("the batch at byte {start} runs past the segment end {end}"),
                    ));
                }
                let len = (max_bytes as u64).min(end - start).max(first_len);
                return done(Some(FileRange {
                    file: log,
                    position: start,
                    len: len as usize,
                }));
            }
        }
    }

    /// The next offset to be assigned; everything below it is readable.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.get()
    }

    /// The first offset still in the log.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start.get()
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

    /// Notified every time the high watermark advances.
    pub fn appended(&self) -> &Notify {
        &self.appended
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
            let (log, path, start, end) = {
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
                (
                    segment.log.clone(),
                    segment.files.log.clone(),
                    segment.position_for_timestamp(ts),
                    segment.size,
                )
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

    /// Syncs every segment written since its last sync (data and index files).
    pub async fn sync(&self) -> Result<(), StorageError> {
        if self.closed.get() {
            return Err(StorageError::Closed);
        }
        self.sync_dirty().await
    }

    async fn sync_dirty(&self) -> Result<(), StorageError> {
        let dirty: Vec<(i64, File, File, File, SegmentFiles)> = self
            .segments
            .borrow_mut()
            .iter_mut()
            .filter(|s| s.dirty)
            .map(|s| {
                s.dirty = false;
                (
                    s.base_offset,
                    s.log.clone(),
                    s.index_file.clone(),
                    s.time_index_file.clone(),
                    s.files.clone(),
                )
            })
            .collect();
        for (base, log, index, time_index, files) in dirty {
            if let Err(e) = Segment::sync_files(&log, &index, &time_index, &files).await {
                if let Some(mut s) = self.segment_mut(base) {
                    s.dirty = true;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Deletes whole segments, oldest first and never the active one, while they are older
    /// than `retention_ms` (by their newest batch timestamp) or the log without them would
    /// still hold `retention_bytes`. Returns how many were deleted.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize, StorageError> {
        if self.closed.get() {
            return Err(StorageError::Closed);
        }
        let config = self.config.borrow().clone();
        let removed: Vec<Segment> = {
            let mut segments = self.segments.borrow_mut();
            let mut total: u64 = segments.iter().map(|s| s.size).sum();
            let mut count = 0;
            while count + 1 < segments.len() {
                let segment = &segments[count];
                let expired = config
                    .retention_ms
                    .is_some_and(|ms| segment.max_timestamp() < now_ms.saturating_sub(ms));
                let surplus = config
                    .retention_bytes
                    .is_some_and(|limit| total - segment.size >= limit);
                if !expired && !surplus {
                    break;
                }
                total -= segment.size;
                count += 1;
            }
            let removed: Vec<Segment> = segments.drain(..count).collect();
            if let Some(first) = segments.first() {
                self.log_start
                    .set(self.log_start.get().max(first.base_offset));
            }
            removed
        };
        let count = removed.len();
        for segment in removed {
            info!(
                path = %segment.files.log.display(),
                base_offset = segment.base_offset,
                bytes = segment.size,
                "deleting segment past retention"
            );
            let files = segment.files.clone();
            drop(segment);
            Segment::delete_files(&files).await?;
        }
        Ok(count)
    }

    /// Replaces the configuration; it applies from the next append or retention pass.
    pub fn set_config(&self, config: LogConfig) {
        *self.config.borrow_mut() = config;
    }

    /// Waits for queued appends, syncs, and closes the files. Later calls return
    /// [`StorageError::Closed`].
    pub async fn close(&self) -> Result<(), StorageError> {
        if self.closed.replace(true) {
            return Ok(());
        }
        while self.flushing.get() {
            self.flush_idle.notified().await;
        }
        let finished = self.finish_active().await;
        let synced = self.sync_dirty().await.and(finished);
        let segments = std::mem::take(&mut *self.segments.borrow_mut());
        for segment in segments {
            let Segment {
                log,
                index_file,
                time_index_file,
                ..
            } = segment;
            // The log file may still be shared with a fetch being spliced to a slow consumer
            // (`FileRange`); `close()` would wait for that. Dropped, its descriptor closes
            // with the last holder. Everything was synced above.
            drop(log);
            for file in [index_file, time_index_file] {
                // A close error after a successful sync loses nothing.
                let _ = file.close().await;
            }
        }
        synced
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
}

/// Parses the header of a batch the log already holds.
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

fn parse_stored(buf: &[u8], path: &Path, position: u64) -> Result<BatchHeader, StorageError> {
    BatchHeader::parse(buf).map_err(|e| {
        StorageError::corrupt(path, format!("bad batch header at byte {position}: {e}"))
    })
}

/// The active segment as the flush task writes one chunk to it.
struct ChunkTarget {
    base_offset: i64,
    files: SegmentFiles,
    log: File,
    index: File,
    time_index: File,
    planner: IndexPlanner,
}

/// Index entries to write with a chunk: the file images from the entries on disk on.
struct IndexWrites {
    index: Vec<u8>,
    /// Entries already in the index file.
    index_at: usize,
    time: Vec<u8>,
    /// Entries already in the time index file.
    time_at: usize,
}

impl IndexWrites {
    /// The entries of `segment` not yet in its files, then `entries` and `time_entries` (a
    /// round's, not yet in its in-memory indexes).
    fn pending(segment: &Segment, entries: &[OffsetEntry], time_entries: &[TimeEntry]) -> Self {
        let mut index = segment.index.encode_from(segment.index_on_disk);
        index.extend(entries.iter().flat_map(|e| e.encode()));
        let mut time = segment.time_index.encode_from(segment.time_on_disk);
        time.extend(time_entries.iter().flat_map(|e| e.encode()));
        IndexWrites {
            index,
            index_at: segment.index_on_disk,
            time,
            time_at: segment.time_on_disk,
        }
    }

    fn none(index_at: usize, time_at: usize) -> IndexWrites {
        IndexWrites {
            index: Vec::new(),
            index_at,
            time: Vec::new(),
            time_at,
        }
    }
}

impl ChunkTarget {
    /// Writes `chunk` at `position` in one gathered write, then the index entries alongside
    /// (if `sync`) one `fdatasync` of the log. On failure, cuts every file back.
    async fn write(
        &self,
        chunk: Vec<BytesMut>,
        position: u64,
        index: IndexWrites,
        sync: bool,
    ) -> Result<(), StorageError> {
        let index_at = (index.index_at * OFFSET_ENTRY_LEN) as u64;
        let time_at = (index.time_at * TIME_ENTRY_LEN) as u64;
        let result = async {
            let mut log = &self.log;
            let BufResult(written, _chunk) = log.write_vectored_all_at(chunk, position).await;
            written.map_err(|e| StorageError::io(&self.files.log, e))?;
            // The index files are not synced per round, so their writes need not wait for
            // the log's sync, nor it for them.
            let IndexWrites { index, time, .. } = index;
            let indexes = async {
                write_at(&self.index, &self.files.index, index, index_at).await?;
                write_at(&self.time_index, &self.files.time_index, time, time_at).await
            };
            let log_sync = async {
                if sync {
                    self.log
                        .sync_data()
                        .await
                        .map_err(|e| StorageError::io(&self.files.log, e))?;
                }
                Ok(())
            };
            let (indexes, log_sync) = futures_util::future::join(indexes, log_sync).await;
            indexes.and(log_sync)
        }
        .await;
        if result.is_err() {
            for (file, len, path) in [
                (&self.log, position, &self.files.log),
                (&self.index, index_at, &self.files.index),
                (&self.time_index, time_at, &self.files.time_index),
            ] {
                if let Err(e) = file.set_len(len).await {
                    warn!(path = %path.display(), error = %e, "could not cut back a failed write");
                }
            }
        }
        result
    }
}

/// Writes `bytes` (if any) at `at` of `file`.
async fn write_at(file: &File, path: &Path, bytes: Vec<u8>, at: u64) -> Result<(), StorageError> {
    if bytes.is_empty() {
        return Ok(());
    }
    let mut writer = file;
    let BufResult(written, _) = writer.write_all_at(bytes, at).await;
    written.map_err(|e| StorageError::io(path, e))
}
