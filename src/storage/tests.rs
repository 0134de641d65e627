//! End-to-end tests of the partition log on a real file system, inside a compio runtime.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::recovery;
use super::runs::{self, Runs};
use super::segment::SegmentFiles;
use super::{FsyncPolicy, LogConfig, PartitionLog, StorageError};
use crate::protocol::batch::{self, BatchBuilder, BatchHeader, ValidBatch};

fn run<F: std::future::Future<Output = ()>>(test: F) {
    compio::runtime::Runtime::new().unwrap().block_on(test);
}

/// A batch of `records` records of `value_len` bytes, timestamps `ts`, `ts + 1`, ...
fn make_batch(records: usize, ts: i64, value_len: usize) -> ValidBatch {
    let mut builder = BatchBuilder::new();
    for i in 0..records {
        let value = vec![(i % 251) as u8; value_len];
        builder.push(ts + i as i64, Some(b"key"), Some(&value), &[]);
    }
    ValidBatch::new(builder.finish(), usize::MAX).unwrap()
}

fn config() -> LogConfig {
    LogConfig {
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    }
}

/// The headers of the batches in `records`, checking they are whole and CRC-valid.
/// Opens (creating) a log in `dir` with the tests' config.
async fn open_default(dir: &tempfile::TempDir) -> Rc<PartitionLog> {
    open_with(dir.path(), config()).await
}

/// Opens (creating) a log in `dir` with `cfg`.
async fn open_with(dir: &Path, cfg: LogConfig) -> Rc<PartitionLog> {
    Rc::new(PartitionLog::open(dir.to_path_buf(), cfg).await.unwrap())
}

/// Opens the log as the broker's run `run` would, the one after run `run - 1`.
async fn open_in_run(dir: &Path, cfg: LogConfig, run: u64) -> Rc<PartitionLog> {
    let runs = Runs {
        previous: run.checked_sub(1),
        current: Some(run),
    };
    Rc::new(
        PartitionLog::open_in_run(dir.to_path_buf(), cfg, 0, runs)
            .await
            .unwrap(),
    )
}

fn headers(records: &[u8]) -> Vec<BatchHeader> {
    batch::batches(records)
        .map(|item| {
            let (start, header) = item.expect("whole batches");
            batch::validate(&records[start..start + header.total_len()], usize::MAX)
                .expect("valid batch");
            header
        })
        .collect()
}

/// Reads everything from `from` to the high watermark, one call per segment.
async fn read_all(log: &PartitionLog, from: i64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut next = from;
    while next < log.high_watermark() {
        let read = log.read(next, 1 << 20).await.unwrap();
        let hs = headers(&read.records);
        assert!(!hs.is_empty(), "no progress at offset {next}");
        next = hs.last().unwrap().last_offset() + 1;
        out.extend_from_slice(&read.records);
    }
    out
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

/// Appends `count` batches of 2 records each; returns the stored bytes.
async fn append_batches(
    log: &Rc<PartitionLog>,
    count: usize,
    ts: i64,
    value_len: usize,
) -> Vec<u8> {
    let mut expected = Vec::new();
    for i in 0..count {
        let mut batch = make_batch(2, ts + i as i64, value_len);
        let outcome = log.append(vec![batch.clone()]).await.unwrap();
        batch.set_base_offset(outcome.base_offset);
        expected.extend_from_slice(batch.as_bytes());
    }
    expected
}

#[test]
fn append_then_read_round_trips_bytes_and_offsets() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let log = Rc::new(
            PartitionLog::open(dir.path().join("p0"), LogConfig::default())
                .await
                .unwrap(),
        );
        assert_eq!((log.log_start_offset(), log.high_watermark()), (0, 0));

        let first = log.append(vec![make_batch(3, 1000, 10)]).await.unwrap();
        assert_eq!((first.base_offset, first.last_offset), (0, 2));
        let second = log
            .append(vec![make_batch(1, 2000, 5), make_batch(4, 3000, 7)])
            .await
            .unwrap();
        assert_eq!((second.base_offset, second.last_offset), (3, 7));
        assert_eq!(log.high_watermark(), 8);

        let mut expected = Vec::new();
        for (base, batch) in [
            (0, make_batch(3, 1000, 10)),
            (3, make_batch(1, 2000, 5)),
            (4, make_batch(4, 3000, 7)),
        ] {
            let mut batch = batch;
            batch.set_base_offset(base);
            expected.extend_from_slice(batch.as_bytes());
        }
        let read = log.read(0, 1 << 20).await.unwrap();
        assert_eq!(&read.records[..], &expected[..]);
        assert_eq!((read.high_watermark, read.log_start_offset), (8, 0));
        let bases: Vec<i64> = headers(&read.records)
            .iter()
            .map(|h| h.base_offset)
            .collect();
        assert_eq!(bases, vec![0, 3, 4]);

        // From the middle of a batch: that whole batch first.
        let read = log.read(5, 1 << 20).await.unwrap();
        assert_eq!(headers(&read.records)[0].base_offset, 4);
        assert_eq!(log.size_bytes(), expected.len() as u64);
        assert_eq!(log.bytes_available_from(0), expected.len() as u64);
        assert_eq!(log.bytes_available_from(8), 0);
        log.close().await.unwrap();
    });
}

#[test]
fn empty_read_at_high_watermark_and_out_of_range_errors() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let log = open_default(&dir).await;
        let read = log.read(0, 100).await.unwrap();
        assert!(read.records.is_empty());
        log.append(vec![make_batch(2, 1, 1)]).await.unwrap();
        assert!(log.read(2, 100).await.unwrap().records.is_empty());
        match log.read(3, 100).await {
            Err(StorageError::OffsetOutOfRange {
                requested: 3,
                log_start: 0,
                high_watermark: 2,
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            log.read(-1, 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
    });
}

#[test]
fn max_bytes_limits_reads_but_a_big_first_batch_comes_whole() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let log = open_default(&dir).await;
        append_batches(&log, 10, 0, 100).await;
        let one = make_batch(2, 0, 100).len();
        let read = log.read(0, one * 3 + 10).await.unwrap();
        assert_eq!(headers(&read.records).len(), 3);
        let read = log.read(4, 1).await.unwrap();
        let hs = headers(&read.records);
        assert_eq!((hs.len(), hs[0].base_offset), (1, 4));
    });
}

