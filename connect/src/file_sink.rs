//! The file sink: writes the records of its topics to a file, one per line, formatted
//! with a template like `eventflow consume --format`'s.
//!
//! **Exactly once across crashes.** The sink consumes as a member of a consumer group and
//! commits by hand. Lines reach the file as records arrive (a reader following it sees
//! them at once). Every `commit_interval_ms` (and when it stops) the sink syncs the file
//! (fdatasync), then replaces its state file (`<name>.sink.json`: temporary file,
//! sync, rename, directory sync) with the file's length and, per partition, the offset
//! after the last record written, and only then commits those offsets to the group. On
//! start it cuts the file back to the state's length (dropping lines written after the
//! last state, which the broker still has), starts the partitions it is given at the
//! state's offsets, and skips any record below the state's offset of its partition: the
//! group's committed offsets (where partitions given later start) are never ahead of the
//! state, so resuming from them re-reads at most what the state already covers. Without a state
//! file (first start), the group's offsets, or `start`, say where to begin.
//!
//! A file found shorter than the state says was changed outside the sink (truncated or
//! replaced): the sink warns and appends from its end, losing nothing that comes next.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use eventflow::client::backoff::Backoff;
use eventflow::client::consumer::Consumer;
use eventflow::client::format::RecordFormat;
use eventflow::client::ClientError;
use serde::{Deserialize, Serialize};

use crate::connector::{Connector, ConnectorContext};
use crate::state_file;

/// How often progress is logged.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Where partitions without a committed offset start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// The first record still stored (the default).
    #[default]
    Earliest,
    /// Records produced from now on.
    Latest,
}

/// `kind = "file-sink"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file to write (created if missing).
    pub file: PathBuf,
    /// The topics to read.
    pub topics: Vec<String>,
    /// The template of each record's bytes in the file (`%v\n`: the value and a newline).
    #[serde(default = "default_format")]
    pub format: String,
    /// The consumer group (default: the connector's name).
    #[serde(default)]
    pub group: Option<String>,
    /// Where partitions without a committed offset start: `earliest` or `latest`.
    #[serde(default)]
    pub start: Start,
    /// How often the file is synced and the offsets committed, in ms.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// The group's session timeout, in ms: after a crash, the partitions come back to the
    /// restarted sink once the old member's session has run out.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
}

fn default_format() -> String {
    "%v\\n".into()
}

fn default_commit_interval_ms() -> u64 {
    1_000
}

/// The sinks' default group session timeout, in ms (`session_timeout_ms`).
pub(crate) fn default_session_timeout_ms() -> u64 {
    10_000
}

impl FileSinkConfig {
    /// Checks the values serde cannot.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        if self.file.as_os_str().is_empty() {
            bail!("file must not be empty");
        }
        if self.topics.is_empty() || self.topics.iter().any(String::is_empty) {
            bail!("topics must name at least one topic (and no empty name)");
        }
        RecordFormat::parse(&self.format).map_err(|e| anyhow::anyhow!("format: {e}"))?;
        if self.group.as_deref() == Some("") {
            bail!("group must not be empty (leave it out for the connector's name)");
        }
        if self.commit_interval_ms == 0 {
            bail!("commit_interval_ms must be at least 1");
        }
        if !(1_000..=300_000).contains(&self.session_timeout_ms) {
            bail!("session_timeout_ms must be between 1000 and 300000");
        }
        Ok(())
    }
}

/// What the file holds, in the state file `<name>.sink.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SinkState {
    /// The file's length when the offsets below were written and synced.
    length: u64,
    /// Per topic and partition: the offset after the last record in the file.
    offsets: BTreeMap<String, BTreeMap<u32, i64>>,
}

impl SinkState {
    fn next(&self, topic: &str, partition: u32) -> Option<i64> {
        self.offsets.get(topic)?.get(&partition).copied()
    }
}

/// The file sink connector.
pub struct FileSink {
    config: FileSinkConfig,
}

impl FileSink {
    /// A sink with these settings.
    pub fn new(config: FileSinkConfig) -> FileSink {
        FileSink { config }
    }

    /// Opens the file and cuts it back to what the state covers.
    fn open(&self, ctx: &ConnectorContext, state: &mut SinkState) -> anyhow::Result<File> {
        let path = &self.config.file;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let len = file.metadata()?.len();
        if len > state.length {
            tracing::info!(
                "{}: dropping the last {} bytes of {} (written after the last commit; they \
                 are written again)",
                ctx.name,
                len - state.length,
                path.display()
            );
            file.set_len(state.length)
                .with_context(|| format!("cannot truncate {}", path.display()))?;
            file.sync_data()?;
        } else if len < state.length {
            tracing::warn!(
                "{}: {} is shorter ({len} bytes) than the sink wrote ({} bytes): it was \
                 changed by something else; appending from its end",
                ctx.name,
                path.display(),
                state.length
            );
            state.length = len;
        }
        Ok(file)
    }

