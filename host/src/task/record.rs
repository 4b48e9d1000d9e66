//! What is stored: a [`TaskRecord`], its attempts, and the [`TaskResult`]
//! a finished task gives.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Backoff, ModuleHash, Payload, StartAt, TaskId, TaskSpec, TaskState};
use crate::{Limits, Outcome};

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
    /// The input: in the record, or in a file of the store's when it is
    /// large.
    pub input: Payload,
    /// Higher runs first.
    pub priority: i32,
    /// The limits each attempt runs under.
    pub limits: Limits,
    /// The most runs that end with the task's own outcome.
    pub max_attempts: u32,
    /// The most interruptions (runs lost with their host) before the task
    /// ends [`Outcome::Interrupted`].
    pub max_interruptions: u32,
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
    /// Every attempt so far, oldest first: the runs that ended with the
    /// task's own outcome, and the one running now. A run lost with its
    /// host is not an attempt; it counts in `interruptions`.
    pub attempts: Vec<Attempt>,
    /// How many runs were lost with their host (a crash, a lost lease).
    pub interruptions: u32,
    /// The lease of the run in progress (state `running`).
    pub lease: Option<Lease>,
    /// A cancel was asked for while the task ran: its holder kills it, and
    /// a lost lease ends it cancelled rather than queued again.
    pub cancel_requested: bool,
    /// The final outcome (once final).
    pub outcome: Option<Outcome>,
    /// The output of the last run: in the record, or in a file of the
    /// store's when it is large.
    pub output: Payload,
    /// The log tail of the last run.
    pub log: String,
    /// The last progress the task reported.
    pub progress: Option<(u64, u64)>,
}

/// The hold of one host on one running task.
///
/// A task is claimed under a lease, and only the holder of the lease may
/// record the run's result ([`Completion`]): a host whose lease was lost
/// (it died, paused or was cut off, and the task was queued again) is
/// refused, so a re-run's result is never overwritten. `token` is new for
/// every claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    /// The task held.
    pub task: TaskId,
    /// Names this claim; a later claim of the same task has another.
    pub token: u64,
    /// When the lease ends unless renewed.
    pub expires_at: Millis,
}

/// How a run ended, as the lease holder reports it: what
/// [`TaskRecord::complete`] applies.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// How the run ended.
    pub outcome: Outcome,
    /// Its output.
    pub output: Payload,
    /// Its log tail.
    pub log: String,
    /// The last progress it reported.
    pub progress: Option<(u64, u64)>,
    /// Its wall time in microseconds.
    pub duration_us: u64,
    /// Fuel it consumed.
    pub fuel_consumed: Option<u64>,
    /// When the run started: the attempt's start, for a task claimed ahead
    /// whose record has no attempt open ([`TaskRecord::claim_ahead`]).
    pub started_at: Millis,
    /// When the run ended.
    pub at: Millis,
}

impl TaskRecord {
    /// A new task as submitted: `spec` resolved against `now`, naming
    /// `module` (already stored), running under `limits`. The one place a
    /// record is made; `seq` is left 0 for the backend to assign when it
    /// stores the task.
    pub fn new(spec: TaskSpec, module: ModuleHash, limits: Limits, now: Millis) -> Self {
        let run_at = resolve_time(spec.start, now);
        TaskRecord {
            id: TaskId::at(now),
            module,
            input: Payload::Inline(spec.input),
            priority: spec.priority,
            limits,
            max_attempts: spec.max_attempts,
            max_interruptions: spec.max_interruptions,
            backoff: spec.backoff,
            run_at,
            expires_at: spec.expires.map(|e| resolve_time(e, now)),
            idempotency_key: spec.idempotency_key,
            labels: spec.labels,
            state: if run_at > now {
                TaskState::Scheduled
            } else {
                TaskState::Queued
            },
            seq: 0,
            submitted_at: now,
            updated_at: now,
            finished_at: None,
            attempts: Vec::new(),
            interruptions: 0,
            lease: None,
            cancel_requested: false,
            outcome: None,
            output: Payload::default(),
            log: String::new(),
            progress: None,
        }
    }

    /// Whether the task waits to run: queued or scheduled.
    pub fn is_waiting(&self) -> bool {
        matches!(self.state, TaskState::Queued | TaskState::Scheduled)
    }

    /// Whether `lease` is the one this task runs under now.
    pub fn is_held_by(&self, lease: &Lease) -> bool {
        self.state == TaskState::Running && self.lease.is_some_and(|l| l.token == lease.token)
    }

    /// `queued → running` under `lease`: a new attempt starts.
    pub fn start(&mut self, lease: Lease, now: Millis) {
        debug_assert_eq!(self.state, TaskState::Queued);
        self.state = TaskState::Running;
        self.updated_at = now;
        self.lease = Some(lease);
        self.open_attempt(now);
    }

