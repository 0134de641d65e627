//! Kafka's classic group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) as a pure
//! state machine: the broker runs the rebalance barrier and relays the assignment that the
//! group's leader, a client, computes. The broker never reads the members' metadata or
//! assignments, so any protocol type works (`consumer` with the range, roundrobin or
//! cooperative-sticky assignors, and others such as Kafka Connect's).
//!
//! A group moves through Kafka's states:
//!
//! - **Empty**: no members. Committed offsets may outlive it.
//! - **PreparingRebalance**: the barrier. Every member must send JoinGroup again; the join
//!   completes when all have, or when the rebalance timeout passes (members that did not
//!   rejoin are removed). A group's first join waits `initial_delay` first, so that members
//!   starting together land in one generation.
//! - **CompletingRebalance**: the join completed and the generation advanced; every member
//!   got the generation and the leader also got every member's metadata. The leader's
//!   SyncGroup carries the assignments, which every member's SyncGroup then receives.
//! - **Stable**: members heartbeat; a join from a new member, a leave, a changed
//!   subscription or an expired session starts the next rebalance.
//!
//! Requests that must wait for the barrier return [`Step::Wait`]; when the barrier
//! completes, the answers to every waiting request come out of [`ClassicGroups::take_deliveries`].
//! Nothing here does I/O or reads the clock: the server passes `now` in and calls
//! [`ClassicGroups::tick`] regularly.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::membership::SessionLimits;

/// A classic group's state, as Kafka names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassicState {
    /// No members.
    Empty,
    /// Waiting for every member to rejoin.
    PreparingRebalance,
    /// Waiting for the leader's assignment.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
}

impl ClassicState {
    /// The name Kafka's DescribeGroups and ListGroups use.
    pub fn as_str(self) -> &'static str {
        match self {
            ClassicState::Empty => "Empty",
            ClassicState::PreparingRebalance => "PreparingRebalance",
            ClassicState::CompletingRebalance => "CompletingRebalance",
            ClassicState::Stable => "Stable",
        }
    }
}

impl fmt::Display for ClassicState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a classic group request was refused. Each variant is one Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassicError {
    /// The member left, expired or never joined (UNKNOWN_MEMBER_ID).
    #[error("unknown member: it left, its session expired, or it never joined")]
    UnknownMember,
    /// The request's generation is not the group's (ILLEGAL_GENERATION).
    #[error("generation {sent} is not the group's current generation {current}: rejoin")]
    IllegalGeneration {
        /// The generation sent.
        sent: i32,
        /// The group's generation.
        current: i32,
    },
    /// The group is rebalancing: the member must rejoin (REBALANCE_IN_PROGRESS).
    #[error("the group is rebalancing: rejoin")]
    RebalanceInProgress,
    /// The member's protocol type or protocols do not match the group's
    /// (INCONSISTENT_GROUP_PROTOCOL).
    #[error("{0}")]
    InconsistentProtocol(String),
    /// The session timeout is outside the broker's limits (INVALID_SESSION_TIMEOUT).
    #[error("session timeout must be between {min:?} and {max:?}")]
    InvalidSessionTimeout {
        /// The shortest accepted.
        min: Duration,
        /// The longest accepted.
        max: Duration,
    },
    /// A join without a member id at a version that requires one: the client must join
    /// again with this id (MEMBER_ID_REQUIRED).
    #[error("join again with the member id the broker assigned")]
    MemberIdRequired(String),
    /// The group has members (NON_EMPTY_GROUP).
    #[error("the group has members: wait until they leave or their sessions expire")]
    NotEmpty,
    /// The group is not known (GROUP_ID_NOT_FOUND).
    #[error("the group does not exist")]
    UnknownGroup,
}

/// A JoinGroup request, as the state machine needs it.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// The member's id; empty for a member joining for the first time.
    pub member_id: String,
    /// The static member id (`group.instance.id`), kept for describe only: static
    /// membership is not honored, such members are treated as dynamic.
    pub instance_id: Option<String>,
    /// The client's id.
    pub client_id: String,
    /// The client's address, as describe shows it.
    pub client_host: String,
    /// The protocol type, e.g. `consumer`.
    pub protocol_type: String,
    /// The protocols the member supports, most preferred first, each with its metadata.
    pub protocols: Vec<(String, Bytes)>,
    /// How long the member may go without a heartbeat.
    pub session_timeout: Duration,
    /// How long the group waits for the member to rejoin during a rebalance.
    pub rebalance_timeout: Duration,
    /// A join without a member id is answered [`ClassicError::MemberIdRequired`] (JoinGroup
    /// v4 and later).
    pub require_known_member: bool,
}

/// What a member learns when a join completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResult {
    /// The new generation.
    pub generation: i32,
    /// The group's protocol type.
    pub protocol_type: String,
    /// The protocol the group chose.
    pub protocol_name: String,
    /// The leader's member id.
    pub leader: String,
    /// The member's own id.
    pub member_id: String,
    /// Every member and its metadata for the chosen protocol, for the leader only.
    pub members: Vec<JoinedMember>,
}

