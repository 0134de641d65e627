//! `--log-writes direct` writes each group-commit chunk with `O_DIRECT` from page-aligned
//! buffers, through compio: one `IORING_OP_WRITEV` from ordinary heap memory, and under
//! `--fsync always` an `IORING_OP_FSYNC` (datasync) submitted once the write has completed.
//! These benches measure what io_uring offers beyond that, on the same kind of file:
//!
//! * `direct_write/{64KiB,1MiB}`: `writev` (as the broker writes) against `write_fixed`
//!   (`IORING_OP_WRITE_FIXED` from the same buffer registered with the ring, so the kernel
//!   need not pin its pages for every write);
//! * `durable_round/{8KiB,64KiB}` (a round at 200 k records/s, and a larger one): the write
//!   and its fdatasync as `two_submissions` (the broker's way), `linked` (the sync chained
//!   to the write with `IOSQE_IO_LINK`, one submission), and `dsync` (one write with
//!   `RWF_DSYNC`, which the kernel completes once the data is durable).
//!
//! Writes rotate through a 64 MiB file written and synced beforehand, so they overwrite
//! allocated blocks as the broker's preallocated appends do and no sync commits a new file
//! size. The file is made under `EVENTFLOW_BENCH_DIR`, else `target/` (the data
//! directory's filesystem, where tmpfs would refuse `O_DIRECT` or sync for free), and
//! removed at the end. Linux only; the disk's own noise is large on VMs, so read the
//! medians of one run side by side, not against another day's.

use std::alloc::Layout;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use io_uring::{opcode, squeue, types, IoUring};

const FILE_LEN: u64 = 64 << 20;
const ALIGN: usize = 4096;

/// A page-aligned heap buffer, filled with a pattern.
struct Aligned {
    ptr: *mut u8,
    layout: Layout,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = Layout::from_size_align(len, ALIGN).expect("aligned layout");
        // SAFETY: the layout's size is non-zero (every size used is at least 8 KiB).
        let ptr = unsafe { std::alloc::alloc(layout) };
        assert!(!ptr.is_null(), "allocation failed");
        // SAFETY: `ptr` points at `len` writable bytes just allocated.
        unsafe { std::ptr::write_bytes(ptr, 0x5a, len) };
        Aligned { ptr, layout }
    }

    fn len(&self) -> usize {
        self.layout.size()
    }

    fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.ptr.cast(),
            iov_len: self.len(),
        }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// The file the writes go to: written and synced whole first, removed on drop.
struct Target {
    path: PathBuf,
    file: File,
    /// Where the next write goes (rotating through the file).
    next: u64,
}

impl Target {
    fn new() -> Target {
        let dir = std::env::var_os("EVENTFLOW_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
        std::fs::create_dir_all(&dir).expect("bench directory");
        let path = dir.join(format!("direct-write-bench-{}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {} with O_DIRECT: {e}", path.display()));
        let block = Aligned::new(1 << 20);
        // SAFETY: the buffer holds `len()` initialized bytes.
        let bytes = unsafe { std::slice::from_raw_parts(block.ptr, block.len()) };
        let mut at = 0;
        while at < FILE_LEN {
            file.write_all_at(bytes, at).expect("filling the file");
            at += bytes.len() as u64;
        }
        file.sync_all().expect("syncing the file");
        Target {
            path,
            file,
            next: 0,
        }
    }

    /// The offset of the next `len`-byte write.
    fn offset(&mut self, len: usize) -> u64 {
        if self.next + len as u64 > FILE_LEN {
            self.next = 0;
        }
        let at = self.next;
        self.next += len as u64;
        at
    }

    fn fd(&self) -> types::Fd {
        types::Fd(self.file.as_raw_fd())
    }

    /// A `writev` of `buf` at the next offset, with `rw_flags` (`RWF_*`, 0 for none).
    fn writev(&mut self, iov: &libc::iovec, rw_flags: i32) -> squeue::Entry {
        let at = self.offset(iov.iov_len);
        opcode::Writev::new(self.fd(), iov, 1)
            .offset(at)
            .rw_flags(rw_flags)
            .build()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Submits `entries` (in order, as one submission) and waits for all their completions;
/// every one must have succeeded, a write having written `expect` bytes.
fn submit(ring: &mut IoUring, entries: &[squeue::Entry], expect: usize) {
    for entry in entries {
        // SAFETY: every buffer and iovec an entry points at outlives this call, which waits
        // for the entry's completion.
        let pushed = unsafe { ring.submission().push(entry) };
        pushed.expect("submission queue full");
    }
    ring.submit_and_wait(entries.len()).expect("io_uring_enter");
    for cqe in ring.completion() {
        let result = cqe.result();
        assert!(result >= 0, "an operation failed: errno {}", -result);
        assert!(
            result == 0 || result as usize == expect,
            "a short write: {result} of {expect} bytes"
        );
    }
}

/// A ring, a file to write and a group of benches measured alike.
fn setup<'c>(c: &'c mut Criterion, name: &str) -> (IoUring, Target, BenchmarkGroup<'c, WallTime>) {
    let ring = IoUring::new(8).expect("io_uring");
    let mut group = c.benchmark_group(name);
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(4));
    (ring, Target::new(), group)
}

fn direct_write(c: &mut Criterion) {
    let (mut ring, mut target, mut group) = setup(c, "direct_write");
    for (len, name) in [(64usize << 10, "64KiB"), (1 << 20, "1MiB")] {
        let buf = Aligned::new(len);
        let iov = [buf.iovec()];
        // SAFETY: the buffer outlives the registration, which is undone below.
        unsafe { ring.submitter().register_buffers(&iov) }.expect("registering the buffer");
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(format!("{name}/writev"), |b| {
            b.iter(|| submit(&mut ring, &[target.writev(&iov[0], 0)], len));
        });
        group.bench_function(format!("{name}/write_fixed"), |b| {
            b.iter(|| {
                let at = target.offset(len);
                let write = opcode::WriteFixed::new(target.fd(), buf.ptr, len as u32, 0)
                    .offset(at)
                    .build();
                submit(&mut ring, &[write], len);
            });
        });
        ring.submitter()
            .unregister_buffers()
            .expect("unregistering the buffer");
    }
    group.finish();
}

fn durable_round(c: &mut Criterion) {
    let (mut ring, mut target, mut group) = setup(c, "durable_round");
    for (len, name) in [(8usize << 10, "8KiB"), (64 << 10, "64KiB")] {
        let buf = Aligned::new(len);
        let iov = buf.iovec();
        let sync = |fd| {
            opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
        };
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(format!("{name}/two_submissions"), |b| {
            b.iter(|| {
                submit(&mut ring, &[target.writev(&iov, 0)], len);
                submit(&mut ring, &[sync(target.fd())], len);
            });
        });
        group.bench_function(format!("{name}/linked"), |b| {
            b.iter(|| {
                let write = target.writev(&iov, 0).flags(squeue::Flags::IO_LINK);
                submit(&mut ring, &[write, sync(target.fd())], len);
            });
        });
        group.bench_function(format!("{name}/dsync"), |b| {
            b.iter(|| submit(&mut ring, &[target.writev(&iov, libc::RWF_DSYNC)], len));
        });
    }
    group.finish();
}

criterion_group!(benches, direct_write, durable_round);
criterion_main!(benches);
