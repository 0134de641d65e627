//! The producer's batching: records accumulate per partition into RecordBatch v2 until a
//! batch reaches `batch_bytes` or has waited `linger`, like Kafka's `batch.size` and
//! `linger.ms`. Pure and clock-free (callers pass `now`), so the rules are tested without a
//! broker; the producer's I/O loop drives it.
//!
//! Memory is bounded: `buffer_bytes` caps the encoded bytes held in open batches and in
//! batches sent but not yet acknowledged; the caller [`Accumulator::release`]s a batch's
//! bytes when its produce completes.

use crate::fasthash::FastMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::protocol::batch::{BatchBuilder, BATCH_HEADER_LEN};

/// Bytes a record adds to a batch beyond its key, value and header bytes (a bound on the
/// varint fields: length, attributes, timestamp and offset deltas, lengths, header count).
const RECORD_OVERHEAD: usize = 5 + 1 + 10 + 5 + 5 + 5 + 5;

/// Batching limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccumulatorConfig {
    /// A batch is closed once adding a record would take it past this many bytes (a single
    /// larger record still gets a batch of its own).
    pub batch_bytes: usize,
    /// A non-empty batch is ready this long after its first record, full or not.
    pub linger: Duration,
    /// Most encoded bytes held at once (open batches plus unacknowledged ones).
    pub buffer_bytes: usize,
}

impl Default for AccumulatorConfig {
    /// Kafka's producer defaults: 16 KiB batches, 5 ms linger (Kafka 4.0), 32 MiB buffer.
    fn default() -> Self {
        AccumulatorConfig {
            batch_bytes: 16 * 1024,
            linger: Duration::from_millis(5),
            buffer_bytes: 32 << 20,
        }
    }
}

/// A topic partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
}

/// A closed batch, ready to send.
#[derive(Debug)]
pub struct ReadyBatch<T> {
    /// Where it goes.
    pub to: TopicPartition,
    /// The encoded batch (base offset 0; the broker assigns it).
    pub records: BytesMut,
    /// One token per record, in record order (offset delta = index).
    pub tokens: Vec<T>,
    /// Bytes to [`Accumulator::release`] once the batch's produce completes.
    pub accounted: usize,
}

/// Why a record was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// Taking the record would pass `buffer_bytes`; wait for acknowledgements (or fail).
    #[error("producer buffer full: {buffered} of {limit} bytes held, record needs {needed}")]
    BufferFull {
        /// Bytes held now.
        buffered: usize,
        /// The limit.
        limit: usize,
        /// What the record would add.
        needed: usize,
    },
}

struct OpenBatch<T> {
    builder: BatchBuilder,
    tokens: Vec<T>,
    created: Instant,
    accounted: usize,
}

/// Open batches by topic, then partition (two levels, so that appending to an open batch
/// looks it up by `&str` without allocating).
pub struct Accumulator<T> {
    config: AccumulatorConfig,
    open: FastMap<String, FastMap<u32, OpenBatch<T>>>,
    buffered: usize,
}

impl<T> Accumulator<T> {
    /// An empty accumulator.
    pub fn new(config: AccumulatorConfig) -> Self {
        Accumulator {
            config,
            open: FastMap::default(),
            buffered: 0,
        }
    }

    /// Encoded bytes held (open and unacknowledged batches).
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    fn open_batch(&self, topic: &str, partition: u32) -> Option<&OpenBatch<T>> {
        self.open.get(topic)?.get(&partition)
    }

