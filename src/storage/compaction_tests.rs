//! Tests of log compaction (`log/compact.rs`) on a real file system and on the fault disk:
//! overwrites and tombstones, reads across the gaps it leaves, a restart after it, and a
//! crash (with a power loss) at every file operation of a pass.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use super::config::CleanupPolicy;
use super::fault::{self, FaultRates};
use super::{CompactionPace, FsyncPolicy, LogConfig, PartitionLog};
use crate::protocol::batch::{self, BatchBuilder, ValidBatch};

/// Each key's newest record: its offset and value (`None`: a tombstone).
type Newest = BTreeMap<Vec<u8>, (i64, Option<Vec<u8>>)>;

/// A record read back: offset, key, value.
type Kept = (i64, Vec<u8>, Option<Vec<u8>>);

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

fn run<F: std::future::Future<Output = ()>>(test: F) {
    compio::runtime::Runtime::new().unwrap().block_on(test);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        segment_bytes: 700,
        segment_ms: None,
        retention_ms: None,
        cleanup: CleanupPolicy {
            delete: false,
            compact: true,
        },
        delete_retention_ms: DAY_MS as u64,
        fsync,
        ..LogConfig::default()
    }
}

/// Appends 60 batches of 3 records over 8 keys, every 13th record a tombstone, and a key
/// whose newest record is a tombstone in a sealed segment; returns each key's newest record.
async fn fill(log: &Rc<PartitionLog>, ts: i64) -> Newest {
    let mut newest = Newest::new();
    for b in 0..60 {
        let mut builder = BatchBuilder::new();
        let mut records = Vec::new();
        for r in 0..3 {
            let i = b * 3 + r;
            // `gone` is written once, then deleted for good by a tombstone.
            let gone = r == 0 && (b == 5 || b == 40);
            let key = if gone {
                b"gone".to_vec()
            } else {
                format!("key-{}", i % 8).into_bytes()
            };
            let value = (i % 13 != 12 && b != 40).then(|| format!("value-{i}").into_bytes());
            builder.push(ts, Some(&key), value.as_deref(), &[]);
            records.push((key, value));
        }
        let batch = ValidBatch::new(builder.finish(), usize::MAX).unwrap();
        let outcome = log.append(vec![batch]).await.unwrap();
        for (r, (key, value)) in records.into_iter().enumerate() {
            newest.insert(key, (outcome.base_offset + r as i64, value));
        }
    }
    newest
}

/// Every record from the log start to the high watermark: (offset, key, value).
async fn records(log: &PartitionLog) -> Vec<Kept> {
    let mut out = Vec::new();
    let mut next = log.log_start_offset();
    while next < log.high_watermark() {
        let read = log.read(next, 1 << 20).await.unwrap();
        assert!(!read.records.is_empty(), "no progress at offset {next}");
        for item in batch::batches(&read.records) {
            let (at, header) = item.unwrap();
            let bytes = &read.records[at..at + header.total_len()];
            batch::validate(bytes, usize::MAX).unwrap();
            for record in batch::records(bytes).unwrap() {
                let record = record.unwrap();
                out.push((
                    record.offset,
                    record.key.unwrap().to_vec(),
                    record.value.map(<[u8]>::to_vec),
                ));
            }
            next = header.last_offset() + 1;
        }
    }
    out
}

fn newest_of(records: &[Kept]) -> Newest {
    let mut newest = Newest::new();
    for (offset, key, value) in records {
        newest.insert(key.clone(), (*offset, value.clone()));
    }
    newest
}

fn cleaned_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".cleaned")
        })
        .count()
}

