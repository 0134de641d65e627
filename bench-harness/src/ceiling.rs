//! `ceiling`: what this machine can do at most, measured in the same run as the brokers, so
//! that a figure from one machine can be read against another's by its fraction of the bound
//! that limits it (a produce run with `--fsync never` cannot beat the page cache or loopback,
//! a consume run that reads its backlog from the disk cannot beat the disk's reads).
//!
//! Every measurement is bounded in bytes and in time, and the files it writes are removed
//! before it returns. Bandwidths are in 10^6 bytes per second, as the reports' MB/s.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::result::new_histogram;

/// Size of each socket write and file write or read: 1 MiB, the design's large-write size.
const CHUNK: usize = 1 << 20;
/// O_DIRECT needs buffers, offsets and lengths aligned to the logical block size; 4 KiB
/// covers the devices of this machine kind.
const ALIGN: usize = 4096;
/// The append that fdatasync makes durable each round.
const SYNC_APPEND: usize = 4096;

/// How much each measurement may move and for how long.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Where the file measurements write (the brokers' data directory's filesystem).
    pub dir: PathBuf,
    /// How long the loopback stream runs.
    pub loopback_time: Duration,
    /// Bytes written (and read back) through the page cache; kept under the kernel's
    /// writeback threshold so that it measures the cache, not the disk.
    pub cache_bytes: u64,
    /// Bytes written with O_DIRECT, then read back with O_DIRECT.
    pub direct_bytes: u64,
    /// 4 KiB append + fdatasync rounds.
    pub sync_rounds: u32,
    /// Upper bound on each file measurement, whatever its bytes or rounds.
    pub max_time: Duration,
}

impl Limits {
    /// About two seconds in all on this machine kind.
    pub fn new(dir: &Path) -> Limits {
        Limits {
            dir: dir.to_path_buf(),
            loopback_time: Duration::from_secs(1),
            cache_bytes: 256 << 20,
            direct_bytes: 128 << 20,
            sync_rounds: 300,
            max_time: Duration::from_secs(2),
        }
    }
}

/// The machine's ceilings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ceiling {
    /// Loopback TCP, one stream, 1 MiB writes, MB/s.
    pub loopback_mb_per_s: f64,
    /// Buffered 1 MiB writes to a new file (no sync), MB/s.
    pub page_cache_write_mb_per_s: f64,
    /// 1 MiB reads of that file while it is in the page cache, MB/s.
    pub page_cache_read_mb_per_s: f64,
    /// O_DIRECT 1 MiB writes from an aligned buffer, then one fdatasync, MB/s.
    pub direct_write_mb_per_s: f64,
    /// O_DIRECT 1 MiB reads of what those writes wrote, one at a time, MB/s: the device's
    /// own reads, which a backlog no cache holds is read at. 0 in results saved before it
    /// was measured.
    #[serde(default)]
    pub direct_read_mb_per_s: f64,
    /// Latency of fdatasync after a 4 KiB append, µs.
    pub fdatasync_p50_us: f64,
    pub fdatasync_p99_us: f64,
    /// Filesystem type of the directory measured.
    pub filesystem: String,
}

/// Where a run's log bytes went or came from: memory (the page cache, or a broker's own
/// cache) or the device itself (a log written with `O_DIRECT`, a backlog read from disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    Memory,
    Device,
}

/// The figure that bounds a run's throughput, and the name it goes by in reports.
pub struct Bound {
    pub name: &'static str,
    pub mb_per_s: f64,
}

impl Ceiling {
    /// Measures everything within `limits`.
    pub fn measure(limits: &Limits) -> Result<Ceiling> {
        std::fs::create_dir_all(&limits.dir)
            .with_context(|| format!("creating {}", limits.dir.display()))?;
        let (page_cache_write_mb_per_s, page_cache_read_mb_per_s) = page_cache(limits)?;
        let (fdatasync_p50_us, fdatasync_p99_us) = fdatasync(limits)?;
        let (direct_write_mb_per_s, direct_read_mb_per_s) = direct(limits)?;
        Ok(Ceiling {
            loopback_mb_per_s: loopback(limits.loopback_time)?,
            page_cache_write_mb_per_s,
            page_cache_read_mb_per_s,
            direct_write_mb_per_s,
            direct_read_mb_per_s,
            fdatasync_p50_us,
            fdatasync_p99_us,
            filesystem: crate::machine::filesystem_of(&limits.dir),
        })
    }

