//! One shard's counters, in a thread-local that only its own thread touches.
//!
//! The recording functions are what the data path calls: each is a thread-local access
//! and a few `Cell` updates (a hash lookup for the per-topic and per-API maps), once per
//! request, group-commit round or fdatasync, never per record. [`take`] copies everything
//! out for a scrape, on the same thread. A thread that is not a shard (a unit test, a
//! tool) records into its own copy, which nobody reads.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use crate::fasthash::FastMap;

use super::histogram::{Histogram, LATENCY_NS, ROUND_BATCHES, ROUND_BYTES};
pub use super::labels::{ApiId, Listener, Outcome, WireProtocol};
use super::snapshot::{ListenerCounts, RequestCount, RequestLatency, ShardTraffic, TopicTraffic};

#[derive(Default)]
struct Traffic {
    produced_records: u64,
    produced_bytes: u64,
    fetched_bytes: u64,
}

/// Traffic of one topic: its total, and per partition when partition labels are on.
#[derive(Default)]
struct TopicCounters {
    total: Traffic,
    partitions: FastMap<u32, Traffic>,
}

/// One API's requests: their latency, and how many ended each way (almost always one
/// entry, `Ok`).
struct ApiStats {
    latency: Histogram,
    outcomes: Vec<(Outcome, u64)>,
}

#[derive(Default)]
struct ConnectionCounts {
    accepted: Cell<u64>,
    refused: Cell<u64>,
    open: Cell<u64>,
}

struct ShardCounters {
    topics: RefCell<FastMap<Box<str>, TopicCounters>>,
    apis: RefCell<FastMap<ApiId, ApiStats>>,
    round_batches: Histogram,
    round_bytes: Histogram,
    fdatasync: Histogram,
    quota_throttle: Histogram,
    connections: [ConnectionCounts; 3],
    scrub_corrupt: Cell<u64>,
    compactions: Cell<u64>,
    compaction_bytes_removed: Cell<u64>,
    /// Bytes of log ranges read for sending: from a tail cache, and from a segment file.
    log_read_memory: Cell<u64>,
    log_read_file: Cell<u64>,
}

thread_local! {
    static SHARD: ShardCounters = ShardCounters {
        topics: RefCell::new(FastMap::default()),
        apis: RefCell::new(FastMap::default()),
        round_batches: Histogram::new(ROUND_BATCHES),
        round_bytes: Histogram::new(ROUND_BYTES),
        fdatasync: Histogram::new(LATENCY_NS),
        quota_throttle: Histogram::new(LATENCY_NS),
        connections: Default::default(),
        scrub_corrupt: Cell::new(0),
        compactions: Cell::new(0),
        compaction_bytes_removed: Cell::new(0),
        log_read_memory: Cell::new(0),
        log_read_file: Cell::new(0),
    };
}

fn with_topic(topic: &str, partition: Option<u32>, f: impl Fn(&mut Traffic)) {
    SHARD.with(|s| {
        let mut topics = s.topics.borrow_mut();
        let counters = match topics.get_mut(topic) {
            Some(c) => c,
            None => topics.entry(topic.into()).or_default(),
        };
        f(&mut counters.total);
        if let Some(p) = partition {
            f(counters.partitions.entry(p).or_default());
        }
    });
}

/// Counts records and bytes acknowledged to a producer on `topic` (and `partition`, when
/// partition labels are on).
pub fn produced(topic: &str, partition: Option<u32>, records: u64, bytes: u64) {
    with_topic(topic, partition, |t| {
        t.produced_records += records;
        t.produced_bytes += bytes;
    });
}

/// Counts record bytes sent to a consumer from `topic` (and `partition`, when partition
/// labels are on).
pub fn fetched(topic: &str, partition: Option<u32>, bytes: u64) {
    with_topic(topic, partition, |t| t.fetched_bytes += bytes);
}

/// Counts one request and its time from decoded to answered.
pub fn request(api: ApiId, outcome: Outcome, elapsed: Duration) {
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    SHARD.with(|s| {
        let mut apis = s.apis.borrow_mut();
        let stats = apis.entry(api).or_insert_with(|| ApiStats {
            latency: Histogram::new(LATENCY_NS),
            outcomes: Vec::new(),
        });
        stats.latency.record(nanos);
        match stats.outcomes.iter_mut().find(|(o, _)| *o == outcome) {
            Some((_, count)) => *count += 1,
            None => stats.outcomes.push((outcome, 1)),
        }
    });
}

/// Counts one group-commit round that wrote `batches` batches of `bytes` bytes in all.
pub fn commit_round(batches: u64, bytes: u64) {
    SHARD.with(|s| {
        s.round_batches.record(batches);
        s.round_bytes.record(bytes);
    });
}

/// Counts one response whose client is held back `throttle` for going over a quota.
pub fn quota_throttled(throttle: Duration) {
    let nanos = u64::try_from(throttle.as_nanos()).unwrap_or(u64::MAX);
    SHARD.with(|s| s.quota_throttle.record(nanos));
}

