//! What one record costs the thread that produces it, in ns per record: 100-byte values,
//! without a key (sticky partition) and with an 8-byte key (murmur2 over 8 partitions).
//!
//! - `accumulator/*`: the partitioner and the accumulator as the producer drives them
//!   (choose a partition, append into the open batch, release each batch as it closes), with
//!   no lock, clock or topic lookup.
//! - `send_tagged/*`: the real `Producer::send_tagged` (lock, clock, topic lookup, the
//!   above), with `acks = 0` against a stub broker on loopback that answers metadata and
//!   discards the rest. Its I/O thread and the stub run beside the bench and share the
//!   machine's cores, so these report the sending thread's CPU time per record
//!   (`CLOCK_THREAD_CPUTIME_ID`), not wall-clock time: a thread waiting for a core is not
//!   charged, a thread waiting for the lock or for cache lines the I/O thread took is.
//!
//! - `send_tagged_many/*`: the same through `Producer::send_tagged_many`, 64 records a call
//!   (one lock and one clock reading per call), as the harness's full-rate producers send;
//!   also the sending thread's CPU time per record.
//!
//! With `PRODUCER_APPEND_RECORDS=N` set, the binary instead runs each case once for exactly
//! N records and exits, for instruction counts that do not depend on the machine's load:
//!
//! ```sh
//! PRODUCER_APPEND_RECORDS=1000000 valgrind --tool=callgrind \
//!     --toggle-collect='producer_append::count_*' target/release/deps/producer_append-*
//! ```
//!
//! (each `count_*` function then holds one case's instructions; divide by N).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{black_box, Criterion, Throughput};
use eventflow::client::accumulator::{Accumulator, AccumulatorConfig};
use eventflow::client::partitioner::{partition_for_key, StickyPartitioner};
use eventflow::client::producer::{Producer, ProducerConfig, Record};
use eventflow::protocol::api::{
    encode_response, Acks, MetadataResponse, Request, Response, ShardEndpoint, TopicMetadata,
};
use eventflow::protocol::frame::{split_frame, RequestHeader};

const TOPIC: &str = "bench-topic";
const PARTITIONS: u32 = 8;
const VALUE: [u8; 100] = [0x5a; 100];
const TIMESTAMP: i64 = 1_700_000_000_000;

/// The producer's partitioner and accumulator, driven as `Producer::send_tagged` drives
/// them.
struct Batching {
    sticky: StickyPartitioner,
    batches: Accumulator<u64>,
    start: Instant,
    tag: u64,
}

impl Batching {
    fn new() -> Batching {
        Batching {
            sticky: StickyPartitioner::with_seed(7),
            batches: Accumulator::new(AccumulatorConfig::default()),
            start: Instant::now(),
            tag: 0,
        }
    }

    fn append(&mut self, key: Option<&[u8]>) {
        // One comparison of the topic's name (the accumulator's check of the topic used
        // last), then its index, as the producer does.
        let index = self.batches.topic_index(TOPIC);
        let partition = match key {
            Some(key) => partition_for_key(key, PARTITIONS),
            None => self.sticky.partition_of(index, TOPIC, PARTITIONS),
        };
        self.tag += 1;
        let start = self.start;
        let closed = self
            .batches
            .append_at(
                index,
                partition,
                TIMESTAMP,
                key,
                Some(&VALUE),
                &[],
                self.tag,
                || start,
            )
            .expect("the buffer is released as batches close");
        for batch in closed {
            if key.is_none() {
                self.sticky.batch_closed(TOPIC, partition, PARTITIONS);
            }
            self.batches.release(batch.accounted);
            black_box(batch);
        }
    }
}

/// A broker that answers metadata (one shard, `PARTITIONS` partitions of any topic asked
/// for) and reads everything else without answering (the producer uses `acks = 0`).
fn stub_broker() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || serve(stream));
        }
    });
    addr
}

