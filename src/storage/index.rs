//! The sparse offset and time indexes of one segment, as pure data: encoding, sanity checks,
//! lookups, and the rule that decides which batches get an entry.
//!
//! Both indexes exist twice: as files next to the segment's log, appended on every group
//! commit, and as vectors in memory, which serve every lookup. The files are never trusted
//! blindly: recovery checks them ([`OffsetIndex::decode`], [`TimeIndex::decode`]) and rebuilds
//! them from the log when they are damaged, because the log is the only source of truth.
//!
//! Offset index entry (8 bytes, big-endian): offset of a batch's first record relative to the
//! segment's base offset (u32), then the batch's byte position in the log (u32). A batch gets
//! an entry when it is the first one to start at or after the next multiple of the index
//! interval past the previous entry, or when it is bigger than the interval. So a reader that
//! starts at the entry found by [`OffsetIndex::lookup`] scans at most about one interval plus
//! one batch to reach any offset. The entry depends only on the previous entry, so rebuilding
//! the index from the log yields the same entries that appends wrote.
//!
//! Time index entry (12 bytes, big-endian): a timestamp (i64), then a relative offset (u32).
//! It is written together with an offset index entry, when the largest batch timestamp seen
//! in the segment grew since the previous time entry, and it means: "every batch *before* this
//! relative offset has a max timestamp of at most this timestamp". A search for the first batch
//! with max timestamp >= `ts` can therefore start at the last entry whose timestamp is below
//! `ts` ([`TimeIndex::lookup_below`]).

/// Size of one offset index entry on disk.
pub(crate) const OFFSET_ENTRY_LEN: usize = 8;
/// Size of one time index entry on disk.
pub(crate) const TIME_ENTRY_LEN: usize = 12;

/// One offset index entry: where a batch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    /// Base offset of the batch minus the segment's base offset.
    pub(crate) relative_offset: u32,
    /// Byte position of the batch in the segment's log.
    pub(crate) position: u32,
}

impl OffsetEntry {
    /// The 8-byte big-endian encoding.
    pub(crate) fn encode(&self) -> [u8; OFFSET_ENTRY_LEN] {
        let mut out = [0u8; OFFSET_ENTRY_LEN];
        out[..4].copy_from_slice(&self.relative_offset.to_be_bytes());
        out[4..].copy_from_slice(&self.position.to_be_bytes());
        out
    }

    /// Decodes an entry from exactly [`OFFSET_ENTRY_LEN`] bytes.
    pub(crate) fn decode(bytes: &[u8; OFFSET_ENTRY_LEN]) -> OffsetEntry {
        let [a, b, c, d, e, f, g, h] = *bytes;
        OffsetEntry {
            relative_offset: u32::from_be_bytes([a, b, c, d]),
            position: u32::from_be_bytes([e, f, g, h]),
        }
    }
}

/// One time index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    /// Largest batch max-timestamp of the batches before `relative_offset`.
    pub(crate) timestamp: i64,
    /// Relative base offset of the batch the entry was written with.
    pub(crate) relative_offset: u32,
}

impl TimeEntry {
    /// The 12-byte big-endian encoding.
    pub(crate) fn encode(&self) -> [u8; TIME_ENTRY_LEN] {
        let mut out = [0u8; TIME_ENTRY_LEN];
        out[..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..].copy_from_slice(&self.relative_offset.to_be_bytes());
        out
    }

    /// Decodes an entry from exactly [`TIME_ENTRY_LEN`] bytes.
    pub(crate) fn decode(bytes: &[u8; TIME_ENTRY_LEN]) -> TimeEntry {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&bytes[..8]);
        let mut rel = [0u8; 4];
        rel.copy_from_slice(&bytes[8..]);
        TimeEntry {
            timestamp: i64::from_be_bytes(ts),
            relative_offset: u32::from_be_bytes(rel),
        }
    }
}

/// The in-memory offset index of one segment; entries strictly increase in both fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OffsetIndex {
    entries: Vec<OffsetEntry>,
}

