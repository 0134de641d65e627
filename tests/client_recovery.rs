//! Clients that recover: timeouts against a broker that does not answer, reconnects with
//! backoff across a broker restart, producer retries within the delivery timeout, and
//! errors that name the address the user gave.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::Broker;
use eventflow::client::producer::{Producer, ProducerConfig, Record};
use eventflow::client::{Client, ClientError};

fn eventflow(bootstrap: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eventflow"));
    command
        .arg("--bootstrap")
        .arg(bootstrap)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Waits for a child to exit, killing it (and failing) after `limit`.
fn exit_within(mut child: Child, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            child.kill().ok();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} still running after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_address_that_does_not_resolve_is_named() {
    for args in [
        &["topic", "list"][..],
        &["consume", "t", "--timeout-ms", "1000"],
        &["produce", "t"],
    ] {
        let child = eventflow("nohost.invalid:9292", args).spawn().unwrap();
        let out = exit_within(child, Duration::from_secs(60), "eventflow");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("cannot resolve `nohost.invalid:9292`"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("?:"), "{args:?}: {stderr}");
    }
    let err = Client::connect("nohost.invalid:9292").err().unwrap();
    assert!(err.to_string().contains("nohost.invalid:9292"), "{err}");
}

/// Sends SIGCONT when dropped, so a failed assertion does not leave the broker stopped.
struct Stopped<'a>(&'a Broker);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.0.signal(libc::SIGCONT);
    }
}

#[test]
fn a_stopped_broker_makes_the_cli_time_out() {
    let broker = Broker::start(&["--cores", "1", "--no-direct-ports"]);
    broker.client().create_topic("t", 1, &[]).unwrap();
    let addr = broker.addr.to_string();
    let stopped = Stopped(&broker);
    broker.signal(libc::SIGSTOP);

    // --timeout-ms bounds the whole consume, the first request included.
    let child = eventflow(
        &addr,
        &["consume", "t", "--from-beginning", "--timeout-ms", "1000"],
    )
    .spawn()
    .unwrap();
    let out = exit_within(child, Duration::from_secs(20), "consume");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("timed out: no answer from"), "{stderr}");

    // Produce: bounded by --request-timeout-ms.
    let mut child = eventflow(&addr, &["produce", "t", "--request-timeout-ms", "1000"])
        .spawn()
        .unwrap();
    drop(child.stdin.take());
    let out = exit_within(child, Duration::from_secs(20), "produce");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("timed out: no answer from"), "{stderr}");

    // Any command: the same flag.
    let child = eventflow(&addr, &["topic", "list", "--request-timeout-ms", "500"])
        .spawn()
        .unwrap();
    let out = exit_within(child, Duration::from_secs(20), "topic list");
    assert!(!out.status.success());
    drop(stopped);
    assert!(
        broker.client().metadata(&[]).is_ok(),
        "the broker answers again"
    );
}

#[test]
fn a_producer_reports_what_a_stopped_broker_did_not_take_within_the_delivery_timeout() {
    let broker = Broker::start(&["--cores", "1", "--no-direct-ports"]);
    broker.client().create_topic("t", 1, &[]).unwrap();
    let producer = Producer::new(ProducerConfig {
        bootstrap: broker.addr.to_string(),
        request_timeout: Duration::from_millis(300),
        delivery_timeout: Duration::from_secs(2),
        ..ProducerConfig::default()
    })
    .unwrap();
    let record = Record {
        topic: "t",
        value: Some(b"v"),
        ..Record::default()
    };
    producer.send(record).unwrap().wait().unwrap();
    let stopped = Stopped(&broker);
    broker.signal(libc::SIGSTOP);
    let started = Instant::now();
    let err = producer.send(record).unwrap().wait().unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the delivery timeout did not bound the retries"
    );
    drop(stopped);
    // After the broker comes back, the producer delivers again (on a new connection).
    producer.send(record).unwrap().wait().unwrap();
}

/// A port below the kernel's ephemeral range that is free now, so that a restarted broker
/// listens where its clients left it and no bind to port 0 takes it meanwhile.
fn fixed_port() -> u16 {
    // Tests of one process run at once: each call starts from another port.
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let seed = (std::process::id() as u16).wrapping_mul(31) ^ call.wrapping_mul(4_001);
    (0..2000u16)
        .map(|i| 20_000 + seed.wrapping_add(i * 13) % 12_000)
        .find(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// A broker on a fixed address, started again on the same address and data directory.
fn spawn_fixed(dir: &Path, addr: &str) -> Child {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut child = Command::new(env!("CARGO_BIN_EXE_eventflowd"))
            .args([
                "--listen",
                addr,
                "--no-direct-ports",
                "--no-kafka",
                "--no-metrics",
                "--no-http",
            ])
            .args(["--cores", "2", "--data-dir"])
            .arg(dir.join("data"))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file(dir)))
            .spawn()
            .expect("spawn eventflowd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.starts_with("eventflowd ready") {
            return child;
        }
        // The address may still be held by the previous process's sockets.
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            Instant::now() < deadline,
            "broker did not start on {addr}; log:\n{}",
            std::fs::read_to_string(dir.join("broker.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn log_file(dir: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("broker.log"))
        .unwrap()
}

/// Lines of a child's stdout as they come.
fn lines(child: &mut Child) -> Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Reads `partition offset value` lines until every value in `want` was seen.
fn consume_until(
    rx: &Receiver<String>,
    seen: &mut Vec<(u32, i64, String)>,
    want: &BTreeSet<String>,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !want.iter().all(|v| seen.iter().any(|(_, _, s)| s == v)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            let missing: Vec<&String> = want
                .iter()
                .filter(|v| !seen.iter().any(|(_, _, s)| s == *v))
                .collect();
            panic!(
                "consumer stalled after {} records; missing {missing:?}; seen {seen:?}",
                seen.len()
            )
        });
        let mut parts = line.splitn(3, ' ');
        let p = parts.next().unwrap().parse().unwrap();
        let o = parts.next().unwrap().parse().unwrap();
        seen.push((p, o, parts.next().unwrap_or("").to_string()));
    }
}

