//! What each API does, on the shard that owns the client's connection. Partition work is
//! routed to the owning shard with [`ShardContext::call`]; everything else (catalog reads,
//! metadata) is answered here.

use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::future::{join_all, select_all, Either};

use std::collections::BTreeMap;

use super::context::{first, unknown_partition, PartitionRef, ShardContext, ShardOp, ShardReply};
use super::groups::{coordinator_of, GroupOp};
use super::queues::{Acquired, MAX_SHARE_FETCH_BYTES, MAX_SHARE_RESPONSE_BYTES};
use crate::protocol::api::*;
use crate::protocol::batch::{BatchError, ValidBatch};
use crate::protocol::{ErrorCode, WireError};
use crate::storage::catalog::{describe_config, CatalogError, TopicMeta, DELETED_PREFIX};
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

/// Handles one decoded request. `None` means no response is sent (produce with acks = 0).
/// `local_ip` is the broker address the client reached (advertised in metadata when the
/// broker listens on an unspecified address such as 0.0.0.0).
pub(crate) async fn handle(
    ctx: &Rc<ShardContext>,
    request: Request,
    local_ip: Option<IpAddr>,
) -> Option<Result<Reply, WireError>> {
    if ctx.is_shutting_down() {
        return Some(Err(WireError::new(
            ErrorCode::ShuttingDown,
            "the broker is shutting down",
        )));
    }
    match request {
        Request::Fetch(r) => Some(Ok(fetch(ctx, r).await)),
        other => handle_plain(ctx, other, local_ip)
            .await
            .map(|r| r.map(Reply::Plain)),
    }
}

async fn handle_plain(
    ctx: &Rc<ShardContext>,
    request: Request,
    local_ip: Option<IpAddr>,
) -> Option<Result<Response, WireError>> {
    Some(match request {
        Request::ApiVersions(r) => {
            tracing::debug!(client = %r.client_name, "handshake");
            Ok(Response::ApiVersions(ApiVersionsResponse {
                broker_version: env!("CARGO_PKG_VERSION").to_string(),
                shard_count: ctx.shard_count,
                apis: ApiKey::ALL
                    .iter()
                    .map(|k| ApiVersionRange {
                        api_key: *k as u16,
                        min_version: 0,
                        max_version: k.max_version(),
                    })
                    .collect(),
            }))
        }
        Request::Metadata(r) => Ok(metadata(ctx, r, local_ip)),
        Request::CreateTopic(r) => create_topic(ctx, r).await,
        Request::DeleteTopic(r) => delete_topic(ctx, r).await,
        Request::ListTopics => {
            let catalog = ctx.catalog.snapshot();
            Ok(Response::ListTopics(ListTopicsResponse {
                topics: catalog
                    .topics
                    .values()
                    .map(|t| TopicListing {
                        name: t.name.clone(),
                        partitions: t.partitions,
                    })
                    .collect(),
            }))
        }
        Request::DescribeTopic(r) => describe_topic(ctx, r).await,
        Request::AlterTopicConfig(r) => alter_topic(ctx, r).await,
        Request::Produce(r) => {
            let acks = r.acks;
            let response = produce(ctx, r).await;
            if acks == Acks::None {
                return None;
            }
            Ok(response)
        }
        Request::Fetch(_) => Err(WireError::new(
            ErrorCode::Unknown,
            "fetch is answered by `handle`",
        )),
        Request::ListOffsets(r) => Ok(list_offsets(ctx, r).await),
        Request::JoinGroup(r) => group_call(ctx, &r.group.clone(), GroupOp::Join(r)).await,
        Request::Heartbeat(r) => group_call(ctx, &r.group.clone(), GroupOp::Heartbeat(r)).await,
        Request::LeaveGroup(r) => group_call(ctx, &r.group.clone(), GroupOp::Leave(r)).await,
        Request::CommitOffsets(r) => group_call(ctx, &r.group.clone(), GroupOp::Commit(r)).await,
        Request::FetchOffsets(r) => {
            group_call(ctx, &r.group.clone(), GroupOp::FetchOffsets(r)).await
        }
        Request::DescribeGroup(r) => {
            group_call(ctx, &r.group, GroupOp::Describe(r.group.clone())).await
        }
        Request::DeleteGroup(r) => {
            group_call(ctx, &r.group, GroupOp::Delete(r.group.clone())).await
        }
        Request::ListGroups => list_groups(ctx).await,
        Request::ShareFetch(r) => share_fetch(ctx, r).await,
        Request::ShareAck(r) => share_ack(ctx, r).await,
        Request::DescribeQueue(r) => describe_queue(ctx, &r.group).await,
    })
}

