//! The broker: listeners, connections and request dispatch on every shard.
//!
//! [`start`] prepares everything that must happen once (data directory, catalog, sockets,
//! the ring mesh), then starts one shard thread per configured core. Each shard opens and
//! recovers the partitions it owns, then accepts connections on the shared port (every
//! shard has its own SO_REUSEPORT socket on it, so the kernel spreads connections) and on
//! its direct port, and on the Kafka protocol's listener when there is one (SO_REUSEPORT as
//! well). [`BrokerHandle::shutdown`] stops accepting, lets in-flight requests
//! finish, syncs and closes every log.

mod authorizer;
mod calls;
mod connection;
mod context;
mod fetch_sessions;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz_targets;
mod group_coordinator;
mod internal_log;
mod kafka;
mod metrics;
mod native;
mod partitions;
mod quotas;
mod rpc;
mod sasl;
mod scrape;
mod share_coordinator;
mod tls;
mod topics;

pub use metrics::{ScrapeError, Scraper};
pub use native::{MAX_FETCH_BYTES, MAX_FETCH_WAIT};

use std::cell::Cell;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::future::Either;
use socket2::{Domain, Socket, Type};

use crate::config::BrokerConfig;
use crate::metrics::shard::Listener;
use crate::protocol::api::ShardEndpoint;
use crate::protocol::ErrorCode;
use crate::shard::mesh::{mesh, MeshRemote, ShardLinks};
use crate::shard::thread::{spawn_shard, ShardThreadConfig};
use crate::shard::ShardId;
use crate::storage::catalog::{CatalogStore, DELETED_PREFIX};
use crate::storage::{AclStore, FsyncPolicy, ProducerIds, QuotaStore, Runs, UserError, Users};
use connection::{Protocol, Transport};
use context::{first, Global, ShardContext};
use rpc::Envelope;
use sasl::{SaslSession, UnauthenticatedSlot};

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A socket could not be created or bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The data directory or catalog is unusable.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// Directory.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// A shard thread failed to start or to open its partitions.
    #[error("shard {shard}: {reason}")]
    Shard {
        /// Which shard.
        shard: ShardId,
        /// Why.
        reason: String,
    },
    /// The configuration is not usable.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// A running broker.
pub struct BrokerHandle {
    addr: SocketAddr,
    direct: Vec<SocketAddr>,
    kafka: Option<SocketAddr>,
    metrics: Option<StdListener>,
    scraper: Scraper,
    global: Arc<Global>,
    remote: MeshRemote,
    threads: Vec<JoinHandle<io::Result<()>>>,
}

impl BrokerHandle {
    /// The shared listen address (with the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Kafka protocol's listen address (with the real port when 0 was asked for), if
    /// the broker serves it.
    pub fn kafka_addr(&self) -> Option<SocketAddr> {
        self.kafka
    }

    /// The metrics listener's address (with the real port when 0 was asked for), if the
    /// broker has one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound metrics listener, taken once, for the HTTP server to serve.
    pub fn take_metrics_listener(&mut self) -> Option<StdListener> {
        self.metrics.take()
    }

    /// What gathers the shards' metrics for a scrape.
    pub fn scraper(&self) -> Scraper {
        self.scraper.clone()
    }

    /// Number of shards serving.
    pub fn shard_count(&self) -> usize {
        self.threads.len()
    }

    /// Each shard's direct listen address, by shard index (empty if disabled).
    pub fn direct_addrs(&self) -> &[SocketAddr] {
        &self.direct
    }

    /// Stops accepting, lets in-flight requests finish, syncs and closes every log, and
    /// waits for the shard threads to end.
    pub fn shutdown(self) -> io::Result<()> {
        self.shutdown_trigger()();
        self.join()
    }

    /// Waits for the shard threads to end (after [`BrokerHandle::shutdown`] was requested
    /// elsewhere, or forever).
    pub fn join(self) -> io::Result<()> {
        let mut result = Ok(());
        for t in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(io::Error::other("a shard thread panicked")),
            }
        }
        result
    }

    /// A function that reads, from any thread, how many client connections the broker
    /// serves now across all shards and listeners (the counter `--max-connections` bounds).
    pub fn connection_counter(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let global = self.global.clone();
        move || global.connections.load(Ordering::Relaxed)
    }

    /// A function that starts a graceful shutdown from any thread (signal handlers).
    pub fn shutdown_trigger(&self) -> impl Fn() + Send + Sync + 'static {
        let global = self.global.clone();
        let remote = self.remote.clone();
        move || {
            global.shutdown.store(true, Ordering::SeqCst);
            remote.signal_all();
        }
    }
}

