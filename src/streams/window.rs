//! Time windows over record timestamps.
//!
//! A window is `[start, start + size)` in milliseconds since the epoch. Tumbling windows
//! (`advance == size`) cut time into back-to-back slices, so each record falls into exactly
//! one; hopping windows (`advance < size`) overlap, so a record falls into `size / advance`
//! of them. Window starts are multiples of `advance` (aligned to the epoch), so every
//! instance and every restart computes the same windows.
//!
//! **Lateness.** Each partition of a windowed step keeps its *stream time*: the largest
//! record timestamp it has seen. A window closes when stream time reaches `end + grace`;
//! a record for a closed window is late and is dropped (counted and logged), while the
//! windows of it that are still open take it. Closed windows are removed from the store
//! and tombstoned in its changelog, so state stays bounded by the windows still open.
//!
//! **The key of a windowed result** is the record key's bytes, `@`, and the window start
//! in decimal milliseconds: `apple@1700000040000`. [`Windowed`] reads it back.
//!
//! **Session windows** ([`SessionWindows`]) are not fixed: a key's records no more than
//! `gap` apart form one session `[first, last]`; a record that reaches two sessions merges
//! them. A merged-away session's result key gets a null value (a tombstone), and the
//! merged session its aggregate, under `key@start-end` ([`SessionWindowed`]). A record is
//! late when its timestamp is more than `grace` behind stream time.

use std::time::Duration;

use super::serde::{Serde, SerdeError};

/// Fixed-size windows, tumbling or hopping, with a grace period for late records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindows {
    /// Length of a window, ms.
    pub size: i64,
    /// Distance between the starts of consecutive windows, ms (`size` for tumbling).
    pub advance: i64,
    /// How long after its end a window still takes records, ms.
    pub grace: i64,
}

impl TimeWindows {
    /// Tumbling windows of `size` (at least 1 ms), no grace period.
    pub fn tumbling(size: Duration) -> TimeWindows {
        let size = millis(size).max(1);
        TimeWindows {
            size,
            advance: size,
            grace: 0,
        }
    }

    /// Hopping windows of `size` that start every `advance` (clamped to `1 ms..=size`).
    pub fn hopping(size: Duration, advance: Duration) -> TimeWindows {
        let size = millis(size).max(1);
        TimeWindows {
            size,
            advance: millis(advance).clamp(1, size),
            grace: 0,
        }
    }

    /// The same windows, taking records up to `grace` after their end.
    pub fn grace(self, grace: Duration) -> TimeWindows {
        TimeWindows {
            grace: millis(grace),
            ..self
        }
    }

    /// Starts of the windows that contain `timestamp`, oldest first. Computed in 128 bits,
    /// so a timestamp near either end of `i64` (any value can arrive in a record) cannot
    /// overflow; windows whose start does not fit in `i64` are left out.
    pub fn starts_of(&self, timestamp: i64) -> impl Iterator<Item = i64> {
        let (advance, size) = (i128::from(self.advance), i128::from(self.size));
        let timestamp = i128::from(timestamp);
        // The newest window containing the timestamp starts at the last multiple of
        // `advance` at or before it; older ones follow while they still reach it.
        let last = timestamp.div_euclid(advance) * advance;
        let first = last - (size - 1).div_euclid(advance) * advance;
        (0..)
            .map(move |i| first + i * advance)
            .take_while(move |s| *s <= last)
            .filter(move |s| *s + size > timestamp)
            .filter_map(|s| i64::try_from(s).ok())
    }

    /// Whether some window closes when stream time moves from `before` to `now`: windows
    /// close at `start + size + grace` with `start` a multiple of `advance`.
    pub(crate) fn closes_between(&self, before: i64, now: i64) -> bool {
        let close = |t: i64| {
            t.saturating_sub(self.size)
                .saturating_sub(self.grace)
                .div_euclid(self.advance)
        };
        close(now) != close(before)
    }

