//! The stored form of a task, spelled out here rather than taken from the
//! public types' serde attributes: those serve JSON (an adjacently tagged
//! [`Outcome`](crate::Outcome), a hash as hex), and a change to them must not
//! silently change what is on disk. Changing this module means a new
//! [`SCHEMA_VERSION`](super::SCHEMA_VERSION). Enums are stored by explicit
//! codes, never by declaration order.
//!
//! Versions of a task record (the envelope's version byte):
//! - 1: [`StoredTaskV1`], written by schema 1.
//! - 2: [`StoredTask`], the version 1 fields followed by [`StoredLease`]
//!   (interruptions and the lease, schema 2). A version 1 record reads as
//!   a task never interrupted, holding no lease; it is rewritten as
//!   version 2 the next time the task changes.
//! - 3: [`StoredTask`], version 2 followed by where the input and the
//!   output are when they are not in the record ([`StoredFile`], schema 3:
//!   large inputs and outputs in files beside the database). Versions 1
//!   and 2 read as payloads held in the record, which they are.
//!
//! Schemas 4 (the write-ahead log beside the database) and 5 (its records
//! of a claim and an end without the input) write version 3 records.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::Tally;
use crate::task::{
    Attempt, Backoff, DEFAULT_MAX_INTERRUPTIONS, Lease, Payload, TaskId, TaskRecord, TaskState,
};
use crate::{Limits, ModuleHash, Outcome};

/// A task record, version 3.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredTask {
    base: StoredTaskV1,
    lease: StoredLease,
    /// Set when the input is in a file (the base's input is empty then).
    input_file: Option<StoredFile>,
    /// Set when the output is in a file (the base's output is empty then).
    output_file: Option<StoredFile>,
}

/// A task record, version 2.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredTaskV2 {
    base: StoredTaskV1,
    lease: StoredLease,
}

/// A payload kept in a file: the lease token of the run that wrote it (0
/// for an input), which with the task id names the file, and its size.
#[derive(Serialize, Deserialize)]
struct StoredFile {
    token: u64,
    len: u64,
}

/// What version 2 added to a task record.
#[derive(Serialize, Deserialize)]
struct StoredLease {
    max_interruptions: u32,
    interruptions: u32,
    /// `(token, expires_at)` of the lease the task runs under.
    lease: Option<(u64, u64)>,
    cancel_requested: bool,
}

/// A task record, version 1.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredTaskV1 {
    id: [u8; 16],
    module: [u8; 32],
    // The same bytes as a sequence of `u8`s would be (a length, then
    // the bytes), written and read in one piece.
    #[serde(with = "serde_bytes")]
    input: Vec<u8>,
    priority: i32,
    limits: StoredLimits,
    max_attempts: u32,
    backoff: StoredBackoff,
    run_at: u64,
    expires_at: Option<u64>,
    idempotency_key: Option<String>,
    labels: BTreeMap<String, String>,
    state: u8,
    seq: u64,
    submitted_at: u64,
    updated_at: u64,
    finished_at: Option<u64>,
    attempts: Vec<StoredAttempt>,
    outcome: Option<StoredOutcome>,
    // The same bytes as a sequence of `u8`s would be (a length, then
    // the bytes), written and read in one piece.
    #[serde(with = "serde_bytes")]
    output: Vec<u8>,
    log: String,
    progress: Option<(u64, u64)>,
}

