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
//!
//! Recovery: every request waits at most `request_timeout` for its answer (a share fetch:
//! its long-poll wait on top). A connection that breaks or times out, or a broker that
//! answers `ShuttingDown`, is dropped and opened again after a backoff ([`Backoff`]:
//! `reconnect_backoff` doubling to `reconnect_backoff_max`, ±20 % jitter), and the request
//! is sent again; a `poll` whose deadline comes first returns no records and keeps its
//! acknowledgements for the next one. Delivery stays at least once: records a lost share
//! fetch answer had taken are delivered again when their locks run out, and an
//! acknowledgement sent again after a broken connection that the broker had already
//! applied is answered `RecordNotHeld`, which is then only logged. With
//! `reconnect_timeout` set, a broker unreachable for that long is an error.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::backoff::Backoff;
use super::consumer::ConsumerRecord;
use super::{check_results, Client, ClientError, DEFAULT_REQUEST_TIMEOUT};
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
    /// Longest wait for an answer (a share fetch: on top of its long-poll wait).
    pub request_timeout: Duration,
    /// First pause before reconnecting to a broker that went away; it doubles up to
    /// `reconnect_backoff_max`, with ±20 % jitter.
    pub reconnect_backoff: Duration,
    /// Longest pause between reconnects.
    pub reconnect_backoff_max: Duration,
    /// Give up (an error) once the broker has been unreachable this long; `None`: reconnect
    /// for ever, as the plain consumer does.
    pub reconnect_timeout: Option<Duration>,
    /// Who to log in as on a broker that requires authentication (`None`: anonymous).
    pub credentials: Option<super::Credentials>,
    /// Connect in TLS, trusting these CAs (`None`: plaintext).
    pub tls: Option<super::ClientTls>,
}

