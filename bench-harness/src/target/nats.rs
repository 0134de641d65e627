//! The `nats://` target: NATS JetStream, spoken in the NATS client protocol by the harness
//! itself, with JetStream's JSON API on its `$JS.API.…` subjects.
//!
//! Partition `p` of topic `T` is the stream `T-p` (file storage, one replica, limits
//! retention) that captures the subject `T.p`. A producer publishes to `T.p` with a reply
//! subject of its own (`_INBOX.<id>.<n>`), which is an asynchronous JetStream publish: the
//! server's PubAck (`{"stream":…,"seq":…}`) to that subject is the record's acknowledgement.
//! Publishes are pipelined and batched as in the `redis://` target ([`super::pipeline`]);
//! keyed records carry the key in a header. A consumer fetches from a durable pull consumer
//! on each of its streams (`$JS.API.CONSUMER.MSG.NEXT`, a batch of up to the other targets'
//! fetch size, delivered as records arrive) and acknowledges every message explicitly
//! (`AckExplicit`), the acks written with its next pull.
//!
//! Offsets are dense here: a stream's sequence numbers start at 1, so offset `o` is
//! sequence `o + 1` and the high watermark is the last sequence.
//!
//! Why not the `async-nats` crate: the harness's producers are synchronous threads that
//! must not wait for each PubAck; with async-nats each publish is a future awaited on a
//! tokio runtime, with an owned copy of the payload, its own reply subscription entry and a
//! channel per acknowledgement, which is client work on the two cores the broker shares.
//! Its default features also bring TLS and crypto crates the loopback harness never uses.
//! The protocol is line-based text (docs.nats.io, "Client Protocol"; "JetStream wire API
//! reference"), and one file covers what the harness needs.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use eventflow::client::partitioner::partition_for_key;
use serde_json::{json, Value};

use super::pipeline::{Pipeline, Replies, Reply};
use super::{AckSink, ConsumerWorker, ProducerWorker, Target};
use crate::workload::Workload;

/// Bound on connecting and on each JetStream API request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes one pull asks for: the fetch size of the other targets' consumers.
const FETCH_BYTES: usize = 8 << 20;
/// How long one pull waits on the server for records before it expires.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Consumer name when the workload names no group.
const DEFAULT_DURABLE: &str = "eventflow-bench";
/// JetStream API error codes (`err_code`) the target expects.
const STREAM_NOT_FOUND: u64 = 10059;
const READ_BUFFER: usize = 1 << 20;
const MAX_LINE: usize = 64 * 1024;
/// Header name carrying a record's key, in hex.
const KEY_HEADER: &str = "Eventflow-Key";

/// Makes reply inboxes unique per connection of this process.
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

fn new_inbox() -> String {
    let n = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("_INBOX.eb{}x{nanos:x}x{n}", std::process::id())
}

fn stream_name(topic: &str, partition: u32) -> String {
    format!("{topic}-{partition}")
}

