//! The consumer against a real broker: start positions, exactly-once delivery in offset
//! order, the long-poll at the end of the log, seeks, cut-short batches and errors.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{batch, now_ms, Broker};
use eventflow::client::consumer::{Consumer, ConsumerConfig, ConsumerRecord, StartAt};
use eventflow::client::ClientError;
use eventflow::protocol::api::Acks;
use eventflow::protocol::ErrorCode;

fn consumer(broker: &Broker, tweak: impl FnOnce(&mut ConsumerConfig)) -> Consumer {
    let mut config = ConsumerConfig {
        bootstrap: broker.addr.to_string(),
        max_wait: Duration::from_millis(300),
        ..ConsumerConfig::default()
    };
    tweak(&mut config);
    Consumer::new(config).expect("consumer")
}

/// Polls until `n` records have arrived (failing after 30 s), then briefly for extras.
fn poll_exactly(consumer: &mut Consumer, n: usize) -> Vec<ConsumerRecord> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "got {} of {n} records",
            out.len()
        );
        out.extend(consumer.poll(Duration::from_secs(1)).expect("poll"));
    }
    out.extend(consumer.poll(Duration::from_millis(200)).expect("poll"));
    assert_eq!(out.len(), n, "no more records than produced");
    out
}

fn text(bytes: &Option<bytes::Bytes>) -> String {
    let bytes = bytes.as_deref().expect("not null");
    String::from_utf8_lossy(bytes)
        .trim_end_matches('.')
        .to_string()
}

fn offsets(records: &[ConsumerRecord]) -> Vec<i64> {
    records.iter().map(|r| r.offset).collect()
}

fn produce(broker: &Broker, topic: &str, partition: u32, tag: &str, n: usize, ts: i64) {
    broker
        .client()
        .produce(topic, partition, batch(tag, n, 20, ts), Acks::All)
        .expect("produce");
}

#[test]
fn every_record_once_in_offset_order_from_every_shard() {
    let broker = Broker::start(&["--cores", "2"]);
    let mut admin = broker.client();
    admin.create_topic("four", 4, &[]).unwrap();
    let owners = admin.metadata(&["four"]).unwrap().topics[0].owners.clone();
    assert!(
        owners.contains(&0) && owners.contains(&1),
        "partitions on both shards: {owners:?}"
    );
    for round in 0..5 {
        for p in 0..4u32 {
            admin
                .produce(
                    "four",
                    p,
                    batch(&format!("p{p}r{round}"), 20, 50, now_ms()),
                    Acks::All,
                )
                .unwrap();
        }
    }
    let mut c = consumer(&broker, |_| {});
    c.assign("four", &[0, 1, 2, 3], StartAt::Earliest).unwrap();
    let records = poll_exactly(&mut c, 400);
    let mut by_partition: BTreeMap<u32, Vec<&ConsumerRecord>> = BTreeMap::new();
    for r in &records {
        assert_eq!(&*r.topic, "four");
        by_partition.entry(r.partition).or_default().push(r);
    }
    assert_eq!(by_partition.len(), 4);
    for (p, records) in by_partition {
        let got: Vec<i64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(got, (0..100).collect::<Vec<_>>(), "partition {p}");
        for r in records {
            let (round, i) = (r.offset / 20, r.offset % 20);
            assert_eq!(text(&r.value), format!("p{p}r{round}-{i}"));
            assert_eq!(text(&r.key), format!("k{i}"));
            assert_eq!(r.value.as_ref().unwrap().len(), 50);
            assert!(r.headers.is_empty());
        }
        assert_eq!(c.position("four", p), Some(100));
    }
}

