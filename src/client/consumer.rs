//! The consumer: reads assigned partitions from their owning shards, with the next fetch
//! always on the wire while the application works on the previous records.
//!
//! **Shard-aware.** Metadata names the shard that owns each partition and that shard's direct
//! port; the consumer keeps one connection per shard endpoint and fetches every partition
//! from its owner, so the broker splices the bytes straight from the segment file and no
//! fetch hops between shards. A broker without direct ports (port 0) is reached through the
//! bootstrap address.
//!
//! **One fetch in flight per connection.** Each connection has a worker thread that owns its
//! [`Client`]: it takes one fetch request at a time from a channel, sends it, waits for the
//! answer and passes it to the consumer over one shared reply channel. A request carries all
//! of the connection's fetchable partitions (the partition order rotates from one request to
//! the next, so the response budget is shared fairly); the broker long-polls it with
//! `max_wait`/`min_bytes`, so an idle consumer waits on the broker, never in a loop. Memory is
//! bounded by one response of at most `max_bytes` (plus one batch) per connection.
//!
//! **Pipelining.** When a response arrives, [`Consumer::poll`] moves the positions past its
//! last complete batches, read from the batch headers alone, and sends the connection's next
//! fetch *before* it decodes the records, so the broker and the connection's worker work
//! while the consumer decodes and the application processes. A poll takes at most one
//! response per connection: a next response that is already there waits for the next poll,
//! so one poll never returns more than a response's worth per connection. A response is
//! only ever applied to a partition whose position is still the offset it was fetched from
//! and that no error holds: a [`Consumer::seek`] made meanwhile makes it stale, and so does
//! a damaged batch in the response before it (decoding stops there and sets the position
//! back), and it is dropped.
//!
//! **What comes back.** The first batch of a fetch may start below the position: those
//! records are skipped. The last batch may be cut short: it is dropped and fetched again
//! from its start. Records are zero-copy slices of the fetched buffer. A partition error
//! (say `OffsetOutOfRange`) or a corrupt batch (a CRC mismatch with `check_crcs`, the
//! default; record offsets that disagree with the batch header; or a first batch whose
//! length runs past what the broker returned, which the broker never does for a sound batch)
//! is returned from `poll` as an error, after any records already decoded; the partition keeps its
//! position and sits out fetches until the error is returned, and is fetched again on the
//! next `poll` (the same error again, unless the application seeks): nothing is reset or
//! skipped silently.
//!
//! **Connections that break.** A connection that is reset, closed or silent for longer than
//! `max_wait` plus `request_timeout` is dropped, and opened again after a backoff
//! ([`Backoff`]: 50 ms doubling to 2 s, ±20 % jitter) that ends at the first answer; the
//! positions are untouched, so fetching resumes exactly where it stopped. `poll` does not
//! return these errors unless `reconnect_timeout` is set and has run out.
//!
//! Dropping the consumer closes the channels; each worker ends when its in-flight fetch
//! returns (within `max_wait`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::backoff::Backoff;
use super::group::{GroupConfig, Membership, OffsetReset, RebalanceListener};
use super::{Client, ClientError};
use crate::protocol::api::{
    offset_spec, FetchPartition, FetchRequest, FetchResponse, FetchTopic, Request, Response,
    ShardEndpoint,
};
use crate::protocol::batch::{self, BatchError};
use crate::protocol::error::parse_fenced;
use crate::protocol::{ErrorCode, WireError};

/// The broker caps a fetch's `max_wait_ms` at this.
const MAX_WAIT_CAP: Duration = Duration::from_secs(60);

/// Where a newly assigned partition starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The first offset still stored.
    Earliest,
    /// The high watermark: only records produced after the assignment.
    Latest,
    /// This offset (records below it in its batch are skipped).
    Offset(i64),
    /// The first batch whose max timestamp is at or after this time (ms since the epoch);
    /// the high watermark if there is none.
    Timestamp(i64),
}

/// Consumer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Any broker address (`host:port`); the shards' direct ports are learned from it.
    pub bootstrap: String,
    /// How long the broker holds a fetch that has less than `min_bytes` to return.
    pub max_wait: Duration,
    /// Bytes that make the broker answer a fetch before `max_wait`. With 0 (or a zero
    /// `max_wait`) the broker answers at once, so an idle `poll` becomes a loop of round
    /// trips until its timeout.
    pub min_bytes: u32,
    /// Budget of one fetch (per connection, and per partition within it). The broker may
    /// exceed it by one batch so that a consumer always makes progress.
    pub max_bytes: u32,
    /// Check every fetched batch's CRC-32C before decoding it (on by default: a batch the
    /// disk or the network damaged is then an error, never data). Off, a damaged record is
    /// still caught when it breaks the batch's framing or offsets, but a flipped value byte
    /// is not.
    pub check_crcs: bool,
    /// How long connecting and each request may take (a fetch: `max_wait` more) before
    /// the connection is dropped as broken (`request.timeout.ms`).
    pub request_timeout: Duration,
    /// First pause before connecting again to a broker that broke a connection; it
    /// doubles up to `reconnect_backoff_max`, with ±20 % jitter (`reconnect.backoff.ms`).
    pub reconnect_backoff: Duration,
    /// Longest pause between reconnects (`reconnect.backoff.max.ms`).
    pub reconnect_backoff_max: Duration,
    /// How long a broker may stay unreachable before `poll` returns the connection
    /// error; `None`: reconnect for ever, as Kafka consumers do.
    pub reconnect_timeout: Option<Duration>,
    /// Who to log in as on a broker that requires authentication (`None`: anonymous).
    pub credentials: Option<super::Credentials>,
    /// Connect in TLS, trusting these CAs (`None`: plaintext).
    pub tls: Option<super::ClientTls>,
}

impl Default for ConsumerConfig {
    /// A local broker, a 500 ms long-poll that answers on the first byte, 4 MiB fetches,
    /// CRCs checked.
    fn default() -> Self {
        ConsumerConfig {
            bootstrap: "127.0.0.1:9292".into(),
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 4 << 20,
            check_crcs: true,
            request_timeout: super::DEFAULT_REQUEST_TIMEOUT,
            reconnect_backoff: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(2),
            reconnect_timeout: None,
            credentials: None,
            tls: None,
        }
    }
}

