//! Share groups (queues) on the shards. The state of a share group on one partition (which
//! records are locked to which consumer, which are done, delivery counts) lives on the
//! shard that owns the partition, next to its log, as a [`SharePartition`]. After every
//! change that must survive a restart (acknowledgements, dead-lettering) its durable part
//! (the start offset and the done ranges above it) is appended to the partition's share
//! log, `<data>/meta/shares/<topic>-<incarnation>/<partition>`, before the consumer is
//! answered. A restarted broker replays that log: done records are never delivered again,
//! everything else that had been handed out is delivered again.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::internal_log::InternalLog;
use super::partitions::{storage_error, PartitionRef};
use crate::config::BrokerConfig;
use crate::groups::share::{
    AckKind, DeadLetter, DurableState, ShareConfig, ShareError, SharePartition,
};
use crate::local::OnceMap;
use crate::metrics::snapshot::ShareState;
use crate::protocol::api::*;
use crate::protocol::batch::{self, BatchBuilder, ValidBatch};
use crate::protocol::{ErrorCode, WireError};
use crate::shard::ShardId;
use crate::storage::catalog::TopicMeta;
use crate::storage::{PartitionLog, Runs};

/// Most bytes one share fetch returns per partition.
pub(crate) const MAX_SHARE_FETCH_BYTES: usize = 8 << 20;
/// Most bytes one share fetch returns in all: shared among its partitions.
pub(crate) const MAX_SHARE_RESPONSE_BYTES: usize = 64 << 20;
/// Most records one share fetch acquires per partition.
pub(crate) const MAX_SHARE_RECORDS: u32 = 10_000;

/// A share-partition: (group, topic incarnation, partition).
type ShareKey = (String, u64, u32);

struct ShareEntry {
    topic: String,
    part: SharePartition,
    settings: ShareSettings,
    /// Consumers and when they were last seen.
    members: HashMap<String, Instant>,
    dead_lettered: u64,
}

/// A partition's share-state log, and the durable states replayed from it that no entry
/// has taken yet.
struct ShareLog {
    log: Rc<InternalLog>,
    replayed: RefCell<HashMap<String, DurableState>>,
}

/// The share groups' state on the partitions one shard owns.
pub(crate) struct ShareCoordinator {
    shard: ShardId,
    config: Arc<BrokerConfig>,
    /// The broker's run, for the share logs' clean-stop markers.
    runs: Runs,
    entries: RefCell<HashMap<ShareKey, ShareEntry>>,
    /// Share logs by (topic incarnation, partition).
    logs: OnceMap<(u64, u32), Rc<ShareLog>>,
}

/// What the share groups need from the rest of their shard: the logs of the partitions
/// they serve, and a way to copy records to a dead-letter topic (which may have to be
/// created first, and whose partition may live on another shard). Passed in rather than
/// imported, so this module depends on no protocol front end and no call table.
pub(crate) trait ShareHost {
    /// The log of a partition this shard owns.
    fn partition_log(
        &self,
        at: &PartitionRef,
    ) -> impl Future<Output = Result<Rc<PartitionLog>, WireError>>;

    /// Partition `partition` (modulo its partition count) of dead-letter topic `topic`,
    /// created with one partition if it does not exist.
    fn dead_letter_partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> impl Future<Output = Result<PartitionRef, WireError>>;

    /// Appends one batch to a partition, wherever it lives.
    fn append(
        &self,
        at: PartitionRef,
        batch: ValidBatch,
    ) -> impl Future<Output = Result<(), WireError>>;
}

/// What a share fetch got from one partition.
pub(crate) struct ShareFetched {
    pub(crate) ranges: Vec<AcquiredRange>,
    pub(crate) records: Bytes,
    /// The partition's log end when the records were acquired (where to wait for more).
    pub(crate) log_end: i64,
}

impl ShareCoordinator {
    pub(crate) fn new(shard: ShardId, config: Arc<BrokerConfig>, runs: Runs) -> ShareCoordinator {
        ShareCoordinator {
            shard,
            config,
            runs,
            entries: RefCell::new(HashMap::new()),
            logs: OnceMap::new(),
        }
    }

