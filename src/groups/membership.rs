//! Consumer groups with broker-side assignment, as a pure state machine.
//!
//! As in Kafka's KIP-848 protocol, the coordinator computes every member's partitions; no
//! client leads the group. Each member has a *target*, its share under the group's strategy
//! (recomputed when members, subscriptions or partition counts change), and an
//! *assignment*, the part of the target it may consume now, which join and heartbeat answers
//! carry. A partition changes owner in two steps, revoke before assign: the old owner's
//! assignment drops it first, and the new owner's assignment gains it only once the old
//! owner has let go of it. Letting go is one of: a heartbeat acknowledging a generation whose
//! assignment lacks the partition (the client commits the partition's progress before it
//! acknowledges), leaving the group, or being removed: its session ended, or it did not
//! acknowledge a revocation within its session timeout of being told. So no two members
//! consume a partition at once, and the new owner starts where the old one committed.
//!
//! The group's generation moves on whenever any member's assignment changes (a rebalance,
//! or partitions handed on once released); every answer carries it. A member heartbeats with
//! the generation whose assignment it has *applied*, which acknowledges that assignment.
//! Until then the coordinator counts the member as holding every partition of every
//! assignment it was given since its last acknowledgement ([`Groups::holds`]); such a member
//! may commit them ([`Groups::check_commit`]), and nobody else may.
//!
//! Nothing here does I/O or reads the clock: the server passes `now` and the topics' partition
//! counts in, calls [`Groups::expire`] at [`Groups::next_deadline`], and keeps one [`Groups`]
//! per coordinator shard. Every map is ordered, so the same calls always give the same
//! assignments, which keeps tests and logs reproducible.
//!
//! Invariant after every call: no partition is held by two members; every member's
//! assignment is part of its target and holds nothing another member holds; the targets give
//! each partition of each topic the group subscribes to (of the partition count the
//! coordinator last saw) to exactly one member subscribed to that topic, with per-topic
//! shares differing by at most one. Hence once every member has acknowledged the last
//! assignment it was given (or gone), every assignment is its member's target: each
//! partition is assigned to exactly one subscribed member.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// How the coordinator divides a group's partitions among its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Strategy {
    /// Per topic, each subscribed member takes a contiguous range of partitions.
    Range,
    /// All (topic, partition) pairs are dealt in turn to the members subscribed to the topic.
    RoundRobin,
    /// Balanced like range, but partitions stay with their owners across rebalances whenever
    /// balance allows, so members lose as few fetch positions and caches as possible.
    #[default]
    Sticky,
}

impl Strategy {
    const ALL: [Strategy; 3] = [Strategy::Range, Strategy::RoundRobin, Strategy::Sticky];

    /// The name used on the wire and in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Range => "range",
            Strategy::RoundRobin => "roundrobin",
            Strategy::Sticky => "sticky",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A strategy name that is not `range`, `roundrobin` or `sticky`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown assignment strategy {0:?}: expected range, roundrobin or sticky")]
pub struct UnknownStrategy(String);

impl FromStr for Strategy {
    type Err = UnknownStrategy;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|strategy| strategy.as_str() == name)
            .ok_or_else(|| UnknownStrategy(name.to_owned()))
    }
}

/// The partitions of one topic assigned to a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberAssignment {
    /// The topic.
    pub topic: String,
    /// Its partitions assigned to the member, ascending and never empty.
    pub partitions: Vec<u32>,
}

/// The session timeouts a member may ask for: below `min` a member would be expired by a GC
/// pause, above `max` a dead member would hold its partitions for too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// The shortest session timeout accepted.
    pub min: Duration,
    /// The longest session timeout accepted.
    pub max: Duration,
}

impl Default for SessionLimits {
    /// One second to five minutes.
    fn default() -> Self {
        SessionLimits {
            min: Duration::from_secs(1),
            max: Duration::from_secs(5 * 60),
        }
    }
}

impl SessionLimits {
    fn check(&self, session_timeout: Duration) -> Result<(), GroupError> {
        if (self.min..=self.max).contains(&session_timeout) {
            Ok(())
        } else {
            Err(GroupError::InvalidSessionTimeout {
                min: self.min,
                max: self.max,
            })
        }
    }
}

/// What a member learns from a join or a heartbeat: who it is, the group's generation and
/// the partitions it may consume in that generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The member's id, to send with every later request.
    pub member_id: String,
    /// The group's current generation. Once the member has applied `assignment` (and
    /// committed the progress of partitions it lacks), it heartbeats with this generation to
    /// acknowledge it; its commits carry the generation it has applied.
    pub generation: u32,
    /// The member's partitions, by topic name: its target, less partitions another member
    /// has not let go of yet.
    pub assignment: Vec<MemberAssignment>,
}

/// Whether a group has members, and whether partitions are changing owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members: the generation is kept for the next join, and standalone commits are
    /// allowed.
    Empty,
    /// Partitions are changing owner: some member has not yet let go of partitions it was
    /// told to revoke, or waits for partitions another member holds.
    Reconciling,
    /// Every member's assignment is its target and it holds nothing else.
    Stable,
}

impl GroupState {
    /// The name shown by describe: `empty`, `reconciling` or `stable`.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "empty",
            GroupState::Reconciling => "reconciling",
            GroupState::Stable => "stable",
        }
    }
}

impl fmt::Display for GroupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A group as shown to administrators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// Whether the group has members.
    pub state: GroupState,
    /// The current generation.
    pub generation: u32,
    /// The strategy the group's members use.
    pub strategy: Strategy,
    /// The members, by member id.
    pub members: Vec<MemberDescription>,
}

/// A member as shown to administrators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    /// The id the coordinator gave the member.
    pub member_id: String,
    /// The client id the member joined with.
    pub client_id: String,
    /// The topics it subscribes to, sorted.
    pub topics: Vec<String>,
    /// How long it may go without a heartbeat.
    pub session_timeout: Duration,
    /// Its partitions at the current generation, as its next answer tells it.
    pub assignment: Vec<MemberAssignment>,
    /// Partitions it was told to let go of and has not acknowledged yet: still its own to
    /// commit, and nobody else's to consume.
    pub revoking: Vec<MemberAssignment>,
    /// Partitions of its target that another member still holds: they join its assignment
    /// once let go.
    pub awaiting: Vec<MemberAssignment>,
}

/// Why a group request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The coordinator has no state for the group.
    #[error("unknown group: the coordinator has no state for it")]
    UnknownGroup,
    /// The member left, expired or never joined. Member requests to a group the coordinator
    /// does not know get this too, since the client's remedy is the same.
    #[error("unknown member: it left, expired or never joined; join again without a member id")]
    UnknownMember,
    /// The request's generation is not one the member may work in: older than the last it
    /// acknowledged (it has moved on since), or newer than the group's (the member's view did
    /// not come from this coordinator).
    #[error("{}", generation_mismatch(.sent, .current))]
    StaleGeneration {
        /// The generation the member sent.
        sent: u32,
        /// The group's generation.
        current: u32,
    },
    /// The session timeout is outside the coordinator's [`SessionLimits`].
    #[error("session timeout must be between {min:?} and {max:?}")]
    InvalidSessionTimeout {
        /// The shortest accepted.
        min: Duration,
        /// The longest accepted.
        max: Duration,
    },
    /// The operation needs a group without members.
    #[error("the group has members: wait until they leave or their sessions expire")]
    GroupNotEmpty,
    /// A member asked for another strategy than the one the group's members use.
    #[error("the group assigns partitions with the {group} strategy; every member must use it")]
    InconsistentStrategy {
        /// The group's strategy.
        group: Strategy,
    },
    /// A join subscribed to no topic.
    #[error("a member must subscribe to at least one topic")]
    NoTopics,
}

fn generation_mismatch(sent: &u32, current: &u32) -> String {
    if sent < current {
        format!(
            "generation {sent} is stale: the group is at generation {current}; \
             rejoin or take the new assignment from a heartbeat"
        )
    } else {
        format!(
            "generation {sent} is from the future: the group is at generation {current}; \
             join again"
        )
    }
}

/// All consumer groups coordinated by one shard.
#[derive(Debug, Clone)]
pub struct Groups {
    limits: SessionLimits,
    groups: BTreeMap<String, Group>,
    /// Members created so far: numbers member ids, so that an id is never handed out twice
    /// and a zombie client cannot pass for a newer member.
    members_created: u64,
    /// Tells this coordinator's member ids from those of an earlier run (the counter
    /// starts again with the process); 0 leaves it out.
    boot: u64,
}

impl Groups {
    /// No groups yet; members' session timeouts must be within `limits`.
    pub fn new(limits: SessionLimits) -> Groups {
        Groups::with_boot_id(limits, 0)
    }

