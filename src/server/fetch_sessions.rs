//! Kafka fetch sessions (KIP-227): the sessions one shard's Kafka connections opened.
//!
//! A session remembers, per partition, where the client fetches from (offset and byte
//! limit, as the client last sent them: the broker never moves them itself) and what the
//! client was last told (high watermark, log start offset). An incremental fetch then
//! names only the partitions whose position changed and the ones to forget, and its
//! response names only the partitions with something new: records, a moved high watermark
//! or log start offset, or an error (always included; the cached high watermark becomes
//! -1, so the partition is sent again once the error is gone).
//!
//! The cache is shard-local: a connection stays on the shard that accepted it, so a
//! session lives where its client's connection is. A session id names the shard that made
//! it (`id % shard_count`), so ids are unique across the broker; a client that comes back
//! on another shard (a new connection) with its old id is told the id is unknown and starts
//! a new session with a full fetch, while the old one waits for eviction where it is.
//!
//! Bounds ([`SessionLimits`]): a number of sessions and a number of cached partitions per
//! shard. Room for a new or growing session is made by evicting the least recently used
//! session, but only one unused for at least `evictable_after`: an active client is never
//! evicted by a newcomer (which then fetches without a session, as Kafka's brokers do),
//! so a shard with more active clients than slots does not thrash. A session is in use
//! from a request's start to its long-poll deadline, so a parked fetch does not count as
//! idle. Nothing expires a session while there is room.
//!
//! Pure data: the caller passes the time, so every rule is unit-tested without a runtime.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use crate::shard::ShardId;

/// A full fetch that asks for a session (Kafka's INITIAL_EPOCH).
pub(crate) const INITIAL_EPOCH: i32 = 0;
/// A full fetch that must not create a session (Kafka's FINAL_EPOCH; pre-session requests
/// carry it too).
pub(crate) const FINAL_EPOCH: i32 = -1;

/// How much one shard keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionLimits {
    /// Sessions at once (a Kafka broker's `max.incremental.fetch.session.cache.slots`
    /// defaults to 1000 for the whole broker; this is per shard).
    pub(crate) sessions: usize,
    /// Partitions over all sessions: bounds the memory one client can make a shard hold by
    /// adding partitions to its session.
    pub(crate) partitions: usize,
    /// Unused for at least this long, a session may be evicted to make room.
    pub(crate) evictable_after: Duration,
}

impl SessionLimits {
    /// What every shard uses.
    pub(crate) const DEFAULT: SessionLimits = SessionLimits {
        sessions: 1000,
        partitions: 100_000,
        evictable_after: Duration::from_secs(30),
    };
}

/// A partition named by its topic's name (Fetch up to v12 names topics, not ids).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TopicPartition {
    pub(crate) topic: String,
    pub(crate) partition: i32,
}

/// Where a client fetches a partition from, as its request said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FetchPosition {
    pub(crate) offset: i64,
    pub(crate) max_bytes: u32,
}

/// What one read found for a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartitionState {
    /// Kafka error code (0: none).
    pub(crate) error: i16,
    pub(crate) high_watermark: i64,
    pub(crate) log_start_offset: i64,
    /// Records were returned.
    pub(crate) has_records: bool,
}

/// Why an incremental fetch cannot go on in its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionError {
    /// No such session here (never made, closed, evicted, or made by another shard).
    NotFound,
    /// The request's epoch is not the one the session expects next.
    InvalidEpoch { expected: i32 },
}

/// An incremental fetch that passed its checks.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Begun {
    /// Read these partitions (the whole session, in its order), then hand the outcome to
    /// [`FetchSessions::finish`] with `epoch`.
    Fetch {
        epoch: i32,
        partitions: Vec<(TopicPartition, FetchPosition)>,
    },
    /// The session was closed: the request left it with no partition, or it would have
    /// grown past the shard's partition limit. The request is answered without a session
    /// (session id 0, the partitions it names), so the client starts over with a full fetch.
    Closed,
}

struct CachedPartition {
    position: FetchPosition,
    high_watermark: i64,
    log_start_offset: i64,
    /// Its key in the session's order.
    order: u64,
}

