//! Share groups (queues) against a real broker: many consumers on few partitions, locks that
//! expire, nack and release, dead letters, and acknowledgements that survive kill -9.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::Broker;
use eventflow::client::consumer::{Consumer, ConsumerConfig, ConsumerRecord, StartAt};
use eventflow::client::producer::{Producer, ProducerConfig, Record};
use eventflow::client::queue::{AckMode, ShareConsumer, ShareConsumerConfig, ShareRecord};
use eventflow::protocol::api::{
    Request, Response, ShareFetchRequest, ShareSettings, TopicPartitions,
};
use eventflow::protocol::ErrorCode;

fn produce(broker: &Broker, topic: &str, n: usize) {
    let producer = Producer::new(ProducerConfig {
        bootstrap: broker.addr.to_string(),
        ..ProducerConfig::default()
    })
    .unwrap();
    for i in 0..n {
        let value = format!("job-{i}");
        producer
            .send(Record {
                topic,
                partition: Some((i % 2) as u32),
                value: Some(value.as_bytes()),
                ..Record::default()
            })
            .unwrap();
    }
    producer.flush().unwrap();
}

fn config(broker: &Broker, group: &str) -> ShareConsumerConfig {
    ShareConsumerConfig {
        bootstrap: broker.addr.to_string(),
        ack_mode: AckMode::Manual,
        ..ShareConsumerConfig::new(group)
    }
}

fn consumer(config: ShareConsumerConfig, topic: &str) -> ShareConsumer {
    ShareConsumer::new(config, &[topic]).unwrap()
}

/// Polls until `want` records came back or `limit` passes.
fn take(c: &mut ShareConsumer, want: usize, limit: Duration) -> Vec<ShareRecord> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        got.extend(c.poll(Duration::from_millis(100)).unwrap());
    }
    got
}

fn key(r: &ShareRecord) -> (u32, i64) {
    (r.record.partition, r.record.offset)
}

#[test]
fn eight_consumers_share_two_partitions_and_each_record_is_accepted_once() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("jobs", 2, &[]).unwrap();
    produce(&broker, "jobs", 2000);
    let accepted: Arc<Mutex<Vec<(u32, i64)>>> = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let mut c = consumer(
                ShareConsumerConfig {
                    max_records: 25,
                    ..config(&broker, "workers")
                },
                "jobs",
            );
            let (accepted, done) = (accepted.clone(), done.clone());
            thread::spawn(move || {
                let mut mine = 0;
                let deadline = Instant::now() + Duration::from_secs(30);
                while done.load(Ordering::SeqCst) < 2000 && Instant::now() < deadline {
                    let records = c.poll(Duration::from_millis(100)).unwrap();
                    for r in &records {
                        c.ack(r);
                    }
                    c.commit().unwrap();
                    mine += records.len();
                    accepted.lock().unwrap().extend(records.iter().map(key));
                    done.fetch_add(records.len(), Ordering::SeqCst);
                    // Some work per batch, so the others get their turn.
                    thread::sleep(Duration::from_millis(5));
                }
                mine
            })
        })
        .collect();
    let per_worker: Vec<usize> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "idle workers: {per_worker:?}"
    );
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(
        accepted.len(),
        2000,
        "some record was accepted twice or never"
    );
    let unique: HashSet<(u32, i64)> = accepted.into_iter().collect();
    assert_eq!(unique.len(), 2000);
    // The queue is drained: every record is done.
    let d = broker.client().describe_queue("workers").unwrap();
    for p in &d.partitions {
        assert_eq!((p.start, p.acquired), (p.log_end, 0), "{p:?}");
    }
    let groups = broker.client().list_groups().unwrap();
    assert!(groups
        .iter()
        .any(|g| g.group == "workers" && g.kind == "share"));
}

