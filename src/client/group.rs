//! Consumer-group membership for `Consumer::subscribe` (in `consumer.rs`).
//!
//! The broker computes the assignment (clients stay simple, as with Kafka's KIP-848): a
//! member joins with its topics and gets a generation and its partitions; a background
//! thread heartbeats every `heartbeat_interval` on its own connection and brings back the
//! current generation and assignment, which the consumer adopts at its next `poll`
//! (revoking and assigning partitions, calling the [`RebalanceListener`]). A member whose
//! session expired is told so by its heartbeat and joins again as a new member.
//!
//! Every heartbeat carries the generation whose assignment the consumer has *applied*, not
//! the last one it heard of: that is how the coordinator learns that revoked partitions
//! are let go of, and only then gives them to other members. So the consumer commits a
//! revoked partition's position and stops reading it before it records the new generation
//! as applied, and then heartbeats at once rather than at the next interval.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Client, ClientError, ClientTls, Credentials, DEFAULT_REQUEST_TIMEOUT};
use crate::protocol::api::{
    HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, MembershipResponse, Request, Response,
};
use crate::protocol::ErrorCode;

/// Where a partition without a committed offset starts (`auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    /// The first offset still stored.
    Earliest,
    /// The log end: only records produced from now on.
    Latest,
}

/// Group settings (Kafka's names in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// A member not heard from for this long is removed (`session.timeout.ms`).
    pub session_timeout: Duration,
    /// How often the member heartbeats (`heartbeat.interval.ms`); well under the session
    /// timeout.
    pub heartbeat_interval: Duration,
    /// `range`, `roundrobin` or `sticky` (`partition.assignment.strategy`).
    pub strategy: String,
    /// Commit positions this often from `poll`, and when the consumer closes
    /// (`enable.auto.commit`, `auto.commit.interval.ms`); `None` for manual commits only.
    pub auto_commit: Option<Duration>,
    /// Where partitions without a committed offset start (`auto.offset.reset`).
    pub reset: OffsetReset,
    /// Shown by `group describe` (`client.id`).
    pub client_id: String,
}

impl Default for GroupConfig {
    /// Kafka's defaults: 45 s sessions, 3 s heartbeats, 5 s auto-commit, latest.
    fn default() -> Self {
        GroupConfig {
            session_timeout: Duration::from_secs(45),
            heartbeat_interval: Duration::from_secs(3),
            strategy: "sticky".into(),
            auto_commit: Some(Duration::from_secs(5)),
            reset: OffsetReset::Latest,
            client_id: "eventflow-consumer".into(),
        }
    }
}

/// Told about partitions that leave and join the consumer's assignment; called from
/// `poll` on the polling thread, revocations first.
pub trait RebalanceListener: Send {
    /// These partitions leave this consumer. With auto-commit their positions have just
    /// been committed; the group gives them to another member once this consumer's next
    /// heartbeat acknowledges the change, and that member resumes at the last committed
    /// offset (with manual commits, records returned since the last `commit` are delivered
    /// again there).
    fn on_revoked(&mut self, _partitions: &[(String, u32)]) {}
    /// These partitions are now this consumer's, positioned at their committed offsets.
    fn on_assigned(&mut self, _partitions: &[(String, u32)]) {}
}

/// A consumer's membership: its id, generation and assignment, kept current by the
/// heartbeat thread.
pub(crate) struct Membership {
    pub(crate) group: String,
    pub(crate) config: GroupConfig,
    /// What the consumer has applied.
    pub(crate) member_id: String,
    pub(crate) generation: u32,
    pub(crate) assigned: BTreeSet<(String, u32)>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    /// The newest membership the broker sent, not yet applied.
    latest: Mutex<Latest>,
    stop: AtomicBool,
    wake: Condvar,
}

#[derive(Default)]
struct Latest {
    membership: Option<MembershipResponse>,
    /// A heartbeat or rejoin failure the consumer has not seen yet.
    error: Option<ClientError>,
    /// The member id and generation whose assignment the consumer has applied: what the
    /// heartbeat acknowledges.
    applied: Option<(String, u32)>,
    /// Heartbeat now, without waiting for the interval (a revocation to acknowledge).
    beat_now: bool,
}

impl Membership {
    /// Joins `group` with `topics` and starts heartbeating.
    pub(crate) fn join(
        bootstrap: &str,
        credentials: Option<&Credentials>,
        tls: Option<&ClientTls>,
        group: &str,
        topics: Vec<String>,
        config: GroupConfig,
    ) -> Result<(Membership, MembershipResponse), ClientError> {
        let mut client =
            Client::connect_secure(bootstrap, DEFAULT_REQUEST_TIMEOUT, credentials, tls)?;
        let joined = join(&mut client, group, "", &topics, &config)?;
        let shared = Arc::new(Shared {
            latest: Mutex::new(Latest::default()),
            stop: AtomicBool::new(false),
            wake: Condvar::new(),
        });
        let heartbeat = Heartbeat {
            client,
            group: group.to_string(),
            topics,
            config: config.clone(),
            member_id: joined.member_id.clone(),
            shared: shared.clone(),
            credentials: credentials.cloned(),
            tls: tls.cloned(),
        };
        let thread = std::thread::Builder::new()
            .name("eventflow-heartbeat".into())
            .spawn(move || heartbeat.run())
            .map_err(|source| ClientError::Io {
                addr: "heartbeat thread".into(),
                source,
            })?;
        let membership = Membership {
            group: group.to_string(),
            config,
            member_id: joined.member_id.clone(),
            generation: 0,
            assigned: BTreeSet::new(),
            shared,
            thread: Some(thread),
        };
        Ok((membership, joined))
    }

