//! Produce and consume throughput of the client library with 100-byte records.
//! (Open-loop latency and Kafka side by side come from `bench-harness/`.)
//!
//! Start a broker, then:
//! `cargo run --release --example client_throughput -- [ADDR] [RECORDS] [PARTITIONS] [BATCH_BYTES] [LINGER_MS] [ACKS]`
//! Defaults: 127.0.0.1:9292, 5,000,000 records, 2 partitions, 256 KiB batches, 5 ms
//! linger, acks all. It creates a fresh topic, sends every record through one `Producer`
//! (unkeyed: sticky partitioning), flushes, then reads everything back from the earliest
//! offset with one `Consumer`, and prints records/s and MB/s of record values for each.

use std::time::{Duration, Instant};

use eventflow::client::consumer::{Consumer, ConsumerConfig, StartAt};
use eventflow::client::producer::{Producer, ProducerConfig, Record};
use eventflow::client::Client;
use eventflow::protocol::api::Acks;

const RECORD_BYTES: usize = 100;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let addr = arg(0, "127.0.0.1:9292");
    let records: usize = arg(1, "5000000").parse()?;
    let partitions: u32 = arg(2, "2").parse()?;
    let batch_bytes: usize = arg(3, "262144").parse()?;
    let linger = Duration::from_millis(arg(4, "5").parse()?);
    let acks = match arg(5, "all").as_str() {
        "0" => Acks::None,
        "1" => Acks::Leader,
        _ => Acks::All,
    };
    let topic = format!("throughput-{}", std::process::id());
    Client::connect(addr.as_str())?.create_topic(&topic, partitions, &[])?;

    let producer = Producer::new(ProducerConfig {
        bootstrap: addr.clone(),
        acks,
        batch_bytes,
        linger,
        buffer_bytes: 64 << 20,
        max_in_flight: 16,
        ..ProducerConfig::default()
    })?;
    let value = [b'v'; RECORD_BYTES];
    let started = Instant::now();
    let mut last = None;
    for _ in 0..records {
        // Results arrive through the futures; keeping the last is enough to see errors,
        // since flush waits for all.
        last = Some(producer.send(Record {
            topic: &topic,
            value: Some(&value),
            ..Record::default()
        })?);
    }
    producer.flush()?;
    let produced = started.elapsed();
    if let Some(f) = last {
        f.wait()?;
    }
    report("produce", produced, records);

    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: addr.clone(),
        ..ConsumerConfig::default()
    })?;
    let all: Vec<u32> = (0..partitions).collect();
    consumer.assign(&topic, &all, StartAt::Earliest)?;
    let started = Instant::now();
    let mut seen = 0;
    while seen < records {
        let batch = consumer.poll(Duration::from_secs(5))?;
        if batch.is_empty() {
            return Err(format!("no records for 5 s after {seen} of {records}").into());
        }
        seen += batch.len();
    }
    report("consume", started.elapsed(), seen);
    Client::connect(addr.as_str())?.delete_topic(&topic)?;
    Ok(())
}

fn report(phase: &str, elapsed: Duration, records: usize) {
    let secs = elapsed.as_secs_f64();
    println!(
        "{phase:>7}: {records} records of {RECORD_BYTES} B in {secs:.3} s = {:.2} M records/s, {:.0} MB/s",
        records as f64 / secs / 1e6,
        (records * RECORD_BYTES) as f64 / secs / 1e6
    );
}
