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

use crate::local::OnceMap;
use crate::protocol::{ErrorCode, WireError};
use crate::shard::{owner_of, ShardId};
use crate::storage::catalog::TopicMeta;
use crate::storage::{LogConfig, PartitionLog, ProducerError, Runs, StorageError};

/// Identifies one partition of one incarnation of a topic.
#[derive(Clone)]
pub(crate) struct PartitionRef {
    pub(crate) topic: Arc<TopicMeta>,
    pub(crate) partition: u32,
}

/// A call about one partition: it goes to that partition's owner
/// (`ShardContext::call_owner`).
pub(crate) trait PartitionCall {
    /// The partition the call is about.
    fn partition(&self) -> &PartitionRef;
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Incarnation {
    id: u64,
    deleted: bool,
}

/// The partitions a shard owns.
pub(crate) struct PartitionTable {
    id: ShardId,
    shard_count: u16,
    data_dir: PathBuf,
    log_defaults: LogConfig,
    /// The newest incarnation (topic id) seen of each topic name, and whether it has been
    /// deleted: a request that carries an older one, or a deleted one, is for a topic that
    /// is gone, and must not open (and so create) its directory again.
    incarnations: RefCell<HashMap<String, Incarnation>>,
    /// Logs by (topic id, partition). Topic ids are never reused, so a key names one
    /// partition of one incarnation.
    logs: OnceMap<(u64, u32), Rc<PartitionLog>>,
    /// The broker's run, for the logs' clean-stop markers.
    runs: Runs,
}

impl PartitionTable {
    pub(crate) fn new(
        id: ShardId,
        shard_count: u16,
        data_dir: PathBuf,
        log_defaults: LogConfig,
        runs: Runs,
    ) -> PartitionTable {
        PartitionTable {
            id,
            shard_count,
            data_dir,
            log_defaults,
            incarnations: RefCell::new(HashMap::new()),
            logs: OnceMap::new(),
            runs,
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

    /// Forgets the partitions of this incarnation of `topic` and returns those that were
    /// open, for the caller to close.
    pub(crate) fn remove_topic(&self, topic: &TopicMeta) -> Vec<Rc<PartitionLog>> {
        let mut incarnations = self.incarnations.borrow_mut();
        let newest = incarnations
            .entry(topic.name.clone())
            .or_insert(Incarnation {
                id: topic.id,
                deleted: true,
            });
        if newest.id <= topic.id {
            *newest = Incarnation {
                id: topic.id,
                deleted: true,
            };
        }
        drop(incarnations);
        self.logs.remove_where(|(id, _)| *id == topic.id)
    }

    /// The open logs of one incarnation of a topic.
    pub(crate) fn open_logs_of(&self, id: u64) -> Vec<Rc<PartitionLog>> {
        self.logs.values_where(|(topic, _)| *topic == id)
    }

    /// Every open log (for timers and shutdown).
    pub(crate) fn all_logs(&self) -> Vec<Rc<PartitionLog>> {
        self.logs.values()
    }

    /// Every open log of a topic not deleted, with the topic's name and the partition.
    pub(crate) fn named_logs(&self) -> Vec<(String, u32, Rc<PartitionLog>)> {
        let names: HashMap<u64, String> = self
            .incarnations
            .borrow()
            .iter()
            .filter(|(_, i)| !i.deleted)
            .map(|(name, i)| (i.id, name.clone()))
            .collect();
        self.logs
            .entries()
            .into_iter()
            .filter_map(|((id, partition), log)| Some((names.get(&id)?.clone(), partition, log)))
            .collect()
    }

    /// The log end of an open partition this shard owns.
    pub(crate) fn log_end(&self, topic: &str, partition: u32) -> Option<i64> {
        let id = self
            .incarnations
            .borrow()
            .get(topic)
            .filter(|i| !i.deleted)?
            .id;
        self.logs
            .get(&(id, partition))
            .map(|log| log.high_watermark())
    }

    /// The log of a partition this shard owns, opening (and recovering) it on first use.
    pub(crate) async fn log(&self, at: &PartitionRef) -> Result<Rc<PartitionLog>, WireError> {
        let name = &at.topic.name;
        {
            let mut incarnations = self.incarnations.borrow_mut();
            let seen = Incarnation {
                id: at.topic.id,
                deleted: false,
            };
            let newest = incarnations.entry(name.clone()).or_insert(seen);
            if newest.id > at.topic.id || (newest.id == at.topic.id && newest.deleted) {
                // A request for an incarnation that has been deleted since.
                return Err(unknown_partition(name, at.partition));
            }
            *newest = seen;
        }
        if at.partition >= at.topic.partitions || self.owner(name, at.partition) != self.id {
            return Err(unknown_partition(name, at.partition));
        }
        self.logs
            .get_or_open(&(at.topic.id, at.partition), || async {
                let dir = self.partition_dir(name, at.partition);
                let config = at.topic.log_config(&self.log_defaults);
                match PartitionLog::open_in_run(dir, config, 0, self.runs).await {
                    Ok(log) => Ok(Rc::new(log)),
                    Err(e) => {
                        tracing::error!(topic = %name, partition = at.partition, "cannot open partition: {e}");
                        Err(storage_error(e))
                    }
                }
            })
            .await
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
        StorageError::Fenced { .. } => ErrorCode::CorruptBatch,
        StorageError::Closed => ErrorCode::UnknownTopicOrPartition,
        StorageError::Producer(ProducerError::OutOfOrder { .. }) => ErrorCode::OutOfOrderSequence,
        StorageError::Producer(ProducerError::InvalidEpoch { .. }) => {
            ErrorCode::InvalidProducerEpoch
        }
        StorageError::Producer(ProducerError::Invalid(_)) => ErrorCode::InvalidRequest,
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
