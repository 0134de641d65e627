//! Kafka from a distribution the user has (`KAFKA_HOME`, e.g. from
//! `bench-harness/fetch-kafka.sh`): one KRaft node that is broker and controller at once, on
//! two free loopback ports, with a `server.properties` and its log directory in a new
//! directory under the scratch directory, formatted fresh before every start.
//!
//! Only the distribution's own scripts are run (`bin/kafka-storage.sh`,
//! `bin/kafka-server-start.sh`), so any Kafka release with KRaft's static quorum
//! (`controller.quorum.voters`, 3.3 to 4.x) works the same way. The server script `exec`s the
//! JVM, so the child the harness holds is the broker itself: its CPU and RSS are read, and
//! SIGTERM reaches it (a controlled shutdown). Each script gets `LOG_DIR` in that directory
//! (bin/kafka-run-class.sh writes the server's own logs there, by default under
//! `KAFKA_HOME/logs`), so that nothing is left in the distribution and the logs go with the
//! directory.
//!
//! The properties written, and where each is documented (Apache Kafka 3.9 docs; the same
//! names hold in 4.x):
//! - `process.roles=broker,controller`, `node.id=1`, `controller.quorum.voters=1@HOST:CPORT`:
//!   a combined node that is the whole metadata quorum (kafka.apache.org/39/operations/kraft,
//!   "Process Roles" and "Controllers").
//! - `listeners=PLAINTEXT://HOST:PORT,CONTROLLER://HOST:CPORT`, `advertised.listeners`
//!   (clients are sent back to the same loopback address), `controller.listener.names`,
//!   `listener.security.protocol.map`, `inter.broker.listener.name`
//!   (kafka.apache.org/39/security/listener-configuration; a combined node must list its
//!   controller listener in `listeners`).
//! - `log.dirs` (where partitions and the metadata log live), `offsets.topic.replication.factor`,
//!   `transaction.state.log.replication.factor` and `transaction.state.log.min.isr` at 1 (their
//!   defaults, 3 and 2, cannot be met by one node: consumer groups would fail), and
//!   `group.initial.rebalance.delay.ms=0` (the default 3 s wait for more members would be
//!   counted in a grouped consume run): kafka.apache.org/39/configuration/broker-configs, and
//!   the single-node values are those of the `config/server.properties` Kafka ships.
//! - Durability: `log.flush.interval.messages=1` for `--fsync always` (broker configs: the
//!   number of messages a partition accumulates before it is flushed to disk; at 1 every
//!   append is fsynced before the produce is answered). Otherwise nothing is written:
//!   Kafka's default is no forced flush (`log.flush.interval.messages` and
//!   `log.flush.interval.ms` unset), replication being its durability; the report says so.
//!
//! The storage is formatted as Kafka's quickstart does it (kafka.apache.org/quickstart):
//! `kafka-storage.sh random-uuid` for a cluster id, then
//! `kafka-storage.sh format -t ID -c server.properties`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::PeerFsync;

/// The storage tool, relative to `KAFKA_HOME`.
pub const STORAGE_SCRIPT: &str = "bin/kafka-storage.sh";
/// The server's start script, relative to `KAFKA_HOME`.
pub const START_SCRIPT: &str = "bin/kafka-server-start.sh";
/// How long `random-uuid` or `format` may take (each starts a JVM).
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// Where a fetched distribution comes from, for error messages.
const FETCH_HINT: &str = "bench-harness/fetch-kafka.sh fetches one and prints the KAFKA_HOME";

/// A Kafka distribution: the scripts the launcher runs, and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaHome {
    pub home: PathBuf,
    /// From `libs/kafka_SCALA-VERSION.jar`, e.g. `3.9.1`.
    pub version: String,
}

impl KafkaHome {
    /// Checks that `home` holds a Kafka distribution: both scripts, executable, and the
    /// broker's jar (whose name gives the version). The error names everything missing.
    pub fn open(home: &Path) -> Result<KafkaHome> {
        if !home.is_dir() {
            bail!(
                "KAFKA_HOME {} is not a directory ({FETCH_HINT})",
                home.display()
            );
        }
        let mut missing = Vec::new();
        for script in [STORAGE_SCRIPT, START_SCRIPT] {
            let path = home.join(script);
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() && executable(&m) => {}
                Ok(m) if m.is_file() => missing.push(format!("{script} (not executable)")),
                _ => missing.push(script.to_string()),
            }
        }
        let version = jar_version(&home.join("libs"));
        if version.is_none() {
            missing.push("libs/kafka_<scala>-<version>.jar".to_string());
        }
        if !missing.is_empty() {
            bail!(
                "KAFKA_HOME {} is not a Kafka distribution: no {} ({FETCH_HINT})",
                home.display(),
                missing.join(", no ")
            );
        }
        Ok(KafkaHome {
            home: home.to_path_buf(),
            version: version.expect("checked"),
        })
    }

    /// The broker's version and where it is, for the report.
    pub fn describe(&self) -> String {
        format!("Kafka {} ({})", self.version, self.home.display())
    }
}

