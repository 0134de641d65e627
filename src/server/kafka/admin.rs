//! ApiVersions, Metadata, DescribeCluster, FindCoordinator, CreateTopics, DeleteTopics
//! and CreatePartitions.

use std::net::SocketAddr;
use std::rc::Rc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiVersionsResponse, BrokerId, CreatePartitionsRequest, CreatePartitionsResponse,
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeClusterRequest, DescribeClusterResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::protocol::kafka::api_versions_response;
use crate::protocol::kafka::error::{
    error_code, COORDINATOR_NOT_AVAILABLE, INVALID_PARTITIONS, INVALID_REPLICATION_FACTOR,
    INVALID_REQUEST, NONE, UNKNOWN_TOPIC_ID, UNKNOWN_TOPIC_OR_PARTITION,
};
use crate::protocol::WireError;
use crate::server::context::ShardContext;
use crate::server::topics;
use crate::storage::catalog::TopicMeta;

/// The one broker a Kafka client sees: it leads every partition.
pub(super) const NODE_ID: i32 = 0;

pub(super) fn api_versions() -> ApiVersionsResponse {
    api_versions_response()
}

/// The address Kafka clients are told to use: the listener's, or, when it listens on an
/// unspecified address (0.0.0.0), the address this client reached.
fn advertised(ctx: &ShardContext, local: Option<SocketAddr>) -> (String, i32) {
    let listen = ctx.config.kafka_listen;
    let ip = match (listen, local) {
        (Some(l), Some(a)) if l.ip().is_unspecified() => a.ip(),
        (Some(l), _) => l.ip(),
        (None, Some(a)) => a.ip(),
        (None, None) => [127, 0, 0, 1].into(),
    };
    // The listener's real port is the one the client reached (port 0 picks one at start).
    let port = local.map(|a| a.port()).or(listen.map(|l| l.port()));
    (ip.to_string(), i32::from(port.unwrap_or(0)))
}

pub(super) fn metadata(
    ctx: &ShardContext,
    r: MetadataRequest,
    version: i16,
    local: Option<SocketAddr>,
) -> MetadataResponse {
    let catalog = ctx.catalog.snapshot();
    let describe = |t: &TopicMeta| {
        MetadataResponseTopic::default()
            .with_error_code(NONE)
            .with_name(Some(TopicName(StrBytes::from_string(t.name.clone()))))
            .with_partitions(
                (0..t.partitions)
                    .map(|p| {
                        MetadataResponsePartition::default()
                            .with_error_code(NONE)
                            .with_partition_index(p as i32)
                            .with_leader_id(BrokerId(NODE_ID))
                            .with_leader_epoch(0)
                            .with_replica_nodes(vec![BrokerId(NODE_ID)])
                            .with_isr_nodes(vec![BrokerId(NODE_ID)])
                    })
                    .collect(),
            )
    };
    // v0 asks for every topic with an empty list, v1+ with a null one.
    let wanted = match r.topics {
        Some(list) if !(list.is_empty() && version == 0) => Some(list),
        _ => None,
    };
    let topics = match wanted {
        None => catalog.topics.values().map(|t| describe(t)).collect(),
        Some(list) => list
            .into_iter()
            .map(|t| {
                let name = t.name.map(|n| n.0.to_string()).unwrap_or_default();
                match catalog.topics.get(&name) {
                    Some(meta) => describe(meta),
                    // No topic ids are kept (the crate's default is the zero uuid).
                    None => MetadataResponseTopic::default()
                        .with_error_code(UNKNOWN_TOPIC_OR_PARTITION)
                        .with_name(Some(TopicName(StrBytes::from_string(name)))),
                }
            })
            .collect(),
    };
    let (host, port) = advertised(ctx, local);
    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(NODE_ID))
            .with_host(StrBytes::from_string(host))
            .with_port(port)])
        .with_cluster_id(Some(StrBytes::from(CLUSTER_ID)))
        .with_controller_id(BrokerId(NODE_ID))
        .with_topics(topics)
}

/// The cluster id Metadata and DescribeCluster give.
const CLUSTER_ID: &str = "eventflow";

/// The one broker, as controller. Requests for the controller endpoint (v1
/// `endpoint_type` 2) get the same answer: the broker is its own controller.
pub(super) fn describe_cluster(
    ctx: &ShardContext,
    _r: DescribeClusterRequest,
    local: Option<SocketAddr>,
) -> DescribeClusterResponse {
    let (host, port) = advertised(ctx, local);
    DescribeClusterResponse::default()
        .with_endpoint_type(1)
        .with_cluster_id(StrBytes::from(CLUSTER_ID))
        .with_controller_id(BrokerId(NODE_ID))
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(BrokerId(NODE_ID))
            .with_host(StrBytes::from_string(host))
            .with_port(port)])
}

/// Kafka's FindCoordinator key types.
const KEY_GROUP: i8 = 0;
const KEY_TRANSACTION: i8 = 1;

