//! Data and topics survive a clean restart, a kill -9, and a simulated power loss with
//! `--fsync always`; a power loss under `--fsync never` loses acknowledged data (so the
//! power-loss tests can tell the two apart); a torn tail is trimmed on restart.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{batch, now_ms, read_all, simulate_power_loss, values, Broker};
use eventflow::client::Client;
use eventflow::protocol::api::{offset_spec, Acks};
use eventflow::protocol::batch::{self as record_batch, BatchHeader};

/// Produces `rounds` batches of 3 records to each of partitions 0 and 1 of `topic`, one
/// client per shard, each acknowledged (acks=all) before the next is sent. Returns the
/// acknowledged values per partition, in order.
fn produce_acked(broker: &Broker, topic: &str, rounds: usize) -> Vec<Vec<String>> {
    let mut acked: Vec<Vec<String>> = vec![Vec::new(), Vec::new()];
    let mut clients = [broker.direct_client(0), broker.direct_client(1)];
    for i in 0..rounds {
        for (p, client) in clients.iter_mut().enumerate() {
            let tag = format!("p{p}-{i}");
            client
                .produce(topic, p as u32, batch(&tag, 3, 100, now_ms()), Acks::All)
                .unwrap();
            acked[p].extend((0..3).map(|r| format!("{tag}-{r}")));
        }
    }
    acked
}

/// Every value stored in the partition, checking that batch offsets are dense from 0.
fn stored_values(c: &mut Client, topic: &str, partition: u32) -> Vec<String> {
    let batches = read_all(c, topic, partition, 0);
    let mut next = 0;
    for b in &batches {
        let header = BatchHeader::parse(b).unwrap();
        assert_eq!(header.base_offset, next, "offsets of partition {partition}");
        next = header.last_offset() + 1;
    }
    batches.iter().flat_map(values).collect()
}

/// The active (last) segment's log of a partition.
fn active_log(broker: &Broker, topic: &str, partition: u32) -> PathBuf {
    let dir = broker.store_dir().join(topic).join(partition.to_string());
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().expect("a segment")
}

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
    let acked = produce_acked(&broker, "durable", 200);
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

#[test]
fn power_loss_under_fsync_always_keeps_every_acknowledged_batch() {
    let mut broker = Broker::start_journaled(&["--cores", "2", "--fsync", "always"]);
    broker.client().create_topic("durable", 2, &[]).unwrap();
    let acked = produce_acked(&broker, "durable", 100);
    broker.kill9();
    let journal = broker.journal.clone().unwrap();
    let loss = simulate_power_loss(&broker.store_dir(), &journal);
    assert!(loss.files >= 2, "{loss:?}");
    broker.restart();
    let mut c = broker.client();
    for (p, acked) in acked.iter().enumerate() {
        let p = p as u32;
        assert_eq!(
            &stored_values(&mut c, "durable", p),
            acked,
            "partition {p} lost acknowledged records"
        );
        let next = acked.len() as i64;
        assert_eq!(
            c.list_offset("durable", p, offset_spec::LATEST).unwrap(),
            next
        );
        let (base, _) = c
            .produce("durable", p, batch("after", 1, 10, now_ms()), Acks::All)
            .unwrap();
        assert_eq!(base, next);
    }
}

