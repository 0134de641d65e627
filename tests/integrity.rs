//! Damaged bytes on disk never reach a consumer as data: a flipped byte in a record is a
//! corruption error naming its offset, a damaged index entry does not break reads, recovery
//! after kill -9 checks the whole active segment, and `eventflow topic verify` finds what
//! is damaged.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{batch, now_ms, read_all, values, Broker};
use eventflow::protocol::api::Acks;

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

    let index = broker.segment_files("idx", 0, "index").pop().unwrap();
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

#[test]
fn a_flipped_value_byte_in_a_sealed_segment_is_an_error_never_data() {
    let mut broker = Broker::start(&["--cores", "1", "--segment-bytes", "16384"]);
    fill(&broker, "seal", 30);
    assert!(broker.terminate().success());
    let dir = broker.data_dir.join("data").join("seal").join("0");
    let run_file = broker.data_dir.join("data").join("meta").join("run");
    let marker = std::fs::read(dir.join("clean-stop.run")).unwrap();
    assert_eq!(
        marker,
        std::fs::read(&run_file).unwrap(),
        "a clean stop is marked with its run"
    );

    let logs = broker.segment_files("seal", 0, "log");
    assert!(logs.len() > 2, "segments rolled: {logs:?}");
    let starts = batch_starts(&logs[0]);
    assert!(starts.len() > 2);
    let (start, damaged) = starts[2];
    flip_value_byte(&logs[0], start);

    broker.restart();
    assert_ne!(
        std::fs::read(&run_file).unwrap(),
        marker,
        "the marker names the previous run from the start on"
    );
    let out = eventflow(
        &broker,
        &[
            "consume",
            "seal",
            "--from-beginning",
            "--timeout-ms",
            "3000",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains(&format!("corrupt batch in seal/0 at offset {damaged}"))
            && stderr.contains("crc mismatch"),
        "{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len() as i64,
        damaged,
        "the records before it, no more"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.bytes().all(|b| b.is_ascii_graphic())),
        "no damaged value printed"
    );

    // Unchecked, the damaged value would be printed: the check is what stops it.
    let out = eventflow(
        &broker,
        &[
            "consume",
            "seal",
            "--from-beginning",
            "--timeout-ms",
            "2000",
            "--no-check-crcs",
        ],
    );
    assert!(out.status.success());
    assert!(out.stdout.contains(&(b'.' ^ 0x20)));

    let out = eventflow(&broker, &["topic", "verify", "seal"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("partition 0: 30 batches, 290 records, 1 corrupt batch"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "corrupt batch at offset {damaged}: batch crc mismatch"
        )),
        "{stdout}"
    );
}