/// Group keys: node 0 at the Kafka listener's address. Transaction keys (no transactions)
/// get COORDINATOR_NOT_AVAILABLE, other key types INVALID_REQUEST. v0-v3 carry one key,
/// v4+ a list.
pub(super) fn find_coordinator(
    ctx: &ShardContext,
    r: FindCoordinatorRequest,
    version: i16,
    local: Option<SocketAddr>,
) -> FindCoordinatorResponse {
    let (host, port) = advertised(ctx, local);
    let answer = |key: StrBytes| -> Coordinator {
        let found = Coordinator::default().with_key(key);
        match r.key_type {
            KEY_GROUP => found
                .with_node_id(BrokerId(NODE_ID))
                .with_host(StrBytes::from_string(host.clone()))
                .with_port(port),
            KEY_TRANSACTION => found
                .with_error_code(COORDINATOR_NOT_AVAILABLE)
                .with_error_message(Some(StrBytes::from("transactions are not supported")))
                .with_node_id(BrokerId(-1))
                .with_port(-1),
            other => found
                .with_error_code(INVALID_REQUEST)
                .with_error_message(Some(StrBytes::from_string(format!(
                    "coordinator key type {other} is not served"
                ))))
                .with_node_id(BrokerId(-1))
                .with_port(-1),
        }
    };
    if version >= 4 {
        let coordinators = r.coordinator_keys.iter().cloned().map(answer).collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let one = answer(r.key.clone());
    FindCoordinatorResponse::default()
        .with_error_code(one.error_code)
        .with_error_message(one.error_message)
        .with_node_id(one.node_id)
        .with_host(one.host)
        .with_port(one.port)
}

/// Refuses to add partitions: a partition's owning shard is a function of the partition
/// count, so adding partitions would move existing data between shards.
pub(super) fn create_partitions(
    ctx: &ShardContext,
    r: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let results = r
        .topics
        .into_iter()
        .map(|t| {
            let (code, message) = match ctx.catalog.get(t.name.0.as_str()) {
                None => (
                    UNKNOWN_TOPIC_OR_PARTITION,
                    format!("topic `{}` does not exist", t.name.0.as_str()),
                ),
                Some(meta) if t.count <= meta.partitions as i32 => (
                    INVALID_PARTITIONS,
                    format!(
                        "topic `{}` has {} partitions; the count can only grow",
                        meta.name, meta.partitions
                    ),
                ),
                Some(_) => (
                    INVALID_PARTITIONS,
                    "eventflow cannot add partitions to an existing topic yet".to_string(),
                ),
            };
            CreatePartitionsTopicResult::default()
                .with_name(t.name)
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(message)))
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}

/// Partitions of a topic created with `num_partitions = -1` (the broker's default).
const DEFAULT_PARTITIONS: u32 = 1;

/// A Kafka error code and message for one topic of an admin request.
pub(super) type TopicError = (i16, String);

pub(super) fn wire_error(e: WireError) -> TopicError {
    (error_code(e.code), e.message)
}

/// Creates each topic through the topics service, one after another.
pub(super) async fn create_topics(
    ctx: &Rc<ShardContext>,
    r: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(r.topics.len());
    for t in r.topics {
        let name = t.name.0.to_string();
        // Zero and negatives other than -1: the catalog refuses them (INVALID_PARTITIONS).
        let partitions = match t.num_partitions {
            -1 => DEFAULT_PARTITIONS,
            n => u32::try_from(n).unwrap_or(0),
        };
        let outcome: Result<u32, TopicError> = if r.validate_only {
            Err((
                INVALID_REQUEST,
                "validate-only topic creation is not supported".to_string(),
            ))
        } else if !matches!(t.replication_factor, -1 | 1) {
            Err((
                INVALID_REPLICATION_FACTOR,
                format!(
                    "replication factor {} is not possible on a single node: use 1 or -1",
                    t.replication_factor
                ),
            ))
        } else if !t.assignments.is_empty() {
            Err((
                INVALID_REQUEST,
                "manual replica assignment is not supported".to_string(),
            ))
        } else {
            let configs: Vec<(String, String)> = t
                .configs
                .iter()
                .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
                .collect();
            topics::create(ctx, &name, partitions, &configs)
                .await
                .map(|meta| meta.partitions)
                .map_err(wire_error)
        };
        let mut result =
            CreatableTopicResult::default().with_name(TopicName(StrBytes::from_string(name)));
        match outcome {
            Ok(partitions) => {
                if version >= 5 {
                    result = result
                        .with_num_partitions(partitions as i32)
                        .with_replication_factor(1);
                }
            }
            Err((code, message)) => {
                result = result.with_error_code(code);
                if version >= 1 {
                    result = result.with_error_message(Some(StrBytes::from_string(message)));
                }
            }
        }
        results.push(result);
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// Deletes each topic through the topics service, one after another. Topics are named
/// (v1-v6); the broker keeps no topic ids, so an entry naming only an id is unknown.
pub(super) async fn delete_topics(
    ctx: &Rc<ShardContext>,
    r: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let names: Vec<Option<TopicName>> = if version >= 6 {
        r.topics.into_iter().map(|t| t.name).collect()
    } else {
        r.topic_names.into_iter().map(Some).collect()
    };
    let mut results = Vec::with_capacity(names.len());
    for name in names {
        let outcome = match &name {
            Some(name) => topics::delete(ctx, name.0.as_str())
                .await
                .map_err(wire_error),
            None => Err((UNKNOWN_TOPIC_ID, "topics are deleted by name".to_string())),
        };
        let mut result = DeletableTopicResult::default().with_name(name);
        if let Err((code, message)) = outcome {
            result = result.with_error_code(code);
            if version >= 5 {
                result = result.with_error_message(Some(StrBytes::from_string(message)));
            }
        }
        results.push(result);
    }
    DeleteTopicsResponse::default().with_responses(results)
}
