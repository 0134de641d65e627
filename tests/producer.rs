//! The producer library against a real broker: delivery results, partitioning, batching,
//! the buffer bound and errors.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{read_all, Broker};
use eventflow::client::partitioner::partition_for_key;
use eventflow::client::producer::{Producer, ProducerConfig, Record};
use eventflow::client::ClientError;
use eventflow::protocol::api::Acks;
use eventflow::protocol::batch::{records, BatchHeader};
use eventflow::protocol::ErrorCode;

fn config(broker: &Broker) -> ProducerConfig {
    ProducerConfig {
        bootstrap: broker.addr.to_string(),
        ..ProducerConfig::default()
    }
}

/// Every stored record of a partition as (offset, key, value).
fn stored(broker: &Broker, topic: &str, partition: u32) -> Vec<(i64, Vec<u8>, Vec<u8>)> {
    let mut c = broker.client();
    let mut out = Vec::new();
    for b in read_all(&mut c, topic, partition, 0) {
        for r in records(&b).unwrap() {
            let r = r.unwrap();
            out.push((
                r.offset,
                r.key.unwrap_or_default().to_vec(),
                r.value.unwrap_or_default().to_vec(),
            ));
        }
    }
    out
}

#[test]
fn deliveries_report_the_offsets_records_were_stored_at() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("orders", 4, &[]).unwrap();
    let producer = Producer::new(config(&broker)).unwrap();
    let mut futures = Vec::new();
    for i in 0..2000 {
        let key = format!("customer-{}", i % 37);
        let value = format!("order-{i}");
        let f = producer
            .send(Record {
                topic: "orders",
                key: Some(key.as_bytes()),
                value: Some(value.as_bytes()),
                ..Record::default()
            })
            .unwrap();
        futures.push((key, value, f));
    }
    producer.flush().unwrap();
    type KeyValue = (Vec<u8>, Vec<u8>);
    let mut by_partition: HashMap<u32, HashMap<i64, KeyValue>> = HashMap::new();
    for p in 0..4 {
        for (offset, k, v) in stored(&broker, "orders", p) {
            by_partition.entry(p).or_default().insert(offset, (k, v));
        }
    }
    let mut used = std::collections::HashSet::new();
    for (key, value, f) in futures {
        let d = f.wait().unwrap();
        // Keyed records land where Kafka's partitioner puts them.
        assert_eq!(d.partition, partition_for_key(key.as_bytes(), 4));
        let (k, v) = &by_partition[&d.partition][&d.offset];
        assert_eq!(
            (k.as_slice(), v.as_slice()),
            (key.as_bytes(), value.as_bytes())
        );
        assert!(
            used.insert((d.partition, d.offset)),
            "two records at one offset"
        );
    }
    assert_eq!(used.len(), 2000);
    // Partitions on both shards were written.
    assert!(by_partition.len() == 4 && by_partition.values().all(|m| !m.is_empty()));
}

#[test]
fn delivery_futures_work_in_async_code() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("async", 2, &[]).unwrap();
    let producer = Producer::new(config(&broker)).unwrap();
    let f = producer
        .send(Record {
            topic: "async",
            partition: Some(1),
            value: Some(b"v"),
            ..Record::default()
        })
        .unwrap();
    // Any executor: here compio's.
    let d = compio::runtime::Runtime::new()
        .unwrap()
        .block_on(f)
        .unwrap();
    assert_eq!((d.partition, d.offset), (1, 0));
}