fn serve(mut stream: TcpStream) {
    let mut buf = BytesMut::with_capacity(1 << 20);
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        while let Ok(Some(mut payload)) = split_frame(&mut buf, 64 << 20) {
            let Ok(header) = RequestHeader::decode(&mut payload) else {
                return;
            };
            if let Ok(Request::Metadata(request)) = Request::decode(&header, payload) {
                let response = Response::Metadata(MetadataResponse {
                    shards: vec![ShardEndpoint {
                        shard: 0,
                        host: "127.0.0.1".into(),
                        port: 0,
                    }],
                    topics: request
                        .topics
                        .into_iter()
                        .map(|name| TopicMetadata {
                            name,
                            error: eventflow::protocol::ErrorCode::None,
                            owners: vec![0; PARTITIONS as usize],
                        })
                        .collect(),
                });
                for part in encode_response(header.correlation_id, &response) {
                    if stream.write_all(&part).is_err() {
                        return;
                    }
                }
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn producer(bootstrap: String) -> Producer {
    let config = ProducerConfig {
        bootstrap,
        acks: Acks::None,
        ..ProducerConfig::default()
    };
    let producer =
        Producer::with_callback(config, Arc::new(|_, _| {})).expect("producer on the stub");
    producer.partitions(TOPIC).expect("metadata from the stub");
    producer
}

fn send(producer: &Producer, key: Option<&[u8]>, tag: u64) {
    let record = Record {
        topic: TOPIC,
        key,
        value: Some(&VALUE),
        ..Record::default()
    };
    producer.send_tagged(record, tag).expect("send");
}

/// Records per `send_tagged_many` call.
const SLICE: u64 = 64;

/// Sends `SLICE` records from `first_tag` in one `send_tagged_many` call, keyed by their
/// tags or not.
fn send_slice(producer: &Producer, keyed: bool, first_tag: u64) {
    let keys: [[u8; 8]; SLICE as usize] =
        std::array::from_fn(|i| (first_tag + i as u64).to_be_bytes());
    let records = keys.iter().enumerate().map(|(i, key)| {
        let record = Record {
            topic: TOPIC,
            key: keyed.then_some(&key[..]),
            value: Some(&VALUE),
            ..Record::default()
        };
        (record, first_tag + i as u64)
    });
    producer.send_tagged_many(records).expect("send");
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("producer_append");
    group.throughput(Throughput::Elements(1));
    let mut batching = Batching::new();
    group.bench_function("accumulator/unkeyed", |b| b.iter(|| batching.append(None)));
    let mut batching = Batching::new();
    let mut i = 0u64;
    group.bench_function("accumulator/keyed", |b| {
        b.iter(|| {
            i += 1;
            batching.append(Some(&i.to_be_bytes()));
        });
    });
    let producer = producer(stub_broker());
    let mut tag = 0u64;
    group.bench_function("send_tagged/unkeyed", |b| {
        b.iter_custom(|iters| {
            let start = thread_cpu_time();
            for _ in 0..iters {
                tag += 1;
                send(&producer, None, tag);
            }
            thread_cpu_time() - start
        });
    });
    group.bench_function("send_tagged/keyed", |b| {
        b.iter_custom(|iters| {
            let start = thread_cpu_time();
            for _ in 0..iters {
                tag += 1;
                send(&producer, Some(&tag.to_be_bytes()), tag);
            }
            thread_cpu_time() - start
        });
    });
    for (name, keyed) in [
        ("send_tagged_many/unkeyed", false),
        ("send_tagged_many/keyed", true),
    ] {
        // Criterion's iteration is one record: a call per `SLICE` of them.
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let calls = iters.div_ceil(SLICE);
                let start = thread_cpu_time();
                for _ in 0..calls {
                    send_slice(&producer, keyed, tag);
                    tag += SLICE;
                }
                (thread_cpu_time() - start).mul_f64(iters as f64 / (calls * SLICE) as f64)
            });
        });
    }
    group.finish();
    producer.flush().expect("flush");
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

#[inline(never)]
fn count_accumulator_unkeyed(n: u64) {
    let mut batching = Batching::new();
    for _ in 0..n {
        batching.append(None);
    }
}

#[inline(never)]
fn count_accumulator_keyed(n: u64) {
    let mut batching = Batching::new();
    for i in 0..n {
        batching.append(Some(&i.to_be_bytes()));
    }
}

#[inline(never)]
fn count_send_tagged_unkeyed(producer: &Producer, n: u64) {
    for tag in 0..n {
        send(producer, None, tag);
    }
}

#[inline(never)]
fn count_send_tagged_keyed(producer: &Producer, n: u64) {
    for tag in 0..n {
        send(producer, Some(&tag.to_be_bytes()), tag);
    }
}

#[inline(never)]
fn count_send_tagged_many_unkeyed(producer: &Producer, n: u64) {
    for first in (0..n).step_by(SLICE as usize) {
        send_slice(producer, false, first);
    }
}

#[inline(never)]
fn count_send_tagged_many_keyed(producer: &Producer, n: u64) {
    for first in (0..n).step_by(SLICE as usize) {
        send_slice(producer, true, first);
    }
}

fn main() {
    if let Some(n) = std::env::var("PRODUCER_APPEND_RECORDS")
        .ok()
        .and_then(|n| n.parse::<u64>().ok())
    {
        count_accumulator_unkeyed(n);
        count_accumulator_keyed(n);
        let producer = producer(stub_broker());
        count_send_tagged_unkeyed(&producer, n);
        count_send_tagged_keyed(&producer, n);
        count_send_tagged_many_unkeyed(&producer, n);
        count_send_tagged_many_keyed(&producer, n);
        producer.flush().expect("flush");
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