    /// Whether the window starting at `start` is closed at `stream_time`.
    pub fn is_closed(&self, start: i64, stream_time: i64) -> bool {
        start.saturating_add(self.size).saturating_add(self.grace) <= stream_time
    }
}

/// Session windows: a key's records separated by less than an inactivity gap form one
/// session; a record that bridges two sessions merges them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionWindows {
    /// Longest pause between two records of one session, ms.
    pub gap: i64,
    /// How long after its last record a session still takes late records, ms.
    pub grace: i64,
}

impl SessionWindows {
    /// Sessions that end after `gap` without a record, no grace period.
    pub fn with_inactivity_gap(gap: Duration) -> SessionWindows {
        SessionWindows {
            gap: millis(gap),
            grace: 0,
        }
    }

    /// The same sessions, taking records up to `grace` behind stream time.
    pub fn grace(self, grace: Duration) -> SessionWindows {
        SessionWindows {
            grace: millis(grace),
            ..self
        }
    }

    /// Whether a record at `timestamp` is late at `stream_time`.
    pub fn is_late(&self, timestamp: i64, stream_time: i64) -> bool {
        timestamp.saturating_add(self.grace) < stream_time
    }

    /// Whether a record at `timestamp` belongs to (and extends) the session `[start, end]`.
    pub fn reaches(&self, start: i64, end: i64, timestamp: i64) -> bool {
        start.saturating_sub(self.gap) <= timestamp && timestamp <= end.saturating_add(self.gap)
    }

    /// Whether the session ending at `end` can no longer take a record at `stream_time`
    /// (every record that could reach it would be late).
    pub fn is_closed(&self, end: i64, stream_time: i64) -> bool {
        end.saturating_add(self.gap).saturating_add(self.grace) < stream_time
    }
}

/// A key within one session: the result key of a session-windowed aggregation, written
/// `<key>@<start>-<end>` (decimal ms, both ends included).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionWindowed<K> {
    /// The record key.
    pub key: K,
    /// The session's first record's timestamp, ms.
    pub start: i64,
    /// The session's last record's timestamp, ms.
    pub end: i64,
}