/// Starts a broker and returns once every shard serves.
pub fn start(config: BrokerConfig) -> Result<BrokerHandle, StartError> {
    if config.cores.is_empty() {
        return Err(StartError::Config("at least one core is needed".into()));
    }
    if config.cores.len() > usize::from(u16::MAX) {
        return Err(StartError::Config("too many cores".into()));
    }
    let data_err = |reason: String| StartError::DataDir {
        path: config.data_dir.clone(),
        reason,
    };
    std::fs::create_dir_all(&config.data_dir).map_err(|e| data_err(e.to_string()))?;
    let catalog =
        Arc::new(CatalogStore::open(&config.data_dir).map_err(|e| data_err(e.to_string()))?);
    let producer_ids =
        Arc::new(ProducerIds::open(&config.data_dir).map_err(|e| data_err(e.to_string()))?);
    let users = Arc::new(Users::open(&config.data_dir).map_err(|e| data_err(e.to_string()))?);
    create_bootstrap_user(&config.auth, &users).map_err(|e| data_err(e.to_string()))?;
    let acls = Arc::new(AclStore::open(&config.data_dir).map_err(|e| data_err(e.to_string()))?);
    let quotas = Arc::new(QuotaStore::open(&config.data_dir).map_err(|e| data_err(e.to_string()))?);
    remove_deleted_topics(&config.data_dir);
    // Before any log is opened: what this run writes must not be read as part of the
    // previous run's clean stop.
    let runs = Runs::begin(&config.data_dir).map_err(|e| data_err(e.to_string()))?;

    let shards = config.shard_count();
    // Sockets: the shared port and the Kafka port (one SO_REUSEPORT socket per shard each)
    // and the direct ports. Fixed ports are bound first: after a crash the old run's
    // connections linger on its ports, and an ephemeral bind could be handed one of them.
    enum Slot {
        Shared,
        Kafka,
        Metrics,
        Direct(u16),
    }
    let mut plan = vec![(Slot::Shared, config.listen)];
    if let Some(listen) = config.kafka_listen {
        plan.push((Slot::Kafka, listen));
    }
    if let Some(listen) = config.metrics_listen {
        plan.push((Slot::Metrics, listen));
    }
    if let Some(base) = config.direct_port_base {
        for i in 0..shards {
            let port = if base == 0 {
                0
            } else {
                base.checked_add(i).ok_or_else(|| {
                    StartError::Config(format!("direct port {base} + {i} is out of range"))
                })?
            };
            plan.push((Slot::Direct(i), SocketAddr::new(config.listen.ip(), port)));
        }
    }
    plan.sort_by_key(|(_, at)| at.port() == 0);
    let (mut shared, mut kafka, mut metrics) = (Vec::new(), Vec::new(), None);
    let mut direct: Vec<Option<StdListener>> = Vec::new();
    direct.resize_with(
        usize::from(shards) * usize::from(config.direct_port_base.is_some()),
        || None,
    );
    for (slot, at) in plan {
        match slot {
            Slot::Shared => shared = bind_group(at, shards)?,
            Slot::Kafka => kafka = bind_group(at, shards)?,
            Slot::Metrics => metrics = Some(bind_single(at)?),
            Slot::Direct(i) => {
                refuse_if_served(at)?;
                direct[usize::from(i)] = Some(bind(at)?);
            }
        }
    }
    let direct: Vec<StdListener> = direct.into_iter().flatten().collect();
    let addr = shared[0]
        .local_addr()
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let kafka_addr = kafka
        .first()
        .map(|l| l.local_addr().expect("bound socket has an address"));
    let direct_addrs: Vec<SocketAddr> = direct
        .iter()
        .map(|l| l.local_addr().expect("bound socket has an address"))
        .collect();
    let endpoints: Arc<Vec<ShardEndpoint>> = Arc::new(
        (0..shards)
            .map(|i| ShardEndpoint {
                shard: i,
                host: addr.ip().to_string(),
                port: direct_addrs.get(i as usize).map_or(0, SocketAddr::port),
            })
            .collect(),
    );

    let config = Arc::new(config);
    let global = Arc::new(Global::new(shards, runs, users, acls, quotas));
    let links = mesh::<Envelope<ShardContext>>(shards, config.ring_capacity);
    let remote = links[0].remote();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<ShardId, (ShardId, String)>>();
    let mut direct = direct.into_iter().map(Some).collect::<Vec<_>>();
    direct.resize_with(shards as usize, || None);
    let mut kafka = kafka.into_iter().map(Some).collect::<Vec<_>>();
    kafka.resize_with(shards as usize, || None);
    let mut threads = Vec::with_capacity(shards as usize);
    for (((links, shared), direct), kafka) in links.into_iter().zip(shared).zip(direct).zip(kafka) {
        let id = links.id();
        let thread_config = ShardThreadConfig {
            id,
            core: config.pin.then(|| config.cores[id as usize]),
            uring_entries: config.uring_entries,
            sqpoll_idle: config.sqpoll.then_some(Duration::from_millis(10)),
        };
        let (config, catalog, producer_ids, endpoints, global, ready) = (
            config.clone(),
            catalog.clone(),
            producer_ids.clone(),
            endpoints.clone(),
            global.clone(),
            ready_tx.clone(),
        );
        let thread = spawn_shard(thread_config, move || {
            let listeners = Listeners {
                shared,
                direct,
                kafka,
            };
            let shared = SharedState {
                catalog,
                producer_ids,
                endpoints,
                global,
            };
            shard_main(links, config, shared, listeners, ready)
        })
        .map_err(|e| StartError::Shard {
            shard: id,
            reason: e.to_string(),
        })?;
        threads.push(thread);
    }
    drop(ready_tx);
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err((shard, reason))) => {
                global.shutdown.store(true, Ordering::SeqCst);
                remote.signal_all();
                return Err(StartError::Shard { shard, reason });
            }
            Err(_) => {
                // A thread ended without reporting: its runtime could not start.
                global.shutdown.store(true, Ordering::SeqCst);
                remote.signal_all();
                let reason = threads
                    .into_iter()
                    .filter_map(|t| match t.join() {
                        Ok(Err(e)) => Some(e.to_string()),
                        _ => None,
                    })
                    .next()
                    .unwrap_or_else(|| "shard thread ended during start-up".into());
                return Err(StartError::Shard { shard: 0, reason });
            }
        }
    }
    let scraper = Scraper::new(
        global.clone(),
        remote.clone(),
        shards,
        config.metrics_partition_labels,
    );
    Ok(BrokerHandle {
        addr,
        direct: direct_addrs,
        kafka: kafka_addr,
        metrics,
        scraper,
        global,
        remote,
        threads,
    })
}

