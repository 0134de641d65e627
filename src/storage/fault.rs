//! A disk that breaks on purpose (tests only): the fault-injecting side of `disk.rs`.
//!
//! Installed on a thread ([`install`]), it takes over every file operation `disk.rs` is asked
//! to do there. Each operation is then done at once with a blocking system call on the file
//! (never through io_uring), so a single-threaded runtime driven by one seed runs the same
//! operations in the same order every time, and a simulated crash never leaves an operation
//! in flight. Faults are drawn from a seeded [`SimRng`], so a seed replays exactly.
//!
//! What is modelled:
//! - **The page cache and power loss.** Before each write or `set_len`, the bytes and the
//!   length it changes are kept in the file's undo list; a successful `fdatasync` of the
//!   file (through any handle) clears the list. [`FaultDisk::power_loss`] undoes, per file,
//!   nothing, a suffix, or a random subset of those changes, newest first, each whole or in
//!   512-byte sectors (a torn write: some sectors of it reached the disk, others did not).
//!   The file keeps its length unless the undone changes are a whole suffix.
//! - **A process crash** ([`FaultDisk::crash`]): from then on every operation fails, as if
//!   the process were gone; the page cache (the files as they are) survives, and so do the
//!   undo lists, so a later power loss can still take what was never synced.
//! - **`EIO`** on a write (after a sector-aligned prefix landed), a read, a sync (the write
//!   stays in the undo list: not durable), a `set_len` or an open; **`ENOSPC`** on a write
//!   (after a prefix); **bit flips** in the bytes a read returns (the file is unchanged);
//!   **slow syncs** (the syncing task yields to the others several times).
//!
//! Not modelled: directory entries (a created, removed or renamed file is durable at once,
//! and `fsync` of a directory always succeeds), misdirected writes, corruption at rest
//! (bit rot in the file itself), faults in blocking reads of whole small files (producer
//! snapshots, index files at recovery), and bit flips in recovery's reads (a flip there
//! would make recovery cut acknowledged batches, which only a re-read could tell from a
//! damaged batch).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A small deterministic PRNG (SplitMix64): the same seed gives the same faults.
#[derive(Debug, Clone)]
pub(crate) struct SimRng(u64);

impl SimRng {
    pub(crate) fn new(seed: u64) -> SimRng {
        SimRng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `[0, n)` (`n` > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `per_mille` / 1000.
    pub(crate) fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }
}

/// How often each fault strikes, per operation, in thousandths.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FaultRates {
    pub(crate) write_eio: u32,
    pub(crate) write_enospc: u32,
    pub(crate) read_eio: u32,
    pub(crate) read_flip: u32,
    pub(crate) sync_eio: u32,
    pub(crate) sync_slow: u32,
    pub(crate) set_len_eio: u32,
    pub(crate) open_eio: u32,
}

/// What the disk did, for the simulation's checks and its summary.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FaultStats {
    pub(crate) ops: u64,
    pub(crate) injected: u64,
    /// Reads whose returned bytes had a bit flipped.
    pub(crate) flips: u64,
    pub(crate) power_losses: u64,
    /// Changes undone by power losses.
    pub(crate) undone: u64,
}

/// One change to a file not yet made durable by a sync.
#[derive(Debug)]
struct Undo {
    /// Where the change starts.
    at: u64,
    /// How many bytes from `at` it changed (a write's length; for a `set_len`, the bytes
    /// between the two lengths).
    len: u64,
    /// The bytes `[at, min(at + len, old_len))` held before.
    old: Vec<u8>,
    /// The file's length before.
    old_len: u64,
}

/// The simulated disk of one thread.
#[derive(Debug)]
pub(crate) struct FaultDisk {
    rng: SimRng,
    rates: FaultRates,
    /// Faults are drawn only while this is set (the checks between steps read without).
    pub(crate) armed: bool,
    crashed: bool,
    /// The process crashes when the operation count reaches this.
    crash_at: Option<u64>,
    undo: HashMap<PathBuf, Vec<Undo>>,
    /// Writes to files with this extension fail with `EIO`, armed or not (targeted tests).
    pub(crate) fail_writes_to: Option<&'static str>,
    pub(crate) stats: FaultStats,
}

thread_local! {
    static DISK: RefCell<Option<FaultDisk>> = const { RefCell::new(None) };
}

/// Installs a fault disk on this thread, seeded with `seed`; it stays until [`uninstall`].
pub(crate) fn install(seed: u64, rates: FaultRates) {
    DISK.with(|d| {
        *d.borrow_mut() = Some(FaultDisk {
            rng: SimRng::new(seed),
            rates,
            armed: false,
            crashed: false,
            crash_at: None,
            undo: HashMap::new(),
            fail_writes_to: None,
            stats: FaultStats::default(),
        });
    });
}

