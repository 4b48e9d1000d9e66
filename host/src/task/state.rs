//! Task states.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Where a task is in its life.
///
/// `queued | scheduled → running → succeeded | failed | cancelled | expired`,
/// `running → scheduled` again when a retry is due, and `running → queued`
/// when the run's lease is lost (its host died: an interruption) or its
/// host let go of it (a graceful stop).
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
