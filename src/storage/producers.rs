//! What one partition knows of the idempotent producers writing to it, and the checks a
//! producer's batch must pass before it is appended. Pure data: no I/O, no clock.
//!
//! A batch whose header carries a producer id (≥ 0) belongs to an idempotent producer: the
//! id comes from InitProducerId, the epoch fences older instances of the same producer, and
//! the sequence numbers count the producer's records on this partition (wrapping from
//! `i32::MAX` to 0). Per producer id the partition keeps the newest epoch and the sequence
//! and offset ranges of the last [`RETAINED_BATCHES`] batches it appended; with them:
//!
//! - an older epoch is refused ([`ProducerError::InvalidEpoch`]);
//! - a newer epoch must start at sequence 0 ([`ProducerError::OutOfOrder`]), and replaces the
//!   producer's state;
//! - a batch whose first and last sequence equal one of the retained batches' is a retry of
//!   a batch already appended: it is not appended again, and its caller gets the original
//!   offsets ([`Verdict::Duplicate`]);
//! - any other batch must start right after the last one ([`ProducerError::OutOfOrder`]);
//! - a producer id the partition does not know is accepted at any sequence: its state may
//!   have expired or been lost to retention, and refusing it would stall a live producer.
//!
//! The table is rebuilt after a restart from a snapshot ([`ProducerTable::encode_snapshot`])
//! and the batch headers appended after it, so it follows the log's durability. It is bounded:
//! a producer not heard from for [`PRODUCER_EXPIRATION_MS`] is forgotten
//! ([`ProducerTable::expire`]), and past [`MAX_PRODUCERS`] ids the least recently seen is.

use std::collections::HashMap;

use crate::protocol::batch::{BatchHeader, CONTROL_FLAG, TRANSACTIONAL_FLAG};

/// Batches per producer whose retries are recognised: a producer keeps at most this many
/// requests in flight per partition (Kafka's clients: `max.in.flight.requests.per.connection`
/// ≤ 5 with idempotence).
pub(crate) const RETAINED_BATCHES: usize = 5;

/// A producer id not heard from on a partition for this long is forgotten there (Kafka's
/// `producer.id.expiration.ms` default, one day).
pub(crate) const PRODUCER_EXPIRATION_MS: i64 = 24 * 60 * 60 * 1000;

/// Producer ids one partition remembers at most; past it, the least recently seen is
/// forgotten (about 150 bytes each).
pub(crate) const MAX_PRODUCERS: usize = 10_000;

/// The file name suffix of a producer-table snapshot: `<offset>.producers`, the table as it
/// was with every batch below `offset` appended.
pub(crate) const SNAPSHOT_SUFFIX: &str = "producers";

/// Why a producer's batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProducerError {
    /// The batch's epoch is older than the producer's current one on this partition.
    #[error(
        "producer {producer_id} sent epoch {epoch}, older than its epoch {current} on this \
         partition (a newer instance took over)"
    )]
    InvalidEpoch {
        /// The producer.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The newest epoch the partition has seen.
        current: i16,
    },
    /// The batch's first sequence is not the one the partition expects next.
    #[error(
        "producer {producer_id} (epoch {epoch}) sent sequence {sequence}, expected {expected}"
    )]
    OutOfOrder {
        /// The producer.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The batch's first sequence.
        sequence: i32,
        /// The sequence the partition expects.
        expected: i32,
    },
    /// The batch's producer fields are not acceptable at all.
    #[error("{0}")]
    Invalid(String),
}

/// The producer fields of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerBatch {
    pub(crate) producer_id: i64,
    pub(crate) epoch: i16,
    pub(crate) first_seq: i32,
    pub(crate) last_seq: i32,
}