/// One consumed record. Key, value and headers share the fetched buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition index.
    pub partition: u32,
    /// The record's offset.
    pub offset: i64,
    /// The record's timestamp (ms).
    pub timestamp: i64,
    /// The key, `None` when null.
    pub key: Option<Bytes>,
    /// The value, `None` when null (a tombstone).
    pub value: Option<Bytes>,
    /// Headers in wire order: key and value (`None` when null).
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

/// An assigned partition.
#[derive(Debug)]
struct PartitionState {
    /// The next offset to return.
    position: i64,
    /// Address of the owning shard's connection.
    endpoint: Arc<str>,
    /// An error for this partition waits to be returned; it is not fetched meanwhile.
    paused: bool,
}

/// A topic and partition index.
type PartitionKey = (Arc<str>, u32);

/// A partition in an in-flight fetch and the offset it was fetched from.
type Fetched = (Arc<str>, u32, i64);

/// The consumer's side of one shard connection.
struct Connection {
    /// Tells replies of this connection apart from those of one it replaced.
    token: u64,
    /// Requests for the worker thread.
    requests: Sender<Request>,
    /// The partitions of the fetch on the wire, if one is.
    in_flight: Option<Vec<Fetched>>,
    /// Rotates the partition order of successive requests.
    rotation: usize,
}

/// A shard connection that broke: when to try again.
struct Down {
    /// Not connected again before this instant.
    retry_at: Instant,
    backoff: Backoff,
    /// The first failure since the last answer.
    since: Instant,
}

/// A worker's answer to one request.
struct Reply {
    token: u64,
    result: Result<Result<Response, WireError>, ClientError>,
}

/// A blocking consumer of assigned partitions; see the module docs for how it works.
pub struct Consumer {
    config: ConsumerConfig,
    /// For metadata and list offsets; reconnected after an I/O error.
    bootstrap: Option<Client>,
    assignment: HashMap<Arc<str>, HashMap<u32, PartitionState>>,
    connections: HashMap<Arc<str>, Connection>,
    /// Kept so the reply channel never disconnects; workers get clones.
    replies_tx: Sender<Reply>,
    replies: Receiver<Reply>,
    /// Replies received but left for the next poll: a connection's next response, which
    /// came while the poll was still decoding the one before (see [`Consumer::poll`]).
    held_back: VecDeque<Reply>,
    next_token: u64,
    /// Errors not returned yet, with the partition they stopped (if any).
    errors: VecDeque<(Option<PartitionKey>, ClientError)>,
    /// The group this consumer subscribed through, if any.
    membership: Option<Membership>,
    listener: Option<Box<dyn RebalanceListener>>,
    last_commit: Instant,
    /// Shard connections that broke and wait for their reconnect.
    down: HashMap<Arc<str>, Down>,
}

/// A commit refused because the group moved on (the next heartbeat brings the new
/// assignment) or forgot this member (the heartbeat joins again).
fn is_fenced(e: &ClientError) -> bool {
    matches!(
        e.code(),
        Some(ErrorCode::StaleGeneration | ErrorCode::UnknownMember)
    )
}

/// A failure worth trying again: the connection broke, or the broker asked for a retry.
fn is_retriable(e: &ClientError) -> bool {
    e.is_retriable()
}

