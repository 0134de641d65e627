//! The Kafka wire protocol, free of I/O: the request header, the table of API versions the
//! broker advertises, request decoding and response encoding.
//!
//! The message layouts come from the `kafka-protocol` crate (generated from Kafka's own JSON
//! schemas). Frames use the same 4-byte big-endian length prefix as the native protocol, so
//! the connection splits them with [`super::frame::split_frame`]. The two messages that
//! carry records are coded by hand so the records are never copied: the Produce request
//! ([`produce`]), whose batches stay `BytesMut` handles into the buffer the socket read
//! filled, and the Fetch response ([`fetch`]), whose records may be spliced from a file.
//!
//! Versions are checked against [`SUPPORTED`] before a body is decoded: a client may only
//! use what the broker advertised in ApiVersions.

pub mod consumer;
pub mod error;
pub mod fetch;
pub mod produce;
pub mod scan;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable};

pub use error::{error_code, UNSUPPORTED_VERSION};

/// Bytes of the fixed start of every request header: api key i16, api version i16,
/// correlation id i32.
pub const HEADER_START: usize = 8;

/// The APIs the broker serves and the versions of each it advertises (min, max).
///
/// Produce advertises 0 but refuses 0–2 (UNSUPPORTED_VERSION): librdkafka compresses only
/// when the broker's Produce range starts at 0, and Kafka 4.0 advertises the same range for
/// that reason (KAFKA-18659).
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::Produce, 0, 12),
    (ApiKey::Fetch, fetch::MIN_VERSION, fetch::MAX_VERSION),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::InitProducerId, 0, 5),
    // After v0 the exchange travels as bare tokens without a Kafka header.
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
    (ApiKey::DescribeClientQuotas, 0, 1),
    (ApiKey::AlterClientQuotas, 0, 1),
];

/// Produce versions below this are advertised but refused with UNSUPPORTED_VERSION.
pub const PRODUCE_MIN_SERVED: i16 = 3;

/// The versions of `key` the broker advertises.
pub fn supported(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, min, max)| (min, max))
}

/// Why a request frame was not decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// An ApiVersions request at a version the broker does not know: it is answered in the
    /// v0 layout with UNSUPPORTED_VERSION (what Kafka does, so the client can retry lower).
    #[error("api versions v{version} is not supported")]
    ApiVersionsVersion {
        /// The request's correlation id.
        correlation_id: i32,
        /// The version asked for.
        version: i16,
    },
    /// An API the broker does not serve, or a version of it outside the advertised range.
    /// There is no response layout to answer in: the connection is closed.
    #[error("api key {key} version {version} is not supported")]
    Unsupported {
        /// The request's correlation id.
        correlation_id: i32,
        /// The API key as sent.
        key: i16,
        /// The version as sent.
        version: i16,
    },
    /// The header or body does not parse.
    #[error("malformed request (api key {key} version {version}): {reason}")]
    Malformed {
        /// The request's correlation id (0 if the frame is too short to carry one).
        correlation_id: i32,
        /// The API key as sent.
        key: i16,
        /// The version as sent.
        version: i16,
        /// What failed.
        reason: String,
    },
}

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    /// The API.
    pub key: ApiKey,
    /// Its version.
    pub version: i16,
    /// Echoed in the response.
    pub correlation_id: i32,
    /// The client's name, if it sent one.
    pub client_id: Option<String>,
    /// The body.
    pub body: Body,
}

/// A request body.
#[derive(Debug)]
pub enum Body {
    /// Produce, decoded by hand (records without a copy).
    Produce(produce::ProduceData),
    /// Every other API, decoded by the crate (boxed: its largest message is large).
    Kind(Box<RequestKind>),
}

