//! The connect tests' harness: a real `eventflowd` process on loopback with a temporary
//! data directory, the runner as a process, and reading a topic back with the client
//! library.
//!
//! `eventflowd` and `eventflow` are the workspace's own builds, found in the directory
//! above this test binary's `deps/`, where cargo puts the workspace's binaries:
//! `cargo test --workspace` builds them before it runs any test, `cargo test -p
//! eventflow-connect` alone does not (then the test fails saying how to build them).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use eventflow::client::consumer::{Consumer, ConsumerConfig, ConsumerRecord, StartAt};
use eventflow::client::Client;
use eventflow::protocol::api::offset_spec;

/// A binary of the workspace (`eventflowd`, `eventflow`) from the shared target directory.
pub(crate) fn workspace_binary(name: &str) -> PathBuf {
    let binary = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join(name);
    assert!(
        binary.exists(),
        "{} not built: run `cargo build --bins` (`cargo test --workspace` builds it too)",
        binary.display()
    );
    binary
}

/// A broker process; killed when dropped.
pub(crate) struct Broker {
    child: Child,
    pub(crate) addr: String,
    /// Its Kafka listener (an ephemeral port on the same address).
    #[allow(dead_code)] // Read by the mirror's tests only.
    pub(crate) kafka_addr: String,
    /// The data directory, removed with the broker.
    _dir: tempfile::TempDir,
}

impl Broker {
    /// `eventflowd --fsync always` on ephemeral loopback ports, groups that complete their
    /// first join at once.
    pub(crate) fn start() -> Broker {
        Broker::start_with(&[])
    }

    /// [`Broker::start`] with more flags.
    pub(crate) fn start_with(flags: &[&str]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("broker.log")).unwrap();
        let mut child = Command::new(workspace_binary("eventflowd"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--no-metrics",
                "--no-http",
                "--cores",
                "2",
            ])
            .args([
                "--no-pin",
                "--fsync",
                "always",
                "--group-initial-rebalance-delay-ms",
                "0",
            ])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn eventflowd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("eventflowd ready"),
            "broker not ready: {line:?}"
        );
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap()
                .to_string()
        };
        Broker {
            child,
            addr: field("listen="),
            kafka_addr: field("kafka="),
            _dir: dir,
        }
    }

    pub(crate) fn client(&self) -> Client {
        Client::connect(self.addr.as_str()).unwrap()
    }

    pub(crate) fn create_topic(&self, topic: &str, partitions: u32) {
        self.client().create_topic(topic, partitions, &[]).unwrap();
    }

    /// Every record of `topic`, partition by partition, from the start to the end now.
    pub(crate) fn read_all(&self, topic: &str) -> Vec<ConsumerRecord> {
        let mut admin = self.client();
        let partitions = admin.describe_topic(topic).unwrap().partitions.len() as u32;
        let mut consumer = Consumer::new(ConsumerConfig {
            bootstrap: self.addr.clone(),
            ..ConsumerConfig::default()
        })
        .unwrap();
        let mut ends = std::collections::BTreeMap::new();
        for p in 0..partitions {
            let end = admin.list_offset(topic, p, offset_spec::LATEST).unwrap();
            if end > 0 {
                consumer.assign(topic, &[p], StartAt::Earliest).unwrap();
                ends.insert(p, end);
            }
        }
        let mut records = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ends.is_empty() {
            assert!(Instant::now() < deadline, "cannot read {topic} to its end");
            for r in consumer.poll(Duration::from_millis(200)).unwrap() {
                if ends.get(&r.partition).is_some_and(|end| r.offset < *end) {
                    records.push(r);
                }
            }
            ends.retain(|p, end| consumer.position(topic, *p).unwrap() < *end);
        }
        records
    }

    /// The values of every record of `topic`, as text.
    pub(crate) fn values(&self, topic: &str) -> Vec<String> {
        self.read_all(topic)
            .iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
            .collect()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `eventflow-connect` process; killed when dropped.
pub(crate) struct Runner {
    child: Option<Child>,
    log: PathBuf,
}

impl Runner {
    /// Starts the runner with `config`, its output appended to `log`.
    pub(crate) fn start(config: &Path, log: &Path) -> Runner {
        Runner::start_command(
            Command::new(env!("CARGO_BIN_EXE_eventflow-connect")).arg(config),
            log,
        )
    }

    /// Starts `command` (the runner, or a command that runs it), its output appended to `log`.
    pub(crate) fn start_command(command: &mut Command, log: &Path) -> Runner {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = command
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn eventflow-connect");
        Runner {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then its exit status.
    pub(crate) fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: a plain kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        wait_with_timeout(&mut child, Duration::from_secs(60))
    }

    /// SIGKILL: a crash.
    pub(crate) fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Waits for the runner to exit on its own.
    pub(crate) fn wait(mut self) -> ExitStatus {
        wait_with_timeout(self.child.as_mut().unwrap(), Duration::from_secs(60))
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `f` holds, for at most `timeout`; false if it never did.
pub(crate) fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    f()
}

/// The lines of a file (none if it does not exist).
pub(crate) fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Appends `lines` to `path` (created if missing), each with its `\n`.
pub(crate) fn append(path: &Path, lines: impl IntoIterator<Item = String>) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut text = String::new();
    for line in lines {
        text.push_str(&line);
        text.push('\n');
    }
    file.write_all(text.as_bytes()).unwrap();
}

/// `line-<i>` for every i in `range`, padded so that each line has the same length.
pub(crate) fn numbered(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("line-{i:06}")).collect()
}
