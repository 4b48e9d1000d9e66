//! Queue backends: what owns the queue, and the contract every backend
//! keeps.
//!
//! The pool never decides on its own what runs: it asks its [`Backend`] to
//! claim the next ready tasks, runs them under the leases it was given,
//! and reports each run's end under that lease. Whether the queue lives in
//! this process ([`EmbeddedBackend`] over a [`MemoryStore`] or a
//! [`SledStore`](crate::store::SledStore)) or in a database shared by many
//! hosts, the pool does the same thing.
//!
//! # The contract
//!
//! Every backend keeps these rules; the contract test suite
//! (`tests/all/contract.rs`) checks each against every backend.
//!
//! - **Durable before seen.** [`Backend::enqueue`] returns once the tasks
//!   are durable (a batch shares one write and one flush). Every call that
//!   puts a task in a final state ([`Backend::complete`],
//!   [`Backend::cancel`], [`Backend::tick`]'s expiries,
//!   [`Backend::expire_leases`]) returns once that state is durable, and
//!   so does [`Backend::claim`] (a task that takes its host down at once
//!   must still count that interruption). Nothing is shown to anyone
//!   before it is durable. The one exception is asked for by name:
//!   [`Backend::complete_unflushed`] returns before the end it wrote is
//!   durable, and its caller flushes ([`Backend::flush`]) before it shows
//!   that end. A read meanwhile must not show it either (the embedded
//!   backend's reads wait for the flush).
//! - **Order.** [`Backend::claim`] hands out ready tasks by priority
//!   (highest first), then submission order. A scheduled task becomes
//!   ready at its `run_at` ([`Backend::tick`]); a waiting task past its
//!   `expires_at` ends `expired` instead of running.
//! - **Leases.** Every claim is a new [`Lease`]. While it is held, only
//!   its holder can end the run ([`Backend::complete`]) or put the task
//!   back ([`Backend::release`]); a call under any other lease is refused
//!   ([`Completed::LeaseLost`]) and changes nothing (fencing). A lease not
//!   renewed ([`Backend::renew`]) by its `expires_at` is lost:
//!   [`Backend::expire_leases`] puts its task back in the queue and counts
//!   an interruption (see [`TaskRecord::interrupt`]). Embedded backends
//!   also expire, when they open, every lease taken before: the process
//!   that held them is gone. A shared backend never does: other hosts may
//!   hold them, alive; its leases expire by time only.
//! - **Attempts and interruptions.** A run that ends with the task's own
//!   outcome is an attempt; a run lost with its host is an interruption,
//!   never an attempt. `max_interruptions` ends a task that keeps losing
//!   its host ([`Outcome::Interrupted`](crate::Outcome::Interrupted)).
//! - **Cancel** works in every state: a waiting task ends `cancelled` at
//!   once; a running one is marked, its holder learns it from
//!   [`Backend::renew`] (or knows already) and kills it; a final one is
//!   left as it is.
//! - **Idempotency keys.** A task whose key is in use is not stored; the
//!   holder of the key is returned instead, in the same write as the
//!   other tasks of the batch.
//! - **Modules.** A task naming a module the backend does not hold is
//!   refused ([`crate::Error::UnknownModule`]); a
//!   module an unfinished task names cannot be deleted.
//! - **Counts** add up: every task is in exactly one state, always.

mod embedded;
#[cfg(feature = "postgres")]
mod postgres;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use embedded::{EmbeddedBackend, Recovered};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresBackend, PostgresOptions, SCHEMA_VERSION as POSTGRES_SCHEMA_VERSION};

use crate::store::{Inserted, StateCounts, StoredModule, TaskFilter};
use crate::task::{
    Completion, Lease, Millis, ModuleHash, Payload, Slot, TaskId, TaskRecord, TaskState,
};
use crate::{Error, Event, ModuleSettings, Result};

#[cfg(doc)]
use crate::store::MemoryStore;

/// The answer of [`Backend::enqueue`] to a batch of one task.
pub(crate) fn only_answer(mut answers: Vec<Enqueued>) -> Result<Enqueued> {
    answers
        .pop()
        .ok_or_else(|| Error::Store("the backend gave no answer for the task enqueued".into()))
}