struct Session {
    /// The epoch the next incremental request must carry.
    next_epoch: i32,
    /// When it was last used, or the deadline of the request using it now.
    last_used: Instant,
    partitions: HashMap<TopicPartition, CachedPartition>,
    /// Fetch order: partitions that were in a response move to the end, so that when a
    /// response fills up, the next one starts with those left out.
    order: BTreeMap<u64, TopicPartition>,
    next_order: u64,
}

impl Session {
    fn new(now: Instant) -> Self {
        Session {
            next_epoch: next_epoch(INITIAL_EPOCH),
            last_used: now,
            partitions: HashMap::new(),
            order: BTreeMap::new(),
            next_order: 0,
        }
    }

    /// Adds a partition at the end of the order, or updates its position where it is.
    fn upsert(&mut self, key: TopicPartition, position: FetchPosition) {
        if let Some(cached) = self.partitions.get_mut(&key) {
            cached.position = position;
            return;
        }
        let order = self.take_order();
        self.order.insert(order, key.clone());
        self.partitions.insert(
            key,
            CachedPartition {
                position,
                high_watermark: -1,
                log_start_offset: -1,
                order,
            },
        );
    }

    fn remove(&mut self, key: &TopicPartition) {
        if let Some(cached) = self.partitions.remove(key) {
            self.order.remove(&cached.order);
        }
    }

    /// Moves a partition to the end of the order.
    fn rotate(&mut self, key: &TopicPartition) {
        let order = self.take_order();
        if let Some(cached) = self.partitions.get_mut(key) {
            if let Some(k) = self.order.remove(&cached.order) {
                self.order.insert(order, k);
            }
            cached.order = order;
        }
    }

    fn take_order(&mut self) -> u64 {
        let order = self.next_order;
        self.next_order += 1;
        order
    }

    /// Records what a response told the client; true if the partition belongs in it.
    fn observe(&mut self, key: &TopicPartition, state: &PartitionState) -> bool {
        let Some(cached) = self.partitions.get_mut(key) else {
            return true;
        };
        let mut changed = state.has_records;
        if cached.high_watermark != state.high_watermark {
            cached.high_watermark = state.high_watermark;
            changed = true;
        }
        if cached.log_start_offset != state.log_start_offset {
            cached.log_start_offset = state.log_start_offset;
            changed = true;
        }
        if state.error != 0 {
            cached.high_watermark = -1;
            changed = true;
        }
        changed
    }
}

/// The epoch after `epoch`: 1 follows the largest (0 means "new session").
fn next_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX {
        1
    } else {
        epoch + 1
    }
}

/// The shard that made session `id` in a broker of `shard_count` shards (`None`: 0 or
/// negative, which no shard makes).
pub(crate) fn creator(id: i32, shard_count: u16) -> Option<ShardId> {
    (id > 0).then(|| (id % i32::from(shard_count.max(1))) as ShardId)
}

/// One shard's fetch sessions.
pub(crate) struct FetchSessions {
    shard: ShardId,
    shard_count: u16,
    limits: SessionLimits,
    sessions: HashMap<i32, Session>,
    /// Partitions over all sessions.
    cached_partitions: usize,
    /// State of the id generator (splitmix64).
    random: u64,
}

impl FetchSessions {
    pub(crate) fn new(shard: ShardId, shard_count: u16, limits: SessionLimits) -> Self {
        FetchSessions {
            shard,
            shard_count: shard_count.max(1),
            limits,
            sessions: HashMap::new(),
            cached_partitions: 0,
            random: RandomState::new().hash_one(shard),
        }
    }

    /// Sessions held now.
    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Partitions held now, over all sessions.
    pub(crate) fn cached_partitions(&self) -> usize {
        self.cached_partitions
    }

    /// Closes session `id` (a full fetch naming it); false if there was none here.
    pub(crate) fn close(&mut self, id: i32) -> bool {
        self.remove(id)
    }

    /// Makes a session for the partitions of a full fetch, with what its response told the
    /// client (`None`: not read, the response was full). Returns the new id, or `None`
    /// when there is no room (or nothing to keep): the response then says session 0.
    pub(crate) fn create(
        &mut self,
        now: Instant,
        partitions: impl IntoIterator<Item = (TopicPartition, FetchPosition, Option<PartitionState>)>,
    ) -> Option<i32> {
        let mut session = Session::new(now);
        let mut states = Vec::new();
        for (key, position, state) in partitions {
            session.upsert(key.clone(), position);
            states.push((key, state));
        }
        for (key, state) in &states {
            if let Some(state) = state {
                session.observe(key, state);
            }
        }
        let size = session.partitions.len();
        if size == 0 || !self.make_room(now, 1, size, None) {
            return None;
        }
        let id = self.new_id();
        self.cached_partitions += size;
        self.sessions.insert(id, session);
        Some(id)
    }

