//! The library's error type.

use std::path::PathBuf;

/// What went wrong in a call to the wpool library.
///
/// Every message says what happened and, where there is one, what to do
/// about it. Task failures are not errors: they are [`Outcome`]s of a run.
///
/// [`Outcome`]: crate::Outcome
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not a module wpool can run. The message names the
    /// problem (not WebAssembly, fails validation, imports something the
    /// host does not provide, lacks the entry point, implements another
    /// world).
    #[error("invalid module: {0}")]
    InvalidModule(String),

    /// A module's run settings are malformed; the message names the field
    /// and what is accepted (see [`ModuleSettings`](crate::ModuleSettings)).
    #[error("invalid module settings: {0}")]
    InvalidSettings(String),

    /// No module with this hash has been registered.
    #[error("unknown module {0}: register its bytes first")]
    UnknownModule(crate::ModuleHash),

    /// The module cannot be deleted: unfinished tasks use it.
    #[error("module {0} is used by unfinished tasks; cancel them or wait until they finish")]
    ModuleInUse(crate::ModuleHash),

    /// A limit given for a task or the pool is out of range.
    #[error("invalid limit `{name}`: {reason}")]
    InvalidLimit {
        /// The limit's name, as in the configuration (`timeout`, `memory`, ...).
        name: &'static str,
        /// Why the value is refused, and the accepted range.
        reason: String,
    },

    /// The engine could not be built from the configuration.
    #[error("invalid engine configuration: {0}")]
    Config(String),

    /// A task spec or query is malformed; the message says which field.
    #[error("invalid task: {0}")]
    InvalidTask(String),

    /// No task has this id (it never existed, or retention removed it).
    #[error("no task {0}")]
    NotFound(crate::TaskId),

    /// The queue holds as many tasks as the pool allows
    /// ([`PoolConfig::max_queued`](crate::PoolConfig::max_queued)).
    #[error(
        "the queue is full: {0} waiting, the most `max_queued` allows; retry later, or raise \
         it (`wpool serve --max-queued`)"
    )]
    QueueFull(usize),

    /// The task is not final yet (its state is given): it cannot be
    /// retried or deleted; cancel it first, or wait for it.
    #[error("task {0} is {1}, not final: wait for it to end, or cancel it first")]
    NotFinal(crate::TaskId, crate::TaskState),

    /// The store's output files hold as many bytes as the pool allows
    /// ([`PoolConfig::max_stored_output`](crate::PoolConfig::max_stored_output)):
    /// `(held, allowed)`.
    #[error(
        "the stored task outputs take {0} bytes, the most this pool keeps ({1}); retry once \
         retention has removed old results, or lower `retention`/`max_results`, or raise \
         `max_stored_output`"
    )]
    StorageFull(u64, u64),

    /// The pool no longer accepts work (it is closing or stopped).
    #[error("the pool is shut down and accepts no new tasks")]
    ShutDown,

    /// The store failed (I/O error, disk full, corruption). What was being
    /// done did not happen; what was stored before is intact.
    #[error("store: {0}")]
    Store(String),

    /// The data directory is in use: another process holds it (a running
    /// `wpool serve`, say), or a store this process opened on it earlier
    /// is still open. The message names the directory and, when known,
    /// the process. Stop that process or close that store, or use another
    /// directory.
    #[error("store: {0}")]
    InUse(String),

    /// The store is out of reach for now (a PostgreSQL server that is
    /// down, restarting or cut off): nothing was changed that the caller
    /// was told of. Retry later; the pool itself waits for the store and
    /// carries on when it is back. The message names the store and the
    /// cause.
    #[error("store unavailable: {0}")]
    Unavailable(String),

    /// An I/O error on a file the library was asked to read or write.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// An unexpected failure inside the host (not the task's fault).
    #[error("host error: {0}")]
    Host(String),
}

impl Error {
    /// Whether the store was out of reach: trying again later may work
    /// ([`Error::Unavailable`]).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }

    /// Whether a data directory could not be opened because it is in use
    /// ([`Error::InUse`]).
    pub fn is_in_use(&self) -> bool {
        matches!(self, Error::InUse(_))
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