/// Runs a group request on the group's coordinator shard.
async fn group_call(
    ctx: &Rc<ShardContext>,
    group: &str,
    op: GroupOp,
) -> Result<Response, WireError> {
    check_group_name(group)?;
    match ctx
        .call(coordinator_of(group, ctx.shard_count), ShardOp::Group(op))
        .await
    {
        ShardReply::Group(r) => r,
        _ => Err(unexpected()),
    }
}

/// Consumer groups from every coordinator, and share groups from every partition owner.
async fn list_groups(ctx: &Rc<ShardContext>) -> Result<Response, WireError> {
    let mut groups: BTreeMap<String, GroupListing> = BTreeMap::new();
    let shards = 0..ctx.shard_count;
    for reply in join_all(
        shards
            .clone()
            .map(|s| ctx.call(s, ShardOp::Group(GroupOp::List))),
    )
    .await
    {
        match reply {
            ShardReply::Group(Ok(Response::ListGroups(list))) => {
                for g in list.groups {
                    groups.insert(g.group.clone(), g);
                }
            }
            ShardReply::Group(Err(e)) => return Err(e),
            _ => return Err(unexpected()),
        }
    }
    let mut shares: BTreeMap<String, usize> = BTreeMap::new();
    for reply in join_all(shards.map(|s| ctx.call(s, ShardOp::ShareGroups))).await {
        if let ShardReply::ShareGroups(found) = reply {
            for (group, members) in found {
                let m = shares.entry(group).or_default();
                *m = (*m).max(members);
            }
        }
    }
    for (group, members) in shares {
        groups.entry(group.clone()).or_insert(GroupListing {
            group,
            kind: "share".into(),
            members: members as u32,
        });
    }
    Ok(Response::ListGroups(ListGroupsResponse {
        groups: groups.into_values().collect(),
    }))
}

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
                at: lookup(ctx, &t.topic, partition),
            });
        }
    }
    Ok(slots)
}

/// Longest group name, as for topics (offset keys carry it with a 16-bit length).
const MAX_GROUP_NAME: usize = 249;

