//! Share-group (queue) requests: acquire and acknowledge records on the partitions'
//! owners, and describe a share group's state gathered from every shard.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::select_all;

use super::data::MAX_FETCH_WAIT;
use crate::protocol::api::*;
use crate::protocol::{ErrorCode, WireError};
use crate::server::calls::{Outcomes, Routed, ShareAck, ShareAcquire, ShareDescribe, WaitForData};
use crate::server::context::{first, ShardContext};
use crate::server::group_coordinator::check_group_name;
use crate::server::partitions::PartitionRef;
use crate::server::share_coordinator::{
    ShareFetched, MAX_SHARE_FETCH_BYTES, MAX_SHARE_RESPONSE_BYTES,
};
use crate::server::topics;

/// One partition a share fetch or ack addresses.
struct ShareSlot {
    topic_index: usize,
    partition: u32,
    at: Result<PartitionRef, WireError>,
}

/// The partitions of a share request: the listed ones, or every partition of a topic
/// listed without partitions.
/// Most partitions one share fetch may name: each gets at least 16 KiB of the response's
/// 64 MiB.
const MAX_SHARE_SLOTS: usize = MAX_SHARE_RESPONSE_BYTES / MIN_SHARE_SLOT_BYTES;
const MIN_SHARE_SLOT_BYTES: usize = 16 << 10;

/// The partitions a share fetch names, each once, at most [`MAX_SHARE_SLOTS`] of them.
fn share_slots(
    ctx: &ShardContext,
    topics: &[TopicPartitions],
) -> Result<Vec<ShareSlot>, WireError> {
    let mut slots = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (topic_index, t) in topics.iter().enumerate() {
        let partitions: Vec<u32> = if t.partitions.is_empty() {
            match ctx.catalog.get(&t.topic) {
                Some(meta) => (0..meta.partitions).collect(),
                None => vec![0],
            }
        } else {
            t.partitions.clone()
        };
        for partition in partitions {
            if !seen.insert((t.topic.as_str(), partition)) {
                return Err(WireError::new(
                    ErrorCode::InvalidRequest,
                    format!("{}/{partition} is named twice", t.topic),
                ));
            }
            if slots.len() == MAX_SHARE_SLOTS {
                return Err(WireError::new(
                    ErrorCode::InvalidRequest,
                    format!("a share fetch names at most {MAX_SHARE_SLOTS} partitions"),
                ));
            }
            slots.push(ShareSlot {
                topic_index,
                partition,
                at: topics::lookup(ctx, &t.topic, partition),
            });
        }
    }
    Ok(slots)
}

fn check_share_ids(group: &str, member: &str) -> Result<(), WireError> {
    check_group_name(group)?;
    if member.is_empty() {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            "share requests need a member id",
        ));
    }
    Ok(())
}

/// Acquires records from every partition asked for; waits (up to `max_wait_ms`) when none
/// has anything to hand out.
pub(super) async fn fetch(
    ctx: &Rc<ShardContext>,
    r: ShareFetchRequest,
) -> Result<Response, WireError> {
    check_share_ids(&r.group, &r.member_id)?;
    let dead_letters = &r.settings.dead_letter_topic;
    if r.topics.iter().any(|t| t.topic == *dead_letters) {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!("the dead-letter topic `{dead_letters}` is a topic this queue reads: its records would come back"),
        ));
    }
    let deadline =
        Instant::now() + Duration::from_millis(u64::from(r.max_wait_ms)).min(MAX_FETCH_WAIT);
    let slots = share_slots(ctx, &r.topics)?;
    // The response stays bounded whatever the number of partitions.
    let max_bytes = (MAX_SHARE_RESPONSE_BYTES / slots.len().max(1))
        .clamp(MIN_SHARE_SLOT_BYTES, MAX_SHARE_FETCH_BYTES);
    loop {
        // One envelope per owning shard.
        let mut acquires = Routed::default();
        for slot in &slots {
            acquires.push(ctx, |_| {
                Ok(ShareAcquire {
                    at: slot.at.clone()?,
                    group: r.group.clone(),
                    member: r.member_id.clone(),
                    max_records: r.max_records,
                    max_bytes,
                    settings: r.settings.clone(),
                })
            });
        }
        let Routed { calls, early } = acquires;
        let mut outcomes = Outcomes::new(early, ctx.call_grouped(calls).await);
        let results: Vec<_> = slots.iter().map(|_| outcomes.next()).collect();
        let got_any = results
            .iter()
            .any(|r| r.as_ref().map_or(true, |a| !a.ranges.is_empty()));
        if got_any || Instant::now() >= deadline || ctx.is_shutting_down() {
            let per_partition = ctx.config.metrics_partition_labels;
            return Ok(share_fetch_response(
                &r.topics,
                &slots,
                results,
                per_partition,
            ));
        }
        // Nothing to hand out: wait for new records on any partition, and look again every
        // 100 ms for records whose lock expired or whose nack delay passed.
        let until = deadline.min(Instant::now() + Duration::from_millis(100));
        let waits: Vec<_> = slots
            .iter()
            .zip(&results)
            .filter_map(|(slot, result)| {
                let at = slot.at.as_ref().ok()?.clone();
                let offset = result.as_ref().ok()?.log_end;
                let call = WaitForData {
                    at,
                    offset,
                    seen: 0,
                    deadline: until,
                };
                Some(Box::pin(ctx.call_owner(call)))
            })
            .collect();
        let stop = ctx.shutdown.notified();
        if waits.is_empty() {
            let _ = first(compio::time::sleep_until(until), stop).await;
            continue;
        }
        let _ = first(
            select_all(waits),
            first(compio::time::sleep_until(until), stop),
        )
        .await;
    }
}

