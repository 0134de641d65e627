//! The native protocol's front end: each handler decodes nothing itself (the codec in
//! `protocol/` did), calls the services (topics, the typed partition, group and share
//! calls), and builds the response. Nothing here owns state.
//!
//! - `admin`: API versions, metadata, topic create/delete/alter/describe/list.
//! - `data`: produce, fetch (with long-poll), list offsets.
//! - `groups`: consumer-group requests, forwarded to the group's coordinator shard.
//! - `shares`: share-group (queue) fetch, acknowledge and describe.
//! - `users`: the SASL exchange and user management.
//! - `acls`: ACL management.
//! - `quotas`: client-quota management (`server/quotas.rs` meters requests against them).
//!
//! Every request is checked against the authorizer first ([`authorize`]): each topic and
//! group it names, with the operation Kafka checks for the same request.

mod acls;
mod admin;
mod data;
mod groups;
mod quotas;
mod shares;
mod users;

// The data path's handlers, shared with the Kafka front end (which translates its requests
// into these and their responses back), so the logic exists once.
pub(crate) use data::{fetch, list_offsets, produce, Reply};
// What the broker runs on a produced batch, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) use data::split_batches;
pub use data::{MAX_FETCH_BYTES, MAX_FETCH_WAIT};

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use super::authorizer::Caller;
use super::context::ShardContext;
use super::group_coordinator::GroupOp;
use super::quotas as metering;
use super::sasl::SaslSession;
use crate::auth::acl::{Operation, ResourceType};
use crate::protocol::api::*;
use crate::protocol::{ErrorCode, WireError};

/// Handles one decoded request. `None` means no response is sent (produce with acks = 0).
/// `local_ip` is the broker address the client reached (advertised in metadata when the
/// broker listens on an unspecified address such as 0.0.0.0), `peer` the client's, and
/// `session` the connection's authentication.
pub(crate) async fn handle(
    ctx: &Rc<ShardContext>,
    request: Request,
    local_ip: Option<IpAddr>,
    peer: Option<SocketAddr>,
    session: &RefCell<SaslSession>,
) -> Option<Result<Reply, WireError>> {
    if ctx.is_shutting_down() {
        return Some(Err(WireError::new(
            ErrorCode::ShuttingDown,
            "the broker is shutting down",
        )));
    }
    let caller = Caller::new(ctx, &session.borrow(), peer);
    if let Err(denied) = authorize(&caller, &request) {
        return Some(Err(denied));
    }
    // The authentication exchange is never held back (there is no principal yet). Native
    // requests carry no client id: they match quotas as the empty client id.
    let metering = match &request {
        Request::ApiVersions(_) | Request::SaslHandshake(_) | Request::SaslAuthenticate(_) => None,
        _ => {
            let (meters, store) = (&ctx.quota_meters, &ctx.global.quotas);
            metering::admit(meters, store, &ctx.shutdown, caller.user(), "").await
        }
    };
    let Some(metering) = metering else {
        return serve(ctx, request, local_ip, peer, session, &caller).await;
    };
    if let Request::Produce(r) = &request {
        let bytes: usize = r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|p| p.records.len())
            .sum();
        metering.produced(&ctx.quota_meters, bytes as u64);
    }
    let answer = metering
        .timed(serve(ctx, request, local_ip, peer, session, &caller))
        .await;
    if let Some(Ok(Reply::Fetch(response, files))) = &answer {
        let in_memory: usize = response
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|p| p.records.len())
            .sum();
        let from_files: usize = files.iter().flatten().map(|f| f.len).sum();
        metering.fetched(&ctx.quota_meters, (in_memory + from_files) as u64);
    }
    // No throttle field in the native responses: the hold on the next requests is all.
    metering.finish(&ctx.quota_meters);
    answer
}