    /// `queued → running` under `lease`, claimed ahead of a free worker:
    /// held, and shown `running`, but no attempt is opened, since the run
    /// may start later or not at all (the claim goes back when the pool
    /// stops, pauses, or its host dies). The worker that runs it opens the
    /// attempt in its own copy ([`TaskRecord::begin`]), and the run's end
    /// stores it ([`TaskRecord::complete`]).
    ///
    /// A claim ahead lost with its host counts an interruption but never
    /// ends the task ([`TaskRecord::interrupt`]), since its run may never
    /// have started. So a task is claimed ahead only while its
    /// interruptions are below `max_interruptions`
    /// ([`TaskRecord::may_claim_ahead`]); otherwise this starts it as
    /// [`TaskRecord::start`] does, its attempt stored before it runs, and a
    /// task that kills its host ends at the next loss.
    pub fn claim_ahead(&mut self, lease: Lease, now: Millis) {
        debug_assert_eq!(self.state, TaskState::Queued);
        if !self.may_claim_ahead() {
            self.start(lease, now);
            return;
        }
        self.state = TaskState::Running;
        self.updated_at = now;
        self.lease = Some(lease);
    }

    /// Whether the task may be claimed ahead of a free worker
    /// ([`TaskRecord::claim_ahead`]): fewer interruptions than its most.
    pub fn may_claim_ahead(&self) -> bool {
        self.interruptions < self.max_interruptions
    }

    /// Whether the record holds the attempt of a run in progress: a task
    /// claimed for a free worker does from its claim; one claimed ahead
    /// does not ([`TaskRecord::claim_ahead`]).
    pub fn has_open_attempt(&self) -> bool {
        self.attempts.last().is_some_and(|a| a.outcome.is_none())
    }

    /// A run of a running task starts now: opens its attempt if the claim
    /// did not (a claim ahead). In the runner's own copy of the record;
    /// the store learns of the attempt with the run's end.
    pub fn begin(&mut self, now: Millis) {
        if self.state == TaskState::Running && !self.has_open_attempt() {
            self.open_attempt(now);
        }
    }

    fn open_attempt(&mut self, now: Millis) {
        let number = u32::try_from(self.attempts.len() + 1).unwrap_or(u32::MAX);
        self.attempts.push(Attempt {
            number,
            outcome: None,
            started_at: now,
            duration_us: 0,
            fuel_consumed: None,
        });
    }

    /// `running →` whatever the run's end makes of the task: succeeded;
    /// cancelled (the run was killed by a cancel, or a cancel was asked for
    /// and the run failed); scheduled again after its backoff when the
    /// outcome is retryable and attempts are left; failed otherwise.
    pub fn complete(&mut self, run: Completion) {
        let Completion {
            outcome,
            output,
            log,
            progress,
            duration_us,
            fuel_consumed,
            started_at,
            at,
        } = run;
        if !self.has_open_attempt() {
            self.open_attempt(started_at);
        }
        if let Some(attempt) = self.attempts.last_mut() {
            attempt.outcome = Some(outcome.clone());
            attempt.duration_us = duration_us;
            attempt.fuel_consumed = fuel_consumed;
        }
        self.output = output;
        self.log = log;
        self.progress = progress.or(self.progress);
        self.updated_at = at;
        self.lease = None;
        let attempts = u32::try_from(self.attempts.len()).unwrap_or(u32::MAX);
        let next = if outcome.is_success() {
            TaskState::Succeeded
        } else if outcome == Outcome::Cancelled || self.cancel_requested {
            TaskState::Cancelled
        } else if outcome.is_retryable() && attempts < self.max_attempts {
            TaskState::Scheduled
        } else {
            TaskState::Failed
        };
        self.state = next;
        if next == TaskState::Scheduled {
            let wait = u64::try_from(self.backoff.delay(attempts).as_millis()).unwrap_or(u64::MAX);
            self.run_at = at.saturating_add(wait);
        } else {
            let outcome = if next == TaskState::Cancelled {
                Outcome::Cancelled
            } else {
                outcome
            };
            self.finish(Some(outcome), at);
        }
    }

    /// `running → queued` without counting anything: the holder let go
    /// (a graceful stop). The run in progress is dropped from the history.
    /// A task whose cancel was asked for ends cancelled instead.
    pub fn release(&mut self, now: Millis) {
        self.drop_running_attempt();
        self.lease = None;
        self.updated_at = now;
        if self.cancel_requested {
            self.state = TaskState::Cancelled;
            self.finish(Some(Outcome::Cancelled), now);
        } else {
            self.state = TaskState::Queued;
        }
    }

    /// `running → queued` because the lease was lost (the host died, or did
    /// not renew in time): one more interruption. At `max_interruptions`
    /// the task ends failed, [`Outcome::Interrupted`]; a task whose cancel
    /// was asked for ends cancelled. A claim ahead with no attempt stored
    /// ([`TaskRecord::claim_ahead`]) counts too, but never ends the task:
    /// its run may not have started.
    pub fn interrupt(&mut self, now: Millis) {
        let started = self.has_open_attempt();
        self.interruptions = self.interruptions.saturating_add(1);
        self.release(now);
        if started
            && self.state == TaskState::Queued
            && self.interruptions >= self.max_interruptions
        {
            self.state = TaskState::Failed;
            self.finish(Some(Outcome::Interrupted(self.interruptions)), now);
        }
    }