/// One SO_REUSEPORT listener per shard on `addr` (see [`bind`]).
fn bind_group(addr: SocketAddr, shards: u16) -> Result<Vec<StdListener>, StartError> {
    refuse_if_served(addr)?;
    let first = bind(addr)?;
    let bound = first
        .local_addr()
        .map_err(|source| StartError::Listen { addr, source })?;
    let mut group = vec![first];
    for _ in 1..shards {
        group.push(bind(bound)?);
    }
    Ok(group)
}

/// Fails if something keeps accepting connections on `addr`: the kernel would let another
/// process of the same user join our SO_REUSEPORT group (and take a share of the
/// connections) instead of refusing the bind. A plain bind cannot tell: after a crash the
/// old run's connections linger on the port and make it fail. A crashed run's own listener
/// can also accept for a few milliseconds after the process is gone (its io_uring is torn
/// down asynchronously), so a listener that disappears within two seconds is not counted.
fn refuse_if_served(addr: SocketAddr) -> Result<(), StartError> {
    if addr.port() == 0 {
        return Ok(());
    }
    let target = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::net::TcpStream::connect_timeout(&target, Duration::from_millis(500)) {
            // A connection to a port nobody listens on can connect to itself (TCP's
            // simultaneous open, when the kernel picks that same port as the source).
            Ok(probe) if probe.local_addr().ok() == Some(target) => return Ok(()),
            Ok(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(_) => {
                return Err(StartError::Listen {
                    addr,
                    source: std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "address already in use: another process accepts connections there",
                    ),
                })
            }
            Err(_) => return Ok(()),
        }
    }
}

/// A listening socket on `addr` with SO_REUSEPORT, which lets the shards share a port and
/// lets a restart bind again while a crashed run's connections still linger on it.
fn bind(addr: SocketAddr) -> Result<StdListener, StartError> {
    bind_socket(addr, true)
}