/// Counts one fdatasync of a log that took `elapsed`.
pub fn fdatasync(elapsed: Duration) {
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    SHARD.with(|s| s.fdatasync.record(nanos));
}

fn bump(cell: &Cell<u64>) {
    cell.set(cell.get() + 1);
}

/// Counts a connection accepted on `listener` (and now open).
pub fn connection_accepted(listener: Listener) {
    SHARD.with(|s| {
        let c = &s.connections[listener as usize];
        bump(&c.accepted);
        bump(&c.open);
    });
}

/// Counts a connection refused on `listener` (over a connection limit).
pub fn connection_refused(listener: Listener) {
    SHARD.with(|s| bump(&s.connections[listener as usize].refused));
}

/// Counts an accepted connection on `listener` that closed.
pub fn connection_closed(listener: Listener) {
    SHARD.with(|s| {
        let open = &s.connections[listener as usize].open;
        open.set(open.get().saturating_sub(1));
    });
}

/// Counts a corrupt batch the scrubber found.
pub fn scrub_corrupt_batch() {
    SHARD.with(|s| bump(&s.scrub_corrupt));
}

/// Counts a compaction pass of a partition log and the bytes it removed.
pub fn compaction(bytes_removed: u64) {
    SHARD.with(|s| {
        bump(&s.compactions);
        s.compaction_bytes_removed
            .set(s.compaction_bytes_removed.get() + bytes_removed);
    });
}

/// Counts `bytes` of a partition log read for a client (a fetch's records), from the tail
/// cache in memory or else from the segment file.
pub fn log_range_read(bytes: u64, from_memory: bool) {
    SHARD.with(|s| {
        let cell = if from_memory {
            &s.log_read_memory
        } else {
            &s.log_read_file
        };
        cell.set(cell.get() + bytes);
    });
}

/// Everything this thread counted so far.
pub fn take() -> ShardTraffic {
    SHARD.with(|s| {
        let mut topics = Vec::new();
        for (name, counters) in s.topics.borrow().iter() {
            let row = |partition, t: &Traffic| TopicTraffic {
                topic: name.to_string(),
                partition,
                produced_records: t.produced_records,
                produced_bytes: t.produced_bytes,
                fetched_bytes: t.fetched_bytes,
            };
            topics.push(row(None, &counters.total));
            for (p, t) in &counters.partitions {
                topics.push(row(Some(*p), t));
            }
        }
        ShardTraffic {
            topics,
            requests: s
                .apis
                .borrow()
                .iter()
                .flat_map(|(&api, stats)| {
                    stats
                        .outcomes
                        .iter()
                        .map(move |&(outcome, count)| RequestCount {
                            api,
                            outcome,
                            count,
                        })
                })
                .collect(),
            latency: s
                .apis
                .borrow()
                .iter()
                .map(|(&api, stats)| RequestLatency {
                    api,
                    seconds: stats.latency.snapshot(),
                })
                .collect(),
            round_batches: s.round_batches.snapshot(),
            round_bytes: s.round_bytes.snapshot(),
            fdatasync: s.fdatasync.snapshot(),
            quota_throttle: s.quota_throttle.snapshot(),
            connections: Listener::ALL
                .iter()
                .map(|&l| {
                    let c = &s.connections[l as usize];
                    ListenerCounts {
                        listener: l,
                        accepted: c.accepted.get(),
                        refused: c.refused.get(),
                        open: c.open.get(),
                    }
                })
                .collect(),
            scrub_corrupt_batches: s.scrub_corrupt.get(),
            compactions: s.compactions.get(),
            log_read_memory_bytes: s.log_read_memory.get(),
            log_read_file_bytes: s.log_read_file.get(),
            compaction_bytes_removed: s.compaction_bytes_removed.get(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_stay_on_their_thread_and_add_up() {
        std::thread::spawn(|| {
            produced("t", None, 3, 300);
            produced("t", Some(1), 2, 200);
            fetched("t", None, 50);
            let api = ApiId {
                protocol: WireProtocol::Native,
                key: 0,
            };
            request(api, Outcome::Ok, Duration::from_micros(70));
            request(api, Outcome::Ok, Duration::from_millis(3));
            connection_accepted(Listener::Kafka);
            connection_closed(Listener::Kafka);
            let t = take();
            let total = t.topics.iter().find(|r| r.partition.is_none()).unwrap();
            assert_eq!((total.produced_records, total.produced_bytes), (5, 500));
            assert_eq!(total.fetched_bytes, 50);
            let one = t.topics.iter().find(|r| r.partition == Some(1)).unwrap();
            assert_eq!(one.produced_records, 2);
            assert_eq!(t.requests[0].count, 2);
            assert_eq!(t.latency[0].seconds.count(), 2);
            let kafka = &t.connections[Listener::Kafka as usize];
            assert_eq!((kafka.accepted, kafka.open), (1, 0));
        })
        .join()
        .unwrap();
        // Another thread's counts are its own.
        assert!(take().topics.is_empty());
    }
}
