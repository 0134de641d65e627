//! What the listener serves from the binary itself: the console page and its script and
//! style, and the OpenAPI document, all embedded at build time (no CDN, no files at run
//! time).

use axum::http::header;
use axum::response::IntoResponse;

const CONSOLE_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");
const OPENAPI: &str = include_str!("openapi.json");

/// `GET /`.
pub(crate) async fn console_page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        CONSOLE_HTML,
    )
}

/// `GET /console.js`.
pub(crate) async fn console_script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        CONSOLE_JS,
    )
}

/// `GET /console.css`.
pub(crate) async fn console_style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        CONSOLE_CSS,
    )
}

/// `GET /openapi.json`.
pub(crate) async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}
