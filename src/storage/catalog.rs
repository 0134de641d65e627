//! The topic catalog: names, partition counts and config overrides, stored in
//! `<data-dir>/meta/topics.json`.
//!
//! Every shard reads the catalog on its data path (does this topic exist, how many
//! partitions), so reads are a lock-free pointer load ([`arc_swap`]). Changes are rare admin
//! operations: they serialise on a mutex that no data-path code touches, write a new file
//! next to the old one, fsync it, rename it over the old one and fsync the directory, and
//! only then publish the new catalog. A crash leaves either the old or the new file.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::config::{CleanupPolicy, Ratio};
use super::LogConfig;

/// Prefix of a topic directory moved aside for deletion; no topic name may start with it.
pub const DELETED_PREFIX: &str = ".deleted-";

/// Most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 10_000;

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    /// Name.
    pub name: String,
    /// Unique for the broker's lifetime: a topic deleted and created again gets a new id.
    pub id: u64,
    /// Partition count.
    pub partitions: u32,
    /// Config overrides set on this topic.
    pub configs: BTreeMap<String, String>,
}

impl TopicMeta {
    /// This topic's log config: the broker defaults with the topic's overrides applied.
    pub fn log_config(&self, defaults: &LogConfig) -> LogConfig {
        let mut config = defaults.clone();
        for (key, value) in &self.configs {
            // Overrides were validated when set; a hand-edited bad value keeps the default.
            let _ = apply_config(&mut config, key, value);
        }
        config
    }
}

/// The set of topics at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Topics by name.
    pub topics: BTreeMap<String, Arc<TopicMeta>>,
    /// Next topic id.
    pub next_id: u64,
}

