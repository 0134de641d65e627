//! The broker's client quotas in `<data-dir>/meta/quotas.json`, shared by every shard.
//!
//! Every metered request loads the current set without a lock (one atomic reference
//! count); a change is serialised by a mutex, written durably (`meta_file`) and only then
//! published, so every shard applies it from its next request and a restart keeps it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::error::StorageError;
use super::meta_file::{self, Access};
use crate::auth::quota::{EntityName, QuotaEntity, QuotaKey, QuotaValues, Quotas};

const FILE: &str = "quotas.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredQuotas {
    quotas: Vec<StoredQuota>,
}

/// One entity and its limits; a missing part names any user (or any client id).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredQuota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<StoredName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<StoredName>,
    values: BTreeMap<String, f64>,
}

/// `{"named": "alice"}` or `"default"`: no name is taken to mean the default.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredName {
    Named(String),
    Default,
}

impl StoredName {
    fn of(name: &EntityName) -> StoredName {
        match name {
            EntityName::Named(n) => StoredName::Named(n.clone()),
            EntityName::Default => StoredName::Default,
        }
    }

    fn name(self) -> EntityName {
        match self {
            StoredName::Named(n) => EntityName::Named(n),
            StoredName::Default => EntityName::Default,
        }
    }
}

/// Reads a quota file.
pub(crate) fn decode(bytes: &[u8]) -> Result<Quotas, String> {
    let stored: StoredQuotas = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let mut entries = BTreeMap::new();
    for q in stored.quotas {
        let entity = QuotaEntity {
            user: q.user.map(StoredName::name),
            client_id: q.client_id.map(StoredName::name),
        };
        entity.validate()?;
        let mut values = QuotaValues::new();
        for (key, value) in q.values {
            let key = key.parse::<QuotaKey>()?;
            key.validate(value)?;
            values.insert(key, value);
        }
        if entries.insert(entity.clone(), values).is_some() {
            return Err(format!("the entity {entity} is given twice"));
        }
    }
    Ok(Quotas::new(entries))
}

/// Writes a file the broker reads back with `decode`.
pub(crate) fn encode(quotas: &Quotas) -> Vec<u8> {
    let quotas = quotas
        .entries()
        .iter()
        .map(|(entity, values)| StoredQuota {
            user: entity.user.as_ref().map(StoredName::of),
            client_id: entity.client_id.as_ref().map(StoredName::of),
            values: values
                .iter()
                .map(|(k, v)| (k.name().to_string(), *v))
                .collect(),
        })
        .collect();
    // Strings and finite numbers: serialising cannot fail.
    serde_json::to_vec_pretty(&StoredQuotas { quotas }).unwrap_or_default()
}

/// Why a quota change was refused.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// An entity, key or value the broker does not accept.
    #[error("invalid quota: {0}")]
    Invalid(String),
    /// The file could not be written.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// One change to one entity's limit: set it (`Some`) or remove it (`None`).
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaChange {
    /// The entity.
    pub entity: QuotaEntity,
    /// The limit.
    pub key: QuotaKey,
    /// Its new value, or `None` to remove it.
    pub value: Option<f64>,
}

/// The durable quota set shared by all shards.
pub struct QuotaStore {
    dir: PathBuf,
    current: ArcSwap<Quotas>,
    write: Mutex<()>,
}

