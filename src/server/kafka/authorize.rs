//! The authorizer on the Kafka listener: which resources of a request its caller may
//! touch, with Kafka's operation for each API and Kafka's answer for the rest
//! (TOPIC_AUTHORIZATION_FAILED per topic or partition, GROUP_AUTHORIZATION_FAILED per group).
//!
//! Each function either takes the denied resources out of a request before its handler
//! runs and adds their refusals to the handler's response after (`split_*` / `refuse_*`
//! pairs), or filters a listing. The handlers never see a resource their caller may not
//! touch. Fetch checks its partitions itself (`fetch.rs`).

use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::DescribeConfigsResult;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::OffsetFetchResponseGroup;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::auth::acl::{Operation, ResourceType};
use crate::protocol::kafka::error::{GROUP_AUTHORIZATION_FAILED, TOPIC_AUTHORIZATION_FAILED};
use crate::protocol::kafka::produce::ProduceData;
use crate::server::authorizer::Caller;

/// Kafka's DescribeConfigs / IncrementalAlterConfigs resource type of a topic.
const TOPIC_RESOURCE: i8 = 2;

fn denied_message(caller: &Caller, operation: Operation, what: &str, name: &str) -> StrBytes {
    StrBytes::from_string(format!(
        "User:{} may not {operation} {what} {name}",
        caller.user()
    ))
}

fn topic(caller: &Caller, operation: Operation, name: &str) -> bool {
    caller.may(operation, ResourceType::Topic, name)
}

/// Whether `caller` may do `operation` to the group `id`.
pub(super) fn group(caller: &Caller, operation: Operation, id: &str) -> bool {
    caller.may(operation, ResourceType::Group, id)
}

/// Metadata: topics named in the request that may not be described get
/// TOPIC_AUTHORIZATION_FAILED; in an all-topics request they are left out.
pub(super) fn metadata(
    caller: &Caller,
    named: bool,
    mut response: MetadataResponse,
) -> MetadataResponse {
    let may = |t: &metadata_response::MetadataResponseTopic| {
        t.name
            .as_ref()
            .is_none_or(|n| topic(caller, Operation::Describe, n.as_str()))
    };
    if named {
        for t in response.topics.iter_mut().filter(|t| !may(t)) {
            t.error_code = TOPIC_AUTHORIZATION_FAILED;
            t.partitions.clear();
        }
    } else {
        response.topics.retain(may);
    }
    response
}

/// Produce: the topics the caller may not write to, taken out of the request.
pub(super) fn split_produce(caller: &Caller, r: &mut ProduceData) -> Vec<(String, Vec<i32>)> {
    if caller.allows_all() {
        // The data path: no reshuffling of the request when nothing can be refused.
        return Vec::new();
    }
    let (denied, allowed) = std::mem::take(&mut r.topics)
        .into_iter()
        .partition(|t| !topic(caller, Operation::Write, &t.name));
    r.topics = allowed;
    denied
        .into_iter()
        .map(|t: crate::protocol::kafka::produce::ProduceTopicData| {
            (t.name, t.partitions.iter().map(|p| p.index).collect())
        })
        .collect()
}

/// Produce: the refusals of the topics [`split_produce`] took out.
pub(super) fn refuse_produce(
    mut response: ProduceResponse,
    denied: Vec<(String, Vec<i32>)>,
) -> ProduceResponse {
    for (name, partitions) in denied {
        response.responses.push(
            TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_string(name)))
                .with_partition_responses(
                    partitions
                        .into_iter()
                        .map(|index| {
                            PartitionProduceResponse::default()
                                .with_index(index)
                                .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                                .with_base_offset(-1)
                        })
                        .collect(),
                ),
        );
    }
    response
}

/// ListOffsets: the topics the caller may not describe, taken out of the request.
pub(super) fn split_list_offsets(
    caller: &Caller,
    r: &mut ListOffsetsRequest,
) -> Vec<list_offsets_request::ListOffsetsTopic> {
    if caller.allows_all() {
        return Vec::new();
    }
    let (denied, allowed) = std::mem::take(&mut r.topics)
        .into_iter()
        .partition(|t| !topic(caller, Operation::Describe, t.name.as_str()));
    r.topics = allowed;
    denied
}

/// ListOffsets: the refusals of the topics [`split_list_offsets`] took out.
pub(super) fn refuse_list_offsets(
    mut response: ListOffsetsResponse,
    denied: Vec<list_offsets_request::ListOffsetsTopic>,
) -> ListOffsetsResponse {
    for t in denied {
        response.topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            ListOffsetsPartitionResponse::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                                .with_offset(-1)
                                .with_timestamp(-1)
                        })
                        .collect(),
                ),
        );
    }
    response
}