/// Why a catalog change was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// No such topic.
    #[error("topic `{0}` does not exist")]
    UnknownTopic(String),
    /// Name taken.
    #[error("topic `{0}` already exists")]
    AlreadyExists(String),
    /// Bad name.
    #[error("invalid topic name `{name}`: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// Bad partition count.
    #[error("invalid partition count {0}: must be 1..={MAX_PARTITIONS}")]
    InvalidPartitions(u32),
    /// Bad config entry.
    #[error("invalid config `{key}={value}`: {reason}")]
    InvalidConfig {
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// Why.
        reason: String,
    },
    /// The catalog file could not be read or written.
    #[error("catalog i/o on {path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The catalog file is not valid.
    #[error("catalog file {path} is corrupt: {reason}")]
    Corrupt {
        /// File involved.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The durable catalog shared by all shards.
pub struct CatalogStore {
    dir: PathBuf,
    current: ArcSwap<Catalog>,
    /// Serialises changes (admin path only).
    write: Mutex<()>,
}

const FILE: &str = "topics.json";

impl CatalogStore {
    /// Opens `<data_dir>/meta/topics.json`, creating the directory and an empty catalog if
    /// there is none.
    pub fn open(data_dir: &Path) -> Result<CatalogStore, CatalogError> {
        let dir = data_dir.join("meta");
        fs::create_dir_all(&dir).map_err(|source| CatalogError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(FILE);
        let catalog = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CatalogError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Catalog::default(),
            Err(source) => return Err(CatalogError::Io { path, source }),
        };
        Ok(CatalogStore {
            dir,
            current: ArcSwap::from_pointee(catalog),
            write: Mutex::new(()),
        })
    }

    /// The current catalog.
    pub fn snapshot(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    /// One topic, if it exists.
    pub fn get(&self, name: &str) -> Option<Arc<TopicMeta>> {
        self.current.load().topics.get(name).cloned()
    }

    /// Adds a topic and makes it durable.
    pub fn create(
        &self,
        name: &str,
        partitions: u32,
        configs: &[(String, String)],
        defaults: &LogConfig,
    ) -> Result<Arc<TopicMeta>, CatalogError> {
        validate_topic_name(name)?;
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(CatalogError::InvalidPartitions(partitions));
        }
        let overrides = validate_configs(configs, defaults)?;
        self.change(|catalog| {
            if catalog.topics.contains_key(name) {
                return Err(CatalogError::AlreadyExists(name.to_string()));
            }
            let meta = Arc::new(TopicMeta {
                name: name.to_string(),
                id: catalog.next_id,
                partitions,
                configs: overrides,
            });
            catalog.next_id += 1;
            catalog.topics.insert(name.to_string(), meta.clone());
            Ok(meta)
        })
    }

    /// Removes a topic and makes that durable; returns what it was.
    pub fn delete(&self, name: &str) -> Result<Arc<TopicMeta>, CatalogError> {
        self.change(|catalog| {
            catalog
                .topics
                .remove(name)
                .ok_or_else(|| CatalogError::UnknownTopic(name.to_string()))
        })
    }

    /// Sets config overrides on a topic, removes the overrides named in `remove` (the topic
    /// then follows the broker's default again), and makes that durable.
    pub fn alter(
        &self,
        name: &str,
        configs: &[(String, String)],
        remove: &[String],
        defaults: &LogConfig,
    ) -> Result<Arc<TopicMeta>, CatalogError> {
        let overrides = validate_configs(configs, defaults)?;
        if let Some(key) = remove.iter().find(|k| !CONFIG_KEYS.contains(&k.as_str())) {
            return Err(CatalogError::InvalidConfig {
                key: key.clone(),
                value: String::new(),
                reason: format!("unknown config (known: {})", CONFIG_KEYS.join(", ")),
            });
        }
        self.change(|catalog| {
            let old = catalog
                .topics
                .get(name)
                .ok_or_else(|| CatalogError::UnknownTopic(name.to_string()))?;
            let mut meta = (**old).clone();
            for key in remove {
                meta.configs.remove(key);
            }
            meta.configs.extend(overrides);
            let meta = Arc::new(meta);
            catalog.topics.insert(name.to_string(), meta.clone());
            Ok(meta)
        })
    }

    fn change<T>(
        &self,
        f: impl FnOnce(&mut Catalog) -> Result<T, CatalogError>,
    ) -> Result<T, CatalogError> {
        let _guard = self
            .write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = (*self.current.load_full()).clone();
        let out = f(&mut next)?;
        self.persist(&next)?;
        self.current.store(Arc::new(next));
        Ok(out)
    }

    fn persist(&self, catalog: &Catalog) -> Result<(), CatalogError> {
        let path = self.dir.join(FILE);
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| CatalogError::Io { path: p, source }
        };
        let bytes = serde_json::to_vec_pretty(catalog).map_err(|e| CatalogError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut file = fs::File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(&bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(())
    }
}

/// Kafka's rule: 1–249 characters of ASCII letters, digits, `.`, `_`, `-`; not `.` or `..`;
/// plus the broker's own reserved names (`meta`, the `.deleted-` prefix).
pub fn validate_topic_name(name: &str) -> Result<(), CatalogError> {
    let bad = |reason| {
        Err(CatalogError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 249 {
        return bad("longer than 249 characters");
    }
    if name == "." || name == ".." {
        return bad("`.` and `..` are reserved");
    }
    if name == "meta" {
        return bad("`meta` is the broker's own directory");
    }
    if name.starts_with(DELETED_PREFIX) {
        return bad("names starting with `.deleted-` are reserved");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("only ASCII letters, digits, `.`, `_` and `-` are allowed");
    }
    Ok(())
}

/// The topic config keys this broker understands.
pub const CONFIG_KEYS: [&str; 8] = [
    "cleanup.policy",
    "delete.retention.ms",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
];

fn validate_configs(
    configs: &[(String, String)],
    defaults: &LogConfig,
) -> Result<BTreeMap<String, String>, CatalogError> {
    let mut scratch = defaults.clone();
    let mut out = BTreeMap::new();
    for (key, value) in configs {
        apply_config(&mut scratch, key, value).map_err(|reason| CatalogError::InvalidConfig {
            key: key.clone(),
            value: value.clone(),
            reason,
        })?;
        out.insert(key.clone(), value.trim().to_string());
    }
    Ok(out)
}

/// Applies one `key=value` to a log config, or says why it cannot.
pub fn apply_config(config: &mut LogConfig, key: &str, value: &str) -> Result<(), String> {
    let int = |v: &str| -> Result<i64, String> {
        v.trim()
            .parse::<i64>()
            .map_err(|_| format!("`{v}` is not an integer"))
    };
    let non_negative = |v: &str| -> Result<u64, String> {
        u64::try_from(int(v)?).map_err(|_| "must be 0 or a positive number of ms".to_string())
    };
    match key {
        "cleanup.policy" => config.cleanup = CleanupPolicy::parse(value)?,
        "delete.retention.ms" => config.delete_retention_ms = non_negative(value)?,
        "min.cleanable.dirty.ratio" => config.min_cleanable_dirty_ratio = Ratio::parse(value)?,
        "min.compaction.lag.ms" => config.min_compaction_lag_ms = non_negative(value)?,
        "retention.ms" => {
            let v = int(value)?;
            config.retention_ms = match v {
                -1 => None,
                v if v > 0 => Some(v),
                _ => return Err("must be -1 (forever) or a positive number of ms".into()),
            };
        }
        "retention.bytes" => {
            let v = int(value)?;
            config.retention_bytes = match v {
                -1 => None,
                v if v > 0 => Some(v as u64),
                _ => return Err("must be -1 (no limit) or a positive number of bytes".into()),
            };
        }
        "segment.bytes" => {
            let v = int(value)?;
            if !(1024..=(1i64 << 32) - 1).contains(&v) {
                return Err("must be between 1024 and 4294967295".into());
            }
            config.segment_bytes = v as u64;
        }
        "segment.ms" => {
            config.segment_ms = match int(value)? {
                -1 => None,
                v if v > 0 => Some(v as u64),
                _ => {
                    return Err("must be -1 (no time-based roll) or a positive number of ms".into())
                }
            };
        }
        _ => {
            return Err(format!(
                "unknown key; known keys are {}",
                CONFIG_KEYS.join(", ")
            ))
        }
    }
    Ok(())
}

/// The effective configs of a log config, as `key=value` pairs (for describe).
pub fn describe_config(config: &LogConfig) -> Vec<(String, String)> {
    vec![
        ("cleanup.policy".into(), config.cleanup.to_string()),
        (
            "delete.retention.ms".into(),
            config.delete_retention_ms.to_string(),
        ),
        (
            "min.cleanable.dirty.ratio".into(),
            config.min_cleanable_dirty_ratio.to_string(),
        ),
        (
            "min.compaction.lag.ms".into(),
            config.min_compaction_lag_ms.to_string(),
        ),
        (
            "retention.ms".into(),
            config.retention_ms.map_or("-1".into(), |v| v.to_string()),
        ),
        (
            "retention.bytes".into(),
            config
                .retention_bytes
                .map_or("-1".into(), |v| v.to_string()),
        ),
        ("segment.bytes".into(), config.segment_bytes.to_string()),
        (
            "segment.ms".into(),
            config.segment_ms.map_or("-1".into(), |v| v.to_string()),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_alter_delete_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let defaults = LogConfig::default();
        let store = CatalogStore::open(dir.path()).unwrap();
        let t = store
            .create(
                "orders",
                3,
                &[("retention.ms".into(), "1000".into())],
                &defaults,
            )
            .unwrap();
        assert_eq!(t.partitions, 3);
        assert!(matches!(
            store.create("orders", 1, &[], &defaults),
            Err(CatalogError::AlreadyExists(_))
        ));
        store
            .alter(
                "orders",
                &[("segment.bytes".into(), "4096".into())],
                &[],
                &defaults,
            )
            .unwrap();
        store.create("gone", 1, &[], &defaults).unwrap();
        store.delete("gone").unwrap();
        drop(store);

        let store = CatalogStore::open(dir.path()).unwrap();
        let t = store.get("orders").unwrap();
        assert_eq!(t.partitions, 3);
        let config = t.log_config(&defaults);
        assert_eq!(config.retention_ms, Some(1000));
        assert_eq!(config.segment_bytes, 4096);
        assert!(store.get("gone").is_none());
        let again = store.create("gone", 1, &[], &defaults).unwrap();
        assert!(again.id > t.id, "ids are never reused");
    }

    #[test]
    fn rejects_bad_names_counts_and_configs() {
        let dir = tempfile::tempdir().unwrap();
        let d = LogConfig::default();
        let store = CatalogStore::open(dir.path()).unwrap();
        for name in [
            "",
            ".",
            "..",
            "a/b",
            "meta",
            ".deleted-x-1",
            "spa ce",
            &"x".repeat(250),
        ] {
            assert!(store.create(name, 1, &[], &d).is_err(), "{name:?}");
        }
        assert!(store.create("t", 0, &[], &d).is_err());
        assert!(store.create("t", MAX_PARTITIONS + 1, &[], &d).is_err());
        for (k, v) in [
            ("retention.ms", "soon"),
            ("retention.ms", "0"),
            ("segment.bytes", "10"),
            ("cleanup.policy", "shred"),
            ("cleanup.policy", ""),
            ("delete.retention.ms", "-5"),
            ("min.cleanable.dirty.ratio", "2"),
            ("colour", "blue"),
        ] {
            assert!(
                matches!(
                    store.create("t", 1, &[(k.into(), v.into())], &d),
                    Err(CatalogError::InvalidConfig { .. })
                ),
                "{k}={v}"
            );
        }
        assert!(store.get("t").is_none());
    }
}