impl ProducerBatch {
    /// The producer fields of `header`: `None` for a batch of no idempotent producer
    /// (producer id below 0). Transactional and control batches are refused (there are no
    /// transactions), and so is a producer id without an epoch or a sequence.
    pub(crate) fn of(header: &BatchHeader) -> Result<Option<ProducerBatch>, ProducerError> {
        if header.attributes & CONTROL_FLAG != 0 {
            return Err(ProducerError::Invalid(
                "control batches are written by the broker only".into(),
            ));
        }
        if header.attributes & TRANSACTIONAL_FLAG != 0 {
            return Err(ProducerError::Invalid(
                "transactional batches are not supported: eventflow has no transactions".into(),
            ));
        }
        let producer_id = header.producer_id;
        if producer_id < 0 {
            return Ok(None);
        }
        if header.producer_epoch < 0 {
            return Err(ProducerError::Invalid(format!(
                "producer {producer_id} sent epoch {}",
                header.producer_epoch
            )));
        }
        if header.base_sequence < 0 {
            return Err(ProducerError::Invalid(format!(
                "producer {producer_id} sent sequence {}",
                header.base_sequence
            )));
        }
        Ok(Some(ProducerBatch {
            producer_id,
            epoch: header.producer_epoch,
            first_seq: header.base_sequence,
            last_seq: last_sequence(header.base_sequence, header.last_offset_delta),
        }))
    }
}

/// The sequence of a batch's last record: `first` plus the batch's last offset delta,
/// wrapping from `i32::MAX` to 0.
pub(crate) fn last_sequence(first: i32, last_offset_delta: i32) -> i32 {
    let sum = i64::from(first) + i64::from(last_offset_delta.max(0));
    let span = i64::from(i32::MAX) + 1;
    (sum % span) as i32
}

/// The sequence that follows `last`.
fn next_sequence(last: i32) -> i32 {
    if last == i32::MAX {
        0
    } else {
        last + 1
    }
}

/// One appended batch of a producer, as the partition remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct AppendedBatch {
    pub(crate) first_seq: i32,
    pub(crate) last_seq: i32,
    pub(crate) base_offset: i64,
    pub(crate) last_offset: i64,
}

/// What a partition knows of one producer id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerEntry {
    epoch: i16,
    /// The last `len` batches appended in `epoch`, oldest first.
    batches: [AppendedBatch; RETAINED_BATCHES],
    len: u8,
    /// When the producer was last heard from (ms since the epoch), for expiry.
    last_seen_ms: i64,
}

impl ProducerEntry {
    fn new(epoch: i16, last_seen_ms: i64) -> ProducerEntry {
        ProducerEntry {
            epoch,
            batches: [AppendedBatch::default(); RETAINED_BATCHES],
            len: 0,
            last_seen_ms,
        }
    }

    /// The producer's current epoch on the partition.
    #[cfg(test)]
    pub(crate) fn epoch(&self) -> i16 {
        self.epoch
    }

    /// The retained batches, oldest first.
    pub(crate) fn batches(&self) -> &[AppendedBatch] {
        &self.batches[..usize::from(self.len)]
    }

    /// Records a batch appended at `base_offset..=last_offset`. A new epoch starts over.
    fn push(&mut self, batch: &ProducerBatch, base_offset: i64, last_offset: i64, seen_ms: i64) {
        if batch.epoch != self.epoch {
            self.epoch = batch.epoch;
            self.len = 0;
        }
        if usize::from(self.len) == RETAINED_BATCHES {
            self.batches.copy_within(1.., 0);
            self.len -= 1;
        }
        self.batches[usize::from(self.len)] = AppendedBatch {
            first_seq: batch.first_seq,
            last_seq: batch.last_seq,
            base_offset,
            last_offset,
        };
        self.len += 1;
        self.last_seen_ms = self.last_seen_ms.max(seen_ms);
    }
}

/// What to do with a producer's batch that passed the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Append it.
    Append,
    /// It was appended before at these offsets: append nothing, answer them.
    Duplicate { base_offset: i64, last_offset: i64 },
}

