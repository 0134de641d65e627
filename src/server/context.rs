//! A shard's state: its side of the mesh, the services it runs, and its shutdown signals.
//!
//! Everything here lives on one thread behind `Rc`; `RefCell` borrows are never held across
//! an `.await`. Work for a partition, group or topic owned elsewhere is a typed call
//! ([`super::rpc::ShardCall`], the calls are in `calls.rs`) sent through
//! [`ShardContext::call`]; work owned here runs the same call inline.
//!
//! The services own their state and take only what they use: the partition table
//! ([`PartitionTable`]), the group coordinator ([`GroupCoordinator`]), the share groups
//! ([`ShareCoordinator`]), the Kafka fetch sessions ([`FetchSessions`]) and the client
//! quota meters ([`QuotaMeters`]). None of them
//! imports this module, so the imports run one way: services ←
//! context ← calls ← protocol front ends.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::future::{select, Either};

use super::fetch_sessions::{FetchSessions, SessionLimits};
use super::group_coordinator::GroupCoordinator;
use super::partitions::{PartitionCall, PartitionRef, PartitionTable};
use super::quotas::QuotaMeters;
use super::rpc::{Envelope, Lost, MeshShard, Rpc, ShardCall};
use super::scrape::ScrapeSlots;
use super::share_coordinator::ShareCoordinator;
use crate::auth::quota::RateWindow;
use crate::config::BrokerConfig;
use crate::local::{yield_now, Budget, Notify};
use crate::metrics::snapshot::ShardSnapshot;
use crate::protocol::api::ShardEndpoint;
use crate::protocol::frame;
use crate::protocol::{ErrorCode, WireError};
use crate::shard::mesh::ShardLinks;
use crate::shard::{owner_of, ShardId};
use crate::storage::catalog::CatalogStore;
use crate::storage::{AclStore, LogConfig, PartitionLog, ProducerIds, QuotaStore, Runs, Users};

/// State shared by every shard of one broker (nothing here is on the data path: the
/// connection counters are touched at accept and close only).
pub(crate) struct Global {
    /// This run of the broker and the one before, for the logs' clean-stop markers.
    pub(crate) runs: Runs,
    /// Set once when the broker is asked to stop.
    pub(crate) shutdown: AtomicBool,
    /// Shards that have closed all their connections.
    pub(crate) quiesced: AtomicUsize,
    /// Open client connections, across shards.
    pub(crate) connections: AtomicUsize,
    /// Open client connections by client address, across shards; kept only when
    /// `max_connections_per_ip` bounds them (touched once at accept and once at close).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Scrapes of `/metrics` waiting for each shard's answer.
    pub(crate) scrapes: ScrapeSlots,
    /// The users and their credentials.
    pub(crate) users: Arc<Users>,
    /// The ACLs the authorizer checks.
    pub(crate) acls: Arc<AclStore>,
    /// The client quotas every shard meters requests against.
    pub(crate) quotas: Arc<QuotaStore>,
    /// Connections to listeners that require authentication that have not authenticated
    /// yet, across shards (bounded by the auth config's `max_unauthenticated`).
    pub(crate) unauthenticated: AtomicUsize,
}

impl Global {
    pub(crate) fn new(
        shards: u16,
        runs: Runs,
        users: Arc<Users>,
        acls: Arc<AclStore>,
        quotas: Arc<QuotaStore>,
    ) -> Self {
        Global {
            runs,
            users,
            acls,
            quotas,
            unauthenticated: AtomicUsize::new(0),
            scrapes: ScrapeSlots::new(shards),
            shutdown: AtomicBool::new(false),
            quiesced: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a connection from `ip` unless `limit` of them are open already.
    pub(crate) fn admit_ip(&self, ip: IpAddr, limit: usize) -> bool {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let open = per_ip.entry(ip).or_insert(0);
        if *open >= limit {
            return false;
        }
        *open += 1;
        true
    }

    /// Forgets a connection from `ip` that [`Global::admit_ip`] counted.
    pub(crate) fn release_ip(&self, ip: IpAddr) {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = per_ip.get_mut(&ip) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                per_ip.remove(&ip);
            }
        }
    }
}

