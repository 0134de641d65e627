//! The client library: an admin and raw-request [`Client`], the [`producer`] and the
//! [`consumer`]. It depends on [`crate::protocol`] only, and builds without the broker
//! (`default-features = false`).
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use eventflow::client::consumer::{Consumer, ConsumerConfig, StartAt};
//! use eventflow::client::producer::{Producer, ProducerConfig, Record};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let producer = Producer::new(ProducerConfig::default())?; // 127.0.0.1:9292, acks=all
//!     let delivery = producer.send(Record {
//!         topic: "quickstart-events",
//!         key: Some(b"alice"),
//!         value: Some(b"hello"),
//!         ..Record::default()
//!     })?;
//!     // A future for async code (any executor), or wait() from a thread.
//!     let stored = delivery.wait()?;
//!     println!("stored at partition {} offset {}", stored.partition, stored.offset);
//!
//!     let mut consumer = Consumer::new(ConsumerConfig::default())?;
//!     consumer.assign("quickstart-events", &[stored.partition], StartAt::Offset(stored.offset))?;
//!     for record in consumer.poll(Duration::from_secs(1))? {
//!         println!("{} {:?}", record.offset, record.value);
//!     }
//!     Ok(())
//! }
//! ```
//!
//! One [`Client`] is one TCP connection; requests can be pipelined with [`Client::send`]
//! and [`Client::receive`] (responses carry their correlation id and may arrive in any
//! order), or made one at a time with the typed helpers.

pub mod accumulator;
pub mod backoff;
mod clock;
pub mod consumer;
pub mod format;
pub mod group;
pub mod partitioner;
pub mod producer;
pub mod queue;
pub mod stream;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};

pub use crate::tls::ClientTls;
use std::time::Duration;
pub use stream::Stream;

use bytes::{Bytes, BytesMut};

use crate::auth::{Mechanism, ScramClient};
use crate::protocol::api::*;
use crate::protocol::frame::{self, DecodeError, Decoder, ResponseHeader};
use crate::protocol::{ErrorCode, WireError};

/// Largest response frame the client accepts.
const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// What can go wrong in a client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection failed (broker unreachable, reset, closed).
    #[error("connection to {addr}: {source}")]
    Io {
        /// Broker address.
        addr: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The broker did not answer (or a connection did not open) within the request
    /// timeout; the connection is not used again.
    #[error("timed out: no answer from {addr} within the request timeout ({} ms)", .after.as_millis())]
    Timeout {
        /// Broker address.
        addr: String,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The broker answered with an error.
    #[error("broker error: {0}")]
    Broker(#[from] WireError),
    /// The broker's bytes could not be decoded.
    #[error("cannot decode the broker's response: {0}")]
    Decode(#[from] DecodeError),
    /// The broker answered something this call did not expect.
    #[error("unexpected response: {0}")]
    Unexpected(String),
    /// A fetched batch failed the client's checks (CRC, header or record encoding).
    #[error("corrupt batch in {topic}/{partition} at offset {offset}: {reason}")]
    CorruptBatch {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Offset of the batch (or of the position, if its header did not parse).
        offset: i64,
        /// The first offset after the damage: seek there to skip it. When the batch's
        /// extent is unknown (its header did not parse), one past `offset`.
        next_offset: i64,
        /// What failed.
        reason: String,
    },
}

impl ClientError {
    /// The broker's error code, if the broker reported one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Broker(e) => Some(e.code),
            _ => None,
        }
    }

    /// The connection broke or timed out: the client drops it and may connect again.
    pub fn is_connection_error(&self) -> bool {
        matches!(self, ClientError::Io { .. } | ClientError::Timeout { .. })
    }

    /// Worth trying again on a new connection: a connection error, or a broker error
    /// that says so (`ShuttingDown`, `Timeout`, `NotEnoughDisk`).
    pub fn is_retriable(&self) -> bool {
        self.is_connection_error() || self.code().is_some_and(ErrorCode::is_retriable)
    }
}

/// How long a request may wait for its answer unless told otherwise (Kafka's
/// `request.timeout.ms`).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A response as received: its correlation id and either the body or the broker's
/// request-level error.
pub type Received = (u32, Result<Response, WireError>);

/// The body of `$response` if it is `Response::$variant`, else
/// [`ClientError::Unexpected`]: `expect_response!(self.call(request)?, Metadata)`.
macro_rules! expect_response {
    ($response:expr, $variant:ident) => {
        match $response {
            Response::$variant(body) => Ok(body),
            other => Err(unexpected(other)),
        }
    };
}

fn acls_of(entries: Vec<AclEntry>) -> Result<Vec<crate::auth::acl::Acl>, ClientError> {
    entries
        .iter()
        .map(|e| e.to_acl().map_err(ClientError::Unexpected))
        .collect()
}

/// Who a client logs in as, on listeners that authenticate (`--native-require-auth`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The SASL mechanism.
    pub mechanism: Mechanism,
    /// The user's name.
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password stays out of logs and error messages.
        f.debug_struct("Credentials")
            .field("mechanism", &self.mechanism)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// SCRAM-SHA-512 credentials of `user`.
    pub fn scram(user: &str, password: &str) -> Credentials {
        Credentials {
            mechanism: Mechanism::ScramSha512,
            user: user.to_string(),
            password: password.to_string(),
        }
    }
}

