//! The pool's recent throughput.

use std::time::Instant;

/// Finishes per second over the last ten seconds.
#[derive(Debug)]
pub(crate) struct RateWindow {
    start: Instant,
    buckets: [(u64, u64); 10],
}

impl Default for RateWindow {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            buckets: [(u64::MAX, 0); 10],
        }
    }
}

impl RateWindow {
    fn second(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    pub(crate) fn tick(&mut self) {
        let second = self.second();
        let bucket = &mut self.buckets[(second % 10) as usize];
        if bucket.0 != second {
            *bucket = (second, 0);
        }
        bucket.1 += 1;
    }

    pub(crate) fn rate(&self) -> f64 {
        let now = self.second();
        let window = (now + 1).min(10);
        let count: u64 = self
            .buckets
            .iter()
            .filter(|(second, _)| *second != u64::MAX && now - *second < 10)
            .map(|(_, n)| n)
            .sum();
        count as f64 / window as f64
    }
}
