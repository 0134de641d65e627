//! `eventflow`: the command-line client — topics, produce, consume.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use eventflow::auth::acl::{
    self, Acl, AclFilter, Operation, PatternType, Permission, ResourceType, CLUSTER_NAME,
};
use eventflow::auth::quota::{
    self, EntityName, NameMatch, QuotaEntity, QuotaFilter, QuotaKey, QuotaValues,
};
use eventflow::auth::{Mechanism, ScramHash};
use eventflow::client::consumer::{Consumer, ConsumerConfig, ConsumerRecord, StartAt};
use eventflow::client::format::RecordFormat;
use eventflow::client::group::{GroupConfig, OffsetReset};
use eventflow::client::producer::{Producer, ProducerConfig, Record};
use eventflow::client::queue::{AckMode, ShareConsumer, ShareConsumerConfig};
use eventflow::client::{Client, ClientError, ClientTls, Credentials};
use eventflow::protocol::api::{offset_spec, Acks};
use eventflow::protocol::batch;
use eventflow::protocol::error::parse_fenced;
use eventflow::protocol::ErrorCode;

/// The Eventflow command-line client.
#[derive(Parser, Debug)]
#[command(name = "eventflow", version)]
struct Cli {
    /// Broker address.
    #[arg(
        long,
        global = true,
        env = "EVENTFLOW_BOOTSTRAP",
        default_value = "127.0.0.1:9292"
    )]
    bootstrap: String,
    /// How long connecting and each request may take before the command fails with a
    /// timeout error, in ms.
    #[arg(long, global = true, default_value_t = 30_000)]
    request_timeout_ms: u64,
    /// Log in as this user (brokers started with --native-require-auth). The password comes
    /// from EVENTFLOW_SASL_PASSWORD or --sasl-password-file, never from the command line.
    #[arg(long, global = true, env = "EVENTFLOW_SASL_USER")]
    sasl_user: Option<String>,
    /// The SASL mechanism to log in with: SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN.
    #[arg(
        long,
        global = true,
        env = "EVENTFLOW_SASL_MECHANISM",
        default_value = "SCRAM-SHA-512"
    )]
    sasl_mechanism: Mechanism,
    /// A file whose first line is --sasl-user's password.
    #[arg(long, global = true)]
    sasl_password_file: Option<PathBuf>,
    /// Connect in TLS, trusting the CA certificates in this PEM file (the broker's
    /// certificate must name the host of --bootstrap).
    #[arg(long, global = true, env = "EVENTFLOW_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) to present to a broker that asks for one (mutual TLS).
    #[arg(long, global = true, requires_all = ["tls_ca", "tls_key"], env = "EVENTFLOW_TLS_CLIENT_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(
        long,
        global = true,
        requires = "tls_cert",
        env = "EVENTFLOW_TLS_CLIENT_KEY",
        value_name = "FILE"
    )]
    tls_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Produce one record per line of standard input (or of --file).
    Produce(ProduceArgs),
    /// Print records of a topic (alone, or as a member of a consumer group).
    Consume(ConsumeArgs),
    /// List, describe, reset and delete consumer groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Take records from a topic as a work queue (a share group).
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Operator checks.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Add, remove and list the users who may log in (a superuser's commands).
    #[command(subcommand)]
    User(UserCommand),
    /// Add, remove and list ACLs (with eventflowd --authorizer on).
    #[command(subcommand)]
    Acl(AclCommand),
    /// Set, remove and list client quotas (a superuser's commands).
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Run connectors (file source, file sink) from a config file: runs the
    /// `eventflow-connect` binary installed next to this one (docs/CONNECT.md).
    Connect {
        /// The config file, then any further arguments of eventflow-connect.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CONFIG.toml"
        )]
        args: Vec<std::ffi::OsString>,
    },
}

/// The entity a quota command names: a user, a client id, or both; `<default>` names the
/// default user or client id.
#[derive(Args, Debug)]
struct QuotaEntityArgs {
    /// A user name, or `<default>` (every user without a quota of its own).
    #[arg(long)]
    user: Option<String>,
    /// A client id, or `<default>` (every client id without a quota of its own).
    #[arg(long)]
    client_id: Option<String>,
}

/// Limits: bytes per second, or percent of one shard's time.
#[derive(Args, Debug)]
struct QuotaLimitArgs {
    /// Produced record bytes per second.
    #[arg(long)]
    producer_byte_rate: Option<f64>,
    /// Fetched record bytes per second.
    #[arg(long)]
    consumer_byte_rate: Option<f64>,
    /// Percent of one shard's time spent on the client's requests (100: one core).
    #[arg(long)]
    request_percentage: Option<f64>,
}

#[derive(Subcommand, Debug)]
enum QuotaCommand {
    /// Set limits of an entity.
    Set {
        #[command(flatten)]
        entity: QuotaEntityArgs,
        #[command(flatten)]
        limits: QuotaLimitArgs,
    },
    /// Remove limits of an entity (--key, repeatable; none: all of them).
    Remove {
        #[command(flatten)]
        entity: QuotaEntityArgs,
        /// producer_byte_rate, consumer_byte_rate or request_percentage.
        #[arg(long = "key")]
        keys: Vec<String>,
    },
    /// List quotas: all, or those of entities with the given user and/or client id.
    List {
        #[command(flatten)]
        entity: QuotaEntityArgs,
    },
}

/// What an ACL command names; `acl list` and `acl remove` take every field as a filter.
#[derive(Args, Debug)]
struct AclArgs {
    /// The user (`alice`, or `*` for everyone); `User:` is added.
    #[arg(long)]
    principal: Option<String>,
    /// A topic name (`*`: every topic).
    #[arg(long, conflicts_with_all = ["group", "cluster"])]
    topic: Option<String>,
    /// A group name (`*`: every group).
    #[arg(long, conflicts_with = "cluster")]
    group: Option<String>,
    /// The cluster (creating topics, managing users and ACLs).
    #[arg(long)]
    cluster: bool,
    /// The name is a prefix: the ACL matches every name that starts with it.
    #[arg(long)]
    prefixed: bool,
    /// Read, Write, Create, Delete, Alter, Describe, DescribeConfigs, AlterConfigs or All
    /// (repeatable).
    #[arg(long = "operation")]
    operations: Vec<String>,
    /// Deny instead of allow.
    #[arg(long)]
    deny: bool,
    /// The client's IP address (`*`: any, the default).
    #[arg(long)]
    host: Option<String>,
}