fn executable(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o111 != 0
}

/// The version in the name of the broker's jar in `libs`: `kafka_2.13-3.9.1.jar` → `3.9.1`
/// (not the `-test`, `-sources` or `-javadoc` jars).
fn jar_version(libs: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(libs)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.iter().find_map(|name| parse_jar_name(name))
}

fn parse_jar_name(name: &str) -> Option<String> {
    let rest = name.strip_prefix("kafka_")?.strip_suffix(".jar")?;
    let (scala, version) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.split('.').all(|p| p.parse::<u32>().is_ok());
    // `3.9.1` or `4.1.0-rc0`, but not `3.9.1-test` / `-sources` / `-javadoc`.
    let numbers = version.split('-').next()?;
    let suffix_ok = version
        .strip_prefix(numbers)
        .is_some_and(|s| s.is_empty() || s.starts_with("-rc"));
    (digits(scala) && digits(numbers) && suffix_ok).then(|| version.to_string())
}

/// The properties of a one-node KRaft cluster: the broker's client listener on `broker`,
/// the controller's on `controller` (both `HOST:PORT`), data in `log_dir`.
pub fn server_properties(
    broker: &str,
    controller: &str,
    log_dir: &str,
    fsync: PeerFsync,
) -> Vec<(&'static str, String)> {
    let mut p = vec![
        ("process.roles", "broker,controller".to_string()),
        ("node.id", "1".to_string()),
        ("controller.quorum.voters", format!("1@{controller}")),
        (
            "listeners",
            format!("PLAINTEXT://{broker},CONTROLLER://{controller}"),
        ),
        ("advertised.listeners", format!("PLAINTEXT://{broker}")),
        ("controller.listener.names", "CONTROLLER".to_string()),
        (
            "listener.security.protocol.map",
            "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT".to_string(),
        ),
        ("inter.broker.listener.name", "PLAINTEXT".to_string()),
        ("log.dirs", log_dir.to_string()),
        ("offsets.topic.replication.factor", "1".to_string()),
        ("transaction.state.log.replication.factor", "1".to_string()),
        ("transaction.state.log.min.isr", "1".to_string()),
        ("group.initial.rebalance.delay.ms", "0".to_string()),
    ];
    if fsync == PeerFsync::Always {
        p.push(("log.flush.interval.messages", "1".to_string()));
    }
    p
}

/// `key=value` lines, as a properties file.
pub fn properties_text(properties: &[(&str, String)]) -> String {
    properties
        .iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect()
}

/// A formatted node, ready to start: the command that runs it, and what to report.
pub(super) struct Prepared {
    pub command: Command,
    /// The properties with the ports and directory as placeholders, and the version: the
    /// same text for every fresh start, for the report.
    pub flags: String,
}

/// Writes `dir/server.properties` for a node on `port` (clients) and `cport` (controller),
/// formats `dir/kafka-logs` with a new cluster id, and returns the start command.
pub(super) fn prepare(
    home: &KafkaHome,
    dir: &Path,
    port: u16,
    cport: u16,
    fsync: PeerFsync,
) -> Result<Prepared> {
    let log_dir = dir.join("kafka-logs");
    let config = dir.join("server.properties");
    let properties = server_properties(
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.1:{cport}"),
        &log_dir.to_string_lossy(),
        fsync,
    );
    std::fs::write(&config, properties_text(&properties))
        .with_context(|| format!("writing {}", config.display()))?;

    let cluster_id = run_tool(home, dir, &["random-uuid"])?;
    let cluster_id = cluster_id
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .filter(|id| !id.contains(char::is_whitespace))
        .with_context(|| format!("{STORAGE_SCRIPT} random-uuid printed no cluster id"))?
        .to_string();
    let config_arg = config.to_string_lossy();
    run_tool(home, dir, &["format", "-t", &cluster_id, "-c", &config_arg])?;

    let mut command = Command::new(home.home.join(START_SCRIPT));
    command.arg(&config).env("LOG_DIR", dir.join("logs"));
    let shown = server_properties(
        "127.0.0.1:PORT",
        "127.0.0.1:CONTROLLER_PORT",
        "SCRATCH/kafka-logs",
        fsync,
    );
    let shown: Vec<String> = shown.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok(Prepared {
        command,
        flags: format!(
            "{}, KRaft, one combined node formatted fresh: {}",
            home.describe(),
            shown.join(", ")
        ),
    })
}