/// Decodes a request frame (without its length prefix).
pub fn decode_request(mut frame: BytesMut) -> Result<Request, Refusal> {
    if frame.len() < HEADER_START {
        return Err(Refusal::Malformed {
            correlation_id: 0,
            key: -1,
            version: -1,
            reason: format!("a frame of {} bytes holds no request header", frame.len()),
        });
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let unsupported = Refusal::Unsupported {
        correlation_id,
        key: raw_key,
        version,
    };
    let key = ApiKey::try_from(raw_key).map_err(|_| unsupported.clone())?;
    let (min, max) = supported(key).ok_or_else(|| unsupported.clone())?;
    if !(min..=max).contains(&version) {
        if key == ApiKey::ApiVersions {
            return Err(Refusal::ApiVersionsVersion {
                correlation_id,
                version,
            });
        }
        return Err(unsupported);
    }
    let malformed = |reason: String| Refusal::Malformed {
        correlation_id,
        key: raw_key,
        version,
        reason,
    };
    let header = RequestHeader::decode(&mut frame, key.request_header_version(version))
        .map_err(|e| malformed(format!("header: {e}")))?;
    let body = if key == ApiKey::Produce {
        Body::Produce(
            produce::decode_produce(frame, version).map_err(|e| malformed(format!("body: {e}")))?,
        )
    } else {
        let mut body = frame.freeze();
        // Before the crate sizes any array from the bytes (see scan.rs).
        scan::check(key, version, &body).map_err(|e| {
            malformed(format!(
                "an array announces {} elements with {} bytes left",
                e.count, e.left
            ))
        })?;
        Body::Kind(Box::new(
            RequestKind::decode(key, &mut body, version)
                .map_err(|e| malformed(format!("body: {e}")))?,
        ))
    };
    Ok(Request {
        key,
        version,
        correlation_id,
        client_id: header.client_id.map(|s| s.to_string()),
        body,
    })
}

/// The answer to a request the broker does not serve (an API it does not advertise, or a
/// version outside the advertised range), when that API's response has a top-level error
/// code at that version: `UNSUPPORTED_VERSION` in the layout the client asked for, so it
/// gets an error and the connection stays up. `None` when there is no such layout (an API
/// key unknown to the codec, or a response whose errors are per item): then the connection
/// closes, as Kafka closes it.
pub fn unsupported_answer(correlation_id: i32, key: i16, version: i16) -> Option<Bytes> {
    use kafka_protocol::messages::*;
    let api = ApiKey::try_from(key).ok()?;
    let known = api.valid_versions();
    if !(known.min..=known.max).contains(&version) {
        return None;
    }
    macro_rules! refused {
        ($($kind:ident => $response:ident),* $(,)?) => {
            match api {
                $(ApiKey::$kind => ResponseKind::$kind(
                    $response::default().with_error_code(UNSUPPORTED_VERSION),
                ),)*
                _ => return None,
            }
        };
    }
    let response = refused!(
        Fetch => FetchResponse,
        SaslHandshake => SaslHandshakeResponse,
        SaslAuthenticate => SaslAuthenticateResponse,
        JoinGroup => JoinGroupResponse,
        SyncGroup => SyncGroupResponse,
        Heartbeat => HeartbeatResponse,
        LeaveGroup => LeaveGroupResponse,
        ListGroups => ListGroupsResponse,
        OffsetDelete => OffsetDeleteResponse,
        InitProducerId => InitProducerIdResponse,
        AddOffsetsToTxn => AddOffsetsToTxnResponse,
        EndTxn => EndTxnResponse,
        DescribeAcls => DescribeAclsResponse,
        DescribeLogDirs => DescribeLogDirsResponse,
        ElectLeaders => ElectLeadersResponse,
        AlterPartitionReassignments => AlterPartitionReassignmentsResponse,
        ListPartitionReassignments => ListPartitionReassignmentsResponse,
        DescribeClientQuotas => DescribeClientQuotasResponse,
        DescribeUserScramCredentials => DescribeUserScramCredentialsResponse,
        DescribeCluster => DescribeClusterResponse,
        ListTransactions => ListTransactionsResponse,
        ConsumerGroupHeartbeat => ConsumerGroupHeartbeatResponse,
        GetTelemetrySubscriptions => GetTelemetrySubscriptionsResponse,
        PushTelemetry => PushTelemetryResponse,
    );
    // A version whose layout lacks the field fails to encode: no answer then.
    encode_response(api, version, correlation_id, &response).ok()
}

/// Encodes a response frame: length prefix, response header (in the version the request's
/// API and version call for), body.
pub fn encode_response(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> Result<Bytes, String> {
    let mut out = BytesMut::with_capacity(128);
    out.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut out, key.response_header_version(version))
        .map_err(|e| format!("response header: {e}"))?;
    body.encode(&mut out, version)
        .map_err(|e| format!("{key:?} v{version} response: {e}"))?;
    let len = i32::try_from(out.len() - 4).map_err(|_| "response too large".to_string())?;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out.freeze())
}

/// The response to a Produce request of v0–v2 (refused): every partition gets
/// UNSUPPORTED_VERSION. Encoded here because the crate knows Produce from v3 only; the
/// layout is Kafka's ProduceResponse v0–v2: `[topic string, [partition i32, error i16,
/// base_offset i64, log_append_time i64 (v2)]]`, then `throttle_time_ms i32` (v1+).
pub fn produce_refusal_v0_2(
    version: i16,
    correlation_id: i32,
    topics: &[(String, Vec<i32>)],
) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_i32(0);
    out.put_i32(correlation_id);
    out.put_i32(topics.len() as i32);
    for (name, partitions) in topics {
        out.put_i16(name.len() as i16);
        out.put_slice(name.as_bytes());
        out.put_i32(partitions.len() as i32);
        for &p in partitions {
            out.put_i32(p);
            out.put_i16(UNSUPPORTED_VERSION);
            out.put_i64(-1);
            if version >= 2 {
                out.put_i64(-1);
            }
        }
    }
    if version >= 1 {
        out.put_i32(0);
    }
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out.freeze()
}