impl OffsetIndex {
    /// Decodes an index file, checking that it can belong to a log of `log_len` bytes: whole
    /// entries, strictly increasing, every position inside the log. The error says what is
    /// wrong, for the rebuild warning.
    pub(crate) fn decode(bytes: &[u8], log_len: u64) -> Result<OffsetIndex, String> {
        if !bytes.len().is_multiple_of(OFFSET_ENTRY_LEN) {
            return Err(format!(
                "size {} is not a multiple of {OFFSET_ENTRY_LEN}",
                bytes.len()
            ));
        }
        let mut index = OffsetIndex {
            entries: Vec::with_capacity(bytes.len() / OFFSET_ENTRY_LEN),
        };
        for (i, chunk) in bytes.chunks_exact(OFFSET_ENTRY_LEN).enumerate() {
            let mut raw = [0u8; OFFSET_ENTRY_LEN];
            raw.copy_from_slice(chunk);
            let entry = OffsetEntry::decode(&raw);
            if let Some(prev) = index.entries.last() {
                if entry.relative_offset <= prev.relative_offset || entry.position <= prev.position
                {
                    return Err(format!("entry {i} is not after the previous one"));
                }
            }
            if u64::from(entry.position) >= log_len {
                return Err(format!(
                    "entry {i} points at byte {}, past the log end {log_len}",
                    entry.position
                ));
            }
            index.entries.push(entry);
        }
        Ok(index)
    }

    /// The file image of the whole index.
    pub(crate) fn encode(&self) -> Vec<u8> {
        self.encode_from(0)
    }

    /// The file image of the entries from the `from`th on.
    pub(crate) fn encode_from(&self, from: usize) -> Vec<u8> {
        encode_entries(&self.entries, from, OffsetEntry::encode)
    }

    /// The last entry whose relative offset is at most `relative_offset`.
    pub(crate) fn lookup(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let after = self
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        after.checked_sub(1).map(|i| self.entries[i])
    }

    /// Appends an entry; the caller keeps entries increasing.
    pub(crate) fn push(&mut self, entry: OffsetEntry) {
        debug_assert!(self.entries.last().is_none_or(|last| {
            last.relative_offset < entry.relative_offset && last.position < entry.position
        }));
        self.entries.push(entry);
    }

    /// The newest entry.
    pub(crate) fn last(&self) -> Option<OffsetEntry> {
        self.entries.last().copied()
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Drops the entries at or after byte `position` of the log (after a truncation).
    pub(crate) fn truncate_to_position(&mut self, position: u64) {
        let keep = self
            .entries
            .partition_point(|e| u64::from(e.position) < position);
        self.entries.truncate(keep);
    }
}

/// The file image of `entries` from the `from`th on (all of them past the end: none).
fn encode_entries<E, const N: usize>(
    entries: &[E],
    from: usize,
    encode: impl Fn(&E) -> [u8; N],
) -> Vec<u8> {
    entries[from.min(entries.len())..]
        .iter()
        .flat_map(encode)
        .collect()
}

/// The in-memory time index of one segment; entries strictly increase in both fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TimeIndex {
    entries: Vec<TimeEntry>,
}

impl TimeIndex {
    /// Decodes a time index file, checking whole, strictly increasing entries.
    pub(crate) fn decode(bytes: &[u8]) -> Result<TimeIndex, String> {
        if !bytes.len().is_multiple_of(TIME_ENTRY_LEN) {
            return Err(format!(
                "size {} is not a multiple of {TIME_ENTRY_LEN}",
                bytes.len()
            ));
        }
        let mut index = TimeIndex {
            entries: Vec::with_capacity(bytes.len() / TIME_ENTRY_LEN),
        };
        for (i, chunk) in bytes.chunks_exact(TIME_ENTRY_LEN).enumerate() {
            let mut raw = [0u8; TIME_ENTRY_LEN];
            raw.copy_from_slice(chunk);
            let entry = TimeEntry::decode(&raw);
            if let Some(prev) = index.entries.last() {
                if entry.timestamp <= prev.timestamp
                    || entry.relative_offset <= prev.relative_offset
                {
                    return Err(format!("entry {i} is not after the previous one"));
                }
            }
            index.entries.push(entry);
        }
        Ok(index)
    }