#[derive(Subcommand, Debug)]
enum AclCommand {
    /// Add an ACL per --operation.
    Add(AclArgs),
    /// Remove the ACLs that match (every given field).
    Remove(AclArgs),
    /// List the ACLs that match (every given field; none: all).
    List(AclArgs),
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Add a user, or set its password. The password is read from EVENTFLOW_USER_PASSWORD,
    /// --password-file, or the first line of standard input; it is salted here and never
    /// sent.
    Add {
        /// User name.
        name: String,
        /// SCRAM-SHA-256, SCRAM-SHA-512, or both (the default).
        #[arg(long, default_value = "both")]
        mechanism: String,
        /// PBKDF2 iterations (4096..=16384).
        #[arg(long, default_value_t = eventflow::auth::scram::DEFAULT_ITERATIONS)]
        iterations: u32,
        /// A file whose first line is the password.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Remove a user (or only its credential of one mechanism).
    Remove {
        /// User name.
        name: String,
        /// SCRAM-SHA-256 or SCRAM-SHA-512: remove only that credential.
        #[arg(long)]
        mechanism: Option<String>,
    },
    /// Every user with the mechanisms it may log in with.
    List,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// The same check as `topic verify`: every batch of every partition, with the ranges
    /// the broker has fenced as corrupt. Exits non-zero if anything is corrupt.
    Verify {
        /// Topic name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum GroupCommand {
    /// Consumer and share groups, with their member counts.
    List,
    /// Members, assignment, committed offset and lag per partition.
    Describe {
        /// Group name.
        group: String,
    },
    /// Set a group's committed offsets (the group must have no members).
    ResetOffsets {
        /// Group name.
        group: String,
        /// Topic whose offsets to set.
        #[arg(long)]
        topic: String,
        /// `earliest`, `latest`, or an offset.
        #[arg(long)]
        to: String,
        /// Only this partition (default: all).
        #[arg(long)]
        partition: Option<u32>,
    },
    /// Delete a group without members, and its offsets.
    Delete {
        /// Group name.
        group: String,
    },
}

#[derive(Subcommand, Debug)]
enum QueueCommand {
    /// Print records taken from a share group and acknowledge them.
    Consume(QueueConsumeArgs),
    /// A share group's state per partition.
    Describe {
        /// Share group name.
        group: String,
    },
}

#[derive(Args, Debug)]
struct QueueConsumeArgs {
    /// Topic.
    topic: String,
    /// Share group.
    #[arg(long)]
    group: String,
    /// `auto`: a batch is accepted once all of it is printed; `manual`: each record is
    /// accepted once its output is flushed. Either way, records taken but not printed
    /// (--max-messages reached, Ctrl-C) are released for other consumers.
    #[arg(long, default_value = "auto", value_parser = ["auto", "manual"])]
    ack: String,
    /// How long a taken record stays locked to this consumer, in ms.
    #[arg(long, default_value_t = 30_000)]
    lock_ms: u64,
    /// Deliveries before a record goes to the dead-letter topic.
    #[arg(long, default_value_t = 5)]
    max_deliveries: u16,
    /// Dead-letter topic (default: `<group>.dlq`; created if missing).
    #[arg(long)]
    dead_letter_topic: Option<String>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Subcommand, Debug)]
enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// A config override `key=value` (cleanup.policy=delete|compact|compact,delete,
        /// retention.ms, retention.bytes, segment.bytes, segment.ms, delete.retention.ms,
        /// min.compaction.lag.ms, min.cleanable.dirty.ratio); repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
    },
    /// List topics and their partition counts.
    List,
    /// Show partitions (owning shard, earliest and latest offsets, size) and configs.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Set config overrides.
    Alter {
        /// Topic name.
        name: String,
        /// `key=value` (the keys `topic create --config` takes); repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE", required = true)]
        configs: Vec<String>,
    },
    /// Delete a topic and its data.
    Delete {
        /// Topic name.
        name: String,
    },
    /// Read every batch of every partition through ordinary fetches and check each one's
    /// CRC-32C, header and record offsets; print per partition the batches, records and
    /// corrupt batches found. Exits non-zero if anything is corrupt.
    Verify {
        /// Topic name.
        name: String,
    },
}

#[derive(Args, Debug)]
struct ProduceArgs {
    /// Topic.
    topic: String,
    /// Read records from this file instead of standard input.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// Split each line at the first SEP into key and value (no SEP in a line: no key).
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// Send every record to this partition (default: by key with murmur2, sticky without).
    #[arg(long)]
    partition: Option<u32>,
    /// Acknowledgements: 0, 1 or all (-1, Kafka's spelling of all, is taken too).
    #[arg(long, default_value = "all", allow_hyphen_values = true)]
    acks: String,
    /// A header `key=value` added to every record; repeatable.
    #[arg(long = "header", value_name = "KEY=VALUE")]
    headers: Vec<String>,
    /// Batch size in bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    batch_size: usize,
    /// How long a batch waits for more records, in ms.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// How long a record may take to be acknowledged, retries after lost connections and
    /// retriable broker errors included, in ms; what is not acknowledged by then is
    /// counted as failed.
    #[arg(long, default_value_t = 120_000)]
    delivery_timeout_ms: u64,
}

#[derive(Args, Debug)]
struct ConsumeArgs {
    /// Topic.
    topic: String,
    /// Start at the earliest stored record (default: only new records).
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    from_beginning: bool,
    /// Start at an offset: a number, `earliest` or `latest`.
    #[arg(long, conflicts_with = "from_time")]
    offset: Option<String>,
    /// Start at the first record at or after this time (ms since the epoch).
    #[arg(long)]
    from_time: Option<i64>,
    /// Read only this partition (default: all).
    #[arg(long)]
    partition: Option<u32>,
    /// Consume as a member of this consumer group: the broker assigns the partitions and
    /// positions are committed. Without a committed offset a partition starts at the
    /// earliest record with --from-beginning, else at the latest.
    #[arg(long, conflicts_with_all = ["offset", "from_time", "partition"])]
    group: Option<String>,
    /// With --group: a member not heard from for this long is removed, in ms.
    #[arg(long, default_value_t = 10_000, requires = "group")]
    session_timeout_ms: u64,
    /// Do not check each fetched batch's CRC-32C (checked by default: a damaged batch is
    /// an error naming its topic, partition and offset, never printed).
    #[arg(long)]
    no_check_crcs: bool,
    /// On a corrupt batch (found by the CRC check, or fenced by the broker), print a warning
    /// naming its offsets and go on after it, instead of stopping with an error. Its records
    /// are never printed.
    #[arg(long)]
    skip_corrupt: bool,
    #[command(flatten)]
    output: OutputArgs,
}