/// `--log-writes direct`: the power loss above loses nothing acknowledged either, and every
/// read path returns exactly what was written: a fetch on the owning shard's port (which
/// sends the tail cache's bytes instead of splicing the file), one through the other shard
/// (a read that copies from the cache), and reads of sealed segments, which come from the
/// file. After the restart the cache is empty, and appends go on from the tail on disk.
#[test]
fn direct_writes_keep_every_acknowledged_batch_and_read_back_on_every_path() {
    let mut broker = Broker::start_journaled(&[
        "--cores",
        "2",
        "--fsync",
        "always",
        "--log-writes",
        "direct",
        "--segment-bytes",
        "131072",
    ]);
    broker.client().create_topic("direct", 2, &[]).unwrap();
    // About 200 KB a partition: a sealed segment, read from the file, and an active one
    // held in the tail cache.
    let mut acked = produce_acked(&broker, "direct", 500);
    let check = |broker: &Broker, acked: &[Vec<String>]| {
        for (p, acked) in acked.iter().enumerate() {
            let p = p as u32;
            let mut owner = broker.direct_client(p as usize);
            let mut other = broker.direct_client(1 - p as usize);
            assert_eq!(
                &stored_values(&mut owner, "direct", p),
                acked,
                "partition {p}, owner"
            );
            assert_eq!(
                &stored_values(&mut other, "direct", p),
                acked,
                "partition {p}, other"
            );
            // The newest batch alone: one cached chunk, handed out without a copy.
            let last = acked.len() - 3;
            for client in [&mut owner, &mut other] {
                let batches = read_all(client, "direct", p, last as i64);
                let got: Vec<String> = batches.iter().flat_map(values).collect();
                assert_eq!(got, acked[last..], "partition {p}, newest batch");
            }
        }
    };
    check(&broker, &acked);
    for p in 0..2 {
        let logs = broker.segment_files("direct", p, "log");
        assert!(logs.len() >= 2, "partition {p} rolled: {logs:?}");
    }
    broker.kill9();
    let journal = broker.journal.clone().unwrap();
    let loss = simulate_power_loss(&broker.store_dir(), &journal);
    assert!(loss.files >= 2, "{loss:?}");
    broker.restart();
    check(&broker, &acked);
    // Appends after the restart, then a clean stop and start: the padding a direct write
    // leaves past the last batch is trimmed, and nothing is lost or doubled.
    let more = produce_acked(&broker, "direct", 20);
    for (p, more) in more.into_iter().enumerate() {
        acked[p].extend(more);
    }
    check(&broker, &acked);
    assert!(broker.terminate().success());
    broker.restart();
    check(&broker, &acked);
    assert_eq!(
        broker.log_count("O_DIRECT"),
        0,
        "direct writes were on:\n{}",
        broker.log()
    );
}

/// `--log-writes direct`: a reader far behind the producers, past the tail cache, gets
/// every record once and in order, on the owner's port (sealed segments spliced from the
/// file, the active one's tail sent as the cache's pieces) and through the other shard,
/// across segment rolls, with fetches that end mid-chunk; and two readers at different
/// places of one partition, taking turns, each get exactly their own records.
#[test]
fn a_backlog_far_behind_the_tail_cache_reads_back_whole_on_both_paths() {
    let broker = Broker::start(&[
        "--cores",
        "2",
        "--fsync",
        "never",
        "--log-writes",
        "direct",
        "--segment-bytes",
        "12582912",
    ]);
    let mut c = broker.client();
    c.create_topic("backlog", 2, &[]).unwrap();
    // About 30 MB in partition 0 (owned by shard 0): three segments, most of it well
    // behind the 4 MiB tail cache.
    let mut producer = broker.direct_client(0);
    let mut expected = Vec::new();
    for i in 0..300 {
        let tag = format!("b{i}");
        producer
            .produce("backlog", 0, batch(&tag, 100, 1000, now_ms()), Acks::Leader)
            .unwrap();
        expected.extend((0..100).map(|r| format!("{tag}-{r}")));
    }
    assert!(broker.segment_files("backlog", 0, "log").len() >= 3);
    let mut owner = broker.direct_client(0);
    let mut other = broker.direct_client(1);
    same(&stored_values(&mut owner, "backlog", 0), &expected, "owner");
    same(&stored_values(&mut other, "backlog", 0), &expected, "other");

    // Two readers taking turns, one from the start and one from the middle.
    let mut offsets = [0i64, expected.len() as i64 / 2];
    let mut got = [Vec::new(), Vec::new()];
    while offsets[0] < expected.len() as i64 / 2 || offsets[1] < expected.len() as i64 {
        let before = offsets;
        for (reader, client) in [&mut owner, &mut other].into_iter().enumerate() {
            let fetched = client
                .fetch("backlog", 0, offsets[reader], 700_000, Duration::ZERO, 0)
                .unwrap();
            for b in eventflow::client::split_batches(&fetched.records) {
                offsets[reader] = BatchHeader::parse(&b).unwrap().last_offset() + 1;
                got[reader].extend(values(&b));
            }
        }
        assert_ne!(
            offsets, before,
            "a round of fetches below the end returned nothing"
        );
    }
    let half = expected.len() / 2;
    same(
        &got[0][..half.min(got[0].len())],
        &expected[..half],
        "first reader",
    );
    same(&got[1], &expected[half..], "second reader");
    assert_eq!(broker.log_count("O_DIRECT"), 0, "{}", broker.log());
}

