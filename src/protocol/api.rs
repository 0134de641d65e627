//! The native API messages: one request and one response type per API, each implementing
//! [`Message`] beside its struct (most through `message!`; the produce and fetch messages
//! that carry records without copying them by hand), and the table that ties them to API
//! keys. The layout of every message is documented in `docs/PROTOCOL.md`; the tests at the
//! bottom pin each round trip and the bytes of every frame.
//!
//! The table (`apis!` below) is the only place an API is listed: the [`ApiKey`] enum, the
//! [`Request`] and [`Response`] enums and their dispatch are generated from it, so adding an
//! API is one line plus its message structs, and no hand-written `match` can miss it.
//!
//! Every API is at version 0. A broker answers a version it does not support with
//! `UnsupportedVersion`, so clients and brokers can evolve independently.

use crate::auth::acl::{
    Acl, AclFilter, Operation, PatternType, Permission, ResourceType, ANY_CODE,
};
use crate::auth::quota::{EntityName, NameMatch, QuotaEntity, QuotaFilter, QuotaKey, QuotaValues};
use bytes::{Bytes, BytesMut};

use super::error::ErrorCode;
use super::frame::{DecodeError, Decoder, Encoder, Part, RequestHeader};
pub use super::group::*;
use super::message::{decode_array, encode_array, encode_array_owned, message, Field};
pub use super::message::{Message, TopicEntry};

/// Expands to `$value` and drops `$ty`. In the table a body type is optional, and a
/// `$( .. )?` repetition can bind a name (`Request::Fetch(body)`) only if the type appears
/// inside it: this macro is how it appears.
macro_rules! with_type {
    ($ty:ty, $value:tt) => {
        $value
    };
}

/// Generates [`ApiKey`], [`Request`], [`Response`] and their dispatch from the API table.
/// Each line: key number, variant name, request body type in parentheses, response body
/// type in parentheses, highest version. Empty parentheses mean no body: that enum variant
/// carries nothing (`Request::ListTopics`, `Response::CreateTopic`).
macro_rules! apis {
    ($(
        $(#[$doc:meta])*
        $key:literal => $variant:ident ( $($request:ty)? ) -> ( $($response:ty)? ), v $max:literal;
    )*) => {
        /// API keys. Numbers are stable and never reused.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum ApiKey {
            $( $(#[$doc])* $variant = $key, )*
        }

        impl ApiKey {
            /// Every API, in numeric order.
            pub const ALL: [ApiKey; [$($key),*].len()] = [$(ApiKey::$variant),*];

            /// The key for a number, if known (looked up by value: a retired key stays
            /// unknown).
            pub fn from_u16(key: u16) -> Option<ApiKey> {
                match key {
                    $( $key => Some(ApiKey::$variant), )*
                    _ => None,
                }
            }

            /// Highest version this build speaks.
            pub fn max_version(self) -> u16 {
                match self {
                    $( ApiKey::$variant => $max, )*
                }
            }
        }

        /// A decoded request.
        #[derive(Debug)]
        pub enum Request {
            $( $(#[$doc])* $variant $( ($request) )?, )*
        }

        impl Request {
            /// The API of this request.
            pub fn api_key(&self) -> ApiKey {
                match self {
                    $( Request::$variant { .. } => ApiKey::$variant, )*
                }
            }

            fn decode_body(api: ApiKey, d: &mut Decoder) -> Result<Request, DecodeError> {
                Ok(match api {
                    $( ApiKey::$variant => Request::$variant $( (<$request>::decode(d)?) )?, )*
                })
            }

            fn encode_body(self, e: &mut Encoder) {
                match self {
                    $(
                        Request::$variant $( (with_type!($request, body)) )? => {
                            $( <$request>::encode_owned(body, e); )?
                        }
                    )*
                }
            }
        }

        /// A response body, by API.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Response {
            $( $(#[$doc])* $variant $( ($response) )?, )*
        }

        impl Response {
            /// The API this response answers.
            pub fn api_key(&self) -> ApiKey {
                match self {
                    $( Response::$variant { .. } => ApiKey::$variant, )*
                }
            }

            fn decode_body(api: ApiKey, d: &mut Decoder) -> Result<Response, DecodeError> {
                Ok(match api {
                    $( ApiKey::$variant => Response::$variant $( (<$response>::decode(d)?) )?, )*
                })
            }

            fn encode_body(&self, e: &mut Encoder) {
                match self {
                    $(
                        Response::$variant $( (with_type!($response, body)) )? => {
                            $( <$response>::encode(body, e); )?
                        }
                    )*
                }
            }
        }
    };
}

apis! {
    /// Handshake: broker version, supported APIs, shard count.
    0 => ApiVersions(ApiVersionsRequest) -> (ApiVersionsResponse), v 0;
    /// Topics → partitions → owning shard, and each shard's direct port.
    1 => Metadata(MetadataRequest) -> (MetadataResponse), v 0;
    /// Create a topic.
    2 => CreateTopic(CreateTopicRequest) -> (), v 0;
    /// Delete a topic and its data.
    3 => DeleteTopic(DeleteTopicRequest) -> (), v 0;
    /// Names and partition counts of all topics.
    4 => ListTopics() -> (ListTopicsResponse), v 0;
    /// Partitions, offsets and configs of one topic.
    5 => DescribeTopic(DescribeTopicRequest) -> (DescribeTopicResponse), v 0;
    /// Change topic configs.
    6 => AlterTopicConfig(AlterTopicConfigRequest) -> (), v 0;
    /// Append record batches.
    7 => Produce(ProduceRequest) -> (ProduceResponse), v 0;
    /// Read record batches, with long-poll.
    8 => Fetch(FetchRequest) -> (FetchResponse), v 0;
    /// Earliest, latest or by-timestamp offsets.
    9 => ListOffsets(ListOffsetsRequest) -> (ListOffsetsResponse), v 0;
    /// Join a consumer group; the broker assigns partitions.
    10 => JoinGroup(JoinGroupRequest) -> (MembershipResponse), v 0;
    /// Stay in a group; learn the current generation and assignment.
    11 => Heartbeat(HeartbeatRequest) -> (MembershipResponse), v 0;
    /// Leave a group.
    12 => LeaveGroup(LeaveGroupRequest) -> (), v 0;
    /// Store a group's offsets.
    13 => CommitOffsets(CommitOffsetsRequest) -> (ResultsResponse), v 0;
    /// Read a group's offsets.
    14 => FetchOffsets(FetchOffsetsRequest) -> (OffsetsResponse), v 0;
    /// Every consumer and share group.
    15 => ListGroups() -> (ListGroupsResponse), v 0;
    /// A consumer group's members, assignment and offsets.
    16 => DescribeGroup(GroupRequest) -> (DescribeGroupResponse), v 0;
    /// Forget a consumer group and its offsets.
    17 => DeleteGroup(GroupRequest) -> (), v 0;
    /// Acquire records of a share group (queue).
    18 => ShareFetch(ShareFetchRequest) -> (ShareFetchResponse), v 0;
    /// Accept, release, nack or reject acquired records.
    19 => ShareAck(ShareAckRequest) -> (ResultsResponse), v 0;
    /// A share group's state per partition.
    20 => DescribeQueue(GroupRequest) -> (DescribeQueueResponse), v 0;
    /// Choose a SASL mechanism; learn the ones the listener offers.
    21 => SaslHandshake(SaslHandshakeRequest) -> (SaslHandshakeResponse), v 0;
    /// One message of the SASL exchange.
    22 => SaslAuthenticate(SaslBytes) -> (SaslBytes), v 0;
    /// Every user and the mechanisms each has a credential for.
    23 => ListUsers() -> (ListUsersResponse), v 0;
    /// Add or replace a user's SCRAM credential.
    24 => UpsertUser(UpsertUserRequest) -> (), v 0;
    /// Remove a user's credential (or all of them).
    25 => DeleteUser(DeleteUserRequest) -> (), v 0;
    /// Add ACLs.
    26 => CreateAcls(CreateAclsRequest) -> (), v 0;
    /// The ACLs a filter matches.
    27 => DescribeAcls(AclFilterRequest) -> (AclsResponse), v 0;
    /// Remove the ACLs a filter matches; answers with them.
    28 => DeleteAcls(AclFilterRequest) -> (AclsResponse), v 0;
    /// The client quotas a filter matches.
    29 => DescribeQuotas(DescribeQuotasRequest) -> (QuotasResponse), v 0;
    /// Set and remove one entity's client quotas.
    30 => AlterQuotas(AlterQuotasRequest) -> (), v 0;
}

impl Request {
    /// Decodes a request body (the payload after its [`RequestHeader`]).
    pub fn decode(header: &RequestHeader, body: BytesMut) -> Result<Request, DecodeError> {
        let api =
            ApiKey::from_u16(header.api_key).ok_or(DecodeError::UnknownApi(header.api_key))?;
        if header.api_version > api.max_version() {
            return Err(DecodeError::UnsupportedVersion {
                api: header.api_key,
                version: header.api_version,
            });
        }
        let mut d = Decoder::new(body);
        let request = Request::decode_body(api, &mut d)?;
        d.finish()?;
        Ok(request)
    }

    /// Encodes the whole request frame (header included). Consumes the request so record
    /// batches become frame chunks without a copy.
    pub fn encode(self, correlation_id: u32) -> Vec<Bytes> {
        let mut e = request_frame(self.api_key(), correlation_id);
        self.encode_body(&mut e);
        e.finish()
    }
}

/// Starts a request frame: its header, at version 0.
fn request_frame(api: ApiKey, correlation_id: u32) -> Encoder {
    let mut e = Encoder::with_capacity(128);
    e.put_u16(api as u16);
    e.put_u16(0);
    e.put_u32(correlation_id);
    e
}

/// Starts a successful response frame: its header with error code 0 and no message.
fn response_frame(correlation_id: u32) -> Encoder {
    let mut e = Encoder::with_capacity(128);
    e.put_u32(correlation_id);
    e.put_u16(ErrorCode::None.as_u16());
    e.put_string("");
    e
}

/// Encodes a successful response frame.
pub fn encode_response(correlation_id: u32, response: &Response) -> Vec<Bytes> {
    let mut e = response_frame(correlation_id);
    response.encode_body(&mut e);
    e.finish()
}

/// Decodes a response body for `api`, after its header reported success.
pub fn decode_response(api: ApiKey, d: &mut Decoder) -> Result<Response, DecodeError> {
    Response::decode_body(api, d)
}

/// Encodes a request-level error response frame (no body).
pub fn encode_error_response(correlation_id: u32, code: ErrorCode, message: &str) -> Vec<Bytes> {
    let mut e = Encoder::with_capacity(16 + message.len());
    e.put_u32(correlation_id);
    e.put_u16(code.as_u16());
    e.put_string(message);
    e.finish()
}

/// `acks` of a produce request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// No response at all; the producer does not wait.
    None,
    /// Respond once the owning shard has appended the batch.
    Leader,
    /// Respond once the batch is as durable as the broker's `--fsync` policy makes it
    /// (with `--fsync always`: after fdatasync).
    All,
}

impl Acks {
    /// Wire value: 0, 1 or -1, as in Kafka.
    pub fn as_i16(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }

    /// Parses the wire value.
    pub fn from_i16(v: i16) -> Option<Acks> {
        match v {
            0 => Some(Acks::None),
            1 => Some(Acks::Leader),
            -1 => Some(Acks::All),
            _ => None,
        }
    }
}

/// Special timestamps of [`ListOffsetsRequest`].
pub mod offset_spec {
    /// The next offset to be written (the high watermark).
    pub const LATEST: i64 = -1;
    /// The first offset still stored.
    pub const EARLIEST: i64 = -2;
}

message! {
    /// Handshake.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ApiVersionsRequest {
        /// Free-form client name for the broker's logs.
        pub client_name: String,
    }
}

message! {
    /// One API a broker supports.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ApiVersionRange {
        /// API key.
        pub api_key: u16,
        /// Lowest version.
        pub min_version: u16,
        /// Highest version.
        pub max_version: u16,
    }
}

message! {
    /// Handshake answer.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ApiVersionsResponse {
        /// The broker's version string.
        pub broker_version: String,
        /// Number of shards (cores) serving.
        pub shard_count: u16,
        /// Supported APIs.
        pub apis: Vec<ApiVersionRange>,
    }
}

message! {
    /// Metadata for some topics (empty list: all topics).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MetadataRequest {
        /// Topic names; empty for all.
        pub topics: Vec<String>,
    }
}