/// One connection to a broker.
pub struct Client {
    stream: Stream,
    addr: String,
    /// The read timeout in force (for the timeout error's message).
    timeout: std::cell::Cell<Duration>,
    next_correlation_id: u32,
    /// API of each request awaiting its response, by correlation id.
    awaiting: HashMap<u32, ApiKey>,
    buf: BytesMut,
}

impl Client {
    /// Connects (TCP_NODELAY on) with the default request timeout
    /// ([`DEFAULT_REQUEST_TIMEOUT`]) for connecting, each read and each write.
    pub fn connect(addr: impl ToSocketAddrs + std::fmt::Debug) -> Result<Client, ClientError> {
        Client::connect_timeout(addr, DEFAULT_REQUEST_TIMEOUT)
    }

    /// Connects (TCP_NODELAY on): opening the connection, and then each read and each write,
    /// may take up to `timeout` before failing with [`ClientError::Timeout`]. An address
    /// that does not resolve is an error naming it.
    pub fn connect_timeout(
        addr: impl ToSocketAddrs + std::fmt::Debug,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        Client::open(addr, timeout, None)
    }

    /// Connects as [`Client::connect_timeout`] does, in TLS if `tls` is given (the broker's
    /// certificate must name the host part of `addr`), then authenticates with
    /// `credentials` if there are any.
    pub fn connect_secure(
        addr: impl ToSocketAddrs + std::fmt::Debug,
        timeout: Duration,
        credentials: Option<&Credentials>,
        tls: Option<&ClientTls>,
    ) -> Result<Client, ClientError> {
        let mut client = Client::open(addr, timeout, tls)?;
        if let Some(credentials) = credentials {
            client.authenticate(credentials)?;
        }
        Ok(client)
    }

