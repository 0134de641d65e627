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

/// The open batches of one topic, indexed by partition (a topic's partitions are numbered
/// from 0, so the vector is as long as the highest partition used).
struct TopicBatches<T> {
    name: String,
    partitions: Vec<Option<OpenBatch<T>>>,
}

/// Open batches by topic, then partition. A producer usually sends to one topic many times
/// in a row, so the topic used last is tried first with a plain comparison of names; other
/// topics are found through a hash of their name. Neither allocates.
pub struct Accumulator<T> {
    config: AccumulatorConfig,
    topics: Vec<TopicBatches<T>>,
    by_name: FastMap<String, usize>,
    /// Index in `topics` of the topic appended to last.
    last: usize,
    buffered: usize,
}

impl<T> Accumulator<T> {
    /// An empty accumulator.
    pub fn new(config: AccumulatorConfig) -> Self {
        Accumulator {
            config,
            topics: Vec::new(),
            by_name: FastMap::default(),
            last: 0,
            buffered: 0,
        }
    }

    /// Encoded bytes held (open and unacknowledged batches).
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// The index under which `topic`'s batches are kept, added if new. It stays the same for
    /// the accumulator's life, so a caller that knows the topic has not changed since its
    /// last record can pass the index to [`Accumulator::append_at`] and skip the lookup.
    pub fn topic_index(&mut self, topic: &str) -> usize {
        if self.topics.get(self.last).is_some_and(|t| t.name == topic) {
            return self.last;
        }
        let index = match self.by_name.get(topic) {
            Some(&index) => index,
            None => {
                let index = self.topics.len();
                self.topics.push(TopicBatches {
                    name: topic.to_string(),
                    partitions: Vec::new(),
                });
                self.by_name.insert(topic.to_string(), index);
                index
            }
        };
        self.last = index;
        index
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
        let index = self.topic_index(topic);
        self.append_at(index, partition, timestamp, key, value, headers, token, now)
    }

