//! The native protocol's front end: each handler decodes nothing itself (the codec in
//! `protocol/` did), calls the services (topics, the typed partition, group and share
//! calls), and builds the response. Nothing here owns state.
//!
//! - `admin`: API versions, metadata, topic create/delete/alter/describe/list.
//! - `data`: produce, fetch (with long-poll), list offsets.
//! - `groups`: consumer-group requests, forwarded to the group's coordinator shard.
//! - `shares`: share-group (queue) fetch, acknowledge and describe.
//! - `users`: the SASL exchange and user management.

mod admin;
mod data;
mod groups;
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

use super::context::ShardContext;
use super::group_coordinator::GroupOp;
use super::sasl::SaslSession;
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
    let plain = match request {
        Request::Fetch(r) => {
            let (response, files) = fetch(ctx, r).await;
            return Some(Ok(Reply::Fetch(response, files)));
        }
        Request::ApiVersions(r) => Ok(admin::api_versions(ctx, r)),
        Request::Metadata(r) => Ok(admin::metadata(ctx, r, local_ip)),
        Request::CreateTopic(r) => admin::create_topic(ctx, r).await,
        Request::DeleteTopic(r) => admin::delete_topic(ctx, r).await,
        Request::ListTopics => Ok(admin::list_topics(ctx)),
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
        Request::ListGroups => groups::list(ctx).await,
        Request::ShareFetch(r) => shares::fetch(ctx, r).await,
        Request::ShareAck(r) => shares::ack(ctx, r).await,
        Request::DescribeQueue(r) => shares::describe(ctx, &r.group).await,
        Request::SaslHandshake(r) => users::handshake(ctx, session, r),
        Request::SaslAuthenticate(r) => users::authenticate(ctx, session, r, peer).await,
        Request::ListUsers => users::list_users(ctx, session),
        Request::UpsertUser(r) => users::upsert_user(ctx, session, r),
        Request::DeleteUser(r) => users::delete_user(ctx, session, r),
    };
    Some(plain.map(Reply::Plain))
}