#[test]
fn start_positions() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("starts", 2, &[]).unwrap();
    let t0 = now_ms();
    for (i, tag) in ["a", "b", "c"].into_iter().enumerate() {
        produce(&broker, "starts", 0, tag, 10, t0 + 1000 * i as i64);
    }

    // Latest: nothing old, then what is produced after the assignment.
    let mut c = consumer(&broker, |_| {});
    c.assign("starts", &[0], StartAt::Latest).unwrap();
    assert_eq!(c.position("starts", 0), Some(30));
    assert!(c.poll(Duration::from_millis(400)).unwrap().is_empty());
    produce(&broker, "starts", 0, "new", 5, t0 + 3000);
    let records = poll_exactly(&mut c, 5);
    assert_eq!(offsets(&records), (30..35).collect::<Vec<_>>());
    assert!(records.iter().all(|r| text(&r.value).starts_with("new-")));

    // Offset in the middle of a batch: the batch's earlier records are skipped.
    let mut c = consumer(&broker, |_| {});
    c.assign("starts", &[0], StartAt::Offset(15)).unwrap();
    let records = poll_exactly(&mut c, 20);
    assert_eq!(offsets(&records), (15..35).collect::<Vec<_>>());
    assert_eq!(text(&records[0].value), "b-5");

    // Timestamp: the first batch whose max timestamp is at or after it.
    let mut c = consumer(&broker, |_| {});
    c.assign("starts", &[0], StartAt::Timestamp(t0 + 1500))
        .unwrap();
    assert_eq!(c.position("starts", 0), Some(20));
    let records = poll_exactly(&mut c, 15);
    assert_eq!(text(&records[0].value), "c-0");

    // A timestamp after every batch means the end of the log; an empty partition starts at 0.
    let mut c = consumer(&broker, |_| {});
    c.assign("starts", &[0], StartAt::Timestamp(t0 + 3_600_000))
        .unwrap();
    c.assign("starts", &[1], StartAt::Earliest).unwrap();
    assert_eq!(c.position("starts", 0), Some(35));
    assert_eq!(c.position("starts", 1), Some(0));
    assert_eq!(c.position("starts", 2), None);
}

#[test]
fn poll_at_the_end_waits_and_wakes_for_new_records() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("idle", 2, &[]).unwrap();
    let mut c = consumer(&broker, |config| config.max_wait = Duration::from_secs(2));
    c.assign("idle", &[0, 1], StartAt::Earliest).unwrap();

    for timeout in [Duration::from_millis(700), Duration::from_millis(2500)] {
        let started = Instant::now();
        assert!(c.poll(timeout).unwrap().is_empty());
        let elapsed = started.elapsed();
        assert!(
            elapsed >= timeout * 9 / 10,
            "waited {elapsed:?} of {timeout:?}"
        );
    }
    assert!(c.poll(Duration::ZERO).unwrap().is_empty());

    let addr = broker.addr;
    let producer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut client = eventflow::client::Client::connect(addr).unwrap();
        client
            .produce("idle", 1, batch("late", 3, 10, now_ms()), Acks::All)
            .unwrap();
    });
    let started = Instant::now();
    let records = c.poll(Duration::from_secs(20)).unwrap();
    producer.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken by the produce, not the timeout"
    );
    let mut records = records;
    if records.len() < 3 {
        records.extend(poll_exactly(&mut c, 3 - records.len()));
    }
    assert_eq!(offsets(&records), vec![0, 1, 2]);
    assert!(records.iter().all(|r| r.partition == 1));
}

#[test]
fn seek_back_redelivers_from_there() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("again", 1, &[]).unwrap();
    produce(&broker, "again", 0, "x", 10, now_ms());
    produce(&broker, "again", 0, "y", 10, now_ms());
    let mut c = consumer(&broker, |_| {});
    c.assign("again", &[0], StartAt::Earliest).unwrap();
    assert_eq!(poll_exactly(&mut c, 20).len(), 20);
    assert_eq!(c.position("again", 0), Some(20));

    c.seek("again", 0, 7).unwrap();
    assert_eq!(c.position("again", 0), Some(7));
    let records = poll_exactly(&mut c, 13);
    assert_eq!(offsets(&records), (7..20).collect::<Vec<_>>());
    assert_eq!(text(&records[0].value), "x-7");

    // The next fetch (from 20) is on the wire: once it has brought back new records, seek.
    // What it fetched is stale and must not be delivered or move the position.
    produce(&broker, "again", 0, "z", 10, now_ms());
    std::thread::sleep(Duration::from_millis(300));
    c.seek("again", 0, 18).unwrap();
    let records = poll_exactly(&mut c, 12);
    assert_eq!(offsets(&records), (18..30).collect::<Vec<_>>());
    assert_eq!(text(&records[2].value), "z-0");

    assert_eq!(
        c.seek("again", 1, 0).unwrap_err().code(),
        Some(ErrorCode::UnknownTopicOrPartition)
    );
}