fn share_fetch_response(
    topics: &[TopicPartitions],
    slots: &[ShareSlot],
    results: Vec<Result<ShareFetched, WireError>>,
    per_partition: bool,
) -> Response {
    let mut out: Vec<ShareFetchTopic> = topics
        .iter()
        .map(|t| ShareFetchTopic {
            topic: t.topic.clone(),
            partitions: Vec::new(),
        })
        .collect();
    for (slot, result) in slots.iter().zip(results) {
        let part = match result {
            Ok(a) => {
                if !a.records.is_empty() {
                    let topic = &topics[slot.topic_index].topic;
                    let partition = per_partition.then_some(slot.partition);
                    crate::metrics::shard::fetched(topic, partition, a.records.len() as u64);
                }
                ShareFetchPartition {
                    partition: slot.partition,
                    error: ErrorCode::None,
                    message: String::new(),
                    acquired: a.ranges,
                    records: a.records,
                }
            }
            Err(e) => ShareFetchPartition {
                partition: slot.partition,
                error: e.code,
                message: e.message,
                acquired: Vec::new(),
                records: Bytes::new(),
            },
        };
        out[slot.topic_index].partitions.push(part);
    }
    Response::ShareFetch(ShareFetchResponse { topics: out })
}

/// Sends each partition's acknowledgements to its owner.
pub(super) async fn ack(ctx: &Rc<ShardContext>, r: ShareAckRequest) -> Result<Response, WireError> {
    check_share_ids(&r.group, &r.member_id)?;
    // One envelope per owning shard.
    let mut acks = Routed::default();
    for t in &r.topics {
        for p in &t.partitions {
            acks.push(ctx, |ctx| {
                Ok(ShareAck {
                    at: topics::lookup(ctx, &t.topic, p.partition)?,
                    group: r.group.clone(),
                    member: r.member_id.clone(),
                    ranges: p.ranges.clone(),
                })
            });
        }
    }
    let Routed { calls, early } = acks;
    let mut outcomes = Outcomes::new(early, ctx.call_grouped(calls).await);
    let topics = r
        .topics
        .iter()
        .map(|t| TopicResults {
            topic: t.topic.clone(),
            partitions: t
                .partitions
                .iter()
                .map(|p| {
                    let (error, message) = match outcomes.next() {
                        Ok(()) => (ErrorCode::None, String::new()),
                        Err(e) => (e.code, e.message),
                    };
                    PartitionResult {
                        partition: p.partition,
                        error,
                        message,
                    }
                })
                .collect(),
        })
        .collect();
    Ok(Response::ShareAck(ResultsResponse { topics }))
}

/// A share group's state, gathered from every shard.
pub(super) async fn describe(ctx: &Rc<ShardContext>, group: &str) -> Result<Response, WireError> {
    let mut members = Vec::new();
    let mut partitions = Vec::new();
    let replies = ctx
        .call_all(|| ShareDescribe {
            group: group.to_string(),
        })
        .await;
    for reply in replies {
        let (m, p) = reply?;
        members.extend(m);
        partitions.extend(p);
    }
    if partitions.is_empty() {
        return Err(WireError::new(
            ErrorCode::UnknownGroup,
            format!("share group `{group}` has no state on this broker"),
        ));
    }
    members.sort();
    members.dedup();
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(Response::DescribeQueue(DescribeQueueResponse {
        group: group.to_string(),
        members,
        partitions,
    }))
}
