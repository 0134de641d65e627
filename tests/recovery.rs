//! Recovery on start: a torn or corrupt tail is truncated at the last valid batch, a
//! missing index is rebuilt, and appends continue from the right offset.

mod common;

use std::fs::OpenOptions;
use std::path::PathBuf;

use common::{batch, now_ms, read_all, values, Broker};
use eventflow::protocol::api::{offset_spec, Acks};

/// Five batches of 10 records; returns the broker (stopped) and the log file.
fn prepare(topic: &str) -> (Broker, PathBuf) {
    let mut broker = Broker::start(&["--cores", "1"]);
    let mut c = broker.client();
    c.create_topic(topic, 1, &[]).unwrap();
    for i in 0..5 {
        c.produce(
            topic,
            0,
            batch(&format!("b{i}"), 10, 100, now_ms()),
            Acks::All,
        )
        .unwrap();
    }
    drop(c);
    assert!(broker.terminate().success());
    let log = broker.segment_files(topic, 0, "log").pop().unwrap();
    (broker, log)
}

fn check_recovered(broker: &mut Broker, topic: &str) {
    broker.restart();
    let mut c = broker.client();
    assert_eq!(
        c.list_offset(topic, 0, offset_spec::LATEST).unwrap(),
        40,
        "last batch dropped"
    );
    let got: Vec<String> = read_all(&mut c, topic, 0, 0)
        .iter()
        .flat_map(values)
        .collect();
    assert_eq!(got.len(), 40);
    assert_eq!(got[39], "b3-9");
    let (base, _) = c
        .produce(topic, 0, batch("new", 10, 100, now_ms()), Acks::All)
        .unwrap();
    assert_eq!(base, 40, "appends continue from the last valid batch");
    let got: Vec<String> = read_all(&mut c, topic, 0, 35)
        .iter()
        .flat_map(values)
        .collect();
    assert_eq!(got.last().unwrap(), "new-9");
}

#[test]
fn torn_last_batch_is_truncated() {
    let (mut broker, log) = prepare("torn");
    let len = std::fs::metadata(&log).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len - 37)
        .unwrap();
    check_recovered(&mut broker, "torn");
    assert!(
        broker.log().contains("trunc"),
        "the truncation is logged:\n{}",
        broker.log()
    );
}

#[test]
fn flipped_byte_in_last_batch_is_truncated() {
    let (mut broker, log) = prepare("flipped");
    let mut bytes = std::fs::read(&log).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 0xff;
    std::fs::write(&log, bytes).unwrap();
    check_recovered(&mut broker, "flipped");
}

#[test]
fn missing_index_is_rebuilt() {
    let (mut broker, log) = prepare("noindex");
    // Drop the index and tear the tail: both repaired on start.
    for index in broker.segment_files("noindex", 0, "index") {
        std::fs::remove_file(index).unwrap();
    }
    let len = std::fs::metadata(&log).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    check_recovered(&mut broker, "noindex");
    assert_eq!(
        broker.segment_files("noindex", 0, "index").len(),
        1,
        "index rebuilt"
    );
}
