//! Consumer groups with broker-side assignment, as a pure state machine.
//!
//! As in Kafka's KIP-848 protocol, the coordinator computes every member's partitions; no
//! client leads the group. A member learns of a rebalance from its next heartbeat, which
//! carries the group's current generation and the member's assignment. There is no barrier
//! while members catch up, so for a heartbeat interval two members may fetch the same
//! partition; commits are fenced instead: only a member at the current generation may commit
//! ([`Groups::check_commit`]), so a slow member cannot overwrite the new owner's progress.
//!
//! Nothing here does I/O or reads the clock: the server passes `now` and the topics' partition
//! counts in, calls [`Groups::expire`] at [`Groups::next_deadline`], and keeps one [`Groups`]
//! per coordinator shard. Every map is ordered, so the same calls always give the same
//! assignments, which keeps tests and logs reproducible.
//!
//! Invariant after every call: each partition of each topic a group subscribes to (of the
//! partition count the coordinator last saw) is assigned to exactly one member subscribed to
//! that topic, and per topic the members' shares differ by at most one.

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
/// the partitions it owns in that generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The member's id, to send with every later request.
    pub member_id: String,
    /// The group's current generation: commits must carry it.
    pub generation: u32,
    /// The member's partitions, by topic name.
    pub assignment: Vec<MemberAssignment>,
}

/// Whether a group has members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members: the generation is kept for the next join, and standalone commits are
    /// allowed.
    Empty,
    /// Members with assignments; rebalances complete at once, so there is no state between.
    Stable,
}