/// A member as the leader sees it in its JoinGroup response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    /// Its id.
    pub member_id: String,
    /// Its static id, if it gave one.
    pub instance_id: Option<String>,
    /// Its metadata for the chosen protocol.
    pub metadata: Bytes,
}

/// What a member receives from SyncGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResult {
    /// The group's protocol type.
    pub protocol_type: String,
    /// The group's protocol.
    pub protocol_name: String,
    /// The member's assignment, as the leader encoded it.
    pub assignment: Bytes,
}

/// The answer to a request that returned [`Step::Wait`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A JoinGroup's answer.
    Join {
        /// The group.
        group: String,
        /// The member that asked.
        member_id: String,
        /// Its answer.
        result: Result<JoinResult, ClassicError>,
    },
    /// A SyncGroup's answer.
    Sync {
        /// The group.
        group: String,
        /// The member that asked.
        member_id: String,
        /// Its answer.
        result: Result<SyncResult, ClassicError>,
    },
}

/// A request's outcome: answered now, or after the barrier (from
/// [`ClassicGroups::take_deliveries`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<T> {
    /// The answer.
    Done(Result<T, ClassicError>),
    /// The answer comes as a [`Delivery`] for this member.
    Wait {
        /// The member the delivery will name (a new member's id is assigned here).
        member_id: String,
    },
}

/// A member as shown by describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicMemberDescription {
    /// Its id.
    pub member_id: String,
    /// Its static id, if it gave one.
    pub instance_id: Option<String>,
    /// Its client id.
    pub client_id: String,
    /// Its address.
    pub client_host: String,
    /// Its metadata for the group's protocol (empty before the first join completes).
    pub metadata: Bytes,
    /// Its assignment (empty unless the group is stable).
    pub assignment: Bytes,
}

/// A group as shown by describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicDescription {
    /// Its state.
    pub state: ClassicState,
    /// Its generation.
    pub generation: i32,
    /// Its protocol type (empty until a first join completes; kept when the group empties).
    pub protocol_type: String,
    /// Its chosen protocol (empty unless a join completed).
    pub protocol_name: String,
    /// Its members, by id.
    pub members: Vec<ClassicMemberDescription>,
}

#[derive(Debug)]
struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    assignment: Bytes,
    /// Its JoinGroup waits for the barrier.
    awaiting_join: bool,
    /// Its SyncGroup waits for the leader's.
    awaiting_sync: bool,
    /// Sent SyncGroup in this generation (members that never do are removed).
    synced: bool,
    last_seen: Instant,
}

impl Member {
    fn alive(&self, now: Instant) -> bool {
        self.awaiting_join || self.awaiting_sync || now < self.last_seen + self.session_timeout
    }

    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn same_protocols(&self, request: &JoinRequest) -> bool {
        self.protocol_type == request.protocol_type && self.protocols == request.protocols
    }
}

#[derive(Debug)]
struct Group {
    state: ClassicState,
    generation: i32,
    protocol_type: String,
    protocol_name: String,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Ids handed out with MEMBER_ID_REQUIRED, until the member joins with it or the
    /// deadline passes.
    pending: BTreeMap<String, Instant>,
    /// When the current barrier gives up on members that have not rejoined (or, in
    /// CompletingRebalance, on members that have not sent SyncGroup).
    deadline: Option<Instant>,
    /// A first join waits until then before completing.
    not_before: Option<Instant>,
}

impl Group {
    fn new() -> Group {
        Group {
            state: ClassicState::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol_name: String::new(),
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            deadline: None,
            not_before: None,
        }
    }

