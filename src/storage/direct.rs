//! The pieces of `--log-writes direct`: the page-aligned buffers a chunk is gathered into for
//! an `O_DIRECT` write, and the shard-local cache of a partition's newest bytes that reads
//! are served from instead of the disk.
//!
//! **Why.** A buffered append costs the kernel a copy into page-cache pages, each of which
//! it must first allocate, fault in and clear, and later write back (docs/PERFORMANCE.md has
//! the profile). With `O_DIRECT` the device reads the bytes from our buffer, so the copy into
//! the buffer is the only one, made on the shard's own core, and nothing piles up as dirty
//! pages for writeback to stall on later.
//!
//! **How a chunk is written.** `O_DIRECT` needs offsets, lengths and buffer addresses
//! aligned to the device's logical block ([`DIRECT_ALIGN`] covers every device here). A
//! chunk starting at byte `p` is written from `align_down(p)`: the copy holds first the
//! bytes of the partial block before `p` (always from the cache: they are never read back
//! from the disk, where a bad read would be written over acknowledged bytes, so after a
//! start a segment's chunks go through the page cache until the cache holds that block),
//! then the chunk, then zeros up to the next block boundary. The copy is made into
//! [`WRITE_BLOCK`]-sized buffers from a per-thread pool ([`AlignedChunk`]) and written in one
//! vectored write. The file therefore ends in up to one block of zeros past the batches,
//! exactly like the preallocated zeros of `--fsync always`, which recovery already trims and
//! a roll or close cuts off.
//!
//! **Reads.** A direct write leaves nothing in the page cache, so the written buffers
//! themselves become the newest entries of the segment's [`TailCache`]; reads of the
//! partition's newest `--tail-cache-mb` (the consumers that keep up, or are behind by less
//! than that, across segment rolls), within the shard's `--tail-cache-shard-mb` for all its
//! partitions ([`trim_shard_tail_caches`]), are served from memory: a fetch range as
//! slices of the buffers it spans, without a copy (a read through another shard, which needs
//! one piece, copies a range that spans buffers). Older bytes are read from the file as with
//! buffered writes: the kernel reads them from the disk once, and the page cache keeps them
//! for the next reader. A read there also asks the kernel to read [`PREFETCH_BYTES`] ahead
//! (`posix_fadvise(WILLNEED)`), so a consumer working through a backlog is not served one
//! disk read per fetch. Reading such a backlog ahead ourselves, with `O_DIRECT` into pooled
//! blocks, was measured against this and not kept: faster for one partition, slower for two
//! (docs/PERFORMANCE.md, "Reading a backlog ahead").

use std::alloc::Layout;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::ptr::NonNull;
use std::rc::{Rc, Weak};

use bytes::{Bytes, BytesMut};

/// Alignment of `O_DIRECT` offsets, lengths and buffers: a page, enough for every device
/// this runs on (the VMs here have 512-byte logical blocks).
pub(crate) const DIRECT_ALIGN: u64 = 4096;

/// Bytes of a partition's newest log kept in its segments' [`TailCache`]s unless
/// `--tail-cache-mb` says otherwise: a consumer up to this far behind the producers reads
/// from memory. Only partitions written with `--log-writes direct` hold any.
pub(crate) const DEFAULT_TAIL_CACHE_BYTES: u64 = 4 << 20;

/// Bytes all of a shard's tail caches hold together unless `--tail-cache-shard-mb` says
/// otherwise: with many partitions written, the oldest of their chunks go first, so the
/// broker's memory is bounded by its cores, not by its partitions.
pub(crate) const DEFAULT_SHARD_TAIL_CACHE_BYTES: u64 = 256 << 20;

/// How far ahead of a read of bytes outside the tail cache the kernel is asked to read the
/// log into the page cache, and how close a read may come to the end of the last such
/// request before the next one: a consumer reading a backlog finds its next fetches cached.
pub(crate) const PREFETCH_BYTES: u64 = 64 << 20;

/// `n` rounded down to the `O_DIRECT` alignment.
pub(crate) fn align_down(n: u64) -> u64 {
    n - n % DIRECT_ALIGN
}

/// `n` rounded up to the `O_DIRECT` alignment.
pub(crate) fn align_up(n: u64) -> u64 {
    n.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN
}

/// A heap buffer whose address and length are multiples of [`DIRECT_ALIGN`], filled once
/// and then only read: by the device during the write, then by readers through the
/// [`Bytes`] it becomes ([`AlignedBuf::into_bytes`]).
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    /// Bytes in use; always a multiple of `DIRECT_ALIGN` once [`AlignedBuf::pad`] ran.
    len: usize,
    layout: Layout,
}

// SAFETY: the buffer owns its allocation outright and has no interior mutability; moving it
// to another thread (the kernel's I/O workers read it, `Bytes` may travel) is like moving a
// `Vec<u8>`.
unsafe impl Send for AlignedBuf {}
// SAFETY: `&AlignedBuf` only gives out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

