//! Every file operation of a partition log that its durability and integrity rest on: the
//! writes and reads of `.log`, index and snapshot files, their syncs, length changes, opens
//! and removals, and the blocking ones recovery does at start. The log, its segments and
//! recovery call the functions here and never the file itself, so one place sees every
//! operation that decides what a power loss leaves and what a read returns.
//!
//! **The seam for fault injection** is a check at the top of each function, compiled into
//! test builds only (`#[cfg(test)]`): when the thread has a fault disk installed
//! (`fault.rs`), the operation goes to it instead (blocking, deterministic, and failing,
//! tearing, losing or flipping bytes as its seed says). A release build has no check at
//! all: each function is the plain `compio` call it replaced, with no dynamic dispatch and
//! no allocation beyond what the call itself did. A trait over file handles would have put a
//! type parameter or a `dyn` on every segment for the sake of tests; a per-thread switch
//! that exists only in tests costs production nothing and keeps the handles `compio` files.
//!
//! This place also keeps a **sync journal** for durability tests. A `kill -9` keeps the
//! page cache, so on its own it cannot tell `--fsync always` from `never`; a test needs to
//! know what an fdatasync made durable. When the environment variable [`SYNC_JOURNAL_ENV`]
//! names a file at start ([`init_sync_journal`]), every successful sync of a `.log` appends
//! the line `<path relative to the data directory> <bytes>` to it: the end of the record
//! data that sync covered (not the zeros preallocated past it). A test then cuts every
//! `.log` back to its last line (no line: to 0 bytes), which is what a power loss leaves.
//! Unset, the cost is one load of a `OnceLock` per sync.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::BytesMut;
use compio::buf::{BufResult, IntoInner, IoBuf};
use compio::fs::{File, OpenOptions};
use compio::io::{AsyncReadAtExt, AsyncWriteAtExt};

use super::direct::AlignedChunk;
use super::error::StorageError;
#[cfg(test)]
use super::fault;

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

/// Opens the file at `path` for reading and writing; `create`: creates it, or empties it
/// if it exists.
pub(crate) async fn open(path: &Path, create: bool) -> Result<File, StorageError> {
    #[cfg(test)]
    if fault::active() {
        return fault_open(path, create);
    }
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if create {
        options.create(true).truncate(true);
    }
    options
        .open(path)
        .await
        .map_err(|e| StorageError::io(path, e))
}

/// Opens the existing file at `path` for `O_DIRECT` writes (preallocation's zeros, and the
/// appends of `--log-writes direct`).
pub(crate) async fn open_direct(path: &Path) -> Result<File, StorageError> {
    #[cfg(test)]
    if fault::active() {
        // The simulated disk has no use for O_DIRECT: its writes are blocking anyway.
        return fault_open(path, false);
    }
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .await
        .map_err(|e| StorageError::io(path, e))
}

/// Writes `chunk` (whole batches) at `at` of the log at `path`, in one gathered write, and
/// gives the buffers back.
pub(crate) async fn write_log(
    file: &File,
    path: &Path,
    chunk: Vec<BytesMut>,
    at: u64,
) -> Result<Vec<BytesMut>, StorageError> {
    #[cfg(test)]
    if fault::active() {
        let bytes: Vec<u8> = chunk.iter().flat_map(|b| b.iter().copied()).collect();
        return fault_write(file, path, &bytes, at).map(|()| chunk);
    }
    let mut writer = file;
    let BufResult(written, chunk) = writer.write_vectored_all_at(chunk, at).await;
    written.map_err(|e| StorageError::io(path, e))?;
    Ok(chunk)
}

