//! Logs the broker keeps for itself: committed group offsets and share-group state. Each is
//! an ordinary [`PartitionLog`] of key/value records under `<data>/meta/`, replayed in full
//! when it is opened (the last value of a key wins, a null value deletes it). To keep them
//! bounded, the owner writes a checkpoint (every live key again) after every
//! [`CHECKPOINT_BYTES`] appended, and retention keeps [`RETAINED_BYTES`], more than the span
//! between two checkpoints, so the newest value of every live key always survives it.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;

use super::partitions::storage_error;
use crate::protocol::batch::{self, BatchBuilder, BatchError, ValidBatch};
use crate::protocol::{ErrorCode, WireError};
use crate::storage::{FsyncPolicy, LogConfig, PartitionLog, Runs};

/// Appended bytes between two checkpoints.
pub(crate) const CHECKPOINT_BYTES: u64 = 16 << 20;
/// Bytes retention keeps (segments are [`SEGMENT_BYTES`]).
const RETAINED_BYTES: u64 = 4 * CHECKPOINT_BYTES;
const SEGMENT_BYTES: u64 = 4 << 20;
/// Largest read while replaying.
const REPLAY_READ_BYTES: usize = 4 << 20;

/// An internal key/value log.
pub(crate) struct InternalLog {
    log: Rc<PartitionLog>,
    since_checkpoint: Cell<u64>,
    /// A checkpoint is being written: appends meanwhile do not start another.
    checkpointing: Cell<bool>,
}

impl InternalLog {
    /// Opens the log in `dir` in the broker's run `runs`, and returns it with every live
    /// key's last value.
    pub(crate) async fn open(
        dir: PathBuf,
        fsync: FsyncPolicy,
        runs: Runs,
    ) -> Result<(InternalLog, HashMap<Bytes, Bytes>), WireError> {
        let config = LogConfig {
            segment_bytes: SEGMENT_BYTES,
            segment_ms: None,
            retention_ms: None,
            retention_bytes: Some(RETAINED_BYTES),
            // The interval timer syncs only topic logs: internal records are few and small,
            // so they are synced before their acknowledgement instead.
            fsync: match fsync {
                FsyncPolicy::Never => FsyncPolicy::Never,
                _ => FsyncPolicy::Always,
            },
            ..LogConfig::default()
        };
        let log = PartitionLog::open_in_run(dir.clone(), config, 0, runs)
            .await
            .map_err(|e| storage(&dir, "opening", e))?;
        let log = Rc::new(log);
        let mut live = HashMap::new();
        let mut offset = log.log_start_offset();
        while offset < log.high_watermark() {
            let read = log
                .read_batches(offset, REPLAY_READ_BYTES, false)
                .await
                .map_err(|e| storage(&dir, "replaying", e))?;
            if read.records.is_empty() {
                break;
            }
            if let Some(next) =
                replay(&read.records, &mut live).map_err(|e| storage(&dir, "replaying", e))?
            {
                offset = next;
            }
        }
        let internal = InternalLog {
            log,
            since_checkpoint: Cell::new(0),
            checkpointing: Cell::new(false),
        };
        Ok((internal, live))
    }

    /// Appends records (`None` value: delete the key) and resolves once they are as durable
    /// as the broker promises. Returns whether a checkpoint is due.
    pub(crate) async fn append(
        &self,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<bool, WireError> {
        if records.is_empty() {
            return Ok(false);
        }
        let batch = batch_of(records)?;
        let len = batch.len() as u64;
        self.log.append(vec![batch]).await.map_err(storage_error)?;
        self.since_checkpoint.set(self.since_checkpoint.get() + len);
        Ok(self.since_checkpoint.get() >= CHECKPOINT_BYTES && !self.checkpointing.get())
    }

    /// Writes every live key again, then lets retention drop what the checkpoint made
    /// redundant. `live` must be the owner's current values, taken when the checkpoint
    /// starts (values appended meanwhile come after it in the log, so they still win).
    /// One checkpoint at a time: a call while one runs returns at once.
    pub(crate) async fn checkpoint(
        &self,
        live: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), WireError> {
        if self.checkpointing.replace(true) {
            return Ok(());
        }
        let written = async {
            // One append call for every chunk: the log queues them all at once, so a value
            // appended while the checkpoint is written lands after all of them and wins on
            // replay (chunk by chunk, a later chunk's older value could follow it).
            let batches = live
                .chunks(4096)
                .map(batch_of)
                .collect::<Result<Vec<_>, _>>()?;
            if !batches.is_empty() {
                self.log.append(batches).await.map_err(storage_error)?;
            }
            self.log
                .enforce_retention(now_ms())
                .await
                .map(drop)
                .map_err(storage_error)
        }
        .await;
        // The checkpoint's own records do not count towards the next one.
        self.since_checkpoint.set(0);
        self.checkpointing.set(false);
        written
    }

    /// Closes the log (shutdown, or its topic was deleted).
    pub(crate) async fn close(&self) {
        let _ = self.log.close().await;
    }
}

/// One batch of key/value records (`None`: delete the key).
/// Applies the records of `records` (whole batches, as a read returns them) to `live`: the
/// last value of a key wins, a null value deletes it. Returns the offset after the last
/// record applied, if any.
pub(crate) fn replay(
    records: &[u8],
    live: &mut HashMap<Bytes, Bytes>,
) -> Result<Option<i64>, BatchError> {
    let mut next = None;
    for b in batch::batches(records) {
        let (start, header) = b?;
        let b = &records[start..start + header.total_len()];
        for r in batch::records(b)? {
            let r = r?;
            // An offset read from disk: the last one possible has no successor.
            next = Some(
                r.offset
                    .checked_add(1)
                    .ok_or(BatchError::InvalidRecord("a record offset of i64::MAX"))?,
            );
            let Some(key) = r.key else { continue };
            match r.value {
                Some(v) => live.insert(Bytes::copy_from_slice(key), Bytes::copy_from_slice(v)),
                None => live.remove(key),
            };
        }
    }
    Ok(next)
}

fn batch_of(records: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<ValidBatch, WireError> {
    let mut builder = BatchBuilder::new();
    let now = now_ms();
    for (key, value) in records {
        builder.push(now, Some(key), value.as_deref(), &[]);
    }
    ValidBatch::new(builder.finish(), usize::MAX).map_err(|e| {
        // Built here, so a failure is the broker's own bug.
        tracing::error!("an internal log batch failed its own validation: {e}");
        WireError::new(ErrorCode::Unknown, format!("internal log batch: {e}"))
    })
}

/// An internal log that cannot be opened or replayed: the log line names the directory,
/// the client hears which kind of log failed (the full path is the broker's business).
fn storage(dir: &std::path::Path, doing: &str, e: impl std::fmt::Display) -> WireError {
    tracing::error!(dir = %dir.display(), "{doing} an internal log: {e}");
    let kind = match dir
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
    {
        Some("offsets") => "a group offsets log",
        _ => "a share-state log",
    };
    WireError::new(
        ErrorCode::StorageError,
        format!("{doing} {kind} failed (the broker's log says why)"),
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