fn subject(topic: &str, partition: u32) -> String {
    format!("{topic}.{partition}")
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// A protocol operation from the server, parsed from its line.
#[derive(Debug, PartialEq, Eq)]
enum Op {
    /// `MSG`/`HMSG`: ranges into the line, and the header and total payload lengths.
    Msg {
        subject: (usize, usize),
        sid: u64,
        reply: Option<(usize, usize)>,
        header_len: usize,
        total_len: usize,
    },
    Ping,
    Pong,
    Ok,
    Info,
    Err(String),
}

/// Parses one server line (without its CRLF).
fn parse_op(line: &[u8]) -> io::Result<Op> {
    let mut fields = Vec::with_capacity(6);
    let mut start = None;
    for (i, &b) in line.iter().enumerate() {
        match (b == b' ' || b == b'\t', start) {
            (true, Some(s)) => {
                fields.push((s, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        fields.push((s, line.len()));
    }
    let word = |k: usize| &line[fields[k].0..fields[k].1];
    let number = |k: usize| -> io::Result<u64> {
        std::str::from_utf8(word(k))
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad number in {:?}", String::from_utf8_lossy(line))))
    };
    let Some(&(s, e)) = fields.first() else {
        return Err(invalid("empty protocol line"));
    };
    let op = line[s..e].to_ascii_uppercase();
    match (op.as_slice(), fields.len()) {
        (b"MSG", 4 | 5) => {
            let n = fields.len();
            Ok(Op::Msg {
                subject: fields[1],
                sid: number(2)?,
                reply: (n == 5).then(|| fields[3]),
                header_len: 0,
                total_len: number(n - 1)? as usize,
            })
        }
        (b"HMSG", 5 | 6) => {
            let n = fields.len();
            let (header_len, total_len) = (number(n - 2)? as usize, number(n - 1)? as usize);
            if header_len > total_len {
                return Err(invalid("HMSG header longer than the message"));
            }
            Ok(Op::Msg {
                subject: fields[1],
                sid: number(2)?,
                reply: (n == 6).then(|| fields[3]),
                header_len,
                total_len,
            })
        }
        (b"PING", 1) => Ok(Op::Ping),
        (b"PONG", 1) => Ok(Op::Pong),
        (b"+OK", 1) => Ok(Op::Ok),
        (b"INFO", _) => Ok(Op::Info),
        (b"-ERR", _) => Ok(Op::Err(
            String::from_utf8_lossy(&line[e..]).trim().to_string(),
        )),
        _ => Err(invalid(format!(
            "unknown protocol line {:?}",
            String::from_utf8_lossy(line)
        ))),
    }
}

/// The status code of a header block (`NATS/1.0 408 Request Timeout`), if it has one.
fn status(headers: &[u8]) -> Option<u16> {
    let first = headers.split(|&b| b == b'\n').next()?;
    let rest = first.strip_prefix(b"NATS/1.0")?;
    std::str::from_utf8(rest)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Reads one line without its CRLF into `line`.
fn read_line(r: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<()> {
    line.clear();
    let n = r.by_ref().take(MAX_LINE as u64).read_until(b'\n', line)?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if !line.ends_with(b"\r\n") {
        return Err(invalid("a protocol line without CRLF (or too long)"));
    }
    line.truncate(line.len() - 2);
    Ok(())
}

/// Reads a message payload of `n` bytes and its CRLF into `into`.
fn read_payload(r: &mut impl BufRead, n: usize, into: &mut Vec<u8>) -> io::Result<()> {
    into.clear();
    into.resize(n + 2, 0);
    r.read_exact(into)?;
    if !into.ends_with(b"\r\n") {
        return Err(invalid("a message payload without CRLF"));
    }
    into.truncate(n);
    Ok(())
}

/// Waits until `stream` has bytes to read, up to `timeout`; false when it has none.
fn readable(stream: &TcpStream, timeout: Duration) -> io::Result<bool> {
    let mut fd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for a socket this process owns, for the call's duration.
    let rc = unsafe { libc::poll(&mut fd, 1, ms) };
    match rc {
        0 => Ok(false),
        n if n > 0 => Ok(true),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// A connection after the handshake, with one subscription `SUB <inbox>.* 1`.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    inbox: String,
    line: Vec<u8>,
    payload: Vec<u8>,
    next_request: u64,
}

impl Conn {
    fn connect(addr: &str) -> Result<Conn> {
        let stream =
            TcpStream::connect(addr).with_context(|| format!("connecting to nats://{addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(ADMIN_TIMEOUT))?;
        let mut conn = Conn {
            reader: BufReader::with_capacity(READ_BUFFER, stream.try_clone()?),
            writer: stream,
            inbox: new_inbox(),
            line: Vec::new(),
            payload: Vec::new(),
            next_request: 0,
        };
        read_line(&mut conn.reader, &mut conn.line).context("reading the server's INFO")?;
        if parse_op(&conn.line)? != Op::Info {
            bail!(
                "nats://{addr} did not greet with INFO: {:?}",
                String::from_utf8_lossy(&conn.line)
            );
        }
        let connect = json!({
            "verbose": false,
            "pedantic": false,
            "headers": true,
            "no_responders": true,
            "name": "eventflow-bench",
            "lang": "rust",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1,
        });
        let hello = format!("CONNECT {connect}\r\nSUB {}.* 1\r\nPING\r\n", conn.inbox);
        conn.writer.write_all(hello.as_bytes())?;
        loop {
            read_line(&mut conn.reader, &mut conn.line)?;
            match parse_op(&conn.line)? {
                Op::Pong => return Ok(conn),
                Op::Err(e) => bail!("nats://{addr} refused the connection: {e}"),
                _ => {}
            }
        }
    }

    /// A JetStream API request; an API error (`{"error":…}`) is an `Err` whose message
    /// holds its `err_code`.
    fn request(&mut self, subject: &str, body: &Value) -> Result<Value> {
        self.next_request += 1;
        let reply = format!("{}.r{}", self.inbox, self.next_request);
        let body = body.to_string();
        let msg = format!("PUB {subject} {reply} {}\r\n{body}\r\n", body.len());
        self.writer.write_all(msg.as_bytes())?;
        loop {
            read_line(&mut self.reader, &mut self.line)
                .with_context(|| format!("waiting for the reply to {subject}"))?;
            match parse_op(&self.line)? {
                Op::Msg {
                    subject: (s, e),
                    header_len,
                    total_len,
                    ..
                } => {
                    let ours = self.line[s..e] == *reply.as_bytes();
                    read_payload(&mut self.reader, total_len, &mut self.payload)?;
                    if !ours {
                        continue;
                    }
                    if let Some(code) = status(&self.payload[..header_len]) {
                        if code == 503 {
                            bail!(
                                "{subject}: no responders (is JetStream enabled? nats-server -js)"
                            );
                        }
                        bail!("{subject}: status {code}");
                    }
                    let v: Value = serde_json::from_slice(&self.payload[header_len..])
                        .with_context(|| format!("reply to {subject}"))?;
                    if let Some(err) = v.get("error") {
                        bail!(
                            "{subject}: {} (err_code {})",
                            err.get("description")
                                .and_then(Value::as_str)
                                .unwrap_or("?"),
                            err.get("err_code").and_then(Value::as_u64).unwrap_or(0)
                        );
                    }
                    return Ok(v);
                }
                Op::Ping => self.writer.write_all(b"PONG\r\n")?,
                Op::Err(e) => bail!("{subject}: server error {e}"),
                _ => {}
            }
        }
    }
}

fn is_code(e: &anyhow::Error, code: u64) -> bool {
    format!("{e}").contains(&format!("(err_code {code})"))
}

pub(super) struct Nats {
    addr: String,
    url: String,
    version: String,
    admin: Mutex<Conn>,
}

impl Nats {
    pub(super) fn new(addr: &str) -> Result<Nats> {
        let url = format!("nats://{addr}");
        let mut admin = Conn::connect(addr)?;
        let info = admin
            .request("$JS.API.INFO", &json!({}))
            .with_context(|| format!("{url} does not answer a JetStream request"))?;
        let version = info
            .get("api")
            .and_then(|a| a.get("level"))
            .map_or_else(|| "?".to_string(), ToString::to_string);
        Ok(Nats {
            addr: addr.to_string(),
            url,
            version: format!("JetStream API level {version}"),
            admin: Mutex::new(admin),
        })
    }

    fn admin(&self) -> MutexGuard<'_, Conn> {
        self.admin.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The topic's streams, found by the subjects they capture.
    fn streams(admin: &mut Conn, topic: &str) -> Result<Vec<String>> {
        let v = admin.request(
            "$JS.API.STREAM.NAMES",
            &json!({ "subject": format!("{topic}.*") }),
        )?;
        Ok(v.get("streams")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default())
    }
}

fn check_topic(topic: &str) -> Result<()> {
    if topic
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        bail!("topic {topic:?}: a NATS stream name cannot hold spaces, '.', '*', '>', '/' or '\\'");
    }
    Ok(())
}

impl Target for Nats {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn url(&self) -> &str {
        &self.url
    }

    fn prepare_topic(&self, w: &Workload) -> Result<()> {
        check_topic(&w.topic)?;
        let mut admin = self.admin();
        let existing = Nats::streams(&mut admin, &w.topic)?;
        if !w.create_topic {
            if existing.is_empty() {
                bail!(
                    "topic {} does not exist on {} (use --create-topic to create it)",
                    w.topic,
                    self.url
                );
            }
            return super::check_partitions(w, existing.len());
        }
        for name in &existing {
            admin
                .request(&format!("$JS.API.STREAM.DELETE.{name}"), &json!({}))
                .with_context(|| format!("deleting stream {name}"))?;
        }
        for p in 0..w.partitions {
            let name = stream_name(&w.topic, p);
            let config = json!({
                "name": name,
                "subjects": [subject(&w.topic, p)],
                "retention": "limits",
                "storage": "file",
                "num_replicas": 1,
                "discard": "old",
                "max_msg_size": -1,
            });
            admin
                .request(&format!("$JS.API.STREAM.CREATE.{name}"), &config)
                .with_context(|| format!("creating stream {name}"))?;
        }
        Ok(())
    }

    fn watermarks(&self, w: &Workload) -> Result<Vec<(i64, i64)>> {
        let mut admin = self.admin();
        (0..w.partitions)
            .map(|p| {
                let name = stream_name(&w.topic, p);
                let info = match admin.request(&format!("$JS.API.STREAM.INFO.{name}"), &json!({})) {
                    Ok(info) => info,
                    Err(e) if is_code(&e, STREAM_NOT_FOUND) => return Ok((0, 0)),
                    Err(e) => return Err(e.context(format!("offsets of {name}"))),
                };
                let state = info.get("state").context("stream info without state")?;
                let seq = |f: &str| state.get(f).and_then(Value::as_i64).unwrap_or(0);
                let (first, last, messages) = (seq("first_seq"), seq("last_seq"), seq("messages"));
                let low = if messages == 0 { last } else { first - 1 };
                Ok((low, last))
            })
            .collect()
    }

    fn producer(&self, w: &Workload, sink: Arc<dyn AckSink>) -> Result<Box<dyn ProducerWorker>> {
        check_topic(&w.topic)?;
        let conn =
            Conn::connect(&self.addr).with_context(|| format!("producer for {}", self.url))?;
        conn.writer.set_read_timeout(None)?;
        let prefixes = (0..w.partitions)
            .map(|p| format!("{} {}.", subject(&w.topic, p), conn.inbox).into_bytes())
            .collect();
        let writer = conn.writer.try_clone()?;
        let acks = PubAcks {
            reader: conn.reader,
            line: conn.line,
            payload: conn.payload,
        };
        let max_inflight = super::producer_buffer_bytes(w) / w.message_size.max(1);
        let pipeline = Pipeline::start(
            writer,
            acks,
            sink,
            w.batch_bytes,
            Duration::from_micros(w.linger_us),
            max_inflight,
        )?;
        Ok(Box::new(NatsProducer {
            pipeline,
            prefixes,
            sticky: 0,
            sticky_bytes: 0,
            batch_bytes: w.batch_bytes,
        }))
    }

    fn consumer(&self, w: &Workload, index: u32, start: &[i64]) -> Result<Box<dyn ConsumerWorker>> {
        check_topic(&w.topic)?;
        let durable = w.consumer_group.as_deref().unwrap_or(DEFAULT_DURABLE);
        if durable
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>'))
        {
            bail!("consumer group {durable:?}: a NATS consumer name cannot hold spaces, '.', '*' or '>'");
        }
        // In a group every member pulls from every stream's one durable consumer and
        // JetStream hands each message to one of them; without one, each consumer pulls
        // from its own partitions.
        let partitions: Vec<u32> = if w.consumer_group.is_some() {
            (0..w.partitions).collect()
        } else {
            w.consumer_partitions(index)
        };
        let batch = (FETCH_BYTES / w.message_size.max(1)).max(1);
        if w.consumer_group.is_none() || index == 0 {
            let mut admin = self.admin();
            for &p in &partitions {
                let name = stream_name(&w.topic, p);
                let at = start.get(p as usize).copied().unwrap_or(0).max(0);
                let _ = admin.request(
                    &format!("$JS.API.CONSUMER.DELETE.{name}.{durable}"),
                    &json!({}),
                );
                let mut config = json!({
                    "durable_name": durable,
                    "ack_policy": "explicit",
                    "ack_wait": 30_000_000_000u64,
                    "max_ack_pending": 4 * batch,
                    "max_waiting": 512,
                    "replay_policy": "instant",
                    "deliver_policy": "all",
                });
                if at > 0 {
                    config["deliver_policy"] = json!("by_start_sequence");
                    config["opt_start_seq"] = json!(at + 1);
                }
                admin
                    .request(
                        &format!("$JS.API.CONSUMER.DURABLE.CREATE.{name}.{durable}"),
                        &json!({ "stream_name": name, "config": config }),
                    )
                    .with_context(|| format!("creating consumer {durable} on {name}"))?;
            }
        }
        let conn = Conn::connect(&self.addr)?;
        conn.writer.set_read_timeout(Some(ADMIN_TIMEOUT))?;
        let pull = json!({
            "batch": batch,
            "max_bytes": FETCH_BYTES,
            "expires": PULL_EXPIRES.as_nanos() as u64,
        })
        .to_string();
        let requests = partitions
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                format!(
                    "PUB $JS.API.CONSUMER.MSG.NEXT.{}.{durable} {}.{} {}\r\n{pull}\r\n",
                    stream_name(&w.topic, p),
                    conn.inbox,
                    i,
                    pull.len()
                )
                .into_bytes()
            })
            .collect::<Vec<_>>();
        Ok(Box::new(NatsConsumer {
            pending: vec![0; requests.len()],
            requests,
            batch,
            conn,
            out: Vec::new(),
        }))
    }

    fn client_settings(&self, w: &Workload) -> Vec<(String, String)> {
        let batch = (FETCH_BYTES / w.message_size.max(1)).max(1);
        vec![
            (
                "client".into(),
                format!(
                    "NATS client protocol over TCP, this repository (bench-harness/src/target/nats.rs); server {}",
                    self.version
                ),
            ),
            (
                "produce".into(),
                "PUB TOPIC.P with a reply inbox (async JetStream publish), one stream per partition".into(),
            ),
            (
                "acks".into(),
                format!(
                    "the PubAck (asked {}: JetStream on one server has one level)",
                    w.acks.as_str()
                ),
            ),
            ("batch_bytes".into(), w.batch_bytes.to_string()),
            ("linger".into(), format!("{:?}", Duration::from_micros(w.linger_us))),
            (
                "max_in_flight".into(),
                format!(
                    "{} records ({} bytes)",
                    super::producer_buffer_bytes(w) / w.message_size.max(1),
                    super::producer_buffer_bytes(w)
                ),
            ),
            (
                "consume".into(),
                format!(
                    "durable pull consumer, AckExplicit, pull batch {batch} max_bytes {FETCH_BYTES} expires {PULL_EXPIRES:?}, max_ack_pending {}",
                    4 * batch
                ),
            ),
        ]
    }
}

/// PubAcks to a producer's inbox: `<inbox>.<record id>`, a JSON body.
struct PubAcks {
    reader: BufReader<TcpStream>,
    line: Vec<u8>,
    payload: Vec<u8>,
}

impl Replies for PubAcks {
    fn read(
        &mut self,
        out: &mut Vec<Reply>,
        control: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<bool> {
        loop {
            match read_line(&mut self.reader, &mut self.line) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && out.is_empty() => {
                    return Ok(false)
                }
                Err(e) => return Err(e),
            }
            match parse_op(&self.line)? {
                Op::Msg {
                    subject: (s, e),
                    header_len,
                    total_len,
                    ..
                } => {
                    let subject = &self.line[s..e];
                    let id = subject
                        .rsplit(|&b| b == b'.')
                        .next()
                        .and_then(|t| std::str::from_utf8(t).ok())
                        .and_then(|t| t.parse::<u64>().ok())
                        .ok_or_else(|| invalid("a PubAck on a subject without a record id"))?;
                    read_payload(&mut self.reader, total_len, &mut self.payload)?;
                    let error = if let Some(code) = status(&self.payload[..header_len]) {
                        Some(format!(
                            "status {code} (503: no stream captures the subject)"
                        ))
                    } else {
                        let body = &self.payload[header_len..];
                        body.windows(8)
                            .any(|w| w == b"\"error\":")
                            .then(|| String::from_utf8_lossy(body).into_owned())
                    };
                    out.push((id, error));
                }
                Op::Ping => control(b"PONG\r\n")?,
                Op::Err(e) => return Err(io::Error::other(format!("server error {e}"))),
                _ => {}
            }
            if !out.is_empty() && self.reader.buffer().is_empty() {
                return Ok(true);
            }
        }
    }
}

struct NatsProducer {
    pipeline: Pipeline,
    /// Per partition, `SUBJECT INBOX.`: the PUB line up to the record's id.
    prefixes: Vec<Vec<u8>>,
    sticky: u32,
    sticky_bytes: usize,
    batch_bytes: usize,
}

fn push_number(buf: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// The header block carrying a record's key.
fn key_headers(key: &[u8]) -> Vec<u8> {
    let mut h = format!("NATS/1.0\r\n{KEY_HEADER}: ").into_bytes();
    for b in key {
        h.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    h.extend_from_slice(b"\r\n\r\n");
    h
}

impl ProducerWorker for NatsProducer {
    fn send(
        &mut self,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: &[u8],
        tag: u64,
    ) -> Result<()> {
        let partitions = self.prefixes.len() as u32;
        let p = match (partition, key) {
            (Some(p), _) => p % partitions,
            (None, Some(k)) => partition_for_key(k, partitions),
            (None, None) => {
                if self.sticky_bytes >= self.batch_bytes {
                    self.sticky = (self.sticky + 1) % partitions;
                    self.sticky_bytes = 0;
                }
                self.sticky_bytes += value.len();
                self.sticky
            }
        };
        let prefix = &self.prefixes[p as usize];
        let headers = key.map(key_headers);
        self.pipeline.send(tag, |buf, id| {
            buf.extend_from_slice(if headers.is_some() { b"HPUB " } else { b"PUB " });
            buf.extend_from_slice(prefix);
            push_number(buf, id);
            buf.push(b' ');
            if let Some(h) = &headers {
                push_number(buf, h.len() as u64);
                buf.push(b' ');
                push_number(buf, (h.len() + value.len()) as u64);
                buf.extend_from_slice(b"\r\n");
                buf.extend_from_slice(h);
            } else {
                push_number(buf, value.len() as u64);
                buf.extend_from_slice(b"\r\n");
            }
            buf.extend_from_slice(value);
            buf.extend_from_slice(b"\r\n");
        })
    }

    fn flush(&mut self) -> Result<()> {
        self.pipeline.flush()
    }
}

struct NatsConsumer {
    conn: Conn,
    /// Per stream (its index is the suffix of the reply inbox), the pull request.
    requests: Vec<Vec<u8>>,
    /// Per stream, messages the open pull may still deliver (0: no pull open).
    pending: Vec<usize>,
    batch: usize,
    /// Acks and pulls to write with the next poll.
    out: Vec<u8>,
}

impl NatsConsumer {
    /// Which stream a delivery to `subject` (`<inbox>.<i>`) belongs to.
    fn stream_of(&self, subject: &[u8]) -> Option<usize> {
        let tail = subject
            .strip_prefix(self.conn.inbox.as_bytes())?
            .strip_prefix(b".")?;
        std::str::from_utf8(tail).ok()?.parse().ok()
    }
}

impl ConsumerWorker for NatsConsumer {
    fn poll(&mut self, timeout: Duration, on_value: &mut dyn FnMut(&[u8])) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        for (i, request) in self.requests.iter().enumerate() {
            if self.pending[i] == 0 {
                self.out.extend_from_slice(request);
                self.pending[i] = self.batch;
            }
        }
        if !self.out.is_empty() {
            self.conn.writer.write_all(&self.out)?;
            self.out.clear();
        }
        let mut seen = 0;
        loop {
            if self.conn.reader.buffer().is_empty() {
                if seen > 0 {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || !readable(&self.conn.writer, left)? {
                    break;
                }
            }
            read_line(&mut self.conn.reader, &mut self.conn.line)?;
            match parse_op(&self.conn.line)? {
                Op::Msg {
                    subject: (s, e),
                    reply,
                    header_len,
                    total_len,
                    ..
                } => {
                    // Pull deliveries keep the record's own subject; the status messages
                    // that end a pull come on the inbox.
                    let stream = self.stream_of(&self.conn.line[s..e]);
                    if let (Some(i), None) = (stream, reply) {
                        read_payload(&mut self.conn.reader, total_len, &mut self.conn.payload)?;
                        match status(&self.conn.payload[..header_len]) {
                            // Idle heartbeat: the pull is still open.
                            Some(100) => {}
                            // 404 no messages, 408 expired, 409 max bytes or waiting
                            // reached: this pull is over.
                            Some(_) => self.pending[i] = 0,
                            None => bail!("an unexpected message on the pull inbox"),
                        }
                        continue;
                    }
                    let Some((rs, re)) = reply else {
                        bail!("a delivery without an ack subject");
                    };
                    // The ack: an empty publish to the delivery's reply subject.
                    self.out.extend_from_slice(b"PUB ");
                    self.out.extend_from_slice(&self.conn.line[rs..re]);
                    self.out.extend_from_slice(b" 0\r\n\r\n");
                    let available = self.conn.reader.fill_buf()?;
                    if available.len() >= total_len + 2 {
                        on_value(&available[header_len..total_len]);
                        self.conn.reader.consume(total_len + 2);
                    } else {
                        read_payload(&mut self.conn.reader, total_len, &mut self.conn.payload)?;
                        on_value(&self.conn.payload[header_len..]);
                    }
                    seen += 1;
                    // Which pull it came from: the ack subject names the stream
                    // ($JS.ACK.<stream>.<consumer>.…).
                    let ack = &self.conn.line[rs..re];
                    if let Some(i) = self.pull_of(ack) {
                        self.pending[i] = self.pending[i].saturating_sub(1);
                    }
                }
                Op::Ping => self.out.extend_from_slice(b"PONG\r\n"),
                Op::Err(e) => bail!("server error {e}"),
                _ => {}
            }
        }
        if !self.out.is_empty() && seen > 0 {
            // Acks leave now rather than with the next poll if that one is far off.
            self.conn.writer.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(seen)
    }
}

impl NatsConsumer {
    /// The stream index of an ack subject: `$JS.ACK.<stream>.<consumer>.` and six more
    /// tokens, or, from servers that add a domain and an account hash, those two first.
    fn pull_of(&self, ack: &[u8]) -> Option<usize> {
        let tokens: Vec<&[u8]> = ack.split(|&b| b == b'.').collect();
        let stream = match tokens.len() {
            9 => tokens[2],
            n if n >= 11 => tokens[4],
            _ => return None,
        };
        self.requests.iter().position(|r| {
            r.strip_prefix(b"PUB $JS.API.CONSUMER.MSG.NEXT.")
                .and_then(|rest| rest.strip_prefix(stream))
                .is_some_and(|rest| rest.first() == Some(&b'.'))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lines_parse() {
        let line = b"MSG bench.0 1 $JS.ACK.bench-0.d.1.5.5.17.0 100";
        let Op::Msg {
            subject,
            sid,
            reply,
            header_len,
            total_len,
        } = parse_op(line).unwrap()
        else {
            panic!()
        };
        assert_eq!(&line[subject.0..subject.1], b"bench.0");
        assert_eq!((sid, header_len, total_len), (1, 0, 100));
        let (rs, re) = reply.unwrap();
        assert_eq!(&line[rs..re], b"$JS.ACK.bench-0.d.1.5.5.17.0");
        assert_eq!(
            parse_op(b"HMSG _INBOX.x.0 1 28 28").unwrap(),
            Op::Msg {
                subject: (5, 15),
                sid: 1,
                reply: None,
                header_len: 28,
                total_len: 28
            }
        );
        assert_eq!(parse_op(b"PING").unwrap(), Op::Ping);
        assert_eq!(parse_op(b"INFO {\"a\":1}").unwrap(), Op::Info);
        assert_eq!(
            parse_op(b"-ERR 'Authorization Violation'").unwrap(),
            Op::Err("'Authorization Violation'".into())
        );
        assert!(parse_op(b"HMSG a 1 9 2").is_err());
        assert!(parse_op(b"MSG a 1").is_err());
        assert!(parse_op(b"").is_err());
    }

    #[test]
    fn statuses_and_keys() {
        assert_eq!(status(b"NATS/1.0 408 Request Timeout\r\n\r\n"), Some(408));
        assert_eq!(status(b"NATS/1.0\r\nEventflow-Key: 00\r\n\r\n"), None);
        assert_eq!(
            key_headers(&[0, 0xab]),
            b"NATS/1.0\r\nEventflow-Key: 00ab\r\n\r\n"
        );
        let mut buf = Vec::new();
        push_number(&mut buf, 0);
        push_number(&mut buf, 1234);
        assert_eq!(buf, b"01234");
        assert!(check_topic("bench").is_ok());
        assert!(check_topic("a.b").is_err());
    }
}
