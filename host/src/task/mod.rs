//! The task model: ids, states, module hashes, what is submitted
//! ([`TaskSpec`]), what is stored ([`TaskRecord`]) and what a finished task
//! gives ([`TaskResult`]).
//!
//! Everything else in the crate may use this module; it uses nothing of
//! theirs but the limits and outcomes its records carry.

mod hash;
mod id;
pub(crate) mod millis;
mod payload;
mod record;
mod spec;
mod state;

pub use hash::ModuleHash;
pub use id::TaskId;
pub(crate) use id::{IdHashing, IdMap, ModuleMap};
pub use payload::{INLINE_PAYLOAD, Payload, Slot, TOO_LARGE_TAIL};
pub use record::{Attempt, Completion, Lease, Millis, TaskRecord, TaskResult, now_millis};
pub use spec::{
    Backoff, DEFAULT_MAX_INTERRUPTIONS, MAX_ATTEMPTS, MAX_KEY_LEN, MAX_LABELS, ModuleRef, StartAt,
    TaskSpec,
};
pub use state::TaskState;