    /// The file image of the whole index.
    pub(crate) fn encode(&self) -> Vec<u8> {
        self.encode_from(0)
    }

    /// The file image of the entries from the `from`th on.
    pub(crate) fn encode_from(&self, from: usize) -> Vec<u8> {
        encode_entries(&self.entries, from, TimeEntry::encode)
    }

    /// The last entry whose timestamp is below `timestamp`: every batch before its offset is
    /// older than `timestamp`.
    pub(crate) fn lookup_below(&self, timestamp: i64) -> Option<TimeEntry> {
        let after = self.entries.partition_point(|e| e.timestamp < timestamp);
        after.checked_sub(1).map(|i| self.entries[i])
    }

    /// Appends an entry; the caller keeps entries increasing.
    pub(crate) fn push(&mut self, entry: TimeEntry) {
        debug_assert!(self.entries.last().is_none_or(|last| {
            last.timestamp < entry.timestamp && last.relative_offset < entry.relative_offset
        }));
        self.entries.push(entry);
    }

    /// The newest entry.
    pub(crate) fn last(&self) -> Option<TimeEntry> {
        self.entries.last().copied()
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Drops the entries whose relative offset is above `relative_offset`.
    pub(crate) fn truncate_after_offset(&mut self, relative_offset: u32) {
        let keep = self
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        self.entries.truncate(keep);
    }
}

/// Decides which batches of a segment get index entries (see the module docs), batch by
/// batch, in log order. Its state is what the newest entries and the largest timestamp imply,
/// so it can resume from a recovered index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexPlanner {
    /// Position of the newest offset index entry.
    last_position: Option<u64>,
    /// Timestamp of the newest time index entry.
    last_timestamp: Option<i64>,
    /// Largest max-timestamp of the batches observed so far.
    max_timestamp: i64,
}

impl IndexPlanner {
    /// A planner for an empty segment.
    pub(crate) fn new() -> IndexPlanner {
        IndexPlanner {
            last_position: None,
            last_timestamp: None,
            max_timestamp: i64::MIN,
        }
    }

    /// A planner continuing after the given newest entries, having seen batches up to
    /// `max_timestamp`.
    pub(crate) fn resume(
        last_offset_entry: Option<OffsetEntry>,
        last_time_entry: Option<TimeEntry>,
        max_timestamp: i64,
    ) -> IndexPlanner {
        IndexPlanner {
            last_position: last_offset_entry.map(|e| u64::from(e.position)),
            last_timestamp: last_time_entry.map(|e| e.timestamp),
            max_timestamp,
        }
    }