/// The largest aligned buffer: a chunk bigger than this is copied into several, all of this
/// size but the last, and written with one vectored write ([`AlignedChunk`]).
///
/// One size for almost every buffer is what lets the pool below serve them. When each chunk
/// took one buffer of its own power-of-two size (64 KiB to 64 MiB), the sizes of successive
/// rounds varied, the pool seldom held the size asked for, and a direct produce run faulted
/// in about 12,000 fresh pages per million 100-byte records (docs/PERFORMANCE.md).
#[cfg(not(test))]
pub(crate) const WRITE_BLOCK: usize = 1 << 20;
/// Small in tests, so that the simulation's chunks span several buffers.
#[cfg(test)]
pub(crate) const WRITE_BLOCK: usize = DIRECT_ALIGN as usize;

/// Smallest and largest buffer a thread keeps for reuse: sizes between are powers of two.
const POOLED_MIN: usize = 64 << 10;
const POOLED_MAX: usize = if WRITE_BLOCK > POOLED_MIN {
    WRITE_BLOCK
} else {
    POOLED_MIN
};
/// Bytes of free buffers each thread keeps for reuse.
const POOL_BYTES: usize = 16 << 20;

/// Free aligned buffers of one thread, for the next rounds to reuse.
///
/// Without it every group-commit round allocated a fresh buffer, and glibc, whose mmap
/// threshold rises to the size of the large blocks freed, kept the freed memory in its
/// arenas: a direct produce run held 120–345 MiB resident against 40–60 MiB for buffered
/// writes (docs/PERFORMANCE.md).
#[derive(Default)]
struct Pool {
    free: Vec<(NonNull<u8>, Layout)>,
    bytes: usize,
}

thread_local! {
    static POOL: std::cell::RefCell<Pool> = std::cell::RefCell::new(Pool::default());
}

impl AlignedBuf {
    /// An empty buffer with room for at least `capacity` bytes: up to [`WRITE_BLOCK`], a
    /// power of two of at least 64 KiB, reused from the thread's free ones when there is one;
    /// above it, the capacity rounded up to the alignment.
    pub(crate) fn with_capacity(capacity: usize) -> AlignedBuf {
        let size = align_up(capacity.max(1) as u64) as usize;
        let size = if size <= POOLED_MAX {
            size.max(POOLED_MIN).next_power_of_two()
        } else {
            size
        };
        let layout =
            Layout::from_size_align(size, DIRECT_ALIGN as usize).expect("aligned size is valid");
        let reused = POOL
            .try_with(|pool| {
                let mut pool = pool.borrow_mut();
                let i = pool.free.iter().position(|(_, l)| *l == layout)?;
                pool.bytes -= size;
                Some(pool.free.swap_remove(i).0)
            })
            .ok()
            .flatten();
        let ptr = reused.unwrap_or_else(|| {
            // SAFETY: the layout's size is at least one alignment, so non-zero.
            let raw = unsafe { std::alloc::alloc(layout) };
            NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
        });
        AlignedBuf {
            ptr,
            len: 0,
            layout,
        }
    }

    /// Bytes of memory the buffer holds.
    pub(crate) fn capacity(&self) -> usize {
        self.layout.size()
    }

    /// Bytes written into the buffer.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends `bytes`; the caller sized the buffer for everything it appends.
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        assert!(
            self.len + bytes.len() <= self.layout.size(),
            "aligned buffer overflow"
        );
        // SAFETY: the destination range is inside the allocation (checked above) and cannot
        // overlap `bytes`, which the caller borrows from elsewhere.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(self.len),
                bytes.len(),
            );
        }
        self.len += bytes.len();
    }

    /// Zeros up to the next multiple of the alignment.
    pub(crate) fn pad(&mut self) {
        let end = align_up(self.len as u64) as usize;
        // SAFETY: `end` is within the allocation, whose size is a multiple of the alignment
        // at least `len`.
        unsafe {
            std::ptr::write_bytes(self.ptr.as_ptr().add(self.len), 0, end - self.len);
        }
        self.len = end;
    }

    /// The buffer, shared and read-only from here on.
    pub(crate) fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes were all written by `extend` or `pad`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl compio::buf::IoBuf for AlignedBuf {
    fn as_init(&self) -> &[u8] {
        self.as_ref()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let size = self.layout.size();
        let (ptr, layout) = (self.ptr, self.layout);
        // Kept for reuse by this thread (which may not be the one that allocated it, when
        // the bytes travelled to another shard) if it is of a pooled size and there is room.
        let kept = size.is_power_of_two()
            && (POOLED_MIN..=POOLED_MAX).contains(&size)
            && POOL
                .try_with(|pool| {
                    let mut pool = pool.borrow_mut();
                    if pool.bytes + size > POOL_BYTES {
                        return false;
                    }
                    pool.bytes += size;
                    pool.free.push((ptr, layout));
                    true
                })
                .unwrap_or(false);
        if !kept {
            // SAFETY: allocated in `with_capacity` (or taken from a pool that got it from
            // there) with this very layout, and freed once: it is in no pool.
            unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) }
        }
    }
}

/// The aligned copy of one chunk: [`WRITE_BLOCK`]-sized buffers, the last one smaller,
/// filled in order, the last padded with zeros to the alignment. The device reads them in one
/// vectored write; then each becomes a chunk of the segment's [`TailCache`].
pub(crate) struct AlignedChunk {
    bufs: Vec<AlignedBuf>,
    /// The buffer being filled.
    filling: usize,
}

