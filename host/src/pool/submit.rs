//! Submission: room in the queue, the module a task names, the record it
//! becomes.

use std::sync::atomic::Ordering;

use super::Inner;
use super::events::EventKind;
use crate::backend::{Enqueued, EnqueuedNow};
use crate::store::Inserted;
use crate::task::{
    Millis, ModuleHash, ModuleRef, TaskId, TaskRecord, TaskSpec, TaskState, now_millis,
};
use crate::{CompiledModule, Error, Executor, Result};

/// Modules up to this size are hashed on the caller's thread (a module
/// already registered then costs no hand-off); larger ones on a blocking
/// thread (SHA-256 runs at about 1.4 GB/s here).
const HASH_INLINE: usize = 1 << 20;

impl Inner {
    /// Takes room for `n` tasks in the queue, if there is room for them
    /// now.
    pub(super) fn try_reserve_room(&self, n: usize) -> bool {
        let max = self.config.max_queued;
        self.waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                // A batch larger than the whole queue goes in when the
                // queue is empty, rather than never.
                (w == 0 || w.saturating_add(n) <= max).then_some(w.saturating_add(n))
            })
            .is_ok()
    }

    /// Refuses new work while the store's output files hold
    /// [`PoolConfig::max_stored_output`](crate::PoolConfig::max_stored_output).
    pub(super) fn check_storage(&self) -> Result<()> {
        let held = self.backend.stored_output_bytes();
        let allowed = self.config.max_stored_output;
        if held >= allowed {
            return Err(Error::StorageFull(held, allowed));
        }
        Ok(())
    }

    /// Takes room for `n` tasks in the queue, waiting for it.
    pub(super) async fn reserve_room(&self, n: usize) -> Result<()> {
        self.check_open()?;
        if self.try_reserve_room(n) {
            return Ok(());
        }
        // Counted until it returns or its caller gives up (drops it).
        struct Counted<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.room_waiters.fetch_add(1, Ordering::SeqCst);
        let _counted = Counted(&self.room_waiters);
        self.wait_for_room(n).await
    }

    /// [`Inner::reserve_room`] when there was no room at first: counted in
    /// `room_waiters`.
    async fn wait_for_room(&self, n: usize) -> Result<()> {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.check_open()?;
            if self.try_reserve_room(n) || self.recounted_room(n).await {
                return Ok(());
            }
            if self.backend.is_shared() {
                // Other hosts empty the queue without telling this pool.
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                }
            } else {
                notified.await;
            }
        }
    }

    /// On a shared queue, where other hosts take tasks this pool counted
    /// as waiting (and never hears of it): counts the waiting tasks in the
    /// backend again, then tries to take room for `n`. `false` at once on
    /// other backends, whose count is exact.
    pub(super) async fn recounted_room(&self, n: usize) -> bool {
        if !self.backend.is_shared() {
            return false;
        }
        match self.backend.counts().await {
            Ok(counts) => {
                let waiting = counts.get(TaskState::Queued) + counts.get(TaskState::Scheduled);
                self.waiting.store(
                    usize::try_from(waiting).unwrap_or(usize::MAX),
                    Ordering::SeqCst,
                );
                self.try_reserve_room(n)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot count the waiting tasks");
                false
            }
        }
    }

    /// Stores new tasks for specs whose room is already taken, in one
    /// write; gives back the room of those not stored. Per spec: the id of
    /// the task stored (`true`: created now) or of the one already holding
    /// its key (`false`), or why the spec was refused. Only the spec's own
    /// faults (a malformed spec, a limit out of range, a module unknown or
    /// invalid) are answered per spec; any other failure (the store's)
    /// fails the whole batch before anything is stored.
    pub(super) async fn store_new_tasks(
        &self,
        specs: Vec<TaskSpec>,
    ) -> Result<Vec<Result<(TaskId, bool)>>> {
        let reserved = specs.len();
        let mut answers: Vec<Option<Result<(TaskId, bool)>>> = Vec::with_capacity(specs.len());
        let mut records = Vec::with_capacity(specs.len());
        let now = now_millis();
        for spec in specs {
            match self.new_record(spec, now).await {
                Ok(New::Record(record)) => {
                    answers.push(None);
                    records.push(*record);
                }
                Ok(New::Existing(id)) => answers.push(Some(Ok((id, false)))),
                Err(e) if is_the_specs_fault(&e) => answers.push(Some(Err(e))),
                Err(e) => {
                    self.left_queue(reserved);
                    return Err(e);
                }
            }
        }
        let enqueued = if records.is_empty() {
            Vec::new()
        } else {
            match self.backend.enqueue(records).await {
                Ok(enqueued) => enqueued,
                Err(e) => {
                    self.left_queue(reserved);
                    return Err(e);
                }
            }
        };
        let mut stored = 0;
        let mut timed = false;
        let mut enqueued = enqueued.into_iter();
        let answers: Vec<Result<(TaskId, bool)>> = answers
            .into_iter()
            .map(|answer| match answer {
                Some(answer) => answer,
                None => match enqueued.next().expect("one answer per record") {
                    Enqueued::New(record) => {
                        stored += 1;
                        timed |= is_timed(&record);
                        self.emit(record.id, EventKind::Submitted);
                        Ok((record.id, true))
                    }
                    Enqueued::Existing(id) => Ok((id, false)),
                },
            })
            .collect();
        self.left_queue(reserved - stored);
        if stored > 0 {
            self.wake_for_stored(timed);
        }
        Ok(answers)
    }

    /// [`Inner::store_new_tasks`] of a single spec, whose room is already
    /// taken: the same answers, without a batch's vectors (a submission
    /// of one is the usual case, and on a store in memory the vectors
    /// were a good part of its cost).
    ///
    /// Made without an async call where none is needed: a spec without an
    /// idempotency key (whose holder the backend would be asked for),
    /// naming a module compiled here, on a backend that stores a task at
    /// once ([`Backend::enqueue_one_now`](crate::backend::Backend::enqueue_one_now):
    /// a store in memory). The spec then moves once, into its record,
    /// rather than into the state of each async call on its way; and
    /// [`Now::Later`] is what is left for [`Inner::store_new_task_later`]
    /// otherwise.
    pub(super) fn store_new_task_now(&self, spec: TaskSpec) -> Now {
        let known = match &spec.module {
            ModuleRef::Hash(hash) if spec.idempotency_key.is_none() => {
                self.executor.module(hash).map(|m| m.hash())
            }
            _ => None,
        };
        let Some(module) = known else {
            return Now::Later(Later::Spec(Box::new(spec)));
        };
        let record = spec
            .validate()
            .and_then(|()| validated_record(&self.executor, spec, module, now_millis()));
        let record = match record {
            Ok(record) => Box::new(record),
            Err(e) => {
                self.left_queue(1);
                return Now::Done(Err(e));
            }
        };
        let (id, timed) = (record.id, is_timed(&record));
        match self.backend.enqueue_one_now(record) {
            EnqueuedNow::Done(inserted) => {
                Now::Done(self.stored_one(id, timed, inserted.map(holder)))
            }
            EnqueuedNow::Later(record) => Now::Later(Later::Record(record)),
        }
    }

    /// [`Inner::store_new_task_now`] finished with async calls: the record
    /// made of the spec (its key's holder and its module looked up), then
    /// stored.
    pub(super) async fn store_new_task_later(&self, later: Later) -> Result<(TaskId, bool)> {
        let record = match later {
            Later::Record(record) => record,
            Later::Spec(spec) => {
                let record = match self.new_record(*spec, now_millis()).await {
                    Ok(New::Record(record)) => record,
                    Ok(New::Existing(id)) => {
                        self.left_queue(1);
                        return Ok((id, false));
                    }
                    Err(e) => {
                        self.left_queue(1);
                        return Err(e);
                    }
                };
                let (id, timed) = (record.id, is_timed(&record));
                match self.backend.enqueue_one_now(record) {
                    EnqueuedNow::Done(inserted) => {
                        return self.stored_one(id, timed, inserted.map(holder));
                    }
                    EnqueuedNow::Later(record) => record,
                }
            }
        };
        let (id, timed) = (record.id, is_timed(&record));
        let stored = self
            .backend
            .enqueue_one(record)
            .await
            .map(|enqueued| match enqueued {
                Enqueued::New(_) => None,
                Enqueued::Existing(holder) => Some(holder),
            });
        self.stored_one(id, timed, stored)
    }

    /// The answer of a single submission of task `id` (`timed`: delayed
    /// or expiring), from what the backend said: `None` if it stored it,
    /// the holder of its idempotency key otherwise, or why it failed. The
    /// room taken for it is given back unless it was stored.
    fn stored_one(
        &self,
        id: TaskId,
        timed: bool,
        stored: Result<Option<TaskId>>,
    ) -> Result<(TaskId, bool)> {
        match stored {
            Ok(None) => {
                self.emit(id, EventKind::Submitted);
                self.wake_for_stored(timed);
                Ok((id, true))
            }
            Ok(Some(holder)) => {
                self.left_queue(1);
                Ok((holder, false))
            }
            Err(e) => {
                self.left_queue(1);
                Err(e)
            }
        }
    }

    /// Wakes who must hear of tasks just stored: the dispatcher, if
    /// needed, and the timer if one of them is `timed`.
    fn wake_for_stored(&self, timed: bool) {
        if self.dispatcher_needed() {
            self.work.notify_one();
        }
        // The timer only moves delayed tasks and expires waiting ones.
        if timed {
            self.timer.notify_one();
        }
    }

    /// Whether new tasks need the dispatcher to be woken: not while every
    /// worker is busy on a backend where a worker claims its next task
    /// with its run's end ([`Inner::run_one`](super::Inner)), unless the
    /// pool claims ahead. A worker that finds nothing is freed, and wakes
    /// the dispatcher after, so a task stored meanwhile is not missed:
    /// either that worker's claim (made under the backend's lock) saw it,
    /// or the task was stored after, and the submitter sees the worker
    /// free.
    fn dispatcher_needed(&self) -> bool {
        !self.backend.completes_with_claim()
            || self.claim_ahead > 0
            || self.executing.load(Ordering::SeqCst) < self.active_workers.load(Ordering::SeqCst)
    }

    async fn new_record(&self, spec: TaskSpec, now: u64) -> Result<New> {
        spec.validate()?;
        if let Some(key) = &spec.idempotency_key
            && let Some(existing) = self.backend.by_key(key).await?
        {
            return Ok(New::Existing(existing));
        }
        let module = self.module_for(&spec.module).await?.hash();
        // Validated above: not again.
        Ok(New::Record(Box::new(validated_record(
            &self.executor,
            spec,
            module,
            now,
        )?)))
    }

    async fn module_for(&self, module: &ModuleRef) -> Result<CompiledModule> {
        match module {
            ModuleRef::Hash(hash) => self.compiled(hash).await,
            ModuleRef::Bytes(bytes) => {
                let compiled = self.register_stored(bytes).await?;
                self.backend.put_module(&compiled.hash(), bytes).await?;
                Ok(compiled)
            }
        }
    }

    /// A module compiled, from the executor's cache or from the backend.
    pub(super) async fn compiled(&self, hash: &ModuleHash) -> Result<CompiledModule> {
        if let Some(module) = self.executor.module(hash) {
            return Ok(module);
        }
        let bytes = self
            .backend
            .module(hash)
            .await?
            .ok_or(Error::UnknownModule(*hash))?;
        // Stored under its hash: not hashed again (17 MiB take ~12 ms),
        // unless it has to be compiled.
        let module = self.on_blocking_thread(*hash, bytes).await?;
        self.with_stored_settings(module).await
    }

    /// Compiles `bytes` (once: a module compiled before is at hand) on a
    /// blocking thread, not on the caller's async runtime; a large module
    /// is hashed there too.
    pub(super) async fn compile(&self, bytes: &[u8]) -> Result<CompiledModule> {
        if bytes.len() <= HASH_INLINE {
            let hash = ModuleHash::of(bytes);
            if let Some(module) = self.executor.module(&hash) {
                return Ok(module);
            }
            return self.on_blocking_thread(hash, bytes.to_vec()).await;
        }
        let executor = self.executor.clone();
        let owned = bytes.to_vec();
        executor
            .handle()
            .clone()
            .spawn_blocking(move || {
                let hash = ModuleHash::of(&owned);
                match executor.module(&hash) {
                    Some(module) => Ok(module),
                    None => executor.register_known(&hash, &owned),
                }
            })
            .await
            .map_err(|e| Error::Host(format!("compiling the module panicked: {e}")))?
    }

    /// Registers `bytes`, known to hash to `hash`, on a blocking thread.
    async fn on_blocking_thread(&self, hash: ModuleHash, bytes: Vec<u8>) -> Result<CompiledModule> {
        let executor = self.executor.clone();
        executor
            .handle()
            .clone()
            .spawn_blocking(move || executor.register_known(&hash, &bytes))
            .await
            .map_err(|e| Error::Host(format!("compiling the module panicked: {e}")))?
    }

    /// Compiles `bytes` with the run settings the backend keeps for them:
    /// the executor has a module's settings whichever way it came to
    /// compile it (after a restart too).
    pub(super) async fn register_stored(&self, bytes: &[u8]) -> Result<CompiledModule> {
        let module = self.compile(bytes).await?;
        self.with_stored_settings(module).await
    }

    /// `module` with the run settings the backend keeps for it.
    async fn with_stored_settings(&self, module: CompiledModule) -> Result<CompiledModule> {
        if let Some(settings) = self.backend.module_settings(&module.hash()).await? {
            self.executor.set_module_settings(&module, settings)?;
        }
        Ok(module)
    }
}

