//! `eventflowd`: the Eventflow broker.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use eventflow::auth::Mechanism;
use eventflow::config::sources::{self, FileText, Layered};
use eventflow::config::{
    available_cores, format_cores, parse_cores, parse_fsync, AuthConfig, BrokerConfig, ListenerAuth,
};
use eventflow::storage::LogWrites;
use eventflow::tls::{ServerTls, TlsListeners, TlsSettings};

/// The Kafka listener's default port: Kafka's own, so Kafka tools work unconfigured.
const DEFAULT_KAFKA_PORT: u16 = 9092;

/// The metrics listener's default port: Redpanda's admin and metrics port, which
/// Prometheus set-ups for Kafka-compatible brokers already know.
const DEFAULT_METRICS_PORT: u16 = 9644;

/// The HTTP API's default port: the REST proxy port (Confluent's REST Proxy, Redpanda's
/// HTTP Proxy) that scripts for Kafka-compatible brokers already know.
const DEFAULT_HTTP_PORT: u16 = 8082;

/// A thread-per-core, io_uring, log-based message broker with Kafka's data model.
///
/// Prints one line `eventflowd ready listen=ADDR direct=ADDR,… shards=N kafka=ADDR
/// metrics=ADDR http=ADDR` on stdout once every shard serves (`kafka=` is empty with
/// --no-kafka, `metrics=` with --no-metrics, `http=` with --no-http); logs go to stderr
/// (level from RUST_LOG, default info).
#[derive(clap::Parser, Debug)]
#[command(name = "eventflowd", version, after_long_help = SOURCES_HELP)]
struct Args {
    /// A TOML file of settings: every flag below, under its name in snake_case
    /// (`max_queued_bytes = 33554432`, `no_pin = true`). The environment
    /// (`EVENTFLOW_MAX_QUEUED_BYTES`) beats the file and flags beat both; see
    /// config/eventflow.example.toml.
    #[arg(long, value_name = "FILE", env = "EVENTFLOW_CONFIG")]
    config: Option<PathBuf>,

    /// Print the effective configuration as TOML (each value with where it came from) and
    /// exit without starting.
    #[arg(long)]
    print_config: bool,

    /// Address of the native protocol's shared listener (every shard accepts on it).
    #[arg(long, default_value = "127.0.0.1:9292")]
    listen: SocketAddr,

    /// Address of the Kafka protocol's listener (every shard accepts on it). Default:
    /// 127.0.0.1:9092, or an ephemeral port on the --listen address when --listen has
    /// port 0 (as the direct ports do).
    #[arg(long)]
    kafka_listen: Option<SocketAddr>,

    /// Do not serve the Kafka protocol.
    #[arg(long, conflicts_with = "kafka_listen")]
    no_kafka: bool,

    /// Address of the HTTP listener serving Prometheus metrics at /metrics. Default:
    /// 127.0.0.1:9644, or an ephemeral port on the --listen address when --listen has
    /// port 0.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,

    /// Do not serve metrics.
    #[arg(long, conflicts_with = "metrics_listen")]
    no_metrics: bool,

    /// Label produced and fetched traffic per partition too, not only per topic (one
    /// series per partition: mind the cardinality with many partitions).
    #[arg(long)]
    metrics_partition_labels: bool,

    /// Address of the HTTP listener: the JSON API (/v3/…), /health, /ready, /openapi.json
    /// and the web console at /. Default: 127.0.0.1:8082, or an ephemeral port on the
    /// --listen address when --listen has port 0.
    #[arg(long)]
    http_listen: Option<SocketAddr>,

    /// Do not serve the HTTP API and console.
    #[arg(long, conflicts_with = "http_listen")]
    no_http: bool,

    /// Largest HTTP request body accepted, in bytes; a larger one gets 413.
    #[arg(long, default_value_t = 1 << 20)]
    http_max_body_bytes: usize,

    /// Where topics, segments and metadata live.
    #[arg(long, default_value = "./eventflow-data")]
    data_dir: PathBuf,

    /// Cores to run shards on: a count (`2`: the first two this process may use) or a list
    /// (`0,2-3`). Default: every core this process may use.
    #[arg(long)]
    cores: Option<String>,

    /// Do not pin shard threads to their cores.
    #[arg(long)]
    no_pin: bool,

