//! Per-key counts in 1-minute tumbling windows with `eventflow::streams`, and what the
//! grace period does with a late record.
//!
//! Start a broker, then:
//! `cargo run --example streams_windowed_counts -- [ADDR]`
//!
//! It creates `clicks` and `clicks-per-minute` (3 partitions each, fresh names per run),
//! produces clicks of three users with explicit timestamps over four minutes, then one
//! click stamped in the first minute after its user's stream time has passed that
//! minute's end plus the 10 s grace period. The application counts clicks per user and
//! minute, drops the late click (and counts it), and stops after 3 s without input; the
//! example prints the last count of each user and minute and checks them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventflow::client::consumer::{Consumer, ConsumerConfig, StartAt};
use eventflow::client::producer::{Producer, ProducerConfig, Record};
use eventflow::client::Client;
use eventflow::protocol::api::offset_spec;
use eventflow::streams::{Serde, Streams, StreamsConfig, TimeWindows, Windowed};

const MINUTE: i64 = 60_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9292".into());
    let run = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let (clicks, output) = (format!("clicks-{run}"), format!("clicks-per-minute-{run}"));
    let mut admin = Client::connect(addr.as_str())?;
    for topic in [&clicks, &output] {
        admin.create_topic(topic, 3, &[])?;
    }

    // Minute-aligned base time; user i clicks i + 1 times in each of minutes 0..4.
    let base = 1_700_000_040_000;
    let mut expected = BTreeMap::new();
    let producer = Producer::new(ProducerConfig {
        bootstrap: addr.clone(),
        ..ProducerConfig::default()
    })?;
    let send = |user: &str, at: i64| {
        producer.send(Record {
            topic: &clicks,
            key: Some(user.as_bytes()),
            value: Some(b"click"),
            timestamp: Some(at),
            ..Record::default()
        })
    };
    for minute in 0..4 {
        for (i, user) in ["ada", "bob", "cy"].iter().enumerate() {
            for n in 0..=i as i64 {
                send(user, base + minute * MINUTE + 1_000 * (n + 1))?;
                *expected
                    .entry((user.to_string(), base + minute * MINUTE))
                    .or_insert(0u64) += 1;
            }
        }
    }
    // ada's stream time is now in minute 3: minute 0 closed at its end + 10 s.
    send("ada", base + 30_000)?;
    producer.flush()?;
    println!(
        "produced {} clicks and 1 late click to {clicks}",
        expected.values().sum::<u64>()
    );

    let mut config = StreamsConfig::new(&format!("windowed-counts-{run}"), &addr);
    config.stop_when_idle = Some(Duration::from_secs(3));
    let (input, sink) = (clicks.clone(), output.clone());
    let stats = Streams::start(config, move |builder| {
        builder
            .stream::<String, String>(&[&input])
            .group_by_key()
            .windowed_by(
                TimeWindows::tumbling(Duration::from_secs(60)).grace(Duration::from_secs(10)),
            )
            .count("per-minute")
            .to(&sink);
    })?
    .wait()?;
    println!("application stopped: {stats:?}");

    let counts = read_latest(&addr, &mut admin, &output, 3)?;
    for (key, count) in &counts {
        println!(
            "{}@minute {}: {count}",
            key.key,
            (key.start - base) / MINUTE
        );
    }
    let got: BTreeMap<(String, i64), u64> = counts
        .into_iter()
        .map(|(k, n)| ((k.key, k.start), n))
        .collect();
    if got != expected || stats.late_records != 1 {
        return Err(format!(
            "expected {expected:?} and 1 late record, got {got:?} and {}",
            stats.late_records
        )
        .into());
    }
    println!("every window count is right; the late click was dropped");
    Ok(())
}

/// The last count of each windowed key in `topic`, read from its start to its end.
fn read_latest(
    addr: &str,
    admin: &mut Client,
    topic: &str,
    partitions: u32,
) -> Result<BTreeMap<Windowed<String>, u64>, Box<dyn std::error::Error>> {
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: addr.to_string(),
        ..ConsumerConfig::default()
    })?;
    let all: Vec<u32> = (0..partitions).collect();
    consumer.assign(topic, &all, StartAt::Earliest)?;
    let mut ends = Vec::new();
    for p in 0..partitions {
        ends.push(admin.list_offset(topic, p, offset_spec::LATEST)?);
    }
    let mut latest = BTreeMap::new();
    while (0..partitions).any(|p| consumer.position(topic, p).unwrap_or(0) < ends[p as usize]) {
        for r in consumer.poll(Duration::from_millis(500))? {
            let key = Windowed::<String>::from_bytes(&r.key.unwrap_or_default())?;
            latest.insert(key, u64::from_bytes(&r.value.unwrap_or_default())?);
        }
    }
    Ok(latest)
}
