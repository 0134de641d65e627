//! The HTTP API and web console (`eventflowd --http-listen`): JSON in the shape of
//! Confluent's REST Proxy v3 (topics, configs, produce, consumer groups, brokers), reads
//! by offset in the shape of Redpanda's HTTP Proxy, `/health` and `/ready` for
//! orchestrators, the OpenAPI document at `/openapi.json`, and a console page at `/`.
//!
//! The server is axum on a current-thread tokio runtime in a thread of its own. It is one
//! more client of the broker: every handler reaches the broker through the client library's
//! blocking `Client` on a pooled connection to the native listener (`state`), so nothing
//! here runs on a shard or touches a shard's memory, and the API works with whatever the
//! native protocol offers and no more. docs/ARCHITECTURE.md says why.
//!
//! Authentication is HTTP Basic with the broker's own users: a request's credentials are
//! what its calls log in to the native listener with (`state::CALLER`), so the HTTP API
//! checks nothing itself and can do no more than the user could with a native client. On
//! a broker whose native listener requires authentication, a request without credentials
//! gets 401 (`/health`, `/ready` and `/openapi.json` stay open for orchestrators).

mod assets;
mod cluster;
mod error;
mod groups;
mod records;
mod state;
mod topics;

pub use state::{BrokerView, TopicTraffic, TrafficSource};

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;

use crate::config::BrokerConfig;
use state::ApiState;

/// Requests the API may have waiting on the broker at once (blocking threads, each with
/// its own connection); more wait their turn.
const MAX_BROKER_CALLS: usize = 16;

/// A running HTTP listener. Dropping it stops the server and joins its thread.
pub struct HttpApi {
    addr: SocketAddr,
    state: Arc<ApiState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpApi {
    /// Binds `listen` and starts serving on a thread of its own. Until
    /// [`HttpApi::set_broker`] is called, `/health` answers and everything that needs the
    /// broker (and `/ready`) answers 503. Request bodies over `max_body_bytes` get 413.
    /// With `tls`, the listener speaks HTTPS.
    pub fn start(
        listen: SocketAddr,
        max_body_bytes: usize,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<HttpApi> {
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ApiState::new(addr));
        let router = router(state.clone(), max_body_bytes);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(MAX_BROKER_CALLS)
            .thread_name("eventflow-http-call")
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("eventflow-http".into())
            .spawn(move || {
                let served = runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let stopped = async move {
                        let _ = stopped.await;
                    };
                    match tls {
                        None => {
                            axum::serve(listener, router)
                                .with_graceful_shutdown(stopped)
                                .await
                        }
                        Some(config) => {
                            let listener = crate::http::tls::TlsListener::new(listener, config)?;
                            axum::serve(listener, router)
                                .with_graceful_shutdown(stopped)
                                .await
                        }
                    }
                });
                if let Err(e) = served {
                    tracing::error!(error = %e, "the HTTP listener stopped");
                }
                // Calls still waiting on the broker are not waited for.
                runtime.shutdown_timeout(Duration::from_millis(500));
            })?;
        Ok(HttpApi {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The broker serves: `/ready` answers 200 and the API calls it from now on.
    pub fn set_broker(&self, view: BrokerView) {
        self.state.set_broker(view);
    }

    /// The broker is stopping: `/ready` and the API answer 503 from now on.
    pub fn set_stopping(&self) {
        self.state.set_stopping();
    }

    /// A function that marks the broker as stopping from any thread (signal handlers).
    pub fn stopping_trigger(&self) -> impl Fn() + Send + Sync + 'static {
        let state = self.state.clone();
        move || state.set_stopping()
    }
}

impl Drop for HttpApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The broker's effective settings as the API and console show them.
pub fn settings_of(config: &BrokerConfig) -> Vec<(String, String)> {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "none".into());
    vec![
        ("listen".into(), config.listen.to_string()),
        (
            "kafka_listen".into(),
            opt(config.kafka_listen.map(|a| a.to_string())),
        ),
        ("data_dir".into(), config.data_dir.display().to_string()),
        ("cores".into(), format!("{:?}", config.cores)),
        ("pin".into(), config.pin.to_string()),
        ("fsync".into(), format!("{:?}", config.fsync)),
        (
            "group_commit_us".into(),
            config.group_commit.as_micros().to_string(),
        ),
        (
            "group_commit_interval_us".into(),
            config.group_commit_interval.as_micros().to_string(),
        ),
        ("log_writes".into(), config.log_writes.to_string()),
        (
            "tail_cache_mb".into(),
            (config.tail_cache_bytes >> 20).to_string(),
        ),
        (
            "tail_cache_shard_mb".into(),
            (config.shard_tail_cache_bytes >> 20).to_string(),
        ),
        ("max_batch_bytes".into(), config.max_batch_bytes.to_string()),
        (
            "max_request_bytes".into(),
            config.max_request_bytes.to_string(),
        ),
        ("ring_capacity".into(), config.ring_capacity.to_string()),
        ("uring_entries".into(), config.uring_entries.to_string()),
        ("sqpoll".into(), config.sqpoll.to_string()),
        (
            "direct_port_base".into(),
            opt(config.direct_port_base.map(|p| p.to_string())),
        ),
        ("segment_bytes".into(), config.segment_bytes.to_string()),
        (
            "retention_ms".into(),
            config.retention_ms.map_or("-1".into(), |v| v.to_string()),
        ),
        (
            "retention_bytes".into(),
            config
                .retention_bytes
                .map_or("-1".into(), |v| v.to_string()),
        ),
        (
            "retention_check_secs".into(),
            config.retention_check.as_secs().to_string(),
        ),
        (
            "scrub_bytes_per_sec".into(),
            config.scrub_bytes_per_sec.to_string(),
        ),
        (
            "compaction_bytes_per_sec".into(),
            config.compaction_bytes_per_sec.to_string(),
        ),
        ("max_connections".into(), config.max_connections.to_string()),
        (
            "max_connections_per_ip".into(),
            config
                .max_connections_per_ip
                .map_or("0".into(), |v| v.to_string()),
        ),
        (
            "max_in_flight".into(),
            config.max_in_flight_per_connection.to_string(),
        ),
        (
            "max_queued_bytes".into(),
            config.max_queued_request_bytes.to_string(),
        ),
        (
            "request_read_timeout_ms".into(),
            config.request_read_timeout.as_millis().to_string(),
        ),
        (
            "idle_timeout_ms".into(),
            config.idle_timeout.as_millis().to_string(),
        ),
        (
            "group_initial_rebalance_delay_ms".into(),
            config.group_initial_rebalance_delay.as_millis().to_string(),
        ),
    ]
}