/// The checks of one batch against what the partition knows of its producer (`None`: the
/// producer id is unknown here).
pub(crate) fn check(
    entry: Option<&ProducerEntry>,
    batch: &ProducerBatch,
) -> Result<Verdict, ProducerError> {
    let Some(entry) = entry else {
        return Ok(Verdict::Append);
    };
    let out_of_order = |expected| ProducerError::OutOfOrder {
        producer_id: batch.producer_id,
        epoch: batch.epoch,
        sequence: batch.first_seq,
        expected,
    };
    if batch.epoch < entry.epoch {
        return Err(ProducerError::InvalidEpoch {
            producer_id: batch.producer_id,
            epoch: batch.epoch,
            current: entry.epoch,
        });
    }
    if batch.epoch > entry.epoch {
        return if batch.first_seq == 0 {
            Ok(Verdict::Append)
        } else {
            Err(out_of_order(0))
        };
    }
    if let Some(original) = entry
        .batches()
        .iter()
        .find(|b| b.first_seq == batch.first_seq && b.last_seq == batch.last_seq)
    {
        return Ok(Verdict::Duplicate {
            base_offset: original.base_offset,
            last_offset: original.last_offset,
        });
    }
    match entry.batches().last() {
        Some(last) if batch.first_seq != next_sequence(last.last_seq) => {
            Err(out_of_order(next_sequence(last.last_seq)))
        }
        _ => Ok(Verdict::Append),
    }
}

/// The producers a partition knows, by producer id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProducerTable {
    entries: HashMap<i64, ProducerEntry>,
}

