//! One monotonic clock for the whole harness: nanoseconds since the process's first reading.
//! Producers write these times into records and consumers read them back in the same
//! process, so no wall-clock steps or cross-machine skew enter a latency.
//!
//! The harness reads the clock two or three times per record, so its cost counts: on the
//! VMs this project runs on `Instant::now` takes about 25 ns (the vDSO's `clock_gettime`),
//! a quarter of a producer thread's time at 4 M records/s. Where the kernel itself keeps
//! time with the TSC (its clocksource is `tsc`, which it chooses only when the counter is
//! invariant and synchronized across CPUs), the harness reads the TSC directly (about
//! 10 ns) and scales it with a factor measured against `Instant` at start; elsewhere it
//! uses `Instant`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Clock {
    epoch: Instant,
    tsc: Option<Tsc>,
}

/// TSC ticks to nanoseconds: `ns = (ticks - base) * scale >> 32`.
struct Tsc {
    base: u64,
    scale: u64,
}

static CLOCK: OnceLock<Clock> = OnceLock::new();

fn clock() -> &'static Clock {
    CLOCK.get_or_init(|| {
        let epoch = Instant::now();
        let tsc = if std::env::var_os("EVENTFLOW_BENCH_NO_TSC").is_some() {
            None
        } else {
            calibrate(epoch)
        };
        Clock { epoch, tsc }
    })
}

#[cfg(target_arch = "x86_64")]
fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter; it has no preconditions on x86_64.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(target_arch = "x86_64")]
fn calibrate(epoch: Instant) -> Option<Tsc> {
    let source =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .ok()?;
    if source.trim() != "tsc" {
        return None;
    }
    let (t0, i0) = (rdtsc(), Instant::now());
    std::thread::sleep(Duration::from_millis(20));
    let (t1, i1) = (rdtsc(), Instant::now());
    let ticks = t1.checked_sub(t0).filter(|t| *t > 0)?;
    let ns = i1.duration_since(i0).as_nanos();
    let scale = u64::try_from((ns << 32) / u128::from(ticks)).ok()?;
    // Anchor the counter at the epoch: t0 was read (almost) at i0.
    let since_epoch = i0.duration_since(epoch).as_nanos() as u64;
    let ticks_since_epoch = (u128::from(since_epoch) << 32) / u128::from(scale.max(1));
    Some(Tsc {
        base: t0.saturating_sub(ticks_since_epoch as u64),
        scale,
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn calibrate(_epoch: Instant) -> Option<Tsc> {
    None
}

/// Nanoseconds since the harness's epoch (never 0 after the first call returns).
pub fn now_ns() -> u64 {
    let clock = clock();
    match &clock.tsc {
        #[cfg(target_arch = "x86_64")]
        Some(tsc) => {
            let ticks = rdtsc().saturating_sub(tsc.base);
            ((u128::from(ticks) * u128::from(tsc.scale)) >> 32) as u64 + 1
        }
        _ => clock.epoch.elapsed().as_nanos() as u64 + 1,
    }
}

/// Whether the clock reads the TSC.
pub fn uses_tsc() -> bool {
    clock().tsc.is_some()
}

/// Sleeps until `deadline_ns`. The OS timer wakes tens of µs late, and the records that fell
/// due meanwhile are then sent at once (their latency still counts from when they were due).
/// The thread never spins waiting: on a machine with as few cores as the ones this project
/// runs on, a spinning producer takes a core away from the broker it measures (at 200 k
/// records/s spinning for the last 100 µs cost a whole core and doubled the e2e median).
pub fn sleep_until(deadline_ns: u64) {
    // A loop, because the TSC's scale and the OS's sleep clock may differ by a hair.
    loop {
        let now = now_ns();
        if now >= deadline_ns {
            return;
        }
        std::thread::sleep(Duration::from_nanos(deadline_ns - now));
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
    fn the_clock_keeps_time_with_instant() {
        // A pair of readings can be split by preemption on a busy machine, so the scale is
        // judged by the best of several intervals; a wrong TSC scale is off in every one.
        let error = (0..5)
            .map(|_| {
                let (c0, i0) = (now_ns(), Instant::now());
                std::thread::sleep(Duration::from_millis(20));
                let (c1, i1) = (now_ns(), Instant::now());
                let clock = (c1 - c0) as f64;
                let instant = i1.duration_since(i0).as_nanos() as f64;
                (clock / instant - 1.0).abs()
            })
            .fold(f64::INFINITY, f64::min);
        assert!(
            error < 0.05,
            "clock off by {error:.3} (tsc: {})",
            uses_tsc()
        );
        let mut last = now_ns();
        for _ in 0..100_000 {
            let now = now_ns();
            assert!(now >= last);
            last = now;
        }
    }

    #[test]
    fn sleeping_waits_for_future_deadlines_only() {
        // A passed deadline returns without sleeping (no underflowing wait); the bound is
        // loose so that a preempted test thread does not fail it.
        let t = Instant::now();
        sleep_until(0);
        sleep_until(now_ns() - 1);
        assert!(t.elapsed() < Duration::from_secs(1));
        // Checked against Instant, not the clock sleep_until reads: a future deadline is
        // not left early (5% is the scale error the test above allows).
        let t = Instant::now();
        sleep_until(now_ns() + 20_000_000);
        assert!(t.elapsed() >= Duration::from_millis(19));
    }
}
