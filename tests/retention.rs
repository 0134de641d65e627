//! Retention by time and by bytes deletes whole old segments; offsets stay monotonic.

mod common;

use std::time::Duration;

use common::{batch, eventually, now_ms, read_all, Broker};
use eventflow::protocol::api::{offset_spec, Acks};
use eventflow::protocol::batch::BatchHeader;

fn segments(broker: &Broker, topic: &str) -> usize {
    std::fs::read_dir(broker.data_dir.join("data").join(topic).join("0"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count()
}

#[test]
fn retention_by_bytes_deletes_old_segments() {
    let broker = Broker::start(&["--cores", "2", "--retention-check-secs", "1"]);
    let mut c = broker.client();
    c.create_topic(
        "sized",
        1,
        &[("segment.bytes", "4096"), ("retention.bytes", "8192")],
    )
    .unwrap();
    // ~1.2 KiB per batch, so a segment holds three batches.
    for i in 0..30 {
        c.produce(
            "sized",
            0,
            batch(&format!("s{i}"), 10, 100, now_ms()),
            Acks::All,
        )
        .unwrap();
    }
    assert!(segments(&broker, "sized") > 4);
    assert!(
        eventually(Duration::from_secs(20), || c
            .list_offset("sized", 0, offset_spec::EARLIEST)
            .unwrap()
            > 0),
        "retention ran"
    );
    let start = c.list_offset("sized", 0, offset_spec::EARLIEST).unwrap();
    let d = c.describe_topic("sized").unwrap();
    assert!(
        d.partitions[0].size_bytes <= 8192 + 4096,
        "{:?}",
        d.partitions[0]
    );
    assert_eq!(d.partitions[0].high_watermark, 300);
    // What is left starts at the new log start and is dense up to the end.
    let batches = read_all(&mut c, "sized", 0, start);
    let mut next = start;
    for b in &batches {
        let h = BatchHeader::parse(b).unwrap();
        assert_eq!(h.base_offset, next);
        next = h.last_offset() + 1;
    }
    assert_eq!(next, 300);
    // Reading below the log start is an error; offsets are never reused.
    let err = c
        .fetch("sized", 0, 0, 1 << 20, Duration::ZERO, 0)
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(eventflow::protocol::ErrorCode::OffsetOutOfRange)
    );
    let (base, _) = c
        .produce("sized", 0, batch("after", 1, 10, now_ms()), Acks::All)
        .unwrap();
    assert_eq!(base, 300);
}

#[test]
fn retention_by_time_deletes_old_segments() {
    let broker = Broker::start(&["--cores", "2", "--retention-check-secs", "1"]);
    let mut c = broker.client();
    c.create_topic(
        "timed",
        1,
        &[("segment.bytes", "4096"), ("retention.ms", "60000")],
    )
    .unwrap();
    let old = now_ms() - 3_600_000;
    for i in 0..9 {
        c.produce(
            "timed",
            0,
            batch(&format!("old{i}"), 10, 100, old),
            Acks::All,
        )
        .unwrap();
    }
    for i in 0..6 {
        c.produce(
            "timed",
            0,
            batch(&format!("new{i}"), 10, 100, now_ms()),
            Acks::All,
        )
        .unwrap();
    }
    assert!(
        eventually(Duration::from_secs(20), || c
            .list_offset("timed", 0, offset_spec::EARLIEST)
            .unwrap()
            >= 90),
        "every segment of hour-old records is deleted"
    );
    let start = c.list_offset("timed", 0, offset_spec::EARLIEST).unwrap();
    let first = read_all(&mut c, "timed", 0, start);
    let values = common::values(&first[0]);
    assert!(values[0].starts_with("new"), "{values:?}");
    assert_eq!(c.list_offset("timed", 0, offset_spec::LATEST).unwrap(), 150);
}