    /// Adds a record to the open batch of `partition` of `topic`. Returns the batches this
    /// closed: the previous open batch if the record did not fit in it, and the new one if
    /// the record filled it. On [`AppendError::BufferFull`] the token comes back untouched.
    /// `now` is called only when a batch is opened (its linger starts then), so appending
    /// to an open batch reads no clock.
    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &mut self,
        topic: &str,
        partition: u32,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
        token: T,
        now: impl FnOnce() -> Instant,
    ) -> Result<Vec<ReadyBatch<T>>, (AppendError, T)> {
        let estimate = RECORD_OVERHEAD
            + key.map_or(0, <[u8]>::len)
            + value.map_or(0, <[u8]>::len)
            + headers
                .iter()
                .map(|(k, v)| 10 + k.len() + v.map_or(0, <[u8]>::len))
                .sum::<usize>();
        // Fast path: the record fits in the open batch (one lookup, no allocation).
        if let Some(batch) = self
            .open
            .get_mut(topic)
            .and_then(|parts| parts.get_mut(&partition))
        {
            let fits = batch.builder.size_bytes() + estimate <= self.config.batch_bytes;
            if fits && self.buffered + estimate <= self.config.buffer_bytes {
                let before = batch.builder.size_bytes();
                batch.builder.push(timestamp, key, value, headers);
                batch.tokens.push(token);
                let added = batch.builder.size_bytes() - before;
                batch.accounted += added;
                self.buffered += added;
                if batch.builder.size_bytes() >= self.config.batch_bytes {
                    return Ok(self.close(topic, partition).into_iter().collect());
                }
                return Ok(Vec::new());
            }
        }
        let mut closed = Vec::new();
        let current = self.open_batch(topic, partition);
        let fits = current.is_none_or(|b| {
            b.builder.is_empty() || b.builder.size_bytes() + estimate <= self.config.batch_bytes
        });
        let needed = estimate
            + if fits && current.is_some() {
                0
            } else {
                BATCH_HEADER_LEN
            };
        if self.buffered + needed > self.config.buffer_bytes && self.buffered > 0 {
            return Err((
                AppendError::BufferFull {
                    buffered: self.buffered,
                    limit: self.config.buffer_bytes,
                    needed,
                },
                token,
            ));
        }
        if !fits {
            closed.extend(self.close(topic, partition));
        }
        if !self.open.contains_key(topic) {
            self.open.insert(topic.to_string(), FastMap::default());
        }
        let capacity = self.config.batch_bytes.min(1 << 20);
        let batch = self
            .open
            .get_mut(topic)
            .expect("inserted above")
            .entry(partition)
            .or_insert_with(|| OpenBatch {
                builder: BatchBuilder::with_capacity(capacity),
                tokens: Vec::new(),
                created: now(),
                accounted: 0,
            });
        let before = batch.builder.size_bytes();
        batch.builder.push(timestamp, key, value, headers);
        batch.tokens.push(token);
        let added = batch.builder.size_bytes() - before;
        batch.accounted += added;
        let full = batch.builder.size_bytes() >= self.config.batch_bytes;
        self.buffered += added;
        if full {
            closed.extend(self.close(topic, partition));
        }
        Ok(closed)
    }

    fn close(&mut self, topic: &str, partition: u32) -> Option<ReadyBatch<T>> {
        let batch = self.open.get_mut(topic)?.remove(&partition)?;
        if batch.tokens.is_empty() {
            return None;
        }
        Some(ReadyBatch {
            to: TopicPartition {
                topic: topic.to_string(),
                partition,
            },
            records: batch.builder.finish(),
            tokens: batch.tokens,
            accounted: batch.accounted,
        })
    }

    fn close_all(&mut self, mut which: Vec<(String, u32)>) -> Vec<ReadyBatch<T>> {
        which.sort();
        which
            .iter()
            .filter_map(|(topic, partition)| self.close(topic, *partition))
            .collect()
    }

    /// Closes and returns every batch that has lingered long enough.
    pub fn ready(&mut self, now: Instant) -> Vec<ReadyBatch<T>> {
        let linger = self.config.linger;
        let due = self
            .open
            .iter()
            .flat_map(|(topic, parts)| {
                parts
                    .iter()
                    .filter(move |(_, b)| now.saturating_duration_since(b.created) >= linger)
                    .map(move |(p, _)| (topic.clone(), *p))
            })
            .collect();
        self.close_all(due)
    }

    /// When the oldest open batch becomes ready (None when nothing is open).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open
            .values()
            .flat_map(|parts| parts.values())
            .map(|b| b.created + self.config.linger)
            .min()
    }

    /// Closes and returns every open batch (flush).
    pub fn drain(&mut self) -> Vec<ReadyBatch<T>> {
        let all = self
            .open
            .iter()
            .flat_map(|(topic, parts)| parts.keys().map(move |p| (topic.clone(), *p)))
            .collect();
        self.close_all(all)
    }

    /// Gives back a completed batch's bytes to the buffer.
    pub fn release(&mut self, accounted: usize) {
        self.buffered = self.buffered.saturating_sub(accounted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::batch::{records, validate};

    fn tp(p: u32) -> TopicPartition {
        TopicPartition {
            topic: "t".into(),
            partition: p,
        }
    }

    fn config(batch_bytes: usize, linger_ms: u64, buffer_bytes: usize) -> AccumulatorConfig {
        AccumulatorConfig {
            batch_bytes,
            linger: Duration::from_millis(linger_ms),
            buffer_bytes,
        }
    }

    #[test]
    fn batches_close_at_batch_bytes_and_keep_record_order() {
        let mut acc = Accumulator::new(config(1000, 1000, 1 << 20));
        let now = Instant::now();
        let value = [7u8; 100];
        let mut closed = Vec::new();
        for i in 0..25u32 {
            closed.extend(
                acc.append("t", 0, 1, None, Some(&value), &[], i, || now)
                    .unwrap(),
            );
        }
        closed.extend(acc.drain());
        assert!(closed.len() >= 3, "{} batches", closed.len());
        let mut next = 0;
        for batch in &closed {
            assert!(batch.records.len() <= 1000, "{}", batch.records.len());
            validate(&batch.records, 1 << 20).unwrap();
            let n = records(&batch.records).unwrap().count();
            assert_eq!(n, batch.tokens.len());
            for t in &batch.tokens {
                assert_eq!(*t, next);
                next += 1;
            }
        }
        assert_eq!(next, 25);
    }

    #[test]
    fn a_record_larger_than_a_batch_gets_its_own() {
        let mut acc = Accumulator::new(config(100, 1000, 1 << 20));
        let now = Instant::now();
        let big = [1u8; 500];
        let closed = acc
            .append("t", 0, 1, None, Some(&big), &[], 0, || now)
            .unwrap();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].tokens, vec![0]);
        assert!(acc.drain().is_empty());
    }

    #[test]
    fn linger_makes_partial_batches_ready() {
        let mut acc = Accumulator::new(config(1 << 20, 5, 1 << 20));
        let t0 = Instant::now();
        acc.append("t", 0, 1, Some(b"k"), Some(b"v"), &[], 'a', || t0)
            .unwrap();
        acc.append("t", 1, 1, None, Some(b"w"), &[], 'b', || {
            t0 + Duration::from_millis(3)
        })
        .unwrap();
        assert_eq!(acc.next_deadline(), Some(t0 + Duration::from_millis(5)));
        assert!(acc.ready(t0 + Duration::from_millis(4)).is_empty());
        let ready = acc.ready(t0 + Duration::from_millis(5));
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].to, tp(0));
        assert_eq!(acc.next_deadline(), Some(t0 + Duration::from_millis(8)));
        let ready = acc.ready(t0 + Duration::from_millis(8));
        assert_eq!(ready[0].tokens, vec!['b']);
        assert_eq!(acc.next_deadline(), None);
    }

    #[test]
    fn the_buffer_bound_refuses_then_accepts_after_release() {
        let mut acc = Accumulator::new(config(1 << 20, 5, 600));
        let now = Instant::now();
        let value = [0u8; 200];
        acc.append("t", 0, 1, None, Some(&value), &[], 1, || now)
            .unwrap();
        acc.append("t", 0, 1, None, Some(&value), &[], 2, || now)
            .unwrap();
        let (err, token) = acc
            .append("t", 0, 1, None, Some(&value), &[], 3, || now)
            .unwrap_err();
        assert!(
            matches!(err, AppendError::BufferFull { limit: 600, .. }),
            "{err}"
        );
        assert_eq!(token, 3);
        let sent = acc.drain();
        assert_eq!(sent.len(), 1);
        // Still held until the produce completes.
        assert!(acc
            .append("t", 0, 1, None, Some(&value), &[], 3, || now)
            .is_err());
        acc.release(sent[0].accounted);
        assert_eq!(acc.buffered(), 0);
        acc.append("t", 0, 1, None, Some(&value), &[], 3, || now)
            .unwrap();
    }
}
