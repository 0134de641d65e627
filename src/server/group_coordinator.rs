//! Consumer-group coordination on the shards. A group belongs to one of
//! [`OFFSET_BUCKETS`] buckets (a hash of its name); bucket `b` is coordinated by shard
//! `b mod shards`, which runs the group's membership ([`Groups`]) and keeps its committed
//! offsets in the bucket's internal log under `<data>/meta/offsets/<b>`. Buckets, not
//! shards, name the logs, so a broker restarted with another `--cores` finds every group's
//! offsets again. Requests reaching another shard are forwarded to the coordinator through
//! the rings.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::internal_log::InternalLog;
use crate::config::BrokerConfig;
use crate::groups::membership::{GroupError, Groups, SessionLimits, Strategy};
use crate::local::OnceMap;
use crate::protocol::api::*;
use crate::protocol::{ErrorCode, WireError};
use crate::shard::ShardId;
use crate::storage::catalog::CatalogStore;

/// Buckets of groups (and offset logs). Fixed: changing it would lose every offset.
pub(crate) const OFFSET_BUCKETS: u16 = 16;

/// Session timeouts members may ask for.
const SESSION_LIMITS: SessionLimits = SessionLimits {
    min: Duration::from_millis(1_000),
    max: Duration::from_secs(300),
};

/// Microseconds since the epoch at start: member ids of this run differ from the last's.
fn boot_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
        .max(1)
}

/// The bucket of a group.
pub(crate) fn bucket_of(group: &str) -> u16 {
    // FNV-1a, as partition ownership uses: stable across builds and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in group.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % u32::from(OFFSET_BUCKETS)) as u16
}

/// The shard coordinating a group.
pub(crate) fn coordinator_of(group: &str, shard_count: u16) -> ShardId {
    bucket_of(group) % shard_count
}

/// Group requests, as the coordinator runs them.
pub(crate) enum GroupOp {
    Join(JoinGroupRequest),
    Heartbeat(HeartbeatRequest),
    Leave(LeaveGroupRequest),
    Commit(CommitOffsetsRequest),
    FetchOffsets(FetchOffsetsRequest),
    Describe(String),
    Delete(String),
    /// The groups this shard coordinates.
    List,
}

/// Committed offsets of one group: (topic, partition) → next offset to consume.
type Offsets = BTreeMap<(String, u32), i64>;

/// The consumer groups one shard coordinates.
pub(crate) struct GroupCoordinator {
    shard: ShardId,
    shard_count: u16,
    config: Arc<BrokerConfig>,
    catalog: Arc<CatalogStore>,
    groups: RefCell<Groups>,
    offsets: RefCell<HashMap<String, Offsets>>,
    /// The offsets log of each bucket this shard coordinates.
    buckets: OnceMap<u16, Rc<InternalLog>>,
}

impl GroupCoordinator {
    pub(crate) fn new(
        shard: ShardId,
        shard_count: u16,
        config: Arc<BrokerConfig>,
        catalog: Arc<CatalogStore>,
    ) -> GroupCoordinator {
        GroupCoordinator {
            shard,
            shard_count,
            config,
            catalog,
            groups: RefCell::new(Groups::with_boot_id(SESSION_LIMITS, boot_id())),
            offsets: RefCell::new(HashMap::new()),
            buckets: OnceMap::new(),
        }
    }