impl AlignedChunk {
    /// Room for `len` bytes and the zeros after them up to the alignment.
    pub(crate) fn with_capacity(len: usize) -> AlignedChunk {
        let total = align_up(len.max(1) as u64) as usize;
        let (full, rest) = (total / WRITE_BLOCK, total % WRITE_BLOCK);
        let mut bufs = Vec::with_capacity(full + usize::from(rest > 0));
        bufs.extend((0..full).map(|_| AlignedBuf::with_capacity(WRITE_BLOCK)));
        if rest > 0 {
            bufs.push(AlignedBuf::with_capacity(rest));
        }
        AlignedChunk { bufs, filling: 0 }
    }

    /// Appends `bytes`; the caller sized the chunk for everything it appends.
    pub(crate) fn extend(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            // Every buffer but the last holds exactly a block (a pooled buffer may be bigger
            // when blocks are smaller than the pool's least size, as in tests).
            let room = if self.filling + 1 < self.bufs.len() {
                WRITE_BLOCK
            } else {
                self.bufs[self.filling].capacity()
            };
            let buf = &mut self.bufs[self.filling];
            let take = (room - buf.len()).min(bytes.len());
            if take == 0 {
                self.filling += 1;
                continue;
            }
            buf.extend(&bytes[..take]);
            bytes = &bytes[take..];
        }
    }

    /// Zeros up to the next multiple of the alignment after the last byte appended; the
    /// buffers past it, if the caller appended less than it sized the chunk for, go.
    pub(crate) fn pad(&mut self) {
        self.bufs.truncate(self.filling + 1);
        if let Some(last) = self.bufs.last_mut() {
            last.pad();
        }
    }

    /// The chunk's buffers, written at file position `at`, as tail-cache chunks: each with
    /// the file position of its first byte and the memory it holds, cut to `[from, to)`.
    pub(crate) fn into_cached(self, at: u64, from: u64, to: u64) -> Vec<(u64, Bytes, u64)> {
        let mut position = at;
        let mut cached = Vec::with_capacity(self.bufs.len());
        for buf in self.bufs {
            let (start, held) = (position, buf.capacity() as u64);
            let end = start + buf.len() as u64;
            position = end;
            let (first, last) = (start.max(from), end.min(to));
            if first < last {
                let bytes = buf.into_bytes();
                cached.push((
                    first,
                    bytes.slice((first - start) as usize..(last - start) as usize),
                    held,
                ));
            }
        }
        cached
    }

    /// The bytes of each buffer, in order: what the device writes.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs.iter().map(AsRef::as_ref)
    }

    /// The buffers, to write (each one's address and length are aligned once padded).
    pub(crate) fn into_bufs(self) -> Vec<AlignedBuf> {
        self.bufs
    }

    /// The chunk the written buffers came from, to cache ([`AlignedChunk::into_cached`]).
    pub(crate) fn from_bufs(bufs: Vec<AlignedBuf>) -> AlignedChunk {
        let filling = bufs.len().saturating_sub(1);
        AlignedChunk { bufs, filling }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (ptr, layout) in self.free.drain(..) {
            // SAFETY: every pooled buffer was allocated with its layout and is owned by
            // the pool alone.
            unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) }
        }
    }
}

/// The newest bytes of a segment written with `O_DIRECT`: contiguous chunks ending at the
/// segment's size. Held by the segment, so a new segment (a roll, a compaction's
/// replacement, a start) begins with an empty one; a sealed segment keeps its chunks until
/// [`trim_tail_caches`] drops them for newer ones of its partition, or
/// [`trim_shard_tail_caches`] for newer ones of the shard, so a consumer just behind a roll
/// still reads from memory.
///
/// The chunks are shared with the shard's registry of caches ([`ShardTails`]), which may
/// drop the oldest of them on behalf of another partition: a cache belongs to the thread
/// that made it (`Rc`), as the shard's partitions do.
#[derive(Debug, Default)]
pub(crate) struct TailCache(Rc<RefCell<Chunks>>);

/// What a [`TailCache`] holds, shared with the shard's registry.
#[derive(Debug, Default)]
struct Chunks {
    /// Oldest first, without gaps.
    chunks: VecDeque<Chunk>,
    /// Memory the chunks hold: a chunk of a direct write holds its whole aligned buffer,
    /// which for a small append is a block around a few bytes.
    held: u64,
    /// The segment is no longer the active one: its newest chunk is not needed for the next
    /// write, so the shard may drop it like any other.
    sealed: bool,
}

#[derive(Debug)]
struct Chunk {
    /// File position of the first byte.
    at: u64,
    bytes: Bytes,
    /// Memory it keeps alive.
    held: u64,
    /// Its place in the shard's order of cached chunks: older chunks have smaller stamps.
    stamp: u64,
}

impl Chunks {
    /// The stamp the shard's registry knows this cache by: its oldest chunk's, if the shard
    /// may drop that chunk (an active segment's only chunk it may not).
    fn key(&self) -> Option<u64> {
        let front = self.chunks.front()?;
        (self.sealed || self.chunks.len() > 1).then_some(front.stamp)
    }

    /// The position after the last cached byte.
    fn end(&self) -> Option<u64> {
        self.chunks.back().map(|k| k.at + k.bytes.len() as u64)
    }
}