    fn open(
        addr: impl ToSocketAddrs + std::fmt::Debug,
        timeout: Duration,
        tls: Option<&ClientTls>,
    ) -> Result<Client, ClientError> {
        let given = format!("{addr:?}");
        let given = given.trim_matches('"').to_string();
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|source| ClientError::Io {
                addr: given.clone(),
                source: io::Error::new(
                    source.kind(),
                    format!("cannot resolve `{given}`: {source}"),
                ),
            })?
            .collect();
        let timeout = timeout.max(Duration::from_millis(1));
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("`{given}` resolves to no address"),
        );
        for a in &addrs {
            match TcpStream::connect_timeout(a, timeout) {
                Ok(socket) => {
                    let failed = |e| io_error(a.to_string(), timeout, e);
                    socket.set_nodelay(true).map_err(failed)?;
                    socket.set_read_timeout(Some(timeout)).map_err(failed)?;
                    socket.set_write_timeout(Some(timeout)).map_err(failed)?;
                    let stream = match tls {
                        None => Stream::Plain(socket),
                        // The name the caller gave, not the address it resolved to.
                        Some(tls) => Stream::tls(socket, &given, tls).map_err(failed)?,
                    };
                    return Ok(Client {
                        stream,
                        addr: a.to_string(),
                        timeout: std::cell::Cell::new(timeout),
                        next_correlation_id: 1,
                        awaiting: HashMap::new(),
                        buf: BytesMut::with_capacity(64 * 1024),
                    });
                }
                Err(e) => last = e,
            }
        }
        let label = match addrs.as_slice() {
            [one] => one.to_string(),
            _ => given,
        };
        Err(io_error(label, timeout, last))
    }

    /// Connects as [`Client::connect_timeout`] does, then authenticates with `credentials`
    /// if there are any.
    pub fn connect_as(
        addr: impl ToSocketAddrs + std::fmt::Debug,
        timeout: Duration,
        credentials: Option<&Credentials>,
    ) -> Result<Client, ClientError> {
        Client::connect_secure(addr, timeout, credentials, None)
    }

    /// Logs this connection in: SaslHandshake, then the mechanism's exchange in
    /// SaslAuthenticate requests. A SCRAM exchange also checks that the broker holds the
    /// user's credential (its server signature), so a broker that only pretends is refused.
    pub fn authenticate(&mut self, credentials: &Credentials) -> Result<(), ClientError> {
        let Credentials {
            mechanism,
            user,
            password,
        } = credentials;
        let handshake = Request::SaslHandshake(SaslHandshakeRequest {
            mechanism: mechanism.name().to_string(),
        });
        expect_response!(self.call(handshake)?, SaslHandshake)?;
        let mut step = |bytes: Vec<u8>| -> Result<Vec<u8>, ClientError> {
            let request = Request::SaslAuthenticate(SaslBytes {
                bytes: Bytes::from(bytes),
            });
            expect_response!(self.call(request)?, SaslAuthenticate).map(|r| r.bytes.to_vec())
        };
        let refused = |e: crate::auth::AuthError| {
            ClientError::Unexpected(format!("authenticating as {user}: {e}"))
        };
        match mechanism.scram() {
            None => {
                step(crate::auth::plain_message(user, password))?;
            }
            Some(hash) => {
                let mut scram = ScramClient::new(hash, user, password);
                let server_first = step(scram.client_first())?;
                let client_final = scram.client_final(&server_first).map_err(refused)?;
                let server_final = step(client_final)?;
                scram.verify_server_final(&server_final).map_err(refused)?;
            }
        }
        Ok(())
    }

    /// The socket, for a caller that goes on with its own framing (the producer's data
    /// connections, after authenticating).
    pub fn into_stream(self) -> Stream {
        self.stream
    }

    /// The broker address this client is connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Limits how long a blocking read may wait (None: forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.stream
            .set_read_timeout(timeout)
            .map_err(|e| self.io(e))?;
        self.timeout.set(timeout.unwrap_or(Duration::MAX));
        Ok(())
    }

    fn io(&self, source: io::Error) -> ClientError {
        io_error(self.addr.clone(), self.timeout.get(), source)
    }

    /// Sends a request without waiting; returns its correlation id. Produce with
    /// [`Acks::None`] gets no response and is not awaited.
    pub fn send(&mut self, request: Request) -> Result<u32, ClientError> {
        let id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1).max(1);
        let api = request.api_key();
        let no_response = matches!(&request, Request::Produce(p) if p.acks == Acks::None);
        let chunks = request.encode(id);
        write_frame(&mut self.stream, &chunks).map_err(|e| self.io(e))?;
        if !no_response {
            self.awaiting.insert(id, api);
        }
        Ok(id)
    }

    /// Writes raw bytes to the connection (for tests of malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes).map_err(|e| self.io(e))
    }

    /// Reads the next response frame's payload.
    fn read_frame(&mut self) -> Result<BytesMut, ClientError> {
        read_frame(&mut self.stream, &mut self.buf).map_err(|e| self.io(e))
    }

    /// Receives the next response, whichever request it answers.
    pub fn receive(&mut self) -> Result<Received, ClientError> {
        let payload = self.read_frame()?;
        let mut d = Decoder::new(payload);
        let header = ResponseHeader::decode(&mut d)?;
        let api = self.awaiting.remove(&header.correlation_id);
        if header.error != ErrorCode::None && api.is_none() && header.correlation_id == 0 {
            // An error that answers no request (correlation id 0): the broker refused the
            // connection (too many connections) or the stream, and closes it.
            return Err(WireError::new(header.error, header.message).into());
        }
        if header.error != ErrorCode::None {
            return Ok((
                header.correlation_id,
                Err(WireError::new(header.error, header.message)),
            ));
        }
        let api = api.ok_or_else(|| {
            ClientError::Unexpected(format!(
                "response to unknown correlation id {}",
                header.correlation_id
            ))
        })?;
        let response = decode_response(api, &mut d)?;
        d.finish()?;
        Ok((header.correlation_id, Ok(response)))
    }

    /// Sends a request and waits for its response (other responses received meanwhile are
    /// an error: use send/receive to pipeline).
    pub fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        let id = self.send(request)?;
        let (got, result) = self.receive()?;
        if got != id {
            return Err(ClientError::Unexpected(format!(
                "expected the response to {id}, got {got}"
            )));
        }
        Ok(result?)
    }

    /// Handshake.
    pub fn api_versions(&mut self) -> Result<ApiVersionsResponse, ClientError> {
        let request = Request::ApiVersions(ApiVersionsRequest {
            client_name: "eventflow-client".into(),
        });
        expect_response!(self.call(request)?, ApiVersions)
    }

    /// Metadata for the named topics (all when empty).
    pub fn metadata(&mut self, topics: &[&str]) -> Result<MetadataResponse, ClientError> {
        let request = Request::Metadata(MetadataRequest {
            topics: topics.iter().map(ToString::to_string).collect(),
        });
        expect_response!(self.call(request)?, Metadata)
    }

    /// Creates a topic.
    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: u32,
        configs: &[(&str, &str)],
    ) -> Result<(), ClientError> {
        self.call(Request::CreateTopic(CreateTopicRequest {
            name: name.into(),
            partitions,
            configs: owned_configs(configs),
        }))
        .map(drop)
    }

    /// Deletes a topic.
    pub fn delete_topic(&mut self, name: &str) -> Result<(), ClientError> {
        self.call(Request::DeleteTopic(DeleteTopicRequest {
            name: name.into(),
        }))
        .map(drop)
    }

    /// Lists topics.
    pub fn list_topics(&mut self) -> Result<Vec<TopicListing>, ClientError> {
        Ok(expect_response!(self.call(Request::ListTopics)?, ListTopics)?.topics)
    }

    /// Describes a topic.
    pub fn describe_topic(&mut self, name: &str) -> Result<DescribeTopicResponse, ClientError> {
        let request = Request::DescribeTopic(DescribeTopicRequest { name: name.into() });
        expect_response!(self.call(request)?, DescribeTopic)
    }

    /// Sets topic configs.
    pub fn alter_topic_config(
        &mut self,
        name: &str,
        configs: &[(&str, &str)],
    ) -> Result<(), ClientError> {
        self.call(Request::AlterTopicConfig(AlterTopicConfigRequest {
            name: name.into(),
            configs: owned_configs(configs),
        }))
        .map(drop)
    }

    /// Appends one or more concatenated record batches to one partition and returns the
    /// (first, last) offsets assigned. With [`Acks::None`] nothing comes back: returns
    /// `(-1, -1)`.
    pub fn produce(
        &mut self,
        topic: &str,
        partition: u32,
        records: BytesMut,
        acks: Acks,
    ) -> Result<(i64, i64), ClientError> {
        let request = produce_request(topic, partition, records, acks);
        if acks == Acks::None {
            self.send(request)?;
            return Ok((-1, -1));
        }
        let response = expect_response!(self.call(request)?, Produce)?;
        let p = only_partition(response.topics, "produce")?;
        check(p.error, &p.message)?;
        Ok((p.base_offset, p.last_offset))
    }

    /// Fetches from one partition. Returns the partition's entry (its `error` is checked:
    /// an error becomes `Err`).
    pub fn fetch(
        &mut self,
        topic: &str,
        partition: u32,
        offset: i64,
        max_bytes: u32,
        max_wait: Duration,
        min_bytes: u32,
    ) -> Result<FetchPartitionResponse, ClientError> {
        let request = fetch_request(topic, partition, offset, max_bytes, max_wait, min_bytes);
        let response = expect_response!(self.call(request)?, Fetch)?;
        let p = only_partition(response.topics, "fetch")?;
        check(p.error, &p.message)?;
        Ok(p)
    }

    /// Every consumer and share group the broker knows.
    pub fn list_groups(&mut self) -> Result<Vec<GroupListing>, ClientError> {
        Ok(expect_response!(self.call(Request::ListGroups)?, ListGroups)?.groups)
    }

    /// A consumer group's members, assignment and committed offsets.
    pub fn describe_group(&mut self, group: &str) -> Result<DescribeGroupResponse, ClientError> {
        let request = Request::DescribeGroup(GroupRequest {
            group: group.into(),
        });
        expect_response!(self.call(request)?, DescribeGroup)
    }

    /// Deletes a consumer group without members, and its offsets.
    pub fn delete_group(&mut self, group: &str) -> Result<(), ClientError> {
        self.call(Request::DeleteGroup(GroupRequest {
            group: group.into(),
        }))
        .map(drop)
    }

    /// Commits offsets for a group: as a member (`Some((member_id, generation))`) or from
    /// outside it (`None`: only while it has no members). Fails on the first partition
    /// the broker refused.
    pub fn commit_offsets(
        &mut self,
        group: &str,
        member: Option<(&str, u32)>,
        offsets: &[(&str, u32, i64)],
    ) -> Result<(), ClientError> {
        let topics = TopicOffsets::group(
            offsets
                .iter()
                .map(|&(topic, partition, offset)| (topic, PartitionOffset { partition, offset })),
        );
        let (member_id, generation) =
            member.map_or((String::new(), -1), |(m, g)| (m.to_string(), g as i32));
        let request = Request::CommitOffsets(CommitOffsetsRequest {
            group: group.into(),
            member_id,
            generation,
            topics,
        });
        check_results(expect_response!(self.call(request)?, CommitOffsets)?)
    }

    /// A group's committed offsets for these partitions (-1: none), or every committed
    /// one when `partitions` is empty.
    pub fn fetch_offsets(
        &mut self,
        group: &str,
        partitions: &[(&str, u32)],
    ) -> Result<Vec<(String, u32, i64)>, ClientError> {
        let request = Request::FetchOffsets(FetchOffsetsRequest {
            group: group.into(),
            topics: TopicPartitions::group(partitions.iter().copied()),
        });
        let response = expect_response!(self.call(request)?, FetchOffsets)?;
        Ok(response
            .topics
            .into_iter()
            .flat_map(|t| {
                let topic = t.topic;
                t.partitions
                    .into_iter()
                    .map(move |p| (topic.clone(), p.partition, p.offset))
            })
            .collect())
    }

    /// Adds ACLs (a superuser's call, or one an ACL on the cluster allows).
    pub fn create_acls(&mut self, acls: &[crate::auth::acl::Acl]) -> Result<(), ClientError> {
        let request = Request::CreateAcls(CreateAclsRequest {
            acls: acls.iter().map(AclEntry::of).collect(),
        });
        self.call(request).map(drop)
    }

    /// The ACLs `filter` matches.
    pub fn describe_acls(
        &mut self,
        filter: &crate::auth::acl::AclFilter,
    ) -> Result<Vec<crate::auth::acl::Acl>, ClientError> {
        let request = Request::DescribeAcls(AclFilterRequest::of(filter));
        let entries = expect_response!(self.call(request)?, DescribeAcls)?.acls;
        acls_of(entries)
    }

    /// The client quotas `filter` matches, each entity with its limits.
    pub fn describe_quotas(
        &mut self,
        filter: &crate::auth::quota::QuotaFilter,
    ) -> Result<
        Vec<(
            crate::auth::quota::QuotaEntity,
            crate::auth::quota::QuotaValues,
        )>,
        ClientError,
    > {
        let request = Request::DescribeQuotas(DescribeQuotasRequest::of(filter));
        expect_response!(self.call(request)?, DescribeQuotas)?
            .entries
            .iter()
            .map(|e| e.to_quota().map_err(ClientError::Unexpected))
            .collect()
    }

    /// Sets the limits `set` and removes those of `remove` for `entity`, all or none (a
    /// superuser's call, or one an AlterConfigs ACL on the cluster allows).
    pub fn alter_quotas(
        &mut self,
        entity: &crate::auth::quota::QuotaEntity,
        set: &[(crate::auth::quota::QuotaKey, f64)],
        remove: &[crate::auth::quota::QuotaKey],
    ) -> Result<(), ClientError> {
        let request = Request::AlterQuotas(AlterQuotasRequest {
            user: QuotaPart::of(entity.user.as_ref()),
            client_id: QuotaPart::of(entity.client_id.as_ref()),
            set: set.iter().map(|&(k, v)| QuotaValue::of(k, v)).collect(),
            remove: remove.iter().map(|k| k.name().to_string()).collect(),
        });
        self.call(request).map(drop)
    }

    /// Removes the ACLs `filter` matches; returns them.
    pub fn delete_acls(
        &mut self,
        filter: &crate::auth::acl::AclFilter,
    ) -> Result<Vec<crate::auth::acl::Acl>, ClientError> {
        let request = Request::DeleteAcls(AclFilterRequest::of(filter));
        let entries = expect_response!(self.call(request)?, DeleteAcls)?.acls;
        acls_of(entries)
    }

    /// Every user and the SCRAM mechanisms each may log in with (a superuser's call).
    pub fn list_users(&mut self) -> Result<Vec<UserDescription>, ClientError> {
        expect_response!(self.call(Request::ListUsers)?, ListUsers).map(|r| r.users)
    }

    /// Adds `user`, or sets its password, for one SCRAM mechanism. The password is salted
    /// here: only the salt and the salted password travel.
    pub fn upsert_user(
        &mut self,
        user: &str,
        hash: crate::auth::ScramHash,
        password: &str,
        iterations: u32,
    ) -> Result<(), ClientError> {
        let mut salt = vec![0u8; 32];
        getrandom::getrandom(&mut salt)
            .map_err(|e| ClientError::Unexpected(format!("no random salt: {e}")))?;
        let salted =
            crate::auth::scram::salted_password(hash, password.as_bytes(), &salt, iterations);
        let request = Request::UpsertUser(UpsertUserRequest {
            name: user.to_string(),
            mechanism: hash.name().to_string(),
            iterations,
            salt: Bytes::from(salt),
            salted_password: Bytes::from(salted),
        });
        self.call(request).map(drop)
    }

    /// Removes `user`'s credential for `hash`, or the user (every credential) with `None`.
    pub fn delete_user(
        &mut self,
        user: &str,
        hash: Option<crate::auth::ScramHash>,
    ) -> Result<(), ClientError> {
        let request = Request::DeleteUser(DeleteUserRequest {
            name: user.to_string(),
            mechanism: hash.map(|h| h.name().to_string()).unwrap_or_default(),
        });
        self.call(request).map(drop)
    }

    /// A share group's state per partition.
    pub fn describe_queue(&mut self, group: &str) -> Result<DescribeQueueResponse, ClientError> {
        let request = Request::DescribeQueue(GroupRequest {
            group: group.into(),
        });
        expect_response!(self.call(request)?, DescribeQueue)
    }

    /// Looks up an offset: [`offset_spec::LATEST`], [`offset_spec::EARLIEST`] or a
    /// timestamp (ms). -1 when no batch is at or after the timestamp.
    pub fn list_offset(
        &mut self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<i64, ClientError> {
        let request = Request::ListOffsets(ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                topic: topic.into(),
                partitions: vec![ListOffsetsPartition {
                    partition,
                    timestamp,
                }],
            }],
        });
        let response = expect_response!(self.call(request)?, ListOffsets)?;
        let p = only_partition(response.topics, "list-offsets")?;
        check(p.error, &p.message)?;
        Ok(p.offset)
    }
}

