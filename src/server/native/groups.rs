//! Consumer-group requests: each runs on the group's coordinator shard.

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::protocol::api::*;
use crate::protocol::WireError;
use crate::server::calls::{GroupCall, ShareGroups};
use crate::server::context::ShardContext;
use crate::server::group_coordinator::{check_group_name, coordinator_of, GroupOp};

/// Runs a group request on the group's coordinator shard.
pub(super) async fn call(
    ctx: &Rc<ShardContext>,
    group: &str,
    op: GroupOp,
) -> Result<Response, WireError> {
    check_group_name(group)?;
    ctx.call(coordinator_of(group, ctx.shard_count), GroupCall(op))
        .await?
}

/// Consumer groups from every coordinator, and share groups from every partition owner.
pub(super) async fn list(ctx: &Rc<ShardContext>) -> Result<Response, WireError> {
    let mut groups: BTreeMap<String, GroupListing> = BTreeMap::new();
    for reply in ctx.call_all(|| GroupCall(GroupOp::List)).await {
        if let Response::ListGroups(list) = reply?? {
            for g in list.groups {
                groups.insert(g.group.clone(), g);
            }
        }
    }
    let mut shares: BTreeMap<String, usize> = BTreeMap::new();
    for reply in ctx.call_all(|| ShareGroups).await {
        for (group, members) in reply? {
            let m = shares.entry(group).or_default();
            *m = (*m).max(members);
        }
    }
    for (group, members) in shares {
        groups.entry(group.clone()).or_insert(GroupListing {
            group,
            kind: "share".into(),
            members: members as u32,
        });
    }
    Ok(Response::ListGroups(ListGroupsResponse {
        groups: groups.into_values().collect(),
    }))
}
