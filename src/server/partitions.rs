//! The partitions one shard owns: their logs, opened (and recovered) on first use.
//!
//! Only the owning shard's thread touches a partition's files and state, so the table is
//! `RefCell`s on that thread. A partition is opened once: the first task to ask claims it
//! and opens it; others wait for that open. A claim whose task is dropped mid-open is
//! given back, and one of the waiters opens instead.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use crate::local::Notify;
use crate::protocol::{ErrorCode, WireError};
use crate::shard::{owner_of, ShardId};
use crate::storage::catalog::TopicMeta;
use crate::storage::{LogConfig, PartitionLog, StorageError};

/// Identifies one partition of one incarnation of a topic.
#[derive(Clone)]
pub(crate) struct PartitionRef {
    pub(crate) topic: Arc<TopicMeta>,
    pub(crate) partition: u32,
}

enum Slot {
    /// Being opened (recovery may take a while); wait on the notify and look again.
    Opening(Rc<Notify>),
    Open(Rc<PartitionLog>),
}

struct OwnedTopic {
    id: u64,
    partitions: HashMap<u32, Slot>,
}

/// The claim of the task opening a partition (its `Slot::Opening`), withdrawn if that task
/// is dropped before it finishes.
struct OpeningClaim<'a> {
    table: &'a PartitionTable,
    at: &'a PartitionRef,
    armed: bool,
}

impl OpeningClaim<'_> {
    /// The open finished: the opener settles the slot itself.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for OpeningClaim<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let slot = self
            .table
            .topics
            .borrow_mut()
            .get_mut(&self.at.topic.name)
            .filter(|t| t.id == self.at.topic.id)
            .and_then(|t| match t.partitions.get(&self.at.partition) {
                Some(Slot::Opening(_)) => t.partitions.remove(&self.at.partition),
                _ => None,
            });
        if let Some(Slot::Opening(notify)) = slot {
            notify.notify_all();
        }
    }
}

/// The partitions a shard owns.
pub(crate) struct PartitionTable {
    id: ShardId,
    shard_count: u16,
    data_dir: PathBuf,
    log_defaults: LogConfig,
    topics: RefCell<HashMap<String, OwnedTopic>>,
}

impl PartitionTable {
    pub(crate) fn new(
        id: ShardId,
        shard_count: u16,
        data_dir: PathBuf,
        log_defaults: LogConfig,
    ) -> PartitionTable {
        PartitionTable {
            id,
            shard_count,
            data_dir,
            log_defaults,
            topics: RefCell::new(HashMap::new()),
        }
    }

    /// The shard owning a partition.
    pub(crate) fn owner(&self, topic: &str, partition: u32) -> ShardId {
        owner_of(topic, partition, self.shard_count)
    }

    /// Opens every partition of `topic` this shard owns.
    pub(crate) async fn open_topic(&self, topic: &Arc<TopicMeta>) -> Result<(), WireError> {
        for partition in 0..topic.partitions {
            if self.owner(&topic.name, partition) == self.id {
                let at = PartitionRef {
                    topic: topic.clone(),
                    partition,
                };
                self.log(&at).await?;
            }
        }
        Ok(())
    }

    pub(crate) fn remove_topic(&self, topic: &TopicMeta) -> Vec<Rc<PartitionLog>> {
        let mut topics = self.topics.borrow_mut();
        match topics.get(&topic.name) {
            Some(owned) if owned.id == topic.id => {}
            _ => return Vec::new(),
        }
        let owned = topics.remove(&topic.name).expect("checked above");
        owned
            .partitions
            .into_values()
            .filter_map(|slot| match slot {
                Slot::Open(log) => Some(log),
                Slot::Opening(_) => None,
            })
            .collect()
    }

