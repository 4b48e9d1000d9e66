//! What a run of a task ended with.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a run of a task ended. Exactly one per run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// The task finished and produced its output.
    Success,
    /// A component's `run` returned `err(message)`.
    Failed(String),
    /// A command exited with a code that does not mean success: any value a
    /// guest can pass to `proc_exit`, 0 to 2^32-1 (0 and a module's success
    /// codes, see [`ModuleSettings::success_codes`](crate::ModuleSettings::success_codes),
    /// are [`Outcome::Success`]). A `wasi:cli/run` component that returns
    /// `err` or calls `exit(err)` exits with 1.
    Exit(u32),
    /// The guest trapped (`unreachable`, stack overflow, out-of-bounds
    /// access, a bad pointer passed to a WASI call, ...). The message names
    /// the trap; the wasm backtrace is at the end of the log.
    Trap(String),
    /// The wall-clock timeout passed and the task was killed.
    Timeout,
    /// The fuel budget ran out.
    OutOfFuel,
    /// The task failed after its memory limit refused a `memory.grow`.
    MemoryLimit,
    /// The task wrote more output than its limit allows.
    OutputTooLarge,
    /// The task was cancelled (before or while running).
    Cancelled,
    /// The module could not be run at all.
    InvalidModule(String),
    /// The host failed to run the task (not the task's fault).
    HostError(String),
    /// The task was running this many times when its host died or lost
    /// its lease, its `max_interruptions`: it is not run again, so that a
    /// task that takes its host down cannot do so for ever.
    Interrupted(u32),
}

impl Outcome {
    /// Whether the task succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// Whether running the task again could end differently. Outcomes that
    /// are fixed by the module or were asked for (an invalid module, output
    /// past its limit, a cancel) are not worth a retry.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            Outcome::Success
                | Outcome::InvalidModule(_)
                | Outcome::OutputTooLarge
                | Outcome::Cancelled
                | Outcome::Interrupted(_)
        )
    }

    /// A short, stable name for the outcome: `success`, `timeout`,
    /// `out_of_fuel`, ... (the same as the `kind` of its JSON form).
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failed(_) => "failed",
            Outcome::Exit(_) => "exit",
            Outcome::Trap(_) => "trap",
            Outcome::Timeout => "timeout",
            Outcome::OutOfFuel => "out_of_fuel",
            Outcome::MemoryLimit => "memory_limit",
            Outcome::OutputTooLarge => "output_too_large",
            Outcome::Cancelled => "cancelled",
            Outcome::InvalidModule(_) => "invalid_module",
            Outcome::HostError(_) => "host_error",
            Outcome::Interrupted(_) => "interrupted",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Success => f.write_str("succeeded"),
            Outcome::Failed(message) => write!(f, "failed: {message}"),
            Outcome::Exit(code) => write!(f, "exited with code {code}"),
            Outcome::Trap(message) => write!(f, "trapped: {message}"),
            Outcome::Timeout => f.write_str("killed at its timeout"),
            Outcome::OutOfFuel => f.write_str("ran out of fuel"),
            Outcome::MemoryLimit => f.write_str("hit its memory limit"),
            Outcome::OutputTooLarge => f.write_str("wrote more output than its limit"),
            Outcome::Cancelled => f.write_str("cancelled"),
            Outcome::InvalidModule(message) => write!(f, "invalid module: {message}"),
            Outcome::HostError(message) => write!(f, "host error: {message}"),
            Outcome::Interrupted(times) => write!(
                f,
                "interrupted {times} times: its host stopped while it ran, every time"
            ),
        }
    }
}

/// Everything one run of a task produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    /// How the run ended.
    pub outcome: Outcome,
    /// The output (stdout of a command, the `ok` value of a component).
    /// Empty unless the outcome is a success, except for a command that
    /// failed after writing some; an `output_too_large` failure keeps only
    /// the last [`TOO_LARGE_TAIL`](crate::task::TOO_LARGE_TAIL) bytes.
    pub output: Vec<u8>,
    /// The tail of the task's log (stderr and `log` calls), at most
    /// [`Limits::max_log`](crate::Limits::max_log) bytes, lossily UTF-8.
    pub log: String,
    /// Fuel the run consumed, when the engine meters fuel.
    pub fuel_consumed: Option<u64>,
    /// Wall time from the start of instantiation to the end of the run.
    #[serde(with = "micros")]
    pub duration: Duration,
    /// The last progress the task reported, as `(done, total)`.
    pub progress: Option<(u64, u64)>,
}

impl RunReport {
    pub(crate) fn without_run(outcome: Outcome) -> Self {
        RunReport {
            outcome,
            output: Vec::new(),
            log: String::new(),
            fuel_consumed: None,
            duration: Duration::ZERO,
            progress: None,
        }
    }
}

mod micros {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_micros(u64::deserialize(d)?))
    }
}