    /// Acquires up to `max_records` records of `at` for `member`, answering with at most
    /// about `max_bytes`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn acquire(
        &self,
        host: &impl ShareHost,
        at: &PartitionRef,
        group: &str,
        member: &str,
        max_records: u32,
        max_bytes: usize,
        settings: &ShareSettings,
    ) -> Result<ShareFetched, WireError> {
        let log = host.partition_log(at).await?;
        let share_log = self.entry(at, group, settings, &log).await?;
        let key = key(group, at);
        let now = Instant::now();
        let (acquisition, log_end) = {
            let mut entries = self.entries.borrow_mut();
            let entry = entries.get_mut(&key).expect("created by entry()");
            entry.members.insert(member.to_string(), now);
            entry.part.expire(now);
            let (log_start, log_end) = (log.log_start_offset(), log.high_watermark());
            let acquisition = entry.part.acquire(
                member,
                max_records.clamp(1, MAX_SHARE_RECORDS) as usize,
                log_start,
                log_end,
                now,
            );
            (acquisition, log_end)
        };
        if !acquisition.dead_letters.is_empty() {
            self.dead_letter(host, at, group, &log, &acquisition.dead_letters)
                .await;
            self.persist(at, group, &share_log).await?;
        }
        let mut ranges: Vec<AcquiredRange> = acquisition
            .records
            .iter()
            .map(|a| AcquiredRange {
                first: a.first,
                last: a.last,
                delivery: a.delivery,
            })
            .collect();
        let records = match (
            ranges.iter().map(|r| r.first).min(),
            ranges.iter().map(|r| r.last).max(),
        ) {
            (Some(first), Some(last)) => {
                let (bytes, covered) = read_covering(&log, first, last, max_bytes).await?;
                if covered <= last {
                    self.give_back_uncovered(at, group, member, &mut ranges, covered);
                }
                bytes
            }
            _ => Bytes::new(),
        };
        Ok(ShareFetched {
            ranges,
            records,
            log_end,
        })
    }

    /// ShareFetched records beyond what fits in the response (offsets from `covered` on) are
    /// released at once instead of staying locked to a consumer that never sees them (they
    /// keep the delivery this acquisition counted).
    fn give_back_uncovered(
        &self,
        at: &PartitionRef,
        group: &str,
        member: &str,
        ranges: &mut Vec<AcquiredRange>,
        covered: i64,
    ) {
        let now = Instant::now();
        let mut entries = self.entries.borrow_mut();
        let Some(entry) = entries.get_mut(&key(group, at)) else {
            return;
        };
        for r in ranges.iter_mut() {
            let from = r.first.max(covered);
            if from <= r.last {
                if let Err(e) = entry
                    .part
                    .acknowledge(member, from, r.last, AckKind::Release, now)
                {
                    tracing::warn!(%group, "releasing records past the response: {e}");
                }
                r.last = from - 1;
            }
        }
        ranges.retain(|r| r.first <= r.last);
    }

    /// Applies a consumer's acknowledgements for `at` and makes them durable.
    pub(crate) async fn acknowledge(
        &self,
        host: &impl ShareHost,
        at: &PartitionRef,
        group: &str,
        member: &str,
        ranges: &[AckRange],
    ) -> Result<(), WireError> {
        let key = key(group, at);
        let now = Instant::now();
        let (applied, refused, rejected) = {
            let mut entries = self.entries.borrow_mut();
            let entry = entries.get_mut(&key).ok_or_else(|| {
                WireError::new(
                    ErrorCode::RecordNotHeld,
                    format!(
                        "share group `{group}` holds nothing of {}/{} for `{member}`",
                        at.topic.name, at.partition
                    ),
                )
            })?;
            entry.members.insert(member.to_string(), now);
            entry.part.expire(now);
            // Every range is tried on its own (one whose lock ran out does not hold back the
            // others); the first refusal is reported, and what applied is made durable.
            let mut applied = 0;
            let mut refused = None;
            for r in ranges {
                let kind = match r.kind {
                    AckType::Accept => AckKind::Accept,
                    AckType::Release => AckKind::Release,
                    AckType::Reject => AckKind::Reject,
                    AckType::Nack => AckKind::Nack {
                        delay: Duration::from_millis(u64::from(r.delay_ms)),
                    },
                };
                match entry.part.acknowledge(member, r.first, r.last, kind, now) {
                    Ok(()) => applied += 1,
                    Err(e) => {
                        refused.get_or_insert_with(|| share_error(e, at));
                    }
                }
            }
            (applied, refused, entry.part.take_dead_letters())
        };
        if applied > 0 {
            let share_log = self.share_log(at).await?;
            if !rejected.is_empty() {
                let log = host.partition_log(at).await?;
                self.dead_letter(host, at, group, &log, &rejected).await;
            }
            self.persist(at, group, &share_log).await?;
        }
        refused.map_or(Ok(()), Err)
    }

    /// Every share-partition this shard holds, as metrics count it; `log_end` gives a
    /// partition's log end. Expired locks are released first (as the timer would).
    pub(crate) fn metrics(&self, log_end: &dyn Fn(&str, u32) -> Option<i64>) -> Vec<ShareState> {
        let now = Instant::now();
        let mut states = Vec::new();
        for ((group, _, partition), entry) in self.entries.borrow_mut().iter_mut() {
            entry.part.expire(now);
            let stats = entry.part.stats();
            let end = log_end(&entry.topic, *partition).unwrap_or(stats.next_offset);
            let window = end.saturating_sub(stats.start).max(0) as u64;
            states.push(ShareState {
                group: group.clone(),
                topic: entry.topic.clone(),
                partition: *partition,
                backlog: window.saturating_sub(stats.done_in_window as u64),
                locked: stats.acquired as u64,
                dead_lettered: entry.dead_lettered,
            });
        }
        states
    }

    /// The state of every partition of `group` this shard holds.
    pub(crate) fn describe(
        &self,
        group: &str,
        logs: &dyn Fn(&str, u32) -> Option<i64>,
    ) -> (Vec<String>, Vec<SharePartitionState>) {
        let now = Instant::now();
        let mut members = Vec::new();
        let mut partitions = Vec::new();
        for ((g, _, partition), entry) in self.entries.borrow_mut().iter_mut() {
            if g != group {
                continue;
            }
            entry.part.expire(now);
            let lock = Duration::from_millis(u64::from(entry.settings.lock_ms));
            members.extend(
                entry
                    .members
                    .iter()
                    .filter(|(_, seen)| now.duration_since(**seen) <= lock)
                    .map(|(m, _)| m.clone()),
            );
            let stats = entry.part.stats();
            partitions.push(SharePartitionState {
                topic: entry.topic.clone(),
                partition: *partition,
                start: stats.start,
                next_offset: stats.next_offset,
                log_end: logs(&entry.topic, *partition).unwrap_or(-1),
                acquired: stats.acquired as u64,
                available_again: stats.available_again as u64,
                done: stats.done_in_window as u64,
                dead_lettered: entry.dead_lettered,
            });
        }
        members.sort();
        members.dedup();
        (members, partitions)
    }

    /// Makes every record `member` of `group` holds on this shard's partitions available
    /// again (its connection closed). Nothing durable changes: held records were not done.
    pub(crate) fn release_member(&self, group: &str, member: &str) {
        let mut released = 0;
        for ((g, _, _), entry) in self.entries.borrow_mut().iter_mut() {
            if g == group {
                released += entry.part.release_member(member);
                entry.members.remove(member);
            }
        }
        if released > 0 {
            tracing::debug!(%group, %member, released, "share consumer gone: records released");
        }
    }

    /// Names of the share groups with state on this shard, and their recent consumers.
    pub(crate) fn groups(&self) -> BTreeMap<String, usize> {
        let now = Instant::now();
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for ((g, _, _), entry) in self.entries.borrow().iter() {
            let lock = Duration::from_millis(u64::from(entry.settings.lock_ms));
            groups.entry(g.clone()).or_default().extend(
                entry
                    .members
                    .iter()
                    .filter(|(_, seen)| now.duration_since(**seen) <= lock)
                    .map(|(m, _)| m.clone()),
            );
        }
        groups
            .into_iter()
            .map(|(g, mut m)| {
                m.sort();
                m.dedup();
                (g, m.len())
            })
            .collect()
    }

    /// Forgets a deleted topic's share state and removes its share logs.
    pub(crate) async fn drop_topic(&self, topic: &TopicMeta) {
        self.entries
            .borrow_mut()
            .retain(|(_, id, _), _| *id != topic.id);
        let logs = self.logs.remove_where(|(id, _)| *id == topic.id);
        for share_log in logs {
            share_log.log.close().await;
        }
        let dir = self.shares_dir(&topic.name, topic.id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), "cannot remove share state: {e}");
            }
        }
    }

    fn shares_dir(&self, topic: &str, id: u64) -> std::path::PathBuf {
        self.config
            .data_dir
            .join("meta")
            .join("shares")
            .join(format!("{topic}-{id}"))
    }

    /// Closes the share logs (shutdown).
    pub(crate) async fn close(&self) {
        for share_log in self.logs.values() {
            share_log.log.close().await;
        }
    }

    /// The entry of (group, `at`), created (from the replayed state, or at the log start)
    /// on first use; `settings` replace the entry's.
    async fn entry(
        &self,
        at: &PartitionRef,
        group: &str,
        settings: &ShareSettings,
        log: &PartitionLog,
    ) -> Result<Rc<InternalLog>, WireError> {
        let share_log = self.share_log(at).await?;
        let config = share_config(settings);
        let key = key(group, at);
        let mut entries = self.entries.borrow_mut();
        match entries.get_mut(&key) {
            Some(entry) => {
                if entry.settings != *settings {
                    entry.part.set_config(config);
                    entry.settings = settings.clone();
                }
            }
            None => {
                let replayed = self
                    .logs
                    .get(&(at.topic.id, at.partition))
                    .and_then(|share_log| share_log.replayed.borrow_mut().remove(group));
                // A new share group starts at the earliest record: a queue's backlog is work
                // to do (Kafka's share groups start at the latest by default).
                let part = match replayed {
                    Some(state) => SharePartition::restore(config, &state),
                    None => SharePartition::new(config, log.log_start_offset()),
                };
                entries.insert(
                    key,
                    ShareEntry {
                        topic: at.topic.name.clone(),
                        part,
                        settings: settings.clone(),
                        members: HashMap::new(),
                        dead_lettered: 0,
                    },
                );
            }
        }
        Ok(share_log)
    }

    async fn share_log(&self, at: &PartitionRef) -> Result<Rc<InternalLog>, WireError> {
        let share_log = self
            .logs
            .get_or_open(&(at.topic.id, at.partition), || async {
                let dir = self
                    .shares_dir(&at.topic.name, at.topic.id)
                    .join(at.partition.to_string());
                let (log, live) = InternalLog::open(dir, self.config.fsync, self.runs).await?;
                let mut states = HashMap::new();
                for (group, value) in live {
                    let Ok(group) = std::str::from_utf8(&group) else {
                        continue;
                    };
                    match SharePartition::decode_state(&value) {
                        Ok(state) => {
                            states.insert(group.to_string(), state);
                        }
                        Err(e) => tracing::warn!(
                            topic = %at.topic.name,
                            partition = at.partition,
                            group,
                            "unreadable share state, starting over: {e}"
                        ),
                    }
                }
                Ok(Rc::new(ShareLog {
                    log: Rc::new(log),
                    replayed: RefCell::new(states),
                }))
            })
            .await?;
        Ok(share_log.log.clone())
    }

    /// Opens (and replays) the share-state logs of the partitions this shard owns that
    /// have any: run before the shard serves, so no request waits for a replay.
    pub(crate) async fn recover(
        &self,
        topics: &[Arc<TopicMeta>],
        owns: impl Fn(&str, u32) -> bool,
    ) -> Result<(), WireError> {
        for topic in topics {
            let dir = self.shares_dir(&topic.name, topic.id);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue; // no share group has read this topic
            };
            for entry in entries.flatten() {
                let partition = entry
                    .file_name()
                    .to_str()
                    .and_then(|p| p.parse::<u32>().ok());
                if let Some(partition) = partition {
                    if partition < topic.partitions && owns(&topic.name, partition) {
                        let at = PartitionRef {
                            topic: topic.clone(),
                            partition,
                        };
                        self.share_log(&at).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Appends the durable state of (group, `at`), and a checkpoint of every group of the
    /// partition when one is due.
    async fn persist(
        &self,
        at: &PartitionRef,
        group: &str,
        log: &InternalLog,
    ) -> Result<(), WireError> {
        let state = match self.entries.borrow().get(&key(group, at)) {
            Some(entry) => SharePartition::encode_state(&entry.part.durable_state()),
            None => return Ok(()),
        };
        let checkpoint = log
            .append(&[(group.as_bytes().to_vec(), Some(state))])
            .await?;
        if checkpoint {
            let mut live: Vec<(Vec<u8>, Option<Vec<u8>>)> = self
                .entries
                .borrow()
                .iter()
                .filter(|((_, id, p), _)| *id == at.topic.id && *p == at.partition)
                .map(|((g, _, _), e)| {
                    (
                        g.as_bytes().to_vec(),
                        Some(SharePartition::encode_state(&e.part.durable_state())),
                    )
                })
                .collect();
            // Groups replayed at start but idle since: their state must survive retention too.
            if let Some(share_log) = self.logs.get(&(at.topic.id, at.partition)) {
                live.extend(share_log.replayed.borrow().iter().map(|(g, state)| {
                    (
                        g.as_bytes().to_vec(),
                        Some(SharePartition::encode_state(state)),
                    )
                }));
            }
            tracing::debug!(shard = self.shard, topic = %at.topic.name, partition = at.partition, "share log checkpoint");
            log.checkpoint(live).await?;
        }
        Ok(())
    }

    /// Copies records to the group's dead-letter topic, with headers saying where they came
    /// from and why. Best effort: a failure is logged, the records stay archived.
    async fn dead_letter(
        &self,
        host: &impl ShareHost,
        at: &PartitionRef,
        group: &str,
        log: &PartitionLog,
        letters: &[DeadLetter],
    ) {
        let target = match self.entries.borrow_mut().get_mut(&key(group, at)) {
            Some(entry) => {
                entry.dead_lettered += letters.len() as u64;
                entry.settings.dead_letter_topic.clone()
            }
            None => return,
        };
        if target.is_empty() {
            return;
        }
        match copy_to_dead_letter_topic(host, at, group, log, letters, &target).await {
            Ok(()) => tracing::info!(
                %group,
                topic = %at.topic.name,
                partition = at.partition,
                records = letters.len(),
                dead_letter_topic = %target,
                "records dead-lettered"
            ),
            Err(e) => tracing::warn!(
                %group,
                topic = %at.topic.name,
                partition = at.partition,
                dead_letter_topic = %target,
                "dead-lettering failed, the records are archived only: {e}"
            ),
        }
    }
}

async fn copy_to_dead_letter_topic(
    host: &impl ShareHost,
    at: &PartitionRef,
    group: &str,
    log: &PartitionLog,
    letters: &[DeadLetter],
    target: &str,
) -> Result<(), WireError> {
    let mut builder = BatchBuilder::new();
    for letter in letters {
        let read = log
            .read(letter.offset, MAX_SHARE_FETCH_BYTES)
            .await
            .map_err(storage_error)?;
        let record = find_record(&read.records, letter.offset)?;
        let partition = at.partition.to_string();
        let offset = letter.offset.to_string();
        let deliveries = letter.deliveries.to_string();
        let mut headers: Vec<(&[u8], Option<&[u8]>)> = record
            .headers
            .iter()
            .map(|(k, v)| (&k[..], v.as_deref()))
            .collect();
        headers.extend([
            (&b"eventflow.dlq.reason"[..], Some(letter.reason.as_bytes())),
            (b"eventflow.dlq.group", Some(group.as_bytes())),
            (b"eventflow.dlq.topic", Some(at.topic.name.as_bytes())),
            (b"eventflow.dlq.partition", Some(partition.as_bytes())),
            (b"eventflow.dlq.offset", Some(offset.as_bytes())),
            (b"eventflow.dlq.deliveries", Some(deliveries.as_bytes())),
        ]);
        builder.push(
            record.timestamp,
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
        );
    }
    let dlq = host.dead_letter_partition(target, at.partition).await?;
    // Built here from records read back, so a failure is the broker's own bug.
    let batch = ValidBatch::new(builder.finish(), usize::MAX).map_err(|e| {
        tracing::error!("a dead-letter batch failed its own validation: {e}");
        WireError::new(ErrorCode::Unknown, format!("dead-letter batch: {e}"))
    })?;
    host.append(dlq, batch).await
}

/// Whole batches from the one holding `first` through the one holding `last` (or about
/// `max_bytes`), read in steps: acquired records usually span a few batches, and reading
/// a large fixed budget would copy far more than is sent. One step usually covers them,
/// and its bytes are returned as read; only a span over several steps is joined.
/// Returns the bytes and the first offset they do not cover.
async fn read_covering(
    log: &PartitionLog,
    first: i64,
    last: i64,
    max_bytes: usize,
) -> Result<(Bytes, i64), WireError> {
    const STEP: usize = 256 << 10;
    let mut pieces: Vec<Bytes> = Vec::new();
    let mut size = 0;
    let mut offset = first;
    while offset <= last && size < max_bytes {
        // Never past the budget (the first batch comes whole even if it is larger).
        let read = log
            .read(offset, STEP.min(max_bytes - size))
            .await
            .map_err(storage_error)?;
        let mut next = offset;
        let mut end = 0;
        for b in batch::batches(&read.records) {
            let Ok((start, header)) = b else { break };
            if header.base_offset > last {
                break;
            }
            end = start + header.total_len();
            next = header.last_offset() + 1;
        }
        if next == offset {
            break;
        }
        size += end;
        pieces.push(read.records.slice(..end));
        offset = next;
    }
    let bytes = match pieces.len() {
        0 => Bytes::new(),
        1 => pieces.pop().expect("one piece"),
        _ => pieces.concat().into(),
    };
    Ok((bytes, offset))
}

/// An owned copy of one record.
struct OwnedRecord {
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

fn find_record(batches: &Bytes, offset: i64) -> Result<OwnedRecord, WireError> {
    let corrupt = |e: batch::BatchError| WireError::new(ErrorCode::CorruptBatch, e.to_string());
    for b in batch::batches(batches) {
        let (start, header) = b.map_err(corrupt)?;
        let b = &batches[start..start + header.total_len()];
        for r in batch::records(b).map_err(corrupt)? {
            let r = r.map_err(corrupt)?;
            if r.offset == offset {
                return Ok(OwnedRecord {
                    timestamp: r.timestamp,
                    key: r.key.map(<[u8]>::to_vec),
                    value: r.value.map(<[u8]>::to_vec),
                    headers: r
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                        .collect(),
                });
            }
        }
    }
    Err(WireError::new(
        ErrorCode::OffsetOutOfRange,
        format!("record {offset} is no longer in the log"),
    ))
}

fn key(group: &str, at: &PartitionRef) -> ShareKey {
    (group.to_string(), at.topic.id, at.partition)
}

fn share_config(s: &ShareSettings) -> ShareConfig {
    ShareConfig {
        lock_duration: Duration::from_millis(u64::from(s.lock_ms.max(1))),
        max_deliveries: s.max_deliveries.max(1),
        ..ShareConfig::default()
    }
}

fn share_error(e: ShareError, at: &PartitionRef) -> WireError {
    let code = match e {
        ShareError::NotHeld { .. } => ErrorCode::RecordNotHeld,
        _ => ErrorCode::InvalidRequest,
    };
    WireError::new(code, format!("{}/{}: {e}", at.topic.name, at.partition))
}
