//! DescribeConfigs and IncrementalAlterConfigs: a topic's configs through the topics
//! service (`topics::describe`, `topics::alter`), under Kafka's names, and the broker's
//! defaults (read-only: they are `eventflowd`'s flags).

use std::rc::Rc;

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{
    DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::admin::{wire_error, TopicError, NODE_ID};
use crate::protocol::api::ConfigEntry;
use crate::protocol::kafka::error::{INVALID_CONFIG, INVALID_REQUEST};
use crate::server::context::ShardContext;
use crate::server::topics;
use crate::storage::catalog::describe_config;

/// Kafka's ConfigResource types served here.
const TOPIC: i8 = 2;
const BROKER: i8 = 4;

/// Kafka's config sources (DescribeConfigsResponse `ConfigSource`).
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

/// Kafka's config types (DescribeConfigsResponse `ConfigType`, v3+).
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_DOUBLE: i8 = 6;
const TYPE_LIST: i8 = 7;

/// Kafka's IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

fn config_type(name: &str) -> i8 {
    match name {
        "segment.bytes" | "log.segment.bytes" => TYPE_INT,
        "cleanup.policy" | "log.cleanup.policy" => TYPE_LIST,
        "min.cleanable.dirty.ratio" | "log.cleaner.min.cleanable.ratio" => TYPE_DOUBLE,
        _ => TYPE_LONG,
    }
}

/// The broker-level name of a topic config (Kafka's `log.*` defaults).
fn broker_name(topic_key: &str) -> String {
    match topic_key {
        "segment.ms" => "log.roll.ms".to_string(),
        "min.cleanable.dirty.ratio" => "log.cleaner.min.cleanable.ratio".to_string(),
        other => format!("log.{other}"),
    }
}

fn entry(
    name: &str,
    value: &str,
    read_only: bool,
    source: i8,
    version: i16,
) -> DescribeConfigsResourceResult {
    let mut e = DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_string(name.to_string()))
        .with_value(Some(StrBytes::from_string(value.to_string())))
        .with_read_only(read_only)
        .with_config_source(source);
    if version >= 3 {
        e = e.with_config_type(config_type(name));
    }
    e
}

/// Describes each resource: a topic's effective configs (as the native DescribeTopic
/// returns them), or the broker's defaults (node 0).
pub(super) async fn describe_configs(
    ctx: &Rc<ShardContext>,
    r: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let mut results = Vec::with_capacity(r.resources.len());
    for resource in r.resources {
        let name = resource.resource_name.to_string();
        let outcome: Result<Vec<DescribeConfigsResourceResult>, TopicError> =
            match resource.resource_type {
                TOPIC => match topics::describe(ctx, &name).await {
                    Ok((topic, _, configs)) => {
                        let out: Vec<_> = configs
                            .iter()
                            .map(|(key, value)| {
                                let source = if topic.configs.contains_key(key) {
                                    SOURCE_TOPIC
                                } else {
                                    SOURCE_DEFAULT
                                };
                                entry(key, value, false, source, version)
                            })
                            .collect();
                        Ok(out)
                    }
                    Err(e) => Err(wire_error(e)),
                },
                BROKER if name.is_empty() || name == NODE_ID.to_string() => {
                    Ok(describe_config(&ctx.log_defaults)
                        .iter()
                        .map(|(key, value)| {
                            entry(&broker_name(key), value, true, SOURCE_STATIC_BROKER, version)
                        })
                        .collect())
                }
                BROKER => Err((
                    INVALID_REQUEST,
                    format!("there is one broker, node {NODE_ID}, not `{name}`"),
                )),
                other => Err((
                    INVALID_REQUEST,
                    format!("configs of resource type {other} are not served: only topics (2) and the broker (4)"),
                )),
            };
        let mut result = DescribeConfigsResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name);
        match outcome {
            Ok(mut configs) => {
                if let Some(keys) = &resource.configuration_keys {
                    configs.retain(|c| keys.contains(&c.name));
                }
                result = result.with_configs(configs);
            }
            Err((code, message)) => {
                result = result
                    .with_error_code(code)
                    .with_error_message(Some(StrBytes::from_string(message)));
            }
        }
        results.push(result);
    }
    DescribeConfigsResponse::default().with_results(results)
}

/// Applies SET and DELETE to a topic's configs through `topics::alter`, all of one
/// resource at once (the catalog validates every key and value before it changes any).
pub(super) async fn incremental_alter_configs(
    ctx: &Rc<ShardContext>,
    r: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(r.resources.len());
    for resource in r.resources {
        let name = resource.resource_name.to_string();
        let outcome: Result<(), TopicError> = match resource.resource_type {
            TOPIC if r.validate_only => Err((
                INVALID_REQUEST,
                "validate-only config changes are not supported".to_string(),
            )),
            TOPIC => match topic_changes(&resource.configs) {
                Ok((set, remove)) => topics::alter(ctx, &name, &set, &remove)
                    .await
                    .map_err(wire_error),
                Err(e) => Err(e),
            },
            BROKER => Err((
                INVALID_REQUEST,
                "broker configs are set by eventflowd's command-line flags".to_string(),
            )),
            other => Err((
                INVALID_REQUEST,
                format!("configs of resource type {other} cannot be altered: only topics (2)"),
            )),
        };
        let mut response = AlterConfigsResourceResponse::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name);
        if let Err((code, message)) = outcome {
            response = response
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(message)));
        }
        responses.push(response);
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// The `key=value` overrides one resource's operations set (SET), and the overrides they
/// remove (DELETE: the topic follows the broker's default again).
fn topic_changes(
    configs: &[kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig],
) -> Result<(Vec<ConfigEntry>, Vec<String>), TopicError> {
    let mut changes = Vec::with_capacity(configs.len());
    let mut removed = Vec::new();
    for c in configs {
        let key = c.name.as_str();
        let value = c.value.as_ref().map(StrBytes::as_str);
        match (c.config_operation, key) {
            (OP_SET, _) => {
                let Some(value) = value else {
                    return Err((INVALID_CONFIG, format!("SET of `{key}` without a value")));
                };
                changes.push((key.to_string(), value.to_string()));
            }
            // An unknown key is refused by the catalog, by name.
            (OP_DELETE, _) => removed.push(key.to_string()),
            (op, _) => {
                return Err((
                    INVALID_REQUEST,
                    format!(
                        "config operation {op} on `{key}` is not supported: only SET (0) and DELETE (1)"
                    ),
                ));
            }
        }
    }
    Ok((changes, removed))
}
