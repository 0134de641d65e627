//! Share groups (queues, as in Kafka's KIP-932): the consumption state of one
//! (share group, topic, partition) as a pure state machine.
//!
//! Many members consume the same partition. A record a member takes is *acquired*: locked to
//! that member until a deadline. The member then accepts it (done), releases it (available
//! again at once), nacks it with a delay (available again later) or rejects it (done, and
//! handed to the dead-letter path). An expired lock makes the record available again, so the
//! records of a member that died go to the others after `lock_duration`. Every acquisition
//! is one delivery; a record that would be delivered more than `max_deliveries` times is
//! archived and dead-lettered instead, so one poison record cannot loop forever.
//!
//! State is kept per record only in the *window* from the share-partition start offset
//! (SPSO: every offset below it is done) to the first offset never acquired. The SPSO moves
//! up over the done prefix, and acquisition never reaches `max_in_flight` offsets past it, so
//! memory stays bounded however long one slow record holds the SPSO back.
//!
//! Nothing here reads a clock or does I/O: time comes in as an [`Instant`], the server
//! arms its timer from [`SharePartition::next_deadline`], and tests make up instants.
//! The server must never pass a `log_end` lower than an earlier one.
//!
//! Only the SPSO and the done offsets above it survive a restart ([`DurableState`]).
//! AcquiredRun and nacked records come back available at once, and delivery counts restart at
//! zero: persisting them would cost a write per fetch, and losing them only gives a poison
//! record up to `max_deliveries` more tries per restart.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest lock or nack delay honoured: a nonsense delay from a client must not overflow
/// `Instant` arithmetic, which panics.
const LONGEST_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The version byte that starts an encoded [`DurableState`].
const STATE_VERSION: u8 = 1;

/// How a share-partition hands out records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareConfig {
    /// How long an acquired record stays locked to its member before others may take it.
    pub lock_duration: Duration,
    /// How many times a record is delivered before it is dead-lettered instead.
    pub max_deliveries: u16,
    /// How far past the SPSO acquisition may reach: bounds the per-record state.
    pub max_in_flight: usize,
}

impl Default for ShareConfig {
    fn default() -> Self {
        ShareConfig {
            lock_duration: Duration::from_secs(30),
            max_deliveries: 5,
            max_in_flight: 2000,
        }
    }
}

/// What a member does with records it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    /// Processed: the records are done.
    Accept,
    /// Given back: any member may take them at once; their delivery counts are kept.
    Release,
    /// Unprocessable: the records are done and go to the dead-letter path.
    Reject,
    /// Not now: any member may take them once `delay` has passed.
    Nack {
        /// How long the records stay out of reach.
        delay: Duration,
    },
}

/// A run of consecutive offsets acquired together, all at the same delivery count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcquiredRun {
    /// First offset of the run.
    pub first: i64,
    /// Last offset of the run, inclusive.
    pub last: i64,
    /// How many times these records have now been delivered, 1 for the first time.
    pub delivery: u16,
}

/// A record taken out of circulation, for the server to copy to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The record's offset.
    pub offset: i64,
    /// How many times it was delivered.
    pub deliveries: u16,
    /// Why it was dead-lettered, for the dead-letter record's headers and the logs.
    pub reason: String,
}

impl DeadLetter {
    fn exhausted(offset: i64, deliveries: u16, max_deliveries: u16) -> DeadLetter {
        DeadLetter {
            offset,
            deliveries,
            reason: format!("delivery count {deliveries} reached max.deliveries {max_deliveries}"),
        }
    }

    fn rejected(offset: i64, deliveries: u16) -> DeadLetter {
        DeadLetter {
            offset,
            deliveries,
            reason: "rejected by consumer".to_string(),
        }
    }
}

/// What one [`SharePartition::acquire`] handed out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acquisition {
    /// The records now locked to the member, in offset order.
    pub records: Vec<AcquiredRun>,
    /// Records that ran out of deliveries instead: archived, never delivered again.
    pub dead_letters: Vec<DeadLetter>,
}

impl Acquisition {
    fn push(&mut self, offset: i64, delivery: u16) {
        match self.records.last_mut() {
            Some(run) if run.last + 1 == offset && run.delivery == delivery => run.last = offset,
            _ => self.records.push(AcquiredRun {
                first: offset,
                last: offset,
                delivery,
            }),
        }
    }
}

/// Why an acknowledgement was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    /// The record is not locked to this member: never acquired, lock expired, already
    /// acknowledged, or held by another member.
    #[error("record {offset} is not held by this member")]
    NotHeld {
        /// The first offset of the range that is not held.
        offset: i64,
    },
    /// The range ends before it starts.
    #[error("invalid offset range {first}..={last}")]
    InvalidRange {
        /// First offset of the range.
        first: i64,
        /// Last offset of the range.
        last: i64,
    },
}

/// Why encoded share state could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateDecodeError {
    /// The bytes end inside a field.
    #[error("share state ends early")]
    Truncated,
    /// The version byte is not one this broker writes.
    #[error("unknown share state version {0}")]
    UnknownVersion(u8),
    /// A varint runs past 64 bits.
    #[error("share state has a malformed varint")]
    BadVarint,
    /// A done range reaches past `i64::MAX`.
    #[error("share state has an offset out of range")]
    OffsetOverflow,
    /// Bytes follow the last field.
    #[error("{0} unexpected bytes after the share state")]
    TrailingBytes(usize),
}

/// A snapshot of a share-partition, for metrics and admin tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareStats {
    /// The SPSO: every offset below it is done.
    pub start: i64,
    /// The first offset never acquired.
    pub next_offset: i64,
    /// Records locked to a member.
    pub acquired: usize,
    /// Records in the window that any member may take now.
    pub available_again: usize,
    /// Nacked records waiting out their delay.
    pub delayed: usize,
    /// Records in the window already accepted, rejected or dead-lettered.
    pub done_in_window: usize,
    /// The highest delivery count in the window: a sign of poison records.
    pub highest_delivery: u16,
}

/// What of a share-partition survives a restart.
///
/// [`SharePartition::durable_state`] returns it canonical: `done` sorted, each range
/// inclusive, above `start`, and separated from the next by at least one offset not done.
/// Other states are accepted everywhere and read as the union of their ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DurableState {
    /// The SPSO.
    pub start: i64,
    /// Inclusive ranges of done offsets above `start`.
    pub done: Vec<(i64, i64)>,
}

