//! Fetch, with Kafka's fetch sessions (KIP-227). Every read is the native fetch
//! (`native::fetch`: routing to owners, the long-poll, splicing from files this shard
//! owns); this file decides which partitions it reads and which of them the response names.
//!
//! - Session id 0 or any id with epoch -1: a full fetch without a session (the id, if any,
//!   is closed first).
//! - Epoch 0: a full fetch that closes the named session (if any) and opens a new one for
//!   its partitions when the shard has room; the response carries the new id.
//! - Epoch > 0: an incremental fetch in that session. It must carry the epoch the session
//!   expects (else INVALID_FETCH_SESSION_EPOCH), in a session this shard holds (else
//!   FETCH_SESSION_ID_NOT_FOUND). It reads every partition of the session from the
//!   position the client last sent, long-polling over all of them, and the response names
//!   only those with something new. The session cache is `server/fetch_sessions.rs`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::FetchRequest;

use super::data::{partition_index, KafkaReply};
use crate::auth::acl::{Operation, ResourceType};
use crate::protocol::api::{self as native_api, TopicEntry};
use crate::protocol::kafka::error::{
    error_code, FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH, NONE,
    TOPIC_AUTHORIZATION_FAILED,
};
use crate::protocol::kafka::fetch::{
    encode_fetch_response, FetchResponseData, PartitionData, Records, TopicData,
};
use crate::server::authorizer::Caller;
use crate::server::context::ShardContext;
use crate::server::fetch_sessions::{
    creator, Begun, FetchPosition, PartitionState, SessionError, TopicPartition, FINAL_EPOCH,
    INITIAL_EPOCH,
};
use crate::server::native::{self, MAX_FETCH_WAIT};
use crate::server::quotas::Metering;
use crate::storage::FileRange;

/// The request-level limits of a fetch.
struct Limits {
    max_wait_ms: u32,
    min_bytes: u32,
    max_bytes: u32,
}

/// One partition as read: its response entry and, when this shard owns it, the file range
/// its records are spliced from.
struct ReadPartition {
    topic: String,
    data: PartitionData,
    file: Option<FileRange>,
}

impl ReadPartition {
    /// What the session records of this read; `None` when the partition was not read (the
    /// response was already full: the native fetch gives it watermark -1 and no error).
    fn state(&self) -> Option<PartitionState> {
        let d = &self.data;
        if d.error == NONE && d.high_watermark < 0 {
            return None;
        }
        let has_records = match &d.records {
            Records::Shared(b) => !b.is_empty(),
            Records::External(n) => *n > 0,
        };
        Some(PartitionState {
            error: d.error,
            high_watermark: d.high_watermark,
            log_start_offset: d.log_start_offset,
            has_records,
        })
    }
}

