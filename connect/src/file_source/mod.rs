//! The file source: follows a file like `tail -F` and produces one record per line.
//!
//! **Exactly once across crashes.** Every record carries headers naming the connector, the
//! file (its path, and its identity: device and inode) and the byte offset where its line
//! starts. Lines go out in chunks; the producer waits for every record of a chunk to be
//! acknowledged (acks=all) before the source writes its checkpoint (state file, replaced
//! atomically): the file's identity, the offset after the chunk's last line, and per
//! partition an offset below which no record of a later chunk can land (one past the
//! highest offset acknowledged so far, or the partition's end when the file was first
//! seen). On start, and after any broker error, the source reads every partition of its
//! topic from the checkpoint's offsets to the end and collects the line offsets of its
//! own records for this file at or after the checkpoint's position: the lines of a chunk
//! in flight when the runner died, which may have reached some partitions and not others,
//! or one batch and not the next. It then reads the file again from the checkpoint's
//! position and skips exactly those lines. A crash before a checkpoint is written loses
//! nothing (the lines are read again) and duplicates nothing (those already stored are
//! found). The producer never retries on its own (`retries = 0`): a failed chunk takes the
//! same path, so a retry cannot store a line twice either.
//!
//! **Rotation and truncation.** At the end of the file, the source looks at the path: when
//! a different file (another inode) sits there, the old one was rotated away; the source
//! finishes it through its open handle (including an unfinished last line), then follows
//! the new file from its start. A file shorter than what was read was truncated: the
//! source starts it over from byte 0. A file missing at start is waited for.
//!
//! **Lines.** A line is the bytes before a `\n` (a `\r` before it is kept), sent as they
//! are: no UTF-8 required. With `key_separator`, the bytes before its first occurrence
//! are the key and the rest the value; a line without it has no key. A line longer than
//! `max_line_bytes` is dropped with a warning that names its offset and length (never
//! sent cut), and the source goes on after it. An unfinished last line is sent once its
//! `\n` arrives, or when the file is rotated away.

mod lines;

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use eventflow::client::backoff::Backoff;
use eventflow::client::consumer::{Consumer, ConsumerConfig, ConsumerRecord, StartAt};
use eventflow::client::producer::{DeliveryFuture, Producer, ProducerConfig, Record};
use eventflow::client::{Client, ClientError};
use eventflow::protocol::api::offset_spec;
use serde::{Deserialize, Serialize};

use crate::connector::{Connector, ConnectorContext};
use crate::state_file;
use lines::{LineReader, Next};

/// The header naming the connector that produced a record.
pub const HEADER_CONNECTOR: &str = "connect.connector";
/// The header with the path of the line's file.
pub const HEADER_FILE: &str = "connect.file";
/// The header with the file's identity, `device:inode`.
pub const HEADER_FILE_ID: &str = "connect.file.id";
/// The header with the byte offset where the line starts, in decimal.
pub const HEADER_POSITION: &str = "connect.position";

/// At most this many bytes of lines per chunk (as well as `batch_lines`).
const CHUNK_BYTES: usize = 4 << 20;

/// How often progress is logged.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// `kind = "file-source"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The file to follow.
    pub file: PathBuf,
    /// The topic to produce to (it must exist).
    pub topic: String,
    /// The text that separates a line's key from its value (none: no key).
    #[serde(default)]
    pub key_separator: Option<String>,
    /// Longest line sent, in bytes; longer lines are dropped with a warning.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// How often to look for new lines, rotation and truncation at the end of the file, in ms.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Lines per chunk: each chunk is acknowledged and checkpointed before the next.
    #[serde(default = "default_batch_lines")]
    pub batch_lines: usize,
}

fn default_max_line_bytes() -> usize {
    1 << 20
}

fn default_poll_interval_ms() -> u64 {
    200
}

fn default_batch_lines() -> usize {
    10_000
}

impl FileSourceConfig {
    /// Checks the values serde cannot.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        if self.file.as_os_str().is_empty() {
            bail!("file must not be empty");
        }
        if self.topic.is_empty() {
            bail!("topic must not be empty");
        }
        if self.key_separator.as_deref() == Some("") {
            bail!("key_separator must not be empty (leave it out for records without keys)");
        }
        if self.max_line_bytes == 0 || self.max_line_bytes > 64 << 20 {
            bail!("max_line_bytes must be between 1 and 67108864 (64 MiB)");
        }
        if self.poll_interval_ms == 0 {
            bail!("poll_interval_ms must be at least 1");
        }
        if self.batch_lines == 0 {
            bail!("batch_lines must be at least 1");
        }
        Ok(())
    }
}