/// How records are printed, and when to stop.
#[derive(Args, Debug)]
struct OutputArgs {
    /// Exit after this many records.
    #[arg(long)]
    max_messages: Option<u64>,
    /// Exit when no record arrives for this many ms.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Output format: %t topic, %p partition, %o offset, %T timestamp, %k key, %v value,
    /// %h headers (k=v,…), %% a percent sign; \n and \t escapes.
    #[arg(long, default_value = "%v\\n", conflicts_with = "json")]
    format: String,
    /// One JSON object per record (topic, partition, offset, timestamp, key, value,
    /// headers).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("eventflow: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line; a cause already quoted by its parent's message
/// is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

/// The request timeout of this run (`--request-timeout-ms`).
static REQUEST_TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

fn request_timeout() -> Duration {
    REQUEST_TIMEOUT
        .get()
        .copied()
        .unwrap_or(eventflow::client::DEFAULT_REQUEST_TIMEOUT)
}

/// Who this run logs in as (`--sasl-user`), if anyone.
static CREDENTIALS: std::sync::OnceLock<Option<Credentials>> = std::sync::OnceLock::new();

fn credentials() -> Option<Credentials> {
    CREDENTIALS.get().cloned().flatten()
}

/// The run's TLS (`--tls-ca`), if it connects in TLS.
static TLS: std::sync::OnceLock<Option<ClientTls>> = std::sync::OnceLock::new();

fn tls() -> Option<ClientTls> {
    TLS.get().cloned().flatten()
}

fn tls_from(cli: &Cli) -> anyhow::Result<Option<ClientTls>> {
    let Some(ca) = &cli.tls_ca else {
        return Ok(None);
    };
    let client_cert = cli.tls_cert.as_deref().zip(cli.tls_key.as_deref());
    Ok(Some(ClientTls::new(ca, client_cert)?))
}

/// An admin connection with the run's request timeout, logged in as `--sasl-user`, in TLS
/// with `--tls-ca`.
fn connect(bootstrap: &str) -> Result<Client, eventflow::client::ClientError> {
    Client::connect_secure(
        bootstrap,
        request_timeout(),
        credentials().as_ref(),
        tls().as_ref(),
    )
}

/// The connector runner's binary.
const CONNECT_BINARY: &str = "eventflow-connect";

impl Cli {
    /// The TLS files of `--tls-ca`, `--tls-cert` and `--tls-key`, with the variables that
    /// stand for them.
    fn tls_paths(&self) -> Vec<(&'static str, PathBuf)> {
        [
            ("EVENTFLOW_TLS_CA", &self.tls_ca),
            ("EVENTFLOW_TLS_CLIENT_CERT", &self.tls_cert),
            ("EVENTFLOW_TLS_CLIENT_KEY", &self.tls_key),
        ]
        .into_iter()
        .filter_map(|(var, path)| Some((var, path.clone()?)))
        .collect()
    }
}

/// Runs `eventflow-connect` with `args` in place of this process. It is its own binary
/// (its connectors bring dependencies this one should not carry): the copy next to this
/// executable is preferred, so a build's two binaries go together; else the first on PATH.
///
/// The global flags reach it as the variables they stand for (`--bootstrap` as
/// EVENTFLOW_BOOTSTRAP, ...), which the runner uses where its config file is silent.
fn connect_runner(
    bootstrap: &str,
    tls: &[(&'static str, PathBuf)],
    args: &[std::ffi::OsString],
) -> anyhow::Result<ExitCode> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(CONNECT_BINARY)))
        .filter(|path| path.is_file());
    let on_path = || {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join(CONNECT_BINARY))
            .find(|path| path.is_file())
    };
    let Some(binary) = beside.or_else(on_path) else {
        bail!(
            "{CONNECT_BINARY} is not installed (neither next to this executable nor on PATH): \
             build it with `cargo build -p eventflow-connect` (--release for the release build)"
        );
    };
    // In place of this process: signals (Ctrl-C, SIGTERM) reach the runner itself, and
    // its exit status is the command's.
    let mut command = std::process::Command::new(&binary);
    command.args(args).env("EVENTFLOW_BOOTSTRAP", bootstrap);
    if let Some(login) = credentials() {
        command
            .env("EVENTFLOW_SASL_USER", &login.user)
            .env("EVENTFLOW_SASL_MECHANISM", login.mechanism.to_string())
            .env("EVENTFLOW_SASL_PASSWORD", &login.password);
    }
    command.envs(tls.iter().map(|(var, path)| (var, path)));
    let error = std::os::unix::process::CommandExt::exec(&mut command);
    Err(error).with_context(|| format!("cannot run {}", binary.display()))
}

/// The first line of `path`, or of the variable `var`.
fn secret(path: Option<&PathBuf>, var: &str, what: &str) -> anyhow::Result<Option<String>> {
    if let Some(path) = path {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {what} from {}", path.display()))?;
        return Ok(Some(text.lines().next().unwrap_or("").to_string()));
    }
    Ok(std::env::var(var).ok())
}

