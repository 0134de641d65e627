//! Kafka's group APIs: JoinGroup, SyncGroup, Heartbeat and LeaveGroup (the classic protocol,
//! run by the group's coordinator shard), OffsetCommit and OffsetFetch (the same committed
//! offsets as the native group APIs), and ListGroups, DescribeGroups, DeleteGroups and
//! OffsetDelete. Native groups show through DescribeGroups as `consumer` groups whose members'
//! metadata and assignments are encoded the way Kafka's clients encode them, so Kafka's tools
//! can read them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::groups::classic::{ClassicError, JoinRequest};
use crate::groups::membership::GroupState;
use crate::protocol::api::{PartitionOffset, TopicEntry, TopicOffsets, TopicPartitions};
use crate::protocol::kafka::consumer::{encode_assignment, encode_subscription};
use crate::protocol::kafka::error::*;
use crate::protocol::WireError;
use crate::server::calls::{
    KafkaCommit, KafkaDeleteGroup, KafkaDescribeGroup, KafkaHeartbeat, KafkaJoin, KafkaLeave,
    KafkaListGroups, KafkaOffsetDelete, KafkaOffsets, KafkaSync,
};
use crate::server::context::ShardContext;
use crate::server::group_coordinator::{
    check_group_name, coordinator_of, GroupView, KafkaGroupError,
};
use crate::server::rpc::ShardCall;

/// The Kafka error code of a group protocol refusal.
fn classic_code(e: &ClassicError) -> i16 {
    match e {
        ClassicError::UnknownMember => UNKNOWN_MEMBER_ID,
        ClassicError::IllegalGeneration { .. } => ILLEGAL_GENERATION,
        ClassicError::RebalanceInProgress => REBALANCE_IN_PROGRESS,
        ClassicError::InconsistentProtocol(_) => INCONSISTENT_GROUP_PROTOCOL,
        ClassicError::InvalidSessionTimeout { .. } => INVALID_SESSION_TIMEOUT,
        ClassicError::MemberIdRequired(_) => MEMBER_ID_REQUIRED,
        ClassicError::NotEmpty => NON_EMPTY_GROUP,
        ClassicError::UnknownGroup => GROUP_ID_NOT_FOUND,
    }
}

fn group_code(e: &KafkaGroupError) -> i16 {
    match e {
        KafkaGroupError::Group(e) => classic_code(e),
        KafkaGroupError::Wire(e) => wire_code(e),
    }
}

/// A native error's Kafka code; a refused group name is INVALID_GROUP_ID.
fn wire_code(e: &WireError) -> i16 {
    error_code(e.code)
}

fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// Runs a group call on the group's coordinator; a name no coordinator serves is refused
/// before.
async fn on_coordinator<C: ShardCall<ShardContext>>(
    ctx: &Rc<ShardContext>,
    group: &str,
    call: C,
) -> Result<C::Reply, i16> {
    check_group_name(group).map_err(|_| INVALID_GROUP_ID)?;
    ctx.call(coordinator_of(group, ctx.shard_count), call)
        .await
        .map_err(|e| wire_code(&e))
}

/// A timeout from the wire: negative ones are treated as zero (and so refused as too short).
fn millis(ms: i32) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

pub(super) async fn join_group(
    ctx: &Rc<ShardContext>,
    r: JoinGroupRequest,
    version: i16,
    peer: Option<SocketAddr>,
    client_id: &str,
) -> JoinGroupResponse {
    let group = r.group_id.0.to_string();
    let request = JoinRequest {
        member_id: r.member_id.to_string(),
        instance_id: r.group_instance_id.map(|s| s.to_string()),
        client_id: client_id.to_owned(),
        client_host: peer.map_or_else(String::new, |p| format!("/{}", p.ip())),
        protocol_type: r.protocol_type.to_string(),
        protocols: r
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        session_timeout: millis(r.session_timeout_ms),
        // v0 has no rebalance timeout: the session timeout serves.
        rebalance_timeout: millis(if version >= 1 {
            r.rebalance_timeout_ms
        } else {
            r.session_timeout_ms
        }),
        require_known_member: version >= 4,
    };
    let failed = |code: i16, member_id: StrBytes| {
        JoinGroupResponse::default()
            .with_error_code(code)
            .with_generation_id(-1)
            .with_member_id(member_id)
    };
    let member_id = r.member_id.clone();
    match on_coordinator(
        ctx,
        &group,
        KafkaJoin {
            group: group.clone(),
            request,
        },
    )
    .await
    {
        Err(code) => failed(code, member_id),
        Ok(Err(ClassicError::MemberIdRequired(id))) => failed(MEMBER_ID_REQUIRED, text(id)),
        Ok(Err(e)) => {
            tracing::debug!(%group, "kafka join refused: {e}");
            failed(classic_code(&e), member_id)
        }
        Ok(Ok(joined)) => JoinGroupResponse::default()
            .with_generation_id(joined.generation)
            .with_protocol_type(Some(text(joined.protocol_type)))
            .with_protocol_name(Some(text(joined.protocol_name)))
            .with_leader(text(joined.leader))
            .with_member_id(text(joined.member_id))
            .with_members(
                joined
                    .members
                    .into_iter()
                    .map(|m| {
                        JoinGroupResponseMember::default()
                            .with_member_id(text(m.member_id))
                            .with_group_instance_id(m.instance_id.map(text))
                            .with_metadata(m.metadata)
                    })
                    .collect(),
            ),
    }
}