    /// What bounds a run of `kind`: records pass loopback once, and are written to
    /// (`produce`, `e2e`) or read from (`consume`) `medium`: the page cache, or the device,
    /// which a broker that owns its writes writes to with `O_DIRECT` (eventflowd's default)
    /// and a backlog no cache holds is read from. A durable run is further bound by
    /// fdatasync latency, which the reports show beside it. Results saved before the
    /// device's reads were measured are read against the page cache.
    pub fn bound(&self, kind: &str, medium: Medium) -> Bound {
        let device = medium == Medium::Device;
        let (name, disk) = match kind {
            "consume" if device && self.direct_read_mb_per_s > 0.0 => {
                ("O_DIRECT read", self.direct_read_mb_per_s)
            }
            "consume" => ("page-cache read", self.page_cache_read_mb_per_s),
            _ if device => ("O_DIRECT write", self.direct_write_mb_per_s),
            _ => ("page-cache write", self.page_cache_write_mb_per_s),
        };
        if self.loopback_mb_per_s < disk {
            Bound {
                name: "loopback",
                mb_per_s: self.loopback_mb_per_s,
            }
        } else {
            Bound {
                name,
                mb_per_s: disk,
            }
        }
    }

    /// Plain-text table for the terminal.
    pub fn table(&self) -> String {
        let rows = [
            ("loopback TCP, 1 MiB writes", mb(self.loopback_mb_per_s)),
            ("page-cache write", mb(self.page_cache_write_mb_per_s)),
            ("page-cache read", mb(self.page_cache_read_mb_per_s)),
            ("O_DIRECT write", mb(self.direct_write_mb_per_s)),
            ("O_DIRECT read", mb(self.direct_read_mb_per_s)),
            (
                "fdatasync after 4 KiB, p50",
                format!("{:.0} µs", self.fdatasync_p50_us),
            ),
            (
                "fdatasync after 4 KiB, p99",
                format!("{:.0} µs", self.fdatasync_p99_us),
            ),
        ];
        let width = rows
            .iter()
            .map(|(n, _)| n.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = format!("ceilings on this machine ({}):\n", self.filesystem);
        for (name, value) in rows {
            out.push_str(&format!("  {name:<width$}  {value:>12}\n"));
        }
        out
    }
}

fn mb(v: f64) -> String {
    format!("{v:.0} MB/s")
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64().max(1e-9) / 1e6
}

/// One TCP stream over loopback for `time`, 1 MiB writes, Nagle off: bytes the reader got
/// per second, from the first write to the reader's end of stream.
fn loopback(time: Duration) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").context("loopback listener")?;
    let addr = listener.local_addr()?;
    let reader = thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let mut s = TcpStream::connect(addr).context("loopback connect")?;
    s.set_nodelay(true)?;
    let buf = vec![0x5au8; CHUNK];
    let start = Instant::now();
    while start.elapsed() < time {
        s.write_all(&buf)?;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let total = reader
        .join()
        .map_err(|_| anyhow::anyhow!("loopback reader panicked"))??;
    Ok(mb_per_s(total, start.elapsed()))
}

/// A file in `dir` removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(dir: &Path, what: &str) -> Scratch {
        Scratch(dir.join(format!("ceiling-{what}-{}", std::process::id())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Buffered 1 MiB writes of `cache_bytes` (no sync), then 1 MiB reads of what was written.
fn page_cache(limits: &Limits) -> Result<(f64, f64)> {
    let scratch = Scratch::new(&limits.dir, "cache");
    let mut file =
        File::create(&scratch.0).with_context(|| format!("creating {}", scratch.0.display()))?;
    let buf = vec![0xa5u8; CHUNK];
    let start = Instant::now();
    let mut written = 0u64;
    while written < limits.cache_bytes && start.elapsed() < limits.max_time {
        file.write_all(&buf)?;
        written += CHUNK as u64;
    }
    let write = mb_per_s(written, start.elapsed());
    drop(file);
    let mut file = File::open(&scratch.0)?;
    let mut buf = vec![0u8; CHUNK];
    let start = Instant::now();
    let mut read = 0u64;
    loop {
        match file.read(&mut buf)? {
            0 => break,
            n => read += n as u64,
        }
    }
    Ok((write, mb_per_s(read, start.elapsed())))
}

/// O_DIRECT 1 MiB writes from an aligned buffer, and one fdatasync at the end (the writes
/// bypass the cache, the sync makes the file's size durable); then O_DIRECT 1 MiB reads of
/// what was written, which no cache holds. (write, read) in MB/s.
fn direct(limits: &Limits) -> Result<(f64, f64)> {
    let scratch = Scratch::new(&limits.dir, "direct");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(&scratch.0)
        .with_context(|| format!("opening {} with O_DIRECT", scratch.0.display()))?;
    // An aligned slice of a plain Vec: no allocator tricks needed.
    let mut backing = vec![0x3cu8; CHUNK + ALIGN];
    let offset = backing.as_ptr().align_offset(ALIGN);
    let buf = &mut backing[offset..offset + CHUNK];
    let start = Instant::now();
    let mut written = 0u64;
    while written < limits.direct_bytes && start.elapsed() < limits.max_time {
        file.write_all(buf)
            .with_context(|| format!("O_DIRECT write to {}", scratch.0.display()))?;
        written += CHUNK as u64;
    }
    file.sync_data()?;
    let write = mb_per_s(written, start.elapsed());
    let start = Instant::now();
    let mut read = 0u64;
    while read < written && start.elapsed() < limits.max_time {
        let n = file
            .read_at(buf, read)
            .with_context(|| format!("O_DIRECT read of {}", scratch.0.display()))?;
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    Ok((write, mb_per_s(read, start.elapsed())))
}

/// `sync_rounds` rounds of a 4 KiB append and fdatasync: p50 and p99 latency in µs.
fn fdatasync(limits: &Limits) -> Result<(f64, f64)> {
    let scratch = Scratch::new(&limits.dir, "sync");
    let mut file =
        File::create(&scratch.0).with_context(|| format!("creating {}", scratch.0.display()))?;
    let buf = [0x7eu8; SYNC_APPEND];
    let mut h = new_histogram();
    let start = Instant::now();
    for _ in 0..limits.sync_rounds.max(1) {
        file.write_all(&buf)?;
        let t = Instant::now();
        file.sync_data()?;
        h.saturating_record(t.elapsed().as_micros().max(1) as u64);
        if start.elapsed() >= limits.max_time {
            break;
        }
    }
    Ok((
        h.value_at_quantile(0.5) as f64,
        h.value_at_quantile(0.99) as f64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ceiling() -> Ceiling {
        Ceiling {
            loopback_mb_per_s: 4000.0,
            page_cache_write_mb_per_s: 1500.0,
            page_cache_read_mb_per_s: 7000.0,
            direct_write_mb_per_s: 2000.0,
            direct_read_mb_per_s: 900.0,
            fdatasync_p50_us: 300.0,
            fdatasync_p99_us: 600.0,
            filesystem: "ext4".into(),
        }
    }

    #[test]
    fn the_lower_of_loopback_and_the_medium_binds() {
        use Medium::{Device, Memory};
        let c = ceiling();
        assert_eq!(c.bound("produce", Memory).name, "page-cache write");
        assert_eq!(c.bound("e2e", Memory).mb_per_s, 1500.0);
        assert_eq!(c.bound("consume", Memory).name, "loopback");
        assert_eq!(c.bound("consume", Memory).mb_per_s, 4000.0);
        // A broker writing with O_DIRECT is bound by the device, not the page cache.
        assert_eq!(c.bound("produce", Device).name, "O_DIRECT write");
        assert_eq!(c.bound("e2e", Device).mb_per_s, 2000.0);
        // A backlog read from the device is bound by its reads.
        assert_eq!(c.bound("consume", Device).name, "O_DIRECT read");
        assert_eq!(c.bound("consume", Device).mb_per_s, 900.0);
        let slow_disk = Ceiling {
            direct_write_mb_per_s: 370.0,
            ..ceiling()
        };
        assert_eq!(slow_disk.bound("produce", Device).mb_per_s, 370.0);
        // Saved before the device's reads were measured: read against the page cache.
        let old = Ceiling {
            direct_read_mb_per_s: 0.0,
            ..ceiling()
        };
        assert_eq!(old.bound("consume", Device).name, "loopback");
        assert!(c.table().contains("fdatasync after 4 KiB, p99"));
        assert!(c.table().contains("O_DIRECT read"));
    }
}