    /// Runs a group request on its coordinator (this shard).
    pub(crate) async fn run(&self, op: GroupOp) -> Result<Response, WireError> {
        match op {
            GroupOp::Join(r) => {
                self.bucket(&r.group).await?;
                let strategy: Strategy = r.strategy.parse().map_err(|_| {
                    WireError::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "unknown assignment strategy `{}` (range, roundrobin or sticky)",
                            r.strategy
                        ),
                    )
                })?;
                let catalog = self.catalog.snapshot();
                let partitions = |t: &str| catalog.topics.get(t).map(|m| m.partitions);
                let member = (!r.member_id.is_empty()).then_some(r.member_id.as_str());
                let joined = self
                    .groups
                    .borrow_mut()
                    .join(
                        &r.group,
                        member,
                        &r.client_id,
                        &r.topics,
                        Duration::from_millis(u64::from(r.session_timeout_ms)),
                        strategy,
                        &partitions,
                        Instant::now(),
                    )
                    .map_err(group_error)?;
                tracing::info!(
                    group = %r.group,
                    member = %joined.member_id,
                    generation = joined.generation,
                    "member joined"
                );
                Ok(Response::JoinGroup(membership(joined)))
            }
            GroupOp::Heartbeat(r) => {
                let beat = self
                    .groups
                    .borrow_mut()
                    .heartbeat(&r.group, &r.member_id, r.generation, Instant::now())
                    .map_err(group_error)?;
                Ok(Response::Heartbeat(membership(beat)))
            }
            GroupOp::Leave(r) => {
                self.groups
                    .borrow_mut()
                    .leave(&r.group, &r.member_id)
                    .map_err(group_error)?;
                tracing::info!(group = %r.group, member = %r.member_id, "member left");
                Ok(Response::LeaveGroup)
            }
            GroupOp::Commit(r) => self.commit(r).await,
            GroupOp::FetchOffsets(r) => {
                self.bucket(&r.group).await?;
                Ok(Response::FetchOffsets(self.fetch_offsets(&r)))
            }
            GroupOp::Describe(group) => {
                self.bucket(&group).await?;
                self.describe(&group).map(Response::DescribeGroup)
            }
            GroupOp::Delete(group) => self.delete(&group).await,
            GroupOp::List => {
                self.recover().await?;
                Ok(Response::ListGroups(self.list()))
            }
        }
    }

    /// Removes members whose session ended (their partitions go to the others), and
    /// rebalances groups whose topics appeared, grew or went away.
    pub(crate) fn tick(&self, now: Instant) {
        let mut groups = self.groups.borrow_mut();
        for (group, member) in groups.expire(now) {
            tracing::info!(
                %group,
                %member,
                "member removed: its session expired, or it did not let go of revoked \
                 partitions within its session timeout"
            );
        }
        let catalog = self.catalog.snapshot();
        let partitions = |t: &str| catalog.topics.get(t).map(|m| m.partitions);
        for group in groups.refresh_partition_counts(&partitions) {
            tracing::info!(%group, "topics changed: rebalanced");
        }
    }

    async fn commit(&self, r: CommitOffsetsRequest) -> Result<Response, WireError> {
        let log = self.bucket(&r.group).await?;
        let member = match (r.member_id.as_str(), r.generation) {
            ("", -1) => None,
            (_, g) if g < 0 => {
                return Err(WireError::new(
                    ErrorCode::InvalidRequest,
                    "generation -1 is only for commits without a member id",
                ))
            }
            (id, g) => Some((id, g as u32)),
        };
        // A member commits only partitions it holds, including ones it is letting go of
        // until it acknowledges: a partition another member took over is that member's.
        let not_held: std::collections::HashSet<(&str, u32)> = {
            let groups = self.groups.borrow();
            groups.check_commit(&r.group, member).map_err(group_error)?;
            let requested = r.topics.iter().flat_map(|t| {
                let topic = t.topic.as_str();
                t.partitions.iter().map(move |p| (topic, p.partition))
            });
            requested
                .filter(|&(topic, partition)| {
                    member.is_some_and(|(id, _)| !groups.holds(&r.group, id, topic, partition))
                })
                .collect()
        };
        let catalog = self.catalog.snapshot();
        let mut records = Vec::new();
        let mut results = Vec::new();
        for t in &r.topics {
            let known = catalog.topics.get(&t.topic).map(|m| m.partitions);
            let mut partitions = Vec::new();
            for p in &t.partitions {
                let (error, message) = match known {
                    Some(_) if not_held.contains(&(t.topic.as_str(), p.partition)) => (
                        ErrorCode::StaleGeneration,
                        format!(
                            "{}/{} is not held by member {}: another member owns it now, \
                             or it never was this member's",
                            t.topic, p.partition, r.member_id
                        ),
                    ),
                    Some(n) if p.partition < n && p.offset >= 0 => {
                        records.push((
                            offset_key(&r.group, &t.topic, p.partition),
                            Some(p.offset.to_be_bytes().to_vec()),
                        ));
                        (ErrorCode::None, String::new())
                    }
                    Some(_) if p.offset < 0 => (
                        ErrorCode::InvalidRequest,
                        format!("offset {} is negative", p.offset),
                    ),
                    _ => (
                        ErrorCode::UnknownTopicOrPartition,
                        format!("{}/{} does not exist", t.topic, p.partition),
                    ),
                };
                partitions.push(PartitionResult {
                    partition: p.partition,
                    error,
                    message,
                });
            }
            results.push(TopicResults {
                topic: t.topic.clone(),
                partitions,
            });
        }
        // Memory first, then the log: a checkpoint that starts while this append waits then
        // copies the new values, never older ones that would follow the new in the log.
        // (If the append fails, the commit is reported failed but its values may still be
        // written by a later checkpoint; a failed commit is uncertain, as in Kafka.)
        {
            let mut offsets = self.offsets.borrow_mut();
            let group = offsets.entry(r.group.clone()).or_default();
            for (t, results) in r.topics.iter().zip(&results) {
                for (p, result) in t.partitions.iter().zip(&results.partitions) {
                    if result.error == ErrorCode::None {
                        group.insert((t.topic.clone(), p.partition), p.offset);
                    }
                }
            }
        }
        let checkpoint = log.append(&records).await?;
        if checkpoint {
            // The commit itself is durable already; a failed checkpoint is retried later.
            if let Err(e) = self.checkpoint(bucket_of(&r.group), &log).await {
                tracing::warn!(group = %r.group, "offset log checkpoint failed: {e}");
            }
        }
        Ok(Response::CommitOffsets(ResultsResponse { topics: results }))
    }

    fn fetch_offsets(&self, r: &FetchOffsetsRequest) -> OffsetsResponse {
        let offsets = self.offsets.borrow();
        let committed = offsets.get(&r.group);
        let lookup = |topic: &str, p: u32| {
            committed
                .and_then(|o| o.get(&(topic.to_string(), p)))
                .copied()
                .unwrap_or(-1)
        };
        let topics = if r.topics.is_empty() {
            by_topic(committed.into_iter().flatten())
        } else {
            r.topics
                .iter()
                .map(|t| TopicOffsets {
                    topic: t.topic.clone(),
                    partitions: t
                        .partitions
                        .iter()
                        .map(|&partition| PartitionOffset {
                            partition,
                            offset: lookup(&t.topic, partition),
                        })
                        .collect(),
                })
                .collect()
        };
        OffsetsResponse { topics }
    }

    fn describe(&self, group: &str) -> Result<DescribeGroupResponse, WireError> {
        let offsets = self.offsets.borrow();
        let committed = offsets.get(group);
        let description = self.groups.borrow().describe(group);
        if description.is_none() && committed.is_none() {
            return Err(unknown_group(group));
        }
        let offsets = by_topic(committed.into_iter().flatten());
        Ok(match description {
            Some(d) => DescribeGroupResponse {
                group: group.to_string(),
                state: d.state.as_str().to_string(),
                generation: d.generation,
                strategy: d.strategy.to_string(),
                members: d
                    .members
                    .into_iter()
                    .map(|m| MemberDescription {
                        member_id: m.member_id,
                        client_id: m.client_id,
                        topics: m.topics,
                        assignment: assignment(m.assignment),
                    })
                    .collect(),
                offsets,
            },
            None => DescribeGroupResponse {
                group: group.to_string(),
                state: "empty".into(),
                generation: 0,
                strategy: String::new(),
                members: Vec::new(),
                offsets,
            },
        })
    }

    async fn delete(&self, group: &str) -> Result<Response, WireError> {
        let log = self.bucket(group).await?;
        let known_offsets = self.offsets.borrow().contains_key(group);
        match self.groups.borrow_mut().delete(group) {
            Ok(()) => {}
            Err(GroupError::UnknownGroup) if known_offsets => {}
            Err(e) => return Err(group_error(e)),
        }
        // A tombstone for every committed offset: replay forgets them.
        // Forgotten in memory before the tombstones are appended, so a checkpoint meanwhile
        // cannot write the offsets back after them.
        let tombstones: Vec<(Vec<u8>, Option<Vec<u8>>)> = self
            .offsets
            .borrow_mut()
            .remove(group)
            .into_iter()
            .flatten()
            .map(|((topic, partition), _)| (offset_key(group, &topic, partition), None))
            .collect();
        log.append(&tombstones).await?;
        tracing::info!(%group, "group deleted");
        Ok(Response::DeleteGroup)
    }

    fn list(&self) -> ListGroupsResponse {
        let mut groups: BTreeMap<String, u32> = self
            .offsets
            .borrow()
            .keys()
            .map(|g| (g.clone(), 0))
            .collect();
        for (group, members, _generation) in self.groups.borrow().list() {
            groups.insert(group, members as u32);
        }
        ListGroupsResponse {
            groups: groups
                .into_iter()
                .map(|(group, members)| GroupListing {
                    group,
                    kind: "consumer".into(),
                    members,
                })
                .collect(),
        }
    }

    /// The offset log of a group's bucket, loaded on first use.
    async fn bucket(&self, group: &str) -> Result<Rc<InternalLog>, WireError> {
        // (Names were checked where the request arrived.)
        self.load_bucket(bucket_of(group)).await
    }

    async fn load_bucket(&self, bucket: u16) -> Result<Rc<InternalLog>, WireError> {
        self.buckets
            .get_or_open(&bucket, || async {
                let dir = self
                    .config
                    .data_dir
                    .join("meta")
                    .join("offsets")
                    .join(bucket.to_string());
                let (log, live) = InternalLog::open(dir, self.config.fsync).await?;
                let mut offsets = self.offsets.borrow_mut();
                for (key, value) in live {
                    if let (Some((group, topic, partition)), Ok(v)) =
                        (parse_offset_key(&key), <[u8; 8]>::try_from(&value[..]))
                    {
                        offsets
                            .entry(group)
                            .or_default()
                            .insert((topic, partition), i64::from_be_bytes(v));
                    }
                }
                Ok(Rc::new(log))
            })
            .await
    }

    /// Opens (and replays) the offsets log of every bucket this shard coordinates: run
    /// before the shard serves, so no request waits for a replay.
    pub(crate) async fn recover(&self) -> Result<(), WireError> {
        for bucket in (0..OFFSET_BUCKETS).filter(|b| b % self.shard_count == self.shard) {
            self.load_bucket(bucket).await?;
        }
        Ok(())
    }

    async fn checkpoint(&self, bucket: u16, log: &InternalLog) -> Result<(), WireError> {
        let live: Vec<(Vec<u8>, Option<Vec<u8>>)> = self
            .offsets
            .borrow()
            .iter()
            .filter(|(g, _)| bucket_of(g) == bucket)
            .flat_map(|(g, o)| {
                o.iter().map(move |((t, p), off)| {
                    (offset_key(g, t, *p), Some(off.to_be_bytes().to_vec()))
                })
            })
            .collect();
        tracing::debug!(
            shard = self.shard,
            bucket,
            keys = live.len(),
            "offset log checkpoint"
        );
        log.checkpoint(live).await
    }

    /// Closes the offset logs (shutdown).
    pub(crate) async fn close(&self) {
        for log in self.buckets.values() {
            log.close().await;
        }
    }
}

