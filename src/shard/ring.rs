//! A bounded, lock-free single-producer/single-consumer ring.
//!
//! One ring joins each ordered pair of shards. The SPSC contract is enforced by the types:
//! [`ring`] returns one [`Producer`] and one [`Consumer`], neither of which can be cloned,
//! and each is moved to its shard's thread. The two indices live on separate cache lines
//! (`#[repr(align(128))]`, two lines because adjacent-line prefetch pairs them) and each side
//! keeps a cached copy of the other's index, so in the steady state a push or pop touches
//! only its own line plus the slot.
//!
//! A full ring is backpressure: [`Producer::push`] hands the value back, and the caller
//! waits for room instead of queueing without bound.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

#[repr(align(128))]
struct CachePadded<T>(T);

struct Shared<T> {
    /// Next slot the consumer reads. Written only by the consumer.
    head: CachePadded<AtomicUsize>,
    /// Next slot the producer writes. Written only by the producer.
    tail: CachePadded<AtomicUsize>,
    /// Set by a producer that found the ring full and wants to hear when it has room.
    producer_waiting: CachePadded<AtomicBool>,
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    mask: usize,
}

// SAFETY: a slot is accessed by the producer only before it publishes it (tail store,
// Release) and by the consumer only after it observed that publication (tail load,
// Acquire) and before it hands the slot back (head store, Release). Values of `T` move
// between threads, hence `T: Send`.
unsafe impl<T: Send> Sync for Shared<T> {}
// SAFETY: as above; the shared state owns `T`s that may be dropped on either thread.
unsafe impl<T: Send> Send for Shared<T> {}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        let head = *self.head.0.get_mut();
        let tail = *self.tail.0.get_mut();
        for i in head..tail {
            // SAFETY: slots in [head, tail) were written and not yet read; we have
            // exclusive access in drop.
            unsafe { self.slots[i & self.mask].get_mut().assume_init_drop() };
        }
    }
}

/// Creates a ring holding at least `capacity` values (rounded up to a power of two).
pub fn ring<T: Send>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let capacity = capacity.max(2).next_power_of_two();
    let slots = (0..capacity)
        .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
        .collect();
    let shared = Arc::new(Shared {
        head: CachePadded(AtomicUsize::new(0)),
        tail: CachePadded(AtomicUsize::new(0)),
        producer_waiting: CachePadded(AtomicBool::new(false)),
        slots,
        mask: capacity - 1,
    });
    (
        Producer {
            shared: shared.clone(),
            tail: 0,
            cached_head: 0,
        },
        Consumer {
            shared,
            head: 0,
            cached_tail: 0,
        },
    )
}

/// The writing end of a ring.
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    /// Our own copy of `tail` (we are its only writer).
    tail: usize,
    /// Last `head` we read; refreshed only when the ring looks full.
    cached_head: usize,
}

impl<T> Producer<T> {
    /// Appends `value`, or gives it back if the ring is full.
    pub fn push(&mut self, value: T) -> Result<(), T> {
        let capacity = self.shared.mask + 1;
        if self.tail.wrapping_sub(self.cached_head) == capacity {
            self.cached_head = self.shared.head.0.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.cached_head) == capacity {
                return Err(value);
            }
        }
        let slot = &self.shared.slots[self.tail & self.shared.mask];
        // SAFETY: the slot is outside [head, tail): the consumer does not read it until we
        // publish the new tail below, and it has finished with it (head moved past it).
        unsafe { (*slot.get()).write(value) };
        self.tail = self.tail.wrapping_add(1);
        self.shared.tail.0.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Asks the consumer to report when it frees room (see [`Consumer::take_producer_waiting`]).
    pub fn set_waiting(&self) {
        self.shared.producer_waiting.0.store(true, Ordering::SeqCst);
    }

    /// Slots in the ring.
    pub fn capacity(&self) -> usize {
        self.shared.mask + 1
    }
}

/// The reading end of a ring.
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    /// Our own copy of `head` (we are its only writer).
    head: usize,
    /// Last `tail` we read; refreshed only when the ring looks empty.
    cached_tail: usize,
}

impl<T> Consumer<T> {
    /// Takes the oldest value, if any.
    pub fn pop(&mut self) -> Option<T> {
        if self.head == self.cached_tail {
            self.cached_tail = self.shared.tail.0.load(Ordering::Acquire);
            if self.head == self.cached_tail {
                return None;
            }
        }
        let slot = &self.shared.slots[self.head & self.shared.mask];
        // SAFETY: head < tail as published by the producer with Release, observed with
        // Acquire: the slot holds an initialised value the producer no longer touches.
        let value = unsafe { (*slot.get()).assume_init_read() };
        self.head = self.head.wrapping_add(1);
        self.shared.head.0.store(self.head, Ordering::Release);
        Some(value)
    }

    /// Whether the ring holds nothing right now.
    pub fn is_empty(&self) -> bool {
        self.head == self.shared.tail.0.load(Ordering::Acquire)
    }

    /// True (once) if the producer found the ring full and asked to be told about room.
    pub fn take_producer_waiting(&self) -> bool {
        self.shared.producer_waiting.0.load(Ordering::SeqCst)
            && self.shared.producer_waiting.0.swap(false, Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_ring_gives_the_value_back() {
        let (mut p, mut c) = ring::<u32>(4);
        for i in 0..4 {
            p.push(i).unwrap();
        }
        assert_eq!(p.push(99), Err(99));
        assert_eq!(c.pop(), Some(0));
        p.push(4).unwrap();
        let rest: Vec<_> = std::iter::from_fn(|| c.pop()).collect();
        assert_eq!(rest, vec![1, 2, 3, 4]);
        assert!(c.is_empty());
    }

    #[test]
    fn values_left_in_the_ring_are_dropped() {
        let marker = Arc::new(());
        let (mut p, c) = ring(8);
        for _ in 0..5 {
            p.push(marker.clone()).unwrap();
        }
        assert_eq!(Arc::strong_count(&marker), 6);
        drop(p);
        drop(c);
        assert_eq!(Arc::strong_count(&marker), 1);
    }

    #[test]
    fn two_threads_see_every_value_in_order() {
        const N: u64 = 200_000;
        let (mut p, mut c) = ring::<u64>(64);
        let producer = std::thread::spawn(move || {
            for i in 0..N {
                let mut v = i;
                loop {
                    match p.push(v) {
                        Ok(()) => break,
                        Err(back) => {
                            v = back;
                            std::thread::yield_now();
                        }
                    }
                }
            }
        });
        let mut expected = 0;
        while expected < N {
            match c.pop() {
                Some(v) => {
                    assert_eq!(v, expected);
                    expected += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert!(c.pop().is_none());
    }
}
