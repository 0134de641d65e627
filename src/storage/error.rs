//! Errors of the storage boundary.

use std::io;
use std::path::{Path, PathBuf};

use super::producers::ProducerError;

/// Why a partition log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The requested offset is not in the log.
    #[error("offset {requested} is out of range [{log_start}, {high_watermark}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: i64,
        /// The first offset still in the log.
        log_start: i64,
        /// The next offset to be assigned.
        high_watermark: i64,
    },
    /// The data device is full (`ENOSPC` or `EDQUOT`).
    #[error("no space left on the data device")]
    NoSpace,
    /// A file holds bytes that cannot be a log, and could not be repaired by truncation.
    #[error("corrupt log {path}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The offsets asked for lie in a batch the broker found corrupt and fenced: it is never
    /// returned as data (`log/fence.rs`).
    #[error("{}", crate::protocol::error::fenced_message(*first, *last, reason))]
    Fenced {
        /// First fenced offset.
        first: i64,
        /// Last fenced offset; reads go on from the one after it.
        last: i64,
        /// What was found wrong, and where.
        reason: String,
    },
    /// The partition was closed.
    #[error("partition is closed")]
    Closed,
    /// An I/O operation failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A batch handed to append is not a well-formed record batch.
    #[error("invalid record batch: {0}")]
    InvalidBatch(String),
    /// An idempotent producer's batch failed the partition's producer checks (see
    /// `storage::producers`).
    #[error(transparent)]
    Producer(#[from] ProducerError),
}

impl StorageError {
    /// Wraps an I/O error on `path`, turning a full device into [`StorageError::NoSpace`].
    pub(crate) fn io(path: &Path, source: io::Error) -> StorageError {
        match source.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => StorageError::NoSpace,
            _ => StorageError::Io {
                path: path.to_path_buf(),
                source,
            },
        }
    }

    /// Builds a corruption error.
    pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> StorageError {
        StorageError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// An equivalent error, for handing one failure to every caller of a group commit
    /// (`io::Error` is not `Clone`).
    pub(crate) fn replicate(&self) -> StorageError {
        match self {
            StorageError::OffsetOutOfRange {
                requested,
                log_start,
                high_watermark,
            } => StorageError::OffsetOutOfRange {
                requested: *requested,
                log_start: *log_start,
                high_watermark: *high_watermark,
            },
            StorageError::NoSpace => StorageError::NoSpace,
            StorageError::Corrupt { path, reason } => StorageError::Corrupt {
                path: path.clone(),
                reason: reason.clone(),
            },
            StorageError::Fenced {
                first,
                last,
                reason,
            } => StorageError::Fenced {
                first: *first,
                last: *last,
                reason: reason.clone(),
            },
            StorageError::Closed => StorageError::Closed,
            StorageError::Io { path, source } => StorageError::Io {
                path: path.clone(),
                source: match source.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(source.kind(), source.to_string()),
                },
            },
            StorageError::InvalidBatch(reason) => StorageError::InvalidBatch(reason.clone()),
            StorageError::Producer(e) => StorageError::Producer(e.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_becomes_no_space() {
        let err = StorageError::io(Path::new("x"), io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(err, StorageError::NoSpace));
        let err = StorageError::io(Path::new("x"), io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(err.replicate(), StorageError::Io { .. }));
    }
}