#[test]
fn batches_respect_batch_bytes_and_linger() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("batched", 1, &[]).unwrap();
    let producer = Producer::new(ProducerConfig {
        batch_bytes: 2000,
        linger: Duration::from_secs(60),
        ..config(&broker)
    })
    .unwrap();
    let value = [b'x'; 100];
    let futures: Vec<_> = (0..100)
        .map(|_| {
            producer
                .send(Record {
                    topic: "batched",
                    value: Some(&value),
                    ..Record::default()
                })
                .unwrap()
        })
        .collect();
    // Full batches go out without waiting for the (long) linger.
    let first = futures.into_iter().next().unwrap().wait().unwrap();
    assert_eq!(first.offset, 0);
    producer.flush().unwrap();
    let mut c = broker.client();
    let batches = read_all(&mut c, "batched", 0, 0);
    assert!(batches.len() >= 5, "{} batches", batches.len());
    for b in &batches {
        assert!(b.len() <= 2000, "batch of {} bytes", b.len());
    }
    let total: i64 = batches
        .iter()
        .map(|b| i64::from(BatchHeader::parse(b).unwrap().records_count))
        .sum();
    assert_eq!(total, 100);

    // A lone record waits for linger, not longer.
    let lingering = Producer::new(ProducerConfig {
        linger: Duration::from_millis(300),
        ..config(&broker)
    })
    .unwrap();
    let started = Instant::now();
    lingering
        .send(Record {
            topic: "batched",
            value: Some(b"late"),
            ..Record::default()
        })
        .unwrap()
        .wait()
        .unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(20), "{waited:?}");
}

#[test]
fn the_buffer_bound_fails_or_blocks_sends() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("bounded", 1, &[]).unwrap();
    let value = [b'y'; 500];
    let record = Record {
        topic: "bounded",
        value: Some(&value),
        ..Record::default()
    };
    // Failing mode: a long linger keeps the batch open, so the buffer fills.
    let failing = Producer::new(ProducerConfig {
        buffer_bytes: 4096,
        batch_bytes: 1 << 20,
        linger: Duration::from_secs(60),
        block_when_full: false,
        ..config(&broker)
    })
    .unwrap();
    let mut accepted = Vec::new();
    let err = loop {
        match failing.send(record) {
            Ok(f) => accepted.push(f),
            Err(e) => break e,
        }
        assert!(accepted.len() < 100, "the bound never applied");
    };
    assert!(err.to_string().contains("buffer full"), "{err}");
    failing.flush().unwrap();
    for f in accepted {
        f.wait().unwrap();
    }
    // Blocking mode: sends wait for acknowledgements to free room, and all complete.
    let blocking = Producer::new(ProducerConfig {
        buffer_bytes: 4096,
        batch_bytes: 1024,
        linger: Duration::from_millis(1),
        ..config(&broker)
    })
    .unwrap();
    let futures: Vec<_> = (0..200).map(|_| blocking.send(record).unwrap()).collect();
    for f in futures {
        f.wait().unwrap();
    }
}

#[test]
fn errors_are_typed() {
    let broker = Broker::start(&["--cores", "2", "--max-batch-bytes", "4096"]);
    broker.client().create_topic("small", 2, &[]).unwrap();
    let producer = Producer::new(config(&broker)).unwrap();
    // Unknown topic and partition: refused at send.
    let err = producer
        .send(Record {
            topic: "nope",
            value: Some(b"v"),
            ..Record::default()
        })
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopicOrPartition));
    let err = producer
        .send(Record {
            topic: "small",
            partition: Some(9),
            value: Some(b"v"),
            ..Record::default()
        })
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopicOrPartition));
    // A record over the broker's batch limit: the delivery fails with BatchTooLarge.
    let big = vec![b'z'; 10_000];
    let err = producer
        .send(Record {
            topic: "small",
            value: Some(&big),
            ..Record::default()
        })
        .unwrap()
        .wait()
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BatchTooLarge), "{err}");
    // Broker down.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = Producer::new(ProducerConfig {
        bootstrap: format!("127.0.0.1:{port}"),
        ..ProducerConfig::default()
    })
    .err()
    .unwrap();
    assert!(matches!(err, ClientError::Io { .. }), "{err}");
}

#[test]
fn acks_zero_and_one_deliver_too() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("quick", 1, &[]).unwrap();
    for acks in [Acks::None, Acks::Leader] {
        let producer = Producer::new(ProducerConfig {
            acks,
            ..config(&broker)
        })
        .unwrap();
        let fs: Vec<_> = (0..50)
            .map(|_| {
                producer
                    .send(Record {
                        topic: "quick",
                        value: Some(b"q"),
                        ..Record::default()
                    })
                    .unwrap()
            })
            .collect();
        producer.flush().unwrap();
        for f in fs {
            let d = f.wait().unwrap();
            assert_eq!(d.offset >= 0, acks != Acks::None);
        }
    }
    assert!(common::eventually(Duration::from_secs(10), || {
        stored(&broker, "quick", 0).len() == 100
    }));
}

