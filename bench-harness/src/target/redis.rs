//! The `redis://` target: Redis Streams, spoken in RESP2 by the harness itself.
//!
//! Partition `p` of topic `T` is the stream `T-p`; the topic's partition count is kept in
//! the string key `eventflow-bench:partitions:T`. A producer sends `XADD T-p * v VALUE`
//! (`k KEY` added for keyed records), pipelined: commands gather into batches of
//! `batch_bytes`, written when full or `linger` old ([`super::pipeline`]), and each reply
//! (the entry's id) is the record's acknowledgement. Unkeyed records stick to one partition
//! per batch's worth of bytes, as the other targets' sticky partitioners do; keyed ones go to
//! `murmur2(key) % partitions`, Kafka's partitioner. A consumer reads with
//! `XREADGROUP … COUNT n BLOCK ms STREAMS …` in a consumer group and acknowledges what it
//! read with `XACK`, sent in the same write as its next read.
//!
//! Offsets: Redis stream ids are not dense, so the watermarks are counts: the high mark is
//! the stream's `entries-added` (Redis 7), the low one that minus its length. The target
//! remembers the stream's last id at each high mark it reported, which is where a consumer
//! told to start there begins.
//!
//! Why not a client crate: the harness needs a producer whose replies arrive on another
//! thread while it keeps writing, and a consumer that hands out values without copying
//! them. The `redis` crate's sync connection waits for each pipeline's replies before the
//! next can go, and its multiplexed connection needs an async runtime and builds an owned
//! value per reply. RESP is small (this file and `resp.rs`), and a thin client is what keeps
//! the measurement on the broker: the comparison runs client and broker on the same cores.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use eventflow::client::partitioner::partition_for_key;

use super::pipeline::{Pipeline, Replies, Reply};
use super::resp::{self, Value};
use super::{AckSink, ConsumerWorker, ProducerWorker, Target};
use crate::workload::Workload;

/// Bound on connecting and on each admin command's reply.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes one XREADGROUP asks for per stream (as `COUNT`): the fetch size of the other
/// targets' consumers.
const FETCH_BYTES: usize = 8 << 20;
/// Longest BLOCK of one read: the other consumers' fetch max wait.
const MAX_BLOCK_MS: u128 = 100;
/// Consumer group when the workload names none.
const DEFAULT_GROUP: &str = "eventflow-bench";
/// Read buffers of the reply readers.
const READ_BUFFER: usize = 1 << 20;

fn stream_key(topic: &str, partition: u32) -> String {
    format!("{topic}-{partition}")
}

fn meta_key(topic: &str) -> String {
    format!("eventflow-bench:partitions:{topic}")
}