#[test]
fn concurrent_appends_get_dense_offsets_and_share_flushes() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let log = Rc::new(
            PartitionLog::open(
                dir.path().to_path_buf(),
                LogConfig {
                    fsync: FsyncPolicy::Always,
                    ..LogConfig::default()
                },
            )
            .await
            .unwrap(),
        );
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let log = Rc::clone(&log);
                compio::runtime::spawn(async move {
                    log.append(vec![make_batch(3, i, 20)]).await.unwrap()
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        outcomes.sort_by_key(|o| o.base_offset);
        for (i, o) in outcomes.iter().enumerate() {
            assert_eq!(
                (o.base_offset, o.last_offset),
                (i as i64 * 3, i as i64 * 3 + 2)
            );
        }
        assert_eq!(log.high_watermark(), 60);
        assert!(
            log.flush_count() < 20,
            "{} flushes for 20 appends",
            log.flush_count()
        );
        let stored = read_all(&log, 0).await;
        let bases: Vec<i64> = headers(&stored).iter().map(|h| h.base_offset).collect();
        assert_eq!(bases, (0..20).map(|i| i * 3).collect::<Vec<i64>>());
    });
}

/// The tests' config with group-commit rounds paced `interval` apart.
fn paced(interval: std::time::Duration) -> LogConfig {
    LogConfig {
        group_commit_interval: interval,
        ..config()
    }
}

/// Appends of 3 records made 5 ms apart, each by its own task, while the log is paced at
/// `interval`; returns the group-commit rounds they took (after a first append alone).
async fn staggered_rounds(interval: std::time::Duration) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let log = open_with(dir.path(), paced(interval)).await;
    log.append(vec![make_batch(3, 0, 20)]).await.unwrap();
    let before = log.flush_count();
    let mut tasks = Vec::new();
    for i in 1..=10 {
        let log = Rc::clone(&log);
        tasks.push(compio::runtime::spawn(async move {
            log.append(vec![make_batch(3, i, 20)]).await.unwrap()
        }));
        compio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(log.high_watermark(), 33);
    log.flush_count() - before
}

#[test]
fn a_paced_log_gathers_what_arrives_within_the_interval_into_one_round() {
    run(async {
        // Unpaced, a write takes microseconds, so appends 5 ms apart each get a round.
        let unpaced = staggered_rounds(std::time::Duration::ZERO).await;
        assert!(unpaced > 2, "{unpaced} rounds without pacing");
        // Paced at 1 s, the ten arrive within the interval after the first round: one more.
        let paced = staggered_rounds(std::time::Duration::from_secs(1)).await;
        assert_eq!(paced, 1);
    });
}

#[test]
fn a_paced_round_waits_out_the_interval_only_when_the_last_round_was_recent() {
    run(async {
        let interval = std::time::Duration::from_millis(400);
        let dir = tempfile::tempdir().unwrap();
        let log = open_with(dir.path(), paced(interval)).await;
        let timed = |ts| {
            let log = Rc::clone(&log);
            async move {
                let started = std::time::Instant::now();
                log.append(vec![make_batch(1, ts, 20)]).await.unwrap();
                started.elapsed()
            }
        };
        timed(0).await;
        // Right after a round, the next one waits for the rest of the interval.
        let soon = timed(1).await;
        assert!(soon >= interval / 2, "waited {soon:?}");
        // After a pause longer than the interval, a round starts at once.
        compio::time::sleep(interval + interval / 4).await;
        let after_pause = timed(2).await;
        assert!(after_pause < interval, "waited {after_pause:?}");
        assert_eq!(log.flush_count(), 3);
    });
}

#[test]
fn waiters_are_notified_when_the_high_watermark_moves() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let log = open_default(&dir).await;
        let waiter = {
            let log = Rc::clone(&log);
            compio::runtime::spawn(async move {
                log.appended().notified().await;
                log.high_watermark()
            })
        };
        compio::time::sleep(std::time::Duration::from_millis(5)).await;
        log.append(vec![make_batch(2, 0, 1)]).await.unwrap();
        assert_eq!(waiter.await.unwrap(), 2);
    });
}

#[test]
fn segments_roll_by_size_and_reads_cross_them() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            segment_bytes: 1000,
            index_interval_bytes: 256,
            ..config()
        };
        let log = open_with(dir.path(), cfg).await;
        let expected = append_batches(&log, 30, 0, 50).await;
        let logs = log_files(dir.path());
        assert!(logs.len() > 3, "only {} segments", logs.len());
        for path in &logs {
            assert!(std::fs::metadata(path).unwrap().len() <= 1000);
        }
        assert_eq!(read_all(&log, 0).await, expected);
        assert_eq!(log.size_bytes(), expected.len() as u64);
        // A read starting inside a later segment.
        let read = log.read(41, 1 << 20).await.unwrap();
        assert_eq!(headers(&read.records)[0].base_offset, 40);
    });
}

#[test]
fn a_group_larger_than_a_segment_is_split_across_segments() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            segment_bytes: 1000,
            ..config()
        };
        let log = open_with(dir.path(), cfg).await;
        let batches: Vec<ValidBatch> = (0..12).map(|i| make_batch(1, i, 100)).collect();
        let outcome = log.append(batches).await.unwrap();
        assert_eq!((outcome.base_offset, outcome.last_offset), (0, 11));
        assert!(log_files(dir.path()).len() >= 2);
        let stored = read_all(&log, 0).await;
        assert_eq!(headers(&stored).len(), 12);
    });
}

#[test]
fn reopen_keeps_everything_and_continues_offsets() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            segment_bytes: 2000,
            index_interval_bytes: 300,
            ..config()
        };
        let log = open_with(dir.path(), cfg.clone()).await;
        let mut expected = append_batches(&log, 25, 0, 60).await;
        log.close().await.unwrap();
        assert!(matches!(log.read(0, 10).await, Err(StorageError::Closed)));
        assert!(matches!(
            log.append(vec![make_batch(1, 0, 1)]).await,
            Err(StorageError::Closed)
        ));
        let index_before: Vec<Vec<u8>> = log_files(dir.path())
            .iter()
            .map(|p| std::fs::read(p.with_extension("index")).unwrap())
            .collect();

        let log = open_with(dir.path(), cfg).await;
        assert_eq!(log.high_watermark(), 50);
        assert_eq!(read_all(&log, 0).await, expected);
        // A clean reopen leaves the indexes as appends wrote them.
        let index_after: Vec<Vec<u8>> = log_files(dir.path())
            .iter()
            .map(|p| std::fs::read(p.with_extension("index")).unwrap())
            .collect();
        assert_eq!(index_before, index_after);
        let outcome = log.append(vec![make_batch(2, 0, 60)]).await.unwrap();
        assert_eq!(outcome.base_offset, 50);
        let mut batch = make_batch(2, 0, 60);
        batch.set_base_offset(50);
        expected.extend_from_slice(batch.as_bytes());
        assert_eq!(read_all(&log, 0).await, expected);
    });
}

