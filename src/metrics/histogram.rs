//! Fixed-bucket histograms, recorded on one thread and merged when scraped.

use std::cell::Cell;

/// Upper bounds of the latency buckets, in nanoseconds: 50 µs to 60 s.
pub const LATENCY_NS: &[u64] = &[
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];

/// Upper bounds of the group-commit round sizes, in batches.
pub const ROUND_BATCHES: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// Upper bounds of the group-commit round sizes, in bytes: 1 KiB to 64 MiB.
pub const ROUND_BYTES: &[u64] = &[
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    64 << 20,
];

/// A histogram owned by one thread: a count per bucket (`le` an upper bound, plus one for
/// everything above the last) and the sum of the values.
pub struct Histogram {
    bounds: &'static [u64],
    counts: Box<[Cell<u64>]>,
    sum: Cell<u64>,
}

impl Histogram {
    /// An empty histogram over `bounds` (increasing upper bounds).
    pub fn new(bounds: &'static [u64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| Cell::new(0)).collect(),
            sum: Cell::new(0),
        }
    }

    /// Counts one value.
    pub fn record(&self, value: u64) {
        let bucket = self.bounds.partition_point(|&b| b < value);
        let count = &self.counts[bucket];
        count.set(count.get() + 1);
        self.sum.set(self.sum.get().wrapping_add(value));
    }

    /// The counts so far.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self.counts.iter().map(Cell::get).collect(),
            sum: self.sum.get(),
        }
    }
}

/// A histogram's counts at one moment: per bucket (not cumulative), the last one for values
/// above every bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// The buckets' upper bounds, in the recorded unit.
    pub bounds: &'static [u64],
    /// Values per bucket; one more entry than `bounds`.
    pub counts: Vec<u64>,
    /// The sum of every value, in the recorded unit.
    pub sum: u64,
}

impl HistogramSnapshot {
    /// An empty snapshot over `bounds`.
    pub fn empty(bounds: &'static [u64]) -> Self {
        HistogramSnapshot {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0,
        }
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other`'s counts (same bounds) to these.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        debug_assert_eq!(self.bounds, other.bounds);
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum = self.sum.wrapping_add(other.sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_lands_in_the_first_bucket_whose_bound_it_does_not_pass() {
        let h = Histogram::new(&[10, 20, 30]);
        for v in [0, 10, 11, 20, 31, 1000] {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.counts, vec![2, 2, 0, 2]);
        assert_eq!(s.sum, 1072);
        assert_eq!(s.count(), 6);
    }

    #[test]
    fn merged_snapshots_add_up() {
        let (a, b) = (Histogram::new(&[5]), Histogram::new(&[5]));
        a.record(1);
        b.record(9);
        b.record(2);
        let mut merged = a.snapshot();
        merged.merge(&b.snapshot());
        assert_eq!(merged.counts, vec![2, 1]);
        assert_eq!(merged.sum, 12);
    }
}