    /// Starts an incremental fetch: checks the session and the epoch, applies the request's
    /// partitions (added or moved) and the ones it forgets, and moves the epoch on. The
    /// session counts as used until `busy_until` (the request's long-poll deadline).
    pub(crate) fn begin(
        &mut self,
        id: i32,
        epoch: i32,
        now: Instant,
        busy_until: Instant,
        updates: Vec<(TopicPartition, FetchPosition)>,
        forgotten: Vec<TopicPartition>,
    ) -> Result<Begun, SessionError> {
        let session = self.sessions.get(&id).ok_or(SessionError::NotFound)?;
        if session.next_epoch != epoch {
            return Err(SessionError::InvalidEpoch {
                expected: session.next_epoch,
            });
        }
        let added = updates
            .iter()
            .filter(|(key, _)| !session.partitions.contains_key(key))
            .map(|(key, _)| key)
            .collect::<HashSet<_>>()
            .len();
        let before = session.partitions.len();
        if !self.make_room(now, 0, added, Some(id)) {
            tracing::debug!(
                session = id,
                added,
                "fetch session would outgrow the shard's limit"
            );
            self.remove(id);
            return Ok(Begun::Closed);
        }
        // (make_room never evicts the session it keeps.)
        let Some(session) = self.sessions.get_mut(&id) else {
            return Err(SessionError::NotFound);
        };
        for (key, position) in updates {
            session.upsert(key, position);
        }
        for key in &forgotten {
            session.remove(key);
        }
        let after = session.partitions.len();
        if after == 0 {
            self.cached_partitions -= before;
            self.sessions.remove(&id);
            return Ok(Begun::Closed);
        }
        session.next_epoch = next_epoch(session.next_epoch);
        session.last_used = busy_until.max(now);
        let begun = Begun::Fetch {
            epoch: session.next_epoch,
            partitions: session
                .order
                .values()
                .map(|key| (key.clone(), session.partitions[key].position))
                .collect(),
        };
        self.cached_partitions = self.cached_partitions + after - before;
        Ok(begun)
    }

    /// Ends an incremental fetch begun with `epoch`: records what was read (in the order
    /// [`FetchSessions::begin`] gave; `None`: not read) and returns, per partition, whether
    /// it belongs in the response. A session closed or moved on by another request in the
    /// meantime is an error, as at the start.
    pub(crate) fn finish<'a>(
        &mut self,
        id: i32,
        epoch: i32,
        now: Instant,
        read: impl IntoIterator<Item = (&'a TopicPartition, Option<PartitionState>)>,
    ) -> Result<Vec<bool>, SessionError> {
        let session = self.sessions.get_mut(&id).ok_or(SessionError::NotFound)?;
        if session.next_epoch != epoch {
            return Err(SessionError::InvalidEpoch {
                expected: session.next_epoch,
            });
        }
        session.last_used = now;
        Ok(read
            .into_iter()
            .map(|(key, state)| {
                let include = state.is_some_and(|s| session.observe(key, &s));
                if include {
                    session.rotate(key);
                }
                include
            })
            .collect())
    }

    fn remove(&mut self, id: i32) -> bool {
        match self.sessions.remove(&id) {
            Some(session) => {
                self.cached_partitions -= session.partitions.len();
                true
            }
            None => false,
        }
    }

    /// Evicts least recently used sessions (not `keep`) until `sessions` more sessions and
    /// `partitions` more partitions fit; false if that would take a session used within
    /// `evictable_after`.
    fn make_room(
        &mut self,
        now: Instant,
        sessions: usize,
        partitions: usize,
        keep: Option<i32>,
    ) -> bool {
        if partitions > self.limits.partitions {
            return false;
        }
        while self.sessions.len() + sessions > self.limits.sessions
            || self.cached_partitions + partitions > self.limits.partitions
        {
            let oldest = self
                .sessions
                .iter()
                .filter(|(id, _)| Some(**id) != keep)
                .min_by_key(|(id, s)| (s.last_used, **id))
                .map(|(id, s)| (*id, s.last_used));
            match oldest {
                Some((id, last_used))
                    if now.saturating_duration_since(last_used) >= self.limits.evictable_after =>
                {
                    tracing::debug!(session = id, "fetch session evicted");
                    self.remove(id);
                }
                _ => return false,
            }
        }
        true
    }