/// Serves one request the authorizer let through.
async fn serve(
    ctx: &Rc<ShardContext>,
    request: Request,
    local_ip: Option<IpAddr>,
    peer: Option<SocketAddr>,
    session: &RefCell<SaslSession>,
    caller: &Caller,
) -> Option<Result<Reply, WireError>> {
    let plain = match request {
        Request::Fetch(r) => {
            let (response, files) = fetch(ctx, r).await;
            return Some(Ok(Reply::Fetch(response, files)));
        }
        Request::ApiVersions(r) => Ok(admin::api_versions(ctx, r)),
        Request::Metadata(r) => Ok(visible_topics(caller, admin::metadata(ctx, r, local_ip))),
        Request::CreateTopic(r) => admin::create_topic(ctx, r).await,
        Request::DeleteTopic(r) => admin::delete_topic(ctx, r).await,
        Request::ListTopics => Ok(visible_topics(caller, admin::list_topics(ctx))),
        Request::DescribeTopic(r) => admin::describe_topic(ctx, r).await,
        Request::AlterTopicConfig(r) => admin::alter_topic(ctx, r).await,
        Request::Produce(r) => {
            let acks = r.acks;
            let response = produce(ctx, r).await;
            if acks == Acks::None {
                return None;
            }
            Ok(Response::Produce(response))
        }
        Request::ListOffsets(r) => Ok(Response::ListOffsets(list_offsets(ctx, r).await)),
        Request::JoinGroup(r) => groups::call(ctx, &r.group.clone(), GroupOp::Join(r)).await,
        Request::Heartbeat(r) => groups::call(ctx, &r.group.clone(), GroupOp::Heartbeat(r)).await,
        Request::LeaveGroup(r) => groups::call(ctx, &r.group.clone(), GroupOp::Leave(r)).await,
        Request::CommitOffsets(r) => groups::call(ctx, &r.group.clone(), GroupOp::Commit(r)).await,
        Request::FetchOffsets(r) => {
            groups::call(ctx, &r.group.clone(), GroupOp::FetchOffsets(r)).await
        }
        Request::DescribeGroup(r) => {
            groups::call(ctx, &r.group, GroupOp::Describe(r.group.clone())).await
        }
        Request::DeleteGroup(r) => {
            groups::call(ctx, &r.group, GroupOp::Delete(r.group.clone())).await
        }
        Request::ListGroups => groups::list(ctx).await.map(|r| visible_groups(caller, r)),
        Request::ShareFetch(r) => shares::fetch(ctx, r).await,
        Request::ShareAck(r) => shares::ack(ctx, r).await,
        Request::DescribeQueue(r) => shares::describe(ctx, &r.group).await,
        Request::SaslHandshake(r) => users::handshake(ctx, session, r),
        Request::SaslAuthenticate(r) => users::authenticate(ctx, session, r, peer).await,
        Request::ListUsers => users::list_users(ctx),
        Request::UpsertUser(r) => users::upsert_user(ctx, r),
        Request::DeleteUser(r) => users::delete_user(ctx, r),
        Request::CreateAcls(r) => acls::create(ctx, caller, r),
        Request::DescribeAcls(r) => acls::describe(ctx, r),
        Request::DeleteAcls(r) => acls::delete(ctx, caller, r),
        Request::DescribeQuotas(r) => quotas::describe(ctx, &r),
        Request::AlterQuotas(r) => quotas::alter(ctx, caller, &r),
    };
    Some(plain.map(Reply::Plain))
}

