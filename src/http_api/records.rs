//! Producing and reading records.
//!
//! Produce follows Confluent's REST Proxy v3 (`POST …/topics/{topic_name}/records` with one
//! record: `partition_id`, `key`, `value`, `headers`), and also takes several at once as
//! `{"records": [...]}`. Keys and values are `{"type": "JSON" | "STRING" | "BINARY",
//! "data": …}` (BINARY data is base64). Records of one request are grouped per partition
//! into one record batch each and appended with one produce call per partition, with
//! `acks=all`.
//!
//! Reading follows Redpanda's HTTP Proxy (`GET …/partitions/{partition_id}/records?offset=…`
//! with `max_bytes`), under the v3 path, with a record count bound too.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::{json, Value};

use super::error::ApiError;
use super::state::{json_body, ApiState, Params, QueryParams, CLUSTER_ID};
use super::topics::describe;
use crate::client::partitioner::partition_for_key;
use crate::client::split_batches;
use crate::protocol::api::{offset_spec, Acks};
use crate::protocol::batch::{self, BatchBuilder};

/// Largest `max_bytes` a read may ask for.
const MAX_READ_BYTES: i64 = 8 << 20;
/// Largest `max_count` a read may ask for.
const MAX_READ_COUNT: i64 = 10_000;
/// Longest `timeout_ms` a read may wait for records.
const MAX_READ_WAIT_MS: i64 = 30_000;

/// One record of a produce request, decoded.
struct Outgoing {
    partition: Option<u32>,
    key: Option<(Vec<u8>, &'static str)>,
    value: Option<(Vec<u8>, &'static str)>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    timestamp: i64,
}

/// A key or value: `null`, or `{"type": …, "data": …}` (type JSON when left out). Returns
/// the bytes and the type's name.
fn data_bytes(v: &Value, field: &str) -> Result<Option<(Vec<u8>, &'static str)>, ApiError> {
    let obj = match v {
        Value::Null => return Ok(None),
        Value::Object(obj) => obj,
        _ => {
            return Err(ApiError::bad_request(format!(
                "{field} must be null or {{\"type\": \"JSON\"|\"STRING\"|\"BINARY\", \"data\": …}}"
            )))
        }
    };
    let data = obj.get("data").unwrap_or(&Value::Null);
    let kind = obj.get("type").and_then(Value::as_str).unwrap_or("JSON");
    let out = match kind.to_ascii_uppercase().as_str() {
        _ if data.is_null() => return Ok(None),
        "JSON" => (
            serde_json::to_vec(data).expect("a JSON value serializes"),
            "JSON",
        ),
        "STRING" => (
            data.as_str()
                .ok_or_else(|| {
                    ApiError::bad_request(format!("{field}.data of type STRING must be a string"))
                })?
                .as_bytes()
                .to_vec(),
            "STRING",
        ),
        "BINARY" => {
            let text = data.as_str().ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{field}.data of type BINARY must be a base64 string"
                ))
            })?;
            let bytes = BASE64.decode(text).map_err(|e| {
                ApiError::bad_request(format!("{field}.data is not valid base64: {e}"))
            })?;
            (bytes, "BINARY")
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "{field}.type `{other}` is none of JSON, STRING, BINARY"
            )))
        }
    };
    Ok(Some(out))
}