    /// A newer membership than the one applied, or the heartbeat's last error.
    pub(crate) fn take_update(&self) -> Result<Option<MembershipResponse>, ClientError> {
        let mut latest = lock(&self.shared.latest);
        if let Some(e) = latest.error.take() {
            return Err(e);
        }
        Ok(latest
            .membership
            .take()
            .filter(|m| m.generation != self.generation || m.member_id != self.member_id))
    }

    /// Records that the consumer applied the assignment of `generation` as `member_id`, for
    /// the heartbeat to acknowledge; with `now`, the heartbeat goes out at once.
    pub(crate) fn applied(&self, member_id: &str, generation: u32, now: bool) {
        let mut latest = lock(&self.shared.latest);
        latest.applied = Some((member_id.to_string(), generation));
        if now {
            latest.beat_now = true;
            self.shared.wake.notify_all();
        }
    }

    /// Puts back an update the consumer could not apply, unless a newer one arrived.
    pub(crate) fn retry(&self, update: MembershipResponse) {
        let mut latest = lock(&self.shared.latest);
        if latest.membership.is_none() {
            latest.membership = Some(update);
        }
    }

    /// Stops heartbeating and leaves the group (its partitions go to the others at once; the
    /// consumer commits first).
    pub(crate) fn leave(
        &mut self,
        bootstrap: &str,
        credentials: Option<&Credentials>,
        tls: Option<&ClientTls>,
    ) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(mut client) =
            Client::connect_secure(bootstrap, DEFAULT_REQUEST_TIMEOUT, credentials, tls)
        {
            let _ = client.call(Request::LeaveGroup(LeaveGroupRequest {
                group: self.group.clone(),
                member_id: self.member_id.clone(),
            }));
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
    }
}

/// The heartbeat thread's state.
struct Heartbeat {
    client: Client,
    group: String,
    topics: Vec<String>,
    config: GroupConfig,
    /// The member id the broker knows this consumer by (the consumer may not have applied
    /// it yet, after a rejoin).
    member_id: String,
    shared: Arc<Shared>,
    /// Who the member logs in as when it reconnects.
    credentials: Option<Credentials>,
    tls: Option<ClientTls>,
}

impl Heartbeat {
    fn run(mut self) {
        loop {
            let generation = {
                let latest = lock(&self.shared.latest);
                let (mut latest, _) = self
                    .shared
                    .wake
                    .wait_timeout_while(latest, self.config.heartbeat_interval, |latest| {
                        !self.shared.stop.load(Ordering::SeqCst) && !latest.beat_now
                    })
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                latest.beat_now = false;
                // 0 (nothing applied) until the consumer applies this member id's first
                // assignment.
                match &latest.applied {
                    Some((id, generation)) if *id == self.member_id => *generation,
                    _ => 0,
                }
            };
            if self.shared.stop.load(Ordering::SeqCst) {
                return;
            }
            let beat = self.client.call(Request::Heartbeat(HeartbeatRequest {
                group: self.group.clone(),
                member_id: self.member_id.clone(),
                generation,
            }));
            let result = match beat {
                Ok(Response::Heartbeat(m)) => Ok(m),
                Ok(other) => Err(ClientError::Unexpected(format!(
                    "expected a heartbeat response, got {other:?}"
                ))),
                // Our session ended (we were too slow, or the broker restarted): join
                // again as a new member.
                Err(e)
                    if matches!(
                        e.code(),
                        Some(ErrorCode::UnknownMember | ErrorCode::StaleGeneration)
                    ) =>
                {
                    tracing::warn!(group = %self.group, member = %self.member_id, "session expired; joining again");
                    join(
                        &mut self.client,
                        &self.group,
                        "",
                        &self.topics,
                        &self.config,
                    )
                }
                Err(e) => Err(e),
            };
            let mut latest = lock(&self.shared.latest);
            match result {
                Ok(m) => {
                    self.member_id = m.member_id.clone();
                    latest.membership = Some(m);
                }
                Err(e) if e.is_connection_error() => {
                    drop(latest);
                    // Reconnect for the next beat (one beat interval later if this fails):
                    // the session survives a short gap, and after a broker restart the
                    // next beat is told to join again.
                    tracing::warn!(group = %self.group, "heartbeat: {e}; reconnecting");
                    match Client::connect_secure(
                        self.client_addr(),
                        DEFAULT_REQUEST_TIMEOUT,
                        self.credentials.as_ref(),
                        self.tls.as_ref(),
                    ) {
                        Ok(c) => self.client = c,
                        Err(e) => tracing::debug!("heartbeat reconnect: {e}"),
                    }
                }
                Err(e) => latest.error = Some(e),
            }
        }
    }

    fn client_addr(&self) -> String {
        self.client.addr().to_string()
    }
}

fn join(
    client: &mut Client,
    group: &str,
    member_id: &str,
    topics: &[String],
    config: &GroupConfig,
) -> Result<MembershipResponse, ClientError> {
    match client.call(Request::JoinGroup(JoinGroupRequest {
        group: group.to_string(),
        member_id: member_id.to_string(),
        client_id: config.client_id.clone(),
        topics: topics.to_vec(),
        session_timeout_ms: config.session_timeout.as_millis().min(u128::from(u32::MAX)) as u32,
        strategy: config.strategy.clone(),
    }))? {
        Response::JoinGroup(m) => Ok(m),
        other => Err(ClientError::Unexpected(format!(
            "expected a join response, got {other:?}"
        ))),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
