//! The share consumer: queue-style consumption of topics through a share group. Any number
//! of consumers take records from the same partitions; the broker locks each record it
//! hands out to one consumer for `lock`, counts its deliveries, and hands it out again if it
//! is released, nacked or its lock runs out. Records delivered `max_deliveries` times (or
//! rejected) are copied to the dead-letter topic.
//!
//! With [`AckMode::Auto`] every record a `poll` returned is accepted by the next `poll` (or
//! drop): process the batch, poll again. With [`AckMode::Manual`] the application says
//! what happened to each record ([`ShareConsumer::ack`], `release`, `nack`, `reject`);
//! acknowledgements travel with the next `poll` or `commit`, and dropping the consumer
//! releases the records of its last poll it did not acknowledge.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::consumer::ConsumerRecord;
use super::{check_results, Client, ClientError};
use crate::protocol::api::*;
use crate::protocol::batch;
use crate::protocol::{ErrorCode, WireError};

/// When records are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// A poll accepts everything the previous poll returned.
    Auto,
    /// The application acknowledges each record.
    Manual,
}

/// Share consumer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareConsumerConfig {
    /// Any broker address.
    pub bootstrap: String,
    /// The share group.
    pub group: String,
    /// This consumer's id within the group (default: host, process and a counter).
    pub member_id: String,
    /// How long a delivered record stays locked to this consumer.
    pub lock: Duration,
    /// Deliveries before a record goes to the dead-letter topic.
    pub max_deliveries: u16,
    /// Where records past `max_deliveries` or rejected are copied (created with one
    /// partition if missing); empty: nowhere, they are only archived.
    pub dead_letter_topic: String,
    /// Records one poll takes per partition at most.
    pub max_records: u32,
    /// How acknowledgements happen.
    pub ack_mode: AckMode,
}

impl ShareConsumerConfig {
    /// Settings for `group` on a local broker: 30 s locks, 5 deliveries, dead letters to
    /// `<group>.dlq`, 500 records per partition per poll, auto acknowledgement.
    pub fn new(group: &str) -> ShareConsumerConfig {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ShareConsumerConfig {
            bootstrap: "127.0.0.1:9292".into(),
            group: group.to_string(),
            member_id: format!("{}-{}-{n}", hostname(), std::process::id()),
            lock: Duration::from_secs(30),
            max_deliveries: 5,
            dead_letter_topic: format!("{group}.dlq"),
            max_records: 500,
            ack_mode: AckMode::Auto,
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "client".into())
}

/// A record taken from a share group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareRecord {
    /// The record.
    pub record: ConsumerRecord,
    /// How many times it has been delivered (1: the first time).
    pub delivery: u16,
}

/// Acknowledgement ranges per (topic, partition), each with the poll its records came from.
type PendingAcks = BTreeMap<(Arc<str>, u32), Vec<(AckRange, u64)>>;

/// A consumer of a share group; see the module docs.
pub struct ShareConsumer {
    config: ShareConsumerConfig,
    client: Client,
    topics: Vec<String>,
    /// Acknowledgements not sent yet, per (topic, partition), with the poll that took
    /// their records: a range only spans records of one poll, whose locks end together.
    pending: PendingAcks,
    /// Polls so far.
    polls: u64,
    /// Records handed out and not settled: in auto mode the last poll's (accepted at the
    /// next), in manual mode every poll's until the application acknowledges them.
    last_polled: Vec<(Arc<str>, u32, i64, u64)>,
}

