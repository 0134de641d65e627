//! Appends and the group-commit flush task: the only writer of a partition's log. It takes
//! every queued append, checks idempotent producers' batches and assigns offsets in queue
//! order, writes the round (rolling segments as needed) and, under `--fsync always`, syncs
//! it before the high watermark moves and the callers complete.
//!
//! The producer checks (`storage::producers`) run in the same synchronous pass that assigns
//! offsets, against the producer table plus the round's batches before each one, so no
//! other append can come between a batch's check and its place in the log. The table
//! itself records a batch only once the chunk holding it is written: a write that fails
//! leaves it as the log is.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tracing::{debug, warn};

use super::state::{now_ms, sync_dir, AppendOutcome, PartitionLog, PendingAppend};
use super::writer::{write_at, ChunkTarget, DirectTarget, IndexWrites};
use crate::local::oneshot;
use crate::protocol::batch::ValidBatch;
use crate::storage::config::{FsyncPolicy, LogConfig, LogWrites};
use crate::storage::direct;
use crate::storage::disk;
use crate::storage::error::StorageError;
use crate::storage::index::{OFFSET_ENTRY_LEN, TIME_ENTRY_LEN};
use crate::storage::producers::{ProducerBatch, RoundChecks, Verdict};
use crate::storage::segment::{self, Segment};

/// Most buffers one `writev` accepts (Linux's `IOV_MAX`).
const MAX_IOVECS: usize = 1024;

/// The flush task writes index entries to the index files once this many are pending, and
/// at a roll or close: the files are hints that recovery checks and completes from the log,
/// so after a crash the cost is a scan of at most this many index intervals (256 KiB at the
/// default 4 KiB), while most rounds write the log alone.
const INDEX_WRITE_ENTRIES: usize = 64;

/// What the flush needs to know of each batch it writes.
#[derive(Debug, Clone, Copy)]
struct BatchMeta {
    base_offset: i64,
    last_offset: i64,
    max_timestamp: i64,
    len: u64,
    /// The idempotent producer's fields, recorded in the producer table once written.
    producer: Option<ProducerBatch>,
}

/// The producer checks of one caller's batches, in order, staged in `checks` at the offsets
/// they would take from `next`. `Some`: the batches are a retry of batches already
/// appended (the first retried batch decides), answered with the originals' offsets and
/// not appended. The caller keeps or discards the staged batches.
fn admit(
    checks: &mut RoundChecks<'_>,
    batches: &[ValidBatch],
    mut next: i64,
    now: i64,
) -> Result<Option<AppendOutcome>, StorageError> {
    for batch in batches {
        let header = batch.header();
        let last_offset = next + i64::from(header.last_offset_delta);
        if let Some(producer) = ProducerBatch::of(header)? {
            match checks.check(&producer)? {
                Verdict::Duplicate {
                    base_offset,
                    last_offset,
                } => {
                    return Ok(Some(AppendOutcome {
                        base_offset,
                        last_offset,
                    }))
                }
                Verdict::Append => checks.stage(&producer, next, last_offset, now),
            }
        }
        next = last_offset + 1;
    }
    Ok(None)
}

impl PartitionLog {
    /// Appends validated batches, assigning dense offsets in call order, and resolves once
    /// they are written (and synced, under [`FsyncPolicy::Always`]). Concurrent calls share
    /// one write and one sync. Offsets, lengths and timestamps come from each batch's parsed
    /// header; the bytes are not parsed again.
    ///
    /// Batches of an idempotent producer (producer id ≥ 0) are checked first, in queue
    /// order (`storage::producers`): a refused one fails the call with
    /// [`StorageError::Producer`] and nothing of the call is appended; a retry of batches
    /// already appended is answered with their original offsets and not appended again.
    pub async fn append(
        self: &Rc<Self>,
        batches: Vec<ValidBatch>,
    ) -> Result<AppendOutcome, StorageError> {
        if self.closed.get() {
            return Err(StorageError::Closed);
        }
        if batches.is_empty() {
            return Err(StorageError::InvalidBatch("no batches to append".into()));
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
            let wait = self.wait_before_round(Instant::now());
            if !wait.is_zero() {
                compio::time::sleep(wait).await;
            }
            let work = std::mem::take(&mut *self.queue.borrow_mut());
            if work.is_empty() {
                break;
            }
            self.last_round.set(Some(Instant::now()));
            self.flushes.set(self.flushes.get() + 1);
            self.commit_round(work).await;
        }
        self.flushing.set(false);
        self.flush_idle.notify_all();
    }