/// The run's credentials from `--sasl-user`, `--sasl-mechanism` and the password's file or
/// variable.
fn credentials_from(cli: &Cli) -> anyhow::Result<Option<Credentials>> {
    let Some(user) = &cli.sasl_user else {
        return Ok(None);
    };
    let password = secret(
        cli.sasl_password_file.as_ref(),
        "EVENTFLOW_SASL_PASSWORD",
        "the password",
    )?
    .ok_or_else(|| {
        anyhow!("--sasl-user {user} needs a password: set EVENTFLOW_SASL_PASSWORD or --sasl-password-file")
    })?;
    Ok(Some(Credentials {
        mechanism: cli.sasl_mechanism,
        user: user.clone(),
        password,
    }))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if cli.request_timeout_ms == 0 {
        bail!("--request-timeout-ms must be at least 1");
    }
    let _ = REQUEST_TIMEOUT.set(Duration::from_millis(cli.request_timeout_ms));
    let _ = CREDENTIALS.set(credentials_from(&cli)?);
    let _ = TLS.set(tls_from(&cli)?);
    let tls_paths = cli.tls_paths();
    match cli.command {
        Command::Topic(cmd) => topic(&cli.bootstrap, cmd),
        Command::Admin(AdminCommand::Verify { name }) => {
            topic(&cli.bootstrap, TopicCommand::Verify { name })
        }
        Command::Produce(args) => produce(&cli.bootstrap, args),
        Command::Consume(args) => consume(&cli.bootstrap, args).map(|()| ExitCode::SUCCESS),
        Command::Group(cmd) => group(&cli.bootstrap, cmd).map(|()| ExitCode::SUCCESS),
        Command::Queue(QueueCommand::Consume(args)) => {
            queue_consume(&cli.bootstrap, args).map(|()| ExitCode::SUCCESS)
        }
        Command::Queue(QueueCommand::Describe { group }) => {
            queue_describe(&cli.bootstrap, &group).map(|()| ExitCode::SUCCESS)
        }
        Command::User(cmd) => user(&cli.bootstrap, cmd).map(|()| ExitCode::SUCCESS),
        Command::Acl(cmd) => acl(&cli.bootstrap, cmd).map(|()| ExitCode::SUCCESS),
        Command::Quota(cmd) => quota(&cli.bootstrap, cmd).map(|()| ExitCode::SUCCESS),
        Command::Connect { args } => connect_runner(&cli.bootstrap, &tls_paths, &args),
    }
}

impl QuotaEntityArgs {
    fn name(s: &str) -> EntityName {
        if s == quota::DEFAULT_NAME {
            EntityName::Default
        } else {
            EntityName::Named(s.to_string())
        }
    }

    fn entity(&self) -> anyhow::Result<QuotaEntity> {
        let entity = QuotaEntity {
            user: self.user.as_deref().map(Self::name),
            client_id: self.client_id.as_deref().map(Self::name),
        };
        entity
            .validate()
            .map_err(|e| anyhow!("{e}: give --user and/or --client-id"))?;
        Ok(entity)
    }

    fn filter(&self) -> QuotaFilter {
        let component = |s: &Option<String>| {
            s.as_deref().map(|s| match Self::name(s) {
                EntityName::Default => NameMatch::Default,
                EntityName::Named(n) => NameMatch::Exact(n),
            })
        };
        QuotaFilter {
            user: component(&self.user),
            client_id: component(&self.client_id),
            strict: false,
        }
    }
}

fn show_quota(entity: &QuotaEntity, values: &QuotaValues) -> String {
    let values: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{entity}: {}", values.join(" "))
}

