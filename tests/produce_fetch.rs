//! Produce → fetch through a real broker with two shards, on the shared port and on each
//! shard's direct port; topics admin; list offsets.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use common::{batch, now_ms, read_all, values, Broker};
use eventflow::client::produce_request;
use eventflow::protocol::api::{offset_spec, Acks, Response};
use eventflow::protocol::batch::{self as rb, BatchHeader};
use eventflow::protocol::ErrorCode;

#[test]
fn round_trip_is_byte_identical_across_shards_and_ports() {
    let broker = Broker::start(&["--cores", "2"]);
    assert_eq!(broker.direct.len(), 2, "one direct port per shard");
    let mut admin = broker.client();
    let versions = admin.api_versions().unwrap();
    assert_eq!(versions.shard_count, 2);
    admin.create_topic("orders", 4, &[]).unwrap();

    let meta = admin.metadata(&["orders"]).unwrap();
    let owners = &meta.topics[0].owners;
    assert_eq!(owners.len(), 4);
    let shards: HashSet<_> = owners.iter().copied().collect();
    assert_eq!(shards.len(), 2, "partitions span both shards: {owners:?}");
    assert_eq!(meta.shards.len(), 2);
    for (i, s) in meta.shards.iter().enumerate() {
        assert_eq!(s.port, broker.direct[i].port());
    }

    // Each partition gets batches through the shared port, its owner's direct port and the
    // other shard's direct port (a hop through the rings).
    let mut clients = [
        broker.client(),
        broker.direct_client(0),
        broker.direct_client(1),
    ];
    let mut sent: Vec<Vec<Bytes>> = vec![Vec::new(); 4];
    for round in 0..3 {
        for (partition, sent) in sent.iter_mut().enumerate() {
            for (ci, client) in clients.iter_mut().enumerate() {
                let b = batch(&format!("p{partition}-r{round}-c{ci}"), 10, 100, now_ms());
                let original = Bytes::copy_from_slice(&b);
                let (base, last) = client
                    .produce("orders", partition as u32, b, Acks::All)
                    .unwrap();
                assert_eq!(last - base, 9);
                assert_eq!(base, sent.len() as i64 * 10, "dense offsets");
                // The broker writes only the base offset field; the rest is as sent.
                let mut expected = original.to_vec();
                rb::set_base_offset(&mut expected, base);
                sent.push(Bytes::from(expected));
            }
        }
    }
    for (partition, sent) in sent.iter().enumerate() {
        for client in &mut clients {
            let got = read_all(client, "orders", partition as u32, 0);
            assert_eq!(&got, sent, "partition {partition}: stored batches differ");
        }
    }

    // Fetching from the middle of the log returns the batch holding that offset first.
    let p = clients[0]
        .fetch("orders", 1, 15, 1 << 20, Duration::ZERO, 0)
        .unwrap();
    let first = BatchHeader::parse(&p.records).unwrap();
    assert_eq!(first.base_offset, 10);
    assert_eq!(p.high_watermark, 90);
}

#[test]
fn pipelined_produces_keep_their_order() {
    let broker = Broker::start(&["--cores", "2", "--fsync", "never"]);
    let mut client = broker.client();
    client.create_topic("seq", 2, &[]).unwrap();
    const N: usize = 300;
    for partition in 0..2 {
        let mut ids = Vec::new();
        for i in 0..N {
            let req = produce_request(
                "seq",
                partition,
                batch(&format!("m{i}"), 1, 10, now_ms()),
                Acks::Leader,
            );
            ids.push(client.send(req).unwrap());
        }
        let mut offsets = std::collections::HashMap::new();
        for _ in 0..N {
            let (id, response) = client.receive().unwrap();
            let Response::Produce(r) = response.unwrap() else {
                panic!("not a produce response")
            };
            let p = &r.topics[0].partitions[0];
            assert_eq!(p.error, ErrorCode::None, "{}", p.message);
            offsets.insert(id, p.base_offset);
        }
        let in_send_order: Vec<i64> = ids.iter().map(|id| offsets[id]).collect();
        assert_eq!(in_send_order, (0..N as i64).collect::<Vec<_>>());
        let mut reader = broker.client();
        let all: Vec<String> = read_all(&mut reader, "seq", partition, 0)
            .iter()
            .flat_map(values)
            .collect();
        let expected: Vec<String> = (0..N).map(|i| format!("m{i}-0")).collect();
        assert_eq!(all, expected);
    }
}

