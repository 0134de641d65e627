//! Fences: batches of sealed segments found corrupt (by the scrubber) that reads refuse to
//! return. A fence names the batch's bytes (segment, position, length) and the offsets it
//! covers; a read that asks for one of those offsets gets [`StorageError::Fenced`] with the
//! range, so a consumer can skip past it explicitly, and a read that starts before a fence
//! stops at its first byte. The rest of the partition stays readable.
//!
//! Fences are kept in the file `fenced` in the partition directory, one line each
//! (`segment position len first last reason`), rewritten (temporary file, sync, rename)
//! when one is added or retention drops the segment one belongs to, so they outlive a
//! restart. They are rare, so the rewrite is plain blocking I/O on the shard. A line that
//! cannot be read back is logged and skipped: the scrubber finds the batch again on its
//! next pass.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use tracing::{error, warn};

use super::state::PartitionLog;
use crate::storage::error::StorageError;
use crate::storage::segment::Segment;

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
    fn error(&self) -> StorageError {
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
pub(super) fn load(dir: &Path, segments: &[Segment]) -> Vec<Fence> {
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
fn save(dir: &Path, fences: &[Fence]) -> Result<(), StorageError> {
    let path = dir.join(FENCE_FILE);
    if fences.is_empty() {
        return match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StorageError::io(&path, e)),
            _ => Ok(()),
        };
    }
    let tmp: PathBuf = dir.join(format!("{FENCE_FILE}.tmp"));
    let text: String = fences.iter().map(Fence::line).collect();
    fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .map_err(|e| StorageError::io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| StorageError::io(&path, e))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(dir, e))
}

impl PartitionLog {
    /// Fences a corrupt batch. Returns false if it was fenced already. The fence holds in
    /// memory at once; a failure to store it is logged (it is found again after a restart
    /// by the next scrub pass).
    pub(super) fn fence(&self, fence: Fence) -> bool {
        let saved = {
            let mut fences = self.fences.borrow_mut();
            let at = fences
                .partition_point(|f| (f.segment, f.position) < (fence.segment, fence.position));
            if fences
                .get(at)
                .is_some_and(|f| (f.segment, f.position) == (fence.segment, fence.position))
            {
                return false;
            }
            error!(
                dir = %self.dir.display(),
                first = fence.first,
                last = fence.last,
                segment = fence.segment,
                position = fence.position,
                "fencing a corrupt batch: fetches of its offsets get a corrupt-batch error ({})",
                fence.reason
            );
            fences.insert(at, fence);
            save(&self.dir, &fences)
        };
        if let Err(e) = saved {
            warn!(dir = %self.dir.display(), "cannot store the fenced batches: {e}");
        }
        true
    }

    /// The fenced batches, in log order.
    pub fn fences(&self) -> Vec<Fence> {
        self.fences.borrow().clone()
    }

    /// The error for reading `offset`, if a fence covers it.
    pub(super) fn fenced_offset(&self, offset: i64) -> Option<StorageError> {
        let fences = self.fences.borrow();
        fences
            .iter()
            .find(|f| (f.first..=f.last).contains(&offset))
            .map(Fence::error)
    }

    /// The error for a read that would start at byte `position` of segment `segment`, if
    /// that byte is fenced.
    pub(super) fn fenced_byte(&self, segment: i64, position: u64) -> Option<StorageError> {
        let fences = self.fences.borrow();
        fences
            .iter()
            .find(|f| f.segment == segment && (f.position..f.position + f.len).contains(&position))
            .map(Fence::error)
    }

    /// Where a read from byte `start` of segment `segment` must stop: the first fenced byte
    /// after it, if any.
    pub(super) fn fence_limit(&self, segment: i64, start: u64) -> Option<u64> {
        let fences = self.fences.borrow();
        fences
            .iter()
            .filter(|f| f.segment == segment && f.position > start)
            .map(|f| f.position)
            .min()
    }

    /// Forgets the fences of segments before `first_segment` (retention deleted them).
    pub(super) fn drop_fences_before(&self, first_segment: i64) {
        let mut fences = self.fences.borrow_mut();
        let before = fences.len();
        fences.retain(|f| f.segment >= first_segment);
        if fences.len() != before {
            if let Err(e) = save(&self.dir, &fences) {
                warn!(dir = %self.dir.display(), "cannot store the fenced batches: {e}");
            }
        }
    }
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