fn parse_record(v: &Value, now: i64) -> Result<Outgoing, ApiError> {
    if !v.is_object() {
        return Err(ApiError::bad_request("a record must be a JSON object"));
    }
    let partition = match &v["partition_id"] {
        Value::Null => None,
        p => Some(
            p.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| ApiError::bad_request("partition_id must be a partition index"))?,
        ),
    };
    let headers = match &v["headers"] {
        Value::Null => Vec::new(),
        Value::Array(items) => items
            .iter()
            .map(|h| {
                let name = h["name"]
                    .as_str()
                    .ok_or_else(|| ApiError::bad_request("a header needs a name (a string)"))?;
                let value = match &h["value"] {
                    Value::Null => None,
                    Value::String(s) => Some(BASE64.decode(s).map_err(|e| {
                        ApiError::bad_request(format!(
                            "header `{name}`: value is not valid base64: {e}"
                        ))
                    })?),
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "header `{name}`: value must be base64 or null"
                        )))
                    }
                };
                Ok((name.as_bytes().to_vec(), value))
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::bad_request(
                "headers must be a list of {\"name\", \"value\"}",
            ))
        }
    };
    let timestamp = match &v["timestamp"] {
        Value::Null => now,
        t => t.as_i64().filter(|&t| t >= 0).ok_or_else(|| {
            ApiError::bad_request("timestamp must be milliseconds since the epoch")
        })?,
    };
    Ok(Outgoing {
        partition,
        key: data_bytes(&v["key"], "key")?,
        value: data_bytes(&v["value"], "value")?,
        headers,
        timestamp,
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `POST /topics/{topic_name}/records`.
pub(crate) async fn produce(
    State(state): State<Arc<ApiState>>,
    p: Params,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = json_body(body)?;
    let topic = p.text("topic_name")?.to_string();
    let now = now_ms();
    let (many, items) = match body.get("records") {
        Some(Value::Array(items)) if !items.is_empty() => (true, items.clone()),
        Some(_) => return Err(ApiError::bad_request("records must be a non-empty list")),
        None => (false, vec![body]),
    };
    let records = items
        .iter()
        .map(|v| parse_record(v, now))
        .collect::<Result<Vec<_>, _>>()?;
    let partitions = describe(&state, &topic).await?.partitions.len() as u32;
    let sticky = state.next_partition(partitions);
    let mut assigned = Vec::with_capacity(records.len());
    for r in &records {
        let partition = match (r.partition, &r.key) {
            (Some(p), _) if p < partitions => p,
            (Some(p), _) => {
                return Err(ApiError::not_found(format!(
                    "topic `{topic}` has no partition {p}"
                )))
            }
            (None, Some((key, _))) => partition_for_key(key, partitions),
            (None, None) => sticky,
        };
        assigned.push(partition);
    }
    // One batch per partition, records in request order within it.
    let mut order: Vec<u32> = assigned.clone();
    order.sort_unstable();
    order.dedup();
    let mut batches = Vec::with_capacity(order.len());
    for &partition in &order {
        let mut b = BatchBuilder::new();
        for (r, _) in records
            .iter()
            .zip(&assigned)
            .filter(|(_, &p)| p == partition)
        {
            let headers: Vec<(&[u8], Option<&[u8]>)> = r
                .headers
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_deref()))
                .collect();
            b.push(
                r.timestamp,
                r.key.as_ref().map(|(k, _)| k.as_slice()),
                r.value.as_ref().map(|(v, _)| v.as_slice()),
                &headers,
            );
        }
        batches.push((partition, b.finish()));
    }
    let t = topic.clone();
    let outcomes = state
        .call(move |c| {
            Ok(batches
                .into_iter()
                .map(|(partition, batch)| (partition, c.produce(&t, partition, batch, Acks::All)))
                .collect::<Vec<_>>())
        })
        .await?;
    let mut results = Vec::with_capacity(records.len());
    let mut next_in: std::collections::HashMap<u32, i64> = std::collections::HashMap::new();
    for (r, &partition) in records.iter().zip(&assigned) {
        let (_, outcome) = outcomes
            .iter()
            .find(|(p, _)| *p == partition)
            .expect("every assigned partition was produced to");
        let item = match outcome {
            Ok((base, _)) => {
                let index = next_in.entry(partition).or_insert(0);
                let offset = base + *index;
                *index += 1;
                json!({
                    "error_code": 200,
                    "cluster_id": CLUSTER_ID,
                    "topic_name": topic,
                    "partition_id": partition,
                    "offset": offset,
                    "timestamp": r.timestamp,
                    "key": r.key.as_ref().map(|(k, t)| json!({ "type": t, "size": k.len() })),
                    "value": r.value.as_ref().map(|(v, t)| json!({ "type": t, "size": v.len() })),
                })
            }
            Err(e) => {
                let e = ApiError::from(clone_error(e));
                if !many {
                    return Err(e);
                }
                json!({
                    "error_code": e.status().as_u16(),
                    "cluster_id": CLUSTER_ID,
                    "topic_name": topic,
                    "partition_id": partition,
                    "message": e.message(),
                })
            }
        };
        results.push(item);
    }
    if many {
        Ok(Json(
            json!({ "kind": "ProduceResponseList", "data": results }),
        ))
    } else {
        Ok(Json(results.pop().expect("one record")))
    }
}