/// The record of a task as submitted, naming `module` (stored already):
/// the spec checked and its limits resolved against the executor's. Used by
/// the pool and by the command line's queue-only path, so the two cannot
/// drift.
pub(crate) fn new_record(
    executor: &Executor,
    spec: TaskSpec,
    module: ModuleHash,
    now: Millis,
) -> Result<TaskRecord> {
    spec.validate()?;
    validated_record(executor, spec, module, now)
}

/// [`new_record`] of a spec already validated.
fn validated_record(
    executor: &Executor,
    spec: TaskSpec,
    module: ModuleHash,
    now: Millis,
) -> Result<TaskRecord> {
    let limits = executor.limits(&spec.limits)?;
    Ok(TaskRecord::new(spec, module, limits, now))
}

/// Whether the timer has to do with `record`: delayed, or expiring.
fn is_timed(record: &TaskRecord) -> bool {
    record.state == TaskState::Scheduled || record.expires_at.is_some()
}

/// Whether `error` is a spec's own fault, answered for that spec alone in
/// a batch, rather than a failure of the whole batch.
fn is_the_specs_fault(error: &Error) -> bool {
    matches!(
        error,
        Error::InvalidTask(_)
            | Error::InvalidLimit { .. }
            | Error::UnknownModule(_)
            | Error::InvalidModule(_)
            | Error::InvalidSettings(_)
    )
}

/// The holder of a task's idempotency key, if the store found one
/// rather than storing the task.
fn holder(inserted: Inserted) -> Option<TaskId> {
    match inserted {
        Inserted::New => None,
        Inserted::Existing(holder) => Some(holder),
    }
}

/// What [`Inner::store_new_task_now`] did.
pub(super) enum Now {
    /// The answer, as [`Inner::store_new_tasks`] gives it for one spec.
    Done(Result<(TaskId, bool)>),
    /// Left for [`Inner::store_new_task_later`].
    Later(Later),
}

/// What is left of a single submission for async calls.
pub(super) enum Later {
    /// The spec: its idempotency key's holder, or its module, is to be
    /// looked up in the backend. (Boxed, as the record: the answer made
    /// at once is the usual one, and is not made as large as a spec.)
    Spec(Box<TaskSpec>),
    /// Its record: the backend stores it with an async call.
    Record(Box<TaskRecord>),
}

enum New {
    Record(Box<TaskRecord>),
    Existing(TaskId),
}