message! {
    /// One shard's direct listener.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ShardEndpoint {
        /// Shard index.
        pub shard: u16,
        /// Host to connect to.
        pub host: String,
        /// Port of the shard's own listener (0 if it has none).
        pub port: u16,
    }
}

message! {
    /// Partitions of a topic and the shard owning each.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct TopicMetadata {
        /// Topic name.
        pub name: String,
        /// `UnknownTopicOrPartition` if the topic does not exist.
        pub error: ErrorCode,
        /// `owners[p]` is the shard owning partition `p`.
        pub owners: Vec<u16>,
    }
}

message! {
    /// Metadata answer.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MetadataResponse {
        /// Every shard's direct endpoint.
        pub shards: Vec<ShardEndpoint>,
        /// The requested topics.
        pub topics: Vec<TopicMetadata>,
    }
}

/// A topic config entry.
pub type ConfigEntry = (String, String);

/// Config entries: a count, then each key and value.
impl Field for Vec<ConfigEntry> {
    const MIN_BYTES: usize = 4;

    fn put(&self, e: &mut Encoder) {
        e.put_array(self.iter(), |e, (key, value)| {
            e.put_string(key);
            e.put_string(value);
        });
    }

    fn get(d: &mut Decoder, name: &'static str) -> Result<Self, DecodeError> {
        d.array(name, 4, |d| {
            Ok((d.string("config_key")?, d.string("config_value")?))
        })
    }
}

message! {
    /// Create a topic.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CreateTopicRequest {
        /// Topic name.
        pub name: String,
        /// Number of partitions.
        pub partitions: u32,
        /// Config overrides (`retention.ms`, `retention.bytes`, `segment.bytes`, `segment.ms`).
        pub configs: Vec<ConfigEntry>,
    }
}

message! {
    /// Delete a topic.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DeleteTopicRequest {
        /// Topic name.
        pub name: String,
    }
}

message! {
    /// Describe a topic.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DescribeTopicRequest {
        /// Topic name.
        pub name: String,
    }
}

message! {
    /// Set topic configs (entries not named keep their values).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct AlterTopicConfigRequest {
        /// Topic name.
        pub name: String,
        /// Entries to set.
        pub configs: Vec<ConfigEntry>,
    }
}

message! {
    /// One line of [`ListTopicsResponse`].
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct TopicListing {
        /// Topic name.
        pub name: String,
        /// Partition count.
        pub partitions: u32,
    }
}

message! {
    /// All topics.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ListTopicsResponse {
        /// Topics sorted by name.
        pub topics: Vec<TopicListing>,
    }
}

message! {
    /// State of one partition in [`DescribeTopicResponse`].
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct PartitionDescription {
        /// Partition index.
        pub partition: u32,
        /// Owning shard.
        pub shard: u16,
        /// First stored offset.
        pub log_start_offset: i64,
        /// Next offset to be written.
        pub high_watermark: i64,
        /// Bytes on disk.
        pub size_bytes: u64,
    }
}

message! {
    /// A topic's partitions and effective configs.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DescribeTopicResponse {
        /// Topic name.
        pub name: String,
        /// Partitions in index order.
        pub partitions: Vec<PartitionDescription>,
        /// Effective configs (overrides and broker defaults).
        pub configs: Vec<ConfigEntry>,
    }
}

/// Record batches for one partition of a produce request.
#[derive(Debug)]
pub struct ProducePartition {
    /// Partition index.
    pub partition: u32,
    /// One or more whole RecordBatch v2, concatenated. Decoded as a handle into the
    /// request buffer: the broker writes these very bytes to its log.
    pub records: BytesMut,
}

impl Message for ProducePartition {
    const MIN_BYTES: usize = 8;

    /// Copies the records: a request encodes through [`Message::encode_owned`], which does
    /// not.
    fn encode(&self, e: &mut Encoder) {
        e.put_u32(self.partition);
        e.put_bytes(&self.records);
    }

    fn decode(d: &mut Decoder) -> Result<Self, DecodeError> {
        Ok(ProducePartition {
            partition: d.u32("partition")?,
            records: d.bytes("records")?,
        })
    }

    fn encode_owned(self, e: &mut Encoder) {
        e.put_u32(self.partition);
        e.put_shared(self.records.freeze());
    }
}

/// Partitions of one topic in a produce request.
pub type ProduceTopic = TopicEntry<ProducePartition>;

/// Append record batches.
#[derive(Debug)]
pub struct ProduceRequest {
    /// Acknowledgement mode.
    pub acks: Acks,
    /// How long the broker may take before answering `Timeout` (advisory).
    pub timeout_ms: u32,
    /// What to append.
    pub topics: Vec<ProduceTopic>,
}

impl Message for ProduceRequest {
    /// Copies the records; [`Request::encode`] uses [`Message::encode_owned`], which does
    /// not.
    fn encode(&self, e: &mut Encoder) {
        e.put_i16(self.acks.as_i16());
        e.put_u32(self.timeout_ms);
        encode_array(e, &self.topics);
    }

    fn decode(d: &mut Decoder) -> Result<Self, DecodeError> {
        let acks_raw = d.i16("acks")?;
        let acks = Acks::from_i16(acks_raw).ok_or(DecodeError::InvalidValue {
            field: "acks",
            value: acks_raw.into(),
        })?;
        Ok(ProduceRequest {
            acks,
            timeout_ms: d.u32("timeout_ms")?,
            topics: decode_array(d, "topics")?,
        })
    }

    fn encode_owned(self, e: &mut Encoder) {
        e.put_i16(self.acks.as_i16());
        e.put_u32(self.timeout_ms);
        encode_array_owned(e, self.topics);
    }
}

/// One topic of a produce request built from shared bytes: its partition entries, each
/// with its record batches.
pub type ProduceTopicBatches = (String, Vec<(u32, Bytes)>);

/// Every topic of a produce request built from shared bytes.
pub type ProduceBatches = [ProduceTopicBatches];

/// Encodes a whole produce request frame from shared batch bytes (a producer keeps them
/// for retries, so they are not moved into the request). The same layout as
/// [`ProduceRequest`], with each record chunk shared rather than owned.
pub fn encode_produce_request(
    correlation_id: u32,
    acks: Acks,
    timeout_ms: u32,
    topics: &ProduceBatches,
) -> Vec<Bytes> {
    let mut e = request_frame(ApiKey::Produce, correlation_id);
    e.put_i16(acks.as_i16());
    e.put_u32(timeout_ms);
    e.put_array(topics.iter(), |e, (topic, partitions)| {
        e.put_string(topic);
        e.put_array(partitions.iter(), |e, (partition, records)| {
            e.put_u32(*partition);
            e.put_shared(records.clone());
        });
    });
    e.finish()
}

