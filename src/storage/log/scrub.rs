//! The scrubber's step: re-reads the sealed segments of a partition a slice at a time and
//! checks every batch's CRC-32C, so bit rot in data no consumer is reading is found too.
//!
//! Only sealed segments are read: the active one is being appended to, and recovery checks
//! it after an unclean stop. The position reached is kept in the log (`scrub_at`), so the
//! shard's scrub task can hand out a byte budget per step and go round the partitions; a
//! pass ends when the cursor has gone past the last sealed segment, and the next starts from
//! the oldest again. A segment deleted by retention meanwhile is simply skipped.

use std::path::{Path, PathBuf};

use tracing::warn;

use super::state::PartitionLog;
use crate::protocol::batch::{self, BatchHeader, BATCH_HEADER_LEN};
use crate::storage::error::StorageError;
use crate::storage::fence_file::Fence;
use crate::storage::segment;

/// A damaged batch the scrubber found, and fenced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptBatch {
    /// The segment's log file.
    pub path: PathBuf,
    /// The batch's byte position in it.
    pub position: u64,
    /// The first offset fenced: where the batch should start, after the batch before it
    /// (its own header's base offset is outside the CRC and may be damaged too).
    pub offset: i64,
    /// The last offset fenced: the batch's own last offset when its header is sound and
    /// the next batch agrees, else up to the next readable batch or the segment's end.
    pub last_offset: i64,
    /// What is wrong.
    pub reason: String,
}

/// What one scrub step did.
#[derive(Debug, Default)]
pub struct ScrubStep {
    /// Bytes read (a batch cut by the budget is read again by the next step).
    pub bytes: u64,
    /// Batches checked.
    pub batches: u64,
    /// Damaged batches found (each is fenced: see `fence.rs`).
    pub corrupt: Vec<CorruptBatch>,
    /// The cursor went past the last sealed segment: the next step starts a new pass.
    pub pass_done: bool,
}

/// A segment being scrubbed.
struct Scrubbed {
    log: compio::fs::File,
    path: PathBuf,
    /// End of its batches.
    end: u64,
    base: i64,
    /// The next segment's base offset: no offset of this one is at or past it.
    next_base: i64,
}