/// Writes `chunk` (whole blocks: the partial block before a chunk, the chunk, zeros) at `at`
/// of the log at `path`, opened with `O_DIRECT`, in one vectored write, and gives the
/// buffers back.
pub(crate) async fn write_log_direct(
    file: &File,
    path: &Path,
    chunk: AlignedChunk,
    at: u64,
) -> Result<AlignedChunk, StorageError> {
    #[cfg(test)]
    if fault::active() {
        let bytes: Vec<u8> = chunk.bytes().flatten().copied().collect();
        fault_write(file, path, &bytes, at)?;
        return Ok(chunk);
    }
    // One write takes at most IOV_MAX (1024) buffers: a chunk of more than 1 GiB takes
    // several, one after the other.
    const IOV_MAX: usize = 1024;
    let mut writer = file;
    let (mut bufs, mut written_bufs) = (chunk.into_bufs(), Vec::new());
    let mut position = at;
    while !bufs.is_empty() {
        let rest = bufs.split_off(bufs.len().min(IOV_MAX));
        let len = bufs.iter().map(|b| b.as_ref().len() as u64).sum::<u64>();
        let BufResult(written, group) = writer.write_vectored_all_at(bufs, position).await;
        written.map_err(|e| StorageError::io(path, e))?;
        written_bufs.extend(group);
        position += len;
        bufs = rest;
    }
    Ok(AlignedChunk::from_bufs(written_bufs))
}

/// Writes all of `buf` at `at` of `file` (an index, a snapshot, preallocated zeros).
pub(crate) async fn write_at<B: IoBuf>(
    file: &File,
    path: &Path,
    buf: B,
    at: u64,
) -> Result<(), StorageError> {
    #[cfg(test)]
    if fault::active() {
        return fault_write(file, path, buf.as_init(), at);
    }
    let mut writer = file;
    let BufResult(written, _) = writer.write_all_at(buf, at).await;
    written.map_err(|e| StorageError::io(path, e))
}

/// Reads exactly `len` bytes at `pos` of `file`, which the caller knows are written.
pub(crate) async fn read_exact_at(
    file: &File,
    path: &Path,
    pos: u64,
    len: usize,
) -> Result<BytesMut, StorageError> {
    #[cfg(test)]
    if fault::active() {
        let mut buf = BytesMut::zeroed(len);
        let std_file = as_std(file);
        fault::with(|d| d.read(&std_file, pos, &mut buf)).map_err(|e| StorageError::io(path, e))?;
        return Ok(buf);
    }
    let buf = BytesMut::with_capacity(len).slice(..len);
    let BufResult(result, buf) = file.read_exact_at(buf, pos).await;
    result.map_err(|e| StorageError::io(path, e))?;
    let mut buf = buf.into_inner();
    // The read fills the slice; the buffer's own capacity may be larger.
    buf.truncate(len);
    Ok(buf)
}

/// `fdatasync`s the log at `path`, whose record data ends at `data_len` (bytes past it, if
/// any, are preallocated zeros). Every write below `data_len` completed before the call.
pub(crate) async fn sync_log(file: &File, path: &Path, data_len: u64) -> Result<(), StorageError> {
    let started = std::time::Instant::now();
    sync_data(file, path).await?;
    crate::metrics::shard::fdatasync(started.elapsed());
    record_sync(path, data_len, false);
    Ok(())
}

/// `fdatasync`s `file` (an index, a snapshot, a log whose length the journal need not see).
pub(crate) async fn sync_data(file: &File, path: &Path) -> Result<(), StorageError> {
    #[cfg(test)]
    if fault::active() {
        let yields = fault::with(|d| d.sync(path)).map_err(|e| StorageError::io(path, e))?;
        for _ in 0..yields {
            fault::yield_now().await;
        }
        return Ok(());
    }
    file.sync_data()
        .await
        .map_err(|e| StorageError::io(path, e))
}

/// Sets the length of `file` (a cut-back after a failed write, a trim of preallocated zeros).
pub(crate) async fn set_len(file: &File, path: &Path, len: u64) -> Result<(), StorageError> {
    #[cfg(test)]
    if fault::active() {
        let std_file = as_std(file);
        return fault::with(|d| d.set_len(&std_file, path, len))
            .map_err(|e| StorageError::io(path, e));
    }
    file.set_len(len)
        .await
        .map_err(|e| StorageError::io(path, e))
}

