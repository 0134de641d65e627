//! How the HTTP thread asks the shards for their metrics, and how they answer.
//!
//! Each shard has a slot: a flag and the reply channels of the scrapes waiting for it. A
//! scrape pushes its channel, raises the flag and wakes the shard the way shutdown does
//! (the inbox's signal); the shard's mesh loop sees the flag, builds one snapshot on its
//! own thread and sends it to every channel waiting. The data path never touches a slot:
//! the mesh loop reads one flag per pass (a relaxed load), and the slot's mutex is taken
//! only by a scrape and by the shard answering it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::sync::oneshot;

use crate::metrics::snapshot::ShardSnapshot;
use crate::shard::ShardId;

/// Every shard's scrape slot.
pub(crate) struct ScrapeSlots {
    slots: Box<[ScrapeSlot]>,
}

#[derive(Default)]
struct ScrapeSlot {
    asked: AtomicBool,
    waiting: Mutex<Vec<oneshot::Sender<ShardSnapshot>>>,
}

impl ScrapeSlots {
    pub(crate) fn new(shards: u16) -> ScrapeSlots {
        ScrapeSlots {
            slots: (0..shards).map(|_| ScrapeSlot::default()).collect(),
        }
    }

    /// Asks `shard` for a snapshot (the caller then wakes it).
    pub(crate) fn ask(&self, shard: ShardId) -> oneshot::Receiver<ShardSnapshot> {
        let (tx, rx) = oneshot::channel();
        let slot = &self.slots[usize::from(shard)];
        slot.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tx);
        slot.asked.store(true, Ordering::SeqCst);
        rx
    }

    /// On `shard`'s thread: if a scrape is waiting, builds one snapshot with `make` and
    /// answers every scrape waiting.
    pub(crate) fn answer(&self, shard: ShardId, make: impl FnOnce() -> ShardSnapshot) {
        let slot = &self.slots[usize::from(shard)];
        if !slot.asked.load(Ordering::Relaxed) || !slot.asked.swap(false, Ordering::SeqCst) {
            return;
        }
        let mut waiting =
            std::mem::take(&mut *slot.waiting.lock().unwrap_or_else(PoisonError::into_inner));
        // A scrape that gave up (timed out, its client gone) is not built for.
        waiting.retain(|tx| !tx.is_closed());
        if waiting.is_empty() {
            return;
        }
        let snapshot = make();
        for tx in waiting {
            // A scrape that gave up meanwhile has dropped its receiver: nothing to do.
            let _ = tx.send(snapshot.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::histogram::{HistogramSnapshot, LATENCY_NS, ROUND_BATCHES, ROUND_BYTES};
    use crate::metrics::snapshot::ShardTraffic;

    fn snapshot(shard: u16) -> ShardSnapshot {
        ShardSnapshot {
            shard,
            traffic: ShardTraffic {
                topics: vec![],
                requests: vec![],
                latency: vec![],
                round_batches: HistogramSnapshot::empty(ROUND_BATCHES),
                round_bytes: HistogramSnapshot::empty(ROUND_BYTES),
                fdatasync: HistogramSnapshot::empty(LATENCY_NS),
                quota_throttle: HistogramSnapshot::empty(LATENCY_NS),
                connections: vec![],
                scrub_corrupt_batches: 0,
                compactions: 0,
                compaction_bytes_removed: 0,
                log_read_memory_bytes: 0,
                log_read_file_bytes: 0,
            },
            partitions: vec![],
            committed: vec![],
            shares: vec![],
            queued_bytes: 0,
            queued_limit: 0,
            ring_queued: 0,
            ring_capacity: 0,
            tail_cache_bytes: 0,
            tail_cache_limit: 0,
        }
    }

    #[test]
    fn one_snapshot_answers_every_scrape_waiting_and_only_when_asked() {
        let slots = ScrapeSlots::new(2);
        let built = std::cell::Cell::new(0);
        let make = || {
            built.set(built.get() + 1);
            snapshot(1)
        };
        slots.answer(1, make);
        assert_eq!(built.get(), 0, "nobody asked");
        let (mut a, mut b) = (slots.ask(1), slots.ask(1));
        let mut other = slots.ask(0);
        slots.answer(1, make);
        assert_eq!(built.get(), 1, "one snapshot for both scrapes");
        assert_eq!(a.try_recv().unwrap().shard, 1);
        assert_eq!(b.try_recv().unwrap().shard, 1);
        assert!(other.try_recv().is_err(), "shard 0 has not answered");
        slots.answer(1, make);
        assert_eq!(built.get(), 1, "answered scrapes are not answered again");
        // A scrape that gave up is not built for.
        drop(slots.ask(1));
        slots.answer(1, make);
        assert_eq!(built.get(), 1);
    }
}
