//! The Kafka protocol's front end: each handler takes a request the codec in
//! `protocol/kafka` decoded, calls the same services as the native front end (the topics
//! service, the typed partition calls, and the native data handlers where their logic is
//! the same, such as the long-poll fetch loop), and builds the Kafka response. Nothing here
//! owns state.
//!
//! - `admin`: ApiVersions and Metadata.

mod admin;

use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};

use super::context::ShardContext;
use crate::protocol::frame::Part;
use crate::protocol::kafka::{encode_response, Request};
use crate::storage::FileRange;

/// An encoded response: its parts, whose placeholders take `files` in order (the records
/// of partitions this shard owns, spliced from their segment files).
pub(crate) struct KafkaReply {
    pub(crate) parts: Vec<Part>,
    pub(crate) files: Vec<FileRange>,
}

impl KafkaReply {
    fn frame(bytes: Bytes) -> KafkaReply {
        KafkaReply {
            parts: vec![Part::Bytes(bytes)],
            files: Vec::new(),
        }
    }
}

/// Handles one decoded request. `Ok(None)` means no response is sent (produce with
/// acks = 0); an error means the response could not be encoded and the connection must
/// close. `local` is the address the client connected to (advertised in Metadata).
pub(crate) async fn handle(
    ctx: &Rc<ShardContext>,
    request: Request,
    local: Option<SocketAddr>,
) -> Result<Option<KafkaReply>, String> {
    let Request {
        key,
        version,
        correlation_id,
        client_id,
        body,
    } = request;
    let response = match body {
        RequestKind::ApiVersions(r) => {
            tracing::debug!(
                client = client_id.as_deref().unwrap_or(""),
                software = %r.client_software_name.as_str(),
                "kafka handshake"
            );
            ResponseKind::ApiVersions(admin::api_versions())
        }
        RequestKind::Metadata(r) => ResponseKind::Metadata(admin::metadata(ctx, r, version, local)),
        other => {
            // decode_request lets through only the APIs of SUPPORTED, all handled above.
            return Err(format!("no handler for {key:?} ({other:?})"));
        }
    };
    plain(key, version, correlation_id, &response).map(Some)
}

fn plain(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &ResponseKind,
) -> Result<KafkaReply, String> {
    encode_response(key, version, correlation_id, response).map(KafkaReply::frame)
}
