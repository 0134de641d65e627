//! What every handler shares: the broker's address once it serves, a small pool of native
//! client connections to it, and the extractors that turn a bad path, query or body into a
//! JSON error instead of axum's plain-text rejection.
//!
//! Every call to the broker goes through [`ApiState::call`]: a blocking
//! [`Client`](crate::client::Client) on a pooled connection to the broker's own native
//! listener, run on the runtime's blocking threads. The API is thus one more client of the
//! broker, and never runs on (or shares memory with) a shard.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::StatusCode;

use super::error::ApiError;
use crate::auth::Mechanism;
use crate::client::{Client, ClientError, Credentials};

/// The one cluster this broker is: `{cluster_id}` in every `/v3/clusters/…` path.
pub(crate) const CLUSTER_ID: &str = "eventflow";

/// How long the API waits for the broker to answer one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle connections the pool keeps.
const POOL_IDLE: usize = 8;

/// What the API knows of the broker once it serves.
pub struct BrokerView {
    /// The native listener the API connects to.
    pub native: SocketAddr,
    /// The Kafka listener, if any.
    pub kafka: Option<SocketAddr>,
    /// Each shard's direct listener.
    pub direct: Vec<SocketAddr>,
    /// Shards serving.
    pub shards: usize,
    /// Client connections served now (the API's own pooled ones included).
    pub connections: Box<dyn Fn() -> usize + Send + Sync>,
    /// The broker's effective settings, by name.
    pub settings: Vec<(String, String)>,
    /// The traffic counters per topic since the broker started (the metrics' own, gathered
    /// from the shards when asked), for `/traffic` and the console's rates.
    pub traffic: TrafficSource,
    /// How the API logs in to the native listener for a request that carries HTTP Basic
    /// credentials (`None`: the listener offers no mechanism the API speaks).
    pub login_mechanism: Option<Mechanism>,
    /// Whether the native listener requires authentication: then every API request but
    /// `/health`, `/ready` and `/openapi.json` needs HTTP Basic credentials.
    pub login_required: bool,
    /// The TLS the API speaks to the native listener, if it encrypts.
    pub native_tls: Option<crate::tls::ClientTls>,
}

tokio::task_local! {
    /// The credentials of the HTTP request being served (its `Authorization: Basic`
    /// header), which [`ApiState::call`] logs in with.
    pub(crate) static CALLER: Option<Credentials>;
}

/// Traffic of one topic since the broker started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicTraffic {
    /// The topic.
    pub topic: String,
    /// Records acknowledged to producers.
    pub produced_records: u64,
    /// Bytes of record batches acknowledged to producers.
    pub produced_bytes: u64,
    /// Bytes of record batches sent to consumers.
    pub fetched_bytes: u64,
}

/// Gathers every topic's [`TopicTraffic`], or says why it could not.
pub type TrafficSource = Arc<
    dyn Fn() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Vec<TopicTraffic>, String>> + Send>,
        > + Send
        + Sync,
>;

/// State shared by every handler.
pub(crate) struct ApiState {
    broker: OnceLock<BrokerView>,
    stopping: AtomicBool,
    started: Instant,
    /// The HTTP listener's own address.
    pub(crate) http_addr: SocketAddr,
    /// Idle connections, by the credentials they logged in with.
    pool: Mutex<Vec<(Option<Credentials>, Client)>>,
    /// Picks the partition of unkeyed records without a partition (one per request).
    round_robin: AtomicU32,
}

impl ApiState {
    pub(crate) fn new(http_addr: SocketAddr) -> ApiState {
        ApiState {
            broker: OnceLock::new(),
            stopping: AtomicBool::new(false),
            started: Instant::now(),
            http_addr,
            pool: Mutex::new(Vec::new()),
            round_robin: AtomicU32::new(0),
        }
    }

    /// Records that the broker serves (its shards have recovered and accept).
    pub(crate) fn set_broker(&self, view: BrokerView) {
        let _ = self.broker.set(view);
    }