#[test]
fn compaction_keeps_each_keys_newest_record_at_its_offset_and_drops_old_tombstones() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(FsyncPolicy::Never);
        let log = Rc::new(
            PartitionLog::open(dir.path().to_path_buf(), cfg.clone())
                .await
                .unwrap(),
        );
        let now = now_ms();
        let expected = fill(&log, now).await;
        let before = records(&log).await;
        assert!(log.segment_count() > 3);
        assert!(log.compaction_due(now));

        let stats = log.compact(now, CompactionPace::new(0)).await.unwrap();
        assert!(stats.segments > 0 && stats.records_removed > 0, "{stats:?}");
        assert_eq!(cleaned_files(dir.path()), 0);
        let after = records(&log).await;
        assert!(after.len() < before.len());
        // Reads see the same newest record of every key, tombstones included (young).
        assert_eq!(newest_of(&after), expected);
        // Every record left is one that was appended, at its offset.
        for record in &after {
            assert!(before.contains(record), "{record:?} was never appended");
        }
        // Offsets are never reordered; and a read from any offset, gaps included, starts at
        // the first record at or after it.
        assert!(after.windows(2).all(|w| w[0].0 < w[1].0));
        for offset in 0..log.high_watermark() {
            let read = log.read(offset, 1 << 16).await.unwrap();
            let (_, header) = batch::batches(&read.records).next().unwrap().unwrap();
            assert!(header.last_offset() >= offset);
        }
        // Sealed segments hold each key at most once.
        let active_from = last_sealed_end(dir.path());
        let mut seen = std::collections::HashSet::new();
        for (_, key, _) in after.iter().filter(|r| r.0 < active_from) {
            assert!(seen.insert(key.clone()), "{key:?} twice in sealed segments");
        }
        // The scrubber finds every rewritten batch sound.
        loop {
            let step = log.scrub_step(1 << 16).await.unwrap();
            assert!(step.corrupt.is_empty(), "{:?}", step.corrupt);
            if step.pass_done {
                break;
            }
        }
        // Nothing left to do until new data or a tombstone's time comes.
        assert!(!log.compaction_due(now));

        // Past delete.retention.ms the tombstones in sealed segments go.
        let later = now + DAY_MS + 1;
        assert!(log.compaction_due(later));
        log.compact(later, CompactionPace::new(0)).await.unwrap();
        let last = records(&log).await;
        for (offset, key, value) in &last {
            if *offset < active_from {
                assert!(value.is_some(), "tombstone of {key:?} at {offset} kept");
            }
        }
        // A key whose newest record is a tombstone in a sealed segment has no record left.
        for (key, (offset, value)) in &expected {
            let present = last.iter().any(|r| &r.1 == key);
            if value.is_none() && *offset < active_from {
                assert!(!present, "{key:?}");
            } else {
                assert!(
                    last.contains(&(*offset, key.clone(), value.clone())),
                    "{key:?}"
                );
            }
        }

        // A restart finds the same records and goes on at the same offset.
        let hw = log.high_watermark();
        log.close().await.unwrap();
        drop(log);
        let log = Rc::new(
            PartitionLog::open(dir.path().to_path_buf(), cfg)
                .await
                .unwrap(),
        );
        assert_eq!(log.high_watermark(), hw);
        assert_eq!(records(&log).await, last);
        let mut builder = BatchBuilder::new();
        builder.push(now, Some(b"key-0"), Some(b"after"), &[]);
        let batch = ValidBatch::new(builder.finish(), usize::MAX).unwrap();
        assert_eq!(log.append(vec![batch]).await.unwrap().base_offset, hw);
    });
}

/// The base offset of the last segment file in `dir`: the active segment's.
fn last_sealed_end(dir: &Path) -> i64 {
    let mut bases: Vec<i64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".log").and_then(|s| s.parse().ok())
        })
        .collect();
    bases.sort_unstable();
    *bases.last().unwrap()
}

#[test]
fn a_compaction_cut_short_at_any_file_operation_leaves_every_keys_newest_record() {
    run(async {
        let mut completed = false;
        // Crashes that left a cleaned log behind (undone at the start), and crashes after a
        // segment was swapped in (some records already gone after the start).
        let (mut undone, mut kept) = (0, 0);
        for crash_at in 1.. {
            let dir = tempfile::tempdir().unwrap();
            fault::install(crash_at, FaultRates::default());
            let cfg = config(FsyncPolicy::Always);
            let log = Rc::new(
                PartitionLog::open(dir.path().to_path_buf(), cfg.clone())
                    .await
                    .unwrap(),
            );
            let now = now_ms();
            let expected = fill(&log, now).await;
            let appended = records(&log).await.len();

            fault::with(|d| d.crash_after(crash_at));
            let result = log.compact(now, CompactionPace::new(0)).await;
            let crashed = fault::with(|d| {
                let crashed = result.is_err();
                d.cancel_crash();
                d.crash();
                crashed
            });
            drop(log);
            if crashed && cleaned_files(dir.path()) > 0 {
                undone += 1;
            }
            // The process died; then perhaps the power went too.
            fault::with(fault::FaultDisk::power_loss).unwrap();
            fault::with(fault::FaultDisk::restart);

            let log = Rc::new(
                PartitionLog::open(dir.path().to_path_buf(), cfg)
                    .await
                    .unwrap(),
            );
            assert_eq!(cleaned_files(dir.path()), 0, "crash at {crash_at}");
            let found = records(&log).await;
            assert_eq!(newest_of(&found), expected, "crash at operation {crash_at}");
            if crashed && found.len() < appended {
                kept += 1;
            }
            drop(log);
            fault::uninstall();
            if !crashed {
                completed = true;
                break;
            }
            assert!(crash_at < 10_000, "a compaction that never ends");
        }
        assert!(completed);
        assert!(undone > 0 && kept > 0, "undone {undone}, kept {kept}");
    });
}