#[test]
fn a_dead_consumers_records_come_back_after_its_lock() {
    let broker = Broker::start(&[]);
    broker.client().create_topic("jobs", 2, &[]).unwrap();
    produce(&broker, "jobs", 20);
    let short_lock = ShareConsumerConfig {
        lock: Duration::from_millis(800),
        ..config(&broker, "g")
    };
    let mut doomed = consumer(short_lock.clone(), "jobs");
    let held: HashSet<(u32, i64)> = take(&mut doomed, 20, Duration::from_secs(5))
        .iter()
        .map(key)
        .collect();
    assert_eq!(held.len(), 20);
    std::mem::forget(doomed); // dies: no acknowledgement, no release
    let died = Instant::now();
    let mut survivor = consumer(
        ShareConsumerConfig {
            member_id: "survivor".into(),
            ..short_lock
        },
        "jobs",
    );
    let again = take(&mut survivor, 20, Duration::from_secs(10));
    assert!(
        died.elapsed() >= Duration::from_millis(700),
        "redelivered before the lock ran out"
    );
    assert_eq!(again.iter().map(key).collect::<HashSet<_>>(), held);
    assert!(again.iter().all(|r| r.delivery == 2));
}

#[test]
fn closing_a_manual_consumer_releases_what_it_did_not_acknowledge() {
    let broker = Broker::start(&[]);
    broker.client().create_topic("jobs", 2, &[]).unwrap();
    produce(&broker, "jobs", 10);
    let mut first = consumer(config(&broker, "g"), "jobs");
    let taken = take(&mut first, 10, Duration::from_secs(5));
    first.ack(&taken[0]);
    drop(first);
    // The nine others are free at once, long before their 30 s locks would end.
    let mut second = consumer(
        ShareConsumerConfig {
            member_id: "second".into(),
            ..config(&broker, "g")
        },
        "jobs",
    );
    let again: HashSet<(u32, i64)> = take(&mut second, 9, Duration::from_secs(10))
        .iter()
        .map(key)
        .collect();
    let expected: HashSet<(u32, i64)> = taken[1..].iter().map(key).collect();
    assert_eq!(again, expected);
}

/// A consumer whose connection drops (a crash, a kill -9) loses its locks with it: the
/// broker releases what it held as the connection closes.
#[test]
fn a_closed_connection_gives_its_records_back() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("jobs", 2, &[]).unwrap();
    produce(&broker, "jobs", 10);
    let mut raw = broker.client();
    let fetched = match raw
        .call(Request::ShareFetch(ShareFetchRequest {
            group: "g".into(),
            member_id: "crasher".into(),
            topics: vec![TopicPartitions {
                topic: "jobs".into(),
                partitions: Vec::new(),
            }],
            max_records: 100,
            max_wait_ms: 1000,
            settings: ShareSettings {
                lock_ms: 60_000,
                max_deliveries: 5,
                dead_letter_topic: String::new(),
            },
        }))
        .unwrap()
    {
        Response::ShareFetch(r) => r,
        other => panic!("{other:?}"),
    };
    let held: usize = fetched
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .flat_map(|p| &p.acquired)
        .map(|a| (a.last - a.first + 1) as usize)
        .sum();
    assert_eq!(held, 10);
    drop(raw);
    // Within 20 s, well before the 60 s locks would have run out.
    let mut c = consumer(config(&broker, "g"), "jobs");
    let again = take(&mut c, 10, Duration::from_secs(20));
    assert_eq!(again.len(), 10);
    assert!(again.iter().all(|r| r.delivery == 2));
}

/// A fetch acquires by count but answers within a byte budget: what does not fit is given
/// back at once, not left locked to a consumer that never saw it.
#[test]
fn records_that_do_not_fit_a_fetch_are_not_left_locked() {
    let broker = Broker::start(&[]);
    broker.client().create_topic("big", 1, &[]).unwrap();
    let producer = Producer::new(ProducerConfig {
        bootstrap: broker.addr.to_string(),
        ..ProducerConfig::default()
    })
    .unwrap();
    let value = vec![7u8; 512 * 1024];
    for _ in 0..30 {
        producer
            .send(Record {
                topic: "big",
                value: Some(&value),
                ..Record::default()
            })
            .unwrap();
    }
    producer.flush().unwrap();
    // 30 records of 512 KiB: 15 MiB, over the 8 MiB a one-partition fetch returns.
    let mut first = consumer(
        ShareConsumerConfig {
            max_records: 30,
            ..config(&broker, "g")
        },
        "big",
    );
    let got = first.poll(Duration::from_secs(5)).unwrap();
    assert!(!got.is_empty() && got.len() < 30, "{} records", got.len());
    let mut second = consumer(
        ShareConsumerConfig {
            member_id: "second".into(),
            max_records: 30,
            ..config(&broker, "g")
        },
        "big",
    );
    let rest = take(&mut second, 30 - got.len(), Duration::from_secs(10));
    assert_eq!(rest.len(), 30 - got.len());
    let all: HashSet<(u32, i64)> = got.iter().chain(&rest).map(key).collect();
    assert_eq!(all.len(), 30);
}