fn membership(j: crate::groups::membership::Joined) -> MembershipResponse {
    MembershipResponse {
        member_id: j.member_id,
        generation: j.generation,
        assignment: assignment(j.assignment),
    }
}

fn assignment(a: Vec<crate::groups::membership::MemberAssignment>) -> Vec<TopicPartitions> {
    a.into_iter()
        .map(|m| TopicPartitions {
            topic: m.topic,
            partitions: m.partitions,
        })
        .collect()
}

fn by_topic<'a>(offsets: impl Iterator<Item = (&'a (String, u32), &'a i64)>) -> Vec<TopicOffsets> {
    let mut topics: Vec<TopicOffsets> = Vec::new();
    for ((topic, partition), offset) in offsets {
        let entry = PartitionOffset {
            partition: *partition,
            offset: *offset,
        };
        match topics.last_mut() {
            Some(t) if t.topic == *topic => t.partitions.push(entry),
            _ => topics.push(TopicOffsets {
                topic: topic.clone(),
                partitions: vec![entry],
            }),
        }
    }
    topics
}

fn unknown_group(group: &str) -> WireError {
    WireError::new(
        ErrorCode::UnknownGroup,
        format!("group `{group}` does not exist"),
    )
}

/// The wire error for a coordinator refusal.
pub(crate) fn group_error(e: GroupError) -> WireError {
    let code = match &e {
        GroupError::UnknownGroup => ErrorCode::UnknownGroup,
        GroupError::UnknownMember => ErrorCode::UnknownMember,
        GroupError::StaleGeneration { .. } => ErrorCode::StaleGeneration,
        GroupError::InvalidSessionTimeout { .. } => ErrorCode::InvalidSessionTimeout,
        GroupError::GroupNotEmpty => ErrorCode::GroupNotEmpty,
        GroupError::InconsistentStrategy { .. } => ErrorCode::InconsistentGroup,
        GroupError::NoTopics => ErrorCode::InvalidRequest,
    };
    WireError::new(code, e.to_string())
}