impl Drop for Consumer {
    /// A subscribed consumer commits (with auto-commit) and leaves its group.
    fn drop(&mut self) {
        if let Err(e) = self.leave_group() {
            tracing::debug!("leaving the group on drop: {e}");
        }
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("bootstrap", &self.config.bootstrap)
            .field("assignment", &self.assignment)
            .field("connections", &self.connections.len())
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// Connects to the bootstrap broker (no partitions assigned yet).
    pub fn new(config: ConsumerConfig) -> Result<Consumer, ClientError> {
        let mut bootstrap = connect(
            &config.bootstrap,
            config.request_timeout,
            config.credentials.as_ref(),
            config.tls.as_ref(),
        )?;
        bootstrap.api_versions()?;
        let (replies_tx, replies) = mpsc::channel();
        Ok(Consumer {
            config,
            bootstrap: Some(bootstrap),
            assignment: HashMap::new(),
            connections: HashMap::new(),
            replies_tx,
            replies,
            held_back: VecDeque::new(),
            next_token: 1,
            errors: VecDeque::new(),
            membership: None,
            listener: None,
            last_commit: Instant::now(),
            down: HashMap::new(),
        })
    }

    /// Adds partitions of `topic` to the assignment (or restarts ones already in it) at
    /// `start`. Nothing is assigned if any partition is unknown
    /// (`UnknownTopicOrPartition`) or a start offset cannot be resolved.
    pub fn assign(
        &mut self,
        topic: &str,
        partitions: &[u32],
        start: StartAt,
    ) -> Result<(), ClientError> {
        let metadata = self.with_bootstrap(|c| c.metadata(&[topic]))?;
        let owners = match metadata.topics.into_iter().find(|t| t.name == topic) {
            Some(t) if t.error == ErrorCode::None => t.owners,
            Some(t) => return Err(WireError::new(t.error, format!("topic {topic}")).into()),
            None => {
                return Err(ClientError::Unexpected(format!(
                    "metadata response without topic {topic}"
                )))
            }
        };
        let mut resolved = Vec::with_capacity(partitions.len());
        for &partition in partitions {
            let owner = owners
                .get(partition as usize)
                .copied()
                .ok_or_else(|| unknown_partition(topic, partition, owners.len()))?;
            let endpoint = shard_endpoint(&metadata.shards, owner, &self.config.bootstrap);
            let position = self.resolve(topic, partition, start)?;
            resolved.push((partition, Arc::<str>::from(endpoint), position));
        }
        let topic = match self.assignment.get_key_value(topic) {
            Some((name, _)) => name.clone(),
            None => Arc::from(topic),
        };
        let states = self.assignment.entry(topic.clone()).or_default();
        for (partition, endpoint, position) in resolved {
            states.insert(
                partition,
                PartitionState {
                    position,
                    endpoint,
                    paused: false,
                },
            );
            self.errors
                .retain(|(key, _)| key.as_ref() != Some(&(topic.clone(), partition)));
        }
        Ok(())
    }

    /// Moves an assigned partition to `offset`. A fetch in flight for it is dropped when it
    /// returns, and an error waiting to be returned for it is discarded.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: i64) -> Result<(), ClientError> {
        if offset < 0 {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!("cannot seek {topic}/{partition} to negative offset {offset}"),
            )
            .into());
        }
        let state = self
            .assignment
            .get_mut(topic)
            .and_then(|states| states.get_mut(&partition))
            .ok_or_else(|| not_assigned(topic, partition))?;
        state.position = offset;
        state.paused = false;
        self.errors
            .retain(|(k, _)| k.as_ref().map(|(t, p)| (&**t, *p)) != Some((topic, partition)));
        Ok(())
    }

    /// Removes partitions of `topic` from the assignment (a fetch in flight for them is
    /// dropped when it returns). Partitions not assigned are ignored.
    pub fn unassign(&mut self, topic: &str, partitions: &[u32]) {
        if let Some(states) = self.assignment.get_mut(topic) {
            for p in partitions {
                states.remove(p);
            }
            if states.is_empty() {
                self.assignment.remove(topic);
            }
        }
        self.errors.retain(|(key, _)| {
            !key.as_ref()
                .is_some_and(|(t, p)| &**t == topic && partitions.contains(p))
        });
    }

    /// Joins consumer group `group` for `topics`: the broker assigns partitions to the
    /// group's members and moves them when members come and go. Positions start at the
    /// group's committed offsets (or `config.reset`). Not to be mixed with [`assign`].
    ///
    /// [`assign`]: Consumer::assign
    pub fn subscribe(
        &mut self,
        group: &str,
        topics: &[&str],
        config: GroupConfig,
    ) -> Result<(), ClientError> {
        if self.membership.is_some() || !self.assignment.is_empty() {
            return Err(ClientError::Unexpected(
                "subscribe needs a consumer without partitions or a group".into(),
            ));
        }
        let topics = topics.iter().map(ToString::to_string).collect();
        let (membership, joined) = Membership::join(
            &self.config.bootstrap,
            self.config.credentials.as_ref(),
            self.config.tls.as_ref(),
            group,
            topics,
            config,
        )?;
        self.membership = Some(membership);
        self.last_commit = Instant::now();
        self.apply_membership(joined)
    }

    /// Receives revocations and assignments of a subscribed consumer.
    pub fn set_rebalance_listener(&mut self, listener: impl RebalanceListener + 'static) {
        self.listener = Some(Box::new(listener));
    }

    /// The partitions a subscribed consumer holds now, and its generation.
    pub fn group_assignment(&self) -> Option<(u32, Vec<(String, u32)>)> {
        let m = self.membership.as_ref()?;
        Some((m.generation, m.assigned.iter().cloned().collect()))
    }

    /// Commits the positions of every partition this subscribed consumer holds. Fails
    /// with `StaleGeneration` or `UnknownMember` when the group no longer counts this
    /// consumer as a member in that generation (its session ended): the heartbeat joins
    /// again and the next `poll` adopts the new membership.
    pub fn commit(&mut self) -> Result<(), ClientError> {
        let Some(m) = &self.membership else {
            return Err(ClientError::Unexpected(
                "commit needs a consumer that subscribed to a group".into(),
            ));
        };
        let partitions: Vec<(String, u32)> = m.assigned.iter().cloned().collect();
        let (group, member, generation) = (m.group.clone(), m.member_id.clone(), m.generation);
        self.commit_positions(&group, &member, generation, &partitions)?;
        self.last_commit = Instant::now();
        Ok(())
    }

    fn commit_positions(
        &mut self,
        group: &str,
        member: &str,
        generation: u32,
        partitions: &[(String, u32)],
    ) -> Result<(), ClientError> {
        let offsets: Vec<(&str, u32, i64)> = partitions
            .iter()
            .filter_map(|(t, p)| Some((t.as_str(), *p, self.position(t, *p)?)))
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        self.with_bootstrap(|c| c.commit_offsets(group, Some((member, generation)), &offsets))
    }

    /// Commits (with auto-commit) and leaves the group, so its partitions move to the
    /// other members at once instead of after the session timeout.
    pub fn close(mut self) -> Result<(), ClientError> {
        self.leave_group()
    }

    fn leave_group(&mut self) -> Result<(), ClientError> {
        let Some(m) = &self.membership else {
            return Ok(());
        };
        let committed = if m.config.auto_commit.is_some() {
            // Commit under the newest generation the heartbeat brought back.
            let adopted = match m.take_update() {
                Ok(Some(update)) => self.apply_membership(update),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            match adopted.and_then(|()| self.commit()) {
                // Fenced: the group moved on and the partitions' new owners commit them.
                Err(e) if is_fenced(&e) => {
                    tracing::debug!("final commit fenced: {e}");
                    Ok(())
                }
                other => other,
            }
        } else {
            Ok(())
        };
        if let Some(mut m) = self.membership.take() {
            m.leave(
                &self.config.bootstrap,
                self.config.credentials.as_ref(),
                self.config.tls.as_ref(),
            );
        }
        committed
    }

    /// Adopts a membership from the broker: revokes what left the assignment (committing
    /// it first with auto-commit), assigns what joined it at the committed offsets, and
    /// has the heartbeat acknowledge the new generation.
    fn apply_membership(
        &mut self,
        joined: crate::protocol::api::MembershipResponse,
    ) -> Result<(), ClientError> {
        let Some(m) = &self.membership else {
            return Ok(());
        };
        let wanted: BTreeSet<(String, u32)> = joined
            .assignment
            .iter()
            .flat_map(|t| t.partitions.iter().map(|&p| (t.topic.clone(), p)))
            .collect();
        let revoked: Vec<(String, u32)> = m.assigned.difference(&wanted).cloned().collect();
        let added: Vec<(String, u32)> = wanted.difference(&m.assigned).cloned().collect();
        let group = m.group.clone();
        let reset = m.config.reset;
        let auto_commit = m.config.auto_commit.is_some();
        let (member, generation) = (m.member_id.clone(), m.generation);
        // The revoked partitions stay this member's, and nobody else's, until the heartbeat
        // acknowledges the new generation: their positions are committed now, in the
        // generation the member works in, so their next owner resumes right there.
        if !revoked.is_empty() {
            if auto_commit {
                match self.commit_positions(&group, &member, generation, &revoked) {
                    Ok(()) => {}
                    Err(e) if is_retriable(&e) => return Err(e),
                    // Our session ended (the partitions may be read again by their new
                    // owner) or a partition is gone: nothing to wait for.
                    Err(e) => tracing::warn!("committing revoked partitions: {e}"),
                }
            }
            if let Some(l) = self.listener.as_mut() {
                l.on_revoked(&revoked);
            }
            for (topic, partition) in &revoked {
                self.unassign(topic, &[*partition]);
            }
        }
        if !added.is_empty() {
            let wanted_offsets: Vec<(&str, u32)> =
                added.iter().map(|(t, p)| (t.as_str(), *p)).collect();
            let committed = self.with_bootstrap(|c| c.fetch_offsets(&group, &wanted_offsets))?;
            for (topic, partition) in &added {
                let offset = committed
                    .iter()
                    .find(|(t, p, _)| t == topic && p == partition)
                    .map_or(-1, |(_, _, o)| *o);
                let start = match (offset, reset) {
                    (o, _) if o >= 0 => StartAt::Offset(o),
                    (_, OffsetReset::Earliest) => StartAt::Earliest,
                    (_, OffsetReset::Latest) => StartAt::Latest,
                };
                self.assign(topic, &[*partition], start)?;
            }
        }
        // Only now is the membership adopted: if anything above failed, the update is
        // applied again at the next poll.
        if let Some(m) = self.membership.as_mut() {
            m.member_id = joined.member_id.clone();
            m.generation = joined.generation;
            m.assigned = wanted;
            m.applied(&joined.member_id, joined.generation, !revoked.is_empty());
        }
        if !added.is_empty() {
            if let Some(l) = self.listener.as_mut() {
                l.on_assigned(&added);
            }
        }
        Ok(())
    }

    /// For a subscribed consumer: adopts a new membership and commits when due.
    fn group_tick(&mut self) -> Result<(), ClientError> {
        let Some(m) = &self.membership else {
            return Ok(());
        };
        if let Some(update) = m.take_update()? {
            if let Err(e) = self.apply_membership(update.clone()) {
                if let Some(m) = &self.membership {
                    m.retry(update);
                }
                return Err(e);
            }
        }
        let due = self
            .membership
            .as_ref()
            .and_then(|m| m.config.auto_commit)
            .is_some_and(|every| self.last_commit.elapsed() >= every);
        if due {
            if let Err(e) = self.commit() {
                self.last_commit = Instant::now();
                if !is_fenced(&e) {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The next offset `poll` will return for an assigned partition.
    pub fn position(&self, topic: &str, partition: u32) -> Option<i64> {
        Some(self.assignment.get(topic)?.get(&partition)?.position)
    }

    /// Returns the records available now, or waits up to `timeout` for some (an empty `Vec`
    /// on timeout). Never busy-loops: waiting is the broker's long-poll. Records of one
    /// partition come in offset order.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        // None: a timeout too long to add to a clock reading means "wait forever".
        let deadline = Instant::now().checked_add(timeout);
        let mut records = Vec::new();
        loop {
            if let Some(err) = self.take_error() {
                return Err(err);
            }
            match self.group_tick() {
                // The broker is away: the heartbeat reconnects, and the tick is made again
                // at the next wake-up.
                Err(e) if e.is_retriable() => {
                    tracing::warn!("group: {e}; trying again");
                }
                other => other?,
            }
            self.fetch_all()?;
            let remaining = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
            });
            // A group member looks for a new assignment at least every heartbeat.
            let wait = match &self.membership {
                Some(m) => remaining.min(m.config.heartbeat_interval),
                None => remaining,
            };
            // Wake up for the next reconnect.
            let wait = match self.down.values().map(|d| d.retry_at).min() {
                Some(at) => wait.min(at.saturating_duration_since(Instant::now())),
                None => wait,
            };
            let reply = match self.held_back.pop_front() {
                Some(reply) => reply,
                None => match self.replies.recv_timeout(wait) {
                    Ok(reply) => reply,
                    Err(RecvTimeoutError::Timeout) if wait < remaining => continue,
                    Err(RecvTimeoutError::Timeout) => return Ok(records),
                    Err(RecvTimeoutError::Disconnected) => {
                        unreachable!("the consumer holds a sender of its reply channel")
                    }
                },
            };
            // Then whatever else is here, one reply per connection: a connection's next
            // fetch goes out before its last response is decoded, so its next response
            // can be here already; it waits for the next poll, which then returns at once.
            let mut handled = vec![reply.token];
            self.handle(reply, &mut records);
            loop {
                let (reply, held) = match self.held_back.pop_front() {
                    Some(reply) => (reply, true),
                    None => match self.replies.try_recv() {
                        Ok(reply) => (reply, false),
                        Err(_) => break,
                    },
                };
                if handled.contains(&reply.token) {
                    if held {
                        self.held_back.push_front(reply);
                    } else {
                        self.held_back.push_back(reply);
                    }
                    break;
                }
                handled.push(reply.token);
                self.handle(reply, &mut records);
            }
            if !records.is_empty() {
                return Ok(records);
            }
        }
    }

    /// Runs a call on the bootstrap connection, reconnecting first if an earlier call broke
    /// it.
    fn with_bootstrap<T>(
        &mut self,
        call: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let client = match &mut self.bootstrap {
            Some(client) => client,
            None => self.bootstrap.insert(connect(
                &self.config.bootstrap,
                self.config.request_timeout,
                self.config.credentials.as_ref(),
                self.config.tls.as_ref(),
            )?),
        };
        let result = call(client);
        if result.as_ref().is_err_and(ClientError::is_connection_error) {
            self.bootstrap = None;
        }
        result
    }

    /// The offset `start` means for one partition.
    fn resolve(&mut self, topic: &str, partition: u32, start: StartAt) -> Result<i64, ClientError> {
        let list = |c: &mut Client, spec| c.list_offset(topic, partition, spec);
        match start {
            StartAt::Earliest => self.with_bootstrap(|c| list(c, offset_spec::EARLIEST)),
            StartAt::Latest => self.with_bootstrap(|c| list(c, offset_spec::LATEST)),
            StartAt::Offset(offset) if offset >= 0 => Ok(offset),
            StartAt::Timestamp(ts) if ts >= 0 => self.with_bootstrap(|c| match list(c, ts)? {
                -1 => list(c, offset_spec::LATEST),
                offset => Ok(offset),
            }),
            StartAt::Offset(_) | StartAt::Timestamp(_) => Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!("{topic}/{partition}: start {start:?} is negative"),
            )
            .into()),
        }
    }

    /// The oldest error not returned yet; its partition becomes fetchable again.
    fn take_error(&mut self) -> Option<ClientError> {
        let (key, err) = self.errors.pop_front()?;
        if let Some((topic, partition)) = key {
            if let Some(state) = self
                .assignment
                .get_mut(&topic)
                .and_then(|t| t.get_mut(&partition))
            {
                state.paused = false;
            }
        }
        Some(err)
    }

    /// Sends a fetch on every connection that has fetchable partitions and none in flight.
    fn fetch_all(&mut self) -> Result<(), ClientError> {
        let mut endpoints: Vec<Arc<str>> = self
            .assignment
            .values()
            .flat_map(|t| t.values())
            .filter(|s| !s.paused)
            .map(|s| s.endpoint.clone())
            .collect();
        endpoints.sort_unstable();
        endpoints.dedup();
        for endpoint in endpoints {
            self.fetch(&endpoint)?;
        }
        Ok(())
    }

    /// Sends the next fetch of one connection (connecting first if needed), unless one is
    /// in flight or none of its partitions is fetchable.
    fn fetch(&mut self, endpoint: &Arc<str>) -> Result<(), ClientError> {
        if self
            .connections
            .get(endpoint)
            .is_some_and(|c| c.in_flight.is_some())
        {
            return Ok(());
        }
        let mut wanted: Vec<Fetched> = self
            .assignment
            .iter()
            .flat_map(|(topic, states)| {
                states
                    .iter()
                    .filter(|(_, s)| !s.paused && s.endpoint == *endpoint)
                    .map(|(&p, s)| (topic.clone(), p, s.position))
            })
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        if !self.connections.contains_key(endpoint) {
            if self
                .down
                .get(endpoint)
                .is_some_and(|d| Instant::now() < d.retry_at)
            {
                return Ok(());
            }
            let connection = match self.open(endpoint) {
                Ok(connection) => connection,
                Err(err) if err.is_connection_error() => {
                    return match self.broke(endpoint, err) {
                        Some(err) => Err(err),
                        None => Ok(()),
                    };
                }
                Err(err) => return Err(err),
            };
            self.connections.insert(endpoint.clone(), connection);
        }
        let Some(connection) = self.connections.get_mut(endpoint) else {
            return Ok(());
        };
        wanted.sort_unstable();
        let len = wanted.len();
        wanted.rotate_left(connection.rotation % len);
        connection.rotation = connection.rotation.wrapping_add(1);
        let request = fetch_request(&wanted, &self.config);
        if connection.requests.send(request).is_err() {
            self.connections.remove(endpoint);
            return Err(ClientError::Unexpected(format!(
                "the connection worker for {endpoint} has stopped"
            )));
        }
        connection.in_flight = Some(wanted);
        Ok(())
    }

    /// Records that the connection to `endpoint` broke (or did not open) and when to try
    /// again. Returns the error once the broker has been unreachable for longer than
    /// `reconnect_timeout`.
    fn broke(&mut self, endpoint: &Arc<str>, err: ClientError) -> Option<ClientError> {
        let now = Instant::now();
        let config = &self.config;
        let down = self.down.entry(endpoint.clone()).or_insert_with(|| Down {
            retry_at: now,
            backoff: Backoff::new(config.reconnect_backoff, config.reconnect_backoff_max),
            since: now,
        });
        if config
            .reconnect_timeout
            .is_some_and(|limit| now.duration_since(down.since) >= limit)
        {
            self.down.remove(endpoint);
            return Some(err);
        }
        let pause = down.backoff.next_delay();
        down.retry_at = now + pause;
        tracing::warn!(
            "{err}; reconnecting in {} ms (attempt {})",
            pause.as_millis(),
            down.backoff.attempts()
        );
        None
    }

    /// Connects to a shard and starts its worker thread.
    fn open(&mut self, endpoint: &str) -> Result<Connection, ClientError> {
        let timeout = self.config.max_wait.min(MAX_WAIT_CAP) + self.config.request_timeout;
        let client = connect(
            endpoint,
            timeout,
            self.config.credentials.as_ref(),
            self.config.tls.as_ref(),
        )?;
        let token = self.next_token;
        self.next_token += 1;
        let (requests, incoming) = mpsc::channel();
        let replies = self.replies_tx.clone();
        thread::Builder::new()
            .name(format!("eventflow-consumer {endpoint}"))
            .spawn(move || run_connection(client, token, incoming, replies))
            .map_err(|source| ClientError::Io {
                addr: endpoint.to_string(),
                source,
            })?;
        Ok(Connection {
            token,
            requests,
            in_flight: None,
            rotation: 0,
        })
    }

    /// Applies one worker reply: decodes its records into `out`, moves positions, queues
    /// errors, and puts the connection's next fetch on the wire.
    fn handle(&mut self, reply: Reply, out: &mut Vec<ConsumerRecord>) {
        let Some((endpoint, connection)) = self
            .connections
            .iter_mut()
            .find(|(_, c)| c.token == reply.token)
        else {
            return; // from a connection that has been replaced
        };
        let endpoint = endpoint.clone();
        let fetched = connection.in_flight.take().unwrap_or_default();
        match reply.result {
            Err(err) => {
                // The worker has stopped; a later poll reconnects (after a backoff when
                // the connection broke) and fetches again from the positions.
                self.connections.remove(&endpoint);
                if err.is_connection_error() {
                    if let Some(err) = self.broke(&endpoint, err) {
                        self.errors.push_back((None, err));
                    }
                } else {
                    self.errors.push_back((None, err));
                }
                return;
            }
            Ok(Err(wire)) => self.errors.push_back((None, wire.into())),
            Ok(Ok(Response::Fetch(response))) => {
                if self.down.remove(&endpoint).is_some() {
                    tracing::info!("fetching from {endpoint} again");
                }
                // The next fetch goes out before this one is decoded, from the positions
                // its batch headers give: the broker and the connection's worker then work
                // while this thread decodes.
                let current = self.advance_past(&response, &fetched);
                if let Err(err) = self.fetch(&endpoint) {
                    self.errors.push_back((None, err));
                }
                self.apply(response, &fetched, &current, out);
                return;
            }
            Ok(Ok(other)) => self.errors.push_back((
                None,
                ClientError::Unexpected(format!("expected a fetch response, got {other:?}")),
            )),
        }
        if let Err(err) = self.fetch(&endpoint) {
            self.errors.push_back((None, err));
        }
    }

    /// Marks which partition entries of `response` (in order, across topics) are for
    /// partitions still at the offsets they were fetched from and not held by an error, and
    /// moves each such entry's partition, if it came without an error, past the whole
    /// batches it holds, by their headers alone ([`decode_fetched`] then normally ends
    /// there too; where it stops earlier, at a damaged batch, it sets the position back and
    /// holds the partition, and the fetch sent meanwhile is not applied).
    fn advance_past(&mut self, response: &FetchResponse, fetched: &[Fetched]) -> Vec<bool> {
        let mut current = Vec::new();
        for topic in &response.topics {
            let mut states = self.assignment.get_mut(&*topic.topic);
            for p in &topic.partitions {
                let requested = fetched
                    .iter()
                    .find(|(t, partition, _)| **t == *topic.topic && *partition == p.partition);
                let state = states.as_mut().and_then(|s| s.get_mut(&p.partition));
                let (Some((_, _, offset)), Some(state)) = (requested, state) else {
                    current.push(false);
                    continue;
                };
                // Seeked while the fetch was on the wire, or held by an error that the
                // response to an earlier fetch brought.
                let is_current = state.position == *offset && !state.paused;
                if is_current && p.error == ErrorCode::None {
                    state.position = end_of_whole_batches(*offset, &p.records);
                }
                current.push(is_current);
            }
        }
        current
    }

    /// Applies a fetch response to the partitions [`Self::advance_past`] found current.
    fn apply(
        &mut self,
        response: FetchResponse,
        fetched: &[Fetched],
        current: &[bool],
        out: &mut Vec<ConsumerRecord>,
    ) {
        let mut current = current.iter();
        for topic in response.topics {
            let mut assigned = self
                .assignment
                .iter_mut()
                .find(|(name, _)| ***name == *topic.topic);
            for p in topic.partitions {
                if current.next() != Some(&true) {
                    continue;
                }
                let requested = fetched
                    .iter()
                    .find(|(t, partition, _)| **t == *topic.topic && *partition == p.partition);
                let Some((name, states)) = assigned.as_mut() else {
                    continue;
                };
                let (Some((_, _, offset)), Some(state)) = (requested, states.get_mut(&p.partition))
                else {
                    continue;
                };
                if p.error != ErrorCode::None {
                    state.paused = true;
                    if let (ErrorCode::CorruptBatch, Some((_, last))) =
                        (p.error, parse_fenced(&p.message))
                    {
                        // Offsets the broker fenced: reported like a batch that failed
                        // our own check, with where a seek skips them.
                        self.errors.push_back((
                            Some((name.clone(), p.partition)),
                            ClientError::CorruptBatch {
                                topic: name.to_string(),
                                partition: p.partition,
                                offset: *offset,
                                next_offset: last.saturating_add(1).max(offset + 1),
                                reason: format!("the broker: {}", p.message),
                            },
                        ));
                        continue;
                    }
                    let message =
                        format!("{name}/{} at offset {offset}: {}", p.partition, p.message);
                    self.errors.push_back((
                        Some((name.clone(), p.partition)),
                        WireError::new(p.error, message).into(),
                    ));
                    continue;
                }
                let (position, err) = decode_fetched(
                    name,
                    p.partition,
                    *offset,
                    &p.records,
                    self.config.check_crcs,
                    out,
                );
                state.position = position;
                if let Some(err) = err {
                    state.paused = true;
                    self.errors
                        .push_back((Some((name.clone(), p.partition)), err));
                }
            }
        }
    }
}

