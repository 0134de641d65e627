//! The data path's requests: produce, fetch (with long-poll) and list offsets.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::future::{select_all, Either};

use crate::metrics::shard as metrics;
use crate::protocol::api::*;
use crate::protocol::batch::{BatchError, ValidBatch};
use crate::protocol::{ErrorCode, WireError};
use crate::server::calls::{read_range, Append, ListOffset, Outcomes, Read, Routed, WaitForData};
use crate::server::context::{first, ShardContext};
use crate::server::partitions::PartitionRef;
use crate::server::topics;
use crate::storage::FileRange;

/// Largest fetch response, whatever the client asks for: bounds the memory one request can
/// pin.
pub const MAX_FETCH_BYTES: usize = 64 << 20;
/// Longest long-poll a fetch may ask for.
pub const MAX_FETCH_WAIT: Duration = Duration::from_secs(60);

/// What a handler answers.
pub(crate) enum Reply {
    /// A response encoded as it is.
    Plain(Response),
    /// A fetch response; entry `i` of the ranges (partition entries in encoding order), when
    /// set, replaces that partition's records with bytes spliced from the file.
    Fetch(FetchResponse, Vec<Option<FileRange>>),
}

/// Splits a produce request's records into single batches and validates each (header and
/// CRC32C). The batches stay handles into the request buffer.
pub(crate) fn split_batches(
    mut records: BytesMut,
    max_batch_bytes: usize,
) -> Result<Vec<ValidBatch>, WireError> {
    let mut batches = Vec::new();
    while !records.is_empty() {
        batches.push(ValidBatch::split_from(&mut records, max_batch_bytes).map_err(batch_error)?);
    }
    if batches.is_empty() {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            "a produce partition entry carries no record batch",
        ));
    }
    Ok(batches)
}

fn batch_error(e: BatchError) -> WireError {
    let code = match e {
        BatchError::TooLarge { .. } => ErrorCode::BatchTooLarge,
        _ => ErrorCode::CorruptBatch,
    };
    WireError::new(code, e.to_string())
}

pub(crate) async fn produce(ctx: &Rc<ShardContext>, r: ProduceRequest) -> ProduceResponse {
    // Every partition's append is started in request order before any is awaited, so the
    // batches of pipelined requests reach each partition in the order they were sent.
    let mut shape = Vec::with_capacity(r.topics.len());
    let mut appends = Routed::default();
    for topic in r.topics {
        let mut parts = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let mut bytes = 0u64;
            appends.push(ctx, |ctx| {
                let at = topics::lookup(ctx, &topic.topic, p.partition)?;
                let batches = split_batches(p.records, ctx.config.max_batch_bytes)?;
                bytes = batches.iter().map(|b| b.len() as u64).sum();
                Ok(Append { at, batches })
            });
            parts.push((p.partition, bytes));
        }
        shape.push((topic.topic, parts));
    }
    // One envelope per owning shard; each runs its appends in request order.
    let Routed { calls, early } = appends;
    let all = ctx.call_grouped(calls);
    let replies = if r.timeout_ms == 0 {
        all.await
    } else {
        let limit = Duration::from_millis(u64::from(r.timeout_ms));
        match first(all, compio::time::sleep(limit)).await {
            Either::Left(replies) => replies,
            // The appends go on and may still land; the producer learns it waited too long
            // (as with Kafka's request timeout, a retry may duplicate).
            Either::Right(()) => (0..early.iter().filter(|e| e.is_none()).count())
                .map(|_| {
                    Ok(Err(WireError::new(
                        ErrorCode::Timeout,
                        format!("not acknowledged within {} ms", r.timeout_ms),
                    )))
                })
                .collect(),
        }
    };
    let mut outcomes = Outcomes::new(early, replies);
    let per_partition = ctx.config.metrics_partition_labels;
    let topics = shape
        .into_iter()
        .map(|(topic, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(partition, bytes)| match outcomes.next() {
                    Ok(a) => {
                        let records = (a.last_offset - a.base_offset + 1).max(0) as u64;
                        let labelled = per_partition.then_some(partition);
                        metrics::produced(&topic, labelled, records, bytes);
                        ProducePartitionResponse {
                            partition,
                            error: ErrorCode::None,
                            message: String::new(),
                            base_offset: a.base_offset,
                            last_offset: a.last_offset,
                        }
                    }
                    Err(e) => ProducePartitionResponse {
                        partition,
                        error: e.code,
                        message: e.message,
                        base_offset: -1,
                        last_offset: -1,
                    },
                })
                .collect();
            ProduceTopicResponse { topic, partitions }
        })
        .collect();
    ProduceResponse { topics }
}