    /// A waiting task `→ cancelled`.
    pub fn cancel_waiting(&mut self, now: Millis) {
        self.state = TaskState::Cancelled;
        self.updated_at = now;
        self.finish(Some(Outcome::Cancelled), now);
    }

    /// A waiting task `→ expired` (it never started in time).
    pub fn expire(&mut self, now: Millis) {
        self.state = TaskState::Expired;
        self.updated_at = now;
        self.finish(None, now);
    }

    /// A scheduled task whose time came `→ queued`.
    pub fn promote(&mut self, now: Millis) {
        self.state = TaskState::Queued;
        self.updated_at = now;
    }

    fn finish(&mut self, outcome: Option<Outcome>, now: Millis) {
        self.outcome = outcome;
        self.finished_at = Some(now);
        self.lease = None;
    }

    fn drop_running_attempt(&mut self) {
        if self.has_open_attempt() {
            self.attempts.pop();
        }
    }

    /// The result, once the task is final, with its output when the record
    /// holds it. An output kept in a file is left empty here: read it with
    /// [`Backend::read_payload`](crate::backend::Backend::read_payload) and
    /// [`TaskRecord::result_with`], as [`Pool::result`](crate::Pool::result)
    /// does.
    pub fn result(&self) -> Option<TaskResult> {
        self.result_with(self.output.inline().map(<[u8]>::to_vec).unwrap_or_default())
    }

    /// The result, once the task is final, with `output` as its output.
    pub fn result_with(&self, output: Vec<u8>) -> Option<TaskResult> {
        self.state.is_final().then(|| {
            self.make_result(
                self.outcome.clone(),
                output,
                self.log.clone(),
                self.attempts.clone(),
            )
        })
    }

    /// [`TaskRecord::result_with`], taking the record: its outcome, log and
    /// history move into the result instead of being copied.
    pub fn into_result_with(mut self, output: Vec<u8>) -> Option<TaskResult> {
        self.take_result_with(output)
    }

    /// [`TaskRecord::into_result_with`] on a record the caller keeps (a
    /// boxed one, not moved out of its box): its outcome, log and history
    /// are taken out of it.
    pub(crate) fn take_result_with(&mut self, output: Vec<u8>) -> Option<TaskResult> {
        if !self.state.is_final() {
            return None;
        }
        let outcome = self.outcome.take();
        let log = std::mem::take(&mut self.log);
        let attempts = std::mem::take(&mut self.attempts);
        Some(self.make_result(outcome, output, log, attempts))
    }

    /// The result of this task if it is final and its output is in the
    /// record: what the result holds (the output, the log, the attempts)
    /// copied, the record left as it is.
    pub(crate) fn result_copy(&self) -> Option<TaskResult> {
        if !self.state.is_final() {
            return None;
        }
        let output = self.output.inline()?.to_vec();
        Some(self.make_result(
            self.outcome.clone(),
            output,
            self.log.clone(),
            self.attempts.clone(),
        ))
    }

    /// The result of this final task, of these parts.
    fn make_result(
        &self,
        outcome: Option<Outcome>,
        output: Vec<u8>,
        log: String,
        attempts: Vec<Attempt>,
    ) -> TaskResult {
        TaskResult {
            id: self.id,
            state: self.state,
            outcome,
            output,
            log,
            interruptions: self.interruptions,
            duration_us: attempts.iter().map(|a| a.duration_us).sum(),
            fuel_consumed: attempts
                .iter()
                .filter_map(|a| a.fuel_consumed)
                .reduce(u64::saturating_add),
            submitted_at: self.submitted_at,
            started_at: attempts.first().map(|a| a.started_at),
            finished_at: self.finished_at.unwrap_or(self.updated_at),
            attempts,
        }
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
    /// How many runs were lost with their host, and run again.
    pub interruptions: u32,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_taken_from_the_record_is_the_result_copied_from_it() {
        let module = ModuleHash::from_bytes([3; 32]);
        let spec = crate::TaskSpec::new(module, b"in".to_vec());
        let mut record = TaskRecord::new(spec, module, Limits::default(), 10);
        assert_eq!(record.clone().into_result_with(Vec::new()), None, "queued");
        record.begin(20);
        record.complete(Completion {
            outcome: Outcome::Success,
            output: Payload::Inline(b"out".to_vec()),
            log: "a log line\n".into(),
            progress: None,
            duration_us: 7,
            fuel_consumed: Some(40),
            started_at: 20,
            at: 30,
        });
        let copied = record.result_with(b"out".to_vec()).expect("final");
        assert_eq!(copied.log, "a log line\n");
        assert_eq!(copied.attempts.len(), 1);
        assert_eq!(copied.duration_us, 7);
        assert_eq!(copied.fuel_consumed, Some(40));
        assert_eq!(copied.started_at, Some(20));
        assert_eq!(record.into_result_with(b"out".to_vec()), Some(copied));
    }
}