impl ProducerTable {
    /// What the partition knows of `producer_id`.
    pub(crate) fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.entries.get(&producer_id)
    }

    /// Producer ids known.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Records a batch appended at `base_offset..=last_offset`, seen at `seen_ms`.
    pub(crate) fn record(
        &mut self,
        batch: &ProducerBatch,
        base_offset: i64,
        last_offset: i64,
        seen_ms: i64,
    ) {
        if !self.entries.contains_key(&batch.producer_id) && self.entries.len() >= MAX_PRODUCERS {
            self.evict_least_recent();
        }
        self.entries
            .entry(batch.producer_id)
            .or_insert_with(|| ProducerEntry::new(batch.epoch, seen_ms))
            .push(batch, base_offset, last_offset, seen_ms);
    }

    fn evict_least_recent(&mut self) {
        if let Some(&oldest) = self
            .entries
            .iter()
            .min_by_key(|(id, e)| (e.last_seen_ms, **id))
            .map(|(id, _)| id)
        {
            self.entries.remove(&oldest);
        }
    }

    /// Forgets the producers not heard from for [`PRODUCER_EXPIRATION_MS`] at `now_ms`;
    /// returns how many.
    pub(crate) fn expire(&mut self, now_ms: i64) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, e| now_ms.saturating_sub(e.last_seen_ms) < PRODUCER_EXPIRATION_MS);
        before - self.entries.len()
    }

    /// The table as snapshot bytes, taken when every batch below `offset` is recorded:
    /// `"EFPS"`, version u16, offset i64, entry count u32, the entries (producer id i64,
    /// epoch i16, last seen i64, batch count u8, each batch's first and last sequence i32
    /// and base and last offset i64), then a CRC-32C of everything before it. Big-endian.
    pub(crate) fn encode_snapshot(&self, offset: i64) -> Vec<u8> {
        let mut out = Vec::with_capacity(22 + self.entries.len() * 140);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        let mut ids: Vec<&i64> = self.entries.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let e = &self.entries[id];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&e.epoch.to_be_bytes());
            out.extend_from_slice(&e.last_seen_ms.to_be_bytes());
            out.push(e.len);
            for b in e.batches() {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.base_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Reads a snapshot back: its offset and the table. Any damage (length, CRC, a field
    /// out of range) is an error, never a panic.
    pub(crate) fn decode_snapshot(bytes: &[u8]) -> Result<(i64, ProducerTable), String> {
        let Some(body_len) = bytes.len().checked_sub(4) else {
            return Err(format!("{} bytes is too short", bytes.len()));
        };
        let (body, crc) = bytes.split_at(body_len);
        let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32c::crc32c(body) != stored {
            return Err("the checksum does not match".into());
        }
        let mut r = Reader(body);
        if r.take(4)? != SNAPSHOT_MAGIC {
            return Err("not a producer snapshot".into());
        }
        let version = u16::from_be_bytes(r.array()?);
        if version != SNAPSHOT_VERSION {
            return Err(format!("unknown snapshot version {version}"));
        }
        let offset = i64::from_be_bytes(r.array()?);
        let count = u32::from_be_bytes(r.array()?) as usize;
        if count > MAX_PRODUCERS {
            return Err(format!("{count} producers, more than a partition keeps"));
        }
        // Sized by what the bytes can hold, not by the count they claim.
        let mut entries = HashMap::with_capacity(count.min(r.0.len() / MIN_SNAPSHOT_ENTRY));
        for _ in 0..count {
            let id = i64::from_be_bytes(r.array()?);
            let epoch = i16::from_be_bytes(r.array()?);
            let last_seen_ms = i64::from_be_bytes(r.array()?);
            let len = r.take(1)?[0];
            if id < 0 || epoch < 0 || len == 0 || usize::from(len) > RETAINED_BATCHES {
                return Err(format!("producer {id}: epoch {epoch}, {len} batches"));
            }
            let mut entry = ProducerEntry::new(epoch, last_seen_ms);
            for _ in 0..len {
                let batch = ProducerBatch {
                    producer_id: id,
                    epoch,
                    first_seq: i32::from_be_bytes(r.array()?),
                    last_seq: i32::from_be_bytes(r.array()?),
                };
                let base_offset = i64::from_be_bytes(r.array()?);
                let last_offset = i64::from_be_bytes(r.array()?);
                entry.push(&batch, base_offset, last_offset, last_seen_ms);
            }
            if entries.insert(id, entry).is_some() {
                return Err(format!("producer {id} appears twice"));
            }
        }
        if !r.0.is_empty() {
            return Err(format!("{} bytes after the last entry", r.0.len()));
        }
        Ok((offset, ProducerTable { entries }))
    }
}

const SNAPSHOT_MAGIC: &[u8; 4] = b"EFPS";
/// Bytes of the smallest snapshot entry: id, epoch, last seen, batch count, one batch.
const MIN_SNAPSHOT_ENTRY: usize = 8 + 2 + 8 + 1 + 24;
const SNAPSHOT_VERSION: u16 = 1;

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

/// The checks of one group-commit round: its batches are checked in queue order, each
/// against the table plus the batches of the round before it, and staged; a caller whose
/// batches fail is taken out again ([`RoundChecks::discard`]) so its earlier batches leave no
/// trace. The table itself changes only once batches are written (`ProducerTable::record`).
pub(crate) struct RoundChecks<'a> {
    table: &'a ProducerTable,
    staged: HashMap<i64, ProducerEntry>,
    /// Staged entries as they were before the current caller's batches.
    undo: Vec<(i64, Option<ProducerEntry>)>,
}