#[test]
fn verify_passes_a_sound_topic() {
    let broker = Broker::start(&["--cores", "2"]);
    let mut c = broker.client();
    c.create_topic("sound", 3, &[]).unwrap();
    for p in 0..3 {
        for i in 0..4 {
            let b = batch(&format!("p{p}b{i}"), 5, 50, now_ms());
            c.produce("sound", p, b, Acks::All).unwrap();
        }
    }
    let out = eventflow(&broker, &["topic", "verify", "sound"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for p in 0..3 {
        assert!(
            stdout.contains(&format!(
                "partition {p}: 4 batches, 20 records, 0 corrupt batches"
            )),
            "{stdout}"
        );
    }
}

#[test]
fn recovery_after_kill9_checks_the_whole_active_segment() {
    let mut broker = Broker::start(&["--cores", "1", "--fsync", "always"]);
    // Enough batches for the index entries to reach the index file (they are written 64
    // at a time).
    fill(&broker, "active", 100);
    broker.kill9();
    let dir = broker.data_dir.join("data").join("active").join("0");
    assert!(!dir.join("clean-stop.run").exists(), "no clean stop");

    let (start, damaged) = damage_before_the_last_index_entry(&broker, "active");
    broker.restart();
    assert_cut_at(&broker, "active", start, damaged);
    let mut c = broker.client();
    let out = eventflow(
        &broker,
        &[
            "consume",
            "active",
            "--from-beginning",
            "--timeout-ms",
            "2000",
        ],
    );
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len() as i64, damaged);
    assert!(lines.last().unwrap().starts_with("b4-9."));
    assert!(lines
        .iter()
        .all(|l| l.bytes().all(|b| b.is_ascii_graphic())));
    let (base, _) = c
        .produce("active", 0, batch("new", 10, 300, now_ms()), Acks::All)
        .unwrap();
    assert_eq!(base, damaged, "appends continue where the good log ends");
}

#[test]
fn a_damaged_batch_length_is_an_error_not_a_stop() {
    let mut broker = Broker::start(&["--cores", "1", "--segment-bytes", "16384"]);
    fill(&broker, "len", 30);
    assert!(broker.terminate().success());
    let logs = broker.segment_files("len", 0, "log");
    // A length a little too long in one sealed segment, one far past its end in another.
    for (log, add) in [(&logs[0], 100i32), (&logs[1], 1 << 24)] {
        let (start, _) = batch_starts(log)[1];
        let mut bytes = std::fs::read(log).unwrap();
        let len = i32::from_be_bytes(bytes[start + 8..start + 12].try_into().unwrap());
        bytes[start + 8..start + 12].copy_from_slice(&(len + add).to_be_bytes());
        std::fs::write(log, bytes).unwrap();
    }
    let first_of_second = batch_starts(&logs[1])[1].1;
    broker.restart();
    for from in ["0".to_string(), first_of_second.to_string()] {
        let started = std::time::Instant::now();
        let out = eventflow(
            &broker,
            &["consume", "len", "--offset", &from, "--timeout-ms", "5000"],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "from {from}: {stderr}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "it stops"
        );
        assert!(
            stderr.contains("corrupt") && stderr.contains("len/0"),
            "from {from}: {stderr}"
        );
    }
}

#[test]
fn the_scrubber_finds_a_flipped_byte_in_a_sealed_segment() {
    let mut broker = Broker::start(&[
        "--cores",
        "1",
        "--segment-bytes",
        "16384",
        "--scrub-bytes-per-sec",
        "1000000",
    ]);
    fill(&broker, "scrub", 30);
    assert!(broker.terminate().success());
    let logs = broker.segment_files("scrub", 0, "log");
    let (start, damaged) = batch_starts(&logs[1])[1];
    flip_value_byte(&logs[1], start);

    broker.restart();
    broker.wait_for_log("scrub found a corrupt batch", 1);
    let log = broker.log();
    let found: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("scrub found a corrupt batch"))
        .collect();
    assert!(
        found
            .iter()
            .all(|l| l.contains(&format!("offset={damaged}"))
                && l.contains(&format!("position={start}"))
                && l.contains("crc mismatch")),
        "only the damaged batch: {found:?}"
    );
    // The partition stays readable up to it, and a produce still works.
    let mut c = broker.client();
    let (base, _) = c
        .produce("scrub", 0, batch("new", 10, 300, now_ms()), Acks::All)
        .unwrap();
    assert_eq!(base, 300);

    // The batch is fenced: even a consumer that checks nothing gets an error, never its
    // bytes, and the records before it.
    let fenced = format!("offsets {damaged}..={} are fenced as corrupt", damaged + 9);
    let unchecked = [
        "consume",
        "scrub",
        "--from-beginning",
        "--timeout-ms",
        "2000",
        "--no-check-crcs",
    ];
    let out = eventflow(&broker, &unchecked);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains(&fenced) && stderr.contains("crc mismatch"),
        "{stderr}"
    );
    assert_eq!(
        stdout.lines().count() as i64,
        damaged,
        "the records before it"
    );
    assert!(!out.stdout.contains(&(b'.' ^ 0x20)), "no damaged byte sent");

    // A consumer that asks to skip it reads everything else, and says what it skipped.
    let out = eventflow(
        &broker,
        &[
            "consume",
            "scrub",
            "--from-beginning",
            "--timeout-ms",
            "2000",
            "--skip-corrupt",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "skipping offsets {damaged}..{} of scrub/0",
            damaged + 10
        )),
        "{stderr}"
    );
    assert_eq!(stdout.lines().count(), 300, "310 records but the 10 fenced");
    assert!(stdout
        .lines()
        .all(|l| l.bytes().all(|b| b.is_ascii_graphic())));

    let out = eventflow(&broker, &["admin", "verify", "scrub"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("1 corrupt batch")
            && stdout.contains(&format!(
                "corrupt batch at offset {damaged}: fenced by the broker"
            )),
        "{stdout}"
    );

    // The fence outlives a restart, with the scrubber off.
    assert!(broker.terminate().success());
    let again = Broker::start_in(
        &broker.data_dir,
        &["--cores", "1", "--segment-bytes", "16384"],
    );
    let out = eventflow(&again, &unchecked);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(&fenced),
        "{stderr}"
    );
}

#[test]
fn a_kill9_after_a_clean_restart_is_an_unclean_stop() {
    let mut broker = Broker::start(&["--cores", "2", "--fsync", "always"]);
    fill(&broker, "again", 100);
    assert!(broker.terminate().success());
    let dir = broker.data_dir.join("data").join("again").join("0");
    let marker = dir.join("clean-stop.run");
    assert!(marker.exists(), "a clean stop is marked");

    // The start after a clean stop removes no marker, and appends follow; then kill -9.
    broker.restart();
    let mut c = broker.client();
    for i in 0..10 {
        let b = batch(&format!("c{i}"), 10, 300, now_ms());
        c.produce("again", 0, b, Acks::All).unwrap();
    }
    broker.kill9();
    assert!(marker.exists(), "the first run's marker is still there");

    // A damaged batch well before the last index entry: only the full check of an unclean
    // stop reaches it, and it must.
    let (start, damaged) = damage_before_the_last_index_entry(&broker, "again");
    broker.restart();
    assert_cut_at(&broker, "again", start, damaged);
}

/// Flips a value byte of the sixth batch of partition 0 of `topic`'s active segment, which
/// must lie before the segment's last index entry on disk (where after a clean stop
/// recovery does not look); returns the batch's byte position and base offset.
fn damage_before_the_last_index_entry(broker: &Broker, topic: &str) -> (usize, i64) {
    let log = broker.segment_files(topic, 0, "log").pop().unwrap();
    let index = std::fs::read(broker.segment_files(topic, 0, "index").pop().unwrap()).unwrap();
    assert!(!index.is_empty(), "index entries on disk");
    let last_entry = u32::from_be_bytes(index[index.len() - 4..].try_into().unwrap()) as usize;
    let (start, damaged) = batch_starts(&log)[5];
    assert!(
        start < last_entry,
        "the batch is before the last index entry"
    );
    flip_value_byte(&log, start);
    (start, damaged)
}

/// After a restart: recovery found the batch at byte `start` of partition 0 of `topic`
/// damaged, and the log ends at its base offset `damaged`.
fn assert_cut_at(broker: &Broker, topic: &str, start: usize, damaged: i64) {
    let log_text = broker.log();
    assert!(
        log_text.contains("truncating the log tail")
            && log_text.contains(&format!("the batch at byte {start}: batch crc mismatch")),
        "{log_text}"
    );
    let mut c = broker.client();
    assert_eq!(
        c.list_offset(topic, 0, eventflow::protocol::api::offset_spec::LATEST)
            .unwrap(),
        damaged,
        "cut at the damaged batch"
    );
}