#[test]
fn keyless_records_and_compressed_batches_stay_whole() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let log = Rc::new(
            PartitionLog::open(dir.path().to_path_buf(), config(FsyncPolicy::Never))
                .await
                .unwrap(),
        );
        let now = now_ms();
        // A batch flagged as gzip-compressed: compaction cannot read its records, so it
        // keeps it byte for byte (the broker never decompresses).
        let mut builder = BatchBuilder::new();
        builder.push(now, Some(b"key-0"), Some(b"compressed"), &[]);
        let mut compressed = builder.finish();
        compressed[21..23].copy_from_slice(&1i16.to_be_bytes());
        let crc = crc32c::crc32c(&compressed[batch::CRC_START..]);
        compressed[17..21].copy_from_slice(&crc.to_be_bytes());
        let at = log
            .append(vec![
                ValidBatch::new(compressed.clone(), usize::MAX).unwrap()
            ])
            .await
            .unwrap()
            .base_offset;
        batch::set_base_offset(&mut compressed, at);
        let mut keyless = Vec::new();
        for i in 0..40 {
            let mut builder = BatchBuilder::new();
            builder.push(now, None, Some(format!("keyless-{i}").as_bytes()), &[]);
            builder.push(
                now,
                Some(b"key-0"),
                Some(format!("value-{i}").as_bytes()),
                &[],
            );
            let outcome = log
                .append(vec![ValidBatch::new(builder.finish(), usize::MAX).unwrap()])
                .await
                .unwrap();
            keyless.push(outcome.base_offset);
        }
        let stats = log.compact(now, CompactionPace::new(0)).await.unwrap();
        assert!(stats.records_removed > 0);
        let read = log.read(at, 1 << 20).await.unwrap();
        assert_eq!(&read.records[..compressed.len()], &compressed[..]);
        let mut found = Vec::new();
        let mut next = at + 1;
        while next < log.high_watermark() {
            let read = log.read(next, 1 << 20).await.unwrap();
            for item in batch::batches(&read.records) {
                let (start, header) = item.unwrap();
                for record in
                    batch::records(&read.records[start..start + header.total_len()]).unwrap()
                {
                    let record = record.unwrap();
                    if record.key.is_none() {
                        found.push(record.offset);
                    }
                }
                next = header.last_offset() + 1;
            }
        }
        assert_eq!(found, keyless, "every record without a key is kept");
    });
}

#[test]
fn records_younger_than_the_compaction_lag_stay_until_it_passes() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            min_compaction_lag_ms: 10_000,
            ..config(FsyncPolicy::Never)
        };
        let log = Rc::new(
            PartitionLog::open(dir.path().to_path_buf(), cfg)
                .await
                .unwrap(),
        );
        let now = now_ms();
        let expected = fill(&log, now).await;
        let before = records(&log).await;
        assert!(log.compaction_due(now));
        let stats = log.compact(now, CompactionPace::new(0)).await.unwrap();
        assert_eq!((stats.segments, stats.records_removed), (0, 0));
        assert_eq!(records(&log).await, before);
        // The same segments are not read again before the first record may go.
        assert!(!log.compaction_due(now + 9_999));
        let later = now + 10_000;
        assert!(log.compaction_due(later));
        let stats = log.compact(later, CompactionPace::new(0)).await.unwrap();
        assert!(stats.records_removed > 0);
        assert_eq!(newest_of(&records(&log).await), expected);
    });
}