    pub(crate) fn open_logs_of(&self, name: &str, id: u64) -> Vec<Rc<PartitionLog>> {
        match self.topics.borrow().get(name) {
            Some(owned) if owned.id == id => owned
                .partitions
                .values()
                .filter_map(|slot| match slot {
                    Slot::Open(log) => Some(log.clone()),
                    Slot::Opening(_) => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Every open log (for timers and shutdown).
    pub(crate) fn all_logs(&self) -> Vec<Rc<PartitionLog>> {
        self.topics
            .borrow()
            .values()
            .flat_map(|t| t.partitions.values())
            .filter_map(|slot| match slot {
                Slot::Open(log) => Some(log.clone()),
                Slot::Opening(_) => None,
            })
            .collect()
    }

    /// The log end of an open partition this shard owns.
    pub(crate) fn log_end(&self, topic: &str, partition: u32) -> Option<i64> {
        match self
            .topics
            .borrow()
            .get(topic)?
            .partitions
            .get(&partition)?
        {
            Slot::Open(log) => Some(log.high_watermark()),
            Slot::Opening(_) => None,
        }
    }

    /// The log of a partition this shard owns, opening (and recovering) it on first use.
    pub(crate) async fn log(&self, at: &PartitionRef) -> Result<Rc<PartitionLog>, WireError> {
        let name = &at.topic.name;
        loop {
            let waiting = {
                let mut topics = self.topics.borrow_mut();
                let owned = topics.entry(name.clone()).or_insert_with(|| OwnedTopic {
                    id: at.topic.id,
                    partitions: HashMap::new(),
                });
                if owned.id != at.topic.id {
                    if owned.id > at.topic.id {
                        // A request for an incarnation that has been deleted since.
                        return Err(unknown_partition(name, at.partition));
                    }
                    // A newer incarnation than what we hold: the old one is gone.
                    *owned = OwnedTopic {
                        id: at.topic.id,
                        partitions: HashMap::new(),
                    };
                }
                match owned.partitions.get(&at.partition) {
                    Some(Slot::Open(log)) => return Ok(log.clone()),
                    Some(Slot::Opening(notify)) => Some(notify.clone()),
                    None => {
                        if at.partition >= at.topic.partitions
                            || self.owner(name, at.partition) != self.id
                        {
                            return Err(unknown_partition(name, at.partition));
                        }
                        owned
                            .partitions
                            .insert(at.partition, Slot::Opening(Rc::new(Notify::new())));
                        None
                    }
                }
            };
            if let Some(notify) = waiting {
                let opened = notify.notified();
                // The opener may have finished between our lookup and now.
                let still_opening = matches!(
                    self.topics
                        .borrow()
                        .get(name)
                        .and_then(|t| t.partitions.get(&at.partition)),
                    Some(Slot::Opening(_))
                );
                if still_opening {
                    opened.await;
                }
                continue;
            }
            // We are the opener. If this future is dropped while opening (a produce that
            // timed out), the guard takes our claim back and wakes the waiters, one of which
            // then opens.
            let claim = OpeningClaim {
                table: self,
                at,
                armed: true,
            };
            let dir = self.partition_dir(name, at.partition);
            let config = at.topic.log_config(&self.log_defaults);
            let result = PartitionLog::open(dir, config).await;
            claim.disarm();
            let mut topics = self.topics.borrow_mut();
            let owned = topics.get_mut(name);
            let slot = owned
                .filter(|t| t.id == at.topic.id)
                .and_then(|t| t.partitions.remove(&at.partition));
            let notify = match slot {
                Some(Slot::Opening(n)) => Some(n),
                _ => None,
            };
            let out = match result {
                Ok(log) => {
                    let log = Rc::new(log);
                    if let Some(t) = topics.get_mut(name).filter(|t| t.id == at.topic.id) {
                        t.partitions.insert(at.partition, Slot::Open(log.clone()));
                    }
                    Ok(log)
                }
                Err(e) => {
                    tracing::error!(topic = %name, partition = at.partition, "cannot open partition: {e}");
                    Err(storage_error(e))
                }
            };
            drop(topics);
            if let Some(n) = notify {
                n.notify_all();
            }
            return out;
        }
    }

    fn partition_dir(&self, topic: &str, partition: u32) -> PathBuf {
        self.data_dir.join(topic).join(partition.to_string())
    }
}

pub(crate) fn unknown_partition(topic: &str, partition: u32) -> WireError {
    WireError::new(
        ErrorCode::UnknownTopicOrPartition,
        format!("topic `{topic}` has no partition {partition}"),
    )
}

/// Maps a storage error to its wire code. Storage errors name files by their full path:
/// the log line keeps it, while the client is told what failed with the file's name alone
/// (a client has no business with the broker's directory layout).
pub(crate) fn storage_error(e: StorageError) -> WireError {
    let code = match &e {
        StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        StorageError::NoSpace => ErrorCode::NotEnoughDisk,
        StorageError::Closed => ErrorCode::UnknownTopicOrPartition,
        _ => ErrorCode::StorageError,
    };
    let file_name = |path: &std::path::Path| {
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    };
    let message = match &e {
        StorageError::Io { path, source } => {
            tracing::error!("storage failure: {e}");
            format!("i/o error on {}: {source}", file_name(path))
        }
        StorageError::Corrupt { path, reason } => {
            tracing::error!("storage failure: {e}");
            format!("corrupt log {}: {reason}", file_name(path))
        }
        _ => e.to_string(),
    };
    WireError::new(code, message)
}