impl DurableState {
    /// The same done offsets in canonical form: ranges sorted and merged, and a done prefix
    /// folded into `start`.
    fn canonical(&self) -> DurableState {
        let mut ranges: Vec<(i64, i64)> = self
            .done
            .iter()
            .copied()
            .filter(|(first, last)| first <= last)
            .collect();
        ranges.sort_unstable();
        let mut start = self.start;
        let mut done: Vec<(i64, i64)> = Vec::with_capacity(ranges.len());
        for (first, last) in ranges {
            match done.last_mut() {
                None if first <= start => start = start.max(last.saturating_add(1)),
                Some(previous) if first <= previous.1.saturating_add(1) => {
                    previous.1 = previous.1.max(last);
                }
                _ => done.push((first, last)),
            }
        }
        DurableState { start, done }
    }
}

/// The queue-style consumption state of one (share group, topic, partition).
#[derive(Debug)]
pub struct SharePartition {
    config: ShareConfig,
    /// The SPSO: every offset below it is done.
    start: i64,
    /// The state of offsets `start..start + records.len()`. The front is never done: the
    /// SPSO moves past it as soon as it is.
    records: VecDeque<Record>,
    /// Records rejected since the last [`SharePartition::take_dead_letters`].
    rejected: Vec<DeadLetter>,
}

#[derive(Debug)]
struct Record {
    /// Acquisitions so far (since the last restart).
    deliveries: u16,
    state: RecordState,
}

#[derive(Debug, Clone)]
enum RecordState {
    /// Free for the next acquisition.
    Available,
    /// Nacked: free once `until` has passed.
    Delayed { until: Instant },
    /// Locked to `member` until `until`.
    AcquiredRun { member: Arc<str>, until: Instant },
    /// Accepted, rejected or dead-lettered: never delivered again.
    Done,
}

impl Record {
    fn is_done(&self) -> bool {
        matches!(self.state, RecordState::Done)
    }

    fn deadline(&self) -> Option<Instant> {
        match self.state {
            RecordState::Delayed { until } | RecordState::AcquiredRun { until, .. } => Some(until),
            RecordState::Available | RecordState::Done => None,
        }
    }
}

impl SharePartition {
    /// Starts at `start` (the SPSO: every record below it is done). A new share group starts
    /// at the log start, or at the log end when configured "latest"; the server decides.
    pub fn new(config: ShareConfig, start: i64) -> SharePartition {
        SharePartition {
            config,
            start,
            records: VecDeque::new(),
            rejected: Vec::new(),
        }
    }

    /// Acquires up to `max_records` records for `member` until `now + lock_duration`.
    ///
    /// Records available again (released, nacked with their delay passed, expired locks) go
    /// first, then new records up to `log_end`: all in offset order, never `max_in_flight`
    /// or more offsets past the SPSO. Records deleted by retention (below `log_start`) are
    /// dropped silently. A record out of deliveries is archived and reported in
    /// `dead_letters` instead; it does not count towards `max_records`.
    pub fn acquire(
        &mut self,
        member: &str,
        max_records: usize,
        log_start: i64,
        log_end: i64,
        now: Instant,
    ) -> Acquisition {
        self.expire(now);
        self.drop_deleted(log_start);
        let holder: Arc<str> = Arc::from(member);
        let until = later(now, self.config.lock_duration);
        let end = log_end.min(self.window_limit());
        let mut acquisition = Acquisition::default();
        let mut taken = 0;
        let mut index = 0;
        while taken < max_records && self.has_record(index, end) {
            if self.hand_out(index, &holder, until, &mut acquisition) {
                taken += 1;
            }
            index += 1;
        }
        self.advance_start();
        acquisition
    }

    /// Acknowledges `first..=last` for `member`.
    ///
    /// All or nothing: unless every offset is locked to `member` with its lock still running
    /// at `now`, this returns [`ShareError::NotHeld`] for the first offending offset and
    /// changes nothing. Rejected records are queued for [`SharePartition::take_dead_letters`],
    /// which the server calls after every acknowledgement.
    pub fn acknowledge(
        &mut self,
        member: &str,
        first: i64,
        last: i64,
        kind: AckKind,
        now: Instant,
    ) -> Result<(), ShareError> {
        if first > last {
            return Err(ShareError::InvalidRange { first, last });
        }
        if let Some(offset) = (first..=last).find(|&offset| !self.holds(member, offset, now)) {
            return Err(ShareError::NotHeld { offset });
        }
        let next = match kind {
            AckKind::Accept | AckKind::Reject => RecordState::Done,
            AckKind::Release => RecordState::Available,
            AckKind::Nack { delay } => RecordState::Delayed {
                until: later(now, delay),
            },
        };
        // Every offset is held, so all lie in the window.
        let from = (first - self.start) as usize;
        let to = (last - self.start) as usize;
        for (offset, record) in (first..=last).zip(self.records.range_mut(from..=to)) {
            if kind == AckKind::Reject {
                self.rejected
                    .push(DeadLetter::rejected(offset, record.deliveries));
            }
            record.state = next.clone();
        }
        self.advance_start();
        Ok(())
    }