fn quota(bootstrap: &str, cmd: QuotaCommand) -> anyhow::Result<()> {
    let mut client = connect(bootstrap).context("cannot reach the broker")?;
    match cmd {
        QuotaCommand::Set { entity, limits } => {
            let entity = entity.entity()?;
            let set: Vec<(QuotaKey, f64)> = [
                (QuotaKey::ProducerByteRate, limits.producer_byte_rate),
                (QuotaKey::ConsumerByteRate, limits.consumer_byte_rate),
                (QuotaKey::RequestPercentage, limits.request_percentage),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
            if set.is_empty() {
                bail!(
                    "name at least one limit: --producer-byte-rate, --consumer-byte-rate \
                     or --request-percentage"
                );
            }
            for (key, value) in &set {
                key.validate(*value).map_err(|e| anyhow!(e))?;
            }
            client.alter_quotas(&entity, &set, &[])?;
            let values: QuotaValues = set.into_iter().collect();
            println!("set: {}", show_quota(&entity, &values));
        }
        QuotaCommand::Remove { entity, keys } => {
            let entity = entity.entity()?;
            let keys: Vec<QuotaKey> = if keys.is_empty() {
                QuotaKey::ALL.to_vec()
            } else {
                keys.iter()
                    .map(|k| k.parse::<QuotaKey>().map_err(|e| anyhow!(e)))
                    .collect::<anyhow::Result<_>>()?
            };
            client.alter_quotas(&entity, &[], &keys)?;
            let names: Vec<&str> = keys.iter().map(|k| k.name()).collect();
            println!("removed: {entity}: {}", names.join(" "));
        }
        QuotaCommand::List { entity } => {
            for (entity, values) in client.describe_quotas(&entity.filter())? {
                println!("{}", show_quota(&entity, &values));
            }
        }
    }
    Ok(())
}

impl AclArgs {
    fn resource(&self) -> Option<(ResourceType, String)> {
        match (&self.topic, &self.group, self.cluster) {
            (Some(t), _, _) => Some((ResourceType::Topic, t.clone())),
            (_, Some(g), _) => Some((ResourceType::Group, g.clone())),
            (_, _, true) => Some((ResourceType::Cluster, CLUSTER_NAME.to_string())),
            _ => None,
        }
    }

    fn principal(&self) -> Option<String> {
        self.principal.as_ref().map(|p| {
            if p.starts_with(acl::USER_PREFIX) {
                p.clone()
            } else {
                format!("{}{p}", acl::USER_PREFIX)
            }
        })
    }

    fn operations(&self) -> anyhow::Result<Vec<Operation>> {
        self.operations
            .iter()
            .map(|o| o.parse::<Operation>().map_err(|e| anyhow!(e)))
            .collect()
    }

    fn filter(&self) -> anyhow::Result<Vec<AclFilter>> {
        let resource = self.resource();
        let base = AclFilter {
            resource_type: resource.as_ref().map(|r| r.0),
            resource_name: resource.map(|r| r.1),
            pattern: self.prefixed.then_some(PatternType::Prefixed),
            principal: self.principal(),
            host: self.host.clone(),
            operation: None,
            permission: self.deny.then_some(Permission::Deny),
        };
        let operations = self.operations()?;
        if operations.is_empty() {
            return Ok(vec![base]);
        }
        Ok(operations
            .into_iter()
            .map(|o| AclFilter {
                operation: Some(o),
                ..base.clone()
            })
            .collect())
    }
}

fn acl(bootstrap: &str, cmd: AclCommand) -> anyhow::Result<()> {
    let mut client = connect(bootstrap).context("cannot reach the broker")?;
    match cmd {
        AclCommand::Add(args) => {
            let (resource_type, resource_name) = args
                .resource()
                .ok_or_else(|| anyhow!("name a resource: --topic, --group or --cluster"))?;
            let principal = args
                .principal()
                .ok_or_else(|| anyhow!("name a --principal (a user, or * for everyone)"))?;
            let operations = args.operations()?;
            if operations.is_empty() {
                bail!("name at least one --operation");
            }
            let acls: Vec<Acl> = operations
                .into_iter()
                .map(|operation| Acl {
                    resource_type,
                    resource_name: resource_name.clone(),
                    pattern: if args.prefixed {
                        PatternType::Prefixed
                    } else {
                        PatternType::Literal
                    },
                    principal: principal.clone(),
                    host: args.host.clone().unwrap_or_else(|| "*".into()),
                    operation,
                    permission: if args.deny {
                        Permission::Deny
                    } else {
                        Permission::Allow
                    },
                })
                .collect();
            client.create_acls(&acls)?;
            for acl in &acls {
                println!("added: {acl}");
            }
        }
        AclCommand::Remove(args) => {
            let mut removed = 0;
            for filter in args.filter()? {
                for acl in client.delete_acls(&filter)? {
                    println!("removed: {acl}");
                    removed += 1;
                }
            }
            if removed == 0 {
                println!("no ACL matched");
            }
        }
        AclCommand::List(args) => {
            for filter in args.filter()? {
                for acl in client.describe_acls(&filter)? {
                    println!("{acl}");
                }
            }
        }
    }
    Ok(())
}

/// The SCRAM hashes a `--mechanism` names (`both`: the two).
fn scram_hashes(mechanism: &str) -> anyhow::Result<Vec<ScramHash>> {
    if mechanism.eq_ignore_ascii_case("both") {
        return Ok(ScramHash::ALL.to_vec());
    }
    let parsed: Mechanism = mechanism.parse().map_err(|e: String| anyhow!(e))?;
    parsed
        .scram()
        .map(|h| vec![h])
        .ok_or_else(|| anyhow!("users have SCRAM credentials: SCRAM-SHA-256 or SCRAM-SHA-512"))
}

fn user(bootstrap: &str, cmd: UserCommand) -> anyhow::Result<()> {
    let mut client = connect(bootstrap).context("cannot reach the broker")?;
    match cmd {
        UserCommand::Add {
            name,
            mechanism,
            iterations,
            password_file,
        } => {
            let hashes = scram_hashes(&mechanism)?;
            let password = match secret(
                password_file.as_ref(),
                "EVENTFLOW_USER_PASSWORD",
                "the password",
            )? {
                Some(p) => p,
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("cannot read the password from standard input")?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            if password.len() < 8 {
                bail!("a password must have at least 8 characters");
            }
            for hash in hashes {
                client.upsert_user(&name, hash, &password, iterations)?;
                println!("user {name}: {} set", hash.name());
            }
        }
        UserCommand::Remove { name, mechanism } => {
            let hash = match mechanism {
                Some(m) => Some(
                    scram_hashes(&m)?
                        .into_iter()
                        .next()
                        .ok_or_else(|| anyhow!("one mechanism"))?,
                ),
                None => None,
            };
            client.delete_user(&name, hash)?;
            println!("user {name}: removed");
        }
        UserCommand::List => {
            println!("{:<32} MECHANISMS", "USER");
            for user in client.list_users()? {
                let mechanisms: Vec<String> = user
                    .credentials
                    .iter()
                    .map(|c| format!("{} ({} iterations)", c.mechanism, c.iterations))
                    .collect();
                println!("{:<32} {}", user.name, mechanisms.join(", "));
            }
        }
    }
    Ok(())
}

fn key_value(s: &str) -> anyhow::Result<(String, String)> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| anyhow!("`{s}` is not KEY=VALUE"))
}

fn topic(bootstrap: &str, cmd: TopicCommand) -> anyhow::Result<ExitCode> {
    let mut client = connect(bootstrap).context("cannot reach the broker")?;
    let pairs = |configs: &[String]| {
        configs
            .iter()
            .map(|c| key_value(c))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    match cmd {
        TopicCommand::Create {
            name,
            partitions,
            configs,
        } => {
            let configs = pairs(&configs)?;
            let refs: Vec<(&str, &str)> = configs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            client.create_topic(&name, partitions, &refs)?;
            println!(
                "created topic {name} with {}",
                counted(u64::from(partitions), "partition")
            );
        }
        TopicCommand::List => {
            for t in client.list_topics()? {
                println!("{}\t{}", t.name, t.partitions);
            }
        }
        TopicCommand::Describe { name } => {
            let d = client.describe_topic(&name)?;
            println!("topic {}  partitions {}", d.name, d.partitions.len());
            println!("partition\tshard\tearliest\tlatest\tbytes");
            for p in &d.partitions {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    p.partition, p.shard, p.log_start_offset, p.high_watermark, p.size_bytes
                );
            }
            println!("configs");
            for (k, v) in &d.configs {
                println!("  {k}={v}");
            }
        }
        TopicCommand::Alter { name, configs } => {
            let configs = pairs(&configs)?;
            let refs: Vec<(&str, &str)> = configs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            client.alter_topic_config(&name, &refs)?;
            println!("altered topic {name}");
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name)?;
            println!("deleted topic {name}");
        }
        TopicCommand::Verify { name } => return verify(&mut client, &name),
    }
    Ok(ExitCode::SUCCESS)
}