/// The length of `file`.
pub(crate) async fn file_len(file: &File, path: &Path) -> Result<u64, StorageError> {
    #[cfg(test)]
    if fault::active() {
        let std_file = as_std(file);
        return fault::with(fault::FaultDisk::other)
            .and_then(|()| std_file.metadata())
            .map(|m| m.len())
            .map_err(|e| StorageError::io(path, e));
    }
    file.metadata()
        .await
        .map(|m| m.len())
        .map_err(|e| StorageError::io(path, e))
}

/// Removes the file at `path`; one already gone is no error.
pub(crate) async fn remove(path: &Path) -> Result<(), StorageError> {
    #[cfg(test)]
    if fault::active() {
        fault::with(|d| d.remove(path)).map_err(|e| StorageError::io(path, e))?;
        return ignore_not_found(std::fs::remove_file(path)).map_err(|e| StorageError::io(path, e));
    }
    ignore_not_found(compio::fs::remove_file(path).await).map_err(|e| StorageError::io(path, e))
}

/// Renames the file `from` to `to`, replacing `to` if it exists: a crash leaves one name or
/// the other (durable once the directory is synced).
pub(crate) async fn rename(from: &Path, to: &Path) -> Result<(), StorageError> {
    #[cfg(test)]
    if fault::active() {
        fault::with(|d| d.rename(from, to)).map_err(|e| StorageError::io(from, e))?;
        return std::fs::rename(from, to).map_err(|e| StorageError::io(from, e));
    }
    compio::fs::rename(from, to)
        .await
        .map_err(|e| StorageError::io(from, e))
}

/// Makes the entries of directory `dir` (a new or removed file) durable.
pub(crate) async fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    #[cfg(test)]
    if fault::active() {
        // Directory entries are durable at once on the simulated disk.
        return fault::with(fault::FaultDisk::other).map_err(|e| StorageError::io(dir, e));
    }
    let handle = File::open(dir)
        .await
        .map_err(|e| StorageError::io(dir, e))?;
    handle
        .sync_all()
        .await
        .map_err(|e| StorageError::io(dir, e))
}

/// Whether reading ahead into the page cache makes sense (not on the simulated disk).
pub(crate) fn real() -> bool {
    #[cfg(test)]
    if fault::active() {
        return false;
    }
    true
}

// Blocking variants, for recovery, which runs before the partition serves anything.

/// Opens the existing file at `path` for reading and writing (blocking).
pub(crate) fn open_blocking(path: &Path) -> Result<std::fs::File, StorageError> {
    #[cfg(test)]
    if fault::active() {
        fault::with(|d| d.open(path, false)).map_err(|e| StorageError::io(path, e))?;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| StorageError::io(path, e))
}

/// Reads exactly `buf.len()` bytes at `pos` of `file` (blocking).
pub(crate) fn read_at_blocking(
    file: &std::fs::File,
    path: &Path,
    pos: u64,
    buf: &mut [u8],
) -> Result<(), StorageError> {
    #[cfg(test)]
    if fault::active() {
        return fault::with(|d| d.read_unflipped(file, pos, buf))
            .map_err(|e| StorageError::io(path, e));
    }
    file.read_exact_at(buf, pos)
        .map_err(|e| StorageError::io(path, e))
}

/// Cuts `file` to `len` bytes and syncs it (blocking).
pub(crate) fn truncate_blocking(
    file: &std::fs::File,
    path: &Path,
    len: u64,
) -> Result<(), StorageError> {
    #[cfg(test)]
    if fault::active() {
        return fault::with(|d| {
            d.set_len(file, path, len)?;
            d.sync(path).map(drop)
        })
        .map_err(|e| StorageError::io(path, e));
    }
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .map_err(|e| StorageError::io(path, e))
}

