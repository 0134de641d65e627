//! Starting `eventflowd` for a run: a fresh data directory, an ephemeral loopback port, the
//! given flags; stopped with SIGTERM (SIGKILL if it does not exit) and cleaned up on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long `eventflowd` may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A broker process the harness started.
pub struct LocalBroker {
    child: Option<Child>,
    /// `HOST:PORT` of the shared listener.
    pub addr: String,
    /// The flags it was started with (besides --listen and --data-dir).
    pub flags: String,
    pub data_dir: PathBuf,
}

impl LocalBroker {
    /// Starts `binary` with `flags` on a new directory under `scratch`.
    pub fn start(binary: &Path, flags: &str, scratch: &Path) -> Result<LocalBroker> {
        let data_dir = fresh_dir(scratch, "eventflowd")?;
        let log = std::fs::File::create(data_dir.join("eventflowd.log"))
            .with_context(|| format!("creating a log in {}", data_dir.display()))?;
        let mut child = Command::new(binary)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir.join("data"))
            .args(flags.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut broker = LocalBroker {
            child: Some(child),
            addr: String::new(),
            flags: flags.to_string(),
            data_dir,
        };
        let line = rx.recv_timeout(READY_TIMEOUT).unwrap_or_default();
        match parse_ready(&line) {
            Some(addr) => broker.addr = addr,
            None => bail!(
                "eventflowd {flags} did not start (ready line {line:?}); log: {}",
                broker.log_tail()
            ),
        }
        Ok(broker)
    }

    /// The process id, for CPU and RSS readings.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The durability its flags promise, in words.
    pub fn durability(&self) -> String {
        eventflow_durability(&self.flags)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.data_dir.join("eventflowd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after 30 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}

/// Stops a server the harness started: SIGTERM, then SIGKILL after 30 s.
pub(crate) fn terminate(child: &mut Child) {
    // SAFETY: a signal to a child process the harness owns.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Writes every dirty page back (sync(2)) so that a run does not start while the previous
/// run's data is still being flushed: with `--fsync always` that writeback would otherwise
/// show up as fdatasync stalls of tens to hundreds of ms in the next run's latency.
pub fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// A new empty directory under `scratch`, named after `server`.
pub(crate) fn fresh_dir(scratch: &Path, server: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    for n in 0u32.. {
        let dir = scratch.join(format!("{server}-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    unreachable!("u32 directory names ran out")
}

/// `eventflowd ready listen=127.0.0.1:PORT direct=… shards=N` → `127.0.0.1:PORT`.
fn parse_ready(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("eventflowd ready ")?;
    rest.split_whitespace()
        .find_map(|f| f.strip_prefix("listen="))
        .map(str::to_string)
}

/// The durability eventflowd flags give acks=1/all, in words.
pub fn eventflow_durability(flags: &str) -> String {
    let fsync = flag_value(flags, "--fsync").unwrap_or("always");
    format!("eventflowd --fsync {fsync}")
}

/// Whether eventflowd flags leave its log written with `O_DIRECT` (`--log-writes direct`,
/// the default) rather than through the page cache (`buffered`).
pub fn eventflow_writes_direct(flags: &str) -> bool {
    flag_value(flags, "--log-writes").is_none_or(|writes| writes == "direct")
}

/// The value of `--name VALUE` or `--name=VALUE` among `flags`.
fn flag_value<'f>(flags: &'f str, name: &str) -> Option<&'f str> {
    let words: Vec<&str> = flags.split_whitespace().collect();
    words
        .iter()
        .position(|w| *w == name)
        .and_then(|i| words.get(i + 1).copied())
        .or_else(|| {
            words
                .iter()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        })
}

/// Whether a durability statement means "fsync before the acknowledgement".
pub fn fsyncs_before_ack(durability: &str) -> bool {
    durability.contains("--fsync always")
        || has_setting(durability, "flush.messages=1")
        || has_setting(durability, "log.flush.interval.messages=1")
        || durability.contains("appendfsync always")
}

/// Whether `text` holds `setting` not followed by another digit (`=1`, not `=10`).
fn has_setting(text: &str, setting: &str) -> bool {
    text.match_indices(setting).any(|(i, _)| {
        !text[i + setting.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

/// Where to find `eventflowd`: next to this executable (the same `cargo build`), else PATH.
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("eventflowd")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("eventflowd"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_lines_and_durability() {
        assert_eq!(
            parse_ready("eventflowd ready listen=127.0.0.1:4321 direct=127.0.0.1:4322 shards=1\n"),
            Some("127.0.0.1:4321".into())
        );
        assert_eq!(parse_ready("error: bad flag"), None);
        assert_eq!(
            eventflow_durability("--cores 2"),
            "eventflowd --fsync always"
        );
        assert_eq!(
            eventflow_durability("--fsync never --cores 1"),
            "eventflowd --fsync never"
        );
        assert_eq!(
            eventflow_durability("--fsync=interval=5"),
            "eventflowd --fsync interval=5"
        );
        assert!(eventflow_writes_direct("--cores 2 --fsync never"));
        assert!(eventflow_writes_direct("--log-writes direct"));
        assert!(!eventflow_writes_direct("--cores 2 --log-writes buffered"));
        assert!(!eventflow_writes_direct(
            "--log-writes=buffered --fsync always"
        ));
        assert!(fsyncs_before_ack("eventflowd --fsync always"));
        assert!(!fsyncs_before_ack("Kafka default: no fsync"));
        assert!(fsyncs_before_ack(
            "Kafka log.flush.interval.messages=1 (every append fsynced)"
        ));
        assert!(!fsyncs_before_ack("Kafka log.flush.interval.messages=10"));
        assert!(!fsyncs_before_ack("topic flush.messages=100"));
        assert!(fsyncs_before_ack(
            "redis-server appendonly yes, appendfsync always"
        ));
        assert!(!fsyncs_before_ack(
            "redis-server appendonly yes, appendfsync no"
        ));
    }
}