/// A worker: sends each request it is given, waits for the answer, passes it on. Ends when
/// the consumer is gone or the connection fails.
fn run_connection(
    mut client: Client,
    token: u64,
    requests: Receiver<Request>,
    replies: Sender<Reply>,
) {
    while let Ok(request) = requests.recv() {
        let result = client.send(request).and_then(|id| {
            let (got, result) = client.receive()?;
            if got == id {
                Ok(result)
            } else {
                Err(ClientError::Unexpected(format!(
                    "expected the response to {id}, got {got}"
                )))
            }
        });
        let failed = result.is_err();
        if replies.send(Reply { token, result }).is_err() || failed {
            return;
        }
    }
}

/// One fetch request for the given partitions, grouped by topic in order of first
/// appearance.
fn fetch_request(partitions: &[Fetched], config: &ConsumerConfig) -> Request {
    let topics = FetchTopic::group(partitions.iter().map(|(topic, partition, offset)| {
        let entry = FetchPartition {
            partition: *partition,
            offset: *offset,
            max_bytes: config.max_bytes,
        };
        (topic, entry)
    }));
    Request::Fetch(FetchRequest {
        max_wait_ms: config.max_wait.min(MAX_WAIT_CAP).as_millis() as u32,
        min_bytes: config.min_bytes,
        max_bytes: config.max_bytes,
        topics,
    })
}