pub(super) async fn sync_group(ctx: &Rc<ShardContext>, r: SyncGroupRequest) -> SyncGroupResponse {
    let group = r.group_id.0.to_string();
    let call = KafkaSync {
        group: group.clone(),
        member_id: r.member_id.to_string(),
        generation: r.generation_id,
        protocol: r
            .protocol_type
            .zip(r.protocol_name)
            .map(|(kind, name)| (kind.to_string(), name.to_string())),
        assignments: r
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect(),
    };
    match on_coordinator(ctx, &group, call).await {
        Err(code) => SyncGroupResponse::default().with_error_code(code),
        Ok(Err(e)) => {
            tracing::debug!(%group, "kafka sync refused: {e}");
            SyncGroupResponse::default().with_error_code(classic_code(&e))
        }
        Ok(Ok(synced)) => SyncGroupResponse::default()
            .with_protocol_type(Some(text(synced.protocol_type)))
            .with_protocol_name(Some(text(synced.protocol_name)))
            .with_assignment(synced.assignment),
    }
}

pub(super) async fn heartbeat(ctx: &Rc<ShardContext>, r: HeartbeatRequest) -> HeartbeatResponse {
    let group = r.group_id.0.to_string();
    let call = KafkaHeartbeat {
        group: group.clone(),
        member_id: r.member_id.to_string(),
        generation: r.generation_id,
    };
    let code = match on_coordinator(ctx, &group, call).await {
        Err(code) => code,
        Ok(Err(e)) => classic_code(&e),
        Ok(Ok(())) => NONE,
    };
    HeartbeatResponse::default().with_error_code(code)
}

pub(super) async fn leave_group(
    ctx: &Rc<ShardContext>,
    r: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let group = r.group_id.0.to_string();
    // v0–v2 name one member; v3+ a list (by member id: static ids are not honored).
    let members: Vec<(StrBytes, Option<StrBytes>)> = if version >= 3 {
        r.members
            .into_iter()
            .map(|m| (m.member_id, m.group_instance_id))
            .collect()
    } else {
        vec![(r.member_id, None)]
    };
    let call = KafkaLeave {
        group: group.clone(),
        members: members.iter().map(|(id, _)| id.to_string()).collect(),
    };
    let results = match on_coordinator(ctx, &group, call).await {
        Err(code) => return LeaveGroupResponse::default().with_error_code(code),
        Ok(results) => results,
    };
    let codes: Vec<i16> = results
        .iter()
        .map(|r| r.as_ref().err().map_or(NONE, classic_code))
        .collect();
    if version < 3 {
        return LeaveGroupResponse::default().with_error_code(codes[0]);
    }
    LeaveGroupResponse::default().with_members(
        members
            .into_iter()
            .zip(codes)
            .map(|((member_id, instance_id), code)| {
                MemberResponse::default()
                    .with_member_id(member_id)
                    .with_group_instance_id(instance_id)
                    .with_error_code(code)
            })
            .collect(),
    )
}