/// Where each tag's record was stored, as the delivery callback reported it.
type Reported = std::sync::Arc<std::sync::Mutex<HashMap<u64, (u32, i64)>>>;

/// A producer whose callback records each tag's partition and offset, and fails the test
/// if a record fails or a tag is reported twice.
fn recording_producer(broker: &Broker) -> (Producer, Reported) {
    let seen = Reported::default();
    let sink = seen.clone();
    let producer = Producer::with_callback(
        config(broker),
        std::sync::Arc::new(move |tag, outcome| {
            let d = outcome.as_ref().expect("delivered");
            let previous = sink.lock().unwrap().insert(tag, (d.partition, d.offset));
            assert!(previous.is_none(), "tag {tag} reported twice");
        }),
    )
    .unwrap();
    (producer, seen)
}

#[test]
fn tagged_sends_report_to_the_callback_once_each() {
    let broker = Broker::start(&[]);
    broker.client().create_topic("tagged", 2, &[]).unwrap();
    let (producer, seen) = recording_producer(&broker);
    for i in 0..1000u64 {
        let value = i.to_be_bytes();
        let record = Record {
            topic: "tagged",
            partition: Some((i % 2) as u32),
            value: Some(&value),
            ..Record::default()
        };
        producer.send_tagged(record, i).unwrap();
    }
    producer.flush().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1000);
    // Each tag's reported place holds that record's value.
    for partition in 0..2 {
        for (offset, _, value) in stored(&broker, "tagged", partition) {
            let tag = u64::from_be_bytes(value.try_into().unwrap());
            assert_eq!(seen[&tag], (partition, offset));
        }
    }
    // A producer without a callback refuses tagged sends.
    let plain = Producer::new(config(&broker)).unwrap();
    let record = Record {
        topic: "tagged",
        value: Some(b"x"),
        ..Record::default()
    };
    assert!(matches!(
        plain.send_tagged(record, 1),
        Err(ClientError::Unexpected(_))
    ));
}

/// A batch callback hears each tagged record once, a run at a time, with the offset of the
/// run's first record: a plain `send` among them ends a run, and its future gets its own
/// offset.
#[test]
fn tagged_sends_report_to_a_batch_callback_a_run_at_a_time() {
    let broker = Broker::start(&[]);
    broker.client().create_topic("runs", 2, &[]).unwrap();
    let seen = Reported::default();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (sink, counter) = (seen.clone(), calls.clone());
    let producer = Producer::with_batch_callback(
        ProducerConfig {
            linger: Duration::from_millis(20),
            ..config(&broker)
        },
        std::sync::Arc::new(move |tags: &[u64], outcome| {
            let first = outcome.as_ref().expect("delivered");
            assert!(!tags.is_empty(), "an empty run was reported");
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut seen = sink.lock().unwrap();
            for (i, &tag) in tags.iter().enumerate() {
                let place = (first.partition, first.offset + i as i64);
                assert!(
                    seen.insert(tag, place).is_none(),
                    "tag {tag} reported twice"
                );
            }
        }),
    )
    .unwrap();
    let mut futures = Vec::new();
    for i in 0..1000u64 {
        let value = i.to_be_bytes();
        let record = Record {
            topic: "runs",
            partition: Some((i % 2) as u32),
            value: Some(&value),
            ..Record::default()
        };
        if i % 100 == 51 {
            futures.push((i, producer.send(record).unwrap()));
        } else {
            producer.send_tagged(record, i).unwrap();
        }
    }
    producer.flush().unwrap();
    let futures: HashMap<u64, (u32, i64)> = futures
        .into_iter()
        .map(|(i, f)| {
            let d = f.wait().expect("delivered");
            (i, (d.partition, d.offset))
        })
        .collect();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len() + futures.len(), 1000);
    // Each record's reported place, from a run's first offset or its own future, holds
    // that record's value.
    for partition in 0..2 {
        for (offset, _, value) in stored(&broker, "runs", partition) {
            let i = u64::from_be_bytes(value.try_into().unwrap());
            let reported = seen.get(&i).or_else(|| futures.get(&i));
            assert_eq!(reported, Some(&(partition, offset)), "record {i}");
        }
    }
    // Runs, not records: far fewer calls than records (a future that did not end its run
    // would have shifted the offsets checked above).
    let calls = calls.load(std::sync::atomic::Ordering::Relaxed);
    assert!((2..100).contains(&calls), "{calls} calls");
}

