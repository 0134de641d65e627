//! Broker configuration: what `eventflowd`'s flags set, in one value every shard shares.
//! [`sources`] merges the flags with the environment and the `--config` file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::Mechanism;
use crate::storage::{FsyncPolicy, LogWrites};

pub mod sources;

/// Everything a broker needs to start.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Shared listener address (every shard accepts on it through SO_REUSEPORT).
    pub listen: SocketAddr,
    /// The Kafka protocol's listener (every shard accepts on it through SO_REUSEPORT), or
    /// `None` for no Kafka listener.
    pub kafka_listen: Option<SocketAddr>,
    /// The HTTP listener serving `/metrics`, or `None` for none.
    pub metrics_listen: Option<SocketAddr>,
    /// Label produced and fetched traffic per partition, not only per topic.
    pub metrics_partition_labels: bool,
    /// Root of all data: `meta/` and one directory per topic.
    pub data_dir: PathBuf,
    /// CPU ids to run shards on, one shard each, in shard order.
    pub cores: Vec<usize>,
    /// Pin each shard thread to its core.
    pub pin: bool,
    /// When appended data is fdatasync'ed.
    pub fsync: FsyncPolicy,
    /// Extra time a partition's flusher waits to gather more batches into one write and one
    /// fdatasync.
    pub group_commit: Duration,
    /// Least time between the starts of two group-commit rounds of a partition.
    pub group_commit_interval: Duration,
    /// Bytes of each directly written partition's newest log kept in memory for reads.
    pub tail_cache_bytes: u64,
    /// Bytes the tail caches of one shard's partitions keep together.
    pub shard_tail_cache_bytes: u64,
    /// How appends reach the log files.
    pub log_writes: LogWrites,
    /// Largest record batch accepted.
    pub max_batch_bytes: usize,
    /// Largest request frame accepted.
    pub max_request_bytes: usize,
    /// Slots in each inter-shard ring.
    pub ring_capacity: usize,
    /// Submission queue entries of each shard's io_uring.
    pub uring_entries: u32,
    /// Use a kernel submission-polling thread per shard (`IORING_SETUP_SQPOLL`).
    pub sqpoll: bool,
    /// Port of shard 0's direct listener; shard `i` listens on `base + i`. `None`: no direct
    /// listeners. `Some(0)`: an ephemeral port per shard.
    pub direct_port_base: Option<u16>,
    /// Segment size of topics without a `segment.bytes` override.
    pub segment_bytes: u64,
    /// Segment age before a roll, for topics without a `segment.ms` override.
    pub segment_ms: Option<u64>,
    /// Time retention of topics without a `retention.ms` override (`None`: forever).
    pub retention_ms: Option<i64>,
    /// Size retention per partition of topics without a `retention.bytes` override (`None`:
    /// no limit).
    pub retention_bytes: Option<u64>,
    /// How often each shard enforces retention.
    pub retention_check: Duration,
    /// Bytes per second each shard's scrubber re-reads from sealed segments to check their
    /// CRCs; 0 turns the scrubber off.
    pub scrub_bytes_per_sec: u64,
    /// Bytes per second each shard's compaction reads plus writes (0: no limit).
    pub compaction_bytes_per_sec: u64,
    /// Connections accepted at once, across all shards.
    pub max_connections: usize,
    /// Requests one connection may have in flight before the broker stops reading from it.
    pub max_in_flight_per_connection: usize,
    /// Bytes of request frames each shard holds at once, across its connections; a
    /// connection whose next frame does not fit waits, unread. At least `max_request_bytes`.
    pub max_queued_request_bytes: usize,
    /// How long a request frame may take to arrive once its first byte did (and, for a frame
    /// that waited for the request budget, once it was admitted); past it the connection is
    /// closed.
    pub request_read_timeout: Duration,
    /// A connection with no request in flight that receives nothing for this long is closed
    /// (Kafka's `connections.max.idle.ms`).
    pub idle_timeout: Duration,
    /// Connections accepted at once from one client IP address, across all shards (`None`:
    /// no bound besides `max_connections`).
    pub max_connections_per_ip: Option<usize>,
    /// How long a Kafka consumer group's first rebalance waits for more members, so that
    /// members starting together share one generation (Kafka's
    /// `group.initial.rebalance.delay.ms`).
    pub group_initial_rebalance_delay: Duration,
    /// Authentication: mechanisms and requirements per listener, superusers, bounds.
    pub auth: AuthConfig,
    /// TLS for the listeners it names (`None`: every listener is plaintext).
    pub tls: Option<std::sync::Arc<crate::tls::ServerTls>>,
}