impl<'a> RoundChecks<'a> {
    pub(crate) fn new(table: &'a ProducerTable) -> RoundChecks<'a> {
        RoundChecks {
            table,
            staged: HashMap::new(),
            undo: Vec::new(),
        }
    }

    /// [`check`] against the table and the round's staged batches.
    pub(crate) fn check(&self, batch: &ProducerBatch) -> Result<Verdict, ProducerError> {
        let entry = self
            .staged
            .get(&batch.producer_id)
            .or_else(|| self.table.get(batch.producer_id));
        check(entry, batch)
    }

    /// Stages a batch to be appended at `base_offset..=last_offset`.
    pub(crate) fn stage(
        &mut self,
        batch: &ProducerBatch,
        base_offset: i64,
        last_offset: i64,
        seen_ms: i64,
    ) {
        let id = batch.producer_id;
        let before = self.staged.get(&id).copied();
        self.undo.push((id, before));
        let entry = before
            .or_else(|| self.table.get(id).copied())
            .unwrap_or_else(|| ProducerEntry::new(batch.epoch, seen_ms));
        let entry = self.staged.entry(id).or_insert(entry);
        entry.push(batch, base_offset, last_offset, seen_ms);
    }

    /// The current caller's staged batches stay.
    pub(crate) fn keep(&mut self) {
        self.undo.clear();
    }

    /// The current caller's staged batches are taken out.
    pub(crate) fn discard(&mut self) {
        while let Some((id, before)) = self.undo.pop() {
            match before {
                Some(entry) => self.staged.insert(id, entry),
                None => self.staged.remove(&id),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(producer_id: i64, epoch: i16, first_seq: i32, records: i32) -> ProducerBatch {
        ProducerBatch {
            producer_id,
            epoch,
            first_seq,
            last_seq: last_sequence(first_seq, records - 1),
        }
    }

    /// Checks `b` against `table`, records it at `next` if it is to be appended; returns
    /// the verdict and moves `next` past it.
    fn append(
        table: &mut ProducerTable,
        next: &mut i64,
        b: ProducerBatch,
    ) -> Result<Verdict, ProducerError> {
        let verdict = check(table.get(b.producer_id), &b)?;
        if verdict == Verdict::Append {
            let count = i64::from(b.last_seq.wrapping_sub(b.first_seq)) + 1;
            table.record(&b, *next, *next + count - 1, 0);
            *next += count;
        }
        Ok(verdict)
    }

    #[test]
    fn sequences_follow_on_and_wrap() {
        assert_eq!(last_sequence(0, 0), 0);
        assert_eq!(last_sequence(5, 9), 14);
        assert_eq!(last_sequence(i32::MAX, 0), i32::MAX);
        assert_eq!(last_sequence(i32::MAX, 1), 0);
        assert_eq!(last_sequence(i32::MAX - 2, 5), 2);

        let mut table = ProducerTable::default();
        let mut next = 0;
        assert_eq!(
            append(&mut table, &mut next, batch(7, 0, 0, 3)),
            Ok(Verdict::Append)
        );
        assert_eq!(
            append(&mut table, &mut next, batch(7, 0, 3, 2)),
            Ok(Verdict::Append)
        );
        assert_eq!(next, 5);
        // A gap: sequence 6 after 4.
        assert_eq!(
            append(&mut table, &mut next, batch(7, 0, 6, 1)),
            Err(ProducerError::OutOfOrder {
                producer_id: 7,
                epoch: 0,
                sequence: 6,
                expected: 5
            })
        );
        // Past i32::MAX the sequence goes on at 0.
        let mut table = ProducerTable::default();
        let near_end = batch(1, 0, i32::MAX - 1, 2);
        assert_eq!(append(&mut table, &mut next, near_end), Ok(Verdict::Append));
        assert_eq!(
            append(&mut table, &mut next, batch(1, 0, 0, 1)),
            Ok(Verdict::Append)
        );
        let across = batch(2, 0, i32::MAX, 3);
        assert_eq!(across.last_seq, 1);
        assert_eq!(append(&mut table, &mut next, across), Ok(Verdict::Append));
        assert_eq!(
            append(&mut table, &mut next, batch(2, 0, 2, 1)),
            Ok(Verdict::Append)
        );
    }

    #[test]
    fn retries_of_the_last_five_batches_get_their_offsets() {
        let mut table = ProducerTable::default();
        let mut next = 100;
        for i in 0..6 {
            append(&mut table, &mut next, batch(3, 2, i * 10, 10)).unwrap();
        }
        // Batches 1..=5 are retained (offsets 110..=159), batch 0 is not.
        for i in 1..6 {
            assert_eq!(
                append(&mut table, &mut next, batch(3, 2, i * 10, 10)),
                Ok(Verdict::Duplicate {
                    base_offset: 100 + i64::from(i) * 10,
                    last_offset: 109 + i64::from(i) * 10
                })
            );
        }
        assert!(matches!(
            append(&mut table, &mut next, batch(3, 2, 0, 10)),
            Err(ProducerError::OutOfOrder { expected: 60, .. })
        ));
        // Same first sequence, other length: not the same batch.
        assert!(matches!(
            append(&mut table, &mut next, batch(3, 2, 50, 5)),
            Err(ProducerError::OutOfOrder { .. })
        ));
        assert_eq!(next, 160, "nothing appended twice");
        // A retry in another epoch is not a duplicate.
        assert!(matches!(
            append(&mut table, &mut next, batch(3, 3, 50, 10)),
            Err(ProducerError::OutOfOrder { expected: 0, .. })
        ));
    }

    #[test]
    fn epochs_fence_and_restart_sequences() {
        let mut table = ProducerTable::default();
        let mut next = 0;
        append(&mut table, &mut next, batch(9, 4, 0, 5)).unwrap();
        assert_eq!(
            append(&mut table, &mut next, batch(9, 3, 5, 1)),
            Err(ProducerError::InvalidEpoch {
                producer_id: 9,
                epoch: 3,
                current: 4
            })
        );
        // A newer epoch starts at sequence 0, and then the old one is fenced.
        assert!(matches!(
            append(&mut table, &mut next, batch(9, 5, 5, 1)),
            Err(ProducerError::OutOfOrder { expected: 0, .. })
        ));
        assert_eq!(
            append(&mut table, &mut next, batch(9, 5, 0, 2)),
            Ok(Verdict::Append)
        );
        assert_eq!(table.get(9).unwrap().epoch(), 5);
        assert_eq!(table.get(9).unwrap().batches().len(), 1);
        assert!(matches!(
            append(&mut table, &mut next, batch(9, 4, 5, 1)),
            Err(ProducerError::InvalidEpoch { current: 5, .. })
        ));
        // Producers do not disturb each other.
        assert_eq!(
            append(&mut table, &mut next, batch(10, 0, 0, 1)),
            Ok(Verdict::Append)
        );
        assert_eq!(
            append(&mut table, &mut next, batch(9, 5, 2, 1)),
            Ok(Verdict::Append)
        );
    }

    #[test]
    fn an_unknown_producer_is_accepted_at_any_sequence() {
        let mut table = ProducerTable::default();
        let mut next = 0;
        assert_eq!(
            append(&mut table, &mut next, batch(4, 7, 1234, 3)),
            Ok(Verdict::Append)
        );
        assert!(matches!(
            append(&mut table, &mut next, batch(4, 7, 1234, 3)),
            Ok(Verdict::Duplicate { base_offset: 0, .. })
        ));
        assert_eq!(
            append(&mut table, &mut next, batch(4, 7, 1237, 1)),
            Ok(Verdict::Append)
        );
    }

    #[test]
    fn headers_without_a_producer_or_with_bad_fields() {
        let mut header = BatchHeader {
            base_offset: 0,
            batch_length: 49,
            partition_leader_epoch: -1,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: 4,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records_count: 5,
        };
        assert_eq!(ProducerBatch::of(&header), Ok(None));
        header.producer_id = 12;
        assert!(matches!(
            ProducerBatch::of(&header),
            Err(ProducerError::Invalid(_))
        ));
        header.producer_epoch = 1;
        assert!(matches!(
            ProducerBatch::of(&header),
            Err(ProducerError::Invalid(_))
        ));
        header.base_sequence = 20;
        assert_eq!(
            ProducerBatch::of(&header),
            Ok(Some(ProducerBatch {
                producer_id: 12,
                epoch: 1,
                first_seq: 20,
                last_seq: 24
            }))
        );
        for flag in [TRANSACTIONAL_FLAG, CONTROL_FLAG] {
            header.attributes = flag;
            assert!(matches!(
                ProducerBatch::of(&header),
                Err(ProducerError::Invalid(_))
            ));
        }
    }

    #[test]
    fn idle_producers_expire_and_the_table_is_capped() {
        let mut table = ProducerTable::default();
        table.record(&batch(1, 0, 0, 1), 0, 0, 1_000);
        table.record(&batch(2, 0, 0, 1), 1, 1, 5_000);
        assert_eq!(table.expire(1_000 + PRODUCER_EXPIRATION_MS - 1), 0);
        assert_eq!(table.expire(1_000 + PRODUCER_EXPIRATION_MS), 1);
        assert!(table.get(1).is_none() && table.get(2).is_some());

        let mut table = ProducerTable::default();
        for id in 0..MAX_PRODUCERS as i64 {
            table.record(&batch(id, 0, 0, 1), id, id, 10 + id);
        }
        // Producer 0 is heard from again; producer 1 is now the least recent.
        table.record(&batch(0, 0, 1, 1), 20_000, 20_000, 50_000);
        table.record(&batch(1_000_000, 0, 0, 1), 20_001, 20_001, 50_001);
        assert_eq!(table.len(), MAX_PRODUCERS);
        assert!(table.get(0).is_some());
        assert!(table.get(1).is_none());
    }

    #[test]
    fn a_round_checks_against_its_own_staged_batches_and_discards_a_failed_caller() {
        let mut table = ProducerTable::default();
        table.record(&batch(1, 0, 0, 2), 0, 1, 0);
        let mut round = RoundChecks::new(&table);
        // Caller A: seq 2..=3, staged at offsets 2..=3.
        let a = batch(1, 0, 2, 2);
        assert_eq!(round.check(&a), Ok(Verdict::Append));
        round.stage(&a, 2, 3, 0);
        round.keep();
        // Caller B retries A in the same round: a duplicate with A's offsets.
        assert_eq!(
            round.check(&a),
            Ok(Verdict::Duplicate {
                base_offset: 2,
                last_offset: 3
            })
        );
        // Caller C: a good batch, then a gap; all of C is taken out.
        let c1 = batch(1, 0, 4, 1);
        assert_eq!(round.check(&c1), Ok(Verdict::Append));
        round.stage(&c1, 4, 4, 0);
        let c2 = batch(1, 0, 9, 1);
        assert!(round.check(&c2).is_err());
        round.discard();
        // Caller D sends what C's first batch was: accepted, nothing of C remains.
        assert_eq!(round.check(&c1), Ok(Verdict::Append));
        // The table is untouched until the round's batches are written.
        assert_eq!(table.get(1).unwrap().batches().len(), 1);
    }

    #[test]
    fn snapshots_round_trip_and_damage_is_detected() {
        let mut table = ProducerTable::default();
        let mut next = 0;
        for i in 0..7 {
            append(&mut table, &mut next, batch(1, 3, i * 2, 2)).unwrap();
        }
        append(&mut table, &mut next, batch(2, 0, 40, 1)).unwrap();
        let bytes = table.encode_snapshot(next);
        let (offset, back) = ProducerTable::decode_snapshot(&bytes).unwrap();
        assert_eq!(offset, next);
        assert_eq!(back, table);
        assert_eq!(back.get(1).unwrap().batches().len(), RETAINED_BATCHES);

        let empty = ProducerTable::default().encode_snapshot(0);
        assert_eq!(
            ProducerTable::decode_snapshot(&empty).unwrap(),
            (0, ProducerTable::default())
        );
        for cut in 0..bytes.len() {
            assert!(
                ProducerTable::decode_snapshot(&bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            assert!(ProducerTable::decode_snapshot(&bad).is_err(), "flip {at}");
        }
    }

    proptest::proptest! {
        /// Decoding any bytes returns a value or an error, never a panic: as they are, and
        /// behind a valid header and checksum, so the entry parsing is reached.
        #[test]
        fn decode_never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            count in 0u32..5,
        ) {
            let _ = ProducerTable::decode_snapshot(&bytes);
            let mut framed = SNAPSHOT_MAGIC.to_vec();
            framed.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
            framed.extend_from_slice(&7i64.to_be_bytes());
            framed.extend_from_slice(&count.to_be_bytes());
            framed.extend_from_slice(&bytes);
            let crc = crc32c::crc32c(&framed);
            framed.extend_from_slice(&crc.to_be_bytes());
            let _ = ProducerTable::decode_snapshot(&framed);
        }
    }
}
