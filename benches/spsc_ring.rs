//! The inter-shard SPSC ring (`eventflow::shard::ring`) against `crossbeam_queue::ArrayQueue`,
//! the bounded MPMC queue the project considered instead.
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
    thread::scope(|s| {
        s.spawn(|| {
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