#[derive(Serialize, Deserialize)]
struct StoredLimits {
    timeout_ms: u64,
    fuel: Option<u64>,
    memory: u64,
    max_output: u64,
    max_log: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredBackoff {
    initial_ms: u64,
    max_ms: u64,
    multiplier: f64,
    jitter: bool,
}

#[derive(Serialize, Deserialize)]
struct StoredAttempt {
    number: u32,
    outcome: Option<StoredOutcome>,
    started_at: u64,
    duration_us: u64,
    fuel_consumed: Option<u64>,
}

/// `(code, number, text)`: the code names the variant.
#[derive(Serialize, Deserialize)]
struct StoredOutcome(u8, i64, String);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(super) fn state_code(state: TaskState) -> u8 {
    match state {
        TaskState::Queued => 1,
        TaskState::Scheduled => 2,
        TaskState::Running => 3,
        TaskState::Succeeded => 4,
        TaskState::Failed => 5,
        TaskState::Cancelled => 6,
        TaskState::Expired => 7,
    }
}

fn state_from(code: u8) -> Result<TaskState, String> {
    Ok(match code {
        1 => TaskState::Queued,
        2 => TaskState::Scheduled,
        3 => TaskState::Running,
        4 => TaskState::Succeeded,
        5 => TaskState::Failed,
        6 => TaskState::Cancelled,
        7 => TaskState::Expired,
        other => return Err(format!("unknown task state code {other}")),
    })
}

fn outcome(o: &Outcome) -> StoredOutcome {
    let text = |code, s: &String| StoredOutcome(code, 0, s.clone());
    let unit = |code| StoredOutcome(code, 0, String::new());
    match o {
        Outcome::Success => unit(1),
        Outcome::Failed(s) => text(2, s),
        Outcome::Exit(code) => StoredOutcome(3, i64::from(*code), String::new()),
        Outcome::Trap(s) => text(4, s),
        Outcome::Timeout => unit(5),
        Outcome::OutOfFuel => unit(6),
        Outcome::MemoryLimit => unit(7),
        Outcome::OutputTooLarge => unit(8),
        Outcome::Cancelled => unit(9),
        Outcome::InvalidModule(s) => text(10, s),
        Outcome::HostError(s) => text(11, s),
        Outcome::Interrupted(times) => StoredOutcome(12, i64::from(*times), String::new()),
    }
}

fn outcome_from(o: StoredOutcome) -> Result<Outcome, String> {
    let StoredOutcome(code, number, text) = o;
    Ok(match code {
        1 => Outcome::Success,
        2 => Outcome::Failed(text),
        3 => Outcome::Exit(
            u32::try_from(number).map_err(|_| format!("exit code {number} out of range"))?,
        ),
        4 => Outcome::Trap(text),
        5 => Outcome::Timeout,
        6 => Outcome::OutOfFuel,
        7 => Outcome::MemoryLimit,
        8 => Outcome::OutputTooLarge,
        9 => Outcome::Cancelled,
        10 => Outcome::InvalidModule(text),
        11 => Outcome::HostError(text),
        12 => Outcome::Interrupted(
            u32::try_from(number).map_err(|_| format!("interruptions {number} out of range"))?,
        ),
        other => return Err(format!("unknown outcome code {other}")),
    })
}

impl From<&TaskRecord> for StoredTask {
    fn from(t: &TaskRecord) -> Self {
        StoredTask {
            base: StoredTaskV1::from(t),
            lease: StoredLease {
                max_interruptions: t.max_interruptions,
                interruptions: t.interruptions,
                lease: t.lease.map(|l| (l.token, l.expires_at)),
                cancel_requested: t.cancel_requested,
            },
            input_file: stored_file(&t.input),
            output_file: stored_file(&t.output),
        }
    }
}

impl TryFrom<StoredTask> for TaskRecord {
    type Error = String;

    fn try_from(t: StoredTask) -> Result<Self, String> {
        let mut record = TaskRecord::try_from(StoredTaskV2 {
            base: t.base,
            lease: t.lease,
        })?;
        if let Some(file) = t.input_file {
            record.input = Payload::File {
                token: file.token,
                len: file.len,
            };
        }
        if let Some(file) = t.output_file {
            record.output = Payload::File {
                token: file.token,
                len: file.len,
            };
        }
        Ok(record)
    }
}

fn stored_file(payload: &Payload) -> Option<StoredFile> {
    match *payload {
        Payload::Inline(_) => None,
        Payload::File { token, len } => Some(StoredFile { token, len }),
    }
}

impl TryFrom<StoredTaskV2> for TaskRecord {
    type Error = String;

