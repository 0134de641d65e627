//! The idempotent producers' state of a partition on disk: snapshots of the producer table,
//! so that recovery replays only the batch headers written after the newest one.
//!
//! A snapshot `<offset>.producers` is the table with every batch below `offset` recorded
//! and none at or above it. The flush task takes one when it rolls a segment (at the new
//! segment's base) and after a round once [`SNAPSHOT_EVERY_BYTES`] were written since the
//! last; `close` takes one at the log end. Only the flush task and `close` (which waits for
//! it) take them, when the table is exactly the log's. The two newest are kept: recovery
//! falls back to the older when the newer is damaged or ahead of a log a crash shortened.
//! A roll's snapshot is required: without it the roll (and the append that needs it) fails
//! and is tried again, since recovery with no snapshot knows the producers only from the
//! last two segments. Any other snapshot that cannot be written costs recovery time only,
//! so its failure is logged, never an append's error.

use std::os::unix::fs::MetadataExt;

use tracing::{debug, warn};

use super::state::PartitionLog;
use crate::storage::config::FsyncPolicy;
use crate::storage::disk;
use crate::storage::error::StorageError;
use crate::storage::recovery::snapshot_path;

/// Log bytes written between two snapshots (besides the one of every roll): bounds what
/// recovery reads after a crash.
pub(super) const SNAPSHOT_EVERY_BYTES: u64 = 64 << 20;

/// Snapshots kept on disk.
const SNAPSHOTS_KEPT: usize = 2;

impl PartitionLog {
    /// Writes the producer table as the snapshot at `offset`, which must be the high
    /// watermark or the base of a segment being started (the table then holds exactly
    /// the batches below it), and removes all but the newest [`SNAPSHOTS_KEPT`]. A failure
    /// is logged and returned: a roll must not go ahead without its snapshot (`commit.rs`).
    pub(super) async fn write_producer_snapshot(&self, offset: i64) -> Result<(), StorageError> {
        // A topic being deleted has had its directory renamed away (and the name may have
        // a new topic already): its last snapshots are of no use, and must not land there.
        let ours = std::fs::metadata(&self.dir).is_ok_and(|m| (m.dev(), m.ino()) == self.dir_id);
        if !ours {
            debug!(dir = %self.dir.display(), "no producer snapshot: the directory has moved");
            return Ok(());
        }
        let bytes = self.producers.borrow().encode_snapshot(offset);
        let path = snapshot_path(&self.dir, offset);
        let sync = self.config.borrow().fsync != FsyncPolicy::Never;
        let written = async {
            let file = disk::open(&path, true).await?;
            disk::write_at(&file, &path, bytes, 0).await?;
            if sync {
                disk::sync_data(&file, &path).await?;
            }
            Ok::<(), StorageError>(())
        }
        .await;
        if let Err(e) = written {
            // The next round tries again.
            self.unsnapshotted.set(SNAPSHOT_EVERY_BYTES);
            warn!(path = %path.display(), error = %e, "cannot write a producer snapshot");
            return Err(e);
        }
        self.unsnapshotted.set(0);
        let stale: Vec<i64> = {
            let mut snapshots = self.snapshots.borrow_mut();
            snapshots.retain(|&o| o != offset);
            snapshots.push(offset);
            let excess = snapshots.len().saturating_sub(SNAPSHOTS_KEPT);
            snapshots.drain(..excess).collect()
        };
        for old in stale {
            let path = snapshot_path(&self.dir, old);
            if let Err(e) = disk::remove(&path).await {
                warn!(path = %path.display(), error = %e, "cannot remove an old producer snapshot");
            }
        }
        Ok(())
    }

    /// After a round: a snapshot at the high watermark if [`SNAPSHOT_EVERY_BYTES`] were
    /// written since the last one.
    pub(super) async fn snapshot_if_due(&self) {
        if self.unsnapshotted.get() >= SNAPSHOT_EVERY_BYTES {
            // Logged; a later round or roll tries again.
            let _ = self
                .write_producer_snapshot(self.high_watermark.get())
                .await;
        }
    }

    /// At close: a snapshot at the log end unless the newest one is there already.
    pub(super) async fn snapshot_at_close(&self) {
        let end = self.high_watermark.get();
        if self.snapshots.borrow().last() != Some(&end) {
            // Logged; recovery replays from the previous snapshot instead.
            let _ = self.write_producer_snapshot(end).await;
        }
    }

    /// Forgets the idempotent producers not heard from on this partition for a day (as
    /// Kafka's `producer.id.expiration.ms`); returns how many. A forgotten producer's next
    /// batch is accepted at any sequence, but a retry of its older batches is no longer
    /// recognised.
    pub fn expire_producers(&self, now_ms: i64) -> usize {
        self.producers.borrow_mut().expire(now_ms)
    }

    /// Producer ids this partition knows.
    pub fn producer_count(&self) -> usize {
        self.producers.borrow().len()
    }
}
