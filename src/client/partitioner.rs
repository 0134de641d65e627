//! Choosing a partition for a record the way Kafka's clients do, so that the same key lands
//! on the same partition number with Eventflow and with Kafka.
//!
//! Keyed records: `toPositive(murmur2(key)) % partitions`, with Kafka's murmur2 (seed
//! `0x9747b28c`, little-endian 4-byte blocks) and `toPositive(n) = n & 0x7fffffff`.
//! Unkeyed records: sticky — every unkeyed record of a topic goes to one partition until the
//! producer closes that partition's batch, then a different partition is picked, so batches
//! fill up instead of being spread one record each.

use crate::fasthash::FastMap;

/// Kafka's 32-bit murmur2 of `data` (as `org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a keyed record among `partitions` (at least 1).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    let positive = (murmur2(key) & 0x7fff_ffff) as u32;
    positive % partitions.max(1)
}

/// Picks partitions for unkeyed records: one partition per topic until told to move on.
#[derive(Debug)]
pub struct StickyPartitioner {
    current: FastMap<String, u32>,
    /// The topic asked for last and its partition (`None`: not known), checked before
    /// `current`: a producer usually sends to one topic many times in a row.
    last_topic: String,
    last_partition: Option<u32>,
    /// The caller's number for `last_topic`, when it gave one
    /// ([`StickyPartitioner::partition_of`]).
    last_id: Option<usize>,
    /// xorshift state: a different partition each time, no global RNG.
    state: u64,
}

impl Default for StickyPartitioner {
    fn default() -> Self {
        Self::new()
    }
}

impl StickyPartitioner {
    /// A partitioner seeded from the clock and the process id.
    pub fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self::with_seed(nanos ^ u64::from(std::process::id()).rotate_left(32))
    }

    /// A partitioner with a fixed seed (tests).
    pub fn with_seed(seed: u64) -> Self {
        StickyPartitioner {
            current: FastMap::default(),
            last_topic: String::new(),
            last_partition: None,
            last_id: None,
            state: seed | 1,
        }
    }

    fn next_random(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    /// [`StickyPartitioner::partition`] for a caller that numbers its topics (`id`: one
    /// number per topic name and one name per number, as [`Accumulator::topic_index`]
    /// gives): when `id` is the topic asked for last, the name is not compared again.
    ///
    /// [`Accumulator::topic_index`]: super::accumulator::Accumulator::topic_index
    pub fn partition_of(&mut self, id: usize, topic: &str, partitions: u32) -> u32 {
        if let Some(p) = self.last_partition {
            if p < partitions.max(1) && self.last_id == Some(id) {
                return p;
            }
        }
        let p = self.partition(topic, partitions);
        self.last_id = Some(id);
        p
    }

    /// The partition for the next unkeyed record of `topic`.
    pub fn partition(&mut self, topic: &str, partitions: u32) -> u32 {
        let partitions = partitions.max(1);
        if let Some(p) = self.last_partition {
            if p < partitions && self.last_topic == topic {
                return p;
            }
        }
        let p = match self.current.get(topic) {
            Some(&p) if p < partitions => p,
            _ => {
                let p = (self.next_random() % u64::from(partitions)) as u32;
                self.current.insert(topic.to_string(), p);
                p
            }
        };
        if self.last_topic != topic {
            topic.clone_into(&mut self.last_topic);
            self.last_id = None;
        }
        self.last_partition = Some(p);
        p
    }

    /// The batch of `partition` was closed: the next unkeyed record of `topic` goes to
    /// another partition (when there is more than one).
    pub fn batch_closed(&mut self, topic: &str, partition: u32, partitions: u32) {
        if self.current.get(topic) != Some(&partition) || partitions <= 1 {
            return;
        }
        let step = 1 + (self.next_random() % u64::from(partitions - 1)) as u32;
        let next = (partition + step) % partitions;
        self.current.insert(topic.to_string(), next);
        if self.last_topic == topic {
            self.last_partition = Some(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // The vectors of Kafka's own test of `Utils.murmur2`, plus short keys whose values
        // other Kafka-compatible clients check against the Java implementation.
        let cases: [(&[u8], i32); 11] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
            (b"1", -1_993_445_489),
            (b"12", 126_087_238),
            (b"123", -267_702_483),
            (b"1234", -1_614_185_708),
            (b"12345", -1_188_365_604),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key), expected, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn keyed_partition_is_positive_murmur2_modulo_count() {
        // -973932308 & 0x7fffffff = 1173551340.
        assert_eq!(partition_for_key(b"21", 2_000_000_000), 1_173_551_340);
        assert_eq!(partition_for_key(b"21", 6), 1_173_551_340 % 6);
        assert_eq!(partition_for_key(b"abc", 3), 479_470_107 % 3);
        assert_eq!(partition_for_key(b"anything", 1), 0);
    }

    #[test]
    fn unkeyed_records_stick_until_the_batch_closes() {
        let mut p = StickyPartitioner::with_seed(42);
        let first = p.partition("t", 4);
        for _ in 0..10 {
            assert_eq!(p.partition("t", 4), first);
        }
        p.batch_closed("t", first, 4);
        let second = p.partition("t", 4);
        assert_ne!(second, first);
        // Closing a batch of another partition changes nothing.
        p.batch_closed("t", first, 4);
        assert_eq!(p.partition("t", 4), second);
        // Topics are independent, and a single partition is always 0.
        assert_eq!(p.partition("one", 1), 0);
        p.batch_closed("one", 0, 1);
        assert_eq!(p.partition("one", 1), 0);
        assert_eq!(p.partition("t", 4), second);
        // A topic that shrank gets a partition it has.
        assert!(p.partition("t", 1) == 0);
    }

    #[test]
    fn numbered_topics_stick_like_named_ones() {
        // The same calls by name and by number, interleaved with calls by name alone for a
        // third topic, give the same partitions as the names alone.
        let (mut named, mut numbered) = (
            StickyPartitioner::with_seed(9),
            StickyPartitioner::with_seed(9),
        );
        let ids = |topic: &str| usize::from(topic == "b");
        for step in 0..40u32 {
            let topic = if step % 7 < 4 { "a" } else { "b" };
            let got = numbered.partition_of(ids(topic), topic, 5);
            assert_eq!(got, named.partition(topic, 5), "step {step}");
            if step % 5 == 4 {
                named.batch_closed(topic, got, 5);
                numbered.batch_closed(topic, got, 5);
            }
            if step % 9 == 8 {
                // A caller mixing both: the name call moves "last" without a number.
                assert_eq!(numbered.partition("c", 5), named.partition("c", 5));
            }
        }
    }
}