    /// The protocols every member supports (all of the request's when the group is empty).
    fn check_protocols(&self, member_id: &str, request: &JoinRequest) -> Result<(), ClassicError> {
        if request.protocol_type.is_empty() || request.protocols.is_empty() {
            return Err(ClassicError::InconsistentProtocol(
                "a join must name a protocol type and at least one protocol".into(),
            ));
        }
        let others: Vec<&Member> = self
            .members
            .iter()
            .filter(|(id, _)| id.as_str() != member_id)
            .map(|(_, m)| m)
            .collect();
        let Some(first) = others.first() else {
            return Ok(());
        };
        if first.protocol_type != request.protocol_type {
            return Err(ClassicError::InconsistentProtocol(format!(
                "the group's members use protocol type `{}`, this member `{}`",
                first.protocol_type, request.protocol_type
            )));
        }
        let common = request.protocols.iter().any(|(name, _)| {
            others
                .iter()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        });
        if !common {
            return Err(ClassicError::InconsistentProtocol(format!(
                "none of this member's protocols ({}) is supported by every member of the group",
                request
                    .protocols
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(())
    }

    /// The protocol the members vote for: among those every member supports, the one most
    /// members prefer most (ties: the first by name).
    fn choose_protocol(&self) -> String {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for member in self.members.values() {
            let supported_by_all = member.protocols.iter().find(|(name, _)| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            });
            if let Some((name, _)) = supported_by_all {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        let mut best: Option<(&str, usize)> = None;
        for (name, count) in votes {
            if best.is_none_or(|(_, c)| count > c) {
                best = Some((name, count));
            }
        }
        best.map(|(name, _)| name.to_owned()).unwrap_or_default()
    }

    fn join_result(&self, member_id: &str) -> JoinResult {
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .iter()
                .map(|(id, m)| JoinedMember {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    metadata: m.metadata(&self.protocol_name),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResult {
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader,
            member_id: member_id.to_owned(),
            members,
        }
    }

    fn sync_result(&self, member_id: &str) -> SyncResult {
        SyncResult {
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment: self
                .members
                .get(member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        }
    }

    fn rebalance_timeout(&self) -> Duration {
        self.members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default()
    }
}

/// All classic groups coordinated by one shard.
#[derive(Debug)]
pub struct ClassicGroups {
    limits: SessionLimits,
    initial_delay: Duration,
    groups: BTreeMap<String, Group>,
    deliveries: Vec<Delivery>,
    /// Members dropped by a barrier they did not rejoin in time, for [`ClassicGroups::tick`]
    /// to report.
    dropped: Vec<(String, String)>,
    members_created: u64,
    boot: u64,
}

impl ClassicGroups {
    /// No groups yet. Session timeouts must be within `limits`; a group's first join waits
    /// `initial_delay` for more members; member ids carry `boot` (see
    /// `membership::Groups::with_boot_id`).
    pub fn new(limits: SessionLimits, initial_delay: Duration, boot: u64) -> ClassicGroups {
        ClassicGroups {
            limits,
            initial_delay,
            groups: BTreeMap::new(),
            deliveries: Vec::new(),
            dropped: Vec::new(),
            members_created: 0,
            boot,
        }
    }

    /// The answers to waiting requests that became ready.
    pub fn take_deliveries(&mut self) -> Vec<Delivery> {
        std::mem::take(&mut self.deliveries)
    }

    /// Whether the group has members (or members about to join), so that it belongs to this
    /// protocol.
    pub fn is_active(&self, group: &str) -> bool {
        self.groups
            .get(group)
            .is_some_and(|g| !g.members.is_empty() || !g.pending.is_empty())
    }

    /// JoinGroup.
    pub fn join(&mut self, group_id: &str, request: JoinRequest, now: Instant) -> Step<JoinResult> {
        if !(self.limits.min..=self.limits.max).contains(&request.session_timeout) {
            return Step::Done(Err(ClassicError::InvalidSessionTimeout {
                min: self.limits.min,
                max: self.limits.max,
            }));
        }
        if !request.member_id.is_empty() && !self.groups.contains_key(group_id) {
            return Step::Done(Err(ClassicError::UnknownMember));
        }
        let new_id = request
            .member_id
            .is_empty()
            .then(|| self.new_member_id(&request.client_id));
        let group = self
            .groups
            .entry(group_id.to_owned())
            .or_insert_with(Group::new);
        if let Err(e) = group.check_protocols(&request.member_id, &request) {
            return Step::Done(Err(e));
        }
        if let Some(id) = new_id {
            if request.require_known_member {
                group
                    .pending
                    .insert(id.clone(), now + request.session_timeout);
                return Step::Done(Err(ClassicError::MemberIdRequired(id)));
            }
            return self.add_member(group_id, id, request, now);
        }
        let member_id = request.member_id.clone();
        if group.pending.remove(&member_id).is_some() {
            return self.add_member(group_id, member_id, request, now);
        }
        let Some(member) = group.members.get_mut(&member_id) else {
            return Step::Done(Err(ClassicError::UnknownMember));
        };
        member.last_seen = now;
        let unchanged = member.same_protocols(&request);
        match group.state {
            ClassicState::CompletingRebalance | ClassicState::Stable
                if unchanged
                    && (group.state == ClassicState::CompletingRebalance
                        || group.leader.as_deref() != Some(member_id.as_str())) =>
            {
                // Nothing changed: the member only missed its join response.
                Step::Done(Ok(group.join_result(&member_id)))
            }
            _ => {
                if let Some(old) = group.members.get(&member_id) {
                    if old.awaiting_join {
                        // A second join while the first waits: the first is superseded.
                        self.deliveries.push(Delivery::Join {
                            group: group_id.to_owned(),
                            member_id: member_id.clone(),
                            result: Err(ClassicError::RebalanceInProgress),
                        });
                    }
                }
                let group = self.groups.get_mut(group_id).expect("looked up above");
                update_member(group.members.get_mut(&member_id).expect("known"), request);
                self.prepare_rebalance(group_id, now);
                self.wait_join(group_id, member_id, now)
            }
        }
    }

    fn add_member(
        &mut self,
        group_id: &str,
        member_id: String,
        request: JoinRequest,
        now: Instant,
    ) -> Step<JoinResult> {
        let group = self.groups.get_mut(group_id).expect("created by join");
        let first = group.members.is_empty();
        group.members.insert(
            member_id.clone(),
            Member {
                instance_id: request.instance_id,
                client_id: request.client_id,
                client_host: request.client_host,
                protocol_type: request.protocol_type,
                protocols: request.protocols,
                session_timeout: request.session_timeout,
                rebalance_timeout: request.rebalance_timeout,
                assignment: Bytes::new(),
                awaiting_join: false,
                awaiting_sync: false,
                synced: false,
                last_seen: now,
            },
        );
        if first && group.state == ClassicState::Empty {
            group.not_before = Some(now + self.initial_delay);
        }
        self.prepare_rebalance(group_id, now);
        self.wait_join(group_id, member_id, now)
    }

    fn wait_join(&mut self, group_id: &str, member_id: String, now: Instant) -> Step<JoinResult> {
        let group = self.groups.get_mut(group_id).expect("joined");
        group
            .members
            .get_mut(&member_id)
            .expect("joined")
            .awaiting_join = true;
        self.try_complete_join(group_id, now);
        Step::Wait { member_id }
    }

    /// Starts a rebalance, unless one is under way. Members waiting for their SyncGroup
    /// answer are told to rejoin.
    fn prepare_rebalance(&mut self, group_id: &str, now: Instant) {
        let Some(group) = self.groups.get_mut(group_id) else {
            return;
        };
        if group.state == ClassicState::PreparingRebalance {
            return;
        }
        for (id, member) in &mut group.members {
            if member.awaiting_sync {
                member.awaiting_sync = false;
                self.deliveries.push(Delivery::Sync {
                    group: group_id.to_owned(),
                    member_id: id.clone(),
                    result: Err(ClassicError::RebalanceInProgress),
                });
            }
            member.assignment = Bytes::new();
        }
        group.state = ClassicState::PreparingRebalance;
        group.deadline = Some(now + group.rebalance_timeout());
    }

    /// Completes the barrier if every member rejoined (and a first join's delay passed), or
    /// if the rebalance deadline passed (dropping those that did not rejoin).
    fn try_complete_join(&mut self, group_id: &str, now: Instant) {
        let Some(group) = self.groups.get_mut(group_id) else {
            return;
        };
        if group.state != ClassicState::PreparingRebalance {
            return;
        }
        let all_joined = group.members.values().all(|m| m.awaiting_join);
        let delayed = group.not_before.is_some_and(|t| now < t);
        let timed_out = group.deadline.is_some_and(|t| now >= t);
        if !(timed_out || all_joined && !delayed) {
            return;
        }
        let late: Vec<String> = group
            .members
            .iter()
            .filter(|(_, m)| !m.awaiting_join)
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            group.members.remove(&id);
            self.dropped.push((group_id.to_owned(), id));
        }
        group.not_before = None;
        group.generation += 1;
        if group.members.is_empty() {
            // The protocol type stays, as in Kafka: an empty consumer group is still a
            // consumer group (ListGroups and DescribeGroups say so, as they do once the
            // group is forgotten and only its committed offsets are left).
            group.state = ClassicState::Empty;
            group.protocol_name.clear();
            group.leader = None;
            group.deadline = None;
            return;
        }
        group.protocol_type = group
            .members
            .values()
            .next()
            .map(|m| m.protocol_type.clone())
            .unwrap_or_default();
        group.protocol_name = group.choose_protocol();
        if !group
            .leader
            .as_ref()
            .is_some_and(|l| group.members.contains_key(l))
        {
            group.leader = group.members.keys().next().cloned();
        }
        group.state = ClassicState::CompletingRebalance;
        group.deadline = Some(now + group.rebalance_timeout());
        let ids: Vec<String> = group.members.keys().cloned().collect();
        for id in ids {
            let result = group.join_result(&id);
            let member = group.members.get_mut(&id).expect("listed");
            member.awaiting_join = false;
            member.synced = false;
            member.last_seen = now;
            self.deliveries.push(Delivery::Join {
                group: group_id.to_owned(),
                member_id: id,
                result: Ok(result),
            });
        }
    }

    /// SyncGroup. `assignments` is the leader's (empty from the others); `protocol` is the
    /// type and name the member believes the group has (SyncGroup v5), checked if given.
    pub fn sync(
        &mut self,
        group_id: &str,
        member_id: &str,
        generation: i32,
        protocol: Option<(&str, &str)>,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Step<SyncResult> {
        let Some(group) = self.groups.get_mut(group_id) else {
            return Step::Done(Err(ClassicError::UnknownMember));
        };
        let Some(member) = group.members.get_mut(member_id) else {
            return Step::Done(Err(ClassicError::UnknownMember));
        };
        if generation != group.generation {
            return Step::Done(Err(ClassicError::IllegalGeneration {
                sent: generation,
                current: group.generation,
            }));
        }
        if let Some((kind, name)) = protocol {
            if kind != group.protocol_type || name != group.protocol_name {
                return Step::Done(Err(ClassicError::InconsistentProtocol(format!(
                    "the group uses protocol `{}` of type `{}`",
                    group.protocol_name, group.protocol_type
                ))));
            }
        }
        member.last_seen = now;
        match group.state {
            ClassicState::Empty => Step::Done(Err(ClassicError::UnknownMember)),
            ClassicState::PreparingRebalance => Step::Done(Err(ClassicError::RebalanceInProgress)),
            ClassicState::Stable => Step::Done(Ok(group.sync_result(member_id))),
            ClassicState::CompletingRebalance => {
                member.awaiting_sync = true;
                member.synced = true;
                if group.leader.as_deref() == Some(member_id) {
                    let mut assignments: BTreeMap<String, Bytes> =
                        assignments.into_iter().collect();
                    for (id, m) in &mut group.members {
                        m.assignment = assignments.remove(id).unwrap_or_default();
                    }
                    group.state = ClassicState::Stable;
                    group.deadline = None;
                    let waiting: Vec<String> = group
                        .members
                        .iter()
                        .filter(|(_, m)| m.awaiting_sync)
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in waiting {
                        let result = group.sync_result(&id);
                        let m = group.members.get_mut(&id).expect("listed");
                        m.awaiting_sync = false;
                        m.last_seen = now;
                        self.deliveries.push(Delivery::Sync {
                            group: group_id.to_owned(),
                            member_id: id,
                            result: Ok(result),
                        });
                    }
                }
                Step::Wait {
                    member_id: member_id.to_owned(),
                }
            }
        }
    }

    /// Heartbeat: renews the member's session and tells it whether to rejoin.
    pub fn heartbeat(
        &mut self,
        group_id: &str,
        member_id: &str,
        generation: i32,
        now: Instant,
    ) -> Result<(), ClassicError> {
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(ClassicError::UnknownMember)?;
        let member = group
            .members
            .get_mut(member_id)
            .ok_or(ClassicError::UnknownMember)?;
        if generation != group.generation {
            return Err(ClassicError::IllegalGeneration {
                sent: generation,
                current: group.generation,
            });
        }
        member.last_seen = now;
        match group.state {
            ClassicState::PreparingRebalance => Err(ClassicError::RebalanceInProgress),
            ClassicState::Empty => Err(ClassicError::UnknownMember),
            ClassicState::CompletingRebalance | ClassicState::Stable => Ok(()),
        }
    }

    /// LeaveGroup for one member: the others rebalance.
    pub fn leave(
        &mut self,
        group_id: &str,
        member_id: &str,
        now: Instant,
    ) -> Result<(), ClassicError> {
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(ClassicError::UnknownMember)?;
        if group.pending.remove(member_id).is_some() {
            return Ok(());
        }
        self.remove_member(group_id, member_id, now)
    }

    fn remove_member(
        &mut self,
        group_id: &str,
        member_id: &str,
        now: Instant,
    ) -> Result<(), ClassicError> {
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(ClassicError::UnknownMember)?;
        let member = group
            .members
            .remove(member_id)
            .ok_or(ClassicError::UnknownMember)?;
        if member.awaiting_join {
            self.deliveries.push(Delivery::Join {
                group: group_id.to_owned(),
                member_id: member_id.to_owned(),
                result: Err(ClassicError::UnknownMember),
            });
        }
        if member.awaiting_sync {
            self.deliveries.push(Delivery::Sync {
                group: group_id.to_owned(),
                member_id: member_id.to_owned(),
                result: Err(ClassicError::UnknownMember),
            });
        }
        self.prepare_rebalance(group_id, now);
        self.try_complete_join(group_id, now);
        Ok(())
    }

    /// Expires sessions, pending member ids and barriers whose time is up. Returns the
    /// `(group, member)` pairs removed, for logging.
    pub fn tick(&mut self, now: Instant) -> Vec<(String, String)> {
        let mut removed = Vec::new();
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            let group = self.groups.get_mut(&name).expect("listed");
            group.pending.retain(|_, deadline| now < *deadline);
            let mut dead: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| !m.alive(now))
                .map(|(id, _)| id.clone())
                .collect();
            if group.state == ClassicState::CompletingRebalance
                && group.deadline.is_some_and(|t| now >= t)
            {
                // Members that never sent SyncGroup in time.
                dead.extend(
                    group
                        .members
                        .iter()
                        .filter(|(_, m)| !m.synced)
                        .map(|(id, _)| id.clone()),
                );
                dead.sort();
                dead.dedup();
            }
            for id in dead {
                if self.remove_member(&name, &id, now).is_ok() {
                    removed.push((name.clone(), id));
                }
            }
            self.try_complete_join(&name, now);
            removed.append(&mut self.dropped);
            let group = self.groups.get(&name).expect("listed");
            if group.state == ClassicState::Empty && group.pending.is_empty() {
                // Nothing to remember: the generation restarts, as after a delete.
                self.groups.remove(&name);
            }
        }
        removed
    }

    /// Whether an offset commit may proceed, by Kafka's rules: generation -1 without a
    /// member id to a group without members (a standalone commit); otherwise a member of the
    /// current generation, outside the window where the leader's assignment is awaited.
    pub fn check_commit(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), ClassicError> {
        let group = self.groups.get(group_id);
        let empty = group.is_none_or(|g| g.members.is_empty());
        if generation < 0 && empty {
            return Ok(());
        }
        let Some(group) = group else {
            return Err(ClassicError::UnknownMember);
        };
        if group.state == ClassicState::CompletingRebalance {
            return Err(ClassicError::RebalanceInProgress);
        }
        if !group.members.contains_key(member_id) {
            return Err(ClassicError::UnknownMember);
        }
        if generation != group.generation {
            return Err(ClassicError::IllegalGeneration {
                sent: generation,
                current: group.generation,
            });
        }
        Ok(())
    }

    /// Forgets a group without members.
    pub fn delete(&mut self, group_id: &str) -> Result<(), ClassicError> {
        let group = self
            .groups
            .get(group_id)
            .ok_or(ClassicError::UnknownGroup)?;
        if !group.members.is_empty() {
            return Err(ClassicError::NotEmpty);
        }
        self.groups.remove(group_id);
        Ok(())
    }

    /// The group as describe shows it, if known.
    pub fn describe(&self, group_id: &str) -> Option<ClassicDescription> {
        let group = self.groups.get(group_id)?;
        Some(ClassicDescription {
            state: group.state,
            generation: group.generation,
            protocol_type: group.protocol_type.clone(),
            protocol_name: group.protocol_name.clone(),
            members: group
                .members
                .iter()
                .map(|(id, m)| ClassicMemberDescription {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata(&group.protocol_name),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// Every known group as `(name, state, protocol type, members)`.
    pub fn list(&self) -> Vec<(String, ClassicState, String, usize)> {
        self.groups
            .iter()
            .map(|(name, g)| {
                let kind = g
                    .members
                    .values()
                    .next()
                    .map_or_else(|| g.protocol_type.clone(), |m| m.protocol_type.clone());
                (name.clone(), g.state, kind, g.members.len())
            })
            .collect()
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        self.members_created += 1;
        let prefix = if client_id.is_empty() {
            "member"
        } else {
            client_id
        };
        format!("{prefix}-{:x}-k{}", self.boot, self.members_created)
    }
}

fn update_member(member: &mut Member, request: JoinRequest) {
    member.instance_id = request.instance_id;
    member.client_id = request.client_id;
    member.client_host = request.client_host;
    member.protocol_type = request.protocol_type;
    member.protocols = request.protocols;
    member.session_timeout = request.session_timeout;
    member.rebalance_timeout = request.rebalance_timeout;
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn groups() -> ClassicGroups {
        let limits = SessionLimits {
            min: SECOND,
            max: 300 * SECOND,
        };
        ClassicGroups::new(limits, 3 * SECOND, 0)
    }

    fn request(member_id: &str, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            member_id: member_id.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(format!("{member_id}:{p}"))))
                .collect(),
            session_timeout: 10 * SECOND,
            rebalance_timeout: 30 * SECOND,
            require_known_member: true,
        }
    }

    /// Joins a new member the way a v4+ client does (the member id comes back first).
    fn join_new(g: &mut ClassicGroups, protocols: &[&str], now: Instant) -> String {
        let Step::Done(Err(ClassicError::MemberIdRequired(id))) =
            g.join("g", request("", protocols), now)
        else {
            panic!("a v4 join without an id must be asked for one");
        };
        let step = g.join("g", request(&id, protocols), now);
        assert_eq!(
            step,
            Step::Wait {
                member_id: id.clone()
            }
        );
        id
    }

    fn joined(deliveries: &[Delivery], member: &str) -> JoinResult {
        deliveries
            .iter()
            .find_map(|d| match d {
                Delivery::Join {
                    member_id, result, ..
                } if member_id == member => Some(result.clone().unwrap()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no join delivery for {member}: {deliveries:?}"))
    }

    fn synced(deliveries: &[Delivery], member: &str) -> Result<SyncResult, ClassicError> {
        deliveries
            .iter()
            .find_map(|d| match d {
                Delivery::Sync {
                    member_id, result, ..
                } if member_id == member => Some(result.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no sync delivery for {member}: {deliveries:?}"))
    }

    /// Two members join within the first delay, the leader assigns, both get their share.
    fn stable_pair(g: &mut ClassicGroups, t0: Instant) -> (String, String) {
        let a = join_new(g, &["range"], t0);
        let b = join_new(g, &["range"], t0 + SECOND);
        g.tick(t0 + 2 * SECOND);
        assert!(
            g.take_deliveries().is_empty(),
            "the first join waits its delay"
        );
        g.tick(t0 + 3 * SECOND);
        let d = g.take_deliveries();
        let (ja, jb) = (joined(&d, &a), joined(&d, &b));
        assert_eq!((ja.generation, jb.generation), (1, 1));
        assert_eq!(ja.leader, a);
        assert_eq!(ja.members.len(), 2, "the leader sees every member");
        assert_eq!(ja.members[1].metadata, Bytes::from(format!("{b}:range")));
        assert!(jb.members.is_empty(), "followers see none");
        assert_eq!(ja.protocol_name, "range");
        let t = t0 + 3 * SECOND;
        assert_eq!(
            g.sync("g", &b, 1, Some(("consumer", "range")), vec![], t),
            Step::Wait {
                member_id: b.clone()
            }
        );
        assert!(
            g.take_deliveries().is_empty(),
            "followers wait for the leader"
        );
        let plan = vec![
            (a.clone(), Bytes::from_static(b"A")),
            (b.clone(), Bytes::from_static(b"B")),
        ];
        assert_eq!(
            g.sync("g", &a, 1, None, plan, t),
            Step::Wait {
                member_id: a.clone()
            }
        );
        let d = g.take_deliveries();
        assert_eq!(synced(&d, &a).unwrap().assignment, Bytes::from_static(b"A"));
        assert_eq!(synced(&d, &b).unwrap().assignment, Bytes::from_static(b"B"));
        assert_eq!(g.describe("g").unwrap().state, ClassicState::Stable);
        (a, b)
    }

    #[test]
    fn members_join_behind_the_barrier_and_the_leader_assigns() {
        let mut g = groups();
        let t0 = Instant::now();
        let (a, b) = stable_pair(&mut g, t0);
        let t = t0 + 4 * SECOND;
        assert_eq!(g.heartbeat("g", &a, 1, t), Ok(()));
        // A late SyncGroup in a stable group gets the member's assignment at once.
        assert_eq!(
            g.sync("g", &b, 1, None, vec![], t),
            Step::Done(Ok(SyncResult {
                protocol_type: "consumer".into(),
                protocol_name: "range".into(),
                assignment: Bytes::from_static(b"B"),
            }))
        );
        assert_eq!(
            g.heartbeat("g", &a, 0, t),
            Err(ClassicError::IllegalGeneration {
                sent: 0,
                current: 1
            })
        );
        assert_eq!(
            g.heartbeat("g", "nobody", 1, t),
            Err(ClassicError::UnknownMember)
        );
    }

    #[test]
    fn a_new_member_makes_everyone_rejoin_and_the_generation_advance() {
        let mut g = groups();
        let t0 = Instant::now();
        let (a, b) = stable_pair(&mut g, t0);
        let t = t0 + 5 * SECOND;
        let c = join_new(&mut g, &["range"], t);
        assert_eq!(
            g.heartbeat("g", &a, 1, t),
            Err(ClassicError::RebalanceInProgress)
        );
        assert_eq!(
            g.check_commit("g", &a, 1),
            Ok(()),
            "members commit before they rejoin"
        );
        assert_eq!(
            g.join("g", request(&a, &["range"]), t),
            Step::Wait {
                member_id: a.clone()
            }
        );
        assert!(g.take_deliveries().is_empty(), "b has not rejoined yet");
        assert_eq!(
            g.join("g", request(&b, &["range"]), t),
            Step::Wait {
                member_id: b.clone()
            }
        );
        let d = g.take_deliveries();
        assert_eq!(d.len(), 3, "{d:?}");
        assert_eq!(joined(&d, &c).generation, 2);
        assert_eq!(joined(&d, &a).leader, a, "the leader stays the leader");
        assert_eq!(
            g.check_commit("g", &a, 2),
            Err(ClassicError::RebalanceInProgress),
            "no commits while the assignment is awaited"
        );
    }

    #[test]
    fn a_member_that_does_not_rejoin_in_time_is_removed() {
        let mut g = groups();
        let t0 = Instant::now();
        let (a, b) = stable_pair(&mut g, t0);
        let t = t0 + 5 * SECOND;
        assert_eq!(g.leave("g", &b, t), Ok(()));
        // b left: a alone must rejoin.
        assert_eq!(
            g.heartbeat("g", &a, 1, t),
            Err(ClassicError::RebalanceInProgress)
        );
        let c = join_new(&mut g, &["range"], t);
        // a keeps heartbeating but never rejoins: the rebalance timeout (30 s) drops it.
        for s in 1..30 {
            let _ = g.heartbeat("g", &a, 1, t + s * SECOND);
            g.tick(t + s * SECOND);
        }
        assert!(g.take_deliveries().is_empty());
        let removed = g.tick(t + 30 * SECOND);
        assert_eq!(removed, vec![("g".to_string(), a.clone())]);
        let d = g.take_deliveries();
        let jc = joined(&d, &c);
        assert_eq!((jc.generation, jc.leader.as_str()), (2, c.as_str()));
        assert_eq!(g.describe("g").unwrap().members.len(), 1);
        assert_eq!(g.heartbeat("g", &a, 1, t), Err(ClassicError::UnknownMember));
    }

    #[test]
    fn silent_members_expire_and_the_last_one_out_empties_the_group() {
        let mut g = groups();
        let t0 = Instant::now();
        let (a, b) = stable_pair(&mut g, t0);
        let t = t0 + 3 * SECOND;
        // b heartbeats, a does not: after a's 10 s session, a is removed.
        for s in 1..=10 {
            assert_eq!(g.heartbeat("g", &b, 1, t + s * SECOND), Ok(()));
        }
        assert_eq!(g.tick(t + 10 * SECOND), vec![("g".to_string(), a.clone())]);
        assert_eq!(
            g.describe("g").unwrap().state,
            ClassicState::PreparingRebalance
        );
        assert_eq!(
            g.join("g", request(&b, &["range"]), t + 10 * SECOND),
            Step::Wait {
                member_id: b.clone()
            }
        );
        let d = g.take_deliveries();
        assert_eq!(joined(&d, &b).generation, 2);
        assert_eq!(g.leave("g", &b, t + 11 * SECOND), Ok(()));
        let empty = g.describe("g").unwrap();
        assert_eq!(empty.state, ClassicState::Empty);
        assert_eq!(
            (empty.protocol_type.as_str(), empty.protocol_name.as_str()),
            ("consumer", ""),
            "an empty group keeps its protocol type, not its protocol"
        );
        assert_eq!(
            g.list(),
            vec![(
                "g".to_string(),
                ClassicState::Empty,
                "consumer".to_string(),
                0
            )]
        );
        assert!(!g.is_active("g"));
        assert_eq!(
            g.check_commit("g", "", -1),
            Ok(()),
            "standalone commits to an empty group"
        );
        g.tick(t + 12 * SECOND);
        assert!(g.describe("g").is_none(), "an empty group is forgotten");
    }

    #[test]
    fn the_leader_that_never_assigns_is_removed_and_followers_are_told_to_rejoin() {
        let mut g = groups();
        let t0 = Instant::now();
        let a = join_new(&mut g, &["range"], t0);
        let b = join_new(&mut g, &["range"], t0);
        g.tick(t0 + 3 * SECOND);
        g.take_deliveries();
        let t = t0 + 3 * SECOND;
        assert_eq!(
            g.sync("g", &b, 1, None, vec![], t),
            Step::Wait {
                member_id: b.clone()
            }
        );
        assert_eq!(g.heartbeat("g", &b, 1, t), Ok(()));
        // The leader a never sends SyncGroup: after the rebalance timeout it is removed, and
        // b's waiting SyncGroup is answered REBALANCE_IN_PROGRESS.
        let removed = g.tick(t + 30 * SECOND);
        assert_eq!(removed, vec![("g".to_string(), a.clone())]);
        let d = g.take_deliveries();
        assert_eq!(synced(&d, &b), Err(ClassicError::RebalanceInProgress));
    }

    #[test]
    fn protocols_must_agree_and_the_most_preferred_common_one_wins() {
        let mut g = groups();
        let t0 = Instant::now();
        let a = join_new(&mut g, &["cooperative-sticky", "range"], t0);
        let b = join_new(&mut g, &["range", "cooperative-sticky"], t0);
        let c = join_new(&mut g, &["cooperative-sticky"], t0);
        g.tick(t0 + 3 * SECOND);
        let d = g.take_deliveries();
        assert_eq!(joined(&d, &a).protocol_name, "cooperative-sticky");
        assert_eq!(joined(&d, &b).protocol_name, "cooperative-sticky");
        assert_eq!(joined(&d, &c).members.len(), 0);
        let mut other = request("", &["roundrobin"]);
        assert!(matches!(
            g.join("g", other.clone(), t0),
            Step::Done(Err(ClassicError::InconsistentProtocol(_)))
        ));
        other.protocol_type = "connect".into();
        other.protocols = vec![("range".into(), Bytes::new())];
        assert!(matches!(
            g.join("g", other, t0),
            Step::Done(Err(ClassicError::InconsistentProtocol(_)))
        ));
    }

    #[test]
    fn bad_joins_and_commits_are_refused() {
        let mut g = groups();
        let t0 = Instant::now();
        let mut short = request("", &["range"]);
        short.session_timeout = Duration::from_millis(10);
        assert!(matches!(
            g.join("g", short, t0),
            Step::Done(Err(ClassicError::InvalidSessionTimeout { .. }))
        ));
        assert_eq!(
            g.join("g", request("made-up", &["range"]), t0),
            Step::Done(Err(ClassicError::UnknownMember))
        );
        let (a, _b) = stable_pair(&mut g, t0);
        assert_eq!(g.check_commit("g", &a, 1), Ok(()));
        assert_eq!(
            g.check_commit("g", "", -1),
            Err(ClassicError::UnknownMember)
        );
        assert_eq!(
            g.check_commit("g", &a, 7),
            Err(ClassicError::IllegalGeneration {
                sent: 7,
                current: 1
            })
        );
        assert_eq!(g.delete("g"), Err(ClassicError::NotEmpty));
        assert_eq!(g.delete("other"), Err(ClassicError::UnknownGroup));
        // Pre-v4 clients join without the member id round trip.
        let mut old = request("", &["range"]);
        old.require_known_member = false;
        assert!(matches!(g.join("h", old, t0), Step::Wait { .. }));
    }

    #[test]
    fn a_second_join_while_the_first_waits_answers_the_first() {
        let mut g = groups();
        let t0 = Instant::now();
        let a = join_new(&mut g, &["range"], t0);
        assert_eq!(
            g.join("g", request(&a, &["range"]), t0),
            Step::Wait {
                member_id: a.clone()
            }
        );
        let d = g.take_deliveries();
        assert_eq!(d.len(), 1);
        assert!(matches!(
            &d[0],
            Delivery::Join {
                result: Err(ClassicError::RebalanceInProgress),
                ..
            }
        ));
        g.tick(t0 + 3 * SECOND);
        assert_eq!(joined(&g.take_deliveries(), &a).generation, 1);
    }
}
