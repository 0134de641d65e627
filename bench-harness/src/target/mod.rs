//! What the harness drives: a broker reached through one client library. `eventflow://` uses
//! Eventflow's own client; `kafka://` (cargo feature `kafka`) uses librdkafka through the
//! `rdkafka` crate; `redis://` (Redis Streams) and `nats://` (NATS JetStream) use thin
//! clients of the harness's own. All get the same workload knobs, mapped to their own
//! settings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::workload::Workload;

mod eventflow;
#[cfg(feature = "kafka")]
mod kafka;
pub mod librdkafka;
mod nats;
mod pipeline;
mod redis;
mod resp;

/// Bytes a producer client may buffer before `send` blocks: the same for every target, so
/// that back-pressure starts at the same point (at least four batches).
pub fn producer_buffer_bytes(w: &Workload) -> usize {
    (64usize << 20).max(w.batch_bytes * 4)
}

/// An existing topic must have at least the workload's partitions.
fn check_partitions(w: &Workload, have: usize) -> Result<()> {
    if (have as u64) < u64::from(w.partitions) {
        bail!(
            "topic {} has {have} partitions, the workload needs {}",
            w.topic,
            w.partitions
        );
    }
    Ok(())
}

/// Receives the outcome of each record a producer worker sent, on a client thread.
pub trait AckSink: Send + Sync {
    /// The record sent with `tag` was acknowledged (`error` is `None`) or failed.
    fn acked(&self, tag: u64, error: Option<&dyn fmt::Display>);

    /// The records sent with `tags` were all acknowledged at once (`error` is `None`) or
    /// all failed, as a client that completes a batch at a time reports them. The default
    /// reports each alone.
    fn acked_many(&self, tags: &[u64], error: Option<&dyn fmt::Display>) {
        for &tag in tags {
            self.acked(tag, error);
        }
    }
}

/// One producer client, used by one harness thread.
pub trait ProducerWorker: Send {
    /// Queues one record; its outcome reaches the [`AckSink`] with `tag`. May block while
    /// the client's buffer is full (that time shows up as publish delay).
    fn send(
        &mut self,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: &[u8],
        tag: u64,
    ) -> Result<()>;
    /// Queues several records (a closed-loop producer's slice), each like `send` with no
    /// fixed partition. Clients with a call that queues many records at once override it;
    /// the others send them one by one.
    fn send_many(&mut self, records: &[OutgoingRecord<'_>]) -> Result<()> {
        for r in records {
            self.send(None, r.key, r.value, r.tag)?;
        }
        Ok(())
    }
    /// Waits until every record sent so far has an outcome.
    fn flush(&mut self) -> Result<()>;
}

/// One record of a [`ProducerWorker::send_many`] slice.
pub struct OutgoingRecord<'a> {
    /// Key.
    pub key: Option<&'a [u8]>,
    /// Value (its stamp written).
    pub value: &'a [u8],
    /// What the [`AckSink`] receives with its outcome.
    pub tag: u64,
}

/// One consumer client, used by one harness thread.
pub trait ConsumerWorker: Send {
    /// Waits up to `timeout` for records and calls `on_value` with each record's value;
    /// returns how many records it saw.
    fn poll(&mut self, timeout: Duration, on_value: &mut dyn FnMut(&[u8])) -> Result<usize>;
}

/// A broker and the client library that speaks to it.
pub trait Target: Send + Sync {
    /// `eventflow` or `kafka`.
    fn kind(&self) -> &'static str;
    /// The address as given (`eventflow://127.0.0.1:9292`).
    fn url(&self) -> &str;
    /// Creates the topic with `w.partitions` (deleting an existing one first) when
    /// `w.create_topic`; otherwise checks that it exists with at least that many partitions.
    fn prepare_topic(&self, w: &Workload) -> Result<()>;
    /// The earliest stored offset and the next offset to be written (low and high
    /// watermarks) of each partition `0..w.partitions`.
    fn watermarks(&self, w: &Workload) -> Result<Vec<(i64, i64)>>;
    /// A producer client with the workload's batching and acks.
    fn producer(&self, w: &Workload, sink: Arc<dyn AckSink>) -> Result<Box<dyn ProducerWorker>>;
    /// Consumer `index` of `w.consumers`. Without a consumer group it is assigned
    /// `w.consumer_partitions(index)`, each starting at `start[p]`; with one it subscribes.
    fn consumer(&self, w: &Workload, index: u32, start: &[i64]) -> Result<Box<dyn ConsumerWorker>>;
    /// The client settings the workload maps to, for the report (`batch.size = 262144`).
    fn client_settings(&self, w: &Workload) -> Vec<(String, String)>;
}