/// Removes this thread's fault disk.
pub(crate) fn uninstall() {
    DISK.with(|d| d.borrow_mut().take());
}

/// Whether this thread has a fault disk: `disk.rs` then routes every operation here.
pub(crate) fn active() -> bool {
    DISK.with(|d| d.borrow().is_some())
}

/// Runs `f` on this thread's fault disk. Panics without one: `disk.rs` asks [`active`]
/// first, and the simulation installs one before anything else.
pub(crate) fn with<R>(f: impl FnOnce(&mut FaultDisk) -> R) -> R {
    DISK.with(|d| f(d.borrow_mut().as_mut().expect("a fault disk is installed")))
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

/// Granularity of torn writes.
const SECTOR: u64 = 512;

impl FaultDisk {
    /// Counts an operation; fails it if the process has crashed (or crashes now).
    fn begin(&mut self) -> io::Result<()> {
        self.stats.ops += 1;
        if self.crash_at.is_some_and(|at| self.stats.ops >= at) {
            self.crash_at = None;
            self.crashed = true;
        }
        if self.crashed {
            return Err(eio());
        }
        Ok(())
    }

    fn strike(&mut self, per_mille: u32) -> bool {
        if self.armed && per_mille > 0 && self.rng.chance(per_mille) {
            self.stats.injected += 1;
            true
        } else {
            false
        }
    }

    /// The simulation's own draws, from the same stream.
    pub(crate) fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }

    /// The process crashes once `ops` more operations have started (the one that reaches it
    /// fails).
    pub(crate) fn crash_after(&mut self, ops: u64) {
        self.crash_at = Some(self.stats.ops + ops.max(1));
    }

    /// Forgets a crash [`FaultDisk::crash_after`] planned that has not happened yet.
    pub(crate) fn cancel_crash(&mut self) {
        self.crash_at = None;
    }

    /// The process dies now: every later operation fails until [`FaultDisk::restart`].
    pub(crate) fn crash(&mut self) {
        self.crashed = true;
    }

    /// A new process: operations work again. Unsynced changes are still in the page cache
    /// (their undo lists stay) unless a power loss took them.
    pub(crate) fn restart(&mut self) {
        self.crashed = false;
        self.crash_at = None;
    }

    fn remember(&mut self, file: &fs::File, path: &Path, at: u64, len: u64) -> io::Result<()> {
        let old_len = file.metadata()?.len();
        let keep_to = (at + len).min(old_len);
        let mut old = vec![0u8; keep_to.saturating_sub(at) as usize];
        file.read_exact_at(&mut old, at)?;
        self.undo.entry(path.to_path_buf()).or_default().push(Undo {
            at,
            len,
            old,
            old_len,
        });
        Ok(())
    }

    /// Writes `data` at `at`, or fails (perhaps after a prefix of whole sectors landed).
    pub(crate) fn write(
        &mut self,
        file: &fs::File,
        path: &Path,
        at: u64,
        data: &[u8],
    ) -> io::Result<()> {
        self.begin()?;
        let targeted = self
            .fail_writes_to
            .is_some_and(|ext| path.extension().is_some_and(|e| e == ext));
        let error = if targeted || self.strike(self.rates.write_eio) {
            Some(eio())
        } else if self.strike(self.rates.write_enospc) {
            Some(io::Error::from_raw_os_error(libc::ENOSPC))
        } else {
            None
        };
        let landed = match &error {
            None => data.len(),
            Some(_) => {
                let sectors = data.len() as u64 / SECTOR;
                (self.rng.below(sectors + 1) * SECTOR) as usize
            }
        };
        if landed > 0 {
            self.remember(file, path, at, landed as u64)?;
            file.write_all_at(&data[..landed], at)?;
        }
        error.map_or(Ok(()), Err)
    }

    /// Reads exactly `buf.len()` bytes at `at`, or fails; may flip a bit of what it returns.
    pub(crate) fn read(&mut self, file: &fs::File, at: u64, buf: &mut [u8]) -> io::Result<()> {
        self.begin()?;
        if self.strike(self.rates.read_eio) {
            return Err(eio());
        }
        file.read_exact_at(buf, at)?;
        if !buf.is_empty() && self.strike(self.rates.read_flip) {
            let byte = self.rng.below(buf.len() as u64) as usize;
            buf[byte] ^= 1 << self.rng.below(8);
            self.stats.flips += 1;
        }
        Ok(())
    }

    /// A read that is never flipped (recovery's: see the module docs); it may fail.
    pub(crate) fn read_unflipped(
        &mut self,
        file: &fs::File,
        at: u64,
        buf: &mut [u8],
    ) -> io::Result<()> {
        self.begin()?;
        if self.strike(self.rates.read_eio) {
            return Err(eio());
        }
        file.read_exact_at(buf, at)
    }

    /// An `fdatasync` of the file at `path`: on success everything written to it so far is
    /// durable. Returns how many times the caller should yield first (a slow sync).
    pub(crate) fn sync(&mut self, path: &Path) -> io::Result<u32> {
        self.begin()?;
        if self.strike(self.rates.sync_eio) {
            return Err(eio());
        }
        self.undo.remove(path);
        Ok(if self.strike(self.rates.sync_slow) {
            1 + self.rng.below(8) as u32
        } else {
            0
        })
    }

    /// `ftruncate` to `len`.
    pub(crate) fn set_len(&mut self, file: &fs::File, path: &Path, len: u64) -> io::Result<()> {
        self.begin()?;
        if self.strike(self.rates.set_len_eio) {
            return Err(eio());
        }
        let old_len = file.metadata()?.len();
        if old_len != len {
            let at = len.min(old_len);
            self.remember(file, path, at, len.max(old_len) - at)?;
        }
        file.set_len(len)
    }

    /// Before a file at `path` is opened; `truncate`: it is created or emptied.
    pub(crate) fn open(&mut self, path: &Path, truncate: bool) -> io::Result<()> {
        self.begin()?;
        if self.strike(self.rates.open_eio) {
            return Err(eio());
        }
        if truncate {
            if let Ok(file) = fs::File::open(path) {
                let len = file.metadata()?.len();
                if len > 0 {
                    self.remember(&file, path, 0, len)?;
                }
            }
        }
        Ok(())
    }

    /// Before the file at `path` is removed (durable at once: its changes go with it).
    pub(crate) fn remove(&mut self, path: &Path) -> io::Result<()> {
        self.begin()?;
        self.undo.remove(path);
        Ok(())
    }

    /// Before the file `from` is renamed to `to` (durable at once, like every directory
    /// entry here): `from`'s unsynced changes go with it, and the file `to` replaced is gone.
    pub(crate) fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.begin()?;
        let moved = self.undo.remove(from);
        self.undo.remove(to);
        if let Some(changes) = moved {
            self.undo.insert(to.to_path_buf(), changes);
        }
        Ok(())
    }

    /// Any other operation (a directory sync, a metadata read): it fails only after a crash.
    pub(crate) fn other(&mut self) -> io::Result<()> {
        self.begin()
    }

    /// Power is lost: per file, the unsynced changes survive, or a suffix of them or a
    /// random subset is undone (newest first, each whole or by sectors). Call after
    /// [`FaultDisk::crash`], with no file open for writing by a live log.
    pub(crate) fn power_loss(&mut self) -> io::Result<()> {
        self.stats.power_losses += 1;
        let mut paths: Vec<PathBuf> = self.undo.keys().cloned().collect();
        paths.sort();
        for path in paths {
            let changes = self.undo.remove(&path).unwrap_or_default();
            let Ok(file) = fs::OpenOptions::new().write(true).open(&path) else {
                continue;
            };
            let mode = self.rng.below(4);
            // 0: all survive; 1: a suffix is undone; 2: a random subset; 3: all undone.
            let keep = match mode {
                0 => changes.len(),
                1 => self.rng.below(changes.len() as u64 + 1) as usize,
                _ => 0,
            };
            let mut suffix = true;
            for (i, change) in changes.iter().enumerate().rev() {
                let undo = match mode {
                    0 => false,
                    2 => self.rng.chance(500),
                    _ => i >= keep,
                };
                if !undo {
                    suffix = false;
                    continue;
                }
                self.stats.undone += 1;
                let torn = self.rng.chance(250);
                let mut at = change.at;
                let end = change.at + change.len;
                while at < end {
                    let to = ((at / SECTOR + 1) * SECTOR).min(end);
                    if !torn || self.rng.chance(500) {
                        let old_end = to.min(change.old_len).max(at);
                        let from_old = (at - change.at) as usize..(old_end - change.at) as usize;
                        if !from_old.is_empty() {
                            file.write_all_at(&change.old[from_old], at)?;
                        }
                        let current = file.metadata()?.len();
                        let zero_to = to.min(current);
                        if zero_to > old_end {
                            file.write_all_at(&vec![0u8; (zero_to - old_end) as usize], old_end)?;
                        }
                    } else {
                        suffix = false;
                    }
                    at = to;
                }
                if suffix {
                    file.set_len(change.old_len)?;
                }
            }
        }
        Ok(())
    }
}

/// Lets every other ready task run once before the caller goes on (a slow sync; the
/// simulation waiting for a crashed log's tasks to run out).
pub(crate) async fn yield_now() {
    YieldNow(false).await;
}

struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}