/// A listening socket on `addr` that no other socket may share (no SO_REUSEPORT: a second
/// broker on the same port fails to bind instead of taking a share of the scrapes).
/// SO_REUSEADDR still lets a restart bind while a crashed run's connections linger.
fn bind_single(addr: SocketAddr) -> Result<StdListener, StartError> {
    bind_socket(addr, false)
}

fn bind_socket(addr: SocketAddr, shared: bool) -> Result<StdListener, StartError> {
    let err = |source| StartError::Listen { addr, source };
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if shared {
        socket.set_reuse_port(true).map_err(err)?;
        socket.set_tcp_nodelay(true).map_err(err)?;
    }
    socket.bind(&addr.into()).map_err(err)?;
    socket
        .listen(if shared { 1024 } else { 128 })
        .map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    Ok(socket.into())
}

/// Removes topic directories that a deletion moved aside (`.deleted-<name>-<id>`) but did
/// not finish removing. Nothing else under the data directory is ever deleted at start-up.
fn remove_deleted_topics(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if path.is_dir() && name.starts_with(DELETED_PREFIX) {
            tracing::warn!(path = %path.display(), "removing data of a deleted topic");
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), "cannot remove: {e}");
            }
        }
    }
}

/// One shard's listening sockets.
struct Listeners {
    /// The native protocol's shared port.
    shared: StdListener,
    /// The shard's own native port.
    direct: Option<StdListener>,
    /// The Kafka protocol's port.
    kafka: Option<StdListener>,
}

/// What every shard shares.
struct SharedState {
    catalog: Arc<CatalogStore>,
    producer_ids: Arc<ProducerIds>,
    endpoints: Arc<Vec<ShardEndpoint>>,
    global: Arc<Global>,
}

async fn shard_main(
    links: ShardLinks<Envelope<ShardContext>>,
    config: Arc<BrokerConfig>,
    shared: SharedState,
    listeners: Listeners,
    ready: mpsc::Sender<Result<ShardId, (ShardId, String)>>,
) {
    let SharedState {
        catalog,
        producer_ids,
        endpoints,
        global,
    } = shared;
    let ctx = ShardContext::new(
        links,
        config.clone(),
        catalog.clone(),
        producer_ids,
        endpoints,
        global.clone(),
    );
    let id = ctx.id;
    let stop_mesh = Rc::new(Cell::new(false));
    // The mesh loop runs from the start: opening partitions needs nothing from other
    // shards, but other shards may already send us requests once they serve.
    let mesh_task =
        compio::runtime::spawn(ctx.clone().run_mesh(stop_mesh.clone(), metrics::snapshot));

    // Recover every partition this shard owns before serving.
    let started = Instant::now();
    for topic in catalog.snapshot().topics.values() {
        if let Err(e) = ctx.partitions.open_topic(topic).await {
            let _ = ready.send(Err((id, format!("topic `{}`: {}", topic.name, e.message))));
            return;
        }
    }
    // The internal logs (group offsets, share state) replay before serving too, so no
    // request waits behind a replay's blocking file reads.
    if let Err(e) = ctx.groups.recover().await {
        let _ = ready.send(Err((id, format!("group offsets: {}", e.message))));
        return;
    }
    let topics: Vec<_> = catalog.snapshot().topics.values().cloned().collect();
    let owns = |topic: &str, partition: u32| ctx.owner(topic, partition) == id;
    if let Err(e) = ctx.shares.recover(&topics, owns).await {
        let _ = ready.send(Err((id, format!("share-group state: {}", e.message))));
        return;
    }
    let partitions = ctx.partitions.all_logs().len();
    let listeners = (|| -> io::Result<_> {
        let shared = compio::net::TcpListener::from_std(listeners.shared)?;
        let direct = (listeners.direct)
            .map(compio::net::TcpListener::from_std)
            .transpose()?;
        let kafka = (listeners.kafka)
            .map(compio::net::TcpListener::from_std)
            .transpose()?;
        Ok((shared, direct, kafka))
    })();
    let (shared, direct, kafka) = match listeners {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err((id, format!("listener: {e}"))));
            return;
        }
    };
    tracing::info!(
        shard = id,
        partitions,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shard serving"
    );
    let _ = ready.send(Ok(id));

    compio::runtime::spawn(accept_loop(ctx.clone(), shared, Listener::Native)).detach();
    if let Some(direct) = direct {
        compio::runtime::spawn(accept_loop(ctx.clone(), direct, Listener::Direct)).detach();
    }
    if let Some(kafka) = kafka {
        compio::runtime::spawn(accept_loop(ctx.clone(), kafka, Listener::Kafka)).detach();
    }
    compio::runtime::spawn(maintenance(ctx.clone())).detach();
    compio::runtime::spawn(compaction(ctx.clone())).detach();
    compio::runtime::spawn(expire_sessions(ctx.clone())).detach();
    if ctx.config.scrub_bytes_per_sec > 0 {
        compio::runtime::spawn(scrub(ctx.clone(), ctx.config.scrub_bytes_per_sec)).detach();
    }

    // Run until shutdown, then wait for this shard's connections to finish.
    while !ctx.is_shutting_down() {
        ctx.shutdown.notified().await;
    }
    let grace = Instant::now() + Duration::from_secs(10);
    while ctx.connections.get() > 0 && Instant::now() < grace {
        let closed = ctx.connection_closed.notified();
        let _ = first(closed, compio::time::sleep(Duration::from_millis(50))).await;
    }
    // Other shards may still route requests to our partitions until they are quiet too.
    global.quiesced.fetch_add(1, Ordering::SeqCst);
    ctx.signal_all();
    while global.quiesced.load(Ordering::SeqCst) < usize::from(ctx.shard_count) {
        compio::time::sleep(Duration::from_millis(5)).await;
    }
    for log in ctx.partitions.all_logs() {
        if let Err(e) = log.close().await {
            tracing::warn!(shard = id, "closing a partition: {e}");
        }
    }
    ctx.groups.close().await;
    ctx.shares.close().await;
    stop_mesh.set(true);
    ctx.signal_all();
    let _ = mesh_task.await;
    tracing::info!(shard = id, "shard stopped");
}