/// Requests of at most this many bytes go ahead of larger ones that wait for the shard's
/// request budget (see [`Budget::with_passing`]).
pub(crate) const REQUEST_BUDGET_PASSING: usize = 64 * 1024;

/// One shard's state.
pub(crate) struct ShardContext {
    pub(crate) id: ShardId,
    pub(crate) shard_count: u16,
    pub(crate) config: Arc<BrokerConfig>,
    pub(crate) log_defaults: LogConfig,
    pub(crate) catalog: Arc<CatalogStore>,
    /// The durable producer-id counter (InitProducerId), shared by all shards.
    pub(crate) producer_ids: Arc<ProducerIds>,
    pub(crate) endpoints: Arc<Vec<ShardEndpoint>>,
    pub(crate) global: Arc<Global>,
    rpc: Rpc<ShardContext>,
    /// The partitions this shard owns.
    pub(crate) partitions: PartitionTable,
    /// Notified once when the broker starts shutting down.
    pub(crate) shutdown: Notify,
    shutting_down: Cell<bool>,
    /// Connections this shard serves; `connection_closed` fires as each one ends.
    pub(crate) connections: Cell<usize>,
    pub(crate) connection_closed: Notify,
    /// The consumer groups this shard coordinates.
    pub(crate) groups: GroupCoordinator,
    /// Share-group state of the partitions this shard owns.
    pub(crate) shares: ShareCoordinator,
    /// Bytes of request frames this shard's connections may hold at once.
    pub(crate) request_budget: Budget,
    /// The Kafka fetch sessions this shard's connections opened.
    pub(crate) fetch_sessions: RefCell<FetchSessions>,
    /// The rates of the clients this shard serves, against their quotas.
    pub(crate) quota_meters: QuotaMeters,
}

impl MeshShard for ShardContext {
    fn rpc(&self) -> &Rpc<ShardContext> {
        &self.rpc
    }
}

impl ShardContext {
    pub(crate) fn new(
        links: ShardLinks<Envelope<ShardContext>>,
        config: Arc<BrokerConfig>,
        catalog: Arc<CatalogStore>,
        producer_ids: Arc<ProducerIds>,
        endpoints: Arc<Vec<ShardEndpoint>>,
        global: Arc<Global>,
    ) -> Rc<Self> {
        let log_defaults = log_defaults(&config);
        let (id, shard_count) = (links.id(), links.shard_count());
        let config_budget = config
            .max_queued_request_bytes
            .max(config.max_request_bytes + frame::LENGTH_PREFIX);
        Rc::new(ShardContext {
            id,
            shard_count,
            partitions: PartitionTable::new(
                id,
                shard_count,
                config.data_dir.clone(),
                log_defaults.clone(),
                global.runs,
            ),
            groups: GroupCoordinator::new(
                id,
                shard_count,
                config.clone(),
                catalog.clone(),
                global.runs,
            ),
            shares: ShareCoordinator::new(id, config.clone(), global.runs),
            config,
            log_defaults,
            catalog,
            producer_ids,
            endpoints,
            global,
            rpc: Rpc::new(links),
            shutdown: Notify::new(),
            shutting_down: Cell::new(false),
            connections: Cell::new(0),
            connection_closed: Notify::new(),
            // Requests up to a read chunk pass frames that wait for much of the budget.
            request_budget: Budget::with_passing(config_budget, REQUEST_BUDGET_PASSING),
            fetch_sessions: RefCell::new(FetchSessions::new(
                id,
                shard_count,
                SessionLimits::DEFAULT,
            )),
            quota_meters: QuotaMeters::new(RateWindow::DEFAULT),
        })
    }

    /// Whether the broker is stopping.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// The owner of a partition.
    pub(crate) fn owner(&self, topic: &str, partition: u32) -> ShardId {
        owner_of(topic, partition, self.shard_count)
    }

    /// The owner of a partition.
    pub(crate) fn owner_of(&self, at: &PartitionRef) -> ShardId {
        self.owner(&at.topic.name, at.partition)
    }

    /// Runs `call` on the shard `owner`: inline if that is us, else through the rings. A
    /// lost call (the owner is stopping) is an internal error, logged here.
    pub(crate) async fn call<C: ShardCall<ShardContext>>(
        self: &Rc<Self>,
        owner: ShardId,
        call: C,
    ) -> Result<C::Reply, WireError> {
        self.rpc.call(self, owner, call).await.map_err(lost)
    }

