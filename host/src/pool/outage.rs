//! Waiting out a store that is out of reach ([`Error::Unavailable`]): how
//! long to pause between tries, and how often to say so in the log.
//!
//! Each background loop (and each run whose end waits to be recorded)
//! keeps an [`Outage`] of its own: no lock, no allocation. The first
//! failure is a warning, the next ones are quiet but for a reminder every
//! [`REMIND_EVERY`], and the first success after them says how long the
//! store was gone.

use std::time::{Duration, Instant};

use crate::Error;

/// How often a loop that keeps failing says so again.
const REMIND_EVERY: Duration = Duration::from_secs(30);

/// The first pause after a failure; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);

/// The longest pause between tries: the pool is back at work within this
/// long of the store.
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// One loop's view of the store being out of reach.
#[derive(Debug, Default)]
pub(super) struct Outage {
    /// When the failures began, and when the log last said so.
    since: Option<(Instant, Instant)>,
    failures: u32,
}

impl Outage {
    /// Records a failure of `what`; returns how long to pause before the
    /// next try. Logs the first failure as a warning, and then one reminder
    /// every [`REMIND_EVERY`].
    pub(super) fn failed(&mut self, what: &str, error: &Error) -> Duration {
        let now = Instant::now();
        self.failures = self.failures.saturating_add(1);
        match &mut self.since {
            None => {
                self.since = Some((now, now));
                tracing::warn!(
                    error = %error,
                    "{what}: the store is out of reach; waiting for it to come back"
                );
            }
            Some((began, warned)) if now.duration_since(*warned) >= REMIND_EVERY => {
                *warned = now;
                tracing::warn!(
                    error = %error,
                    failures = self.failures,
                    "{what}: the store is still out of reach after {} s",
                    now.duration_since(*began).as_secs()
                );
            }
            Some(_) => tracing::debug!(error = %error, "{what}: the store is out of reach"),
        }
        self.pause()
    }

    /// The pause before the next try: doubling from [`FIRST_PAUSE`] up to
    /// [`MAX_PAUSE`].
    pub(super) fn pause(&self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(10);
        (FIRST_PAUSE * 2u32.pow(doublings)).min(MAX_PAUSE)
    }

    /// Whether the last call failed.
    pub(super) fn ongoing(&self) -> bool {
        self.since.is_some()
    }

    /// How long the failures have gone on (zero when there are none).
    pub(super) fn lasted(&self) -> Duration {
        self.since
            .map_or(Duration::ZERO, |(began, _)| began.elapsed())
    }

    /// Records a success of `what`: says in the log how long the store
    /// was gone, if it was; whether it was.
    pub(super) fn ended(&mut self, what: &str) -> bool {
        self.failures = 0;
        let Some((began, _)) = self.since.take() else {
            return false;
        };
        tracing::info!(
            "{what}: the store is back after {:.1} s",
            began.elapsed().as_secs_f64()
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_most_and_start_again_after_a_success() {
        let mut outage = Outage::default();
        let error = Error::Unavailable("down".into());
        let pauses: Vec<_> = (0..7).map(|_| outage.failed("test", &error)).collect();
        assert_eq!(pauses[0], FIRST_PAUSE);
        assert_eq!(pauses[1], FIRST_PAUSE * 2);
        assert_eq!(pauses[6], MAX_PAUSE);
        assert!(outage.ongoing());
        assert!(outage.ended("test"));
        assert!(!outage.ended("test"));
        assert!(outage.since.is_none());
        assert_eq!(outage.failed("test", &error), FIRST_PAUSE);
    }
}
