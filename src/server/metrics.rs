//! The shards' metrics, gathered when `/metrics` is scraped.
//!
//! Gathered, not published: the per-partition figures (offsets, sizes, segments), the
//! groups' committed offsets and the share groups' state live in `RefCell`s of their
//! owning shard, so the shard reads them itself when asked ([`super::scrape`]) and hands
//! over a [`ShardSnapshot`]. Publishing them as atomics instead would cost every append a
//! store and every partition a cache line, for a figure read once per scrape interval.
//! The counters the data path updates are thread-local cells ([`crate::metrics::shard`]),
//! copied into the same snapshot. A consumer group's lag joins the committed offsets (from
//! the group's coordinator shard) with the log end offsets (from the partitions' owners)
//! after every shard answered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::context::{Global, ShardContext};
use crate::metrics::exposition::{self, Scrape};
use crate::metrics::process;
use crate::metrics::shard::{ApiId, Outcome, WireProtocol};
use crate::metrics::snapshot::{PartitionState, ShardSnapshot};
use crate::protocol::api::ApiKey;
use crate::protocol::ErrorCode;
use crate::shard::mesh::MeshRemote;

/// The git commit this binary was built from (build.rs), or `unknown`.
const GIT_COMMIT: &str = match option_env!("EVENTFLOW_GIT_COMMIT") {
    Some(commit) => commit,
    None => "unknown",
};

/// Builds this shard's snapshot (on its own thread, from its mesh loop).
pub(crate) fn snapshot(ctx: &ShardContext) -> ShardSnapshot {
    let partitions: Vec<PartitionState> = ctx
        .partitions
        .named_logs()
        .into_iter()
        .map(|(topic, partition, log)| PartitionState {
            topic,
            partition,
            log_start: log.log_start_offset(),
            log_end: log.high_watermark(),
            size_bytes: log.size_bytes(),
            segments: log.segment_count() as u64,
        })
        .collect();
    let shares = ctx
        .shares
        .metrics(&|topic, partition| ctx.partitions.log_end(topic, partition));
    let limit = ctx
        .config
        .max_queued_request_bytes
        .max(ctx.config.max_request_bytes + crate::protocol::frame::LENGTH_PREFIX);
    let (ring_queued, ring_capacity) = ctx.ring_occupancy();
    ShardSnapshot {
        shard: ctx.id,
        traffic: crate::metrics::shard::take(),
        partitions,
        committed: ctx.groups.committed_offsets(),
        shares,
        queued_bytes: limit.saturating_sub(ctx.request_budget.available()) as u64,
        queued_limit: limit as u64,
        ring_queued: ring_queued as u64,
        ring_capacity: ring_capacity as u64,
        tail_cache_bytes: crate::storage::shard_tail_cache_bytes(),
        tail_cache_limit: ctx
            .config
            .shard_tail_cache_bytes
            .max(ctx.config.tail_cache_bytes),
    }
}

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// A shard did not answer in time (it is stopping, or stuck).
    #[error("shard {0} did not answer within {1:?}")]
    Timeout(u16, Duration),
    /// A shard ended (the broker is stopping).
    #[error("shard {0} has stopped")]
    Stopped(u16),
}

/// Asks every shard for its metrics and renders them; usable from any thread (it needs a
/// tokio runtime for its timeout).
#[derive(Clone)]
pub struct Scraper {
    global: Arc<Global>,
    remote: MeshRemote,
    shards: u16,
    partition_labels: bool,
    started: Instant,
    start_time: f64,
}

impl Scraper {
    pub(crate) fn new(
        global: Arc<Global>,
        remote: MeshRemote,
        shards: u16,
        partition_labels: bool,
    ) -> Scraper {
        Scraper {
            global,
            remote,
            shards,
            partition_labels,
            started: Instant::now(),
            start_time: process::unix_now(),
        }
    }

    /// Every shard's snapshot, waiting at most `timeout` for all of them.
    pub async fn snapshots(&self, timeout: Duration) -> Result<Vec<ShardSnapshot>, ScrapeError> {
        let asked: Vec<_> = (0..self.shards)
            .map(|s| self.global.scrapes.ask(s))
            .collect();
        self.remote.signal_all();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut snapshots = Vec::with_capacity(asked.len());
        for (shard, rx) in (0..self.shards).zip(asked) {
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(snapshot)) => snapshots.push(snapshot),
                Ok(Err(_)) => return Err(ScrapeError::Stopped(shard)),
                Err(_) => return Err(ScrapeError::Timeout(shard, timeout)),
            }
        }
        Ok(snapshots)
    }

    /// The Prometheus text exposition of every shard's metrics and the process's.
    pub async fn render(&self, timeout: Duration) -> Result<String, ScrapeError> {
        let shards = self.snapshots(timeout).await?;
        Ok(exposition::render(&Scrape {
            shards: &shards,
            process: process::read(),
            version: env!("CARGO_PKG_VERSION"),
            commit: GIT_COMMIT,
            start_time: self.start_time,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            partition_labels: self.partition_labels,
            api_name: &api_name,
            outcome_name: &outcome_name,
        }))
    }
}

fn api_name(api: ApiId) -> String {
    match api.protocol {
        WireProtocol::Native => u16::try_from(api.key)
            .ok()
            .and_then(ApiKey::from_u16)
            .map_or_else(|| api.key.to_string(), |k| format!("{k:?}")),
        WireProtocol::Kafka => kafka_protocol::messages::ApiKey::try_from(api.key)
            .map_or_else(|_| api.key.to_string(), |k| format!("{k:?}")),
    }
}

fn outcome_name(outcome: Outcome) -> String {
    match outcome {
        Outcome::Ok => "none".into(),
        Outcome::Error(code) => ErrorCode::from_u16(code).name().replace(' ', "_"),
        Outcome::Closed => "connection_closed".into(),
    }
}