impl PartitionLog {
    /// Checks the next batches of the sealed segments, about `budget` bytes of them (or one
    /// whole batch, if bigger), and fences each damaged one. A batch whose header cannot be
    /// read, or whose length runs past the segment, ends that segment's check: nothing after
    /// it can be located, so the fence runs to the segment's end.
    pub async fn scrub_step(&self, budget: usize) -> Result<ScrubStep, StorageError> {
        if self.closed.get() {
            return Err(StorageError::Closed);
        }
        let mut step = ScrubStep::default();
        let (at_base, at_position, at_expected) = self.scrub_at.get();
        let found = {
            let segments = self.segments.borrow();
            segments
                .windows(2)
                .find(|pair| pair[0].base_offset >= at_base)
                .map(|pair| Scrubbed {
                    log: pair[0].log.clone(),
                    path: pair[0].files.log.clone(),
                    end: pair[0].size,
                    base: pair[0].base_offset,
                    next_base: pair[1].base_offset,
                })
        };
        let Some(segment) = found else {
            self.scrub_at.set((i64::MIN, 0, 0));
            step.pass_done = true;
            return Ok(step);
        };
        let Scrubbed {
            log,
            path,
            end,
            base,
            next_base,
        } = segment;
        let next_segment = (base.saturating_add(1), 0, 0);
        let (mut position, mut expected) = if base == at_base {
            (at_position, at_expected)
        } else {
            (0, base)
        };
        let fence_to_end = |step: &mut ScrubStep, batch_at: u64, first: i64, reason: String| {
            let first = first.min(next_base - 1);
            let fence = Fence {
                segment: base,
                position: batch_at,
                len: end - batch_at,
                first,
                last: next_base - 1,
                reason,
            };
            self.fence_found(step, &path, fence);
        };
        if position + BATCH_HEADER_LEN as u64 > end {
            if position < end {
                let reason = format!("{} bytes after the last batch", end - position);
                fence_to_end(&mut step, position, expected, reason);
            }
            self.scrub_at.set(next_segment);
            return Ok(step);
        }
        let want = (budget.max(BATCH_HEADER_LEN) as u64).min(end - position) as usize;
        let mut buf = segment::read_exact(&log, &path, position, want).await?;
        step.bytes += buf.len() as u64;
        // A batch that failed its CRC, not fenced yet: the next header says where it ended.
        let mut pending: Option<Fence> = None;
        // A check that fails is made once more on bytes read again from the disk, so that a
        // read that went wrong on its way (not the stored bytes) never fences a sound batch:
        // the position read again, if any.
        let mut reread_at: Option<u64> = None;
        let mut at = 0usize;
        loop {
            if at + BATCH_HEADER_LEN > buf.len() {
                break;
            }
            let batch_at = position + at as u64;
            if reread_at.is_some_and(|r| r < batch_at) {
                reread_at = None;
            }
            let failed_once = reread_at != Some(batch_at);
            let header = match BatchHeader::parse(&buf[at..]) {
                Ok(header) => header,
                Err(_) if failed_once => {
                    (buf, position, at) = self
                        .reread(&mut step, &log, &path, batch_at, buf.len() - at, end)
                        .await?;
                    reread_at = Some(batch_at);
                    continue;
                }
                Err(e) => {
                    if let Some(fence) = pending.take() {
                        self.fence_found(&mut step, &path, fence);
                    }
                    fence_to_end(
                        &mut step,
                        batch_at,
                        expected,
                        format!("no batch header: {e}"),
                    );
                    self.scrub_at.set(next_segment);
                    return Ok(step);
                }
            };
            if let Some(mut fence) = pending.take() {
                // This header is sound: the damaged batch ended just before it.
                if header.base_offset > fence.first && header.base_offset <= next_base {
                    fence.last = header.base_offset - 1;
                }
                expected = fence.last + 1;
                self.fence_found(&mut step, &path, fence);
            }
            let total = header.total_len();
            if batch_at + total as u64 > end && failed_once {
                (buf, position, at) = self
                    .reread(&mut step, &log, &path, batch_at, buf.len() - at, end)
                    .await?;
                reread_at = Some(batch_at);
                continue;
            }
            if batch_at + total as u64 > end {
                let reason = format!("the batch runs past the segment end {end}");
                fence_to_end(&mut step, batch_at, expected, reason);
                self.scrub_at.set(next_segment);
                return Ok(step);
            }
            if at + total > buf.len() {
                if at > 0 {
                    break;
                }
                // A batch bigger than the budget: read it whole.
                buf = segment::read_exact(&log, &path, batch_at, total).await?;
                step.bytes += total as u64;
                position = batch_at;
                at = 0;
            }
            match batch::validate(&buf[at..at + total], usize::MAX) {
                Ok(_) => {
                    if reread_at == Some(batch_at) {
                        warn!(
                            path = %path.display(),
                            position = batch_at,
                            "a batch failed its check once and passed when read again: \
                             a transient read error, not fenced"
                        );
                    }
                    expected = header.last_offset().saturating_add(1);
                }
                Err(_) if failed_once => {
                    (buf, position, at) = self
                        .reread(&mut step, &log, &path, batch_at, buf.len() - at, end)
                        .await?;
                    reread_at = Some(batch_at);
                    continue;
                }
                Err(e) => {
                    let first = expected.min(next_base - 1);
                    let last = header.last_offset().clamp(first, next_base - 1);
                    pending = Some(Fence {
                        segment: base,
                        position: batch_at,
                        len: total as u64,
                        first,
                        last,
                        reason: e.to_string(),
                    });
                    expected = last.saturating_add(1);
                }
            }
            step.batches += 1;
            at += total;
        }
        if let Some(fence) = pending.take() {
            self.fence_found(&mut step, &path, fence);
        }
        let reached = position + at as u64;
        self.scrub_at.set(
            if reached + BATCH_HEADER_LEN as u64 > end && reached >= end {
                next_segment
            } else {
                (base, reached, expected)
            },
        );
        Ok(step)
    }

    /// Reads `len` bytes at `batch_at` again (at least a header's worth, never past
    /// `end`), for a second check of a batch that failed one. Returns the new buffer, its
    /// file position, and 0, where the scan goes on in it.
    async fn reread(
        &self,
        step: &mut ScrubStep,
        log: &compio::fs::File,
        path: &Path,
        batch_at: u64,
        len: usize,
        end: u64,
    ) -> Result<(bytes::BytesMut, u64, usize), StorageError> {
        let len = (len.max(BATCH_HEADER_LEN) as u64).min(end - batch_at) as usize;
        let buf = segment::read_exact(log, path, batch_at, len).await?;
        step.bytes += len as u64;
        Ok((buf, batch_at, 0))
    }

    /// Reports and fences a batch that failed its checks. The fence's reason names the
    /// segment file and byte, which a consumer sees in its error.
    fn fence_found(&self, step: &mut ScrubStep, path: &Path, mut fence: Fence) {
        step.corrupt.push(CorruptBatch {
            path: path.to_path_buf(),
            position: fence.position,
            offset: fence.first,
            last_offset: fence.last,
            reason: fence.reason.clone(),
        });
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        fence.reason = format!("{file} byte {}: {}", fence.position, fence.reason);
        self.fence(fence);
    }
}