pub(super) async fn offset_commit(
    ctx: &Rc<ShardContext>,
    r: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let group = r.group_id.0.to_string();
    // Partitions with a negative index are answered here; the others go to the coordinator.
    let topics: Vec<TopicOffsets> = r
        .topics
        .iter()
        .map(|t| TopicEntry {
            topic: t.name.0.to_string(),
            partitions: t
                .partitions
                .iter()
                .filter_map(|p| {
                    Some(PartitionOffset {
                        partition: u32::try_from(p.partition_index).ok()?,
                        offset: p.committed_offset,
                    })
                })
                .collect(),
        })
        .collect();
    let call = KafkaCommit {
        group: group.clone(),
        member_id: r.member_id.to_string(),
        generation: r.generation_id_or_member_epoch,
        topics,
    };
    let outcome = match on_coordinator(ctx, &group, call).await {
        Err(code) => Err(code),
        Ok(Err(e)) => {
            tracing::debug!(%group, "kafka offset commit refused: {e:?}");
            Err(group_code(&e))
        }
        Ok(Ok(results)) => Ok(results),
    };
    let mut codes: BTreeMap<(String, u32), i16> = BTreeMap::new();
    if let Ok(results) = &outcome {
        for t in results {
            for p in &t.partitions {
                codes.insert((t.topic.clone(), p.partition), error_code(p.error));
            }
        }
    }
    let topics = r
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.0.to_string();
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let code = match (&outcome, u32::try_from(p.partition_index)) {
                        (_, Err(_)) => UNKNOWN_TOPIC_OR_PARTITION,
                        (Err(code), _) => *code,
                        (Ok(_), Ok(index)) => codes
                            .get(&(name.clone(), index))
                            .copied()
                            .unwrap_or(UNKNOWN_SERVER_ERROR),
                    };
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// One group's committed offsets: the partitions asked for (`None`: all it committed), each
/// -1 when nothing was committed.
async fn committed(
    ctx: &Rc<ShardContext>,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Result<Vec<(String, Vec<(i32, i64)>)>, i16> {
    let asked = topics.map(|topics| {
        topics
            .into_iter()
            .map(|(topic, ps)| TopicPartitions {
                topic,
                // A negative index names no partition: its offset is -1.
                partitions: ps
                    .into_iter()
                    .map(|p| u32::try_from(p).unwrap_or(u32::MAX))
                    .collect(),
            })
            .collect::<Vec<_>>()
    });
    if asked.as_ref().is_some_and(Vec::is_empty) {
        return Ok(Vec::new());
    }
    let call = KafkaOffsets {
        group: group.to_owned(),
        topics: asked,
    };
    let found = on_coordinator(ctx, group, call)
        .await?
        .map_err(|e| wire_code(&e))?;
    Ok(found
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| (i32::try_from(p.partition).unwrap_or(-1), p.offset))
                .collect();
            (t.topic, partitions)
        })
        .collect())
}

/// Committed offsets as OffsetFetch's topics and partitions: the types differ between the
/// one-group layout (v1–v7) and the groups of v8+, the fields do not.
macro_rules! committed_topics {
    ($found:expr, $topic:ident, $partition:ident) => {
        $found
            .into_iter()
            .map(|(topic, ps)| {
                $topic::default()
                    .with_name(TopicName(text(topic)))
                    .with_partitions(
                        ps.into_iter()
                            .map(|(p, offset)| {
                                $partition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(offset)
                                    .with_committed_leader_epoch(-1)
                                    .with_metadata(Some(StrBytes::default()))
                            })
                            .collect(),
                    )
            })
            .collect()
    };
}

pub(super) async fn offset_fetch(
    ctx: &Rc<ShardContext>,
    r: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::new();
        for g in r.groups {
            let group = g.group_id.0.to_string();
            let asked = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes))
                    .collect()
            });
            let answer = OffsetFetchResponseGroup::default().with_group_id(g.group_id);
            groups.push(match committed(ctx, &group, asked).await {
                Err(code) => answer.with_error_code(code),
                Ok(found) => answer.with_topics(committed_topics!(
                    found,
                    OffsetFetchResponseTopics,
                    OffsetFetchResponsePartitions
                )),
            });
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let group = r.group_id.0.to_string();
    let asked = r.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    match committed(ctx, &group, asked).await {
        Err(code) => OffsetFetchResponse::default().with_error_code(code),
        Ok(found) => OffsetFetchResponse::default().with_topics(committed_topics!(
            found,
            OffsetFetchResponseTopic,
            OffsetFetchResponsePartition
        )),
    }
}

pub(super) async fn list_groups(
    ctx: &Rc<ShardContext>,
    r: ListGroupsRequest,
) -> ListGroupsResponse {
    let mut groups = Vec::new();
    let mut error = NONE;
    for reply in ctx.call_all(|| KafkaListGroups).await {
        match reply.and_then(|r| r) {
            Ok(listed) => groups.extend(listed),
            Err(e) => error = wire_code(&e),
        }
    }
    let wanted_state = |state: &str| {
        r.states_filter.is_empty()
            || r.states_filter
                .iter()
                .any(|s| s.eq_ignore_ascii_case(state))
    };
    let listed = groups
        .into_iter()
        .filter(|g| wanted_state(g.state))
        .map(|g| {
            ListedGroup::default()
                .with_group_id(GroupId(text(g.group)))
                .with_protocol_type(text(g.protocol_type))
                .with_group_state(text(g.state))
                .with_group_type(text("classic"))
        })
        .filter(|g| {
            r.types_filter.is_empty()
                || r.types_filter
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(&g.group_type))
        })
        .collect();
    ListGroupsResponse::default()
        .with_error_code(error)
        .with_groups(listed)
}

