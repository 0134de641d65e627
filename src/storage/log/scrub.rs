//! The scrubber's step: re-reads the sealed segments of a partition a slice at a time and
//! checks every batch's CRC-32C, so bit rot in data no consumer is reading is found too.
//!
//! Only sealed segments are read: the active one is being appended to, and recovery checks
//! it after an unclean stop. The position reached is kept in the log (`scrub_at`), so the
//! shard's scrub task can hand out a byte budget per step and go round the partitions; a
//! pass ends when the cursor has gone past the last sealed segment, and the next starts from
//! the oldest again. A segment deleted by retention meanwhile is simply skipped.

use std::path::PathBuf;

use super::state::PartitionLog;
use crate::protocol::batch::{self, BatchHeader, BATCH_HEADER_LEN};
use crate::storage::error::StorageError;
use crate::storage::segment;

/// A damaged batch the scrubber found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptBatch {
    /// The segment's log file.
    pub path: PathBuf,
    /// The batch's byte position in it.
    pub position: u64,
    /// The batch's base offset as its header says (it may be damaged too), or the
    /// segment's base offset when no header could be read.
    pub offset: i64,
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
    /// Damaged batches found.
    pub corrupt: Vec<CorruptBatch>,
    /// The cursor went past the last sealed segment: the next step starts a new pass.
    pub pass_done: bool,
}

impl PartitionLog {
    /// Checks the next batches of the sealed segments, about `budget` bytes of them (or one
    /// whole batch, if bigger). A batch whose header cannot be read ends that segment's
    /// check: nothing after it can be located.
    pub async fn scrub_step(&self, budget: usize) -> Result<ScrubStep, StorageError> {
        if self.closed.get() {
            return Err(StorageError::Closed);
        }
        let mut step = ScrubStep::default();
        let (at_base, at_position) = self.scrub_at.get();
        let found = {
            let segments = self.segments.borrow();
            let sealed = &segments[..segments.len().saturating_sub(1)];
            sealed
                .iter()
                .find(|s| s.base_offset >= at_base)
                .map(|s| (s.log.clone(), s.files.log.clone(), s.size, s.base_offset))
        };
        let Some((log, path, end, base)) = found else {
            self.scrub_at.set((i64::MIN, 0));
            step.pass_done = true;
            return Ok(step);
        };
        let next_segment = (base.saturating_add(1), 0);
        let mut position = if base == at_base { at_position } else { 0 };
        if position + BATCH_HEADER_LEN as u64 > end {
            self.scrub_at.set(next_segment);
            return Ok(step);
        }
        let want = (budget.max(BATCH_HEADER_LEN) as u64).min(end - position) as usize;
        let mut buf = segment::read_exact(&log, &path, position, want).await?;
        step.bytes += buf.len() as u64;
        let mut at = 0usize;
        loop {
            if at + BATCH_HEADER_LEN > buf.len() {
                break;
            }
            let corrupt = |offset: i64, position: u64, reason: String| CorruptBatch {
                path: path.clone(),
                position,
                offset,
                reason,
            };
            let header = match BatchHeader::parse(&buf[at..]) {
                Ok(header) => header,
                Err(e) => {
                    let pos = position + at as u64;
                    step.corrupt
                        .push(corrupt(base, pos, format!("no batch header: {e}")));
                    self.scrub_at.set(next_segment);
                    return Ok(step);
                }
            };
            let total = header.total_len();
            let batch_at = position + at as u64;
            if batch_at + total as u64 > end {
                let reason = format!("the batch runs past the segment end {end}");
                step.corrupt
                    .push(corrupt(header.base_offset, batch_at, reason));
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
            step.batches += 1;
            if let Err(e) = batch::validate(&buf[at..at + total], usize::MAX) {
                step.corrupt
                    .push(corrupt(header.base_offset, batch_at, e.to_string()));
            }
            at += total;
        }
        let reached = position + at as u64;
        self.scrub_at
            .set(if reached + BATCH_HEADER_LEN as u64 > end {
                next_segment
            } else {
                (base, reached)
            });
        Ok(step)
    }
}
