//! Reconnect and retry pauses: exponential, capped, with jitter.
//!
//! Every client that lost its broker waits `base`, then twice that, up to `max`, each pause
//! moved by up to ±20 % at random, so that many clients cut off by one broker restart do
//! not all come back in the same millisecond.

use std::time::Duration;

/// The pauses between attempts of one thing (a connection, a batch).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    /// Starts at `base`, doubles up to `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
            seed: seed | 1,
        }
    }

    /// The pause before the next attempt; each call doubles the next one (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let doubled = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: jitter needs no cryptographic quality.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        // A factor in [0.8, 1.2].
        let factor = 0.8 + 0.4 * (self.seed % 10_001) as f64 / 10_000.0;
        doubled.mul_f64(factor)
    }

    /// Attempts made since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to `base` after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_within_the_jitter() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let expected = [50, 100, 200, 400, 800, 1600, 2000, 2000];
        for want in expected {
            let got = b.next_delay().as_secs_f64() * 1000.0;
            let want = f64::from(want);
            assert!(
                got >= want * 0.8 - 0.001 && got <= want * 1.2 + 0.001,
                "{got} ms not within 20 % of {want} ms"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(60));
    }

    #[test]
    fn jitter_spreads_the_pauses() {
        let mut b = Backoff::new(Duration::from_millis(1000), Duration::from_millis(1000));
        let pauses: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| b.next_delay()).collect();
        assert!(pauses.len() > 1, "every pause was the same: {pauses:?}");
    }
}