    /// The records rejected since the last call, for the server to copy to the dead-letter
    /// topic. A rejection is the consumer saying it cannot process the record, which is what
    /// the dead-letter topic is for. Copy them before persisting [`Self::durable_state`]:
    /// the pending list does not survive a restart.
    pub fn take_dead_letters(&mut self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.rejected)
    }

    /// Applies new settings (a consumer of the group asked for other ones): locks taken
    /// from now on use the new duration, and acquisitions the new delivery limit.
    pub fn set_config(&mut self, config: ShareConfig) {
        self.config = config;
    }

    /// Makes records whose lock or nack delay has run out by `now` available again, delivery
    /// counts kept. Returns how many locks expired. Acquisition calls it first; the server's
    /// timer calls it at [`Self::next_deadline`].
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut expired = 0;
        for record in &mut self.records {
            match record.state {
                RecordState::AcquiredRun { until, .. } if until <= now => {
                    record.state = RecordState::Available;
                    expired += 1;
                }
                RecordState::Delayed { until } if until <= now => {
                    record.state = RecordState::Available;
                }
                _ => {}
            }
        }
        expired
    }

    /// Drops every lock `member` holds (it left, or its connection closed): its records are
    /// available at once. Returns how many it held.
    pub fn release_member(&mut self, member: &str) -> usize {
        let mut released = 0;
        for record in &mut self.records {
            if matches!(&record.state, RecordState::AcquiredRun { member: holder, .. } if &**holder == member)
            {
                record.state = RecordState::Available;
                released += 1;
            }
        }
        released
    }

    /// The earliest lock expiry or nack delay end, for the server's timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.records.iter().filter_map(Record::deadline).min()
    }

    /// The SPSO: every offset below it is done.
    pub fn start(&self) -> i64 {
        self.start
    }

    /// Counts of the records in the window by state.
    pub fn stats(&self) -> ShareStats {
        let mut stats = ShareStats {
            start: self.start,
            next_offset: self.next_offset(),
            acquired: 0,
            available_again: 0,
            delayed: 0,
            done_in_window: 0,
            highest_delivery: 0,
        };
        for record in &self.records {
            match record.state {
                RecordState::Available => stats.available_again += 1,
                RecordState::Delayed { .. } => stats.delayed += 1,
                RecordState::AcquiredRun { .. } => stats.acquired += 1,
                RecordState::Done => stats.done_in_window += 1,
            }
            stats.highest_delivery = stats.highest_delivery.max(record.deliveries);
        }
        stats
    }

    /// What must survive a restart: the SPSO and the done ranges above it, canonical.
    pub fn durable_state(&self) -> DurableState {
        let mut done: Vec<(i64, i64)> = Vec::new();
        for (index, record) in self.records.iter().enumerate() {
            if !record.is_done() {
                continue;
            }
            let offset = self.start + index as i64;
            match done.last_mut() {
                Some(run) if run.1 + 1 == offset => run.1 = offset,
                _ => done.push((offset, offset)),
            }
        }
        DurableState {
            start: self.start,
            done,
        }
    }

    /// Rebuilds a share-partition after a restart: done records stay done, every other
    /// record from the SPSO on is available, with a delivery count of zero.
    ///
    /// Done ranges `max_in_flight` or more past the SPSO (a larger limit before the restart,
    /// or a corrupt state) are forgotten rather than allowed to grow the window without
    /// bound: those records are delivered again, which at-least-once consumers tolerate.
    pub fn restore(config: ShareConfig, state: &DurableState) -> SharePartition {
        let canonical = state.canonical();
        let mut partition = SharePartition::new(config, canonical.start);
        let limit = partition.window_limit();
        for &(first, last) in &canonical.done {
            if first >= limit {
                break;
            }
            while partition.next_offset() <= last.min(limit - 1) {
                let state = if partition.next_offset() >= first {
                    RecordState::Done
                } else {
                    RecordState::Available
                };
                partition.records.push_back(Record {
                    deliveries: 0,
                    state,
                });
            }
        }
        partition
    }

    /// Encodes a state for the server's log: the version byte, then unsigned LEB128
    /// varints: the zigzagged SPSO, the number of ranges, and for each range its gap from
    /// the lowest offset it could start at (SPSO + 1, or the previous range's last + 2) and
    /// its length minus one. A non-canonical state is written canonical.
    pub fn encode_state(state: &DurableState) -> Vec<u8> {
        let state = state.canonical();
        let mut bytes = Vec::with_capacity(12 + 4 * state.done.len());
        bytes.push(STATE_VERSION);
        put_varint(&mut bytes, zigzag(state.start));
        put_varint(&mut bytes, state.done.len() as u64);
        let mut lowest = i128::from(state.start) + 1;
        for &(first, last) in &state.done {
            put_varint(&mut bytes, (i128::from(first) - lowest) as u64);
            put_varint(&mut bytes, (i128::from(last) - i128::from(first)) as u64);
            lowest = i128::from(last) + 2;
        }
        bytes
    }

    /// Decodes what [`Self::encode_state`] wrote. Malformed bytes are an error, never a
    /// panic, and a forged range count cannot make it allocate more than the input's size.
    pub fn decode_state(bytes: &[u8]) -> Result<DurableState, StateDecodeError> {
        let mut input = bytes;
        let (&version, rest) = input.split_first().ok_or(StateDecodeError::Truncated)?;
        input = rest;
        if version != STATE_VERSION {
            return Err(StateDecodeError::UnknownVersion(version));
        }
        let start = unzigzag(take_varint(&mut input)?);
        let count = take_varint(&mut input)?;
        let mut done = Vec::with_capacity((count as usize).min(input.len() / 2));
        let mut lowest = i128::from(start) + 1;
        for _ in 0..count {
            let first = lowest + i128::from(take_varint(&mut input)?);
            let last = first + i128::from(take_varint(&mut input)?);
            let (Ok(first), Ok(last)) = (i64::try_from(first), i64::try_from(last)) else {
                return Err(StateDecodeError::OffsetOverflow);
            };
            done.push((first, last));
            lowest = i128::from(last) + 2;
        }
        if !input.is_empty() {
            return Err(StateDecodeError::TrailingBytes(input.len()));
        }
        Ok(DurableState { start, done })
    }

    /// The first offset with no state: never acquired since the start or the restart.
    fn next_offset(&self) -> i64 {
        self.start + self.records.len() as i64
    }

    /// The first offset acquisition may not reach.
    fn window_limit(&self) -> i64 {
        let max_in_flight = i64::try_from(self.config.max_in_flight).unwrap_or(i64::MAX);
        self.start.saturating_add(max_in_flight)
    }

    /// Whether the window has a record at `index`, growing it by a never-delivered record
    /// when `index` is just past its end and below `end`.
    fn has_record(&mut self, index: usize, end: i64) -> bool {
        if index < self.records.len() {
            return true;
        }
        if self.start + index as i64 >= end {
            return false;
        }
        self.records.push_back(Record {
            deliveries: 0,
            state: RecordState::Available,
        });
        true
    }

    /// Locks the record at `index` to `holder` if it is available, or archives it as a dead
    /// letter if it is out of deliveries. Returns whether it was handed out.
    fn hand_out(
        &mut self,
        index: usize,
        holder: &Arc<str>,
        until: Instant,
        acquisition: &mut Acquisition,
    ) -> bool {
        let offset = self.start + index as i64;
        let max_deliveries = self.config.max_deliveries;
        let record = &mut self.records[index];
        if !matches!(record.state, RecordState::Available) {
            return false;
        }
        if record.deliveries >= max_deliveries {
            record.state = RecordState::Done;
            let dead = DeadLetter::exhausted(offset, record.deliveries, max_deliveries);
            acquisition.dead_letters.push(dead);
            return false;
        }
        record.deliveries += 1;
        record.state = RecordState::AcquiredRun {
            member: Arc::clone(holder),
            until,
        };
        acquisition.push(offset, record.deliveries);
        true
    }

    fn holds(&self, member: &str, offset: i64, now: Instant) -> bool {
        let Some(index) = offset.checked_sub(self.start) else {
            return false;
        };
        let Some(record) = usize::try_from(index)
            .ok()
            .and_then(|index| self.records.get(index))
        else {
            return false;
        };
        matches!(&record.state, RecordState::AcquiredRun { member: holder, until }
            if &**holder == member && *until > now)
    }

    /// Forgets records below `log_start`: retention deleted them, so they are done.
    fn drop_deleted(&mut self, log_start: i64) {
        let deleted = log_start.saturating_sub(self.start);
        if deleted <= 0 {
            return;
        }
        let known = usize::try_from(deleted)
            .unwrap_or(usize::MAX)
            .min(self.records.len());
        self.records.drain(..known);
        self.start = log_start;
        self.advance_start();
    }

    /// Moves the SPSO past the done prefix and drops its state.
    fn advance_start(&mut self) {
        while self.records.front().is_some_and(Record::is_done) {
            self.records.pop_front();
            self.start += 1;
        }
    }
}