/// One connection for request and reply.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn connect(addr: &str) -> Result<Conn> {
        let stream =
            TcpStream::connect(addr).with_context(|| format!("connecting to redis://{addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(ADMIN_TIMEOUT))?;
        Ok(Conn {
            reader: BufReader::with_capacity(READ_BUFFER, stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends one command and reads its reply; a Redis error reply is an `Err`.
    fn call(&mut self, args: &[&[u8]]) -> Result<Value> {
        let mut buf = Vec::new();
        resp::command(&mut buf, args);
        self.writer.write_all(&buf)?;
        let name = String::from_utf8_lossy(args[0]).into_owned();
        match resp::read_value(&mut self.reader).with_context(|| format!("reply to {name}"))? {
            Value::Error(e) => bail!("{name}: {e}"),
            v => Ok(v),
        }
    }
}

pub(super) struct Redis {
    addr: String,
    url: String,
    version: String,
    admin: Mutex<Conn>,
    /// (topic, partition, high mark) → the stream's last id then.
    marks: Mutex<HashMap<(String, u32, i64), String>>,
}

impl Redis {
    pub(super) fn new(addr: &str) -> Result<Redis> {
        let url = format!("redis://{addr}");
        let mut admin = Conn::connect(addr)?;
        let pong = admin
            .call(&[b"PING"])
            .with_context(|| format!("{url} does not answer PING"))?;
        if pong != Value::Simple("PONG".into()) {
            bail!("{url} answered PING with {pong:?}");
        }
        let info = admin
            .call(&[b"INFO", b"server"])?
            .text()
            .unwrap_or_default();
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_string();
        Ok(Redis {
            addr: addr.to_string(),
            url,
            version,
            admin: Mutex::new(admin),
            marks: Mutex::default(),
        })
    }

    fn admin(&self) -> MutexGuard<'_, Conn> {
        self.admin.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The stream id a consumer starting at `offset` of partition `p` reads after.
    fn start_id(&self, topic: &str, p: u32, offset: i64) -> Result<String> {
        if offset <= 0 {
            return Ok("0-0".into());
        }
        self.marks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(topic.to_string(), p, offset))
            .cloned()
            .with_context(|| {
                format!("{topic}/{p}: offset {offset} is not a high mark this target reported")
            })
    }
}

/// The fields of an `XINFO STREAM` reply that give the watermarks:
/// (length, entries-added, last-generated-id).
fn stream_marks(info: &Value) -> Result<(i64, i64, String)> {
    let Value::Array(Some(fields)) = info else {
        bail!("XINFO STREAM: unexpected reply {info:?}");
    };
    let field = |name: &str| {
        fields
            .chunks(2)
            .find(|kv| kv[0].text().as_deref() == Some(name))
            .and_then(|kv| kv.get(1))
            .with_context(|| format!("XINFO STREAM: no {name}"))
    };
    let int = |name: &str| match field(name)? {
        Value::Int(n) => Ok(*n),
        other => bail!("XINFO STREAM: {name} is {other:?}"),
    };
    let last = field("last-generated-id")?
        .text()
        .context("XINFO STREAM: last-generated-id is not a string")?;
    Ok((int("length")?, int("entries-added")?, last))
}

impl Target for Redis {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn url(&self) -> &str {
        &self.url
    }

    fn prepare_topic(&self, w: &Workload) -> Result<()> {
        let mut admin = self.admin();
        let meta = meta_key(&w.topic);
        let had = match admin.call(&[b"GET", meta.as_bytes()])? {
            Value::Bulk(Some(n)) => String::from_utf8_lossy(&n).parse::<u32>().ok(),
            _ => None,
        };
        if !w.create_topic {
            let Some(had) = had else {
                bail!(
                    "topic {} does not exist on {} (use --create-topic to create it)",
                    w.topic,
                    self.url
                );
            };
            return super::check_partitions(w, had as usize);
        }
        // DEL, not UNLINK: the old streams are freed before the run starts, not during it.
        for p in 0..had.unwrap_or(0).max(w.partitions) {
            admin.call(&[b"DEL", stream_key(&w.topic, p).as_bytes()])?;
        }
        admin.call(&[b"SET", meta.as_bytes(), w.partitions.to_string().as_bytes()])?;
        Ok(())
    }

    fn watermarks(&self, w: &Workload) -> Result<Vec<(i64, i64)>> {
        let mut admin = self.admin();
        let mut marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
        (0..w.partitions)
            .map(|p| {
                let key = stream_key(&w.topic, p);
                let (length, added, last) = match admin.call(&[b"XINFO", b"STREAM", key.as_bytes()])
                {
                    Ok(info) => stream_marks(&info)?,
                    Err(e) if format!("{e}").contains("no such key") => (0, 0, "0-0".into()),
                    Err(e) => return Err(e.context(format!("offsets of {key}"))),
                };
                marks.insert((w.topic.clone(), p, added), last);
                Ok((added - length, added))
            })
            .collect()
    }

    fn producer(&self, w: &Workload, sink: Arc<dyn AckSink>) -> Result<Box<dyn ProducerWorker>> {
        let stream =
            TcpStream::connect(&self.addr).with_context(|| format!("producer for {}", self.url))?;
        stream.set_nodelay(true)?;
        let replies = XaddReplies {
            reader: BufReader::with_capacity(READ_BUFFER, stream.try_clone()?),
            next_id: 0,
            line: Vec::new(),
        };
        let max_inflight = super::producer_buffer_bytes(w) / w.message_size.max(1);
        let pipeline = Pipeline::start(
            stream,
            replies,
            sink,
            w.batch_bytes,
            Duration::from_micros(w.linger_us),
            max_inflight,
        )?;
        let keys = (0..w.partitions)
            .map(|p| stream_key(&w.topic, p).into_bytes())
            .collect();
        Ok(Box::new(RedisProducer {
            pipeline,
            keys,
            sticky: 0,
            sticky_bytes: 0,
            batch_bytes: w.batch_bytes,
        }))
    }

    fn consumer(&self, w: &Workload, index: u32, start: &[i64]) -> Result<Box<dyn ConsumerWorker>> {
        let group = w.consumer_group.as_deref().unwrap_or(DEFAULT_GROUP);
        // In a group every member reads every stream and Redis hands each entry to one of
        // them; without one, each consumer reads its own partitions.
        let partitions: Vec<u32> = if w.consumer_group.is_some() {
            (0..w.partitions).collect()
        } else {
            w.consumer_partitions(index)
        };
        let creates_group = w.consumer_group.is_none() || index == 0;
        if creates_group {
            let mut admin = self.admin();
            for &p in &partitions {
                let key = stream_key(&w.topic, p);
                let at = start.get(p as usize).copied().unwrap_or(0);
                let id = self.start_id(&w.topic, p, at)?;
                // A group left by an earlier run is replaced: it starts where this run does.
                let _ = admin.call(&[b"XGROUP", b"DESTROY", key.as_bytes(), group.as_bytes()]);
                admin
                    .call(&[
                        b"XGROUP",
                        b"CREATE",
                        key.as_bytes(),
                        group.as_bytes(),
                        id.as_bytes(),
                        b"MKSTREAM",
                    ])
                    .with_context(|| format!("creating group {group} on {key}"))?;
            }
        }
        let conn = Conn::connect(&self.addr)?;
        conn.writer.set_read_timeout(None)?;
        let count = (FETCH_BYTES / w.message_size.max(1)).max(1);
        Ok(Box::new(RedisConsumer {
            conn,
            group: group.as_bytes().to_vec(),
            name: format!("eventflow-bench-{index}").into_bytes(),
            keys: partitions
                .iter()
                .map(|&p| stream_key(&w.topic, p).into_bytes())
                .collect(),
            acks: vec![Vec::new(); partitions.len()],
            ack_counts: vec![0; partitions.len()],
            count: count.to_string().into_bytes(),
            buf: Vec::new(),
            line: Vec::new(),
            scratch: Vec::new(),
        }))
    }

    fn client_settings(&self, w: &Workload) -> Vec<(String, String)> {
        let count = (FETCH_BYTES / w.message_size.max(1)).max(1);
        vec![
            (
                "client".into(),
                format!(
                    "RESP2 over TCP, this repository (bench-harness/src/target/redis.rs); server redis {}",
                    self.version
                ),
            ),
            (
                "produce".into(),
                "XADD TOPIC-P * v VALUE, one stream per partition".to_string(),
            ),
            (
                "acks".into(),
                format!(
                    "the XADD reply (asked {}: Redis has one level; with appendfsync always it follows the AOF fsync)",
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
                format!("XREADGROUP COUNT {count} BLOCK {MAX_BLOCK_MS}, XACK with the next read"),
            ),
        ]
    }
}

/// Replies to a producer's XADDs, in the order sent: a bulk string (the entry id) or an
/// error.
struct XaddReplies {
    reader: BufReader<TcpStream>,
    next_id: u64,
    line: Vec<u8>,
}

impl Replies for XaddReplies {
    fn read(
        &mut self,
        out: &mut Vec<Reply>,
        _control: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<bool> {
        loop {
            let kind = match resp::read_line(&mut self.reader, &mut self.line) {
                Ok(kind) => kind,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && out.is_empty() => {
                    return Ok(false)
                }
                Err(e) => return Err(e),
            };
            let error = match kind {
                b'$' => match resp::parse_len(&self.line)? {
                    Some(n) => {
                        resp::skip(&mut self.reader, n)?;
                        None
                    }
                    None => Some("XADD returned nil".to_string()),
                },
                b'-' => Some(String::from_utf8_lossy(&self.line).into_owned()),
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected reply type {:?} to XADD", other as char),
                    ))
                }
            };
            out.push((self.next_id, error));
            self.next_id += 1;
            if self.reader.buffer().is_empty() {
                return Ok(true);
            }
        }
    }
}

struct RedisProducer {
    pipeline: Pipeline,
    /// Stream key of each partition.
    keys: Vec<Vec<u8>>,
    sticky: u32,
    sticky_bytes: usize,
    batch_bytes: usize,
}

impl ProducerWorker for RedisProducer {
    fn send(
        &mut self,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: &[u8],
        tag: u64,
    ) -> Result<()> {
        let partitions = self.keys.len() as u32;
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
        let stream = &self.keys[p as usize];
        self.pipeline.send(tag, |buf, _id| {
            resp::header(buf, b'*', if key.is_some() { 7 } else { 5 });
            resp::bulk(buf, b"XADD");
            resp::bulk(buf, stream);
            resp::bulk(buf, b"*");
            resp::bulk(buf, b"v");
            resp::bulk(buf, value);
            if let Some(k) = key {
                resp::bulk(buf, b"k");
                resp::bulk(buf, k);
            }
        })
    }

    fn flush(&mut self) -> Result<()> {
        self.pipeline.flush()
    }
}

struct RedisConsumer {
    conn: Conn,
    group: Vec<u8>,
    name: Vec<u8>,
    keys: Vec<Vec<u8>>,
    /// Per stream, the ids read and not yet acknowledged, as RESP bulk strings.
    acks: Vec<Vec<u8>>,
    ack_counts: Vec<usize>,
    count: Vec<u8>,
    buf: Vec<u8>,
    line: Vec<u8>,
    scratch: Vec<u8>,
}

impl RedisConsumer {
    /// XACKs for what the last read returned, then the next XREADGROUP, in one write.
    /// Returns how many XACK replies to read first.
    fn write_request(&mut self, block_ms: u128) -> io::Result<usize> {
        self.buf.clear();
        let mut acks = 0;
        for (i, key) in self.keys.iter().enumerate() {
            if self.ack_counts[i] == 0 {
                continue;
            }
            resp::header(&mut self.buf, b'*', 3 + self.ack_counts[i]);
            resp::bulk(&mut self.buf, b"XACK");
            resp::bulk(&mut self.buf, key);
            resp::bulk(&mut self.buf, &self.group);
            self.buf.extend_from_slice(&self.acks[i]);
            self.acks[i].clear();
            self.ack_counts[i] = 0;
            acks += 1;
        }
        let streams = self.keys.len();
        let block = block_ms.to_string();
        resp::header(&mut self.buf, b'*', 9 + 2 * streams);
        for arg in [
            &b"XREADGROUP"[..],
            b"GROUP",
            &self.group,
            &self.name,
            b"COUNT",
            &self.count,
            b"BLOCK",
            block.as_bytes(),
            b"STREAMS",
        ] {
            resp::bulk(&mut self.buf, arg);
        }
        for key in &self.keys {
            resp::bulk(&mut self.buf, key);
        }
        for _ in 0..streams {
            resp::bulk(&mut self.buf, b">");
        }
        self.conn.writer.write_all(&self.buf)?;
        Ok(acks)
    }

    fn expect(&mut self, kind: u8, what: &str) -> io::Result<Option<usize>> {
        let got = resp::read_line(&mut self.conn.reader, &mut self.line)?;
        if got == b'-' {
            return Err(io::Error::other(format!(
                "{what}: {}",
                String::from_utf8_lossy(&self.line)
            )));
        }
        if got != kind {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{what}: unexpected reply type {:?}", got as char),
            ));
        }
        resp::parse_len(&self.line)
    }

    /// Walks an XREADGROUP reply: for each entry, its id goes to the stream's next XACK
    /// and its `v` field to `on_value`.
    fn read_entries(&mut self, on_value: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        let Some(streams) = self.expect(b'*', "XREADGROUP")? else {
            return Ok(0);
        };
        let mut seen = 0;
        for _ in 0..streams {
            self.expect(b'*', "XREADGROUP stream")?;
            let key_len = self.expect(b'$', "XREADGROUP key")?.unwrap_or(0);
            resp::read_bulk_into(&mut self.conn.reader, key_len, &mut self.scratch)?;
            let Some(index) = self.keys.iter().position(|k| *k == self.scratch) else {
                return Err(io::Error::other(
                    "XREADGROUP returned a stream not asked for",
                ));
            };
            let entries = self.expect(b'*', "XREADGROUP entries")?.unwrap_or(0);
            for _ in 0..entries {
                self.expect(b'*', "XREADGROUP entry")?;
                let id_len = self.expect(b'$', "XREADGROUP id")?.unwrap_or(0);
                resp::read_bulk_into(&mut self.conn.reader, id_len, &mut self.scratch)?;
                resp::bulk(&mut self.acks[index], &self.scratch);
                self.ack_counts[index] += 1;
                let fields = self.expect(b'*', "XREADGROUP fields")?.unwrap_or(0);
                for f in 0..fields {
                    let n = self.expect(b'$', "XREADGROUP field")?.unwrap_or(0);
                    let is_value = f % 2 == 1 && self.scratch == b"v";
                    if f % 2 == 0 {
                        resp::read_bulk_into(&mut self.conn.reader, n, &mut self.scratch)?;
                        continue;
                    }
                    if is_value {
                        // The value straight from the read buffer when it is all there.
                        let available = self.conn.reader.fill_buf()?;
                        if available.len() >= n + 2 {
                            on_value(&available[..n]);
                            self.conn.reader.consume(n + 2);
                        } else {
                            let mut value = Vec::new();
                            resp::read_bulk_into(&mut self.conn.reader, n, &mut value)?;
                            on_value(&value);
                        }
                        seen += 1;
                    } else {
                        resp::skip(&mut self.conn.reader, n)?;
                    }
                }
            }
        }
        Ok(seen)
    }
}

impl ConsumerWorker for RedisConsumer {
    fn poll(&mut self, timeout: Duration, on_value: &mut dyn FnMut(&[u8])) -> Result<usize> {
        let block_ms = timeout.as_millis().clamp(1, MAX_BLOCK_MS);
        let acks = self.write_request(block_ms).context("XREADGROUP")?;
        for _ in 0..acks {
            let got = resp::read_line(&mut self.conn.reader, &mut self.line)?;
            if got != b':' {
                bail!("XACK: {}", String::from_utf8_lossy(&self.line));
            }
        }
        Ok(self.read_entries(on_value)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xinfo_gives_the_marks() {
        let info = Value::Array(Some(vec![
            Value::Bulk(Some(b"length".to_vec())),
            Value::Int(7),
            Value::Bulk(Some(b"last-generated-id".to_vec())),
            Value::Bulk(Some(b"1700000000000-3".to_vec())),
            Value::Bulk(Some(b"entries-added".to_vec())),
            Value::Int(10),
        ]));
        assert_eq!(
            stream_marks(&info).unwrap(),
            (7, 10, "1700000000000-3".to_string())
        );
        assert!(stream_marks(&Value::Int(1)).is_err());
    }
}
