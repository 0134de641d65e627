//! Word count with `eventflow::streams`: lines → words → a count per word, kept in a
//! store backed by a compacted changelog, written to an output topic.
//!
//! Start a broker, then:
//! `cargo run --release --example streams_word_count -- [ADDR] [--lines N] [--partitions P]
//!  [--app ID] [--input TOPIC] [--output TOPIC] [--idle-ms MS] [--session-ms MS]`
//!
//! Defaults: 127.0.0.1:9292, 100000 lines of generated text (8 words each out of 1000)
//! produced to a new topic `lines` of 3 partitions, application `word-count`, output
//! `word-counts`; the application stops after 3 s without input. With `--lines 0` nothing
//! is produced and the input topic must exist (several such processes with one `--app`
//! share the work). When it produced the input itself, it reads the output back, checks
//! every word's last count against the text, and prints the processing rate: input lines
//! per second from the start of the application until its last record was processed.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use eventflow::client::consumer::{Consumer, ConsumerConfig, StartAt};
use eventflow::client::producer::{Producer, ProducerConfig, Record};
use eventflow::client::Client;
use eventflow::protocol::api::offset_spec;
use eventflow::streams::{Streams, StreamsConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let addr = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:9292".into());
    let lines: u64 = flag("--lines", "100000").parse()?;
    let partitions: u32 = flag("--partitions", "3").parse()?;
    let app = flag("--app", "word-count");
    let input = flag("--input", "lines");
    let output = flag("--output", "word-counts");
    let idle = Duration::from_millis(flag("--idle-ms", "3000").parse()?);
    let session = Duration::from_millis(flag("--session-ms", "10000").parse()?);

    let mut admin = Client::connect(addr.as_str())?;
    let mut expected = HashMap::new();
    let mut words = 0;
    if lines > 0 {
        for topic in [&input, &output] {
            admin.create_topic(topic, partitions, &[])?;
        }
        let producer = Producer::new(ProducerConfig {
            bootstrap: addr.clone(),
            ..ProducerConfig::default()
        })?;
        let started = Instant::now();
        for i in 0..lines {
            let line = generated_line(i);
            for word in line.split_whitespace() {
                *expected.entry(word.to_string()).or_insert(0u64) += 1;
                words += 1;
            }
            producer.send(Record {
                topic: &input,
                value: Some(line.as_bytes()),
                ..Record::default()
            })?;
        }
        producer.flush()?;
        println!(
            "produced {lines} lines ({words} words) to {input} in {:.2?}",
            started.elapsed()
        );
    }

    let mut config = StreamsConfig::new(&app, &addr);
    config.stop_when_idle = Some(idle);
    config.session_timeout = session;
    config.heartbeat_interval = (session / 5).max(Duration::from_millis(100));
    let (input_topic, output_topic) = (input.clone(), output.clone());
    let started = Instant::now();
    let streams = Streams::start(config, move |builder| {
        builder
            .stream::<String, String>(&[&input_topic])
            .flat_map(|_, line| {
                line.split_whitespace()
                    .map(|w| (w.to_lowercase(), String::new()))
                    .collect::<Vec<_>>()
            })
            .group_by_key()
            .count("counts")
            .to(&output_topic);
    })?;
    // Input lines plus the words read back from the repartition topic.
    let total = lines + words;
    let mut done_after = None;
    while lines > 0 && done_after.is_none() {
        if streams.stats().records >= total {
            done_after = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = streams.wait()?;
    println!("application {app} stopped after {idle:?} idle: {stats:?}");
    if let Some(elapsed) = done_after {
        println!(
            "processed {lines} lines in {elapsed:.2?}: {:.0} lines/s ({:.0} words/s counted)",
            lines as f64 / elapsed.as_secs_f64(),
            words as f64 / elapsed.as_secs_f64()
        );
    }
    if lines > 0 {
        let counts = read_latest(&addr, &mut admin, &output, partitions)?;
        let wrong = expected
            .iter()
            .filter(|(w, n)| counts.get(*w) != Some(&n.to_string()))
            .count();
        println!(
            "{output}: {} words, {wrong} with a wrong last count (of {} expected)",
            counts.len(),
            expected.len()
        );
        if wrong > 0 {
            return Err("word counts differ from the text".into());
        }
    }
    Ok(())
}

/// Line `i` of the generated text: 8 words of a 1000-word vocabulary.
fn generated_line(i: u64) -> String {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
    (0..8)
        .map(|_| {
            x ^= x >> 29;
            x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            format!("w{}", (x >> 33) % 1000)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last value of each key in `topic`, read from its start to its end.
fn read_latest(
    addr: &str,
    admin: &mut Client,
    topic: &str,
    partitions: u32,
) -> Result<BTreeMap<String, String>, Box<dyn std::error::Error>> {
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
            let text = |b: Option<bytes::Bytes>| {
                String::from_utf8_lossy(&b.unwrap_or_default()).into_owned()
            };
            latest.insert(text(r.key), text(r.value));
        }
    }
    Ok(latest)
}