message! {
    /// Outcome for one partition of a produce request.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ProducePartitionResponse {
        /// Partition index.
        pub partition: u32,
        /// Outcome.
        pub error: ErrorCode,
        /// Explanation when `error` is set.
        pub message: String,
        /// Offset assigned to the first record of the first batch (-1 on error).
        pub base_offset: i64,
        /// Offset of the last record appended (-1 on error).
        pub last_offset: i64,
    }
}

/// Produce outcomes of one topic.
pub type ProduceTopicResponse = TopicEntry<ProducePartitionResponse>;

message! {
    /// Produce answer (not sent for `acks = 0`).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ProduceResponse {
        /// One entry per requested topic.
        pub topics: Vec<ProduceTopicResponse>,
    }
}

message! {
    /// One partition of a fetch request.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct FetchPartition {
        /// Partition index.
        pub partition: u32,
        /// First offset wanted.
        pub offset: i64,
        /// At most this many bytes for this partition (a first batch larger than this is still
        /// returned whole, so a consumer always makes progress).
        #[wire = "partition_max_bytes"]
        pub max_bytes: u32,
    }
}

/// Partitions of one topic in a fetch request.
pub type FetchTopic = TopicEntry<FetchPartition>;

message! {
    /// Read record batches. The broker answers as soon as at least `min_bytes` are available
    /// across the requested partitions, or when `max_wait_ms` has passed.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct FetchRequest {
        /// Longest wait for `min_bytes` to become available.
        pub max_wait_ms: u32,
        /// Bytes that make the broker answer before `max_wait_ms`.
        pub min_bytes: u32,
        /// Limit for the whole response.
        pub max_bytes: u32,
        /// What to read.
        pub topics: Vec<FetchTopic>,
    }
}

/// Fetched data of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPartitionResponse {
    /// Partition index.
    pub partition: u32,
    /// Outcome.
    pub error: ErrorCode,
    /// Explanation when `error` is set.
    pub message: String,
    /// Next offset to be written.
    pub high_watermark: i64,
    /// First stored offset.
    pub log_start_offset: i64,
    /// Whole stored record batches, byte for byte as on disk.
    pub records: Bytes,
}

impl FetchPartitionResponse {
    /// Writes the entry; with `external`, a hole of that many record bytes that the writer
    /// fills from a file instead of `records`.
    fn encode_with(&self, e: &mut Encoder, external: Option<usize>) {
        e.put_u32(self.partition);
        e.put_u16(self.error.as_u16());
        e.put_string(&self.message);
        e.put_i64(self.high_watermark);
        e.put_i64(self.log_start_offset);
        match external {
            Some(len) => e.put_external(len),
            None => e.put_shared(self.records.clone()),
        }
    }
}

impl Message for FetchPartitionResponse {
    const MIN_BYTES: usize = 28;

    fn encode(&self, e: &mut Encoder) {
        self.encode_with(e, None);
    }

    fn decode(d: &mut Decoder) -> Result<Self, DecodeError> {
        Ok(FetchPartitionResponse {
            partition: d.u32("partition")?,
            error: ErrorCode::from_u16(d.u16("error")?),
            message: d.string("message")?,
            high_watermark: d.i64("high_watermark")?,
            log_start_offset: d.i64("log_start_offset")?,
            records: d.bytes("records")?.freeze(),
        })
    }
}

/// Fetched data of one topic.
pub type FetchTopicResponse = TopicEntry<FetchPartitionResponse>;

/// Fetch answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResponse {
    /// One entry per requested topic.
    pub topics: Vec<FetchTopicResponse>,
}

impl FetchResponse {
    /// Writes the response; `external(i)` may turn the records of the `i`-th partition
    /// entry (counting across topics) into a hole, see [`encode_fetch_response_parts`].
    fn encode_parts(&self, e: &mut Encoder, external: &mut dyn FnMut(usize) -> Option<usize>) {
        let mut index = 0;
        e.put_array(self.topics.iter(), |e, t| {
            t.encode_each(e, |e, p| {
                p.encode_with(e, external(index));
                index += 1;
            });
        });
    }
}

impl Message for FetchResponse {
    fn encode(&self, e: &mut Encoder) {
        self.encode_parts(e, &mut |_| None);
    }

    fn decode(d: &mut Decoder) -> Result<Self, DecodeError> {
        Ok(FetchResponse {
            topics: decode_array(d, "topics")?,
        })
    }
}

/// Encodes a successful fetch response whose records may come from elsewhere: for the
/// `i`-th partition entry (counting across topics, in order), `external(i)` returns the
/// length of records the writer sends itself (from a file, with splice); `None` takes the
/// entry's `records` bytes.
pub fn encode_fetch_response_parts(
    correlation_id: u32,
    response: &FetchResponse,
    external: &mut dyn FnMut(usize) -> Option<usize>,
) -> Vec<Part> {
    let mut e = response_frame(correlation_id);
    response.encode_parts(&mut e, external);
    e.finish_parts()
}

message! {
    /// One partition of a list-offsets request.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ListOffsetsPartition {
        /// Partition index.
        pub partition: u32,
        /// [`offset_spec::LATEST`], [`offset_spec::EARLIEST`], or a timestamp in ms: the first
        /// batch whose max timestamp is at or after it.
        pub timestamp: i64,
    }
}

/// Partitions of one topic in a list-offsets request.
pub type ListOffsetsTopic = TopicEntry<ListOffsetsPartition>;

message! {
    /// Look up offsets.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ListOffsetsRequest {
        /// What to look up.
        pub topics: Vec<ListOffsetsTopic>,
    }
}

message! {
    /// Offset found for one partition.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ListOffsetsPartitionResponse {
        /// Partition index.
        pub partition: u32,
        /// Outcome.
        pub error: ErrorCode,
        /// Explanation when `error` is set.
        pub message: String,
        /// The offset, or -1 when no batch has a timestamp at or after the one asked for.
        pub offset: i64,
    }
}

/// Offsets of one topic.
pub type ListOffsetsTopicResponse = TopicEntry<ListOffsetsPartitionResponse>;

message! {
    /// List-offsets answer.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ListOffsetsResponse {
        /// One entry per requested topic.
        pub topics: Vec<ListOffsetsTopicResponse>,
    }
}

message! {
    /// Choose a SASL mechanism.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct SaslHandshakeRequest {
        /// The mechanism's name (`SCRAM-SHA-256`, `SCRAM-SHA-512`, `PLAIN`).
        pub mechanism: String,
    }
}

message! {
    /// The mechanisms a listener offers.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct SaslHandshakeResponse {
        /// Their names.
        pub mechanisms: Vec<String>,
    }
}

message! {
    /// One message of a SASL exchange, either way.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct SaslBytes {
        /// The mechanism's message.
        pub bytes: Bytes,
    }
}

message! {
    /// One SCRAM credential of a user: never its salt or keys.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CredentialInfo {
        /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
        pub mechanism: String,
        /// PBKDF2 iterations.
        pub iterations: u32,
    }
}

message! {
    /// A user and its credentials.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct UserDescription {
        /// The user's name.
        pub name: String,
        /// One per SCRAM mechanism it may log in with.
        pub credentials: Vec<CredentialInfo>,
    }
}

message! {
    /// Every user.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ListUsersResponse {
        /// By name.
        pub users: Vec<UserDescription>,
    }
}

message! {
    /// Add or replace a SCRAM credential. The client salts the password: it never
    /// reaches the broker (as Kafka's AlterUserScramCredentials).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct UpsertUserRequest {
        /// The user's name.
        pub name: String,
        /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
        pub mechanism: String,
        /// PBKDF2 iterations (4096..=16384).
        pub iterations: u32,
        /// The salt.
        pub salt: Bytes,
        /// Hi(password, salt, iterations).
        pub salted_password: Bytes,
    }
}

message! {
    /// Remove a user's credential.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DeleteUserRequest {
        /// The user's name.
        pub name: String,
        /// The mechanism whose credential goes; empty: every credential, the user.
        pub mechanism: String,
    }
}

message! {
    /// One ACL. The enums are numbered as Kafka's ACL APIs number them (docs/PROTOCOL.md).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct AclEntry {
        /// 2 topic, 3 group, 4 cluster.
        pub resource_type: i8,
        /// The resource's name (`*`: every resource of the type, with a literal pattern).
        pub resource_name: String,
        /// 3 literal, 4 prefixed.
        pub pattern: i8,
        /// `User:NAME` or `User:*`.
        pub principal: String,
        /// An IP address or `*`.
        pub host: String,
        /// 2 all, 3 read, 4 write, 5 create, 6 delete, 7 alter, 8 describe,
        /// 10 describe configs, 11 alter configs.
        pub operation: i8,
        /// 2 deny, 3 allow.
        pub permission: i8,
    }
}

message! {
    /// Add ACLs.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CreateAclsRequest {
        /// The ACLs.
        pub acls: Vec<AclEntry>,
    }
}

message! {
    /// A filter over ACLs: a field of 1 (numbers) or empty (strings) matches anything.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct AclFilterRequest {
        /// As in [`AclEntry`], or 1.
        pub resource_type: i8,
        /// As stored, or empty.
        pub resource_name: String,
        /// As in [`AclEntry`], or 1.
        pub pattern: i8,
        /// As stored, or empty.
        pub principal: String,
        /// As stored, or empty.
        pub host: String,
        /// As in [`AclEntry`], or 1.
        pub operation: i8,
        /// As in [`AclEntry`], or 1.
        pub permission: i8,
    }
}

message! {
    /// ACLs.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct AclsResponse {
        /// Sorted.
        pub acls: Vec<AclEntry>,
    }
}

