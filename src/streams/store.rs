//! State stores: the local state of stateful steps, one map per input partition, and the
//! byte format of their changelog records.
//!
//! **Why every entry carries marks.** Under at-least-once a record can be processed twice:
//! an instance that wrote a state update to the changelog and died before committing the
//! input offset leaves the record to be processed again by whoever restores the state.
//! Applying it again would count it twice. So each entry remembers, per origin partition
//! (the source topic partition the record was first read from, carried through
//! repartition topics in a header), the position of the last record applied to it. A
//! record at or below that mark has already been applied: its update is skipped and the
//! current value is emitted again instead (a duplicate in the output, never a wrong value).
//! Records of one origin partition reach one key in origin order (one writer per origin
//! partition at a time, replays in the same order), so one mark per origin partition and
//! key is enough, and the marks travel in the entry's changelog record, so log compaction
//! (which keeps the latest record per key) keeps them.
//!
//! Changelog value: `u16` mark count; per mark `u16` topic length, topic, `u32`
//! partition, `i64` offset, `u64` sequence; then the state value's bytes. All big-endian.
//! A null changelog value (tombstone) deletes the key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Where a record entered the application, and its place among the records derived from
/// the same input record (`seq`: 16 bits per step that fans records out, outermost first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: u32,
    pub(crate) offset: i64,
    pub(crate) seq: u64,
}

impl Origin {
    /// The bytes of the origin, as in changelog marks and the repartition header.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let topic = self.topic.as_bytes();
        out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        out.extend_from_slice(topic);
        out.extend_from_slice(&self.partition.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
    }

    /// Reads one origin from the front of `bytes`, returning the rest.
    pub(crate) fn decode(bytes: &[u8]) -> Result<(Origin, &[u8]), String> {
        let (len, rest) = take::<2>(bytes)?;
        let len = usize::from(u16::from_be_bytes(len));
        if rest.len() < len {
            return Err(format!("origin topic of {len} bytes, {} left", rest.len()));
        }
        let (topic, rest) = rest.split_at(len);
        let topic = std::str::from_utf8(topic).map_err(|_| "origin topic is not UTF-8")?;
        let (partition, rest) = take::<4>(rest)?;
        let (offset, rest) = take::<8>(rest)?;
        let (seq, rest) = take::<8>(rest)?;
        let origin = Origin {
            topic: Arc::from(topic),
            partition: u32::from_be_bytes(partition),
            offset: i64::from_be_bytes(offset),
            seq: u64::from_be_bytes(seq),
        };
        Ok((origin, rest))
    }

    fn same_partition(&self, other: &Origin) -> bool {
        self.partition == other.partition && self.topic == other.topic
    }

    fn position(&self) -> (i64, u64) {
        (self.offset, self.seq)
    }
}

fn take<const N: usize>(bytes: &[u8]) -> Result<([u8; N], &[u8]), String> {
    if bytes.len() < N {
        return Err(format!("truncated: {N} bytes wanted, {} left", bytes.len()));
    }
    let (head, rest) = bytes.split_at(N);
    let mut out = [0; N];
    out.copy_from_slice(head);
    Ok((out, rest))
}

/// One key's state and the marks of the records applied to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) value: Vec<u8>,
    marks: Vec<Origin>,
}

impl Entry {
    /// The changelog value of this entry.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.marks.len() * 40 + self.value.len());
        out.extend_from_slice(&(self.marks.len() as u16).to_be_bytes());
        for mark in &self.marks {
            mark.encode(&mut out);
        }
        out.extend_from_slice(&self.value);
        out
    }

    /// Reads a changelog value.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Entry, String> {
        let (count, mut rest) = take::<2>(bytes)?;
        let count = u16::from_be_bytes(count);
        let mut marks = Vec::with_capacity(usize::from(count).min(64));
        for _ in 0..count {
            let (mark, after) = Origin::decode(rest)?;
            marks.push(mark);
            rest = after;
        }
        Ok(Entry {
            value: rest.to_vec(),
            marks,
        })
    }

    /// Whether a record from `origin` has already been applied to this entry.
    fn has_applied(&self, origin: &Origin) -> bool {
        self.marks
            .iter()
            .any(|m| m.same_partition(origin) && origin.position() <= m.position())
    }

    fn mark(&mut self, origin: &Origin) {
        match self.marks.iter_mut().find(|m| m.same_partition(origin)) {
            Some(mark) => *mark = origin.clone(),
            None => self.marks.push(origin.clone()),
        }
    }

    /// Takes the marks of an entry merged into this one (the later mark per origin
    /// partition).
    fn absorb(&mut self, other: &Entry) {
        for theirs in &other.marks {
            match self.marks.iter_mut().find(|m| m.same_partition(theirs)) {
                Some(mine) if mine.position() >= theirs.position() => {}
                Some(mine) => *mine = theirs.clone(),
                None => self.marks.push(theirs.clone()),
            }
        }
    }
}

