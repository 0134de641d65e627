//! The broker's users: SCRAM credentials in `<data-dir>/meta/users.json` (mode 0600),
//! shared by every shard.
//!
//! Readers (a login on any shard) load the current table without a lock; a change is
//! serialised by a mutex, written durably (see `meta_file`) and only then published, so a
//! user an administrator was told exists survives a crash. The file holds, per user and
//! SCRAM hash, the salt, iteration count, stored key and server key — never a password.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::error::StorageError;
use super::meta_file::{self, Access};
use crate::auth::scram::{MAX_ITERATIONS, MIN_ITERATIONS};
use crate::auth::{Credential, ScramHash};

const FILE: &str = "users.json";

/// Every user's credentials, by name and hash.
pub type UserTable = BTreeMap<String, BTreeMap<ScramHash, Credential>>;

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredUsers {
    users: BTreeMap<String, Vec<StoredCredential>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredCredential {
    mechanism: String,
    iterations: u32,
    salt: String,
    stored_key: String,
    server_key: String,
}

/// Reads a users file.
pub(crate) fn decode(bytes: &[u8]) -> Result<UserTable, String> {
    let stored: StoredUsers = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let mut table = UserTable::new();
    for (name, credentials) in stored.users {
        let mut by_hash = BTreeMap::new();
        for c in credentials {
            let hash = crate::auth::Mechanism::from_name(&c.mechanism)
                .and_then(crate::auth::Mechanism::scram)
                .ok_or_else(|| format!("user {name:?}: unknown mechanism {:?}", c.mechanism))?;
            let bytes = |field: &str, text: &str| {
                BASE64
                    .decode(text)
                    .map_err(|_| format!("user {name:?}: {field} is not base64"))
            };
            by_hash.insert(
                hash,
                Credential {
                    hash,
                    salt: bytes("salt", &c.salt)?,
                    iterations: c.iterations,
                    stored_key: bytes("stored_key", &c.stored_key)?,
                    server_key: bytes("server_key", &c.server_key)?,
                },
            );
        }
        table.insert(name, by_hash);
    }
    Ok(table)
}

/// Writes a file the broker reads back with `decode`.
pub(crate) fn encode(table: &UserTable) -> Vec<u8> {
    let users = table
        .iter()
        .map(|(name, credentials)| {
            let list = credentials
                .values()
                .map(|c| StoredCredential {
                    mechanism: c.hash.name().to_string(),
                    iterations: c.iterations,
                    salt: BASE64.encode(&c.salt),
                    stored_key: BASE64.encode(&c.stored_key),
                    server_key: BASE64.encode(&c.server_key),
                })
                .collect();
            (name.clone(), list)
        })
        .collect();
    // Plain data with string keys: serialising cannot fail.
    serde_json::to_vec_pretty(&StoredUsers { users }).unwrap_or_default()
}

/// Why a user change was refused.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The name is not one the broker accepts.
    #[error("invalid user name: {0}")]
    InvalidName(String),
    /// The iteration count is outside what the broker accepts.
    #[error("iterations must be {MIN_ITERATIONS}..={MAX_ITERATIONS}, not {0}")]
    Iterations(i64),
    /// An empty salt or salted password.
    #[error("a credential needs a salt and a salted password")]
    EmptyCredential,
    /// No such user (or no credential of that hash).
    #[error("no such user or credential: {0}")]
    NotFound(String),
    /// The file could not be written.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The durable user table shared by all shards.
pub struct Users {
    dir: PathBuf,
    current: ArcSwap<UserTable>,
    write: Mutex<()>,
}

impl Users {
    /// Opens the table in `<data_dir>/meta/` (the directory must exist); none: no users. A
    /// damaged file is an error: starting without it would lock every user out, or worse,
    /// let a re-added name in with another password unnoticed.
    pub fn open(data_dir: &Path) -> Result<Users, StorageError> {
        let dir = data_dir.join("meta");
        let path = dir.join(FILE);
        let table = match std::fs::read(&path) {
            Ok(bytes) => decode(&bytes).map_err(|e| StorageError::corrupt(&path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => UserTable::new(),
            Err(e) => return Err(StorageError::io(&path, e)),
        };
        Ok(Users {
            dir,
            current: ArcSwap::from_pointee(table),
            write: Mutex::new(()),
        })
    }

    /// The table as it is now.
    pub fn table(&self) -> Arc<UserTable> {
        self.current.load_full()
    }

    /// `user`'s credential for `hash`.
    pub fn credential(&self, user: &str, hash: ScramHash) -> Option<Credential> {
        self.current.load().get(user)?.get(&hash).cloned()
    }

    /// Whether `user` has any credential.
    pub fn exists(&self, user: &str) -> bool {
        self.current.load().contains_key(user)
    }

    /// Adds or replaces `user`'s credential for its hash.
    pub fn upsert(&self, user: &str, credential: Credential) -> Result<(), UserError> {
        crate::auth::validate_user_name(user).map_err(UserError::InvalidName)?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&credential.iterations) {
            return Err(UserError::Iterations(credential.iterations.into()));
        }
        self.change(|table| {
            table
                .entry(user.to_string())
                .or_default()
                .insert(credential.hash, credential);
            Ok(())
        })
    }

    /// Adds or replaces `user`'s credential from a password the client salted (Kafka's
    /// AlterUserScramCredentials and the native UpsertUser carry it so).
    pub fn upsert_salted(
        &self,
        user: &str,
        hash: ScramHash,
        iterations: i64,
        salt: &[u8],
        salted_password: &[u8],
    ) -> Result<(), UserError> {
        let iterations = u32::try_from(iterations)
            .ok()
            .filter(|i| (MIN_ITERATIONS..=MAX_ITERATIONS).contains(i))
            .ok_or(UserError::Iterations(iterations))?;
        if salt.is_empty() || salted_password.is_empty() {
            return Err(UserError::EmptyCredential);
        }
        let credential =
            Credential::from_salted_password(hash, salt.to_vec(), iterations, salted_password);
        self.upsert(user, credential)
    }

    /// Removes `user`'s credential for `hash`, or all of the user's with `None`.
    pub fn remove(&self, user: &str, hash: Option<ScramHash>) -> Result<(), UserError> {
        self.change(|table| {
            let not_found = || {
                UserError::NotFound(match hash {
                    Some(h) => format!("{user} ({})", h.name()),
                    None => user.to_string(),
                })
            };
            let credentials = table.get_mut(user).ok_or_else(not_found)?;
            match hash {
                Some(h) => {
                    credentials.remove(&h).ok_or_else(not_found)?;
                    if credentials.is_empty() {
                        table.remove(user);
                    }
                }
                None => {
                    table.remove(user);
                }
            }
            Ok(())
        })
    }

    fn change(
        &self,
        f: impl FnOnce(&mut UserTable) -> Result<(), UserError>,
    ) -> Result<(), UserError> {
        let _guard = self
            .write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = (*self.current.load_full()).clone();
        f(&mut next)?;
        meta_file::replace(&self.dir, FILE, &encode(&next), Access::Owner)?;
        self.current.store(Arc::new(next));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scram::DEFAULT_ITERATIONS;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn users_survive_a_reopen_and_the_file_is_private_and_holds_no_password() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("meta")).unwrap();
        let users = Users::open(dir.path()).unwrap();
        for hash in ScramHash::ALL {
            users
                .upsert(
                    "alice",
                    Credential::new(hash, "hunter2hunter2", DEFAULT_ITERATIONS),
                )
                .unwrap();
        }
        users
            .upsert("bob", Credential::new(ScramHash::Sha512, "pw", 8192))
            .unwrap();
        assert!(matches!(
            users.upsert("carol", Credential::new(ScramHash::Sha256, "pw", 100)),
            Err(UserError::Iterations(100))
        ));
        assert!(matches!(
            users.upsert("", Credential::new(ScramHash::Sha256, "pw", 4096)),
            Err(UserError::InvalidName(_))
        ));
        users.remove("bob", Some(ScramHash::Sha512)).unwrap();
        assert!(!users.exists("bob"));
        assert!(matches!(
            users.remove("bob", None),
            Err(UserError::NotFound(_))
        ));

        let path = dir.path().join("meta").join(FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("hunter2"));

        let reopened = Users::open(dir.path()).unwrap();
        assert_eq!(reopened.table(), users.table());
        for hash in ScramHash::ALL {
            assert!(reopened
                .credential("alice", hash)
                .unwrap()
                .verify_password("hunter2hunter2"));
        }
        std::fs::write(&path, b"{\"users\": 3}").unwrap();
        assert!(Users::open(dir.path()).is_err());
    }
}
