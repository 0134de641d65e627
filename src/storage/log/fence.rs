//! Fences: batches of sealed segments found corrupt (by the scrubber) that reads refuse to
//! return. A fence names the batch's bytes (segment, position, length) and the offsets it
//! covers; a read that asks for one of those offsets gets [`StorageError::Fenced`] with the
//! range, so a consumer can skip past it explicitly, and a read that starts before a fence
//! stops at its first byte. The rest of the partition stays readable. Fences are stored in
//! the partition's fence file (`storage::fence_file`), so they outlive a restart.

use tracing::{error, warn};

use super::state::PartitionLog;
use crate::storage::error::StorageError;
use crate::storage::fence_file::{save, Fence};

impl PartitionLog {
    /// Fences a corrupt batch. Returns false if it was fenced already. The fence holds in
    /// memory at once; a failure to store it is logged (it is found again after a restart
    /// by the next scrub pass).
    pub(super) fn fence(&self, fence: Fence) -> bool {
        let saved = {
            let mut fences = self.fences.borrow_mut();
            let at = fences
                .partition_point(|f| (f.segment, f.position) < (fence.segment, fence.position));
            if fences
                .get(at)
                .is_some_and(|f| (f.segment, f.position) == (fence.segment, fence.position))
            {
                return false;
            }
            error!(
                dir = %self.dir.display(),
                first = fence.first,
                last = fence.last,
                segment = fence.segment,
                position = fence.position,
                "fencing a corrupt batch: fetches of its offsets get a corrupt-batch error ({})",
                fence.reason
            );
            fences.insert(at, fence);
            save(&self.dir, &fences)
        };
        if let Err(e) = saved {
            warn!(dir = %self.dir.display(), "cannot store the fenced batches: {e}");
        }
        true
    }

    /// The fenced batches, in log order.
    pub fn fences(&self) -> Vec<Fence> {
        self.fences.borrow().clone()
    }

    /// The error for reading `offset`, if a fence covers it.
    pub(super) fn fenced_offset(&self, offset: i64) -> Option<StorageError> {
        let fences = self.fences.borrow();
        fences
            .iter()
            .find(|f| (f.first..=f.last).contains(&offset))
            .map(Fence::error)
    }

    /// The error for a read that would start at byte `position` of segment `segment`, if
    /// that byte is fenced.
    pub(super) fn fenced_byte(&self, segment: i64, position: u64) -> Option<StorageError> {
        let fences = self.fences.borrow();
        fences
            .iter()
            .find(|f| f.segment == segment && (f.position..f.position + f.len).contains(&position))
            .map(Fence::error)
    }

    /// Where a read from byte `start` of segment `segment` must stop: the first fenced byte
    /// after it, if any.
    pub(super) fn fence_limit(&self, segment: i64, start: u64) -> Option<u64> {
        let fences = self.fences.borrow();
        fences
            .iter()
            .filter(|f| f.segment == segment && f.position > start)
            .map(|f| f.position)
            .min()
    }

    /// Forgets the fences of segments before `first_segment` (retention deleted them).
    pub(super) fn drop_fences_before(&self, first_segment: i64) {
        let mut fences = self.fences.borrow_mut();
        let before = fences.len();
        fences.retain(|f| f.segment >= first_segment);
        if fences.len() != before {
            if let Err(e) = save(&self.dir, &fences) {
                warn!(dir = %self.dir.display(), "cannot store the fenced batches: {e}");
            }
        }
    }
}