    /// When appended data is fdatasync'ed: `always` (before acknowledging), `never` (left
    /// to the OS), or `interval=<ms>`.
    #[arg(long, default_value = "always")]
    fsync: String,

    /// Extra microseconds a partition's flush waits to gather more batches into one write
    /// and one fdatasync.
    #[arg(long, default_value_t = 0)]
    group_commit_us: u64,

    /// Least microseconds from the start of one group-commit round of a partition to the
    /// start of the next. Under steady load a round then waits and takes everything that
    /// arrived meanwhile: fewer, larger writes and fdatasyncs, for up to this much more
    /// latency. A round after a pause this long starts at once. 0: no pacing. Helps on VMs
    /// whose host charges each disk request to the VM's CPU time (tuning/README.md)
    #[arg(long, default_value_t = 0)]
    group_commit_interval_us: u64,

    /// How appends reach the log files: `direct` (O_DIRECT from aligned buffers, with each
    /// partition's newest `--tail-cache-mb` kept in memory for reads) or `buffered` (through
    /// the page cache, which also keeps older data for consumers far behind).
    /// docs/PERFORMANCE.md compares them.
    #[arg(long, default_value = "direct")]
    log_writes: String,

    /// Under `--log-writes direct`: MiB of each written partition's newest log kept in the
    /// shard's memory, across segment rolls, so that consumers up to that far behind the
    /// producers read from memory instead of the disk. Memory: up to this much per partition
    /// written, within `--tail-cache-shard-mb` per shard. 0 keeps only the newest write's
    /// buffers.
    #[arg(long, default_value_t = 4)]
    tail_cache_mb: u64,

    /// Under `--log-writes direct`: MiB that the tail caches of all the partitions a shard
    /// owns keep together; past it, the oldest cached bytes go first, whichever partition
    /// they belong to. Bounds the caches' memory by the cores, not the partitions (each
    /// partition's newest write stays beyond it). Never less than `--tail-cache-mb`.
    #[arg(long, default_value_t = 256)]
    tail_cache_shard_mb: u64,

    /// Largest record batch accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_batch_bytes: usize,

    /// Largest request frame accepted, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_request_bytes: usize,

    /// Slots in each inter-shard ring (exactly this many, at least 2).
    #[arg(long, default_value_t = 1024)]
    ring_capacity: usize,

    /// Submission queue entries of each shard's io_uring.
    #[arg(long, default_value_t = 1024)]
    uring_entries: u32,

    /// Use a kernel submission-polling thread per shard (IORING_SETUP_SQPOLL).
    #[arg(long)]
    sqpoll: bool,

    /// Port of shard 0's direct listener; shard i listens on this + i. Default: listen
    /// port + 1 (an ephemeral port per shard when --listen has port 0).
    #[arg(long)]
    direct_port_base: Option<u16>,

    /// Do not open per-shard direct listeners.
    #[arg(long, conflicts_with = "direct_port_base")]
    no_direct_ports: bool,

    /// Segment size of topics that do not override `segment.bytes`, in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    segment_bytes: u64,

    /// Time retention of topics that do not override `retention.ms`, in ms (-1: forever).
    #[arg(long, default_value_t = 7 * 24 * 3600 * 1000, allow_hyphen_values = true)]
    retention_ms: i64,

    /// Size retention per partition of topics that do not override `retention.bytes`, in
    /// bytes (-1: no limit).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    retention_bytes: i64,

    /// Seconds between two retention checks.
    #[arg(long, default_value_t = 30)]
    retention_check_secs: u64,

    /// Bytes per second each shard re-reads from sealed segments in the background to check
    /// every batch's CRC-32C (a corrupt batch is logged); 0: no scrubbing.
    #[arg(long, default_value_t = 0)]
    scrub_bytes_per_sec: u64,

    /// Bytes per second each shard's log compaction (topics with cleanup.policy=compact)
    /// reads plus writes; 0: no limit. Passes are checked every --retention-check-secs.
    #[arg(long, default_value_t = 32 << 20)]
    compaction_bytes_per_sec: u64,

    /// Connections served at once, across all shards.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,

    /// Requests one connection may have in flight before the broker stops reading it.
    #[arg(long, default_value_t = 128)]
    max_in_flight: usize,

    /// Bytes of requests each shard holds in memory at once, across its connections (at
    /// least --max-request-bytes). Past it, connections wait unread.
    #[arg(long, default_value_t = 32 << 20)]
    max_queued_bytes: usize,