impl Drop for Chunks {
    fn drop(&mut self) {
        // A segment removed (retention, a deleted topic, compaction) gives its memory back.
        let (key, held) = (self.key(), self.held);
        ShardTails::update(|tails| {
            tails.held = tails.held.saturating_sub(held);
            if let Some(key) = key {
                tails.oldest.remove(&key);
            }
        });
    }
}

/// The tail caches of one shard together: the memory they hold, and the caches whose oldest
/// chunk the shard may drop, ordered by that chunk's age, so that the shard's budget
/// (`--tail-cache-shard-mb`) drops the oldest chunks of all its partitions first.
#[derive(Default)]
struct ShardTails {
    held: u64,
    /// Each cache with a chunk the shard may drop, under the stamp of its oldest chunk.
    oldest: BTreeMap<u64, Weak<RefCell<Chunks>>>,
    next_stamp: u64,
}

thread_local! {
    static SHARD_TAILS: RefCell<ShardTails> = RefCell::new(ShardTails::default());
}

impl ShardTails {
    /// Runs `f` on this thread's registry. Nothing happens while the thread is exiting.
    fn update<R: Default>(f: impl FnOnce(&mut ShardTails) -> R) -> R {
        SHARD_TAILS
            .try_with(|tails| tails.try_borrow_mut().map(|mut t| f(&mut t)).ok())
            .ok()
            .flatten()
            .unwrap_or_default()
    }
}

/// Memory held by the tail caches of this thread's (the shard's) partitions.
pub(crate) fn shard_tail_cache_bytes() -> u64 {
    ShardTails::update(|tails| tails.held)
}

impl TailCache {
    /// Runs `change` on the chunks, then tells the shard's registry what changed: the
    /// memory held, and the cache's place among those with a chunk the shard may drop.
    fn change<R>(&self, change: impl FnOnce(&mut Chunks, &mut dyn FnMut() -> u64) -> R) -> R {
        let mut chunks = self.0.borrow_mut();
        let (key, held) = (chunks.key(), chunks.held);
        let mut stamp = || {
            ShardTails::update(|tails| {
                tails.next_stamp += 1;
                tails.next_stamp
            })
        };
        let out = change(&mut chunks, &mut stamp);
        let (new_key, new_held) = (chunks.key(), chunks.held);
        drop(chunks);
        ShardTails::update(|tails| {
            tails.held = (tails.held + new_held).saturating_sub(held);
            if key != new_key {
                if let Some(key) = key {
                    tails.oldest.remove(&key);
                }
                if let Some(new_key) = new_key {
                    tails.oldest.insert(new_key, Rc::downgrade(&self.0));
                }
            }
        });
        out
    }

    /// Adds the bytes written at `position`, which keep `held` bytes of memory alive. A
    /// chunk that does not continue the cached ones (the cache is empty after a start)
    /// replaces them. The partition's and the shard's budgets are kept by
    /// [`trim_tail_caches`] and [`trim_shard_tail_caches`] afterwards.
    ///
    /// A small write's bytes sit in a pooled buffer several times their size (64 KiB at
    /// least): such a chunk is kept as a copy of its bytes instead, so the budget holds data
    /// rather than padding and the buffer goes back to the pool at once.
    pub(crate) fn push(&mut self, position: u64, bytes: Bytes, held: u64) {
        self.change(|c, stamp| {
            if c.end() != Some(position) {
                c.chunks.clear();
                c.held = 0;
            }
            let len = bytes.len() as u64;
            let (bytes, held) = if held > 2 * len {
                (Bytes::copy_from_slice(&bytes), len)
            } else {
                (bytes, held)
            };
            c.held += held;
            c.chunks.push_back(Chunk {
                at: position,
                bytes,
                held,
                stamp: stamp(),
            });
        });
    }

    /// Drops every chunk.
    pub(crate) fn clear(&mut self) {
        self.change(|c, _| {
            c.chunks.clear();
            c.held = 0;
        });
    }

    /// Marks the segment as no longer the active one (a roll): its newest chunk may go too.
    pub(crate) fn seal(&mut self) {
        self.change(|c, _| c.sealed = true);
    }

    /// Memory the chunks hold.
    pub(crate) fn held(&self) -> u64 {
        self.0.borrow().held
    }

    /// How many chunks it holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.borrow().chunks.len()
    }

    /// Drops the oldest chunk, keeping at least `keep` chunks; returns the memory freed.
    fn drop_oldest(&mut self, keep: usize) -> Option<u64> {
        self.change(|c, _| {
            if c.chunks.len() <= keep {
                return None;
            }
            let chunk = c.chunks.pop_front()?;
            c.held -= chunk.held;
            Some(chunk.held)
        })
    }

    /// The position after the last cached byte.
    #[cfg(test)]
    fn end(&self) -> Option<u64> {
        self.0.borrow().end()
    }

    /// `[position, position + len)` if it is all cached, as one piece: a slice of one chunk
    /// when it lies in one (no copy), else a copy.
    pub(crate) fn get(&self, position: u64, len: usize) -> Option<Bytes> {
        self.get_chunks(position, len).map(concat)
    }

    /// `[position, position + len)` if it is all cached, as slices of the chunks it spans
    /// (no copy): what a fetch sends, one `writev` piece per chunk.
    pub(crate) fn get_chunks(&self, position: u64, len: usize) -> Option<Vec<Bytes>> {
        let c = self.0.borrow();
        let (start, end) = (c.chunks.front()?.at, c.end()?);
        let stop = position.checked_add(len as u64)?;
        if position < start || stop > end {
            return None;
        }
        // The chunk holding `position`: the last one starting at or before it.
        let first = c.chunks.partition_point(|k| k.at <= position) - 1;
        let mut pieces = Vec::new();
        let mut next = position;
        for k in c.chunks.range(first..) {
            if next == stop {
                break;
            }
            let to = stop.min(k.at + k.bytes.len() as u64);
            pieces.push(k.bytes.slice((next - k.at) as usize..(to - k.at) as usize));
            next = to;
        }
        Some(pieces)
    }
}

