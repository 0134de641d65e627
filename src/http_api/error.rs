//! The API's error answer: a JSON body `{"error_code": …, "message": …}` with the HTTP
//! status that says what went wrong. `error_code` is the HTTP status (as Confluent's REST
//! Proxy does for most errors); `broker_error` names the broker's own error code when the
//! broker refused the call.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::client::ClientError;
use crate::protocol::ErrorCode;

/// An error as the API answers it.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    broker_error: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            broker_error: None,
        }
    }

    /// 400: the request is malformed.
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: no such resource.
    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 503: the broker is not (or no longer) serving.
    pub(crate) fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// What went wrong, in words.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status.
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }
}

/// The HTTP status of a broker error code.
fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::UnknownTopicOrPartition | ErrorCode::UnknownGroup => StatusCode::NOT_FOUND,
        ErrorCode::TopicAlreadyExists | ErrorCode::GroupNotEmpty => StatusCode::CONFLICT,
        ErrorCode::RequestTooLarge | ErrorCode::BatchTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::InvalidTopic
        | ErrorCode::InvalidPartitions
        | ErrorCode::InvalidConfig
        | ErrorCode::InvalidRequest
        | ErrorCode::OffsetOutOfRange
        | ErrorCode::CorruptBatch => StatusCode::BAD_REQUEST,
        ErrorCode::ShuttingDown | ErrorCode::TooManyConnections | ErrorCode::NotEnoughDisk => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::AuthenticationRequired | ErrorCode::AuthenticationFailed => {
            StatusCode::UNAUTHORIZED
        }
        ErrorCode::NotAuthorized => StatusCode::FORBIDDEN,
        ErrorCode::UnknownUser => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> ApiError {
        match &e {
            ClientError::Broker(wire) => ApiError {
                status: status_of(wire.code),
                message: if wire.message.is_empty() {
                    wire.code.name().to_string()
                } else {
                    wire.message.clone()
                },
                broker_error: Some(wire.code.name()),
            },
            ClientError::Io { .. } | ClientError::Timeout { .. } => {
                ApiError::unavailable(format!("the broker did not answer: {e}"))
            }
            ClientError::CorruptBatch { .. }
            | ClientError::Decode(_)
            | ClientError::Unexpected(_) => ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "error_code": self.status.as_u16(),
            "message": self.message,
        });
        if let Some(name) = self.broker_error {
            body["broker_error"] = name.into();
        }
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // Browsers (the console) then ask the person for a user name and password.
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static(
                    "Basic realm=\"eventflow\", charset=\"UTF-8\"",
                ),
            );
        }
        response
    }
}