#[test]
fn send_tagged_many_queues_every_record_in_order_and_stops_at_a_bad_one() {
    use eventflow::client::producer::SEND_MANY_CHUNK;
    let broker = Broker::start(&[]);
    broker.client().create_topic("many", 3, &[]).unwrap();
    let (producer, seen) = recording_producer(&broker);
    // One call of many chunks, mixing keyed, unkeyed and fixed-partition records.
    let total = 10 * SEND_MANY_CHUNK as u64 + 7;
    let values: Vec<[u8; 8]> = (0..total).map(u64::to_be_bytes).collect();
    let records = values.iter().enumerate().map(|(i, value)| {
        let record = Record {
            topic: "many",
            key: (i % 3 == 1).then_some(&value[..]),
            partition: (i % 3 == 2).then_some(2),
            value: Some(&value[..]),
            ..Record::default()
        };
        (record, i as u64)
    });
    producer.send_tagged_many(records).unwrap();
    producer.flush().unwrap();
    let seen_now = seen.lock().unwrap().clone();
    assert_eq!(seen_now.len() as u64, total);
    let mut found = 0;
    for partition in 0..3 {
        let mut last_tag = None;
        for (offset, key, value) in stored(&broker, "many", partition) {
            let tag = u64::from_be_bytes(value.clone().try_into().unwrap());
            assert_eq!(seen_now[&tag], (partition, offset), "tag {tag}");
            if tag % 3 == 1 {
                assert_eq!(key, value, "a keyed record keeps its key");
                assert_eq!(partition_for_key(&key, 3), partition);
            }
            if tag % 3 == 2 {
                assert_eq!(partition, 2, "a fixed partition is kept");
            }
            // One producer, one connection: a partition's records are in the order sent.
            assert!(last_tag < Some(tag), "tag {tag} after {last_tag:?}");
            last_tag = Some(tag);
            found += 1;
        }
    }
    assert_eq!(found, total);

    // A record for a partition the topic lacks stops the call there: the records before
    // it are queued and delivered, it and the rest are not.
    let value = b"v";
    let slice = (0..5u64).map(|i| {
        let record = Record {
            topic: "many",
            partition: Some(if i == 2 { 7 } else { 0 }),
            value: Some(&value[..]),
            ..Record::default()
        };
        (record, 1_000_000 + i)
    });
    let err = producer.send_tagged_many(slice).unwrap_err();
    assert_eq!(err.queued, 2);
    assert!(
        matches!(&err.error, ClientError::Broker(e) if e.code == ErrorCode::UnknownTopicOrPartition),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("the 2 records before it were queued"),
        "{err}"
    );
    producer.flush().unwrap();
    let seen_now = seen.lock().unwrap().clone();
    assert_eq!(seen_now.len() as u64, total + 2);
    assert!(seen_now.contains_key(&1_000_001));
    assert!(!seen_now.contains_key(&1_000_002) && !seen_now.contains_key(&1_000_003));

    // An unknown topic fails its first record; a producer without a callback refuses.
    let missing = std::iter::once((
        Record {
            topic: "no-such-topic",
            value: Some(&value[..]),
            ..Record::default()
        },
        9,
    ));
    let err = producer.send_tagged_many(missing.clone()).unwrap_err();
    assert_eq!(err.queued, 0);
    let plain = Producer::new(config(&broker)).unwrap();
    let err = plain.send_tagged_many(missing).unwrap_err();
    assert!(matches!(err.error, ClientError::Unexpected(_)), "{err}");
}

