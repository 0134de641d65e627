//! `GET /metrics`: the Prometheus text exposition of the broker.
//!
//! One scrape gathers at a time: a scrape that arrives while another is gathering waits
//! for it and then gathers afresh, so concurrent scrapers never multiply the work asked of
//! the shards beyond one snapshot per shard at a time.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::metrics::exposition::CONTENT_TYPE;
use crate::server::Scraper;

/// How long a scrape waits for every shard to answer.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct Metrics {
    scraper: Scraper,
    one_at_a_time: Arc<tokio::sync::Mutex<()>>,
}

/// The `/metrics` route.
pub fn router(scraper: Scraper) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(Metrics {
            scraper,
            one_at_a_time: Arc::new(tokio::sync::Mutex::new(())),
        })
}

async fn scrape(State(m): State<Metrics>) -> Response {
    let _turn = m.one_at_a_time.lock().await;
    match m.scraper.render(SCRAPE_TIMEOUT).await {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::warn!("metrics scrape failed: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
        }
    }
}