    /// Milliseconds a request may take to arrive once its first byte did; past it the
    /// connection is closed.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    request_read_timeout_ms: u64,

    /// Milliseconds a connection with no request in flight may stay silent before it is
    /// closed (Kafka's connections.max.idle.ms).
    #[arg(long, default_value_t = 600_000, value_name = "MS")]
    idle_timeout_ms: u64,

    /// Connections served at once from one client IP address, across all shards (0: no
    /// bound besides --max-connections).
    #[arg(long, default_value_t = 0)]
    max_connections_per_ip: usize,

    /// How long a Kafka consumer group's first rebalance waits for more members to join, as
    /// Kafka's group.initial.rebalance.delay.ms (0: complete as soon as the first has joined).
    #[arg(long, default_value_t = 3000, value_name = "MS")]
    group_initial_rebalance_delay_ms: u64,

    /// SASL mechanisms the native listeners offer, comma-separated (SCRAM-SHA-256,
    /// SCRAM-SHA-512, PLAIN), or `none`. PLAIN sends the password as it is: only on loopback.
    #[arg(
        long,
        default_value = "SCRAM-SHA-256,SCRAM-SHA-512",
        value_name = "LIST"
    )]
    native_sasl_mechanisms: String,

    /// SASL mechanisms the Kafka listener offers, as --native-sasl-mechanisms.
    #[arg(
        long,
        default_value = "SCRAM-SHA-256,SCRAM-SHA-512",
        value_name = "LIST"
    )]
    kafka_sasl_mechanisms: String,

    /// Native clients must authenticate before any other request (else they may go on as
    /// the anonymous user).
    #[arg(long)]
    native_require_auth: bool,

    /// Kafka clients must authenticate before any other request (else they may go on as the
    /// anonymous user).
    #[arg(long)]
    kafka_require_auth: bool,

    /// A user who may do anything, such as manage users (repeat for more; Kafka's
    /// super.users). With none, any client may manage users.
    #[arg(long, value_name = "USER")]
    superuser: Vec<String>,

    /// `on`: check every request against the ACLs (eventflow acl, Kafka's CreateAcls);
    /// what no ACL allows is denied, superusers pass. `off`: everyone may do everything.
    #[arg(long, default_value = "off", value_parser = ["on", "off"])]
    authorizer: String,

    /// A superuser created at start if no user of that name exists, with the password in
    /// the file --bootstrap-superuser-password-file names or in the environment variable
    /// EVENTFLOW_BOOTSTRAP_SUPERUSER_PASSWORD (never on the command line).
    #[arg(long, value_name = "USER")]
    bootstrap_superuser: Option<String>,

    /// A file whose first line is the --bootstrap-superuser's password.
    #[arg(long, value_name = "FILE", requires = "bootstrap_superuser")]
    bootstrap_superuser_password_file: Option<PathBuf>,

    /// Milliseconds a failed authentication waits before it is answered (a password guesser
    /// gets one try per connection per delay).
    #[arg(long, default_value_t = 500, value_name = "MS")]
    sasl_failure_delay_ms: u64,

    /// Milliseconds a client of a listener that requires authentication has to authenticate
    /// before the connection is closed.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    sasl_timeout_ms: u64,

    /// Connections to listeners that require authentication that have not authenticated
    /// yet, across all shards; more are refused.
    #[arg(long, default_value_t = 1000)]
    max_unauthenticated_connections: usize,

    /// A PEM certificate chain (the broker's certificate first): the --tls-listeners speak
    /// TLS. Reloaded, with --tls-key, on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// PEM CA certificates that clients' certificates must chain to (mutual TLS).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,

    /// Client certificates: `none`, `requested` (checked when a client presents one) or
    /// `required`. A verified certificate's common name is the connection's user.
    #[arg(long, default_value = "none", value_parser = ["none", "requested", "required"])]
    tls_client_auth: String,

    /// The listeners that speak TLS when --tls-cert is given: native, kafka, http, metrics,
    /// or all.
    #[arg(long, default_value = "all", value_name = "LIST")]
    tls_listeners: String,
}

/// Largest `--tail-cache-mb` and `--tail-cache-shard-mb`: 1 TiB, far past any machine's
/// memory, so the byte count cannot overflow.
const MAX_TAIL_CACHE_MB: u64 = 1 << 20;

