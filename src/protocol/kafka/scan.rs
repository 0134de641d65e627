//! A walk over a request body that checks every array's element count against the bytes
//! left, before the body is handed to the `kafka-protocol` crate.
//!
//! The crate sizes each array with `Vec::with_capacity(count)` before it decodes a single
//! element, so a frame of a few bytes announcing 2³¹ elements asks the allocator for
//! hundreds of GiB, and a failed allocation aborts the process: one bad frame would stop
//! the broker for every client. Every element takes at least one byte, so a count larger
//! than the bytes left is refused here instead, and so is an array whose elements run out
//! of bytes before the count is reached (the crate would have sized the array from that
//! count, up to one element struct per byte left). The walk follows the layouts of the APIs
//! and versions in `SUPPORTED` (mod.rs) that the crate decodes (Kafka's `*Request.json`
//! schemas; Produce is decoded by hand and checks its own counts); a body truncated
//! elsewhere is left for the crate to report.

use kafka_protocol::messages::ApiKey;

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyElements {
    /// Elements announced.
    pub count: u64,
    /// Bytes left when the count was read.
    pub left: usize,
}

/// The walk ended: the body is truncated (left for the decoder to report) or an array
/// announced more elements than the bytes left.
enum Stop {
    Truncated,
    TooMany(TooManyElements),
}

type Step = Result<(), Stop>;

struct Cursor<'a> {
    buf: &'a [u8],
    /// Compact lengths and tagged fields (Kafka's flexible versions).
    flexible: bool,
}

impl Cursor<'_> {
    fn skip(&mut self, n: usize) -> Step {
        if self.buf.len() < n {
            return Err(Stop::Truncated);
        }
        self.buf = &self.buf[n..];
        Ok(())
    }

    fn int(&mut self, n: usize) -> Result<i64, Stop> {
        if self.buf.len() < n {
            return Err(Stop::Truncated);
        }
        let mut v: i64 = if self.buf[0] & 0x80 != 0 { -1 } else { 0 };
        for &b in &self.buf[..n] {
            v = (v << 8) | i64::from(b);
        }
        self.buf = &self.buf[n..];
        Ok(v)
    }

    /// An unsigned varint read as the crate reads it: at most 5 bytes (a continuation bit
    /// on the fifth is ignored) and the value cut to 32 bits. (Stopping at an over-long
    /// varint instead let a count of 2³² - 2 through to the crate: found by fuzzing.)
    fn uvarint(&mut self) -> Result<u64, Stop> {
        let mut v = 0u32;
        for i in 0..5 {
            let b = *self.buf.first().ok_or(Stop::Truncated)?;
            self.buf = &self.buf[1..];
            v |= u32::from(b & 0x7f) << (i * 7);
            if b & 0x80 == 0 {
                break;
            }
        }
        Ok(u64::from(v))
    }

    /// A string (nullable or not: `i16` or compact length).
    fn string(&mut self) -> Step {
        let n = if self.flexible {
            self.uvarint()? as i64 - 1
        } else {
            self.int(2)?
        };
        self.skip(usize::try_from(n).unwrap_or(0))
    }

    /// A byte field (nullable or not: `i32` or compact length).
    fn bytes(&mut self) -> Step {
        let n = if self.flexible {
            self.uvarint()? as i64 - 1
        } else {
            self.int(4)?
        };
        self.skip(usize::try_from(n).unwrap_or(0))
    }

    /// An array (nullable or not), each element walked by `element`.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Step) -> Step {
        let count = if self.flexible {
            self.uvarint()?.saturating_sub(1)
        } else {
            u64::try_from(self.int(4)?).unwrap_or(0)
        };
        if count > self.buf.len() as u64 {
            return Err(Stop::TooMany(TooManyElements {
                count,
                left: self.buf.len(),
            }));
        }
        let left = self.buf.len();
        for _ in 0..count {
            // Elements that run out of bytes: the count is a lie, and the crate would size
            // the array from it (up to one element per byte left, each element's struct
            // many times its smallest encoding) before it found out.
            element(self).map_err(|stop| match stop {
                Stop::Truncated => Stop::TooMany(TooManyElements { count, left }),
                stop => stop,
            })?;
        }
        Ok(())
    }

    /// The tagged-field section of a flexible struct (nothing in older versions).
    fn tags(&mut self) -> Step {
        if !self.flexible {
            return Ok(());
        }
        let count = self.uvarint()?;
        for _ in 0..count {
            self.uvarint()?;
            let size = self.uvarint()?;
            self.skip(size as usize)?;
        }
        Ok(())
    }
}

