//! `validate()` is what every produced batch pays before it reaches the log: a header check
//! and a CRC-32C over the whole batch. These benches report its throughput in bytes, for a
//! typical 1,000-record batch and for the 16 KiB (Kafka's default `batch.size`) and 1 MiB
//! (its default `message.max.bytes`) ends of the range.

use std::time::Duration;

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use eventflow::protocol::batch::{self, BatchBuilder};

const VALUE_LEN: usize = 100;
const LIMIT: usize = 8 << 20;

/// A batch of `count` records with 8-byte keys and 100-byte values.
fn batch_of_records(count: usize) -> BytesMut {
    let value = [0x5a_u8; VALUE_LEN];
    let mut builder = BatchBuilder::with_capacity(count * (VALUE_LEN + 24));
    for i in 0..count {
        let key = (i as u64).to_be_bytes();
        builder.push(1_700_000_000_000 + i as i64, Some(&key), Some(&value), &[]);
    }
    builder.finish()
}

/// The largest batch of such records that fits in `bytes`.
fn batch_of_size(bytes: usize) -> BytesMut {
    let mut count = 1;
    while batch_of_records(count * 2).len() <= bytes {
        count *= 2;
    }
    let mut step = count / 2;
    while step > 0 {
        if batch_of_records(count + step).len() <= bytes {
            count += step;
        }
        step /= 2;
    }
    batch_of_records(count)
}

fn bench_validate(c: &mut Criterion) {
    let cases = [
        ("1000x100B", batch_of_records(1_000)),
        ("16KiB", batch_of_size(16 << 10)),
        ("1MiB", batch_of_size(1 << 20)),
    ];
    let mut group = c.benchmark_group("batch_validate");
    for (name, batch) in &cases {
        batch::validate(batch, LIMIT).expect("bench batch is valid");
        group.throughput(Throughput::Bytes(batch.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &batch[..], |b, batch| {
            b.iter(|| batch::validate(black_box(batch), LIMIT));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_validate
}
criterion_main!(benches);