/// Writes 20 batches, closes, damages the files with `damage`, reopens; returns the log and
/// the bytes of the batches written.
async fn reopen_after(
    damage: impl FnOnce(&Path, &[u8]),
) -> (tempfile::TempDir, Rc<PartitionLog>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        index_interval_bytes: 200,
        ..config()
    };
    let log = open_with(dir.path(), cfg.clone()).await;
    let expected = append_batches(&log, 20, 0, 40).await;
    log.close().await.unwrap();
    damage(dir.path(), &expected);
    let log = open_with(dir.path(), cfg).await;
    (dir, log, expected)
}

fn active_files(dir: &Path) -> SegmentFiles {
    SegmentFiles::new(dir, 0)
}

#[test]
fn recovery_truncates_a_torn_last_batch() {
    run(async {
        let one = make_batch(2, 0, 40).len() as u64;
        let (_dir, log, expected) = reopen_after(|dir, expected| {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(active_files(dir).log)
                .unwrap();
            file.set_len(expected.len() as u64 - one / 2).unwrap();
        })
        .await;
        assert_eq!(log.high_watermark(), 38);
        let kept = &expected[..expected.len() - one as usize];
        assert_eq!(read_all(&log, 0).await, kept);
        let outcome = log.append(vec![make_batch(2, 0, 40)]).await.unwrap();
        assert_eq!(outcome.base_offset, 38);
        assert_eq!(headers(&read_all(&log, 0).await).len(), 20);
    });
}

#[test]
fn recovery_truncates_a_corrupt_last_batch() {
    run(async {
        let one = make_batch(2, 0, 40).len();
        let (_dir, log, expected) = reopen_after(|dir, expected| {
            let path = active_files(dir).log;
            let mut bytes = std::fs::read(&path).unwrap();
            let at = expected.len() - one / 3;
            bytes[at] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
        })
        .await;
        assert_eq!(log.high_watermark(), 38);
        assert_eq!(read_all(&log, 0).await, &expected[..expected.len() - one]);
        assert_eq!(
            std::fs::metadata(active_files(_dir.path()).log)
                .unwrap()
                .len(),
            (expected.len() - one) as u64
        );
    });
}

#[test]
fn recovery_drops_garbage_after_the_last_batch() {
    run(async {
        let (_dir, log, expected) = reopen_after(|dir, _| {
            let path = active_files(dir).log;
            let mut bytes = std::fs::read(&path).unwrap();
            bytes.extend_from_slice(&[0u8; 100]);
            std::fs::write(&path, bytes).unwrap();
        })
        .await;
        assert_eq!(log.high_watermark(), 40);
        assert_eq!(read_all(&log, 0).await, expected);
    });
}

#[test]
fn recovery_rebuilds_a_missing_index() {
    run(async {
        let mut original = Vec::new();
        let (dir, log, expected) = reopen_after(|dir, _| {
            let files = active_files(dir);
            original = std::fs::read(&files.index).unwrap();
            assert!(original.len() >= 16, "the test needs index entries");
            std::fs::remove_file(&files.index).unwrap();
            std::fs::remove_file(&files.time_index).unwrap();
        })
        .await;
        assert_eq!(
            std::fs::read(active_files(dir.path()).index).unwrap(),
            original
        );
        assert_eq!(log.high_watermark(), 40);
        assert_eq!(read_all(&log, 0).await, expected);
        let read = log.read(27, 1 << 20).await.unwrap();
        assert_eq!(headers(&read.records)[0].base_offset, 26);
    });
}

#[test]
fn recovery_rebuilds_a_garbage_index() {
    run(async {
        let mut original = Vec::new();
        let (dir, log, expected) = reopen_after(|dir, _| {
            let files = active_files(dir);
            original = std::fs::read(&files.index).unwrap();
            // Ragged size.
            std::fs::write(&files.index, [7u8; 13]).unwrap();
        })
        .await;
        assert_eq!(
            std::fs::read(active_files(dir.path()).index).unwrap(),
            original
        );
        assert_eq!(read_all(&log, 0).await, expected);
        log.close().await.unwrap();

        // Whole entries, but pointing into the middle of a batch.
        let files = active_files(dir.path());
        let mut bogus = Vec::new();
        bogus.extend_from_slice(&1u32.to_be_bytes());
        bogus.extend_from_slice(&7u32.to_be_bytes());
        std::fs::write(&files.index, &bogus).unwrap();
        let log = PartitionLog::open(dir.path().to_path_buf(), config())
            .await
            .unwrap();
        assert_eq!(log.high_watermark(), 40);
        assert_eq!(read_all(&log, 0).await, expected);
    });
}

#[test]
fn older_segments_get_their_index_rebuilt() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            segment_bytes: 1500,
            index_interval_bytes: 200,
            ..config()
        };
        let log = open_with(dir.path(), cfg.clone()).await;
        let expected = append_batches(&log, 30, 0, 40).await;
        log.close().await.unwrap();
        let first = SegmentFiles::new(dir.path(), 0);
        let original = std::fs::read(&first.index).unwrap();
        std::fs::write(&first.index, [0xffu8; 16]).unwrap();
        let log = PartitionLog::open(dir.path().to_path_buf(), cfg)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&first.index).unwrap(), original);
        assert_eq!(read_all(&log, 0).await, expected);
    });
}

#[test]
fn retention_by_bytes_deletes_oldest_segments() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            segment_bytes: 1000,
            retention_ms: None,
            ..config()
        };
        let log = open_with(dir.path(), cfg.clone()).await;
        append_batches(&log, 40, 0, 50).await;
        let segments_before = log_files(dir.path()).len();
        let size_before = log.size_bytes();
        assert_eq!(log.enforce_retention(0).await.unwrap(), 0);

        log.set_config(LogConfig {
            retention_bytes: Some(2500),
            ..cfg
        });
        let deleted = log.enforce_retention(0).await.unwrap();
        assert!(deleted > 0);
        assert_eq!(log_files(dir.path()).len(), segments_before - deleted);
        assert!(log.size_bytes() >= 2500 && log.size_bytes() < size_before);
        let start = log.log_start_offset();
        assert!(start > 0);
        let first = log_files(dir.path())[0].clone();
        assert_eq!(first, SegmentFiles::new(dir.path(), start).log);
        assert!(matches!(
            log.read(0, 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert_eq!(
            headers(&log.read(start, 100).await.unwrap().records)[0].base_offset,
            start
        );
        let outcome = log.append(vec![make_batch(2, 0, 50)]).await.unwrap();
        assert_eq!(outcome.base_offset, 80);
        // No index file outlives its log; of the producer snapshots taken at each roll, the
        // two newest are kept.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let snapshots = names.iter().filter(|n| n.ends_with(".producers")).count();
        assert_eq!(snapshots, 2, "{names:?}");
        assert_eq!(names.len() - snapshots, log_files(dir.path()).len() * 3);
    });
}