impl QuotaStore {
    /// Opens the set in `<data_dir>/meta/` (none: no quotas). A damaged file is an error:
    /// starting without it would lift every limit.
    pub fn open(data_dir: &Path) -> Result<QuotaStore, StorageError> {
        let dir = data_dir.join("meta");
        let path = dir.join(FILE);
        let quotas = match std::fs::read(&path) {
            Ok(bytes) => decode(&bytes).map_err(|e| StorageError::corrupt(&path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Quotas::default(),
            Err(e) => return Err(StorageError::io(&path, e)),
        };
        Ok(QuotaStore {
            dir,
            current: ArcSwap::from_pointee(quotas),
            write: Mutex::new(()),
        })
    }

    /// The set as it is now.
    pub fn current(&self) -> Arc<Quotas> {
        self.current.load_full()
    }

    /// The set as it is now, unless it is empty: then no reference is taken (the request
    /// path asks this of every request, and most brokers set no quota).
    pub fn if_any(&self) -> Option<Arc<Quotas>> {
        let quotas = self.current.load();
        (!quotas.is_empty()).then(|| arc_swap::Guard::into_inner(quotas))
    }

    /// Applies `changes`, all or none (each is checked first). With `validate_only`, only
    /// checks them.
    pub fn alter(
        &self,
        changes: &[QuotaChange],
        validate_only: bool,
        by: &str,
    ) -> Result<(), QuotaError> {
        for c in changes {
            c.entity.validate().map_err(QuotaError::Invalid)?;
            if let Some(v) = c.value {
                c.key
                    .validate(v)
                    .map_err(|e| QuotaError::Invalid(format!("{}: {e}", c.entity)))?;
            }
        }
        if validate_only {
            return Ok(());
        }
        let _guard = self
            .write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = Quotas::clone(&self.current.load());
        for c in changes {
            next.alter(&c.entity, c.key, c.value);
        }
        if let Err(e) = meta_file::replace(&self.dir, FILE, &encode(&next), Access::Default) {
            tracing::error!("storing a quota change failed: {e}");
            return Err(e.into());
        }
        self.current.store(Arc::new(next));
        for c in changes {
            let what = c
                .value
                .map_or("removed".to_string(), |v| format!("set to {v}"));
            tracing::info!(by, "quota {} {}: {what}", c.entity, c.key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::quota::{CLIENT_ID, USER};

    #[test]
    fn quotas_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("meta")).unwrap();
        let store = QuotaStore::open(dir.path()).unwrap();
        let alice = QuotaEntity::from_parts([(USER, Some("alice")), (CLIENT_ID, None)]).unwrap();
        let clients = QuotaEntity {
            user: None,
            client_id: Some(EntityName::Default),
        };
        let set = |entity: &QuotaEntity, key, value| QuotaChange {
            entity: entity.clone(),
            key,
            value,
        };
        store
            .alter(
                &[
                    set(&alice, QuotaKey::ProducerByteRate, Some(1024.0)),
                    set(&clients, QuotaKey::RequestPercentage, Some(12.5)),
                ],
                false,
                "test",
            )
            .unwrap();
        let bad = set(&alice, QuotaKey::ConsumerByteRate, Some(-1.0));
        assert!(matches!(
            store.alter(std::slice::from_ref(&bad), false, "test"),
            Err(QuotaError::Invalid(_))
        ));
        assert!(matches!(
            store.alter(&[bad], true, "test"),
            Err(QuotaError::Invalid(_))
        ));
        store
            .alter(
                &[set(&alice, QuotaKey::ConsumerByteRate, Some(1.0))],
                true,
                "test",
            )
            .unwrap();
        assert_eq!(store.current().entries().len(), 2);

        let reopened = QuotaStore::open(dir.path()).unwrap();
        assert_eq!(reopened.current(), store.current());
        reopened
            .alter(
                &[set(&alice, QuotaKey::ProducerByteRate, None)],
                false,
                "test",
            )
            .unwrap();
        let again = QuotaStore::open(dir.path()).unwrap().current();
        assert_eq!(again.entries().len(), 1);
        assert_eq!(
            again
                .limit("bob", "x", QuotaKey::RequestPercentage)
                .map(|l| l.value),
            Some(12.5)
        );
    }

    #[test]
    fn a_damaged_file_is_refused() {
        assert!(decode(b"{").is_err());
        assert!(decode(br#"{"quotas":[{"values":{}}]}"#).is_err());
        let named = r#"{"named":"a"}"#;
        let file = |user: &str, values: &str| {
            format!(r#"{{"quotas":[{{"user":{user},"values":{values}}}]}}"#)
        };
        assert!(decode(file(named, r#"{"bogus":1}"#).as_bytes()).is_err());
        assert!(decode(file(named, r#"{"producer_byte_rate":0}"#).as_bytes()).is_err());
        assert!(decode(file("7", "{}").as_bytes()).is_err());
        let q = decode(file(r#""default""#, r#"{"producer_byte_rate":5}"#).as_bytes()).unwrap();
        assert_eq!(q.entries().len(), 1);
        assert_eq!(decode(&encode(&q)).unwrap(), q);
    }
}