    /// A positive id not in use whose remainder by the shard count is this shard.
    fn new_id(&mut self) -> i32 {
        let count = i64::from(self.shard_count);
        let shard = i64::from(self.shard);
        // Multipliers k ≥ 1 keep the id above 0 and at most i32::MAX.
        let max_k = (i64::from(i32::MAX) - shard) / count;
        loop {
            self.random = self.random.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.random;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let k = (z % max_k as u64) as i64 + 1;
            let id = (k * count + shard) as i32;
            if !self.sessions.contains_key(&id) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: topic.to_string(),
            partition,
        }
    }

    fn at(offset: i64) -> FetchPosition {
        FetchPosition {
            offset,
            max_bytes: 1 << 20,
        }
    }

    fn state(hwm: i64, records: bool) -> Option<PartitionState> {
        Some(PartitionState {
            error: 0,
            high_watermark: hwm,
            log_start_offset: 0,
            has_records: records,
        })
    }

    fn limits(sessions: usize, partitions: usize) -> SessionLimits {
        SessionLimits {
            sessions,
            partitions,
            evictable_after: Duration::from_secs(30),
        }
    }

    fn fetch_list(begun: &Begun) -> Vec<(String, i32, i64)> {
        match begun {
            Begun::Fetch { partitions, .. } => partitions
                .iter()
                .map(|(k, p)| (k.topic.clone(), k.partition, p.offset))
                .collect(),
            Begun::Closed => panic!("closed"),
        }
    }

    fn epoch_of(begun: &Begun) -> i32 {
        match begun {
            Begun::Fetch { epoch, .. } => *epoch,
            Begun::Closed => panic!("closed"),
        }
    }

    #[test]
    fn ids_name_their_shard_and_are_positive() {
        for (shard, count) in [(0u16, 1u16), (0, 3), (2, 3), (7, 8)] {
            let mut cache = FetchSessions::new(shard, count, SessionLimits::DEFAULT);
            let now = Instant::now();
            for i in 0..200 {
                let id = cache
                    .create(now, [(tp("t", i), at(0), state(0, false))])
                    .unwrap();
                assert!(id > 0);
                assert_eq!(creator(id, count), Some(shard));
            }
            assert_eq!(cache.len(), 200, "ids are distinct");
        }
        assert_eq!(creator(0, 4), None);
        assert_eq!(creator(-5, 4), None);
    }

    #[test]
    fn incremental_fetches_keep_positions_and_report_only_changes() {
        let mut cache = FetchSessions::new(0, 1, SessionLimits::DEFAULT);
        let now = Instant::now();
        let id = cache
            .create(
                now,
                [
                    (tp("a", 0), at(5), state(5, false)),
                    (tp("a", 1), at(0), state(3, true)),
                    (tp("b", 0), at(0), None),
                ],
            )
            .unwrap();
        assert_eq!(cache.cached_partitions(), 3);
        // The wrong epoch is refused and changes nothing; the first incremental is 1.
        assert_eq!(
            cache.begin(id, 2, now, now, vec![], vec![]),
            Err(SessionError::InvalidEpoch { expected: 1 })
        );
        assert_eq!(
            cache.begin(id + 1, 1, now, now, vec![], vec![]),
            Err(SessionError::NotFound)
        );
        // The client moved a-1 to 3 (it got records up to there).
        let begun = cache
            .begin(id, 1, now, now, vec![(tp("a", 1), at(3))], vec![])
            .unwrap();
        assert_eq!(
            fetch_list(&begun),
            vec![("a".into(), 0, 5), ("a".into(), 1, 3), ("b".into(), 0, 0)]
        );
        let keys: Vec<TopicPartition> = vec![tp("a", 0), tp("a", 1), tp("b", 0)];
        // Nothing new on a-0 and a-1; b-0 was never read before, so its watermark is news.
        let include = cache
            .finish(
                id,
                epoch_of(&begun),
                now,
                keys.iter()
                    .zip([state(5, false), state(3, false), state(0, false)]),
            )
            .unwrap();
        assert_eq!(include, vec![false, false, true]);
        // Epoch 2, no partitions named: a-1 got records, a-0's watermark moved, b-0 was
        // left out of a full response (not read): only a-1 and a-0 are in it.
        let begun = cache.begin(id, 2, now, now, vec![], vec![]).unwrap();
        assert_eq!(
            fetch_list(&begun),
            vec![("a".into(), 0, 5), ("a".into(), 1, 3), ("b".into(), 0, 0)],
            "positions stay what the client sent"
        );
        let include = cache
            .finish(
                id,
                epoch_of(&begun),
                now,
                keys.iter().zip([state(6, false), state(4, true), None]),
            )
            .unwrap();
        assert_eq!(include, vec![true, true, false]);
        // Those two moved to the end of the order, so b-0 is read first next time.
        let begun = cache.begin(id, 3, now, now, vec![], vec![]).unwrap();
        assert_eq!(
            fetch_list(&begun),
            vec![("b".into(), 0, 0), ("a".into(), 0, 5), ("a".into(), 1, 3)]
        );
    }