#[test]
fn retention_by_time_deletes_old_segments_and_keeps_the_active_one() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            segment_bytes: 1000,
            retention_ms: Some(1000),
            ..config()
        };
        let log = open_with(dir.path(), cfg).await;
        append_batches(&log, 20, 10_000, 50).await; // old
        let old_hwm = log.high_watermark();
        append_batches(&log, 20, 1_000_000, 50).await; // recent
        let deleted = log.enforce_retention(1_000_500).await.unwrap();
        assert!(deleted > 0);
        assert!(log.log_start_offset() > 0 && log.log_start_offset() <= old_hwm);
        // Everything ages out but the active segment.
        log.enforce_retention(i64::MAX).await.unwrap();
        assert_eq!(log_files(dir.path()).len(), 1);
        let hwm = log.high_watermark();
        assert!(log.log_start_offset() <= hwm);
        let outcome = log.append(vec![make_batch(1, 0, 1)]).await.unwrap();
        assert_eq!(outcome.base_offset, hwm);
        drop(log);
        // Reopening keeps the log start where retention left it.
        let log = PartitionLog::open(dir.path().to_path_buf(), config())
            .await
            .unwrap();
        assert_eq!(log.high_watermark(), hwm + 1);
        assert!(log.log_start_offset() > 0);
    });
}

#[test]
fn offset_for_timestamp_finds_the_first_batch_at_or_after() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            segment_bytes: 1500,
            index_interval_bytes: 150,
            ..config()
        };
        let log = open_with(dir.path(), cfg).await;
        // Batch i (offsets 2i, 2i+1) has timestamps 100i and 100i+1.
        for i in 0..40 {
            log.append(vec![make_batch(2, 100 * i, 30)]).await.unwrap();
        }
        assert_eq!(log.offset_for_timestamp(i64::MIN).await.unwrap(), Some(0));
        assert_eq!(log.offset_for_timestamp(0).await.unwrap(), Some(0));
        assert_eq!(log.offset_for_timestamp(1).await.unwrap(), Some(0));
        assert_eq!(log.offset_for_timestamp(2).await.unwrap(), Some(2));
        assert_eq!(log.offset_for_timestamp(1750).await.unwrap(), Some(36));
        assert_eq!(log.offset_for_timestamp(3901).await.unwrap(), Some(78));
        assert_eq!(log.offset_for_timestamp(3902).await.unwrap(), None);
        for ts in (0..4000).step_by(37) {
            let expected = (0..40).find(|i| 100 * i + 1 >= ts).map(|i| 2 * i);
            assert_eq!(
                log.offset_for_timestamp(ts).await.unwrap(),
                expected,
                "ts {ts}"
            );
        }
    });
}

#[test]
fn sync_and_close_are_safe_to_repeat() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            fsync: FsyncPolicy::Interval(std::time::Duration::from_millis(10)),
            ..LogConfig::default()
        };
        let log = open_with(dir.path(), cfg).await;
        log.sync().await.unwrap();
        log.append(vec![make_batch(2, 0, 1)]).await.unwrap();
        log.sync().await.unwrap();
        log.sync().await.unwrap();
        log.close().await.unwrap();
        log.close().await.unwrap();
        assert!(matches!(log.sync().await, Err(StorageError::Closed)));
    });
}

#[test]
fn empty_dir_can_start_at_an_initial_offset() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let log = Rc::new(
            PartitionLog::open_at(dir.path().to_path_buf(), config(), 500)
                .await
                .unwrap(),
        );
        assert_eq!((log.log_start_offset(), log.high_watermark()), (500, 500));
        let outcome = log.append(vec![make_batch(1, 0, 1)]).await.unwrap();
        assert_eq!(outcome.base_offset, 500);
        assert_eq!(
            headers(&log.read(500, 100).await.unwrap().records)[0].base_offset,
            500
        );
        assert!(matches!(
            log.read(499, 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
    });
}

#[test]
fn an_empty_append_is_rejected_without_harming_others() {
    // A malformed batch cannot reach `append` at all: it takes `ValidBatch`es only (see
    // protocol/batch.rs for the checks). An empty call is the one thing left to refuse.
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let log = open_default(&dir).await;
        let empty = {
            let log = Rc::clone(&log);
            compio::runtime::spawn(async move { log.append(Vec::new()).await })
        };
        let good = log.append(vec![make_batch(2, 0, 1)]).await.unwrap();
        assert!(matches!(
            empty.await.unwrap(),
            Err(StorageError::InvalidBatch(_))
        ));
        assert_eq!(good.base_offset, 0);
        assert_eq!(log.high_watermark(), 2);
    });
}

#[test]
fn append_takes_offsets_and_timestamps_from_the_validated_header() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let log = open_default(&dir).await;
        let batches = vec![make_batch(3, 1_000, 10), make_batch(5, 9_000, 10)];
        let sent: Vec<BatchHeader> = batches.iter().map(|b| *b.header()).collect();
        let outcome = log.append(batches).await.unwrap();
        let first_len = i64::from(sent[0].last_offset_delta) + 1;
        assert_eq!(
            (outcome.base_offset, outcome.last_offset),
            (0, first_len + i64::from(sent[1].last_offset_delta))
        );
        // What is stored is the header that was validated, with the base offset assigned.
        let stored = headers(&log.read(0, 1 << 20).await.unwrap().records);
        let expected: Vec<BatchHeader> = sent
            .iter()
            .zip([0, first_len])
            .map(|(h, base)| BatchHeader {
                base_offset: base,
                ..*h
            })
            .collect();
        assert_eq!(stored, expected);
        // The time index was fed the headers' max timestamps.
        assert_eq!(
            log.offset_for_timestamp(sent[1].max_timestamp)
                .await
                .unwrap(),
            Some(first_len)
        );
        assert_eq!(
            log.offset_for_timestamp(sent[1].max_timestamp + 1)
                .await
                .unwrap(),
            None
        );
    });
}