/// `--tail-cache-mb`: a partition's newest bytes stay in memory across segment rolls, up
/// to the budget, so a reader that far behind is served from memory and one further behind
/// reads the older part from the files; `eventflow_log_read_bytes_total` tells the two
/// apart, and both return exactly what was written.
#[test]
fn a_larger_tail_cache_serves_a_backlog_across_segment_rolls_from_memory() {
    let broker = Broker::start(&[
        "--cores",
        "2",
        "--fsync",
        "never",
        "--log-writes",
        "direct",
        "--segment-bytes",
        "4194304",
        "--tail-cache-mb",
        "32",
    ]);
    broker.client().create_topic("cached", 2, &[]).unwrap();
    let read_bytes = |source: &str| read_bytes(&broker, source);
    let owner_shard = eventflow::shard::owner_of("cached", 0, 2) as usize;
    let mut producer = broker.direct_client(owner_shard);
    let mut expected = Vec::new();
    // Batches of about 10 KB: a 1 MiB fetch that ends inside one reads it again, which
    // counts its bytes twice, so small batches keep the byte counts close to the log's.
    let mut produce = |from: usize, to: usize, expected: &mut Vec<String>| {
        for i in from..to {
            let tag = format!("c{i}");
            producer
                .produce("cached", 0, batch(&tag, 10, 1000, now_ms()), Acks::Leader)
                .unwrap();
            expected.extend((0..10).map(|r| format!("{tag}-{r}")));
        }
    };
    // About 20 MB: five segments, all within the 32 MiB budget.
    produce(0, 2000, &mut expected);
    assert!(broker.segment_files("cached", 0, "log").len() >= 5);
    // On the owner's port (ranges sent as slices of the cache) and through the other
    // shard (copies).
    let mut owner = broker.direct_client(owner_shard);
    let mut other = broker.direct_client(1 - owner_shard);
    let (memory, file) = (read_bytes("memory"), read_bytes("file"));
    same(
        &stored_values(&mut other, "cached", 0),
        &expected,
        "within the budget, through the other shard",
    );
    same(
        &stored_values(&mut owner, "cached", 0),
        &expected,
        "within the budget",
    );
    let read_from_memory = read_bytes("memory") - memory;
    assert!(read_from_memory >= 40_000_000, "{read_from_memory} bytes");
    assert_eq!(read_bytes("file"), file, "nothing read from the files");

    // About 40 MB in all: the oldest 8 MB or so are past the budget and come from the files.
    produce(2000, 4000, &mut expected);
    let (memory, file) = (read_bytes("memory"), read_bytes("file"));
    same(
        &stored_values(&mut owner, "cached", 0),
        &expected,
        "past the budget",
    );
    let (from_memory, from_file) = (read_bytes("memory") - memory, read_bytes("file") - file);
    assert!(from_file >= 4_000_000, "{from_file} bytes from the files");
    assert!(from_memory >= 28_000_000, "{from_memory} bytes from memory");
    assert!(
        from_memory <= 34 << 20,
        "{from_memory} bytes from memory: more than the budget was kept"
    );
    assert_eq!(broker.log_count("O_DIRECT"), 0, "{}", broker.log());
}