    #[test]
    fn errors_are_always_reported_and_their_recovery_too() {
        let mut cache = FetchSessions::new(0, 1, SessionLimits::DEFAULT);
        let now = Instant::now();
        let id = cache
            .create(now, [(tp("a", 0), at(0), state(2, false))])
            .unwrap();
        let key = [tp("a", 0)];
        let error = Some(PartitionState {
            error: 3,
            high_watermark: -1,
            log_start_offset: -1,
            has_records: false,
        });
        for epoch in 1..=2 {
            let begun = cache.begin(id, epoch, now, now, vec![], vec![]).unwrap();
            let include = cache
                .finish(id, epoch_of(&begun), now, key.iter().zip([error]))
                .unwrap();
            assert_eq!(include, vec![true], "an error is reported every time");
        }
        // Back to the same watermark as before the error: reported again.
        let begun = cache.begin(id, 3, now, now, vec![], vec![]).unwrap();
        let include = cache
            .finish(id, epoch_of(&begun), now, key.iter().zip([state(2, false)]))
            .unwrap();
        assert_eq!(include, vec![true]);
        let begun = cache.begin(id, 4, now, now, vec![], vec![]).unwrap();
        let include = cache
            .finish(id, epoch_of(&begun), now, key.iter().zip([state(2, false)]))
            .unwrap();
        assert_eq!(include, vec![false]);
    }

    #[test]
    fn forgetting_every_partition_closes_the_session() {
        let mut cache = FetchSessions::new(0, 1, SessionLimits::DEFAULT);
        let now = Instant::now();
        let id = cache
            .create(
                now,
                [
                    (tp("a", 0), at(0), state(0, false)),
                    (tp("a", 1), at(0), state(0, false)),
                ],
            )
            .unwrap();
        let begun = cache
            .begin(id, 1, now, now, vec![(tp("c", 0), at(9))], vec![tp("a", 0)])
            .unwrap();
        assert_eq!(
            fetch_list(&begun),
            vec![("a".into(), 1, 0), ("c".into(), 0, 9)]
        );
        assert_eq!(cache.cached_partitions(), 2);
        let begun = cache
            .begin(id, 2, now, now, vec![], vec![tp("a", 1), tp("c", 0)])
            .unwrap();
        assert_eq!(begun, Begun::Closed);
        assert_eq!((cache.len(), cache.cached_partitions()), (0, 0));
        assert_eq!(
            cache.begin(id, 3, now, now, vec![], vec![]),
            Err(SessionError::NotFound)
        );
    }

    #[test]
    fn a_request_that_moved_the_session_on_fails_the_one_in_flight() {
        let mut cache = FetchSessions::new(0, 1, SessionLimits::DEFAULT);
        let now = Instant::now();
        let id = cache
            .create(now, [(tp("a", 0), at(0), state(0, false))])
            .unwrap();
        let first = cache.begin(id, 1, now, now, vec![], vec![]).unwrap();
        let second = cache.begin(id, 2, now, now, vec![], vec![]).unwrap();
        let key = [tp("a", 0)];
        assert_eq!(
            cache.finish(id, epoch_of(&first), now, key.iter().zip([state(1, true)])),
            Err(SessionError::InvalidEpoch { expected: 3 })
        );
        assert!(cache
            .finish(id, epoch_of(&second), now, key.iter().zip([state(1, true)]))
            .is_ok());
        assert!(cache.close(id));
        assert!(!cache.close(id));
        assert_eq!(
            cache.finish(id, epoch_of(&second), now, key.iter().zip([state(1, true)])),
            Err(SessionError::NotFound)
        );
    }

