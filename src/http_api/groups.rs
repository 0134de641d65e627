//! Consumer groups (list, describe, lag, offset reset, delete) and share groups (list,
//! describe with backlog and dead letters): `/v3/clusters/{cluster_id}/consumer-groups/…`
//! and `/share-groups/…`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::state::{json_body, ApiState, Params, CLUSTER_ID};
use super::topics::list;
use crate::client::Client;
use crate::protocol::api::offset_spec;

/// A partition's committed offset and owner (member id, client id) in a lag listing.
type LagRow = (Option<i64>, Option<(String, String)>);

fn groups_path(kind: &str) -> String {
    format!("/v3/clusters/{CLUSTER_ID}/{kind}")
}

/// `GET /consumer-groups`.
pub(crate) async fn list_consumer_groups(
    State(state): State<Arc<ApiState>>,
    _p: Params,
) -> Result<Json<Value>, ApiError> {
    list_of(
        &state,
        "consumer",
        "consumer-groups",
        "consumer_group_id",
        "KafkaConsumerGroup",
    )
    .await
}

/// `GET /share-groups`.
pub(crate) async fn list_share_groups(
    State(state): State<Arc<ApiState>>,
    _p: Params,
) -> Result<Json<Value>, ApiError> {
    list_of(
        &state,
        "share",
        "share-groups",
        "share_group_id",
        "KafkaShareGroup",
    )
    .await
}

async fn list_of(
    state: &Arc<ApiState>,
    kind: &str,
    path: &str,
    id_field: &str,
    json_kind: &str,
) -> Result<Json<Value>, ApiError> {
    let groups = state.call(Client::list_groups).await?;
    let data = groups
        .iter()
        .filter(|g| g.kind == kind)
        .map(|g| {
            json!({
                "kind": json_kind,
                "metadata": { "self": format!("{}/{}", groups_path(path), g.group) },
                "cluster_id": CLUSTER_ID,
                id_field: g.group,
                "members_count": g.members,
            })
        })
        .collect();
    Ok(Json(list(
        &format!("{json_kind}List"),
        &groups_path(path),
        data,
    )))
}

/// `GET /consumer-groups/{consumer_group_id}`: state, members, assignment, committed offsets.
pub(crate) async fn describe_consumer_group(
    State(state): State<Arc<ApiState>>,
    p: Params,
) -> Result<Json<Value>, ApiError> {
    let group = p.text("consumer_group_id")?.to_string();
    let g = state.call(move |c| c.describe_group(&group)).await?;
    let members: Vec<Value> = g
        .members
        .iter()
        .map(|m| {
            let assignments: Vec<Value> = m
                .assignment
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(move |p| json!({ "topic_name": t.topic, "partition_id": p }))
                })
                .collect();
            json!({
                "consumer_id": m.member_id,
                "client_id": m.client_id,
                "topics": m.topics,
                "assignments": assignments,
            })
        })
        .collect();
    let offsets: Vec<Value> = g
        .offsets
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| {
                json!({ "topic_name": t.topic, "partition_id": p.partition, "offset": p.offset })
            })
        })
        .collect();
    Ok(Json(json!({
        "kind": "KafkaConsumerGroup",
        "metadata": { "self": format!("{}/{}", groups_path("consumer-groups"), g.group) },
        "cluster_id": CLUSTER_ID,
        "consumer_group_id": g.group,
        "state": g.state,
        "generation": g.generation,
        "partition_assignor": g.strategy,
        "members": members,
        "offsets": offsets,
    })))
}

