//! The shared test harness: a real `eventflowd` process on loopback with an ephemeral port
//! and a temporary data directory, plus helpers to build record batches.

#![allow(dead_code)]

pub(crate) mod http;
pub(crate) mod kafka_wire;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use eventflow::client::Client;
use eventflow::protocol::batch::{self, BatchBuilder};

/// A broker process.
pub(crate) struct Broker {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub direct: Vec<SocketAddr>,
    /// The Kafka listener (`None` with `--no-kafka`).
    pub kafka: Option<SocketAddr>,
    /// The metrics listener (`None` with `--no-metrics`).
    pub metrics: Option<SocketAddr>,
    /// The HTTP API's listener (`None` with `--no-http`).
    pub http: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// The sync journal the broker writes (see [`Broker::start_journaled`]).
    pub journal: Option<PathBuf>,
    args: Vec<String>,
    /// The broker's `RUST_LOG` (see [`Broker::start_logging`]).
    log_filter: String,
    _tmp: Option<tempfile::TempDir>,
}

impl Broker {
    /// Starts a broker on a fresh temporary data directory.
    pub(crate) fn start(args: &[&str]) -> Broker {
        Broker::start_logging(args, DEFAULT_LOG_FILTER)
    }

    /// Starts a broker on a fresh temporary data directory that logs at `filter` (its
    /// `RUST_LOG`, e.g. `eventflow=debug`) instead of `info`, for [`Broker::wait_for_log`].
    /// Restarts keep the filter.
    pub(crate) fn start_logging(args: &[&str], filter: &str) -> Broker {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        Broker::launch(&dir, args, None, filter, Some(tmp))
    }

    /// Starts a broker on `data_dir` (kept after the test).
    pub(crate) fn start_in(data_dir: &Path, args: &[&str]) -> Broker {
        Broker::launch(data_dir, args, None, DEFAULT_LOG_FILTER, None)
    }

    /// Starts a broker on a fresh temporary data directory that records every `.log` sync
    /// in a sync journal (`EVENTFLOW_SYNC_JOURNAL`), for [`simulate_power_loss`]. Restarts
    /// keep appending to the same journal.
    pub(crate) fn start_journaled(args: &[&str]) -> Broker {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let journal = dir.join("sync.journal");
        Broker::launch(&dir, args, Some(journal), DEFAULT_LOG_FILTER, Some(tmp))
    }

    fn launch(
        data_dir: &Path,
        args: &[&str],
        journal: Option<PathBuf>,
        log_filter: &str,
        tmp: Option<tempfile::TempDir>,
    ) -> Broker {
        let args: Vec<String> = args.iter().map(std::string::ToString::to_string).collect();
        let Spawned {
            child,
            addr,
            direct,
            kafka,
            metrics,
            http,
        } = spawn(data_dir, &args, journal.as_deref(), log_filter);
        Broker {
            child: Some(child),
            addr,
            direct,
            kafka,
            metrics,
            http,
            data_dir: data_dir.to_path_buf(),
            journal,
            args,
            log_filter: log_filter.to_string(),
            _tmp: tmp,
        }
    }

    /// The directory the broker keeps its data in (its `--data-dir`).
    pub(crate) fn store_dir(&self) -> PathBuf {
        self.data_dir.join("data")
    }

    /// The files of one partition with extension `ext` (`log`, `index`, …), in name order
    /// (that is, by base offset).
    pub(crate) fn segment_files(&self, topic: &str, partition: u32, ext: &str) -> Vec<PathBuf> {
        let dir = self
            .data_dir
            .join("data")
            .join(topic)
            .join(partition.to_string());
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        files.sort();
        files
    }

    /// A client on the shared port.
    pub(crate) fn client(&self) -> Client {
        let c = Client::connect(self.addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c
    }

    /// A client on shard `i`'s direct port.
    pub(crate) fn direct_client(&self, i: usize) -> Client {
        let c = Client::connect(self.direct[i]).expect("connect direct");
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c
    }

    /// Sends `signal` to the broker process (SIGSTOP freezes it: a broker that answers
    /// nothing).
    pub(crate) fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("running");
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    }

