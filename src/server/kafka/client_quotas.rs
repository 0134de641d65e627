//! AlterClientQuotas and DescribeClientQuotas: Kafka's quota APIs over the broker's one
//! quota store, so `kafka-configs.sh --entity-type users|clients` manages what
//! `eventflow quota` does. As in Kafka, altering quotas needs AlterConfigs (describing
//! them DescribeConfigs) on the cluster; with the authorizer off, a superuser
//! (`authorizer.rs`, as for users and ACLs).

use kafka_protocol::messages::alter_client_quotas_response::{
    EntityData as AlterEntity, EntryData as AlterResult,
};
use kafka_protocol::messages::describe_client_quotas_response::{
    EntityData as DescribedEntity, EntryData as DescribedEntry, ValueData,
};
use kafka_protocol::messages::{
    AlterClientQuotasRequest, AlterClientQuotasResponse, DescribeClientQuotasRequest,
    DescribeClientQuotasResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::auth::acl::Operation;
use crate::auth::quota::{NameMatch, QuotaEntity, QuotaFilter, QuotaKey};
use crate::protocol::kafka::error as code;
use crate::server::authorizer::Caller;
use crate::server::context::ShardContext;
use crate::storage::{QuotaChange, QuotaError};

const NOT_ALLOWED: &str = "managing quotas needs a superuser or, with --authorizer on, \
     AlterConfigs (DescribeConfigs to list them) on the cluster";

fn message(text: String) -> Option<StrBytes> {
    Some(StrBytes::from_string(text))
}

pub(super) fn describe_client_quotas(
    ctx: &ShardContext,
    caller: &Caller,
    r: DescribeClientQuotasRequest,
) -> DescribeClientQuotasResponse {
    let response = DescribeClientQuotasResponse::default();
    if !caller.may_manage(Operation::DescribeConfigs) {
        return response
            .with_error_code(code::CLUSTER_AUTHORIZATION_FAILED)
            .with_error_message(message(NOT_ALLOWED.into()));
    }
    let mut filter = QuotaFilter {
        strict: r.strict,
        ..QuotaFilter::default()
    };
    for c in &r.components {
        let name = match (c.match_type, &c._match) {
            (0, Some(name)) => NameMatch::Exact(name.as_str().to_string()),
            (0, None) | (1, _) => NameMatch::Default,
            (2, _) => NameMatch::Any,
            (other, _) => {
                return response
                    .with_error_code(code::INVALID_REQUEST)
                    .with_error_message(message(format!("unknown match type {other}")))
            }
        };
        if let Err(why) = filter.add(c.entity_type.as_str(), name) {
            return response
                .with_error_code(code::INVALID_REQUEST)
                .with_error_message(message(why));
        }
    }
    let entries = ctx
        .global
        .quotas
        .current()
        .entries()
        .iter()
        .filter(|(entity, _)| filter.matches(entity))
        .map(|(entity, values)| {
            DescribedEntry::default()
                .with_entity(
                    entity
                        .parts()
                        .into_iter()
                        .map(|(kind, name)| {
                            DescribedEntity::default()
                                .with_entity_type(StrBytes::from_static_str(kind))
                                .with_entity_name(name.map(|n| StrBytes::from_string(n.into())))
                        })
                        .collect(),
                )
                .with_values(
                    values
                        .iter()
                        .map(|(key, value)| {
                            ValueData::default()
                                .with_key(StrBytes::from_static_str(key.name()))
                                .with_value(*value)
                        })
                        .collect(),
                )
        })
        .collect();
    response.with_entries(Some(entries))
}

pub(super) fn alter_client_quotas(
    ctx: &ShardContext,
    caller: &Caller,
    r: AlterClientQuotasRequest,
) -> AlterClientQuotasResponse {
    let allowed = caller.may_manage(Operation::AlterConfigs);
    let entries = r
        .entries
        .iter()
        .map(|entry| {
            let result = AlterResult::default().with_entity(
                entry
                    .entity
                    .iter()
                    .map(|e| {
                        AlterEntity::default()
                            .with_entity_type(e.entity_type.clone())
                            .with_entity_name(e.entity_name.clone())
                    })
                    .collect(),
            );
            let failed = |error: i16, why: String| {
                result
                    .clone()
                    .with_error_code(error)
                    .with_error_message(message(why))
            };
            if !allowed {
                return failed(code::CLUSTER_AUTHORIZATION_FAILED, NOT_ALLOWED.into());
            }
            let entity = QuotaEntity::from_parts(
                entry
                    .entity
                    .iter()
                    .map(|e| (e.entity_type.as_str(), e.entity_name.as_deref())),
            );
            let entity = match entity {
                Ok(e) => e,
                Err(why) => return failed(code::INVALID_REQUEST, why),
            };
            let changes = entry
                .ops
                .iter()
                .map(|op| {
                    Ok(QuotaChange {
                        entity: entity.clone(),
                        key: op.key.as_str().parse::<QuotaKey>()?,
                        value: (!op.remove).then_some(op.value),
                    })
                })
                .collect::<Result<Vec<_>, String>>();
            let changes = match changes {
                Ok(c) => c,
                Err(why) => return failed(code::INVALID_REQUEST, why),
            };
            match ctx
                .global
                .quotas
                .alter(&changes, r.validate_only, caller.user())
            {
                Ok(()) => result,
                Err(QuotaError::Invalid(why)) => failed(code::INVALID_REQUEST, why),
                Err(QuotaError::Storage(e)) => failed(code::UNKNOWN_SERVER_ERROR, e.to_string()),
            }
        })
        .collect();
    AlterClientQuotasResponse::default().with_entries(entries)
}