/// Whether `body` (after the request header) of `key` at `version` announces no array
/// larger than the bytes that follow its count.
pub fn check(key: ApiKey, version: i16, body: &[u8]) -> Result<(), TooManyElements> {
    match walk(key, version, body) {
        Err(Stop::TooMany(e)) => Err(e),
        Ok(()) | Err(Stop::Truncated) => Ok(()),
    }
}

/// Walks `body` up to its last array (and that array's elements).
fn walk(key: ApiKey, version: i16, body: &[u8]) -> Step {
    let flexible = key.request_header_version(version) >= 2;
    let mut c = Cursor {
        buf: body,
        flexible,
    };
    let v = version;
    match key {
        ApiKey::ApiVersions => Ok(()),
        ApiKey::Metadata => c.array(|c| {
            if v >= 10 {
                c.skip(16)?;
            }
            c.string()?;
            c.tags()
        }),
        ApiKey::Fetch => (|| {
            c.skip(4 + 4 + 4 + 4 + 1)?; // replica id, max wait, min bytes, max bytes, isolation
            if v >= 7 {
                c.skip(4 + 4)?; // session id, epoch
            }
            c.array(|c| {
                c.string()?;
                c.array(|c| {
                    let epochs = if v >= 9 { 4 } else { 0 } + if v >= 12 { 4 } else { 0 };
                    let log_start = if v >= 5 { 8 } else { 0 };
                    c.skip(4 + 8 + epochs + log_start + 4)?;
                    c.tags()
                })?;
                c.tags()
            })?;
            if v >= 7 {
                c.array(|c| {
                    c.string()?;
                    c.array(|c| c.skip(4))?;
                    c.tags()
                })?;
            }
            Ok(())
        })(),
        ApiKey::ListOffsets => (|| {
            c.skip(4 + if v >= 2 { 1 } else { 0 })?;
            c.array(|c| {
                c.string()?;
                c.array(|c| {
                    c.skip(4 + if v >= 4 { 4 } else { 0 } + 8)?;
                    c.tags()
                })?;
                c.tags()
            })
        })(),
        ApiKey::CreateTopics => c.array(|c| {
            c.string()?;
            c.skip(4 + 2)?;
            c.array(|c| {
                c.skip(4)?;
                c.array(|c| c.skip(4))?;
                c.tags()
            })?;
            c.array(|c| {
                c.string()?;
                c.string()?;
                c.tags()
            })?;
            c.tags()
        }),
        ApiKey::DeleteTopics if v >= 6 => c.array(|c| {
            c.string()?;
            c.skip(16)?;
            c.tags()
        }),
        ApiKey::DeleteTopics => c.array(Cursor::string),
        ApiKey::DescribeConfigs => c.array(|c| {
            c.skip(1)?; // resource type
            c.string()?;
            c.array(Cursor::string)?; // configuration keys (nullable)
            c.tags()
        }),
        ApiKey::IncrementalAlterConfigs => c.array(|c| {
            c.skip(1)?; // resource type
            c.string()?;
            c.array(|c| {
                c.string()?;
                c.skip(1)?; // operation
                c.string()?; // value (nullable)
                c.tags()
            })?;
            c.tags()
        }),
        ApiKey::CreatePartitions => c.array(|c| {
            c.string()?;
            c.skip(4)?; // count
            c.array(|c| {
                c.array(|c| c.skip(4))?;
                c.tags()
            })?;
            c.tags()
        }),
        ApiKey::FindCoordinator if v >= 4 => {
            c.skip(1)?; // key type
            c.array(Cursor::string)
        }
        ApiKey::JoinGroup => (|| {
            c.string()?; // group id
            c.skip(4 + if v >= 1 { 4 } else { 0 })?; // session and rebalance timeouts
            c.string()?; // member id
            if v >= 5 {
                c.string()?; // group instance id
            }
            c.string()?; // protocol type
            c.array(|c| {
                c.string()?;
                c.bytes()?; // the protocol's metadata
                c.tags()
            })
        })(),
        ApiKey::SyncGroup => (|| {
            c.string()?; // group id
            c.skip(4)?; // generation
            c.string()?; // member id
            if v >= 3 {
                c.string()?; // group instance id
            }
            if v >= 5 {
                c.string()?; // protocol type
                c.string()?; // protocol name
            }
            c.array(|c| {
                c.string()?;
                c.bytes()?; // the member's assignment
                c.tags()
            })
        })(),
        ApiKey::LeaveGroup if v >= 3 => {
            c.string()?; // group id
            c.array(|c| {
                c.string()?; // member id
                c.string()?; // group instance id
                if v >= 5 {
                    c.string()?; // reason
                }
                c.tags()
            })
        }
        ApiKey::OffsetCommit => (|| {
            c.string()?; // group id
            c.skip(4)?; // generation or member epoch
            c.string()?; // member id
            if v >= 7 {
                c.string()?; // group instance id
            }
            if v <= 4 {
                c.skip(8)?; // retention
            }
            c.array(|c| {
                c.string()?;
                c.array(|c| {
                    c.skip(4 + 8 + if v >= 6 { 4 } else { 0 })?;
                    c.string()?; // metadata
                    c.tags()
                })?;
                c.tags()
            })
        })(),
        ApiKey::OffsetFetch => {
            let topics = |c: &mut Cursor<'_>| {
                c.array(|c| {
                    c.string()?;
                    c.array(|c| c.skip(4))?;
                    c.tags()
                })
            };
            if v <= 7 {
                c.string()?; // group id
                topics(&mut c)
            } else {
                c.array(|c| {
                    c.string()?; // group id
                    if v >= 9 {
                        c.string()?; // member id
                        c.skip(4)?; // member epoch
                    }
                    topics(c)?;
                    c.tags()
                })
            }
        }
        ApiKey::ListGroups => {
            if v >= 4 {
                c.array(Cursor::string)?; // states
            }
            if v >= 5 {
                c.array(Cursor::string)?; // types
            }
            Ok(())
        }
        ApiKey::DescribeGroups | ApiKey::DeleteGroups => c.array(Cursor::string),
        ApiKey::OffsetDelete => {
            c.string()?; // group id
            c.array(|c| {
                c.string()?;
                c.array(|c| c.skip(4))?;
                c.tags()
            })
        }
        ApiKey::DescribeUserScramCredentials => c.array(|c| {
            c.string()?; // name
            c.tags()
        }),
        ApiKey::AlterUserScramCredentials => {
            c.array(|c| {
                c.string()?; // name
                c.skip(1)?; // mechanism
                c.tags()
            })?;
            c.array(|c| {
                c.string()?; // name
                c.skip(1 + 4)?; // mechanism, iterations
                c.bytes()?; // salt
                c.bytes()?; // salted password
                c.tags()
            })
        }
        ApiKey::CreateAcls => c.array(|c| {
            c.skip(1)?; // resource type
            c.string()?; // resource name
            c.skip(1)?; // pattern type
            c.string()?; // principal
            c.string()?; // host
            c.skip(2)?; // operation, permission
            c.tags()
        }),
        ApiKey::DeleteAcls => c.array(|c| {
            c.skip(1)?;
            c.string()?;
            c.skip(1)?;
            c.string()?;
            c.string()?;
            c.skip(2)?;
            c.tags()
        }),
        ApiKey::DescribeClientQuotas => c.array(|c| {
            c.string()?; // entity type
            c.skip(1)?; // match type
            c.string()?; // match (nullable)
            c.tags()
        }),
        ApiKey::AlterClientQuotas => c.array(|c| {
            c.array(|c| {
                c.string()?; // entity type
                c.string()?; // entity name (nullable)
                c.tags()
            })?;
            c.array(|c| {
                c.string()?; // key
                c.skip(8 + 1)?; // value (float64), remove
                c.tags()
            })?;
            c.tags()
        }),
        // No arrays: FindCoordinator v0-v3 (one key), DescribeCluster, InitProducerId,
        // Heartbeat, LeaveGroup v0-v2 (one member), the SASL exchange.
        ApiKey::FindCoordinator
        | ApiKey::DescribeCluster
        | ApiKey::InitProducerId
        | ApiKey::Heartbeat
        | ApiKey::LeaveGroup
        | ApiKey::SaslHandshake
        | ApiKey::SaslAuthenticate
        | ApiKey::DescribeAcls => Ok(()),
        // Other APIs are refused before their body is looked at (Produce is decoded by
        // hand). An API added to SUPPORTED needs its walk here: the fuzz target
        // `kafka_request` finds one that is missing (docs/RELIABILITY.md, Fuzzing).
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;

    fn name(s: &str) -> TopicName {
        TopicName(StrBytes::from_string(s.to_string()))
    }

    /// Requests of every served API with every array of `version` non-empty.
    fn samples(version: i16) -> Vec<(ApiKey, RequestKind)> {
        use create_topics_request::*;
        use delete_topics_request::DeleteTopicState;
        use fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
        use list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
        use metadata_request::MetadataRequestTopic;
        vec![
            (
                ApiKey::ApiVersions,
                RequestKind::ApiVersions(
                    ApiVersionsRequest::default()
                        .with_client_software_name(StrBytes::from("a"))
                        .with_client_software_version(StrBytes::from("1")),
                ),
            ),
            (
                ApiKey::Metadata,
                RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
                    MetadataRequestTopic::default().with_name(Some(name("a"))),
                    MetadataRequestTopic::default().with_name(Some(name("bb"))),
                ]))),
            ),
            (
                ApiKey::Fetch,
                RequestKind::Fetch(
                    FetchRequest::default()
                        .with_topics(vec![FetchTopic::default()
                            .with_topic(name("t"))
                            .with_partitions(vec![
                                FetchPartition::default().with_partition(0),
                                FetchPartition::default().with_partition(1),
                            ])])
                        .with_forgotten_topics_data(if version >= 7 {
                            vec![ForgottenTopic::default()
                                .with_topic(name("f"))
                                .with_partitions(vec![1, 2, 3])]
                        } else {
                            vec![]
                        })
                        .with_rack_id(StrBytes::from(if version >= 11 { "r" } else { "" })),
                ),
            ),
            (
                ApiKey::ListOffsets,
                RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(vec![
                    ListOffsetsTopic::default().with_name(name("t")).with_partitions(vec![
                        ListOffsetsPartition::default().with_timestamp(-1),
                        ListOffsetsPartition::default().with_timestamp(-2),
                    ]),
                ])),
            ),
            (
                ApiKey::CreateTopics,
                RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![
                    CreatableTopic::default()
                        .with_name(name("t"))
                        .with_assignments(vec![CreatableReplicaAssignment::default()
                            .with_broker_ids(vec![BrokerId(0), BrokerId(1)])])
                        .with_configs(vec![CreatableTopicConfig::default()
                            .with_name(StrBytes::from("retention.ms"))
                            .with_value(Some(StrBytes::from("1")))]),
                    CreatableTopic::default().with_name(name("u")),
                ])),
            ),
            (
                ApiKey::DeleteTopics,
                RequestKind::DeleteTopics(if version >= 6 {
                    DeleteTopicsRequest::default().with_topics(vec![
                        DeleteTopicState::default().with_name(Some(name("a"))),
                        DeleteTopicState::default(),
                    ])
                } else {
                    DeleteTopicsRequest::default().with_topic_names(vec![name("a"), name("b")])
                }),
            ),
            (
                ApiKey::DescribeConfigs,
                RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(
                    vec![
                        describe_configs_request::DescribeConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(StrBytes::from("t"))
                            .with_configuration_keys(Some(vec![
                                StrBytes::from("retention.ms"),
                                StrBytes::from("segment.ms"),
                            ])),
                        describe_configs_request::DescribeConfigsResource::default()
                            .with_resource_type(4)
                            .with_resource_name(StrBytes::from("0")),
                    ],
                )),
            ),
            (
                ApiKey::IncrementalAlterConfigs,
                RequestKind::IncrementalAlterConfigs(
                    IncrementalAlterConfigsRequest::default().with_resources(vec![
                        incremental_alter_configs_request::AlterConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(StrBytes::from("t"))
                            .with_configs(vec![
                                incremental_alter_configs_request::AlterableConfig::default()
                                    .with_name(StrBytes::from("retention.ms"))
                                    .with_value(Some(StrBytes::from("1"))),
                                incremental_alter_configs_request::AlterableConfig::default()
                                    .with_name(StrBytes::from("segment.ms"))
                                    .with_config_operation(1),
                            ]),
                        incremental_alter_configs_request::AlterConfigsResource::default(),
                    ]),
                ),
            ),
            (
                ApiKey::DescribeCluster,
                RequestKind::DescribeCluster(DescribeClusterRequest::default()),
            ),
            (
                ApiKey::CreatePartitions,
                RequestKind::CreatePartitions(CreatePartitionsRequest::default().with_topics(
                    vec![
                        create_partitions_request::CreatePartitionsTopic::default()
                            .with_name(name("t"))
                            .with_count(3)
                            .with_assignments(Some(vec![
                                create_partitions_request::CreatePartitionsAssignment::default()
                                    .with_broker_ids(vec![BrokerId(0), BrokerId(1)]),
                            ])),
                        create_partitions_request::CreatePartitionsTopic::default()
                            .with_name(name("u")),
                    ],
                )),
            ),
            (
                ApiKey::FindCoordinator,
                RequestKind::FindCoordinator(if version >= 4 {
                    FindCoordinatorRequest::default()
                        .with_coordinator_keys(vec![StrBytes::from("g"), StrBytes::from("h")])
                } else {
                    FindCoordinatorRequest::default().with_key(StrBytes::from("g"))
                }),
            ),
            (
                ApiKey::InitProducerId,
                RequestKind::InitProducerId(
                    InitProducerIdRequest::default().with_transactional_id(None),
                ),
            ),
            (
                ApiKey::JoinGroup,
                RequestKind::JoinGroup(
                    JoinGroupRequest::default()
                        .with_group_id(group("g"))
                        .with_protocol_type(StrBytes::from("consumer"))
                        .with_protocols(vec![
                            join_group_request::JoinGroupRequestProtocol::default()
                                .with_name(StrBytes::from("range"))
                                .with_metadata(Bytes::from_static(b"meta")),
                            join_group_request::JoinGroupRequestProtocol::default()
                                .with_name(StrBytes::from("roundrobin")),
                        ]),
                ),
            ),
            (
                ApiKey::SyncGroup,
                RequestKind::SyncGroup(
                    SyncGroupRequest::default()
                        .with_group_id(group("g"))
                        .with_assignments(vec![
                            sync_group_request::SyncGroupRequestAssignment::default()
                                .with_member_id(StrBytes::from("m"))
                                .with_assignment(Bytes::from_static(b"abc")),
                            sync_group_request::SyncGroupRequestAssignment::default(),
                        ]),
                ),
            ),
            (
                ApiKey::Heartbeat,
                RequestKind::Heartbeat(HeartbeatRequest::default().with_group_id(group("g"))),
            ),
            (
                ApiKey::LeaveGroup,
                RequestKind::LeaveGroup(if version >= 3 {
                    LeaveGroupRequest::default()
                        .with_group_id(group("g"))
                        .with_members(vec![
                            leave_group_request::MemberIdentity::default()
                                .with_member_id(StrBytes::from("m")),
                            leave_group_request::MemberIdentity::default()
                                .with_group_instance_id(Some(StrBytes::from("i"))),
                        ])
                } else {
                    LeaveGroupRequest::default().with_group_id(group("g"))
                }),
            ),
            (
                ApiKey::OffsetCommit,
                RequestKind::OffsetCommit(
                    OffsetCommitRequest::default()
                        .with_group_id(group("g"))
                        .with_topics(vec![
                            offset_commit_request::OffsetCommitRequestTopic::default()
                                .with_name(name("t"))
                                .with_partitions(vec![
                                    offset_commit_request::OffsetCommitRequestPartition::default()
                                        .with_committed_offset(5)
                                        .with_committed_metadata(Some(StrBytes::from("x"))),
                                    offset_commit_request::OffsetCommitRequestPartition::default()
                                        .with_partition_index(1),
                                ]),
                        ]),
                ),
            ),
            (
                ApiKey::OffsetFetch,
                RequestKind::OffsetFetch(if version >= 8 {
                    OffsetFetchRequest::default().with_groups(vec![
                        offset_fetch_request::OffsetFetchRequestGroup::default()
                            .with_group_id(group("g"))
                            .with_topics(Some(vec![
                                offset_fetch_request::OffsetFetchRequestTopics::default()
                                    .with_name(name("t"))
                                    .with_partition_indexes(vec![0, 1]),
                            ])),
                        offset_fetch_request::OffsetFetchRequestGroup::default()
                            .with_group_id(group("h")),
                    ])
                } else {
                    OffsetFetchRequest::default()
                        .with_group_id(group("g"))
                        .with_topics(Some(vec![
                            offset_fetch_request::OffsetFetchRequestTopic::default()
                                .with_name(name("t"))
                                .with_partition_indexes(vec![0, 1]),
                        ]))
                }),
            ),
            (
                ApiKey::ListGroups,
                RequestKind::ListGroups(
                    ListGroupsRequest::default()
                        .with_states_filter(if version >= 4 {
                            vec![StrBytes::from("Stable")]
                        } else {
                            vec![]
                        })
                        .with_types_filter(if version >= 5 {
                            vec![StrBytes::from("classic")]
                        } else {
                            vec![]
                        }),
                ),
            ),
            (
                ApiKey::DescribeGroups,
                RequestKind::DescribeGroups(
                    DescribeGroupsRequest::default().with_groups(vec![group("g"), group("h")]),
                ),
            ),
            (
                ApiKey::DeleteGroups,
                RequestKind::DeleteGroups(
                    DeleteGroupsRequest::default().with_groups_names(vec![group("g"), group("h")]),
                ),
            ),
            (
                ApiKey::OffsetDelete,
                RequestKind::OffsetDelete(
                    OffsetDeleteRequest::default()
                        .with_group_id(group("g"))
                        .with_topics(vec![
                            offset_delete_request::OffsetDeleteRequestTopic::default()
                                .with_name(name("t"))
                                .with_partitions(vec![
                                    offset_delete_request::OffsetDeleteRequestPartition::default(),
                                    offset_delete_request::OffsetDeleteRequestPartition::default()
                                        .with_partition_index(1),
                                ]),
                        ]),
                ),
            ),
            (
                ApiKey::SaslHandshake,
                RequestKind::SaslHandshake(
                    SaslHandshakeRequest::default().with_mechanism(StrBytes::from("PLAIN")),
                ),
            ),
            (
                ApiKey::SaslAuthenticate,
                RequestKind::SaslAuthenticate(
                    SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"ab")),
                ),
            ),
            (
                ApiKey::DescribeUserScramCredentials,
                RequestKind::DescribeUserScramCredentials(
                    DescribeUserScramCredentialsRequest::default().with_users(Some(vec![
                        describe_user_scram_credentials_request::UserName::default()
                            .with_name(StrBytes::from("alice")),
                        describe_user_scram_credentials_request::UserName::default(),
                    ])),
                ),
            ),
            (
                ApiKey::AlterUserScramCredentials,
                RequestKind::AlterUserScramCredentials(
                    AlterUserScramCredentialsRequest::default()
                        .with_deletions(vec![
                            alter_user_scram_credentials_request::ScramCredentialDeletion::default()
                                .with_name(StrBytes::from("bob"))
                                .with_mechanism(1),
                        ])
                        .with_upsertions(vec![
                            alter_user_scram_credentials_request::ScramCredentialUpsertion::default()
                                .with_name(StrBytes::from("alice"))
                                .with_mechanism(2)
                                .with_iterations(4096)
                                .with_salt(Bytes::from_static(b"salt"))
                                .with_salted_password(Bytes::from_static(b"salted")),
                            alter_user_scram_credentials_request::ScramCredentialUpsertion::default(),
                        ]),
                ),
            ),
            (
                ApiKey::DescribeClientQuotas,
                RequestKind::DescribeClientQuotas(
                    DescribeClientQuotasRequest::default().with_components(vec![
                        describe_client_quotas_request::ComponentData::default()
                            .with_entity_type(StrBytes::from("user"))
                            .with_match(Some(StrBytes::from("alice"))),
                        describe_client_quotas_request::ComponentData::default()
                            .with_entity_type(StrBytes::from("client-id"))
                            .with_match_type(1),
                    ]),
                ),
            ),
            (
                ApiKey::AlterClientQuotas,
                RequestKind::AlterClientQuotas(AlterClientQuotasRequest::default().with_entries(
                    vec![
                        alter_client_quotas_request::EntryData::default()
                            .with_entity(vec![
                                alter_client_quotas_request::EntityData::default()
                                    .with_entity_type(StrBytes::from("user"))
                                    .with_entity_name(Some(StrBytes::from("alice"))),
                                alter_client_quotas_request::EntityData::default()
                                    .with_entity_type(StrBytes::from("client-id")),
                            ])
                            .with_ops(vec![
                                alter_client_quotas_request::OpData::default()
                                    .with_key(StrBytes::from("producer_byte_rate"))
                                    .with_value(1024.0),
                                alter_client_quotas_request::OpData::default()
                                    .with_key(StrBytes::from("request_percentage"))
                                    .with_remove(true),
                            ]),
                        alter_client_quotas_request::EntryData::default(),
                    ],
                )),
            ),
        ]
    }

    fn group(s: &str) -> GroupId {
        GroupId(StrBytes::from_string(s.to_string()))
    }

    #[test]
    fn valid_requests_pass() {
        let mut checked = 0;
        for version in 0..=12 {
            for (key, request) in samples(version) {
                let (min, max) = super::super::supported(key).unwrap();
                if !(min..=max).contains(&version) {
                    continue;
                }
                let mut body = BytesMut::new();
                request
                    .encode(&mut body, version)
                    .unwrap_or_else(|e| panic!("{key:?} v{version}: {e}"));
                // The walk reaches its last array without running out of bytes: it follows
                // the layout the crate encodes.
                assert!(
                    walk(key, version, &body).is_ok(),
                    "{key:?} v{version}: the walk ran past the end"
                );
                checked += 1;
                // Cut anywhere: never a refusal for a valid prefix's counts.
                for cut in 0..body.len() {
                    let _ = check(key, version, &body[..cut]);
                }
            }
        }
        // ApiVersions 5, Metadata 13, Fetch 9, ListOffsets 8, CreateTopics 6, DeleteTopics 6,
        // DescribeConfigs 4, IncrementalAlterConfigs 2, DescribeCluster 3, CreatePartitions 4,
        // FindCoordinator 7, InitProducerId 6, JoinGroup 10, SyncGroup 6, Heartbeat 5,
        // LeaveGroup 6, OffsetCommit 8, OffsetFetch 9, ListGroups 6, DescribeGroups 7,
        // DeleteGroups 3, OffsetDelete 1, SaslHandshake 2, SaslAuthenticate 3,
        // DescribeUserScramCredentials 1, AlterUserScramCredentials 1,
        // DescribeClientQuotas 2, AlterClientQuotas 2.
        assert_eq!(
            checked,
            5 + 13
                + 9
                + 8
                + 6
                + 6
                + 4
                + 2
                + 3
                + 4
                + 7
                + 6
                + 10
                + 6
                + 5
                + 6
                + 8
                + 9
                + 6
                + 7
                + 3
                + 1
                + 2
                + 3
                + 1
                + 1
                + 2
                + 2
        );
    }

    #[test]
    fn a_count_past_the_end_is_refused() {
        // Metadata v1, topics: 2^31 - 1 elements in 4 bytes.
        let body = [0x7f, 0xff, 0xff, 0xff];
        assert_eq!(
            check(ApiKey::Metadata, 1, &body),
            Err(TooManyElements {
                count: 0x7fff_ffff,
                left: 0
            })
        );
        // Fetch v12 (compact): one topic with a huge partition count.
        let mut body = vec![0u8; 4 + 4 + 4 + 4 + 1 + 4 + 4];
        body.extend_from_slice(&[2, 2, b't']); // one topic "t"
        body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x07]); // partitions
        assert!(check(ApiKey::Fetch, 12, &body).is_err());
        // A nested count in CreateTopics v2: one topic "t" with 2^28 assignments.
        let mut body = vec![0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1, 0, 1];
        body.extend_from_slice(&[0x10, 0, 0, 0]);
        assert!(check(ApiKey::CreateTopics, 2, &body).is_err());
        // DescribeClientQuotas v0: 2^28 components in 18 bytes (the fuzzer's find).
        let mut body = vec![0x10, 0, 0, 0];
        body.extend_from_slice(&[0; 14]);
        assert!(check(ApiKey::DescribeClientQuotas, 0, &body).is_err());
        // AlterClientQuotas v1 (compact): one entry with a huge ops count.
        let body = [2, 1, 0xff, 0xff, 0xff, 0xff, 0x07];
        assert!(check(ApiKey::AlterClientQuotas, 1, &body).is_err());
        // IncrementalAlterConfigs v0: one topic resource "t" with 2^28 configs.
        let mut body = vec![0, 0, 0, 1, 2, 0, 1, b't'];
        body.extend_from_slice(&[0x10, 0, 0, 0]);
        assert!(check(ApiKey::IncrementalAlterConfigs, 0, &body).is_err());
        // JoinGroup v0 (found by fuzzing: the group APIs had no walk, and the crate sized
        // the protocols from the count): 2^31 - 1 protocols.
        let mut body = vec![0, 1, b'g', 0, 0, 0x27, 0x10, 0, 0, 0, 1, b'c'];
        body.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
        assert!(check(ApiKey::JoinGroup, 0, &body).is_err());
        // CreateTopics v7 (compact): a 5-byte varint whose fifth byte still has its
        // continuation bit, which the crate reads as 2^32 - 1 (found by fuzzing).
        let body = [0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(check(ApiKey::CreateTopics, 7, &body).is_err());
        // A count the bytes left could hold one byte each, but not element by element:
        // DescribeGroups v0, 3 group names in 4 bytes (each takes at least 2).
        let body = [0, 0, 0, 3, 0, 0, 0, 0];
        assert_eq!(
            check(ApiKey::DescribeGroups, 0, &body),
            Err(TooManyElements { count: 3, left: 4 })
        );
    }
}