impl AclEntry {
    /// The entry of `acl`.
    pub fn of(acl: &Acl) -> AclEntry {
        AclEntry {
            resource_type: acl.resource_type.code(),
            resource_name: acl.resource_name.clone(),
            pattern: acl.pattern.code(),
            principal: acl.principal.clone(),
            host: acl.host.clone(),
            operation: acl.operation.code(),
            permission: acl.permission.code(),
        }
    }

    /// The ACL this entry names, or why it names none.
    pub fn to_acl(&self) -> Result<Acl, String> {
        let unknown = |what: &str, code: i8| format!("unknown {what} {code}");
        Ok(Acl {
            resource_type: ResourceType::from_code(self.resource_type)
                .ok_or_else(|| unknown("resource type", self.resource_type))?,
            resource_name: self.resource_name.clone(),
            pattern: PatternType::from_code(self.pattern)
                .ok_or_else(|| unknown("pattern type", self.pattern))?,
            principal: self.principal.clone(),
            host: self.host.clone(),
            operation: Operation::from_code(self.operation)
                .ok_or_else(|| unknown("operation", self.operation))?,
            permission: Permission::from_code(self.permission)
                .ok_or_else(|| unknown("permission", self.permission))?,
        })
    }
}

impl AclFilterRequest {
    /// The filter, or why it is not one.
    pub fn to_filter(&self) -> Result<AclFilter, String> {
        let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Ok(AclFilter {
            resource_type: ResourceType::filter_code(self.resource_type)?,
            resource_name: text(&self.resource_name),
            pattern: PatternType::filter_code(self.pattern)?,
            principal: text(&self.principal),
            host: text(&self.host),
            operation: Operation::filter_code(self.operation)?,
            permission: Permission::filter_code(self.permission)?,
        })
    }

    /// The request of `filter`.
    pub fn of(filter: &AclFilter) -> AclFilterRequest {
        AclFilterRequest {
            resource_type: filter.resource_type.map_or(ANY_CODE, ResourceType::code),
            resource_name: filter.resource_name.clone().unwrap_or_default(),
            pattern: filter.pattern.map_or(ANY_CODE, PatternType::code),
            principal: filter.principal.clone().unwrap_or_default(),
            host: filter.host.clone().unwrap_or_default(),
            operation: filter.operation.map_or(ANY_CODE, Operation::code),
            permission: filter.permission.map_or(ANY_CODE, Permission::code),
        }
    }
}

message! {
    /// One part of a client-quota entity (the user or the client id), or how a filter
    /// matches that part.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct QuotaPart {
        /// 0: not part of the entity (a filter: not constrained); 1: the name below;
        /// 2: the default; 3 (filters only): any name or the default.
        pub kind: i8,
        /// The name, when `kind` is 1 (else empty).
        pub name: String,
    }
}

message! {
    /// One limit of a client quota.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct QuotaValue {
        /// `producer_byte_rate`, `consumer_byte_rate` or `request_percentage`.
        pub key: String,
        /// The limit in thousandths (bytes per second or percent × 1000).
        pub thousandths: u64,
    }
}

message! {
    /// A client-quota entity and its limits.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct QuotaEntry {
        /// The user part.
        pub user: QuotaPart,
        /// The client-id part.
        pub client_id: QuotaPart,
        /// Its limits, by key.
        pub values: Vec<QuotaValue>,
    }
}

message! {
    /// Which client quotas to list: parts as in [`QuotaPart`].
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DescribeQuotasRequest {
        /// How the user part matches.
        pub user: QuotaPart,
        /// How the client-id part matches.
        pub client_id: QuotaPart,
        /// 1: leave out entities with a part the filter does not constrain.
        pub strict: u8,
    }
}

message! {
    /// Client quotas.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct QuotasResponse {
        /// In entity order.
        pub entries: Vec<QuotaEntry>,
    }
}

message! {
    /// Changes to one entity's client quotas, applied all or none.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct AlterQuotasRequest {
        /// The user part (kind 0, 1 or 2).
        pub user: QuotaPart,
        /// The client-id part (kind 0, 1 or 2).
        pub client_id: QuotaPart,
        /// Limits to set.
        pub set: Vec<QuotaValue>,
        /// Keys whose limits to remove.
        pub remove: Vec<String>,
    }
}

impl QuotaPart {
    /// Not part of the entity; in a filter, not constrained.
    pub const ABSENT: i8 = 0;
    /// The named user or client id.
    pub const NAMED: i8 = 1;
    /// The default user or client id.
    pub const DEFAULT: i8 = 2;
    /// In a filter: any name or the default.
    pub const ANY: i8 = 3;

    /// The part of an entity.
    pub fn of(name: Option<&EntityName>) -> QuotaPart {
        match name {
            None => QuotaPart {
                kind: Self::ABSENT,
                name: String::new(),
            },
            Some(EntityName::Default) => QuotaPart {
                kind: Self::DEFAULT,
                name: String::new(),
            },
            Some(EntityName::Named(n)) => QuotaPart {
                kind: Self::NAMED,
                name: n.clone(),
            },
        }
    }

    /// How a filter matches this part.
    pub fn of_match(m: Option<&NameMatch>) -> QuotaPart {
        match m {
            None => QuotaPart::of(None),
            Some(NameMatch::Default) => QuotaPart::of(Some(&EntityName::Default)),
            Some(NameMatch::Exact(n)) => QuotaPart::of(Some(&EntityName::Named(n.clone()))),
            Some(NameMatch::Any) => QuotaPart {
                kind: Self::ANY,
                name: String::new(),
            },
        }
    }

    /// The entity part this names, or why it names none.
    pub fn to_name(&self) -> Result<Option<EntityName>, String> {
        match self.kind {
            Self::ABSENT => Ok(None),
            Self::NAMED => Ok(Some(EntityName::Named(self.name.clone()))),
            Self::DEFAULT => Ok(Some(EntityName::Default)),
            other => Err(format!("unknown quota entity part kind {other}")),
        }
    }

    /// The filter component this names, or why it names none.
    pub fn to_match(&self) -> Result<Option<NameMatch>, String> {
        match self.kind {
            Self::ANY => Ok(Some(NameMatch::Any)),
            _ => Ok(self.to_name()?.map(|n| match n {
                EntityName::Named(n) => NameMatch::Exact(n),
                EntityName::Default => NameMatch::Default,
            })),
        }
    }
}

impl QuotaValue {
    /// A limit on the wire.
    pub fn of(key: QuotaKey, value: f64) -> QuotaValue {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let thousandths = (value * 1000.0).round() as u64;
        QuotaValue {
            key: key.name().to_string(),
            thousandths,
        }
    }

    /// The key and limit, or why they are not ones.
    pub fn to_limit(&self) -> Result<(QuotaKey, f64), String> {
        #[allow(clippy::cast_precision_loss)]
        let value = self.thousandths as f64 / 1000.0;
        Ok((self.key.parse()?, value))
    }
}

impl QuotaEntry {
    /// The entry of an entity and its limits.
    pub fn of(entity: &QuotaEntity, values: &QuotaValues) -> QuotaEntry {
        QuotaEntry {
            user: QuotaPart::of(entity.user.as_ref()),
            client_id: QuotaPart::of(entity.client_id.as_ref()),
            values: values.iter().map(|(k, v)| QuotaValue::of(*k, *v)).collect(),
        }
    }

    /// The entity and its limits, or why they are not ones.
    pub fn to_quota(&self) -> Result<(QuotaEntity, QuotaValues), String> {
        let entity = QuotaEntity {
            user: self.user.to_name()?,
            client_id: self.client_id.to_name()?,
        };
        entity.validate()?;
        let values = self
            .values
            .iter()
            .map(QuotaValue::to_limit)
            .collect::<Result<_, _>>()?;
        Ok((entity, values))
    }
}

impl DescribeQuotasRequest {
    /// The request of `filter`.
    pub fn of(filter: &QuotaFilter) -> DescribeQuotasRequest {
        DescribeQuotasRequest {
            user: QuotaPart::of_match(filter.user.as_ref()),
            client_id: QuotaPart::of_match(filter.client_id.as_ref()),
            strict: u8::from(filter.strict),
        }
    }