    fn try_from(t: StoredTaskV2) -> Result<Self, String> {
        let mut record = TaskRecord::try_from(t.base)?;
        record.max_interruptions = t.lease.max_interruptions;
        record.interruptions = t.lease.interruptions;
        record.lease = t.lease.lease.map(|(token, expires_at)| Lease {
            task: record.id,
            token,
            expires_at,
        });
        record.cancel_requested = t.lease.cancel_requested;
        Ok(record)
    }
}

impl From<&TaskRecord> for StoredTaskV1 {
    fn from(t: &TaskRecord) -> Self {
        StoredTaskV1 {
            id: t.id.to_bytes(),
            module: *t.module.as_bytes(),
            input: t.input.inline().map(<[u8]>::to_vec).unwrap_or_default(),
            priority: t.priority,
            limits: StoredLimits {
                timeout_ms: millis(t.limits.timeout),
                fuel: t.limits.fuel,
                memory: t.limits.memory,
                max_output: t.limits.max_output,
                max_log: t.limits.max_log,
            },
            max_attempts: t.max_attempts,
            backoff: StoredBackoff {
                initial_ms: millis(t.backoff.initial),
                max_ms: millis(t.backoff.max),
                multiplier: t.backoff.multiplier,
                jitter: t.backoff.jitter,
            },
            run_at: t.run_at,
            expires_at: t.expires_at,
            idempotency_key: t.idempotency_key.clone(),
            labels: t.labels.clone(),
            state: state_code(t.state),
            seq: t.seq,
            submitted_at: t.submitted_at,
            updated_at: t.updated_at,
            finished_at: t.finished_at,
            attempts: t
                .attempts
                .iter()
                .map(|a| StoredAttempt {
                    number: a.number,
                    outcome: a.outcome.as_ref().map(outcome),
                    started_at: a.started_at,
                    duration_us: a.duration_us,
                    fuel_consumed: a.fuel_consumed,
                })
                .collect(),
            outcome: t.outcome.as_ref().map(outcome),
            output: t.output.inline().map(<[u8]>::to_vec).unwrap_or_default(),
            log: t.log.clone(),
            progress: t.progress,
        }
    }
}

impl TryFrom<StoredTaskV1> for TaskRecord {
    type Error = String;

    fn try_from(t: StoredTaskV1) -> Result<Self, String> {
        Ok(TaskRecord {
            id: TaskId::from_bytes(t.id),
            module: ModuleHash::from_bytes(t.module),
            input: Payload::Inline(t.input),
            priority: t.priority,
            limits: Limits {
                timeout: Duration::from_millis(t.limits.timeout_ms),
                fuel: t.limits.fuel,
                memory: t.limits.memory,
                max_output: t.limits.max_output,
                max_log: t.limits.max_log,
            },
            max_attempts: t.max_attempts,
            max_interruptions: DEFAULT_MAX_INTERRUPTIONS,
            backoff: Backoff {
                initial: Duration::from_millis(t.backoff.initial_ms),
                max: Duration::from_millis(t.backoff.max_ms),
                multiplier: t.backoff.multiplier,
                jitter: t.backoff.jitter,
            },
            run_at: t.run_at,
            expires_at: t.expires_at,
            idempotency_key: t.idempotency_key,
            labels: t.labels,
            state: state_from(t.state)?,
            seq: t.seq,
            submitted_at: t.submitted_at,
            updated_at: t.updated_at,
            finished_at: t.finished_at,
            attempts: t
                .attempts
                .into_iter()
                .map(|a| {
                    Ok(Attempt {
                        number: a.number,
                        outcome: a.outcome.map(outcome_from).transpose()?,
                        started_at: a.started_at,
                        duration_us: a.duration_us,
                        fuel_consumed: a.fuel_consumed,
                    })
                })
                .collect::<Result<_, String>>()?,
            interruptions: 0,
            lease: None,
            cancel_requested: false,
            outcome: t.outcome.map(outcome_from).transpose()?,
            output: Payload::Inline(t.output),
            log: t.log,
            progress: t.progress,
        })
    }
}

/// The counts as stored: a sequence of `(state code, tasks)` for the
/// states that hold tasks, encoded as a `Vec<(u8, u64)>` of them is,
/// without making one (every transition writes the counts).
pub(super) struct StoredCounts<'a>(pub(super) &'a Tally);

impl Serialize for StoredCounts<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let len = self.0.nonzero().count();
        let mut seq = serializer.serialize_seq(Some(len))?;
        for (state, n) in self.0.nonzero() {
            seq.serialize_element(&(state_code(state), n))?;
        }
        seq.end()
    }
}

pub(super) fn counts_from(stored: Vec<(u8, u64)>) -> Result<Tally, String> {
    let mut counts = Tally::default();
    for (code, n) in stored {
        counts.set(state_from(code)?, n);
    }
    Ok(counts)
}