/// CreateTopics: the topics the caller may not create, taken out of the request.
pub(super) fn split_create_topics(caller: &Caller, r: &mut CreateTopicsRequest) -> Vec<TopicName> {
    let (denied, allowed): (Vec<_>, Vec<_>) = std::mem::take(&mut r.topics)
        .into_iter()
        .partition(|t| !caller.may_create_topic(t.name.as_str()));
    r.topics = allowed;
    denied.into_iter().map(|t| t.name).collect()
}

/// CreateTopics: the refusals of the topics [`split_create_topics`] took out.
pub(super) fn refuse_create_topics(
    caller: &Caller,
    mut response: CreateTopicsResponse,
    denied: Vec<TopicName>,
) -> CreateTopicsResponse {
    for name in denied {
        let message = denied_message(caller, Operation::Create, "topic", name.as_str());
        response.topics.push(
            CreatableTopicResult::default()
                .with_name(name)
                .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                .with_error_message(Some(message))
                .with_num_partitions(-1)
                .with_replication_factor(-1),
        );
    }
    response
}

/// DeleteTopics: the topics the caller may not delete, taken out of the request (by name,
/// in either of the request's lists).
pub(super) fn split_delete_topics(caller: &Caller, r: &mut DeleteTopicsRequest) -> Vec<TopicName> {
    let may = |name: &TopicName| topic(caller, Operation::Delete, name.as_str());
    let mut denied = Vec::new();
    r.topic_names.retain(|n| {
        may(n) || {
            denied.push(n.clone());
            false
        }
    });
    r.topics.retain(|t| match &t.name {
        Some(n) if !may(n) => {
            denied.push(n.clone());
            false
        }
        _ => true,
    });
    denied
}

/// DeleteTopics: the refusals of the topics [`split_delete_topics`] took out.
pub(super) fn refuse_delete_topics(
    caller: &Caller,
    mut response: DeleteTopicsResponse,
    denied: Vec<TopicName>,
) -> DeleteTopicsResponse {
    for name in denied {
        let message = denied_message(caller, Operation::Delete, "topic", name.as_str());
        response.responses.push(
            DeletableTopicResult::default()
                .with_name(Some(name))
                .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                .with_error_message(Some(message)),
        );
    }
    response
}

/// DescribeConfigs: the topics whose configs the caller may not read, taken out.
pub(super) fn split_describe_configs(
    caller: &Caller,
    r: &mut DescribeConfigsRequest,
) -> Vec<StrBytes> {
    let mut denied = Vec::new();
    r.resources.retain(|res| {
        let ok = res.resource_type != TOPIC_RESOURCE
            || topic(
                caller,
                Operation::DescribeConfigs,
                res.resource_name.as_str(),
            );
        if !ok {
            denied.push(res.resource_name.clone());
        }
        ok
    });
    denied
}

/// DescribeConfigs: the refusals of the topics [`split_describe_configs`] took out.
pub(super) fn refuse_describe_configs(
    caller: &Caller,
    mut response: DescribeConfigsResponse,
    denied: Vec<StrBytes>,
) -> DescribeConfigsResponse {
    for name in denied {
        let message = denied_message(caller, Operation::DescribeConfigs, "topic", name.as_str());
        response.results.push(
            DescribeConfigsResult::default()
                .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                .with_error_message(Some(message))
                .with_resource_type(TOPIC_RESOURCE)
                .with_resource_name(name),
        );
    }
    response
}

/// IncrementalAlterConfigs: the topics whose configs the caller may not change, taken out.
pub(super) fn split_alter_configs(
    caller: &Caller,
    r: &mut IncrementalAlterConfigsRequest,
) -> Vec<StrBytes> {
    let mut denied = Vec::new();
    r.resources.retain(|res| {
        let ok = res.resource_type != TOPIC_RESOURCE
            || topic(caller, Operation::AlterConfigs, res.resource_name.as_str());
        if !ok {
            denied.push(res.resource_name.clone());
        }
        ok
    });
    denied
}

/// IncrementalAlterConfigs: the refusals of the topics [`split_alter_configs`] took out.
pub(super) fn refuse_alter_configs(
    caller: &Caller,
    mut response: IncrementalAlterConfigsResponse,
    denied: Vec<StrBytes>,
) -> IncrementalAlterConfigsResponse {
    for name in denied {
        let message = denied_message(caller, Operation::AlterConfigs, "topic", name.as_str());
        response.responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(TOPIC_AUTHORIZATION_FAILED)
                .with_error_message(Some(message))
                .with_resource_type(TOPIC_RESOURCE)
                .with_resource_name(name),
        );
    }
    response
}

