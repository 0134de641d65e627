//! Record timestamps (milliseconds since the epoch) at a fraction of a clock reading's cost.
//!
//! The producer stamps every record it is not given a timestamp for. `SystemTime::now` (the
//! vDSO's `clock_gettime`) costs 25–30 ns on the VMs this project runs on, half of what the
//! rest of a record costs the producing thread. Reading the TSC costs about 8 ns. Where the
//! kernel itself keeps time with the TSC (its clocksource is `tsc`, chosen only when the
//! counter is invariant and synchronized across CPUs), each thread reads the system clock
//! once a millisecond at most (an *anchor*) and extrapolates from it with the TSC in
//! between. The TSC's rate is measured between consecutive anchors, so it needs no
//! calibration pause; an extrapolation never runs more than [`WINDOW_NS`] past its anchor,
//! so even a rate off by 1 % moves a timestamp by 10 µs at most, far below the
//! millisecond the wire carries. A counter that went backwards (a thread moved to a CPU
//! whose counter differs) or a stale anchor makes the next call read the system clock.
//! Elsewhere (another clocksource, another architecture) every call reads the system clock.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest extrapolation from one reading of the system clock.
const WINDOW_NS: u64 = 1_000_000;

/// The wall clock now, in milliseconds since the epoch (0 before 1970).
pub(crate) fn now_ms() -> i64 {
    if tsc_usable() {
        ANCHOR.with(Anchored::now_ms)
    } else {
        system_ns() / 1_000_000
    }
}

fn system_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn tsc_usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        cfg!(target_arch = "x86_64")
            && std::fs::read_to_string(
                "/sys/devices/system/clocksource/clocksource0/current_clocksource",
            )
            .is_ok_and(|source| source.trim() == "tsc")
    })
}

#[cfg(target_arch = "x86_64")]
fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter; it has no preconditions on x86_64.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
fn rdtsc() -> u64 {
    unreachable!("the TSC is used on x86_64 only")
}

thread_local! {
    static ANCHOR: Anchored = const {
        Anchored {
            tsc: Cell::new(0),
            ns: Cell::new(0),
            ns_per_tick_q32: Cell::new(0),
        }
    };
}

/// One thread's last reading of the system clock and the TSC at that moment.
struct Anchored {
    tsc: Cell<u64>,
    /// System time of the anchor, ns since the epoch (0: no anchor yet).
    ns: Cell<i64>,
    /// Nanoseconds per TSC tick in 32.32 fixed point (0: not measured yet).
    ns_per_tick_q32: Cell<u64>,
}

impl Anchored {
    fn now_ms(&self) -> i64 {
        let now = rdtsc();
        let rate = self.ns_per_tick_q32.get();
        if rate != 0 {
            if let Some(ticks) = now.checked_sub(self.tsc.get()) {
                let elapsed = (u128::from(ticks) * u128::from(rate)) >> 32;
                if elapsed < u128::from(WINDOW_NS) {
                    return (self.ns.get() + elapsed as i64) / 1_000_000;
                }
            }
        }
        self.reanchor(now)
    }

    #[cold]
    fn reanchor(&self, tsc: u64) -> i64 {
        let ns = system_ns();
        let (last_tsc, last_ns) = (self.tsc.get(), self.ns.get());
        // Measure the rate over the time since the last anchor, once it is long enough for
        // the clock readings' own cost not to matter.
        let span_ns = ns - last_ns;
        if last_ns != 0 && span_ns >= WINDOW_NS as i64 / 2 && tsc > last_tsc {
            let rate = ((span_ns as u128) << 32) / u128::from(tsc - last_tsc);
            self.ns_per_tick_q32.set(u64::try_from(rate).unwrap_or(0));
        }
        if last_ns == 0 || span_ns >= WINDOW_NS as i64 / 2 || span_ns < 0 {
            self.tsc.set(tsc);
            self.ns.set(ns);
        }
        ns / 1_000_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_system_clock_to_the_millisecond() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(50);
        let mut calls = 0u64;
        while std::time::Instant::now() < deadline {
            let before = system_ns() / 1_000_000;
            let stamp = now_ms();
            let after = system_ns() / 1_000_000;
            // A rate measured over 0.5 ms may be off by a little: allow one millisecond
            // either side.
            assert!(
                before - 1 <= stamp && stamp <= after + 1,
                "{before} <= {stamp} <= {after} at call {calls}"
            );
            calls += 1;
        }
        assert!(calls > 100);
    }
}