#[test]
fn cut_short_batches_still_deliver_every_record_once() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("cut", 2, &[]).unwrap();
    let mut admin = broker.client();
    for round in 0..30 {
        for p in 0..2u32 {
            // About 1.2 KB per batch, so a 3000-byte fetch ends inside the third batch.
            admin
                .produce(
                    "cut",
                    p,
                    batch(&format!("r{round}"), 10, 110, now_ms()),
                    Acks::All,
                )
                .unwrap();
        }
    }
    // The owner really does cut the last batch of a 3000-byte fetch short.
    let owner = admin.metadata(&["cut"]).unwrap().topics[0].owners[0];
    let fetched = broker
        .direct_client(owner as usize)
        .fetch("cut", 0, 0, 3000, Duration::ZERO, 0)
        .unwrap()
        .records;
    let whole: usize = eventflow::client::split_batches(&fetched)
        .iter()
        .map(bytes::Bytes::len)
        .sum();
    assert!(whole < fetched.len(), "{whole} of {} bytes", fetched.len());

    let mut c = consumer(&broker, |config| config.max_bytes = 3000);
    c.assign("cut", &[0, 1], StartAt::Earliest).unwrap();
    // A poll takes at most one response per connection (the next fetch goes out before a
    // response is decoded, so the next response is often there already): here at most two
    // connections' 3,000 bytes, which hold no more than three batches of ten records each.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut records = Vec::new();
    while records.len() < 600 && Instant::now() < deadline {
        let polled = c.poll(Duration::from_secs(1)).expect("poll");
        assert!(polled.len() <= 60, "{} records from one poll", polled.len());
        records.extend(polled);
    }
    records.extend(c.poll(Duration::from_millis(200)).expect("poll"));
    assert_eq!(records.len(), 600);
    for p in 0..2u32 {
        let mine: Vec<&ConsumerRecord> = records.iter().filter(|r| r.partition == p).collect();
        let got: Vec<i64> = mine.iter().map(|r| r.offset).collect();
        assert_eq!(got, (0..300).collect::<Vec<_>>(), "partition {p}");
        for r in mine {
            assert_eq!(
                text(&r.value),
                format!("r{}-{}", r.offset / 10, r.offset % 10)
            );
        }
    }
}

/// The consumer sends a connection's next fetch before it decodes the last response, so
/// the next response is often there while a poll is still decoding: it is left for the
/// next poll, and one poll returns at most one response's worth per connection.
#[test]
fn a_poll_returns_at_most_one_response_per_connection() {
    let broker = Broker::start(&["--cores", "1"]);
    broker.client().create_topic("polls", 1, &[]).unwrap();
    let mut admin = broker.client();
    // 200 batches of 250 records of 100 bytes: about 5.5 MB.
    for round in 0..200 {
        admin
            .produce(
                "polls",
                0,
                batch(&format!("p{round}"), 250, 100, now_ms()),
                Acks::Leader,
            )
            .unwrap();
    }
    let max_bytes = 256 << 10;
    let mut c = consumer(&broker, |config| config.max_bytes = max_bytes);
    c.assign("polls", &[0], StartAt::Earliest).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut next, mut polls) = (0i64, 0);
    while next < 50_000 {
        assert!(Instant::now() < deadline, "at {next} of 50,000 records");
        let polled = c.poll(Duration::from_secs(1)).expect("poll");
        // A response holds at most max_bytes (its first batch whole): the record values
        // are less than that plus one batch of 25 KB.
        let values: usize = polled
            .iter()
            .map(|r| r.value.as_ref().map_or(0, bytes::Bytes::len))
            .sum();
        assert!(
            values <= max_bytes as usize + 25_000,
            "{values} bytes of values from one poll"
        );
        for r in &polled {
            assert_eq!(r.offset, next);
            next += 1;
        }
        polls += 1;
    }
    assert!(polls >= 20, "{polls} polls for 5.5 MB of 256 KiB responses");
}