/// Checks every resource `request` names against what `caller` may do. Listings (all
/// topics' metadata, topics, groups) are filtered afterwards instead.
fn authorize(caller: &Caller, request: &Request) -> Result<(), WireError> {
    use Operation::*;
    use ResourceType::{Group, Topic};
    fn each<'a>(
        caller: &Caller,
        op: Operation,
        names: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), WireError> {
        names
            .into_iter()
            .try_for_each(|t| caller.check(op, ResourceType::Topic, t))
    }
    let topics = |op, names: &mut dyn Iterator<Item = &String>| each(caller, op, names);
    match request {
        Request::ApiVersions(_)
        | Request::SaslHandshake(_)
        | Request::SaslAuthenticate(_)
        | Request::ListTopics
        | Request::ListGroups => Ok(()),
        Request::Metadata(r) => topics(Describe, &mut r.topics.iter()),
        Request::CreateTopic(r) if caller.may_create_topic(&r.name) => Ok(()),
        Request::CreateTopic(r) => Err(caller.denied(Create, Topic, &r.name)),
        Request::DeleteTopic(r) => caller.check(Delete, Topic, &r.name),
        Request::DescribeTopic(r) => caller.check(Describe, Topic, &r.name),
        Request::AlterTopicConfig(r) => caller.check(AlterConfigs, Topic, &r.name),
        Request::Produce(r) => topics(Write, &mut r.topics.iter().map(|t| &t.topic)),
        Request::Fetch(r) => topics(Read, &mut r.topics.iter().map(|t| &t.topic)),
        Request::ListOffsets(r) => topics(Describe, &mut r.topics.iter().map(|t| &t.topic)),
        Request::JoinGroup(r) => {
            caller.check(Read, Group, &r.group)?;
            topics(Describe, &mut r.topics.iter())
        }
        Request::Heartbeat(r) => caller.check(Read, Group, &r.group),
        Request::LeaveGroup(r) => caller.check(Read, Group, &r.group),
        Request::CommitOffsets(r) => {
            caller.check(Read, Group, &r.group)?;
            topics(Read, &mut r.topics.iter().map(|t| &t.topic))
        }
        Request::FetchOffsets(r) => {
            caller.check(Describe, Group, &r.group)?;
            topics(Describe, &mut r.topics.iter().map(|t| &t.topic))
        }
        Request::DescribeGroup(r) | Request::DescribeQueue(r) => {
            caller.check(Describe, Group, &r.group)
        }
        Request::DeleteGroup(r) => caller.check(Delete, Group, &r.group),
        Request::ShareFetch(r) => {
            caller.check(Read, Group, &r.group)?;
            topics(Read, &mut r.topics.iter().map(|t| &t.topic))
        }
        Request::ShareAck(r) => {
            caller.check(Read, Group, &r.group)?;
            topics(Read, &mut r.topics.iter().map(|t| &t.topic))
        }
        Request::ListUsers | Request::DescribeAcls(_) => manage(caller, Describe),
        Request::UpsertUser(_)
        | Request::DeleteUser(_)
        | Request::CreateAcls(_)
        | Request::DeleteAcls(_) => manage(caller, Alter),
        Request::DescribeQuotas(_) => manage_quotas(caller, DescribeConfigs),
        Request::AlterQuotas(_) => manage_quotas(caller, AlterConfigs),
    }
}

/// Quota management: a superuser's, or (authorizer on) whom a cluster ACL allows
/// AlterConfigs (DescribeConfigs to list them), as Kafka checks its quota APIs.
fn manage_quotas(caller: &Caller, operation: Operation) -> Result<(), WireError> {
    if caller.may_manage(operation) {
        Ok(())
    } else {
        Err(WireError::new(
            ErrorCode::NotAuthorized,
            format!(
                "User:{} may not {operation} the cluster's quotas: a superuser \
                 (--superuser) or, with --authorizer on, an ACL on the cluster may",
                caller.user()
            ),
        ))
    }
}

/// User and ACL management: a superuser's, or (authorizer on) whom a cluster ACL allows.
fn manage(caller: &Caller, operation: Operation) -> Result<(), WireError> {
    if caller.may_manage(operation) {
        Ok(())
    } else {
        Err(WireError::new(
            ErrorCode::NotAuthorized,
            format!(
                "User:{} may not {operation} the cluster's users and ACLs: a superuser \
                 (--superuser) or, with --authorizer on, an ACL on the cluster may",
                caller.user()
            ),
        ))
    }
}

/// Drops the topics `caller` may not describe from a listing.
fn visible_topics(caller: &Caller, response: Response) -> Response {
    let may = |name: &str| caller.may(Operation::Describe, ResourceType::Topic, name);
    match response {
        Response::Metadata(mut m) => {
            m.topics.retain(|t| may(&t.name));
            Response::Metadata(m)
        }
        Response::ListTopics(mut l) => {
            l.topics.retain(|t| may(&t.name));
            Response::ListTopics(l)
        }
        other => other,
    }
}

/// Drops the groups `caller` may not describe from a listing.
fn visible_groups(caller: &Caller, response: Response) -> Response {
    match response {
        Response::ListGroups(mut l) => {
            l.groups
                .retain(|g| caller.may(Operation::Describe, ResourceType::Group, &g.group));
            Response::ListGroups(l)
        }
        other => other,
    }
}
