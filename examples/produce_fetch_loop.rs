//! A simple produce-then-fetch loop with the test client, for a first throughput figure.
//! (Real measurements come from `bench-harness/`.)
//!
//! Start a broker, then:
//! `cargo run --release --example produce_fetch_loop -- [ADDR] [BATCHES] [WINDOW] [ACKS] [owner|other]`
//! Defaults: 127.0.0.1:9292, 2000 batches of 1,000 records of 100 bytes, 16 requests in
//! flight, acks all (-1; also 1 or 0). It produces every batch to a fresh one-partition
//! topic through the owning shard's direct port (or, with `other`, another shard's, so
//! every request hops through the rings and fetches are read rather than spliced), then
//! fetches the partition from the start
//! to the end (4 MiB per fetch), and prints records/s and MB/s for each phase.

use std::time::{Duration, Instant};

use eventflow::client::{fetch_request, produce_request, Client};
use eventflow::protocol::api::{Acks, Response};
use eventflow::protocol::batch::BatchBuilder;
use eventflow::protocol::ErrorCode;

const RECORDS_PER_BATCH: usize = 1_000;
const RECORD_BYTES: usize = 100;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args.first().map_or("127.0.0.1:9292", String::as_str);
    let batches: usize = args.get(1).map_or(Ok(2000), |s| s.parse())?;
    let window: usize = args.get(2).map_or(Ok(16), |s| s.parse())?;
    let acks = match args.get(3).map_or("-1", String::as_str) {
        "0" => Acks::None,
        "1" => Acks::Leader,
        _ => Acks::All,
    };
    // `owner` (default): the owning shard's direct port; `other`: another shard's direct
    // port, so every request hops through the rings (and fetches are read, not spliced).
    let via_other = args.get(4).is_some_and(|s| s == "other");
    let mut admin = Client::connect(addr)?;
    let topic = format!("loop-{}", std::process::id());
    admin.create_topic(&topic, 1, &[])?;
    // Shard-aware: talk to the partition's owner on its direct port (no hop between
    // shards; fetches are spliced from the file).
    let metadata = admin.metadata(&[&topic])?;
    let owner = metadata.topics[0].owners[0];
    let mut client = match metadata
        .shards
        .iter()
        .find(|s| (s.shard == owner) != via_other && s.port != 0)
    {
        Some(s) => Client::connect((s.host.as_str(), s.port))?,
        None => Client::connect(addr)?,
    };

    // One pre-built batch, sent again and again (the broker assigns offsets).
    let value = vec![b'x'; RECORD_BYTES];
    let mut builder = BatchBuilder::with_capacity(RECORDS_PER_BATCH * (RECORD_BYTES + 16));
    for _ in 0..RECORDS_PER_BATCH {
        builder.push(0, None, Some(&value), &[]);
    }
    let template = builder.finish();

    let started = Instant::now();
    let mut in_flight = 0;
    for _ in 0..batches {
        client.send(produce_request(&topic, 0, template.clone(), acks))?;
        if acks != Acks::None {
            in_flight += 1;
            if in_flight == window {
                expect_produced(client.receive()?)?;
                in_flight -= 1;
            }
        }
    }
    while in_flight > 0 {
        expect_produced(client.receive()?)?;
        in_flight -= 1;
    }
    if acks == Acks::None {
        // Wait until the last fire-and-forget batch is visible.
        let end = (batches * RECORDS_PER_BATCH) as i64;
        while client.list_offset(&topic, 0, -1)? < end {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    report(
        "produce",
        started.elapsed(),
        batches * RECORDS_PER_BATCH,
        batches * template.len(),
    );

    let started = Instant::now();
    let end = (batches * RECORDS_PER_BATCH) as i64;
    let (mut offset, mut bytes) = (0i64, 0usize);
    while offset < end {
        let Response::Fetch(r) =
            client.call(fetch_request(&topic, 0, offset, 4 << 20, Duration::ZERO, 0))?
        else {
            return Err("not a fetch response".into());
        };
        let p = &r.topics[0].partitions[0];
        if p.error != ErrorCode::None {
            return Err(format!("fetch: {}", p.message).into());
        }
        // Walk batch headers only: the loop measures the broker, not record decoding. A
        // partial last batch ends the walk (and is not counted); the next fetch starts
        // with it.
        for (_, header) in eventflow::protocol::batch::batches(&p.records).map_while(Result::ok) {
            offset = header.last_offset() + 1;
            bytes += header.total_len();
        }
    }
    report("fetch", started.elapsed(), end as usize, bytes);
    admin.delete_topic(&topic)?;
    Ok(())
}

fn expect_produced(
    received: eventflow::client::Received,
) -> Result<(), Box<dyn std::error::Error>> {
    match received.1? {
        Response::Produce(r) => {
            let p = &r.topics[0].partitions[0];
            if p.error != ErrorCode::None {
                return Err(format!("produce: {}", p.message).into());
            }
            Ok(())
        }
        other => Err(format!("unexpected response {other:?}").into()),
    }
}

fn report(phase: &str, elapsed: Duration, records: usize, bytes: usize) {
    let secs = elapsed.as_secs_f64();
    println!(
        "{phase:>7}: {records} records in {secs:.3} s = {:.2} M records/s, {:.0} MB/s",
        records as f64 / secs / 1e6,
        bytes as f64 / secs / 1e6
    );
}
