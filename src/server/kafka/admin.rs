//! ApiVersions and Metadata.

use std::net::SocketAddr;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiVersionsResponse, BrokerId, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::protocol::kafka::api_versions_response;
use crate::protocol::kafka::error::{NONE, UNKNOWN_TOPIC_OR_PARTITION};
use crate::server::context::ShardContext;
use crate::storage::catalog::TopicMeta;

/// The one broker a Kafka client sees: it leads every partition.
const NODE_ID: i32 = 0;

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
        .with_cluster_id(Some(StrBytes::from("eventflow")))
        .with_controller_id(BrokerId(NODE_ID))
        .with_topics(topics)
}
