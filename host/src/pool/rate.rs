//! The pool's recent throughput.

use crate::task::{Millis, now_millis};

/// Finishes per second over the last ten seconds, by the wall clock's
/// seconds: a finish is counted at the time its record gives, so counting
/// reads no clock.
#[derive(Debug)]
pub(crate) struct RateWindow {
    /// The second the window was made (the pool's start).
    start: u64,
    buckets: [(u64, u64); 10],
}

impl Default for RateWindow {
    fn default() -> Self {
        Self {
            start: now_millis() / 1000,
            buckets: [(u64::MAX, 0); 10],
        }
    }
}

impl RateWindow {
    /// Counts a finish at `at`.
    pub(crate) fn tick_at(&mut self, at: Millis) {
        let second = at / 1000;
        let bucket = &mut self.buckets[(second % 10) as usize];
        if bucket.0 != second {
            *bucket = (second, 0);
        }
        bucket.1 += 1;
    }

    /// Finishes per second over the ten seconds before `now` (fewer
    /// since the start, if it was more recent).
    pub(crate) fn rate_at(&self, now: Millis) -> f64 {
        let now = now / 1000;
        let window = (now.saturating_sub(self.start) + 1).min(10);
        let count: u64 = self
            .buckets
            .iter()
            .filter(|(second, _)| *second != u64::MAX && now.saturating_sub(*second) < window)
            .map(|(_, n)| n)
            .sum();
        count as f64 / window as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_last_ten_seconds_only() {
        let mut window = RateWindow {
            start: 1_000,
            buckets: [(u64::MAX, 0); 10],
        };
        for _ in 0..30 {
            window.tick_at(1_000_500);
        }
        for _ in 0..20 {
            window.tick_at(1_012_100);
        }
        // At 1,012 s: the window is 10 s, the finishes at 1,000 s are out.
        assert_eq!(window.rate_at(1_012_900), 2.0);
        // At 1,000 s, one second after the start: all 30 in a 1 s window.
        let mut young = RateWindow {
            start: 1_000,
            buckets: [(u64::MAX, 0); 10],
        };
        for _ in 0..30 {
            young.tick_at(1_000_500);
        }
        assert_eq!(young.rate_at(1_000_700), 30.0);
        // Ten seconds on, the old bucket is reused, not added to.
        young.tick_at(1_010_100);
        assert_eq!(young.rate_at(1_010_200), 0.1);
    }
}