#[test]
fn read_range_points_at_the_bytes_read_returns() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let log = open_default(&dir).await;
        let stored = append_batches(&log, 200, 0, 300).await;
        for (offset, max_bytes) in [(0, 1 << 20), (1, 1000), (77, 5000), (150, 1), (399, 64)] {
            let read = log.read(offset, max_bytes).await.unwrap();
            let (range, hwm, start) = log.read_range(offset, max_bytes).await.unwrap();
            assert_eq!((hwm, start), (400, 0));
            let range = range.expect("data below the high watermark");
            let from = range.position as usize;
            let bytes = &stored[from..from + range.len];
            // The range starts where the whole-batch read starts, covers it, and stays
            // within max_bytes unless the first batch alone is larger.
            assert!(bytes.starts_with(&read.records), "offset {offset}");
            assert!(range.len <= max_bytes.max(read.records.len()));
            let first = BatchHeader::parse(bytes).unwrap();
            assert!(first.base_offset <= offset && offset <= first.last_offset());
        }
        let (range, _, _) = log.read_range(400, 1 << 20).await.unwrap();
        assert!(range.is_none(), "nothing at the high watermark");
        assert!(matches!(
            log.read_range(401, 10).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
    });
}

/// Copies the regular files of `from` into a new directory: the on-disk state a kill -9
/// would leave behind at this moment.
fn snapshot_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.path().join(path.file_name().unwrap())).unwrap();
    }
    to
}

#[test]
fn fsync_always_writes_zeros_ahead_which_a_crash_leaves_for_recovery_to_trim() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            fsync: FsyncPolicy::Always,
            index_interval_bytes: 200,
            ..config()
        };
        let log = open_with(dir.path(), cfg.clone()).await;
        let expected = append_batches(&log, 30, 0, 40).await;
        let size = log.size_bytes();
        assert_eq!(size, expected.len() as u64);
        // The preallocation runs beside the appends; give it a moment to land.
        let path = active_files(dir.path()).log;
        let mut file_len = 0;
        for _ in 0..200 {
            file_len = std::fs::metadata(&path).unwrap().len();
            if file_len > size {
                break;
            }
            compio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            file_len > size,
            "no zeros were written past the {size} bytes of batches"
        );
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[..size as usize], &expected[..]);
        assert!(on_disk[size as usize..].iter().all(|&b| b == 0));

        // A crash now: the zeros and index files that lag behind the log (fewer than
        // INDEX_WRITE_ENTRIES entries are pending, so none were written yet).
        let crashed = snapshot_dir(dir.path());
        assert_eq!(
            std::fs::metadata(active_files(crashed.path()).index)
                .unwrap()
                .len(),
            0
        );
        let recovered = open_with(crashed.path(), cfg.clone()).await;
        assert_eq!(recovered.high_watermark(), 60);
        assert_eq!(read_all(&recovered, 0).await, expected);
        let crashed_files = active_files(crashed.path());
        assert_eq!(std::fs::metadata(&crashed_files.log).unwrap().len(), size);
        recovered.close().await.unwrap();

        // A clean close trims the zeros and writes the pending index entries: the same
        // index recovery rebuilt.
        log.close().await.unwrap();
        let files = active_files(dir.path());
        assert_eq!(std::fs::metadata(&files.log).unwrap().len(), size);
        let index = std::fs::read(&files.index).unwrap();
        assert!(!index.is_empty());
        assert_eq!(index, std::fs::read(&crashed_files.index).unwrap());
        assert_eq!(
            std::fs::read(&files.time_index).unwrap(),
            std::fs::read(&crashed_files.time_index).unwrap()
        );
    });
}

#[test]
fn index_entries_reach_their_files_in_batches_and_at_a_roll() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            index_interval_bytes: 1,
            segment_bytes: 20_000,
            ..config()
        };
        let log = open_with(dir.path(), cfg.clone()).await;
        let index_len = |base: i64| {
            std::fs::metadata(SegmentFiles::new(dir.path(), base).index)
                .unwrap()
                .len()
        };
        // An entry per batch: 63 stay pending, the 64th writes them all.
        append_batches(&log, 63, 0, 40).await;
        assert_eq!(index_len(0), 0);
        append_batches(&log, 1, 0, 40).await;
        assert_eq!(index_len(0), 64 * 8);
        // A roll writes what is pending for the segment it leaves.
        let mut rolled = false;
        for _ in 0..200 {
            append_batches(&log, 1, 0, 40).await;
            if log_files(dir.path()).len() > 1 {
                rolled = true;
                break;
            }
        }
        assert!(rolled);
        let first_size = std::fs::metadata(SegmentFiles::new(dir.path(), 0).log)
            .unwrap()
            .len();
        let batch_len = make_batch(2, 0, 40).len() as u64;
        assert_eq!(index_len(0), first_size / batch_len * 8);
        log.close().await.unwrap();
    });
}

/// A batch of `records` records from idempotent producer `pid` at `epoch`, first sequence
/// `seq`.
fn producer_batch(pid: i64, epoch: i16, seq: i32, records: usize) -> ValidBatch {
    let mut builder = BatchBuilder::new();
    builder.set_producer(pid, epoch, seq);
    for i in 0..records {
        builder.push(
            1_000 + i as i64,
            None,
            Some(format!("{pid}-{seq}-{i}").as_bytes()),
            &[],
        );
    }
    ValidBatch::new(builder.finish(), usize::MAX).unwrap()
}

fn producer_error(result: Result<super::AppendOutcome, StorageError>) -> super::ProducerError {
    match result {
        Err(StorageError::Producer(e)) => e,
        other => panic!("expected a producer error, got {other:?}"),
    }
}

