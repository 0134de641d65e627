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
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::context::{PartitionRef, ShardContext, ShardOp, ShardReply};
use super::internal_log::InternalLog;
use crate::coordinator::share::{
    AckKind, DeadLetter, DurableState, ShareConfig, ShareError, SharePartition,
};
use crate::local::Notify;
use crate::protocol::api::*;
use crate::protocol::batch::{self, BatchBuilder, ValidBatch};
use crate::protocol::{ErrorCode, WireError};
use crate::storage::catalog::TopicMeta;
use crate::storage::PartitionLog;

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

enum ShareLog {
    Loading(Rc<Notify>),
    /// The log, and the durable states replayed from it that no entry has taken yet.
    Loaded(Rc<InternalLog>, HashMap<String, DurableState>),
}

/// The share groups' state on the partitions one shard owns.
pub(crate) struct Shares {
    entries: RefCell<HashMap<ShareKey, ShareEntry>>,
    /// Share logs by (topic incarnation, partition).
    logs: RefCell<HashMap<(u64, u32), ShareLog>>,
}

/// What a share fetch got from one partition.
pub(crate) struct Acquired {
    pub(crate) ranges: Vec<AcquiredRange>,
    pub(crate) records: Bytes,
    /// The partition's log end when the records were acquired (where to wait for more).
    pub(crate) log_end: i64,
}

impl Shares {
    pub(crate) fn new() -> Shares {
        Shares {
            entries: RefCell::new(HashMap::new()),
            logs: RefCell::new(HashMap::new()),
        }
    }