fn later(now: Instant, wait: Duration) -> Instant {
    now + wait.min(LONGEST_WAIT)
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

fn put_varint(bytes: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        bytes.push(value as u8 | 0x80);
        value >>= 7;
    }
    bytes.push(value as u8);
}

fn take_varint(input: &mut &[u8]) -> Result<u64, StateDecodeError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first().ok_or(StateDecodeError::Truncated)?;
        *input = rest;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return Err(StateDecodeError::BadVarint);
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(StateDecodeError::BadVarint)
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    const LOCK: Duration = Duration::from_millis(100);

    fn config(max_deliveries: u16, max_in_flight: usize) -> ShareConfig {
        ShareConfig {
            lock_duration: LOCK,
            max_deliveries,
            max_in_flight,
        }
    }

    fn partition() -> SharePartition {
        SharePartition::new(config(5, 1000), 0)
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn runs(acquisition: &Acquisition) -> Vec<(i64, i64, u16)> {
        acquisition
            .records
            .iter()
            .map(|run| (run.first, run.last, run.delivery))
            .collect()
    }

    #[test]
    fn default_config_matches_the_documented_values() {
        let config = ShareConfig::default();
        assert_eq!(config.lock_duration, Duration::from_secs(30));
        assert_eq!(config.max_deliveries, 5);
        assert_eq!(config.max_in_flight, 2000);
    }

    #[test]
    fn acquire_hands_out_new_records_up_to_the_log_end() {
        let mut share = partition();
        let t0 = Instant::now();
        assert_eq!(runs(&share.acquire("a", 10, 0, 5, t0)), [(0, 4, 1)]);
        assert!(share.acquire("a", 10, 0, 5, t0).records.is_empty());
        assert_eq!(runs(&share.acquire("a", 10, 0, 8, t0)), [(5, 7, 1)]);
    }

    #[test]
    fn acquire_stops_at_max_records() {
        let mut share = partition();
        let t0 = Instant::now();
        assert_eq!(runs(&share.acquire("a", 3, 0, 10, t0)), [(0, 2, 1)]);
        assert_eq!(runs(&share.acquire("a", 3, 0, 10, t0)), [(3, 5, 1)]);
        assert!(share.acquire("a", 0, 0, 10, t0).records.is_empty());
    }

    #[test]
    fn members_never_hold_the_same_record() {
        let mut share = partition();
        let t0 = Instant::now();
        assert_eq!(runs(&share.acquire("a", 3, 0, 6, t0)), [(0, 2, 1)]);
        assert_eq!(runs(&share.acquire("b", 10, 0, 6, t0)), [(3, 5, 1)]);
        assert_eq!(
            share.acknowledge("b", 0, 0, AckKind::Accept, t0),
            Err(ShareError::NotHeld { offset: 0 })
        );
        assert_eq!(
            share.acknowledge("a", 2, 3, AckKind::Accept, t0),
            Err(ShareError::NotHeld { offset: 3 })
        );
        assert_eq!(share.acknowledge("a", 0, 2, AckKind::Accept, t0), Ok(()));
        assert_eq!(share.acknowledge("b", 3, 5, AckKind::Accept, t0), Ok(()));
        assert_eq!(share.start(), 6);
    }

    #[test]
    fn accepting_the_prefix_advances_the_start() {
        let mut share = partition();
        let t0 = Instant::now();
        share.acquire("a", 5, 0, 5, t0);
        share.acknowledge("a", 1, 2, AckKind::Accept, t0).unwrap();
        assert_eq!(share.start(), 0);
        share.acknowledge("a", 0, 0, AckKind::Accept, t0).unwrap();
        assert_eq!(share.start(), 3);
        assert_eq!(share.stats().done_in_window, 0);
        share.acknowledge("a", 3, 4, AckKind::Accept, t0).unwrap();
        assert_eq!(share.start(), 5);
        assert!(share.records.is_empty());
    }

    #[test]
    fn expired_locks_go_to_other_members_with_the_next_delivery_count() {
        let mut share = partition();
        let t0 = Instant::now();
        share.acquire("a", 3, 0, 3, t0);
        assert!(share
            .acquire("b", 10, 0, 3, t0 + LOCK - ms(1))
            .records
            .is_empty());
        assert_eq!(runs(&share.acquire("b", 10, 0, 3, t0 + LOCK)), [(0, 2, 2)]);
        assert_eq!(
            share.acknowledge("a", 0, 2, AckKind::Accept, t0 + LOCK),
            Err(ShareError::NotHeld { offset: 0 })
        );
        share
            .acknowledge("b", 0, 2, AckKind::Accept, t0 + LOCK)
            .unwrap();
        assert_eq!(share.start(), 3);
    }

    #[test]
    fn an_expired_lock_cannot_be_acknowledged_even_before_expire_runs() {
        let mut share = partition();
        let t0 = Instant::now();
        share.acquire("a", 1, 0, 1, t0);
        assert_eq!(
            share.acknowledge("a", 0, 0, AckKind::Accept, t0 + LOCK),
            Err(ShareError::NotHeld { offset: 0 })
        );
        assert_eq!(
            share.acknowledge("a", 0, 0, AckKind::Accept, t0 + LOCK - ms(1)),
            Ok(())
        );
    }

    #[test]
    fn expire_counts_expired_locks() {
        let mut share = partition();
        let t0 = Instant::now();
        share.acquire("a", 2, 0, 10, t0);
        share.acquire("b", 3, 0, 10, t0 + ms(50));
        assert_eq!(share.expire(t0 + LOCK), 2);
        assert_eq!(share.stats().available_again, 2);
        assert_eq!(share.expire(t0 + LOCK), 0);
        assert_eq!(share.expire(t0 + LOCK + ms(50)), 3);
    }

    #[test]
    fn next_deadline_is_the_earliest_lock_or_nack_delay() {
        let mut share = partition();
        let t0 = Instant::now();
        assert_eq!(share.next_deadline(), None);
        share.acquire("a", 2, 0, 10, t0);
        assert_eq!(share.next_deadline(), Some(t0 + LOCK));
        share
            .acknowledge("a", 0, 0, AckKind::Nack { delay: ms(30) }, t0)
            .unwrap();
        assert_eq!(share.next_deadline(), Some(t0 + ms(30)));
        share.acknowledge("a", 1, 1, AckKind::Accept, t0).unwrap();
        share.expire(t0 + ms(30));
        assert_eq!(share.next_deadline(), None);
    }

    #[test]
    fn released_records_are_redelivered_at_once() {
        let mut share = partition();
        let t0 = Instant::now();
        share.acquire("a", 4, 0, 6, t0);
        share.acknowledge("a", 1, 2, AckKind::Release, t0).unwrap();
        assert_eq!(
            runs(&share.acquire("b", 10, 0, 6, t0)),
            [(1, 2, 2), (4, 5, 1)]
        );
    }

    #[test]
    fn nacked_records_wait_out_their_delay() {
        let mut share = partition();
        let t0 = Instant::now();
        share.acquire("a", 2, 0, 2, t0);
        share
            .acknowledge("a", 0, 1, AckKind::Nack { delay: ms(500) }, t0)
            .unwrap();
        assert_eq!(share.stats().delayed, 2);
        assert!(share
            .acquire("b", 10, 0, 2, t0 + ms(499))
            .records
            .is_empty());
        assert_eq!(
            runs(&share.acquire("b", 10, 0, 2, t0 + ms(500))),
            [(0, 1, 2)]
        );
    }

    #[test]
    fn an_absurd_nack_delay_does_not_overflow_the_clock() {
        let mut share = partition();
        let t0 = Instant::now();
        share.acquire("a", 1, 0, 1, t0);
        let delay = Duration::MAX;
        share
            .acknowledge("a", 0, 0, AckKind::Nack { delay }, t0)
            .unwrap();
        assert_eq!(share.next_deadline(), Some(t0 + LONGEST_WAIT));
    }

    #[test]
    fn records_out_of_deliveries_are_dead_lettered_on_the_next_acquisition() {
        let mut share = SharePartition::new(config(3, 100), 0);
        let t0 = Instant::now();
        for delivery in 1..=3 {
            assert_eq!(runs(&share.acquire("a", 1, 0, 2, t0)), [(0, 0, delivery)]);
            share.acknowledge("a", 0, 0, AckKind::Release, t0).unwrap();
        }
        let acquisition = share.acquire("a", 1, 0, 2, t0);
        assert_eq!(runs(&acquisition), [(1, 1, 1)]);
        let dead = DeadLetter {
            offset: 0,
            deliveries: 3,
            reason: "delivery count 3 reached max.deliveries 3".to_string(),
        };
        assert_eq!(acquisition.dead_letters, [dead]);
        assert_eq!(share.start(), 1);
        assert!(share.take_dead_letters().is_empty());
    }

    #[test]
    fn expired_locks_also_count_towards_max_deliveries() {
        let mut share = SharePartition::new(config(2, 100), 0);
        let t0 = Instant::now();
        share.acquire("a", 1, 0, 1, t0);
        share.acquire("b", 1, 0, 1, t0 + LOCK);
        let acquisition = share.acquire("c", 1, 0, 1, t0 + LOCK * 2);
        assert!(acquisition.records.is_empty());
        assert_eq!(acquisition.dead_letters[0].deliveries, 2);
        assert_eq!(share.start(), 1);
    }

    #[test]
    fn rejected_records_are_archived_and_dead_lettered() {
        let mut share = partition();
        let t0 = Instant::now();
        share.acquire("a", 3, 0, 3, t0);
        share.acknowledge("a", 1, 1, AckKind::Reject, t0).unwrap();
        let dead = DeadLetter {
            offset: 1,
            deliveries: 1,
            reason: "rejected by consumer".to_string(),
        };
        assert_eq!(share.take_dead_letters(), [dead]);
        assert!(share.take_dead_letters().is_empty());
        share.acknowledge("a", 0, 0, AckKind::Release, t0).unwrap();
        share.acknowledge("a", 2, 2, AckKind::Release, t0).unwrap();
        assert_eq!(
            runs(&share.acquire("b", 10, 0, 3, t0)),
            [(0, 0, 2), (2, 2, 2)]
        );
    }

    #[test]
    fn a_refused_acknowledgement_changes_nothing() {
        let mut share = partition();
        let t0 = Instant::now();
        share.acquire("a", 3, 0, 5, t0);
        share.acquire("b", 2, 0, 5, t0);
        let before = format!("{share:?}");
        for kind in [
            AckKind::Accept,
            AckKind::Release,
            AckKind::Reject,
            AckKind::Nack { delay: ms(5) },
        ] {
            assert_eq!(
                share.acknowledge("a", 1, 3, kind, t0),
                Err(ShareError::NotHeld { offset: 3 })
            );
            assert_eq!(
                share.acknowledge("a", 1, 9, kind, t0),
                Err(ShareError::NotHeld { offset: 3 })
            );
        }
        assert_eq!(format!("{share:?}"), before);
        assert!(share.take_dead_letters().is_empty());
        assert_eq!(share.acknowledge("a", 0, 2, AckKind::Accept, t0), Ok(()));
    }

    #[test]
    fn acknowledging_twice_or_outside_the_window_is_not_held() {
        let mut share = partition();
        let t0 = Instant::now();
        share.acquire("a", 3, 0, 3, t0);
        share.acknowledge("a", 1, 1, AckKind::Accept, t0).unwrap();
        assert_eq!(
            share.acknowledge("a", 1, 1, AckKind::Accept, t0),
            Err(ShareError::NotHeld { offset: 1 })
        );
        share.acknowledge("a", 0, 0, AckKind::Accept, t0).unwrap();
        assert_eq!(
            share.acknowledge("a", 0, 0, AckKind::Accept, t0),
            Err(ShareError::NotHeld { offset: 0 })
        );
        assert_eq!(
            share.acknowledge("a", i64::MAX, i64::MAX, AckKind::Accept, t0),
            Err(ShareError::NotHeld { offset: i64::MAX })
        );
        assert_eq!(
            share.acknowledge("a", i64::MIN, 2, AckKind::Accept, t0),
            Err(ShareError::NotHeld { offset: i64::MIN })
        );
    }

    #[test]
    fn an_inverted_range_is_invalid() {
        let mut share = partition();
        let t0 = Instant::now();
        share.acquire("a", 3, 0, 3, t0);
        let error = share
            .acknowledge("a", 2, 1, AckKind::Accept, t0)
            .unwrap_err();
        assert_eq!(error, ShareError::InvalidRange { first: 2, last: 1 });
        assert_eq!(error.to_string(), "invalid offset range 2..=1");
        let error = ShareError::NotHeld { offset: 7 };
        assert_eq!(error.to_string(), "record 7 is not held by this member");
    }

    #[test]
    fn acquisition_stays_within_max_in_flight_of_the_start() {
        let mut share = SharePartition::new(config(5, 4), 0);
        let t0 = Instant::now();
        assert_eq!(runs(&share.acquire("a", 10, 0, 100, t0)), [(0, 3, 1)]);
        share.acknowledge("a", 1, 3, AckKind::Accept, t0).unwrap();
        assert!(share.acquire("b", 10, 0, 100, t0).records.is_empty());
        share.acknowledge("a", 0, 0, AckKind::Accept, t0).unwrap();
        assert_eq!(runs(&share.acquire("b", 10, 0, 100, t0)), [(4, 7, 1)]);
        assert!(share.records.len() <= 4);
    }

    #[test]
    fn records_deleted_by_retention_are_dropped() {
        let mut share = partition();
        let t0 = Instant::now();
        share.acquire("a", 2, 0, 10, t0);
        assert_eq!(runs(&share.acquire("b", 3, 5, 10, t0)), [(5, 7, 1)]);
        assert_eq!(share.start(), 5);
        assert_eq!(
            share.acknowledge("a", 0, 0, AckKind::Accept, t0),
            Err(ShareError::NotHeld { offset: 0 })
        );
        assert_eq!(runs(&share.acquire("b", 3, 50, 60, t0)), [(50, 52, 1)]);
        assert_eq!(share.start(), 50);
    }

    #[test]
    fn a_leaving_member_frees_only_its_own_records() {
        let mut share = partition();
        let t0 = Instant::now();
        share.acquire("a", 2, 0, 10, t0);
        share.acquire("b", 2, 0, 10, t0);
        assert_eq!(share.release_member("a"), 2);
        assert_eq!(share.release_member("a"), 0);
        assert_eq!(
            runs(&share.acquire("c", 10, 0, 6, t0)),
            [(0, 1, 2), (4, 5, 1)]
        );
        assert_eq!(share.acknowledge("b", 2, 3, AckKind::Accept, t0), Ok(()));
    }

    #[test]
    fn stats_count_records_by_state() {
        let mut share = partition();
        let t0 = Instant::now();
        share.acquire("a", 6, 0, 10, t0);
        share.acknowledge("a", 1, 1, AckKind::Accept, t0).unwrap();
        share.acknowledge("a", 2, 2, AckKind::Release, t0).unwrap();
        share
            .acknowledge("a", 3, 3, AckKind::Nack { delay: ms(10) }, t0)
            .unwrap();
        share.acquire("b", 1, 0, 10, t0);
        share.acknowledge("a", 4, 4, AckKind::Release, t0).unwrap();
        let stats = share.stats();
        let expected = ShareStats {
            start: 0,
            next_offset: 6,
            acquired: 3,
            available_again: 1,
            delayed: 1,
            done_in_window: 1,
            highest_delivery: 2,
        };
        assert_eq!(stats, expected);
    }

    #[test]
    fn restore_keeps_done_records_done_and_makes_the_rest_available() {
        let mut share = partition();
        let t0 = Instant::now();
        share.acquire("a", 10, 0, 10, t0);
        for (first, last) in [(0, 1), (4, 4), (6, 7)] {
            share
                .acknowledge("a", first, last, AckKind::Accept, t0)
                .unwrap();
        }
        share
            .acknowledge("a", 5, 5, AckKind::Nack { delay: ms(500) }, t0)
            .unwrap();
        share.acknowledge("a", 8, 8, AckKind::Release, t0).unwrap();
        let state = share.durable_state();
        assert_eq!(
            state,
            DurableState {
                start: 2,
                done: vec![(4, 4), (6, 7)]
            }
        );

        let mut restored = SharePartition::restore(config(5, 1000), &state);
        assert_eq!(restored.start(), 2);
        assert_eq!(restored.durable_state(), state);
        let acquisition = restored.acquire("b", 100, 0, 12, t0);
        assert_eq!(runs(&acquisition), [(2, 3, 1), (5, 5, 1), (8, 11, 1)]);
        restored
            .acknowledge("b", 2, 3, AckKind::Accept, t0)
            .unwrap();
        restored
            .acknowledge("b", 5, 5, AckKind::Accept, t0)
            .unwrap();
        assert_eq!(restored.start(), 8);
    }

    #[test]
    fn restore_bounds_the_window_and_reads_any_state() {
        let state = DurableState {
            start: 10,
            done: vec![(50, 60), (11, 12), (5, 10), (15, 14), (20, 21), (21, 22)],
        };
        let mut share = SharePartition::restore(config(5, 20), &state);
        assert_eq!(share.start(), 13);
        assert_eq!(
            share.durable_state(),
            DurableState {
                start: 13,
                done: vec![(20, 22)]
            }
        );
        let acquisition = share.acquire("a", 100, 0, 100, Instant::now());
        assert_eq!(runs(&acquisition), [(13, 19, 1), (23, 32, 1)]);
    }

    #[test]
    fn encoding_is_compact_and_round_trips() {
        let state = DurableState {
            start: 300,
            done: vec![(302, 302), (310, 319)],
        };
        let bytes = SharePartition::encode_state(&state);
        assert_eq!(bytes, [STATE_VERSION, 0xd8, 0x04, 2, 1, 0, 6, 9]);
        assert_eq!(SharePartition::decode_state(&bytes), Ok(state));
    }

    #[test]
    fn decode_rejects_malformed_bytes() {
        let decode = SharePartition::decode_state;
        assert_eq!(decode(&[]), Err(StateDecodeError::Truncated));
        assert_eq!(decode(&[9, 0, 0]), Err(StateDecodeError::UnknownVersion(9)));
        assert_eq!(
            decode(&[STATE_VERSION, 0, 0, 0]),
            Err(StateDecodeError::TrailingBytes(1))
        );
        assert_eq!(
            decode(&[STATE_VERSION, 0, 5, 1]),
            Err(StateDecodeError::Truncated)
        );
        let overlong = [
            STATE_VERSION,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x02,
            0,
        ];
        assert_eq!(decode(&overlong), Err(StateDecodeError::BadVarint));
        let mut past_max = vec![STATE_VERSION];
        put_varint(&mut past_max, zigzag(i64::MAX - 1));
        past_max.extend([1, 0, 5]);
        assert_eq!(decode(&past_max), Err(StateDecodeError::OffsetOverflow));
    }

    fn canonical_state() -> impl Strategy<Value = DurableState> {
        (0i64..1 << 40, vec((0i64..1000, 0i64..1000), 0..50)).prop_map(|(start, gaps)| {
            let mut lowest = start + 1;
            let done = gaps
                .into_iter()
                .map(|(gap, length)| {
                    let first = lowest + gap;
                    lowest = first + length + 2;
                    (first, first + length)
                })
                .collect();
            DurableState { start, done }
        })
    }

    proptest! {
        #[test]
        fn encoded_state_round_trips_and_every_prefix_fails(state in canonical_state()) {
            let bytes = SharePartition::encode_state(&state);
            prop_assert_eq!(SharePartition::decode_state(&bytes), Ok(state));
            for length in 0..bytes.len() {
                prop_assert!(SharePartition::decode_state(&bytes[..length]).is_err());
            }
        }

        #[test]
        fn any_state_encodes_as_its_canonical_form(
            start in any::<i64>(),
            done in vec((any::<i64>(), any::<i64>()), 0..20),
        ) {
            let state = DurableState { start, done };
            let bytes = SharePartition::encode_state(&state);
            prop_assert_eq!(SharePartition::decode_state(&bytes), Ok(state.canonical()));
            SharePartition::restore(config(5, 64), &state);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in vec(any::<u8>(), 0..64)) {
            let _ = SharePartition::decode_state(&bytes);
            let mut versioned = bytes;
            versioned.insert(0, STATE_VERSION);
            let _ = SharePartition::decode_state(&versioned);
        }
    }

    // The simulation: members acquire and acknowledge at random while the log grows and the
    // broker restarts, checked against a model of who holds what; then everyone accepts
    // everything, and every offset must have been finished exactly once.

    const MEMBERS: usize = 8;

    #[derive(Debug, Clone)]
    enum Step {
        Produce(i64),
        Acquire {
            member: usize,
            max: usize,
        },
        Ack {
            member: usize,
            pick: usize,
            kind: AckKind,
            first_only: bool,
        },
        Tick(u64),
        Expire,
        Leave(usize),
        Restart,
    }

    fn ack_kind() -> impl Strategy<Value = AckKind> {
        prop_oneof![
            4 => Just(AckKind::Accept),
            2 => Just(AckKind::Release),
            1 => Just(AckKind::Reject),
            2 => (0u64..200).prop_map(|delay| AckKind::Nack { delay: ms(delay) }),
        ]
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            2 => (1i64..20).prop_map(Step::Produce),
            4 => (0..MEMBERS, 1usize..8).prop_map(|(member, max)| Step::Acquire { member, max }),
            6 => (0..MEMBERS, any::<usize>(), ack_kind(), any::<bool>()).prop_map(
                |(member, pick, kind, first_only)| Step::Ack { member, pick, kind, first_only }
            ),
            2 => (1u64..150).prop_map(Step::Tick),
            1 => Just(Step::Expire),
            1 => (0..MEMBERS).prop_map(Step::Leave),
            1 => Just(Step::Restart),
        ]
    }

    fn name(member: usize) -> String {
        format!("member-{member}")
    }

    /// What the share-partition should hold, kept independently of it.
    struct Model {
        now: Instant,
        log_end: i64,
        max_deliveries: u16,
        /// Locks as the acquisitions granted them: offset -> (member, until). An entry
        /// stays until the partition itself expires, acknowledges or releases it.
        holders: HashMap<i64, (usize, Instant)>,
        delayed: HashMap<i64, Instant>,
        deliveries: HashMap<i64, u16>,
        accepted: HashSet<i64>,
        dead: HashSet<i64>,
        /// The lowest offset not finished.
        start: i64,
        /// Runs handed to each member and not acknowledged yet.
        given: Vec<Vec<(i64, i64)>>,
    }

    impl Model {
        fn new(max_deliveries: u16) -> Model {
            Model {
                now: Instant::now(),
                log_end: 0,
                max_deliveries,
                holders: HashMap::new(),
                delayed: HashMap::new(),
                deliveries: HashMap::new(),
                accepted: HashSet::new(),
                dead: HashSet::new(),
                start: 0,
                given: vec![Vec::new(); MEMBERS],
            }
        }

        fn holds(&self, member: usize, offset: i64) -> bool {
            matches!(self.holders.get(&offset), Some(&(holder, until)) if holder == member && until > self.now)
        }

        fn is_free(&self, offset: i64) -> bool {
            !self.accepted.contains(&offset)
                && !self.dead.contains(&offset)
                && self
                    .holders
                    .get(&offset)
                    .is_none_or(|&(_, until)| until <= self.now)
                && self
                    .delayed
                    .get(&offset)
                    .is_none_or(|&until| until <= self.now)
        }

        fn expire(&mut self) -> usize {
            let now = self.now;
            let before = self.holders.len();
            self.holders.retain(|_, &mut (_, until)| until > now);
            before - self.holders.len()
        }

        fn finish(&mut self, offset: i64, dead: bool) {
            assert!(
                !self.accepted.contains(&offset) && !self.dead.contains(&offset),
                "offset {offset} finished twice"
            );
            self.holders.remove(&offset);
            if dead {
                self.dead.insert(offset);
            } else {
                self.accepted.insert(offset);
            }
            while self.accepted.contains(&self.start) || self.dead.contains(&self.start) {
                self.start += 1;
            }
        }

        fn check_acquisition(&mut self, member: usize, acquisition: &Acquisition) {
            for dead in &acquisition.dead_letters {
                assert!(
                    self.is_free(dead.offset),
                    "offset {} dead-lettered while unavailable",
                    dead.offset
                );
                assert_eq!(dead.deliveries, self.max_deliveries);
                assert_eq!(
                    self.deliveries.get(&dead.offset).copied().unwrap_or(0),
                    self.max_deliveries
                );
                self.finish(dead.offset, true);
            }
            for run in &acquisition.records {
                for offset in run.first..=run.last {
                    assert!(offset < self.log_end);
                    assert!(
                        self.is_free(offset),
                        "offset {offset} handed out while unavailable"
                    );
                    let count = self.deliveries.entry(offset).or_default();
                    *count += 1;
                    assert_eq!(*count, run.delivery);
                    self.holders.insert(offset, (member, self.now + LOCK));
                    self.delayed.remove(&offset);
                }
                self.given[member].push((run.first, run.last));
            }
        }

        /// Takes a run (or its first offset) from what `member` was given.
        fn pick_run(&mut self, member: usize, pick: usize, first_only: bool) -> Option<(i64, i64)> {
            let given = &mut self.given[member];
            if given.is_empty() {
                return None;
            }
            let index = pick % given.len();
            let (first, last) = given[index];
            if first_only && first < last {
                given[index].0 = first + 1;
                return Some((first, first));
            }
            given.remove(index);
            Some((first, last))
        }
    }

    fn acknowledge_step(
        share: &mut SharePartition,
        model: &mut Model,
        member: usize,
        (first, last): (i64, i64),
        kind: AckKind,
    ) {
        let result = share.acknowledge(&name(member), first, last, kind, model.now);
        match (first..=last).find(|&offset| !model.holds(member, offset)) {
            Some(offset) => assert_eq!(result, Err(ShareError::NotHeld { offset })),
            None => assert_eq!(result, Ok(())),
        }
        if result.is_err() {
            return;
        }
        for offset in first..=last {
            model.holders.remove(&offset);
            match kind {
                AckKind::Accept => model.finish(offset, false),
                AckKind::Reject => model.finish(offset, true),
                AckKind::Release => {}
                AckKind::Nack { delay } => {
                    model.delayed.insert(offset, model.now + delay);
                }
            }
        }
        let rejected: Vec<i64> = share
            .take_dead_letters()
            .iter()
            .map(|dead| dead.offset)
            .collect();
        let expected: Vec<i64> = if kind == AckKind::Reject {
            (first..=last).collect()
        } else {
            Vec::new()
        };
        assert_eq!(rejected, expected);
    }

    fn run_step(share: &mut SharePartition, model: &mut Model, config: ShareConfig, step: Step) {
        match step {
            Step::Produce(count) => model.log_end += count,
            Step::Acquire { member, max } => {
                model.expire();
                let acquisition = share.acquire(&name(member), max, 0, model.log_end, model.now);
                model.check_acquisition(member, &acquisition);
            }
            Step::Ack {
                member,
                pick,
                kind,
                first_only,
            } => {
                if let Some(range) = model.pick_run(member, pick, first_only) {
                    acknowledge_step(share, model, member, range, kind);
                }
            }
            Step::Tick(millis) => model.now += ms(millis),
            Step::Expire => assert_eq!(share.expire(model.now), model.expire()),
            Step::Leave(member) => {
                let before = model.holders.len();
                model.holders.retain(|_, &mut (holder, _)| holder != member);
                assert_eq!(
                    share.release_member(&name(member)),
                    before - model.holders.len()
                );
            }
            Step::Restart => {
                let state = share.durable_state();
                let decoded = SharePartition::decode_state(&SharePartition::encode_state(&state));
                assert_eq!(decoded.as_ref(), Ok(&state));
                *share = SharePartition::restore(config, &state);
                model.holders.clear();
                model.delayed.clear();
                model.deliveries.clear();
            }
        }
    }

    /// Every member takes and accepts whatever it can until nothing is left.
    fn drain(share: &mut SharePartition, model: &mut Model) {
        model.now += Duration::from_secs(3600);
        loop {
            let mut progress = false;
            for member in 0..MEMBERS {
                model.expire();
                let acquisition = share.acquire(&name(member), 64, 0, model.log_end, model.now);
                model.check_acquisition(member, &acquisition);
                progress |= !acquisition.records.is_empty() || !acquisition.dead_letters.is_empty();
                for run in &acquisition.records {
                    acknowledge_step(share, model, member, (run.first, run.last), AckKind::Accept);
                }
            }
            if !progress {
                return;
            }
        }
    }

    proptest! {
        #[test]
        fn members_finish_every_record_exactly_once(
            max_deliveries in 2u16..=6,
            max_in_flight in 4usize..=64,
            steps in vec(step(), 1..200),
        ) {
            let config = config(max_deliveries, max_in_flight);
            let mut share = SharePartition::new(config, 0);
            let mut model = Model::new(max_deliveries);
            for step in steps {
                run_step(&mut share, &mut model, config, step);
                let stats = share.stats();
                prop_assert_eq!(stats.start, model.start);
                prop_assert!(stats.next_offset - stats.start <= max_in_flight as i64);
            }
            drain(&mut share, &mut model);
            for offset in 0..model.log_end {
                prop_assert!(model.accepted.contains(&offset) != model.dead.contains(&offset));
            }
            prop_assert_eq!(share.start(), model.log_end);
            prop_assert_eq!(share.stats().acquired, 0);
        }

        #[test]
        fn members_accept_every_record_exactly_once_when_nothing_is_dead_lettered(
            steps in vec(step(), 1..200),
        ) {
            let config = config(u16::MAX, 32);
            let mut share = SharePartition::new(config, 0);
            let mut model = Model::new(u16::MAX);
            for step in steps {
                let step = match step {
                    Step::Ack { kind: AckKind::Reject, member, pick, first_only } => {
                        Step::Ack { kind: AckKind::Release, member, pick, first_only }
                    }
                    step => step,
                };
                run_step(&mut share, &mut model, config, step);
            }
            drain(&mut share, &mut model);
            prop_assert!(model.dead.is_empty());
            prop_assert_eq!(model.accepted.len() as i64, model.log_end);
            prop_assert_eq!(share.start(), model.log_end);
        }
    }
}