#[test]
fn idempotent_retries_are_answered_with_their_offsets_and_not_stored_twice() {
    use super::ProducerError;
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let log = open_default(&dir).await;
        let first = log.append(vec![producer_batch(7, 0, 0, 3)]).await.unwrap();
        let second = log.append(vec![producer_batch(7, 0, 3, 2)]).await.unwrap();
        assert_eq!((second.base_offset, second.last_offset), (3, 4));
        // Retries of both: the original offsets, nothing appended.
        assert_eq!(
            log.append(vec![producer_batch(7, 0, 0, 3)]).await.unwrap(),
            first
        );
        assert_eq!(
            log.append(vec![producer_batch(7, 0, 3, 2)]).await.unwrap(),
            second
        );
        assert_eq!(log.high_watermark(), 5);
        // A gap, an old epoch, a new epoch not at 0.
        assert!(matches!(
            producer_error(log.append(vec![producer_batch(7, 0, 9, 1)]).await),
            ProducerError::OutOfOrder {
                expected: 5,
                sequence: 9,
                ..
            }
        ));
        // A call of a good batch then a bad one is refused whole.
        assert!(matches!(
            producer_error(
                log.append(vec![producer_batch(7, 0, 5, 1), producer_batch(7, 0, 8, 1)])
                    .await
            ),
            ProducerError::OutOfOrder { expected: 6, .. }
        ));
        assert_eq!(log.high_watermark(), 5);
        assert!(matches!(
            producer_error(log.append(vec![producer_batch(7, 1, 5, 1)]).await),
            ProducerError::OutOfOrder { expected: 0, .. }
        ));
        let bumped = log.append(vec![producer_batch(7, 1, 0, 1)]).await.unwrap();
        assert_eq!(bumped.base_offset, 5);
        assert!(matches!(
            producer_error(log.append(vec![producer_batch(7, 0, 5, 1)]).await),
            ProducerError::InvalidEpoch {
                epoch: 0,
                current: 1,
                ..
            }
        ));
        // Batches without a producer id are never checked.
        log.append(vec![make_batch(2, 0, 5)]).await.unwrap();
        log.append(vec![make_batch(2, 0, 5)]).await.unwrap();

        // A batch and its retry queued in the same round: one copy, both answered with
        // its offsets.
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let log = Rc::clone(&log);
                compio::runtime::spawn(
                    async move { log.append(vec![producer_batch(8, 0, 0, 4)]).await },
                )
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap().unwrap());
        }
        assert_eq!(outcomes[0], outcomes[1]);
        assert_eq!((outcomes[0].base_offset, outcomes[0].last_offset), (10, 13));
        assert_eq!(log.high_watermark(), 14);
        let stored = headers(&read_all(&log, 0).await)
            .iter()
            .map(|h| (h.base_offset, h.producer_id, h.base_sequence))
            .collect::<Vec<_>>();
        assert_eq!(
            stored,
            [
                (0, 7, 0),
                (3, 7, 3),
                (5, 7, 0),
                (6, -1, -1),
                (8, -1, -1),
                (10, 8, 0)
            ]
        );
    });
}

/// Appends batch `i` (2 records, sequence `2 * i`) of producer 5 for `i` in `range`.
async fn produce_sequence(log: &Rc<PartitionLog>, range: std::ops::Range<i32>) -> Vec<i64> {
    let mut bases = Vec::new();
    for i in range {
        let outcome = log
            .append(vec![producer_batch(5, 0, 2 * i, 2)])
            .await
            .unwrap();
        bases.push(outcome.base_offset);
    }
    bases
}

/// What a reopened log answers producer 5's retry of batch `i` and its batch `next`.
async fn check_retry_and_next(dir: &Path, cfg: &LogConfig, i: i32, base: i64, next: i32) {
    let log = open_with(dir, cfg.clone()).await;
    let end = log.high_watermark();
    let retry = log
        .append(vec![producer_batch(5, 0, 2 * i, 2)])
        .await
        .unwrap();
    assert_eq!(retry.base_offset, base, "the retry of batch {i}");
    assert_eq!(log.high_watermark(), end, "a retry is not stored");
    let outcome = log
        .append(vec![producer_batch(5, 0, 2 * next, 2)])
        .await
        .unwrap();
    assert_eq!(outcome.base_offset, end);
    log.close().await.unwrap();
}

#[test]
fn producer_state_is_rebuilt_after_a_crash_and_a_restart() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            segment_bytes: 1200,
            index_interval_bytes: 200,
            ..config()
        };
        let log = open_with(dir.path(), cfg.clone()).await;
        let bases = produce_sequence(&log, 0..40).await;
        assert!(log_files(dir.path()).len() > 3, "segments rolled");
        let snapshots = |dir: &Path| {
            std::fs::read_dir(dir)
                .unwrap()
                .filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    name.to_string_lossy().ends_with(".producers")
                })
                .count()
        };
        assert_eq!(snapshots(dir.path()), 2);

        // A crash: the files as they are (snapshot at the active segment's base, batches
        // after it replayed).
        let crashed = snapshot_dir(dir.path());
        check_retry_and_next(crashed.path(), &cfg, 39, bases[39], 40).await;
        // Also a retry of a batch four back, written before the newest snapshot or not.
        let crashed = snapshot_dir(dir.path());
        check_retry_and_next(crashed.path(), &cfg, 35, bases[35], 40).await;
        // No snapshot at all: the last two segments are read.
        let crashed = snapshot_dir(dir.path());
        for entry in std::fs::read_dir(crashed.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "producers") {
                std::fs::remove_file(path).unwrap();
            }
        }
        check_retry_and_next(crashed.path(), &cfg, 39, bases[39], 40).await;
        // A damaged newest snapshot: it is removed, the older one serves.
        let crashed = snapshot_dir(dir.path());
        let mut names: Vec<PathBuf> = std::fs::read_dir(crashed.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "producers"))
            .collect();
        names.sort();
        let newest = names.pop().unwrap();
        std::fs::write(&newest, b"not a snapshot").unwrap();
        check_retry_and_next(crashed.path(), &cfg, 39, bases[39], 40).await;
        assert!(!newest.exists() || std::fs::read(&newest).unwrap() != b"not a snapshot");

        // A clean stop: the snapshot at the log end, nothing replayed.
        log.close().await.unwrap();
        let end = log.high_watermark();
        assert!(dir.path().join(format!("{end:020}.producers")).exists());
        check_retry_and_next(dir.path(), &cfg, 39, bases[39], 40).await;
    });
}

#[test]
fn a_snapshot_ahead_of_a_shortened_log_is_dropped() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let log = open_default(&dir).await;
        produce_sequence(&log, 0..3).await;
        let last_len = producer_batch(5, 0, 4, 2).len() as u64;
        log.close().await.unwrap();
        assert!(dir.path().join(format!("{:020}.producers", 6)).exists());
        // A power loss took the last batch (offsets 4..=5) but not the snapshot at 6.
        let files = active_files(dir.path());
        let len = std::fs::metadata(&files.log).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&files.log)
            .unwrap()
            .set_len(len - last_len)
            .unwrap();
        let log = open_default(&dir).await;
        assert_eq!(log.high_watermark(), 4);
        assert!(!dir.path().join(format!("{:020}.producers", 6)).exists());
        // The lost batch is sent again: appended, not mistaken for a duplicate.
        let again = log.append(vec![producer_batch(5, 0, 4, 2)]).await.unwrap();
        assert_eq!(again.base_offset, 4);
        assert_eq!(log.producer_count(), 1);
    });
}