fn write_values(stdin: &mut ChildStdin, range: std::ops::Range<u32>) {
    for i in range {
        writeln!(stdin, "v{i}").unwrap();
    }
    stdin.flush().unwrap();
}

fn values(range: std::ops::Range<u32>) -> BTreeSet<String> {
    range.map(|i| format!("v{i}")).collect()
}

/// Kills the CLI children on drop, whatever the test's outcome.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A broker restarted (kill -9) under a running CLI consumer and producer: the producer's
/// records all arrive, and the consumer prints each offset once, in order, without a gap.
fn survives_a_restart(group: Option<&str>) {
    let tmp = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", fixed_port());
    let mut broker = spawn_fixed(tmp.path(), &addr);
    Client::connect(addr.as_str())
        .unwrap()
        .create_topic("r", 2, &[])
        .unwrap();
    let mut consume_args = vec![
        "consume",
        "r",
        "--from-beginning",
        "--format",
        "%p %o %v\\n",
    ];
    if let Some(g) = group {
        consume_args.extend(["--group", g, "--session-timeout-ms", "3000"]);
    }
    let mut consumer = eventflow(&addr, &consume_args).spawn().unwrap();
    let consumed = lines(&mut consumer);
    let mut producer = eventflow(&addr, &["produce", "r", "--linger-ms", "0"])
        .spawn()
        .unwrap();
    let mut input = producer.stdin.take().unwrap();
    let children = Children(vec![consumer]);

    let mut seen = Vec::new();
    write_values(&mut input, 0..100);
    consume_until(&consumed, &mut seen, &values(0..100));

    let _ = broker.kill();
    broker.wait().unwrap();
    // Written while the broker is down: the producer holds them and retries.
    write_values(&mut input, 100..150);
    std::thread::sleep(Duration::from_millis(300));
    let mut broker = spawn_fixed(tmp.path(), &addr);
    write_values(&mut input, 150..200);
    drop(input);
    let out = exit_within(producer, Duration::from_secs(90), "produce");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("produced 200 of 200 records"), "{stderr}");

    consume_until(&consumed, &mut seen, &values(0..200));
    drop(children);
    let _ = broker.kill();
    let _: ExitStatus = broker.wait().unwrap();

    // Each partition's offsets: 0, 1, 2, … once each (a producer retry may store a value
    // twice, under two offsets; the consumer never skips or repeats an offset).
    let mut by_partition: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    for (p, o, _) in &seen {
        by_partition.entry(*p).or_default().push(*o);
    }
    for (p, offsets) in by_partition {
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(offsets, expected, "partition {p}");
    }
}

#[test]
fn a_cli_consumer_and_producer_survive_a_broker_restart() {
    survives_a_restart(None);
}

#[test]
fn a_cli_group_consumer_survives_a_broker_restart() {
    survives_a_restart(Some("recovering"));
}

/// A broker restarted (kill -9) under a running CLI queue consumer: it reconnects and takes
/// what is produced after the restart, and every record is printed at least once (a
/// record taken but not yet acknowledged when the broker died is delivered again).
#[test]
fn a_cli_queue_consumer_survives_a_broker_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", fixed_port());
    let mut broker = spawn_fixed(tmp.path(), &addr);
    let produce = |range: std::ops::Range<u32>| {
        let mut producer = eventflow(&addr, &["produce", "q", "--linger-ms", "0"])
            .spawn()
            .unwrap();
        let mut input = producer.stdin.take().unwrap();
        write_values(&mut input, range);
        drop(input);
        let out = exit_within(producer, Duration::from_secs(60), "produce");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    Client::connect(addr.as_str())
        .unwrap()
        .create_topic("q", 2, &[])
        .unwrap();
    produce(0..100);
    let mut consumer = eventflow(
        &addr,
        &[
            "queue",
            "consume",
            "q",
            "--group",
            "workers",
            "--lock-ms",
            "2000",
            "--format",
            "%p %o %v\\n",
        ],
    )
    .spawn()
    .unwrap();
    let consumed = lines(&mut consumer);
    let children = Children(vec![consumer]);
    let mut seen = Vec::new();
    consume_until(&consumed, &mut seen, &values(0..100));

    let _ = broker.kill();
    broker.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut broker = spawn_fixed(tmp.path(), &addr);
    produce(100..200);
    consume_until(&consumed, &mut seen, &values(0..200));
    drop(children);
    let _ = broker.kill();
    let _: ExitStatus = broker.wait().unwrap();
}
