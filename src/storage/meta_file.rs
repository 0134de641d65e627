//! Small metadata files replaced whole: written to a temporary file, synced, renamed over
//! the old one, and the directory synced. A crash leaves the old file or the new one,
//! never a mix.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::error::StorageError;

/// Who may read a metadata file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// As the process's umask allows.
    Default,
    /// The broker's user only (mode 0600): files that hold credentials.
    Owner,
}

/// Makes `bytes` the durable content of `dir/name`.
pub(crate) fn replace(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    access: Access,
) -> Result<(), StorageError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if access == Access::Owner {
        options.mode(0o600);
    }
    options
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .map_err(|e| StorageError::io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| StorageError::io(&path, e))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(dir, e))
}