pub(super) async fn describe_groups(
    ctx: &Rc<ShardContext>,
    r: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut described = Vec::new();
    for group_id in r.groups {
        let group = group_id.0.to_string();
        let answer = DescribedGroup::default()
            .with_group_id(group_id)
            .with_authorized_operations(i32::MIN);
        let view = on_coordinator(ctx, &group, KafkaDescribeGroup(group.clone()))
            .await
            .and_then(|r| r.map_err(|e| wire_code(&e)));
        described.push(match view {
            Err(code) => answer.with_error_code(code),
            Ok(view) => describe(answer, view),
        });
    }
    DescribeGroupsResponse::default().with_groups(described)
}

fn describe(answer: DescribedGroup, view: GroupView) -> DescribedGroup {
    match view {
        // Kafka describes a group it does not know as Dead, without an error.
        GroupView::Unknown => answer.with_group_state(text("Dead")),
        GroupView::OffsetsOnly => answer
            .with_group_state(text("Empty"))
            .with_protocol_type(text("consumer")),
        GroupView::Classic(d) => answer
            .with_group_state(text(d.state.as_str()))
            .with_protocol_type(text(d.protocol_type))
            .with_protocol_data(text(d.protocol_name))
            .with_members(
                d.members
                    .into_iter()
                    .map(|m| {
                        DescribedGroupMember::default()
                            .with_member_id(text(m.member_id))
                            .with_group_instance_id(m.instance_id.map(text))
                            .with_client_id(text(m.client_id))
                            .with_client_host(text(m.client_host))
                            .with_member_metadata(m.metadata)
                            .with_member_assignment(m.assignment)
                    })
                    .collect(),
            ),
        GroupView::Native(d) => {
            // Kafka's names for the native states (Reconciling as for KIP-848 groups).
            let state = match d.state {
                GroupState::Empty => "Empty",
                GroupState::Reconciling => "Reconciling",
                GroupState::Stable => "Stable",
            };
            answer
                .with_group_state(text(state))
                .with_protocol_type(text("consumer"))
                .with_protocol_data(text(d.strategy.as_str()))
                .with_members(
                    d.members
                        .into_iter()
                        .map(|m| {
                            let assignment: Vec<(String, Vec<u32>)> = m
                                .assignment
                                .into_iter()
                                .map(|a| (a.topic, a.partitions))
                                .collect();
                            DescribedGroupMember::default()
                                .with_member_id(text(m.member_id))
                                .with_client_id(text(m.client_id))
                                .with_member_metadata(encode_subscription(&m.topics))
                                .with_member_assignment(encode_assignment(&assignment))
                        })
                        .collect(),
                )
        }
    }
}

pub(super) async fn delete_groups(
    ctx: &Rc<ShardContext>,
    r: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut results = Vec::new();
    for group_id in r.groups_names {
        let group = group_id.0.to_string();
        let code = match on_coordinator(ctx, &group, KafkaDeleteGroup(group.clone())).await {
            Err(code) => code,
            Ok(Err(e)) => group_code(&e),
            Ok(Ok(())) => NONE,
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group_id)
                .with_error_code(code),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

pub(super) async fn offset_delete(
    ctx: &Rc<ShardContext>,
    r: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let group = r.group_id.0.to_string();
    let topics: Vec<TopicPartitions> = r
        .topics
        .iter()
        .map(|t| TopicEntry {
            topic: t.name.0.to_string(),
            partitions: t
                .partitions
                .iter()
                .filter_map(|p| u32::try_from(p.partition_index).ok())
                .collect(),
        })
        .collect();
    let call = KafkaOffsetDelete {
        group: group.clone(),
        topics,
    };
    let results = match on_coordinator(ctx, &group, call).await {
        Err(code) => return OffsetDeleteResponse::default().with_error_code(code),
        Ok(Err(e)) => return OffsetDeleteResponse::default().with_error_code(group_code(&e)),
        Ok(Ok(results)) => results,
    };
    let mut codes: BTreeMap<(String, u32), i16> = BTreeMap::new();
    for t in results {
        for p in t.partitions {
            let code = match error_code(p.error) {
                // A member subscribes to the topic.
                NON_EMPTY_GROUP => GROUP_SUBSCRIBED_TO_TOPIC,
                code => code,
            };
            codes.insert((t.topic.clone(), p.partition), code);
        }
    }
    let topics = r
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.0.to_string();
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let code = u32::try_from(p.partition_index)
                        .ok()
                        .and_then(|i| codes.get(&(name.clone(), i)).copied())
                        .unwrap_or(UNKNOWN_TOPIC_OR_PARTITION);
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}