impl<K: Serde> Serde for SessionWindowed<K> {
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = window_key(&self.key.to_bytes(), self.start);
        out.push(b'-');
        out.extend_from_slice(self.end.to_string().as_bytes());
        out
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, SerdeError> {
        let bad = || SerdeError("a session key needs `@<start>-<end>`".into());
        let at = bytes.iter().rposition(|b| *b == b'@').ok_or_else(bad)?;
        let span = &bytes[at + 1..];
        // The separator is the first '-' after the start's sign.
        let dash = span
            .iter()
            .skip(1)
            .position(|b| *b == b'-')
            .map(|i| i + 1)
            .ok_or_else(bad)?;
        Ok(SessionWindowed {
            key: K::from_bytes(&bytes[..at])?,
            start: i64::from_bytes(&span[..dash])?,
            end: i64::from_bytes(&span[dash + 1..])?,
        })
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A key within one window: the result key of a windowed aggregation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Windowed<K> {
    /// The record key.
    pub key: K,
    /// The window's start, ms since the epoch.
    pub start: i64,
}

impl<K: Serde> Serde for Windowed<K> {
    fn to_bytes(&self) -> Vec<u8> {
        window_key(&self.key.to_bytes(), self.start)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, SerdeError> {
        let at = bytes
            .iter()
            .rposition(|b| *b == b'@')
            .ok_or_else(|| SerdeError("a windowed key needs `@<start>`".into()))?;
        Ok(Windowed {
            key: K::from_bytes(&bytes[..at])?,
            start: i64::from_bytes(&bytes[at + 1..])?,
        })
    }
}

/// The bytes of `key` in the window starting at `start`.
pub(crate) fn window_key(key: &[u8], start: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 21);
    out.extend_from_slice(key);
    out.push(b'@');
    out.extend_from_slice(start.to_string().as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(w: TimeWindows, ts: i64) -> Vec<i64> {
        w.starts_of(ts).collect()
    }

    #[test]
    fn a_record_falls_in_one_tumbling_window() {
        let w = TimeWindows::tumbling(Duration::from_secs(60));
        assert_eq!(starts(w, 0), [0]);
        assert_eq!(starts(w, 59_999), [0]);
        assert_eq!(starts(w, 60_000), [60_000]);
        assert_eq!(starts(w, -1), [-60_000]);
    }

    #[test]
    fn a_record_falls_in_size_over_advance_hopping_windows() {
        let w = TimeWindows::hopping(Duration::from_secs(60), Duration::from_secs(20));
        assert_eq!(starts(w, 65_000), [20_000, 40_000, 60_000]);
        assert_eq!(starts(w, 60_000), [20_000, 40_000, 60_000]);
        assert_eq!(starts(w, 59_999), [0, 20_000, 40_000]);
        // An advance that does not divide the size.
        let w = TimeWindows::hopping(Duration::from_millis(10), Duration::from_millis(4));
        for ts in 0..40 {
            for s in starts(w, ts) {
                assert!(s <= ts && ts < s + 10 && s % 4 == 0, "{ts} in {s}");
            }
            assert_eq!(
                starts(w, ts).len(),
                (ts - 20..=ts).filter(|s| s % 4 == 0 && ts < s + 10).count()
            );
        }
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        let w = TimeWindows::hopping(Duration::from_secs(60), Duration::from_secs(7));
        let at_max = starts(w, i64::MAX);
        assert_eq!(at_max.len(), 9);
        assert!(at_max
            .iter()
            .all(|s| i128::from(*s) + 60_000 > i128::from(i64::MAX)));
        // The windows of i64::MIN would start below it: there are none to count in.
        assert!(starts(w, i64::MIN).iter().all(|s| *s == i64::MIN));
        assert!(starts(w, 0).len() == 9);
        // Window ends past i64::MAX saturate (such a window counts as closed at once).
        assert!(w.is_closed(i64::MAX - 1, i64::MAX));
        assert!(w.closes_between(i64::MIN, i64::MAX));
        let s = SessionWindows::with_inactivity_gap(Duration::from_secs(1));
        assert!(s.reaches(i64::MAX, i64::MAX, i64::MAX));
        assert!(!s.is_late(i64::MIN, i64::MIN));
    }

    #[test]
    fn a_window_closes_after_its_grace_period() {
        let w = TimeWindows::tumbling(Duration::from_secs(60)).grace(Duration::from_secs(10));
        assert!(!w.is_closed(0, 69_999));
        assert!(w.is_closed(0, 70_000));
    }

    #[test]
    fn session_keys_read_back() {
        for (start, end) in [(5, 10), (-20, -5), (-3, 4)] {
            let k = SessionWindowed {
                key: "user@x".to_string(),
                start,
                end,
            };
            assert_eq!(SessionWindowed::<String>::from_bytes(&k.to_bytes()), Ok(k));
        }
        assert!(SessionWindowed::<String>::from_bytes(b"k@5").is_err());
    }

    #[test]
    fn sessions_take_records_within_the_gap() {
        let s = SessionWindows::with_inactivity_gap(Duration::from_secs(10))
            .grace(Duration::from_secs(5));
        assert!(s.reaches(100_000, 120_000, 90_000));
        assert!(s.reaches(100_000, 120_000, 130_000));
        assert!(!s.reaches(100_000, 120_000, 130_001));
        assert!(!s.is_late(95_000, 100_000));
        assert!(s.is_late(94_999, 100_000));
        assert!(!s.is_closed(100_000, 115_000));
        assert!(s.is_closed(100_000, 115_001));
    }

    #[test]
    fn windowed_keys_read_back() {
        let k = Windowed {
            key: "a@b".to_string(),
            start: 1_700_000_040_000,
        };
        assert_eq!(k.to_bytes(), b"a@b@1700000040000");
        assert_eq!(Windowed::<String>::from_bytes(&k.to_bytes()), Ok(k));
        assert!(Windowed::<String>::from_bytes(b"plain").is_err());
    }
}