    #[test]
    fn epochs_wrap_to_one() {
        assert_eq!(next_epoch(0), 1);
        assert_eq!(next_epoch(41), 42);
        assert_eq!(next_epoch(i32::MAX), 1);
    }

    #[test]
    fn a_full_cache_evicts_the_least_recently_used_idle_session_only() {
        let mut cache = FetchSessions::new(0, 1, limits(2, 100));
        let t0 = Instant::now();
        let one = [(tp("a", 0), at(0), state(0, false))];
        let a = cache.create(t0, one.clone()).unwrap();
        let b = cache
            .create(t0 + Duration::from_secs(1), one.clone())
            .unwrap();
        // Both used recently: a third client gets no session, and both stay.
        assert_eq!(
            cache.create(t0 + Duration::from_secs(10), one.clone()),
            None
        );
        assert_eq!(cache.len(), 2);
        // a is used again at 20 s (with a long-poll until 25 s), b is not.
        let t20 = t0 + Duration::from_secs(20);
        cache
            .begin(a, 1, t20, t20 + Duration::from_secs(5), vec![], vec![])
            .unwrap();
        // At 40 s b has been idle 39 s and a 15 s: b goes.
        let t40 = t0 + Duration::from_secs(40);
        let c = cache.create(t40, one.clone()).unwrap();
        assert_eq!(
            cache.begin(b, 1, t40, t40, vec![], vec![]),
            Err(SessionError::NotFound)
        );
        assert!(cache.begin(a, 2, t40, t40, vec![], vec![]).is_ok());
        assert!(cache.begin(c, 1, t40, t40, vec![], vec![]).is_ok());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn partitions_are_bounded_per_shard() {
        let mut cache = FetchSessions::new(0, 1, limits(10, 3));
        let now = Instant::now();
        let many: Vec<_> = (0..4).map(|p| (tp("a", p), at(0), None)).collect();
        assert_eq!(cache.create(now, many), None, "larger than the whole limit");
        let two: Vec<_> = (0..2).map(|p| (tp("a", p), at(0), None)).collect();
        let a = cache.create(now, two.clone()).unwrap();
        assert_eq!(
            cache.create(now, two.clone()),
            None,
            "no room and a is active"
        );
        // Growing a past the limit closes it: the request is answered without a session.
        let begun = cache
            .begin(
                a,
                1,
                now,
                now,
                vec![(tp("b", 0), at(0)), (tp("b", 1), at(0))],
                vec![],
            )
            .unwrap();
        assert_eq!(begun, Begun::Closed);
        assert_eq!((cache.len(), cache.cached_partitions()), (0, 0));
        // Once a session is idle long enough, a newcomer may take its room.
        let a = cache.create(now, two.clone()).unwrap();
        let later = now + Duration::from_secs(31);
        let b = cache.create(later, two).unwrap();
        assert_eq!(
            cache.begin(a, 1, later, later, vec![], vec![]),
            Err(SessionError::NotFound)
        );
        assert!(cache.begin(b, 1, later, later, vec![], vec![]).is_ok());
        assert_eq!(cache.cached_partitions(), 2);
    }

    #[test]
    fn a_full_fetch_naming_a_partition_twice_keeps_it_once() {
        let mut cache = FetchSessions::new(0, 1, SessionLimits::DEFAULT);
        let now = Instant::now();
        let id = cache
            .create(
                now,
                [
                    (tp("a", 0), at(1), state(0, false)),
                    (tp("a", 0), at(7), state(0, false)),
                ],
            )
            .unwrap();
        assert_eq!(cache.cached_partitions(), 1);
        let begun = cache.begin(id, 1, now, now, vec![], vec![]).unwrap();
        assert_eq!(fetch_list(&begun), vec![("a".into(), 0, 7)]);
    }
}
