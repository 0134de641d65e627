//! Starting the peers `compare` measures Eventflow against, as it starts `eventflowd`: a
//! `redis-server`, a `nats-server -js` or a one-node KRaft Kafka from `KAFKA_HOME`
//! ([`kafka`]) on a free loopback port with a new directory under the scratch directory,
//! stopped with SIGTERM (SIGKILL if it does not exit) and its directory removed on drop.
//!
//! Durability follows the eventflowd side's `--fsync` where the peer allows it:
//! - Redis (7.0): `appendonly yes` always, with `appendfsync always` for `--fsync always`
//!   (redis.conf: the AOF is written and fsynced before the replies leave), `everysec` for
//!   `--fsync interval…` and `no` for `--fsync never` (no fsync; the OS writes back).
//!   RDB snapshots are off (`save ""`) and so is the AOF rewrite
//!   (`auto-aof-rewrite-percentage 0`): a snapshot or rewrite forks and rewrites the whole
//!   dataset during a run, and no log broker here does anything like it.
//! - NATS (Debian's 2.9): the JetStream file store writes each message before the PubAck
//!   and fsyncs its blocks on a timer (`defaultSyncInterval`, 2 minutes, in
//!   server/filestore.go). The setting that changes it (`jetstream { sync_interval }`,
//!   including `always`) arrived in 2.10: 2.9.10 rejects it as an unknown field. So a
//!   NATS 2.9 side never fsyncs before the ack, and the report says so.
//! - Kafka: `log.flush.interval.messages=1` for `--fsync always` (every append fsynced
//!   before the produce is answered); otherwise Kafka's default, no forced flush. The
//!   [`kafka`] module has each property and its source.

pub mod kafka;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::target::{Target, TargetUrl};

/// How long a server may take to answer after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The same for Kafka.
const KAFKA_READY_TIMEOUT: Duration = Duration::from_secs(90);

/// A peer broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// Redis Streams (`redis-server`).
    Redis,
    /// NATS JetStream (`nats-server -js`).
    Nats,
    /// Apache Kafka from a distribution (`KAFKA_HOME`), one KRaft node.
    Kafka,
}

impl PeerKind {
    /// `redis`, `nats` or `kafka`, as `compare --targets` names them.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerKind::Redis => "redis",
            PeerKind::Nats => "nats",
            PeerKind::Kafka => "kafka",
        }
    }

    /// The server binary's name (Kafka's start script).
    pub fn binary_name(self) -> &'static str {
        match self {
            PeerKind::Redis => "redis-server",
            PeerKind::Nats => "nats-server",
            PeerKind::Kafka => "kafka-server-start.sh",
        }
    }

    /// How long the server may take to answer after it is started: a JVM that formats
    /// nothing more but still elects itself controller and registers as a broker takes
    /// seconds where the others take milliseconds.
    fn ready_timeout(self) -> Duration {
        match self {
            PeerKind::Redis | PeerKind::Nats => READY_TIMEOUT,
            PeerKind::Kafka => KAFKA_READY_TIMEOUT,
        }
    }
}

/// How often a peer fsyncs, from the eventflowd side's `--fsync` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerFsync {
    /// Before every acknowledgement.
    Always,
    /// About once a second.
    Interval,
    /// Never: the OS writes back.
    Never,
}

impl PeerFsync {
    /// From an eventflowd durability statement or flags (`--fsync always`, `never`,
    /// `interval=5`).
    pub fn from_eventflowd(durability: &str) -> PeerFsync {
        if durability.contains("--fsync never") {
            PeerFsync::Never
        } else if durability.contains("--fsync interval") {
            PeerFsync::Interval
        } else {
            PeerFsync::Always
        }
    }

    /// Parses `always`, `interval` or `never`.
    pub fn parse(s: &str) -> Result<PeerFsync> {
        match s {
            "always" => Ok(PeerFsync::Always),
            "interval" => Ok(PeerFsync::Interval),
            "never" => Ok(PeerFsync::Never),
            other => bail!("peer fsync `{other}`: expected always, interval or never"),
        }
    }
}

/// What a peer started with `fsync` promises, in words, for the report.
pub fn durability(kind: PeerKind, fsync: PeerFsync) -> String {
    match (kind, fsync) {
        (PeerKind::Redis, PeerFsync::Always) => {
            "redis-server appendonly yes, appendfsync always (the AOF is fsynced before the reply)"
        }
        (PeerKind::Redis, PeerFsync::Interval) => {
            "redis-server appendonly yes, appendfsync everysec (an fsync about every second, not before the reply)"
        }
        (PeerKind::Redis, PeerFsync::Never) => {
            "redis-server appendonly yes, appendfsync no (no fsync; the OS writes back)"
        }
        (PeerKind::Nats, _) => {
            "nats-server 2.9 JetStream file store: no fsync before the PubAck (blocks fsynced every 2 min; sync_interval/always needs 2.10)"
        }
        (PeerKind::Kafka, PeerFsync::Always) => {
            "Kafka log.flush.interval.messages=1 (every append fsynced before the produce is answered)"
        }
        (PeerKind::Kafka, PeerFsync::Interval | PeerFsync::Never) => {
            crate::compare::KAFKA_DEFAULT_DURABILITY
        }
    }
    .to_string()
}