/// The offset after the last whole batch in one partition's fetched bytes that ends at or
/// after `position`, from the batch headers alone: where [`decode_fetched`] ends when every
/// batch decodes (`position` itself when none is whole).
fn end_of_whole_batches(mut position: i64, records: &Bytes) -> i64 {
    for item in batch::batches(records) {
        let Ok((_, header)) = item else {
            break;
        };
        if header.last_offset() >= position {
            position = header.last_offset() + 1;
        }
    }
    position
}

/// Decodes the records at or after `position` in the complete batches of one partition's
/// fetched bytes into `out`. Returns the next position (after the last batch decoded) and
/// the error that stopped decoding, if any. A cut-short batch after the first just ends the
/// walk (the budget ran out there); the first batch, the one holding `position`, is always
/// sent whole by the broker, so if it is cut short its length field is damaged: an error,
/// not a silent stop that would fetch the same bytes forever.
fn decode_fetched(
    topic: &Arc<str>,
    partition: u32,
    mut position: i64,
    records: &Bytes,
    check_crcs: bool,
    out: &mut Vec<ConsumerRecord>,
) -> (i64, Option<ClientError>) {
    // `next`: the first offset after the damaged batch, by its header if that parsed.
    let corrupt = |offset: i64, next: i64, err: BatchError| ClientError::CorruptBatch {
        topic: topic.to_string(),
        partition,
        offset,
        next_offset: next.max(offset.saturating_add(1)),
        reason: err.to_string(),
    };
    for (i, item) in batch::batches(records).enumerate() {
        let (start, header) = match item {
            Ok(found) => found,
            Err(BatchError::Truncated { .. }) if i > 0 => break,
            Err(BatchError::Truncated { needed, available }) => {
                let reason = format!(
                    "the batch declares {needed} bytes but the broker returned {available}: \
                     its length field is damaged"
                );
                let err = ClientError::CorruptBatch {
                    topic: topic.to_string(),
                    partition,
                    offset: position,
                    next_offset: position.saturating_add(1),
                    reason,
                };
                return (position, Some(err));
            }
            Err(err) => return (position, Some(corrupt(position, 0, err))),
        };
        if header.last_offset() < position {
            continue;
        }
        let bytes = records.slice(start..start + header.total_len());
        if check_crcs {
            if let Err(err) = batch::validate(&bytes, usize::MAX) {
                return (
                    position,
                    Some(corrupt(
                        header.base_offset,
                        header.last_offset().saturating_add(1),
                        err,
                    )),
                );
            }
        }
        let decoded = match batch::records(&bytes) {
            Ok(decoded) => decoded,
            Err(err) => {
                return (
                    position,
                    Some(corrupt(
                        header.base_offset,
                        header.last_offset().saturating_add(1),
                        err,
                    )),
                )
            }
        };
        let mark = out.len();
        for record in decoded {
            let record = match record {
                Ok(record) => record,
                Err(err) => {
                    out.truncate(mark);
                    return (
                        position,
                        Some(corrupt(
                            header.base_offset,
                            header.last_offset().saturating_add(1),
                            err,
                        )),
                    );
                }
            };
            if record.offset < position {
                continue;
            }
            let slice = |s: &[u8]| bytes.slice_ref(s);
            out.push(ConsumerRecord {
                topic: topic.clone(),
                partition,
                offset: record.offset,
                timestamp: record.timestamp,
                key: record.key.map(slice),
                value: record.value.map(slice),
                headers: record
                    .headers
                    .iter()
                    .map(|(k, v)| (slice(k), v.map(slice)))
                    .collect(),
            });
        }
        position = header.last_offset() + 1;
    }
    (position, None)
}