/// Offset record key: `o`, then length-prefixed group and topic, then the partition.
fn offset_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + group.len() + topic.len());
    key.push(b'o');
    key.extend_from_slice(&(group.len() as u16).to_be_bytes());
    key.extend_from_slice(group.as_bytes());
    key.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    key.extend_from_slice(topic.as_bytes());
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

fn parse_offset_key(key: &Bytes) -> Option<(String, String, u32)> {
    let rest = key.strip_prefix(b"o")?;
    let (group, rest) = length_prefixed(rest)?;
    let (topic, rest) = length_prefixed(rest)?;
    let partition = u32::from_be_bytes(rest.try_into().ok()?);
    Some((group, topic, partition))
}

fn length_prefixed(buf: &[u8]) -> Option<(String, &[u8])> {
    let len = u16::from_be_bytes(buf.get(..2)?.try_into().ok()?) as usize;
    let s = std::str::from_utf8(buf.get(2..2 + len)?).ok()?;
    Some((s.to_string(), &buf[2 + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_buckets_are_stable() {
        let key = Bytes::from(offset_key("billing", "orders", 7));
        assert_eq!(
            parse_offset_key(&key),
            Some(("billing".into(), "orders".into(), 7))
        );
        assert_eq!(
            parse_offset_key(&Bytes::from_static(b"o\x00\x09short")),
            None
        );
        // Pinned: offsets on disk are found by these buckets.
        assert_eq!(bucket_of("billing"), bucket_of("billing"));
        assert!((0..100).all(|i| bucket_of(&format!("g{i}")) < OFFSET_BUCKETS));
        let spread: std::collections::HashSet<u16> =
            (0..100).map(|i| bucket_of(&format!("g{i}"))).collect();
        assert!(spread.len() > 8);
    }
}