/// A file's identity: its device and inode, which stay the same through renames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct FileId {
    device: u64,
    inode: u64,
}

impl FileId {
    fn of(metadata: &Metadata) -> FileId {
        FileId {
            device: metadata.dev(),
            inode: metadata.ino(),
        }
    }

    /// The value of [`HEADER_FILE_ID`].
    fn header(&self) -> String {
        format!("{}:{}", self.device, self.inode)
    }
}

/// What the source has acknowledged, in its state file `<name>.source.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Checkpoint {
    /// The path followed (for people reading the file).
    file: PathBuf,
    /// The file being read.
    id: FileId,
    /// Every line before this byte offset is in the topic.
    position: u64,
    /// Per partition: records of lines at or after `position` lie at or after this offset.
    offsets: BTreeMap<u32, i64>,
}

/// The file being followed.
struct Tail {
    reader: LineReader,
    id: FileId,
    /// [`HEADER_FILE_ID`]'s value.
    id_header: String,
}

impl Tail {
    fn new(file: File, position: u64, max_line: usize) -> std::io::Result<Tail> {
        let id = FileId::of(&file.metadata()?);
        Ok(Tail {
            reader: LineReader::new(file, position, max_line),
            id,
            id_header: id.header(),
        })
    }
}

/// The file source connector.
pub struct FileSource {
    config: FileSourceConfig,
    /// Lines sent since the last progress report.
    sent_lines: u64,
    last_report: Instant,
}