    /// The broker's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The broker's resident memory now, from /proc.
    pub(crate) fn rss_bytes(&self) -> u64 {
        let child = self.child.as_ref().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    /// SIGKILL, no chance to flush anything.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().unwrap();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub(crate) fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                child.kill().ok();
                panic!("broker did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the broker again on the same data directory with the same flags (new ports).
    pub(crate) fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the broker first");
        let spawned = spawn(
            &self.data_dir,
            &self.args,
            self.journal.as_deref(),
            &self.log_filter,
        );
        self.child = Some(spawned.child);
        self.addr = spawned.addr;
        self.direct = spawned.direct;
        self.kafka = spawned.kafka;
        self.metrics = spawned.metrics;
        self.http = spawned.http;
    }

    /// The broker's stderr log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(log_path(&self.data_dir)).unwrap_or_default()
    }

    /// How many times `needle` occurs in the broker's log so far.
    pub(crate) fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Waits until `needle` occurs in the broker's log at least `times` times (take the
    /// count before the action with [`Broker::log_count`] and wait for one more); panics
    /// with the log if that takes more than [`LOG_WAIT`]. Lines below `info` need a broker
    /// from [`Broker::start_logging`].
    pub(crate) fn wait_for_log(&self, needle: &str, times: usize) {
        if !eventually(LOG_WAIT, || self.log_count(needle) >= times) {
            panic!(
                "{needle:?} not {times} times in the broker's log within {LOG_WAIT:?}; log:\n{}",
                self.log()
            );
        }
    }
}

/// The broker's `RUST_LOG` unless a test asks for another.
const DEFAULT_LOG_FILTER: &str = "info";

/// How long [`Broker::wait_for_log`] waits.
pub(crate) const LOG_WAIT: Duration = Duration::from_secs(10);

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("broker.log")
}

/// Starts `eventflowd` with `--listen 127.0.0.1:0` (so the direct ports and the Kafka
/// A started broker process and the addresses its ready line gave.
struct Spawned {
    child: Child,
    addr: SocketAddr,
    direct: Vec<SocketAddr>,
    kafka: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    http: Option<SocketAddr>,
}

/// Starts `eventflowd` on ephemeral ports (the native, metrics and HTTP listeners, and with
/// them the direct and Kafka ones), so that many brokers run side by side; `args` may
/// override.
fn spawn(data_dir: &Path, args: &[String], journal: Option<&Path>, log_filter: &str) -> Spawned {
    std::fs::create_dir_all(data_dir).expect("data dir");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(data_dir))
        .expect("log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_eventflowd"));
    if let Some(journal) = journal {
        command.env(eventflow::storage::SYNC_JOURNAL_ENV, journal);
    }
    command.arg("--listen").arg("127.0.0.1:0");
    if !args
        .iter()
        .any(|a| a.starts_with("--metrics-listen") || a == "--no-metrics")
    {
        command.arg("--metrics-listen").arg("127.0.0.1:0");
    }
    if !args
        .iter()
        .any(|a| a.starts_with("--http-listen") || a == "--no-http")
    {
        command.arg("--http-listen").arg("127.0.0.1:0");
    }
    let mut child = command
        .arg("--data-dir")
        .arg(data_dir.join("data"))
        .args(args)
        .env("RUST_LOG", log_filter)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn eventflowd");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) if line.starts_with("eventflowd ready") => line,
        other => {
            let _ = child.kill();
            let log = std::fs::read_to_string(log_path(data_dir)).unwrap_or_default();
            panic!("broker did not become ready ({other:?}); log:\n{log}");
        }
    };
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or("")
            .to_string()
    };
    let addr = field("listen=").parse().expect("listen addr");
    let direct = field("direct=")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("direct addr"))
        .collect();
    let kafka = Some(field("kafka="))
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("kafka addr"));
    let http = Some(field("http="))
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("http addr"));
    let metrics = Some(field("metrics="))
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("metrics addr"));
    Spawned {
        child,
        addr,
        direct,
        kafka,
        metrics,
        http,
    }
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A batch of `n` records `"<tag>-<i>"` padded to `value_size` bytes, timestamped `ts`.
pub(crate) fn batch(tag: &str, n: usize, value_size: usize, ts: i64) -> BytesMut {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        let mut value = format!("{tag}-{i}").into_bytes();
        value.resize(value_size.max(value.len()), b'.');
        let key = format!("k{i}");
        b.push(ts, Some(key.as_bytes()), Some(&value), &[]);
    }
    b.finish()
}