    /// Like [`Groups::new`], with member ids `<client_id>-<boot in hex>-<n>`: a client
    /// that was a member before the broker restarted cannot be mistaken for a new member
    /// that got the same number.
    pub fn with_boot_id(limits: SessionLimits, boot: u64) -> Groups {
        Groups {
            limits,
            groups: BTreeMap::new(),
            members_created: 0,
            boot,
        }
    }

    /// Adds a member (`member_id` `None`: the coordinator names it `<client_id>-<n>`) or
    /// re-joins a known one, e.g. with other topics.
    ///
    /// A new member, a change of a member's topics, or a change in the partition counts of the
    /// group's topics starts a new generation and recomputes every member's target with the
    /// group's strategy; a re-join with nothing changed only renews the session. The answer
    /// leaves out partitions another member has not let go of yet. The strategy is
    /// fixed by the first member of an empty group. Topics `partitions` does not know get no
    /// partitions but stay subscribed, so a later rebalance picks them up. An unknown
    /// `member_id` (e.g. expired) is refused rather than adopted, so that ids stay unique.
    #[allow(clippy::too_many_arguments)] // mirrors the join request field by field
    pub fn join(
        &mut self,
        group: &str,
        member_id: Option<&str>,
        client_id: &str,
        topics: &[String],
        session_timeout: Duration,
        strategy: Strategy,
        partitions: &dyn Fn(&str) -> Option<u32>,
        now: Instant,
    ) -> Result<Joined, GroupError> {
        self.limits.check(session_timeout)?;
        if topics.is_empty() {
            return Err(GroupError::NoTopics);
        }
        match self.groups.get(group) {
            Some(existing) => existing.check_join(member_id, strategy)?,
            None if member_id.is_some() => return Err(GroupError::UnknownMember),
            None => {}
        }
        let member_id = match member_id {
            Some(id) => id.to_owned(),
            None => self.new_member_id(client_id),
        };
        let group = self
            .groups
            .entry(group.to_owned())
            .or_insert_with(|| Group::new(strategy));
        let request = MemberRequest {
            client_id,
            topics: topics.iter().cloned().collect(),
            session_timeout,
            strategy,
            now,
        };
        let members_changed = group.upsert_member(&member_id, request);
        let counts_changed = group.refresh_partition_counts(partitions);
        if members_changed || counts_changed {
            group.rebalance();
        }
        Ok(group.answer(&member_id, now))
    }

    /// Keeps a member alive, takes `generation` as the generation whose assignment the
    /// member has applied, and tells it the current generation and its assignment: this is
    /// how members learn of rebalances and of partitions let go by others.
    ///
    /// Acknowledging a generation lets go of every partition the member held in earlier
    /// assignments but not in that generation's; other members waiting for them get them at
    /// once (a new generation). An older generation than the last acknowledged, or 0 (nothing
    /// applied yet), acknowledges nothing. A generation newer than the group's was never
    /// handed out by this coordinator: it gets `StaleGeneration` without renewing the
    /// session, and the member must join again.
    pub fn heartbeat(
        &mut self,
        group: &str,
        member_id: &str,
        generation: u32,
        now: Instant,
    ) -> Result<Joined, GroupError> {
        let group = self
            .groups
            .get_mut(group)
            .ok_or(GroupError::UnknownMember)?;
        let current = group.generation;
        let member = group
            .members
            .get_mut(member_id)
            .ok_or(GroupError::UnknownMember)?;
        if generation > current {
            return Err(GroupError::StaleGeneration {
                sent: generation,
                current,
            });
        }
        member.last_seen = now;
        if member.acknowledge(generation) {
            group.reconcile(false);
        }
        Ok(group.answer(member_id, now))
    }

    /// Removes a member at its request (a client commits its progress first); its
    /// partitions go to the others at once, at the next generation.
    pub fn leave(&mut self, group: &str, member_id: &str) -> Result<(), GroupError> {
        let group = self
            .groups
            .get_mut(group)
            .ok_or(GroupError::UnknownMember)?;
        group
            .members
            .remove(member_id)
            .ok_or(GroupError::UnknownMember)?;
        group.rebalance_after_departure();
        Ok(())
    }

    /// Removes the members whose session ended at or before `now`, or who were told to let go
    /// of partitions a session timeout or more before `now` and have not acknowledged (so
    /// that calling this at [`next_deadline`](Self::next_deadline) makes progress),
    /// rebalancing each affected group once. Returns the removed `(group, member_id)` pairs,
    /// for logging.
    pub fn expire(&mut self, now: Instant) -> Vec<(String, String)> {
        let mut expired = Vec::new();
        for (name, group) in &mut self.groups {
            let gone = group.remove_expired(now);
            if !gone.is_empty() {
                group.rebalance_after_departure();
                expired.extend(gone.into_iter().map(|id| (name.clone(), id)));
            }
        }
        expired
    }

    /// Re-reads the partition counts of every group's topics and rebalances the groups whose
    /// topics were created, grown or deleted since their last rebalance. The server calls it
    /// after a topic change; returns the rebalanced groups' names.
    pub fn refresh_partition_counts(
        &mut self,
        partitions: &dyn Fn(&str) -> Option<u32>,
    ) -> Vec<String> {
        let mut rebalanced = Vec::new();
        for (name, group) in &mut self.groups {
            if !group.members.is_empty() && group.refresh_partition_counts(partitions) {
                group.rebalance();
                rebalanced.push(name.clone());
            }
        }
        rebalanced
    }

    /// Whether an offset commit may proceed: `Some((member_id, generation))` from a member
    /// working in `generation` (from the last generation it acknowledged to the group's
    /// current one), or `None` (a standalone commit, from offset reset tools or consumers that
    /// assign partitions themselves) to a group without members.
    ///
    /// This checks the member, not the partitions: the server also asks
    /// [`holds`](Self::holds) for each partition committed.
    pub fn check_commit(&self, group: &str, member: Option<(&str, u32)>) -> Result<(), GroupError> {
        let group = self.groups.get(group);
        match (group, member) {
            (None, None) => Ok(()),
            (Some(group), None) if group.members.is_empty() => Ok(()),
            (Some(_), None) => Err(GroupError::GroupNotEmpty),
            (None, Some(_)) => Err(GroupError::UnknownMember),
            (Some(group), Some((member_id, generation))) => {
                let member = group
                    .members
                    .get(member_id)
                    .ok_or(GroupError::UnknownMember)?;
                if (member.acknowledged()..=group.generation).contains(&generation) {
                    Ok(())
                } else {
                    Err(GroupError::StaleGeneration {
                        sent: generation,
                        current: group.generation,
                    })
                }
            }
        }
    }

    /// Whether `member_id` holds `topic`/`partition`: it is in the member's assignment, or in
    /// an earlier one the member has not acknowledged leaving (it is being revoked). A
    /// member may commit the partitions it holds; no other member may.
    pub fn holds(&self, group: &str, member_id: &str, topic: &str, partition: u32) -> bool {
        self.groups
            .get(group)
            .and_then(|group| group.members.get(member_id))
            .is_some_and(|member| member.holds(topic, partition))
    }

    /// Forgets a group without members, so its generation count starts over. A group with
    /// only committed offsets is unknown here: `UnknownGroup` leaves that case to the server.
    pub fn delete(&mut self, group: &str) -> Result<(), GroupError> {
        let state = self.groups.get(group).ok_or(GroupError::UnknownGroup)?;
        if !state.members.is_empty() {
            return Err(GroupError::GroupNotEmpty);
        }
        self.groups.remove(group);
        Ok(())
    }

    /// The group's state, generation, strategy and members, if the coordinator knows it.
    pub fn describe(&self, group: &str) -> Option<GroupDescription> {
        self.groups.get(group).map(Group::describe)
    }

    /// Every known group as `(name, members, generation)`, by name.
    pub fn list(&self) -> Vec<(String, usize, u32)> {
        self.groups
            .iter()
            .map(|(name, group)| (name.clone(), group.members.len(), group.generation))
            .collect()
    }

    /// The earliest session expiry, when the server should next call
    /// [`expire`](Self::expire); `None` without members.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.groups
            .values()
            .flat_map(|group| group.members.values())
            .map(Member::deadline)
            .min()
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        self.members_created += 1;
        let prefix = if client_id.is_empty() {
            "member"
        } else {
            client_id
        };
        match self.boot {
            0 => format!("{prefix}-{}", self.members_created),
            boot => format!("{prefix}-{boot:x}-{}", self.members_created),
        }
    }
}

/// A member's partitions by topic; only topics with at least one partition appear.
type Assignment = BTreeMap<String, Vec<u32>>;

/// The assignment of a member that has none yet.
static NO_PARTITIONS: Assignment = BTreeMap::new();

