//! Threads, pinning, partition ownership and the rings between shards.
//!
//! A shard is one OS thread pinned to one core, running its own compio (io_uring) runtime.
//! It owns a fixed subset of partitions — [`owner_of`] decides which, as a pure function of
//! (topic, partition, shard count) — and only that thread ever touches their files and
//! state. Shards share nothing on the data path: they exchange messages through the bounded
//! single-producer/single-consumer rings of `mesh.rs` (one `ShardLinks` per shard).

pub mod mesh;
pub mod ring;
pub mod thread;

/// Index of a shard, `0..shard_count`.
pub type ShardId = u16;

/// The shard owning `partition` of `topic` when the broker runs `shard_count` shards.
///
/// Partitions of one topic go round-robin across shards, starting at a shard picked by a
/// stable hash of the topic name, so a topic with at least as many partitions as shards
/// spans every shard and different topics start on different shards. Nothing about
/// ownership is stored: a restart with another `--cores` redistributes partitions without
/// moving data.
pub fn owner_of(topic: &str, partition: u32, shard_count: u16) -> ShardId {
    debug_assert!(shard_count > 0);
    let shards = u64::from(shard_count.max(1));
    ((fnv1a(topic.as_bytes()) % shards + u64::from(partition) % shards) % shards) as ShardId
}

/// FNV-1a, 64-bit: stable across builds and platforms (unlike std's randomised hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_is_pure_and_spans_every_shard() {
        for shards in 1..=8u16 {
            for topic in ["a", "orders", "clicks-2026"] {
                let owners: Vec<_> = (0..u32::from(shards))
                    .map(|p| owner_of(topic, p, shards))
                    .collect();
                let mut sorted = owners.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), shards as usize, "{topic} on {shards} shards");
                let again: Vec<_> = (0..u32::from(shards))
                    .map(|p| owner_of(topic, p, shards))
                    .collect();
                assert_eq!(owners, again);
            }
        }
    }

    #[test]
    fn ownership_is_pinned() {
        // A change of this function moves data ownership between releases: pin it.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(owner_of("orders", 0, 1), 0);
    }
}
