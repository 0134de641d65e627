//! The topics service: create, delete, alter and describe topics. The catalog is changed
//! first (durably, then published to every shard through its `ArcSwap`), then every shard
//! is told to open, close or reconfigure the partitions it owns, with the typed calls
//! below. Front ends (the native protocol, and dead-lettering inside the share groups) call
//! these functions; none of them encodes a response.

use std::rc::Rc;
use std::sync::Arc;

use super::context::ShardContext;
use super::partitions::{PartitionCall, PartitionRef};
use super::rpc::ShardCall;
use crate::protocol::api::{ConfigEntry, PartitionDescription};
use crate::protocol::{ErrorCode, WireError};
use crate::storage::catalog::{describe_config, CatalogError, TopicMeta, DELETED_PREFIX};

/// Creates a topic and opens its partitions on their owners.
pub(crate) async fn create(
    ctx: &Rc<ShardContext>,
    name: &str,
    partitions: u32,
    configs: &[ConfigEntry],
) -> Result<Arc<TopicMeta>, WireError> {
    let topic = ctx
        .catalog
        .create(name, partitions, configs, &ctx.log_defaults)
        .map_err(catalog_error)?;
    tracing::info!(topic = %topic.name, partitions = topic.partitions, "topic created");
    for reply in ctx
        .call_all(|| OpenTopic {
            topic: topic.clone(),
        })
        .await
    {
        reply??;
    }
    Ok(topic)
}

/// Deletes a topic: its directory is moved aside, the catalog forgets it, every shard
/// closes its partitions, then the files are removed.
pub(crate) async fn delete(ctx: &Rc<ShardContext>, name: &str) -> Result<(), WireError> {
    let Some(topic) = ctx.catalog.get(name) else {
        return Err(catalog_error(CatalogError::UnknownTopic(name.to_string())));
    };
    // Move the directory aside before the catalog forgets the topic: a crash in between
    // leaves a topic whose data is gone (it was being deleted), never files that no topic
    // owns; and a topic created again under this name starts empty even while the old
    // files are still being closed. Start-up removes whatever was moved aside.
    let dir = ctx.config.data_dir.join(&topic.name);
    let trash = ctx
        .config
        .data_dir
        .join(format!("{DELETED_PREFIX}{}-{}", topic.name, topic.id));
    let moved = match std::fs::rename(&dir, &trash) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            tracing::error!(path = %dir.display(), "cannot move a deleted topic's data aside: {e}");
            return Err(WireError::new(
                ErrorCode::StorageError,
                format!("cannot move the data of topic `{}` aside: {e}", topic.name),
            ));
        }
    };
    if let Err(e) = ctx.catalog.delete(name) {
        if moved {
            let _ = std::fs::rename(&trash, &dir);
        }
        return Err(catalog_error(e));
    }
    for reply in ctx
        .call_all(|| DropTopic {
            topic: topic.clone(),
        })
        .await
    {
        reply?;
    }
    if moved {
        if let Err(e) = std::fs::remove_dir_all(&trash) {
            tracing::warn!(path = %trash.display(), "cannot remove deleted topic data: {e}");
        }
    }
    tracing::info!(topic = %topic.name, "topic deleted");
    Ok(())
}

/// Changes a topic's config overrides; open partitions take them from their next append
/// or retention pass.
pub(crate) async fn alter(
    ctx: &Rc<ShardContext>,
    name: &str,
    configs: &[ConfigEntry],
    remove: &[String],
) -> Result<(), WireError> {
    let topic = ctx
        .catalog
        .alter(name, configs, remove, &ctx.log_defaults)
        .map_err(catalog_error)?;
    for reply in ctx
        .call_all(|| Reconfigure {
            topic: topic.clone(),
        })
        .await
    {
        reply?;
    }
    Ok(())
}

