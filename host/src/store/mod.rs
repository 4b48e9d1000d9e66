//! Where the embedded backend keeps tasks, results and modules: the
//! [`Store`] trait, in memory ([`MemoryStore`]) or on disk ([`SledStore`]).
//!
//! A store holds records; it does not schedule. The
//! [`EmbeddedBackend`](crate::backend::EmbeddedBackend) keeps the queue's
//! index over a store and writes every transition through it.
//!
//! Every state change of a task is one call, applied atomically: a reader
//! never sees a task in two states or in none, and the per-state counts
//! always add up to the number of tasks.

mod memory;
mod ordered;
mod sled;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

pub use self::sled::{
    CheckReport, FlushStats, SCHEMA_VERSION, SizeClass, SledOptions, SledStore, SyncMode,
};
pub use memory::MemoryStore;

use crate::task::{Millis, Payload, Slot, TaskId, TaskRecord, TaskState};
use crate::{ModuleHash, ModuleSettings, Result};

/// What [`Store::insert`] did with one task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// The task is new and stored.
    New,
    /// Its idempotency key already belongs to this task; nothing was written.
    Existing(TaskId),
}

/// Which tasks [`Store::list`] returns: newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// Only tasks carrying all these labels.
    pub labels: BTreeMap<String, String>,
    /// Only tasks older than this one (the cursor of the previous page).
    pub before: Option<TaskId>,
    /// At most this many. 0 means the default page size (100).
    pub limit: usize,
}

impl TaskFilter {
    /// The page size this filter asks for.
    pub fn page_size(&self) -> usize {
        match self.limit {
            0 => 100,
            n => n.min(10_000),
        }
    }

    /// Whether `task` passes the state and label filters.
    pub fn matches(&self, task: &TaskRecord) -> bool {
        self.state.is_none_or(|s| s == task.state)
            && self
                .labels
                .iter()
                .all(|(k, v)| task.labels.get(k) == Some(v))
    }
}

/// The number of tasks in each state. The backends list the states that
/// hold tasks; [`StateCounts::get`] answers 0 for any other.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateCounts(pub BTreeMap<TaskState, u64>);

impl StateCounts {
    /// Tasks in `state`.
    pub fn get(&self, state: TaskState) -> u64 {
        self.0.get(&state).copied().unwrap_or(0)
    }

    /// All tasks.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// The error for a batch of tasks that names one task twice: refused
/// whole, as every store refuses it.
pub(crate) fn named_twice(id: &crate::TaskId) -> crate::Error {
    crate::Error::Store(format!(
        "task {id} is given twice in one batch: each task of a batch needs an id of its own"
    ))
}

/// The number of tasks in each state, as a store keeps it up to date: one
/// counter per state, moved at every transition without the map's
/// look-ups and allocations ([`StateCounts`] is the public form, made
/// when asked for).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally([u64; TaskState::ALL.len()]);

impl Tally {
    /// Tasks in `state`.
    pub(crate) fn get(&self, state: TaskState) -> u64 {
        self.0[state as usize]
    }

    /// One task left `from` (if any) for `to` (if any).
    pub(crate) fn moved(&mut self, from: Option<TaskState>, to: Option<TaskState>) {
        if let Some(from) = from {
            let n = &mut self.0[from as usize];
            *n = n.saturating_sub(1);
        }
        if let Some(to) = to {
            self.0[to as usize] += 1;
        }
    }

    /// The states that hold tasks, with how many.
    pub(crate) fn nonzero(&self) -> impl Iterator<Item = (TaskState, u64)> + '_ {
        TaskState::ALL
            .iter()
            .map(|state| (*state, self.get(*state)))
            .filter(|(_, n)| *n > 0)
    }

    /// Sets the tasks in `state` to `n`.
    pub(crate) fn set(&mut self, state: TaskState, n: u64) {
        self.0[state as usize] = n;
    }

    /// The public form: an entry for each state that holds tasks.
    pub(crate) fn counts(&self) -> StateCounts {
        StateCounts(self.nonzero().collect())
    }
}

/// A stored module.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredModule {
    /// Its hash.
    pub hash: ModuleHash,
    /// Its size in bytes.
    pub size: u64,
}