    /// Runs a call about one partition on that partition's owner.
    pub(crate) async fn call_owner<C: ShardCall<ShardContext> + PartitionCall>(
        self: &Rc<Self>,
        call: C,
    ) -> Result<C::Reply, WireError> {
        let owner = self.owner_of(call.partition());
        self.call(owner, call).await
    }

    /// Runs calls on their owners, one envelope per owner, replies in the calls' order.
    pub(crate) async fn call_grouped<C: ShardCall<ShardContext>>(
        self: &Rc<Self>,
        calls: Vec<(ShardId, C)>,
    ) -> Vec<Result<C::Reply, WireError>> {
        self.rpc
            .call_grouped(self, calls)
            .await
            .into_iter()
            .map(|r| r.map_err(lost))
            .collect()
    }

    /// Runs `make()` on every shard and returns the replies in shard order.
    pub(crate) async fn call_all<C: ShardCall<ShardContext>>(
        self: &Rc<Self>,
        make: impl Fn() -> C,
    ) -> Vec<Result<C::Reply, WireError>> {
        futures_util::future::join_all((0..self.shard_count).map(|s| self.call(s, make()))).await
    }

    /// The log of a partition this shard owns, opened on first use.
    pub(crate) async fn log(&self, at: &PartitionRef) -> Result<Rc<PartitionLog>, WireError> {
        self.partitions.log(at).await
    }

    /// The shard's ring-draining loop: runs calls from other shards, completes our own
    /// calls' replies, and notices shutdown. Runs until `stop` is set.
    /// `snapshot` answers scrapes of `/metrics` (see `super::scrape`).
    pub(crate) async fn run_mesh(
        self: Rc<Self>,
        stop: Rc<Cell<bool>>,
        snapshot: fn(&ShardContext) -> ShardSnapshot,
    ) {
        const BUDGET: usize = 256;
        loop {
            let handled = self.rpc.drain(&self, BUDGET);
            self.rpc.flush_overflow();
            self.global.scrapes.answer(self.id, || snapshot(&self));
            if self.global.shutdown.load(Ordering::SeqCst) && !self.shutting_down.get() {
                self.shutting_down.set(true);
                self.shutdown.notify_all();
            }
            if stop.get() {
                return;
            }
            if handled == BUDGET {
                // More may be waiting, but let connection tasks run first.
                yield_now().await;
            } else {
                self.rpc.wait().await;
            }
        }
    }

    /// Calls waiting in the rings towards this shard, and their slots.
    pub(crate) fn ring_occupancy(&self) -> (usize, usize) {
        self.rpc.ring_occupancy()
    }

    /// Wakes every shard (used to start shutdown or to report quiescence).
    pub(crate) fn signal_all(&self) {
        self.rpc.signal_all();
    }
}

fn lost(_: Lost) -> WireError {
    tracing::error!("a call to another shard was dropped unanswered (its shard is stopping)");
    WireError::new(
        ErrorCode::Unknown,
        "the owning shard dropped the request (it is stopping)",
    )
}

/// The broker-wide defaults for new topics, as a log config.
pub(crate) fn log_defaults(config: &BrokerConfig) -> LogConfig {
    LogConfig {
        segment_bytes: config.segment_bytes,
        segment_ms: config.segment_ms,
        retention_ms: config.retention_ms,
        retention_bytes: config.retention_bytes,
        fsync: config.fsync,
        max_batch_bytes: config.max_batch_bytes,
        group_commit: config.group_commit,
        group_commit_interval: config.group_commit_interval,
        writes: config.log_writes,
        tail_cache_bytes: config.tail_cache_bytes,
        shard_tail_cache_bytes: config.shard_tail_cache_bytes,
        ..LogConfig::default()
    }
}

/// Waits for whichever comes first; the loser is dropped.
pub(crate) async fn first<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> Either<A::Output, B::Output> {
    futures_util::pin_mut!(a, b);
    match select(a, b).await {
        Either::Left((x, _)) => Either::Left(x),
        Either::Right((y, _)) => Either::Right(y),
    }
}