/// Runs a TLS handshake within the time allowed to authenticate. A client certificate
/// that verified and names a user (its subject's common name) authenticates the
/// connection as that user. None: the handshake failed (logged) and the connection is
/// closed.
async fn tls_handshake(
    ctx: &ShardContext,
    mut stream: compio::net::TcpStream,
    config: std::sync::Arc<rustls::ServerConfig>,
    sasl: SaslSession,
    peer: SocketAddr,
) -> Option<(Transport, SaslSession)> {
    let timeout = ctx.config.auth.timeout;
    let handshake = tls::accept(&mut stream, config);
    let session = match first(handshake, compio::time::sleep(timeout)).await {
        Either::Left(Ok(session)) => session,
        Either::Left(Err(e)) => {
            tracing::info!(%peer, "closing a connection: TLS handshake failed: {e}");
            return None;
        }
        Either::Right(()) => {
            tracing::info!(
                %peer,
                "closing a connection: no TLS handshake within --sasl-timeout-ms ({} ms)",
                timeout.as_millis()
            );
            return None;
        }
    };
    let user = session
        .borrow()
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(crate::tls::certificate_user);
    let sasl = match user {
        None => sasl,
        Some(Some(user)) => {
            tracing::debug!(%peer, %user, "authenticated by client certificate");
            SaslSession::certified(&user)
        }
        Some(None) => {
            tracing::warn!(%peer, "a client certificate without a common name names no user");
            sasl
        }
    };
    Some((Transport::Tls(stream, session), sasl))
}

