//! Long-poll fetch: a consumer at the end of the log waits for new data instead of polling.

mod common;

use std::time::{Duration, Instant};

use common::{batch, now_ms, values, Broker};
use eventflow::client::fetch_request;
use eventflow::protocol::api::{Acks, FetchPartition, FetchRequest, FetchTopic, Request, Response};

/// What the broker logs at debug level when a fetch found too little and waits on the
/// owners of its partitions.
const PARKED: &str = "fetch parked";

/// A broker that logs when a fetch parks.
fn broker() -> Broker {
    Broker::start_logging(&["--cores", "2"], "eventflow=debug")
}

#[test]
fn fetch_at_the_end_returns_when_data_arrives() {
    let broker = broker();
    let mut admin = broker.client();
    admin.create_topic("lp", 2, &[]).unwrap();
    for partition in 0..2u32 {
        let parked = broker.log_count(PARKED);
        let addr = broker.addr;
        let waiter = std::thread::spawn(move || {
            let mut c = eventflow::client::Client::connect(addr).unwrap();
            let started = Instant::now();
            let p = c
                .fetch("lp", partition, 0, 1 << 20, Duration::from_secs(20), 1)
                .unwrap();
            (started.elapsed(), p)
        });
        // Once the fetch has found nothing and parked, produce from another connection.
        broker.wait_for_log(PARKED, parked + 1);
        admin
            .produce("lp", partition, batch("wake", 1, 10, now_ms()), Acks::All)
            .unwrap();
        let (elapsed, p) = waiter.join().unwrap();
        assert_eq!(values(&p.records), vec!["wake-0"]);
        assert_eq!(p.high_watermark, 1);
        assert!(
            elapsed < Duration::from_secs(15),
            "returned with the data, not at max-wait ({elapsed:?})"
        );
    }
}

#[test]
fn fetch_with_nothing_returns_empty_after_max_wait() {
    let broker = Broker::start(&["--cores", "2"]);
    let mut c = broker.client();
    c.create_topic("quiet", 1, &[]).unwrap();
    let started = Instant::now();
    let p = c
        .fetch("quiet", 0, 0, 1 << 20, Duration::from_millis(400), 1)
        .unwrap();
    assert!(p.records.is_empty());
    assert_eq!(p.high_watermark, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "waited for max-wait"
    );
}

#[test]
fn multi_partition_fetch_wakes_on_any_partition() {
    let broker = broker();
    let mut admin = broker.client();
    admin.create_topic("multi", 4, &[]).unwrap();
    let parked = broker.log_count(PARKED);
    let addr = broker.addr;
    let waiter = std::thread::spawn(move || {
        let mut c = eventflow::client::Client::connect(addr).unwrap();
        let request = Request::Fetch(FetchRequest {
            max_wait_ms: 20_000,
            min_bytes: 1,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                topic: "multi".into(),
                partitions: (0..4)
                    .map(|partition| FetchPartition {
                        partition,
                        offset: 0,
                        max_bytes: 1 << 20,
                    })
                    .collect(),
            }],
        });
        let started = Instant::now();
        let Response::Fetch(r) = c.call(request).unwrap() else {
            panic!("not a fetch response")
        };
        (started.elapsed(), r)
    });
    broker.wait_for_log(PARKED, parked + 1);
    admin
        .produce("multi", 3, batch("late", 2, 10, now_ms()), Acks::All)
        .unwrap();
    let (elapsed, r) = waiter.join().unwrap();
    assert!(
        elapsed < Duration::from_secs(15),
        "woke on partition 3 ({elapsed:?})"
    );
    let parts = &r.topics[0].partitions;
    assert_eq!(parts.len(), 4);
    assert_eq!(values(&parts[3].records), vec!["late-0", "late-1"]);
    for p in &parts[..3] {
        assert!(p.records.is_empty());
    }
    // And min_bytes above what is there waits for max-wait, then returns what there is.
    let mut c = broker.client();
    let started = Instant::now();
    let Response::Fetch(r) = c
        .call(fetch_request(
            "multi",
            3,
            0,
            1 << 20,
            Duration::from_millis(300),
            1 << 20,
        ))
        .unwrap()
    else {
        panic!("not a fetch response")
    };
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(values(&r.topics[0].partitions[0].records).len(), 2);
}

#[test]
fn a_topic_deleted_under_a_long_poll_stays_deleted() {
    let mut broker = broker();
    let mut admin = broker.client();
    admin.create_topic("gone", 2, &[]).unwrap();
    let parked = broker.log_count(PARKED);
    let addr = broker.addr;
    let waiter = std::thread::spawn(move || {
        let mut c = eventflow::client::Client::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let request = Request::Fetch(FetchRequest {
            max_wait_ms: 2_000,
            min_bytes: 1,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                topic: "gone".into(),
                partitions: (0..2)
                    .map(|partition| FetchPartition {
                        partition,
                        offset: 0,
                        max_bytes: 1 << 20,
                    })
                    .collect(),
            }],
        });
        c.call(request)
    });
    // The fetch holds the topic's partitions on their owners while it waits; the topic is
    // deleted under it, and the fetch reads them again when its wait ends.
    broker.wait_for_log(PARKED, parked + 1);
    admin.delete_topic("gone").unwrap();
    let answer = waiter.join().unwrap().unwrap();
    if let Response::Fetch(f) = answer {
        for p in &f.topics[0].partitions {
            assert!(p.records.is_empty());
        }
    }
    let dir = broker.store_dir().join("gone");
    assert!(
        !dir.exists(),
        "{} came back after the delete",
        dir.display()
    );
    broker.terminate();
    broker.restart();
    assert!(!dir.exists(), "{} came back after a restart", dir.display());
    assert!(broker.client().list_topics().unwrap().is_empty());
}