/// Assignments a member may leave unacknowledged before its two oldest are merged (it then
/// holds their union until it acknowledges a later one): bounds the state of a member that
/// heartbeats but never acknowledges.
const MAX_UNACKNOWLEDGED: usize = 16;

#[derive(Debug, Clone)]
struct Group {
    generation: u32,
    strategy: Strategy,
    members: BTreeMap<String, Member>,
    /// The partition counts of the subscribed topics at the last rebalance. Leave and expire
    /// rebalance with these, since they have no catalog to ask.
    partition_counts: BTreeMap<String, u32>,
}

#[derive(Debug, Clone)]
struct Member {
    client_id: String,
    topics: BTreeSet<String>,
    session_timeout: Duration,
    last_seen: Instant,
    /// Its share under the group's strategy.
    target: Assignment,
    /// The assignments it was given that it may still be working in, by the generation each
    /// was made at: first the last one it acknowledged (before any, its first), last its
    /// current one. It holds every partition of every one of them. Empty only while it is
    /// being added.
    given: BTreeMap<u32, Assignment>,
    /// When it was first told to let go of partitions it still holds, if it holds any
    /// outside its current assignment: it must acknowledge within its session timeout.
    told_to_revoke: Option<Instant>,
}

/// The parts of a join that describe the member.
struct MemberRequest<'a> {
    client_id: &'a str,
    topics: BTreeSet<String>,
    session_timeout: Duration,
    strategy: Strategy,
    now: Instant,
}

impl Member {
    /// When it is removed unless it heartbeats (or acknowledges a revocation) first.
    fn deadline(&self) -> Instant {
        let session = self.last_seen + self.session_timeout;
        match self.told_to_revoke {
            Some(told) => session.min(told + self.session_timeout),
            None => session,
        }
    }

    /// Its current assignment.
    fn assignment(&self) -> &Assignment {
        self.given
            .last_key_value()
            .map_or(&NO_PARTITIONS, |(_, assignment)| assignment)
    }

    /// The generation of the last assignment it acknowledged (before any, of its first).
    fn acknowledged(&self) -> u32 {
        self.given
            .first_key_value()
            .map_or(0, |(generation, _)| *generation)
    }

    fn holds(&self, topic: &str, partition: u32) -> bool {
        self.given.values().any(|assignment| {
            assignment
                .get(topic)
                .is_some_and(|partitions| partitions.contains(&partition))
        })
    }

    /// Every partition it holds.
    fn held(&self) -> Assignment {
        let mut held = Assignment::new();
        for assignment in self.given.values() {
            add(&mut held, assignment);
        }
        held
    }

    /// The partitions it holds outside its current assignment.
    fn revoking(&self) -> Assignment {
        minus(&self.held(), self.assignment())
    }

    /// Makes `assignment` its current one, made at `generation`.
    fn give(&mut self, generation: u32, assignment: Assignment) {
        self.given.insert(generation, assignment);
        if self.given.len() > MAX_UNACKNOWLEDGED {
            if let (Some((first, mut oldest)), Some((_, next))) =
                (self.given.pop_first(), self.given.pop_first())
            {
                add(&mut oldest, &next);
                self.given.insert(first, oldest);
            }
        }
        if self.revoking().is_empty() {
            self.told_to_revoke = None;
        }
    }

    /// Takes the assignment it had at `generation` as applied, letting go of the earlier
    /// ones; returns whether any was let go of.
    fn acknowledge(&mut self, generation: u32) -> bool {
        let applied = match self.given.range(..=generation).next_back() {
            Some((&applied, _)) if applied > self.acknowledged() => applied,
            _ => return false,
        };
        self.given = self.given.split_off(&applied);
        // It made progress; a revocation still pending is timed from its next answer.
        self.told_to_revoke = None;
        true
    }
}

impl Group {
    fn new(strategy: Strategy) -> Group {
        Group {
            generation: 0,
            strategy,
            members: BTreeMap::new(),
            partition_counts: BTreeMap::new(),
        }
    }

    fn check_join(&self, member_id: Option<&str>, strategy: Strategy) -> Result<(), GroupError> {
        if !self.members.is_empty() && strategy != self.strategy {
            return Err(GroupError::InconsistentStrategy {
                group: self.strategy,
            });
        }
        match member_id {
            Some(id) if !self.members.contains_key(id) => Err(GroupError::UnknownMember),
            _ => Ok(()),
        }
    }

    /// Adds or updates a member; returns whether the membership or subscriptions changed.
    fn upsert_member(&mut self, member_id: &str, request: MemberRequest<'_>) -> bool {
        if self.members.is_empty() {
            self.strategy = request.strategy;
        }
        if let Some(member) = self.members.get_mut(member_id) {
            member.client_id = request.client_id.to_owned();
            member.session_timeout = request.session_timeout;
            member.last_seen = request.now;
            let changed = member.topics != request.topics;
            member.topics = request.topics;
            return changed;
        }
        let member = Member {
            client_id: request.client_id.to_owned(),
            topics: request.topics,
            session_timeout: request.session_timeout,
            last_seen: request.now,
            target: Assignment::new(),
            given: BTreeMap::new(),
            told_to_revoke: None,
        };
        self.members.insert(member_id.to_owned(), member);
        true
    }

    /// Asks for the partition counts of the subscribed topics; returns whether they changed.
    fn refresh_partition_counts(&mut self, partitions: &dyn Fn(&str) -> Option<u32>) -> bool {
        let counts: BTreeMap<String, u32> = self
            .subscribed_topics()
            .into_iter()
            .filter_map(|topic| partitions(topic).map(|count| (topic.to_owned(), count)))
            .collect();
        let changed = counts != self.partition_counts;
        self.partition_counts = counts;
        changed
    }

    fn subscribed_topics(&self) -> BTreeSet<&str> {
        self.members
            .values()
            .flat_map(|member| member.topics.iter().map(String::as_str))
            .collect()
    }

    /// An empty group keeps its generation: there is nothing to assign, and the next join
    /// moves it on anyway.
    fn rebalance_after_departure(&mut self) {
        if !self.members.is_empty() {
            self.rebalance();
        }
    }

    /// Starts a generation with new targets, and gives members what they can have of them.
    fn rebalance(&mut self) {
        self.generation += 1;
        let subscribed: BTreeSet<String> = self
            .subscribed_topics()
            .into_iter()
            .map(str::to_owned)
            .collect();
        self.partition_counts
            .retain(|topic, _| subscribed.contains(topic));
        let mut targets = assign(self.strategy, &self.members, &self.partition_counts);
        for (id, member) in &mut self.members {
            member.target = targets.remove(id).unwrap_or_default();
        }
        self.reconcile(true);
    }

    /// Makes every member's assignment its target less the partitions other members hold.
    /// The members whose assignment changes get it at the current generation, which moves
    /// on first unless `moved_on` (a rebalance just moved it, and nobody was given anything
    /// at the new one yet).
    fn reconcile(&mut self, moved_on: bool) {
        let held: Vec<(&str, Assignment)> = self
            .members
            .iter()
            .map(|(id, member)| (id.as_str(), member.held()))
            .collect();
        let holder = |topic: &str, partition: u32| {
            held.iter()
                .find(|(_, partitions)| {
                    partitions
                        .get(topic)
                        .is_some_and(|held| held.binary_search(&partition).is_ok())
                })
                .map(|(id, _)| *id)
        };
        let changed: Vec<(String, Assignment)> = self
            .members
            .iter()
            .filter_map(|(id, member)| {
                let mut assignment = Assignment::new();
                for (topic, partitions) in &member.target {
                    let free = partitions
                        .iter()
                        .copied()
                        .filter(|&p| holder(topic, p).is_none_or(|holder| holder == id));
                    put(&mut assignment, topic, free);
                }
                let unchanged = !member.given.is_empty() && *member.assignment() == assignment;
                (!unchanged).then(|| (id.clone(), assignment))
            })
            .collect();
        if changed.is_empty() {
            return;
        }
        if !moved_on {
            self.generation += 1;
        }
        for (id, assignment) in changed {
            if let Some(member) = self.members.get_mut(&id) {
                member.give(self.generation, assignment);
            }
        }
    }

    fn remove_expired(&mut self, now: Instant) -> Vec<String> {
        let mut gone = Vec::new();
        self.members.retain(|id, member| {
            let alive = member.deadline() > now;
            if !alive {
                gone.push(id.clone());
            }
            alive
        });
        gone
    }

    /// What a member is told: the generation and its assignment. A member told to let go
    /// of partitions has its session timeout from now to acknowledge.
    fn answer(&mut self, member_id: &str, now: Instant) -> Joined {
        let generation = self.generation;
        let Some(member) = self.members.get_mut(member_id) else {
            return Joined {
                member_id: member_id.to_owned(),
                generation,
                assignment: Vec::new(),
            };
        };
        if member.told_to_revoke.is_none() && !member.revoking().is_empty() {
            member.told_to_revoke = Some(now);
        }
        Joined {
            member_id: member_id.to_owned(),
            generation,
            assignment: to_member_assignments(member.assignment()),
        }
    }

