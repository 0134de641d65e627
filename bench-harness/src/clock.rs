//! One monotonic clock for the whole harness: nanoseconds since the process's first reading.
//! Producers write these times into records and consumers read them back in the same
//! process, so no wall-clock steps or cross-machine skew enter a latency.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the harness's epoch (never 0 after the first call returns).
pub fn now_ns() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_nanos() as u64 + 1
}

/// Sleeps until `deadline_ns`: the OS sleeps the long part and the last stretch yields,
/// because a timer wakes tens of µs late and a fixed-rate schedule should not drift.
pub fn sleep_until(deadline_ns: u64) {
    const SPIN_NS: u64 = 100_000;
    loop {
        let now = now_ns();
        if now >= deadline_ns {
            return;
        }
        let left = deadline_ns - now;
        if left > SPIN_NS {
            std::thread::sleep(Duration::from_nanos(left - SPIN_NS));
        } else {
            std::thread::yield_now();
        }
    }
}

/// The open-loop schedule of one producer: record `k` is due at `start + k / rate`. Being
/// late never moves later records: they are sent at once, and their latency counts from
/// when they were due (no coordinated omission).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start_ns: u64,
    /// 0: no schedule (as fast as possible).
    interval_ns: f64,
}

impl Schedule {
    /// `rate` records per second from `start_ns`; 0 for as fast as possible.
    pub fn new(start_ns: u64, rate: f64) -> Schedule {
        Schedule {
            start_ns,
            interval_ns: if rate > 0.0 { 1e9 / rate } else { 0.0 },
        }
    }

    /// Whether records follow a fixed rate.
    pub fn is_open_loop(&self) -> bool {
        self.interval_ns > 0.0
    }

    /// When record `k` is due (`start` for every record without a rate).
    pub fn intended_ns(&self, k: u64) -> u64 {
        self.start_ns + (k as f64 * self.interval_ns) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intended_times_follow_the_rate_not_the_sends() {
        let s = Schedule::new(1_000, 200_000.0);
        assert!(s.is_open_loop());
        assert_eq!(s.intended_ns(0), 1_000);
        assert_eq!(s.intended_ns(1), 6_000);
        assert_eq!(s.intended_ns(200_000), 1_000 + 1_000_000_000);
        // Times do not depend on when (or whether) earlier records were sent.
        assert_eq!(s.intended_ns(7), 1_000 + 7 * 5_000);
        let odd = Schedule::new(0, 3.0);
        assert_eq!(odd.intended_ns(3), 1_000_000_000);
        assert_eq!(odd.intended_ns(1), 333_333_333);
        assert!(!Schedule::new(5, 0.0).is_open_loop());
        assert_eq!(Schedule::new(5, 0.0).intended_ns(99), 5);
    }

    #[test]
    fn sleeping_reaches_the_deadline() {
        let deadline = now_ns() + 2_000_000;
        sleep_until(deadline);
        assert!(now_ns() >= deadline);
    }
}