struct FetchSlot {
    topic_index: usize,
    partition: u32,
    offset: i64,
    max_bytes: usize,
    at: Result<PartitionRef, WireError>,
}

/// One pass over the requested partitions.
struct FetchPass {
    parts: Vec<FetchPartitionResponse>,
    /// For partitions this shard owns: the file range the writer sends with splice instead
    /// of `records`.
    files: Vec<Option<FileRange>>,
    /// Bytes readable from each slot's offset when it was read (what a long-poll waits to
    /// see grow).
    available: Vec<u64>,
    total: usize,
}

/// Reads every requested partition once, in order, within the response's byte budget.
async fn read_all(ctx: &Rc<ShardContext>, slots: &[FetchSlot], max_bytes: usize) -> FetchPass {
    let mut out = Vec::with_capacity(slots.len());
    let mut files = Vec::with_capacity(slots.len());
    let mut available = Vec::with_capacity(slots.len());
    let mut total = 0usize;
    for slot in slots {
        let mut file = None;
        let budget = slot.max_bytes.min(max_bytes.saturating_sub(total));
        let result = match &slot.at {
            Err(e) => Err(e.clone()),
            // The response is full: later partitions get nothing this time (a first
            // non-empty partition always gets at least one batch).
            // (high watermark -1: not read this time).
            Ok(_) if budget == 0 && total > 0 => Ok((Bytes::new(), -1, -1, 0)),
            // Owned here: locate the bytes; the connection's writer splices them from the
            // file to the socket.
            Ok(at) if ctx.owner_of(at) == ctx.id => read_range(ctx, at, slot.offset, budget.max(1))
                .await
                .map(|(range, hwm, start, available)| {
                    file = range;
                    (Bytes::new(), hwm, start, available)
                }),
            Ok(at) => {
                let call = Read {
                    at: at.clone(),
                    offset: slot.offset,
                    max_bytes: budget.max(1),
                };
                ctx.call_owner(call)
                    .await
                    .and_then(|r| r)
                    .map(|(o, available)| {
                        (o.records, o.high_watermark, o.log_start_offset, available)
                    })
            }
        };
        available.push(result.as_ref().map_or(0, |r| r.3));
        total += file.as_ref().map_or(0, |f| f.len);
        files.push(file);
        out.push(match result {
            Ok((records, hwm, start, _)) => {
                total += records.len();
                FetchPartitionResponse {
                    partition: slot.partition,
                    error: ErrorCode::None,
                    message: String::new(),
                    high_watermark: hwm,
                    log_start_offset: start,
                    records,
                }
            }
            Err(e) => FetchPartitionResponse {
                partition: slot.partition,
                error: e.code,
                message: e.message,
                high_watermark: -1,
                log_start_offset: -1,
                records: Bytes::new(),
            },
        });
    }
    FetchPass {
        parts: out,
        files,
        available,
        total,
    }
}

/// A fetch's response, and for each partition entry (in encoding order) the file range
/// that replaces its records when the connection's shard owns it.
pub(crate) type Fetched = (FetchResponse, Vec<Option<FileRange>>);

