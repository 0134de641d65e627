//! The shared test harness: a real `eventflowd` process on loopback with an ephemeral port
//! and a temporary data directory, plus helpers to build record batches.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use eventflow::client::Client;
use eventflow::protocol::batch::{self, BatchBuilder};

/// A broker process.
pub struct Broker {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub direct: Vec<SocketAddr>,
    /// The Kafka listener (`None` with `--no-kafka`).
    pub kafka: Option<SocketAddr>,
    pub data_dir: PathBuf,
    args: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl Broker {
    /// Starts a broker on a fresh temporary data directory.
    pub fn start(args: &[&str]) -> Broker {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut b = Broker::start_in(tmp.path(), args);
        b._tmp = Some(tmp);
        b
    }

    /// Starts a broker on `data_dir` (kept after the test).
    pub fn start_in(data_dir: &Path, args: &[&str]) -> Broker {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (child, addr, direct, kafka) = spawn(data_dir, &args);
        Broker {
            child: Some(child),
            addr,
            direct,
            kafka,
            data_dir: data_dir.to_path_buf(),
            args,
            _tmp: None,
        }
    }

    /// A client on the shared port.
    pub fn client(&self) -> Client {
        let c = Client::connect(self.addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c
    }

    /// A client on shard `i`'s direct port.
    pub fn direct_client(&self, i: usize) -> Client {
        let c = Client::connect(self.direct[i]).expect("connect direct");
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c
    }

    /// Sends `signal` to the broker process (SIGSTOP freezes it: a broker that answers
    /// nothing).
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("running");
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    }

    /// The broker's resident memory now, from /proc.
    pub fn rss_bytes(&self) -> u64 {
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
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().unwrap();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
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
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the broker first");
        let (child, addr, direct, kafka) = spawn(&self.data_dir, &self.args);
        self.child = Some(child);
        self.addr = addr;
        self.direct = direct;
        self.kafka = kafka;
    }

    /// The broker's stderr log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(log_path(&self.data_dir)).unwrap_or_default()
    }
}

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
/// listener take ephemeral ports too) and reads its ready line.
fn spawn(
    data_dir: &Path,
    args: &[String],
) -> (Child, SocketAddr, Vec<SocketAddr>, Option<SocketAddr>) {
    std::fs::create_dir_all(data_dir).expect("data dir");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(data_dir))
        .expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_eventflowd"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir.join("data"))
        .args(args)
        .env("RUST_LOG", "info")
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
    (child, addr, direct, kafka)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A batch of `n` records `"<tag>-<i>"` padded to `value_size` bytes, timestamped `ts`.
pub fn batch(tag: &str, n: usize, value_size: usize, ts: i64) -> BytesMut {
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
pub fn values(records: &Bytes) -> Vec<String> {
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
pub fn read_all(client: &mut Client, topic: &str, partition: u32, mut offset: i64) -> Vec<Bytes> {
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
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}