/// The environment variable that holds `--bootstrap-superuser`'s password.
const BOOTSTRAP_PASSWORD_ENV: &str = "EVENTFLOW_BOOTSTRAP_SUPERUSER_PASSWORD";

/// The end of `--help`: where settings come from.
const SOURCES_HELP: &str = "\
Every flag except --config and --print-config is also a key of the --config file (the \
flag's name in snake_case: --max-queued-bytes is max_queued_bytes) and an environment \
variable (EVENTFLOW_ and the key in upper case: EVENTFLOW_MAX_QUEUED_BYTES). Flags beat \
the environment, which beats the file, which beats the defaults.";

/// The flags that are not settings of the file or the environment.
const NOT_SETTINGS: &[&str] = &["config", "print_config"];

/// Where each setting comes from, merged (flag > environment > file > default), and the
/// arguments the merged settings parse to.
fn layered_args() -> anyhow::Result<(Args, Layered)> {
    let command = Args::command();
    // Help, version and a bad flag end the process here, as before there was a file.
    let cli = command.clone().get_matches();
    let file = match cli.get_one::<PathBuf>("config") {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --config {}", path.display()))?;
            Some((path.display().to_string(), text))
        }
        None => None,
    };
    let layered = sources::resolve(
        &command,
        &cli,
        std::env::vars_os(),
        file.as_ref().map(|(path, text)| FileText { path, text }),
        NOT_SETTINGS,
    )?;
    for unknown in layered.unknown_env() {
        match &unknown.suggestion {
            Some(meant) => tracing::warn!(
                variable = %unknown.name,
                "ignored: {} is not a setting (did you mean {meant}?)",
                unknown.name
            ),
            None => tracing::warn!(
                variable = %unknown.name,
                "ignored: {} is not a setting",
                unknown.name
            ),
        }
    }
    let matches = command
        .try_get_matches_from(layered.argv())
        .map_err(|e| anyhow::anyhow!(sources::clap_message(&e)))?;
    let mut args = Args::from_arg_matches(&matches).map_err(|e| anyhow::anyhow!(e.to_string()))?;
    // The two flags that are no settings stay as the command line gave them.
    args.config = cli.get_one::<PathBuf>("config").cloned();
    args.print_config = cli.get_flag("print_config");
    Ok((args, layered))
}

/// What `--print-config` shows for a setting whose flag states no default.
fn derived_default(key: &str, config: &BrokerConfig) -> Option<String> {
    match key {
        "kafka_listen" => config.kafka_listen.map(|a| a.to_string()),
        "metrics_listen" => config.metrics_listen.map(|a| a.to_string()),
        "http_listen" => http_listen(config.listen, None).map(|a| a.to_string()),
        "direct_port_base" => config.direct_port_base.map(|p| p.to_string()),
        "cores" => Some(format_cores(&config.cores)),
        _ => None,
    }
}

/// Fails with `message` about the settings `keys` (naming the file's line or the variable
/// they came from) unless `ok`.
fn ensure(ok: bool, layered: &Layered, keys: &[&str], message: String) -> anyhow::Result<()> {
    if ok {
        Ok(())
    } else {
        Err(anyhow::anyhow!(layered.blame(keys, message)))
    }
}

/// The HTTP listener's address: the flag's, or the default (an ephemeral port beside an
/// ephemeral --listen).
fn http_listen(listen: SocketAddr, flag: Option<SocketAddr>) -> Option<SocketAddr> {
    Some(match flag {
        Some(addr) => addr,
        None if listen.port() == 0 => SocketAddr::new(listen.ip(), 0),
        None => SocketAddr::from(([127, 0, 0, 1], DEFAULT_HTTP_PORT)),
    })
}

/// The HTTP listener's settings from the flags (`None`: --no-http).
fn http_from(args: &Args, layered: &Layered) -> anyhow::Result<Option<(SocketAddr, usize)>> {
    ensure(
        args.http_max_body_bytes >= 1024,
        layered,
        &["http_max_body_bytes"],
        "--http-max-body-bytes must be at least 1024".into(),
    )?;
    Ok(if args.no_http {
        None
    } else {
        http_listen(args.listen, args.http_listen).map(|a| (a, args.http_max_body_bytes))
    })
}