/// Durable (or not) storage of task records and modules, for the
/// [`EmbeddedBackend`](crate::backend::EmbeddedBackend).
///
/// Implementations apply each call atomically. The backend keeps its
/// scheduling index in memory and rebuilds it from [`Store::unfinished`]
/// when it opens, so a store only has to answer these calls.
#[async_trait::async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Stores a module's bytes under its hash (idempotent).
    fn put_module(&self, hash: &ModuleHash, bytes: &[u8]) -> Result<()>;
    /// A module's bytes.
    fn module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>>;
    /// Every stored module.
    fn modules(&self) -> Result<Vec<StoredModule>>;
    /// Removes a module unless an unfinished task uses it
    /// ([`Error::ModuleInUse`](crate::Error::ModuleInUse)), checked and done
    /// atomically with respect to [`Store::insert`]; `false` if there was
    /// none.
    fn delete_module(&self, hash: &ModuleHash) -> Result<bool>;

    /// The next submission sequence number (increasing, never reused).
    fn next_seq(&self) -> Result<u64>;
    /// Stores new tasks in one atomic write, each with its idempotency key
    /// if it has one. A task whose key is in use (before, or by an earlier
    /// task of the batch) is not stored: its answer names the key's holder.
    /// Refuses the whole batch, writing nothing, if a task names a module
    /// that is not stored ([`Error::UnknownModule`](crate::Error::UnknownModule)).
    fn insert(&self, tasks: &[TaskRecord]) -> Result<Vec<Inserted>>;
    /// [`Store::insert`] of one task, given rather than lent: a store that
    /// keeps its records in memory keeps this one, moved once into its
    /// own allocation. The default inserts a batch of one.
    fn insert_owned(&self, task: Box<TaskRecord>) -> Result<Inserted> {
        self.insert(std::slice::from_ref(&*task))?
            .into_iter()
            .next()
            .ok_or_else(|| {
                crate::Error::Store("the store gave no answer for the task inserted".into())
            })
    }
    /// Replaces a task's record if its stored state is `expected`
    /// (compare-and-swap); `false` if it was not.
    fn update(&self, task: &TaskRecord, expected: TaskState) -> Result<bool>;
    /// Changes the record of `id` with `change`, which gets the record as
    /// stored and returns whether it changed it (it must leave a record it
    /// refuses unchanged); the record as written, or `None` if there is no
    /// such task or `change` refused it. The default reads the record,
    /// then [`Store::update`]s it from the state read: `None` too if the
    /// task changed in between. A store that holds its records in memory
    /// changes it in place, with one look-up and one copy (the answer).
    fn update_with(
        &self,
        id: &TaskId,
        change: &mut dyn FnMut(&mut TaskRecord) -> bool,
    ) -> Result<Option<TaskRecord>> {
        let Some(mut record) = self.get(id)? else {
            return Ok(None);
        };
        let from = record.state;
        if !change(&mut record) || !self.update(&record, from)? {
            return Ok(None);
        }
        Ok(Some(record))
    }
    /// [`Store::update_with`], the record as written shared: a store that
    /// keeps its records in memory gives its own, not a copy (a change
    /// made while it is held writes a copy, and leaves the one held as it
    /// was). The default shares what `update_with` gives.
    fn update_shared(
        &self,
        id: &TaskId,
        change: &mut dyn FnMut(&mut TaskRecord) -> bool,
    ) -> Result<Option<Arc<TaskRecord>>> {
        Ok(self.update_with(id, change)?.map(Arc::new))
    }
    /// Whether the store holds its records in memory, as they are, so that
    /// [`Store::update_with`] changes a record where it is kept and a read
    /// decodes nothing: then the embedded backend keeps no copy of a
    /// running task's record of its own (it writes its end through
    /// `update_with`), and reads a record rather than ask its index
    /// first. `false` by default (the default `update_with` reads the
    /// record).
    fn changes_in_place(&self) -> bool {
        false
    }
    /// A task by id.
    fn get(&self, id: &TaskId) -> Result<Option<TaskRecord>>;
    /// A task by id if it is final (succeeded, failed, cancelled or
    /// expired); `None` if it is not, or there is no such task. The
    /// default reads it; a store in memory copies only a final one.
    fn get_final(&self, id: &TaskId) -> Result<Option<TaskRecord>> {
        Ok(self.get(id)?.filter(|record| record.state.is_final()))
    }
    /// Lends the record of `id` to `read` if it is final; whether it was.
    /// The default reads it with [`Store::get_final`]; a store in memory
    /// lends its own, so that nothing is copied but what `read` takes.
    fn read_final(&self, id: &TaskId, read: &mut dyn FnMut(&TaskRecord)) -> Result<bool> {
        Ok(self.get_final(id)?.map(|record| read(&record)).is_some())
    }
    /// The task holding an idempotency key.
    fn by_key(&self, key: &str) -> Result<Option<TaskId>>;
    /// Tasks matching `filter`, newest first.
    fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>>;
    /// Every task not yet final (queued, scheduled, running), in submission
    /// order.
    fn unfinished(&self) -> Result<Vec<TaskRecord>>;
    /// Whether any unfinished task uses `module`.
    fn module_in_use(&self, module: &ModuleHash) -> Result<bool>;
    /// How many tasks are in each state.
    fn counts(&self) -> Result<StateCounts>;
    /// Removes final tasks that finished before `before`, and beyond the
    /// `keep` most recent final tasks; returns how many were removed.
    fn purge_finished(&self, before: Millis, keep: Option<u64>) -> Result<u64>;
    /// Removes the tasks of `ids` that are final, in one atomic write (their
    /// payload files after it); returns the ids removed.
    fn remove_finished(&self, ids: &[TaskId]) -> Result<Vec<TaskId>>;
    /// Removes stored modules that no task references; returns how many.
    /// Stores that cannot tell keep everything (the default).
    fn gc_modules(&self) -> Result<u64> {
        Ok(0)
    }
    /// Stores a module's run settings, replacing any; default settings
    /// remove them. Durable once the next [`Store::flush`] completes.
    fn put_module_settings(&self, hash: &ModuleHash, settings: &ModuleSettings) -> Result<()>;
    /// A module's run settings, `None` if it has none.
    fn module_settings(&self, hash: &ModuleHash) -> Result<Option<ModuleSettings>>;

    /// Keeps a payload of `task`: its input (`token` 0), or the output of
    /// its run under the lease `token`. A store that keeps large payloads
    /// apart from its records writes one larger than
    /// [`INLINE_PAYLOAD`](crate::task::INLINE_PAYLOAD) to a file (durably,
    /// before returning) and answers [`Payload::File`]; the default keeps it
    /// in the record. The file is not yet named by any record:
    /// [`Store::discard_payload`] removes it if it never will be.
    fn keep_payload(
        &self,
        task: &TaskId,
        slot: Slot,
        token: u64,
        bytes: Vec<u8>,
    ) -> Result<Payload> {
        let _ = (task, slot, token);
        Ok(Payload::Inline(bytes))
    }
    /// Removes a payload kept by [`Store::keep_payload`] that no record
    /// names (its task was not stored, or its run's lease was lost).
    fn discard_payload(&self, task: &TaskId, slot: Slot, payload: &Payload) -> Result<()> {
        let _ = (task, slot, payload);
        Ok(())
    }
    /// The bytes of a payload as a record names it.
    fn read_payload(&self, task: &TaskId, slot: Slot, payload: &Payload) -> Result<Vec<u8>> {
        let _ = slot;
        match payload {
            Payload::Inline(bytes) => Ok(bytes.clone()),
            Payload::File { .. } => Err(crate::Error::Store(format!(
                "a payload of task {task} is a file, and this store keeps none"
            ))),
        }
    }
    /// The file holding a payload ([`Payload::File`]).
    fn payload_file(&self, task: &TaskId, slot: Slot, payload: &Payload) -> Option<PathBuf> {
        let _ = (task, slot, payload);
        None
    }
    /// Bytes of outputs kept in files, now.
    fn stored_output_bytes(&self) -> u64 {
        0
    }

    /// Makes every write so far durable; concurrent callers share flushes.
    async fn flush(&self) -> Result<()>;
    /// [`Store::flush`], blocking the thread: for callers outside async
    /// code.
    fn flush_blocking(&self) -> Result<()>;
    /// Whether [`Store::flush`] makes writes survive a crash.
    fn is_durable(&self) -> bool;
}