/// Runs `kafka-storage.sh ARGS` with its output in files under `dir` (a JVM's output can
/// fill a pipe), bounded by [`TOOL_TIMEOUT`]; returns its stdout.
fn run_tool(home: &KafkaHome, dir: &Path, args: &[&str]) -> Result<String> {
    let what = format!("{STORAGE_SCRIPT} {}", args.join(" "));
    let out_path = dir.join(format!("kafka-storage-{}.out", args[0]));
    let err_path = dir.join(format!("kafka-storage-{}.err", args[0]));
    let mut child = Command::new(home.home.join(STORAGE_SCRIPT))
        .args(args)
        .env("LOG_DIR", dir.join("logs"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let status =
        wait_bounded(&mut child, TOOL_TIMEOUT).with_context(|| format!("{what} did not finish"))?;
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    if !status.success() {
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        bail!("{what} failed with {status}:\n{stdout}{stderr}");
    }
    Ok(stdout)
}

/// Waits for `child` up to `timeout`; past it, kills it and fails.
fn wait_bounded(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("killed after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jar_names_give_the_version() {
        assert_eq!(
            parse_jar_name("kafka_2.13-3.9.1.jar").as_deref(),
            Some("3.9.1")
        );
        assert_eq!(
            parse_jar_name("kafka_2.13-4.1.0-rc0.jar").as_deref(),
            Some("4.1.0-rc0")
        );
        assert_eq!(parse_jar_name("kafka_2.13-3.9.1-test.jar"), None);
        assert_eq!(parse_jar_name("kafka_2.13-3.9.1-sources.jar"), None);
        assert_eq!(parse_jar_name("kafka-clients-3.9.1.jar"), None);
        assert_eq!(parse_jar_name("kafka_2.13-3.9.1.jar.asc"), None);
    }

    #[test]
    fn properties_follow_the_fsync() {
        let always = server_properties("h:1", "h:2", "/d", PeerFsync::Always);
        let text = properties_text(&always);
        assert!(text.contains("listeners=PLAINTEXT://h:1,CONTROLLER://h:2\n"));
        assert!(text.contains("controller.quorum.voters=1@h:2\n"));
        assert!(text.contains("advertised.listeners=PLAINTEXT://h:1\n"));
        assert!(text.contains("log.dirs=/d\n"));
        assert!(text.contains("log.flush.interval.messages=1\n"));
        for fsync in [PeerFsync::Interval, PeerFsync::Never] {
            let text = properties_text(&server_properties("h:1", "h:2", "/d", fsync));
            assert!(!text.contains("log.flush"), "{text}");
        }
    }

    #[test]
    fn a_malformed_home_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let err = KafkaHome::open(&dir.path().join("absent")).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");

        let err = KafkaHome::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no bin/kafka-storage.sh"), "{err}");
        assert!(err.contains("no bin/kafka-server-start.sh"), "{err}");
        assert!(err.contains("no libs/kafka_<scala>-<version>.jar"), "{err}");

        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::create_dir_all(dir.path().join("libs")).unwrap();
        std::fs::write(dir.path().join(STORAGE_SCRIPT), "#!/bin/sh\n").unwrap();
        std::fs::write(dir.path().join(START_SCRIPT), "#!/bin/sh\n").unwrap();
        std::fs::write(dir.path().join("libs/kafka_2.13-3.9.1.jar"), "").unwrap();
        let err = KafkaHome::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("bin/kafka-storage.sh (not executable)"),
            "{err}"
        );

        use std::os::unix::fs::PermissionsExt;
        for script in [STORAGE_SCRIPT, START_SCRIPT] {
            let perms = std::fs::Permissions::from_mode(0o755);
            std::fs::set_permissions(dir.path().join(script), perms).unwrap();
        }
        let home = KafkaHome::open(dir.path()).unwrap();
        assert_eq!(home.version, "3.9.1");
    }
}