/// Each committed or assigned partition of a group: committed offset, log end and lag.
async fn lags(state: &Arc<ApiState>, group: &str) -> Result<Vec<Value>, ApiError> {
    let group = group.to_string();
    state
        .call(move |c| {
            let g = c.describe_group(&group)?;
            // (topic, partition) → (committed offset, owner).
            let mut rows: BTreeMap<(String, u32), LagRow> = BTreeMap::new();
            for t in &g.offsets {
                for p in &t.partitions {
                    rows.entry((t.topic.clone(), p.partition)).or_default().0 = Some(p.offset);
                }
            }
            for m in &g.members {
                for t in &m.assignment {
                    for &p in &t.partitions {
                        rows.entry((t.topic.clone(), p)).or_default().1 =
                            Some((m.member_id.clone(), m.client_id.clone()));
                    }
                }
            }
            let mut ends: HashMap<String, HashMap<u32, i64>> = HashMap::new();
            let mut out = Vec::with_capacity(rows.len());
            for ((topic, partition), (committed, owner)) in rows {
                if !ends.contains_key(&topic) {
                    // A topic deleted since the commit has no log end: its rows say so.
                    let end = match c.describe_topic(&topic) {
                        Ok(t) => t
                            .partitions
                            .iter()
                            .map(|p| (p.partition, p.high_watermark))
                            .collect(),
                        Err(e) if e.code().is_some() => HashMap::new(),
                        Err(e) => return Err(e),
                    };
                    ends.insert(topic.clone(), end);
                }
                let log_end = ends[&topic].get(&partition).copied();
                let lag = match (committed, log_end) {
                    (Some(at), Some(end)) if at >= 0 => Some((end - at).max(0)),
                    _ => None,
                };
                let (consumer_id, client_id) = owner.unzip();
                out.push(json!({
                    "kind": "KafkaConsumerLag",
                    "cluster_id": CLUSTER_ID,
                    "consumer_group_id": group,
                    "topic_name": topic,
                    "partition_id": partition,
                    "current_offset": committed,
                    "log_end_offset": log_end,
                    "lag": lag,
                    "consumer_id": consumer_id,
                    "client_id": client_id,
                }));
            }
            Ok(out)
        })
        .await
}

/// `GET /consumer-groups/{consumer_group_id}/lags`.
pub(crate) async fn consumer_group_lags(
    State(state): State<Arc<ApiState>>,
    p: Params,
) -> Result<Json<Value>, ApiError> {
    let group = p.text("consumer_group_id")?;
    let data = lags(&state, group).await?;
    let path = format!("{}/{group}/lags", groups_path("consumer-groups"));
    Ok(Json(list("KafkaConsumerLagList", &path, data)))
}

/// `GET /consumer-groups/{consumer_group_id}/lag-summary`.
pub(crate) async fn consumer_group_lag_summary(
    State(state): State<Arc<ApiState>>,
    p: Params,
) -> Result<Json<Value>, ApiError> {
    let group = p.text("consumer_group_id")?;
    let rows = lags(&state, group).await?;
    let mut total = 0i64;
    let mut max: Option<&Value> = None;
    for row in &rows {
        let lag = row["lag"].as_i64().unwrap_or(0);
        total += lag;
        if max.is_none_or(|m| lag > m["lag"].as_i64().unwrap_or(0)) {
            max = Some(row);
        }
    }
    Ok(Json(json!({
        "kind": "KafkaConsumerGroupLagSummary",
        "cluster_id": CLUSTER_ID,
        "consumer_group_id": group,
        "total_lag": total,
        "max_lag": max.map_or(0, |m| m["lag"].as_i64().unwrap_or(0)),
        "max_lag_topic_name": max.map(|m| m["topic_name"].clone()),
        "max_lag_partition_id": max.map(|m| m["partition_id"].clone()),
    })))
}