impl GroupState {
    /// The name shown by describe: `empty` or `stable`.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "empty",
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
    /// Its partitions at the current generation.
    pub assignment: Vec<MemberAssignment>,
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
    /// The request's generation is not the group's: older means a rebalance happened since,
    /// newer means the member's view did not come from this coordinator.
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
#[derive(Debug)]
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
    /// group's topics starts a new generation and reassigns every member with the group's
    /// strategy; a re-join with nothing changed only renews the session. The strategy is
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
        Ok(group.joined(&member_id))
    }

    /// Keeps a member alive and tells it the current generation and its assignment: this is
    /// how members learn of rebalances, so an older `generation` is expected, not an error.
    ///
    /// A generation newer than the group's was never handed out by this coordinator: it gets
    /// `StaleGeneration` without renewing the session, and the member must join again.
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
        Ok(group.joined(member_id))
    }

    /// Removes a member at its request; the others are reassigned at the next generation.
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

    /// Removes the members whose session ended at or before `now` (so that calling this at
    /// [`next_deadline`](Self::next_deadline) makes progress), rebalancing each affected group
    /// once. Returns the removed `(group, member_id)` pairs, for logging.
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

    /// Whether an offset commit may proceed: `Some((member_id, generation))` from a member at
    /// the group's current generation, or `None` (a standalone commit, from offset reset
    /// tools or consumers that assign partitions themselves) to a group without members.
    ///
    /// Commits are checked per generation, not per partition: like Kafka, a member may
    /// commit partitions it does not own.
    pub fn check_commit(&self, group: &str, member: Option<(&str, u32)>) -> Result<(), GroupError> {
        let group = self.groups.get(group);
        match (group, member) {
            (None, None) => Ok(()),
            (Some(group), None) if group.members.is_empty() => Ok(()),
            (Some(_), None) => Err(GroupError::GroupNotEmpty),
            (None, Some(_)) => Err(GroupError::UnknownMember),
            (Some(group), Some((member_id, generation))) => {
                if !group.members.contains_key(member_id) {
                    Err(GroupError::UnknownMember)
                } else if generation != group.generation {
                    Err(GroupError::StaleGeneration {
                        sent: generation,
                        current: group.generation,
                    })
                } else {
                    Ok(())
                }
            }
        }
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

#[derive(Debug)]
struct Group {
    generation: u32,
    strategy: Strategy,
    members: BTreeMap<String, Member>,
    /// The partition counts of the subscribed topics at the last rebalance. Leave and expire
    /// rebalance with these, since they have no catalog to ask.
    partition_counts: BTreeMap<String, u32>,
}

#[derive(Debug)]
struct Member {
    client_id: String,
    topics: BTreeSet<String>,
    session_timeout: Duration,
    last_seen: Instant,
    assignment: Assignment,
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
    fn deadline(&self) -> Instant {
        self.last_seen + self.session_timeout
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
            assignment: Assignment::new(),
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

    fn rebalance(&mut self) {
        self.generation += 1;
        let subscribed: BTreeSet<String> = self
            .subscribed_topics()
            .into_iter()
            .map(str::to_owned)
            .collect();
        self.partition_counts
            .retain(|topic, _| subscribed.contains(topic));
        let mut assignments = assign(self.strategy, &self.members, &self.partition_counts);
        for (id, member) in &mut self.members {
            member.assignment = assignments.remove(id).unwrap_or_default();
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

    fn joined(&self, member_id: &str) -> Joined {
        Joined {
            member_id: member_id.to_owned(),
            generation: self.generation,
            assignment: to_member_assignments(&self.members[member_id].assignment),
        }
    }

    fn describe(&self) -> GroupDescription {
        let state = if self.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        let members = self
            .members
            .iter()
            .map(|(id, member)| MemberDescription {
                member_id: id.clone(),
                client_id: member.client_id.clone(),
                topics: member.topics.iter().cloned().collect(),
                session_timeout: member.session_timeout,
                assignment: to_member_assignments(&member.assignment),
            })
            .collect();
        GroupDescription {
            state,
            generation: self.generation,
            strategy: self.strategy,
            members,
        }
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
// (ordered by topic) and returns every member's assignment; a topic nobody subscribes to
// is skipped.

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
/// already hold the most (which maximises what stays); previous owners keep their partitions
/// up to their share, and the rest go to the subscribers below their share, least loaded
/// first.
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
    /// Its partitions of the topic: first the previous ones, then those it is given.
    held: Vec<u32>,
    share: usize,
}

impl<'a> StickyHolder<'a> {
    /// The member with its previous partitions of the topic that still exist.
    fn previous(id: &'a str, member: &Member, topic: &str, count: u32) -> StickyHolder<'a> {
        let held = member
            .assignment
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
    if partitions.peek().is_none() {
        return;
    }
    assignments
        .entry(member_id.to_owned())
        .or_default()
        .entry(topic.to_owned())
        .or_default()
        .extend(partitions);
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
        member
            .assignment
            .iter()
            .find(|assignment| assignment.topic == topic)
            .map(|assignment| assignment.partitions.clone())
            .unwrap_or_default()
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
        let before = owners(&groups, "orders");
        let newcomer = join_new(&mut groups, &["orders"], now);
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
        assert_eq!(
            newcomer.assignment[0].partitions,
            after[&newcomer.member_id]
        );
    }

    #[test]
    fn sticky_leave_moves_only_the_leavers_partitions() {
        let mut groups = Groups::new(SessionLimits::default());
        let now = Instant::now();
        let leaver = join_new(&mut groups, &["orders"], now).member_id;
        for _ in 0..2 {
            join_new(&mut groups, &["orders"], now);
        }
        let before = owners(&groups, "orders");
        groups.leave("g", &leaver).unwrap();
        let after = owners(&groups, "orders");

        assert_eq!(groups.describe("g").unwrap().generation, 4);
        for (id, new) in &after {
            let old = &before[id];
            assert!(
                old.iter().all(|p| new.contains(p)),
                "{id}: {old:?} -> {new:?}"
            );
            assert_eq!(new.len(), 3);
        }
    }

    #[test]
    fn leave_rebalances_the_others_and_an_empty_group_keeps_its_generation() {
        let mut groups = Groups::new(SessionLimits::default());
        let now = Instant::now();
        let first = join_new(&mut groups, &["orders"], now).member_id;
        let second = join_new(&mut groups, &["orders"], now).member_id;

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
    fn rejoining_with_the_same_topics_keeps_the_generation() {
        let mut groups = Groups::new(SessionLimits::default());
        let now = Instant::now();
        let joined = join_new(&mut groups, &["orders"], now);
        let id = Some(joined.member_id.as_str());

        let again = join_as(&mut groups, id, &["orders"], Strategy::Sticky, now).unwrap();
        assert_eq!(again, joined);
        let changed = join_as(&mut groups, id, &["payments"], Strategy::Sticky, now).unwrap();
        assert_eq!(changed.generation, 2);
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

        // Heartbeats keep `alive` past its first deadline; `silent` lasts until its own.
        for second in 1..10u32 {
            let now = start + second * SECOND;
            groups.heartbeat("g", &alive, 2, now).unwrap();
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
    fn commits_are_fenced_by_generation_and_membership() {
        let mut groups = Groups::new(SessionLimits::default());
        let now = Instant::now();
        let first = join_new(&mut groups, &["orders"], now).member_id;
        join_new(&mut groups, &["orders"], now);

        assert_eq!(groups.check_commit("g", Some((&first, 2))), Ok(()));
        for sent in [1, 3] {
            let stale = GroupError::StaleGeneration { sent, current: 2 };
            assert_eq!(groups.check_commit("g", Some((&first, sent))), Err(stale));
        }
        let stranger = groups.check_commit("g", Some(("client-99", 2)));
        assert_eq!(stranger, Err(GroupError::UnknownMember));
        let elsewhere = groups.check_commit("other", Some((&first, 2)));
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

    // The property: random joins, heartbeats, leaves, expiries and topic resizes keep every
    // partition assigned exactly once, to a subscriber, with per-topic loads within one.

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
        Heartbeat {
            slot: usize,
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
            3 => (0..SLOTS).prop_map(|slot| Op::Heartbeat { slot }),
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

    /// The clients' side: which member is in which slot at which generation, and the topics.
    struct Model {
        groups: Groups,
        strategy: Strategy,
        counts: [Option<u32>; 2],
        slots: [Option<(String, u32)>; SLOTS],
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
                Op::Heartbeat { slot } => self.heartbeat(slot),
                Op::Leave { slot } => {
                    if let Some((id, _)) = self.slots[slot].take() {
                        self.groups.leave("g", &id).unwrap();
                        self.check_only_departed_moved(before)?;
                    }
                }
                Op::Advance { secs } => {
                    self.now += Duration::from_secs(secs);
                    let expired = self.groups.expire(self.now);
                    for slot in &mut self.slots {
                        let gone = |(id, _): &(String, u32)| expired.iter().any(|(_, e)| e == id);
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
            self.check_invariant()
        }

        fn join(&mut self, slot: usize, topics: u8, session_secs: u64) {
            let subscription: Vec<String> = TOPICS
                .iter()
                .enumerate()
                .filter(|(i, _)| topics & (1 << i) != 0)
                .map(|(_, topic)| topic.to_string())
                .collect();
            let member_id = self.slots[slot].as_ref().map(|(id, _)| id.clone());
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
            self.slots[slot] = Some((joined.member_id, joined.generation));
        }

        fn heartbeat(&mut self, slot: usize) {
            if let Some((id, generation)) = &mut self.slots[slot] {
                let joined = self
                    .groups
                    .heartbeat("g", id, *generation, self.now)
                    .unwrap();
                *generation = joined.generation;
            }
        }

        fn check_invariant(&self) -> Result<(), TestCaseError> {
            let Some(group) = self.groups.describe("g") else {
                return Ok(());
            };
            for (topic, count) in TOPICS.into_iter().zip(self.counts) {
                let subscribed = |m: &MemberDescription| m.topics.iter().any(|t| t == topic);
                let mut owned: Vec<u32> = Vec::new();
                let mut loads: Vec<usize> = Vec::new();
                for member in &group.members {
                    let held = partitions_of(member, topic);
                    if subscribed(member) {
                        loads.push(held.len());
                    } else {
                        prop_assert!(held.is_empty(), "{} holds {}", member.member_id, topic);
                    }
                    owned.extend(held);
                }
                owned.sort_unstable();
                let expected: Vec<u32> = match count {
                    Some(n) if !loads.is_empty() => (0..n).collect(),
                    _ => Vec::new(),
                };
                prop_assert_eq!(owned, expected, "{} in {:?}", topic, group);
                let spread = loads.iter().max().unwrap_or(&0) - loads.iter().min().unwrap_or(&0);
                prop_assert!(spread <= 1, "{} loads {:?}", topic, loads);
            }
            Ok(())
        }

        /// Sticky only: when members go, every partition whose owner stays keeps it.
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
                    let new = partitions_of(member, topic);
                    let kept = partitions_of(old, topic).iter().all(|p| new.contains(p));
                    prop_assert!(
                        kept,
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
        fn range_keeps_every_partition_assigned_once_and_balanced(
            counts in counts(),
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            run(Strategy::Range, counts, ops)?;
        }

        #[test]
        fn round_robin_keeps_every_partition_assigned_once_and_balanced(
            counts in counts(),
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            run(Strategy::RoundRobin, counts, ops)?;
        }

        #[test]
        fn sticky_keeps_every_partition_assigned_once_and_balanced_and_moves_only_departures(
            counts in counts(),
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            run(Strategy::Sticky, counts, ops)?;
        }
    }
}