/// The user name and password of an `Authorization: Basic …` header.
fn basic_credentials(header: &axum::http::HeaderValue) -> Option<(String, String)> {
    use base64::Engine as _;
    let encoded = header.to_str().ok()?.strip_prefix("Basic ")?.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Serves the request with its HTTP Basic credentials as the caller of its broker calls;
/// without them, on a broker that requires authentication, answers 401.
async fn caller(
    axum::extract::State(state): axum::extract::State<Arc<ApiState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let open = matches!(request.uri().path(), "/health" | "/ready" | "/openapi.json");
    let (mechanism, required) = state
        .broker()
        .map_or((None, false), |v| (v.login_mechanism, v.login_required));
    let credentials = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(basic_credentials)
        .zip(mechanism)
        .map(|((user, password), mechanism)| crate::client::Credentials {
            mechanism,
            user,
            password,
        });
    if credentials.is_none() && required && !open {
        return error::ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "this broker requires authentication: HTTP Basic with a broker user's name and password",
        )
        .into_response();
    }
    state::CALLER.scope(credentials, next.run(request)).await
}

fn router(state: Arc<ApiState>, max_body_bytes: usize) -> Router {
    let cluster = "/v3/clusters/{cluster_id}";
    let topic = "/v3/clusters/{cluster_id}/topics/{topic_name}";
    let group = "/v3/clusters/{cluster_id}/consumer-groups/{consumer_group_id}";
    Router::new()
        .route("/", get(assets::console_page))
        .route("/console.js", get(assets::console_script))
        .route("/console.css", get(assets::console_style))
        .route("/openapi.json", get(assets::openapi))
        .route("/health", get(cluster::health))
        .route("/ready", get(cluster::ready))
        .route("/v3/clusters", get(cluster::list_clusters))
        .route(cluster, get(cluster::get_cluster))
        .route(&format!("{cluster}/brokers"), get(cluster::list_brokers))
        .route(&format!("{cluster}/traffic"), get(cluster::traffic))
        .route(
            &format!("{cluster}/brokers/{{broker_id}}"),
            get(cluster::get_broker),
        )
        .route(
            &format!("{cluster}/brokers/{{broker_id}}/configs"),
            get(cluster::broker_configs),
        )
        .route(
            &format!("{cluster}/topics"),
            get(topics::list_topics).post(topics::create_topic),
        )
        .route(topic, get(topics::get_topic).delete(topics::delete_topic))
        .route(&format!("{topic}/partitions"), get(topics::list_partitions))
        .route(
            &format!("{topic}/partitions/{{partition_id}}"),
            get(topics::get_partition),
        )
        .route(
            &format!("{topic}/partitions/{{partition_id}}/records"),
            get(records::read),
        )
        .route(
            &format!("{topic}/records"),
            axum::routing::post(records::produce),
        )
        .route(&format!("{topic}/configs"), get(topics::list_configs))
        .route(
            &format!("{topic}/configs:alter"),
            axum::routing::post(topics::alter_configs),
        )
        .route(
            &format!("{topic}/configs/{{name}}"),
            get(topics::get_config).put(topics::put_config),
        )
        .route(
            &format!("{cluster}/consumer-groups"),
            get(groups::list_consumer_groups),
        )
        .route(
            group,
            get(groups::describe_consumer_group).delete(groups::delete_consumer_group),
        )
        .route(&format!("{group}/lags"), get(groups::consumer_group_lags))
        .route(
            &format!("{group}/lag-summary"),
            get(groups::consumer_group_lag_summary),
        )
        .route(
            &format!("{group}/offsets:reset"),
            axum::routing::post(groups::reset_offsets),
        )
        .route(
            &format!("{cluster}/share-groups"),
            get(groups::list_share_groups),
        )
        .route(
            &format!("{cluster}/share-groups/{{share_group_id}}"),
            get(groups::describe_share_group),
        )
        .fallback(cluster::no_route)
        .method_not_allowed_fallback(cluster::no_method)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), caller))
        .with_state(state)
}
