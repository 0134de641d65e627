//! Data and topics survive a clean restart and a kill -9 with `--fsync always`.

mod common;

use common::{batch, now_ms, read_all, values, Broker};
use eventflow::protocol::api::{offset_spec, Acks};

#[test]
fn clean_restart_keeps_topics_and_data() {
    let mut broker = Broker::start(&["--cores", "2"]);
    let mut c = broker.client();
    c.create_topic("keep", 3, &[("retention.ms", "-1")])
        .unwrap();
    for p in 0..3 {
        for i in 0..5 {
            c.produce(
                "keep",
                p,
                batch(&format!("p{p}b{i}"), 4, 50, now_ms()),
                Acks::All,
            )
            .unwrap();
        }
    }
    let before: Vec<_> = (0..3).map(|p| read_all(&mut c, "keep", p, 0)).collect();
    drop(c);
    let status = broker.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    // A directory the broker did not create is never touched.
    let foreign = broker.data_dir.join("data").join("notes");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("todo.txt"), "keep me").unwrap();
    assert!(broker.log().contains("stopped"));

    broker.restart();
    assert!(foreign.join("todo.txt").exists());
    let mut c = broker.client();
    let d = c.describe_topic("keep").unwrap();
    assert_eq!(d.partitions.len(), 3);
    let retention = d.configs.iter().find(|(k, _)| k == "retention.ms").unwrap();
    assert_eq!(retention.1, "-1");
    for p in 0..3 {
        assert_eq!(read_all(&mut c, "keep", p, 0), before[p as usize]);
        // New appends continue after the old ones.
        let (base, _) = c
            .produce("keep", p, batch("after", 1, 10, now_ms()), Acks::All)
            .unwrap();
        assert_eq!(base, 20);
    }
}

#[test]
fn kill_9_keeps_every_acknowledged_batch() {
    let mut broker = Broker::start(&["--cores", "2", "--fsync", "always"]);
    let mut c = broker.client();
    c.create_topic("durable", 2, &[]).unwrap();
    // Producers on both shards; every acknowledged batch is recorded.
    let mut acked: Vec<Vec<String>> = vec![Vec::new(), Vec::new()];
    let mut clients = [broker.direct_client(0), broker.direct_client(1)];
    for i in 0..200 {
        for (p, client) in clients.iter_mut().enumerate() {
            let tag = format!("p{p}-{i}");
            client
                .produce(
                    "durable",
                    p as u32,
                    batch(&tag, 3, 100, now_ms()),
                    Acks::All,
                )
                .unwrap();
            acked[p].extend((0..3).map(|r| format!("{tag}-{r}")));
        }
    }
    broker.kill9();
    broker.restart();
    let mut c = broker.client();
    for (p, acked) in acked.iter().enumerate() {
        let got: Vec<String> = read_all(&mut c, "durable", p as u32, 0)
            .iter()
            .flat_map(values)
            .collect();
        assert_eq!(&got, acked, "partition {p} lost acknowledged records");
        assert_eq!(
            c.list_offset("durable", p as u32, offset_spec::LATEST)
                .unwrap(),
            600
        );
    }
}

#[test]
fn shutdown_answers_a_parked_long_poll_and_exits_zero() {
    let mut broker = Broker::start(&["--cores", "2"]);
    let mut c = broker.client();
    c.create_topic("parked", 1, &[]).unwrap();
    // The request is on the wire before the signal; only its answer is awaited in the thread.
    let mut consumer = broker.client();
    let started = std::time::Instant::now();
    consumer
        .send(eventflow::client::fetch_request(
            "parked",
            0,
            0,
            1 << 20,
            std::time::Duration::from_secs(50),
            1,
        ))
        .unwrap();
    let consumer = std::thread::spawn(move || {
        let result = consumer.receive();
        (started.elapsed(), result)
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let status = broker.terminate();
    assert!(status.success(), "{status:?}");
    let (elapsed, result) = consumer.join().unwrap();
    // The parked fetch is answered (empty) rather than cut off, long before its max-wait.
    let (_, response) =
        result.expect("the long-poll gets its response before the connection closes");
    let eventflow::protocol::api::Response::Fetch(r) = response.unwrap() else {
        panic!("not a fetch response")
    };
    assert!(r.topics[0].partitions[0].records.is_empty());
    assert!(elapsed < std::time::Duration::from_secs(40), "{elapsed:?}");
}
