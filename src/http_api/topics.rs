//! Topics, their partitions and their configs: `/v3/clusters/{cluster_id}/topics/…`, in
//! the shape of Confluent's REST Proxy v3.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::state::{json_body, ApiState, Params, CLUSTER_ID};
use crate::client::Client;
use crate::protocol::api::{DescribeTopicResponse, PartitionDescription};

/// `{"kind": …, "metadata": {"self": …}, "data": […]}`.
pub(crate) fn list(kind: &str, path: &str, data: Vec<Value>) -> Value {
    json!({ "kind": kind, "metadata": { "self": path }, "data": data })
}

fn topics_path() -> String {
    format!("/v3/clusters/{CLUSTER_ID}/topics")
}

fn topic_json(name: &str, partitions: usize) -> Value {
    json!({
        "kind": "KafkaTopic",
        "metadata": { "self": format!("{}/{name}", topics_path()) },
        "cluster_id": CLUSTER_ID,
        "topic_name": name,
        "partitions_count": partitions,
        "replication_factor": 1,
        "is_internal": name.starts_with("__"),
    })
}

pub(crate) fn partition_json(topic: &str, p: &PartitionDescription) -> Value {
    json!({
        "kind": "KafkaPartition",
        "metadata": { "self": format!("{}/{topic}/partitions/{}", topics_path(), p.partition) },
        "cluster_id": CLUSTER_ID,
        "topic_name": topic,
        "partition_id": p.partition,
        "shard": p.shard,
        "log_start_offset": p.log_start_offset,
        "log_end_offset": p.high_watermark,
        "size_bytes": p.size_bytes,
    })
}

fn config_json(topic: &str, name: &str, value: &str) -> Value {
    json!({
        "kind": "KafkaTopicConfig",
        "metadata": { "self": format!("{}/{topic}/configs/{name}", topics_path()) },
        "cluster_id": CLUSTER_ID,
        "topic_name": topic,
        "name": name,
        "value": value,
    })
}

/// A topic by name: 404 when the broker does not know it.
pub(crate) async fn describe(
    state: &Arc<ApiState>,
    topic: &str,
) -> Result<DescribeTopicResponse, ApiError> {
    let name = topic.to_string();
    state.call(move |c| c.describe_topic(&name)).await
}

/// `GET /topics`.
pub(crate) async fn list_topics(
    State(state): State<Arc<ApiState>>,
    _p: Params,
) -> Result<Json<Value>, ApiError> {
    let topics = state.call(Client::list_topics).await?;
    let data = topics
        .iter()
        .map(|t| topic_json(&t.name, t.partitions as usize))
        .collect();
    Ok(Json(list("KafkaTopicList", &topics_path(), data)))
}

/// `POST /topics` with `{"topic_name", "partitions_count", "configs": [{"name", "value"}]}`.
pub(crate) async fn create_topic(
    State(state): State<Arc<ApiState>>,
    _p: Params,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    let name = body["topic_name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("topic_name (a non-empty string) is required"))?
        .to_string();
    let partitions = match &body["partitions_count"] {
        Value::Null => 1,
        v => v
            .as_u64()
            .filter(|&n| (1..=u64::from(u32::MAX)).contains(&n))
            .ok_or_else(|| ApiError::bad_request("partitions_count must be a positive integer"))?
            as u32,
    };
    match &body["replication_factor"] {
        Value::Null => {}
        v if v.as_u64() == Some(1) => {}
        _ => {
            return Err(ApiError::bad_request(
                "replication_factor must be 1: the broker is a single node",
            ))
        }
    }
    let configs = name_values(&body["configs"], "configs")?;
    let n = name.clone();
    state
        .call(move |c| {
            let pairs: Vec<(&str, &str)> = configs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            c.create_topic(&n, partitions, &pairs)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(topic_json(&name, partitions as usize)),
    )
        .into_response())
}

/// `[{"name": …, "value": …}]` as pairs; `null` is none.
fn name_values(v: &Value, field: &str) -> Result<Vec<(String, String)>, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "{field} must be a list of {{\"name\": string, \"value\": string}}"
        ))
    };
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let name = item["name"].as_str().ok_or_else(bad)?;
                let value = match &item["value"] {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return Err(bad()),
                };
                Ok((name.to_string(), value))
            })
            .collect(),
        _ => Err(bad()),
    }
}