/// What [`Backend::enqueue`] did with one task.
#[derive(Clone, Debug, PartialEq)]
pub enum Enqueued {
    /// Stored as given (with its `seq` assigned).
    New(Box<TaskRecord>),
    /// Its idempotency key belongs to this task; nothing was stored.
    Existing(TaskId),
}

/// What [`Backend::enqueue_one_now`] did with a task.
#[derive(Debug)]
pub enum EnqueuedNow {
    /// Stored, or not for the reason given: a new task, or the task that
    /// holds its idempotency key, as [`Store::insert`](crate::store::Store::insert)
    /// answers.
    Done(Result<Inserted>),
    /// Not stored: the backend cannot store it at once. The task, given
    /// back as it came, for [`Backend::enqueue_one`].
    Later(Box<TaskRecord>),
}

/// What [`Backend::complete_and_claim_now`] did with a run's end.
#[derive(Debug)]
pub enum CompletedNow {
    /// Made: the answer as [`Backend::complete`] gives it (the claim is in
    /// the one lent); or the error of a write that failed once it had
    /// used the run's end (the run is lost: its lease runs out, and the
    /// task runs again).
    Done(Result<Completed>),
    /// Not made: the run's end given back, for
    /// [`Backend::complete_and_claim`], with the error of a try that
    /// failed before it used it (`None`: the backend does not make it at
    /// once).
    Later(Completion, Option<Error>),
}

/// What [`Backend::claim`] gave.
#[derive(Debug, Default)]
pub struct Claim {
    /// Tasks now running under a lease: the records as stored (state
    /// `running`, the new attempt last). Shared (`Arc`): a record is some
    /// hundreds of bytes, and goes from the claim to the worker's run by
    /// moves that then copy a pointer; and a store that keeps its records
    /// in memory gives its own rather than a copy. A holder that lets it
    /// go before the run's end is written saves the store a copy at that
    /// write.
    pub claimed: Vec<(Arc<TaskRecord>, Lease)>,
    /// Tasks found past their expiry on the way, now `expired` (durably).
    pub expired: Vec<TaskRecord>,
}

/// What a lease holder learns from [`Backend::renew`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Still held, until the new expiry.
    Held,
    /// Still held, but a cancel was asked for: kill the run, then complete
    /// it with [`Outcome::Cancelled`](crate::Outcome::Cancelled).
    CancelRequested,
    /// Lost: the task was given back to the queue (or ended). Stop the run;
    /// its result would be refused.
    Lost,
}

/// What [`Backend::complete`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Completed {
    /// The run's end is recorded (durably, but from
    /// [`Backend::complete_unflushed`] only once flushed); this is the
    /// task now. Shared: a store that keeps its records in memory gives
    /// its own, not a copy (a change made later writes a copy of its own
    /// while this one is held).
    Recorded(Arc<TaskRecord>),
    /// The lease was lost: nothing was written.
    LeaseLost,
}

/// What [`Backend::cancel`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Cancelled {
    /// The task was waiting and is now `cancelled` (durably).
    Cancelled(Box<TaskRecord>),
    /// The task runs; its holder was asked to kill it, and it will end
    /// `cancelled`.
    Requested,
    /// The task had already finished, in this state.
    AlreadyFinished(TaskState),
    /// No such task.
    NotFound,
}

/// What [`Backend::tick`] did.
#[derive(Debug, Default)]
pub struct Tick {
    /// Scheduled tasks whose time came, now queued.
    pub promoted: usize,
    /// Waiting tasks past their expiry, now `expired` (durably).
    pub expired: Vec<TaskRecord>,
    /// When the next scheduled task or expiry is due, if any.
    pub next: Option<Millis>,
}