/// The values of every record in fetched bytes, as strings without padding.
pub(crate) fn values(records: &Bytes) -> Vec<String> {
    let mut out = Vec::new();
    for one in eventflow::client::split_batches(records) {
        for r in batch::records(&one).expect("records") {
            let r = r.expect("record");
            let v = String::from_utf8_lossy(r.value.unwrap_or_default()).into_owned();
            out.push(v.trim_end_matches('.').to_string());
        }
    }
    out
}

/// Reads a partition from `offset` to its end.
pub(crate) fn read_all(
    client: &mut Client,
    topic: &str,
    partition: u32,
    mut offset: i64,
) -> Vec<Bytes> {
    let mut out = Vec::new();
    loop {
        let p = client
            .fetch(topic, partition, offset, 1 << 20, Duration::ZERO, 0)
            .expect("fetch");
        let batches = eventflow::client::split_batches(&p.records);
        if batches.is_empty() {
            return out;
        }
        for b in batches {
            let h = batch::BatchHeader::parse(&b).unwrap();
            offset = h.last_offset() + 1;
            out.push(b);
        }
    }
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub(crate) fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// What [`simulate_power_loss`] did.
#[derive(Debug, Default)]
pub(crate) struct PowerLoss {
    /// `.log` files looked at.
    pub files: usize,
    /// Bytes cut off, over all of them.
    pub bytes_cut: u64,
}

/// After a `kill -9` of a broker started with [`Broker::start_journaled`]: cuts every `.log`
/// file under `data_dir` (the broker's `--data-dir`, see [`Broker::store_dir`]) back to the
/// data length its last journalled sync covered, and a file with no journal line to 0 bytes.
/// Everything written after the last `fdatasync` is gone, as after a power loss. (Index
/// files are left as they are: recovery checks them against the log either way.)
pub(crate) fn simulate_power_loss(data_dir: &Path, journal: &Path) -> PowerLoss {
    let mut synced: std::collections::HashMap<PathBuf, u64> = std::collections::HashMap::new();
    let text = std::fs::read_to_string(journal).unwrap_or_default();
    for line in text.lines() {
        let (path, len) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sync journal line {line:?}"));
        let len: u64 = len.parse().expect("synced length");
        synced.insert(data_dir.join(path), len);
    }
    let mut outcome = PowerLoss::default();
    let mut dirs = vec![data_dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read data dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "log") {
                let len = std::fs::metadata(&path).expect("metadata").len();
                let keep = synced.get(&path).copied().unwrap_or(0).min(len);
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .expect("open log");
                file.set_len(keep).expect("cut log");
                file.sync_all().expect("sync cut log");
                outcome.files += 1;
                outcome.bytes_cut += len - keep;
            }
        }
    }
    outcome
}

/// Runs `command` with `stdin` as its standard input (a program that exits before
/// reading all of it is fine) and returns its output.
#[allow(dead_code)]
pub(crate) fn run_with_stdin(mut command: Command, stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let mut input = child.stdin.take().expect("piped stdin");
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    child.wait_with_output().expect("wait for the program")
}

/// The bootstrap superuser's password of [`start_secured`] brokers.
#[allow(dead_code)]
pub(crate) const ADMIN_PASSWORD: &str = "admin-secret-1";

/// Starts a broker (two shards) with `admin` as its bootstrap superuser (password
/// [`ADMIN_PASSWORD`], from a file), a short failure delay, and `args`. Returns the
/// temporary directory of the password file too: keep it while the broker runs.
#[allow(dead_code)]
pub(crate) fn start_secured(args: &[&str]) -> (Broker, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("admin.password");
    std::fs::write(&password_file, format!("{ADMIN_PASSWORD}\n")).unwrap();
    let mut all = vec![
        "--cores",
        "2",
        "--bootstrap-superuser",
        "admin",
        "--bootstrap-superuser-password-file",
        password_file.to_str().unwrap(),
        "--sasl-failure-delay-ms",
        "100",
    ];
    all.extend_from_slice(args);
    (Broker::start(&all), secrets)
}

