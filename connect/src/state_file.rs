//! Small JSON state files replaced whole: written to a temporary file, synced, renamed
//! over the old one, and the directory synced, so that after a crash (or a power loss)
//! the file holds either the old state or the new one, never a mix or nothing.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The state in `path`, or `None` if there is no such file.
pub(crate) fn load<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let state = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "the state file {} is damaged (remove it to start the connector over)",
            path.display()
        )
    })?;
    Ok(Some(state))
}

/// Replaces the state in `path` with `state`, durably.
pub(crate) fn save<T: Serialize>(path: &Path, state: &T) -> anyhow::Result<()> {
    let write = || -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(state).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
    };
    write().with_context(|| format!("cannot write the state file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn saves_and_loads_replacing_the_old_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        assert_eq!(load::<BTreeMap<u32, i64>>(&path).unwrap(), None);
        save(&path, &BTreeMap::from([(0u32, 5i64)])).unwrap();
        save(&path, &BTreeMap::from([(1u32, 7i64)])).unwrap();
        assert_eq!(load(&path).unwrap(), Some(BTreeMap::from([(1u32, 7i64)])));
        std::fs::write(&path, b"{").unwrap();
        let damaged = format!("{:#}", load::<BTreeMap<u32, i64>>(&path).unwrap_err());
        assert!(damaged.contains("is damaged"), "{damaged}");
    }
}