#[test]
fn a_log_whose_directory_moved_away_leaves_no_snapshot_at_the_old_path() {
    run(async {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("0");
        let log = open_with(&dir, config()).await;
        produce_sequence(&log, 0..3).await;
        // The topic is deleted (its directory renamed away) and created again.
        std::fs::rename(&dir, root.path().join("deleted")).unwrap();
        std::fs::create_dir(&dir).unwrap();
        log.close().await.unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        // A log that stayed put leaves its snapshot at close.
        let other = root.path().join("1");
        let log = open_with(&other, config()).await;
        produce_sequence(&log, 0..3).await;
        log.close().await.unwrap();
        assert!(other.join(format!("{:020}.producers", 6)).exists());
    });
}

#[test]
fn scrub_steps_go_round_the_sealed_segments_within_their_budget() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            segment_bytes: 2000,
            index_interval_bytes: 300,
            ..config()
        };
        let log = open_with(dir.path(), cfg).await;
        append_batches(&log, 25, 0, 60).await;
        let logs = log_files(dir.path());
        assert!(logs.len() > 2, "segments rolled");
        let sealed: u64 = logs[..logs.len() - 1]
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        let sealed_batches: u64 = logs[..logs.len() - 1]
            .iter()
            .map(|p| headers(&std::fs::read(p).unwrap()).len() as u64)
            .sum();
        let biggest = logs
            .iter()
            .flat_map(|p| headers(&std::fs::read(p).unwrap()))
            .map(|h| h.total_len() as u64)
            .max()
            .unwrap();

        // One pass: every sealed batch once, every sealed byte read, no step over its
        // budget (or one batch).
        let pass = |log: Rc<PartitionLog>| async move {
            let (mut bytes, mut batches, mut corrupt) = (0u64, 0u64, Vec::new());
            loop {
                let step = log.scrub_step(500).await.unwrap();
                assert!(step.bytes <= 500u64.max(biggest), "{}", step.bytes);
                bytes += step.bytes;
                batches += step.batches;
                corrupt.extend(step.corrupt);
                if step.pass_done {
                    return (bytes, batches, corrupt);
                }
            }
        };
        let (bytes, batches, corrupt) = pass(log.clone()).await;
        assert_eq!((batches, corrupt.len()), (sealed_batches, 0));
        assert!(bytes >= sealed);

        // A flipped byte in the last batch of the first segment: found by the next pass.
        let mut data = std::fs::read(&logs[0]).unwrap();
        let last = headers(&data).last().unwrap().base_offset;
        let at = data.len() - 3;
        data[at] ^= 0x01;
        std::fs::write(&logs[0], &data).unwrap();
        let (_, batches, corrupt) = pass(log.clone()).await;
        assert_eq!(batches, sealed_batches);
        assert_eq!(corrupt.len(), 1, "{corrupt:?}");
        assert_eq!(corrupt[0].offset, last);
        assert!(corrupt[0].reason.contains("crc mismatch"), "{corrupt:?}");
    });
}

#[test]
fn reads_skip_a_damaged_index_entry_and_the_index_is_rebuilt_at_the_next_open() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            index_interval_bytes: 300,
            ..config()
        };
        // In broker runs: a clean stop spares the index from the next start's checks.
        let log = open_in_run(dir.path(), cfg.clone(), 1).await;
        append_batches(&log, 25, 0, 60).await;
        let expected = read_all(&log, 0).await;
        log.close().await.unwrap();

        let index_path = SegmentFiles::new(dir.path(), 0).index;
        let mut bytes = std::fs::read(&index_path).unwrap();
        assert!(bytes.len() >= 4 * 8, "entries: {}", bytes.len());
        // Entry 2 points one byte into its batch: still sane by recovery's checks.
        let position = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        bytes[20..24].copy_from_slice(&(position + 1).to_be_bytes());
        std::fs::write(&index_path, &bytes).unwrap();

        let log = open_in_run(dir.path(), cfg.clone(), 2).await;
        for h in headers(&expected) {
            for offset in [h.base_offset, h.last_offset()] {
                let got = log.read(offset, 1).await.unwrap().records;
                assert_eq!(headers(&got)[0].base_offset, h.base_offset, "read {offset}");
                let (range, _, _) = log.read_range(offset, 1).await.unwrap();
                let range = range.unwrap();
                let start = range.position as usize;
                assert_eq!(
                    &expected[start..start + h.total_len()],
                    &got[..h.total_len()]
                );
            }
        }
        assert!(!index_path.exists(), "removed for a rebuild");
        log.close().await.unwrap();
        let log = open_in_run(dir.path(), cfg, 3).await;
        assert_eq!(read_all(&log, 0).await, expected);
        let rebuilt = std::fs::read(&index_path).unwrap();
        assert_eq!(&rebuilt[20..24], &position.to_be_bytes());
    });
}