/// How a listener authenticates its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerAuth {
    /// The SASL mechanisms offered (none: the listener offers no authentication).
    pub mechanisms: Vec<Mechanism>,
    /// Whether a client must authenticate before any request but the handshake's (else it
    /// may go on as the anonymous principal).
    pub required: bool,
}

/// The broker's authentication settings.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The native listeners (shared and direct).
    pub native: ListenerAuth,
    /// The Kafka listener.
    pub kafka: ListenerAuth,
    /// Users every check lets through (Kafka's `super.users`, without the `User:` prefix).
    pub superusers: Vec<String>,
    /// Check every request against the ACLs (`--authorizer on`): what no ACL allows is
    /// denied. Off, every client may do everything (user management aside).
    pub authorizer: bool,
    /// A user created at start (SCRAM-SHA-256 and -512 credentials, a superuser) if it does
    /// not exist yet: the first administrator of a broker that requires authentication.
    pub bootstrap_user: Option<(String, String)>,
    /// How long a failed authentication waits before it is answered.
    pub failure_delay: Duration,
    /// How long a connection to a listener that requires authentication may take to
    /// authenticate before it is closed.
    pub timeout: Duration,
    /// Connections to listeners that require authentication that have not authenticated
    /// yet, across all shards; more are refused.
    pub max_unauthenticated: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        let listener = ListenerAuth {
            mechanisms: vec![Mechanism::ScramSha256, Mechanism::ScramSha512],
            required: false,
        };
        AuthConfig {
            native: listener.clone(),
            kafka: listener,
            superusers: Vec::new(),
            authorizer: false,
            bootstrap_user: None,
            failure_delay: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
            max_unauthenticated: 1000,
        }
    }
}

impl BrokerConfig {
    /// The defaults of `eventflowd` for a given listen address and data directory, on the
    /// cores this process may use.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        BrokerConfig {
            listen,
            kafka_listen: None,
            metrics_listen: None,
            metrics_partition_labels: false,
            data_dir,
            cores: available_cores(),
            pin: true,
            fsync: FsyncPolicy::Always,
            group_commit: Duration::ZERO,
            group_commit_interval: Duration::ZERO,
            tail_cache_bytes: crate::storage::DEFAULT_TAIL_CACHE_BYTES,
            shard_tail_cache_bytes: crate::storage::DEFAULT_SHARD_TAIL_CACHE_BYTES,
            log_writes: LogWrites::Direct,
            max_batch_bytes: 1 << 20,
            max_request_bytes: 16 << 20,
            ring_capacity: 1024,
            uring_entries: 1024,
            sqpoll: false,
            direct_port_base: if listen.port() == 0 {
                Some(0)
            } else {
                listen.port().checked_add(1)
            },
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * 24 * 3600 * 1000),
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            retention_check: Duration::from_secs(30),
            scrub_bytes_per_sec: 0,
            compaction_bytes_per_sec: 32 << 20,
            max_connections: 10_000,
            max_in_flight_per_connection: 128,
            max_queued_request_bytes: 32 << 20,
            request_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            max_connections_per_ip: None,
            group_initial_rebalance_delay: Duration::from_secs(3),
            auth: AuthConfig::default(),
            tls: None,
        }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u16 {
        self.cores.len() as u16
    }
}

/// The CPU ids this process may run on (its affinity mask), read before anything is pinned.
pub fn available_cores() -> Vec<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    if ids.is_empty() {
        ids.push(0);
    }
    ids.sort_unstable();
    ids
}

