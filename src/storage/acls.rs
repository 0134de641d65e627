//! The broker's ACLs in `<data-dir>/meta/acls.json`, shared by every shard.
//!
//! Every request the authorizer checks loads the current set without a lock (one atomic
//! reference count); a change is serialised by a mutex, written durably (`meta_file`) and
//! only then published, so every shard sees it at once and a restart keeps it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::error::StorageError;
use super::meta_file::{self, Access};
use crate::auth::acl::{Acl, AclFilter, Acls, Operation, PatternType, Permission, ResourceType};

const FILE: &str = "acls.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAcls {
    acls: Vec<StoredAcl>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAcl {
    resource_type: String,
    resource_name: String,
    pattern: String,
    principal: String,
    host: String,
    operation: String,
    permission: String,
}

/// Reads an ACL file.
pub(crate) fn decode(bytes: &[u8]) -> Result<Acls, String> {
    let stored: StoredAcls = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let acls = stored
        .acls
        .into_iter()
        .map(|a| {
            let acl = Acl {
                resource_type: a.resource_type.parse::<ResourceType>()?,
                resource_name: a.resource_name,
                pattern: a.pattern.parse::<PatternType>()?,
                principal: a.principal,
                host: a.host,
                operation: a.operation.parse::<Operation>()?,
                permission: a.permission.parse::<Permission>()?,
            };
            acl.validate().map(|()| acl)
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Acls::new(acls))
}

/// Writes a file the broker reads back with `decode`.
pub(crate) fn encode(acls: &Acls) -> Vec<u8> {
    let acls = acls
        .all()
        .iter()
        .map(|a| StoredAcl {
            resource_type: a.resource_type.name().into(),
            resource_name: a.resource_name.clone(),
            pattern: a.pattern.name().into(),
            principal: a.principal.clone(),
            host: a.host.clone(),
            operation: a.operation.name().into(),
            permission: a.permission.name().into(),
        })
        .collect();
    // Plain strings: serialising cannot fail.
    serde_json::to_vec_pretty(&StoredAcls { acls }).unwrap_or_default()
}

/// Why an ACL change was refused.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// An ACL the broker does not accept.
    #[error("invalid ACL: {0}")]
    Invalid(String),
    /// The file could not be written.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The durable ACL set shared by all shards.
pub struct AclStore {
    dir: PathBuf,
    current: ArcSwap<Acls>,
    write: Mutex<()>,
}

impl AclStore {
    /// Opens the set in `<data_dir>/meta/` (none: no ACLs). A damaged file is an error:
    /// starting without it would change who may do what.
    pub fn open(data_dir: &Path) -> Result<AclStore, StorageError> {
        let dir = data_dir.join("meta");
        let path = dir.join(FILE);
        let acls = match std::fs::read(&path) {
            Ok(bytes) => decode(&bytes).map_err(|e| StorageError::corrupt(&path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Acls::default(),
            Err(e) => return Err(StorageError::io(&path, e)),
        };
        Ok(AclStore {
            dir,
            current: ArcSwap::from_pointee(acls),
            write: Mutex::new(()),
        })
    }

    /// The set as it is now.
    pub fn current(&self) -> Arc<Acls> {
        self.current.load_full()
    }

    /// Adds `acls` (all or none: each is checked first).
    pub fn add(&self, acls: Vec<Acl>) -> Result<(), AclError> {
        for acl in &acls {
            acl.validate()
                .map_err(|e| AclError::Invalid(format!("{acl}: {e}")))?;
        }
        self.change(|all| {
            all.extend(acls);
            Vec::new()
        })
        .map(drop)
    }

    /// Removes the ACLs `filter` matches; returns them.
    pub fn remove(&self, filter: &AclFilter) -> Result<Vec<Acl>, AclError> {
        self.change(|all| {
            let (removed, kept) = std::mem::take(all)
                .into_iter()
                .partition(|a| filter.matches(a));
            *all = kept;
            removed
        })
    }

    fn change(&self, f: impl FnOnce(&mut Vec<Acl>) -> Vec<Acl>) -> Result<Vec<Acl>, AclError> {
        let _guard = self
            .write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all = self.current.load().all().to_vec();
        let out = f(&mut all);
        let next = Acls::new(all);
        meta_file::replace(&self.dir, FILE, &encode(&next), Access::Owner)?;
        self.current.store(Arc::new(next));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acls_survive_a_reopen_and_filters_remove_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("meta")).unwrap();
        let store = AclStore::open(dir.path()).unwrap();
        let acl = |name: &str, op| Acl {
            resource_type: ResourceType::Topic,
            resource_name: name.into(),
            pattern: PatternType::Literal,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: op,
            permission: Permission::Allow,
        };
        store
            .add(vec![acl("a", Operation::Read), acl("b", Operation::Write)])
            .unwrap();
        let mut bad = acl("c", Operation::Read);
        bad.principal = "alice".into();
        assert!(matches!(store.add(vec![bad]), Err(AclError::Invalid(_))));
        assert_eq!(store.current().all().len(), 2);
        assert!(store.current().authorize(
            "alice",
            None,
            Operation::Read,
            ResourceType::Topic,
            "a"
        ));

        let reopened = AclStore::open(dir.path()).unwrap();
        assert_eq!(reopened.current(), store.current());
        let removed = reopened
            .remove(&AclFilter {
                operation: Some(Operation::Write),
                ..AclFilter::default()
            })
            .unwrap();
        assert_eq!(removed, vec![acl("b", Operation::Write)]);
        assert_eq!(AclStore::open(dir.path()).unwrap().current().all().len(), 1);
    }
}