/// Drops the oldest cached chunks of a partition's segments (`items`, oldest first, each
/// with its cache from `cache`) until they hold at most `budget` bytes (`--tail-cache-mb`).
/// The last segment (the active one) keeps its newest chunk whatever the budget: the next
/// direct write repeats the partial block at its end from there.
pub(crate) fn trim_tail_caches<T>(
    items: &mut [T],
    cache: impl Fn(&mut T) -> &mut TailCache,
    budget: u64,
) {
    let mut held: u64 = items.iter_mut().map(|item| cache(item).held()).sum();
    let last = items.len().saturating_sub(1);
    for (i, item) in items.iter_mut().enumerate() {
        if held <= budget {
            return;
        }
        let tail = cache(item);
        let keep = usize::from(i == last);
        while held > budget {
            let Some(freed) = tail.drop_oldest(keep) else {
                break;
            };
            held -= freed;
        }
    }
}

/// Drops the oldest chunks of all the shard's tail caches, whichever partition they belong
/// to, until together they hold at most `budget` bytes (`--tail-cache-shard-mb`). Each
/// active segment keeps its newest chunk, as in [`trim_tail_caches`], so the caches may
/// hold more than the budget by those.
pub(crate) fn trim_shard_tail_caches(budget: u64) {
    loop {
        let oldest = ShardTails::update(|tails| {
            if tails.held <= budget {
                return None;
            }
            let (&key, weak) = tails.oldest.first_key_value()?;
            let cache = weak.upgrade();
            if cache.is_none() {
                // Not reached (a cache leaves the registry as it goes), but a stale entry
                // must not stop the trim.
                tails.oldest.remove(&key);
            }
            Some(cache)
        });
        match oldest {
            None => return,
            Some(None) => continue,
            Some(Some(cache)) => {
                let mut cache = TailCache(cache);
                let keep = usize::from(!cache.0.borrow().sealed);
                if cache.drop_oldest(keep).is_none() {
                    // Not reached: the registry lists only caches with a chunk to drop.
                    return;
                }
            }
        }
    }
}

/// A copy of `len` bytes from the `skip`th byte of `pieces` taken as one run of bytes (a
/// TLS connection encrypts a cached range part by part).
pub(crate) fn copy_range(pieces: &[Bytes], mut skip: usize, len: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(len);
    for piece in pieces {
        if out.len() == len {
            break;
        }
        if skip >= piece.len() {
            skip -= piece.len();
            continue;
        }
        let take = (piece.len() - skip).min(len - out.len());
        out.extend_from_slice(&piece[skip..skip + take]);
        skip = 0;
    }
    out
}