/// The broker's TLS from the `--tls-*` flags, its files loaded and checked (`None`: no
/// --tls-cert).
fn tls_from(args: &Args, l: &Layered) -> anyhow::Result<Option<Arc<ServerTls>>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let listeners = TlsListeners::parse(&args.tls_listeners).map_err(|e| {
        anyhow::anyhow!(l.blame(&["tls_listeners"], format!("--tls-listeners: {e}")))
    })?;
    let client_auth = args
        .tls_client_auth
        .parse()
        .map_err(|e: String| anyhow::anyhow!(l.blame(&["tls_client_auth"], e)))?;
    let settings = TlsSettings {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: args.tls_client_ca.clone(),
        client_auth,
        listeners,
    };
    let tls = ServerTls::new(settings).map_err(|e| {
        anyhow::anyhow!(l.blame(
            &["tls_cert", "tls_key", "tls_client_ca", "tls_client_auth"],
            e.to_string()
        ))
    })?;
    Ok(Some(Arc::new(tls)))
}

fn config_from(args: Args, layered: &Layered) -> anyhow::Result<BrokerConfig> {
    let mut config = BrokerConfig::new(args.listen, args.data_dir.clone());
    config.kafka_listen = match (args.no_kafka, args.kafka_listen) {
        (true, _) => None,
        (false, Some(addr)) => Some(addr),
        (false, None) if args.listen.port() == 0 => Some(SocketAddr::new(args.listen.ip(), 0)),
        (false, None) => Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_KAFKA_PORT))),
    };
    config.metrics_listen = match (args.no_metrics, args.metrics_listen) {
        (true, _) => None,
        (false, Some(addr)) => Some(addr),
        (false, None) if args.listen.port() == 0 => Some(SocketAddr::new(args.listen.ip(), 0)),
        (false, None) => Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_METRICS_PORT))),
    };
    config.metrics_partition_labels = args.metrics_partition_labels;
    let l = layered;
    let available = available_cores();
    if let Some(spec) = &args.cores {
        config.cores = parse_cores(spec, &available)
            .map_err(|e| anyhow::anyhow!(l.blame(&["cores"], format!("--cores: {e}"))))?;
    }
    config.pin = !args.no_pin;
    config.fsync = parse_fsync(&args.fsync)
        .map_err(|e| anyhow::anyhow!(l.blame(&["fsync"], format!("--fsync: {e}"))))?;
    config.group_commit = Duration::from_micros(args.group_commit_us);
    config.group_commit_interval = Duration::from_micros(args.group_commit_interval_us);
    config.log_writes = LogWrites::parse(&args.log_writes)
        .map_err(|e| anyhow::anyhow!(l.blame(&["log_writes"], format!("--log-writes: {e}"))))?;
    ensure(
        args.tail_cache_mb <= MAX_TAIL_CACHE_MB,
        l,
        &["tail_cache_mb"],
        format!("--tail-cache-mb must be at most {MAX_TAIL_CACHE_MB} (1 TiB)"),
    )?;
    config.tail_cache_bytes = args.tail_cache_mb << 20;
    ensure(
        args.tail_cache_shard_mb <= MAX_TAIL_CACHE_MB,
        l,
        &["tail_cache_shard_mb"],
        format!("--tail-cache-shard-mb must be at most {MAX_TAIL_CACHE_MB} (1 TiB)"),
    )?;
    config.shard_tail_cache_bytes = args.tail_cache_shard_mb << 20;
    ensure(
        args.max_batch_bytes >= 61,
        l,
        &["max_batch_bytes"],
        "--max-batch-bytes must be at least 61 (one batch header)".into(),
    )?;
    config.max_batch_bytes = args.max_batch_bytes;
    ensure(
        args.max_request_bytes >= 1024,
        l,
        &["max_request_bytes"],
        "--max-request-bytes must be at least 1024".into(),
    )?;
    config.max_request_bytes = args.max_request_bytes;
    ensure(
        args.ring_capacity >= 2,
        l,
        &["ring_capacity"],
        "--ring-capacity must be at least 2".into(),
    )?;
    config.ring_capacity = args.ring_capacity;
    ensure(
        (8..=32768).contains(&args.uring_entries),
        l,
        &["uring_entries"],
        "--uring-entries must be between 8 and 32768".into(),
    )?;
    config.uring_entries = args.uring_entries;
    config.sqpoll = args.sqpoll;
    if args.no_direct_ports {
        config.direct_port_base = None;
    } else if let Some(base) = args.direct_port_base {
        config.direct_port_base = Some(base);
    }
    ensure(
        args.segment_bytes >= 1024,
        l,
        &["segment_bytes"],
        "--segment-bytes must be at least 1024".into(),
    )?;
    config.segment_bytes = args.segment_bytes;
    let (ms, bytes) = (args.retention_ms, args.retention_bytes);
    ensure(
        ms == -1 || ms > 0,
        l,
        &["retention_ms"],
        format!("--retention-ms must be -1 or positive, not {ms}"),
    )?;
    config.retention_ms = (ms > 0).then_some(ms);
    ensure(
        bytes == -1 || bytes > 0,
        l,
        &["retention_bytes"],
        format!("--retention-bytes must be -1 or positive, not {bytes}"),
    )?;
    config.retention_bytes = (bytes > 0).then_some(bytes as u64);
    config.retention_check = Duration::from_secs(args.retention_check_secs.max(1));
    config.scrub_bytes_per_sec = args.scrub_bytes_per_sec;
    config.compaction_bytes_per_sec = args.compaction_bytes_per_sec;
    ensure(
        args.max_connections > 0 && args.max_in_flight > 0,
        l,
        &["max_connections", "max_in_flight"],
        "--max-connections and --max-in-flight must be at least 1".into(),
    )?;
    config.max_connections = args.max_connections;
    config.max_in_flight_per_connection = args.max_in_flight;
    ensure(
        args.max_queued_bytes >= config.max_request_bytes,
        l,
        &["max_queued_bytes", "max_request_bytes"],
        format!(
            "--max-queued-bytes ({}) must be at least --max-request-bytes ({}): a request of \
             the largest size must fit",
            args.max_queued_bytes, config.max_request_bytes
        ),
    )?;
    config.max_queued_request_bytes = args.max_queued_bytes;
    config.group_initial_rebalance_delay =
        Duration::from_millis(args.group_initial_rebalance_delay_ms);
    ensure(
        args.request_read_timeout_ms > 0 && args.idle_timeout_ms > 0,
        l,
        &["request_read_timeout_ms", "idle_timeout_ms"],
        "--request-read-timeout-ms and --idle-timeout-ms must be at least 1".into(),
    )?;
    config.request_read_timeout = Duration::from_millis(args.request_read_timeout_ms);
    config.idle_timeout = Duration::from_millis(args.idle_timeout_ms);
    config.max_connections_per_ip =
        (args.max_connections_per_ip > 0).then_some(args.max_connections_per_ip);
    config.auth = auth_from(&args, l)?;
    Ok(config)
}

