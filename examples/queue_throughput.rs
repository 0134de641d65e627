//! Queue throughput: how many records per second a share group's consumers take and
//! accept, each record acknowledged individually, with 100-byte records.
//!
//! Start a broker, then:
//! `cargo run --release --example queue_throughput -- [ADDR] [RECORDS] [CONSUMERS] [PARTITIONS] [MAX_RECORDS]`
//! Defaults: 127.0.0.1:9292, 1,000,000 records, 8 consumers, 2 partitions, 500 records per
//! partition per poll. It creates a fresh topic, fills it (not timed), then starts the
//! consumers, each on its own thread with its own connection, in manual ack mode: every
//! record is accepted with its own acknowledgement entry, sent with the next poll. It stops
//! when every record is accepted and prints acks/s overall and per consumer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventflow::client::producer::{Producer, ProducerConfig, Record};
use eventflow::client::queue::{AckMode, ShareConsumer, ShareConsumerConfig};
use eventflow::client::Client;

const RECORD_BYTES: usize = 100;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let addr = arg(0, "127.0.0.1:9292");
    let records: u64 = arg(1, "1000000").parse()?;
    let consumers: usize = arg(2, "8").parse()?;
    let partitions: u32 = arg(3, "2").parse()?;
    let max_records: u32 = arg(4, "500").parse()?;
    let topic = format!("queue-{}", std::process::id());
    let group = format!("{topic}-workers");
    Client::connect(addr.as_str())?.create_topic(&topic, partitions, &[])?;

    let producer = Producer::new(ProducerConfig {
        bootstrap: addr.clone(),
        ..ProducerConfig::default()
    })?;
    let value = vec![b'x'; RECORD_BYTES];
    for _ in 0..records {
        producer.send(Record {
            topic: &topic,
            value: Some(&value),
            ..Record::default()
        })?;
    }
    producer.flush()?;
    drop(producer);

    let accepted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..consumers)
        .map(|i| {
            let config = ShareConsumerConfig {
                bootstrap: addr.clone(),
                member_id: format!("worker-{i}"),
                ack_mode: AckMode::Manual,
                max_records,
                ..ShareConsumerConfig::new(&group)
            };
            let mut consumer = ShareConsumer::new(config, &[&topic]).expect("connect");
            let accepted = accepted.clone();
            std::thread::spawn(move || {
                let mut mine = 0u64;
                let deadline = Instant::now() + Duration::from_secs(600);
                while accepted.load(Ordering::Relaxed) < records && Instant::now() < deadline {
                    let taken = consumer.poll(Duration::from_millis(100)).expect("poll");
                    for r in &taken {
                        consumer.ack(r);
                    }
                    mine += taken.len() as u64;
                    accepted.fetch_add(taken.len() as u64, Ordering::Relaxed);
                }
                consumer.commit().expect("last acks");
                mine
            })
        })
        .collect();
    let per_consumer: Vec<u64> = workers
        .into_iter()
        .map(|w| w.join().expect("worker"))
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    let total: u64 = per_consumer.iter().sum();
    println!(
        "{total} records accepted by {consumers} consumers in {elapsed:.2} s: {:.0} acks/s",
        total as f64 / elapsed
    );
    println!("per consumer: {per_consumer:?}");
    let d = Client::connect(addr.as_str())?.describe_queue(&group)?;
    for p in &d.partitions {
        println!(
            "partition {}: start {} log end {} acquired {}",
            p.partition, p.start, p.log_end, p.acquired
        );
    }
    Ok(())
}