/// `pieces` as one: the piece itself if there is one, else a copy.
pub(crate) fn concat(mut pieces: Vec<Bytes>) -> Bytes {
    match pieces.len() {
        0 => Bytes::new(),
        1 => pieces.pop().unwrap_or_default(),
        _ => {
            let mut out = BytesMut::with_capacity(pieces.iter().map(Bytes::len).sum());
            for piece in &pieces {
                out.extend_from_slice(piece);
            }
            out.freeze()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        align_down, align_up, copy_range, shard_tail_cache_bytes, trim_shard_tail_caches,
        trim_tail_caches, AlignedBuf, AlignedChunk, TailCache, DEFAULT_TAIL_CACHE_BYTES,
        DIRECT_ALIGN, WRITE_BLOCK,
    };
    use bytes::Bytes;

    #[test]
    fn aligned_buffers_are_aligned_and_padded_with_zeros() {
        let mut buf = AlignedBuf::with_capacity(5000);
        buf.extend(b"abc");
        buf.pad();
        let bytes = buf.into_bytes();
        assert_eq!(bytes.as_ptr() as usize % DIRECT_ALIGN as usize, 0);
        assert_eq!(bytes.len(), DIRECT_ALIGN as usize);
        assert_eq!(&bytes[..3], b"abc");
        assert!(bytes[3..].iter().all(|&b| b == 0));
        assert_eq!((align_down(4097), align_up(4097)), (4096, 8192));
        assert_eq!((align_down(4096), align_up(4096)), (4096, 4096));
    }

    #[test]
    fn a_chunk_fills_whole_blocks_in_order_and_is_cached_without_its_head_and_zeros() {
        // A head of 100 bytes, then 2.5 blocks of batches: three buffers, the last padded.
        let head = vec![1u8; 100];
        let batches: Vec<u8> = (0..WRITE_BLOCK * 5 / 2).map(|i| (i % 251) as u8).collect();
        let mut chunk = AlignedChunk::with_capacity(head.len() + batches.len());
        chunk.extend(&head);
        for piece in batches.chunks(70_001) {
            chunk.extend(piece);
        }
        chunk.pad();
        let lens: Vec<usize> = chunk.bytes().map(<[u8]>::len).collect();
        let total = align_up((head.len() + batches.len()) as u64) as usize;
        assert_eq!(lens, [WRITE_BLOCK, WRITE_BLOCK, total - 2 * WRITE_BLOCK]);
        for slice in chunk.bytes() {
            assert_eq!(slice.as_ptr() as usize % DIRECT_ALIGN as usize, 0);
        }
        let written: Vec<u8> = chunk.bytes().flatten().copied().collect();
        assert_eq!(&written[..100], &head[..]);
        assert_eq!(&written[100..100 + batches.len()], &batches[..]);
        assert!(written[100 + batches.len()..].iter().all(|&b| b == 0));

        // Written at file position 8192: the cache gets the batches alone, block by block.
        let at = 8192;
        let (from, to) = (at + 100, at + 100 + batches.len() as u64);
        let cached = chunk.into_cached(at, from, to);
        let starts: Vec<u64> = cached.iter().map(|(p, _, _)| *p).collect();
        assert_eq!(
            starts,
            [from, at + WRITE_BLOCK as u64, at + 2 * WRITE_BLOCK as u64]
        );
        let mut cache = TailCache::default();
        for (position, bytes, held) in cached {
            cache.push(position, bytes, held);
        }
        assert_eq!(cache.end(), Some(to));
        assert_eq!(
            cache.get(from, batches.len()).as_deref(),
            Some(&batches[..])
        );
    }

    #[test]
    fn a_chunk_of_more_buffers_than_one_write_takes_is_written_whole() {
        // 1,030 buffers (4 KiB blocks in tests): more than IOV_MAX, so two writes.
        let batches: Vec<u8> = (0..WRITE_BLOCK * 1030 - 100)
            .map(|i| (i % 253) as u8)
            .collect();
        let mut chunk = AlignedChunk::with_capacity(batches.len());
        chunk.extend(&batches);
        chunk.pad();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000000.log");
        std::fs::write(&path, vec![9u8; DIRECT_ALIGN as usize]).unwrap();
        let written = compio::runtime::Runtime::new().unwrap().block_on(async {
            let file = crate::storage::disk::open_direct(&path).await.unwrap();
            crate::storage::disk::write_log_direct(&file, &path, chunk, DIRECT_ALIGN)
                .await
                .unwrap()
        });
        let on_disk = std::fs::read(&path).unwrap();
        let at = DIRECT_ALIGN as usize;
        assert_eq!(&on_disk[at..at + batches.len()], &batches[..]);
        assert!(on_disk[at + batches.len()..].iter().all(|&b| b == 0));
        assert_eq!(on_disk[..at], vec![9u8; at][..], "nothing before the chunk");
        let cached = written.into_cached(at as u64, at as u64, (at + batches.len()) as u64);
        assert_eq!(cached.len(), 1030);
    }

    #[test]
    fn freed_blocks_are_reused() {
        let first = AlignedBuf::with_capacity(WRITE_BLOCK);
        let address = first.as_ref().as_ptr();
        drop(first);
        let again = AlignedBuf::with_capacity(WRITE_BLOCK);
        assert_eq!(again.as_ref().as_ptr(), address, "the pool's block");
    }

    #[test]
    fn the_tail_cache_serves_what_it_holds_and_nothing_else() {
        let mut cache = TailCache::default();
        assert_eq!(cache.get(0, 1), None);
        cache.push(100, Bytes::from_static(b"hello "), 6);
        cache.push(106, Bytes::from_static(b"world"), 5);
        assert_eq!(cache.get(100, 5).as_deref(), Some(&b"hello"[..]));
        assert_eq!(cache.get(104, 4).as_deref(), Some(&b"o wo"[..]));
        let pieces = cache.get_chunks(104, 4).unwrap();
        assert_eq!(pieces.len(), 2, "a slice of each chunk, no copy");
        assert_eq!((&pieces[0][..], &pieces[1][..]), (&b"o "[..], &b"wo"[..]));
        assert_eq!(cache.get_chunks(100, 0), Some(Vec::new()));
        let all = cache.get_chunks(100, 11).unwrap();
        assert_eq!(&copy_range(&all, 0, 11)[..], b"hello world");
        assert_eq!(&copy_range(&all, 4, 4)[..], b"o wo", "across the pieces");
        assert_eq!(&copy_range(&all, 7, 4)[..], b"orld", "in the second");
        assert_eq!(&copy_range(&all, 9, 10)[..], b"ld", "cut at the end");
        assert_eq!(cache.get(106, 5).as_deref(), Some(&b"world"[..]));
        assert_eq!(cache.get(99, 2), None, "before the cache");
        assert_eq!(cache.get(107, 5), None, "past its end");
        // A chunk that does not continue the cache replaces it.
        cache.push(200, Bytes::from_static(b"new"), 3);
        assert_eq!(cache.get(100, 1), None);
        assert_eq!(cache.get(200, 3).as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn the_tail_cache_keeps_about_its_budget_of_the_newest_bytes() {
        let budget = DEFAULT_TAIL_CACHE_BYTES;
        let mut cache = TailCache::default();
        let chunk = Bytes::from(vec![7u8; 1 << 20]);
        for i in 0..10u64 {
            cache.push(i << 20, chunk.clone(), 1 << 20);
            trim_tail_caches(std::slice::from_mut(&mut cache), |c| c, budget);
        }
        assert!(cache.held() <= budget);
        assert_eq!(cache.end(), Some(10 << 20));
        assert!(cache.get(9 << 20, 1 << 20).is_some());
        assert!(cache.get(0, 1).is_none());
        // A small append in a much larger buffer is kept as a copy of its bytes, and counted
        // by them; one that fills most of its buffer is kept in it, counted by the buffer.
        let mut cache = TailCache::default();
        let buffer = Bytes::from(vec![1u8; 4096]);
        for i in 0..100_000u64 {
            cache.push(i * 100, buffer.slice(..100), 4096);
            trim_tail_caches(std::slice::from_mut(&mut cache), |c| c, budget);
        }
        assert_eq!(cache.held(), 100 * cache.len() as u64);
        assert_eq!(cache.len(), (budget / 100) as usize);
        assert!(
            cache
                .0
                .borrow()
                .chunks
                .iter()
                .all(|k| k.bytes.as_ptr() != buffer.as_ptr()),
            "copies, not slices of the buffer"
        );
        let mut cache = TailCache::default();
        for i in 0..10_000u64 {
            cache.push(i * 3000, buffer.slice(..3000), 4096);
            trim_tail_caches(std::slice::from_mut(&mut cache), |c| c, budget);
        }
        assert_eq!(cache.len(), (budget / 4096) as usize);
        assert!(cache
            .0
            .borrow()
            .chunks
            .iter()
            .all(|k| k.bytes.as_ptr() == buffer.as_ptr()));
        // A chunk larger than the budget stays: the next write repeats its last block.
        trim_tail_caches(std::slice::from_mut(&mut cache), |c| c, 0);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_partitions_budget_spans_its_segments_and_drops_the_oldest_first() {
        let chunk = |fill| Bytes::from(vec![fill; 1000]);
        // A sealed segment's cache with three chunks, then the active one's with two.
        let mut caches = [TailCache::default(), TailCache::default()];
        for i in 0..3u64 {
            caches[0].push(i * 1000, chunk(1), 1000);
        }
        for i in 0..2u64 {
            caches[1].push(i * 1000, chunk(2), 1000);
        }
        let held = |caches: &[TailCache; 2]| (caches[0].held(), caches[1].held());
        trim_tail_caches(&mut caches, |c| c, 5000);
        assert_eq!(held(&caches), (3000, 2000), "within budget");
        // Over by 1,500: the sealed segment's two oldest chunks go.
        caches[1].push(2000, chunk(2), 1500);
        trim_tail_caches(&mut caches, |c| c, 5000);
        assert_eq!(held(&caches), (1000, 3500));
        assert!(caches[0].get(0, 1).is_none());
        assert_eq!(caches[0].get(2000, 1000), Some(chunk(1)));
        // Then the active segment's oldest, once the sealed one is empty.
        trim_tail_caches(&mut caches, |c| c, 2500);
        assert_eq!(held(&caches), (0, 2500));
        assert!(caches[1].get(0, 1).is_none());
        assert!(caches[1].get(1000, 2000).is_some());
        // Its newest chunk stays even over budget.
        trim_tail_caches(&mut caches, |c| c, 0);
        assert_eq!(held(&caches), (0, 1500));
    }

    #[test]
    fn a_shards_budget_drops_the_oldest_chunks_of_all_its_partitions_first() {
        // A thread of its own: the registry is the thread's (the shard's).
        std::thread::spawn(|| {
            let chunk = |fill| Bytes::from(vec![fill; 1000]);
            // Partition a writes three chunks, then b three, then a one more.
            let (mut a, mut b) = (TailCache::default(), TailCache::default());
            for i in 0..3u64 {
                a.push(i * 1000, chunk(1), 1000);
            }
            for i in 0..3u64 {
                b.push(i * 1000, chunk(2), 1000);
            }
            a.push(3000, chunk(1), 1000);
            assert_eq!(shard_tail_cache_bytes(), 7000);
            trim_shard_tail_caches(7000);
            assert_eq!((a.len(), b.len()), (4, 3), "within budget");
            // a's three older chunks are the oldest of the shard, then b's.
            trim_shard_tail_caches(4500);
            assert_eq!((a.len(), b.len()), (1, 3));
            assert_eq!(a.get(3000, 1000), Some(chunk(1)), "a's newest stays");
            trim_shard_tail_caches(2000);
            assert_eq!((a.len(), b.len()), (1, 1));
            assert_eq!(shard_tail_cache_bytes(), 2000);
            // Each active segment keeps its newest chunk, whatever the budget...
            trim_shard_tail_caches(0);
            assert_eq!((a.len(), b.len()), (1, 1));
            // ...until it is sealed (a roll); then the older of the two goes first.
            b.seal();
            a.seal();
            trim_shard_tail_caches(1000);
            assert_eq!((a.len(), b.len()), (1, 0), "b's chunk was the older");
            // A segment that goes gives its memory back.
            b.push(0, chunk(3), 1000);
            b.push(1000, chunk(3), 1000);
            assert_eq!(shard_tail_cache_bytes(), 3000);
            drop(a);
            assert_eq!(shard_tail_cache_bytes(), 2000);
            trim_shard_tail_caches(0);
            assert_eq!(b.len(), 0, "b is sealed: nothing of it need stay");
            assert_eq!(shard_tail_cache_bytes(), 0);
            // A replaced cache (a chunk that does not continue it) counts the new one only.
            let mut c = TailCache::default();
            c.push(0, chunk(4), 1000);
            c.push(5000, chunk(4), 600);
            assert_eq!(shard_tail_cache_bytes(), 600);
            c.clear();
            assert_eq!(shard_tail_cache_bytes(), 0);
        })
        .join()
        .unwrap();
    }

    /// What a shard's caches should hold after a run of operations, kept the plain way:
    /// per cache, its chunks' (stamp, memory held) and whether it is sealed.
    #[derive(Default, Clone)]
    struct Model {
        chunks: Vec<(u64, u64)>,
        sealed: bool,
        end: u64,
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A write of `len` bytes in a buffer of `held` at the cache's end (or past it,
        /// which replaces what the cache held).
        Push {
            cache: usize,
            len: u64,
            held: u64,
            gap: bool,
        },
        Seal(usize),
        Clear(usize),
        /// The segment goes (retention, compaction) and a new one takes its place.
        Replace(usize),
        TrimShard(u64),
        TrimPartition(usize, u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0..4usize, 1..3000u64, 0..3u64, proptest::bool::weighted(0.05)).prop_map(
                |(cache, len, factor, gap)| Op::Push {
                    cache,
                    len,
                    held: len + factor * len,
                    gap,
                }
            ),
            1 => (0..4usize).prop_map(Op::Seal),
            1 => (0..4usize).prop_map(Op::Clear),
            1 => (0..4usize).prop_map(Op::Replace),
            3 => (0..20_000u64).prop_map(Op::TrimShard),
            1 => (0..4usize, 0..8000u64).prop_map(|(c, b)| Op::TrimPartition(c, b)),
        ]
    }

    proptest::proptest! {
        /// The shard's registry against a plain model: the memory it counts is what the
        /// caches hold, and its trim drops exactly the oldest chunks that may go, across
        /// caches, never an active segment's newest.
        #[test]
        fn the_shards_trim_drops_what_a_plain_model_does(ops in proptest::collection::vec(op(), 1..120)) {
            assert_eq!(shard_tail_cache_bytes(), 0, "a case starts with no caches");
            let mut caches: Vec<TailCache> = (0..4).map(|_| TailCache::default()).collect();
            let mut model: Vec<Model> = vec![Model::default(); 4];
            let mut stamp = 0u64;
            for op in ops {
                match op {
                    Op::Push { cache, len, held, gap } => {
                        let at = model[cache].end + u64::from(gap);
                        caches[cache].push(at, Bytes::from(vec![0u8; len as usize]), held);
                        let m = &mut model[cache];
                        if gap || m.chunks.is_empty() {
                            m.chunks.clear();
                        }
                        stamp += 1;
                        // A chunk in a buffer over twice its size is kept as a copy.
                        m.chunks.push((stamp, if held > 2 * len { len } else { held }));
                        m.end = at + len;
                    }
                    Op::Seal(cache) => {
                        caches[cache].seal();
                        model[cache].sealed = true;
                    }
                    Op::Clear(cache) => {
                        caches[cache].clear();
                        model[cache].chunks.clear();
                    }
                    Op::Replace(cache) => {
                        caches[cache] = TailCache::default();
                        model[cache] = Model::default();
                    }
                    Op::TrimShard(budget) => {
                        trim_shard_tail_caches(budget);
                        loop {
                            let total: u64 =
                                model.iter().flat_map(|m| &m.chunks).map(|c| c.1).sum();
                            let oldest = model
                                .iter()
                                .enumerate()
                                .filter(|(_, m)| m.sealed || m.chunks.len() > 1)
                                .filter_map(|(i, m)| Some((m.chunks.first()?.0, i)))
                                .min();
                            match oldest {
                                Some((_, i)) if total > budget => {
                                    model[i].chunks.remove(0);
                                }
                                _ => break,
                            }
                        }
                    }
                    Op::TrimPartition(cache, budget) => {
                        trim_tail_caches(std::slice::from_mut(&mut caches[cache]), |c| c, budget);
                        let m = &mut model[cache];
                        while m.chunks.iter().map(|c| c.1).sum::<u64>() > budget
                            && m.chunks.len() > 1
                        {
                            m.chunks.remove(0);
                        }
                    }
                }
                let want: Vec<usize> = model.iter().map(|m| m.chunks.len()).collect();
                let got: Vec<usize> = caches.iter().map(TailCache::len).collect();
                proptest::prop_assert_eq!(got, want);
                let held: u64 = model.iter().flat_map(|m| &m.chunks).map(|c| c.1).sum();
                proptest::prop_assert_eq!(shard_tail_cache_bytes(), held);
                proptest::prop_assert_eq!(caches.iter().map(TailCache::held).sum::<u64>(), held);
            }
            drop(caches);
            proptest::prop_assert_eq!(shard_tail_cache_bytes(), 0, "dropped caches gave it all back");
        }
    }
}