/// A topic's partitions (offsets and sizes, from their owners) and effective configs.
pub(crate) async fn describe(
    ctx: &Rc<ShardContext>,
    name: &str,
) -> Result<(Arc<TopicMeta>, Vec<PartitionDescription>, Vec<ConfigEntry>), WireError> {
    let topic = ctx.catalog.get(name).ok_or_else(|| {
        WireError::new(
            ErrorCode::UnknownTopicOrPartition,
            format!("topic `{name}` does not exist"),
        )
    })?;
    // One envelope per owning shard.
    let calls = (0..topic.partitions)
        .map(|partition| {
            let at = PartitionRef {
                topic: topic.clone(),
                partition,
            };
            (ctx.owner_of(&at), Describe { at })
        })
        .collect();
    let mut partitions = Vec::with_capacity(topic.partitions as usize);
    for reply in ctx.call_grouped(calls).await {
        partitions.push(reply??);
    }
    let configs = describe_config(&topic.log_config(&ctx.log_defaults));
    Ok((topic, partitions, configs))
}

/// A topic's partition by name, from the catalog.
pub(crate) fn lookup(
    ctx: &ShardContext,
    topic: &str,
    partition: u32,
) -> Result<PartitionRef, WireError> {
    let meta = ctx
        .catalog
        .get(topic)
        .ok_or_else(|| super::partitions::unknown_partition(topic, partition))?;
    if partition >= meta.partitions {
        return Err(super::partitions::unknown_partition(topic, partition));
    }
    Ok(PartitionRef {
        topic: meta,
        partition,
    })
}

pub(crate) fn catalog_error(e: CatalogError) -> WireError {
    let code = match &e {
        CatalogError::UnknownTopic(_) => ErrorCode::UnknownTopicOrPartition,
        CatalogError::AlreadyExists(_) => ErrorCode::TopicAlreadyExists,
        CatalogError::InvalidName { .. } => ErrorCode::InvalidTopic,
        CatalogError::InvalidPartitions(_) => ErrorCode::InvalidPartitions,
        CatalogError::InvalidConfig { .. } => ErrorCode::InvalidConfig,
        CatalogError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
            ErrorCode::NotEnoughDisk
        }
        CatalogError::Io { .. } | CatalogError::Corrupt { .. } => ErrorCode::StorageError,
    };
    if code == ErrorCode::StorageError {
        // The catalog's errors name its file by full path: the log keeps it.
        tracing::error!("catalog failure: {e}");
        return WireError::new(
            code,
            "the topic catalog could not be read or written (see the broker's log)",
        );
    }
    WireError::new(code, e.to_string())
}

/// Opens (creates) every partition of a topic that the shard owns.
pub(crate) struct OpenTopic {
    pub(crate) topic: Arc<TopicMeta>,
}

impl ShardCall<ShardContext> for OpenTopic {
    type Reply = Result<(), WireError>;

    async fn run(self, shard: Rc<ShardContext>) -> Self::Reply {
        shard.partitions.open_topic(&self.topic).await
    }
}

/// Closes every partition of this incarnation of a topic and forgets its share state.
pub(crate) struct DropTopic {
    pub(crate) topic: Arc<TopicMeta>,
}

impl ShardCall<ShardContext> for DropTopic {
    type Reply = ();

    async fn run(self, shard: Rc<ShardContext>) {
        for log in shard.partitions.remove_topic(&self.topic) {
            if let Err(e) = log.close().await {
                tracing::warn!(topic = %self.topic.name, "closing a deleted partition: {e}");
            }
        }
        shard.shares.drop_topic(&self.topic).await;
    }
}

/// Gives a topic's open partitions its current configs.
pub(crate) struct Reconfigure {
    pub(crate) topic: Arc<TopicMeta>,
}

impl ShardCall<ShardContext> for Reconfigure {
    type Reply = ();

    async fn run(self, shard: Rc<ShardContext>) {
        let config = self.topic.log_config(&shard.log_defaults);
        for log in shard.partitions.open_logs_of(self.topic.id) {
            log.set_config(config.clone());
        }
    }
}

/// A partition's offsets and size.
pub(crate) struct Describe {
    pub(crate) at: PartitionRef,
}

impl PartitionCall for Describe {
    fn partition(&self) -> &PartitionRef {
        &self.at
    }
}

impl ShardCall<ShardContext> for Describe {
    type Reply = Result<PartitionDescription, WireError>;

    async fn run(self, shard: Rc<ShardContext>) -> Self::Reply {
        let log = shard.log(&self.at).await?;
        Ok(PartitionDescription {
            partition: self.at.partition,
            shard: shard.id,
            log_start_offset: log.log_start_offset(),
            high_watermark: log.high_watermark(),
            size_bytes: log.size_bytes(),
        })
    }
}
