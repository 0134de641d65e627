//! The memory connections read requests into, reused through a bounded pool per shard.
//!
//! A connection splits each request frame off its receive buffer, and the frame's record
//! batches stay handles into that buffer until they are on disk. While they are, the
//! buffer's allocation is shared, so the next read needs fresh memory. Taken from the
//! allocator, a buffer of a produce request's size is usually newly mapped: the kernel
//! faults in and clears every page of it as the socket's bytes arrive, on the shard's core,
//! and gives it back when the last request in it is written. The pool keeps such buffers
//! mapped instead: a connection that needs room takes a pooled buffer whose requests have
//! all been written, and hands back the one it leaves.
//!
//! Bounds: buffers from [`POOLED_MIN`] to [`POOLED_MAX`] bytes, in power-of-two sizes, at
//! most the shard's request budget (`max_queued_request_bytes`) of them, counted whether or
//! not their last requests are still in flight. A frame bigger than [`POOLED_MAX`] gets
//! memory of its own, freed with it.

use std::cell::RefCell;

use bytes::BytesMut;

/// The least buffer kept: smaller reads (the prefix of a frame, small requests) are cheap
/// to allocate.
const POOLED_MIN: usize = 64 << 10;
/// The biggest buffer kept.
const POOLED_MAX: usize = 16 << 20;

/// A connection's receive buffer and the size of the allocation it came from, which a
/// split-off [`BytesMut`] does not tell (0: not from the pool's sizes).
#[derive(Default)]
pub(crate) struct RecvBuf {
    pub(crate) bytes: BytesMut,
    size: usize,
}

/// The free receive buffers of one shard.
pub(crate) struct RecvBuffers {
    /// Buffers given back, each with its allocation's size; some may still be shared with
    /// requests in flight.
    free: RefCell<Vec<RecvBuf>>,
    /// Bytes of buffers kept at most.
    limit: usize,
}

impl RecvBuffers {
    /// A pool that keeps at most `limit` bytes of buffers.
    pub(crate) fn new(limit: usize) -> RecvBuffers {
        RecvBuffers {
            free: RefCell::default(),
            limit,
        }
    }

    /// `buf` with room for `wanted` more bytes after those it holds. The bytes it holds are
    /// kept (copied into another buffer if needed, as `BytesMut::reserve` would), and a
    /// buffer it leaves goes to the pool.
    pub(crate) fn room(&self, mut buf: RecvBuf, wanted: usize) -> RecvBuf {
        if buf.bytes.capacity() - buf.bytes.len() >= wanted || buf.bytes.try_reclaim(wanted) {
            return buf;
        }
        let need = buf.bytes.len() + wanted;
        let mut next = if need < POOLED_MIN {
            // A small read: not worth a pooled buffer, which it would keep while idle.
            RecvBuf {
                bytes: BytesMut::with_capacity(need),
                size: 0,
            }
        } else if let Some(pooled) = self.take(need) {
            pooled
        } else {
            let size = if need <= POOLED_MAX {
                need.next_power_of_two()
            } else {
                0
            };
            RecvBuf {
                bytes: BytesMut::with_capacity(size.max(need)),
                size,
            }
        };
        next.bytes.extend_from_slice(&buf.bytes);
        buf.bytes.clear();
        self.give_back(buf);
        next
    }

    /// Hands `buf` to the pool (its bytes are dropped), if it is of a pooled size and the
    /// pool has room for it; else frees it once its requests are done.
    pub(crate) fn give_back(&self, mut buf: RecvBuf) {
        if buf.size == 0 {
            return;
        }
        buf.bytes.clear();
        let mut free = self.free.borrow_mut();
        let held: usize = free.iter().map(|b| b.size).sum();
        if held + buf.size <= self.limit {
            free.push(buf);
        }
    }

    /// A pooled buffer of at least `need` bytes that no request holds any more: the
    /// smallest there is.
    fn take(&self, need: usize) -> Option<RecvBuf> {
        let mut free = self.free.borrow_mut();
        let mut best: Option<(usize, usize)> = None;
        for (i, buf) in free.iter_mut().enumerate() {
            if buf.size < need || best.is_some_and(|(_, size)| size <= buf.size) {
                continue;
            }
            // Succeeds only if no split-off request shares the allocation.
            if buf.bytes.try_reclaim(need) {
                best = Some((i, buf.size));
            }
        }
        best.map(|(i, _)| free.swap_remove(i))
    }
}

#[cfg(test)]
mod tests {
    use super::{RecvBuf, RecvBuffers, POOLED_MIN};

    #[test]
    fn a_buffer_comes_back_once_its_requests_are_done() {
        let pool = RecvBuffers::new(32 << 20);
        let mut buf = pool.room(RecvBuf::default(), 100_000);
        let first = buf.bytes.as_ptr();
        buf.bytes.extend_from_slice(&[7u8; 100_000]);
        let request = buf.bytes.split_to(90_000);
        // The request is in flight: room for more must come from elsewhere, and the 10,000
        // bytes of the next frame come along.
        let buf = pool.room(buf, 200_000);
        assert_ne!(buf.bytes.as_ptr(), first);
        assert_eq!(&buf.bytes[..], &[7u8; 10_000][..]);
        pool.give_back(buf);
        // Nothing free of the first allocation's size while its request lives...
        let other = pool.room(RecvBuf::default(), POOLED_MIN);
        drop(request);
        pool.give_back(other);
        // ...and once it is done, the same memory serves again.
        let again = pool.room(RecvBuf::default(), 100_000);
        assert_eq!(again.bytes.as_ptr(), first);
    }
}
