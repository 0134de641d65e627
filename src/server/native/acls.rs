//! CreateAcls, DescribeAcls and DeleteAcls on the native protocol (the caller was checked
//! by `authorize` in mod.rs: a superuser, or an ACL on the cluster).

use crate::protocol::api::*;
use crate::protocol::{ErrorCode, WireError};
use crate::server::authorizer::Caller;
use crate::server::context::ShardContext;
use crate::storage::AclError;

fn stored<T>(outcome: Result<T, AclError>) -> Result<T, WireError> {
    outcome.map_err(|e| match e {
        AclError::Invalid(why) => WireError::new(ErrorCode::InvalidRequest, why),
        AclError::Storage(e) => {
            tracing::error!("storing an ACL change failed: {e}");
            WireError::new(ErrorCode::StorageError, e.to_string())
        }
    })
}

pub(super) fn create(
    ctx: &ShardContext,
    caller: &Caller,
    r: CreateAclsRequest,
) -> Result<Response, WireError> {
    let acls = r
        .acls
        .iter()
        .map(AclEntry::to_acl)
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| WireError::new(ErrorCode::InvalidRequest, e))?;
    for acl in &acls {
        tracing::info!(by = caller.user(), "ACL added: {acl}");
    }
    stored(ctx.global.acls.add(acls))?;
    Ok(Response::CreateAcls)
}

fn filter(r: &AclFilterRequest) -> Result<crate::auth::acl::AclFilter, WireError> {
    r.to_filter()
        .map_err(|e| WireError::new(ErrorCode::InvalidRequest, e))
}

pub(super) fn describe(ctx: &ShardContext, r: AclFilterRequest) -> Result<Response, WireError> {
    let filter = filter(&r)?;
    let acls = ctx
        .global
        .acls
        .current()
        .all()
        .iter()
        .filter(|a| filter.matches(a))
        .map(AclEntry::of)
        .collect();
    Ok(Response::DescribeAcls(AclsResponse { acls }))
}

pub(super) fn delete(
    ctx: &ShardContext,
    caller: &Caller,
    r: AclFilterRequest,
) -> Result<Response, WireError> {
    let filter = filter(&r)?;
    let removed = stored(ctx.global.acls.remove(&filter))?;
    for acl in &removed {
        tracing::info!(by = caller.user(), "ACL removed: {acl}");
    }
    Ok(Response::DeleteAcls(AclsResponse {
        acls: removed.iter().map(AclEntry::of).collect(),
    }))
}