#[test]
fn a_fenced_batch_is_never_read_and_the_rest_of_the_partition_is() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            segment_bytes: 2000,
            index_interval_bytes: 300,
            ..config()
        };
        let log = open_with(dir.path(), cfg.clone()).await;
        let expected = append_batches(&log, 25, 0, 60).await;
        let logs = log_files(dir.path());
        assert!(logs.len() > 2, "segments rolled");
        // A flipped record byte in the third batch of the first segment, and a damaged
        // length in the second batch of the second segment.
        let mut first = std::fs::read(&logs[0]).unwrap();
        let batches: Vec<(usize, BatchHeader)> =
            batch::batches(&first).map(Result::unwrap).collect();
        let (at, bad) = batches[2];
        first[at + bad.total_len() - 3] ^= 0x01;
        std::fs::write(&logs[0], &first).unwrap();
        let mut second = std::fs::read(&logs[1]).unwrap();
        let second_batches: Vec<(usize, BatchHeader)> =
            batch::batches(&second).map(Result::unwrap).collect();
        let (at2, cut) = second_batches[1];
        second[at2 + 8..at2 + 12].copy_from_slice(&1_000_000i32.to_be_bytes());
        std::fs::write(&logs[1], &second).unwrap();
        let third_base = headers(&std::fs::read(&logs[2]).unwrap())[0].base_offset;

        let mut found = Vec::new();
        loop {
            let step = log.scrub_step(1 << 20).await.unwrap();
            found.extend(step.corrupt);
            if step.pass_done {
                break;
            }
        }
        let ranges: Vec<(i64, i64)> = found.iter().map(|c| (c.offset, c.last_offset)).collect();
        assert_eq!(
            ranges,
            [
                (bad.base_offset, bad.last_offset()),
                (cut.base_offset, third_base - 1)
            ],
            "{found:?}"
        );
        assert_eq!(log.fences().len(), 2);

        // Every fenced offset is an error naming the range, through both read paths.
        for offset in [
            bad.base_offset,
            bad.last_offset(),
            cut.base_offset,
            third_base - 1,
        ] {
            let err = log.read(offset, 1 << 20).await.unwrap_err();
            assert!(matches!(err, StorageError::Fenced { .. }), "{err}");
            let err = log.read_range(offset, 1 << 20).await.unwrap_err();
            assert!(matches!(err, StorageError::Fenced { .. }), "{err}");
        }
        // A read from before a fence ends just before it, byte for byte.
        let got = log.read(0, 1 << 20).await.unwrap().records;
        assert_eq!(&got[..], &expected[..at]);
        let (range, _, _) = log.read_range(0, 1 << 20).await.unwrap();
        assert_eq!(range.unwrap().len, at);
        let got = log
            .read(bad.last_offset() + 1, 1 << 20)
            .await
            .unwrap()
            .records;
        assert_eq!(headers(&got)[0].base_offset, bad.last_offset() + 1);
        let second_base = second_batches[0].1.base_offset;
        let got = log.read(second_base, 1 << 20).await.unwrap().records;
        assert_eq!(
            &got[..],
            &second[..at2],
            "the second segment up to its fence"
        );
        // Past the fences, everything reads as appended.
        let tail = read_all(&log, third_base).await;
        assert!(expected.ends_with(&tail) && !tail.is_empty());

        // Fences outlive a reopen; retention that deletes their segments drops them.
        log.close().await.unwrap();
        let log = open_with(dir.path(), cfg.clone()).await;
        assert_eq!(log.fences().len(), 2);
        assert!(matches!(
            log.read(bad.base_offset, 1).await,
            Err(StorageError::Fenced { .. })
        ));
        log.set_config(LogConfig {
            retention_bytes: Some(1),
            ..cfg
        });
        assert!(log.enforce_retention(0).await.unwrap() >= 2);
        assert!(log.fences().is_empty());
        assert!(!dir.path().join("fenced").exists());
    });
}

/// Flips a record byte in batch `n` of the log file `path` (a CRC mismatch) and returns that
/// batch's base offset.
fn damage_batch(path: &Path, n: usize) -> i64 {
    let mut data = std::fs::read(path).unwrap();
    let (at, header) = batch::batches(&data).nth(n).unwrap().unwrap();
    data[at + header.total_len() - 3] ^= 0x01;
    std::fs::write(path, &data).unwrap();
    header.base_offset
}

#[test]
fn a_clean_stop_is_trusted_by_the_next_run_only() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            index_interval_bytes: 300,
            ..config()
        };
        let segment = SegmentFiles::new(dir.path(), 0).log;
        let marker = dir.path().join(recovery::CLEAN_STOP_MARKER);

        // A clean stop in run 1 leaves a marker naming it; run 2 trusts it, so a batch
        // damaged before the last index entry is not looked at (the scrubber's job).
        let log = open_in_run(dir.path(), cfg.clone(), 1).await;
        append_batches(&log, 25, 0, 60).await;
        let end = log.high_watermark();
        log.close().await.unwrap();
        assert_eq!(std::fs::read(&marker).unwrap(), runs::encode(1));
        let late = damage_batch(&segment, 20);
        let log = open_in_run(dir.path(), cfg.clone(), 2).await;
        assert_eq!(
            log.high_watermark(),
            end,
            "trusted: nothing checked, nothing cut"
        );
        assert!(marker.exists(), "left in place: no start removes a marker");

        // Run 2 appends and is killed. Its start removed nothing, yet run 3 sees an
        // unclean stop (the marker names run 1) and checks, and cuts at, every batch.
        append_batches(&log, 5, 100, 60).await;
        drop(log);
        let log = open_in_run(dir.path(), cfg.clone(), 3).await;
        assert_eq!(log.high_watermark(), late, "cut at the damaged batch");

        // Closed and opened again within run 3: its own marker is removed (durably), since
        // run 4 would trust it.
        log.close().await.unwrap();
        assert_eq!(std::fs::read(&marker).unwrap(), runs::encode(3));
        let log = open_in_run(dir.path(), cfg.clone(), 3).await;
        assert!(!marker.exists(), "a marker of the running run is removed");
        drop(log);
        let earlier = damage_batch(&segment, 10);
        let log = open_in_run(dir.path(), cfg.clone(), 4).await;
        assert_eq!(log.high_watermark(), earlier, "unclean: checked and cut");
        log.close().await.unwrap();

        // Earlier versions' empty marker is honoured once, and removed.
        std::fs::remove_file(&marker).unwrap();
        let legacy = dir.path().join(recovery::LEGACY_CLEAN_STOP_MARKER);
        std::fs::write(&legacy, b"").unwrap();
        damage_batch(&segment, 2);
        let log = open_in_run(dir.path(), cfg.clone(), 9).await;
        assert_eq!(log.high_watermark(), earlier, "trusted");
        assert!(!legacy.exists(), "removed before anything is written");
        drop(log);

        // A marker torn by a power loss names no run: unclean.
        std::fs::write(&marker, [0u8; 17]).unwrap();
        let log = open_in_run(dir.path(), cfg.clone(), 10).await;
        assert!(log.high_watermark() < earlier, "checked and cut");
        log.close().await.unwrap();

        // An open that fails part-way takes the marker with it: the next try in the same
        // run must not trust it.
        let log = open_in_run(dir.path(), cfg.clone(), 11).await;
        log.close().await.unwrap();
        let blocker = SegmentFiles::new(dir.path(), 1_000_000).log;
        std::fs::create_dir(&blocker).unwrap();
        let runs = Runs {
            previous: Some(11),
            current: Some(12),
        };
        assert!(
            PartitionLog::open_in_run(dir.path().to_path_buf(), cfg.clone(), 0, runs)
                .await
                .is_err()
        );
        assert!(!marker.exists(), "removed by the failed open");
        std::fs::remove_dir(&blocker).unwrap();

        // Outside a broker's runs a log trusts no marker and leaves none.
        let log = open_with(dir.path(), cfg).await;
        log.close().await.unwrap();
        assert!(!marker.exists());
    });
}
