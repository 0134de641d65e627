//! The broker's runs: each start of a broker on a data directory is a run with a random id,
//! recorded in `<data-dir>/meta/run` before anything in the directory is written.
//!
//! A log that closes with everything synced leaves a clean-stop marker naming the run it
//! closed in (`log/maintain.rs`). The next start trusts a marker only if it names the run
//! just before it: a marker from any older run is stale, whatever happened since. So a
//! start removes no markers and syncs nothing per partition (a crash after it cannot be
//! mistaken for a clean stop, since the markers name a run that is no longer the previous
//! one); it only makes the new run's id durable, once.

use std::path::Path;

use super::error::StorageError;
use super::meta_file::{self, Access};

/// The file under `<data-dir>/meta` that names the current (or last) run.
const RUN_FILE: &str = "run";

/// The runs a log is opened between.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Runs {
    /// The run before this one, if it is known: a clean-stop marker naming it was left by a
    /// clean close in that run, with nothing written to the log since.
    pub(crate) previous: Option<u64>,
    /// This run: a clean close names it in its marker. None for a log opened outside a
    /// broker (tests): it trusts no marker and leaves none.
    pub(crate) current: Option<u64>,
}

impl Runs {
    /// Begins a run of a broker on `data_dir` (whose `meta` directory exists): reads the
    /// previous run's id and makes a new one durable before returning, so that no write of
    /// this run can precede it on disk.
    pub fn begin(data_dir: &Path) -> Result<Runs, StorageError> {
        let meta = data_dir.join("meta");
        let path = meta.join(RUN_FILE);
        let previous = match std::fs::read(&path) {
            Ok(bytes) => decode(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StorageError::io(&path, e)),
        };
        let current = loop {
            let mut bytes = [0u8; 8];
            getrandom::getrandom(&mut bytes)
                .map_err(|e| StorageError::io(&path, std::io::Error::other(e.to_string())))?;
            let id = u64::from_le_bytes(bytes);
            if Some(id) != previous {
                break id;
            }
        };
        meta_file::replace(&meta, RUN_FILE, &encode(current), Access::Default)?;
        Ok(Runs {
            previous,
            current: Some(current),
        })
    }

    /// The runs of a process that starts after this one, as [`Runs::begin`] would give them.
    #[cfg(test)]
    pub(crate) fn next(self, id: u64) -> Runs {
        Runs {
            previous: self.current,
            current: Some(id),
        }
    }
}

/// A run's id as written to the run file and to clean-stop markers: 16 hex digits and a
/// newline.
pub(crate) fn encode(id: u64) -> Vec<u8> {
    format!("{id:016x}\n").into_bytes()
}

/// The run id in a run file or a marker; None if it holds anything else (a marker torn by
/// a power loss reads as no marker).
pub(crate) fn decode(bytes: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(bytes).ok()?.strip_suffix('\n')?;
    if text.len() != 16 {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_anything_else_is_none() {
        for id in [0, 1, 0xdead_beef, u64::MAX] {
            assert_eq!(decode(&encode(id)), Some(id));
        }
        for bad in [
            &b""[..],
            b"\n",
            b"12\n",
            b"00000000000000001",
            b"000000000000000g\n",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        // Torn: the length reached the disk, the bytes did not.
        assert_eq!(decode(&[0u8; 17]), None);
    }

    #[test]
    fn each_run_names_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("meta")).unwrap();
        let first = Runs::begin(dir.path()).unwrap();
        assert_eq!(first.previous, None);
        let second = Runs::begin(dir.path()).unwrap();
        assert_eq!(second.previous, first.current);
        assert_ne!(second.current, first.current);
        let third = Runs::begin(dir.path()).unwrap();
        assert_eq!(third.previous, second.current);

        // A damaged run file: the previous run is unknown, so no marker is trusted.
        std::fs::write(dir.path().join("meta").join(RUN_FILE), b"garbage").unwrap();
        assert_eq!(Runs::begin(dir.path()).unwrap().previous, None);
    }
}
