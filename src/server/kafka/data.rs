//! Produce and ListOffsets (Fetch is in `fetch.rs`): each Kafka request is translated into
//! the native front end's request and run by the same handler (`native::produce`,
//! `native::list_offsets`), so batch validation, routing to owners and group commit exist
//! once; the answer is translated back.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ListOffsetsRequest, ListOffsetsResponse, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::protocol::api::{self as native_api, offset_spec, Acks, TopicEntry};
use crate::protocol::frame::Part;
use crate::protocol::kafka::error::{error_code, INVALID_REQUIRED_ACKS, NONE};
use crate::protocol::kafka::produce::ProduceData;
use crate::server::context::ShardContext;
use crate::server::native;
use crate::storage::FileRange;

/// An encoded response: its parts, whose placeholders take `files` in order (the records
/// of partitions this shard owns, spliced from their segment files).
pub(crate) struct KafkaReply {
    pub(crate) parts: Vec<Part>,
    pub(crate) files: Vec<FileRange>,
}

impl KafkaReply {
    /// A response encoded in one piece.
    pub(crate) fn frame(bytes: Bytes) -> KafkaReply {
        KafkaReply {
            parts: vec![Part::Bytes(bytes)],
            files: Vec::new(),
        }
    }
}

/// A partition index from the wire; a negative one names no partition (the lookup fails
/// with UNKNOWN_TOPIC_OR_PARTITION).
pub(super) fn partition_index(index: i32) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

/// A Kafka request's topics as the native request's entries: `split` takes a topic's name
/// and partitions, `partition` turns each partition into the native entry.
fn native_entries<T, P, Q>(
    topics: Vec<T>,
    split: impl Fn(T) -> (String, Vec<P>),
    mut partition: impl FnMut(P) -> Q,
) -> Vec<TopicEntry<Q>> {
    topics
        .into_iter()
        .map(|t| {
            let (topic, partitions) = split(t);
            TopicEntry {
                topic,
                partitions: partitions.into_iter().map(&mut partition).collect(),
            }
        })
        .collect()
}

/// Appends the request's batches (validated, never decompressed, re-encoded or copied:
/// they are handles into the request buffer). `None`: acks = 0, no response.
pub(super) async fn produce(ctx: &Rc<ShardContext>, r: ProduceData) -> Option<ProduceResponse> {
    let acks = match r.acks {
        0 => Acks::None,
        1 => Acks::Leader,
        -1 => Acks::All,
        other => {
            tracing::debug!(acks = other, "kafka produce with invalid acks");
            return Some(refuse_all(&r, INVALID_REQUIRED_ACKS));
        }
    };
    let topics = native_entries(
        r.topics,
        |t| (t.name, t.partitions),
        |p| native_api::ProducePartition {
            partition: partition_index(p.index),
            records: p.records,
        },
    );
    let request = native_api::ProduceRequest {
        acks,
        timeout_ms: u32::try_from(r.timeout_ms).unwrap_or(0),
        topics,
    };
    let response = native::produce(ctx, request).await;
    if acks == Acks::None {
        return None;
    }
    Some(
        ProduceResponse::default().with_responses(
            response
                .topics
                .into_iter()
                .map(|t| {
                    TopicProduceResponse::default()
                        .with_name(TopicName(StrBytes::from_string(t.topic)))
                        .with_partition_responses(
                            t.partitions
                                .into_iter()
                                .map(|p| {
                                    let error = error_code(p.error);
                                    PartitionProduceResponse::default()
                                        .with_index(p.partition as i32)
                                        .with_error_code(error)
                                        .with_base_offset(p.base_offset)
                                        .with_log_append_time_ms(-1)
                                        .with_log_start_offset(-1)
                                        .with_error_message(
                                            (error != NONE)
                                                .then(|| StrBytes::from_string(p.message)),
                                        )
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
    )
}

/// A response giving every partition of the request the same error.
fn refuse_all(r: &ProduceData, error: i16) -> ProduceResponse {
    ProduceResponse::default().with_responses(
        r.topics
            .iter()
            .map(|t| {
                TopicProduceResponse::default()
                    .with_name(TopicName(StrBytes::from_string(t.name.clone())))
                    .with_partition_responses(
                        t.partitions
                            .iter()
                            .map(|p| {
                                PartitionProduceResponse::default()
                                    .with_index(p.index)
                                    .with_error_code(error)
                                    .with_base_offset(-1)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// Kafka's EARLIEST_LOCAL_TIMESTAMP (v8+): with no tiered storage, the earliest offset.
const EARLIEST_LOCAL: i64 = -4;

/// The earliest (-2), latest (-1) or first offset at or after a timestamp, per partition.
pub(super) async fn list_offsets(
    ctx: &Rc<ShardContext>,
    r: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let request = native_api::ListOffsetsRequest {
        topics: native_entries(
            r.topics,
            |t| (t.name.0.to_string(), t.partitions),
            |p| native_api::ListOffsetsPartition {
                partition: partition_index(p.partition_index),
                timestamp: match p.timestamp {
                    EARLIEST_LOCAL => offset_spec::EARLIEST,
                    ts => ts,
                },
            },
        ),
    };
    let response = native::list_offsets(ctx, request).await;
    ListOffsetsResponse::default().with_topics(
        response
            .topics
            .into_iter()
            .map(|t| {
                ListOffsetsTopicResponse::default()
                    .with_name(TopicName(StrBytes::from_string(t.topic)))
                    .with_partitions(
                        t.partitions
                            .into_iter()
                            .map(|p| {
                                ListOffsetsPartitionResponse::default()
                                    .with_partition_index(p.partition as i32)
                                    .with_error_code(error_code(p.error))
                                    .with_timestamp(-1)
                                    .with_offset(p.offset)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}
