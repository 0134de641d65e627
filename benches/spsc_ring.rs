//! Candidates for the inter-shard SPSC ring: a padded ring with cached counterpart indices
//! (`padded`, below: the project's first design), crossbeam's `ArrayQueue` used directly,
//! and the broker's ring (`eventflow::shard::ring`: `ArrayQueue` behind an SPSC-typed
//! producer/consumer pair, which is what the padded ring lost to across threads).
//!
//! * `spsc_round_trip_bytes`: one thread pushes a `bytes::Bytes` handle and pops it straight
//!   back. The same handle goes round and round (no clone, no drop), so this is the
//!   uncontended cost of one hand-off: a push plus a pop.
//! * `spsc_cross_thread_u64`: a producer thread pushes `TRANSFER` u64s through a
//!   1024-slot queue to the consumer (the bench thread), which pops them all; both spin on
//!   full/empty. Each iteration times one whole transfer, from a shared start barrier until
//!   the consumer has the last value. Two threads in total.

use std::hint::spin_loop;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use eventflow::shard::ring::ring;

/// The padded ring with cached counterpart indices that the project wrote first and measured
/// against `ArrayQueue` (the broker now uses `ArrayQueue`; see `eventflow::shard::ring`).
/// Kept here so the comparison can be re-run.
#[allow(dead_code)]
mod padded {
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
    pub(crate) fn ring<T: Send>(capacity: usize) -> (Producer<T>, Consumer<T>) {
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
    pub(crate) struct Producer<T> {
        shared: Arc<Shared<T>>,
        /// Our own copy of `tail` (we are its only writer).
        tail: usize,
        /// Last `head` we read; refreshed only when the ring looks full.
        cached_head: usize,
    }

    impl<T> Producer<T> {
        /// Appends `value`, or gives it back if the ring is full.
        pub(crate) fn push(&mut self, value: T) -> Result<(), T> {
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
        pub(crate) fn set_waiting(&self) {
            self.shared.producer_waiting.0.store(true, Ordering::SeqCst);
        }

        /// Slots in the ring.
        pub(crate) fn capacity(&self) -> usize {
            self.shared.mask + 1
        }
    }

    /// The reading end of a ring.
    pub(crate) struct Consumer<T> {
        shared: Arc<Shared<T>>,
        /// Our own copy of `head` (we are its only writer).
        head: usize,
        /// Last `tail` we read; refreshed only when the ring looks empty.
        cached_tail: usize,
    }

    impl<T> Consumer<T> {
        /// Takes the oldest value, if any.
        pub(crate) fn pop(&mut self) -> Option<T> {
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
        pub(crate) fn is_empty(&self) -> bool {
            self.head == self.shared.tail.0.load(Ordering::Acquire)
        }

        /// True (once) if the producer found the ring full and asked to be told about room.
        pub(crate) fn take_producer_waiting(&self) -> bool {
            self.shared.producer_waiting.0.load(Ordering::SeqCst)
                && self.shared.producer_waiting.0.swap(false, Ordering::SeqCst)
        }
    }
}

/// Slots in each queue (both benches; already a power of two, so the ring does not round).
const CAPACITY: usize = 1024;
/// Values moved by one cross-thread transfer.
const TRANSFER: u64 = 1_000_000;

/// A heap-backed handle, like the batch slices the shards pass around.
fn payload() -> Bytes {
    Bytes::from(vec![0x5a_u8; 256])
}

fn round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("spsc_round_trip_bytes");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));

    group.bench_function("eventflow_ring", |b| {
        let (mut tx, mut rx) = ring::<Bytes>(CAPACITY);
        let mut handle = payload();
        b.iter(|| {
            tx.push(std::mem::take(&mut handle))
                .expect("ring is empty, push cannot fail");
            handle = black_box(rx.pop().expect("value was just pushed"));
        });
    });

    group.bench_function("padded_cached_ring", |b| {
        let (mut tx, mut rx) = padded::ring::<Bytes>(CAPACITY);
        let mut handle = payload();
        b.iter(|| {
            tx.push(std::mem::take(&mut handle))
                .expect("ring is empty, push cannot fail");
            handle = black_box(rx.pop().expect("value was just pushed"));
        });
    });

    group.bench_function("crossbeam_array_queue", |b| {
        let queue = ArrayQueue::<Bytes>::new(CAPACITY);
        let mut handle = payload();
        b.iter(|| {
            queue
                .push(std::mem::take(&mut handle))
                .expect("queue is empty, push cannot fail");
            handle = black_box(queue.pop().expect("value was just pushed"));
        });
    });

    group.finish();
}

/// Moves `0..TRANSFER` from a producer thread (calling `push`) to this thread (calling
/// `pop`), checking order, and returns how long that took once both threads were ready.
fn timed_transfer<P, C>(mut push: P, mut pop: C) -> Duration
where
    P: FnMut(u64) -> Result<(), u64> + Send,
    C: FnMut() -> Option<u64>,
{
    let start_gate = Barrier::new(2);
    // One thread per core, as between two shards: unpinned, the scheduler sometimes stacks
    // both spinning threads on one vCPU and the numbers swing by several times.
    // The core list is read once, before anything is pinned: a pinned thread's mask (and
    // the mask of threads it spawns) would list its own core only.
    static CORES: std::sync::OnceLock<Vec<core_affinity::CoreId>> = std::sync::OnceLock::new();
    let cores = CORES.get_or_init(|| core_affinity::get_core_ids().unwrap_or_default());
    if let Some(core) = cores.first() {
        core_affinity::set_for_current(*core);
    }
    thread::scope(|s| {
        s.spawn(|| {
            if let Some(core) = cores.get(1) {
                core_affinity::set_for_current(*core);
            }
            start_gate.wait();
            for i in 0..TRANSFER {
                let mut value = i;
                while let Err(back) = push(value) {
                    value = back;
                    spin_loop();
                }
            }
        });

        start_gate.wait();
        let start = Instant::now();
        let mut expected = 0;
        while expected < TRANSFER {
            match pop() {
                Some(value) => {
                    assert_eq!(value, expected, "values arrived out of order");
                    expected += 1;
                }
                None => spin_loop(),
            }
        }
        start.elapsed()
    })
}

fn cross_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("spsc_cross_thread_u64");
    group.throughput(Throughput::Elements(TRANSFER));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));

    group.bench_function("eventflow_ring", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let (mut tx, mut rx) = ring::<u64>(CAPACITY);
                    timed_transfer(move |v| tx.push(v), move || rx.pop())
                })
                .sum()
        });
    });

    group.bench_function("padded_cached_ring", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let (mut tx, mut rx) = padded::ring::<u64>(CAPACITY);
                    timed_transfer(move |v| tx.push(v), move || rx.pop())
                })
                .sum()
        });
    });

    group.bench_function("crossbeam_array_queue", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let queue = ArrayQueue::<u64>::new(CAPACITY);
                    timed_transfer(|v| queue.push(v), || queue.pop())
                })
                .sum()
        });
    });

    group.finish();
}

criterion_group!(benches, round_trip, cross_thread);
criterion_main!(benches);