impl FileSource {
    /// A source with these settings.
    pub fn new(config: FileSourceConfig) -> FileSource {
        FileSource {
            config,
            sent_lines: 0,
            last_report: Instant::now(),
        }
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.config.poll_interval_ms)
    }

    /// Opens the file, waiting for it to appear; `None` if asked to stop meanwhile.
    fn wait_for_file(&self, ctx: &ConnectorContext) -> anyhow::Result<Option<Tail>> {
        let path = &self.config.file;
        let mut said = false;
        loop {
            match File::open(path) {
                Ok(file) => {
                    let tail = Tail::new(file, 0, self.config.max_line_bytes)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    return Ok(Some(tail));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if !said {
                        tracing::info!("{}: waiting for {} to appear", ctx.name, path.display());
                        said = true;
                    }
                    if !ctx.sleep(self.poll_interval()) {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
            }
        }
    }

    /// Where to start in `tail`'s file: the checkpoint if it is this file's, else the
    /// file's start (with the offsets of the checkpoint, or the partitions' ends now).
    fn starting_point(
        &self,
        ctx: &ConnectorContext,
        admin: &mut Client,
        partitions: u32,
        tail: &Tail,
        saved: Option<Checkpoint>,
    ) -> anyhow::Result<Checkpoint> {
        let path = &self.config.file;
        let len = tail.reader.file().metadata()?.len();
        let from_start = |offsets| Checkpoint {
            file: path.clone(),
            id: tail.id,
            position: 0,
            offsets,
        };
        Ok(match saved {
            Some(cp) if cp.id == tail.id && len < cp.position => {
                tracing::info!(
                    "{}: {} is shorter ({len} bytes) than what was sent ({} bytes): it was \
                     truncated; starting it over",
                    ctx.name,
                    path.display(),
                    cp.position
                );
                from_start(end_offsets(admin, &self.config.topic, partitions)?)
            }
            Some(cp) if cp.id == tail.id => cp,
            Some(cp) => {
                tracing::info!(
                    "{}: {} is a new file (the one read before was rotated away): starting \
                     at its beginning",
                    ctx.name,
                    path.display()
                );
                from_start(cp.offsets)
            }
            None => from_start(end_offsets(admin, &self.config.topic, partitions)?),
        })
    }

    /// Line offsets at or after `cp.position` of this connector's records for `id`, from
    /// `cp.offsets` to the end of every partition: the lines already stored. Also every
    /// partition's end as it was read.
    fn stored_since(
        &self,
        ctx: &ConnectorContext,
        admin: &mut Client,
        partitions: u32,
        cp: &Checkpoint,
        id_header: &str,
    ) -> anyhow::Result<(HashSet<u64>, BTreeMap<u32, i64>)> {
        let topic = &self.config.topic;
        let mut all_ends = BTreeMap::new();
        let mut ends = BTreeMap::new();
        let mut consumer: Option<Consumer> = None;
        for p in 0..partitions {
            let earliest = admin.list_offset(topic, p, offset_spec::EARLIEST)?;
            let end = admin.list_offset(topic, p, offset_spec::LATEST)?;
            all_ends.insert(p, end);
            let from = cp
                .offsets
                .get(&p)
                .copied()
                .unwrap_or(earliest)
                .max(earliest);
            if from < end {
                let consumer = match &mut consumer {
                    Some(c) => c,
                    None => consumer.insert(Consumer::new(ConsumerConfig {
                        reconnect_timeout: Some(ctx.broker.request_timeout),
                        ..ctx.broker.consumer()
                    })?),
                };
                consumer.assign(topic, &[p], StartAt::Offset(from))?;
                ends.insert(p, end);
            }
        }
        let mut stored = HashSet::new();
        let Some(mut consumer) = consumer else {
            return Ok((stored, all_ends));
        };
        while !ends.is_empty() && !ctx.stopping() {
            for r in consumer.poll(Duration::from_millis(500))? {
                let before_end = ends.get(&r.partition).is_some_and(|end| r.offset < *end);
                match line_position(&r, &ctx.name, id_header) {
                    Some(at) if before_end && at >= cp.position => {
                        stored.insert(at);
                    }
                    _ => {}
                }
            }
            ends.retain(|p, end| consumer.position(topic, *p).is_some_and(|at| at < *end));
        }
        Ok((stored, all_ends))
    }

    /// Copies lines until asked to stop. Returns an error on a broker error (the caller
    /// waits and calls again: the checkpoint in `saved` makes that exact) or a file error.
    fn copy(
        &mut self,
        ctx: &ConnectorContext,
        tail: &mut Tail,
        saved: &mut Option<Checkpoint>,
    ) -> anyhow::Result<()> {
        let topic = self.config.topic.clone();
        let state_path = ctx.state_file("source.json");
        let producer = Producer::new(ProducerConfig {
            // A failed chunk is checked against the topic and sent again by the source:
            // the producer's own retries could store a line twice.
            retries: 0,
            ..ctx.broker.producer()
        })?;
        let partitions = producer
            .partitions(&topic)
            .with_context(|| format!("topic {topic}"))?;
        let mut admin = ctx.broker.client()?;
        let mut cp = self.starting_point(ctx, &mut admin, partitions, tail, saved.take())?;
        state_file::save(&state_path, &cp)?;
        *saved = Some(cp.clone());
        let (mut stored, mut scanned_ends) =
            self.stored_since(ctx, &mut admin, partitions, &cp, &tail.id_header)?;
        drop(admin);
        if ctx.stopping() {
            return Ok(());
        }
        tracing::info!(
            "{}: sending {} from byte {} to {topic}{}",
            ctx.name,
            self.config.file.display(),
            cp.position,
            match stored.len() {
                0 => String::new(),
                n => format!(" ({n} lines after it are in the topic already: skipped)"),
            }
        );
        tail.reader.seek(cp.position);
        loop {
            let mut deliveries = Vec::new();
            self.queue_lines(
                &producer,
                ctx,
                tail,
                &stored,
                &mut deliveries,
                self.config.batch_lines,
            )?;
            if tail.reader.position() > cp.position {
                self.acknowledge(&producer, deliveries, &mut cp, tail.reader.position())?;
                stored.retain(|&at| at >= cp.position);
                if stored.is_empty() {
                    // Every line found by the check is behind: what this run sends lands
                    // past the ends the check read, so the next check may start there
                    // (partitions this source has not written to in a long time would
                    // otherwise be read from old offsets).
                    for (p, end) in std::mem::take(&mut scanned_ends) {
                        let next = cp.offsets.entry(p).or_insert(end);
                        *next = (*next).max(end);
                    }
                }
                state_file::save(&state_path, &cp)?;
                *saved = Some(cp.clone());
                self.report(ctx, &cp);
                if ctx.stopping() {
                    return Ok(());
                }
                continue;
            }
            // At the end of the file.
            if ctx.stopping() {
                return Ok(());
            }
            if let Some(next) = self.replacement(tail)? {
                // Rotated: finish the old file through its handle (the lines written to it
                // before the new file appeared, and its unfinished last line), then switch.
                let mut last = Vec::new();
                while !self.queue_lines(&producer, ctx, tail, &stored, &mut last, usize::MAX)? {}
                match tail.reader.last_line() {
                    Next::Line { position, bytes } if !stored.contains(&position) => {
                        last.push(self.send(&producer, ctx, &tail.id_header, position, bytes)?);
                    }
                    Next::TooLong { position, length } => self.too_long(ctx, position, length),
                    _ => {}
                }
                self.acknowledge(&producer, last, &mut cp, tail.reader.position())?;
                tracing::info!(
                    "{}: {} was rotated ({} bytes sent from the old file); following the new one",
                    ctx.name,
                    self.config.file.display(),
                    cp.position
                );
                *tail = next;
                cp.id = tail.id;
                cp.position = 0;
                stored.clear();
            } else if tail.reader.file().metadata()?.len() < tail.reader.read_to() {
                tracing::info!(
                    "{}: {} was truncated; starting it over",
                    ctx.name,
                    self.config.file.display()
                );
                cp.position = 0;
                tail.reader.seek(0);
                stored.clear();
            } else {
                self.report(ctx, &cp);
                ctx.sleep(self.poll_interval());
                continue;
            }
            state_file::save(&state_path, &cp)?;
            *saved = Some(cp.clone());
        }
    }

    /// Queues the records of the next lines, up to `max_lines` lines or [`CHUNK_BYTES`]
    /// bytes or the end of the file, skipping those already `stored`; true at the end.
    fn queue_lines(
        &mut self,
        producer: &Producer,
        ctx: &ConnectorContext,
        tail: &mut Tail,
        stored: &HashSet<u64>,
        deliveries: &mut Vec<DeliveryFuture>,
        max_lines: usize,
    ) -> anyhow::Result<bool> {
        let mut bytes = 0;
        let mut lines = 0;
        while lines < max_lines && bytes < CHUNK_BYTES {
            match tail.reader.next_line()? {
                Next::Line {
                    position,
                    bytes: line,
                } => {
                    lines += 1;
                    if !stored.contains(&position) {
                        bytes += line.len();
                        deliveries.push(self.send(
                            producer,
                            ctx,
                            &tail.id_header,
                            position,
                            line,
                        )?);
                    }
                }
                Next::TooLong { position, length } => self.too_long(ctx, position, length),
                Next::End => return Ok(true),
            }
        }
        Ok(false)
    }

    /// Queues one line's record.
    fn send(
        &mut self,
        producer: &Producer,
        ctx: &ConnectorContext,
        file_id: &str,
        position: u64,
        line: &[u8],
    ) -> Result<DeliveryFuture, ClientError> {
        let (key, value) = match &self.config.key_separator {
            Some(separator) => split_key(line, separator.as_bytes()),
            None => (None, line),
        };
        let position = position.to_string();
        let file = self.config.file.as_os_str().as_encoded_bytes();
        let headers: [(&[u8], Option<&[u8]>); 4] = [
            (HEADER_CONNECTOR.as_bytes(), Some(ctx.name.as_bytes())),
            (HEADER_FILE.as_bytes(), Some(file)),
            (HEADER_FILE_ID.as_bytes(), Some(file_id.as_bytes())),
            (HEADER_POSITION.as_bytes(), Some(position.as_bytes())),
        ];
        self.sent_lines += 1;
        producer.send(Record {
            topic: &self.config.topic,
            key,
            value: Some(value),
            headers: &headers,
            ..Record::default()
        })
    }

    /// Waits until every record of a chunk is acknowledged, then moves the checkpoint to
    /// `position` and past the records' offsets. Any failure fails the whole chunk.
    fn acknowledge(
        &self,
        producer: &Producer,
        deliveries: Vec<DeliveryFuture>,
        cp: &mut Checkpoint,
        position: u64,
    ) -> anyhow::Result<()> {
        producer.flush()?;
        for delivery in deliveries {
            let stored = delivery.wait()?;
            let next = cp.offsets.entry(stored.partition).or_insert(0);
            *next = (*next).max(stored.offset + 1);
        }
        cp.position = position;
        Ok(())
    }

    fn too_long(&self, ctx: &ConnectorContext, position: u64, length: u64) {
        tracing::warn!(
            "{}: dropped the line at byte {position} of {}: {length} bytes, over \
             max_line_bytes ({})",
            ctx.name,
            self.config.file.display(),
            self.config.max_line_bytes
        );
    }

    /// The file now at the path, if it is not the one being read.
    fn replacement(&self, tail: &Tail) -> anyhow::Result<Option<Tail>> {
        let path = &self.config.file;
        match std::fs::metadata(path) {
            Ok(m) if FileId::of(&m) == tail.id => return Ok(None),
            Ok(_) => {}
            // Renamed away and no new file yet: go on with the old one.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot look at {}", path.display())),
        }
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
        };
        Ok(Some(Tail::new(file, 0, self.config.max_line_bytes)?))
    }

    fn report(&mut self, ctx: &ConnectorContext, cp: &Checkpoint) {
        if self.sent_lines > 0 && self.last_report.elapsed() >= REPORT_EVERY {
            tracing::info!(
                "{}: sent {} lines in the last {} s; at byte {} of {}",
                ctx.name,
                self.sent_lines,
                self.last_report.elapsed().as_secs(),
                cp.position,
                self.config.file.display()
            );
            self.sent_lines = 0;
            self.last_report = Instant::now();
        }
    }
}