pub(super) async fn fetch(
    ctx: &Rc<ShardContext>,
    r: FetchRequest,
    version: i16,
    correlation_id: i32,
    caller: &Caller,
    metering: Option<&Metering>,
) -> KafkaReply {
    let limits = Limits {
        max_wait_ms: u32::try_from(r.max_wait_ms).unwrap_or(0),
        min_bytes: u32::try_from(r.min_bytes).unwrap_or(0),
        // (v3+; older requests are not accepted.)
        max_bytes: u32::try_from(r.max_bytes).unwrap_or(0),
    };
    let listed: Vec<(TopicPartition, FetchPosition)> = r
        .topics
        .into_iter()
        .flat_map(|t| {
            let topic = t.topic.0.to_string();
            t.partitions.into_iter().map(move |p| {
                let key = TopicPartition {
                    topic: topic.clone(),
                    partition: p.partition,
                };
                let position = FetchPosition {
                    offset: p.fetch_offset,
                    max_bytes: u32::try_from(p.partition_max_bytes).unwrap_or(0),
                };
                (key, position)
            })
        })
        .collect();
    let reply = |error: i16, session_id: i32, read: Vec<ReadPartition>| {
        let throttle_time_ms = metering.map_or(0, |m| {
            let bytes: usize = read.iter().map(|p| p.data.records.len()).sum();
            m.fetched(&ctx.quota_meters, bytes as u64);
            m.finish(&ctx.quota_meters)
        });
        encode(
            correlation_id,
            version,
            FetchResponseData {
                throttle_time_ms,
                error,
                session_id,
                topics: Vec::new(),
            },
            read,
        )
    };
    let (id, epoch) = (r.session_id, r.session_epoch);
    if epoch == INITIAL_EPOCH || epoch == FINAL_EPOCH {
        if id != 0 && ctx.fetch_sessions.borrow_mut().close(id) {
            tracing::debug!(session = id, "fetch session closed");
        }
        let read = read(ctx, &limits, &listed, caller).await;
        let mut session = 0;
        if epoch == INITIAL_EPOCH {
            let kept = listed
                .into_iter()
                .zip(&read)
                .map(|((key, position), p)| (key, position, p.state()));
            let mut sessions = ctx.fetch_sessions.borrow_mut();
            match sessions.create(Instant::now(), kept) {
                Some(new) => {
                    session = new;
                    tracing::debug!(
                        session,
                        partitions = read.len(),
                        shard_sessions = sessions.len(),
                        shard_partitions = sessions.cached_partitions(),
                        "fetch session created"
                    );
                }
                None => tracing::debug!(
                    partitions = read.len(),
                    "fetch without a session: no room on this shard"
                ),
            }
        }
        return reply(NONE, session, read);
    }

    // An incremental fetch.
    let forgotten = r
        .forgotten_topics_data
        .into_iter()
        .flat_map(|t| {
            let topic = t.topic.0.to_string();
            t.partitions
                .into_iter()
                .map(move |partition| TopicPartition {
                    topic: topic.clone(),
                    partition,
                })
        })
        .collect();
    let now = Instant::now();
    let busy_until = now + Duration::from_millis(u64::from(limits.max_wait_ms)).min(MAX_FETCH_WAIT);
    let begun = ctx.fetch_sessions.borrow_mut().begin(
        id,
        epoch,
        now,
        busy_until,
        listed.clone(),
        forgotten,
    );
    let (next, partitions) = match begun {
        Err(e) => {
            session_error(ctx, id, epoch, e);
            return reply(session_error_code(e), 0, Vec::new());
        }
        Ok(Begun::Closed) => {
            tracing::debug!(session = id, "fetch session closed: answered without it");
            let read = read(ctx, &limits, &listed, caller).await;
            return reply(NONE, 0, read);
        }
        Ok(Begun::Fetch { epoch, partitions }) => (epoch, partitions),
    };
    let read = read(ctx, &limits, &partitions, caller).await;
    let finished = ctx.fetch_sessions.borrow_mut().finish(
        id,
        next,
        Instant::now(),
        partitions
            .iter()
            .map(|(key, _)| key)
            .zip(read.iter().map(ReadPartition::state)),
    );
    match finished {
        Ok(include) => {
            let read: Vec<ReadPartition> = read
                .into_iter()
                .zip(include)
                .filter_map(|(p, keep)| keep.then_some(p))
                .collect();
            tracing::debug!(
                session = id,
                epoch,
                partitions = partitions.len(),
                returned = read.len(),
                "incremental fetch"
            );
            reply(NONE, id, read)
        }
        Err(e) => {
            // Closed, evicted or moved on by another request while this one read.
            session_error(ctx, id, epoch, e);
            let session = if matches!(e, SessionError::InvalidEpoch { .. }) {
                id
            } else {
                0
            };
            reply(session_error_code(e), session, Vec::new())
        }
    }
}

fn session_error_code(e: SessionError) -> i16 {
    match e {
        SessionError::NotFound => FETCH_SESSION_ID_NOT_FOUND,
        SessionError::InvalidEpoch { .. } => INVALID_FETCH_SESSION_EPOCH,
    }
}

fn session_error(ctx: &ShardContext, id: i32, epoch: i32, e: SessionError) {
    match e {
        SessionError::NotFound => match creator(id, ctx.shard_count) {
            Some(shard) if shard != ctx.id => tracing::debug!(
                session = id,
                shard,
                "fetch session of another shard (the client reconnected): not found here"
            ),
            _ => tracing::debug!(session = id, "fetch session not found"),
        },
        SessionError::InvalidEpoch { expected } => {
            tracing::debug!(
                session = id,
                epoch,
                expected,
                "fetch session epoch mismatch"
            );
        }
    }
}