async fn accept_loop(ctx: Rc<ShardContext>, listener: compio::net::TcpListener, kind: Listener) {
    let protocol = match kind {
        Listener::Native | Listener::Direct => Protocol::Native,
        Listener::Kafka => Protocol::Kafka,
    };
    let tls = ctx.config.tls.as_ref().and_then(|tls| {
        let on = match protocol {
            Protocol::Native => tls.listeners().native,
            Protocol::Kafka => tls.listeners().kafka,
        };
        on.then(|| tls.config())
    });
    loop {
        let accepted = match first(listener.accept(), ctx.shutdown.notified()).await {
            Either::Left(a) => a,
            Either::Right(()) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(shard = ctx.id, "accept failed: {e}");
                compio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let admitted = match Admitted::new(&ctx, peer.ip()) {
            Ok(admitted) => admitted,
            Err(message) => {
                crate::metrics::shard::connection_refused(kind);
                // A Kafka client cannot read a native error frame (Kafka has no answer for
                // this), nor can a client expecting TLS: it is just closed.
                if protocol == Protocol::Native && tls.is_none() {
                    tracing::info!(shard = ctx.id, %peer, "{message}: refusing a connection");
                    compio::runtime::spawn(async move {
                        connection::refuse(stream, ErrorCode::TooManyConnections, &message).await;
                    })
                    .detach();
                } else {
                    tracing::warn!(shard = ctx.id, %peer, "{message}: closing a Kafka connection");
                }
                continue;
            }
        };
        let auth = match protocol {
            Protocol::Native => &ctx.config.auth.native,
            Protocol::Kafka => &ctx.config.auth.kafka,
        };
        let sasl = if auth.required {
            let limit = ctx.config.auth.max_unauthenticated;
            let Some(slot) = UnauthenticatedSlot::take(&ctx.global, limit) else {
                crate::metrics::shard::connection_refused(kind);
                let message = format!(
                    "the broker holds its maximum of {limit} connections that have not \
                     authenticated yet (--max-unauthenticated-connections)"
                );
                tracing::warn!(shard = ctx.id, %peer, "{message}: refusing a connection");
                if protocol == Protocol::Native && tls.is_none() {
                    compio::runtime::spawn(async move {
                        connection::refuse(stream, ErrorCode::TooManyConnections, &message).await;
                    })
                    .detach();
                }
                continue;
            };
            SaslSession::required(Instant::now() + ctx.config.auth.timeout, slot)
        } else {
            SaslSession::optional()
        };
        ctx.connections.set(ctx.connections.get() + 1);
        crate::metrics::shard::connection_accepted(kind);
        let ctx2 = ctx.clone();
        let tls = tls.clone();
        compio::runtime::spawn(async move {
            let served = match tls {
                None => Some((Transport::Plain(stream), sasl)),
                Some(config) => tls_handshake(&ctx2, stream, config, sasl, peer).await,
            };
            if let Some((transport, sasl)) = served {
                connection::serve(ctx2.clone(), transport, protocol, sasl).await;
            }
            crate::metrics::shard::connection_closed(kind);
            drop(admitted);
            ctx2.connections.set(ctx2.connections.get() - 1);
            ctx2.connection_closed.notify_all();
        })
        .detach();
    }
}

/// A connection counted against `--max-connections` and, when set,
/// `--max-connections-per-ip`; uncounted when dropped.
struct Admitted {
    global: Arc<Global>,
    /// The client's address, when counted per address.
    ip: Option<IpAddr>,
}

impl Admitted {
    /// Counts a new connection from `ip`, or says which bound it would pass.
    fn new(ctx: &ShardContext, ip: IpAddr) -> Result<Admitted, String> {
        let global = ctx.global.clone();
        let open = global.connections.fetch_add(1, Ordering::SeqCst);
        let mut admitted = Admitted { global, ip: None };
        if open >= ctx.config.max_connections {
            return Err(format!(
                "the broker serves its maximum of {} connections",
                ctx.config.max_connections
            ));
        }
        if let Some(limit) = ctx.config.max_connections_per_ip {
            if !admitted.global.admit_ip(ip, limit) {
                return Err(format!(
                    "the broker serves its maximum of {limit} connections from {ip}"
                ));
            }
            admitted.ip = Some(ip);
        }
        Ok(admitted)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.global.connections.fetch_sub(1, Ordering::SeqCst);
        if let Some(ip) = self.ip {
            self.global.release_ip(ip);
        }
    }
}

/// Creates the bootstrap user of `auth`, with a credential of each SCRAM hash, unless a
/// user of that name exists (its password may have changed since the first start).
fn create_bootstrap_user(auth: &crate::config::AuthConfig, users: &Users) -> Result<(), UserError> {
    let Some((name, password)) = &auth.bootstrap_user else {
        return Ok(());
    };
    if users.exists(name) {
        return Ok(());
    }
    for hash in crate::auth::ScramHash::ALL {
        let credential =
            crate::auth::Credential::new(hash, password, crate::auth::scram::DEFAULT_ITERATIONS);
        users.upsert(name, credential)?;
    }
    tracing::info!(user = %name, "created the bootstrap user");
    Ok(())
}

/// Removes group members whose session ended (their partitions go to the others).
async fn expire_sessions(ctx: Rc<ShardContext>) {
    loop {
        let tick = compio::time::sleep(Duration::from_millis(100));
        if let Either::Right(()) = first(tick, ctx.shutdown.notified()).await {
            return;
        }
        ctx.groups.tick(Instant::now());
    }
}

/// The background scrubber (`--scrub-bytes-per-sec`): goes round this shard's partitions,
/// one step of at most [`SCRUB_STEP_BYTES`] each, checking the CRCs of their sealed segments
/// (`PartitionLog::scrub_step`), and sleeps after each step for as long as its bytes take at
/// the configured rate, so it never reads faster than that. A corrupt batch is fenced (reads
/// of its offsets fail from then on) and logged as an error with a running count, on every
/// pass that finds it.
async fn scrub(ctx: Rc<ShardContext>, bytes_per_sec: u64) {
    let mut corrupt_found = 0u64;
    loop {
        let mut read = 0u64;
        for log in ctx.partitions.all_logs() {
            let step = match log.scrub_step(SCRUB_STEP_BYTES).await {
                Ok(step) => step,
                Err(crate::storage::StorageError::Closed) => continue,
                Err(e) => {
                    tracing::warn!(shard = ctx.id, "scrub read failed: {e}");
                    continue;
                }
            };
            for c in &step.corrupt {
                corrupt_found += 1;
                crate::metrics::shard::scrub_corrupt_batch();
                tracing::error!(
                    shard = ctx.id,
                    path = %c.path.display(),
                    position = c.position,
                    offset = c.offset,
                    last_offset = c.last_offset,
                    corrupt_batches_found = corrupt_found,
                    "scrub found a corrupt batch, fenced: {}",
                    c.reason
                );
            }
            read += step.bytes;
            let pause = Duration::from_secs_f64(step.bytes as f64 / bytes_per_sec as f64);
            if let Either::Right(()) =
                first(compio::time::sleep(pause), ctx.shutdown.notified()).await
            {
                return;
            }
        }
        if read == 0 {
            // Nothing sealed to check (or a pass just ended everywhere): look again later.
            let idle = compio::time::sleep(Duration::from_secs(1));
            if let Either::Right(()) = first(idle, ctx.shutdown.notified()).await {
                return;
            }
        }
    }
}

/// Log compaction (`cleanup.policy` with `compact`): every `--retention-check-secs`, each
/// partition of this shard whose compaction is due (`PartitionLog::compaction_due`) gets one
/// pass, at `--compaction-bytes-per-sec`. Its own task, so a long pass delays neither
/// retention nor the interval fsync; the pass itself yields at every file operation and
/// pacing sleep, so appends and fetches of the shard go on meanwhile.
async fn compaction(ctx: Rc<ShardContext>) {
    let pace = crate::storage::CompactionPace::new(ctx.config.compaction_bytes_per_sec);
    loop {
        let wait = compio::time::sleep(ctx.config.retention_check);
        if let Either::Right(()) = first(wait, ctx.shutdown.notified()).await {
            return;
        }
        for log in ctx.partitions.all_logs() {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            if ctx.is_shutting_down() || !log.compaction_due(now_ms) {
                continue;
            }
            // The pass logs its own outcome.
            if let Ok(stats) = log.compact(now_ms, pace).await {
                crate::metrics::shard::compaction(stats.bytes_removed);
            }
        }
    }
}

/// Bytes one scrub step reads from one partition.
const SCRUB_STEP_BYTES: usize = 256 << 10;

/// Periodic work: retention, and fdatasync for `--fsync interval=…`.
async fn maintenance(ctx: Rc<ShardContext>) {
    let sync_every = match ctx.config.fsync {
        FsyncPolicy::Interval(d) => Some(d),
        _ => None,
    };
    let retention_every = ctx.config.retention_check;
    let tick = sync_every.map_or(retention_every, |s| s.min(retention_every));
    let mut next_retention = Instant::now();
    loop {
        if let Either::Right(()) = first(compio::time::sleep(tick), ctx.shutdown.notified()).await {
            return;
        }
        if sync_every.is_some() {
            for log in ctx.partitions.all_logs() {
                if let Err(e) = log.sync().await {
                    tracing::error!(shard = ctx.id, "interval fsync failed: {e}");
                }
            }
        }
        if Instant::now() >= next_retention {
            next_retention = Instant::now() + retention_every;
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            for log in ctx.partitions.all_logs() {
                match log.enforce_retention(now_ms).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(shard = ctx.id, segments = n, "retention deleted segments");
                    }
                    Err(e) => tracing::warn!(shard = ctx.id, "retention failed: {e}"),
                }
            }
        }
    }
}