/// The ApiVersions response listing [`SUPPORTED`].
pub fn api_versions_response() -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(
        SUPPORTED
            .iter()
            .map(|&(key, min, max)| {
                ApiVersion::default()
                    .with_api_key(key as i16)
                    .with_min_version(min)
                    .with_max_version(max)
            })
            .collect(),
    )
}

/// The answer to an ApiVersions request at a version the broker does not know: v0 layout,
/// UNSUPPORTED_VERSION, and only ApiVersions' own range, so the client retries at a version
/// both sides know.
pub fn api_versions_unsupported(correlation_id: i32) -> Bytes {
    let (min, max) = supported(ApiKey::ApiVersions).expect("ApiVersions is always served");
    let body = ApiVersionsResponse::default()
        .with_error_code(UNSUPPORTED_VERSION)
        .with_api_keys(vec![ApiVersion::default()
            .with_api_key(ApiKey::ApiVersions as i16)
            .with_min_version(min)
            .with_max_version(max)]);
    encode_response(
        ApiKey::ApiVersions,
        0,
        correlation_id,
        &ResponseKind::ApiVersions(body),
    )
    .expect("an ApiVersions v0 response always encodes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::StrBytes;

    fn frame(key: ApiKey, version: i16, correlation_id: i32, body: &impl Encodable) -> BytesMut {
        let mut out = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from("test")))
            .encode(&mut out, key.request_header_version(version))
            .unwrap();
        body.encode(&mut out, version).unwrap();
        out
    }

    #[test]
    fn decodes_a_flexible_request() {
        let body = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from("t"))
            .with_client_software_version(StrBytes::from("1"));
        let r = decode_request(frame(ApiKey::ApiVersions, 3, 7, &body)).unwrap();
        assert_eq!(
            (r.key, r.version, r.correlation_id),
            (ApiKey::ApiVersions, 3, 7)
        );
        assert_eq!(r.client_id.as_deref(), Some("test"));
        assert!(matches!(r.body, Body::Kind(k) if matches!(*k, RequestKind::ApiVersions(_))));
    }

    #[test]
    fn refuses_versions_outside_the_advertised_range() {
        let body = MetadataRequest::default();
        assert_eq!(
            decode_request(frame(ApiKey::Metadata, 13, 9, &body)).unwrap_err(),
            Refusal::Unsupported {
                correlation_id: 9,
                key: 3,
                version: 13
            }
        );
        let mut unknown = BytesMut::new();
        unknown.put_i16(999);
        unknown.put_i16(0);
        unknown.put_i32(5);
        assert!(matches!(
            decode_request(unknown),
            Err(Refusal::Unsupported { key: 999, .. })
        ));
        let mut future = BytesMut::new();
        future.put_i16(ApiKey::ApiVersions as i16);
        future.put_i16(99);
        future.put_i32(11);
        assert_eq!(
            decode_request(future).unwrap_err(),
            Refusal::ApiVersionsVersion {
                correlation_id: 11,
                version: 99
            }
        );
        assert!(matches!(
            decode_request(BytesMut::from(&[0u8, 3][..])),
            Err(Refusal::Malformed { .. })
        ));
    }

    proptest::proptest! {
        /// Whatever the bytes after a served API key and version, decoding returns a value
        /// or a refusal, never a panic.
        #[test]
        fn decode_never_panics(
            api in 0usize..SUPPORTED.len(),
            version in -1i16..14,
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let mut frame = BytesMut::new();
            frame.put_i16(SUPPORTED[api].0 as i16);
            frame.put_i16(version);
            frame.put_i32(1);
            frame.put_slice(&body);
            let _ = decode_request(frame);
        }
    }

    #[test]
    fn an_array_larger_than_the_frame_is_refused_before_decoding() {
        let mut frame = BytesMut::new();
        frame.put_i16(ApiKey::Metadata as i16);
        frame.put_i16(1);
        frame.put_i32(3);
        frame.put_i16(-1); // no client id
        frame.put_i32(i32::MAX); // topics
        assert!(matches!(
            decode_request(frame),
            Err(Refusal::Malformed {
                correlation_id: 3,
                ..
            })
        ));
    }

    #[test]
    fn api_versions_fallback_is_v0_with_its_own_range() {
        let mut b = api_versions_unsupported(42);
        assert_eq!(
            i32::from_be_bytes(b[..4].try_into().unwrap()) as usize,
            b.len() - 4
        );
        let _ = b.split_to(4);
        let header = ResponseHeader::decode(&mut b, 0).unwrap();
        assert_eq!(header.correlation_id, 42);
        let body = ApiVersionsResponse::decode(&mut b, 0).unwrap();
        assert_eq!(body.error_code, UNSUPPORTED_VERSION);
        assert_eq!(body.api_keys.len(), 1);
        assert_eq!(
            (
                body.api_keys[0].api_key,
                body.api_keys[0].min_version,
                body.api_keys[0].max_version
            ),
            (18, 0, 4)
        );
    }
}