/// Reads `partitions` with the native fetch (long-poll included), in their order: the
/// result has one entry per partition, aligned with them.
/// Reads `partitions`, in order; those of topics `caller` may not read are not read but
/// answered TOPIC_AUTHORIZATION_FAILED.
async fn read(
    ctx: &Rc<ShardContext>,
    limits: &Limits,
    partitions: &[(TopicPartition, FetchPosition)],
    caller: &Caller,
) -> Vec<ReadPartition> {
    let may = |key: &TopicPartition| caller.may(Operation::Read, ResourceType::Topic, &key.topic);
    if partitions.iter().all(|(key, _)| may(key)) {
        return read_all(ctx, limits, partitions).await;
    }
    let allowed: Vec<(TopicPartition, FetchPosition)> = partitions
        .iter()
        .filter(|(key, _)| may(key))
        .cloned()
        .collect();
    let mut read = read_all(ctx, limits, &allowed).await.into_iter();
    partitions
        .iter()
        .filter_map(|(key, _)| {
            if may(key) {
                return read.next();
            }
            Some(ReadPartition {
                topic: key.topic.clone(),
                data: PartitionData {
                    index: key.partition,
                    error: TOPIC_AUTHORIZATION_FAILED,
                    high_watermark: -1,
                    last_stable_offset: -1,
                    log_start_offset: -1,
                    records: Records::Shared(Bytes::new()),
                },
                file: None,
            })
        })
        .collect()
}

async fn read_all(
    ctx: &Rc<ShardContext>,
    limits: &Limits,
    partitions: &[(TopicPartition, FetchPosition)],
) -> Vec<ReadPartition> {
    // One topic entry per run of partitions of the same topic, so the order is kept.
    let mut topics: Vec<TopicEntry<native_api::FetchPartition>> = Vec::new();
    for (key, position) in partitions {
        let partition = native_api::FetchPartition {
            partition: partition_index(key.partition),
            offset: position.offset,
            max_bytes: position.max_bytes,
        };
        match topics.last_mut() {
            Some(last) if last.topic == key.topic => last.partitions.push(partition),
            _ => topics.push(TopicEntry {
                topic: key.topic.clone(),
                partitions: vec![partition],
            }),
        }
    }
    let request = native_api::FetchRequest {
        max_wait_ms: limits.max_wait_ms,
        min_bytes: limits.min_bytes,
        max_bytes: limits.max_bytes,
        topics,
    };
    let (response, files) = native::fetch(ctx, request).await;
    // The ranges are in partition-entry order, like the partitions, which come back one
    // entry per requested partition, in order.
    let mut files = files.into_iter();
    response
        .topics
        .into_iter()
        .flat_map(|t| t.partitions)
        .zip(partitions)
        .map(|(p, (key, _))| {
            let file = files.next().flatten();
            let records = match &file {
                Some(range) => Records::External(range.len),
                None => Records::Shared(p.records),
            };
            ReadPartition {
                topic: key.topic.clone(),
                data: PartitionData {
                    // As the client named it (a negative index too).
                    index: key.partition,
                    error: error_code(p.error),
                    high_watermark: p.high_watermark,
                    // No transactions: everything below the high watermark is stable.
                    last_stable_offset: p.high_watermark,
                    log_start_offset: p.log_start_offset,
                    records,
                },
                file,
            }
        })
        .collect()
}

/// Encodes a response naming `read` (`response` gives everything but the topics), grouped
/// into topics by runs of the same topic.
fn encode(
    correlation_id: i32,
    version: i16,
    mut response: FetchResponseData,
    read: Vec<ReadPartition>,
) -> KafkaReply {
    let mut topics: Vec<TopicData> = Vec::new();
    let mut files = Vec::new();
    for p in read {
        files.extend(p.file);
        match topics.last_mut() {
            Some(last) if last.name == p.topic => last.partitions.push(p.data),
            _ => topics.push(TopicData {
                name: p.topic,
                partitions: vec![p.data],
            }),
        }
    }
    response.topics = topics;
    KafkaReply {
        parts: encode_fetch_response(correlation_id, version, &response),
        files,
    }
}
