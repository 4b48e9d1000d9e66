//! What is submitted: a [`TaskSpec`].

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::ModuleHash;
use crate::{Error, LimitOverrides, Result};

/// How long to wait between attempts: `initial × multiplier^(n-1)`, at
/// most `max`, each wait drawn at random between half and all of that
/// ("equal jitter") when `jitter` is on, so that tasks failing together do
/// not retry together.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    /// The wait before the second attempt. Default: 1 s.
    #[serde(with = "crate::task::millis")]
    pub initial: Duration,
    /// The longest wait. Default: 5 min.
    #[serde(with = "crate::task::millis")]
    pub max: Duration,
    /// Growth per attempt. Default: 2.
    pub multiplier: f64,
    /// Randomise each wait. Default: on.
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl Backoff {
    /// The wait after the `attempt`-th attempt failed (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let base = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = base.min(self.max.as_secs_f64()).max(0.0);
        let wait = if self.jitter {
            capped * (0.5 + fastrand::f64() * 0.5)
        } else {
            capped
        };
        Duration::try_from_secs_f64(wait).unwrap_or(self.max)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !(self.multiplier.is_finite() && (1.0..=100.0).contains(&self.multiplier)) {
            return Err(Error::InvalidTask(
                "backoff multiplier must be between 1 and 100".into(),
            ));
        }
        if self.initial > self.max {
            return Err(Error::InvalidTask(
                "backoff initial wait must not be longer than its max".into(),
            ));
        }
        if self.max > crate::MAX_TIMEOUT {
            return Err(Error::InvalidTask(
                "backoff max wait must be at most a week".into(),
            ));
        }
        Ok(())
    }
}

/// The module a task runs: one registered before, by hash, or its bytes.
#[derive(Clone, Debug)]
pub enum ModuleRef {
    /// A module registered before ([`Pool::register`](crate::Pool::register)).
    Hash(ModuleHash),
    /// The module's bytes; registered (once) on submit.
    Bytes(Vec<u8>),
}

impl From<ModuleHash> for ModuleRef {
    fn from(hash: ModuleHash) -> Self {
        ModuleRef::Hash(hash)
    }
}

/// When a task may start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// As soon as a worker is free.
    Now,
    /// After this delay from submission.
    After(Duration),
    /// Not before this time.
    At(SystemTime),
}

/// A task to submit: a module, its input and how to run it. Build it with
/// [`TaskSpec::new`] and the builder methods.
#[derive(Clone, Debug)]
pub struct TaskSpec {
    pub(crate) module: ModuleRef,
    pub(crate) input: Vec<u8>,
    pub(crate) priority: i32,
    pub(crate) limits: LimitOverrides,
    pub(crate) max_attempts: u32,
    pub(crate) max_interruptions: u32,
    pub(crate) backoff: Backoff,
    pub(crate) start: StartAt,
    pub(crate) expires: Option<StartAt>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) labels: BTreeMap<String, String>,
}

/// The longest idempotency key, label key or label value, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// The most labels a task may carry.
pub const MAX_LABELS: usize = 32;
/// The most attempts a task may ask for.
pub const MAX_ATTEMPTS: u32 = 100;
/// How many times a task may lose its host while it runs before it ends
/// [`Outcome::Interrupted`](crate::Outcome::Interrupted), unless it asks
/// for another number.
pub const DEFAULT_MAX_INTERRUPTIONS: u32 = 3;

impl TaskSpec {
    /// A task running `module` on `input`, with the pool's defaults: priority
    /// 0, the pool's limits, one attempt, start now, no expiry.
    pub fn new(module: impl Into<ModuleRef>, input: impl Into<Vec<u8>>) -> Self {
        Self {
            module: module.into(),
            input: input.into(),
            priority: 0,
            limits: LimitOverrides::default(),
            max_attempts: 1,
            max_interruptions: DEFAULT_MAX_INTERRUPTIONS,
            backoff: Backoff::default(),
            start: StartAt::Now,
            expires: None,
            idempotency_key: None,
            labels: BTreeMap::new(),
        }
    }

    /// Higher runs first; equal priorities run in submission order.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Overrides of the pool's default limits.
    pub fn limits(mut self, limits: LimitOverrides) -> Self {
        self.limits = limits;
        self
    }

    /// The wall-clock timeout of each attempt.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.limits.timeout = Some(timeout);
        self
    }

    /// How many times the task may run in all (1 = no retry).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// How many times the task may be interrupted (its host died or lost
    /// its lease while it ran) before it ends
    /// [`Outcome::Interrupted`](crate::Outcome::Interrupted): a task that
    /// takes its host down every time it runs must not do so for ever.
    /// Interruptions are not attempts: an interrupted run is run again
    /// without counting against [`TaskSpec::max_attempts`]. Default: 3.
    pub fn max_interruptions(mut self, interruptions: u32) -> Self {
        self.max_interruptions = interruptions;
        self
    }

    /// The waits between attempts.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Start no sooner than `delay` after submission.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.start = StartAt::After(delay);
        self
    }

    /// Start no sooner than `at`.
    pub fn run_at(mut self, at: SystemTime) -> Self {
        self.start = StartAt::At(at);
        self
    }

    /// Expire (never start) if not started within `ttl` of submission.
    pub fn expire_after(mut self, ttl: Duration) -> Self {
        self.expires = Some(StartAt::After(ttl));
        self
    }

    /// Expire (never start) if not started by `at`.
    pub fn expire_at(mut self, at: SystemTime) -> Self {
        self.expires = Some(StartAt::At(at));
        self
    }

    /// A key that makes submission idempotent: submitting again with a key
    /// in use returns the existing task instead of a new one.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// A free-form label; tasks can be listed by label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS {
            return Err(Error::InvalidTask(format!(
                "max attempts must be between 1 and {MAX_ATTEMPTS}, not {}",
                self.max_attempts
            )));
        }
        if self.max_interruptions == 0 || self.max_interruptions > MAX_ATTEMPTS {
            return Err(Error::InvalidTask(format!(
                "max interruptions must be between 1 and {MAX_ATTEMPTS}, not {}",
                self.max_interruptions
            )));
        }
        self.backoff.validate()?;
        if let Some(key) = &self.idempotency_key
            && (key.is_empty() || key.len() > MAX_KEY_LEN)
        {
            return Err(Error::InvalidTask(format!(
                "an idempotency key must be 1 to {MAX_KEY_LEN} bytes"
            )));
        }
        if self.labels.len() > MAX_LABELS {
            return Err(Error::InvalidTask(format!(
                "a task may carry at most {MAX_LABELS} labels"
            )));
        }
        for (key, value) in &self.labels {
            if key.is_empty() || key.len() > MAX_KEY_LEN || value.len() > MAX_KEY_LEN {
                return Err(Error::InvalidTask(format!(
                    "label keys must be 1 to {MAX_KEY_LEN} bytes and values at most \
                     {MAX_KEY_LEN} bytes (label `{key}`)"
                )));
            }
        }
        for start in [Some(self.start), self.expires].into_iter().flatten() {
            if let StartAt::After(d) = start
                && d > Duration::from_secs(10 * 365 * 24 * 3600)
            {
                return Err(Error::InvalidTask(
                    "a delay or expiry must be within ten years".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: false,
        };
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(3), Duration::from_millis(400));
        assert_eq!(b.delay(30), Duration::from_secs(1));
        let j = Backoff { jitter: true, ..b };
        for _ in 0..100 {
            let d = j.delay(2);
            assert!(
                d >= Duration::from_millis(100) && d <= Duration::from_millis(200),
                "{d:?}"
            );
        }
    }
}