fn check_group_name(group: &str) -> Result<(), WireError> {
    if group.is_empty() || group.len() > MAX_GROUP_NAME {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!("group names are 1 to {MAX_GROUP_NAME} bytes"),
        ));
    }
    Ok(())
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
async fn share_fetch(ctx: &Rc<ShardContext>, r: ShareFetchRequest) -> Result<Response, WireError> {
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
        let calls = slots.iter().map(|slot| {
            let at = slot.at.clone();
            let group = r.group.clone();
            let member = r.member_id.clone();
            let settings = r.settings.clone();
            async move {
                let at = at?;
                let owner = ctx.owner(&at.topic.name, at.partition);
                let op = ShardOp::ShareAcquire {
                    at,
                    group,
                    member,
                    max_records: r.max_records,
                    max_bytes,
                    settings,
                };
                match ctx.call(owner, op).await {
                    ShardReply::ShareAcquired(result) => result,
                    _ => Err(unexpected()),
                }
            }
        });
        let results = join_all(calls).await;
        let got_any = results
            .iter()
            .any(|r| r.as_ref().map_or(true, |a| !a.ranges.is_empty()));
        if got_any || Instant::now() >= deadline || ctx.is_shutting_down() {
            return Ok(share_fetch_response(&r.topics, &slots, results));
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
                let owner = ctx.owner(&at.topic.name, at.partition);
                let op = ShardOp::WaitForData {
                    at,
                    offset,
                    seen: 0,
                    deadline: until,
                };
                Some(Box::pin(ctx.call(owner, op)))
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
    results: Vec<Result<Acquired, WireError>>,
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
            Ok(a) => ShareFetchPartition {
                partition: slot.partition,
                error: ErrorCode::None,
                message: String::new(),
                acquired: a.ranges,
                records: a.records,
            },
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
async fn share_ack(ctx: &Rc<ShardContext>, r: ShareAckRequest) -> Result<Response, WireError> {
    check_share_ids(&r.group, &r.member_id)?;
    let mut calls = Vec::new();
    for t in &r.topics {
        for p in &t.partitions {
            let at = lookup(ctx, &t.topic, p.partition);
            let (group, member, ranges) = (r.group.clone(), r.member_id.clone(), p.ranges.clone());
            calls.push(async move {
                let at = at?;
                let owner = ctx.owner(&at.topic.name, at.partition);
                let op = ShardOp::ShareAck {
                    at,
                    group,
                    member,
                    ranges,
                };
                match ctx.call(owner, op).await {
                    ShardReply::Done(result) => result,
                    _ => Err(unexpected()),
                }
            });
        }
    }
    let mut results = join_all(calls).await.into_iter();
    let topics = r
        .topics
        .iter()
        .map(|t| TopicResults {
            topic: t.topic.clone(),
            partitions: t
                .partitions
                .iter()
                .map(|p| {
                    let (error, message) = match results.next() {
                        Some(Ok(())) | None => (ErrorCode::None, String::new()),
                        Some(Err(e)) => (e.code, e.message),
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
async fn describe_queue(ctx: &Rc<ShardContext>, group: &str) -> Result<Response, WireError> {
    let mut members = Vec::new();
    let mut partitions = Vec::new();
    let calls = (0..ctx.shard_count).map(|s| {
        ctx.call(
            s,
            ShardOp::ShareDescribe {
                group: group.to_string(),
            },
        )
    });
    for reply in join_all(calls).await {
        if let ShardReply::ShareDescribed(m, p) = reply {
            members.extend(m);
            partitions.extend(p);
        }
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

fn catalog_error(e: CatalogError) -> WireError {
    let code = match &e {
        CatalogError::UnknownTopic(_) => ErrorCode::UnknownTopicOrPartition,
        CatalogError::AlreadyExists(_) => ErrorCode::TopicAlreadyExists,
        CatalogError::InvalidName { .. } => ErrorCode::InvalidTopic,
        CatalogError::InvalidPartitions(_) => ErrorCode::InvalidPartitions,
        CatalogError::InvalidConfig { .. } => ErrorCode::InvalidConfig,
        CatalogError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
            ErrorCode::NotEnoughDisk
        }
        CatalogError::Io { .. } | CatalogError::Corrupt { .. } => ErrorCode::StorageError,
    };
    WireError::new(code, e.to_string())
}

fn metadata(ctx: &ShardContext, r: MetadataRequest, local_ip: Option<IpAddr>) -> Response {
    let catalog = ctx.catalog.snapshot();
    let describe = |t: &TopicMeta| TopicMetadata {
        name: t.name.clone(),
        error: ErrorCode::None,
        owners: (0..t.partitions).map(|p| ctx.owner(&t.name, p)).collect(),
    };
    let topics = if r.topics.is_empty() {
        catalog.topics.values().map(|t| describe(t)).collect()
    } else {
        r.topics
            .iter()
            .map(|name| match catalog.topics.get(name) {
                Some(t) => describe(t),
                None => TopicMetadata {
                    name: name.clone(),
                    error: ErrorCode::UnknownTopicOrPartition,
                    owners: Vec::new(),
                },
            })
            .collect()
    };
    let mut shards = ctx.endpoints.as_ref().clone();
    if ctx.config.listen.ip().is_unspecified() {
        if let Some(ip) = local_ip {
            for s in &mut shards {
                s.host = ip.to_string();
            }
        }
    }
    Response::Metadata(MetadataResponse { shards, topics })
}

/// Sends `op` for the topic to every shard and waits for all to finish.
async fn broadcast(ctx: &Rc<ShardContext>, make: impl Fn() -> ShardOp) -> Result<(), WireError> {
    let calls = (0..ctx.shard_count).map(|shard| ctx.call(shard, make()));
    for reply in join_all(calls).await {
        if let ShardReply::Done(Err(e)) = reply {
            return Err(e);
        }
    }
    Ok(())
}

pub(crate) async fn create_topic(
    ctx: &Rc<ShardContext>,
    r: CreateTopicRequest,
) -> Result<Response, WireError> {
    let topic = ctx
        .catalog
        .create(&r.name, r.partitions, &r.configs, &ctx.log_defaults)
        .map_err(catalog_error)?;
    tracing::info!(topic = %topic.name, partitions = topic.partitions, "topic created");
    broadcast(ctx, || ShardOp::OpenTopic {
        topic: topic.clone(),
    })
    .await?;
    Ok(Response::CreateTopic)
}

async fn delete_topic(
    ctx: &Rc<ShardContext>,
    r: DeleteTopicRequest,
) -> Result<Response, WireError> {
    let Some(topic) = ctx.catalog.get(&r.name) else {
        return Err(catalog_error(CatalogError::UnknownTopic(r.name)));
    };
    // Move the directory aside before the catalog forgets the topic: a crash in between
    // leaves a topic whose data is gone (it was being deleted), never files that no topic
    // owns; and a topic created again under this name starts empty even while the old
    // files are still being closed. Start-up removes whatever was moved aside.
    let dir = ctx.config.data_dir.join(&topic.name);
    let trash = ctx
        .config
        .data_dir
        .join(format!("{DELETED_PREFIX}{}-{}", topic.name, topic.id));
    let moved = match std::fs::rename(&dir, &trash) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            return Err(WireError::new(
                ErrorCode::StorageError,
                format!("cannot move {} aside: {e}", dir.display()),
            ))
        }
    };
    if let Err(e) = ctx.catalog.delete(&r.name) {
        if moved {
            let _ = std::fs::rename(&trash, &dir);
        }
        return Err(catalog_error(e));
    }
    broadcast(ctx, || ShardOp::DropTopic {
        topic: topic.clone(),
    })
    .await?;
    if moved {
        if let Err(e) = std::fs::remove_dir_all(&trash) {
            tracing::warn!(path = %trash.display(), "cannot remove deleted topic data: {e}");
        }
    }
    tracing::info!(topic = %topic.name, "topic deleted");
    Ok(Response::DeleteTopic)
}

async fn alter_topic(
    ctx: &Rc<ShardContext>,
    r: AlterTopicConfigRequest,
) -> Result<Response, WireError> {
    let topic = ctx
        .catalog
        .alter(&r.name, &r.configs, &ctx.log_defaults)
        .map_err(catalog_error)?;
    broadcast(ctx, || ShardOp::Reconfigure {
        topic: topic.clone(),
    })
    .await?;
    Ok(Response::AlterTopicConfig)
}

async fn describe_topic(
    ctx: &Rc<ShardContext>,
    r: DescribeTopicRequest,
) -> Result<Response, WireError> {
    let topic = ctx.catalog.get(&r.name).ok_or_else(|| {
        WireError::new(
            ErrorCode::UnknownTopicOrPartition,
            format!("topic `{}` does not exist", r.name),
        )
    })?;
    let calls = (0..topic.partitions).map(|partition| {
        let at = PartitionRef {
            topic: topic.clone(),
            partition,
        };
        ctx.call(ctx.owner(&topic.name, partition), ShardOp::Describe { at })
    });
    let mut partitions = Vec::with_capacity(topic.partitions as usize);
    for reply in join_all(calls).await {
        match reply {
            ShardReply::Described(Ok(d)) => partitions.push(d),
            ShardReply::Described(Err(e)) | ShardReply::Done(Err(e)) => return Err(e),
            _ => return Err(unexpected()),
        }
    }
    Ok(Response::DescribeTopic(DescribeTopicResponse {
        name: topic.name.clone(),
        partitions,
        configs: describe_config(&topic.log_config(&ctx.log_defaults)),
    }))
}

fn unexpected() -> WireError {
    WireError::new(ErrorCode::Unknown, "unexpected reply between shards")
}

fn lookup(ctx: &ShardContext, topic: &str, partition: u32) -> Result<PartitionRef, WireError> {
    let meta = ctx
        .catalog
        .get(topic)
        .ok_or_else(|| unknown_partition(topic, partition))?;
    if partition >= meta.partitions {
        return Err(unknown_partition(topic, partition));
    }
    Ok(PartitionRef {
        topic: meta,
        partition,
    })
}

/// Splits a produce request's records into single batches and validates each (header and
/// CRC32C). The batches stay handles into the request buffer.
fn split_batches(
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

async fn produce(ctx: &Rc<ShardContext>, r: ProduceRequest) -> Response {
    // Every partition's append is started in request order before any is awaited, so the
    // batches of pipelined requests reach each partition in the order they were sent.
    let mut shape = Vec::with_capacity(r.topics.len());
    let mut calls = Vec::new();
    let mut early: Vec<Option<WireError>> = Vec::new();
    for topic in r.topics {
        let mut parts = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            parts.push(p.partition);
            let prepared = lookup(ctx, &topic.topic, p.partition).and_then(|at| {
                split_batches(p.records, ctx.config.max_batch_bytes).map(|batches| (at, batches))
            });
            match prepared {
                Ok((at, batches)) => {
                    let owner = ctx.owner(&topic.topic, p.partition);
                    calls.push(Box::pin(ctx.call(owner, ShardOp::Append { at, batches })));
                    early.push(None);
                }
                Err(e) => early.push(Some(e)),
            }
        }
        shape.push((topic.topic, parts));
    }
    let all = join_all(calls);
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
                    ShardReply::Appended(Err(WireError::new(
                        ErrorCode::Timeout,
                        format!("not acknowledged within {} ms", r.timeout_ms),
                    )))
                })
                .collect(),
        }
    };
    let mut replies = replies.into_iter();
    let mut early = early.into_iter();
    let topics = shape
        .into_iter()
        .map(|(topic, parts)| ProduceTopicResponse {
            topic,
            partitions: parts
                .into_iter()
                .map(|partition| {
                    let outcome = match early.next().flatten() {
                        Some(e) => Err(e),
                        None => match replies.next() {
                            Some(ShardReply::Appended(r)) => r,
                            Some(ShardReply::Done(Err(e))) => Err(e),
                            _ => Err(unexpected()),
                        },
                    };
                    match outcome {
                        Ok(a) => ProducePartitionResponse {
                            partition,
                            error: ErrorCode::None,
                            message: String::new(),
                            base_offset: a.base_offset,
                            last_offset: a.last_offset,
                        },
                        Err(e) => ProducePartitionResponse {
                            partition,
                            error: e.code,
                            message: e.message,
                            base_offset: -1,
                            last_offset: -1,
                        },
                    }
                })
                .collect(),
        })
        .collect();
    Response::Produce(ProduceResponse { topics })
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
            Ok(at) if ctx.owner(&at.topic.name, slot.partition) == ctx.id => ctx
                .read_range(at, slot.offset, budget.max(1))
                .await
                .map(|(range, hwm, start, available)| {
                    file = range;
                    (Bytes::new(), hwm, start, available)
                }),
            Ok(at) => {
                let op = ShardOp::Read {
                    at: at.clone(),
                    offset: slot.offset,
                    max_bytes: budget.max(1),
                };
                match ctx
                    .call(ctx.owner(&at.topic.name, slot.partition), op)
                    .await
                {
                    ShardReply::Read(r) => r.map(|(o, available)| {
                        (o.records, o.high_watermark, o.log_start_offset, available)
                    }),
                    ShardReply::Done(Err(e)) => Err(e),
                    _ => Err(unexpected()),
                }
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

async fn fetch(ctx: &Rc<ShardContext>, r: FetchRequest) -> Reply {
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
                at: lookup(ctx, &t.topic, p.partition),
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
            return fetch_response(names, &slots, parts, files);
        }
        // Long-poll: ask each owner to tell us when its partition has more than we saw,
        // and read again when the first one does (or at the deadline).
        let waits: Vec<_> = slots
            .iter()
            .zip(&available)
            .filter_map(|(slot, seen)| {
                let at = slot.at.as_ref().ok()?.clone();
                let owner = ctx.owner(&at.topic.name, slot.partition);
                let op = ShardOp::WaitForData {
                    at,
                    offset: slot.offset,
                    seen: *seen,
                    deadline,
                };
                Some(Box::pin(ctx.call(owner, op)))
            })
            .collect();
        if waits.is_empty() {
            compio::time::sleep_until(deadline).await;
            continue;
        }
        let stop = ctx.shutdown.notified();
        let _ = first(
            select_all(waits),
            first(compio::time::sleep_until(deadline), stop),
        )
        .await;
    }
}

/// Groups the partition entries under their topics. Slots were made topic by topic, so
/// their order is the encoding order and `files` stays aligned with it.
fn fetch_response(
    names: Vec<String>,
    slots: &[FetchSlot],
    parts: Vec<FetchPartitionResponse>,
    files: Vec<Option<FileRange>>,
) -> Reply {
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
    Reply::Fetch(FetchResponse { topics }, files)
}

async fn list_offsets(ctx: &Rc<ShardContext>, r: ListOffsetsRequest) -> Response {
    let mut topics = Vec::with_capacity(r.topics.len());
    for t in r.topics {
        let calls = t.partitions.iter().map(|p| {
            let ctx = ctx.clone();
            let topic = t.topic.clone();
            let (partition, timestamp) = (p.partition, p.timestamp);
            async move {
                let at = lookup(&ctx, &topic, partition)?;
                let owner = ctx.owner(&topic, partition);
                match ctx.call(owner, ShardOp::ListOffset { at, timestamp }).await {
                    ShardReply::Offset(r) => r,
                    ShardReply::Done(Err(e)) => Err(e),
                    _ => Err(unexpected()),
                }
            }
        });
        let results = join_all(calls).await;
        topics.push(ListOffsetsTopicResponse {
            topic: t.topic,
            partitions: t
                .partitions
                .iter()
                .zip(results)
                .map(|(p, r)| match r {
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
        });
    }
    Response::ListOffsets(ListOffsetsResponse { topics })
}
