//! The broker itself: liveness, readiness, the cluster and broker resources and the
//! broker's settings.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::state::{ApiState, BrokerView, Params, CLUSTER_ID};
use super::topics::list;

/// The one broker's id.
const BROKER_ID: u32 = 0;

/// `GET /health`: the process answers (liveness), whatever the shards do.
pub(crate) async fn health(State(state): State<Arc<ApiState>>) -> Json<Value> {
    Json(json!({ "status": "ok", "uptime_ms": state.uptime().as_millis() as u64 }))
}

/// `GET /ready`: 200 once every shard has recovered and accepts, 503 before and while
/// stopping.
pub(crate) async fn ready(State(state): State<Arc<ApiState>>) -> Response {
    match state.broker() {
        Ok(b) => Json(json!({ "status": "ready", "shards": b.shards })).into_response(),
        Err(e) => e.into_response(),
    }
}

fn cluster_json(b: &BrokerView, state: &ApiState) -> Value {
    json!({
        "kind": "KafkaCluster",
        "metadata": { "self": format!("/v3/clusters/{CLUSTER_ID}") },
        "cluster_id": CLUSTER_ID,
        "controller": { "broker_id": BROKER_ID },
        "brokers": { "related": format!("/v3/clusters/{CLUSTER_ID}/brokers") },
        "topics": { "related": format!("/v3/clusters/{CLUSTER_ID}/topics") },
        "broker": broker_json(b, state),
    })
}

fn broker_json(b: &BrokerView, state: &ApiState) -> Value {
    json!({
        "kind": "KafkaBroker",
        "metadata": { "self": format!("/v3/clusters/{CLUSTER_ID}/brokers/{BROKER_ID}") },
        "cluster_id": CLUSTER_ID,
        "broker_id": BROKER_ID,
        "host": b.native.ip().to_string(),
        "port": b.native.port(),
        "version": env!("CARGO_PKG_VERSION"),
        "shards": b.shards,
        "listeners": {
            "native": b.native.to_string(),
            "kafka": b.kafka.map(|a| a.to_string()),
            "http": state.http_addr.to_string(),
            "direct": b.direct.iter().map(ToString::to_string).collect::<Vec<_>>(),
        },
        "connections": (b.connections)(),
        "uptime_ms": state.uptime().as_millis() as u64,
    })
}

/// `GET /v3/clusters`.
pub(crate) async fn list_clusters(
    State(state): State<Arc<ApiState>>,
) -> Result<Json<Value>, ApiError> {
    let b = state.broker()?;
    Ok(Json(list(
        "KafkaClusterList",
        "/v3/clusters",
        vec![cluster_json(b, &state)],
    )))
}

/// `GET /v3/clusters/{cluster_id}`.
pub(crate) async fn get_cluster(
    State(state): State<Arc<ApiState>>,
    _p: Params,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(cluster_json(state.broker()?, &state)))
}

/// `GET /v3/clusters/{cluster_id}/brokers`.
pub(crate) async fn list_brokers(
    State(state): State<Arc<ApiState>>,
    _p: Params,
) -> Result<Json<Value>, ApiError> {
    let b = state.broker()?;
    let path = format!("/v3/clusters/{CLUSTER_ID}/brokers");
    Ok(Json(list(
        "KafkaBrokerList",
        &path,
        vec![broker_json(b, &state)],
    )))
}

/// `GET /v3/clusters/{cluster_id}/traffic` (Eventflow's own): records and bytes produced
/// and bytes fetched per topic since the broker started, from the metrics' counters; the
/// console turns two samples into rates.
pub(crate) async fn traffic(
    State(state): State<Arc<ApiState>>,
    _p: Params,
) -> Result<Json<Value>, ApiError> {
    let b = state.broker()?;
    let topics = (b.traffic)().await.map_err(ApiError::unavailable)?;
    let data: Vec<Value> = topics
        .iter()
        .map(|t| {
            json!({
                "topic_name": t.topic,
                "produced_records_total": t.produced_records,
                "produced_bytes_total": t.produced_bytes,
                "fetched_bytes_total": t.fetched_bytes,
            })
        })
        .collect();
    Ok(Json(json!({
        "kind": "EventflowTraffic",
        "metadata": { "self": format!("/v3/clusters/{CLUSTER_ID}/traffic") },
        "uptime_ms": state.uptime().as_millis() as u64,
        "data": data,
    })))
}

fn check_broker(p: &Params) -> Result<(), ApiError> {
    let id = p.text("broker_id")?;
    if id == BROKER_ID.to_string() {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "no broker `{id}`: this cluster is broker {BROKER_ID}"
        )))
    }
}

/// `GET /v3/clusters/{cluster_id}/brokers/{broker_id}`.
pub(crate) async fn get_broker(
    State(state): State<Arc<ApiState>>,
    p: Params,
) -> Result<Json<Value>, ApiError> {
    check_broker(&p)?;
    Ok(Json(broker_json(state.broker()?, &state)))
}

/// `GET /v3/clusters/{cluster_id}/brokers/{broker_id}/configs`: the broker's effective
/// settings (read-only: they change with a restart).
pub(crate) async fn broker_configs(
    State(state): State<Arc<ApiState>>,
    p: Params,
) -> Result<Json<Value>, ApiError> {
    check_broker(&p)?;
    let b = state.broker()?;
    let data = b
        .settings
        .iter()
        .map(|(name, value)| {
            json!({
                "kind": "KafkaBrokerConfig",
                "cluster_id": CLUSTER_ID,
                "broker_id": BROKER_ID,
                "name": name,
                "value": value,
                "is_read_only": true,
            })
        })
        .collect();
    let path = format!("/v3/clusters/{CLUSTER_ID}/brokers/{BROKER_ID}/configs");
    Ok(Json(list("KafkaBrokerConfigList", &path, data)))
}

/// Any other path: a JSON 404.
pub(crate) async fn no_route() -> ApiError {
    ApiError::not_found("no such resource: see /openapi.json")
}

/// A known path with another method: a JSON 405.
pub(crate) async fn no_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this resource: see /openapi.json",
    )
}