/// OffsetCommit: every partition gets GROUP_AUTHORIZATION_FAILED when the group may not be
/// read; else the topics that may not be read are taken out.
pub(super) fn split_offset_commit(
    caller: &Caller,
    r: &mut OffsetCommitRequest,
) -> (i16, Vec<offset_commit_request::OffsetCommitRequestTopic>) {
    if caller.allows_all() {
        return (TOPIC_AUTHORIZATION_FAILED, Vec::new());
    }
    if !group(caller, Operation::Read, r.group_id.as_str()) {
        return (GROUP_AUTHORIZATION_FAILED, std::mem::take(&mut r.topics));
    }
    let (denied, allowed) = std::mem::take(&mut r.topics)
        .into_iter()
        .partition(|t| !topic(caller, Operation::Read, t.name.as_str()));
    r.topics = allowed;
    (TOPIC_AUTHORIZATION_FAILED, denied)
}

/// OffsetCommit: the refusals of what [`split_offset_commit`] took out.
pub(super) fn refuse_offset_commit(
    mut response: OffsetCommitResponse,
    (error, denied): (i16, Vec<offset_commit_request::OffsetCommitRequestTopic>),
) -> OffsetCommitResponse {
    for t in denied {
        response.topics.push(
            OffsetCommitResponseTopic::default()
                .with_name(t.name)
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(error)
                        })
                        .collect(),
                ),
        );
    }
    response
}

/// OffsetFetch v8+: the groups the caller may not describe, taken out.
pub(super) fn split_offset_fetch(caller: &Caller, r: &mut OffsetFetchRequest) -> Vec<GroupId> {
    let mut denied = Vec::new();
    r.groups.retain(|g| {
        let ok = group(caller, Operation::Describe, g.group_id.as_str());
        if !ok {
            denied.push(g.group_id.clone());
        }
        ok
    });
    denied
}

/// OffsetFetch v8+: the refusals of the groups [`split_offset_fetch`] took out.
pub(super) fn refuse_offset_fetch(
    mut response: OffsetFetchResponse,
    denied: Vec<GroupId>,
) -> OffsetFetchResponse {
    for id in denied {
        response.groups.push(
            OffsetFetchResponseGroup::default()
                .with_group_id(id)
                .with_error_code(GROUP_AUTHORIZATION_FAILED),
        );
    }
    response
}

/// DescribeGroups / DeleteGroups: the groups the caller may not `operation`, taken out.
pub(super) fn split_groups(
    caller: &Caller,
    operation: Operation,
    groups: &mut Vec<GroupId>,
) -> Vec<GroupId> {
    let mut denied = Vec::new();
    groups.retain(|g| {
        let ok = group(caller, operation, g.as_str());
        if !ok {
            denied.push(g.clone());
        }
        ok
    });
    denied
}

/// DescribeGroups: the refusals of the groups [`split_groups`] took out.
pub(super) fn refuse_describe_groups(
    mut response: DescribeGroupsResponse,
    denied: Vec<GroupId>,
) -> DescribeGroupsResponse {
    for id in denied {
        response.groups.push(
            DescribedGroup::default()
                .with_group_id(id)
                .with_error_code(GROUP_AUTHORIZATION_FAILED),
        );
    }
    response
}

/// DeleteGroups: the refusals of the groups [`split_groups`] took out.
pub(super) fn refuse_delete_groups(
    mut response: DeleteGroupsResponse,
    denied: Vec<GroupId>,
) -> DeleteGroupsResponse {
    for id in denied {
        response.results.push(
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(GROUP_AUTHORIZATION_FAILED),
        );
    }
    response
}

/// FindCoordinator: a group's coordinator only for a caller that may describe the group
/// (GROUP_AUTHORIZATION_FAILED, and no node, otherwise). `key` is v0–v3's single key;
/// v4+ answers each key of its list. Transaction keys are left as they are.
pub(super) fn find_coordinator(
    caller: &Caller,
    key_type: i8,
    key: Option<String>,
    mut response: FindCoordinatorResponse,
) -> FindCoordinatorResponse {
    if key_type != 0 {
        return response;
    }
    let denied = |k: &str| !group(caller, Operation::Describe, k);
    if key.as_deref().is_some_and(denied) {
        response.error_code = GROUP_AUTHORIZATION_FAILED;
        response.node_id = BrokerId(-1);
        response.host = StrBytes::default();
        response.port = -1;
    }
    for c in response
        .coordinators
        .iter_mut()
        .filter(|c| denied(c.key.as_str()))
    {
        c.error_code = GROUP_AUTHORIZATION_FAILED;
        c.node_id = BrokerId(-1);
        c.host = StrBytes::default();
        c.port = -1;
    }
    response
}

/// ListGroups: only the groups the caller may describe.
pub(super) fn list_groups(caller: &Caller, mut response: ListGroupsResponse) -> ListGroupsResponse {
    response
        .groups
        .retain(|g| group(caller, Operation::Describe, g.group_id.as_str()));
    response
}