    fn describe(&self) -> GroupDescription {
        let members: Vec<MemberDescription> = self
            .members
            .iter()
            .map(|(id, member)| MemberDescription {
                member_id: id.clone(),
                client_id: member.client_id.clone(),
                topics: member.topics.iter().cloned().collect(),
                session_timeout: member.session_timeout,
                assignment: to_member_assignments(member.assignment()),
                revoking: to_member_assignments(&member.revoking()),
                awaiting: to_member_assignments(&minus(&member.target, member.assignment())),
            })
            .collect();
        let state = if members.is_empty() {
            GroupState::Empty
        } else if members
            .iter()
            .any(|m| !m.revoking.is_empty() || !m.awaiting.is_empty())
        {
            GroupState::Reconciling
        } else {
            GroupState::Stable
        };
        GroupDescription {
            state,
            generation: self.generation,
            strategy: self.strategy,
            members,
        }
    }
}

/// The partitions of `a` that are not in `b`.
fn minus(a: &Assignment, b: &Assignment) -> Assignment {
    let mut rest = Assignment::new();
    for (topic, partitions) in a {
        let other = b.get(topic).map_or(&[][..], Vec::as_slice);
        let left = partitions
            .iter()
            .copied()
            .filter(|p| other.binary_search(p).is_err());
        put(&mut rest, topic, left);
    }
    rest
}

/// Adds the partitions of `from` to `into`, keeping each topic's sorted and unique.
fn add(into: &mut Assignment, from: &Assignment) {
    for (topic, partitions) in from {
        let merged = into.entry(topic.clone()).or_default();
        merged.extend_from_slice(partitions);
        merged.sort_unstable();
        merged.dedup();
    }
}

fn to_member_assignments(assignment: &Assignment) -> Vec<MemberAssignment> {
    assignment
        .iter()
        .map(|(topic, partitions)| MemberAssignment {
            topic: topic.clone(),
            partitions: partitions.clone(),
        })
        .collect()
}

// Assignment strategies. Each takes the members (ordered by id) and the partition counts
// (ordered by topic) and returns every member's target; a topic nobody subscribes to is
// skipped.

fn assign(
    strategy: Strategy,
    members: &BTreeMap<String, Member>,
    counts: &BTreeMap<String, u32>,
) -> BTreeMap<String, Assignment> {
    match strategy {
        Strategy::Range => assign_range(members, counts),
        Strategy::RoundRobin => assign_round_robin(members, counts),
        Strategy::Sticky => assign_sticky(members, counts),
    }
}

fn assign_range(
    members: &BTreeMap<String, Member>,
    counts: &BTreeMap<String, u32>,
) -> BTreeMap<String, Assignment> {
    let mut assignments = BTreeMap::new();
    for (topic, &count) in counts {
        let subscribers = subscribers(members, topic);
        let mut next = 0;
        for (id, share) in subscribers
            .iter()
            .zip(fair_shares(count, subscribers.len()))
        {
            give(&mut assignments, id, topic, next..next + share);
            next += share;
        }
    }
    assignments
}

/// Deals partitions with one turn that carries over from topic to topic, so that the
/// members who got a topic's extra partitions are not the first ones again for the next.
fn assign_round_robin(
    members: &BTreeMap<String, Member>,
    counts: &BTreeMap<String, u32>,
) -> BTreeMap<String, Assignment> {
    let ids: Vec<(&str, &Member)> = members.iter().map(|(id, m)| (id.as_str(), m)).collect();
    let mut assignments = BTreeMap::new();
    let mut turn = 0;
    for (topic, &count) in counts {
        for partition in 0..count {
            let next = (0..ids.len())
                .map(|step| (turn + step) % ids.len())
                .find(|&index| ids[index].1.topics.contains(topic));
            let Some(index) = next else { break };
            give(
                &mut assignments,
                ids[index].0,
                topic,
                partition..partition + 1,
            );
            turn = index + 1;
        }
    }
    assignments
}

/// Topic by topic, moving as few partitions as balance allows; members with fewer partitions
/// over all topics are preferred for the extras, so totals stay even too.
fn assign_sticky(
    members: &BTreeMap<String, Member>,
    counts: &BTreeMap<String, u32>,
) -> BTreeMap<String, Assignment> {
    let mut assignments = BTreeMap::new();
    let mut load: BTreeMap<&str, usize> = members.keys().map(|id| (id.as_str(), 0)).collect();
    for (topic, &count) in counts {
        for holder in assign_sticky_topic(members, topic, count, &load) {
            *load.get_mut(holder.id).expect("every holder is a member") += holder.held.len();
            give(&mut assignments, holder.id, topic, holder.held);
        }
    }
    assignments
}

/// One topic: every subscriber's share is fixed first, the larger shares going to those who
/// already have the most in their targets (which maximises what stays); members keep the
/// partitions of their previous targets up to their share, and the rest go to the
/// subscribers below their share, least loaded first.
fn assign_sticky_topic<'a>(
    members: &'a BTreeMap<String, Member>,
    topic: &str,
    count: u32,
    load: &BTreeMap<&'a str, usize>,
) -> Vec<StickyHolder<'a>> {
    let mut holders: Vec<StickyHolder<'a>> = subscribers(members, topic)
        .into_iter()
        .map(|id| StickyHolder::previous(id, &members[id], topic, count))
        .collect();
    if holders.is_empty() {
        return holders;
    }
    holders.sort_by_key(|holder| (Reverse(holder.held.len()), load[holder.id], holder.id));
    let shares = fair_shares(count, holders.len());
    let mut unowned: BTreeSet<u32> = (0..count).collect();
    for (holder, share) in holders.iter_mut().zip(shares) {
        holder.share = share as usize;
        holder.held.truncate(holder.share);
        // Never drops anything while the invariant holds; it keeps a partition that two
        // members claim from being assigned twice again.
        holder.held.retain(|partition| unowned.remove(partition));
    }
    for partition in unowned {
        let holder = holders
            .iter_mut()
            .filter(|holder| holder.held.len() < holder.share)
            .min_by_key(|holder| (load[holder.id] + holder.held.len(), holder.id))
            .expect("the shares add up to the partition count");
        holder.held.push(partition);
    }
    for holder in &mut holders {
        holder.held.sort_unstable();
    }
    holders
}

/// A subscriber of one topic during a sticky assignment.
struct StickyHolder<'a> {
    id: &'a str,
    /// Its partitions of the topic: first those of its previous target, then those it is
    /// given.
    held: Vec<u32>,
    share: usize,
}

impl<'a> StickyHolder<'a> {
    /// The member with the partitions of the topic in its previous target that still exist.
    fn previous(id: &'a str, member: &Member, topic: &str, count: u32) -> StickyHolder<'a> {
        let held = member
            .target
            .get(topic)
            .map(|partitions| partitions.iter().copied().filter(|&p| p < count).collect())
            .unwrap_or_default();
        StickyHolder { id, held, share: 0 }
    }
}

/// The members subscribed to `topic`, by id.
fn subscribers<'a>(members: &'a BTreeMap<String, Member>, topic: &str) -> Vec<&'a str> {
    members
        .iter()
        .filter(|(_, member)| member.topics.contains(topic))
        .map(|(id, _)| id.as_str())
        .collect()
}

/// `count` split over `members`: the first `count % members` get one more than the rest.
/// Callers zip the shares with the members, so the one share yielded for none is unused.
fn fair_shares(count: u32, members: usize) -> impl Iterator<Item = u32> {
    let members = u32::try_from(members).unwrap_or(u32::MAX).max(1);
    let (base, extra) = (count / members, count % members);
    (0..members).map(move |index| base + u32::from(index < extra))
}

/// Adds partitions of `topic` to a member's assignment, leaving out empty topics.
fn give(
    assignments: &mut BTreeMap<String, Assignment>,
    member_id: &str,
    topic: &str,
    partitions: impl IntoIterator<Item = u32>,
) {
    let mut partitions = partitions.into_iter().peekable();
    if partitions.peek().is_some() {
        let assignment = assignments.entry(member_id.to_owned()).or_default();
        put(assignment, topic, partitions);
    }
}