/// `POST /consumer-groups/{consumer_group_id}/offsets:reset` with `{"topic_name", "to":
/// "earliest" | "latest" | "offset" | "timestamp", "offset", "timestamp", "partitions"}`.
/// The broker refuses (409) while the group has members.
pub(crate) async fn reset_offsets(
    State(state): State<Arc<ApiState>>,
    p: Params,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let group = p.text("consumer_group_id")?.to_string();
    let body = json_body(body)?;
    let topic = body["topic_name"]
        .as_str()
        .ok_or_else(|| ApiError::bad_request("topic_name (a string) is required"))?
        .to_string();
    enum To {
        Spec(i64),
        Offset(i64),
    }
    let number = |field: &str| {
        body[field].as_i64().filter(|&n| n >= 0).ok_or_else(|| {
            ApiError::bad_request(format!("{field} (a non-negative integer) is required"))
        })
    };
    let to = match body["to"].as_str() {
        Some("earliest") => To::Spec(offset_spec::EARLIEST),
        Some("latest") => To::Spec(offset_spec::LATEST),
        Some("timestamp") => To::Spec(number("timestamp")?),
        Some("offset") => To::Offset(number("offset")?),
        _ => {
            return Err(ApiError::bad_request(
                "to must be earliest, latest, offset or timestamp",
            ))
        }
    };
    let chosen: Option<Vec<u32>> = match &body["partitions"] {
        Value::Null => None,
        Value::Array(items) => Some(
            items
                .iter()
                .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    ApiError::bad_request("partitions must be a list of partition indexes")
                })?,
        ),
        _ => {
            return Err(ApiError::bad_request(
                "partitions must be a list of partition indexes",
            ))
        }
    };
    let (g, t) = (group.clone(), topic.clone());
    let done = state
        .call(move |c| {
            let described = c.describe_topic(&t)?;
            let all: Vec<u32> = described.partitions.iter().map(|p| p.partition).collect();
            let partitions = chosen.unwrap_or_else(|| all.clone());
            let mut offsets = Vec::with_capacity(partitions.len());
            for &p in &partitions {
                if !all.contains(&p) {
                    return Err(crate::protocol::WireError::new(
                        crate::protocol::ErrorCode::UnknownTopicOrPartition,
                        format!("topic `{t}` has no partition {p}"),
                    )
                    .into());
                }
                let offset = match to {
                    To::Offset(o) => o,
                    To::Spec(spec) => match c.list_offset(&t, p, spec)? {
                        // No record at or after the timestamp: the log end.
                        -1 => c.list_offset(&t, p, offset_spec::LATEST)?,
                        o => o,
                    },
                };
                offsets.push((p, offset));
            }
            let triples: Vec<(&str, u32, i64)> =
                offsets.iter().map(|&(p, o)| (t.as_str(), p, o)).collect();
            c.commit_offsets(&g, None, &triples)?;
            Ok(offsets)
        })
        .await?;
    let data = done
        .iter()
        .map(|&(p, o)| json!({ "topic_name": topic, "partition_id": p, "offset": o }))
        .collect();
    let path = format!("{}/{group}/offsets:reset", groups_path("consumer-groups"));
    Ok(Json(list("KafkaConsumerGroupOffsetList", &path, data)))
}

/// `DELETE /consumer-groups/{consumer_group_id}`: only a group without members.
pub(crate) async fn delete_consumer_group(
    State(state): State<Arc<ApiState>>,
    p: Params,
) -> Result<StatusCode, ApiError> {
    let group = p.text("consumer_group_id")?.to_string();
    state.call(move |c| c.delete_group(&group)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /share-groups/{share_group_id}`: members and, per partition, the queue's state.
/// `backlog` is what the group has still to finish there: records not yet handed out
/// (`log_end_offset - next_offset`) plus those waiting to be delivered again.
pub(crate) async fn describe_share_group(
    State(state): State<Arc<ApiState>>,
    p: Params,
) -> Result<Json<Value>, ApiError> {
    let group = p.text("share_group_id")?.to_string();
    let g = state.call(move |c| c.describe_queue(&group)).await?;
    let (mut backlog_total, mut dead_total) = (0i64, 0u64);
    let partitions: Vec<Value> = g
        .partitions
        .iter()
        .map(|s| {
            let backlog = (s.log_end - s.next_offset).max(0) + s.available_again as i64;
            backlog_total += backlog;
            dead_total += s.dead_lettered;
            json!({
                "topic_name": s.topic,
                "partition_id": s.partition,
                "start_offset": s.start,
                "next_offset": s.next_offset,
                "log_end_offset": s.log_end,
                "acquired": s.acquired,
                "available_again": s.available_again,
                "done": s.done,
                "dead_lettered": s.dead_lettered,
                "backlog": backlog,
            })
        })
        .collect();
    Ok(Json(json!({
        "kind": "KafkaShareGroup",
        "metadata": { "self": format!("{}/{}", groups_path("share-groups"), g.group) },
        "cluster_id": CLUSTER_ID,
        "share_group_id": g.group,
        "members": g.members,
        "partitions": partitions,
        "backlog": backlog_total,
        "dead_lettered": dead_total,
    })))
}
