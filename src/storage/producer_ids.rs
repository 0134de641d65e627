//! Producer ids for idempotent producers (Kafka's InitProducerId), unique for the life of
//! the data directory: across shards, restarts and crashes.
//!
//! One store serves every shard. `<data-dir>/meta/producer_ids.json` holds the first id not
//! yet reserved; ids are handed out from blocks of [`BLOCK`] reserved by moving that mark
//! (written to a temporary file, synced, renamed over the old one, directory synced) before
//! any id of the block is given out. So most allocations touch no file, and after a crash
//! the ids of a block reserved but not used up are skipped, never issued twice.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::error::StorageError;
use super::meta_file::{self, Access};

/// Ids reserved per write of the mark.
pub(crate) const BLOCK: i64 = 1000;

const FILE: &str = "producer_ids.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct Mark {
    /// The first producer id not reserved yet.
    next_unreserved: i64,
}

/// Reads the counter file: the first producer id not reserved yet.
pub(crate) fn decode_mark(bytes: &[u8]) -> Result<i64, String> {
    let mark: Mark = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if mark.next_unreserved < 0 {
        return Err("a negative producer id".into());
    }
    Ok(mark.next_unreserved)
}

/// Ids handed out so far in this process, and the end of the reserved block.
struct Block {
    next: i64,
    end: i64,
}

/// The durable producer-id counter shared by all shards.
pub struct ProducerIds {
    dir: PathBuf,
    /// Serialises allocations; held for the file writes of a reservation, once per
    /// [`BLOCK`] ids (InitProducerId is rare, off the data path).
    block: Mutex<Block>,
}

impl ProducerIds {
    /// Opens the counter in `<data_dir>/meta/` (the directory must exist, as the catalog
    /// makes it); a data directory without one starts at id 0. A damaged file is an error:
    /// starting over could issue an id twice.
    pub fn open(data_dir: &Path) -> Result<ProducerIds, StorageError> {
        let dir = data_dir.join("meta");
        let path = dir.join(FILE);
        let start = match fs::read(&path) {
            Ok(bytes) => decode_mark(&bytes).map_err(|e| StorageError::corrupt(&path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(StorageError::io(&path, e)),
        };
        Ok(ProducerIds {
            dir,
            block: Mutex::new(Block {
                next: start,
                end: start,
            }),
        })
    }

    /// A producer id never handed out before.
    pub fn allocate(&self) -> Result<i64, StorageError> {
        let mut block = self
            .block
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if block.next >= block.end {
            let end = block.next.checked_add(BLOCK).ok_or_else(|| {
                StorageError::corrupt(&self.dir.join(FILE), "producer ids ran out")
            })?;
            self.persist(end)?;
            block.end = end;
        }
        let id = block.next;
        block.next += 1;
        Ok(id)
    }

    /// The id and epoch for a producer that asks again with its current `producer_id` and
    /// `epoch` (Kafka's KIP-360: after an error that leaves its sequence numbers in doubt):
    /// the same id with the next epoch, which partitions take as a fresh start at sequence
    /// 0 and which fences the old epoch. An id this store never handed out, or an epoch
    /// with no next one, gets a new id at epoch 0 instead.
    pub fn bump(&self, producer_id: i64, epoch: i16) -> Result<(i64, i16), StorageError> {
        let issued = {
            let block = self
                .block
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (0..block.next).contains(&producer_id)
        };
        // Kafka counts an epoch of i16::MAX - 1 as exhausted.
        if issued && (0..i16::MAX - 1).contains(&epoch) {
            return Ok((producer_id, epoch + 1));
        }
        Ok((self.allocate()?, 0))
    }

    /// Makes `next_unreserved` the durable mark.
    fn persist(&self, next_unreserved: i64) -> Result<(), StorageError> {
        let path = self.dir.join(FILE);
        let bytes = serde_json::to_vec(&Mark { next_unreserved })
            .map_err(|e| StorageError::corrupt(&path, e.to_string()))?;
        meta_file::replace(&self.dir, FILE, &bytes, Access::Default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("meta")).unwrap();
        dir
    }

    #[test]
    fn ids_are_unique_across_reopens_and_a_block_is_never_reused() {
        let dir = data_dir();
        let ids = ProducerIds::open(dir.path()).unwrap();
        let first: Vec<i64> = (0..3).map(|_| ids.allocate().unwrap()).collect();
        assert_eq!(first, [0, 1, 2]);
        // A crash (or a stop) with most of the block unused: the next start skips it.
        drop(ids);
        let ids = ProducerIds::open(dir.path()).unwrap();
        assert_eq!(ids.allocate().unwrap(), BLOCK);
        for i in 1..BLOCK {
            assert_eq!(ids.allocate().unwrap(), BLOCK + i);
        }
        assert_eq!(ids.allocate().unwrap(), 2 * BLOCK, "a new block");
        drop(ids);
        let ids = ProducerIds::open(dir.path()).unwrap();
        assert_eq!(ids.allocate().unwrap(), 3 * BLOCK);
    }

    #[test]
    fn ids_from_many_threads_are_distinct() {
        let dir = data_dir();
        let ids = std::sync::Arc::new(ProducerIds::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let ids = ids.clone();
                std::thread::spawn(move || {
                    (0..1500)
                        .map(|_| ids.allocate().unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<i64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 6000);
    }

    #[test]
    fn a_bump_keeps_an_issued_id_and_moves_its_epoch() {
        let dir = data_dir();
        let ids = ProducerIds::open(dir.path()).unwrap();
        let id = ids.allocate().unwrap();
        assert_eq!(ids.bump(id, 0).unwrap(), (id, 1));
        assert_eq!(ids.bump(id, 41).unwrap(), (id, 42));
        // Exhausted epoch, or an id never issued: a new id.
        let (other, epoch) = ids.bump(id, i16::MAX - 1).unwrap();
        assert_ne!(other, id);
        assert_eq!(epoch, 0);
        let (fresh, epoch) = ids.bump(999_999, 3).unwrap();
        assert!(fresh != id && fresh != other && epoch == 0);
    }

    #[test]
    fn a_damaged_mark_stops_the_start() {
        let dir = data_dir();
        fs::write(dir.path().join("meta").join(FILE), b"{\"next\":").unwrap();
        assert!(matches!(
            ProducerIds::open(dir.path()),
            Err(StorageError::Corrupt { .. })
        ));
        fs::write(
            dir.path().join("meta").join(FILE),
            b"{\"next_unreserved\":-4}",
        )
        .unwrap();
        assert!(ProducerIds::open(dir.path()).is_err());
    }
}