/// What an update did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Update {
    /// The record was applied: the new value, and the changelog value to write.
    Applied { value: Vec<u8>, changelog: Vec<u8> },
    /// The record had been applied before (a replay after a crash or a rebalance): the
    /// current value, unchanged.
    Replayed { value: Vec<u8> },
}

/// The changelog key under which a windowed store saves its stream time. It has no `@`,
/// so no windowed key is ever equal to it.
pub(crate) const STREAM_TIME_KEY: &[u8] = b"#stream-time";

/// The changelog value that saves `stream_time`.
pub(crate) fn stream_time_value(stream_time: i64) -> Vec<u8> {
    Entry {
        value: stream_time.to_string().into_bytes(),
        marks: Vec::new(),
    }
    .encode()
}

/// One partition's entries, and its stream time (largest record timestamp seen, for
/// windows).
#[derive(Debug, Default)]
pub(crate) struct PartitionStore {
    entries: BTreeMap<Vec<u8>, Entry>,
    pub(crate) stream_time: i64,
    /// The stream time at which closed sessions were last removed.
    pub(crate) expired_at: i64,
}

impl PartitionStore {
    /// Applies the record from `origin` to `key` with `step` (given the current value),
    /// unless it was applied before.
    pub(crate) fn update<E>(
        &mut self,
        key: &[u8],
        origin: &Origin,
        step: impl FnOnce(Option<&[u8]>) -> Result<Vec<u8>, E>,
    ) -> Result<Update, E> {
        if let Some(entry) = self.entries.get(key) {
            if entry.has_applied(origin) {
                return Ok(Update::Replayed {
                    value: entry.value.clone(),
                });
            }
        }
        let current = self.entries.get(key).map(|e| e.value.as_slice());
        let value = step(current)?;
        let entry = self.entries.entry(key.to_vec()).or_default();
        entry.value.clone_from(&value);
        entry.mark(origin);
        Ok(Update::Applied {
            changelog: entry.encode(),
            value,
        })
    }