    /// [`Accumulator::append`] to the topic with index `index`, from
    /// [`Accumulator::topic_index`] (the name is not compared again).
    ///
    /// # Panics
    ///
    /// If `index` is not one that `topic_index` returned.
    #[allow(clippy::too_many_arguments)]
    pub fn append_at(
        &mut self,
        index: usize,
        partition: u32,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
        token: T,
        now: impl FnOnce() -> Instant,
    ) -> Result<Vec<ReadyBatch<T>>, (AppendError, T)> {
        let mut estimate =
            RECORD_OVERHEAD + key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len);
        for (k, v) in headers {
            estimate += 10 + k.len() + v.map_or(0, <[u8]>::len);
        }
        self.last = index;
        let slot = partition as usize;
        let (batch_bytes, buffer_bytes) = (self.config.batch_bytes, self.config.buffer_bytes);
        let partitions = &mut self.topics[index].partitions;
        if partitions.len() <= slot {
            partitions.resize_with(slot + 1, || None);
        }
        // Fast path: the record fits in the open batch (no lookup beyond the topic, no
        // allocation).
        if let Some(batch) = partitions[slot].as_mut() {
            let fits = batch.builder.size_bytes() + estimate <= batch_bytes;
            if fits && self.buffered + estimate <= buffer_bytes {
                let before = batch.builder.size_bytes();
                batch.builder.push(timestamp, key, value, headers);
                batch.tokens.push(token);
                let added = batch.builder.size_bytes() - before;
                batch.accounted += added;
                self.buffered += added;
                if batch.builder.size_bytes() >= batch_bytes {
                    return Ok(self.close(index, slot).into_iter().collect());
                }
                return Ok(Vec::new());
            }
        }
        let mut closed = Vec::new();
        let current = self.topics[index].partitions[slot].as_ref();
        let fits = current.is_none_or(|b| {
            b.builder.is_empty() || b.builder.size_bytes() + estimate <= batch_bytes
        });
        let needed = estimate
            + if fits && current.is_some() {
                0
            } else {
                BATCH_HEADER_LEN
            };
        if self.buffered + needed > buffer_bytes && self.buffered > 0 {
            return Err((
                AppendError::BufferFull {
                    buffered: self.buffered,
                    limit: buffer_bytes,
                    needed,
                },
                token,
            ));
        }
        if !fits {
            closed.extend(self.close(index, slot));
        }
        let capacity = batch_bytes.min(1 << 20);
        let batch = self.topics[index].partitions[slot].get_or_insert_with(|| OpenBatch {
            builder: BatchBuilder::with_capacity(capacity),
            // Room for as many records as fit if the rest are the size of this one, so the
            // vector rarely grows while the batch fills (at most 4,096: a batch of tiny
            // records grows it instead of holding memory for records that may not come).
            tokens: Vec::with_capacity((capacity / estimate).clamp(1, 4096)),
            created: now(),
            accounted: 0,
        });
        let before = batch.builder.size_bytes();
        batch.builder.push(timestamp, key, value, headers);
        batch.tokens.push(token);
        let added = batch.builder.size_bytes() - before;
        batch.accounted += added;
        let full = batch.builder.size_bytes() >= batch_bytes;
        self.buffered += added;
        if full {
            closed.extend(self.close(index, slot));
        }
        Ok(closed)
    }

    fn close(&mut self, index: usize, slot: usize) -> Option<ReadyBatch<T>> {
        let topic = &mut self.topics[index];
        let batch = topic.partitions.get_mut(slot)?.take()?;
        if batch.tokens.is_empty() {
            return None;
        }
        Some(ReadyBatch {
            to: TopicPartition {
                topic: topic.name.clone(),
                partition: slot as u32,
            },
            records: batch.builder.finish(),
            tokens: batch.tokens,
            accounted: batch.accounted,
        })
    }

    /// Closes the open batches `keep` selects, in order of topic name, then partition.
    fn close_where(&mut self, keep: impl Fn(&OpenBatch<T>) -> bool) -> Vec<ReadyBatch<T>> {
        let mut order: Vec<usize> = (0..self.topics.len()).collect();
        order.sort_by(|a, b| self.topics[*a].name.cmp(&self.topics[*b].name));
        let mut closed = Vec::new();
        for index in order {
            for slot in 0..self.topics[index].partitions.len() {
                if self.topics[index].partitions[slot]
                    .as_ref()
                    .is_some_and(&keep)
                {
                    closed.extend(self.close(index, slot));
                }
            }
        }
        closed
    }

    fn open_batches(&self) -> impl Iterator<Item = &OpenBatch<T>> {
        self.topics
            .iter()
            .flat_map(|t| t.partitions.iter().flatten())
    }

    /// Closes and returns every batch that has lingered long enough.
    pub fn ready(&mut self, now: Instant) -> Vec<ReadyBatch<T>> {
        let linger = self.config.linger;
        if !self
            .open_batches()
            .any(|b| now.saturating_duration_since(b.created) >= linger)
        {
            return Vec::new();
        }
        self.close_where(|b| now.saturating_duration_since(b.created) >= linger)
    }

    /// When the oldest open batch becomes ready (None when nothing is open).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open_batches()
            .map(|b| b.created + self.config.linger)
            .min()
    }

    /// Closes and returns every open batch (flush).
    pub fn drain(&mut self) -> Vec<ReadyBatch<T>> {
        self.close_where(|_| true)
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
    fn records_of_interleaved_topics_and_partitions_stay_apart() {
        let mut acc = Accumulator::new(config(1 << 20, 1000, 1 << 20));
        let now = Instant::now();
        for i in 0..30u32 {
            let topic = ["b", "a", "c"][i as usize % 3];
            acc.append(topic, i % 2 * 5, 1, None, Some(b"v"), &[], i, || now)
                .unwrap();
        }
        let closed = acc.drain();
        let got: Vec<(String, u32, Vec<u32>)> = closed
            .iter()
            .map(|b| (b.to.topic.clone(), b.to.partition, b.tokens.clone()))
            .collect();
        let expect = |topic: &str, partition: u32, first: u32| {
            let tokens = (0..30)
                .filter(|i| *i >= first && (i - first).is_multiple_of(6))
                .collect();
            (topic.to_string(), partition, tokens)
        };
        assert_eq!(
            got,
            vec![
                expect("a", 0, 4),
                expect("a", 5, 1),
                expect("b", 0, 0),
                expect("b", 5, 3),
                expect("c", 0, 2),
                expect("c", 5, 5),
            ]
        );
        assert!(acc.drain().is_empty());
        assert_eq!(acc.next_deadline(), None);
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
    fn a_large_record_after_small_ones_closes_both_batches_in_order() {
        let mut acc = Accumulator::new(config(300, 1000, 1 << 20));
        let now = Instant::now();
        let small = acc
            .append("t", 0, 1, None, Some(&[1u8; 100]), &[], 0, || now)
            .unwrap();
        assert!(small.is_empty());
        let closed = acc
            .append("t", 0, 1, None, Some(&[2u8; 400]), &[], 1, || now)
            .unwrap();
        let tokens: Vec<Vec<u32>> = closed.into_iter().map(|b| b.tokens).collect();
        assert_eq!(tokens, vec![vec![0], vec![1]]);
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