fn produce(bootstrap: &str, args: ProduceArgs) -> anyhow::Result<ExitCode> {
    let acks = match args.acks.as_str() {
        "0" => Acks::None,
        "1" => Acks::Leader,
        "all" | "-1" => Acks::All,
        other => bail!("--acks must be 0, 1 or all (or -1), not `{other}`"),
    };
    let headers = args
        .headers
        .iter()
        .map(|h| key_value(h))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let header_refs: Vec<(&[u8], Option<&[u8]>)> = headers
        .iter()
        .map(|(k, v)| (k.as_bytes(), Some(v.as_bytes())))
        .collect();
    let producer = Producer::new(ProducerConfig {
        bootstrap: bootstrap.to_string(),
        acks,
        batch_bytes: args.batch_size,
        linger: Duration::from_millis(args.linger_ms),
        request_timeout: request_timeout(),
        delivery_timeout: Duration::from_millis(args.delivery_timeout_ms),
        credentials: credentials(),
        tls: tls(),
        ..ProducerConfig::default()
    })
    .context("cannot reach the broker")?;
    let input: Box<dyn BufRead> = match &args.file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut deliveries = Vec::new();
    for line in input.lines() {
        let line = line.context("reading input")?;
        let (key, value) = match &args.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (Some(k.to_string()), v.to_string()),
                None => (None, line),
            },
            None => (None, line),
        };
        let sent = producer.send(Record {
            topic: &args.topic,
            partition: args.partition,
            key: key.as_deref().map(str::as_bytes),
            value: Some(value.as_bytes()),
            headers: &header_refs,
            timestamp: None,
        })?;
        deliveries.push(sent);
    }
    producer.flush()?;
    let total = deliveries.len();
    let mut failed = 0;
    let mut first_error = None;
    for d in deliveries {
        if let Err(e) = d.wait() {
            failed += 1;
            first_error.get_or_insert(e.to_string());
        }
    }
    eprintln!(
        "produced {} of {total} records to {}",
        total - failed,
        args.topic
    );
    if let Some(e) = first_error {
        eprintln!(
            "eventflow: error: {} failed; first: {e}",
            counted(failed as u64, "record")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// `topic verify`: every partition from its first stored offset to its high watermark.
fn verify(client: &mut Client, topic: &str) -> anyhow::Result<ExitCode> {
    let d = client.describe_topic(topic)?;
    let mut damaged = 0u64;
    for p in &d.partitions {
        let found = verify_partition(
            client,
            topic,
            p.partition,
            p.log_start_offset,
            p.high_watermark,
        )?;
        let corrupt = found.corrupt.len() as u64;
        println!(
            "partition {}: {}, {}, {} (offsets {}..{})",
            p.partition,
            counted_as(found.batches, "batch", "batches"),
            counted(found.records, "record"),
            counted_as(corrupt, "corrupt batch", "corrupt batches"),
            p.log_start_offset,
            p.high_watermark,
        );
        for (offset, reason) in &found.corrupt {
            println!("  corrupt batch at offset {offset}: {reason}");
        }
        if let Some(why) = &found.stopped {
            println!("  stopped: {why}");
        }
        damaged += corrupt + u64::from(found.stopped.is_some());
    }
    if damaged > 0 {
        eprintln!("eventflow: topic {topic} has corrupt data");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// What `topic verify` found in one partition.
#[derive(Default)]
struct Verified {
    batches: u64,
    records: u64,
    /// Base offset (or fetch offset, when the header is unreadable) and reason.
    corrupt: Vec<(i64, String)>,
    /// Why the walk could not reach the high watermark, if it could not.
    stopped: Option<String>,
}

/// Fetches `start..end` of one partition batch by batch and checks each batch as the
/// consumer does: CRC-32C and header ([`batch::validate`]), then every record's framing and
/// offset (uncompressed batches; a compressed one's records are not decoded here). A batch
/// that fails is counted and stepped over by its header's offsets; one whose header cannot
/// be read stops the walk.
fn verify_partition(
    client: &mut Client,
    topic: &str,
    partition: u32,
    start: i64,
    end: i64,
) -> anyhow::Result<Verified> {
    let mut found = Verified::default();
    let mut offset = start;
    while offset < end {
        let fetched = match client.fetch(topic, partition, offset, 1 << 20, Duration::ZERO, 0) {
            Ok(fetched) => fetched,
            Err(ClientError::Broker(e)) if e.code == ErrorCode::CorruptBatch => {
                // Offsets the broker fenced: reported, and stepped over by their range.
                let Some((_, last)) = parse_fenced(&e.message).filter(|(_, l)| *l >= offset) else {
                    found.stopped = Some(format!("the broker cannot read offset {offset}: {e}"));
                    return Ok(found);
                };
                found
                    .corrupt
                    .push((offset, format!("fenced by the broker: {}", e.message)));
                offset = last + 1;
                continue;
            }
            Err(e @ ClientError::Broker(_)) => {
                found.stopped = Some(format!("the broker cannot read offset {offset}: {e}"));
                return Ok(found);
            }
            Err(e) => return Err(e.into()),
        };
        let records = fetched.records;
        if records.is_empty() {
            break;
        }
        let before = offset;
        for (i, item) in batch::batches(&records).enumerate() {
            let (at, header) = match item {
                Ok(found) => found,
                Err(batch::BatchError::Truncated { .. }) if i > 0 => break,
                Err(e) => {
                    found.corrupt.push((offset, e.to_string()));
                    found.stopped = Some(format!("no readable batch header at offset {offset}"));
                    return Ok(found);
                }
            };
            if header.last_offset() < offset {
                continue;
            }
            found.batches += 1;
            let bytes = &records[at..at + header.total_len()];
            match check_batch(bytes) {
                Ok(()) => found.records += u64::from(header.records_count.max(0) as u32),
                Err(e) => found.corrupt.push((header.base_offset, e.to_string())),
            }
            // A damaged header may name impossible offsets: always move forward.
            let next = header.last_offset().saturating_add(1);
            offset = if next > offset && header.base_offset <= offset {
                next
            } else {
                offset + 1
            };
        }
        if offset == before {
            found.stopped = Some(format!("no progress past offset {offset}"));
            return Ok(found);
        }
    }
    Ok(found)
}

/// The consumer's checks of one whole batch.
fn check_batch(bytes: &[u8]) -> Result<(), batch::BatchError> {
    let header = batch::validate(bytes, usize::MAX)?;
    if header.attributes & 7 != 0 {
        return Ok(());
    }
    batch::records(bytes)?.try_for_each(|r| r.map(drop))
}

fn consume(bootstrap: &str, args: ConsumeArgs) -> anyhow::Result<()> {
    // Refuse a bad --format before anything is read or joined.
    parse_format(&args.output.format)?;
    let start = if args.from_beginning {
        StartAt::Earliest
    } else if let Some(ts) = args.from_time {
        StartAt::Timestamp(ts)
    } else {
        match args.offset.as_deref() {
            None | Some("latest") => StartAt::Latest,
            Some("earliest") => StartAt::Earliest,
            Some(n) => StartAt::Offset(
                n.parse()
                    .map_err(|_| anyhow!("--offset must be a number, earliest or latest"))?,
            ),
        }
    };
    // --timeout-ms bounds the wait for a broker that does not answer too.
    let timeout = match args.output.timeout_ms {
        Some(ms) => request_timeout().min(Duration::from_millis(ms.max(1))),
        None => request_timeout(),
    };
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: bootstrap.to_string(),
        request_timeout: timeout,
        check_crcs: !args.no_check_crcs,
        credentials: credentials(),
        tls: tls(),
        ..ConsumerConfig::default()
    })
    .context("cannot reach the broker")?;
    match &args.group {
        Some(group) => {
            let config = GroupConfig {
                session_timeout: Duration::from_millis(args.session_timeout_ms),
                heartbeat_interval: Duration::from_millis(args.session_timeout_ms / 5)
                    .max(Duration::from_millis(100)),
                reset: if args.from_beginning {
                    OffsetReset::Earliest
                } else {
                    OffsetReset::Latest
                },
                client_id: "eventflow-cli".into(),
                ..GroupConfig::default()
            };
            consumer.subscribe(group, &[&args.topic], config)?;
        }
        None => {
            let partitions: Vec<u32> = match args.partition {
                Some(p) => vec![p],
                None => {
                    let mut client = Client::connect_secure(
                        bootstrap,
                        timeout,
                        credentials().as_ref(),
                        tls().as_ref(),
                    )
                    .context("cannot reach the broker")?;
                    let d = client.describe_topic(&args.topic)?;
                    d.partitions.iter().map(|p| p.partition).collect()
                }
            };
            consumer.assign(&args.topic, &partitions, start)?;
        }
    }
    let mut printer = Printer::new(&args.output)?;
    while !printer.done() {
        let records = match consumer.poll(Duration::from_millis(200)) {
            Ok(records) => records,
            Err(ClientError::CorruptBatch {
                topic,
                partition,
                offset,
                next_offset,
                reason,
            }) if args.skip_corrupt => {
                eprintln!(
                    "eventflow: skipping offsets {offset}..{next_offset} of {topic}/{partition} \
                     (a corrupt batch, not printed): {reason}"
                );
                consumer.seek(&topic, partition, next_offset)?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let printed = printer.print(records.iter())?;
        if args.group.is_some() {
            // Stopped inside a batch: each partition's position (and so its commit) goes
            // back to its first record not printed.
            for r in &records[printed..] {
                if consumer.position(&r.topic, r.partition) > Some(r.offset) {
                    consumer.seek(&r.topic, r.partition, r.offset)?;
                }
            }
        }
    }
    if args.group.is_some() {
        consumer.close()?;
    }
    eprintln!("consumed {}", counted(printer.count, "record"));
    Ok(())
}

/// Prints records until --max-messages, --timeout-ms or Ctrl-C.
struct Printer {
    template: RecordFormat,
    json: bool,
    out: std::io::BufWriter<std::io::StdoutLock<'static>>,
    count: u64,
    max: Option<u64>,
    idle_limit: Option<Duration>,
    last_record: Instant,
}

impl Printer {
    fn new(args: &OutputArgs) -> anyhow::Result<Printer> {
        let template = parse_format(&args.format)?;
        // Ctrl-C stops the loop; the count is printed as the consumer leaves.
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                libc::SIGINT,
                on_interrupt as *const () as libc::sighandler_t,
            )
        };
        Ok(Printer {
            template,
            json: args.json,
            out: std::io::BufWriter::new(std::io::stdout().lock()),
            count: 0,
            max: args.max_messages,
            idle_limit: args.timeout_ms.map(Duration::from_millis),
            last_record: Instant::now(),
        })
    }

    /// Whether to stop: interrupted, enough records, or idle too long.
    fn done(&self) -> bool {
        INTERRUPTED.load(Ordering::SeqCst)
            || self.max.is_some_and(|max| self.count >= max)
            || self
                .idle_limit
                .is_some_and(|limit| self.last_record.elapsed() >= limit)
    }

    /// Prints records until done; returns how many it printed (the output is flushed).
    fn print<'a>(
        &mut self,
        records: impl Iterator<Item = &'a ConsumerRecord>,
    ) -> anyhow::Result<usize> {
        let mut printed = 0;
        for r in records {
            if INTERRUPTED.load(Ordering::SeqCst) || self.max.is_some_and(|max| self.count >= max) {
                break;
            }
            if self.json {
                writeln!(self.out, "{}", to_json(r))?;
            } else {
                self.template.write(&mut self.out, r)?;
            }
            self.count += 1;
            printed += 1;
            self.last_record = Instant::now();
        }
        self.out.flush()?;
        Ok(printed)
    }
}

fn group(bootstrap: &str, cmd: GroupCommand) -> anyhow::Result<()> {
    let mut client = connect(bootstrap).context("cannot reach the broker")?;
    match cmd {
        GroupCommand::List => {
            for g in client.list_groups()? {
                println!("{}\t{}\t{} members", g.group, g.kind, g.members);
            }
        }
        GroupCommand::Describe { group } => {
            let d = client.describe_group(&group)?;
            println!(
                "group {}  state {}  generation {}  strategy {}  members {}",
                d.group,
                d.state,
                d.generation,
                if d.strategy.is_empty() {
                    "-"
                } else {
                    &d.strategy
                },
                d.members.len()
            );
            for m in &d.members {
                let parts: Vec<String> = m
                    .assignment
                    .iter()
                    .map(|a| format!("{}{:?}", a.topic, a.partitions))
                    .collect();
                println!(
                    "  member {} ({})  {}",
                    m.member_id,
                    m.client_id,
                    parts.join(" ")
                );
            }
            println!("topic\tpartition\tcommitted\tlog end\tlag\tmember");
            // Every partition of the subscribed topics, committed or not.
            let mut rows: Vec<(String, u32, i64)> = Vec::new();
            let mut topics: Vec<String> = d.offsets.iter().map(|t| t.topic.clone()).collect();
            topics.extend(d.members.iter().flat_map(|m| m.topics.iter().cloned()));
            topics.sort();
            topics.dedup();
            for topic in &topics {
                let committed = |p: u32| {
                    d.offsets
                        .iter()
                        .filter(|t| &t.topic == topic)
                        .flat_map(|t| &t.partitions)
                        .find(|o| o.partition == p)
                        .map_or(-1, |o| o.offset)
                };
                match client.describe_topic(topic) {
                    Ok(t) => rows.extend(
                        t.partitions
                            .iter()
                            .map(|p| (topic.clone(), p.partition, committed(p.partition))),
                    ),
                    Err(_) => rows.extend(
                        d.offsets
                            .iter()
                            .filter(|t| &t.topic == topic)
                            .flat_map(|t| &t.partitions)
                            .map(|o| (topic.clone(), o.partition, o.offset)),
                    ),
                }
            }
            for (topic, partition, committed) in rows {
                let end = client
                    .list_offset(&topic, partition, offset_spec::LATEST)
                    .ok();
                let owner = d
                    .members
                    .iter()
                    .find(|m| {
                        m.assignment
                            .iter()
                            .any(|a| a.topic == topic && a.partitions.contains(&partition))
                    })
                    .map_or("-", |m| m.member_id.as_str());
                let show =
                    |v: Option<i64>| v.filter(|v| *v >= 0).map_or("-".into(), |v| v.to_string());
                let lag = match (end, committed) {
                    (Some(e), c) if c >= 0 => Some(e - c),
                    _ => None,
                };
                println!(
                    "{topic}\t{partition}\t{}\t{}\t{}\t{owner}",
                    show(Some(committed)),
                    show(end),
                    show(lag)
                );
            }
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            to,
            partition,
        } => {
            let partitions: Vec<u32> = match partition {
                Some(p) => vec![p],
                None => client
                    .describe_topic(&topic)?
                    .partitions
                    .iter()
                    .map(|p| p.partition)
                    .collect(),
            };
            let mut offsets = Vec::new();
            for p in partitions {
                let offset = match to.as_str() {
                    "earliest" => client.list_offset(&topic, p, offset_spec::EARLIEST)?,
                    "latest" => client.list_offset(&topic, p, offset_spec::LATEST)?,
                    n => n.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                        anyhow!("--to must be earliest, latest or an offset, not `{n}`")
                    })?,
                };
                offsets.push((topic.as_str(), p, offset));
            }
            client.commit_offsets(&group, None, &offsets)?;
            for (t, p, o) in &offsets {
                println!("{group}\t{t}\t{p}\t{o}");
            }
        }
        GroupCommand::Delete { group } => {
            client.delete_group(&group)?;
            println!("deleted group {group}");
        }
    }
    Ok(())
}

