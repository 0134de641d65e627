//! Damaged bytes on disk never reach a consumer as data: a flipped byte in a record is a
//! corruption error naming its offset, a damaged index entry does not break reads, recovery
//! after kill -9 checks the whole active segment, and `eventflow topic verify` finds what
//! is damaged.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{batch, now_ms, read_all, values, Broker};
use eventflow::protocol::api::Acks;

fn segment_files(broker: &Broker, topic: &str, partition: u32, ext: &str) -> Vec<PathBuf> {
    let dir = broker
        .data_dir
        .join("data")
        .join(topic)
        .join(partition.to_string());
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

/// `batches` batches of 10 records of 300 bytes (`b<i>-<j>`) in partition 0 of `topic`.
fn fill(broker: &Broker, topic: &str, batches: usize) {
    let mut c = broker.client();
    c.create_topic(topic, 1, &[]).unwrap();
    for i in 0..batches {
        let b = batch(&format!("b{i}"), 10, 300, now_ms());
        c.produce(topic, 0, b, Acks::All).unwrap();
    }
}

/// The start position and base offset of every batch in a segment log file.
fn batch_starts(log: &Path) -> Vec<(usize, i64)> {
    let bytes = std::fs::read(log).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at + 61 <= bytes.len() {
        let len = i32::from_be_bytes(bytes[at + 8..at + 12].try_into().unwrap());
        if len <= 0 {
            break;
        }
        out.push((
            at,
            i64::from_be_bytes(bytes[at..at + 8].try_into().unwrap()),
        ));
        at += 12 + len as usize;
    }
    out
}

/// Flips one byte of the value of the first record of the batch at `start` in `log`.
fn flip_value_byte(log: &Path, start: usize) {
    let mut bytes = std::fs::read(log).unwrap();
    // 61-byte header, then the first record; its value's padding dots are well inside.
    let at = start + 61 + 40;
    assert_eq!(bytes[at], b'.', "a padding byte of the value");
    bytes[at] ^= 0x20;
    std::fs::write(log, bytes).unwrap();
}

fn eventflow(broker: &Broker, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eventflow"))
        .args(args)
        .env("EVENTFLOW_BOOTSTRAP", broker.addr.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("run eventflow")
}

#[test]
fn a_damaged_index_entry_does_not_break_reads() {
    let mut broker = Broker::start(&["--cores", "1"]);
    fill(&broker, "idx", 30);
    assert!(broker.terminate().success());

    let index = segment_files(&broker, "idx", 0, "index").pop().unwrap();
    let mut bytes = std::fs::read(&index).unwrap();
    assert!(bytes.len() >= 4 * 8, "a few index entries: {}", bytes.len());
    // Entry 2 now points one byte into its batch: still increasing, still inside the log,
    // so it passes the sanity checks of recovery.
    let position = u32::from_be_bytes(bytes[2 * 8 + 4..2 * 8 + 8].try_into().unwrap());
    bytes[2 * 8 + 4..2 * 8 + 8].copy_from_slice(&(position + 1).to_be_bytes());
    let relative = u32::from_be_bytes(bytes[2 * 8..2 * 8 + 4].try_into().unwrap());
    std::fs::write(&index, &bytes).unwrap();

    broker.restart();
    let mut c = broker.client();
    // Every offset the entry covers still reads, from the right batch.
    for from in [i64::from(relative), i64::from(relative) + 5] {
        let got: Vec<String> = read_all(&mut c, "idx", 0, from)
            .iter()
            .flat_map(values)
            .collect();
        let first = (from / 10) as usize;
        assert_eq!(got.len(), 300 - first * 10, "from {from}");
        assert_eq!(got[0], format!("b{first}-0"));
        assert_eq!(got.last().unwrap(), "b29-9");
    }
    broker.wait_for_log("offset index entry does not point at its batch", 1);
    assert_eq!(
        broker.log_count("offset index entry does not point at its batch"),
        1,
        "warned once"
    );
    // The next start rebuilds the index from the log.
    assert!(broker.terminate().success());
    broker.restart();
    broker.wait_for_log("the offset index is missing", 1);
    let rebuilt = std::fs::read(&index).unwrap();
    assert_eq!(
        u32::from_be_bytes(rebuilt[2 * 8 + 4..2 * 8 + 8].try_into().unwrap()),
        position
    );
}