/// The value of the sample `name` (with its labels) in the broker's /metrics.
fn metric(broker: &Broker, name: &str) -> u64 {
    let text = common::http::get(broker.metrics.expect("metrics"), "/metrics").text();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// Bytes fetches have read from `memory` (the tail caches) or the `file`s.
fn read_bytes(broker: &Broker, source: &str) -> u64 {
    metric(
        broker,
        &format!("eventflow_log_read_bytes_total{{source=\"{source}\"}}"),
    )
}

/// `--tail-cache-shard-mb`: the tail caches of all the partitions a shard owns share its
/// budget, the oldest bytes going first whichever partition holds them: a partition written
/// after another keeps its backlog in memory, and the earlier one's oldest part is read
/// from the files; the caches' memory (`eventflow_tail_cache_bytes`) stays within the
/// budget, and every record comes back as written.
#[test]
fn a_shards_partitions_share_its_tail_cache_budget_and_the_oldest_bytes_go_first() {
    let broker = Broker::start(&[
        "--cores",
        "2",
        "--fsync",
        "never",
        "--log-writes",
        "direct",
        "--segment-bytes",
        "4194304",
        // Each partition's own budget would hold its 8 MB; the shard's holds 12 MiB of the
        // two partitions' 16 MB.
        "--tail-cache-mb",
        "10",
        "--tail-cache-shard-mb",
        "12",
    ]);
    broker.client().create_topic("shared", 4, &[]).unwrap();
    // Two partitions of one shard.
    let owner = |p| eventflow::shard::owner_of("shared", p, 2);
    let (a, b) = (0..4u32)
        .flat_map(|a| (a + 1..4).map(move |b| (a, b)))
        .find(|&(a, b)| owner(a) == owner(b))
        .expect("four partitions on two shards: two share one");
    let shard = owner(a) as usize;
    let cached = || {
        metric(
            &broker,
            &format!("eventflow_tail_cache_bytes{{shard=\"{shard}\"}}"),
        )
    };
    let limit = format!("eventflow_tail_cache_limit_bytes{{shard=\"{shard}\"}}");
    assert_eq!(metric(&broker, &limit), 12 << 20);

    let mut producer = broker.direct_client(shard);
    // About 8 MB into a partition in batches of about 10 KB.
    let mut produce = |partition: u32| -> Vec<String> {
        let mut expected = Vec::new();
        for i in 0..800 {
            let tag = format!("p{partition}-{i}");
            producer
                .produce(
                    "shared",
                    partition,
                    batch(&tag, 10, 1000, now_ms()),
                    Acks::Leader,
                )
                .unwrap();
            expected.extend((0..10).map(|r| format!("{tag}-{r}")));
        }
        expected
    };
    let expected_a = produce(a);
    assert!(cached() >= 7_000_000, "{} bytes cached", cached());
    let expected_b = produce(b);
    // 16 MB written, 12 MiB kept (and each partition's newest write, a copy of 10 KB).
    let held = cached();
    assert!(
        (11_000_000..=(12 << 20) + 100_000).contains(&held),
        "{held} bytes cached"
    );

    let mut reader = broker.direct_client(shard);
    let (memory, file) = (read_bytes(&broker, "memory"), read_bytes(&broker, "file"));
    same(&stored_values(&mut reader, "shared", b), &expected_b, "b");
    assert_eq!(
        read_bytes(&broker, "file"),
        file,
        "b, written last, is read from memory alone"
    );
    assert!(read_bytes(&broker, "memory") - memory >= 7_000_000);
    let file = read_bytes(&broker, "file");
    same(&stored_values(&mut reader, "shared", a), &expected_a, "a");
    let from_file = read_bytes(&broker, "file") - file;
    assert!(
        from_file >= 3_000_000,
        "{from_file} bytes of a from the files: its oldest chunks should have gone"
    );
    assert_eq!(broker.log_count("O_DIRECT"), 0, "{}", broker.log());
}

/// Asserts that `got` is `want`, naming the first place they differ (the lists are long).
fn same(got: &[String], want: &[String], who: &str) {
    let differ = got.iter().zip(want).position(|(g, w)| g != w);
    assert!(
        got.len() == want.len() && differ.is_none(),
        "{who}: {} values against {}, first difference at {differ:?}",
        got.len(),
        want.len()
    );
}

#[test]
fn power_loss_under_fsync_never_loses_acknowledged_batches() {
    // The same workload as above: if this lost nothing, the power-loss test above would
    // prove nothing about `--fsync always`.
    let mut broker = Broker::start_journaled(&["--cores", "2", "--fsync", "never"]);
    broker.client().create_topic("volatile", 2, &[]).unwrap();
    let acked = produce_acked(&broker, "volatile", 100);
    broker.kill9();
    let journal = broker.journal.clone().unwrap();
    let loss = simulate_power_loss(&broker.store_dir(), &journal);
    assert!(loss.bytes_cut > 0, "{loss:?}");
    broker.restart();
    let mut c = broker.client();
    let mut lost = 0;
    for (p, acked) in acked.iter().enumerate() {
        let p = p as u32;
        let got = stored_values(&mut c, "volatile", p);
        // What survives is a prefix of what was acknowledged, never anything else.
        assert!(
            acked.starts_with(&got),
            "partition {p} serves records never acknowledged"
        );
        assert_eq!(
            c.list_offset("volatile", p, offset_spec::LATEST).unwrap(),
            got.len() as i64
        );
        lost += acked.len() - got.len();
    }
    assert!(lost > 0, "a power loss under --fsync never lost nothing");
}

#[test]
fn a_torn_tail_is_trimmed_and_appends_continue_after_it() {
    let mut broker = Broker::start_journaled(&["--cores", "2", "--fsync", "always"]);
    broker.client().create_topic("torn", 2, &[]).unwrap();
    let acked = produce_acked(&broker, "torn", 30);
    broker.kill9();
    let journal = broker.journal.clone().unwrap();
    simulate_power_loss(&broker.store_dir(), &journal);
    // Partition 0: the first half of the next batch (right base offset, cut short).
    // Partition 1: bytes that are no batch at all.
    let mut next = batch("lost", 3, 100, now_ms());
    record_batch::set_base_offset(&mut next, acked[0].len() as i64);
    let tails: [Vec<u8>; 2] = [next[..next.len() / 2].to_vec(), vec![0xa5; 300]];
    for (p, tail) in tails.iter().enumerate() {
        use std::io::Write;
        let path = active_log(&broker, "torn", p as u32);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(tail).unwrap();
    }
    broker.restart();
    assert_eq!(
        broker.log().matches("truncating the log tail").count(),
        2,
        "recovery reports each torn tail"
    );
    let mut c = broker.client();
    for (p, acked) in acked.iter().enumerate() {
        let p = p as u32;
        assert_eq!(&stored_values(&mut c, "torn", p), acked, "partition {p}");
        let next = acked.len() as i64;
        let (base, _) = c
            .produce("torn", p, batch("after", 2, 10, now_ms()), Acks::All)
            .unwrap();
        assert_eq!(base, next);
        let mut expected = acked.clone();
        expected.extend(["after-0".to_string(), "after-1".to_string()]);
        assert_eq!(stored_values(&mut c, "torn", p), expected);
    }
}

#[test]
fn sigterm_stops_an_idle_broker_with_idle_clients_promptly() {
    // Issue 15 saw 1.3–2.0 s; an idle broker stops in well under 0.2 s here. The bound is
    // generous so a loaded machine does not fail it, and still below what was seen.
    let mut broker = Broker::start(&["--cores", "2"]);
    let mut c = broker.client();
    c.create_topic("idle", 2, &[]).unwrap();
    // An idle native connection and an idle connection to the Kafka listener stay open.
    let kafka = std::net::TcpStream::connect(broker.kafka.expect("kafka listener")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let status = broker.terminate();
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_millis(1200), "SIGTERM took {took:?}");
    drop((c, kafka));
}
