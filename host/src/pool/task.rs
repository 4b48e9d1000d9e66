//! Tasks: what is submitted, what is stored, what comes out.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{Error, LimitOverrides, Limits, ModuleHash, Outcome, Result};

/// Identifies a task: a ULID, so ids sort by submission time and print as
/// 26 characters (`01JD8X…`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(ulid::Ulid);

impl TaskId {
    /// A new id, unique and later than every id made before it in this
    /// process.
    pub fn new() -> Self {
        use std::sync::Mutex;
        static LAST: Mutex<Option<ulid::Ulid>> = Mutex::new(None);
        let mut last = LAST
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = match *last {
            Some(prev) => ulid::Ulid::new().max(prev.increment().unwrap_or_else(ulid::Ulid::new)),
            None => ulid::Ulid::new(),
        };
        *last = Some(next);
        TaskId(next)
    }

    /// The id's 16 bytes, big-endian (they sort as the ids do).
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_bytes()
    }

    /// The id from its 16 bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        TaskId(ulid::Ulid::from_bytes(bytes))
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({})", self.0)
    }
}

impl FromStr for TaskId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        ulid::Ulid::from_string(s).map(TaskId).map_err(|_| {
            Error::InvalidTask(format!(
                "`{s}` is not a task id: expected 26 characters of Crockford base32"
            ))
        })
    }
}

/// Where a task is in its life.
///
/// `queued | scheduled → running → succeeded | failed | cancelled | expired`,
/// and `running → scheduled` again when a retry is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskState {
    /// Ready to run; waits for a free worker.
    Queued,
    /// Waits for its time (a delay, or a retry's backoff).
    Scheduled,
    /// A worker runs it.
    Running,
    /// Finished with success.
    Succeeded,
    /// Finished with failure, after its last attempt.
    Failed,
    /// Cancelled before or while it ran.
    Cancelled,
    /// Not started before its expiry.
    Expired,
}

impl TaskState {
    /// Every state, in life order.
    pub const ALL: [TaskState; 7] = [
        TaskState::Queued,
        TaskState::Scheduled,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
        TaskState::Expired,
    ];

    /// Whether the task is done for good.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled | TaskState::Expired
        )
    }

    /// The state's name, as in JSON (`queued`, `running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Scheduled => "scheduled",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Expired => "expired",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                Error::InvalidTask(format!(
                    "`{s}` is not a task state: use one of queued, scheduled, running, \
                     succeeded, failed, cancelled, expired"
                ))
            })
    }
}

/// How long to wait between attempts: `initial × multiplier^(n-1)`, at
/// most `max`, each wait drawn at random between half and all of that
/// ("equal jitter") when `jitter` is on, so that tasks failing together do
/// not retry together.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    /// The wait before the second attempt. Default: 1 s.
    #[serde(with = "crate::pool::task::millis")]
    pub initial: Duration,
    /// The longest wait. Default: 5 min.
    #[serde(with = "crate::pool::task::millis")]
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

/// Milliseconds since the Unix epoch, the time unit of stored records.
pub type Millis = u64;

/// Now, in [`Millis`].
pub fn now_millis() -> Millis {
    to_millis(SystemTime::now())
}

pub(crate) fn to_millis(t: SystemTime) -> Millis {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn resolve_time(start: StartAt, now: Millis) -> Millis {
    match start {
        StartAt::Now => now,
        StartAt::After(d) => now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        StartAt::At(t) => to_millis(t),
    }
}

/// One run of a task, kept in its history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first run.
    pub number: u32,
    /// How it ended. `None` while it runs, or when the host died during it.
    pub outcome: Option<Outcome>,
    /// When it started.
    pub started_at: Millis,
    /// Its wall time in microseconds.
    pub duration_us: u64,
    /// Fuel it consumed.
    pub fuel_consumed: Option<u64>,
}

/// A task as stored: its spec (resolved), its state and its history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task's id.
    pub id: TaskId,
    /// The module's hash.
    pub module: ModuleHash,
    /// The input bytes.
    pub input: Vec<u8>,
    /// Higher runs first.
    pub priority: i32,
    /// The limits each attempt runs under.
    pub limits: Limits,
    /// The most runs.
    pub max_attempts: u32,
    /// The waits between runs.
    pub backoff: Backoff,
    /// Not before this time (for `scheduled`).
    pub run_at: Millis,
    /// Expires if not started by then.
    pub expires_at: Option<Millis>,
    /// The idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Where it is.
    pub state: TaskState,
    /// Submission order among tasks of one store (FIFO within a priority).
    pub seq: u64,
    /// When it was submitted.
    pub submitted_at: Millis,
    /// When it last changed state.
    pub updated_at: Millis,
    /// When it reached its final state.
    pub finished_at: Option<Millis>,
    /// Every run so far, oldest first.
    pub attempts: Vec<Attempt>,
    /// The final outcome (once final).
    pub outcome: Option<Outcome>,
    /// The output of the last run.
    pub output: Vec<u8>,
    /// The log tail of the last run.
    pub log: String,
    /// The last progress the task reported.
    pub progress: Option<(u64, u64)>,
}

impl TaskRecord {
    /// The result, once the task is final.
    pub fn result(&self) -> Option<TaskResult> {
        if !self.state.is_final() {
            return None;
        }
        Some(TaskResult {
            id: self.id,
            state: self.state,
            outcome: self.outcome.clone(),
            output: self.output.clone(),
            log: self.log.clone(),
            attempts: self.attempts.clone(),
            duration_us: self.attempts.iter().map(|a| a.duration_us).sum(),
            fuel_consumed: self
                .attempts
                .iter()
                .filter_map(|a| a.fuel_consumed)
                .reduce(u64::saturating_add),
            submitted_at: self.submitted_at,
            started_at: self.attempts.first().map(|a| a.started_at),
            finished_at: self.finished_at.unwrap_or(self.updated_at),
        })
    }
}

/// The final result of a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task.
    pub id: TaskId,
    /// Its final state.
    pub state: TaskState,
    /// How it ended: the last attempt's outcome, or `cancelled` for a task
    /// cancelled before it ran; `None` for an expired task (it never ran).
    pub outcome: Option<Outcome>,
    /// The output of the last attempt.
    pub output: Vec<u8>,
    /// The log tail of the last attempt.
    pub log: String,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
    /// Wall time of all attempts, in microseconds.
    pub duration_us: u64,
    /// Fuel of all attempts.
    pub fuel_consumed: Option<u64>,
    /// When it was submitted.
    pub submitted_at: Millis,
    /// When its first attempt started.
    pub started_at: Option<Millis>,
    /// When it finished.
    pub finished_at: Millis,
}

impl TaskResult {
    /// Whether the task succeeded.
    pub fn is_success(&self) -> bool {
        self.state == TaskState::Succeeded
    }
}

pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_creation_and_round_trip() {
        let ids: Vec<TaskId> = (0..1000).map(|_| TaskId::new()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let text = ids[0].to_string();
        assert_eq!(text.len(), 26);
        assert_eq!(text.parse::<TaskId>().unwrap(), ids[0]);
        assert_eq!(TaskId::from_bytes(ids[5].to_bytes()), ids[5]);
        assert!("nope".parse::<TaskId>().is_err());
    }

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