/// Adds partitions of `topic` to an assignment, leaving out an empty topic.
fn put(assignment: &mut Assignment, topic: &str, partitions: impl IntoIterator<Item = u32>) {
    let mut partitions = partitions.into_iter().peekable();
    if partitions.peek().is_some() {
        assignment
            .entry(topic.to_owned())
            .or_default()
            .extend(partitions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{prop_assert, prop_assert_eq, prop_oneof, proptest};
    use proptest::strategy::Strategy as _;
    use proptest::test_runner::TestCaseError;

    const SECOND: Duration = Duration::from_secs(1);

    /// `orders` has 6 partitions, `payments` 3; any other topic does not exist.
    fn catalog(topic: &str) -> Option<u32> {
        match topic {
            "orders" => Some(6),
            "payments" => Some(3),
            _ => None,
        }
    }

    fn topics(names: &[&str]) -> Vec<String> {
        names.iter().map(ToString::to_string).collect()
    }

    fn join_as(
        groups: &mut Groups,
        member_id: Option<&str>,
        subscription: &[&str],
        strategy: Strategy,
        now: Instant,
    ) -> Result<Joined, GroupError> {
        groups.join(
            "g",
            member_id,
            "client",
            &topics(subscription),
            10 * SECOND,
            strategy,
            &catalog,
            now,
        )
    }

    fn join_new(groups: &mut Groups, subscription: &[&str], now: Instant) -> Joined {
        join_as(groups, None, subscription, Strategy::Sticky, now).unwrap()
    }

    /// Each member's partitions of `topic`, by member id.
    fn owners(groups: &Groups, topic: &str) -> BTreeMap<String, Vec<u32>> {
        let members = groups.describe("g").unwrap().members;
        members
            .iter()
            .map(|member| (member.member_id.clone(), partitions_of(member, topic)))
            .collect()
    }

    fn partitions_of(member: &MemberDescription, topic: &str) -> Vec<u32> {
        partitions_in(&member.assignment, topic)
    }

    fn partitions_in(assignment: &[MemberAssignment], topic: &str) -> Vec<u32> {
        assignment
            .iter()
            .find(|assignment| assignment.topic == topic)
            .map(|assignment| assignment.partitions.clone())
            .unwrap_or_default()
    }

    fn member_ids(groups: &Groups) -> Vec<String> {
        let members = groups.describe("g").unwrap().members;
        members.into_iter().map(|m| m.member_id).collect()
    }

    /// Every member heartbeats twice, as a client that applies each answer at once: once to
    /// hear its assignment, once to acknowledge it. One round leaves the group stable.
    fn settle(groups: &mut Groups, now: Instant) {
        for id in member_ids(groups) {
            let told = groups.heartbeat("g", &id, 0, now).unwrap().generation;
            groups.heartbeat("g", &id, told, now).unwrap();
        }
        assert_eq!(groups.describe("g").unwrap().state, GroupState::Stable);
    }

    #[test]
    fn three_members_get_two_partitions_each_with_every_strategy() {
        for strategy in Strategy::ALL {
            let mut groups = Groups::new(SessionLimits::default());
            let now = Instant::now();
            for expected_generation in 1..=3 {
                let joined = join_as(&mut groups, None, &["orders"], strategy, now).unwrap();
                assert_eq!(joined.generation, expected_generation, "{strategy}");
            }
            settle(&mut groups, now);
            let owners = owners(&groups, "orders");
            assert!(
                owners.values().all(|p| p.len() == 2),
                "{strategy}: {owners:?}"
            );
            let mut all: Vec<u32> = owners.into_values().flatten().collect();
            all.sort_unstable();
            assert_eq!(all, (0..6).collect::<Vec<_>>(), "{strategy}");
        }
    }

    #[test]
    fn range_gives_contiguous_ranges_with_the_extras_first() {
        let mut groups = Groups::new(SessionLimits::default());
        let now = Instant::now();
        for _ in 0..4 {
            join_as(&mut groups, None, &["orders"], Strategy::Range, now).unwrap();
        }
        settle(&mut groups, now);
        let shares: Vec<Vec<u32>> = owners(&groups, "orders").into_values().collect();
        assert_eq!(shares, [vec![0, 1], vec![2, 3], vec![4], vec![5]]);
    }

    #[test]
    fn round_robin_carries_the_turn_over_to_the_next_topic() {
        let mut groups = Groups::new(SessionLimits::default());
        let now = Instant::now();
        let three_each = |_: &str| Some(3);
        for _ in 0..2 {
            let subscription = topics(&["a", "b"]);
            let strategy = Strategy::RoundRobin;
            let timeout = 10 * SECOND;
            let joined = groups.join(
                "g",
                None,
                "c",
                &subscription,
                timeout,
                strategy,
                &three_each,
                now,
            );
            joined.unwrap();
        }
        settle(&mut groups, now);
        let a: Vec<Vec<u32>> = owners(&groups, "a").into_values().collect();
        let b: Vec<Vec<u32>> = owners(&groups, "b").into_values().collect();
        assert_eq!(a, [vec![0, 2], vec![1]]);
        assert_eq!(b, [vec![1], vec![0, 2]]);
    }

    #[test]
    fn sticky_fourth_member_takes_the_fewest_partitions_from_the_others() {
        let mut groups = Groups::new(SessionLimits::default());
        let now = Instant::now();
        for _ in 0..3 {
            join_new(&mut groups, &["orders"], now);
        }
        settle(&mut groups, now);
        let before = owners(&groups, "orders");
        let newcomer = join_new(&mut groups, &["orders"], now);
        // Everything it is to get is still held by the others.
        assert!(newcomer.assignment.is_empty());
        let description = groups.describe("g").unwrap();
        let awaited = description
            .members
            .iter()
            .find(|m| m.member_id == newcomer.member_id)
            .map(|m| partitions_in(&m.awaiting, "orders"))
            .unwrap();
        settle(&mut groups, now);
        let after = owners(&groups, "orders");

        let mut moved = 0;
        for (id, old) in &before {
            let new = &after[id];
            let kept_all_it_could = !new.is_empty() && new.iter().all(|p| old.contains(p));
            assert!(kept_all_it_could, "{id}: {old:?} -> {new:?}");
            moved += old.len() - new.len();
        }
        assert!(moved <= 2, "{moved} partitions moved");
        assert_eq!(after[&newcomer.member_id].len(), moved);
        assert_eq!(awaited, after[&newcomer.member_id]);
    }

    #[test]
    fn sticky_leave_moves_only_the_leavers_partitions() {
        let mut groups = Groups::new(SessionLimits::default());
        let now = Instant::now();
        let leaver = join_new(&mut groups, &["orders"], now).member_id;
        for _ in 0..2 {
            join_new(&mut groups, &["orders"], now);
        }
        settle(&mut groups, now);
        let generation = groups.describe("g").unwrap().generation;
        let before = owners(&groups, "orders");
        groups.leave("g", &leaver).unwrap();
        // The leaver let go of its partitions by leaving: no acknowledgement is awaited.
        let after = groups.describe("g").unwrap();
        assert_eq!(after.state, GroupState::Stable);
        assert_eq!(after.generation, generation + 1);
        for (id, new) in &owners(&groups, "orders") {
            let old = &before[id];
            assert!(
                old.iter().all(|p| new.contains(p)),
                "{id}: {old:?} -> {new:?}"
            );
            assert_eq!(new.len(), 3);
        }
    }

    #[test]
    fn leave_lets_go_at_once_and_an_empty_group_keeps_its_generation() {
        let mut groups = Groups::new(SessionLimits::default());
        let now = Instant::now();
        let first = join_new(&mut groups, &["orders"], now).member_id;
        let second = join_new(&mut groups, &["orders"], now).member_id;
        let waiting = groups.heartbeat("g", &second, 2, now).unwrap();
        assert!(waiting.assignment.is_empty());

        // The first member never acknowledged its revocation; leaving releases everything.
        groups.leave("g", &first).unwrap();
        let remaining = groups.heartbeat("g", &second, 2, now).unwrap();
        assert_eq!(remaining.generation, 3);
        assert_eq!(remaining.assignment[0].partitions, [0, 1, 2, 3, 4, 5]);

        groups.leave("g", &second).unwrap();
        let empty = groups.describe("g").unwrap();
        assert_eq!((empty.state, empty.generation), (GroupState::Empty, 3));
        assert_eq!(join_new(&mut groups, &["orders"], now).generation, 4);
        assert_eq!(groups.leave("g", &second), Err(GroupError::UnknownMember));
    }

    #[test]
    fn a_moved_partition_waits_until_its_old_owner_acknowledges_letting_go() {
        let mut groups = Groups::new(SessionLimits::default());
        let now = Instant::now();
        let first = join_new(&mut groups, &["orders"], now);
        assert_eq!(first.assignment[0].partitions, [0, 1, 2, 3, 4, 5]);
        let second = join_new(&mut groups, &["orders"], now);
        // Half of the first member's partitions are now the second's target, but the first
        // still holds them: the second gets nothing yet.
        assert_eq!(second.generation, 2);
        assert!(second.assignment.is_empty());
        // The first member, which applied generation 1, hears that it keeps three.
        let told = groups.heartbeat("g", &first.member_id, 1, now).unwrap();
        assert_eq!(told.generation, 2);
        assert_eq!(told.assignment[0].partitions, [0, 1, 2]);
        let waiting = groups.heartbeat("g", &second.member_id, 2, now).unwrap();
        assert!(waiting.assignment.is_empty());
        let description = groups.describe("g").unwrap();
        assert_eq!(description.state, GroupState::Reconciling);
        assert_eq!(
            partitions_in(&description.members[0].revoking, "orders"),
            [3, 4, 5]
        );
        assert_eq!(
            partitions_in(&description.members[1].awaiting, "orders"),
            [3, 4, 5]
        );
        // A heartbeat that still reports generation 1 acknowledges nothing.
        groups.heartbeat("g", &first.member_id, 1, now).unwrap();
        let still = groups.heartbeat("g", &second.member_id, 2, now).unwrap();
        assert!(still.assignment.is_empty());

        // Acknowledging generation 2 lets go of them: the second member gets them at once, in
        // a new generation.
        let acknowledged = groups.heartbeat("g", &first.member_id, 2, now).unwrap();
        assert_eq!(acknowledged.generation, 3);
        assert_eq!(acknowledged.assignment[0].partitions, [0, 1, 2]);
        let given = groups.heartbeat("g", &second.member_id, 2, now).unwrap();
        assert_eq!(given.generation, 3);
        assert_eq!(given.assignment[0].partitions, [3, 4, 5]);
        assert_eq!(groups.describe("g").unwrap().state, GroupState::Stable);
    }

    #[test]
    fn acknowledging_an_older_generation_lets_go_only_of_what_it_lacked() {
        let mut groups = Groups::new(SessionLimits::default());
        let now = Instant::now();
        let first = join_new(&mut groups, &["orders"], now).member_id;
        join_new(&mut groups, &["orders"], now);
        let at_two = groups.heartbeat("g", &first, 1, now).unwrap();
        join_new(&mut groups, &["orders"], now);
        let at_three = groups.heartbeat("g", &first, 1, now).unwrap();
        let (kept_at_two, kept_at_three) = (
            at_two.assignment[0].partitions.clone(),
            at_three.assignment[0].partitions.clone(),
        );
        assert_eq!((at_two.generation, at_three.generation), (2, 3));
        assert_eq!(kept_at_two.len(), 3);
        assert_eq!(kept_at_three.len(), 2);

        // Having applied generation 2 only, the first member still holds what generation 2
        // gave it, and nothing more.
        groups.heartbeat("g", &first, 2, now).unwrap();
        for p in 0..6 {
            let held = groups.holds("g", &first, "orders", p);
            assert_eq!(held, kept_at_two.contains(&p), "partition {p}");
        }
        let still_revoking = groups.describe("g").unwrap().members[0].revoking.clone();
        let dropped: Vec<u32> = kept_at_two
            .iter()
            .copied()
            .filter(|p| !kept_at_three.contains(p))
            .collect();
        assert_eq!(partitions_in(&still_revoking, "orders"), dropped);

        let current = groups.describe("g").unwrap().generation;
        groups.heartbeat("g", &first, current, now).unwrap();
        assert_eq!(groups.describe("g").unwrap().state, GroupState::Stable);
    }

    #[test]
    fn the_revoking_member_may_commit_until_it_acknowledges() {
        let mut groups = Groups::new(SessionLimits::default());
        let now = Instant::now();
        let first = join_new(&mut groups, &["orders"], now).member_id;
        let second = join_new(&mut groups, &["orders"], now).member_id;

        // Until it acknowledges, the first member holds all six, and may commit them in the
        // generation it works in (1) or the one it heard of (2); the second holds none.
        for generation in [1, 2] {
            assert_eq!(groups.check_commit("g", Some((&first, generation))), Ok(()));
        }
        assert!((0..6).all(|p| groups.holds("g", &first, "orders", p)));
        assert!((0..6).all(|p| !groups.holds("g", &second, "orders", p)));
        let future = GroupError::StaleGeneration {
            sent: 3,
            current: 2,
        };
        assert_eq!(groups.check_commit("g", Some((&first, 3))), Err(future));

        // Once it acknowledges generation 2, generation 1 is behind it and partitions 3 to 5
        // are the second member's to commit.
        groups.heartbeat("g", &first, 2, now).unwrap();
        let stale = GroupError::StaleGeneration {
            sent: 1,
            current: 3,
        };
        assert_eq!(groups.check_commit("g", Some((&first, 1))), Err(stale));
        assert_eq!(groups.check_commit("g", Some((&first, 2))), Ok(()));
        assert_eq!(groups.check_commit("g", Some((&second, 3))), Ok(()));
        for p in 0..6 {
            assert_eq!(groups.holds("g", &first, "orders", p), p < 3, "{p}");
            assert_eq!(groups.holds("g", &second, "orders", p), p >= 3, "{p}");
        }

        let stranger = groups.check_commit("g", Some(("client-99", 2)));
        assert_eq!(stranger, Err(GroupError::UnknownMember));
        let elsewhere = groups.check_commit("other", Some((&first, 2)));
        assert_eq!(elsewhere, Err(GroupError::UnknownMember));
        assert!(!groups.holds("other", &first, "orders", 0));
    }

    #[test]
    fn rejoining_with_the_same_topics_keeps_the_generation() {
        let mut groups = Groups::new(SessionLimits::default());
        let now = Instant::now();
        let joined = join_new(&mut groups, &["orders"], now);
        let id = Some(joined.member_id.as_str());

        let again = join_as(&mut groups, id, &["orders"], Strategy::Sticky, now).unwrap();
        assert_eq!(again, joined);
        let changed = join_as(&mut groups, id, &["payments"], Strategy::Sticky, now).unwrap();
        assert_eq!(changed.generation, 2);
        assert_eq!(changed.assignment.len(), 1);
        assert_eq!(changed.assignment[0].topic, "payments");
    }

    #[test]
    fn unknown_topics_stay_subscribed_and_are_picked_up_once_created() {
        let mut groups = Groups::new(SessionLimits::default());
        let now = Instant::now();
        let joined = join_new(&mut groups, &["orders", "audit"], now);
        assert_eq!(joined.assignment.len(), 1);

        let with_audit = |topic: &str| {
            if topic == "audit" {
                Some(2)
            } else {
                catalog(topic)
            }
        };
        assert_eq!(groups.refresh_partition_counts(&with_audit), ["g"]);
        assert!(groups.refresh_partition_counts(&with_audit).is_empty());
        let caught_up = groups.heartbeat("g", &joined.member_id, 1, now).unwrap();
        assert_eq!(caught_up.generation, 2);
        assert_eq!(caught_up.assignment[0].topic, "audit");
        assert_eq!(caught_up.assignment[0].partitions, [0, 1]);
    }

    #[test]
    fn an_expired_members_partitions_go_to_the_others_at_the_next_generation() {
        let mut groups = Groups::new(SessionLimits::default());
        let start = Instant::now();
        let silent = join_new(&mut groups, &["orders"], start).member_id;
        let alive = join_new(&mut groups, &["orders"], start).member_id;

        // Heartbeats keep `alive` past its first deadline; `silent` lasts until its own, and
        // holds every partition until then.
        for second in 1..10u32 {
            let now = start + second * SECOND;
            let waiting = groups.heartbeat("g", &alive, 2, now).unwrap();
            assert!(waiting.assignment.is_empty());
            assert!(groups.expire(now).is_empty());
        }
        assert_eq!(groups.next_deadline(), Some(start + 10 * SECOND));
        let expired = groups.expire(start + 10 * SECOND);
        assert_eq!(expired, [("g".to_string(), silent.clone())]);
        assert_eq!(groups.next_deadline(), Some(start + 19 * SECOND));

        let survivor = groups
            .heartbeat("g", &alive, 2, start + 11 * SECOND)
            .unwrap();
        assert_eq!(survivor.generation, 3);
        assert_eq!(survivor.assignment[0].partitions, [0, 1, 2, 3, 4, 5]);
        let late = groups.heartbeat("g", &silent, 2, start + 11 * SECOND);
        assert_eq!(late, Err(GroupError::UnknownMember));
    }

    #[test]
    fn a_member_that_heartbeats_but_never_lets_go_is_removed_a_session_later() {
        let mut groups = Groups::new(SessionLimits::default());
        let start = Instant::now();
        let stubborn = join_new(&mut groups, &["orders"], start).member_id;
        let waiting = join_new(&mut groups, &["orders"], start).member_id;

        // Told at second 1 to let go of three partitions, it keeps reporting generation 1.
        let told = groups.heartbeat("g", &stubborn, 1, start + SECOND).unwrap();
        assert_eq!(told.assignment[0].partitions.len(), 3);
        for second in 2..11u32 {
            let now = start + second * SECOND;
            groups.heartbeat("g", &stubborn, 1, now).unwrap();
            groups.heartbeat("g", &waiting, 2, now).unwrap();
            assert!(groups.expire(now).is_empty(), "second {second}");
        }
        assert_eq!(groups.next_deadline(), Some(start + 11 * SECOND));
        let expired = groups.expire(start + 11 * SECOND);
        assert_eq!(expired, [("g".to_string(), stubborn)]);
        let given = groups
            .heartbeat("g", &waiting, 2, start + 11 * SECOND)
            .unwrap();
        assert_eq!(given.assignment[0].partitions, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_revocation_taken_back_stops_the_clock() {
        let mut groups = Groups::new(SessionLimits::default());
        let start = Instant::now();
        let first = join_new(&mut groups, &["orders"], start).member_id;
        let second = join_new(&mut groups, &["orders"], start).member_id;
        groups.heartbeat("g", &first, 1, start).unwrap();
        // The member it was to give partitions to leaves: they stay with it, and it is no
        // longer expected to acknowledge anything.
        groups.leave("g", &second).unwrap();
        let kept = groups.heartbeat("g", &first, 1, start).unwrap();
        assert_eq!(kept.assignment[0].partitions, [0, 1, 2, 3, 4, 5]);
        for s in 1..10u32 {
            let now = start + s * SECOND;
            groups.heartbeat("g", &first, 1, now).unwrap();
            assert!(groups.expire(now).is_empty(), "second {s}");
        }
    }

    #[test]
    fn a_member_that_never_acknowledges_keeps_bounded_state() {
        let mut groups = Groups::new(SessionLimits::default());
        let now = Instant::now();
        let first = join_new(&mut groups, &["orders"], now).member_id;
        for _ in 0..40 {
            let other = join_new(&mut groups, &["orders"], now).member_id;
            groups.leave("g", &other).unwrap();
        }
        let member = &groups.groups["g"].members[&first];
        assert!(member.given.len() <= MAX_UNACKNOWLEDGED);
        assert!((0..6).all(|p| member.holds("orders", p)));
        let current = groups.describe("g").unwrap().generation;
        groups.heartbeat("g", &first, current, now).unwrap();
        assert_eq!(groups.groups["g"].members[&first].given.len(), 1);
    }

    #[test]
    fn heartbeats_catch_up_from_older_generations_but_not_from_the_future() {
        let mut groups = Groups::new(SessionLimits::default());
        let now = Instant::now();
        let first = join_new(&mut groups, &["orders"], now).member_id;
        join_new(&mut groups, &["orders"], now);

        let caught_up = groups.heartbeat("g", &first, 1, now).unwrap();
        assert_eq!(caught_up.generation, 2);
        assert_eq!(caught_up.assignment[0].partitions.len(), 3);
        let future = GroupError::StaleGeneration {
            sent: 3,
            current: 2,
        };
        assert_eq!(groups.heartbeat("g", &first, 3, now), Err(future));
        let elsewhere = groups.heartbeat("other", &first, 1, now);
        assert_eq!(elsewhere, Err(GroupError::UnknownMember));
    }

    #[test]
    fn standalone_commits_are_allowed_only_without_members() {
        let mut groups = Groups::new(SessionLimits::default());
        let now = Instant::now();
        assert_eq!(groups.check_commit("g", None), Ok(()));
        let member = join_new(&mut groups, &["orders"], now).member_id;
        assert_eq!(
            groups.check_commit("g", None),
            Err(GroupError::GroupNotEmpty)
        );
        groups.leave("g", &member).unwrap();
        assert_eq!(groups.check_commit("g", None), Ok(()));
    }

    #[test]
    fn joins_are_validated_and_refused_joins_leave_no_group() {
        let mut groups = Groups::new(SessionLimits::default());
        let now = Instant::now();
        let subscription = topics(&["orders"]);
        let invalid = GroupError::InvalidSessionTimeout {
            min: SECOND,
            max: 300 * SECOND,
        };
        for timeout in [SECOND / 2, 301 * SECOND] {
            let strategy = Strategy::Sticky;
            let result = groups.join(
                "g",
                None,
                "c",
                &subscription,
                timeout,
                strategy,
                &catalog,
                now,
            );
            assert_eq!(result, Err(invalid.clone()));
        }
        let no_topics = join_as(&mut groups, None, &[], Strategy::Sticky, now);
        assert_eq!(no_topics, Err(GroupError::NoTopics));
        let unknown = join_as(
            &mut groups,
            Some("client-7"),
            &["orders"],
            Strategy::Sticky,
            now,
        );
        assert_eq!(unknown, Err(GroupError::UnknownMember));
        assert!(groups.list().is_empty());
    }

    #[test]
    fn later_members_must_use_the_groups_strategy_until_it_empties() {
        let mut groups = Groups::new(SessionLimits::default());
        let now = Instant::now();
        let first = join_as(&mut groups, None, &["orders"], Strategy::Range, now).unwrap();
        let sticky = join_as(&mut groups, None, &["orders"], Strategy::Sticky, now);
        let inconsistent = GroupError::InconsistentStrategy {
            group: Strategy::Range,
        };
        assert_eq!(sticky, Err(inconsistent));

        groups.leave("g", &first.member_id).unwrap();
        join_as(&mut groups, None, &["orders"], Strategy::RoundRobin, now).unwrap();
        assert_eq!(groups.describe("g").unwrap().strategy, Strategy::RoundRobin);
    }

    #[test]
    fn delete_refuses_groups_with_members_and_forgets_empty_ones() {
        let mut groups = Groups::new(SessionLimits::default());
        let now = Instant::now();
        assert_eq!(groups.delete("g"), Err(GroupError::UnknownGroup));
        let member = join_new(&mut groups, &["orders"], now).member_id;
        assert_eq!(groups.delete("g"), Err(GroupError::GroupNotEmpty));
        assert_eq!(groups.list(), [("g".to_string(), 1, 1)]);

        groups.leave("g", &member).unwrap();
        groups.delete("g").unwrap();
        assert_eq!(groups.describe("g"), None);
        assert_eq!(join_new(&mut groups, &["orders"], now).generation, 1);
    }

    #[test]
    fn describe_shows_members_and_their_assignments() {
        let mut groups = Groups::new(SessionLimits::default());
        let now = Instant::now();
        let joined = join_new(&mut groups, &["payments", "orders"], now);
        let description = groups.describe("g").unwrap();
        assert_eq!(description.state.to_string(), "stable");
        let member = MemberDescription {
            member_id: "client-1".to_string(),
            client_id: "client".to_string(),
            topics: topics(&["orders", "payments"]),
            session_timeout: 10 * SECOND,
            assignment: joined.assignment,
            revoking: Vec::new(),
            awaiting: Vec::new(),
        };
        assert_eq!(description.members, [member]);
    }

    #[test]
    fn strategy_names_round_trip() {
        for strategy in Strategy::ALL {
            assert_eq!(strategy.to_string().parse(), Ok(strategy));
        }
        assert_eq!(Strategy::default(), Strategy::Sticky);
        assert!("cooperative".parse::<Strategy>().is_err());
    }

    #[test]
    fn errors_say_what_to_do() {
        let stale = GroupError::StaleGeneration {
            sent: 3,
            current: 5,
        };
        let expected = "generation 3 is stale: the group is at generation 5; \
                        rejoin or take the new assignment from a heartbeat";
        assert_eq!(stale.to_string(), expected);
        let future = GroupError::StaleGeneration {
            sent: 7,
            current: 5,
        };
        assert!(future.to_string().contains("from the future"));
        let invalid = GroupError::InvalidSessionTimeout {
            min: SECOND,
            max: 300 * SECOND,
        };
        assert_eq!(
            invalid.to_string(),
            "session timeout must be between 1s and 300s"
        );
    }

    // The property: random joins, heartbeats (with or without applying the last answer),
    // leaves, expiries and topic resizes never let two members hold a partition; targets
    // give every partition to exactly one subscriber, balanced per topic; assignments are
    // part of the targets; and once every member acknowledges, assignments are the targets.

    const SLOTS: usize = 5;
    const TOPICS: [&str; 2] = ["left", "right"];

    #[derive(Debug, Clone)]
    enum Op {
        /// Joins a new member into the slot, or re-joins the slot's member; `topics` is a
        /// bit set over `TOPICS`.
        Join {
            slot: usize,
            topics: u8,
            session_secs: u64,
        },
        /// Heartbeats, having first applied the last answer if `apply`.
        Heartbeat {
            slot: usize,
            apply: bool,
        },
        Leave {
            slot: usize,
        },
        /// Moves the clock on and expires sessions.
        Advance {
            secs: u64,
        },
        Resize {
            topic: usize,
            partitions: Option<u32>,
        },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        prop_oneof![
            4 => (0..SLOTS, 1u8..=3, 1u64..=10)
                .prop_map(|(slot, topics, session_secs)| Op::Join { slot, topics, session_secs }),
            4 => (0..SLOTS, proptest::bool::ANY)
                .prop_map(|(slot, apply)| Op::Heartbeat { slot, apply }),
            2 => (0..SLOTS).prop_map(|slot| Op::Leave { slot }),
            2 => (0u64..6).prop_map(|secs| Op::Advance { secs }),
            1 => (0..TOPICS.len(), proptest::option::of(0u32..12))
                .prop_map(|(topic, partitions)| Op::Resize { topic, partitions }),
        ]
    }

    fn counts() -> impl proptest::strategy::Strategy<Value = [Option<u32>; 2]> {
        let count = || proptest::option::weighted(0.9, 0u32..12);
        [count(), count()]
    }

    fn catalog_of(counts: [Option<u32>; 2]) -> impl Fn(&str) -> Option<u32> {
        move |topic| {
            TOPICS
                .iter()
                .position(|t| *t == topic)
                .and_then(|i| counts[i])
        }
    }

    /// A client in a slot: its member id, the generation it applied, the one it heard last.
    struct Client {
        id: String,
        applied: u32,
        heard: u32,
    }

    /// The clients' side, and the topics.
    struct Model {
        groups: Groups,
        strategy: Strategy,
        counts: [Option<u32>; 2],
        slots: [Option<Client>; SLOTS],
        now: Instant,
    }

    impl Model {
        fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
            let before = self.groups.describe("g");
            match op {
                Op::Join {
                    slot,
                    topics,
                    session_secs,
                } => self.join(slot, topics, session_secs),
                Op::Heartbeat { slot, apply } => self.heartbeat(slot, apply),
                Op::Leave { slot } => {
                    if let Some(client) = self.slots[slot].take() {
                        self.groups.leave("g", &client.id).unwrap();
                        self.check_only_departed_moved(before)?;
                    }
                }
                Op::Advance { secs } => {
                    self.now += Duration::from_secs(secs);
                    let expired = self.groups.expire(self.now);
                    for slot in &mut self.slots {
                        let gone = |c: &Client| expired.iter().any(|(_, e)| *e == c.id);
                        if slot.as_ref().is_some_and(gone) {
                            *slot = None;
                        }
                    }
                    self.check_only_departed_moved(before)?;
                }
                Op::Resize { topic, partitions } => {
                    self.counts[topic] = partitions;
                    self.groups
                        .refresh_partition_counts(&catalog_of(self.counts));
                }
            }
            self.check_invariant()?;
            self.check_everyone_acknowledging_settles()
        }

        fn join(&mut self, slot: usize, topics: u8, session_secs: u64) {
            let subscription: Vec<String> = TOPICS
                .iter()
                .enumerate()
                .filter(|(i, _)| topics & (1 << i) != 0)
                .map(|(_, topic)| topic.to_string())
                .collect();
            let member_id = self.slots[slot].as_ref().map(|c| c.id.clone());
            let joined = self.groups.join(
                "g",
                member_id.as_deref(),
                "client",
                &subscription,
                Duration::from_secs(session_secs),
                self.strategy,
                &catalog_of(self.counts),
                self.now,
            );
            let joined = joined.unwrap();
            let applied = self.slots[slot].as_ref().map_or(0, |c| c.applied);
            self.slots[slot] = Some(Client {
                id: joined.member_id,
                applied,
                heard: joined.generation,
            });
        }

        fn heartbeat(&mut self, slot: usize, apply: bool) {
            if let Some(client) = &mut self.slots[slot] {
                if apply {
                    client.applied = client.heard;
                }
                let joined = self
                    .groups
                    .heartbeat("g", &client.id, client.applied, self.now)
                    .unwrap();
                client.heard = joined.generation;
            }
        }

        fn check_invariant(&self) -> Result<(), TestCaseError> {
            let Some(group) = self.groups.groups.get("g") else {
                return Ok(());
            };
            for (topic, count) in TOPICS.into_iter().zip(self.counts) {
                let mut targeted: Vec<u32> = Vec::new();
                let mut held: Vec<u32> = Vec::new();
                let mut loads: Vec<usize> = Vec::new();
                for (id, member) in &group.members {
                    let target = member.target.get(topic).cloned().unwrap_or_default();
                    if member.topics.contains(topic) {
                        loads.push(target.len());
                    } else {
                        prop_assert!(target.is_empty(), "{} targets {}", id, topic);
                    }
                    let assigned = member.assignment().get(topic).cloned().unwrap_or_default();
                    prop_assert!(
                        assigned.iter().all(|p| target.contains(p)),
                        "{} is assigned {:?} of {} outside its target {:?}",
                        id,
                        assigned,
                        topic,
                        target
                    );
                    targeted.extend(target);
                    held.extend(member.held().get(topic).cloned().unwrap_or_default());
                }
                targeted.sort_unstable();
                let expected: Vec<u32> = match count {
                    Some(n) if !loads.is_empty() => (0..n).collect(),
                    _ => Vec::new(),
                };
                prop_assert_eq!(targeted, expected, "{} in {:?}", topic, group);
                let spread = loads.iter().max().unwrap_or(&0) - loads.iter().min().unwrap_or(&0);
                prop_assert!(spread <= 1, "{} loads {:?}", topic, loads);
                let holders = held.len();
                held.sort_unstable();
                held.dedup();
                prop_assert_eq!(held.len(), holders, "{} held twice in {:?}", topic, group);
            }
            Ok(())
        }

        /// Every member hears its assignment and acknowledges it: then every assignment is
        /// its member's target, and the group is stable.
        fn check_everyone_acknowledging_settles(&self) -> Result<(), TestCaseError> {
            let mut groups = self.groups.clone();
            let Some(description) = groups.describe("g") else {
                return Ok(());
            };
            for member in &description.members {
                let id = &member.member_id;
                let told = groups.heartbeat("g", id, 0, self.now).unwrap().generation;
                groups.heartbeat("g", id, told, self.now).unwrap();
            }
            let group = &groups.groups["g"];
            for (id, member) in &group.members {
                prop_assert_eq!(member.assignment(), &member.target, "{} in {:?}", id, group);
                prop_assert!(member.revoking().is_empty(), "{} in {:?}", id, group);
            }
            let state = groups.describe("g").unwrap().state;
            let settled = if group.members.is_empty() {
                GroupState::Empty
            } else {
                GroupState::Stable
            };
            prop_assert_eq!(state, settled);
            Ok(())
        }

        /// Sticky only: when members go, every partition whose owner stays keeps it, in its
        /// target and in its assignment.
        fn check_only_departed_moved(
            &self,
            before: Option<GroupDescription>,
        ) -> Result<(), TestCaseError> {
            if self.strategy != Strategy::Sticky {
                return Ok(());
            }
            let (Some(before), Some(after)) = (before, self.groups.describe("g")) else {
                return Ok(());
            };
            for member in &after.members {
                let old = before
                    .members
                    .iter()
                    .find(|m| m.member_id == member.member_id);
                let Some(old) = old else { continue };
                for topic in TOPICS {
                    let target = |m: &MemberDescription| {
                        let mut all = partitions_of(m, topic);
                        all.extend(partitions_in(&m.awaiting, topic));
                        all
                    };
                    let (old_target, new_target) = (target(old), target(member));
                    let kept_target = old_target.iter().all(|p| new_target.contains(p));
                    let new = partitions_of(member, topic);
                    let kept = partitions_of(old, topic).iter().all(|p| new.contains(p));
                    prop_assert!(
                        kept && kept_target,
                        "{} lost {}: {:?} -> {:?}",
                        member.member_id,
                        topic,
                        before,
                        after
                    );
                }
            }
            Ok(())
        }
    }

    fn run(
        strategy: Strategy,
        counts: [Option<u32>; 2],
        ops: Vec<Op>,
    ) -> Result<(), TestCaseError> {
        let limits = SessionLimits {
            min: SECOND,
            max: 10 * SECOND,
        };
        let mut model = Model {
            groups: Groups::new(limits),
            strategy,
            counts,
            slots: Default::default(),
            now: Instant::now(),
        };
        for op in ops {
            model.apply(op)?;
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn range_never_shares_a_partition_and_settles_on_balanced_targets(
            counts in counts(),
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            run(Strategy::Range, counts, ops)?;
        }

        #[test]
        fn round_robin_never_shares_a_partition_and_settles_on_balanced_targets(
            counts in counts(),
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            run(Strategy::RoundRobin, counts, ops)?;
        }

        #[test]
        fn sticky_never_shares_a_partition_settles_on_balanced_targets_and_moves_only_departures(
            counts in counts(),
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            run(Strategy::Sticky, counts, ops)?;
        }
    }
}