    /// Largest max-timestamp of the batches observed, `i64::MIN` if none.
    pub(crate) fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }

    /// Observes the next batch of the segment and returns the entries it gets.
    /// A batch at or before the newest entry's position (re-observed while recovering) gets
    /// none but still counts for the largest timestamp.
    pub(crate) fn observe(
        &mut self,
        interval: u32,
        position: u64,
        size: u64,
        relative_offset: u32,
        max_timestamp: i64,
    ) -> (Option<OffsetEntry>, Option<TimeEntry>) {
        let interval = u64::from(interval.max(1));
        let due = match self.last_position {
            None => position >= interval || size > interval,
            Some(last) if position <= last => false,
            Some(last) => position >= (last / interval + 1) * interval || size > interval,
        };
        let mut entries = (None, None);
        if due {
            if let Ok(position32) = u32::try_from(position) {
                entries.0 = Some(OffsetEntry {
                    relative_offset,
                    position: position32,
                });
                self.last_position = Some(position);
                if self.max_timestamp != i64::MIN
                    && self.last_timestamp.is_none_or(|t| self.max_timestamp > t)
                {
                    entries.1 = Some(TimeEntry {
                        timestamp: self.max_timestamp,
                        relative_offset,
                    });
                    self.last_timestamp = Some(self.max_timestamp);
                }
            }
        }
        self.max_timestamp = self.max_timestamp.max(max_timestamp);
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn offsets(pairs: &[(u32, u32)]) -> OffsetIndex {
        let mut index = OffsetIndex::default();
        for &(relative_offset, position) in pairs {
            index.push(OffsetEntry {
                relative_offset,
                position,
            });
        }
        index
    }

    #[test]
    fn entries_encode_big_endian_and_round_trip() {
        let e = OffsetEntry {
            relative_offset: 0x0102_0304,
            position: 0x0506_0708,
        };
        assert_eq!(e.encode(), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(OffsetEntry::decode(&e.encode()), e);
        let t = TimeEntry {
            timestamp: -2,
            relative_offset: 9,
        };
        assert_eq!(
            t.encode(),
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, 0, 0, 0, 9]
        );
        assert_eq!(TimeEntry::decode(&t.encode()), t);
    }

    #[test]
    fn lookup_finds_largest_entry_at_or_below() {
        let index = offsets(&[(10, 4096), (20, 8200), (35, 12300)]);
        assert_eq!(index.lookup(0), None);
        assert_eq!(index.lookup(9), None);
        assert_eq!(index.lookup(10).unwrap().position, 4096);
        assert_eq!(index.lookup(19).unwrap().position, 4096);
        assert_eq!(index.lookup(20).unwrap().position, 8200);
        assert_eq!(index.lookup(u32::MAX).unwrap().position, 12300);
        assert_eq!(OffsetIndex::default().lookup(5), None);
    }

    #[test]
    fn time_lookup_finds_last_entry_strictly_below() {
        let mut index = TimeIndex::default();
        for (timestamp, relative_offset) in [(100, 5), (200, 9), (300, 14)] {
            index.push(TimeEntry {
                timestamp,
                relative_offset,
            });
        }
        assert_eq!(index.lookup_below(100), None);
        assert_eq!(index.lookup_below(101).unwrap().relative_offset, 5);
        assert_eq!(index.lookup_below(200).unwrap().relative_offset, 5);
        assert_eq!(index.lookup_below(250).unwrap().relative_offset, 9);
        assert_eq!(index.lookup_below(i64::MAX).unwrap().relative_offset, 14);
    }

    #[test]
    fn decode_rejects_damaged_files() {
        let good = offsets(&[(1, 10), (2, 20)]).encode();
        assert_eq!(OffsetIndex::decode(&good, 21).unwrap().len(), 2);
        assert!(
            OffsetIndex::decode(&good[..12], 100).is_err(),
            "ragged size"
        );
        assert!(OffsetIndex::decode(&good, 20).is_err(), "past the log end");
        let backwards = offsets(&[(2, 20)])
            .encode()
            .into_iter()
            .chain(offsets(&[(1, 30)]).encode())
            .collect::<Vec<u8>>();
        assert!(
            OffsetIndex::decode(&backwards, 100).is_err(),
            "not increasing"
        );
        assert!(TimeIndex::decode(&[0u8; 13]).is_err());
        let same_ts = [
            TimeEntry {
                timestamp: 5,
                relative_offset: 1,
            }
            .encode(),
            TimeEntry {
                timestamp: 5,
                relative_offset: 2,
            }
            .encode(),
        ]
        .concat();
        assert!(TimeIndex::decode(&same_ts).is_err());
    }

    #[test]
    fn truncation_drops_entries_at_or_after_the_cut() {
        let mut index = offsets(&[(1, 10), (2, 20), (3, 30)]);
        index.truncate_to_position(20);
        assert_eq!(index.last().unwrap().position, 10);
        let mut times = TimeIndex::default();
        times.push(TimeEntry {
            timestamp: 1,
            relative_offset: 1,
        });
        times.push(TimeEntry {
            timestamp: 2,
            relative_offset: 3,
        });
        times.truncate_after_offset(2);
        assert_eq!(times.len(), 1);
    }

    #[test]
    fn planner_indexes_each_interval_and_big_batches() {
        let mut planner = IndexPlanner::new();
        // 1000-byte batches, one offset each, interval 4096.
        let mut got = Vec::new();
        for i in 0..10u32 {
            let (entry, _) = planner.observe(4096, u64::from(i) * 1000, 1000, i, 0);
            if let Some(e) = entry {
                got.push(e.position);
            }
        }
        assert_eq!(got, vec![5000, 9000]);
        // A batch bigger than the interval always gets an entry.
        let mut planner = IndexPlanner::new();
        assert!(planner.observe(4096, 0, 5000, 0, 0).0.is_some());
        assert!(planner.observe(4096, 5000, 10, 1, 0).0.is_some());
        assert!(planner.observe(4096, 5010, 10, 2, 0).0.is_none());
    }

    #[test]
    fn planner_writes_time_entries_when_the_max_grows() {
        let mut planner = IndexPlanner::new();
        let mut times = Vec::new();
        let stamps = [50, 10, 70, 70, 60, 90];
        for (i, ts) in stamps.iter().enumerate() {
            let (_, t) = planner.observe(1, i as u64 * 10, 10, i as u32, *ts);
            times.extend(t);
        }
        let got: Vec<(i64, u32)> = times
            .iter()
            .map(|t| (t.timestamp, t.relative_offset))
            .collect();
        // The entry at batch i carries the max of the batches before it.
        assert_eq!(got, vec![(50, 1), (70, 3)]);
        assert_eq!(planner.max_timestamp(), 90);
    }

    fn monotonic_entries() -> impl Strategy<Value = Vec<(u32, u32)>> {
        prop::collection::vec((1u32..1000, 1u32..100_000), 0..200).prop_map(|steps| {
            let (mut rel, mut pos) = (0u32, 0u32);
            steps
                .into_iter()
                .map(|(dr, dp)| {
                    rel += dr;
                    pos += dp;
                    (rel, pos)
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn lookup_agrees_with_linear_scan(pairs in monotonic_entries(), target in 0u32..250_000) {
            let index = offsets(&pairs);
            let linear = pairs
                .iter()
                .rev()
                .find(|(rel, _)| *rel <= target)
                .map(|&(relative_offset, position)| OffsetEntry { relative_offset, position });
            prop_assert_eq!(index.lookup(target), linear);
            let decoded = OffsetIndex::decode(&index.encode(), u64::MAX).unwrap();
            prop_assert_eq!(decoded, index);
        }

        #[test]
        fn time_lookup_agrees_with_linear_scan(pairs in monotonic_entries(), target in -5i64..250_000) {
            let mut index = TimeIndex::default();
            for &(ts, rel) in &pairs {
                index.push(TimeEntry { timestamp: i64::from(ts), relative_offset: rel });
            }
            let linear = pairs
                .iter()
                .rev()
                .find(|(ts, _)| i64::from(*ts) < target)
                .map(|&(ts, rel)| TimeEntry { timestamp: i64::from(ts), relative_offset: rel });
            prop_assert_eq!(index.lookup_below(target), linear);
            prop_assert_eq!(TimeIndex::decode(&index.encode()).unwrap(), index);
        }

        #[test]
        fn planner_bounds_the_scan_distance(
            sizes in prop::collection::vec(61u64..20_000, 1..300),
            interval in 1u32..10_000,
        ) {
            let mut planner = IndexPlanner::new();
            let mut index = OffsetIndex::default();
            let mut position = 0u64;
            for (i, size) in sizes.iter().enumerate() {
                let (entry, _) = planner.observe(interval, position, *size, i as u32, 0);
                if let Some(e) = entry {
                    index.push(e);
                }
                // Any batch is reached from its index entry within one interval plus the
                // largest batch.
                let start = index.lookup(i as u32).map_or(0, |e| u64::from(e.position));
                let max_batch = sizes.iter().copied().max().unwrap_or(0);
                prop_assert!(position - start <= u64::from(interval) + max_batch);
                position += size;
            }
        }
    }
}
