//! Consumer-group coordination on the shards. A group belongs to one of
//! [`OFFSET_BUCKETS`] buckets (a hash of its name); bucket `b` is coordinated by shard
//! `b mod shards`, which runs the group's membership ([`Groups`]) and keeps its committed
//! offsets in the bucket's internal log under `<data>/meta/offsets/<b>`. Buckets, not
//! shards, name the logs, so a broker restarted with another `--cores` finds every group's
//! offsets again. Requests reaching another shard are forwarded to the coordinator through
//! the rings.
//!
//! A group id is served by one of two membership protocols at a time: eventflow's native
//! groups ([`Groups`], broker-side assignment) or Kafka's classic protocol (`classic`, the
//! leader assigns), whichever its current members use; a member of the other kind is
//! refused while the group has members. Committed offsets are one store for both.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::internal_log::InternalLog;
use crate::config::BrokerConfig;
use crate::groups::classic::{
    ClassicDescription, ClassicError, ClassicGroups, Delivery, JoinRequest, JoinResult, Step,
    SyncResult,
};
use crate::groups::membership::GroupDescription;
use crate::groups::membership::{GroupError, Groups, SessionLimits, Strategy};
use crate::local::oneshot;
use crate::local::{OnceMap, OneshotSender};
use crate::metrics::snapshot::CommittedOffset;
use crate::protocol::api::*;
use crate::protocol::{ErrorCode, WireError};
use crate::shard::ShardId;
use crate::storage::catalog::CatalogStore;
use crate::storage::Runs;

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

/// Longest group name, as for topics (offset keys carry it with a 16-bit length).
const MAX_GROUP_NAME: usize = 249;

/// Refuses a group name no coordinator serves (either protocol).
pub(crate) fn check_group_name(group: &str) -> Result<(), WireError> {
    if group.is_empty() || group.len() > MAX_GROUP_NAME {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!("group names are 1 to {MAX_GROUP_NAME} bytes"),
        ));
    }
    Ok(())
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

/// A waiting Kafka request's (group, member, is a SyncGroup).
type WaitKey = (String, String, bool);

/// Committed offsets of one group: (topic, partition) → next offset to consume.
type Offsets = BTreeMap<(String, u32), i64>;

/// Why a Kafka group request failed: the group protocol refused it, or the broker could not
/// serve it (e.g. the offsets log failed).
#[derive(Debug)]
pub(crate) enum KafkaGroupError {
    Group(ClassicError),
    Wire(WireError),
}

impl From<ClassicError> for KafkaGroupError {
    fn from(e: ClassicError) -> Self {
        KafkaGroupError::Group(e)
    }
}

impl From<WireError> for KafkaGroupError {
    fn from(e: WireError) -> Self {
        KafkaGroupError::Wire(e)
    }
}

/// A group as Kafka's DescribeGroups shows it: served by either protocol, or known only by
/// its committed offsets.
#[derive(Debug)]
pub(crate) enum GroupView {
    Classic(ClassicDescription),
    Native(GroupDescription),
    /// No members, committed offsets only.
    OffsetsOnly,
    Unknown,
}

/// A group as Kafka's ListGroups shows it.
#[derive(Debug)]
pub(crate) struct GroupListed {
    pub(crate) group: String,
    /// Kafka's state name.
    pub(crate) state: &'static str,
    pub(crate) protocol_type: String,
}