/// `fsync`s `file` (blocking).
pub(crate) fn sync_blocking(file: &std::fs::File, path: &Path) -> Result<(), StorageError> {
    #[cfg(test)]
    if fault::active() {
        return fault::with(|d| d.sync(path).map(drop)).map_err(|e| StorageError::io(path, e));
    }
    file.sync_all().map_err(|e| StorageError::io(path, e))
}

/// Replaces the contents of the file at `path` with `bytes` (creating it) and, if `sync`,
/// syncs it (blocking).
pub(crate) fn write_file_blocking(
    path: &Path,
    bytes: &[u8],
    sync: bool,
) -> Result<(), StorageError> {
    #[cfg(test)]
    if fault::active() {
        fault::with(|d| d.open(path, true)).map_err(|e| StorageError::io(path, e))?;
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| StorageError::io(path, e))?;
        return fault::with(|d| {
            d.write(&file, path, 0, bytes)?;
            if sync {
                d.sync(path)?;
            }
            Ok(())
        })
        .map_err(|e| StorageError::io(path, e));
    }
    std::fs::write(path, bytes).map_err(|e| StorageError::io(path, e))?;
    if sync {
        let file = std::fs::File::open(path).map_err(|e| StorageError::io(path, e))?;
        file.sync_all().map_err(|e| StorageError::io(path, e))?;
    }
    Ok(())
}

/// Removes the file at `path` (blocking); `Ok(false)` if there was none.
pub(crate) fn remove_blocking(path: &Path) -> Result<bool, StorageError> {
    #[cfg(test)]
    if fault::active() {
        fault::with(|d| d.remove(path)).map_err(|e| StorageError::io(path, e))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StorageError::io(path, e)),
    }
}

/// Renames the file `from` to `to`, replacing `to` (blocking).
pub(crate) fn rename_blocking(from: &Path, to: &Path) -> Result<(), StorageError> {
    #[cfg(test)]
    if fault::active() {
        fault::with(|d| d.rename(from, to)).map_err(|e| StorageError::io(from, e))?;
    }
    std::fs::rename(from, to).map_err(|e| StorageError::io(from, e))
}

/// Syncs the entries of directory `dir` (blocking).
pub(crate) fn sync_dir_blocking(dir: &Path) -> Result<(), StorageError> {
    #[cfg(test)]
    if fault::active() {
        return fault::with(fault::FaultDisk::other).map_err(|e| StorageError::io(dir, e));
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(dir, e))
}

fn ignore_not_found(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The simulated disk's open: blocking, and turned into a `compio` file.
#[cfg(test)]
fn fault_open(path: &Path, create: bool) -> Result<File, StorageError> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    fault::with(|d| d.open(path, create)).map_err(|e| StorageError::io(path, e))?;
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(create)
        .open(path)
        .map_err(|e| StorageError::io(path, e))?;
    // SAFETY: the descriptor was just taken out of a `std` file that gives up owning it, so
    // the `compio` file is its only owner.
    Ok(unsafe { File::from_raw_fd(file.into_raw_fd()) })
}

/// The `compio` file as a `std` one that does not close the descriptor when dropped.
#[cfg(test)]
fn as_std(file: &File) -> std::mem::ManuallyDrop<fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: the descriptor stays open while `file` lives, which outlives the returned
    // view at every call site, and `ManuallyDrop` never closes it.
    std::mem::ManuallyDrop::new(unsafe { fs::File::from_raw_fd(file.as_raw_fd()) })
}

#[cfg(test)]
fn fault_write(file: &File, path: &Path, bytes: &[u8], at: u64) -> Result<(), StorageError> {
    let std_file = as_std(file);
    fault::with(|d| d.write(&std_file, path, at, bytes)).map_err(|e| StorageError::io(path, e))
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
