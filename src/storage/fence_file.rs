//! The fence file: the corrupt batches of a partition that reads refuse to return
//! ([`Fence`]), one line each (`segment position len first last reason`) in the file
//! `fenced` of the partition directory. It is rewritten whole (temporary file, sync,
//! rename, directory sync) when a fence is added or retention drops one; fences are rare,
//! so that is plain blocking I/O. A line that cannot be read back is logged and skipped:
//! the scrubber finds the batch again on its next pass. The log's use of fences is in
//! `log/fence.rs`.

use std::fs;
use std::path::Path;

use tracing::warn;

use super::error::StorageError;
use super::meta_file::{self, Access};
use super::segment::Segment;

/// The file that holds a partition's fences.
const FENCE_FILE: &str = "fenced";

/// A corrupt batch that reads refuse to return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// Base offset of the segment that holds it.
    pub segment: i64,
    /// Its first byte in the segment's log file.
    pub position: u64,
    /// Its bytes (to the segment's end when the batch's length cannot be trusted).
    pub len: u64,
    /// First offset it covers.
    pub first: i64,
    /// Last offset it covers.
    pub last: i64,
    /// What is wrong with it.
    pub reason: String,
}

impl Fence {
    /// The error a read of its offsets gets.
    pub(crate) fn error(&self) -> StorageError {
        StorageError::Fenced {
            first: self.first,
            last: self.last,
            reason: self.reason.clone(),
        }
    }

    fn line(&self) -> String {
        // The reason is one line's last field: no newline may split it.
        let reason = self.reason.replace(['\n', '\r'], " ");
        format!(
            "{} {} {} {} {} {reason}\n",
            self.segment, self.position, self.len, self.first, self.last
        )
    }

    fn parse(line: &str) -> Option<Fence> {
        let mut fields = line.splitn(6, ' ');
        let mut next = || fields.next();
        let segment = next()?.parse().ok()?;
        let position = next()?.parse().ok()?;
        let len = next()?.parse().ok()?;
        let first = next()?.parse().ok()?;
        let last = next()?.parse().ok()?;
        let reason = next().unwrap_or("").to_string();
        (first <= last && len > 0).then_some(Fence {
            segment,
            position,
            len,
            first,
            last,
            reason,
        })
    }
}

/// Reads the fences of the partition in `dir` whose segments it still has, sorted.
pub(crate) fn load(dir: &Path, segments: &[Segment]) -> Vec<Fence> {
    let path = dir.join(FENCE_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            warn!(path = %path.display(), "cannot read the fenced batches: {e}");
            return Vec::new();
        }
    };
    let mut fences: Vec<Fence> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .filter_map(|line| {
            let fence = Fence::parse(line);
            if fence.is_none() {
                warn!(path = %path.display(), line, "skipping an unreadable fence line");
            }
            fence
        })
        .filter(|f| segments.iter().any(|s| s.base_offset == f.segment))
        .collect();
    fences.sort_by_key(|f| (f.segment, f.position));
    fences.dedup_by_key(|f| (f.segment, f.position));
    fences
}

/// Replaces the fence file of `dir` with `fences` (none: removes it).
pub(crate) fn save(dir: &Path, fences: &[Fence]) -> Result<(), StorageError> {
    let path = dir.join(FENCE_FILE);
    if fences.is_empty() {
        return match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StorageError::io(&path, e)),
            _ => Ok(()),
        };
    }
    let text: String = fences.iter().map(Fence::line).collect();
    meta_file::replace(dir, FENCE_FILE, text.as_bytes(), Access::Default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_line_reads_back() {
        let fence = Fence {
            segment: 100,
            position: 4096,
            len: 512,
            first: 120,
            last: 129,
            reason: "batch crc mismatch: header says 0x1, content has 0x2\nsecond line".into(),
        };
        let line = fence.line();
        assert_eq!(line.matches('\n').count(), 1);
        let back = Fence::parse(line.trim_end()).unwrap();
        assert_eq!(
            back.reason,
            "batch crc mismatch: header says 0x1, content has 0x2 second line"
        );
        assert_eq!(
            (back.segment, back.position, back.len, back.first, back.last),
            (100, 4096, 512, 120, 129)
        );
        for bad in ["", "1 2 3", "1 2 0 5 6 x", "1 2 3 9 5 x", "a 2 3 4 5 x"] {
            assert_eq!(Fence::parse(bad), None, "{bad:?}");
        }
    }
}