#[test]
fn nack_waits_its_delay_and_release_comes_back_at_once() {
    let broker = Broker::start(&[]);
    broker.client().create_topic("jobs", 2, &[]).unwrap();
    produce(&broker, "jobs", 1);
    let mut c = consumer(config(&broker, "g"), "jobs");
    let first = take(&mut c, 1, Duration::from_secs(5));
    assert_eq!((first.len(), first[0].delivery), (1, 1));
    c.nack(&first[0], Duration::from_millis(600));
    let nacked = Instant::now();
    assert!(c.poll(Duration::from_millis(200)).unwrap().is_empty());
    let second = take(&mut c, 1, Duration::from_secs(5));
    assert!(nacked.elapsed() >= Duration::from_millis(550));
    assert_eq!((key(&second[0]), second[0].delivery), (key(&first[0]), 2));
    c.release(&second[0]);
    // Released records come back at once, not when the 30 s lock would have run out.
    let third = take(&mut c, 1, Duration::from_secs(10));
    assert_eq!(third.len(), 1, "a released record did not come back");
    assert_eq!(third[0].delivery, 3);
    assert_eq!(third[0].record.value, first[0].record.value);
}

fn dead_letters(broker: &Broker, topic: &str, want: usize) -> Vec<ConsumerRecord> {
    let mut c = Consumer::new(ConsumerConfig {
        bootstrap: broker.addr.to_string(),
        ..ConsumerConfig::default()
    })
    .unwrap();
    c.assign(topic, &[0], StartAt::Earliest).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        got.extend(c.poll(Duration::from_millis(100)).unwrap());
    }
    got
}