fn queue_consume(bootstrap: &str, args: QueueConsumeArgs) -> anyhow::Result<()> {
    // Refuse a bad --format before anything is read or joined.
    parse_format(&args.output.format)?;
    let config = ShareConsumerConfig {
        bootstrap: bootstrap.to_string(),
        lock: Duration::from_millis(args.lock_ms),
        max_deliveries: args.max_deliveries,
        dead_letter_topic: args
            .dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", args.group)),
        ack_mode: AckMode::Manual,
        request_timeout: request_timeout(),
        credentials: credentials(),
        tls: tls(),
        ..ShareConsumerConfig::new(&args.group)
    };
    let mut consumer =
        ShareConsumer::new(config, &[&args.topic]).context("cannot reach the broker")?;
    let per_record = args.ack == "manual";
    let mut printer = Printer::new(&args.output)?;
    while !printer.done() {
        let taken = consumer.poll(Duration::from_millis(200))?;
        let mut printed = 0;
        for r in &taken {
            if printer.print(std::iter::once(&r.record))? == 0 {
                break;
            }
            printed += 1;
            if per_record {
                consumer.ack(r);
                consumer.commit()?;
            }
        }
        for (i, r) in taken.iter().enumerate() {
            if i < printed {
                if !per_record {
                    consumer.ack(r);
                }
            } else {
                consumer.release(r);
            }
        }
        consumer.commit()?;
    }
    eprintln!("consumed {}", counted(printer.count, "record"));
    Ok(())
}

