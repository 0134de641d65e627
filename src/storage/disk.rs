//! The file operations a partition's durability rests on: writing record data into a
//! segment's `.log`, and syncing it. The log calls them here rather than on the file, so that
//! one place sees every write and sync that decides what survives a power loss.
//!
//! Today that place keeps a **sync journal** for durability tests. A `kill -9` keeps the
//! page cache, so on its own it cannot tell `--fsync always` from `never`; a test needs to
//! know what an fdatasync made durable. When the environment variable [`SYNC_JOURNAL_ENV`]
//! names a file at start ([`init_sync_journal`]), every successful sync of a `.log` appends
//! the line `<path relative to the data directory> <bytes>` to it: the end of the record
//! data that sync covered (not the zeros preallocated past it). A test then cuts every
//! `.log` back to its last line (no line: to 0 bytes), which is what a power loss leaves.
//! Unset, the cost is one load of a `OnceLock` per sync.
//!
//! This is also where faults are to be injected later (torn writes, bit flips, `EIO`,
//! `ENOSPC`): the writes and syncs whose failure the log must survive all pass through here.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::BytesMut;
use compio::buf::BufResult;
use compio::fs::File;
use compio::io::AsyncWriteAtExt;

use super::error::StorageError;

/// The environment variable that names the sync journal file (tests only).
pub const SYNC_JOURNAL_ENV: &str = "EVENTFLOW_SYNC_JOURNAL";

struct SyncJournal {
    file: fs::File,
    data_dir: PathBuf,
}

static JOURNAL: OnceLock<Option<SyncJournal>> = OnceLock::new();

thread_local! {
    /// The longest synced data length recorded per `.log` by this thread (the file's owning
    /// shard). A sync of all dirty segments may start before a group-commit round's write
    /// and end after that round's own sync; its line must not move the file's length back.
    static SYNCED: RefCell<HashMap<PathBuf, u64>> = RefCell::new(HashMap::new());
}

/// Reads [`SYNC_JOURNAL_ENV`] and, if it is set, opens that file for appending (creating
/// it). Paths in the journal are relative to `data_dir`. Call once at start, before any
/// partition is opened; later calls change nothing.
pub fn init_sync_journal(data_dir: &Path) -> io::Result<()> {
    let Some(path) = std::env::var_os(SYNC_JOURNAL_ENV) else {
        let _ = JOURNAL.set(None);
        return Ok(());
    };
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let _ = JOURNAL.set(Some(SyncJournal {
        file,
        data_dir: data_dir.to_path_buf(),
    }));
    Ok(())
}

/// Writes `chunk` (whole batches) at `at` of the log at `path`, in one gathered write.
pub(crate) async fn write_log(
    file: &File,
    path: &Path,
    chunk: Vec<BytesMut>,
    at: u64,
) -> Result<(), StorageError> {
    let mut writer = file;
    let BufResult(written, _chunk) = writer.write_vectored_all_at(chunk, at).await;
    written.map_err(|e| StorageError::io(path, e))
}

/// `fdatasync`s the log at `path`, whose record data ends at `data_len` (bytes past it, if
/// any, are preallocated zeros). Every write below `data_len` completed before the call.
pub(crate) async fn sync_log(file: &File, path: &Path, data_len: u64) -> Result<(), StorageError> {
    let started = std::time::Instant::now();
    file.sync_data()
        .await
        .map_err(|e| StorageError::io(path, e))?;
    crate::metrics::shard::fdatasync(started.elapsed());
    record_sync(path, data_len, false);
    Ok(())
}

/// Notes that the log at `path` now holds exactly `data_len` durable bytes of record data:
/// it was just created (0), or cut back and synced by recovery.
pub(crate) fn log_reset(path: &Path, data_len: u64) {
    record_sync(path, data_len, true);
}

fn record_sync(path: &Path, data_len: u64, reset: bool) {
    let Some(Some(journal)) = JOURNAL.get() else {
        return;
    };
    let len = SYNCED.with(|synced| {
        let mut synced = synced.borrow_mut();
        let entry = synced.entry(path.to_path_buf()).or_insert(0);
        *entry = if reset {
            data_len
        } else {
            (*entry).max(data_len)
        };
        *entry
    });
    let relative = path.strip_prefix(&journal.data_dir).unwrap_or(path);
    let line = format!("{} {len}\n", relative.display());
    // One write of a short line to a file opened for appending: lines from several shards
    // do not interleave.
    if let Err(e) = (&journal.file).write_all(line.as_bytes()) {
        tracing::warn!(error = %e, "cannot write the sync journal");
    }
}