impl ShareConsumer {
    /// Connects and takes records of `topics` from `config.group`.
    pub fn new(config: ShareConsumerConfig, topics: &[&str]) -> Result<ShareConsumer, ClientError> {
        if config.group.is_empty() || config.member_id.is_empty() {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                "a share consumer needs a group and a member id",
            )
            .into());
        }
        let mut client = Client::connect(config.bootstrap.as_str())?;
        client.set_read_timeout(Some(Duration::from_secs(90)))?;
        client.api_versions()?;
        Ok(ShareConsumer {
            config,
            client,
            topics: topics.iter().map(ToString::to_string).collect(),
            pending: BTreeMap::new(),
            polls: 0,
            last_polled: Vec::new(),
        })
    }

    /// Sends pending acknowledgements, then waits up to `timeout` for records to take.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<ShareRecord>, ClientError> {
        if self.config.ack_mode == AckMode::Auto {
            for (topic, partition, offset, poll) in std::mem::take(&mut self.last_polled) {
                self.queue(&topic, partition, offset, poll, AckType::Accept, 0);
            }
        }
        self.commit()?;
        self.polls += 1;
        let deadline = Instant::now() + timeout;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let response = match self.client.call(Request::ShareFetch(ShareFetchRequest {
                group: self.config.group.clone(),
                member_id: self.config.member_id.clone(),
                topics: self
                    .topics
                    .iter()
                    .map(|t| TopicPartitions {
                        topic: t.clone(),
                        partitions: Vec::new(),
                    })
                    .collect(),
                max_records: self.config.max_records,
                max_wait_ms: wait.as_millis().min(60_000) as u32,
                settings: ShareSettings {
                    lock_ms: self.config.lock.as_millis().min(u128::from(u32::MAX)) as u32,
                    max_deliveries: self.config.max_deliveries,
                    dead_letter_topic: self.config.dead_letter_topic.clone(),
                },
            }))? {
                Response::ShareFetch(r) => r,
                other => {
                    return Err(ClientError::Unexpected(format!(
                        "expected a share fetch response, got {other:?}"
                    )))
                }
            };
            let records = self.decode(response)?;
            if !records.is_empty() || Instant::now() >= deadline {
                let poll = self.polls;
                let taken = records.iter().map(|r| {
                    (
                        r.record.topic.clone(),
                        r.record.partition,
                        r.record.offset,
                        poll,
                    )
                });
                self.last_polled.extend(taken);
                return Ok(records);
            }
        }
    }

    /// Accepts a record: processed, never delivered again.
    pub fn ack(&mut self, r: &ShareRecord) {
        self.settle(r, AckType::Accept, Duration::ZERO);
    }

    /// Gives a record back: delivered again (to any consumer) at once.
    pub fn release(&mut self, r: &ShareRecord) {
        self.settle(r, AckType::Release, Duration::ZERO);
    }

    /// Could not process it now: delivered again after `delay`.
    pub fn nack(&mut self, r: &ShareRecord, delay: Duration) {
        self.settle(r, AckType::Nack, delay);
    }

    /// Cannot ever process it: never delivered again, copied to the dead-letter topic.
    pub fn reject(&mut self, r: &ShareRecord) {
        self.settle(r, AckType::Reject, Duration::ZERO);
    }

    fn settle(&mut self, r: &ShareRecord, kind: AckType, delay: Duration) {
        let (topic, partition, offset) = (&r.record.topic, r.record.partition, r.record.offset);
        // Settled by hand: auto mode must not accept it again, nor drop release it.
        let mut poll = self.polls;
        self.last_polled.retain(|(t, p, o, from)| {
            let this = t == topic && *p == partition && *o == offset;
            if this {
                poll = *from;
            }
            !this
        });
        let delay_ms = delay.as_millis().min(u128::from(u32::MAX)) as u32;
        self.queue(&topic.clone(), partition, offset, poll, kind, delay_ms);
    }

    fn queue(
        &mut self,
        topic: &Arc<str>,
        partition: u32,
        offset: i64,
        poll: u64,
        kind: AckType,
        delay_ms: u32,
    ) {
        let ranges = self.pending.entry((topic.clone(), partition)).or_default();
        match ranges.last_mut() {
            Some((r, from))
                if r.last + 1 == offset
                    && *from == poll
                    && r.kind == kind
                    && r.delay_ms == delay_ms =>
            {
                r.last = offset;
            }
            _ => ranges.push((
                AckRange {
                    first: offset,
                    last: offset,
                    kind,
                    delay_ms,
                },
                poll,
            )),
        }
    }

    /// Sends the pending acknowledgements now. An acknowledgement the broker refuses (the
    /// lock had run out, so the record may be with another consumer) is an error with code
    /// `RecordNotHeld`; the others still count.
    pub fn commit(&mut self) -> Result<(), ClientError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let topics = TopicAcks::group(std::mem::take(&mut self.pending).into_iter().map(
            |((topic, partition), ranges)| {
                let ranges = ranges.into_iter().map(|(range, _)| range).collect();
                (topic, PartitionAcks { partition, ranges })
            },
        ));
        match self.client.call(Request::ShareAck(ShareAckRequest {
            group: self.config.group.clone(),
            member_id: self.config.member_id.clone(),
            topics,
        }))? {
            Response::ShareAck(r) => check_results(r),
            other => Err(ClientError::Unexpected(format!(
                "expected a share ack response, got {other:?}"
            ))),
        }
    }

    /// The records of a share fetch that lie inside the acquired ranges.
    fn decode(&self, response: ShareFetchResponse) -> Result<Vec<ShareRecord>, ClientError> {
        let mut out = Vec::new();
        for t in response.topics {
            let topic: Arc<str> = Arc::from(t.topic.as_str());
            for p in t.partitions {
                if p.error != ErrorCode::None {
                    return Err(WireError::new(
                        p.error,
                        format!("{}/{}: {}", topic, p.partition, p.message),
                    )
                    .into());
                }
                decode_acquired(&topic, p.partition, &p.records, &p.acquired, &mut out)?;
            }
        }
        Ok(out)
    }
}