/// `GET /topics/{topic_name}`.
pub(crate) async fn get_topic(
    State(state): State<Arc<ApiState>>,
    p: Params,
) -> Result<Json<Value>, ApiError> {
    let t = describe(&state, p.text("topic_name")?).await?;
    Ok(Json(topic_json(&t.name, t.partitions.len())))
}

/// `DELETE /topics/{topic_name}`.
pub(crate) async fn delete_topic(
    State(state): State<Arc<ApiState>>,
    p: Params,
) -> Result<StatusCode, ApiError> {
    let name = p.text("topic_name")?.to_string();
    state.call(move |c| c.delete_topic(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /topics/{topic_name}/partitions`.
pub(crate) async fn list_partitions(
    State(state): State<Arc<ApiState>>,
    p: Params,
) -> Result<Json<Value>, ApiError> {
    let t = describe(&state, p.text("topic_name")?).await?;
    let data = t
        .partitions
        .iter()
        .map(|p| partition_json(&t.name, p))
        .collect();
    let path = format!("{}/{}/partitions", topics_path(), t.name);
    Ok(Json(list("KafkaPartitionList", &path, data)))
}

/// `GET /topics/{topic_name}/partitions/{partition_id}`.
pub(crate) async fn get_partition(
    State(state): State<Arc<ApiState>>,
    p: Params,
) -> Result<Json<Value>, ApiError> {
    let t = describe(&state, p.text("topic_name")?).await?;
    let index = p.partition("partition_id")?;
    let part = t
        .partitions
        .iter()
        .find(|x| x.partition == index)
        .ok_or_else(|| {
            ApiError::not_found(format!("topic `{}` has no partition {index}", t.name))
        })?;
    Ok(Json(partition_json(&t.name, part)))
}

/// `GET /topics/{topic_name}/configs`: the effective configs.
pub(crate) async fn list_configs(
    State(state): State<Arc<ApiState>>,
    p: Params,
) -> Result<Json<Value>, ApiError> {
    let t = describe(&state, p.text("topic_name")?).await?;
    let data = t
        .configs
        .iter()
        .map(|(k, v)| config_json(&t.name, k, v))
        .collect();
    let path = format!("{}/{}/configs", topics_path(), t.name);
    Ok(Json(list("KafkaTopicConfigList", &path, data)))
}

/// `GET /topics/{topic_name}/configs/{name}`.
pub(crate) async fn get_config(
    State(state): State<Arc<ApiState>>,
    p: Params,
) -> Result<Json<Value>, ApiError> {
    let t = describe(&state, p.text("topic_name")?).await?;
    let name = p.text("name")?;
    let (k, v) =
        t.configs.iter().find(|(k, _)| k == name).ok_or_else(|| {
            ApiError::not_found(format!("topic `{}` has no config `{name}`", t.name))
        })?;
    Ok(Json(config_json(&t.name, k, v)))
}

/// `PUT /topics/{topic_name}/configs/{name}` with `{"value": …}`.
pub(crate) async fn put_config(
    State(state): State<Arc<ApiState>>,
    p: Params,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let body = json_body(body)?;
    let item = json!([{ "name": p.text("name")?, "value": body["value"] }]);
    alter(&state, p.text("topic_name")?, name_values(&item, "value")?).await
}

/// `POST /topics/{topic_name}/configs:alter` with `{"data": [{"name", "value"}]}`.
pub(crate) async fn alter_configs(
    State(state): State<Arc<ApiState>>,
    p: Params,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let body = json_body(body)?;
    let pairs = name_values(&body["data"], "data")?;
    if pairs.is_empty() {
        return Err(ApiError::bad_request("data must name at least one config"));
    }
    alter(&state, p.text("topic_name")?, pairs).await
}

async fn alter(
    state: &Arc<ApiState>,
    topic: &str,
    pairs: Vec<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let topic = topic.to_string();
    state
        .call(move |c| {
            let pairs: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            c.alter_topic_config(&topic, &pairs)
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