/// The consumer groups one shard coordinates.
pub(crate) struct GroupCoordinator {
    shard: ShardId,
    shard_count: u16,
    config: Arc<BrokerConfig>,
    catalog: Arc<CatalogStore>,
    /// The broker's run, for the offset logs' clean-stop markers.
    runs: Runs,
    groups: RefCell<Groups>,
    /// Groups of Kafka clients (the classic protocol).
    classic: RefCell<ClassicGroups>,
    /// Kafka JoinGroup (false) and SyncGroup (true) requests waiting for their group's
    /// barrier, by (group, member), oldest first: each gets one delivery.
    waiters: RefCell<HashMap<WaitKey, VecDeque<OneshotSender<Delivery>>>>,
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
        runs: Runs,
    ) -> GroupCoordinator {
        let initial_delay = config.group_initial_rebalance_delay;
        GroupCoordinator {
            shard,
            shard_count,
            config,
            catalog,
            runs,
            groups: RefCell::new(Groups::with_boot_id(SESSION_LIMITS, boot_id())),
            classic: RefCell::new(ClassicGroups::new(SESSION_LIMITS, initial_delay, boot_id())),
            waiters: RefCell::new(HashMap::new()),
            offsets: RefCell::new(HashMap::new()),
            buckets: OnceMap::new(),
        }
    }

    /// Runs a group request on its coordinator (this shard).
    pub(crate) async fn run(&self, op: GroupOp) -> Result<Response, WireError> {
        match op {
            GroupOp::Join(r) => {
                self.bucket(&r.group).await?;
                if self.classic.borrow().is_active(&r.group) {
                    return Err(WireError::new(
                        ErrorCode::InconsistentGroup,
                        format!(
                            "group `{}` has members using Kafka's group protocol; \
                             use another group id or wait until they leave",
                            r.group
                        ),
                    ));
                }
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
        drop(groups);
        let removed = self.classic.borrow_mut().tick(now);
        for (group, member) in removed {
            tracing::info!(%group, %member, "kafka group member removed: session or rebalance timed out");
        }
        self.deliver();
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
        if self.classic.borrow().is_active(&r.group) {
            return Err(WireError::new(
                ErrorCode::UnknownMember,
                format!(
                    "group `{}` has members using Kafka's group protocol: only they commit",
                    r.group
                ),
            ));
        }
        // A member commits only partitions it holds, including ones it is letting go of
        // until it acknowledges: a partition another member took over is that member's.
        let not_held: HashSet<(String, u32)> = {
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
                .map(|(topic, partition)| (topic.to_owned(), partition))
                .collect()
        };
        let topics = self
            .store_offsets(
                &r.group,
                &log,
                &not_held,
                &r.topics,
                &r.member_id,
                Negative::Refuse,
            )
            .await?;
        Ok(Response::CommitOffsets(ResultsResponse { topics }))
    }

    /// Stores committed offsets after the commit's fence was checked: each partition must
    /// exist and not be in `not_held` (partitions the committing member does not hold); a
    /// negative offset is refused or stored as `negative` says. Returns each partition's
    /// outcome, in request order.
    async fn store_offsets(
        &self,
        group: &str,
        log: &InternalLog,
        not_held: &HashSet<(String, u32)>,
        topics: &[TopicOffsets],
        member_id: &str,
        negative: Negative,
    ) -> Result<Vec<TopicResults>, WireError> {
        let catalog = self.catalog.snapshot();
        let mut records = Vec::new();
        let mut results = Vec::new();
        for t in topics {
            let known = catalog.topics.get(&t.topic).map(|m| m.partitions);
            let mut partitions = Vec::new();
            for p in &t.partitions {
                let (error, message) = match known {
                    Some(_) if not_held.contains(&(t.topic.clone(), p.partition)) => (
                        ErrorCode::StaleGeneration,
                        format!(
                            "{}/{} is not held by member {}: another member owns it now, \
                             or it never was this member's",
                            t.topic, p.partition, member_id
                        ),
                    ),
                    Some(n)
                        if p.partition < n && (p.offset >= 0 || negative == Negative::Store) =>
                    {
                        records.push((
                            offset_key(group, &t.topic, p.partition),
                            Some(p.offset.to_be_bytes().to_vec()),
                        ));
                        (ErrorCode::None, String::new())
                    }
                    Some(n) if p.partition < n => (
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
            let stored = offsets.entry(group.to_owned()).or_default();
            for (t, results) in topics.iter().zip(&results) {
                for (p, result) in t.partitions.iter().zip(&results.partitions) {
                    if result.error == ErrorCode::None {
                        stored.insert((t.topic.clone(), p.partition), p.offset);
                    }
                }
            }
        }
        let checkpoint = log.append(&records).await?;
        if checkpoint {
            // The commit itself is durable already; a failed checkpoint is retried later.
            if let Err(e) = self.checkpoint(bucket_of(group), log).await {
                tracing::warn!(%group, "offset log checkpoint failed: {e}");
            }
        }
        Ok(results)
    }

    /// Every offset committed by the groups this shard coordinates (for metrics).
    pub(crate) fn committed_offsets(&self) -> Vec<CommittedOffset> {
        let offsets = self.offsets.borrow();
        offsets
            .iter()
            .flat_map(|(group, committed)| {
                committed
                    .iter()
                    .map(move |((topic, partition), &offset)| CommittedOffset {
                        group: group.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                        offset,
                    })
            })
            .collect()
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
        if let Some(d) = self.classic.borrow().describe(group) {
            return Ok(self.describe_classic(group, d));
        }
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
        for (group, _state, _kind, members) in self.classic.borrow().list() {
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
                let (log, live) = InternalLog::open(dir, self.config.fsync, self.runs).await?;
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

/// The coordinator's side of Kafka's classic group protocol: requests run here, JoinGroup
/// and SyncGroup wait for their group's barrier.
impl GroupCoordinator {
    /// Hands the classic groups' ready answers to the requests waiting for them.
    fn deliver(&self) {
        let deliveries = self.classic.borrow_mut().take_deliveries();
        if deliveries.is_empty() {
            return;
        }
        let mut waiters = self.waiters.borrow_mut();
        for delivery in deliveries {
            let key = match &delivery {
                Delivery::Join {
                    group, member_id, ..
                } => (group.clone(), member_id.clone(), false),
                Delivery::Sync {
                    group, member_id, ..
                } => (group.clone(), member_id.clone(), true),
            };
            if let Some(queue) = waiters.get_mut(&key) {
                if let Some(waiter) = queue.pop_front() {
                    // A waiter whose client went away is gone; its answer is dropped.
                    waiter.send(delivery);
                }
                if queue.is_empty() {
                    waiters.remove(&key);
                }
            }
        }
    }

    /// Waits for the delivery a [`Step::Wait`] promised.
    async fn wait_for(
        &self,
        group: &str,
        member_id: String,
        sync: bool,
    ) -> Result<Delivery, ClassicError> {
        let (tx, rx) = oneshot();
        self.waiters
            .borrow_mut()
            .entry((group.to_owned(), member_id, sync))
            .or_default()
            .push_back(tx);
        self.deliver();
        // Every wait gets a delivery; a dropped sender would mean the coordinator is gone.
        rx.await.map_err(|_| ClassicError::RebalanceInProgress)
    }

    fn native_members(&self, group: &str) -> bool {
        self.groups
            .borrow()
            .describe(group)
            .is_some_and(|d| !d.members.is_empty())
    }

    pub(crate) async fn kafka_join(
        &self,
        group: &str,
        request: JoinRequest,
    ) -> Result<JoinResult, ClassicError> {
        if self.native_members(group) {
            return Err(ClassicError::InconsistentProtocol(format!(
                "group `{group}` has members using eventflow's native group protocol; use \
                 another group id or wait until they leave"
            )));
        }
        let client = request.client_id.clone();
        let step = self
            .classic
            .borrow_mut()
            .join(group, request, Instant::now());
        let result = match step {
            Step::Done(result) => {
                self.deliver();
                result
            }
            Step::Wait { member_id } => match self.wait_for(group, member_id, false).await? {
                Delivery::Join { result, .. } => result,
                Delivery::Sync { .. } => Err(ClassicError::RebalanceInProgress),
            },
        };
        if let Ok(joined) = &result {
            tracing::info!(
                %group,
                member = %joined.member_id,
                %client,
                generation = joined.generation,
                leader = joined.leader == joined.member_id,
                "kafka group member joined"
            );
        }
        result
    }

    /// Kafka SyncGroup: the leader's assignments in (`assignments`), this member's out.
    pub(crate) async fn kafka_sync(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
        protocol: Option<(&str, &str)>,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<SyncResult, ClassicError> {
        let step = self.classic.borrow_mut().sync(
            group,
            member_id,
            generation,
            protocol,
            assignments,
            Instant::now(),
        );
        match step {
            Step::Done(result) => {
                self.deliver();
                result
            }
            Step::Wait { member_id } => match self.wait_for(group, member_id, true).await? {
                Delivery::Sync { result, .. } => result,
                Delivery::Join { .. } => Err(ClassicError::RebalanceInProgress),
            },
        }
    }

    /// Kafka OffsetCommit, fenced by the classic protocol's rules.
    pub(crate) async fn kafka_commit(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
        topics: Vec<TopicOffsets>,
    ) -> Result<Vec<TopicResults>, KafkaGroupError> {
        let log = self.bucket(group).await?;
        if self.native_members(group) {
            return Err(ClassicError::UnknownMember.into());
        }
        self.classic
            .borrow()
            .check_commit(group, member_id, generation)?;
        Ok(self
            .store_offsets(
                group,
                &log,
                &HashSet::new(),
                &topics,
                member_id,
                Negative::Store,
            )
            .await?)
    }

    /// A Kafka group in the native describe's terms: state and protocol by Kafka's names,
    /// and for `consumer` groups each member's topics and partitions read from its
    /// subscription and assignment (left empty where they do not decode).
    fn describe_classic(&self, group: &str, d: ClassicDescription) -> DescribeGroupResponse {
        use crate::protocol::kafka::consumer::{assignment_partitions, subscription_topics};
        let consumer = d.protocol_type == "consumer";
        let members = d
            .members
            .into_iter()
            .map(|m| {
                let topics = consumer
                    .then(|| subscription_topics(&m.metadata))
                    .flatten()
                    .unwrap_or_default();
                let assignment = consumer
                    .then(|| assignment_partitions(&m.assignment))
                    .flatten()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(topic, ps)| TopicPartitions {
                        topic,
                        partitions: ps
                            .into_iter()
                            .filter_map(|p| u32::try_from(p).ok())
                            .collect(),
                    })
                    .collect();
                MemberDescription {
                    member_id: m.member_id,
                    client_id: m.client_id,
                    topics,
                    assignment,
                }
            })
            .collect();
        let offsets = by_topic(self.offsets.borrow().get(group).into_iter().flatten());
        DescribeGroupResponse {
            group: group.to_owned(),
            state: d.state.as_str().to_owned(),
            generation: u32::try_from(d.generation).unwrap_or(0),
            strategy: d.protocol_name,
            members,
            offsets,
        }
    }

    fn describe_any(&self, group: &str) -> GroupView {
        if let Some(d) = self.classic.borrow().describe(group) {
            return GroupView::Classic(d);
        }
        if let Some(d) = self.groups.borrow().describe(group) {
            return GroupView::Native(d);
        }
        if self.offsets.borrow().contains_key(group) {
            GroupView::OffsetsOnly
        } else {
            GroupView::Unknown
        }
    }

    pub(crate) async fn delete_any(&self, group: &str) -> Result<(), KafkaGroupError> {
        let classic = match self.classic.borrow_mut().delete(group) {
            Ok(()) => true,
            Err(ClassicError::UnknownGroup) => false,
            Err(e) => return Err(e.into()),
        };
        match self.delete(group).await {
            Err(e) if classic && e.code == ErrorCode::UnknownGroup => Ok(()),
            Err(e) => Err(e.into()),
            Ok(_) => Ok(()),
        }
    }

    /// Forgets the committed offsets of some partitions of a group no member subscribes to.
    pub(crate) async fn delete_offsets(
        &self,
        group: &str,
        topics: Vec<TopicPartitions>,
    ) -> Result<Vec<TopicResults>, KafkaGroupError> {
        let log = self.bucket(group).await?;
        let subscribed = self.subscribed_topics(group)?;
        if !self.offsets.borrow().contains_key(group) && subscribed.is_empty() {
            return Err(unknown_group(group).into());
        }
        let mut tombstones = Vec::new();
        let mut results = Vec::new();
        {
            let mut offsets = self.offsets.borrow_mut();
            let stored = offsets.get_mut(group);
            let mut stored = stored;
            for t in topics {
                let busy = subscribed.contains(&t.topic);
                let partitions = t
                    .partitions
                    .into_iter()
                    .map(|partition| {
                        let (error, message) = if busy {
                            (
                                ErrorCode::GroupNotEmpty,
                                format!("a member of the group subscribes to `{}`", t.topic),
                            )
                        } else {
                            if let Some(stored) = stored.as_deref_mut() {
                                if stored.remove(&(t.topic.clone(), partition)).is_some() {
                                    tombstones.push((offset_key(group, &t.topic, partition), None));
                                }
                            }
                            (ErrorCode::None, String::new())
                        };
                        PartitionResult {
                            partition,
                            error,
                            message,
                        }
                    })
                    .collect();
                results.push(TopicResults {
                    topic: t.topic,
                    partitions,
                });
            }
        }
        log.append(&tombstones).await?;
        Ok(results)
    }

    /// The topics the group's members subscribe to. A Kafka group whose protocol is not
    /// `consumer` cannot be read: with members, it is refused as not empty.
    fn subscribed_topics(&self, group: &str) -> Result<HashSet<String>, KafkaGroupError> {
        match self.describe_any(group) {
            GroupView::Classic(d) if d.members.is_empty() => Ok(HashSet::new()),
            GroupView::Classic(d) => {
                let mut topics = HashSet::new();
                for m in &d.members {
                    let decoded = (d.protocol_type == "consumer")
                        .then(|| crate::protocol::kafka::consumer::subscription_topics(&m.metadata))
                        .flatten();
                    match decoded {
                        Some(t) => topics.extend(t),
                        None => return Err(group_error_not_empty()),
                    }
                }
                Ok(topics)
            }
            GroupView::Native(d) => Ok(d.members.into_iter().flat_map(|m| m.topics).collect()),
            GroupView::OffsetsOnly | GroupView::Unknown => Ok(HashSet::new()),
        }
    }

    /// Kafka Heartbeat.
    pub(crate) fn kafka_heartbeat(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), ClassicError> {
        let result =
            self.classic
                .borrow_mut()
                .heartbeat(group, member_id, generation, Instant::now());
        self.deliver();
        result
    }

    /// Kafka LeaveGroup, for each member named.
    pub(crate) fn kafka_leave(
        &self,
        group: &str,
        members: &[String],
    ) -> Vec<Result<(), ClassicError>> {
        let now = Instant::now();
        let results = members
            .iter()
            .map(|member| {
                let left = self.classic.borrow_mut().leave(group, member, now);
                if left.is_ok() {
                    tracing::info!(%group, %member, "kafka group member left");
                }
                left
            })
            .collect();
        self.deliver();
        results
    }

    /// Kafka OffsetFetch: the committed offsets of the partitions named, or of every
    /// partition the group committed (`None`).
    pub(crate) async fn kafka_offsets(
        &self,
        group: String,
        topics: Option<Vec<TopicPartitions>>,
    ) -> Result<Vec<TopicOffsets>, WireError> {
        self.bucket(&group).await?;
        let request = FetchOffsetsRequest {
            group,
            topics: topics.unwrap_or_default(),
        };
        Ok(self.fetch_offsets(&request).topics)
    }

    /// Kafka DescribeGroups, for one group.
    pub(crate) async fn kafka_describe(&self, group: &str) -> Result<GroupView, WireError> {
        self.bucket(group).await?;
        Ok(self.describe_any(group))
    }

    /// Kafka ListGroups: the groups this shard coordinates, by Kafka's state names.
    pub(crate) async fn kafka_list(&self) -> Result<Vec<GroupListed>, WireError> {
        self.recover().await?;
        let mut listed: BTreeMap<String, GroupListed> = self
            .offsets
            .borrow()
            .keys()
            .map(|g| {
                let entry = GroupListed {
                    group: g.clone(),
                    state: "Empty",
                    protocol_type: "consumer".into(),
                };
                (g.clone(), entry)
            })
            .collect();
        for (group, members, _) in self.groups.borrow().list() {
            let state = if members == 0 { "Empty" } else { "Stable" };
            listed.insert(
                group.clone(),
                GroupListed {
                    group,
                    state,
                    protocol_type: "consumer".into(),
                },
            );
        }
        for (group, state, protocol_type, _) in self.classic.borrow().list() {
            listed.insert(
                group.clone(),
                GroupListed {
                    group,
                    state: state.as_str(),
                    protocol_type,
                },
            );
        }
        Ok(listed.into_values().collect())
    }
}

/// What a commit of a negative offset does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Negative {
    /// Refused with InvalidRequest: the native protocol commits positions, never negative.
    Refuse,
    /// Stored as it came, as Kafka's OffsetCommit does (it checks only the metadata's
    /// size). Clients read a negative offset back as "nothing committed" and start from
    /// their reset policy; kafkajs commits -2 or -1 when a consumer seeks to the earliest
    /// or latest offset (its admin `resetOffsets` does that), and refusing it crashes the
    /// consumer.
    Store,
}

fn group_error_not_empty() -> KafkaGroupError {
    ClassicError::NotEmpty.into()
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
pub(crate) fn offset_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + group.len() + topic.len());
    key.push(b'o');
    key.extend_from_slice(&(group.len() as u16).to_be_bytes());
    key.extend_from_slice(group.as_bytes());
    key.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    key.extend_from_slice(topic.as_bytes());
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

pub(crate) fn parse_offset_key(key: &Bytes) -> Option<(String, String, u32)> {
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