/// Connects with a connect, read and write timeout.
fn connect(
    addr: &str,
    timeout: Duration,
    credentials: Option<&super::Credentials>,
    tls: Option<&super::ClientTls>,
) -> Result<Client, ClientError> {
    Client::connect_secure(addr, timeout, credentials, tls)
}

/// The address of a shard's direct listener, or the bootstrap address when it has none.
fn shard_endpoint(shards: &[ShardEndpoint], shard: u16, bootstrap: &str) -> String {
    let Some(endpoint) = shards.iter().find(|s| s.shard == shard && s.port != 0) else {
        return bootstrap.to_string();
    };
    let host = match endpoint.host.parse::<IpAddr>() {
        // A wildcard listen address: the shard is on the bootstrap's host.
        Ok(ip) if ip.is_unspecified() => bootstrap
            .rsplit_once(':')
            .map_or(bootstrap, |(host, _)| host)
            .to_string(),
        Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => endpoint.host.clone(),
    };
    format!("{host}:{}", endpoint.port)
}

fn unknown_partition(topic: &str, partition: u32, count: usize) -> ClientError {
    WireError::new(
        ErrorCode::UnknownTopicOrPartition,
        format!("topic {topic} has {count} partitions, no partition {partition}"),
    )
    .into()
}

fn not_assigned(topic: &str, partition: u32) -> ClientError {
    WireError::new(
        ErrorCode::UnknownTopicOrPartition,
        format!("{topic}/{partition} is not assigned to this consumer"),
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::batch::BatchBuilder;

    /// Batches of `sizes[i]` records each, with base offsets filled in, concatenated.
    fn log(sizes: &[usize]) -> Bytes {
        let mut out = Vec::new();
        let mut offset = 0i64;
        for &n in sizes {
            let mut b = BatchBuilder::new();
            for i in 0..n {
                let value = format!("v{}", offset + i as i64);
                b.push(
                    1_000,
                    Some(b"k"),
                    Some(value.as_bytes()),
                    &[(b"h".as_slice(), Some(b"x".as_slice()))],
                );
            }
            let mut batch = b.finish();
            batch::set_base_offset(&mut batch, offset);
            out.extend_from_slice(&batch);
            offset += n as i64;
        }
        Bytes::from(out)
    }

    fn decode(position: i64, records: &Bytes, check_crcs: bool) -> (i64, Vec<i64>, bool) {
        let mut out = Vec::new();
        let topic: Arc<str> = Arc::from("t");
        let (next, err) = decode_fetched(&topic, 3, position, records, check_crcs, &mut out);
        (next, out.iter().map(|r| r.offset).collect(), err.is_some())
    }

    #[test]
    fn skips_records_below_the_position() {
        let bytes = log(&[4, 4]);
        assert_eq!(decode(2, &bytes, true), (8, vec![2, 3, 4, 5, 6, 7], false));
        assert_eq!(decode(5, &bytes, true), (8, vec![5, 6, 7], false));
    }

    #[test]
    fn a_cut_short_last_batch_is_fetched_again() {
        let bytes = log(&[3, 3, 3]);
        for cut in [1, 30, 61, 62, 100] {
            let short = bytes.slice(..bytes.len() - cut);
            assert_eq!(decode(0, &short, true), (6, vec![0, 1, 2, 3, 4, 5], false));
        }
        assert_eq!(decode(0, &Bytes::new(), true), (0, vec![], false));
    }

    #[test]
    fn the_header_scan_ends_where_decoding_ends_unless_a_batch_is_damaged() {
        let bytes = log(&[3, 3, 3]);
        // Whole batches, a cut-short last one, a position inside a batch, nothing whole.
        for (position, records) in [
            (0, bytes.clone()),
            (0, bytes.slice(..bytes.len() - 30)),
            (4, bytes.clone()),
            (9, Bytes::new()),
            (0, bytes.slice(..20)),
        ] {
            let (decoded_to, _, failed) = decode(position, &records, true);
            assert!(!failed || records.len() == 20);
            assert_eq!(
                end_of_whole_batches(position, &records),
                decoded_to,
                "from {position}, {} bytes",
                records.len()
            );
        }
        // A damaged record: the scan (headers only) goes past it, decoding stops there,
        // so the consumer's position goes back and the fetch sent from the scan's end is
        // not applied.
        let mut bad = bytes.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let bad = Bytes::from(bad);
        assert_eq!(end_of_whole_batches(0, &bad), 9);
        assert_eq!(decode(0, &bad, true), (6, vec![0, 1, 2, 3, 4, 5], true));
    }

    #[test]
    fn records_are_slices_of_the_fetched_buffer() {
        let bytes = log(&[2]);
        let mut out = Vec::new();
        decode_fetched(&Arc::from("t"), 0, 0, &bytes, false, &mut out);
        let range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
        let r = &out[1];
        assert_eq!(r.value.as_deref(), Some(b"v1".as_slice()));
        assert_eq!(r.key.as_deref(), Some(b"k".as_slice()));
        assert_eq!(r.timestamp, 1_000);
        assert_eq!(r.headers.len(), 1);
        for part in [
            r.key.as_ref().unwrap(),
            r.value.as_ref().unwrap(),
            &r.headers[0].0,
        ] {
            assert!(range.contains(&(part.as_ptr() as usize)));
        }
    }

    #[test]
    fn a_crc_mismatch_stops_at_the_bad_batch_when_checked() {
        let good = log(&[2, 2, 2]);
        let mut bad = good.to_vec();
        let last = bad.len() - 1; // inside the third batch's last record
        bad[last] ^= 0xff;
        let bad = Bytes::from(bad);
        assert_eq!(decode(0, &bad, true), (4, vec![0, 1, 2, 3], true));
        let mut out = Vec::new();
        let (_, err) = decode_fetched(&Arc::from("t"), 3, 0, &bad, true, &mut out);
        let message = err.unwrap().to_string();
        assert!(
            message.contains("t/3") && message.contains("offset 4"),
            "{message}"
        );
        // Unchecked, the flipped byte goes unnoticed.
        assert_eq!(decode(0, &bad, false).0, 6);
    }

    #[test]
    fn a_first_batch_cut_short_is_a_damaged_length_not_a_stop() {
        let good = log(&[2, 2]);
        // The first batch's length now claims more than the response holds.
        let mut bad = good.to_vec();
        bad[8..12].copy_from_slice(&(good.len() as i32).to_be_bytes());
        let bad = Bytes::from(bad);
        let mut out = Vec::new();
        let (next, err) = decode_fetched(&Arc::from("t"), 3, 0, &bad, true, &mut out);
        assert_eq!((next, out.len()), (0, 0));
        let message = err.expect("an error").to_string();
        assert!(
            message.contains("t/3 at offset 0") && message.contains("length field"),
            "{message}"
        );
        // An impossible length is an error too, even unchecked.
        let mut bad = good.to_vec();
        bad[8..12].copy_from_slice(&(-7i32).to_be_bytes());
        assert_eq!(decode(0, &Bytes::from(bad), false), (0, vec![], true));
    }

    #[test]
    fn a_record_under_another_offset_is_an_error_even_unchecked() {
        let good = log(&[3]);
        // Offset delta of the first record: length, attributes, timestamp delta, then it.
        let mut bad = good.to_vec();
        assert_eq!(bad[64], 0);
        bad[64] = 2; // delta 1: the second record's delta no longer rises
        assert_eq!(decode(0, &Bytes::from(bad), false), (0, vec![], true));
    }

    #[test]
    fn a_fetch_request_groups_partitions_by_topic() {
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        let wanted = vec![(a.clone(), 1, 10), (b.clone(), 0, 5), (a.clone(), 0, 7)];
        let Request::Fetch(r) = fetch_request(&wanted, &ConsumerConfig::default()) else {
            panic!("not a fetch");
        };
        assert_eq!(r.max_wait_ms, 500);
        assert_eq!(r.topics.len(), 2);
        assert_eq!(r.topics[0].topic, "a");
        let offsets: Vec<_> = r.topics[0].partitions.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![10, 7]);
    }

    #[test]
    fn shard_endpoints() {
        let shards = vec![
            ShardEndpoint {
                shard: 0,
                host: "127.0.0.1".into(),
                port: 7001,
            },
            ShardEndpoint {
                shard: 1,
                host: "0.0.0.0".into(),
                port: 7002,
            },
            ShardEndpoint {
                shard: 2,
                host: "127.0.0.1".into(),
                port: 0,
            },
        ];
        let boot = "localhost:9292";
        assert_eq!(shard_endpoint(&shards, 0, boot), "127.0.0.1:7001");
        assert_eq!(shard_endpoint(&shards, 1, boot), "localhost:7002");
        assert_eq!(shard_endpoint(&shards, 2, boot), boot);
        assert_eq!(shard_endpoint(&shards, 9, boot), boot);
    }
}