/// A parsed target address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetUrl {
    /// `eventflow://host:port`
    Eventflow(String),
    /// `kafka://host:port`
    Kafka(String),
    /// `redis://host:port`: Redis Streams.
    Redis(String),
    /// `nats://host:port`: NATS JetStream.
    Nats(String),
}

impl TargetUrl {
    /// Parses `eventflow://`, `kafka://`, `redis://` or `nats://` followed by `HOST:PORT`.
    pub fn parse(s: &str) -> Result<TargetUrl> {
        let Some((scheme, addr)) = s.split_once("://") else {
            bail!(
                "target `{s}` needs a scheme: eventflow://, kafka://, redis:// or nats:// \
                 followed by HOST:PORT"
            )
        };
        if addr.is_empty() || !addr.contains(':') {
            bail!("target `{s}`: expected HOST:PORT after `{scheme}://`");
        }
        match scheme {
            "eventflow" => Ok(TargetUrl::Eventflow(addr.to_string())),
            "kafka" => Ok(TargetUrl::Kafka(addr.to_string())),
            "redis" => Ok(TargetUrl::Redis(addr.to_string())),
            "nats" => Ok(TargetUrl::Nats(addr.to_string())),
            other => {
                bail!("target `{s}`: unknown scheme `{other}` (eventflow, kafka, redis or nats)")
            }
        }
    }

    /// Connects the client library for this target.
    pub fn connect(&self) -> Result<Box<dyn Target>> {
        match self {
            TargetUrl::Eventflow(addr) => Ok(Box::new(eventflow::Eventflow::new(addr)?)),
            #[cfg(feature = "kafka")]
            TargetUrl::Kafka(addr) => Ok(Box::new(kafka::Kafka::new(addr)?)),
            #[cfg(not(feature = "kafka"))]
            TargetUrl::Kafka(_) => bail!(
                "this eventflow-bench was built without Kafka support: rebuild with \
                 `--features kafka` (builds librdkafka from source: needs cmake)"
            ),
            TargetUrl::Redis(addr) => Ok(Box::new(redis::Redis::new(addr)?)),
            TargetUrl::Nats(addr) => Ok(Box::new(nats::Nats::new(addr)?)),
        }
    }
}

impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetUrl::Eventflow(a) => write!(f, "eventflow://{a}"),
            TargetUrl::Kafka(a) => write!(f, "kafka://{a}"),
            TargetUrl::Redis(a) => write!(f, "redis://{a}"),
            TargetUrl::Nats(a) => write!(f, "nats://{a}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            TargetUrl::parse("eventflow://127.0.0.1:9292").unwrap(),
            TargetUrl::Eventflow("127.0.0.1:9292".into())
        );
        assert_eq!(
            TargetUrl::parse("kafka://localhost:9093")
                .unwrap()
                .to_string(),
            "kafka://localhost:9093"
        );
        assert!(TargetUrl::parse("127.0.0.1:9292").is_err());
        assert!(TargetUrl::parse("amqp://h:1").is_err());
        assert!(TargetUrl::parse("kafka://").is_err());
        assert_eq!(
            TargetUrl::parse("redis://127.0.0.1:6379").unwrap(),
            TargetUrl::Redis("127.0.0.1:6379".into())
        );
        assert_eq!(
            TargetUrl::parse("nats://127.0.0.1:4222")
                .unwrap()
                .to_string(),
            "nats://127.0.0.1:4222"
        );
    }
}