/// The same error again (client errors are not `Clone`; the message is what matters).
fn clone_error(e: &crate::client::ClientError) -> crate::client::ClientError {
    match e {
        crate::client::ClientError::Broker(w) => crate::client::ClientError::Broker(w.clone()),
        other => crate::client::ClientError::Unexpected(other.to_string()),
    }
}

/// A key or value as read: JSON when it parses as JSON, STRING when it is UTF-8, else
/// BINARY (base64; also for text with control characters); always BINARY with `format=binary`.
fn data_json(bytes: Option<&[u8]>, binary: bool) -> Value {
    let Some(bytes) = bytes else {
        return Value::Null;
    };
    if !binary {
        if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
            return json!({ "type": "JSON", "data": v });
        }
        if let Ok(s) = std::str::from_utf8(bytes) {
            if !s.chars().any(|c| c.is_control() && !c.is_whitespace()) {
                return json!({ "type": "STRING", "data": s });
            }
        }
    }
    json!({ "type": "BINARY", "data": BASE64.encode(bytes) })
}

/// `GET /topics/{topic_name}/partitions/{partition_id}/records?offset=&max_bytes=&max_count=&timeout_ms=&format=`.
pub(crate) async fn read(
    State(state): State<Arc<ApiState>>,
    p: Params,
    q: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let topic = p.text("topic_name")?.to_string();
    let partition = p.partition("partition_id")?;
    let offset = match q.text("offset") {
        None => None,
        Some(_) => Some(q.number("offset", 0, 0, i64::MAX)?),
    };
    let max_bytes = q.number("max_bytes", 1 << 20, 1, MAX_READ_BYTES)? as u32;
    let max_count = q.number("max_count", 100, 1, MAX_READ_COUNT)? as usize;
    let wait = q.number("timeout_ms", 0, 0, MAX_READ_WAIT_MS)?;
    let binary = match q.text("format") {
        None | Some("auto") => false,
        Some("binary") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format `{other}` is neither auto nor binary"
            )))
        }
    };
    let t = topic.clone();
    let (from, fetched) = state
        .call(move |c| {
            let from = match offset {
                Some(o) => o,
                None => c.list_offset(&t, partition, offset_spec::EARLIEST)?,
            };
            let min_bytes = u32::from(wait > 0);
            let fetched = c.fetch(
                &t,
                partition,
                from,
                max_bytes,
                Duration::from_millis(wait as u64),
                min_bytes,
            )?;
            Ok((from, fetched))
        })
        .await?;
    let mut data = Vec::new();
    let mut next_offset = from;
    'batches: for one in split_batches(&fetched.records) {
        let header = batch::validate(&one, one.len()).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("corrupt batch in {topic}/{partition}: {e}"),
            )
        })?;
        let records = batch::records(&one).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("corrupt batch in {topic}/{partition}: {e}"),
            )
        })?;
        for r in records {
            let r = r.map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("corrupt record in {topic}/{partition}: {e}"),
                )
            })?;
            if r.offset < from {
                continue;
            }
            if data.len() == max_count {
                break 'batches;
            }
            next_offset = r.offset + 1;
            let headers: Vec<Value> = r
                .headers
                .iter()
                .map(|(k, v)| json!({ "name": String::from_utf8_lossy(k), "value": v.map(|v| BASE64.encode(v)) }))
                .collect();
            data.push(json!({
                "topic_name": topic,
                "partition_id": partition,
                "offset": r.offset,
                "timestamp": r.timestamp,
                "key": data_json(r.key, binary),
                "value": data_json(r.value, binary),
                "headers": headers,
            }));
        }
        next_offset = next_offset.max(header.last_offset() + 1);
    }
    Ok(Json(json!({
        "kind": "RecordList",
        "cluster_id": CLUSTER_ID,
        "topic_name": topic,
        "partition_id": partition,
        "log_start_offset": fetched.log_start_offset,
        "high_watermark": fetched.high_watermark,
        "next_offset": next_offset,
        "data": data,
    })))
}