/// The authentication settings from the flags (and the bootstrap superuser's password from
/// its file or variable).
fn auth_from(args: &Args, l: &Layered) -> anyhow::Result<AuthConfig> {
    let mechanisms = |key: &str, list: &str| -> anyhow::Result<Vec<Mechanism>> {
        if list.trim().eq_ignore_ascii_case("none") || list.trim().is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for name in list.split(',') {
            let m: Mechanism = name.trim().parse().map_err(|e: String| {
                anyhow::anyhow!(l.blame(&[key], format!("--{}: {e}", key.replace('_', "-"))))
            })?;
            if !out.contains(&m) {
                out.push(m);
            }
        }
        Ok(out)
    };
    let native = ListenerAuth {
        mechanisms: mechanisms("native_sasl_mechanisms", &args.native_sasl_mechanisms)?,
        required: args.native_require_auth,
    };
    let kafka = ListenerAuth {
        mechanisms: mechanisms("kafka_sasl_mechanisms", &args.kafka_sasl_mechanisms)?,
        required: args.kafka_require_auth,
    };
    for (listener, key) in [(&native, "native"), (&kafka, "kafka")] {
        ensure(
            !listener.required || !listener.mechanisms.is_empty(),
            l,
            &[
                &format!("{key}_require_auth"),
                &format!("{key}_sasl_mechanisms"),
            ],
            format!("--{key}-require-auth needs a mechanism in --{key}-sasl-mechanisms"),
        )?;
    }
    let mut superusers = args.superuser.clone();
    let bootstrap_user = match &args.bootstrap_superuser {
        None => None,
        Some(name) => {
            eventflow::auth::validate_user_name(name).map_err(|e| {
                anyhow::anyhow!(l.blame(
                    &["bootstrap_superuser"],
                    format!("--bootstrap-superuser: {e}")
                ))
            })?;
            let password = match &args.bootstrap_superuser_password_file {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "--bootstrap-superuser-password-file {}: {e}",
                            path.display()
                        )
                    })?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
                None => std::env::var(BOOTSTRAP_PASSWORD_ENV).map_err(|_| {
                    anyhow::anyhow!(
                        "--bootstrap-superuser {name} needs a password: in \
                         --bootstrap-superuser-password-file or {BOOTSTRAP_PASSWORD_ENV}"
                    )
                })?,
            };
            ensure(
                password.len() >= 8,
                l,
                &["bootstrap_superuser"],
                "the bootstrap superuser's password must have at least 8 characters".into(),
            )?;
            if !superusers.contains(name) {
                superusers.push(name.clone());
            }
            Some((name.clone(), password))
        }
    };
    ensure(
        args.sasl_timeout_ms > 0 && args.max_unauthenticated_connections > 0,
        l,
        &["sasl_timeout_ms", "max_unauthenticated_connections"],
        "--sasl-timeout-ms and --max-unauthenticated-connections must be at least 1".into(),
    )?;
    Ok(AuthConfig {
        native,
        kafka,
        superusers,
        authorizer: args.authorizer == "on",
        bootstrap_user,
        failure_delay: Duration::from_millis(args.sasl_failure_delay_ms),
        timeout: Duration::from_millis(args.sasl_timeout_ms),
        max_unauthenticated: args.max_unauthenticated_connections,
    })
}