/// A peer server the harness started.
pub struct PeerServer {
    child: Option<Child>,
    pub kind: PeerKind,
    /// `HOST:PORT` of its client listener.
    pub addr: String,
    pub dir: PathBuf,
    /// Its durability in words, for the report.
    pub durability: String,
    /// How it was started (configuration and flags), for the report.
    pub flags: String,
}

/// `binary` if it names a path, else the first `binary` on PATH, then in /usr/sbin and
/// /usr/local/sbin (where Debian puts nats-server, off a normal user's PATH).
pub fn find_binary(binary: &Path) -> Option<PathBuf> {
    if binary.components().count() > 1 {
        return binary.is_file().then(|| binary.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(binary))
        .find(|p| p.is_file())
}

impl PeerServer {
    /// Starts `kind`'s server (`binary`, found as [`find_binary`] does; for Kafka, the
    /// distribution's directory, `KAFKA_HOME`) in a new directory under `scratch`, and
    /// waits until it answers the target's first request.
    pub fn start(
        kind: PeerKind,
        binary: &Path,
        scratch: &Path,
        fsync: PeerFsync,
    ) -> Result<PeerServer> {
        let bin = if kind == PeerKind::Kafka {
            if !cfg!(feature = "kafka") {
                bail!(
                    "this eventflow-bench was built without Kafka support, so it cannot talk \
                     to the Kafka it would start: rebuild with `--features kafka`"
                );
            }
            binary.to_path_buf()
        } else {
            find_binary(binary).with_context(|| {
                format!(
                    "{} not found (apt-get install {})",
                    binary.display(),
                    kind.binary_name()
                )
            })?
        };
        let dir_name = match kind {
            PeerKind::Kafka => "kafka",
            PeerKind::Redis | PeerKind::Nats => kind.binary_name(),
        };
        let dir = crate::broker::fresh_dir(scratch, dir_name)?;
        let started = Self::spawn(kind, &bin, dir.clone(), fsync);
        if started.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        started
    }

    fn spawn(kind: PeerKind, bin: &Path, dir: PathBuf, fsync: PeerFsync) -> Result<PeerServer> {
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("server.log"))?;
        let (mut command, durability, flags) = match kind {
            PeerKind::Redis => {
                let appendfsync = match fsync {
                    PeerFsync::Always => "always",
                    PeerFsync::Interval => "everysec",
                    PeerFsync::Never => "no",
                };
                let settings = [
                    "appendonly yes".to_string(),
                    format!("appendfsync {appendfsync}"),
                    "save \"\"".to_string(),
                    "auto-aof-rewrite-percentage 0".to_string(),
                ];
                let config = format!(
                    "bind 127.0.0.1\nport {port}\ndir {}\ndaemonize no\nlogfile \"\"\n{}\n",
                    dir.display(),
                    settings.join("\n")
                );
                let path = dir.join("redis.conf");
                std::fs::write(&path, config)?;
                let mut c = Command::new(bin);
                c.arg(&path);
                (c, durability(kind, fsync), settings.join(", "))
            }
            PeerKind::Nats => {
                let store = dir.join("jetstream");
                let mut c = Command::new(bin);
                c.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                    .arg(&store);
                (c, durability(kind, fsync), "-js -sd SCRATCH".to_string())
            }
            PeerKind::Kafka => {
                let home = kafka::KafkaHome::open(bin)?;
                let cport = loop {
                    let p = free_port()?;
                    if p != port {
                        break p;
                    }
                };
                let prepared = kafka::prepare(&home, &dir, port, cport, fsync)?;
                (prepared.command, durability(kind, fsync), prepared.flags)
            }
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut server = PeerServer {
            child: Some(child),
            kind,
            addr,
            dir,
            durability,
            flags,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// The target that reaches it.
    pub fn url(&self) -> TargetUrl {
        match self.kind {
            PeerKind::Redis => TargetUrl::Redis(self.addr.clone()),
            PeerKind::Nats => TargetUrl::Nats(self.addr.clone()),
            PeerKind::Kafka => TargetUrl::Kafka(self.addr.clone()),
        }
    }

    /// Connects the target's client.
    pub fn connect(&self) -> Result<Box<dyn Target>> {
        self.url().connect()
    }

    /// The process id, for CPU and RSS readings.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let timeout = self.kind.ready_timeout();
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = self.connect();
            if attempt.is_ok() {
                return Ok(());
            }
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} exited with {status} at start; log:\n{}",
                    self.kind.binary_name(),
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} on {} not ready after {timeout:?} ({:#}); log:\n{}",
                    self.kind.binary_name(),
                    self.addr,
                    attempt.err().expect("failed"),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after 30 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        crate::broker::terminate(&mut child);
    }
}

/// A port that was free on loopback a moment ago.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_follows_eventflowd() {
        assert_eq!(
            PeerFsync::from_eventflowd("eventflowd --fsync always"),
            PeerFsync::Always
        );
        assert_eq!(
            PeerFsync::from_eventflowd("eventflowd --fsync never"),
            PeerFsync::Never
        );
        assert_eq!(
            PeerFsync::from_eventflowd("eventflowd --fsync interval=5"),
            PeerFsync::Interval
        );
        assert!(PeerFsync::parse("sometimes").is_err());
        assert!(find_binary(Path::new("/no/such/redis-server")).is_none());
    }
}
