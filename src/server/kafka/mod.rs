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
//! - `acls`: CreateAcls, DescribeAcls, DeleteAcls.
//! - `authorize`: what each API's caller may touch (the authorizer, Kafka's answers).
//! - `client_quotas`: AlterClientQuotas, DescribeClientQuotas.
//! - `throttle`: a response's `throttle_time_ms` (the quota metering is `server/quotas.rs`).

mod acls;
mod admin;
mod authorize;
mod client_quotas;
mod configs;
mod data;
mod fetch;
mod groups;
mod producers;
mod sasl;
mod throttle;

pub(crate) use data::KafkaReply;
pub(crate) use sasl::{raw_token as sasl_raw_token, Session};

use std::net::SocketAddr;
use std::rc::Rc;

use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};

use super::authorizer::Caller;
use super::context::ShardContext;
use super::quotas::{self, Metering};
use crate::auth::acl::Operation::{Delete, Describe, Read};
use crate::protocol::kafka::error::GROUP_AUTHORIZATION_FAILED;
use crate::protocol::kafka::{
    encode_response, produce_refusal_v0_2, Body, Request, PRODUCE_MIN_SERVED,
};
use kafka_protocol::messages::{
    HeartbeatResponse, JoinGroupResponse, LeaveGroupResponse, OffsetDeleteResponse,
    OffsetFetchResponse, SyncGroupResponse,
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
    let caller = Caller::new(ctx, &session.borrow(), peer);
    // The authentication exchange is never held back (there is no principal yet).
    let exempt = matches!(
        request.key,
        ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
    );
    let metering = if exempt {
        None
    } else {
        let client_id = request.client_id.as_deref().unwrap_or("");
        quotas::admit(
            &ctx.quota_meters,
            &ctx.global.quotas,
            &ctx.shutdown,
            caller.user(),
            client_id,
        )
        .await
    };
    let Some(metering) = metering else {
        return serve(ctx, request, local, peer, session, &caller, None).await;
    };
    metering
        .timed(serve(
            ctx,
            request,
            local,
            peer,
            session,
            &caller,
            Some(&metering),
        ))
        .await
}

