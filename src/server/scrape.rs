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
        let waiting =
            std::mem::take(&mut *slot.waiting.lock().unwrap_or_else(PoisonError::into_inner));
        if waiting.is_empty() {
            return;
        }
        let snapshot = make();
        for tx in waiting {
            // A scrape that gave up has dropped its receiver: nothing to do.
            let _ = tx.send(snapshot.clone());
        }
    }
}
