//! CreateAcls, DescribeAcls and DeleteAcls: Kafka's ACL APIs over the broker's one ACL
//! store, so `kafka-acls.sh` manages what `eventflow acl` does. Managing ACLs needs Alter
//! (seeing them Describe) on the cluster, or a superuser (`authorizer.rs`).

use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::auth::acl::{Acl, AclFilter, Operation, PatternType, Permission, ResourceType};
use crate::protocol::kafka::error as code;
use crate::server::authorizer::Caller;
use crate::server::context::ShardContext;
use crate::storage::AclError;

const NOT_ALLOWED: &str =
    "managing ACLs needs a superuser or, with --authorizer on, an ACL on the cluster";

fn text(s: &StrBytes) -> String {
    s.as_str().to_string()
}

fn unknown(what: &str, value: i8) -> String {
    format!("unknown or unsupported {what} {value}")
}

/// A filter from Kafka's fields (`1`: any; a null string: any).
#[allow(clippy::too_many_arguments)]
fn filter_of(
    resource_type: i8,
    resource_name: &Option<StrBytes>,
    pattern: i8,
    principal: &Option<StrBytes>,
    host: &Option<StrBytes>,
    operation: i8,
    permission: i8,
) -> Result<AclFilter, String> {
    Ok(AclFilter {
        resource_type: ResourceType::filter_code(resource_type)?,
        resource_name: resource_name.as_ref().map(text),
        pattern: PatternType::filter_code(pattern)?,
        principal: principal.as_ref().map(text),
        host: host.as_ref().map(text),
        operation: Operation::filter_code(operation)?,
        permission: Permission::filter_code(permission)?,
    })
}

fn error_of(e: &AclError) -> i16 {
    match e {
        AclError::Invalid(_) => code::INVALID_REQUEST,
        AclError::Storage(e) => {
            tracing::error!("storing an ACL change failed: {e}");
            code::UNKNOWN_SERVER_ERROR
        }
    }
}

pub(super) fn create_acls(
    ctx: &ShardContext,
    caller: &Caller,
    request: CreateAclsRequest,
) -> CreateAclsResponse {
    let results = request
        .creations
        .iter()
        .map(|c| {
            let result = AclCreationResult::default();
            let failed = |error: i16, message: String| {
                AclCreationResult::default()
                    .with_error_code(error)
                    .with_error_message(Some(StrBytes::from_string(message)))
            };
            if !caller.may_manage(Operation::Alter) {
                return failed(code::CLUSTER_AUTHORIZATION_FAILED, NOT_ALLOWED.into());
            }
            let acl = (|| {
                Ok::<_, String>(Acl {
                    resource_type: ResourceType::from_code(c.resource_type)
                        .ok_or_else(|| unknown("resource type", c.resource_type))?,
                    resource_name: text(&c.resource_name),
                    pattern: PatternType::from_code(c.resource_pattern_type)
                        .ok_or_else(|| unknown("pattern type", c.resource_pattern_type))?,
                    principal: text(&c.principal),
                    host: text(&c.host),
                    operation: Operation::from_code(c.operation)
                        .ok_or_else(|| unknown("operation", c.operation))?,
                    permission: Permission::from_code(c.permission_type)
                        .ok_or_else(|| unknown("permission", c.permission_type))?,
                })
            })();
            let acl = match acl {
                Ok(acl) => acl,
                Err(why) => return failed(code::INVALID_REQUEST, why),
            };
            let shown = acl.to_string();
            match ctx.global.acls.add(vec![acl]) {
                Ok(()) => {
                    tracing::info!(by = caller.user(), "ACL added: {shown}");
                    result
                }
                Err(e) => failed(error_of(&e), e.to_string()),
            }
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}

pub(super) fn describe_acls(
    ctx: &ShardContext,
    caller: &Caller,
    r: DescribeAclsRequest,
) -> DescribeAclsResponse {
    let response = DescribeAclsResponse::default();
    if !caller.may_manage(Operation::Describe) {
        return response
            .with_error_code(code::CLUSTER_AUTHORIZATION_FAILED)
            .with_error_message(Some(StrBytes::from_static_str(NOT_ALLOWED)));
    }
    let filter = match filter_of(
        r.resource_type_filter,
        &r.resource_name_filter,
        r.pattern_type_filter,
        &r.principal_filter,
        &r.host_filter,
        r.operation,
        r.permission_type,
    ) {
        Ok(f) => f,
        Err(why) => {
            return response
                .with_error_code(code::INVALID_REQUEST)
                .with_error_message(Some(StrBytes::from_string(why)))
        }
    };
    // Kafka groups the entries by resource pattern.
    let mut resources: Vec<DescribeAclsResource> = Vec::new();
    for acl in ctx
        .global
        .acls
        .current()
        .all()
        .iter()
        .filter(|a| filter.matches(a))
    {
        let entry = AclDescription::default()
            .with_principal(StrBytes::from_string(acl.principal.clone()))
            .with_host(StrBytes::from_string(acl.host.clone()))
            .with_operation(acl.operation.code())
            .with_permission_type(acl.permission.code());
        let same = |r: &DescribeAclsResource| {
            r.resource_type == acl.resource_type.code()
                && r.resource_name.as_str() == acl.resource_name
                && r.pattern_type == acl.pattern.code()
        };
        match resources.iter_mut().find(|r| same(r)) {
            Some(resource) => resource.acls.push(entry),
            None => resources.push(
                DescribeAclsResource::default()
                    .with_resource_type(acl.resource_type.code())
                    .with_resource_name(StrBytes::from_string(acl.resource_name.clone()))
                    .with_pattern_type(acl.pattern.code())
                    .with_acls(vec![entry]),
            ),
        }
    }
    response.with_resources(resources)
}

pub(super) fn delete_acls(
    ctx: &ShardContext,
    caller: &Caller,
    request: DeleteAclsRequest,
) -> DeleteAclsResponse {
    let results = request
        .filters
        .iter()
        .map(|f| {
            let failed = |error: i16, message: String| {
                DeleteAclsFilterResult::default()
                    .with_error_code(error)
                    .with_error_message(Some(StrBytes::from_string(message)))
            };
            if !caller.may_manage(Operation::Alter) {
                return failed(code::CLUSTER_AUTHORIZATION_FAILED, NOT_ALLOWED.into());
            }
            let filter = match filter_of(
                f.resource_type_filter,
                &f.resource_name_filter,
                f.pattern_type_filter,
                &f.principal_filter,
                &f.host_filter,
                f.operation,
                f.permission_type,
            ) {
                Ok(filter) => filter,
                Err(why) => return failed(code::INVALID_REQUEST, why),
            };
            match ctx.global.acls.remove(&filter) {
                Ok(removed) => DeleteAclsFilterResult::default().with_matching_acls(
                    removed
                        .iter()
                        .map(|acl| {
                            tracing::info!(by = caller.user(), "ACL removed: {acl}");
                            DeleteAclsMatchingAcl::default()
                                .with_resource_type(acl.resource_type.code())
                                .with_resource_name(StrBytes::from_string(
                                    acl.resource_name.clone(),
                                ))
                                .with_pattern_type(acl.pattern.code())
                                .with_principal(StrBytes::from_string(acl.principal.clone()))
                                .with_host(StrBytes::from_string(acl.host.clone()))
                                .with_operation(acl.operation.code())
                                .with_permission_type(acl.permission.code())
                        })
                        .collect(),
                ),
                Err(e) => failed(error_of(&e), e.to_string()),
            }
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}
