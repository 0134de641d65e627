//! The Kafka protocol's front end: each handler takes a request the codec in
//! `protocol/kafka` decoded, calls the same services as the native front end (the topics
//! service, the typed partition calls, and the native data handlers where their logic is
//! the same, such as the long-poll fetch loop), and builds the Kafka response. Nothing here
//! owns state.
//!
//! - `admin`: ApiVersions, Metadata, DescribeCluster, FindCoordinator, CreateTopics,
//!   DeleteTopics and CreatePartitions.
//! - `configs`: DescribeConfigs and IncrementalAlterConfigs.
//! - `data`: Produce, ListOffsets.
//! - `fetch`: Fetch, in or out of a fetch session (the sessions are the shard's).
//! - `groups`: the group APIs (JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit,
//!   OffsetFetch, ListGroups, DescribeGroups, DeleteGroups, OffsetDelete).
//! - `producers`: InitProducerId.
//! - `sasl`: SaslHandshake, SaslAuthenticate and the SCRAM credential APIs.

mod admin;
mod configs;
mod data;
mod fetch;
mod groups;
mod producers;
mod sasl;

pub(crate) use data::KafkaReply;
pub(crate) use sasl::{raw_token as sasl_raw_token, Session};

use std::net::SocketAddr;
use std::rc::Rc;

use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};

use super::context::ShardContext;
use crate::protocol::kafka::{
    encode_response, produce_refusal_v0_2, Body, Request, PRODUCE_MIN_SERVED,
};

/// Handles one decoded request. `Ok(None)` means no response is sent (produce with
/// acks = 0); an error means the response could not be encoded and the connection must
/// close. `local` is the address the client connected to (advertised in Metadata), `peer`
/// the client's (shown by DescribeGroups); `session` the connection's authentication.
pub(crate) async fn handle(
    ctx: &Rc<ShardContext>,
    request: Request,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    session: &Session,
) -> Result<Option<KafkaReply>, String> {
    let Request {
        key,
        version,
        correlation_id,
        client_id,
        body,
    } = request;
    let body = match body {
        Body::Produce(r) if version < PRODUCE_MIN_SERVED => {
            tracing::debug!(version, "kafka produce below v3: refused");
            if r.acks == 0 {
                return Ok(None);
            }
            let topics: Vec<(String, Vec<i32>)> = r
                .topics
                .into_iter()
                .map(|t| (t.name, t.partitions.iter().map(|p| p.index).collect()))
                .collect();
            let frame = produce_refusal_v0_2(version, correlation_id, &topics);
            return Ok(Some(KafkaReply::frame(frame)));
        }
        Body::Produce(r) => {
            return match data::produce(ctx, r).await {
                Some(response) => plain(
                    key,
                    version,
                    correlation_id,
                    &ResponseKind::Produce(response),
                )
                .map(Some),
                None => Ok(None),
            };
        }
        Body::Kind(body) => *body,
    };
    let response = match body {
        RequestKind::ApiVersions(r) => {
            tracing::debug!(
                client = client_id.as_deref().unwrap_or(""),
                software = %r.client_software_name.as_str(),
                "kafka handshake"
            );
            ResponseKind::ApiVersions(admin::api_versions())
        }
        RequestKind::Metadata(r) => ResponseKind::Metadata(admin::metadata(ctx, r, version, local)),
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(admin::create_topics(ctx, r, version).await)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(admin::delete_topics(ctx, r, version).await)
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(configs::describe_configs(ctx, r, version).await)
        }
        RequestKind::IncrementalAlterConfigs(r) => {
            ResponseKind::IncrementalAlterConfigs(configs::incremental_alter_configs(ctx, r).await)
        }
        RequestKind::DescribeCluster(r) => {
            ResponseKind::DescribeCluster(admin::describe_cluster(ctx, r, local))
        }
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(admin::create_partitions(ctx, r))
        }
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(admin::find_coordinator(ctx, r, version, local))
        }
        RequestKind::Fetch(r) => {
            return Ok(Some(fetch::fetch(ctx, r, version, correlation_id).await));
        }
        RequestKind::ListOffsets(r) => ResponseKind::ListOffsets(data::list_offsets(ctx, r).await),
        RequestKind::JoinGroup(r) => {
            let client = client_id.as_deref().unwrap_or("");
            ResponseKind::JoinGroup(groups::join_group(ctx, r, version, peer, client).await)
        }
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(groups::sync_group(ctx, r).await),
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(groups::heartbeat(ctx, r).await),
        RequestKind::LeaveGroup(r) => {
            ResponseKind::LeaveGroup(groups::leave_group(ctx, r, version).await)
        }
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(groups::offset_commit(ctx, r).await)
        }
        RequestKind::OffsetFetch(r) => {
            ResponseKind::OffsetFetch(groups::offset_fetch(ctx, r, version).await)
        }
        RequestKind::ListGroups(r) => ResponseKind::ListGroups(groups::list_groups(ctx, r).await),
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(groups::describe_groups(ctx, r).await)
        }
        RequestKind::DeleteGroups(r) => {
            ResponseKind::DeleteGroups(groups::delete_groups(ctx, r).await)
        }
        RequestKind::OffsetDelete(r) => {
            ResponseKind::OffsetDelete(groups::offset_delete(ctx, r).await)
        }
        RequestKind::SaslHandshake(r) => {
            ResponseKind::SaslHandshake(sasl::handshake(ctx, session, r, version))
        }
        RequestKind::SaslAuthenticate(r) => {
            ResponseKind::SaslAuthenticate(sasl::authenticate(ctx, session, r, peer).await)
        }
        RequestKind::DescribeUserScramCredentials(r) => ResponseKind::DescribeUserScramCredentials(
            sasl::describe_user_scram_credentials(ctx, session, r),
        ),
        RequestKind::AlterUserScramCredentials(r) => ResponseKind::AlterUserScramCredentials(
            sasl::alter_user_scram_credentials(ctx, session, r),
        ),
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(producers::init_producer_id(ctx, r))
        }
        other => {
            // decode_request lets through only the APIs of SUPPORTED, all handled above.
            return Err(format!("no handler for {key:?} ({other:?})"));
        }
    };
    plain(key, version, correlation_id, &response).map(Some)
}

fn plain(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &ResponseKind,
) -> Result<KafkaReply, String> {
    encode_response(key, version, correlation_id, response).map(KafkaReply::frame)
}