    /// A consumer that joined `group`, subscribed to the topics, its partitions at the
    /// state's offsets (where the state has one): the group's offsets may lag, or be gone.
    fn join(
        &self,
        ctx: &ConnectorContext,
        group: &str,
        state: &SinkState,
    ) -> Result<Consumer, ClientError> {
        let config = &self.config;
        let mut consumer = ctx.join_group(
            group,
            &config.topics,
            config.start,
            config.session_timeout_ms,
        )?;
        let (_, assigned) = consumer.group_assignment().unwrap_or_default();
        for (topic, partition) in assigned {
            if let Some(next) = state.next(&topic, partition) {
                consumer.seek(&topic, partition, next)?;
            }
        }
        Ok(consumer)
    }

    /// Makes what was written durable, records it in the state file, then commits it to
    /// the group, in that order.
    fn commit(
        &self,
        ctx: &ConnectorContext,
        out: &mut BufWriter<File>,
        consumer: &mut Consumer,
        state: &SinkState,
    ) -> anyhow::Result<()> {
        out.flush()
            .and_then(|()| out.get_ref().sync_data())
            .with_context(|| format!("cannot write {}", self.config.file.display()))?;
        state_file::save(&ctx.state_file("sink.json"), state)?;
        if let Err(e) = consumer.commit() {
            // The state file has it: the group's offsets only lag until the next commit.
            tracing::warn!("{}: cannot commit the group's offsets: {e}", ctx.name);
        }
        Ok(())
    }
}

impl Connector for FileSink {
    fn run(&mut self, ctx: &ConnectorContext) -> anyhow::Result<()> {
        let config = &self.config;
        let format = RecordFormat::parse(&config.format)?;
        let mut state: SinkState =
            state_file::load(&ctx.state_file("sink.json"))?.unwrap_or_default();
        let file = self.open(ctx, &mut state)?;
        let mut out = BufWriter::with_capacity(64 << 10, file);
        let group = config.group.clone().unwrap_or_else(|| ctx.name.clone());
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut consumer = loop {
            match self.join(ctx, &group, &state) {
                Ok(consumer) => break consumer,
                Err(e) if e.is_retriable() => {
                    tracing::warn!("{}: cannot join group {group}: {e}; trying again", ctx.name);
                    if !ctx.sleep(backoff.next_delay()) {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("cannot join group {group}")),
            }
        };
        tracing::info!(
            "{}: writing {} to {} (group {group})",
            ctx.name,
            config.topics.join(", "),
            config.file.display()
        );
        let interval = Duration::from_millis(config.commit_interval_ms);
        let mut last_commit = Instant::now();
        let mut written = 0u64;
        let mut last_report = Instant::now();
        let mut dirty = false;
        let mut line = Vec::new();
        while !ctx.stopping() {
            let records = match consumer.poll(Duration::from_millis(200)) {
                Ok(records) => records,
                Err(e) if e.is_retriable() => {
                    tracing::warn!("{}: {e}; trying again", ctx.name);
                    ctx.sleep(Duration::from_millis(500));
                    continue;
                }
                Err(e @ ClientError::CorruptBatch { .. }) => {
                    return Err(e).context("a corrupt batch: the sink stops rather than skip it")
                }
                Err(e) => return Err(e.into()),
            };
            for r in &records {
                if state
                    .next(&r.topic, r.partition)
                    .is_some_and(|next| r.offset < next)
                {
                    continue; // In the file already.
                }
                line.clear();
                format.write(&mut line, r)?;
                out.write_all(&line)
                    .with_context(|| format!("cannot write {}", config.file.display()))?;
                state.length += line.len() as u64;
                state
                    .offsets
                    .entry(r.topic.to_string())
                    .or_default()
                    .insert(r.partition, r.offset + 1);
                written += 1;
                dirty = true;
            }
            if !records.is_empty() {
                // Into the file now (a reader following it sees the lines), synced and
                // covered by the state at the next commit.
                out.flush()
                    .with_context(|| format!("cannot write {}", config.file.display()))?;
            }
            if dirty && last_commit.elapsed() >= interval {
                self.commit(ctx, &mut out, &mut consumer, &state)?;
                dirty = false;
                last_commit = Instant::now();
            }
            if written > 0 && last_report.elapsed() >= REPORT_EVERY {
                tracing::info!(
                    "{}: wrote {written} records in the last {} s",
                    ctx.name,
                    last_report.elapsed().as_secs()
                );
                written = 0;
                last_report = Instant::now();
            }
        }
        self.commit(ctx, &mut out, &mut consumer, &state)?;
        if let Err(e) = consumer.close() {
            tracing::warn!("{}: leaving the group: {e}", ctx.name);
        }
        Ok(())
    }
}