#[test]
fn acks_zero_gets_no_response_but_is_appended() {
    let broker = Broker::start(&["--cores", "2"]);
    let mut client = broker.client();
    client.create_topic("fire", 1, &[]).unwrap();
    for i in 0..20 {
        let (b, l) = client
            .produce(
                "fire",
                0,
                batch(&format!("f{i}"), 5, 10, now_ms()),
                Acks::None,
            )
            .unwrap();
        assert_eq!((b, l), (-1, -1));
    }
    // The next request's response is the next thing on the wire.
    assert!(common::eventually(Duration::from_secs(10), || {
        client.list_offset("fire", 0, offset_spec::LATEST).unwrap() == 100
    }));
}

#[test]
fn topics_admin_and_list_offsets() {
    let broker = Broker::start(&["--cores", "2"]);
    let mut c = broker.client();
    c.create_topic("a", 3, &[("retention.ms", "60000")])
        .unwrap();
    c.create_topic("b", 1, &[]).unwrap();
    let err = c.create_topic("a", 1, &[]).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TopicAlreadyExists));
    let err = c.create_topic("bad/name", 1, &[]).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidTopic));
    let err = c.create_topic("z", 0, &[]).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidPartitions));
    let err = c.create_topic("z", 1, &[("colour", "blue")]).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidConfig));

    let names: Vec<_> = c
        .list_topics()
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.partitions))
        .collect();
    assert_eq!(names, vec![("a".to_string(), 3), ("b".to_string(), 1)]);

    let t0 = now_ms() - 10_000;
    c.produce("a", 2, batch("old", 3, 10, t0), Acks::All)
        .unwrap();
    c.produce("a", 2, batch("new", 3, 10, t0 + 5_000), Acks::All)
        .unwrap();
    let d = c.describe_topic("a").unwrap();
    assert_eq!(d.partitions.len(), 3);
    assert_eq!(d.partitions[2].high_watermark, 6);
    assert_eq!(d.partitions[0].high_watermark, 0);
    assert!(d.partitions[2].size_bytes > 0);
    let config = |d: &eventflow::protocol::api::DescribeTopicResponse, k: &str| {
        d.configs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(config(&d, "retention.ms").as_deref(), Some("60000"));

    c.alter_topic_config("a", &[("retention.bytes", "1048576")])
        .unwrap();
    let d = c.describe_topic("a").unwrap();
    assert_eq!(config(&d, "retention.bytes").as_deref(), Some("1048576"));
    let err = c
        .alter_topic_config("a", &[("segment.bytes", "1")])
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidConfig));

    assert_eq!(c.list_offset("a", 2, offset_spec::EARLIEST).unwrap(), 0);
    assert_eq!(c.list_offset("a", 2, offset_spec::LATEST).unwrap(), 6);
    assert_eq!(c.list_offset("a", 2, t0 + 1_000).unwrap(), 3);
    assert_eq!(c.list_offset("a", 2, t0).unwrap(), 0);
    assert_eq!(c.list_offset("a", 2, t0 + 60_000).unwrap(), -1);

    c.delete_topic("a").unwrap();
    let err = c.describe_topic("a").unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopicOrPartition));
    let err = c.delete_topic("a").unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopicOrPartition));
    // A topic created again under the same name starts empty.
    c.create_topic("a", 3, &[]).unwrap();
    assert_eq!(c.list_offset("a", 2, offset_spec::LATEST).unwrap(), 0);
    assert!(!broker.data_dir.join("data").join(".deleted-a-0").exists());
}