/// Whether a Kafka client a test drives (`what`) is installed, given whether its probe
/// ran. Missing, it fails the test when `EVENTFLOW_REQUIRE_KAFKA_CLIENTS=1` (CI installs
/// every client and sets it); otherwise the test is skipped with a line on the terminal
/// (written past the test harness's output capture, so a skip is never silent).
pub(crate) fn kafka_client_available(what: &str, probe_ran: bool, install: &str) -> bool {
    if probe_ran {
        return true;
    }
    if std::env::var("EVENTFLOW_REQUIRE_KAFKA_CLIENTS").as_deref() == Ok("1") {
        panic!("{what} is needed by this test and could not run: {install}");
    }
    let line = format!(
        "skipped: {what} is not installed ({install}; EVENTFLOW_REQUIRE_KAFKA_CLIENTS=1 makes \
         this a failure)\n"
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    false
}

/// Whether python3 can import `module`, from the pip package `package` (see
/// [`kafka_client_available`]).
#[allow(dead_code)] // each test binary uses its own part of this module
pub(crate) fn python_module_available(module: &str, package: &str) -> bool {
    let ran = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|out| out.status.success());
    kafka_client_available(
        &format!("python3 with {package}"),
        ran,
        &format!("python3 -m pip install {package}"),
    )
}

/// Whether python3 with confluent_kafka can run.
#[allow(dead_code)]
pub(crate) fn confluent_kafka_available() -> bool {
    python_module_available("confluent_kafka", "confluent-kafka")
}

/// The folder of the client scripts, `tests/kafka_clients`.
#[allow(dead_code)]
pub(crate) fn client_scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka_clients")
}

/// Runs `tests/kafka_clients/<script>` with `args` under python3. The script prints one
/// JSON line per step (`{"step": NAME, ...}`); `on_step` sees each and returns a line to
/// write to the script's stdin, if the script waits for one. Returns the step names; fails
/// the test, with the script's stderr and the broker's log, if the script fails or takes
/// longer than `timeout`. `data_dir` is the broker's (`Broker::data_dir`), whose log the
/// failure message shows.
#[allow(dead_code)]
pub(crate) fn run_client_script(
    data_dir: &Path,
    script: &str,
    args: &[&str],
    timeout: Duration,
    on_step: impl FnMut(&serde_json::Value) -> Option<String>,
) -> Vec<String> {
    let path = client_scripts_dir().join(script);
    run_client_program(data_dir, "python3", &path, args, timeout, on_step)
}

/// [`run_client_script`] for a script that `program` runs (`node` for the kafkajs ones):
/// `program SCRIPT ARGS...`, with the same step protocol.
#[allow(dead_code)]
pub(crate) fn run_client_program(
    data_dir: &Path,
    program: &str,
    path: &Path,
    args: &[&str],
    timeout: Duration,
    mut on_step: impl FnMut(&serde_json::Value) -> Option<String>,
) -> Vec<String> {
    use std::io::Write;
    let script = path.display();
    let mut child = Command::new(program)
        .arg(path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    // Lines arrive through a channel so that a stuck script cannot hang the test.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut steps = Vec::new();
    let mut stuck = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                eprintln!("{script}: {line}");
                let step: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("{script}: not a JSON line ({e}): {line}"));
                steps.push(step["step"].as_str().unwrap_or_default().to_string());
                if let Some(answer) = on_step(&step) {
                    stdin
                        .write_all(answer.as_bytes())
                        .expect("write to the script");
                    stdin.write_all(b"\n").expect("write to the script");
                    stdin.flush().expect("flush the script's stdin");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                stuck = true;
                let _ = child.kill();
                break;
            }
        }
    }
    drop(stdin);
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for {program}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stuck && out.status.success(),
        "{script} failed (stuck: {stuck}, {:?}) after steps {steps:?}:\n{stderr}\nbroker log:\n{}",
        out.status,
        std::fs::read_to_string(log_path(data_dir)).unwrap_or_default()
    );
    steps
}

/// The standard output of a command that must have succeeded (else the test fails with its
/// exit status and standard error).
pub(crate) fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}, stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Checks that a command failed and said `needle` on its standard error.
pub(crate) fn refused(output: Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "succeeded: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}