pub(crate) async fn fetch(ctx: &Rc<ShardContext>, r: FetchRequest) -> Fetched {
    let deadline =
        Instant::now() + Duration::from_millis(u64::from(r.max_wait_ms)).min(MAX_FETCH_WAIT);
    let max_bytes = (r.max_bytes as usize).min(MAX_FETCH_BYTES);
    let mut names = Vec::with_capacity(r.topics.len());
    let mut slots = Vec::new();
    for (topic_index, t) in r.topics.into_iter().enumerate() {
        for p in &t.partitions {
            slots.push(FetchSlot {
                topic_index,
                partition: p.partition,
                offset: p.offset,
                max_bytes: p.max_bytes as usize,
                at: topics::lookup(ctx, &t.topic, p.partition),
            });
        }
        names.push(t.topic);
    }
    let min_bytes = r.min_bytes as usize;
    loop {
        let FetchPass {
            parts,
            files,
            available,
            total,
        } = read_all(ctx, &slots, max_bytes).await;
        let errors = parts.iter().any(|p| p.error != ErrorCode::None);
        // (min_bytes above the response budget could never be met: the budget counts.)
        if total >= min_bytes.min(max_bytes)
            || errors
            || Instant::now() >= deadline
            || ctx.is_shutting_down()
        {
            count_fetched(ctx, &names, &slots, &parts, &files);
            return fetch_response(names, &slots, parts, files);
        }
        // Long-poll: ask each owner to tell us when its partition has more than we saw,
        // and read again when the first one does (or at the deadline).
        let waits: Vec<_> = slots
            .iter()
            .zip(&available)
            .filter_map(|(slot, seen)| {
                let at = slot.at.as_ref().ok()?.clone();
                let call = WaitForData {
                    at,
                    offset: slot.offset,
                    seen: *seen,
                    deadline,
                };
                Some(Box::pin(ctx.call_owner(call)))
            })
            .collect();
        if waits.is_empty() {
            compio::time::sleep_until(deadline).await;
            continue;
        }
        let stop = ctx.shutdown.notified();
        tracing::debug!(partitions = waits.len(), "fetch parked");
        let _ = first(
            select_all(waits),
            first(compio::time::sleep_until(deadline), stop),
        )
        .await;
    }
}

/// Counts the record bytes a fetch response carries, per topic (or partition).
fn count_fetched(
    ctx: &ShardContext,
    names: &[String],
    slots: &[FetchSlot],
    parts: &[FetchPartitionResponse],
    files: &[Option<FileRange>],
) {
    let per_partition = ctx.config.metrics_partition_labels;
    for ((slot, part), file) in slots.iter().zip(parts).zip(files) {
        let bytes = file.as_ref().map_or(part.records.len(), |f| f.len) as u64;
        if bytes > 0 {
            let partition = per_partition.then_some(slot.partition);
            metrics::fetched(&names[slot.topic_index], partition, bytes);
        }
    }
}

/// Groups the partition entries under their topics. Slots were made topic by topic, so
/// their order is the encoding order and `files` stays aligned with it.
fn fetch_response(
    names: Vec<String>,
    slots: &[FetchSlot],
    parts: Vec<FetchPartitionResponse>,
    files: Vec<Option<FileRange>>,
) -> Fetched {
    let mut topics: Vec<FetchTopicResponse> = names
        .into_iter()
        .map(|topic| FetchTopicResponse {
            topic,
            partitions: Vec::new(),
        })
        .collect();
    for (slot, part) in slots.iter().zip(parts) {
        topics[slot.topic_index].partitions.push(part);
    }
    (FetchResponse { topics }, files)
}

pub(crate) async fn list_offsets(
    ctx: &Rc<ShardContext>,
    r: ListOffsetsRequest,
) -> ListOffsetsResponse {
    // Every lookup of the request first, then one envelope per owning shard.
    let mut lookups = Routed::default();
    for t in &r.topics {
        for p in &t.partitions {
            lookups.push(ctx, |ctx| {
                let at = topics::lookup(ctx, &t.topic, p.partition)?;
                Ok(ListOffset {
                    at,
                    timestamp: p.timestamp,
                })
            });
        }
    }
    let Routed { calls, early } = lookups;
    let mut outcomes = Outcomes::new(early, ctx.call_grouped(calls).await);
    let topics = r
        .topics
        .into_iter()
        .map(|t| ListOffsetsTopicResponse {
            partitions: t
                .partitions
                .iter()
                .map(|p| match outcomes.next() {
                    Ok(offset) => ListOffsetsPartitionResponse {
                        partition: p.partition,
                        error: ErrorCode::None,
                        message: String::new(),
                        offset,
                    },
                    Err(e) => ListOffsetsPartitionResponse {
                        partition: p.partition,
                        error: e.code,
                        message: e.message,
                        offset: -1,
                    },
                })
                .collect(),
            topic: t.topic,
        })
        .collect();
    ListOffsetsResponse { topics }
}