    /// How long a round about to start at `now` waits first: the group-commit window, or
    /// longer if the previous round started less than the interval ago. A round after a
    /// pause of at least the interval waits only for the window.
    fn wait_before_round(&self, now: Instant) -> Duration {
        let (window, interval) = {
            let config = self.config.borrow();
            (config.group_commit, config.group_commit_interval)
        };
        let paced = match self.last_round.get() {
            Some(last) => (last + interval).saturating_duration_since(now),
            None => Duration::ZERO,
        };
        window.max(paced)
    }

    /// One group-commit round.
    async fn commit_round(self: &Rc<Self>, work: Vec<PendingAppend>) {
        let mut callers = Vec::with_capacity(work.len());
        let mut buffers = Vec::new();
        let mut metas = Vec::new();
        let mut next = self.high_watermark.get();
        {
            let table = self.producers.borrow();
            let mut checks = RoundChecks::new(&table);
            let now = now_ms();
            // Each caller is answered with the offsets it waits to see written: its own
            // batches', or, for a retry, the originals'. A refused one is answered at once.
            for pending in work {
                match admit(&mut checks, &pending.batches, next, now) {
                    Err(e) => {
                        checks.discard();
                        pending.reply.send(Err(e));
                    }
                    Ok(Some(original)) => {
                        checks.discard();
                        debug!(
                            dir = %self.dir.display(),
                            base_offset = original.base_offset,
                            "an idempotent producer's retry, answered with its original offsets"
                        );
                        callers.push((pending.reply, original));
                    }
                    Ok(None) => {
                        checks.keep();
                        let base_offset = next;
                        for mut batch in pending.batches {
                            batch.set_base_offset(next);
                            let header = batch.header();
                            let last_offset = next + i64::from(header.last_offset_delta);
                            metas.push(BatchMeta {
                                base_offset: next,
                                last_offset,
                                max_timestamp: header.max_timestamp,
                                len: batch.len() as u64,
                                producer: ProducerBatch::of(header).ok().flatten(),
                            });
                            buffers.push(batch.into_bytes());
                            next = last_offset + 1;
                        }
                        let outcome = AppendOutcome {
                            base_offset,
                            last_offset: next - 1,
                        };
                        callers.push((pending.reply, outcome));
                    }
                }
            }
        }

        let (committed, error) = if metas.is_empty() {
            (self.high_watermark.get(), None)
        } else {
            let bytes: u64 = metas.iter().map(|m| m.len).sum();
            self.unsnapshotted.set(self.unsnapshotted.get() + bytes);
            crate::metrics::shard::commit_round(metas.len() as u64, bytes);
            self.write_batches(buffers, &metas).await
        };
        if committed > self.high_watermark.get() {
            self.high_watermark.set(committed);
            self.appended.notify_all();
        }
        for (reply, outcome) in callers {
            let result = if outcome.last_offset < committed {
                Ok(outcome)
            } else {
                Err(error
                    .as_ref()
                    .map_or(StorageError::Closed, StorageError::replicate))
            };
            reply.send(result);
        }
        if let Some(e) = error {
            warn!(dir = %self.dir.display(), error = %e, "append failed");
        } else {
            self.snapshot_if_due().await;
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

            let direct = match self.direct_target(&config).await {
                Ok(direct) => direct,
                Err(e) => return (committed, Some(e)),
            };
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
                        direct,
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
            // may still be running. A direct write covers the whole block `end` falls in.
            let direct = target.direct.as_ref().is_some_and(|d| d.head.is_some());
            self.wait_for_preallocation_below(if direct { direct::align_up(end) } else { end })
                .await;
            let always = config.fsync == FsyncPolicy::Always;
            let chunk: Vec<BytesMut> = buffers.by_ref().take(j - i).collect();
            let written = match target.write(chunk, position, index_writes, always).await {
                Ok(written) => written,
                Err(e) => {
                    if let Some(active) = self.segments.borrow_mut().last_mut() {
                        // The cut-back shortened the file below any preallocation.
                        active.preallocated = active.preallocated.min(position);
                    }
                    return (committed, Some(e));
                }
            };
            if always {
                let paced = !config.group_commit_interval.is_zero();
                self.start_preallocation(end, paced.then_some(end - position), direct);
            }

            let last_offset = metas[j - 1].last_offset;
            let cached = written.is_some();
            {
                let mut segments = self.segments.borrow_mut();
                match segments.last_mut() {
                    Some(active) if active.base_offset == target.base_offset => {
                        active.size = end;
                        active.next_offset = last_offset + 1;
                        for (at, bytes, held) in written.into_iter().flatten() {
                            active.tail.push(at, bytes, held);
                        }
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
                if cached {
                    // Only the newest segments hold chunks (compaction's `swap_in` keeps it
                    // so): the run of them before the active one, and the active one.
                    let active = segments.len() - 1;
                    let first = segments[..active]
                        .iter()
                        .rposition(|s| s.tail.held() == 0)
                        .map_or(0, |i| i + 1);
                    direct::trim_tail_caches(
                        &mut segments[first..],
                        |s| &mut s.tail,
                        config.tail_cache_bytes,
                    );
                    drop(segments);
                    direct::trim_shard_tail_caches(config.shard_tail_cache_budget());
                }
            }
            {
                let mut producers = self.producers.borrow_mut();
                for meta in &metas[i..j] {
                    if let Some(batch) = &meta.producer {
                        producers.record(batch, meta.base_offset, meta.last_offset, now);
                    }
                }
            }
            committed = last_offset + 1;
            i = j;
        }
        (committed, None)
    }

    /// What an append to the active segment needs under `--log-writes direct`: its
    /// `O_DIRECT` handle (opened on first use) and the bytes from the block boundary before
    /// its end up to the end, if the tail cache has them. `None`
    /// under buffered writes, or when the file cannot be opened with `O_DIRECT`, which turns
    /// direct writes off for the partition with a warning.
    async fn direct_target(
        &self,
        config: &LogConfig,
    ) -> Result<Option<DirectTarget>, StorageError> {
        if config.writes != LogWrites::Direct || self.direct_off.get() {
            return Ok(None);
        }
        let (base, path, opened, head) = {
            let segments = self.segments.borrow();
            let Some(active) = segments.last() else {
                return Err(StorageError::Closed);
            };
            let from = direct::align_down(active.size);
            let head = if from == active.size {
                Some(bytes::Bytes::new())
            } else {
                active.tail.get(from, (active.size - from) as usize)
            };
            (
                active.base_offset,
                active.files.log.clone(),
                active.direct.clone(),
                head,
            )
        };
        let file = match opened {
            Some(file) => file,
            None => match disk::open_direct(&path).await {
                Ok(file) => {
                    if let Some(mut segment) = self.segment_mut(base) {
                        segment.direct = Some(file.clone());
                    }
                    file
                }
                Err(e) => {
                    self.direct_off.set(true);
                    warn!(
                        dir = %self.dir.display(),
                        error = %e,
                        "cannot open the log with O_DIRECT; its appends go through the page cache"
                    );
                    return Ok(None);
                }
            },
        };
        Ok(Some(DirectTarget { file, head }))
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
        self.seal_active().await?;
        // Every batch below the new segment is recorded: recovery starts from here. Without
        // this snapshot, recovery would know the producers only from the last two segments,
        // so a producer whose batches lie further back would have a retry appended twice:
        // the roll (and the append that needs it) fails instead, and is tried again.
        self.write_producer_snapshot(base_offset).await?;
        let segment = Segment::create(&self.dir, base_offset, now).await?;
        if config.fsync != FsyncPolicy::Never {
            sync_dir(&self.dir).await?;
        }
        debug!(dir = %self.dir.display(), base_offset, "rolled a new segment");
        let mut segments = self.segments.borrow_mut();
        if let Some(sealed) = segments.last_mut() {
            // The next write no longer needs its newest chunk: the shard may drop it.
            sealed.tail.seal();
        }
        segments.push(segment);
        Ok(())
    }

    /// Completes the active segment's files before it stops being written to (a roll) or
    /// the log closes: waits out its preallocation, writes its pending index entries, and
    /// trims the preallocated zeros from the log file. The flush task or `close` calls it,
    /// so nothing else writes the segment meanwhile.
    pub(super) async fn finish_active(&self) -> Result<(), StorageError> {
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
        let file_len = disk::file_len(&log, &files.log).await?;
        if file_len > size {
            disk::set_len(&log, &files.log, size).await?;
        }
        if let Some(active) = self.segments.borrow_mut().last_mut() {
            active.index_on_disk = active.index.len();
            active.time_on_disk = active.time_index.len();
            active.preallocated = size;
            // The trim and the index writes still need a sync.
            active.dirty = true;
            // No more appends. The tail cache stays for the readers just behind the roll,
            // until newer chunks take its budget.
            active.direct = None;
        }
        Ok(())
    }

    /// Syncs the active segment (log and indexes) before it is sealed, whatever the fsync
    /// policy. Recovery checks every batch of the last segment after an unclean stop but
    /// trusts the older ones, so a segment must be durable before another one follows it:
    /// under `never` or between two `interval` syncs, a power loss could otherwise leave a
    /// sealed segment with lost or torn batches in the middle that recovery would serve. The
    /// cost is one `fdatasync` per segment (under `always`, of data already synced but for
    /// the trim and the index entries).
    async fn seal_active(&self) -> Result<(), StorageError> {
        let (log, size, index, time_index, files) = {
            let segments = self.segments.borrow();
            let Some(active) = segments.last() else {
                return Ok(());
            };
            (
                active.log.clone(),
                active.size,
                active.index_file.clone(),
                active.time_index_file.clone(),
                active.files.clone(),
            )
        };
        Segment::sync_files(&log, size, &index, &time_index, &files).await?;
        if let Some(active) = self.segments.borrow_mut().last_mut() {
            active.dirty = false;
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
    /// end `end` when less than two spans are left (see [`segment::preallocate_span`], which
    /// takes the size of the round just written when rounds are paced, and
    /// [`segment::preallocate`]). The zeros
    /// continue where the last preallocation ended; if the appends came within half a span of
    /// that (or overtook it), they start a span past the end instead, leaving a hole that
    /// appends fill the slow way. Either way the appends wait for a preallocation only if
    /// they outrun it by half a span or more.
    fn start_preallocation(self: &Rc<Self>, end: u64, paced_round: Option<u64>, direct: bool) {
        if self.preallocation_off.get() {
            return;
        }
        let (path, base, from, to) = {
            let mut segments = self.segments.borrow_mut();
            let Some(active) = segments.last_mut() else {
                return;
            };
            let span = segment::preallocate_span(end, paced_round);
            if active.preallocating.is_some() || active.preallocated >= end + 2 * span {
                return;
            }
            let from = if active.preallocated >= end + span / 2 {
                direct::align_up(active.preallocated)
            } else {
                direct::align_up(end + span)
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
                    // Direct appends overwrite whole blocks: they never read a page first.
                    if !direct {
                        segment::read_ahead(&path, from, to);
                    }
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
}