    /// Acquires up to `max_records` records of `at` for `member`, answering with at most
    /// about `max_bytes`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn acquire(
        &self,
        ctx: &Rc<ShardContext>,
        at: &PartitionRef,
        group: &str,
        member: &str,
        max_records: u32,
        max_bytes: usize,
        settings: &ShareSettings,
    ) -> Result<Acquired, WireError> {
        let log = ctx.partition_log(at).await?;
        let share_log = self.entry(ctx, at, group, settings, &log).await?;
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
            self.dead_letter(ctx, at, group, &log, &acquisition.dead_letters)
                .await;
            self.persist(ctx, at, group, &share_log).await?;
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
        Ok(Acquired {
            ranges,
            records,
            log_end,
        })
    }

    /// Acquired records beyond what fits in the response (offsets from `covered` on) are
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
        ctx: &Rc<ShardContext>,
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
            let share_log = self.share_log(ctx, at).await?;
            if !rejected.is_empty() {
                let log = ctx.partition_log(at).await?;
                self.dead_letter(ctx, at, group, &log, &rejected).await;
            }
            self.persist(ctx, at, group, &share_log).await?;
        }
        refused.map_or(Ok(()), Err)
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
    pub(crate) async fn drop_topic(&self, ctx: &ShardContext, topic: &TopicMeta) {
        self.entries
            .borrow_mut()
            .retain(|(_, id, _), _| *id != topic.id);
        let logs: Vec<Rc<InternalLog>> = {
            let mut logs = self.logs.borrow_mut();
            let keys: Vec<(u64, u32)> = logs
                .keys()
                .filter(|(id, _)| *id == topic.id)
                .copied()
                .collect();
            keys.into_iter()
                .filter_map(|k| match logs.remove(&k) {
                    Some(ShareLog::Loaded(log, _)) => Some(log),
                    _ => None,
                })
                .collect()
        };
        for log in logs {
            log.close().await;
        }
        let dir = shares_dir(ctx, &topic.name, topic.id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), "cannot remove share state: {e}");
            }
        }
    }

    /// Closes the share logs (shutdown).
    pub(crate) async fn close(&self) {
        let logs: Vec<Rc<InternalLog>> = self
            .logs
            .borrow()
            .values()
            .filter_map(|l| match l {
                ShareLog::Loaded(log, _) => Some(log.clone()),
                ShareLog::Loading(_) => None,
            })
            .collect();
        for log in logs {
            log.close().await;
        }
    }

    /// The entry of (group, `at`), created (from the replayed state, or at the log start)
    /// on first use; `settings` replace the entry's.
    async fn entry(
        &self,
        ctx: &Rc<ShardContext>,
        at: &PartitionRef,
        group: &str,
        settings: &ShareSettings,
        log: &PartitionLog,
    ) -> Result<Rc<InternalLog>, WireError> {
        let share_log = self.share_log(ctx, at).await?;
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
                let replayed = match self.logs.borrow_mut().get_mut(&(at.topic.id, at.partition)) {
                    Some(ShareLog::Loaded(_, states)) => states.remove(group),
                    _ => None,
                };
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

    async fn share_log(
        &self,
        ctx: &Rc<ShardContext>,
        at: &PartitionRef,
    ) -> Result<Rc<InternalLog>, WireError> {
        let id = (at.topic.id, at.partition);
        loop {
            let waiting = match self.logs.borrow().get(&id) {
                Some(ShareLog::Loaded(log, _)) => return Ok(log.clone()),
                Some(ShareLog::Loading(n)) => Some(n.clone()),
                None => None,
            };
            match waiting {
                Some(n) => {
                    let loaded = n.notified();
                    if matches!(self.logs.borrow().get(&id), Some(ShareLog::Loading(_))) {
                        loaded.await;
                    }
                }
                None => break,
            }
        }
        let notify = Rc::new(Notify::new());
        self.logs
            .borrow_mut()
            .insert(id, ShareLog::Loading(notify.clone()));
        let dir = shares_dir(ctx, &at.topic.name, at.topic.id).join(at.partition.to_string());
        let result = match InternalLog::open(dir, ctx.config.fsync).await {
            Ok((log, live)) => {
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
                let log = Rc::new(log);
                self.logs
                    .borrow_mut()
                    .insert(id, ShareLog::Loaded(log.clone(), states));
                Ok(log)
            }
            Err(e) => {
                self.logs.borrow_mut().remove(&id);
                Err(e)
            }
        };
        notify.notify_all();
        result
    }

    /// Appends the durable state of (group, `at`), and a checkpoint of every group of the
    /// partition when one is due.
    async fn persist(
        &self,
        ctx: &Rc<ShardContext>,
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
            if let Some(ShareLog::Loaded(_, idle)) =
                self.logs.borrow().get(&(at.topic.id, at.partition))
            {
                live.extend(idle.iter().map(|(g, state)| {
                    (
                        g.as_bytes().to_vec(),
                        Some(SharePartition::encode_state(state)),
                    )
                }));
            }
            tracing::debug!(shard = ctx.id, topic = %at.topic.name, partition = at.partition, "share log checkpoint");
            log.checkpoint(live).await?;
        }
        Ok(())
    }

    /// Copies records to the group's dead-letter topic, with headers saying where they came
    /// from and why. Best effort: a failure is logged, the records stay archived.
    async fn dead_letter(
        &self,
        ctx: &Rc<ShardContext>,
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
        // Boxed: appending goes back through `ShardContext::call`, which may run this very
        // shard's `execute` inline (an async recursion).
        let copy = Box::pin(copy_to_dead_letter_topic(
            ctx, at, group, log, letters, &target,
        ));
        match copy.await {
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
    ctx: &Rc<ShardContext>,
    at: &PartitionRef,
    group: &str,
    log: &PartitionLog,
    letters: &[DeadLetter],
    target: &str,
) -> Result<(), WireError> {
    let meta = match ctx.catalog.snapshot().topics.get(target) {
        Some(meta) => meta.clone(),
        None => {
            super::handlers::create_topic(
                ctx,
                CreateTopicRequest {
                    name: target.to_string(),
                    partitions: 1,
                    configs: Vec::new(),
                },
            )
            .await
            .or_else(|e| match e.code {
                ErrorCode::TopicAlreadyExists => Ok(Response::CreateTopic),
                _ => Err(e),
            })?;
            ctx.catalog
                .snapshot()
                .topics
                .get(target)
                .cloned()
                .ok_or_else(|| WireError::new(ErrorCode::UnknownTopicOrPartition, target))?
        }
    };
    let mut builder = BatchBuilder::new();
    for letter in letters {
        let read = log
            .read(letter.offset, MAX_SHARE_FETCH_BYTES)
            .await
            .map_err(|e| WireError::new(ErrorCode::StorageError, e.to_string()))?;
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
    let dlq = PartitionRef {
        partition: at.partition % meta.partitions,
        topic: meta,
    };
    let owner = ctx.owner(&dlq.topic.name, dlq.partition);
    let batch = ValidBatch::new(builder.finish(), usize::MAX)
        .map_err(|e| WireError::new(ErrorCode::Unknown, format!("dead-letter batch: {e}")))?;
    match ctx
        .call(
            owner,
            ShardOp::Append {
                at: dlq,
                batches: vec![batch],
            },
        )
        .await
    {
        ShardReply::Appended(r) => r.map(drop),
        _ => Err(WireError::new(
            ErrorCode::Unknown,
            "unexpected reply to append",
        )),
    }
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
    let storage =
        |e: crate::storage::StorageError| WireError::new(ErrorCode::StorageError, e.to_string());
    let mut pieces: Vec<Bytes> = Vec::new();
    let mut size = 0;
    let mut offset = first;
    while offset <= last && size < max_bytes {
        // Never past the budget (the first batch comes whole even if it is larger).
        let read = log
            .read(offset, STEP.min(max_bytes - size))
            .await
            .map_err(storage)?;
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

fn shares_dir(ctx: &ShardContext, topic: &str, id: u64) -> std::path::PathBuf {
    ctx.config
        .data_dir
        .join("meta")
        .join("shares")
        .join(format!("{topic}-{id}"))
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