fn queue_describe(bootstrap: &str, group: &str) -> anyhow::Result<()> {
    let mut client = connect(bootstrap).context("cannot reach the broker")?;
    let d = client.describe_queue(group)?;
    println!("share group {}  consumers {}", d.group, d.members.len());
    for m in &d.members {
        println!("  consumer {m}");
    }
    println!(
        "topic\tpartition\tstart\tnext\tlog end\tbacklog\tacquired\tavailable again\tdead-lettered"
    );
    for p in &d.partitions {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            p.topic,
            p.partition,
            p.start,
            p.next_offset,
            p.log_end,
            (p.log_end - p.start).max(0),
            p.acquired,
            p.available_again,
            p.dead_lettered
        );
    }
    Ok(())
}

/// The `--format` template, or an error that names the flag.
fn parse_format(format: &str) -> anyhow::Result<RecordFormat> {
    RecordFormat::parse(format).map_err(|e| anyhow!("--format: {e}"))
}

/// `1 record`, `2 records`.
fn counted(n: u64, noun: &str) -> String {
    counted_as(n, noun, &format!("{noun}s"))
}

/// `counted` for a noun whose plural is not just an `s` more.
fn counted_as(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

fn to_json(r: &ConsumerRecord) -> serde_json::Value {
    let text = |b: &Option<bytes::Bytes>| match b {
        Some(b) => serde_json::Value::String(String::from_utf8_lossy(b).into_owned()),
        None => serde_json::Value::Null,
    };
    let headers: serde_json::Map<String, serde_json::Value> = r
        .headers
        .iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), text(v)))
        .collect();
    serde_json::json!({
        "topic": &*r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": r.timestamp,
        "key": text(&r.key),
        "value": text(&r.value),
        "headers": headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ConsumerRecord {
        ConsumerRecord {
            topic: "t".into(),
            partition: 2,
            offset: 41,
            timestamp: 1_700_000_000_000,
            key: Some(bytes::Bytes::from_static(b"k1")),
            value: Some(bytes::Bytes::from_static(b"hello")),
            headers: vec![(
                bytes::Bytes::from_static(b"h"),
                Some(bytes::Bytes::from_static(b"x")),
            )],
        }
    }

    #[test]
    fn json_has_every_field() {
        let j = to_json(&record()).to_string();
        assert_eq!(
            j,
            r#"{"headers":{"h":"x"},"key":"k1","offset":41,"partition":2,"timestamp":1700000000000,"topic":"t","value":"hello"}"#
        );
    }
}