#[test]
fn order_holds_while_the_ring_to_the_owner_is_full() {
    // Two-slot rings: pipelined produces through shard 0 to partitions of shard 1 keep
    // finding the ring full and queue behind it.
    let broker = Broker::start(&["--cores", "2", "--ring-capacity", "2", "--fsync", "never"]);
    let mut admin = broker.client();
    admin.create_topic("hop", 4, &[]).unwrap();
    let owners = admin.metadata(&["hop"]).unwrap().topics[0].owners.clone();
    let remote: Vec<u32> = (0..4).filter(|p| owners[*p as usize] == 1).collect();
    assert!(!remote.is_empty());
    let mut client = broker.direct_client(0);
    const N: usize = 500;
    let mut ids = Vec::new();
    for i in 0..N {
        for p in &remote {
            let req = produce_request(
                "hop",
                *p,
                batch(&format!("m{i}"), 1, 10, now_ms()),
                Acks::Leader,
            );
            ids.push((client.send(req).unwrap(), *p));
        }
    }
    let mut offsets = std::collections::HashMap::new();
    for _ in 0..ids.len() {
        let (id, response) = client.receive().unwrap();
        let Response::Produce(r) = response.unwrap() else {
            panic!("not a produce response")
        };
        assert_eq!(r.topics[0].partitions[0].error, ErrorCode::None);
        offsets.insert(id, r.topics[0].partitions[0].base_offset);
    }
    for p in &remote {
        let in_send_order: Vec<i64> = ids
            .iter()
            .filter(|(_, q)| q == p)
            .map(|(id, _)| offsets[id])
            .collect();
        assert_eq!(
            in_send_order,
            (0..N as i64).collect::<Vec<_>>(),
            "partition {p}"
        );
        let all: Vec<String> = read_all(&mut admin, "hop", *p, 0)
            .iter()
            .flat_map(values)
            .collect();
        assert_eq!(all, (0..N).map(|i| format!("m{i}-0")).collect::<Vec<_>>());
    }
}

#[test]
fn fetch_on_the_owning_shard_sends_file_bytes_and_may_end_mid_batch() {
    let broker = Broker::start(&["--cores", "2"]);
    let mut admin = broker.client();
    admin.create_topic("spliced", 2, &[]).unwrap();
    let owners = admin.metadata(&["spliced"]).unwrap().topics[0]
        .owners
        .clone();
    for partition in 0..2u32 {
        let owner = owners[partition as usize] as usize;
        let mut sent = Vec::new();
        for i in 0..20 {
            let b = batch(&format!("s{partition}-{i}"), 10, 100, now_ms());
            let (base, _) = admin
                .produce("spliced", partition, b.clone(), Acks::All)
                .unwrap();
            let mut stored = b.to_vec();
            rb::set_base_offset(&mut stored, base);
            sent.push(Bytes::from(stored));
        }
        let batch_len = sent[0].len() as u32;
        // On the owner's direct port the range is cut at max_bytes, inside a batch; the
        // other shard's port returns whole batches read through the ring.
        for (shard, expect_cut) in [(owner, true), (1 - owner, false)] {
            let mut c = broker.direct_client(shard);
            let max = batch_len * 2 + batch_len / 2;
            let p = c
                .fetch("spliced", partition, 0, max, Duration::ZERO, 0)
                .unwrap();
            if expect_cut {
                assert_eq!(p.records.len(), max as usize, "cut at max_bytes");
            } else {
                assert_eq!(
                    p.records.len(),
                    2 * batch_len as usize,
                    "whole batches only"
                );
            }
            assert_eq!(
                eventflow::client::split_batches(&p.records),
                sent[..2].to_vec()
            );
            // A consumer that drops the partial tail and fetches on reads everything.
            let mut got = Vec::new();
            let mut offset = 0;
            while offset < 200 {
                let p = c
                    .fetch("spliced", partition, offset, max, Duration::ZERO, 0)
                    .unwrap();
                for b in eventflow::client::split_batches(&p.records) {
                    offset = BatchHeader::parse(&b).unwrap().last_offset() + 1;
                    got.push(b);
                }
            }
            assert_eq!(got, sent);
        }
    }
}

#[test]
fn a_log_written_to_a_file_has_no_colour_codes() {
    let broker = Broker::start(&["--cores", "1"]);
    broker.client().create_topic("plain", 1, &[]).unwrap();
    let log = broker.log();
    assert!(log.contains("topic created"), "the log so far:\n{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a log file:\n{log}"
    );
}