impl Connector for FileSource {
    fn run(&mut self, ctx: &ConnectorContext) -> anyhow::Result<()> {
        let state_path = ctx.state_file("source.json");
        let mut saved: Option<Checkpoint> = state_file::load(&state_path)?;
        let Some(mut tail) = self.wait_for_file(ctx)? else {
            return Ok(());
        };
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match self.copy(ctx, &mut tail, &mut saved) {
                Ok(()) => return Ok(()),
                Err(e) if is_retriable(&e) => {
                    tracing::warn!(
                        "{}: {:#}; trying again (from the last acknowledged line)",
                        ctx.name,
                        e
                    );
                    if !ctx.sleep(backoff.next_delay()) {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A broker error worth waiting out: the broker is down or busy.
fn is_retriable(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ClientError>()
        .is_some_and(ClientError::is_retriable)
}

/// Each partition's end (its high watermark) now.
fn end_offsets(
    admin: &mut Client,
    topic: &str,
    partitions: u32,
) -> Result<BTreeMap<u32, i64>, ClientError> {
    (0..partitions)
        .map(|p| Ok((p, admin.list_offset(topic, p, offset_spec::LATEST)?)))
        .collect()
}

/// The line offset a record carries, if this connector produced it from the file `id`.
fn line_position(r: &ConsumerRecord, connector: &str, id: &str) -> Option<u64> {
    let header = |name: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k.as_ref() == name.as_bytes())
            .and_then(|(_, v)| v.as_deref())
    };
    if header(HEADER_CONNECTOR)? != connector.as_bytes() || header(HEADER_FILE_ID)? != id.as_bytes()
    {
        return None;
    }
    std::str::from_utf8(header(HEADER_POSITION)?)
        .ok()?
        .parse()
        .ok()
}

/// The key (before the first `separator`) and the value (after it); no key without one.
fn split_key<'a>(line: &'a [u8], separator: &[u8]) -> (Option<&'a [u8]>, &'a [u8]) {
    match line.windows(separator.len()).position(|w| w == separator) {
        Some(i) => (Some(&line[..i]), &line[i + separator.len()..]),
        None => (None, line),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn splits_keys_at_the_first_separator() {
        assert_eq!(
            split_key(b"a::b::c", b"::"),
            (Some(&b"a"[..]), &b"b::c"[..])
        );
        assert_eq!(split_key(b"no key", b":"), (None, &b"no key"[..]));
        assert_eq!(split_key(b":v", b":"), (Some(&b""[..]), &b"v"[..]));
    }

    #[test]
    fn finds_only_its_own_records_of_the_file() {
        let record = |connector: &str, id: &str, position: &str| ConsumerRecord {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            timestamp: 0,
            key: None,
            value: None,
            headers: [
                (HEADER_CONNECTOR, connector),
                (HEADER_FILE_ID, id),
                (HEADER_POSITION, position),
            ]
            .iter()
            .map(|(k, v)| (Bytes::from(*k), Some(Bytes::from(v.to_string()))))
            .collect(),
        };
        assert_eq!(
            line_position(&record("src", "1:2", "42"), "src", "1:2"),
            Some(42)
        );
        assert_eq!(
            line_position(&record("other", "1:2", "42"), "src", "1:2"),
            None
        );
        assert_eq!(
            line_position(&record("src", "1:3", "42"), "src", "1:2"),
            None
        );
        assert_eq!(
            line_position(&record("src", "1:2", "x"), "src", "1:2"),
            None
        );
    }
}
