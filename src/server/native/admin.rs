//! API versions, metadata and the topic admin requests.

use std::net::IpAddr;
use std::rc::Rc;

use crate::protocol::api::*;
use crate::protocol::{ErrorCode, WireError};
use crate::server::context::ShardContext;
use crate::server::topics;
use crate::storage::catalog::TopicMeta;

pub(super) fn api_versions(ctx: &ShardContext, r: ApiVersionsRequest) -> Response {
    tracing::debug!(client = %r.client_name, "handshake");
    Response::ApiVersions(ApiVersionsResponse {
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
    })
}

pub(super) fn list_topics(ctx: &ShardContext) -> Response {
    let catalog = ctx.catalog.snapshot();
    Response::ListTopics(ListTopicsResponse {
        topics: catalog
            .topics
            .values()
            .map(|t| TopicListing {
                name: t.name.clone(),
                partitions: t.partitions,
            })
            .collect(),
    })
}

pub(super) fn metadata(
    ctx: &ShardContext,
    r: MetadataRequest,
    local_ip: Option<IpAddr>,
) -> Response {
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

pub(super) async fn create_topic(
    ctx: &Rc<ShardContext>,
    r: CreateTopicRequest,
) -> Result<Response, WireError> {
    topics::create(ctx, &r.name, r.partitions, &r.configs).await?;
    Ok(Response::CreateTopic)
}

pub(super) async fn delete_topic(
    ctx: &Rc<ShardContext>,
    r: DeleteTopicRequest,
) -> Result<Response, WireError> {
    topics::delete(ctx, &r.name).await?;
    Ok(Response::DeleteTopic)
}

pub(super) async fn alter_topic(
    ctx: &Rc<ShardContext>,
    r: AlterTopicConfigRequest,
) -> Result<Response, WireError> {
    topics::alter(ctx, &r.name, &r.configs, &[]).await?;
    Ok(Response::AlterTopicConfig)
}

pub(super) async fn describe_topic(
    ctx: &Rc<ShardContext>,
    r: DescribeTopicRequest,
) -> Result<Response, WireError> {
    let (topic, partitions, configs) = topics::describe(ctx, &r.name).await?;
    Ok(Response::DescribeTopic(DescribeTopicResponse {
        name: topic.name.clone(),
        partitions,
        configs,
    }))
}