/// A queue backend: owns the tasks, their leases, their results and the
/// modules they name. See the [module docs](self) for the contract.
///
/// Calls are async because a shared backend talks to a server; the
/// embedded ones answer at once but for the flushes they wait for.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Stores a module's bytes under its hash (idempotent).
    async fn put_module(&self, hash: &ModuleHash, bytes: &[u8]) -> Result<()>;
    /// A module's bytes.
    async fn module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>>;
    /// Every stored module.
    async fn modules(&self) -> Result<Vec<StoredModule>>;
    /// Removes a module unless an unfinished task names it
    /// ([`crate::Error::ModuleInUse`]); `false` if there
    /// was none.
    async fn delete_module(&self, hash: &ModuleHash) -> Result<bool>;
    /// Stores a module's run settings, replacing any (default settings
    /// remove them).
    async fn put_module_settings(&self, hash: &ModuleHash, settings: &ModuleSettings)
    -> Result<()>;
    /// A module's run settings, `None` if it has none.
    async fn module_settings(&self, hash: &ModuleHash) -> Result<Option<ModuleSettings>>;

    /// Stores new tasks (made by [`TaskRecord::new`]) in one durable write
    /// and returns, for each in order, the stored record (its `seq`
    /// assigned) or the task already holding its idempotency key. Refuses
    /// the whole batch if a task names a module that is not stored.
    async fn enqueue(&self, tasks: Vec<TaskRecord>) -> Result<Vec<Enqueued>>;
    /// [`Backend::enqueue`] of a single task: the answer for it. A single
    /// submission is the common case, and a backend may store one task
    /// without the batch's vectors; one that can store it at once does so
    /// in [`Backend::enqueue_one_now`] (the embedded backend on a store in
    /// memory). The default enqueues a batch of one.
    async fn enqueue_one(&self, task: Box<TaskRecord>) -> Result<Enqueued> {
        only_answer(self.enqueue(vec![*task]).await?)
    }
    /// [`Backend::enqueue_one`] made at once, where the backend can store
    /// the task without waiting for anything (a store in memory): a
    /// submission then costs no async call, and the store keeps the record
    /// given rather than a copy of it. [`EnqueuedNow::Later`] gives the
    /// task back where it cannot (the default); the caller then calls
    /// [`Backend::enqueue_one`].
    fn enqueue_one_now(&self, task: Box<TaskRecord>) -> EnqueuedNow {
        EnqueuedNow::Later(task)
    }
    /// Claims up to `max` ready tasks, by priority then submission order,
    /// each under a new lease lasting `ttl`.
    async fn claim(&self, max: usize, ttl: Duration) -> Result<Claim>;
    /// [`Backend::claim`] of up to `max` tasks for free workers, then up to
    /// `ahead` more held until a worker is free: those are claimed with
    /// [`TaskRecord::claim_ahead`] (no attempt stored, so that a claim lost
    /// with its host never ends the task, unless the task's interruptions
    /// already reached their most).
    /// The claimed tasks come in the order claimed, those for free workers
    /// first. The default claims all `max + ahead` as `claim` does, which
    /// is what a backend that keeps no such distinction must do: it counts
    /// a lost claim ahead as a lost run.
    async fn claim_ahead(&self, max: usize, ahead: usize, ttl: Duration) -> Result<Claim> {
        self.claim(max.saturating_add(ahead), ttl).await
    }
    /// Extends each lease by `ttl` if it is still held; says for each
    /// whether it is.
    async fn renew(&self, leases: &[Lease], ttl: Duration) -> Result<Vec<LeaseState>>;
    /// Records how the run under `lease` ended (fenced: refused if the
    /// lease was lost). The task moves on as [`TaskRecord::complete`] says.
    async fn complete(&self, lease: &Lease, run: Completion) -> Result<Completed>;
    /// [`Backend::complete`], then, if the end was recorded, claims up to
    /// `max` ready tasks as [`Backend::claim`] does: the worker that ran
    /// the task runs them next. The embedded backends make both durable
    /// with one flush (so a worker waits for one flush between two runs,
    /// not two); the default makes one call after the other. A claim that
    /// fails leaves the tasks queued and claims none: the end is recorded
    /// all the same.
    async fn complete_and_claim(
        &self,
        lease: &Lease,
        run: Completion,
        max: usize,
        ttl: Duration,
    ) -> Result<(Completed, Claim)> {
        let completed = self.complete(lease, run).await?;
        let claim = match completed {
            Completed::Recorded(_) if max > 0 => self.claim(max, ttl).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot claim the next task after a run; the dispatcher will");
                Claim::default()
            }),
            _ => Claim::default(),
        };
        Ok((completed, claim))
    }
    /// Whether [`Backend::complete_and_claim`] writes the end and the claim
    /// together (then a pool's worker claims its next task with the end
    /// of its run, instead of the dispatcher claiming it).
    fn completes_with_claim(&self) -> bool {
        false
    }
    /// [`Backend::complete_and_claim`] made at once, where the backend
    /// can make it without waiting for anything (a store in memory): a
    /// pool's worker then ends its run and takes its next task without an
    /// async call. The tasks claimed go into `claim`, empty when given: a
    /// caller that keeps it from one call to the next (emptied) reuses its
    /// room rather than allocating a claim for every run.
    /// [`CompletedNow::Later`] gives `run` back where the backend cannot
    /// (the default): the caller makes the async call instead.
    fn complete_and_claim_now(
        &self,
        lease: &Lease,
        run: Completion,
        max: usize,
        ttl: Duration,
        claim: &mut Claim,
    ) -> CompletedNow {
        let _ = (lease, max, ttl, claim);
        CompletedNow::Later(run, None)
    }
    /// [`Backend::complete`] without waiting for the end to be durable:
    /// the caller calls [`Backend::flush`] before it shows the end to
    /// anyone (its result, its event, the run leaving the running ones).
    /// A worker then goes on to a task claimed ahead while its last end
    /// waits for a flush, and one flush, awaited once, covers the ends of
    /// many runs. Only worth it where [`Backend::completes_unflushed`]
    /// says so; the default is [`Backend::complete`], durable when it
    /// returns.
    async fn complete_unflushed(&self, lease: &Lease, run: Completion) -> Result<Completed> {
        self.complete(lease, run).await
    }
    /// Whether [`Backend::complete_unflushed`] returns before the end is
    /// durable (a store with group commit), so that deferring the flush
    /// saves a wait. Default: `false`.
    fn completes_unflushed(&self) -> bool {
        false
    }
    /// Puts a task back in the queue without counting an attempt or an
    /// interruption (a graceful stop); `false` if the lease was lost.
    async fn release(&self, lease: &Lease) -> Result<bool>;
    /// Expires leases past their time; returns the tasks it changed
    /// (queued again, or ended by `max_interruptions` or a cancel).
    async fn expire_leases(&self) -> Result<Vec<TaskRecord>>;
    /// Moves scheduled tasks whose time came to the queue and expires
    /// waiting tasks past their expiry; says when to look again.
    async fn tick(&self) -> Result<Tick>;
    /// Cancels a task, in whatever state it is.
    async fn cancel(&self, id: &TaskId) -> Result<Cancelled>;

    /// A task by id.
    async fn get(&self, id: &TaskId) -> Result<Option<TaskRecord>>;
    /// A task by id if it is final; `None` if it is not, or there is no
    /// such task. The default reads it with [`Backend::get`]. Boxed: a
    /// waiter reads one per task, and a record moved by value through
    /// the async calls is copied at each step.
    async fn get_final(&self, id: &TaskId) -> Result<Option<Box<TaskRecord>>> {
        Ok(self
            .get(id)
            .await?
            .filter(|record| record.state.is_final())
            .map(Box::new))
    }
    /// [`Backend::get_final`] made at once, where the backend can read the
    /// record without waiting for anything (a store in memory): it lends
    /// the record to `read` if the task is final, and says whether it was.
    /// A waiter then builds a result from it, copying only what the result
    /// holds. `None` where it cannot (the default): the caller uses
    /// [`Backend::get_final`].
    fn read_final_now(
        &self,
        id: &TaskId,
        read: &mut dyn FnMut(&TaskRecord),
    ) -> Option<Result<bool>> {
        let _ = (id, read);
        None
    }
    /// Whether the backend knows, without reading anything, that task
    /// `id` is waiting or running (so a caller about to wait for its end
    /// need not read its record). `false` means "read it": the default.
    fn known_unfinished(&self, _id: &TaskId) -> bool {
        false
    }
    /// Whether a cancel was asked for task `id`, running here, as far as
    /// the backend knows without reading anything. A pool that has just
    /// claimed a task asks it once its run can be killed: a cancel that
    /// came between the claim and then found no run to kill. `false` by
    /// default (a shared backend's cancel reaches the run at its next
    /// heartbeat).
    fn cancel_requested(&self, _id: &TaskId) -> bool {
        false
    }
    /// The task holding an idempotency key.
    async fn by_key(&self, key: &str) -> Result<Option<TaskId>>;
    /// Tasks matching `filter`, newest first.
    async fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>>;
    /// How many tasks are in each state.
    async fn counts(&self) -> Result<StateCounts>;
    /// Removes final tasks that finished before `before`, and beyond the
    /// `keep` most recent final tasks; returns how many.
    async fn purge_finished(&self, before: Millis, keep: Option<u64>) -> Result<u64>;
    /// Removes the tasks of `ids` that are final (with their results and
    /// payload files), durably; tasks not final, and ids not found, are left
    /// alone. Returns the ids removed.
    async fn delete_finished(&self, ids: &[TaskId]) -> Result<Vec<TaskId>>;
    /// Removes stored modules that no task names; returns how many.
    async fn gc_modules(&self) -> Result<u64>;
    /// Makes every write so far durable.
    async fn flush(&self) -> Result<()>;
    /// Whether acknowledged writes survive a crash of this process.
    fn is_durable(&self) -> bool;

    /// The bytes of a task's payload (its input, or its output) as its
    /// record names it: the record's own bytes, or the file a backend keeps
    /// a large one in ([`Payload::File`]).
    async fn read_payload(&self, task: &TaskId, slot: Slot, payload: &Payload) -> Result<Vec<u8>> {
        let _ = slot;
        match payload {
            Payload::Inline(bytes) => Ok(bytes.clone()),
            Payload::File { .. } => Err(crate::Error::Store(format!(
                "a payload of task {task} is a file, and this backend keeps none"
            ))),
        }
    }

    /// The file holding a task's payload ([`Payload::File`]), to be read as
    /// a stream; `None` for one the record holds.
    fn payload_file(&self, task: &TaskId, slot: Slot, payload: &Payload) -> Option<PathBuf> {
        let _ = (task, slot, payload);
        None
    }

    /// Bytes of outputs kept outside task records, now. Submissions are
    /// refused while this is at the pool's
    /// [`max_stored_output`](crate::PoolConfig::max_stored_output).
    fn stored_output_bytes(&self) -> u64 {
        0
    }

    /// Returns when work may have become ready that this process was not
    /// told of: tasks submitted, promoted or put back by another host
    /// sharing the queue. The pool's dispatcher waits on it beside its own
    /// signals and its poll interval (which stays the fallback). Default:
    /// never returns (all the work of an embedded backend comes through
    /// its own pool, which knows of it).
    async fn wait_for_work(&self) {
        std::future::pending::<()>().await
    }

    /// Whether other hosts share this queue, changing it without this
    /// pool's knowledge. The pool then also looks every poll interval for
    /// due scheduled tasks (another host may have scheduled one earlier
    /// than anything this one knows of) and for the results it waits for
    /// (another host may have run the task), and counts the waiting tasks
    /// in the backend again when its own count says the queue is full.
    /// Default: `false`.
    fn is_shared(&self) -> bool {
        false
    }

    /// Tells the other hosts sharing this queue of an event of this
    /// host's pool, so that every host's event stream shows the whole
    /// queue ([`Backend::remote_events`]). Called for every event, on the
    /// pool's hot path: it must neither block nor fail, and may drop
    /// events when it cannot keep up (events are a view, never the
    /// truth: the records are). Default: nothing (no other host).
    fn publish(&self, event: &Event) {
        let _ = event;
    }

    /// The events other hosts sharing this queue publish
    /// ([`Backend::publish`]), as they arrive; the pool streams them to
    /// its own subscribers beside its own events, and wakes its waiters
    /// on a task another host finished. `None` (the default) when no
    /// other host shares the queue.
    fn remote_events(&self) -> Option<tokio::sync::broadcast::Receiver<Event>> {
        None
    }
}