#[test]
fn crc_check_names_the_corrupt_batch() {
    // Buffered writes: the test damages the file under the running broker, and with
    // `--log-writes direct` the newest batches would be served from the broker's tail cache,
    // which the damage never reaches.
    let broker = Broker::start(&["--cores", "2", "--log-writes", "buffered"]);
    broker.client().create_topic("crc", 1, &[]).unwrap();
    produce(&broker, "crc", 0, "ok", 5, now_ms());
    produce(&broker, "crc", 0, "bad", 5, now_ms());
    // Flip the last byte of the batches: inside the second batch's last record. (Under
    // `--fsync always` zeros written ahead may follow the batches in the file.)
    let dir = broker.data_dir.join("data").join("crc").join("0");
    let log = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("a segment");
    let mut bytes = std::fs::read(&log).unwrap();
    let mut end = 0;
    while end + 12 <= bytes.len() {
        let len = i32::from_be_bytes(bytes[end + 8..end + 12].try_into().unwrap());
        if len <= 0 {
            break;
        }
        end += 12 + len as usize;
    }
    bytes[end - 1] ^= 0x55;
    std::fs::write(&log, &bytes).unwrap();

    let mut c = consumer(&broker, |config| config.check_crcs = true);
    c.assign("crc", &[0], StartAt::Earliest).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut good = Vec::new();
    let err = loop {
        assert!(Instant::now() < deadline, "no crc error");
        match c.poll(Duration::from_secs(1)) {
            Ok(records) => good.extend(records),
            Err(err) => break err,
        }
    };
    assert_eq!(offsets(&good), vec![0, 1, 2, 3, 4]);
    let message = err.to_string();
    assert!(
        matches!(&err, ClientError::CorruptBatch { topic, partition: 0, offset: 5, .. } if topic == "crc"),
        "{err:?}"
    );
    assert!(
        message.contains("crc/0") && message.contains("offset 5"),
        "{message}"
    );
    assert_eq!(c.position("crc", 0), Some(5), "not skipped");
    // Not skipped silently: the next poll fetches it again and fails again.
    let again = loop {
        match c.poll(Duration::from_secs(1)) {
            Ok(records) => assert!(records.is_empty()),
            Err(err) => break err,
        }
    };
    assert!(again.to_string().contains("offset 5"));
}

#[test]
fn errors() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("known", 2, &[]).unwrap();
    let mut c = consumer(&broker, |_| {});
    let code = |r: Result<(), ClientError>| r.unwrap_err().code();
    assert_eq!(
        code(c.assign("nope", &[0], StartAt::Earliest)),
        Some(ErrorCode::UnknownTopicOrPartition)
    );
    assert_eq!(
        code(c.assign("known", &[0, 2], StartAt::Earliest)),
        Some(ErrorCode::UnknownTopicOrPartition)
    );
    assert_eq!(
        c.position("known", 0),
        None,
        "nothing assigned by a failed call"
    );

    // Past the end: the error comes back, the position stays.
    produce(&broker, "known", 1, "v", 3, now_ms());
    c.assign("known", &[1], StartAt::Offset(100)).unwrap();
    let err = c.poll(Duration::from_secs(5)).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OffsetOutOfRange), "{err}");
    assert_eq!(c.position("known", 1), Some(100));
    c.seek("known", 1, 1).unwrap();
    assert_eq!(offsets(&poll_exactly(&mut c, 2)), vec![1, 2]);
}

#[test]
fn broker_down_is_an_io_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let err = Consumer::new(ConsumerConfig {
        bootstrap: addr.to_string(),
        ..ConsumerConfig::default()
    })
    .unwrap_err();
    assert!(matches!(err, ClientError::Io { .. }), "{err:?}");

    // A broker that goes away under a consumer: it reconnects with backoff, and poll
    // reports the broker gone once it stayed away for the reconnect timeout.
    let mut broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("gone", 1, &[]).unwrap();
    let mut c = consumer(&broker, |c| {
        c.reconnect_timeout = Some(Duration::from_secs(2));
    });
    c.assign("gone", &[0], StartAt::Earliest).unwrap();
    assert!(c.poll(Duration::from_millis(100)).unwrap().is_empty());
    broker.kill9();
    let deadline = Instant::now() + Duration::from_secs(30);
    let err = loop {
        assert!(Instant::now() < deadline, "no error after the broker died");
        if let Err(err) = c.poll(Duration::from_secs(1)) {
            break err;
        }
    };
    assert!(matches!(err, ClientError::Io { .. }), "{err:?}");
}
