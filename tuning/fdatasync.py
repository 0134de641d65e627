#!/usr/bin/env python3
"""The disk's floor under durable latency: write + fdatasync, timed, without the broker.

    python3 tuning/fdatasync.py [DIR]      # DIR defaults to target/ (the disk the broker uses)

Each line times one way of appending 4 KiB and syncing it, 2,000 times in a row:

- buffered extend: write(2) at the end of the file, which grows it; fdatasync must also
  commit the new size and block allocation to the file system's journal.
- direct extend: the same with O_DIRECT.
- direct fallocate: O_DIRECT into space reserved with fallocate (unwritten extents, whose
  first write still needs a journal commit).
- direct / buffered zero-filled: overwriting blocks that were written (with zeros) and synced
  before, so fdatasync flushes data only. This is what eventflowd's preallocation under
  `--fsync always` gives its appends (src/storage/segment.rs, `preallocate`).

The last line is 8 s of 8 KiB appends that extend the file, the pattern of a broker without
preallocation, with its tail: the stalls there are the disk's, not the broker's.
"""

import mmap
import os
import sys
import time


def percentiles(lat):
    lat = sorted(lat)
    n = len(lat)
    return (
        f"p50 {lat[n // 2] * 1e6:6.0f} µs  p99 {lat[int(n * 0.99)] * 1e6:6.0f} µs  "
        f"p99.9 {lat[int(n * 0.999)] * 1e6:6.0f} µs  max {lat[-1] * 1e6:7.0f} µs"
    )


def run(path, name, flags, prealloc=False, zero=False, n=2000, chunk=4096):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o644)
    try:
        size = n * chunk + chunk
        if prealloc:
            os.posix_fallocate(fd, 0, size)
        if zero:
            zeros = mmap.mmap(-1, 1 << 20)
            for at in range(0, size, 1 << 20):
                os.pwrite(fd, zeros, at)
        os.fsync(fd)
        buf = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT needs
        buf.write(b"x" * chunk)
        lat = []
        for i in range(n):
            t = time.perf_counter()
            os.pwrite(fd, buf, i * chunk)
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t)
        print(f"{name:24s} {percentiles(lat)}")
    finally:
        os.close(fd)
        os.unlink(path)


def sustained(path, seconds=8.0, chunk=8192):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        buf = mmap.mmap(-1, chunk)
        buf.write(b"x" * chunk)
        lat = []
        end = time.time() + seconds
        i = 0
        while time.time() < end:
            t = time.perf_counter()
            os.pwrite(fd, buf, i * chunk)
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t)
            i += 1
        print(f"{'8 s of 8 KiB extends':24s} {percentiles(lat)}  ({len(lat)} syncs)")
    finally:
        os.close(fd)
        os.unlink(path)


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "target"
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "fdatasync-probe.tmp")
    direct = os.O_DIRECT
    run(path, "buffered extend", 0)
    run(path, "direct extend", direct)
    run(path, "direct fallocate", direct, prealloc=True)
    run(path, "direct zero-filled", direct, zero=True)
    run(path, "buffered zero-filled", 0, zero=True)
    sustained(path)


if __name__ == "__main__":
    main()