/// One producer shared by threads that send slices to different topics, with a buffer small
/// enough that sends wait for space mid-slice (letting go of the producer's lock there):
/// every record lands in the topic it was sent to. A slice's records skip the comparison
/// of the topic's name when it is the same string as the record before, so this is the
/// case where a stale "same topic" would send records to another thread's topic.
#[test]
fn threads_sending_slices_to_different_topics_keep_them_apart() {
    let broker = Broker::start(&["--cores", "2"]);
    let topics = ["left", "right", "centre"];
    for topic in topics {
        broker.client().create_topic(topic, 2, &[]).unwrap();
    }
    let producer = Producer::with_callback(
        ProducerConfig {
            buffer_bytes: 16 * 1024,
            batch_bytes: 2 * 1024,
            ..config(&broker)
        },
        std::sync::Arc::new(|_, outcome| {
            outcome.as_ref().expect("delivered");
        }),
    )
    .unwrap();
    let per_thread = 3_000u64;
    std::thread::scope(|scope| {
        for (t, topic) in topics.iter().enumerate() {
            let producer = &producer;
            scope.spawn(move || {
                // The third thread names its topic through a fresh string per slice, the
                // others through the same one each time.
                for first in (0..per_thread).step_by(100) {
                    let owned = topic.to_string();
                    let name: &str = if t == 2 { &owned } else { topic };
                    let values: Vec<[u8; 9]> = (first..first + 100)
                        .map(|i| {
                            let mut v = [t as u8; 9];
                            v[1..].copy_from_slice(&i.to_be_bytes());
                            v
                        })
                        .collect();
                    let records = values.iter().map(|value| {
                        let record = Record {
                            topic: name,
                            value: Some(&value[..]),
                            ..Record::default()
                        };
                        (record, 0)
                    });
                    producer.send_tagged_many(records).unwrap();
                }
            });
        }
    });
    producer.flush().unwrap();
    for (t, topic) in topics.iter().enumerate() {
        let mut sent: Vec<u64> = Vec::new();
        for partition in 0..2 {
            for (_, _, value) in stored(&broker, topic, partition) {
                assert_eq!(
                    value[0], t as u8,
                    "a record of thread {} in `{topic}`",
                    value[0]
                );
                sent.push(u64::from_be_bytes(value[1..].try_into().unwrap()));
            }
        }
        sent.sort_unstable();
        assert_eq!(sent, (0..per_thread).collect::<Vec<_>>(), "`{topic}`");
    }
}

#[test]
fn requests_stay_under_max_request_bytes() {
    // The broker refuses frames over 8 KiB; the producer holds 2,000 records (well over
    // 8 KiB in 1 KiB batches) until the flush and must spread them over several requests.
    let broker = Broker::start(&["--max-request-bytes", "8192"]);
    broker.client().create_topic("split", 1, &[]).unwrap();
    let producer = Producer::new(ProducerConfig {
        batch_bytes: 1024,
        linger: Duration::from_secs(60),
        max_request_bytes: 6 * 1024,
        ..config(&broker)
    })
    .unwrap();
    let futures: Vec<_> = (0..2000u32)
        .map(|i| {
            let value = i.to_be_bytes();
            producer
                .send(Record {
                    topic: "split",
                    value: Some(&value),
                    ..Record::default()
                })
                .unwrap()
        })
        .collect();
    producer.flush().unwrap();
    let offsets: Vec<i64> = futures
        .into_iter()
        .map(|f| f.wait().unwrap().offset)
        .collect();
    assert_eq!(offsets, (0..2000).collect::<Vec<i64>>());
    assert_eq!(stored(&broker, "split", 0).len(), 2000);
}

#[test]
fn a_broker_that_stops_answering_fails_records_after_the_request_timeout() {
    let broker = Broker::start(&["--cores", "1"]);
    broker.client().create_topic("frozen", 1, &[]).unwrap();
    let producer = Producer::new(ProducerConfig {
        request_timeout: Duration::from_millis(500),
        retries: 0,
        linger: Duration::ZERO,
        ..config(&broker)
    })
    .unwrap();
    let record = Record {
        topic: "frozen",
        value: Some(b"v"),
        ..Record::default()
    };
    producer.send(record).unwrap().wait().unwrap();

    broker.signal(libc::SIGSTOP);
    let result = producer.send(record).unwrap().wait();
    broker.signal(libc::SIGCONT);
    let err = result.expect_err("no broker answer, no delivery");
    assert!(
        err.to_string().contains("request timeout"),
        "the error says why: {err}"
    );
    // The producer reconnects and carries on once the broker answers again.
    producer.send(record).unwrap().wait().unwrap();
    producer.flush().unwrap();
}