    /// The entries whose key starts with `prefix`, in key order, as (key, value).
    pub(crate) fn with_prefix<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        self.entries
            .range(prefix.to_vec()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, e)| (k.as_slice(), e.value.as_slice()))
    }

    /// Whether the record from `origin` has been applied to any of `keys` (entries of one
    /// record key, such as its sessions).
    pub(crate) fn applied_to_any(&self, keys: &[Vec<u8>], origin: &Origin) -> bool {
        keys.iter()
            .filter_map(|k| self.entries.get(k))
            .any(|e| e.has_applied(origin))
    }

    /// Replaces the entries `merged` with one entry `key` = `value` that keeps their marks
    /// and takes `origin`'s; returns its changelog value.
    pub(crate) fn merge_into(
        &mut self,
        merged: &[Vec<u8>],
        key: Vec<u8>,
        value: Vec<u8>,
        origin: &Origin,
    ) -> Vec<u8> {
        let mut entry = Entry {
            value,
            marks: Vec::new(),
        };
        for old in merged {
            if let Some(old) = self.entries.remove(old) {
                entry.absorb(&old);
            }
        }
        entry.mark(origin);
        let changelog = entry.encode();
        self.entries.insert(key, entry);
        changelog
    }

    /// Removes and returns the keys for which `expired(key, value)` holds.
    pub(crate) fn remove_where(
        &mut self,
        mut expired: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Vec<Vec<u8>> {
        let gone: Vec<Vec<u8>> = self
            .entries
            .iter()
            .filter(|(k, e)| expired(k, &e.value))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &gone {
            self.entries.remove(key);
        }
        gone
    }

    /// Applies one changelog record (a tombstone when `value` is `None`).
    pub(crate) fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        if key == STREAM_TIME_KEY {
            let entry = Entry::decode(value.unwrap_or_default())?;
            let time = std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or("stream time is not a decimal number")?;
            self.stream_time = self.stream_time.max(time);
            return Ok(());
        }
        match value {
            None => {
                self.entries.remove(key);
            }
            Some(bytes) => {
                self.entries.insert(key.to_vec(), Entry::decode(bytes)?);
            }
        }
        Ok(())
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// A named store: a [`PartitionStore`] per input partition this instance holds, backed by
/// the compacted changelog topic `<application>-<store>-changelog`.
#[derive(Debug)]
pub(crate) struct KeyValueStore {
    pub(crate) name: String,
    pub(crate) changelog: Arc<str>,
    /// The source topics whose partitions this store's partitions follow.
    pub(crate) inputs: Vec<String>,
    partitions: HashMap<u32, PartitionStore>,
}

impl KeyValueStore {
    pub(crate) fn new(name: String, changelog: String, inputs: Vec<String>) -> KeyValueStore {
        KeyValueStore {
            name,
            changelog: Arc::from(changelog),
            inputs,
            partitions: HashMap::new(),
        }
    }

    /// The store of `partition` (empty if it was never restored, as in the test driver).
    pub(crate) fn partition(&mut self, partition: u32) -> &mut PartitionStore {
        self.partitions.entry(partition).or_default()
    }

    /// Whether `partition` is held (restored or created).
    pub(crate) fn holds(&self, partition: u32) -> bool {
        self.partitions.contains_key(&partition)
    }

    /// Forgets `partition` (it moved to another instance; the changelog keeps it).
    pub(crate) fn drop_partition(&mut self, partition: u32) {
        self.partitions.remove(&partition);
    }
}

/// A table read from a topic: the latest value per key, one map per partition.
#[derive(Debug)]
pub(crate) struct TableStore {
    pub(crate) topic: String,
    /// The source topics of the streams that join this table.
    pub(crate) joined_by: Vec<String>,
    partitions: HashMap<u32, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl TableStore {
    pub(crate) fn new(topic: String) -> TableStore {
        TableStore {
            topic,
            joined_by: Vec::new(),
            partitions: HashMap::new(),
        }
    }

    /// The value of `key` in `partition`.
    pub(crate) fn get(&self, partition: u32, key: &[u8]) -> Option<&[u8]> {
        self.partitions.get(&partition)?.get(key).map(Vec::as_slice)
    }

    /// Applies one record of the table's topic (a tombstone when `value` is `None`).
    pub(crate) fn apply(&mut self, partition: u32, key: &[u8], value: Option<&[u8]>) {
        let map = self.partitions.entry(partition).or_default();
        match value {
            Some(v) => {
                map.insert(key.to_vec(), v.to_vec());
            }
            None => {
                map.remove(key);
            }
        }
    }

    /// Creates `partition` empty (it is about to be read from its start).
    pub(crate) fn open_partition(&mut self, partition: u32) {
        self.partitions.entry(partition).or_default();
    }

    pub(crate) fn holds(&self, partition: u32) -> bool {
        self.partitions.contains_key(&partition)
    }

    pub(crate) fn drop_partition(&mut self, partition: u32) {
        self.partitions.remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(partition: u32, offset: i64, seq: u64) -> Origin {
        Origin {
            topic: Arc::from("lines"),
            partition,
            offset,
            seq,
        }
    }

    fn add_one(current: Option<&[u8]>) -> Result<Vec<u8>, ()> {
        Ok(vec![current.map_or(0, |c| c[0]) + 1])
    }

    #[test]
    fn a_replayed_record_is_not_applied_twice() {
        let mut store = PartitionStore::default();
        store.update(b"k", &origin(0, 5, 0), add_one).unwrap();
        store.update(b"k", &origin(0, 5, 1), add_one).unwrap();
        let again = store.update(b"k", &origin(0, 5, 0), add_one).unwrap();
        assert_eq!(again, Update::Replayed { value: vec![2] });
        // Another origin partition has its own mark.
        let other = store.update(b"k", &origin(1, 0, 0), add_one).unwrap();
        assert!(matches!(other, Update::Applied { value, .. } if value == [3]));
        let next = store.update(b"k", &origin(0, 6, 0), add_one).unwrap();
        assert!(matches!(next, Update::Applied { value, .. } if value == [4]));
    }

    #[test]
    fn marks_survive_the_changelog() {
        let mut store = PartitionStore::default();
        let Update::Applied { changelog, .. } =
            store.update(b"k", &origin(2, 9, 3), add_one).unwrap()
        else {
            panic!("first update applies")
        };
        let mut restored = PartitionStore::default();
        restored.restore(b"k", Some(&changelog)).unwrap();
        assert!(matches!(
            restored.update(b"k", &origin(2, 9, 3), add_one),
            Ok(Update::Replayed { .. })
        ));
        restored.restore(b"k", None).unwrap();
        assert_eq!(restored.len(), 0);
    }

    #[test]
    fn a_merged_entry_keeps_the_marks_of_both() {
        let mut store = PartitionStore::default();
        store.update(b"a", &origin(0, 4, 0), add_one).unwrap();
        store.update(b"b", &origin(1, 9, 0), add_one).unwrap();
        let merged = [b"a".to_vec(), b"b".to_vec()];
        store.merge_into(&merged, b"c".to_vec(), vec![9], &origin(0, 5, 0));
        let c = [b"c".to_vec()];
        assert!(store.applied_to_any(&c, &origin(0, 5, 0)));
        assert!(store.applied_to_any(&c, &origin(1, 9, 0)));
        assert!(!store.applied_to_any(&c, &origin(1, 10, 0)));
        assert!(!store.applied_to_any(&merged, &origin(0, 1, 0)));
        assert_eq!(store.with_prefix(b"c").count(), 1);
    }

    #[test]
    fn damaged_changelog_values_are_errors() {
        let entry = Entry {
            value: b"v".to_vec(),
            marks: vec![origin(0, 1, 0)],
        };
        let bytes = entry.encode();
        assert_eq!(Entry::decode(&bytes), Ok(entry));
        for cut in 0..bytes.len() - 1 {
            assert!(Entry::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
