//! Work on a partition outside the append path: syncing dirty segments (`--fsync interval`
//! and shutdown), deleting segments past retention, taking a new config, and closing.

use std::os::unix::fs::MetadataExt;

use compio::fs::File;
use tracing::{info, warn};

use super::state::{sync_dir, PartitionLog};
use crate::storage::config::LogConfig;
use crate::storage::disk;
use crate::storage::error::StorageError;
use crate::storage::recovery;
use crate::storage::runs;
use crate::storage::segment::{Segment, SegmentFiles};

impl PartitionLog {
    /// Syncs every segment written since its last sync (data and index files).
    pub async fn sync(&self) -> Result<(), StorageError> {
        if self.closed.get() {
            return Err(StorageError::Closed);
        }
        self.sync_dirty().await
    }

    pub(super) async fn sync_dirty(&self) -> Result<(), StorageError> {
        let dirty: Vec<(i64, File, u64, File, File, SegmentFiles)> = self
            .segments
            .borrow_mut()
            .iter_mut()
            .filter(|s| s.dirty)
            .map(|s| {
                s.dirty = false;
                (
                    s.base_offset,
                    s.log.clone(),
                    s.size,
                    s.index_file.clone(),
                    s.time_index_file.clone(),
                    s.files.clone(),
                )
            })
            .collect();
        for (base, log, size, index, time_index, files) in dirty {
            if let Err(e) = Segment::sync_files(&log, size, &index, &time_index, &files).await {
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
    /// still hold `retention_bytes`; only under a cleanup policy that includes `delete`.
    /// Returns how many were deleted. Idle idempotent
    /// producers expire in the same pass (`expire_producers`).
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize, StorageError> {
        if self.closed.get() {
            return Err(StorageError::Closed);
        }
        self.expire_producers(now_ms);
        let config = self.config.borrow().clone();
        // A running compaction is swapping segment files; the next pass deletes.
        if !config.cleanup.delete || self.compacting.get() {
            return Ok(0);
        }
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
        if !removed.is_empty() {
            self.drop_fences_before(self.log_start.get());
        }
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
        self.snapshot_at_close().await;
        let finished = self.finish_active().await;
        let synced = self.sync_dirty().await.and(finished);
        if synced.is_ok() {
            self.mark_clean_stop().await;
        }
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

    /// Leaves the clean-stop marker ([`recovery::CLEAN_STOP_MARKER`]), naming this run, once
    /// everything is synced, so the next start need not CRC-check the whole active segment.
    /// Not outside a broker's run, nor in a directory that moved (a deleted topic's), and a
    /// failure only costs that check. The marker's bytes are not synced: torn or lost by a
    /// power loss, they name no run and the next start checks more.
    async fn mark_clean_stop(&self) {
        let Some(run) = self.run else {
            return;
        };
        let ours = std::fs::metadata(&self.dir).is_ok_and(|m| (m.dev(), m.ino()) == self.dir_id);
        if !ours {
            return;
        }
        let path = self.dir.join(recovery::CLEAN_STOP_MARKER);
        let written = async {
            // A small file, once, at shutdown: a blocking write is fine here.
            disk::write_file_blocking(&path, &runs::encode(run), false)?;
            sync_dir(&self.dir).await
        };
        if let Err(e) = written.await {
            warn!("cannot leave the clean-stop marker, the next start checks more: {e}");
        }
    }
}