/// Blocks SIGINT, SIGTERM and SIGHUP (reload the TLS certificate) in this thread (and so in every thread it spawns afterwards),
/// so that they can be taken synchronously with `sigwait` instead of interrupting a shard.
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: plain libc calls on a sigset_t we own; pthread_sigmask only changes this
    // thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_stop_signal(set: &libc::sigset_t) -> i32 {
    let mut signal = 0;
    // SAFETY: `set` is a valid, initialised signal set; `signal` is a valid out pointer.
    unsafe { libc::sigwait(set, &mut signal) };
    signal
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log written to a file or a pipe stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let (args, layered) = layered_args()?;
    let print_config = args.print_config;
    let config_file = args.config.clone();
    let http = http_from(&args, &layered)?;
    let tls = tls_from(&args, &layered)?;
    let mut config = config_from(args, &layered)?;
    config.tls = tls.clone();
    let tls_on = |pick: fn(&TlsListeners) -> bool| {
        tls.as_ref()
            .filter(|t| pick(&t.listeners()))
            .map(|t| t.config())
    };
    if print_config {
        print!("{}", layered.to_toml(|key| derived_default(key, &config)));
        return Ok(());
    }
    let signals = block_stop_signals();
    tracing::info!(
        listen = %config.listen,
        kafka_listen = ?config.kafka_listen,
        metrics_listen = ?config.metrics_listen,
        data_dir = %config.data_dir.display(),
        cores = ?config.cores,
        fsync = ?config.fsync,
        config_file = ?config_file,
        "starting"
    );
    eventflow::storage::init_sync_journal(&config.data_dir)
        .with_context(|| format!("cannot open {}", eventflow::storage::SYNC_JOURNAL_ENV))?;
    // The HTTP listener starts first: /health answers and /ready says 503 while the shards
    // recover.
    let http = match http {
        Some((addr, max_body)) => Some(
            eventflow::http_api::HttpApi::start(addr, max_body, tls_on(|l| l.http))
                .with_context(|| format!("cannot listen on --http-listen {addr}"))?,
        ),
        None => None,
    };
    let mut settings = eventflow::http_api::settings_of(&config);
    let native_auth = config.auth.native.clone();
    let mut broker = eventflow::server::start(config).context("cannot start the broker")?;
    let metrics_http = match broker.take_metrics_listener() {
        Some(listener) => match eventflow::http::HttpServer::start(
            listener,
            eventflow::http::metrics::router(broker.scraper()),
            eventflow::http::Limits::default(),
            tls_on(|l| l.metrics),
        ) {
            Ok(http) => Some(http),
            Err(e) => {
                // The shards serve already: stop them cleanly (logs synced) before exiting.
                let stopped = broker.shutdown();
                return Err(anyhow::Error::new(e).context(match stopped {
                    Ok(()) => "cannot start the metrics listener".to_string(),
                    Err(s) => format!("cannot start the metrics listener (and stopping: {s})"),
                }));
            }
        },
        None => None,
    };
    if let Some(http) = &http {
        // The addresses as bound (ephemeral ports resolved).
        for (name, value) in &mut settings {
            match name.as_str() {
                "listen" => *value = broker.addr().to_string(),
                "kafka_listen" => {
                    *value = broker
                        .kafka_addr()
                        .map_or_else(|| "none".into(), |a| a.to_string());
                }
                _ => {}
            }
        }
        settings.push(("http_listen".into(), http.addr().to_string()));
        http.set_broker(eventflow::http_api::BrokerView {
            native: broker.addr(),
            kafka: broker.kafka_addr(),
            direct: broker.direct_addrs().to_vec(),
            shards: broker.shard_count(),
            connections: Box::new(broker.connection_counter()),
            settings,
            traffic: traffic_source(broker.scraper()),
            login_mechanism: [
                Mechanism::ScramSha512,
                Mechanism::ScramSha256,
                Mechanism::Plain,
            ]
            .into_iter()
            .find(|m| native_auth.mechanisms.contains(m)),
            login_required: native_auth.required,
            native_tls: tls
                .as_ref()
                .filter(|t| t.listeners().native)
                .map(ServerTls::own_client),
        });
    }
    let direct: Vec<String> = broker
        .direct_addrs()
        .iter()
        .map(std::string::ToString::to_string)
        .collect();
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "eventflowd ready listen={} direct={} shards={} kafka={} metrics={} http={}",
            broker.addr(),
            direct.join(","),
            broker.shard_count(),
            broker
                .kafka_addr()
                .map_or_else(String::new, |a| a.to_string()),
            metrics_http
                .as_ref()
                .map_or_else(String::new, |h| h.addr().to_string()),
            http.as_ref()
                .map_or_else(String::new, |h| h.addr().to_string())
        )?;
        out.flush()?;
    }
    let trigger = broker.shutdown_trigger();
    let http_stopping = http
        .as_ref()
        .map(eventflow::http_api::HttpApi::stopping_trigger);
    let waiter = std::thread::spawn(move || {
        let signal = loop {
            let signal = wait_for_stop_signal(&signals);
            if signal != libc::SIGHUP {
                break signal;
            }
            match &tls {
                Some(tls) => match tls.reload() {
                    Ok(()) => tracing::info!(
                        cert = %tls.settings().cert.display(),
                        "SIGHUP: TLS certificate reloaded; new connections use it"
                    ),
                    Err(e) => tracing::error!(
                        "SIGHUP: TLS certificate not reloaded, the old one stays: {e}"
                    ),
                },
                None => tracing::info!("SIGHUP: no TLS certificate to reload"),
            }
        };
        tracing::info!(signal, "stopping: finishing in-flight requests");
        if let Some(http_stopping) = http_stopping {
            http_stopping();
        }
        trigger();
    });
    broker.join().context("broker stopped with an error")?;
    drop(metrics_http);
    drop(http);
    drop(waiter);
    tracing::info!("stopped");
    Ok(())
}

/// The HTTP API's per-topic traffic: the metrics' counters, summed over the shards.
fn traffic_source(scraper: eventflow::server::Scraper) -> eventflow::http_api::TrafficSource {
    std::sync::Arc::new(move || {
        let scraper = scraper.clone();
        Box::pin(async move {
            let shards = scraper
                .snapshots(std::time::Duration::from_secs(5))
                .await
                .map_err(|e| e.to_string())?;
            let mut topics: std::collections::BTreeMap<String, eventflow::http_api::TopicTraffic> =
                std::collections::BTreeMap::new();
            // The rows without a partition are the topic's totals (partition rows, when
            // labelled, are parts of them).
            let totals = shards.iter().flat_map(|s| &s.traffic.topics);
            for t in totals.filter(|t| t.partition.is_none()) {
                let sum = topics.entry(t.topic.clone()).or_default();
                sum.topic.clone_from(&t.topic);
                sum.produced_records += t.produced_records;
                sum.produced_bytes += t.produced_bytes;
                sum.fetched_bytes += t.fetched_bytes;
            }
            Ok(topics.into_values().collect())
        })
    })
}