/// Serves one request; `metering` counts it against the caller's quotas (`None`: no quota
/// is set) and gives the response its throttle time.
async fn serve(
    ctx: &Rc<ShardContext>,
    request: Request,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    session: &Session,
    caller: &Caller,
    metering: Option<&Metering>,
) -> Result<Option<KafkaReply>, String> {
    let Request {
        key,
        version,
        correlation_id,
        client_id,
        body,
    } = request;
    let finish = || metering.map_or(0, |m| m.finish(&ctx.quota_meters));
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
        Body::Produce(mut r) => {
            let denied = authorize::split_produce(caller, &mut r);
            if let Some(m) = metering {
                let bytes: usize = r
                    .topics
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .map(|p| p.records.len())
                    .sum();
                m.produced(&ctx.quota_meters, bytes as u64);
            }
            let answer = data::produce(ctx, r).await;
            let throttle_time_ms = finish();
            return match answer {
                Some(response) => plain(
                    key,
                    version,
                    correlation_id,
                    &ResponseKind::Produce(
                        authorize::refuse_produce(response, denied)
                            .with_throttle_time_ms(throttle_time_ms),
                    ),
                )
                .map(Some),
                // acks = 0 has no answer to carry the refusal: the connection closes, as
                // Kafka closes it, so the producer learns something is wrong.
                None if !denied.is_empty() => Err(format!(
                    "User:{} may not write to {}: an acks=0 produce refused",
                    caller.user(),
                    denied
                        .iter()
                        .map(|(topic, _)| topic.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
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
        RequestKind::Metadata(r) => {
            let named = r.topics.as_ref().is_some_and(|t| !t.is_empty());
            let response = admin::metadata(ctx, r, version, local);
            ResponseKind::Metadata(authorize::metadata(caller, named, response))
        }
        RequestKind::CreateTopics(mut r) => {
            let denied = authorize::split_create_topics(caller, &mut r);
            let response = admin::create_topics(ctx, r, version).await;
            ResponseKind::CreateTopics(authorize::refuse_create_topics(caller, response, denied))
        }
        RequestKind::DeleteTopics(mut r) => {
            let denied = authorize::split_delete_topics(caller, &mut r);
            let response = admin::delete_topics(ctx, r, version).await;
            ResponseKind::DeleteTopics(authorize::refuse_delete_topics(caller, response, denied))
        }
        RequestKind::DescribeConfigs(mut r) => {
            let denied = authorize::split_describe_configs(caller, &mut r);
            let response = configs::describe_configs(ctx, r, version).await;
            ResponseKind::DescribeConfigs(authorize::refuse_describe_configs(
                caller, response, denied,
            ))
        }
        RequestKind::IncrementalAlterConfigs(mut r) => {
            let denied = authorize::split_alter_configs(caller, &mut r);
            let response = configs::incremental_alter_configs(ctx, r).await;
            ResponseKind::IncrementalAlterConfigs(authorize::refuse_alter_configs(
                caller, response, denied,
            ))
        }
        RequestKind::DescribeCluster(r) => {
            ResponseKind::DescribeCluster(admin::describe_cluster(ctx, r, local))
        }
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(admin::create_partitions(ctx, r))
        }
        RequestKind::FindCoordinator(r) => {
            let (key_type, key) = (r.key_type, (version < 4).then(|| r.key.to_string()));
            let response = admin::find_coordinator(ctx, r, version, local);
            ResponseKind::FindCoordinator(authorize::find_coordinator(
                caller, key_type, key, response,
            ))
        }
        RequestKind::Fetch(r) => {
            return Ok(Some(
                fetch::fetch(ctx, r, version, correlation_id, caller, metering).await,
            ));
        }
        RequestKind::ListOffsets(mut r) => {
            let denied = authorize::split_list_offsets(caller, &mut r);
            let response = data::list_offsets(ctx, r).await;
            ResponseKind::ListOffsets(authorize::refuse_list_offsets(response, denied))
        }
        RequestKind::JoinGroup(r) if !authorize::group(caller, Read, r.group_id.as_str()) => {
            ResponseKind::JoinGroup(
                JoinGroupResponse::default()
                    .with_error_code(GROUP_AUTHORIZATION_FAILED)
                    .with_generation_id(-1),
            )
        }
        RequestKind::SyncGroup(r) if !authorize::group(caller, Read, r.group_id.as_str()) => {
            ResponseKind::SyncGroup(
                SyncGroupResponse::default().with_error_code(GROUP_AUTHORIZATION_FAILED),
            )
        }
        RequestKind::Heartbeat(r) if !authorize::group(caller, Read, r.group_id.as_str()) => {
            ResponseKind::Heartbeat(
                HeartbeatResponse::default().with_error_code(GROUP_AUTHORIZATION_FAILED),
            )
        }
        RequestKind::LeaveGroup(r) if !authorize::group(caller, Read, r.group_id.as_str()) => {
            ResponseKind::LeaveGroup(
                LeaveGroupResponse::default().with_error_code(GROUP_AUTHORIZATION_FAILED),
            )
        }
        RequestKind::OffsetDelete(r) if !authorize::group(caller, Delete, r.group_id.as_str()) => {
            ResponseKind::OffsetDelete(
                OffsetDeleteResponse::default().with_error_code(GROUP_AUTHORIZATION_FAILED),
            )
        }
        RequestKind::OffsetFetch(r)
            if version < 8 && !authorize::group(caller, Describe, r.group_id.as_str()) =>
        {
            ResponseKind::OffsetFetch(
                OffsetFetchResponse::default().with_error_code(GROUP_AUTHORIZATION_FAILED),
            )
        }
        RequestKind::JoinGroup(r) => {
            let client = client_id.as_deref().unwrap_or("");
            ResponseKind::JoinGroup(groups::join_group(ctx, r, version, peer, client).await)
        }
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(groups::sync_group(ctx, r).await),
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(groups::heartbeat(ctx, r).await),
        RequestKind::LeaveGroup(r) => {
            ResponseKind::LeaveGroup(groups::leave_group(ctx, r, version).await)
        }
        RequestKind::OffsetCommit(mut r) => {
            let denied = authorize::split_offset_commit(caller, &mut r);
            let response = groups::offset_commit(ctx, r).await;
            ResponseKind::OffsetCommit(authorize::refuse_offset_commit(response, denied))
        }
        RequestKind::OffsetFetch(mut r) => {
            let denied = authorize::split_offset_fetch(caller, &mut r);
            let response = groups::offset_fetch(ctx, r, version).await;
            ResponseKind::OffsetFetch(authorize::refuse_offset_fetch(response, denied))
        }
        RequestKind::ListGroups(r) => ResponseKind::ListGroups(authorize::list_groups(
            caller,
            groups::list_groups(ctx, r).await,
        )),
        RequestKind::DescribeGroups(mut r) => {
            let denied = authorize::split_groups(caller, Describe, &mut r.groups);
            let response = groups::describe_groups(ctx, r).await;
            ResponseKind::DescribeGroups(authorize::refuse_describe_groups(response, denied))
        }
        RequestKind::DeleteGroups(mut r) => {
            let denied = authorize::split_groups(caller, Delete, &mut r.groups_names);
            let response = groups::delete_groups(ctx, r).await;
            ResponseKind::DeleteGroups(authorize::refuse_delete_groups(response, denied))
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
            sasl::describe_user_scram_credentials(ctx, caller, r),
        ),
        RequestKind::AlterUserScramCredentials(r) => ResponseKind::AlterUserScramCredentials(
            sasl::alter_user_scram_credentials(ctx, caller, r),
        ),
        RequestKind::CreateAcls(r) => ResponseKind::CreateAcls(acls::create_acls(ctx, caller, r)),
        RequestKind::DescribeAcls(r) => {
            ResponseKind::DescribeAcls(acls::describe_acls(ctx, caller, r))
        }
        RequestKind::DeleteAcls(r) => ResponseKind::DeleteAcls(acls::delete_acls(ctx, caller, r)),
        RequestKind::DescribeClientQuotas(r) => ResponseKind::DescribeClientQuotas(
            client_quotas::describe_client_quotas(ctx, caller, r),
        ),
        RequestKind::AlterClientQuotas(r) => {
            ResponseKind::AlterClientQuotas(client_quotas::alter_client_quotas(ctx, caller, r))
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(producers::init_producer_id(ctx, r))
        }
        other => {
            // decode_request lets through only the APIs of SUPPORTED, all handled above.
            return Err(format!("no handler for {key:?} ({other:?})"));
        }
    };
    let mut response = response;
    throttle::set(&mut response, finish());
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