fn header(r: &ConsumerRecord, name: &str) -> String {
    r.headers
        .iter()
        .find(|(k, _)| &k[..] == name.as_bytes())
        .and_then(|(_, v)| v.as_ref())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

#[test]
fn records_past_max_deliveries_or_rejected_land_in_the_dead_letter_topic() {
    let broker = Broker::start(&["--cores", "2"]);
    broker.client().create_topic("jobs", 2, &[]).unwrap();
    produce(&broker, "jobs", 2);
    let mut c = consumer(
        ShareConsumerConfig {
            max_deliveries: 2,
            dead_letter_topic: "jobs.dlq".into(),
            ..config(&broker, "g")
        },
        "jobs",
    );
    // One record is rejected outright; the other fails twice and is dead-lettered when it
    // would be delivered a third time.
    let both = take(&mut c, 2, Duration::from_secs(5));
    let (rejected, poison) = (&both[0], &both[1]);
    c.reject(rejected);
    c.release(poison);
    let again = take(&mut c, 1, Duration::from_secs(5));
    assert_eq!((key(&again[0]), again[0].delivery), (key(poison), 2));
    c.release(&again[0]);
    assert!(take(&mut c, 1, Duration::from_millis(500)).is_empty());
    let letters = dead_letters(&broker, "jobs.dlq", 2);
    assert_eq!(letters.len(), 2);
    let by_value: HashMap<_, _> = letters
        .iter()
        .map(|r| (r.value.clone().unwrap(), r))
        .collect();
    let rejected_letter = by_value[rejected.record.value.as_ref().unwrap()];
    assert!(header(rejected_letter, "eventflow.dlq.reason").contains("rejected"));
    let poison_letter = by_value[poison.record.value.as_ref().unwrap()];
    assert!(header(poison_letter, "eventflow.dlq.reason").contains("max.deliveries 2"));
    assert_eq!(header(poison_letter, "eventflow.dlq.topic"), "jobs");
    assert_eq!(
        header(poison_letter, "eventflow.dlq.offset"),
        poison.record.offset.to_string()
    );
    assert_eq!(header(poison_letter, "eventflow.dlq.group"), "g");
    let d = broker.client().describe_queue("g").unwrap();
    assert_eq!(d.partitions.iter().map(|p| p.dead_lettered).sum::<u64>(), 2);
}

#[test]
fn a_restart_redelivers_unacked_records_and_never_acked_ones() {
    let mut broker = Broker::start(&["--fsync", "always"]);
    broker.client().create_topic("jobs", 2, &[]).unwrap();
    produce(&broker, "jobs", 100);
    let mut c = consumer(config(&broker, "g"), "jobs");
    let all = take(&mut c, 100, Duration::from_secs(5));
    assert_eq!(all.len(), 100);
    // Accept the first half of each partition; leave the rest locked.
    let accepted: HashSet<(u32, i64)> = all
        .iter()
        .filter(|r| r.record.offset < 25)
        .map(key)
        .collect();
    for r in all.iter().filter(|r| r.record.offset < 25) {
        c.ack(r);
    }
    c.commit().unwrap();
    std::mem::forget(c); // no goodbye
    broker.kill9();
    broker.restart();
    let mut c = consumer(config(&broker, "g"), "jobs");
    let after = take(&mut c, 50, Duration::from_secs(5));
    let after: HashSet<(u32, i64)> = after.iter().map(key).collect();
    assert_eq!(after.len(), 50);
    assert!(after.is_disjoint(&accepted), "an accepted record came back");
    let expected: HashSet<(u32, i64)> = (0..2u32)
        .flat_map(|p| (25..50).map(move |o| (p, o)))
        .collect();
    assert_eq!(after, expected);
}

#[test]
fn bad_share_requests_get_clear_errors() {
    let broker = Broker::start(&[]);
    broker.client().create_topic("jobs", 2, &[]).unwrap();
    produce(&broker, "jobs", 4);
    let mut c = consumer(config(&broker, "g"), "jobs");
    let got = take(&mut c, 4, Duration::from_secs(5));
    // Acknowledging a record this consumer does not hold.
    let mut other = consumer(
        ShareConsumerConfig {
            member_id: "other".into(),
            ..config(&broker, "g")
        },
        "jobs",
    );
    other.ack(&got[0]);
    let err = other.commit().unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RecordNotHeld), "{err}");
    // A record acknowledged twice.
    c.ack(&got[1]);
    c.commit().unwrap();
    c.ack(&got[1]);
    assert_eq!(
        c.commit().unwrap_err().code(),
        Some(ErrorCode::RecordNotHeld)
    );
    // Unknown topic; unknown queue.
    let mut lost = consumer(config(&broker, "g"), "no-such-topic");
    assert_eq!(
        lost.poll(Duration::from_millis(50)).unwrap_err().code(),
        Some(ErrorCode::UnknownTopicOrPartition)
    );
    assert_eq!(
        broker.client().describe_queue("nobody").unwrap_err().code(),
        Some(ErrorCode::UnknownGroup)
    );
    // A dead-letter topic that the queue itself reads would feed rejects back in.
    let mut looping = consumer(
        ShareConsumerConfig {
            dead_letter_topic: "jobs".into(),
            ..config(&broker, "loop")
        },
        "jobs",
    );
    let err = looping.poll(Duration::from_millis(50)).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidRequest), "{err}");
    assert!(
        err.to_string().contains("dead-letter topic `jobs`"),
        "{err}"
    );
    // A partition named twice in one share fetch.
    let mut twice = ShareConsumer::new(config(&broker, "twice"), &["jobs", "jobs"]).unwrap();
    let err = twice.poll(Duration::from_millis(50)).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidRequest), "{err}");
    assert!(err.to_string().contains("named twice"), "{err}");
}