/// Parses `--cores`: a count (`2`) takes the first N available cores; a list (`0,2-3`) names
/// them. Every named core must be one this process may use.
pub fn parse_cores(spec: &str, available: &[usize]) -> Result<Vec<usize>, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err("empty core list".into());
    }
    let is_list = spec.contains(',') || spec.contains('-');
    if !is_list {
        let n: usize = spec
            .parse()
            .map_err(|_| format!("`{spec}` is neither a core count nor a core list"))?;
        if n == 0 {
            return Err("core count must be at least 1".into());
        }
        if n > available.len() {
            return Err(format!(
                "asked for {n} cores but this process may use only {} ({:?})",
                available.len(),
                available
            ));
        }
        return Ok(available[..n].to_vec());
    }
    let mut cores = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: usize = lo
            .parse()
            .map_err(|_| format!("bad core id `{lo}` in `{spec}`"))?;
        let hi: usize = hi
            .parse()
            .map_err(|_| format!("bad core id `{hi}` in `{spec}`"))?;
        if lo > hi {
            return Err(format!("bad core range `{part}`"));
        }
        for id in lo..=hi {
            if !available.contains(&id) {
                return Err(format!(
                    "core {id} is not available to this process (available: {available:?})"
                ));
            }
            if cores.contains(&id) {
                return Err(format!("core {id} is listed twice"));
            }
            cores.push(id);
        }
    }
    Ok(cores)
}

/// Writes a core list the way [`parse_cores`] reads it back as the same list: runs as
/// ranges, and a single core as `N-N` (a bare number would be a count).
pub fn format_cores(cores: &[usize]) -> String {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &id in cores {
        match runs.last_mut() {
            Some((_, hi)) if id == *hi + 1 => *hi = id,
            _ => runs.push((id, id)),
        }
    }
    if let [(lo, hi)] = runs[..] {
        return format!("{lo}-{hi}");
    }
    runs.iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `--fsync`: `always`, `never` or `interval=<ms>`.
pub fn parse_fsync(spec: &str) -> Result<FsyncPolicy, String> {
    match spec {
        "always" => Ok(FsyncPolicy::Always),
        "never" => Ok(FsyncPolicy::Never),
        _ => {
            let ms = spec
                .strip_prefix("interval=")
                .ok_or_else(|| format!("`{spec}`: expected always, never or interval=<ms>"))?;
            let ms: u64 = ms
                .parse()
                .map_err(|_| format!("`{ms}` is not a number of milliseconds"))?;
            if ms == 0 {
                return Err("interval must be at least 1 ms".into());
            }
            Ok(FsyncPolicy::Interval(Duration::from_millis(ms)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_specs() {
        let avail = [0, 1, 2, 3];
        assert_eq!(parse_cores("2", &avail).unwrap(), vec![0, 1]);
        assert_eq!(parse_cores("0,2-3", &avail).unwrap(), vec![0, 2, 3]);
        assert_eq!(parse_cores("3-3", &avail).unwrap(), vec![3]);
        assert!(parse_cores("5", &avail).is_err());
        assert!(
            parse_cores("0", &avail).is_err(),
            "a bare number is a count"
        );
        assert!(parse_cores("4-5", &avail).is_err());
        assert!(parse_cores("1,1", &avail).is_err());
        assert!(parse_cores("x", &avail).is_err());
        assert!(parse_cores("1", &[]).is_err());
    }

    #[test]
    fn core_lists_read_back() {
        let avail = [0, 1, 2, 3, 5];
        for cores in [
            vec![0],
            vec![3],
            vec![0, 1],
            vec![0, 2, 3],
            vec![1, 3, 5],
            vec![5, 0],
        ] {
            let written = format_cores(&cores);
            assert_eq!(parse_cores(&written, &avail).unwrap(), cores, "{written}");
        }
        assert_eq!(format_cores(&[0, 1, 2, 3]), "0-3");
        assert_eq!(format_cores(&[2]), "2-2");
        assert_eq!(format_cores(&[0, 2, 3]), "0,2-3");
    }

    #[test]
    fn fsync_specs() {
        assert_eq!(parse_fsync("always"), Ok(FsyncPolicy::Always));
        assert_eq!(parse_fsync("never"), Ok(FsyncPolicy::Never));
        assert_eq!(
            parse_fsync("interval=50"),
            Ok(FsyncPolicy::Interval(Duration::from_millis(50)))
        );
        assert!(parse_fsync("interval=0").is_err());
        assert!(parse_fsync("sometimes").is_err());
    }
}