/// A socket error as a [`ClientError`]: a timed-out read, write or connect is
/// [`ClientError::Timeout`].
pub(crate) fn io_error(addr: String, timeout: Duration, source: io::Error) -> ClientError {
    match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
            addr,
            after: timeout,
        },
        _ => ClientError::Io { addr, source },
    }
}

/// A produce request for one partition.
pub fn produce_request(topic: &str, partition: u32, records: BytesMut, acks: Acks) -> Request {
    Request::Produce(ProduceRequest {
        acks,
        timeout_ms: 30_000,
        topics: vec![ProduceTopic {
            topic: topic.into(),
            partitions: vec![ProducePartition { partition, records }],
        }],
    })
}

/// A fetch request for one partition.
pub fn fetch_request(
    topic: &str,
    partition: u32,
    offset: i64,
    max_bytes: u32,
    max_wait: Duration,
    min_bytes: u32,
) -> Request {
    Request::Fetch(FetchRequest {
        max_wait_ms: max_wait.as_millis().min(u128::from(u32::MAX)) as u32,
        min_bytes,
        max_bytes,
        topics: vec![FetchTopic {
            topic: topic.into(),
            partitions: vec![FetchPartition {
                partition,
                offset,
                max_bytes,
            }],
        }],
    })
}

/// Config entries as a request carries them.
fn owned_configs(configs: &[(&str, &str)]) -> Vec<ConfigEntry> {
    configs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The one partition entry of a response to a one-partition request.
fn only_partition<P>(topics: Vec<TopicEntry<P>>, what: &str) -> Result<P, ClientError> {
    topics
        .into_iter()
        .next()
        .and_then(|t| t.partitions.into_iter().next())
        .ok_or_else(|| ClientError::Unexpected(format!("empty {what} response")))
}

/// A partition-level error code as a `Result`.
fn check(error: ErrorCode, message: &str) -> Result<(), ClientError> {
    if error == ErrorCode::None {
        Ok(())
    } else {
        Err(WireError::new(error, message).into())
    }
}

/// The per-partition outcomes of a commit or a share ack: the first refusal as `Err`.
pub(crate) fn check_results(response: ResultsResponse) -> Result<(), ClientError> {
    for t in response.topics {
        for p in t.partitions {
            check(p.error, &p.message)?;
        }
    }
    Ok(())
}

fn unexpected(response: Response) -> ClientError {
    ClientError::Unexpected(format!("{response:?}").chars().take(200).collect())
}

/// Writes a frame's chunks with gathered writes (`writev`), not one write per chunk.
pub(crate) fn write_frame(stream: &mut impl Write, chunks: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = chunks.iter().map(|c| io::IoSlice::new(c)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let n = stream.write_vectored(slices)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "socket closed"));
        }
        io::IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Reads from `stream` into `buf` until a whole response frame is there, and returns its