    /// Records that the broker is stopping: `/ready` answers 503 from now on.
    pub(crate) fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// The broker, if it serves and is not stopping; else why not.
    pub(crate) fn broker(&self) -> Result<&BrokerView, ApiError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable("the broker is shutting down"));
        }
        self.broker
            .get()
            .ok_or_else(|| ApiError::unavailable("the broker is starting: shards are recovering"))
    }

    /// Time since the HTTP listener started.
    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The next partition for an unkeyed request among `partitions`.
    pub(crate) fn next_partition(&self, partitions: u32) -> u32 {
        self.round_robin.fetch_add(1, Ordering::Relaxed) % partitions.max(1)
    }

    /// Runs `f` with a pooled client connection on a blocking thread. A connection that
    /// failed is dropped; a healthy one goes back to the pool.
    pub(crate) async fn call<T, F>(self: &Arc<Self>, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Client) -> Result<T, ClientError> + Send + 'static,
    {
        let (native, tls) = {
            let broker = self.broker()?;
            (broker.native, broker.native_tls.clone())
        };
        let caller = CALLER.try_with(Clone::clone).ok().flatten();
        let state = self.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let pooled = {
                let mut pool = state
                    .pool
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                pool.iter()
                    .position(|(who, _)| *who == caller)
                    .map(|at| pool.swap_remove(at).1)
            };
            let mut client = match pooled {
                Some(client) => client,
                None => {
                    Client::connect_secure(native, CALL_TIMEOUT, caller.as_ref(), tls.as_ref())?
                }
            };
            let result = f(&mut client);
            if !result.as_ref().is_err_and(ClientError::is_connection_error) {
                let mut pool = state
                    .pool
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if pool.len() >= POOL_IDLE {
                    pool.remove(0);
                }
                pool.push((caller, client));
            }
            result
        })
        .await;
        match joined {
            Ok(result) => result.map_err(ApiError::from),
            Err(e) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the call to the broker failed: {e}"),
            )),
        }
    }
}

/// Path parameters by name; a malformed one is a JSON 400.
pub(crate) struct Params(pub(crate) HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(map) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        if let Some(cluster) = map.get("cluster_id") {
            if cluster != CLUSTER_ID {
                return Err(ApiError::not_found(format!(
                    "no cluster `{cluster}`: this broker is cluster `{CLUSTER_ID}`"
                )));
            }
        }
        Ok(Params(map))
    }
}

impl Params {
    /// A path parameter as text.
    pub(crate) fn text(&self, name: &str) -> Result<&str, ApiError> {
        self.0
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| ApiError::bad_request(format!("missing path parameter {name}")))
    }

    /// A path parameter that must be a partition index.
    pub(crate) fn partition(&self, name: &str) -> Result<u32, ApiError> {
        let text = self.text(name)?;
        text.parse()
            .map_err(|_| ApiError::bad_request(format!("{name} `{text}` is not a partition index")))
    }
}

/// Query parameters by name; a malformed query is a JSON 400.
pub(crate) struct QueryParams(pub(crate) HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(map) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        Ok(QueryParams(map))
    }
}

impl QueryParams {
    /// A numeric query parameter, `default` when absent, at most `max`.
    pub(crate) fn number(
        &self,
        name: &str,
        default: i64,
        min: i64,
        max: i64,
    ) -> Result<i64, ApiError> {
        let Some(text) = self.0.get(name) else {
            return Ok(default);
        };
        let n: i64 = text.parse().map_err(|_| {
            ApiError::bad_request(format!("query parameter {name}=`{text}` is not a number"))
        })?;
        if n < min || n > max {
            return Err(ApiError::bad_request(format!(
                "query parameter {name}={n} is out of range ({min}..={max})"
            )));
        }
        Ok(n)
    }

    /// An optional query parameter as text.
    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// A request body as JSON: over the bound is 413, not JSON is 400.
pub(crate) fn json_body(
    body: Result<Bytes, BytesRejection>,
) -> Result<serde_json::Value, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is over the limit (--http-max-body-bytes)",
            )
        } else {
            ApiError::new(e.status(), e.body_text())
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}