impl ShareConsumerConfig {
    /// Settings for `group` on a local broker: 30 s locks, 5 deliveries, dead letters to
    /// `<group>.dlq`, 500 records per partition per poll, auto acknowledgement, 30 s
    /// request timeout, reconnects for ever (50 ms doubling to 2 s).
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
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            reconnect_backoff: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(2),
            reconnect_timeout: None,
            credentials: None,
            tls: None,
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
    /// `None` after the connection broke, until the next request reconnects.
    client: Option<Client>,
    /// Since when the broker has been unreachable, and the pauses between attempts.
    down: Option<(Instant, Backoff)>,
    topics: Vec<String>,
    /// Acknowledgements not sent yet, per (topic, partition), with the poll that took
    /// their records: a range only spans records of one poll, whose locks end together.
    pending: PendingAcks,
    /// Polls so far.
    polls: u64,
    /// Records handed out and not settled: in auto mode the last poll's (accepted at the
    /// next), in manual mode every poll's until the application acknowledges them.
    last_polled: Vec<(Arc<str>, u32, i64, u64)>,
    /// The next acknowledgements go over a connection opened after one broke: a
    /// `RecordNotHeld` answer to them may mean they were applied before it broke.
    resent: bool,
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
        let client = connect(&config)?;
        Ok(ShareConsumer {
            config,
            client: Some(client),
            down: None,
            topics: topics.iter().map(ToString::to_string).collect(),
            pending: BTreeMap::new(),
            polls: 0,
            last_polled: Vec::new(),
            resent: false,
        })
    }

    /// Sends pending acknowledgements, then waits up to `timeout` for records to take.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<ShareRecord>, ClientError> {
        if self.config.ack_mode == AckMode::Auto {
            for (topic, partition, offset, poll) in std::mem::take(&mut self.last_polled) {
                self.queue(&topic, partition, offset, poll, AckType::Accept, 0);
            }
        }
        let deadline = Instant::now() + timeout;
        if !self.send_acks(deadline)? {
            return Ok(Vec::new());
        }
        self.polls += 1;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let request = ShareFetchRequest {
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
            };
            let make = || Request::ShareFetch(request.clone());
            let Some(response) = self.call(make, wait, deadline)? else {
                return Ok(Vec::new());
            };
            let response = match response {
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
    /// A broker that cannot be reached within `request_timeout` is a `Timeout` error, and
    /// the acknowledgements stay pending for the next `poll` or `commit`.
    pub fn commit(&mut self) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.config.request_timeout;
        if self.send_acks(deadline)? {
            return Ok(());
        }
        Err(ClientError::Timeout {
            addr: self.config.bootstrap.clone(),
            after: self.config.request_timeout,
        })
    }

    /// Sends the pending acknowledgements, reconnecting as needed until `deadline`. Returns
    /// false if the broker could not be reached by then (they stay pending).
    fn send_acks(&mut self, deadline: Instant) -> Result<bool, ClientError> {
        if self.pending.is_empty() {
            return Ok(true);
        }
        let pending = std::mem::take(&mut self.pending);
        let topics = TopicAcks::group(pending.iter().map(|((topic, partition), ranges)| {
            let ranges = ranges.iter().map(|(range, _)| *range).collect();
            (
                topic.clone(),
                PartitionAcks {
                    partition: *partition,
                    ranges,
                },
            )
        }));
        let request = ShareAckRequest {
            group: self.config.group.clone(),
            member_id: self.config.member_id.clone(),
            topics,
        };
        let broke_before = self.down.is_some();
        let make = || Request::ShareAck(request.clone());
        let response = match self.call(make, Duration::ZERO, deadline) {
            Ok(Some(response)) => response,
            Ok(None) => {
                // Not delivered: keep them, ahead of anything acknowledged since.
                for (key, mut ranges) in pending {
                    let later = self.pending.remove(&key).unwrap_or_default();
                    ranges.extend(later);
                    self.pending.insert(key, ranges);
                }
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let result = match response {
            Response::ShareAck(r) => check_results(r),
            other => Err(ClientError::Unexpected(format!(
                "expected a share ack response, got {other:?}"
            ))),
        };
        match result {
            // Sent again over a new connection: the broker may have applied them already.
            Err(e) if broke_before || self.resent => {
                if e.code() != Some(ErrorCode::RecordNotHeld) {
                    return Err(e);
                }
                tracing::warn!("acknowledgements sent again after a reconnect: {e}");
                self.resent = false;
                Ok(true)
            }
            other => other.map(|()| true),
        }
    }

    /// Sends `request()` and waits for its answer (`wait` is its long-poll time), reconnecting
    /// after a broken connection or a retriable broker error and sending it again, until
    /// `deadline`: `None` if that passed first. An error once `reconnect_timeout` has
    /// passed, or one that is not worth retrying.
    fn call(
        &mut self,
        request: impl Fn() -> Request,
        wait: Duration,
        deadline: Instant,
    ) -> Result<Option<Response>, ClientError> {
        loop {
            let result = match self.client.take() {
                Some(client) => Ok(client),
                None => connect(&self.config),
            }
            .and_then(|mut client| {
                client.set_read_timeout(Some(wait + self.config.request_timeout))?;
                let response = client.call(request());
                if response.is_ok() || !response.as_ref().is_err_and(ClientError::is_retriable) {
                    self.client = Some(client);
                }
                response
            });
            let err = match result {
                Ok(response) => {
                    if self.down.take().is_some() {
                        self.resent = true;
                    }
                    return Ok(Some(response));
                }
                Err(e) if e.is_retriable() => e,
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            let config = &self.config;
            let (since, backoff) = self.down.get_or_insert_with(|| {
                let backoff = Backoff::new(config.reconnect_backoff, config.reconnect_backoff_max);
                (now, backoff)
            });
            if config
                .reconnect_timeout
                .is_some_and(|limit| now.duration_since(*since) >= limit)
            {
                self.down = None;
                return Err(err);
            }
            let pause = backoff.next_delay();
            tracing::warn!(
                "{err}; reconnecting in {} ms (attempt {})",
                pause.as_millis(),
                backoff.attempts()
            );
            if now + pause >= deadline {
                std::thread::sleep(deadline.saturating_duration_since(now));
                return Ok(None);
            }
            std::thread::sleep(pause);
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

/// Opens a connection to `config.bootstrap` within its request timeout and says hello.
fn connect(config: &ShareConsumerConfig) -> Result<Client, ClientError> {
    let mut client = Client::connect_secure(
        config.bootstrap.as_str(),
        config.request_timeout,
        config.credentials.as_ref(),
        config.tls.as_ref(),
    )?;
    client.set_read_timeout(Some(config.request_timeout))?;
    client.api_versions()?;
    Ok(client)
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
        // One attempt, no reconnect loop: a consumer going away does not wait for a broker
        // that is down (the records' locks run out there instead).
        match self.send_acks(Instant::now()) {
            Ok(true) => {}
            Ok(false) => tracing::debug!("share consumer's last acknowledgements not sent"),
            Err(e) => tracing::debug!("share consumer's last acknowledgements: {e}"),
        }
    }
}