/// payload (what follows stays in `buf`). A frame over 256 MiB is `InvalidData`.
pub(crate) fn read_frame(stream: &mut impl Read, buf: &mut BytesMut) -> io::Result<BytesMut> {
    loop {
        match frame::split_frame(buf, MAX_RESPONSE_BYTES) {
            Ok(Some(payload)) => return Ok(payload),
            Ok(None) => {}
            // A TLS record (an alert or a handshake) where a frame was expected.
            Err(_) if matches!(buf[..], [0x15 | 0x16, 0x03, ..]) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the broker answered in TLS: this listener speaks TLS, connect with the \
                     CA that signed its certificate (--tls-ca)",
                ))
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
        // What the frame still needs, at most 1 MiB at a time: the room is zeroed first,
        // and a read brings what the socket (or a TLS stream) holds, often much less.
        let want = frame::peek_frame_len(buf)
            .map_or(0, |n| (n + frame::LENGTH_PREFIX).saturating_sub(buf.len()))
            .clamp(64 * 1024, 1 << 20);
        let start = buf.len();
        buf.resize(start + want, 0);
        match stream.read(&mut buf[start..]) {
            Ok(0) => {
                buf.truncate(start);
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the broker closed the connection",
                ));
            }
            Ok(n) => buf.truncate(start + n),
            Err(e) => {
                buf.truncate(start);
                return Err(e);
            }
        }
    }
}

/// Splits fetched bytes into their complete batches; a partial last batch (a fetch may end
/// inside one) is left out.
pub fn split_batches(records: &Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    for item in crate::protocol::batch::batches(records) {
        match item {
            Ok((start, header)) => out.push(records.slice(start..start + header.total_len())),
            Err(_) => break,
        }
    }
    out
}
