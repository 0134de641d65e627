//! DescribeQuotas and AlterQuotas on the native protocol (the caller was checked by
//! `authorize` in mod.rs: a superuser, or AlterConfigs / DescribeConfigs on the cluster).

use crate::auth::quota::QuotaEntity;
use crate::protocol::api::*;
use crate::protocol::{ErrorCode, WireError};
use crate::server::authorizer::Caller;
use crate::server::context::ShardContext;
use crate::storage::{QuotaChange, QuotaError};

fn invalid(why: String) -> WireError {
    WireError::new(ErrorCode::InvalidRequest, why)
}

pub(super) fn describe(
    ctx: &ShardContext,
    r: &DescribeQuotasRequest,
) -> Result<Response, WireError> {
    let filter = r.to_filter().map_err(invalid)?;
    let entries = ctx
        .global
        .quotas
        .current()
        .entries()
        .iter()
        .filter(|(entity, _)| filter.matches(entity))
        .map(|(entity, values)| QuotaEntry::of(entity, values))
        .collect();
    Ok(Response::DescribeQuotas(QuotasResponse { entries }))
}

pub(super) fn alter(
    ctx: &ShardContext,
    caller: &Caller,
    r: &AlterQuotasRequest,
) -> Result<Response, WireError> {
    let entity = QuotaEntity {
        user: r.user.to_name().map_err(invalid)?,
        client_id: r.client_id.to_name().map_err(invalid)?,
    };
    let mut changes = Vec::with_capacity(r.set.len() + r.remove.len());
    for v in &r.set {
        let (key, value) = v.to_limit().map_err(invalid)?;
        changes.push(QuotaChange {
            entity: entity.clone(),
            key,
            value: Some(value),
        });
    }
    for key in &r.remove {
        changes.push(QuotaChange {
            entity: entity.clone(),
            key: key.parse().map_err(invalid)?,
            value: None,
        });
    }
    ctx.global
        .quotas
        .alter(&changes, false, caller.user())
        .map_err(|e| match e {
            QuotaError::Invalid(why) => invalid(why),
            QuotaError::Storage(e) => WireError::new(ErrorCode::StorageError, e.to_string()),
        })?;
    Ok(Response::AlterQuotas)
}