fn decode_acquired(
    topic: &Arc<str>,
    partition: u32,
    records: &Bytes,
    acquired: &[AcquiredRange],
    out: &mut Vec<ShareRecord>,
) -> Result<(), ClientError> {
    let corrupt = |offset: i64, next_offset: i64, e: batch::BatchError| ClientError::CorruptBatch {
        topic: topic.to_string(),
        partition,
        offset,
        next_offset,
        reason: e.to_string(),
    };
    for b in batch::batches(records) {
        let (start, header) = b.map_err(|e| corrupt(-1, 0, e))?;
        let bytes = records.slice(start..start + header.total_len());
        let next = header.last_offset().saturating_add(1);
        for r in batch::records(&bytes).map_err(|e| corrupt(header.base_offset, next, e))? {
            let r = r.map_err(|e| corrupt(header.base_offset, next, e))?;
            let Some(range) = acquired
                .iter()
                .find(|a| a.first <= r.offset && r.offset <= a.last)
            else {
                continue;
            };
            out.push(ShareRecord {
                record: ConsumerRecord {
                    topic: topic.clone(),
                    partition,
                    offset: r.offset,
                    timestamp: r.timestamp,
                    key: r.key.map(|k| bytes.slice_ref(k)),
                    value: r.value.map(|v| bytes.slice_ref(v)),
                    headers: r
                        .headers
                        .iter()
                        .map(|(k, v)| (bytes.slice_ref(k), v.map(|v| bytes.slice_ref(v))))
                        .collect(),
                },
                delivery: range.delivery,
            });
        }
    }
    Ok(())
}

impl Drop for ShareConsumer {
    /// Sends what is pending. In auto mode the last poll's records are accepted; in manual
    /// mode the ones not acknowledged are released, so other consumers get them at once
    /// instead of when their locks run out.
    fn drop(&mut self) {
        let kind = match self.config.ack_mode {
            AckMode::Auto => AckType::Accept,
            AckMode::Manual => AckType::Release,
        };
        for (topic, partition, offset, poll) in std::mem::take(&mut self.last_polled) {
            self.queue(&topic, partition, offset, poll, kind, 0);
        }
        if let Err(e) = self.commit() {
            tracing::debug!("share consumer's last acknowledgements: {e}");
        }
    }
}