    /// The filter, or why it is not one.
    pub fn to_filter(&self) -> Result<QuotaFilter, String> {
        Ok(QuotaFilter {
            user: self.user.to_match()?,
            client_id: self.client_id.to_match()?,
            strict: self.strict != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{split_frame, ResponseHeader};

    fn contiguous(chunks: Vec<Bytes>) -> BytesMut {
        let mut out = BytesMut::new();
        for c in chunks {
            out.extend_from_slice(&c);
        }
        out
    }

    fn request_round_trip(request: Request) -> Request {
        let api = request.api_key();
        let mut wire = contiguous(request.encode(42));
        let mut payload = split_frame(&mut wire, usize::MAX).unwrap().unwrap();
        assert!(wire.is_empty());
        let header = RequestHeader::decode(&mut payload).unwrap();
        assert_eq!(header.correlation_id, 42);
        assert_eq!(header.api_key, api as u16);
        Request::decode(&header, payload).unwrap()
    }

    fn response_round_trip(api: ApiKey, response: Response) {
        let mut wire = contiguous(encode_response(9, &response));
        let payload = split_frame(&mut wire, usize::MAX).unwrap().unwrap();
        let mut d = Decoder::new(payload);
        let header = ResponseHeader::decode(&mut d).unwrap();
        assert_eq!(header.correlation_id, 9);
        assert_eq!(header.error, ErrorCode::None);
        assert_eq!(decode_response(api, &mut d).unwrap(), response);
        d.finish().unwrap();
    }

    #[test]
    fn produce_request_round_trips_records_untouched() {
        let records = BytesMut::from(&b"batch-bytes-here"[..]);
        let request = Request::Produce(ProduceRequest {
            acks: Acks::All,
            timeout_ms: 1000,
            topics: vec![ProduceTopic {
                topic: "orders".into(),
                partitions: vec![ProducePartition {
                    partition: 3,
                    records,
                }],
            }],
        });
        match request_round_trip(request) {
            Request::Produce(p) => {
                assert_eq!(p.acks, Acks::All);
                assert_eq!(p.topics[0].topic, "orders");
                assert_eq!(p.topics[0].partitions[0].partition, 3);
                assert_eq!(&p.topics[0].partitions[0].records[..], b"batch-bytes-here");
            }
            other => panic!("decoded as {other:?}"),
        }
    }

    #[test]
    fn admin_requests_round_trip() {
        let r = request_round_trip(Request::CreateTopic(CreateTopicRequest {
            name: "t".into(),
            partitions: 4,
            configs: vec![("retention.ms".into(), "1000".into())],
        }));
        assert!(matches!(r, Request::CreateTopic(c) if c.partitions == 4 && c.configs.len() == 1));
        let r = request_round_trip(Request::ListTopics);
        assert!(matches!(r, Request::ListTopics));
        let fetch = FetchRequest {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                topic: "t".into(),
                partitions: vec![FetchPartition {
                    partition: 1,
                    offset: 77,
                    max_bytes: 4096,
                }],
            }],
        };
        let r = request_round_trip(Request::Fetch(fetch.clone()));
        assert!(matches!(r, Request::Fetch(f) if f == fetch));
    }

    #[test]
    fn responses_round_trip() {
        response_round_trip(
            ApiKey::Fetch,
            Response::Fetch(FetchResponse {
                topics: vec![FetchTopicResponse {
                    topic: "t".into(),
                    partitions: vec![FetchPartitionResponse {
                        partition: 0,
                        error: ErrorCode::None,
                        message: String::new(),
                        high_watermark: 10,
                        log_start_offset: 0,
                        records: Bytes::from_static(b"abc"),
                    }],
                }],
            }),
        );
        response_round_trip(
            ApiKey::Metadata,
            Response::Metadata(MetadataResponse {
                shards: vec![ShardEndpoint {
                    shard: 0,
                    host: "127.0.0.1".into(),
                    port: 9093,
                }],
                topics: vec![TopicMetadata {
                    name: "t".into(),
                    error: ErrorCode::None,
                    owners: vec![0, 1, 0],
                }],
            }),
        );
        response_round_trip(
            ApiKey::DescribeTopic,
            Response::DescribeTopic(DescribeTopicResponse {
                name: "t".into(),
                partitions: vec![PartitionDescription {
                    partition: 0,
                    shard: 1,
                    log_start_offset: 5,
                    high_watermark: 9,
                    size_bytes: 1234,
                }],
                configs: vec![("segment.bytes".into(), "1024".into())],
            }),
        );
    }

    #[test]
    fn group_messages_round_trip() {
        let assignment = vec![TopicPartitions {
            topic: "orders".into(),
            partitions: vec![0, 2, 4],
        }];
        let offsets = vec![TopicOffsets {
            topic: "orders".into(),
            partitions: vec![PartitionOffset {
                partition: 2,
                offset: 41,
            }],
        }];
        for request in [
            Request::JoinGroup(JoinGroupRequest {
                group: "g".into(),
                member_id: String::new(),
                client_id: "cli".into(),
                topics: vec!["orders".into(), "audit".into()],
                session_timeout_ms: 10_000,
                strategy: "sticky".into(),
            }),
            Request::Heartbeat(HeartbeatRequest {
                group: "g".into(),
                member_id: "m-1".into(),
                generation: 7,
            }),
            Request::LeaveGroup(LeaveGroupRequest {
                group: "g".into(),
                member_id: "m-1".into(),
            }),
            Request::CommitOffsets(CommitOffsetsRequest {
                group: "g".into(),
                member_id: String::new(),
                generation: -1,
                topics: offsets.clone(),
            }),
            Request::FetchOffsets(FetchOffsetsRequest {
                group: "g".into(),
                topics: assignment.clone(),
            }),
            Request::ListGroups,
            Request::DescribeGroup(GroupRequest { group: "g".into() }),
            Request::DeleteGroup(GroupRequest { group: "g".into() }),
            Request::DescribeQueue(GroupRequest { group: "q".into() }),
            Request::SaslHandshake(SaslHandshakeRequest {
                mechanism: "SCRAM-SHA-256".into(),
            }),
            Request::SaslAuthenticate(SaslBytes {
                bytes: Bytes::from_static(b"n,,n=alice,r=abc"),
            }),
            Request::ListUsers,
            Request::UpsertUser(UpsertUserRequest {
                name: "alice".into(),
                mechanism: "SCRAM-SHA-512".into(),
                iterations: 4096,
                salt: Bytes::from_static(b"salt"),
                salted_password: Bytes::from_static(b"salted"),
            }),
            Request::DeleteUser(DeleteUserRequest {
                name: "alice".into(),
                mechanism: String::new(),
            }),
            Request::ShareFetch(ShareFetchRequest {
                group: "q".into(),
                member_id: "w-3".into(),
                topics: assignment.clone(),
                max_records: 500,
                max_wait_ms: 250,
                settings: ShareSettings {
                    lock_ms: 30_000,
                    max_deliveries: 5,
                    dead_letter_topic: "orders.dlq".into(),
                },
            }),
            Request::ShareAck(ShareAckRequest {
                group: "q".into(),
                member_id: "w-3".into(),
                topics: vec![TopicAcks {
                    topic: "orders".into(),
                    partitions: vec![PartitionAcks {
                        partition: 1,
                        ranges: vec![
                            AckRange {
                                first: 10,
                                last: 19,
                                kind: AckType::Accept,
                                delay_ms: 0,
                            },
                            AckRange {
                                first: 20,
                                last: 20,
                                kind: AckType::Nack,
                                delay_ms: 1500,
                            },
                        ],
                    }],
                }],
            }),
        ] {
            let debug = format!("{request:?}");
            assert_eq!(format!("{:?}", request_round_trip(request)), debug);
        }
        let membership = MembershipResponse {
            member_id: "m-1".into(),
            generation: 3,
            assignment: assignment.clone(),
        };
        response_round_trip(ApiKey::JoinGroup, Response::JoinGroup(membership.clone()));
        response_round_trip(ApiKey::Heartbeat, Response::Heartbeat(membership));
        response_round_trip(
            ApiKey::CommitOffsets,
            Response::CommitOffsets(ResultsResponse {
                topics: vec![TopicResults {
                    topic: "orders".into(),
                    partitions: vec![PartitionResult {
                        partition: 0,
                        error: ErrorCode::StaleGeneration,
                        message: "generation 2 is stale".into(),
                    }],
                }],
            }),
        );
        response_round_trip(
            ApiKey::FetchOffsets,
            Response::FetchOffsets(OffsetsResponse {
                topics: offsets.clone(),
            }),
        );
        response_round_trip(
            ApiKey::ListGroups,
            Response::ListGroups(ListGroupsResponse {
                groups: vec![GroupListing {
                    group: "g".into(),
                    kind: "consumer".into(),
                    members: 3,
                }],
            }),
        );
        response_round_trip(
            ApiKey::DescribeGroup,
            Response::DescribeGroup(DescribeGroupResponse {
                group: "g".into(),
                state: "stable".into(),
                generation: 4,
                strategy: "range".into(),
                members: vec![MemberDescription {
                    member_id: "m-1".into(),
                    client_id: "cli".into(),
                    topics: vec!["orders".into()],
                    assignment: assignment.clone(),
                }],
                offsets,
            }),
        );
        response_round_trip(
            ApiKey::ShareFetch,
            Response::ShareFetch(ShareFetchResponse {
                topics: vec![ShareFetchTopic {
                    topic: "orders".into(),
                    partitions: vec![ShareFetchPartition {
                        partition: 1,
                        error: ErrorCode::None,
                        message: String::new(),
                        acquired: vec![AcquiredRange {
                            first: 5,
                            last: 9,
                            delivery: 2,
                        }],
                        records: Bytes::from_static(b"batch"),
                    }],
                }],
            }),
        );
        response_round_trip(
            ApiKey::DescribeQueue,
            Response::DescribeQueue(DescribeQueueResponse {
                group: "q".into(),
                members: vec!["w-1".into()],
                partitions: vec![SharePartitionState {
                    topic: "orders".into(),
                    partition: 0,
                    start: 10,
                    next_offset: 30,
                    log_end: 100,
                    acquired: 12,
                    available_again: 3,
                    done: 5,
                    dead_lettered: 1,
                }],
            }),
        );
        response_round_trip(
            ApiKey::ListUsers,
            Response::ListUsers(ListUsersResponse {
                users: vec![UserDescription {
                    name: "alice".into(),
                    credentials: vec![CredentialInfo {
                        mechanism: "SCRAM-SHA-256".into(),
                        iterations: 4096,
                    }],
                }],
            }),
        );
        response_round_trip(
            ApiKey::SaslHandshake,
            Response::SaslHandshake(SaslHandshakeResponse {
                mechanisms: vec!["PLAIN".into()],
            }),
        );
        // A reversed ack range is refused when decoding.
        let mut e = Encoder::with_capacity(64);
        ShareAckRequest {
            group: "q".into(),
            member_id: "w".into(),
            topics: vec![TopicAcks {
                topic: "t".into(),
                partitions: vec![PartitionAcks {
                    partition: 0,
                    ranges: vec![AckRange {
                        first: 9,
                        last: 3,
                        kind: AckType::Accept,
                        delay_ms: 0,
                    }],
                }],
            }],
        }
        .encode(&mut e);
        let body: Vec<u8> = e.finish().concat();
        let mut d = Decoder::new(BytesMut::from(&body[..]));
        assert!(ShareAckRequest::decode(&mut d).is_err());
    }

    #[test]
    fn produce_records_are_never_copied() {
        // The producer's fast path keeps each batch as its own chunk.
        let records = Bytes::from_static(b"batch-bytes-here");
        let batches: Vec<ProduceTopicBatches> = vec![("t".into(), vec![(0, records.clone())])];
        let chunks = encode_produce_request(1, Acks::Leader, 0, &batches);
        assert!(chunks.iter().any(|c| c.as_ptr() == records.as_ptr()));
        // Decoding hands out the records as a slice of the frame's buffer.
        let mut wire = contiguous(chunks);
        let mut payload = split_frame(&mut wire, usize::MAX).unwrap().unwrap();
        let header = RequestHeader::decode(&mut payload).unwrap();
        let range = payload.as_ptr_range();
        let Request::Produce(request) = Request::decode(&header, payload).unwrap() else {
            panic!("not a produce request");
        };
        let decoded = &request.topics[0].partitions[0].records;
        assert!(
            range.contains(&decoded.as_ptr()),
            "records copied on decode"
        );
        // Encoding the request moves the same bytes into the frame as their own chunk.
        let at = decoded.as_ptr();
        let chunks = Request::Produce(request).encode(2);
        assert!(
            chunks.iter().any(|c| c.as_ptr() == at),
            "records copied on encode"
        );
    }

    #[test]
    fn array_elements_keep_their_min_bytes() {
        // The sizes the elements declared by hand before `message!` summed their fields'.
        fn min<T: Message>() -> usize {
            T::MIN_BYTES
        }
        assert_eq!(min::<ApiVersionRange>(), 6);
        assert_eq!(min::<ShardEndpoint>(), 6);
        assert_eq!(min::<TopicMetadata>(), 8);
        assert_eq!(min::<TopicListing>(), 6);
        assert_eq!(min::<PartitionDescription>(), 30);
        assert_eq!(min::<ProducePartitionResponse>(), 24);
        assert_eq!(min::<FetchPartition>(), 16);
        assert_eq!(min::<ListOffsetsPartition>(), 12);
        assert_eq!(min::<ListOffsetsPartitionResponse>(), 16);
        assert_eq!(min::<PartitionOffset>(), 12);
        assert_eq!(min::<PartitionResult>(), 8);
        assert_eq!(min::<GroupListing>(), 8);
        assert_eq!(min::<MemberDescription>(), 12);
        assert_eq!(min::<AcquiredRange>(), 18);
        assert_eq!(min::<ShareFetchPartition>(), 16);
        assert_eq!(min::<PartitionAcks>(), 8);
        assert_eq!(min::<SharePartitionState>(), 62);
    }

    #[test]
    fn api_keys_are_looked_up_by_number() {
        for api in ApiKey::ALL {
            assert_eq!(ApiKey::from_u16(api as u16), Some(api));
            assert_eq!(api.max_version(), 0);
        }
        assert!(ApiKey::ALL
            .windows(2)
            .all(|w| (w[0] as u16) < (w[1] as u16)));
        assert_eq!(ApiKey::from_u16(ApiKey::ALL.len() as u16), None);
        assert_eq!(ApiKey::from_u16(u16::MAX), None);
        assert_eq!(Request::ListTopics.api_key(), ApiKey::ListTopics);
        assert_eq!(Response::DeleteGroup.api_key(), ApiKey::DeleteGroup);
    }

    #[test]
    fn unknown_api_and_version_are_typed_errors() {
        let header = RequestHeader {
            api_key: 999,
            api_version: 0,
            correlation_id: 1,
        };
        let err = Request::decode(&header, BytesMut::new()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnsupportedApi);
        let header = RequestHeader {
            api_key: ApiKey::Fetch as u16,
            api_version: 7,
            correlation_id: 1,
        };
        let err = Request::decode(&header, BytesMut::new()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
    }

    /// One frame of every request and response, encoded: the wire format these bytes pin
    /// must not change without a new API version.
    fn golden_frames() -> Vec<(String, Vec<u8>)> {
        fn flat(chunks: Vec<Bytes>) -> Vec<u8> {
            chunks.concat()
        }
        let assignment = || {
            vec![TopicPartitions {
                topic: "o".into(),
                partitions: vec![0, 2],
            }]
        };
        let offsets = || {
            vec![TopicOffsets {
                topic: "o".into(),
                partitions: vec![PartitionOffset {
                    partition: 2,
                    offset: 41,
                }],
            }]
        };
        let results = || ResultsResponse {
            topics: vec![TopicResults {
                topic: "o".into(),
                partitions: vec![PartitionResult {
                    partition: 1,
                    error: ErrorCode::RecordNotHeld,
                    message: "m".into(),
                }],
            }],
        };
        let membership = || MembershipResponse {
            member_id: "m".into(),
            generation: 3,
            assignment: assignment(),
        };
        let requests = vec![
            (
                "api_versions",
                Request::ApiVersions(ApiVersionsRequest {
                    client_name: "cli".into(),
                }),
            ),
            (
                "metadata",
                Request::Metadata(MetadataRequest {
                    topics: vec!["a".into(), "bc".into()],
                }),
            ),
            (
                "create_topic",
                Request::CreateTopic(CreateTopicRequest {
                    name: "t".into(),
                    partitions: 3,
                    configs: vec![("k".into(), "v".into())],
                }),
            ),
            (
                "delete_topic",
                Request::DeleteTopic(DeleteTopicRequest { name: "t".into() }),
            ),
            ("list_topics", Request::ListTopics),
            (
                "describe_topic",
                Request::DescribeTopic(DescribeTopicRequest { name: "t".into() }),
            ),
            (
                "alter_topic_config",
                Request::AlterTopicConfig(AlterTopicConfigRequest {
                    name: "t".into(),
                    configs: vec![("k".into(), "v".into())],
                }),
            ),
            (
                "produce",
                Request::Produce(ProduceRequest {
                    acks: Acks::All,
                    timeout_ms: 1000,
                    topics: vec![ProduceTopic {
                        topic: "o".into(),
                        partitions: vec![ProducePartition {
                            partition: 3,
                            records: BytesMut::from(&b"rec"[..]),
                        }],
                    }],
                }),
            ),
            (
                "fetch",
                Request::Fetch(FetchRequest {
                    max_wait_ms: 500,
                    min_bytes: 1,
                    max_bytes: 1 << 20,
                    topics: vec![FetchTopic {
                        topic: "o".into(),
                        partitions: vec![FetchPartition {
                            partition: 1,
                            offset: 77,
                            max_bytes: 4096,
                        }],
                    }],
                }),
            ),
            (
                "list_offsets",
                Request::ListOffsets(ListOffsetsRequest {
                    topics: vec![ListOffsetsTopic {
                        topic: "o".into(),
                        partitions: vec![ListOffsetsPartition {
                            partition: 0,
                            timestamp: offset_spec::EARLIEST,
                        }],
                    }],
                }),
            ),
            (
                "join_group",
                Request::JoinGroup(JoinGroupRequest {
                    group: "g".into(),
                    member_id: "m".into(),
                    client_id: "c".into(),
                    topics: vec!["o".into()],
                    session_timeout_ms: 10_000,
                    strategy: "range".into(),
                }),
            ),
            (
                "heartbeat",
                Request::Heartbeat(HeartbeatRequest {
                    group: "g".into(),
                    member_id: "m".into(),
                    generation: 7,
                }),
            ),
            (
                "leave_group",
                Request::LeaveGroup(LeaveGroupRequest {
                    group: "g".into(),
                    member_id: "m".into(),
                }),
            ),
            (
                "commit_offsets",
                Request::CommitOffsets(CommitOffsetsRequest {
                    group: "g".into(),
                    member_id: String::new(),
                    generation: -1,
                    topics: offsets(),
                }),
            ),
            (
                "fetch_offsets",
                Request::FetchOffsets(FetchOffsetsRequest {
                    group: "g".into(),
                    topics: assignment(),
                }),
            ),
            ("list_groups", Request::ListGroups),
            (
                "describe_group",
                Request::DescribeGroup(GroupRequest { group: "g".into() }),
            ),
            (
                "delete_group",
                Request::DeleteGroup(GroupRequest { group: "g".into() }),
            ),
            (
                "share_fetch",
                Request::ShareFetch(ShareFetchRequest {
                    group: "q".into(),
                    member_id: "w".into(),
                    topics: assignment(),
                    max_records: 500,
                    max_wait_ms: 250,
                    settings: ShareSettings {
                        lock_ms: 30_000,
                        max_deliveries: 5,
                        dead_letter_topic: "d".into(),
                    },
                }),
            ),
            (
                "share_ack",
                Request::ShareAck(ShareAckRequest {
                    group: "q".into(),
                    member_id: "w".into(),
                    topics: vec![TopicAcks {
                        topic: "o".into(),
                        partitions: vec![PartitionAcks {
                            partition: 1,
                            ranges: vec![AckRange {
                                first: 10,
                                last: 19,
                                kind: AckType::Nack,
                                delay_ms: 1500,
                            }],
                        }],
                    }],
                }),
            ),
            (
                "describe_queue",
                Request::DescribeQueue(GroupRequest { group: "q".into() }),
            ),
            (
                "sasl_handshake",
                Request::SaslHandshake(SaslHandshakeRequest {
                    mechanism: "PLAIN".into(),
                }),
            ),
            (
                "sasl_authenticate",
                Request::SaslAuthenticate(SaslBytes {
                    bytes: Bytes::from_static(b"\0u\0p"),
                }),
            ),
            ("list_users", Request::ListUsers),
            (
                "upsert_user",
                Request::UpsertUser(UpsertUserRequest {
                    name: "u".into(),
                    mechanism: "SCRAM-SHA-256".into(),
                    iterations: 4096,
                    salt: Bytes::from_static(b"s"),
                    salted_password: Bytes::from_static(b"p"),
                }),
            ),
            (
                "delete_user",
                Request::DeleteUser(DeleteUserRequest {
                    name: "u".into(),
                    mechanism: String::new(),
                }),
            ),
            (
                "create_acls",
                Request::CreateAcls(CreateAclsRequest {
                    acls: vec![golden_acl()],
                }),
            ),
            ("describe_acls", Request::DescribeAcls(golden_filter())),
            ("delete_acls", Request::DeleteAcls(golden_filter())),
            (
                "describe_quotas",
                Request::DescribeQuotas(DescribeQuotasRequest {
                    user: QuotaPart {
                        kind: QuotaPart::NAMED,
                        name: "u".into(),
                    },
                    client_id: QuotaPart {
                        kind: QuotaPart::ANY,
                        name: String::new(),
                    },
                    strict: 1,
                }),
            ),
            (
                "alter_quotas",
                Request::AlterQuotas(AlterQuotasRequest {
                    user: QuotaPart {
                        kind: QuotaPart::DEFAULT,
                        name: String::new(),
                    },
                    client_id: QuotaPart {
                        kind: QuotaPart::ABSENT,
                        name: String::new(),
                    },
                    set: vec![golden_quota_value()],
                    remove: vec!["request_percentage".into()],
                }),
            ),
        ];
        let responses = vec![
            (
                "api_versions",
                Response::ApiVersions(ApiVersionsResponse {
                    broker_version: "0.1.0".into(),
                    shard_count: 2,
                    apis: vec![ApiVersionRange {
                        api_key: 7,
                        min_version: 0,
                        max_version: 0,
                    }],
                }),
            ),
            (
                "metadata",
                Response::Metadata(MetadataResponse {
                    shards: vec![ShardEndpoint {
                        shard: 1,
                        host: "h".into(),
                        port: 9094,
                    }],
                    topics: vec![TopicMetadata {
                        name: "o".into(),
                        error: ErrorCode::UnknownTopicOrPartition,
                        owners: vec![0, 1],
                    }],
                }),
            ),
            ("create_topic", Response::CreateTopic),
            ("delete_topic", Response::DeleteTopic),
            (
                "list_topics",
                Response::ListTopics(ListTopicsResponse {
                    topics: vec![TopicListing {
                        name: "o".into(),
                        partitions: 4,
                    }],
                }),
            ),
            (
                "describe_topic",
                Response::DescribeTopic(DescribeTopicResponse {
                    name: "o".into(),
                    partitions: vec![PartitionDescription {
                        partition: 0,
                        shard: 1,
                        log_start_offset: 5,
                        high_watermark: 9,
                        size_bytes: 1234,
                    }],
                    configs: vec![("k".into(), "v".into())],
                }),
            ),
            ("alter_topic_config", Response::AlterTopicConfig),
            (
                "produce",
                Response::Produce(ProduceResponse {
                    topics: vec![ProduceTopicResponse {
                        topic: "o".into(),
                        partitions: vec![ProducePartitionResponse {
                            partition: 3,
                            error: ErrorCode::None,
                            message: String::new(),
                            base_offset: 10,
                            last_offset: 12,
                        }],
                    }],
                }),
            ),
            (
                "fetch",
                Response::Fetch(FetchResponse {
                    topics: vec![FetchTopicResponse {
                        topic: "o".into(),
                        partitions: vec![FetchPartitionResponse {
                            partition: 1,
                            error: ErrorCode::OffsetOutOfRange,
                            message: "x".into(),
                            high_watermark: 10,
                            log_start_offset: 2,
                            records: Bytes::from_static(b"abc"),
                        }],
                    }],
                }),
            ),
            (
                "list_offsets",
                Response::ListOffsets(ListOffsetsResponse {
                    topics: vec![ListOffsetsTopicResponse {
                        topic: "o".into(),
                        partitions: vec![ListOffsetsPartitionResponse {
                            partition: 0,
                            error: ErrorCode::None,
                            message: String::new(),
                            offset: 99,
                        }],
                    }],
                }),
            ),
            ("join_group", Response::JoinGroup(membership())),
            ("heartbeat", Response::Heartbeat(membership())),
            ("leave_group", Response::LeaveGroup),
            ("commit_offsets", Response::CommitOffsets(results())),
            (
                "fetch_offsets",
                Response::FetchOffsets(OffsetsResponse { topics: offsets() }),
            ),
            (
                "list_groups",
                Response::ListGroups(ListGroupsResponse {
                    groups: vec![GroupListing {
                        group: "g".into(),
                        kind: "share".into(),
                        members: 2,
                    }],
                }),
            ),
            (
                "describe_group",
                Response::DescribeGroup(DescribeGroupResponse {
                    group: "g".into(),
                    state: "stable".into(),
                    generation: 4,
                    strategy: "range".into(),
                    members: vec![MemberDescription {
                        member_id: "m".into(),
                        client_id: "c".into(),
                        topics: vec!["o".into()],
                        assignment: assignment(),
                    }],
                    offsets: offsets(),
                }),
            ),
            ("delete_group", Response::DeleteGroup),
            (
                "share_fetch",
                Response::ShareFetch(ShareFetchResponse {
                    topics: vec![ShareFetchTopic {
                        topic: "o".into(),
                        partitions: vec![ShareFetchPartition {
                            partition: 1,
                            error: ErrorCode::None,
                            message: String::new(),
                            acquired: vec![AcquiredRange {
                                first: 5,
                                last: 9,
                                delivery: 2,
                            }],
                            records: Bytes::from_static(b"b"),
                        }],
                    }],
                }),
            ),
            ("share_ack", Response::ShareAck(results())),
            (
                "describe_queue",
                Response::DescribeQueue(DescribeQueueResponse {
                    group: "q".into(),
                    members: vec!["w".into()],
                    partitions: vec![SharePartitionState {
                        topic: "o".into(),
                        partition: 0,
                        start: 10,
                        next_offset: 30,
                        log_end: 100,
                        acquired: 12,
                        available_again: 3,
                        done: 5,
                        dead_lettered: 1,
                    }],
                }),
            ),
        ];
        let responses = responses
            .into_iter()
            .chain([
                (
                    "sasl_handshake",
                    Response::SaslHandshake(SaslHandshakeResponse {
                        mechanisms: vec!["PLAIN".into()],
                    }),
                ),
                (
                    "sasl_authenticate",
                    Response::SaslAuthenticate(SaslBytes {
                        bytes: Bytes::from_static(b"v=x"),
                    }),
                ),
                (
                    "list_users",
                    Response::ListUsers(ListUsersResponse {
                        users: vec![UserDescription {
                            name: "u".into(),
                            credentials: vec![CredentialInfo {
                                mechanism: "SCRAM-SHA-512".into(),
                                iterations: 4096,
                            }],
                        }],
                    }),
                ),
                ("upsert_user", Response::UpsertUser),
                ("delete_user", Response::DeleteUser),
                ("create_acls", Response::CreateAcls),
                (
                    "describe_acls",
                    Response::DescribeAcls(AclsResponse {
                        acls: vec![golden_acl()],
                    }),
                ),
                (
                    "delete_acls",
                    Response::DeleteAcls(AclsResponse {
                        acls: vec![golden_acl()],
                    }),
                ),
                (
                    "describe_quotas",
                    Response::DescribeQuotas(QuotasResponse {
                        entries: vec![QuotaEntry {
                            user: QuotaPart {
                                kind: QuotaPart::NAMED,
                                name: "u".into(),
                            },
                            client_id: QuotaPart {
                                kind: QuotaPart::DEFAULT,
                                name: String::new(),
                            },
                            values: vec![golden_quota_value()],
                        }],
                    }),
                ),
                ("alter_quotas", Response::AlterQuotas),
            ])
            .collect::<Vec<_>>();
        let mut frames = Vec::new();
        for (name, request) in requests {
            frames.push((format!("request {name}"), flat(request.encode(7))));
        }
        for (name, response) in responses {
            frames.push((
                format!("response {name}"),
                flat(encode_response(8, &response)),
            ));
        }
        let batches: Vec<ProduceTopicBatches> =
            vec![("o".into(), vec![(3, Bytes::from_static(b"rec"))])];
        frames.push((
            "produce_shared".to_string(),
            flat(encode_produce_request(7, Acks::All, 1000, &batches)),
        ));
        frames.push((
            "error".to_string(),
            flat(encode_error_response(9, ErrorCode::UnsupportedApi, "no")),
        ));
        let fetch = FetchResponse {
            topics: vec![FetchTopicResponse {
                topic: "o".into(),
                partitions: vec![
                    FetchPartitionResponse {
                        partition: 0,
                        error: ErrorCode::None,
                        message: String::new(),
                        high_watermark: 10,
                        log_start_offset: 0,
                        records: Bytes::new(),
                    },
                    FetchPartitionResponse {
                        partition: 1,
                        error: ErrorCode::None,
                        message: String::new(),
                        high_watermark: 20,
                        log_start_offset: 0,
                        records: Bytes::from_static(b"shared"),
                    },
                ],
            }],
        };
        let parts = encode_fetch_response_parts(8, &fetch, &mut |i| (i == 0).then_some(4));
        let mut spliced = Vec::new();
        for part in parts {
            match part {
                Part::Bytes(b) => spliced.extend_from_slice(&b),
                Part::External(n) => spliced.extend(std::iter::repeat_n(b'F', n)),
            }
        }
        frames.push(("fetch_parts".to_string(), spliced));
        frames
    }

    fn golden_quota_value() -> QuotaValue {
        QuotaValue {
            key: "producer_byte_rate".into(),
            thousandths: 1_024_000,
        }
    }

    fn golden_acl() -> AclEntry {
        AclEntry {
            resource_type: 2,
            resource_name: "o".into(),
            pattern: 4,
            principal: "User:u".into(),
            host: "*".into(),
            operation: 3,
            permission: 3,
        }
    }

    fn golden_filter() -> AclFilterRequest {
        AclFilterRequest {
            resource_type: 2,
            resource_name: String::new(),
            pattern: 1,
            principal: "User:u".into(),
            host: String::new(),
            operation: 1,
            permission: 1,
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Frames as the encoders wrote them before messages moved to the `Message` trait.
    const GOLDEN: &[(&str, &str)] = &[
            ("request api_versions", "0000000d00000000000000070003636c69"),
            ("request metadata", "0000001300010000000000070000000200016100026263"),
            ("request create_topic", "000000190002000000000007000174000000030000000100016b000176"),
            ("request delete_topic", "0000000b0003000000000007000174"),
            ("request list_topics", "000000080004000000000007"),
            ("request describe_topic", "0000000b0005000000000007000174"),
            ("request alter_topic_config", "0000001500060000000000070001740000000100016b000176"),
            ("request produce", "000000240007000000000007ffff000003e80000000100016f000000010000000300000003726563"),
            ("request fetch", "0000002f0008000000000007000001f400000001001000000000000100016f0000000100000001000000000000004d00001000"),
            ("request list_offsets", "0000001f00090000000000070000000100016f0000000100000000fffffffffffffffe"),
            ("request join_group", "00000023000a00000000000700016700016d0001630000000100016f00002710000572616e6765"),
            ("request heartbeat", "00000012000b00000000000700016700016d00000007"),
            ("request leave_group", "0000000e000c00000000000700016700016d"),
            ("request commit_offsets", "00000028000d0000000000070001670000ffffffff0000000100016f00000001000000020000000000000029"),
            ("request fetch_offsets", "0000001e000e0000000000070001670000000100016f000000020000000000000002"),
            ("request list_groups", "00000008000f000000000007"),
            ("request describe_group", "0000000b0010000000000007000167"),
            ("request delete_group", "0000000b0011000000000007000167"),
            ("request share_fetch", "0000003200120000000000070001710001770000000100016f000000020000000000000002000001f4000000fa000075300005000164"),
            ("request share_ack", "0000003600130000000000070001710001770000000100016f000000010000000100000001000000000000000a000000000000001302000005dc"),
            ("request describe_queue", "0000000b0014000000000007000171"),
            ("request sasl_handshake", "0000000f00150000000000070005504c41494e"),
            ("request sasl_authenticate", "0000001000160000000000070000000400750070"),
            ("request list_users", "000000080017000000000007"),
            ("request upsert_user", "000000280018000000000007000175000d534352414d2d5348412d3235360000100000000001730000000170"),
            ("request delete_user", "0000000d00190000000000070001750000"),
            ("request create_acls", "0000001e001a000000000007000000010200016f040006557365723a7500012a0303"),
            ("request describe_acls", "00000018001b000000000007020000010006557365723a7500000101"),
            ("request delete_acls", "00000018001c000000000007020000010006557365723a7500000101"),
            ("request describe_quotas", "00000010001d0000000000070100017503000001"),
            ("request alter_quotas", "00000046001e00000000000702000000000000000001001270726f64756365725f627974655f7261746500000000000fa000000000010012726571756573745f70657263656e74616765"),
            ("response api_versions", "0000001b00000008000000000005302e312e30000200000001000700000000"),
            ("response metadata", "00000024000000080000000000000001000100016823860000000100016f00060000000200000001"),
            ("response create_topic", "000000080000000800000000"),
            ("response delete_topic", "000000080000000800000000"),
            ("response list_topics", "0000001300000008000000000000000100016f00000004"),
            ("response describe_topic", "00000037000000080000000000016f000000010000000000010000000000000005000000000000000900000000000004d20000000100016b000176"),
            ("response alter_topic_config", "000000080000000800000000"),
            ("response produce", "0000002b00000008000000000000000100016f000000010000000300000000000000000000000a000000000000000c"),
            ("response fetch", "0000003300000008000000000000000100016f0000000100000001000b000178000000000000000a000000000000000200000003616263"),
            ("response list_offsets", "0000002300000008000000000000000100016f0000000100000000000000000000000000000063"),
            ("response join_group", "00000022000000080000000000016d000000030000000100016f000000020000000000000002"),
            ("response heartbeat", "00000022000000080000000000016d000000030000000100016f000000020000000000000002"),
            ("response leave_group", "000000080000000800000000"),
            ("response commit_offsets", "0000001c00000008000000000000000100016f0000000100000001001900016d"),
            ("response fetch_offsets", "0000001f00000008000000000000000100016f00000001000000020000000000000029"),
            ("response list_groups", "0000001a0000000800000000000000010001670005736861726500000002"),
            ("response describe_group", "0000005900000008000000000001670006737461626c6500000004000572616e67650000000100016d0001630000000100016f0000000100016f0000000200000000000000020000000100016f00000001000000020000000000000029"),
            ("response delete_group", "000000080000000800000000"),
            ("response share_fetch", "0000003600000008000000000000000100016f000000010000000100000000000000010000000000000005000000000000000900020000000162"),
            ("response share_ack", "0000001c00000008000000000000000100016f0000000100000001001900016d"),
            ("response describe_queue", "000000550000000800000000000171000000010001770000000100016f00000000000000000000000a000000000000001e0000000000000064000000000000000c000000000000000300000000000000050000000000000001"),
            ("response sasl_handshake", "000000130000000800000000000000010005504c41494e"),
            ("response sasl_authenticate", "0000000f000000080000000000000003763d78"),
            ("response list_users", "0000002600000008000000000000000100017500000001000d534352414d2d5348412d35313200001000"),
            ("response upsert_user", "000000080000000800000000"),
            ("response delete_user", "000000080000000800000000"),
            ("response create_acls", "000000080000000800000000"),
            ("response describe_acls", "0000001e0000000800000000000000010200016f040006557365723a7500012a0303"),
            ("response delete_acls", "0000001e0000000800000000000000010200016f040006557365723a7500012a0303"),
            ("response describe_quotas", "000000330000000800000000000000010100017502000000000001001270726f64756365725f627974655f7261746500000000000fa000"),
            ("response alter_quotas", "000000080000000800000000"),
            ("produce_shared", "000000240007000000000007ffff000003e80000000100016f000000010000000300000003726563"),
            ("error", "0000000a00000009000300026e6f"),
            ("fetch_parts", "0000005500000008000000000000000100016f000000020000000000000000000000000000000a0000000000000000000000044646464600000001000000000000000000000014000000000000000000000006736861726564"),
    ];

    #[test]
    fn wire_format_is_unchanged() {
        let frames = golden_frames();
        // A new API's frames are pinned by printing them once (`EVENTFLOW_PRINT_GOLDEN=1
        // cargo test --lib wire_format -- --nocapture`) and pasting them below; the frames
        // already pinned must never change.
        if std::env::var_os("EVENTFLOW_PRINT_GOLDEN").is_some() {
            for (name, bytes) in &frames {
                println!("GOLDEN (\"{name}\", \"{}\"),", hex(bytes));
            }
        }
        assert_eq!(frames.len(), GOLDEN.len());
        for ((name, bytes), (want_name, want)) in frames.iter().zip(GOLDEN) {
            assert_eq!(name, want_name);
            assert_eq!(hex(bytes), *want, "{name}");
        }
        // Decoding the pinned bytes and encoding the result gives them back.
        for (i, (name, bytes)) in frames.iter().enumerate().take(2 * ApiKey::ALL.len()) {
            let mut wire = BytesMut::from(&bytes[..]);
            let mut payload = split_frame(&mut wire, usize::MAX).unwrap().unwrap();
            let again = if i < ApiKey::ALL.len() {
                let header = RequestHeader::decode(&mut payload).unwrap();
                Request::decode(&header, payload).unwrap().encode(7)
            } else {
                let mut d = Decoder::new(payload);
                ResponseHeader::decode(&mut d).unwrap();
                let api = ApiKey::ALL[i - ApiKey::ALL.len()];
                let response = decode_response(api, &mut d).unwrap();
                d.finish().unwrap();
                encode_response(8, &response)
            };
            assert_eq!(hex(&again.concat()), hex(bytes), "{name}");
        }
    }

    proptest::proptest! {
        #[test]
        fn request_decode_never_panics(key in 0u16..31, body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let header = RequestHeader { api_key: key, api_version: 0, correlation_id: 1 };
            let _ = Request::decode(&header, BytesMut::from(&body[..]));
        }

        #[test]
        fn response_decode_never_panics(key in 0u16..29, body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let mut d = Decoder::new(BytesMut::from(&body[..]));
            let _ = decode_response(ApiKey::from_u16(key).unwrap(), &mut d);
        }
    }
}
